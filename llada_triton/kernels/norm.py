""":func:`rms_norm` (``_rms_norm_kernel``): RMSNorm with an optional fused residual add in front (LLaDA's pre-norm
residual stream). Numerics of :func:`llada_triton.kernels.reference.rms_norm_ref`: ``h = x + residual`` rounded to
``x.dtype``, fp32 statistics, the normalised row rounded to ``x.dtype``, then times ``weight`` rounded to
``promote_types(weight.dtype, x.dtype)``; only the fp32 summation order and the ``rsqrt`` differ from torch.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from llada_triton.kernels._common import (DTYPES, as_rows, cdiv, check_like, check_out, check_tensor, check_vector,
                                          gdc_options, gdc_wait_and_release, is_interpreter, memo_config, next_pow2)
from llada_triton.kernels.reference import check_eps

__all__ = ["rms_norm"]


@triton.jit
def _load_h(x_ptrs, r_ptrs, h_ptrs, mask, hdt: tl.constexpr, HAS_RES: tl.constexpr, STORE_H: tl.constexpr,
            EVICT: tl.constexpr):
    """``h = x (+ r)`` in fp32, the sum rounded to ``hdt`` as torch's 16-bit add (and stored if ``STORE_H``)."""
    h = tl.load(x_ptrs, mask=mask, other=0.0, eviction_policy=EVICT).to(tl.float32)
    if HAS_RES:
        r = tl.load(r_ptrs, mask=mask, other=0.0, eviction_policy=EVICT).to(tl.float32)
        hr = (h + r).to(hdt)
        if STORE_H:
            tl.store(h_ptrs, hr, mask=mask)
        h = hr.to(tl.float32)
    return h


@triton.jit
def _rms_norm_kernel(
    x_ptr, r_ptr, w_ptr, y_ptr, h_ptr,   # x, residual, h = x + residual: [R, N] (row strides); w [N]; y [R, N]
    R, N, eps,
    stride_x, stride_r, stride_y, stride_h,
    BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, NUM_CHUNKS: tl.constexpr,
    HAS_RES: tl.constexpr, USE_GDC: tl.constexpr = False,
    EVICT: tl.constexpr = "",            # eviction policy of the x / residual loads (single-pass rows)
):
    gdc_wait_and_release(USE_GDC)
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = (rows < R)[:, None]
    rows = rows.to(tl.int64)[:, None]                                     # [BLOCK_R, 1]
    cols = tl.arange(0, BLOCK_N)[None, :]                                 # [1, BLOCK_N]
    hdt = x_ptr.dtype.element_ty
    ydt = y_ptr.dtype.element_ty
    if NUM_CHUNKS == 1:                  # the whole row stays in registers
        mask = rmask & (cols < N)
        h = _load_h(x_ptr + rows * stride_x + cols, r_ptr + rows * stride_r + cols, h_ptr + rows * stride_h + cols,
                    mask, hdt, HAS_RES, True, EVICT)
        rstd = tl.rsqrt(tl.sum(h * h, axis=1) / N + eps)[:, None]
        w = tl.load(w_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)
        y = (h * rstd).to(hdt).to(tl.float32) * w
        tl.store(y_ptr + rows * stride_y + cols, y.to(ydt), mask=mask)
    else:                                # two passes over the row; the second recomputes h from x, r
        ss = tl.zeros((BLOCK_R, BLOCK_N), dtype=tl.float32)
        for c in range(0, NUM_CHUNKS):
            cc = c * BLOCK_N + cols
            mask = rmask & (cc < N)
            h = _load_h(x_ptr + rows * stride_x + cc, r_ptr + rows * stride_r + cc, h_ptr + rows * stride_h + cc,
                        mask, hdt, HAS_RES, True, "")
            ss += h * h
        rstd = tl.rsqrt(tl.sum(ss, axis=1) / N + eps)[:, None]
        for c in range(0, NUM_CHUNKS):
            cc = c * BLOCK_N + cols
            mask = rmask & (cc < N)
            h = _load_h(x_ptr + rows * stride_x + cc, r_ptr + rows * stride_r + cc, h_ptr + rows * stride_h + cc,
                        mask, hdt, HAS_RES, False, "")
            w = tl.load(w_ptr + cc, mask=cc < N, other=0.0).to(tl.float32)
            y = (h * rstd).to(hdt).to(tl.float32) * w
            tl.store(y_ptr + rows * stride_y + cc, y.to(ydt), mask=mask)


