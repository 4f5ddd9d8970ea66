"""LLaDA2.x / LLaDA-MoE's QKV projection with per-head QK-norm, partial RoPE and the KV-cache write in its
epilogue (:func:`qkv_proj_norm_rope`): one launch for ``linear(x, w_qkv)`` + ``qkv_norm_rope_cache_ref``.

A program computes one whole head (RMSNorm needs all its features) for ``BM`` tokens with the weight-streaming
K-loop of :mod:`llada_triton.kernels.gemm` (weight rows as the MMA's M); at decode sizes, where that gives few
programs, K is split and a second launch of the same kernel sums the fp32 partials in a fixed order and runs the
epilogue. The tile's ``2 HP`` weight rows are two halves pairing each feature with its rotation partner: row ``j``
of the first half holds feature ``j`` (``j < R/2``, rotated) or ``R + j - R/2`` (passed through), the second half
its partner ``R/2`` (rotated) or ``(D - R)/2`` (passed through) further on; rows ``j >= D/2`` are padding.
The epilogue rounds the projection (+ bias) to ``x.dtype`` as ``F.linear``, RMS-normalises q and k heads as
:func:`llada_triton.kernels.reference.rms_norm_ref`, rotates their first ``R`` features in fp32 and stores as
:func:`llada_triton.kernels.qkv.qkv_proj_rope`. Numerics: :func:`llada_triton.kernels.reference.qkv_proj_norm_rope_ref`
up to the GEMM's and the norm's fp32 summation order and ``rsqrt``.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from llada_triton.kernels._common import (as_rows, cdiv, check_vector, clamp_pow2, dot_flags, gdc_options,
                                          gdc_wait_and_release, is_interpreter, memo_config, next_pow2)
from llada_triton.kernels.gemm import dot_loop, tile_offsets
from llada_triton.kernels.qkv import cache_strides, check_proj_args, head_dest, split_out, token_positions
from llada_triton.kernels.reference import check_eps
from llada_triton.kernels.rotary import check_rope_args, rotate_pair

__all__ = ["qkv_proj_norm_rope"]


@triton.jit
def _head_rms_norm(x1, x2, w_ptr, f1, f2, ok, eps, D: tl.constexpr, dt: tl.constexpr):
    """RMSNorm of one head per column, given as fp32 halves ``x1``, ``x2`` ``[HP, BM]`` (features ``f1``, ``f2``
    ``[HP, 1]``, rows ``ok``): ``(x rstd)`` rounded to ``dt``, times the weight, rounded (``rms_norm_ref``)."""
    ss = tl.sum(tl.where(ok, x1 * x1 + x2 * x2, 0.0), axis=0)
    rstd = tl.rsqrt(ss / D + eps)[None, :]
    w1 = tl.load(w_ptr + f1, mask=ok, other=0.0).to(tl.float32)
    w2 = tl.load(w_ptr + f2, mask=ok, other=0.0).to(tl.float32)
    n1 = ((x1 * rstd).to(dt).to(tl.float32) * w1).to(dt).to(tl.float32)
    n2 = ((x2 * rstd).to(dt).to(tl.float32) * w2).to(dt).to(tl.float32)
    return n1, n2


@triton.jit
def _qkv_norm_rope_kernel(
    x_ptr, w_ptr, b_ptr, qn_ptr, kn_ptr, out_ptr, cos_ptr, sin_ptr, kc_ptr, vc_ptr, p_ptr,
    start_ptr, start_val, wf_ptr, s_start,
    M, T, H, HKV, K, K_PER_SPLIT, sps, eps,   # sps: the partials' split stride (NH 2 HP M)
    stride_xm, stride_wn,
    sob, sot, soh,                       # out [B, T, H + 2 HKV, D] (last dim contiguous)
    skb, skt, skh, svb, svt, svh,        # caches [B, T_max, HKV, D] (last dim contiguous)
    sct,                                 # row stride of the cos / sin tables [L, R]
    D: tl.constexpr, R: tl.constexpr, HP: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr,
    PHASE: tl.constexpr,                 # 0: GEMM + epilogue; split-K: 1 partials [S, NH, 2 HP, M], 2 sum + epilogue
    S: tl.constexpr,                     # splits (PHASE 2)
    DYN: tl.constexpr, HAS_CACHE: tl.constexpr, HAS_WF: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_NORM: tl.constexpr, EVEN_K: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
    USE_GDC: tl.constexpr = False,
):
    HALF: tl.constexpr = D // 2
    RH: tl.constexpr = R // 2            # rotation pairs (j, j + RH)
    PH: tl.constexpr = HALF - RH         # pass-through pairs (R + j', R + PH + j')
    _, slot, offs_m, _ = tile_offsets(M, BM, 2 * HP)   # slot: the head (q heads, then k, then v)
    i = tl.arange(0, 2 * HP)
    ji = i % HP
    gi = i // HP
    feat = tl.where(ji < RH, ji + gi * RH, ji + RH + gi * PH)
    rows_w = (slot * D + tl.where(ji < HALF, feat, 0)).to(tl.int64)          # padding rows re-read feature 0
    p_tile = p_ptr + ((slot * 2 * HP + i).to(tl.int64) * M)[:, None] + offs_m[None, :]   # split 0's [2 HP, BM]
    gdc_wait_and_release(USE_GDC)
    if PHASE == 2:  # the splits' partials summed in a fixed order (deterministic)
        acc = tl.zeros((2 * HP, BM), dtype=tl.float32)
        for s in tl.static_range(S):
            acc += tl.load(p_tile, mask=(offs_m < M)[None, :], other=0.0)
            p_tile += sps                # pointer steps: no int32 product of split and stride
    else:
        k0 = tl.program_id(1) * K_PER_SPLIT
        rows_x = (offs_m % M).to(tl.int64)   # wrapped rows: unpredicated loads, masked stores
        offs_k = k0 + tl.arange(0, BK)
        x_ptrs = x_ptr + rows_x[:, None] * stride_xm + offs_k[None, :]             # [BM, BK]
        w_ptrs = w_ptr + rows_w[:, None] * stride_wn + offs_k[None, :]             # [2 HP, BK]
        acc = dot_loop(x_ptr, x_ptrs, w_ptr, w_ptrs, tl.minimum(K - k0, K_PER_SPLIT),
                       tl.zeros((2 * HP, BM), dtype=tl.float32), BK, EVEN_K, UPCAST, True, IEEE)
    if PHASE == 1:
        tl.store(p_tile + tl.program_id(1).to(tl.int64) * sps, acc, mask=(offs_m < M)[None, :])
    else:
        # epilogue: the projection (+ bias) rounded once as F.linear's output; QK-norm, then RoPE on the first R dims
        if HAS_BIAS:
            acc += tl.load(b_ptr + rows_w).to(tl.float32)[:, None]
        dt = out_ptr.dtype.element_ty
        y = acc.to(dt).to(tl.float32)
        x1, x2 = tl.split(tl.permute(tl.reshape(y, (2, HP, BM)), (1, 2, 0)))   # [HP, BM]: the two halves' rows
        m_ok, b, t, pos = token_positions(offs_m, M, T, start_ptr, start_val, s_start, DYN)
        j = tl.arange(0, HP)[:, None]
        ok = j < HALF
        f1 = tl.where(j < RH, j, j + RH)
        f2 = tl.where(j < RH, j + RH, j + RH + PH)
        if slot < H + HKV:
            if HAS_NORM:
                if slot < H:
                    x1, x2 = _head_rms_norm(x1, x2, qn_ptr, f1, f2, ok, eps, D, dt)
                else:
                    x1, x2 = _head_rms_norm(x1, x2, kn_ptr, f1, f2, ok, eps, D, dt)
            rot = j < RH
            crow = (pos * sct)[None, :]
            o1, o2 = rotate_pair(x1, x2, cos_ptr + crow + j, sin_ptr + crow + j, rot & m_ok[None, :], RH)
            o1 = tl.where(rot, o1, x1)
            o2 = tl.where(rot, o2, x2)
        else:
            o1 = x1
            o2 = x2
        base, mask = head_dest(slot, H, HKV, b, t, pos, m_ok, out_ptr, kc_ptr, vc_ptr, wf_ptr,
                               sob, sot, soh, skb, skt, skh, svb, svt, svh, HAS_CACHE, HAS_WF)
        mask = mask & ok
        tl.store(base + f1, o1.to(dt), mask=mask)
        tl.store(base + f2, o2.to(dt), mask=mask)


@memo_config
def qkv_norm_config(M: int, K: int, D: int, NH: int, dtype: torch.dtype, interpret: Optional[bool] = None) -> dict:
    """Block sizes of :func:`qkv_proj_norm_rope` (a new dict each call): ``HP`` (half the tile's weight rows,
    >= D/2 and >= 8 so the MMA's M is >= 16), ``BM`` tokens, ``BK``, and ``SPLIT_K``: at decode sizes a head per
    program gives few programs (LLaDA2.0-mini: 24 heads), so K is split towards 128 programs (>= 8 K-steps each)."""
    interpret = is_interpreter() if interpret is None else interpret
    hp = max(8, next_pow2(D // 2))
    bm = clamp_pow2(M, 16, 64)
    if interpret:  # one K-step where possible: the interpreter pays per tensor op
        return dict(HP=hp, BM=bm, BK=clamp_pow2(K, 16, 256), SPLIT_K=1, num_warps=4, num_stages=1)
    warps = 8 if 2 * hp * bm >= 8192 else 4  # a [128, 64] fp32 accumulator plus the epilogue's temporaries
    if dtype == torch.float32:  # correctness path (IEEE fp32 dots), not tuned
        return dict(HP=hp, BM=bm, BK=32, SPLIT_K=1, num_warps=warps, num_stages=2)
    tiles = cdiv(M, bm) * NH
    split = max(1, min(cdiv(cdiv(K, 64), 8), 128 // tiles)) if M <= 64 else 1
    return dict(HP=hp, BM=bm, BK=64, SPLIT_K=split, num_warps=warps, num_stages=4)


def qkv_proj_norm_rope(x: torch.Tensor, w_qkv: torch.Tensor, q_norm: Optional[torch.Tensor],
                       k_norm: Optional[torch.Tensor], eps: float, cos_table: torch.Tensor, sin_table: torch.Tensor,
                       start, k_cache: Optional[torch.Tensor] = None, v_cache: Optional[torch.Tensor] = None, *,
                       n_heads: int, write_from: Optional[torch.Tensor] = None, head_dim: Optional[int] = None,
                       bias: Optional[torch.Tensor] = None, config: Optional[dict] = None):
    """``qkv_norm_rope_cache_ref(linear(x, w_qkv, bias).view(B, T, NH, D), q_norm, k_norm, eps, ...)`` in one
    launch (two when split over K), any number of rows.

    x, w_qkv (``NH = n_heads + 2 Hkv`` heads; GQA when ``Hkv < n_heads``), head_dim ``D`` (even), bias: as
    :func:`llada_triton.kernels.qkv.qkv_proj_rope`. q_norm, k_norm: per-head RMSNorm weights ``[D]`` of x's dtype,
    or both None; eps: the norm's epsilon. cos_table, sin_table: fp32 ``[L, R]``, ``R <= D`` even: the first ``R``
    features of each q / k head rotate. start, k_cache, v_cache, write_from: as
    :func:`llada_triton.kernels.rotary.qkv_rope_cache` (the cache holds normed, rotated keys). config: block sizes
    and ``SPLIT_K`` (default :func:`qkv_norm_config`). Returns ``(q, k_cache, v_cache)`` with a cache, else
    ``(q, k, v)``: views of a new ``[B, T, NH, D]`` tensor."""
    B, T, d, H, D, NH = check_proj_args(x, w_qkv, n_heads, head_dim, k_cache, bias)
    eps = check_eps(eps)
    if (q_norm is None) != (k_norm is None):
        raise ValueError("q_norm and k_norm must both be given or both be None")
    has_norm = q_norm is not None
    if has_norm:
        check_vector("q_norm", q_norm, D, (x.dtype,), x.device)
        check_vector("k_norm", k_norm, D, (x.dtype,), x.device)
    out = torch.empty((B, T, NH, D), device=x.device, dtype=x.dtype)
    _, Hkv, dyn, positions, has_cache = check_rope_args(out, cos_table, sin_table, start, k_cache, v_cache, H,
                                                         write_from, partial=True)
    M = B * T
    if M == 0:
        return split_out(out, H, Hkv, k_cache, v_cache)
    x2 = as_rows("x", x, d)
    cfg = qkv_norm_config(M, d, D, NH, x.dtype) if config is None else dict(config)
    if cfg["HP"] < D // 2:
        raise ValueError(f"config HP={cfg['HP']} must be >= head_dim / 2 = {D // 2} (a tile holds a whole head)")
    k_per_split = cdiv(cdiv(d, cfg["BK"]), max(1, cfg.get("SPLIT_K", 1))) * cfg["BK"]
    split = cdiv(d, k_per_split) if d else 1   # no empty splits
    partials = torch.empty((split, NH, 2 * cfg["HP"], M), device=x.device, dtype=torch.float32) if split > 1 else out
    kc, vc, kst, vst = cache_strides(out, k_cache, v_cache)
    tiles = cdiv(M, cfg["BM"]) * NH
    pdl = gdc_options(x, M)
    for phase, grid in (((1, (tiles, split)), (2, (tiles,))) if split > 1 else ((0, (tiles,)),)):
        _qkv_norm_rope_kernel[grid](
            x2, w_qkv, bias if bias is not None else out, q_norm if has_norm else out, k_norm if has_norm else out,
            out, cos_table, sin_table, kc, vc, partials, *positions,
            M, T, H, Hkv, d, k_per_split, partials[0].numel() if split > 1 else 0, eps,
            x2.stride(0), w_qkv.stride(0), *out.stride()[:3], *kst[:3], *vst[:3], cos_table.stride(0),
            D=D, R=cos_table.shape[1], HP=cfg["HP"], BM=cfg["BM"], BK=cfg["BK"], PHASE=phase, S=split,
            DYN=dyn, HAS_CACHE=has_cache, HAS_WF=write_from is not None, HAS_BIAS=bias is not None,
            HAS_NORM=has_norm, EVEN_K=d % cfg["BK"] == 0, **dot_flags(x.dtype), num_warps=cfg["num_warps"],
            num_stages=cfg["num_stages"], **pdl,
        )
    return split_out(out, H, Hkv, k_cache, v_cache)
