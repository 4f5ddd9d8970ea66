"""LLaDA (dense) as pure functions over plain tensors; the ``llada`` entry of ``models.family.REGISTRY``.

``forward_hidden`` returns final *normed* hidden states, ``forward`` adds the LM head; params
(:class:`~llada_triton.models.weights.Params`), config and ``Ops`` are arguments (no module hierarchy).

The tokens of a call occupy absolute positions ``[start, start + T)``, also their cache slots: with a cache each
layer writes its rotated keys and values there *in place* and attends over slots ``[0, kv_len)``; without one the
tokens see only themselves. ``kv_start`` ([B]) hides left padding, ``key_end`` ([T] or [B, T]) limits each query
to keys ``< key_end`` (block-causal masks).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple, Union

import torch
from torch.profiler import record_function

from .config import LLaDAConfig
from .family import Family, forward_hidden as family_forward_hidden
from .ops import REFERENCE_OPS, Ops
from .weights import Params, load_params

__all__ = ["KVCache", "forward_hidden", "forward", "logits_from_hidden", "FAMILY"]


@dataclass
class KVCache:
    """Static K/V buffers ``[n_layers, B, T_max, n_kv_heads, head_dim]`` (keys stored rotated)."""
    k: torch.Tensor
    v: torch.Tensor

    @classmethod
    def empty(cls, cfg: LLaDAConfig, batch: int, t_max: int, *, device, dtype) -> "KVCache":
        shape = (cfg.n_layers, batch, t_max, cfg.n_kv_heads, cfg.head_dim)
        return cls(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))

    @property
    def t_max(self) -> int:
        return self.k.shape[2]

    def rows(self, r0: int, r1: int) -> "KVCache":
        """A view of batch rows ``[r0, r1)`` (writes go to this cache)."""
        return KVCache(self.k[:, r0:r1], self.v[:, r0:r1])


def make_forward_hidden(qkv_step: Callable, ffn_step: Callable, needs: Tuple[str, ...] = ()) -> Callable:
    """A family's ``forward_hidden``: the shared layer loop with the family's ``qkv_step(ops, cfg, lp, a, params,
    start, k_cache, v_cache, write_from) -> (q, k_cache, v_cache)`` and ``ffn_step(ops, cfg, lp, f, h, next_norm)
    -> (normed, h)`` (``f``, ``h``: ``[B * T, d]``); ``needs``: the ``Ops`` fields the family requires."""

    def forward_hidden(params: Params, cfg, tokens: torch.Tensor, *, start: Union[int, torch.Tensor] = 0,
                       cache: Optional[KVCache] = None, kv_len: Optional[int] = None,
                       kv_start: Optional[torch.Tensor] = None, key_end: Optional[torch.Tensor] = None,
                       rows: Optional[slice] = None, write_from: Optional[torch.Tensor] = None,
                       ops: Ops = REFERENCE_OPS) -> torch.Tensor:
        """Final normed hidden states ``[B, T, d]`` (or ``[B, len(rows), d]``) of ``tokens`` ``[B, T]``.

        start: position of ``tokens[:, 0]``, an int or an int64 device tensor (0-dim or ``[B]``: positions, RoPE
        and cache writes on the device, so one CUDA graph serves every block; needs ``kv_len``). kv_len: attend
        over cache slots ``[0, kv_len)`` (default ``start + T``). write_from: int64 ``[B]``, row b writes only
        slots ``>= write_from[b]``. rows: the positions to return; the last layer's queries, FFN and final norm
        run only there (its keys and values still cover all T tokens).
        """
        missing = [f for f in needs if getattr(ops, f) is None]
        if missing:
            raise ValueError(f"ops {ops.name!r} lacks {missing}, which the {cfg.family} model needs")
        B, T = tokens.shape
        H, D, eps = cfg.n_heads, cfg.head_dim, cfg.rms_norm_eps
        kv_len = check_call(params, T, start, cache, kv_len)
        h = params.wte[tokens]
        n_layers = len(params.layers)
        a = ops.rms_norm(h, params.layers[0].attn_norm, eps) if n_layers else None
        for i, lp in enumerate(params.layers):
            with record_function(f"layer{i}"):
                kci, vci = (None, None) if cache is None else (cache.k[i], cache.v[i])
                q, kc, vc = qkv_step(ops, cfg, lp, a, params, start, kci, vci, write_from)
                if i == n_layers - 1 and rows is not None:  # the last layer's queries and residual at rows only
                    q, h = q[:, rows].contiguous(), h[:, rows].contiguous()
                    key_end = None if key_end is None else key_end[..., rows].contiguous()
                Tq = q.shape[1]
                o = ops.attention(q, kc, vc, kv_len, kv_start, key_end)
                nxt = params.layers[i + 1].attn_norm if i + 1 < n_layers else params.ln_f
                # h + attn_out(o) (the residual add fused), then the FFN's norm
                f, h = linear_norm(ops, o.reshape(B, Tq, H * D), lp.w_o, h, lp.ff_norm, eps)
                # h + ffn(f), then the next layer's attention norm (the final norm after the last)
                a, h = ffn_step(ops, cfg, lp, f.reshape(B * Tq, -1), h.reshape(B * Tq, -1), nxt)
                a, h = a.view(B, Tq, -1), h.view(B, Tq, -1)
        if not n_layers:
            if rows is not None:
                h = h[:, rows].contiguous()
            a = ops.rms_norm(h, params.ln_f, eps)
        return a

    return forward_hidden


def check_call(params, T: int, start, cache: Optional[KVCache], kv_len: Optional[int]) -> int:
    """Check a forward call's positions and cache use; returns the ``kv_len`` to attend over (every family)."""
    dynamic = isinstance(start, torch.Tensor)
    if dynamic:
        if cache is None or kv_len is None:
            raise ValueError("a tensor start needs a cache and an explicit kv_len")
    elif start < 0 or start + T > params.rope_cos.shape[0]:
        raise ValueError(f"positions [{start}, {start + T}) exceed max_sequence_length={params.rope_cos.shape[0]}")
    if cache is not None:
        kv_len = start + T if kv_len is None else kv_len
        if kv_len > cache.t_max or (not dynamic and start + T > cache.t_max):
            raise ValueError(f"cache has {cache.t_max} slots; the call needs {kv_len} (start {start}, {T} tokens)")
    elif kv_len not in (None, T):
        raise ValueError(f"kv_len={kv_len} needs a cache (without one the tokens see only themselves)")
    return T if cache is None else kv_len


