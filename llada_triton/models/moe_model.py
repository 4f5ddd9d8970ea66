"""LLaDA2.x and LLaDA-MoE as pure functions over plain tensors (one code path; the config says which).

A layer: RMSNorm -> QKV projection -> per-head QK-norm -> RoPE over the first ``rotary_dim`` features of each head
-> GQA attention over the KV cache -> output projection (+ residual) -> RMSNorm -> a dense SwiGLU MLP (LLaDA2's
first ``first_k_dense_replace`` layers) or the MoE block: ``ops.moe_route``, ``ops.moe_experts`` and the shared
expert added unweighted (+ residual). Arguments and the cache contract are those of
:func:`llada_triton.models.model.forward_hidden`, so the driver and its cache policies run either model unchanged.
"""
from __future__ import annotations

import torch

from .model import forward, make_forward_hidden, mlp_norm
from .moe_config import MoEConfig
from .moe_weights import MoELayerParams
from .ops import Ops
from .weights import Params

__all__ = ["forward_hidden", "forward", "moe_block"]  # forward: any family's, from .model


def qkv_step(ops: Ops, cfg: MoEConfig, lp: MoELayerParams, a, params: Params, start, kci, vci, write_from):
    """The QKV projection, QK-norm, partial RoPE and the cache write (fused when ``ops`` has the fused op)."""
    eps, H, D = cfg.rms_norm_eps, cfg.n_heads, cfg.head_dim
    if ops.qkv_proj_norm_rope is not None:
        return ops.qkv_proj_norm_rope(a, lp.w_qkv, lp.q_norm, lp.k_norm, eps, params.rope_cos, params.rope_sin,
                                      start, kci, vci, n_heads=H, write_from=write_from, head_dim=D)
    qkv = ops.linear(a, lp.w_qkv).view(*a.shape[:2], H + 2 * cfg.n_kv_heads, D)
    return ops.qk_norm_rope(qkv, lp.q_norm, lp.k_norm, eps, params.rope_cos, params.rope_sin, start, kci, vci,
                            n_heads=H, write_from=write_from)


def ffn_step(ops: Ops, cfg: MoEConfig, lp: MoELayerParams, f, h, next_norm):
    """The MoE block (or a dense layer's MLP) + the residual, then ``next_norm``: ``(normed, h)``."""
    if lp.is_moe:
        return ops.rms_norm(moe_block(ops, cfg, lp, f), next_norm, cfg.rms_norm_eps, h)
    return mlp_norm(ops, cfg, lp, f, h, next_norm)


forward_hidden = make_forward_hidden(qkv_step, ffn_step, needs=("qk_norm_rope", "moe_route", "moe_experts"))


def moe_block(ops: Ops, cfg: MoEConfig, lp: MoELayerParams, x: torch.Tensor) -> torch.Tensor:
    """The MoE block's output ``[M, d]`` (without the residual) for normed inputs ``x`` ``[M, d]``: the
    routed experts' weighted sum plus the shared expert (when the config has one)."""
    weights, ids = ops.moe_route(x, lp.router_w, lp.expert_bias, top_k=cfg.top_k, n_group=cfg.n_group,
                                 topk_group=cfg.topk_group, score_func=cfg.score_func,
                                 norm_topk_prob=cfg.norm_topk_prob, routed_scaling_factor=cfg.routed_scaling_factor)
    shared = None if lp.shared_gate_up is None else ops.mlp(x, lp.shared_gate_up, lp.shared_down)
    return ops.moe_experts(x, lp.experts_gate_up, lp.experts_down, weights, ids, shared)

