"""Cache policies: what to feed the model at each step of a block, and what to keep.

Each policy turns the current tokens into the final hidden states of the current block's rows through the
family's ``forward_hidden`` (:func:`llada_triton.models.forward_hidden`, writing a static KV cache by position):

* ``none``: the full sequence every step (official LLaDA ``generate``; future blocks fed as masks).
* ``prefix`` (Fast-dLLM v1): a full forward at a block start keeps the K/V; later steps feed the block and every
  later position against that prefix (approximate by design: not refreshed inside a block).
* ``dual`` (Fast-dLLM v1): the same block-start forward; later steps feed only the block and replace its K/V.
* ``block`` (block-causal, exact): future blocks are never fed; block ``b`` sees the prompt, blocks ``< b`` and
  itself. A block's K/V join the cache when the next block's first step feeds ``[committed block ; next block]``,
  so the cache holds final tokens only and no extra forward is spent (the prompt prefill folds into block 0).

With ``cfg.logit_shift`` (Dream: row ``i - 1`` predicts position ``i``) a policy returns rows ``[s - shift, s - shift
+ Lb)``; ``prefix`` / ``dual`` steady steps keep the window's first row (:func:`shifted_rows`, as the reference);
``block`` feeds ``shift`` committed positions in front (leaving their cached K/V).

Entry points: ``first(x, b, s)`` (a block's first step), ``steady(x, b, s)`` (later steps); ``s`` is the block
start, an int or a 0-dim device tensor (CUDA graphs: static shapes). ``graph_key(kind, b)`` names the graph a step
is captured into (None: eager). Class attributes: ``supports_graphs`` and ``early_stop_by_default`` (``generate``'s
``early_stop`` default: on where future blocks never influence earlier ones).

A model family replaces a policy by name through ``Family.policies`` (merged by :func:`policies_for`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch

from llada_triton.models.family import family_of, forward_hidden, new_cache
from .layout import grid_key_end

__all__ = ["CachePolicy", "NoCache", "PrefixCache", "DualCache", "BlockCache", "POLICIES",
           "policies_for", "StepContext", "take_cols", "shifted_rows"]

Pos = Union[int, torch.Tensor]
# tokens per prefill forward: rows are chunked above this to bound activation memory (results/decisions.md)
PREFILL_TOKENS = 4096


_CONST = {}


def const(kind: str, n: int, device, value: int = 0) -> torch.Tensor:
    """A read-only int64 index vector made once per (kind, n, value, device) (no kernel inside a captured step):
    ``"arange"`` 0..n-1; ``"full"`` n times ``value``; ``"ends"`` n zeros then n times n ([block ; next] key ends)."""
    key = (kind, n, value, str(device))
    t = _CONST.get(key)
    if t is None:
        if kind == "arange":
            t = torch.arange(n, device=device)
        elif kind == "full":
            t = torch.full((n,), value, dtype=torch.int64, device=device)
        else:  # "ends"
            t = torch.cat([torch.zeros(n, dtype=torch.int64), torch.full((n,), n, dtype=torch.int64)]).to(device)
        _CONST[key] = t
    return t


def take_cols(x: torch.Tensor, s: Pos, n: int) -> torch.Tensor:
    """``x[:, s:s+n]`` for an int or a device-tensor ``s`` (a copy in the tensor case)."""
    if isinstance(s, torch.Tensor):
        return x.index_select(1, s + const("arange", n, x.device))
    return x[:, s:s + n]


def shifted_rows(hidden: torch.Tensor, shift: int) -> torch.Tensor:
    """``[B, n, d]`` hidden states of a fed window -> the rows predicting its positions (``max(j - shift, 0)``)."""
    if shift == 0:
        return hidden
    idx = (const("arange", hidden.shape[1], hidden.device) - shift).clamp_min(0)
    return hidden.index_select(1, idx)


@dataclass
class StepContext:
    params: object
    cfg: object
    ops: object
    prompt_len: int      # P: width of the (left-padded) prompt
    block_length: int
    total_len: int       # P + gen_length
    kv_start: Optional[torch.Tensor]  # [B'] left-padding widths, or None
    first_block: Optional[int] = None  # column of block 0's start (None: prompt_len)
    block_causal: bool = False  # the prompt attends block-causally on the grid (LLaDA2), not to all of itself

    @property
    def block0(self) -> int:
        return self.prompt_len if self.first_block is None else self.first_block

    def grid_ends(self, lo: int, hi: int, device) -> torch.Tensor:
        """Key ends of columns ``[lo, hi)`` on the block grid (block-causal from block 0's start)."""
        return grid_key_end(lo, hi, self.block0, self.block_length, device)


class CachePolicy:
    name = "base"
    supports_graphs = False
    early_stop_by_default = False

    def __init__(self, ctx: StepContext, batch: int):
        self.ctx = ctx
        self.batch = batch

    @property
    def shift(self) -> int:
        return self.ctx.cfg.logit_shift

    def _fwd(self, tokens, **kw):
        c = self.ctx
        return forward_hidden(c.params, c.cfg, tokens, kv_start=c.kv_start, ops=c.ops, **kw)

    def _block_rows(self, x, s: Pos, **kw):
        """The forward of ``x``, returning the rows ``[s, s + Lb)`` (sliced inside it for an int ``s``)."""
        Lb = self.ctx.block_length
        if isinstance(s, int):
            return self._fwd(x, rows=slice(s, s + Lb), **kw)
        return take_cols(self._fwd(x, **kw), s, Lb)

    def first(self, x: torch.Tensor, b: int, s: Pos) -> torch.Tensor:
        return self.steady(x, b, s)

    def steady(self, x: torch.Tensor, b: int, s: Pos) -> torch.Tensor:
        raise NotImplementedError

    def graph_key(self, kind: str, b: int):
        return None


class NoCache(CachePolicy):
    name = "none"
    supports_graphs = True

    def steady(self, x, b, s):
        s = s - self.shift  # the rows that predict the block (s >= 1 with a shift: the prompt is never empty)
        if not self.ctx.block_causal:
            return self._block_rows(x, s)
        # later blocks are invisible: feed up to the block's end (the whole buffer for a device start: static shapes)
        n = s + self.ctx.block_length if isinstance(s, int) else x.shape[1]
        return self._block_rows(x[:, :n], s, key_end=self.ctx.grid_ends(0, n, x.device))

    def graph_key(self, kind, b):
        return "step"


class _CachedPolicy(CachePolicy):
    supports_graphs = True

    def __init__(self, ctx, batch):
        super().__init__(ctx, batch)
        p = ctx.params
        self.cache = new_cache(ctx.cfg, batch, ctx.total_len, device=p.device, dtype=p.dtype)

    def _full_refresh(self, x, s):
        """One forward of the whole sequence that rewrites every cache slot (Fast-dLLM block start)."""
        return self._block_rows(x, s - self.shift, cache=self.cache, start=0, kv_len=self.ctx.total_len)


class PrefixCache(_CachedPolicy):
    name = "prefix"

    def first(self, x, b, s):
        return self._full_refresh(x, s)

    def steady(self, x, b, s):
        # the fed length (L - s) changes with the block: an int start from the block index, so each
        # block's steady steps have static shapes (one CUDA graph per block)
        s = self.ctx.prompt_len + b * self.ctx.block_length
        return shifted_rows(self._fwd(x[:, s:], cache=self.cache, start=s, kv_len=self.ctx.total_len,
                                      rows=slice(0, self.ctx.block_length)), self.shift)

    def graph_key(self, kind, b):
        return "first" if kind == "first" else ("steady", b)


class DualCache(_CachedPolicy):
    name = "dual"

    def first(self, x, b, s):
        return self._full_refresh(x, s)

    def steady(self, x, b, s):
        return shifted_rows(self._fwd(take_cols(x, s, self.ctx.block_length), cache=self.cache, start=s,
                                      kv_len=self.ctx.total_len), self.shift)

    def graph_key(self, kind, b):
        return kind


class BlockCache(_CachedPolicy):
    name = "block"
    early_stop_by_default = True
    prefill_tokens = PREFILL_TOKENS  # block 0's prefill runs in row chunks of at most this many tokens

    def first(self, x, b, s):
        Lb, sh = self.ctx.block_length, self.shift
        if b == 0:  # prompt prefill folded into block 0's first step, in row chunks to bound activations
            P = self.ctx.block0
            key_end = self.ctx.grid_ends(0, P + Lb, x.device) if self.ctx.block_causal else \
                torch.cat([torch.full((P,), P, device=x.device), torch.full((Lb,), P + Lb, device=x.device)])
            rows, c, outs = max(1, self.prefill_tokens // (P + Lb)), self.ctx, []
            for r0 in range(0, x.shape[0], rows):
                r1 = min(x.shape[0], r0 + rows)
                outs.append(forward_hidden(c.params, c.cfg, x[r0:r1, :P + Lb], start=0, cache=self.cache.rows(r0, r1),
                                           kv_len=P + Lb, kv_start=None if c.kv_start is None else c.kv_start[r0:r1],
                                           key_end=key_end, rows=slice(P - sh, P + Lb - sh), ops=c.ops))
            return outs[0] if len(outs) == 1 else torch.cat(outs)
        # [committed block b-1 ; block b]: block b-1 sees keys < s, block b keys < s + Lb
        ends = const("ends", Lb, x.device) + s
        dynamic = isinstance(s, torch.Tensor)
        return self._fwd(take_cols(x, s - Lb, 2 * Lb), cache=self.cache, start=s - Lb,
                         kv_len=self.ctx.total_len if dynamic else s + Lb, key_end=ends,
                         rows=slice(Lb - sh, 2 * Lb - sh))

    def steady(self, x, b, s):
        Lb = self.ctx.block_length
        if self.shift:
            return self._steady_shifted(x, s)
        if isinstance(s, torch.Tensor):  # static kv_len; the real limit s + Lb lives on the device
            key_end = const("full", Lb, x.device, Lb) + s
            return self._fwd(take_cols(x, s, Lb), cache=self.cache, start=s, kv_len=self.ctx.total_len,
                             key_end=key_end)
        return self._fwd(x[:, s:s + Lb], cache=self.cache, start=s, kv_len=s + Lb)

    def _steady_shifted(self, x, s):
        """Feed ``[s - shift, s + Lb)``: the committed rows in front see keys ``< s`` and keep their cached K/V."""
        Lb, sh = self.ctx.block_length, self.shift
        key_end = torch.cat([const("full", sh, x.device, 0), const("full", Lb, x.device, Lb)]) + s
        write_from = const("full", x.shape[0], x.device, 0) + s
        dynamic = isinstance(s, torch.Tensor)
        return self._fwd(take_cols(x, s - sh, Lb + sh), cache=self.cache, start=s - sh,
                         kv_len=self.ctx.total_len if dynamic else s + Lb, key_end=key_end,
                         write_from=write_from, rows=slice(0, Lb))

    def graph_key(self, kind, b):
        return None if (kind == "first" and b == 0) else kind


POLICIES = {p.name: p for p in (NoCache, PrefixCache, DualCache, BlockCache)}


def policies_for(cfg) -> dict:
    """Cache-policy name -> class for the model family of ``cfg``: :data:`POLICIES` with the family's own."""
    return {**POLICIES, **family_of(cfg).policies}
