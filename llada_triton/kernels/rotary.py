"""Half-split (NeoX) rotary embedding in fp32, rounded to the input dtype once
(:func:`llada_triton.kernels.reference.rope_ref`): :func:`rope` (``_rope_kernel``, on strided views, in place
or not) and :func:`qkv_rope_cache` (``_qkv_rope_cache_kernel``: RoPE on q and k of a fused projection plus the
KV-cache write). ``rotate_pair``, ``check_rope_args`` and ``split_out`` are shared with the fused QKV kernels.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from llada_triton.kernels._common import (DTYPES, cdiv, check_out, check_shape, check_tensor, gdc_options,
                                          gdc_wait_and_release, is_interpreter, memo_config, next_pow2)

__all__ = ["rope", "qkv_rope_cache"]


@triton.jit
def rotate_pair(x1, x2, cos_ptrs, sin_ptrs, mask, HALF: tl.constexpr):
    """``(x1 cos - x2 sin, x2 cos + x1 sin)`` for fp32 halves ``x1`` (dims ``< HALF``) and ``x2``, the tables read
    at ``cos_ptrs`` / ``sin_ptrs`` and ``HALF`` further, in ``rope_ref``'s op order."""
    c1 = tl.load(cos_ptrs, mask=mask, other=0.0)
    c2 = tl.load(cos_ptrs + HALF, mask=mask, other=0.0)
    s1 = tl.load(sin_ptrs, mask=mask, other=0.0)
    s2 = tl.load(sin_ptrs + HALF, mask=mask, other=0.0)
    return x1 * c1 + (-x2) * s1, x2 * c2 + x1 * s2


@triton.jit
def _rope_kernel(
    x_ptr, o_ptr, cos_ptr, sin_ptr,      # x, o: [B, T, G, H, D] strided (G groups); cos, sin: [T, D] fp32
    T, H,
    sxb, sxt, sxg, sxh, sxd,
    sob, sot, sog, soh, sod,
    sct, sst,
    HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D2: tl.constexpr,
):
    pid_bt = tl.program_id(0)
    b = (pid_bt // T).to(tl.int64)
    t = pid_bt % T
    g = tl.program_id(2).to(tl.int64)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D2)
    dmask = offs_d < HALF
    mask = (offs_h < H)[:, None] & dmask[None, :]                          # [BLOCK_H, BLOCK_D2]
    hh = offs_h.to(tl.int64)[:, None]
    dd = offs_d[None, :]
    x1_ptrs = x_ptr + b * sxb + t * sxt + g * sxg + hh * sxh + dd * sxd
    o1_ptrs = o_ptr + b * sob + t * sot + g * sog + hh * soh + dd * sod
    x1 = tl.load(x1_ptrs, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x1_ptrs + HALF * sxd, mask=mask, other=0.0).to(tl.float32)
    dt = o_ptr.dtype.element_ty
    o1, o2 = rotate_pair(x1, x2, cos_ptr + t * sct + dd, sin_ptr + t * sst + dd, dmask[None, :], HALF)
    tl.store(o1_ptrs, o1.to(dt), mask=mask)
    tl.store(o1_ptrs + HALF * sod, o2.to(dt), mask=mask)


