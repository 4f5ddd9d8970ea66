"""Which implementation runs each op: an explicit record passed to the model and the driver.

``REFERENCE_OPS`` is plain torch (runs anywhere, defines the numerics). ``triton_ops()`` returns the
Triton kernels (imports triton on call, never at import). Mix them for ablations, e.g.
``dataclasses.replace(REFERENCE_OPS, attention=triton_ops().attention)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from llada_triton.kernels import reference as ref

__all__ = ["Ops", "REFERENCE_OPS", "triton_ops"]


@dataclass(frozen=True)
class Ops:
    """Op implementations; each field has the signature of the ``kernels.reference`` function named.

    linear(x, w, residual=None) -> residual + x @ w.T; rms_norm -> rms_norm_ref; qkv_rope -> qkv_rope_cache_ref
    (RoPE on q/k of the fused projection + K/V into the cache); attention -> block_attention_ref;
    mlp -> swiglu_mlp_ref; head(hidden, w, *, temperature, seed, offset, banned_ids, no_confidence_ids,
    uncond_hidden, cfg_scale) -> (x0, conf) as head_confidence_ref (noise from (seed, offset)); a head that
    also takes ``n_rows`` and ``row_ids`` (the Triton one) lets the driver run it on the still-masked rows
    only (decode.generate.head_skips_rows); select -> select_transfer_ref.

    Optional fused fields (None: the model composes them from the fields above):
    linear_norm(x, w, residual, norm_weight, eps) -> (y, h) as linear_rms_norm_ref (the output projection
    and the MLP's norm); mlp_norm(x, w_gate_up, w_down, residual, norm_weight, eps) -> (y, h) as
    swiglu_mlp_rms_norm_ref (the MLP and the next norm); qkv_proj_rope(x, w_qkv, cos, sin, start, k_cache,
    v_cache, *, n_heads, write_from) -> (q, k, v) as qkv_proj_rope_ref (the QKV projection with RoPE and
    the cache write); commit(tokens, start, x0, conf, *, mask_id, done, k, threshold, factor, nfe) ->
    (committed, conf, block) as commit_step_ref (the selection, the commit into the token buffer and the NFE
    count of a decoding step in one launch). When set they take precedence over ``linear`` / ``mlp`` /
    ``qkv_rope`` + ``rms_norm`` / ``select`` at those places: set them to None when replacing ``linear``,
    ``mlp``, ``qkv_rope`` or ``select`` in an ablation.

    Fields the MoE families (LLaDA2.x, LLaDA-MoE; :mod:`llada_triton.models.moe_model`) need, None where an
    ``Ops`` does not provide them (the model then names the missing field): qk_norm_rope(qkv, q_norm, k_norm,
    eps, cos, sin, start, k_cache, v_cache, *, n_heads, write_from) -> (q, k, v) as qkv_norm_rope_cache_ref
    (per-head QK-norm, then RoPE, partial when the tables are narrower than head_dim, and the cache write);
    moe_route(x, router_w, expert_bias, *, top_k, n_group, topk_group, score_func, norm_topk_prob,
    routed_scaling_factor) -> (weights, ids) as moe_route_ref; moe_experts(x, w_gate_up [E, 2I, d],
    w_down [E, d, I], weights, ids, residual) -> y as moe_experts_ref.
    """
    name: str
    linear: Callable
    rms_norm: Callable
    qkv_rope: Callable
    attention: Callable
    mlp: Callable
    head: Callable
    select: Callable
    linear_norm: Optional[Callable] = None
    mlp_norm: Optional[Callable] = None
    qkv_proj_rope: Optional[Callable] = None
    commit: Optional[Callable] = None
    qk_norm_rope: Optional[Callable] = None
    moe_route: Optional[Callable] = None
    moe_experts: Optional[Callable] = None


def _linear_ref(x, w, residual=None):
    y = F.linear(x, w)
    return y if residual is None else residual + y


def _linear_decode(x, w, residual=None, *, max_rows: int = 64):
    """Triton GEMM for decode-sized inputs (<= ``max_rows`` rows, weight-bandwidth bound), cuBLAS above."""
    if x.numel() // x.shape[-1] <= max_rows:
        from llada_triton.kernels import linear
        return linear(x, w, residual)
    return _linear_ref(x, w, residual)


def _mlp_ref(x, w_gate_up, w_down, residual=None):
    # separate gate / up products, exactly as the reference modeling code (ff_proj, up_proj)
    h = w_down.shape[1]
    y = F.linear(F.silu(F.linear(x, w_gate_up[:h])) * F.linear(x, w_gate_up[h:]), w_down)
    return y if residual is None else residual + y


def _head_ref(hidden, w, *, temperature=0.0, seed=0, offset=0, banned_ids=(), no_confidence_ids=(),
              uncond_hidden=None, cfg_scale=0.0):
    gen = None
    if temperature > 0:
        gen = torch.Generator(device=hidden.device).manual_seed((int(seed) * 1_000_003 + int(offset)) % (2 ** 63))
    return ref.head_confidence_ref(hidden, w, temperature=temperature, generator=gen, banned_ids=banned_ids,
                                   no_confidence_ids=no_confidence_ids, uncond_hidden=uncond_hidden,
                                   cfg_scale=cfg_scale)


# Up to this many rows the fused Triton MLP runs (weight-bound: it beats cuBLAS); above it, cuBLAS GEMMs around
# the Triton silu_mul, faster at 384 and 1024 rows under the power cap where compute-bound decode steps run
# (H200, 32-layer MLP chains replayed for 8 s: results/bench_decode/sustained_mlp_h200_7adef5d.csv). With the
# one-dot gate-up (8d1e65f, a58d151) the fused MLP wins at 128 rows (block batch 4, three machines: 0.5-1% per step)
# but not at 96 (a tie on one machine, 2-4% slower on two) or 256 (batch 8: 8.146-8.167 vs 8.014-8.028 ms), so the
# switch stays at 64 (results/bench_decode/mlp_rows_ab_h200_8d1e65f.txt).
TRITON_MLP_MAX_ROWS = 64


def _cublas_mlp_rows(rows: int) -> bool:
    return rows > TRITON_MLP_MAX_ROWS


def _mlp_cublas(x, w_gate_up, w_down):
    """The MLP without its residual: cuBLAS GEMMs (one over the fused gate-up weight) around the Triton
    ``silu_mul`` (one launch for the activation instead of torch's silu and mul)."""
    from llada_triton.kernels import silu_mul
    return F.linear(silu_mul(F.linear(x, w_gate_up)), w_down)


def _add_norm(y, residual, norm_weight, eps):
    """``(rms_norm(h), h)`` with ``h = residual + y`` (one Triton launch: the add fused into the norm)."""
    from llada_triton.kernels import rms_norm
    if residual is None:
        return rms_norm(y, norm_weight, eps), y
    return rms_norm(y, norm_weight, eps, residual)


def _mlp_decode(x, w_gate_up, w_down, residual=None):
    """Fused Triton MLP where it beats cuBLAS (<= ``TRITON_MLP_MAX_ROWS`` rows: weight-bound), cuBLAS GEMMs +
    the Triton activation above."""
    if _cublas_mlp_rows(x.numel() // x.shape[-1]):
        y = _mlp_cublas(x, w_gate_up, w_down)
        return y if residual is None else residual + y
    from llada_triton.kernels import swiglu_mlp
    return swiglu_mlp(x, w_gate_up, w_down, residual)


def _linear_norm_decode(x, w, residual, norm_weight, eps, *, max_rows: int = 64):
    """Triton GEMM with the norm folded into its split-K reduction (<= ``max_rows`` rows), else cuBLAS +
    the Triton RMSNorm with the residual add fused."""
    if x.numel() // x.shape[-1] <= max_rows:
        from llada_triton.kernels import linear_rms_norm
        return linear_rms_norm(x, w, residual, norm_weight, eps)
    return _add_norm(F.linear(x, w), residual, norm_weight, eps)


def _mlp_norm_decode(x, w_gate_up, w_down, residual, norm_weight, eps):
    """:func:`_mlp_decode`'s dispatch with the following RMSNorm: fused into the Triton MLP's reduction,
    or (cuBLAS rows) with the residual add fused into the norm."""
    if _cublas_mlp_rows(x.numel() // x.shape[-1]):
        return _add_norm(_mlp_cublas(x, w_gate_up, w_down), residual, norm_weight, eps)
    from llada_triton.kernels import swiglu_mlp_rms_norm
    return swiglu_mlp_rms_norm(x, w_gate_up, w_down, residual, norm_weight, eps)


REFERENCE_OPS = Ops(
    name="reference",
    linear=_linear_ref,
    rms_norm=ref.rms_norm_ref,
    qkv_rope=ref.qkv_rope_cache_ref,
    attention=ref.block_attention_ref,
    mlp=_mlp_ref,
    head=_head_ref,
    select=ref.select_transfer_ref,
    qk_norm_rope=ref.qkv_norm_rope_cache_ref,
    moe_route=ref.moe_route_ref,
    moe_experts=ref.moe_experts_ref,
)


def triton_ops(**overrides) -> Ops:
    """The Triton implementations (imports ``kernels``' Triton modules now). The QKV and output
    projections use the Triton decode GEMM up to 64 rows and cuBLAS (``F.linear``) above, where it is
    faster; ``overrides`` replace single fields. The MoE families' router and experts are the fused MoE kernels
    (``kernels.moe``); their QK-norm + partial RoPE has no Triton kernel yet: that field is the torch reference
    (it runs on any device)."""
    from llada_triton.kernels import block_attention
    from llada_triton.kernels import rms_norm
    from llada_triton.kernels import qkv_proj_rope
    from llada_triton.kernels import commit_step, head_confidence, select_transfer
    from llada_triton.kernels import qkv_rope_cache
    from llada_triton.kernels import moe_experts, moe_route

    ops = Ops(name="triton", linear=_linear_decode, rms_norm=rms_norm, qkv_rope=qkv_rope_cache,
              attention=block_attention,
              mlp=_mlp_decode, head=head_confidence, select=select_transfer, linear_norm=_linear_norm_decode,
              mlp_norm=_mlp_norm_decode, qkv_proj_rope=qkv_proj_rope, commit=commit_step,
              qk_norm_rope=ref.qkv_norm_rope_cache_ref, moe_route=moe_route, moe_experts=moe_experts)
    if overrides:
        from dataclasses import replace
        ops = replace(ops, **overrides)
    return ops
