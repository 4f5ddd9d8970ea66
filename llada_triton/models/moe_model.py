"""LLaDA2.x and LLaDA-MoE as pure functions over plain tensors (one code path; the config says which).

A layer: RMSNorm -> QKV projection -> per-head QK-norm -> RoPE over the first ``rotary_dim`` features of each head
-> GQA attention over the KV cache -> output projection (+ residual) -> RMSNorm -> a dense SwiGLU MLP (LLaDA2's
first ``first_k_dense_replace`` layers) or the MoE block: ``ops.moe_route``, ``ops.moe_experts`` and the shared
expert added unweighted (+ residual). Arguments and the cache contract are those of
:func:`llada_triton.models.model.forward_hidden`, so the driver and its cache policies run either model unchanged.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch.profiler import record_function

from .model import KVCache, check_call, forward, last_rows, linear_norm, mlp_norm
from .moe_config import MoEConfig
from .moe_weights import MoELayerParams
from .ops import REFERENCE_OPS, Ops
from .weights import Params

__all__ = ["forward_hidden", "forward", "moe_block"]  # forward: any family's, from .model

_NEEDED = ("qk_norm_rope", "moe_route", "moe_experts")


def forward_hidden(params: Params, cfg: MoEConfig, tokens: torch.Tensor, *,
                   start: Union[int, torch.Tensor] = 0, cache: Optional[KVCache] = None,
                   kv_len: Optional[int] = None, kv_start: Optional[torch.Tensor] = None,
                   key_end: Optional[torch.Tensor] = None, rows: Optional[slice] = None,
                   write_from: Optional[torch.Tensor] = None, ops: Ops = REFERENCE_OPS) -> torch.Tensor:
    """Final normed hidden states ``[B, T, d]`` (or ``[B, len(rows), d]``) of ``tokens`` ``[B, T]``, as
    :func:`llada_triton.models.model.forward_hidden` (the cache holds normed, rotated keys)."""
    missing = [f for f in _NEEDED if getattr(ops, f) is None]
    if missing:
        raise ValueError(f"ops {ops.name!r} lacks {missing}, which the {cfg.family} model needs")
    B, T = tokens.shape
    H, Hkv, D, eps = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.rms_norm_eps
    kv_len = check_call(params, T, start, cache, kv_len)
    h = params.wte[tokens]
    n_layers = len(params.layers)
    a = ops.rms_norm(h, params.layers[0].attn_norm, eps)
    for i, lp in enumerate(params.layers):
        with record_function(f"layer{i}"):
            kci, vci = (None, None) if cache is None else (cache.k[i], cache.v[i])
            if ops.qkv_proj_norm_rope is not None:  # the projection with QK-norm, RoPE and the cache write fused
                q, kc, vc = ops.qkv_proj_norm_rope(a, lp.w_qkv, lp.q_norm, lp.k_norm, eps, params.rope_cos,
                                                   params.rope_sin, start, kci, vci, n_heads=H,
                                                   write_from=write_from, head_dim=D)
            else:
                qkv = ops.linear(a, lp.w_qkv).view(B, T, H + 2 * Hkv, D)
                q, kc, vc = ops.qk_norm_rope(qkv, lp.q_norm, lp.k_norm, eps, params.rope_cos, params.rope_sin,
                                             start, kci, vci, n_heads=H, write_from=write_from)
            q, h, ke = last_rows(q, h, key_end, rows if i == n_layers - 1 else None)
            Tq = q.shape[1]
            o = ops.attention(q, kc, vc, kv_len, kv_start, ke)
            nxt = params.layers[i + 1].attn_norm if i + 1 < n_layers else params.ln_f
            f, h = linear_norm(ops, o.reshape(B, Tq, H * D), lp.w_o, h, lp.ff_norm, eps)
            f, h = f.reshape(B * Tq, -1), h.reshape(B * Tq, -1)
            if lp.is_moe:
                a, h = ops.rms_norm(moe_block(ops, cfg, lp, f), nxt, eps, h)
            else:
                a, h = mlp_norm(ops, f, lp.w_gate_up, lp.w_down, h, nxt, eps)
            a, h = a.view(B, Tq, -1), h.view(B, Tq, -1)
    return a


def moe_block(ops: Ops, cfg: MoEConfig, lp: MoELayerParams, x: torch.Tensor) -> torch.Tensor:
    """The MoE block's output ``[M, d]`` (without the residual) for normed inputs ``x`` ``[M, d]``: the
    routed experts' weighted sum plus the shared expert (when the config has one)."""
    weights, ids = ops.moe_route(x, lp.router_w, lp.expert_bias, top_k=cfg.top_k, n_group=cfg.n_group,
                                 topk_group=cfg.topk_group, score_func=cfg.score_func,
                                 norm_topk_prob=cfg.norm_topk_prob, routed_scaling_factor=cfg.routed_scaling_factor)
    shared = None if lp.shared_gate_up is None else ops.mlp(x, lp.shared_gate_up, lp.shared_down)
    return ops.moe_experts(x, lp.experts_gate_up, lp.experts_down, weights, ids, shared)