@triton.jit
def _qkv_rope_cache_kernel(
    qkv_ptr, cos_ptr, sin_ptr, kc_ptr, vc_ptr, start_ptr, start_val, wf_ptr, s_start,
    T, H, HKV, n_rows_q,
    sqb, sqt, sqh, sqd,                  # qkv [B, T, H + 2 HKV, D]
    skb, skt, skh, skd,                  # k cache [B, T_max, HKV, D]
    svb, svt, svh, svd,                  # v cache
    sct,                                 # row stride of the cos / sin tables [L, D]
    DYN: tl.constexpr, HAS_CACHE: tl.constexpr, HAS_WF: tl.constexpr, HALF: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_D2: tl.constexpr, USE_GDC: tl.constexpr = False,
):
    gdc_wait_and_release(USE_GDC)
    # grid (row tiles, group); a row is a (batch, token, head): group 0 = q (in place), 1 = k (cache or in place), 2 = v
    g = tl.program_id(1)
    nh = tl.where(g == 0, H, HKV)
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = r < tl.where(g == 0, n_rows_q, (n_rows_q // H) * HKV)
    h = (r % nh).to(tl.int64)
    bt = r // nh
    t = (bt % T).to(tl.int64)
    b = (bt // T).to(tl.int64)
    if DYN:  # per-row start (s_start = 1) or one shared start (s_start = 0), read on the device
        start = tl.load(start_ptr + b * s_start, mask=rmask, other=0)
    else:
        start = start_val
    pos = (start + t).to(tl.int64)
    if HAS_CACHE and HAS_WF:  # slots < write_from[b] are read-only: their rotated k / v are not stored
        wmask = rmask & (pos >= tl.load(wf_ptr + b, mask=rmask, other=0))
    else:
        wmask = rmask
    offs_d = tl.arange(0, BLOCK_D2)
    dmask = offs_d < HALF
    mask = rmask[:, None] & dmask[None, :]
    cmask = wmask[:, None] & dmask[None, :]
    dd = offs_d[None, :]
    src_h = h + tl.where(g == 0, 0, tl.where(g == 1, H, H + HKV))
    x1_ptrs = qkv_ptr + (b * sqb + t * sqt + src_h * sqh)[:, None] + dd * sqd
    x1 = tl.load(x1_ptrs, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x1_ptrs + HALF * sqd, mask=mask, other=0.0).to(tl.float32)
    dt = qkv_ptr.dtype.element_ty
    if g == 2:
        o_ptrs = vc_ptr + (b * svb + pos * svt + h * svh)[:, None] + dd * svd
        tl.store(o_ptrs, x1.to(dt), mask=cmask)
        tl.store(o_ptrs + HALF * svd, x2.to(dt), mask=cmask)
    else:
        row = (pos * sct)[:, None]
        o1, o2 = rotate_pair(x1, x2, cos_ptr + row + dd, sin_ptr + row + dd, mask, HALF)
        if HAS_CACHE and g == 1:
            o_ptrs = kc_ptr + (b * skb + pos * skt + h * skh)[:, None] + dd * skd
            tl.store(o_ptrs, o1.to(dt), mask=cmask)
            tl.store(o_ptrs + HALF * skd, o2.to(dt), mask=cmask)
        else:
            tl.store(x1_ptrs, o1.to(dt), mask=mask)
            tl.store(x1_ptrs + HALF * sqd, o2.to(dt), mask=mask)


def rope_config(B: int, T: int, G: int, H: int, D: int, interpret: Optional[bool] = None) -> dict:
    """Meta-parameters of :func:`rope`: heads per program chosen so that small batches still fill the GPU."""
    interpret = is_interpreter() if interpret is None else interpret
    block_d2 = next_pow2(max(D // 2, 1))
    block_h = next_pow2(max(H, 1))
    if interpret:
        return dict(BLOCK_H=block_h, BLOCK_D2=block_d2, num_warps=1)
    # halve the heads per program until there are >= ~4 programs per SM (132 SMs) or one head each
    while block_h > 1 and B * T * G * cdiv(H, block_h) < 528:
        block_h //= 2
    # <= 16 heads x 64 per program: among the best at B=32 in the sweeps
    while block_h > 1 and block_h * block_d2 > 1024:
        block_h //= 2
    return dict(BLOCK_H=block_h, BLOCK_D2=block_d2, num_warps=max(1, min(8, block_h * block_d2 // 256)))


@memo_config
def qkv_rope_config(n_rows: int, D: int, interpret: Optional[bool] = None) -> dict:
    """Meta-parameters of :func:`qkv_rope_cache` for ``n_rows`` (token, q head) rows of head dim ``D``."""
    interpret = is_interpreter() if interpret is None else interpret
    block_d2 = next_pow2(max(D // 2, 1))
    if interpret:  # few, large programs: the interpreter pays per program
        block_r = min(next_pow2(n_rows), max(1, 16384 // block_d2))
    else:  # ~1K elements per program (16 rows at D=128; results/decisions.md)
        block_r = max(1, min(next_pow2(n_rows), 1024 // block_d2))
    return dict(BLOCK_R=block_r, BLOCK_D2=block_d2, num_warps=4 if block_r * block_d2 >= 1024 else 2)


def _launch(x5: torch.Tensor, o5: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, config=None):
    """x5, o5: [B, T, G, H, D] strided views (may be the same memory)."""
    B, T, G, H, D = x5.shape
    cfg = rope_config(B, T, G, H, D) if config is None else dict(config)
    grid = (B * T, cdiv(H, cfg["BLOCK_H"]), G)
    _rope_kernel[grid](
        x5, o5, cos, sin, T, H,
        *x5.stride(), *o5.stride(), cos.stride(0), sin.stride(0),
        HALF=D // 2, BLOCK_H=cfg["BLOCK_H"], BLOCK_D2=cfg["BLOCK_D2"], num_warps=cfg["num_warps"],
    )


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x * cos + rotate_half(x) * sin`` in ``x.dtype`` (a new contiguous tensor unless ``out``).

    x: ``[B, T, H, D]`` fp16/bf16/fp32, any strides (e.g. ``qkv[:, :, 0]``, never copied), D even; cos, sin: fp32
    ``[T, D]`` (the tokens' positions), last dim contiguous; out: ``[B, T, H, D]`` of ``x.dtype``, any strides
    (``out=x`` rotates in place). Reference: :func:`llada_triton.kernels.reference.rope_ref`.
    """
    check_tensor("x", x, ndim=4, dtypes=DTYPES, contiguous_last=False)
    T, D = x.shape[1], x.shape[3]
    if D % 2:
        raise ValueError(f"x head dim must be even for the half-split rotation, got D={D}")
    for name, t in (("cos", cos), ("sin", sin)):
        check_shape(name, t, (T, D), (torch.float32,), x.device)
    out = check_out("out", out, x.shape, x.dtype, x.device, contiguous_last=False)
    if x.numel():
        _launch(x.unsqueeze(2), out.unsqueeze(2), cos, sin)
    return out


def check_rope_args(qkv, cos_table, sin_table, start, k_cache, v_cache, n_heads, write_from, partial: bool = False):
    """The checks of :func:`qkv_rope_cache` (also of the fused QKV kernels, on their output buffer): ``(H, Hkv,
    dyn, positions, has_cache)``, ``positions`` the kernels' ``(start_ptr, start_val, wf_ptr, s_start)`` (``qkv``
    stands in for an absent tensor). ``partial``: tables ``[L, R]``, any even ``R <= D``."""
    check_tensor("qkv", qkv, ndim=4, dtypes=DTYPES)
    B, T, NH, D = qkv.shape
    H = int(n_heads)
    if H < 1 or (NH - H) < 2 or (NH - H) % 2 or D % 2:
        raise ValueError(f"qkv has {NH} heads of dim {D}; with n_heads={H} it must hold H + 2 Hkv heads, D even")
    Hkv = (NH - H) // 2
    for name, t in (("cos_table", cos_table), ("sin_table", sin_table)):
        check_tensor(name, t, ndim=2, dtypes=(torch.float32,))
        R = t.shape[1]
        if (not (0 < R <= D and R % 2 == 0) if partial else R != D) or t.device != qkv.device \
                or t.shape != cos_table.shape or t.stride() != cos_table.stride():
            width = f"R (even, <= {D})" if partial else D
            raise ValueError(f"{name} must be fp32 [L, {width}] on {qkv.device} like cos_table, got {tuple(t.shape)}")
    has_cache = k_cache is not None
    if has_cache != (v_cache is not None):
        raise ValueError("give both k_cache and v_cache, or neither")
    if has_cache:
        for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
            check_tensor(name, c, ndim=4, dtypes=(qkv.dtype,))
            if c.shape[0] != B or c.shape[2:] != (Hkv, D) or c.device != qkv.device:
                raise ValueError(f"{name} must be [{B}, T_max, {Hkv}, {D}] on {qkv.device}, got {tuple(c.shape)}")
    dyn = isinstance(start, torch.Tensor)
    if dyn and (start.dim() not in (0, 1) or (start.dim() == 1 and start.shape[0] != B)
                or start.device != qkv.device or start.dtype != torch.int64):
        raise ValueError(f"a tensor start must be int64, 0-dim or [B={B}], on {qkv.device}; got "
                         f"{start.dtype} {tuple(start.shape)} on {start.device}")
    if write_from is not None and (not has_cache or tuple(write_from.shape) != (B,) or
                                   write_from.dtype != torch.int64 or write_from.device != qkv.device):
        raise ValueError(f"write_from must be an int64 [B={B}] tensor on {qkv.device}, with caches")
    if not dyn:
        start = int(start)
        limit = min(cos_table.shape[0], k_cache.shape[1] if has_cache else cos_table.shape[0])
        if start < 0 or start + T > limit:
            raise ValueError(f"positions [{start}, {start + T}) exceed the tables/cache ({limit} slots)")
    positions = (start if dyn else qkv, 0 if dyn else start, qkv if write_from is None else write_from,
                 1 if dyn and start.dim() == 1 else 0)
    return H, Hkv, dyn, positions, has_cache


def qkv_rope_cache(qkv: torch.Tensor, cos_table: torch.Tensor, sin_table: torch.Tensor, start,
                   k_cache: Optional[torch.Tensor] = None, v_cache: Optional[torch.Tensor] = None, *,
                   n_heads: int, write_from: Optional[torch.Tensor] = None):
    """RoPE on the q and k heads of a fused projection and the keys / values into the KV cache, in one launch.

    qkv: ``[B, T, H + 2 Hkv, D]`` fp16/bf16/fp32 (q, k, v heads), last dim contiguous; its q heads (and k heads
    without a cache) are rotated in place. cos_table, sin_table: fp32 ``[L, D]`` (absolute positions). start:
    token 0's position, an int or an int64 device tensor, 0-dim or ``[B]``, read in the kernel (CUDA graphs).
    k_cache, v_cache: ``[B, T_max, Hkv, D]`` of qkv's dtype, written at slots ``[start, start + T)``;
    write_from: int64 ``[B]`` or None, row b writes only slots ``>= write_from[b]``. Returns ``(q, k_cache,
    v_cache)``, or ``(q, k, v)`` views of ``qkv`` without caches. Reference:
    :func:`llada_triton.kernels.reference.qkv_rope_cache_ref`.
    """
    H, Hkv, dyn, positions, has_cache = check_rope_args(qkv, cos_table, sin_table, start, k_cache, v_cache, n_heads,
                                                         write_from)
    B, T, _, D = qkv.shape
    if qkv.numel():
        n_rows = B * T * H
        c = qkv_rope_config(n_rows, D)
        kc, vc = (k_cache, v_cache) if has_cache else (qkv, qkv)
        _qkv_rope_cache_kernel[(cdiv(n_rows, c["BLOCK_R"]), 3 if has_cache else 2)](
            qkv, cos_table, sin_table, kc, vc, *positions, T, H, Hkv, n_rows,
            *qkv.stride(), *kc.stride(), *vc.stride(), cos_table.stride(0),
            DYN=dyn, HAS_CACHE=has_cache, HAS_WF=write_from is not None, HALF=D // 2, BLOCK_R=c["BLOCK_R"],
            BLOCK_D2=c["BLOCK_D2"], num_warps=c["num_warps"], **gdc_options(qkv, B * T),
        )
    return split_out(qkv, H, Hkv, k_cache, v_cache)


def split_out(out, H: int, Hkv: int, k_cache, v_cache):
    """``(q, k_cache, v_cache)`` with a cache, else ``(q, k, v)``: views of the ``[B, T, H + 2 Hkv, D]`` output."""
    q = out[:, :, :H]
    if k_cache is not None:
        return q, k_cache, v_cache
    return q, out[:, :, H:H + Hkv], out[:, :, H + Hkv:]