@memo_config
def norm_config(R: int, N: int, interpret: Optional[bool] = None) -> dict:
    """Meta-parameters for ``R`` rows of ``N`` features (a new dict per call, memoised per shape)."""
    interpret = is_interpreter() if interpret is None else interpret
    np2 = next_pow2(max(N, 1))
    if interpret:
        block_n = min(np2, 1 << 16)
        block_r = max(1, min(next_pow2(max(R, 1)), (1 << 16) // block_n))
        return dict(BLOCK_R=block_r, BLOCK_N=block_n, NUM_CHUNKS=cdiv(N, block_n), num_warps=1)
    block_n = min(np2, 8192)
    # several rows per program for narrow rows (>= ~2K elements a program), one row otherwise
    block_r = max(1, min(next_pow2(max(R, 1)), 2048 // block_n))
    elems = block_r * block_n
    num_warps = 1 if elems <= 256 else 2 if elems <= 512 else 4 if elems <= 2048 else 8 if elems <= 4096 else 16
    # the inputs are dead after the norm: evict them from L2 first (results/decisions.md)
    return dict(BLOCK_R=block_r, BLOCK_N=block_n, NUM_CHUNKS=cdiv(N, block_n), num_warps=num_warps, EVICT="evict_first")


def launch_rms_norm(x2, r2, weight, y2, h2, eps, config=None):
    """The norm on validated ``[R, N]`` row views into ``y2`` (and ``h2 = x2 + r2`` when ``r2`` is given)."""
    R, N = x2.shape
    cfg = norm_config(R, N) if config is None else dict(config)
    has_res = r2 is not None
    r = r2 if has_res else x2
    h = h2 if has_res else y2
    _rms_norm_kernel[(cdiv(R, cfg["BLOCK_R"]),)](
        x2, r, weight, y2, h, R, N, float(eps),
        x2.stride(0), r.stride(0), y2.stride(0), h.stride(0),
        BLOCK_R=cfg["BLOCK_R"], BLOCK_N=cfg["BLOCK_N"], NUM_CHUNKS=cfg["NUM_CHUNKS"], HAS_RES=has_res,
        EVICT=cfg.get("EVICT", ""), num_warps=cfg["num_warps"], **gdc_options(x2, R),
    )


def norm_target(like: torch.Tensor, weight, eps, out, prefix: str = "norm_"):
    """Validate an RMSNorm's ``weight`` ``[d]``, ``eps`` and ``out`` (named with ``prefix``) for an input like
    ``like``; return ``(weight, eps, y)``, ``y`` (``out`` or new) of dtype ``promote_types(weight, like)``."""
    check_vector(prefix + "weight", weight, like.shape[-1], DTYPES, like.device)
    eps = check_eps(eps)
    y_dtype = torch.promote_types(weight.dtype, like.dtype)
    return weight, eps, check_out(prefix + "out", out, like.shape, y_dtype, like.device)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: Optional[torch.Tensor] = None, *,
             out: Optional[torch.Tensor] = None, residual_out: Optional[torch.Tensor] = None):
    """``y = weight * (h * rsqrt(mean(h**2) + eps)).to(x.dtype)`` with ``h = x + residual``; returns ``y``, or
    ``(y, h)`` with a residual. One read and one write per tensor.

    x: ``[..., d]`` fp16/bf16/fp32 (last dim contiguous, rows viewable); weight: ``[d]``, any float dtype (``y``
    has ``promote_types(weight.dtype, x.dtype)``); residual: like ``x`` or None; out / residual_out:
    preallocated ``y`` / ``h`` (``residual_out`` may alias ``x`` or ``residual``: each element is read before
    it is written, by the same program). Reference: :func:`llada_triton.kernels.reference.rms_norm_ref`.
    """
    check_tensor("x", x, dtypes=DTYPES)
    if x.ndim < 1 or x.shape[-1] == 0:
        raise ValueError(f"x must be [..., d] with d >= 1, got shape {tuple(x.shape)}")
    d = x.shape[-1]
    weight, eps, y = norm_target(x, weight, eps, out, prefix="")
    check_like("residual", residual, x.shape, x.dtype, x.device)
    if residual_out is not None and residual is None:
        raise ValueError("residual_out given without residual")
    h = None if residual is None else check_out("residual_out", residual_out, x.shape, x.dtype, x.device)
    if x.numel():
        launch_rms_norm(as_rows("x", x, d), None if residual is None else as_rows("residual", residual, d),
                        weight, as_rows("out", y, d), None if h is None else as_rows("residual_out", h, d), eps)
    return y if residual is None else (y, h)
