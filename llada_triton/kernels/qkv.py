""":func:`qkv_proj_rope` (``_qkv_proj_rope_kernel``): the fused QKV projection with RoPE and the KV-cache write in
its epilogue, one launch at decode sizes instead of ``linear`` + :func:`llada_triton.kernels.rotary.qkv_rope_cache`.

Each program's ``[2 HB, rows]`` tile (weight rows as the MMA's M, the K-loop of :mod:`llada_triton.kernels.gemm`)
holds ``HB`` rotation pairs ``(j, j + D/2)`` of one head; the epilogue rounds the projection to the input dtype,
rotates q and k in fp32 and stores q into the output, k and v into the cache (or the output without one).
Numerics: :func:`llada_triton.kernels.reference.qkv_proj_rope_ref` up to the GEMM's fp32 accumulation order.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from llada_triton.kernels._common import (DTYPES, as_rows, cdiv, check_tensor, check_vector, dot_flags, gdc_options,
                                          gdc_wait_and_release, is_interpreter, memo_config, next_pow2,
                                          prefetch_weight_rows)
from llada_triton.kernels.gemm import dot_loop, tile_offsets
from llada_triton.kernels.rotary import check_rope_args, qkv_rope_cache, rotate_pair, split_out

__all__ = ["qkv_proj_rope", "fused_supported"]

MAX_ROWS = 64  # the fused path is the decode GEMM; more rows belong to a compute-bound GEMM


@triton.jit
def token_positions(offs_m, M, T, start_ptr, start_val, s_start, DYN: tl.constexpr):
    """``(m_ok, b, t, pos)`` of token rows ``offs_m`` (``pos = start + t``); with ``DYN`` ``start`` is read on the
    device, per batch row (``s_start = 1``) or shared (``s_start = 0``)."""
    m_ok = offs_m < M
    b = (offs_m // T).to(tl.int64)
    t = (offs_m % T).to(tl.int64)
    if DYN:
        start = tl.load(start_ptr + b * s_start, mask=m_ok, other=0)
    else:
        start = start_val
    return m_ok, b, t, (start + t).to(tl.int64)


@triton.jit
def head_dest(slot, H, HKV, b, t, pos, m_ok, out_ptr, kc_ptr, vc_ptr, wf_ptr, sob, sot, soh,
              skb, skt, skh, svb, svt, svh, HAS_CACHE: tl.constexpr, HAS_WF: tl.constexpr):
    """``(base, mask)``: ``[1, BM]`` pointers to feature 0 of head ``slot`` (q, then k, then v heads) of the tile's
    tokens: k / v in the cache when there is one (slots below ``write_from[b]`` masked off), else the output."""
    mask = m_ok[None, :]
    if HAS_CACHE and slot >= H:
        if HAS_WF:
            mask = mask & (pos >= tl.load(wf_ptr + b, mask=m_ok, other=0))[None, :]
        if slot < H + HKV:
            base = kc_ptr + (b * skb + pos * skt + (slot - H) * skh)[None, :]
        else:
            base = vc_ptr + (b * svb + pos * svt + (slot - H - HKV) * svh)[None, :]
    else:
        base = out_ptr + (b * sob + t * sot + slot * soh)[None, :]
    return base, mask


@triton.jit
def _qkv_proj_rope_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr, cos_ptr, sin_ptr, kc_ptr, vc_ptr,
    start_ptr, start_val, wf_ptr, s_start,
    M, T, H, HKV, K,
    stride_xm, stride_wn,
    sob, sot, soh,                       # out [B, T, H + 2 HKV, D] (last dim contiguous)
    skb, skt, skh, svb, svt, svh,        # caches [B, T_max, HKV, D] (last dim contiguous)
    sct,                                 # row stride of the cos / sin tables [L, D]
    D: tl.constexpr, HB: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr,
    DYN: tl.constexpr, HAS_CACHE: tl.constexpr, HAS_WF: tl.constexpr, HAS_BIAS: tl.constexpr,
    EVEN_K: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr, USE_GDC: tl.constexpr = False,
):
    HALF: tl.constexpr = D // 2
    TPH: tl.constexpr = HALF // HB       # tiles per head
    BN: tl.constexpr = 2 * HB
    _, pid_n, offs_m, _ = tile_offsets(M, BM, BN)
    slot = pid_n // TPH                  # head slot: q heads, then k, then v
    j0 = (pid_n % TPH) * HB
    i = tl.arange(0, BN)
    feat = j0 + (i % HB) + (i // HB) * HALF          # tile rows: features j0.. and their partners HALF + j0..
    rows_w = (slot * D + feat).to(tl.int64)
    rows_x = (offs_m % M).to(tl.int64)   # wrapped rows: unpredicated loads, masked stores
    offs_k = tl.arange(0, BK)
    x_ptrs = x_ptr + rows_x[:, None] * stride_xm + offs_k[None, :]             # [BM, BK]
    w_ptrs = w_ptr + rows_w[:, None] * stride_wn + offs_k[None, :]             # [BN, BK]
    prefetch_weight_rows(w_ptr, rows_w, stride_wn, 0, K, USE_GDC)
    gdc_wait_and_release(USE_GDC)
    acc = dot_loop(x_ptr, x_ptrs, w_ptr, w_ptrs, K, tl.zeros((BN, BM), dtype=tl.float32), BK, EVEN_K, UPCAST, True,
                   IEEE)

    # epilogue: the projection (+ bias, in fp32) rounded once as F.linear's output, then RoPE in fp32 (q and k)
    if HAS_BIAS:
        acc += tl.load(b_ptr + rows_w).to(tl.float32)[:, None]
    dt = out_ptr.dtype.element_ty
    y = acc.to(dt).to(tl.float32)
    x1, x2 = tl.split(tl.permute(tl.reshape(y, (2, HB, BM)), (1, 2, 0)))   # [HB, BM]: feature j0+r, HALF+j0+r
    m_ok, b, t, pos = token_positions(offs_m, M, T, start_ptr, start_val, s_start, DYN)
    c = (j0 + tl.arange(0, HB))[:, None]                                    # [HB, 1]
    if slot < H + HKV:
        crow = (pos * sct)[None, :]
        o1, o2 = rotate_pair(x1, x2, cos_ptr + crow + c, sin_ptr + crow + c, m_ok[None, :], HALF)
    else:
        o1 = x1
        o2 = x2
    base, mask = head_dest(slot, H, HKV, b, t, pos, m_ok, out_ptr, kc_ptr, vc_ptr, wf_ptr,
                           sob, sot, soh, skb, skt, skh, svb, svt, svh, HAS_CACHE, HAS_WF)
    tl.store(base + c, o1.to(dt), mask=mask)
    tl.store(base + HALF + c, o2.to(dt), mask=mask)


def _half_tile(D: int) -> int:
    """Rotation pairs per tile: the largest power of two <= 32 dividing D/2 (0 when below 8)."""
    half = D // 2
    hb = 32
    while hb >= 8 and half % hb:
        hb //= 2
    return hb if hb >= 8 and D % 2 == 0 else 0


def fused_supported(rows: int, D: int) -> bool:
    """Whether :func:`qkv_proj_rope` runs the fused kernel (else ``F.linear`` + ``qkv_rope_cache``)."""
    return 0 < rows <= MAX_ROWS and _half_tile(D) > 0


@memo_config
def qkv_config(M: int, K: int, dtype: torch.dtype, interpret: Optional[bool] = None) -> dict:
    """Block sizes from the QKV row of scripts/sweep_gemm.py (a new dict per call, memoised per shape)."""
    interpret = is_interpreter() if interpret is None else interpret
    bm = max(16, min(64, next_pow2(max(M, 1))))
    if interpret:
        return dict(BM=bm, BK=max(16, min(256, next_pow2(K))), num_warps=4, num_stages=1)
    if dtype == torch.float32:
        return dict(BM=bm, BK=32, num_warps=4, num_stages=2)
    return dict(BM=bm, BK=64, num_warps=4, num_stages=6)


def check_proj_args(x, w_qkv, n_heads, head_dim, k_cache, bias):
    """Check a fused QKV projection's ``x [B, T, d]``, ``w_qkv [NH * D, d]``, ``bias``: ``(B, T, d, H, D, NH)``."""
    check_tensor("x", x, ndim=3, dtypes=DTYPES)
    check_tensor("w_qkv", w_qkv, ndim=2, dtypes=(x.dtype,))
    B, T, d = x.shape
    H = int(n_heads)
    D = int(head_dim) if head_dim is not None else k_cache.shape[-1] if k_cache is not None else \
        (d // H if H > 0 else 0)
    if H < 1 or D < 2 or w_qkv.shape[1] != d or w_qkv.shape[0] % D or w_qkv.shape[0] // D < H + 2 \
            or (w_qkv.shape[0] // D - H) % 2 or w_qkv.device != x.device:
        raise ValueError(f"w_qkv must be [(n_heads + 2 Hkv) * D, d={d}] on {x.device} with n_heads={H}, "
                         f"D={D}; got {tuple(w_qkv.shape)} on {w_qkv.device}")
    NH = w_qkv.shape[0] // D
    if bias is not None:
        check_vector("bias", bias, NH * D, (x.dtype,), x.device)
    return B, T, d, H, D, NH


def cache_strides(out, k_cache, v_cache):
    """``(kc, vc, k strides, v strides)`` for a launch: the caches, or ``out`` with zero strides without them."""
    if k_cache is None:
        return out, out, (0, 0, 0, 1), (0, 0, 0, 1)
    return k_cache, v_cache, k_cache.stride(), v_cache.stride()


def qkv_proj_rope(x: torch.Tensor, w_qkv: torch.Tensor, cos_table: torch.Tensor, sin_table: torch.Tensor, start,
                  k_cache: Optional[torch.Tensor] = None, v_cache: Optional[torch.Tensor] = None, *,
                  n_heads: int, write_from: Optional[torch.Tensor] = None, head_dim: Optional[int] = None,
                  config: Optional[dict] = None, bias: Optional[torch.Tensor] = None):
    """``qkv_rope_cache(F.linear(x, w_qkv, bias).view(B, T, NH, D), ...)`` in one launch at decode sizes.

    x: ``[B, T, d]`` fp16/bf16/fp32 (rows viewable); w_qkv: ``[NH * D, d]``, ``NH = n_heads + 2 Hkv`` (q, k, v
    heads), ``D = head_dim`` (default: the caches' head dim, else ``d // n_heads``); bias: ``[NH * D]`` or None
    (Qwen2 / Dream), added before the one rounding. The other arguments and the result are those of
    :func:`llada_triton.kernels.rotary.qkv_rope_cache`, views of a new ``[B, T, NH, D]`` tensor. Over
    :data:`MAX_ROWS` rows or an unsupported head dim: the unfused path. Reference:
    :func:`llada_triton.kernels.reference.qkv_proj_rope_ref`.
    """
    B, T, d, H, D, NH = check_proj_args(x, w_qkv, n_heads, head_dim, k_cache, bias)
    out = torch.empty((B, T, NH, D), device=x.device, dtype=x.dtype)
    M = B * T
    if not fused_supported(M, D):
        if bias is None:
            torch.matmul(x, w_qkv.t(), out=out.view(B, T, NH * D))
        else:
            torch.addmm(bias, x.reshape(M, d), w_qkv.t(), out=out.view(M, NH * D))
        return qkv_rope_cache(out, cos_table, sin_table, start, k_cache, v_cache, n_heads=H, write_from=write_from)
    _, Hkv, dyn, positions, has_cache = check_rope_args(out, cos_table, sin_table, start, k_cache, v_cache, H,
                                                        write_from)
    x2 = as_rows("x", x, d)
    cfg = qkv_config(M, d, x.dtype) if config is None else dict(config)
    hb = _half_tile(D)
    kc, vc, kst, vst = cache_strides(out, k_cache, v_cache)
    grid = (cdiv(M, cfg["BM"]) * NH * (D // 2 // hb),)
    _qkv_proj_rope_kernel[grid](
        x2, w_qkv, bias if bias is not None else out, out, cos_table, sin_table, kc, vc, *positions,
        M, T, H, Hkv, d, x2.stride(0), w_qkv.stride(0),
        *out.stride()[:3], *kst[:3], *vst[:3], cos_table.stride(0),
        D=D, HB=hb, BM=cfg["BM"], BK=cfg["BK"], DYN=dyn, HAS_CACHE=has_cache, HAS_WF=write_from is not None,
        HAS_BIAS=bias is not None, EVEN_K=d % cfg["BK"] == 0, **dot_flags(x.dtype),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **gdc_options(x, M),
    )
    return split_out(out, H, Hkv, k_cache, v_cache)
