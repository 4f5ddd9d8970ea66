"""Cache policies: what to feed the model at each step of a block, and what to keep.

Each policy turns the current tokens into the final hidden states of the current block's rows. They
share one mechanism (:func:`llada.model.forward_hidden` writing into a static :class:`KVCache` by
position) and differ only in what they feed and which keys each query may see:

* ``none``: the full sequence every step (official LLaDA ``generate``; future blocks are fed as masks).
* ``prefix`` (Fast-dLLM v1): at a block start one full forward whose K/V are kept; later steps feed
  the current block *and every later position* against the prefix K/V from that block start
  (approximate by design: the prefix is not refreshed inside a block).
* ``dual`` (Fast-dLLM v1): the same block-start forward keeps the K/V of every position; later steps
  feed only the current block and replace its K/V in place (prefix and suffix stale until the next
  block start).
* ``block`` (block-causal, exact): future blocks are never fed. The prompt sees itself; block ``b``
  sees the prompt, blocks ``< b`` and itself. A block's K/V join the cache when the first step of the
  next block feeds ``[committed block ; next block]`` with the block-causal mask, so cached entries are
  computed from final tokens and never stale, and no extra forward is spent.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from llada.model import KVCache, forward_hidden

__all__ = ["CachePolicy", "NoCache", "PrefixCache", "DualCache", "BlockCache", "make_policy", "POLICIES"]


@dataclass
class StepContext:
    params: object
    cfg: object
    ops: object
    prompt_len: int      # P: width of the (left-padded) prompt
    block_length: int
    total_len: int       # P + gen_length
    kv_start: Optional[torch.Tensor]  # [B'] left-padding widths, or None


class CachePolicy:
    """``hidden(ctx, x, block, step) -> [B', Lb, d]`` final normed hidden states of the block's rows."""
    name = "base"

    def __init__(self, ctx: StepContext, batch: int):
        self.ctx = ctx
        self.batch = batch

    def _fwd(self, tokens, **kw):
        c = self.ctx
        return forward_hidden(c.params, c.cfg, tokens, kv_start=c.kv_start, ops=c.ops, **kw)

    def _block(self, b):
        s = self.ctx.prompt_len + b * self.ctx.block_length
        return s, s + self.ctx.block_length

    def hidden(self, x: torch.Tensor, block: int, step: int) -> torch.Tensor:
        raise NotImplementedError


class NoCache(CachePolicy):
    name = "none"

    def hidden(self, x, block, step):
        s, e = self._block(block)
        return self._fwd(x, rows=slice(s, e))


class _CachedPolicy(CachePolicy):
    def __init__(self, ctx, batch):
        super().__init__(ctx, batch)
        p = ctx.params
        self.cache = KVCache.empty(ctx.cfg, batch, ctx.total_len, device=p.device, dtype=p.dtype)


class PrefixCache(_CachedPolicy):
    name = "prefix"

    def hidden(self, x, block, step):
        s, e = self._block(block)
        L = self.ctx.total_len
        if step == 0:
            return self._fwd(x, cache=self.cache, start=0, kv_len=L, rows=slice(s, e))
        return self._fwd(x[:, s:], cache=self.cache, start=s, kv_len=L, rows=slice(0, e - s))


class DualCache(_CachedPolicy):
    name = "dual"

    def hidden(self, x, block, step):
        s, e = self._block(block)
        L = self.ctx.total_len
        if step == 0:
            return self._fwd(x, cache=self.cache, start=0, kv_len=L, rows=slice(s, e))
        return self._fwd(x[:, s:e], cache=self.cache, start=s, kv_len=L)


class BlockCache(_CachedPolicy):
    name = "block"

    def __init__(self, ctx, batch):
        super().__init__(ctx, batch)
        self.final_upto = 0  # cache slots [0, final_upto) hold K/V of final tokens

    def key_end(self, seg_start: int, seg_end: int, device) -> torch.Tensor:
        """Block-causal limits for positions [seg_start, seg_end): prompt -> P, block j -> its end."""
        P, Lb = self.ctx.prompt_len, self.ctx.block_length
        pos = torch.arange(seg_start, seg_end, device=device)
        blk_end = P + ((pos - P) // Lb + 1) * Lb
        return torch.where(pos < P, torch.full_like(pos, P), blk_end)

    def hidden(self, x, block, step):
        s, e = self._block(block)
        if step == 0:
            # feed what is not final in the cache yet (prompt, or the block just completed) + this block
            a = self.final_upto
            h = self._fwd(x[:, a:e], cache=self.cache, start=a, kv_len=e,
                          key_end=self.key_end(a, e, x.device), rows=slice(s - a, e - a))
            self.final_upto = s
            return h
        return self._fwd(x[:, s:e], cache=self.cache, start=s, kv_len=e)


POLICIES = {p.name: p for p in (NoCache, PrefixCache, DualCache, BlockCache)}


def make_policy(name: str, ctx: StepContext, batch: int) -> CachePolicy:
    if name not in POLICIES:
        raise ValueError(f"cache={name!r} is not a cache policy; choose one of {sorted(POLICIES)}")
    return POLICIES[name](ctx, batch)