def linear_norm(ops: Ops, x, w, residual, norm_weight, eps):
    """``(rms_norm(h), h)`` with ``h = residual + x @ w.T``: the fused op when ``ops`` has one."""
    if ops.linear_norm is not None:
        return ops.linear_norm(x, w, residual, norm_weight, eps)
    h = ops.linear(x, w, residual)
    return ops.rms_norm(h, norm_weight, eps), h


def qkv_step(ops: Ops, cfg, lp, a, params, start, kci, vci, write_from):
    """The dense QKV step: the QKV projection (+ q/k/v biases: Qwen2 / Dream), RoPE on q and k (fp32 math),
    rotated keys and values into the cache slots."""
    if ops.qkv_proj_rope is not None:
        bias = {} if lp.b_qkv is None else dict(bias=lp.b_qkv)
        return ops.qkv_proj_rope(a, lp.w_qkv, params.rope_cos, params.rope_sin, start, kci, vci, n_heads=cfg.n_heads,
                                 write_from=write_from, **bias)
    qkv = ops.linear(a, lp.w_qkv)
    if lp.b_qkv is not None:  # added to the rounded product
        qkv = qkv + lp.b_qkv
    qkv = qkv.view(*a.shape[:2], cfg.n_heads + 2 * cfg.n_kv_heads, cfg.head_dim)
    return ops.qkv_rope(qkv, params.rope_cos, params.rope_sin, start, kci, vci, n_heads=cfg.n_heads,
                        write_from=write_from)


def mlp_norm(ops: Ops, cfg, lp, f, h, next_norm):
    """The dense FFN step: ``(rms_norm(h'), h')`` with ``h' = h + mlp(f)``, the fused op when ``ops`` has one."""
    if ops.mlp_norm is not None:
        return ops.mlp_norm(f, lp.w_gate_up, lp.w_down, h, next_norm, cfg.rms_norm_eps)
    h = ops.mlp(f, lp.w_gate_up, lp.w_down, h)
    return ops.rms_norm(h, next_norm, cfg.rms_norm_eps), h


forward_hidden = make_forward_hidden(qkv_step, mlp_norm)


def logits_from_hidden(params: Params, hidden: torch.Tensor, ops: Ops = REFERENCE_OPS) -> torch.Tensor:
    """LM head: ``[..., d] -> [..., V]`` in the params dtype (the reference model's logits)."""
    return ops.linear(hidden, params.lm_head)


def forward(params, cfg, tokens: torch.Tensor, **kwargs) -> torch.Tensor:
    """Logits ``[B, T, V]`` (or of ``rows``) of any registered family (its ``forward_hidden``, dispatched on
    ``cfg``, then ``params.lm_head``); same arguments as :func:`forward_hidden`."""
    ops = kwargs.get("ops", REFERENCE_OPS)
    return logits_from_hidden(params, family_forward_hidden(params, cfg, tokens, **kwargs), ops)


FAMILY = Family(name="llada", config=LLaDAConfig, forward_hidden=forward_hidden, load_params=load_params)
