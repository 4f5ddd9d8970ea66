""":func:`block_attention`: a block of queries attends bidirectionally to a KV cache, split-KV (flash-decoding).

``_block_attn_fwd_kernel``, one program per (KV split, query-row tile, batch x kv head), runs an online softmax
over its share of the key tiles that intersect the visible range, read from device memory (``kv_start``,
``key_end``: under CUDA graphs pass ``kv_len = T_max``; no host sync). With one split it writes the output;
otherwise partial states ``(m, l, acc)`` that ``_block_attn_merge_kernel`` merges in a fixed order
(deterministic). Splitting pays at small batch, where (batch x head) tiles are fewer than the SMs
(:func:`_attention_config`). GQA: the ``G = H // Hkv`` query heads of a kv head are extra rows of one tile (row
``r`` = query ``r // G``, head ``kvh * G + r % G``), so each K/V tile is loaded once per kv head.
Reference: :func:`llada_triton.kernels.reference.block_attention_ref`.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl

from llada_triton.kernels._common import (DTYPES, cdiv, check_out, check_shape, check_tensor, check_vector,
                                          gdc_options, gdc_wait_and_release, is_interpreter, memo_config, next_pow2)

__all__ = ["block_attention"]

_LOG2E = 1.4426950408889634


@triton.jit
def _visible_range(kv_start_ptr, key_end_ptr, b, t, row_ok, kv_len, stride_ksb, stride_keb, stride_ket,
                   HAS_KV_START: tl.constexpr, HAS_KEY_END: tl.constexpr):
    """The visible key range from device memory: ``[lo, ke)`` per row, ``[lo, hi)`` for the tile."""
    if HAS_KV_START:
        lo = tl.maximum(tl.load(kv_start_ptr + b * stride_ksb).to(tl.int32), 0)
    else:
        lo = 0
    if HAS_KEY_END:
        ke = tl.load(key_end_ptr + b * stride_keb + t * stride_ket, mask=row_ok, other=0).to(tl.int32)
        ke = tl.minimum(ke, kv_len)
    else:
        ke = tl.where(row_ok, kv_len, 0)
    return lo, ke, tl.max(ke, axis=0)


@triton.jit
def _block_attn_fwd_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr,                # q [B,Tq,H,D]; k, v [B,T_max,Hkv,D]; o [B,Tq,H,D]
    m_part_ptr, l_part_ptr, acc_part_ptr,      # partials [P, BLOCK_M] / [P, BLOCK_M, BLOCK_D] fp32
    kv_start_ptr, key_end_ptr,
    Tq, G, Hkv, kv_len, n_splits, n_m_tiles,
    stride_qb, stride_qt, stride_qh,
    stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh,
    stride_ob, stride_ot, stride_oh,
    stride_ksb, stride_keb, stride_ket,
    qk_scale,                                  # softmax scale * log2(e)
    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_KV_START: tl.constexpr, HAS_KEY_END: tl.constexpr, SPLIT: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PREC: tl.constexpr, USE_GDC: tl.constexpr = False,
):
    pid_s = tl.program_id(0)     # KV split
    pid_m = tl.program_id(1)     # query-row tile
    pid_bh = tl.program_id(2)    # batch * Hkv + kv head
    b = pid_bh // Hkv
    kvh = pid_bh % Hkv
    b64 = b.to(tl.int64)

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)          # [BM] packed (query, group-head) rows
    t = rows // G
    h = kvh * G + rows % G
    row_ok = t < Tq
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    q_ptrs = q_ptr + b64 * stride_qb + t[:, None] * stride_qt + h[:, None] * stride_qh + offs_d[None, :]

    # read before the PDL wait: the key range is an input no kernel of this package writes (results/decisions.md)
    lo, ke, hi = _visible_range(kv_start_ptr, key_end_ptr, b, t, row_ok, kv_len, stride_ksb, stride_keb, stride_ket,
                                HAS_KV_START, HAS_KEY_END)
    gdc_wait_and_release(USE_GDC)
    q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)       # [BM, BD]

    # this split's share of the tiles in [lo, hi) (known only here); splits past the last tile store empty partials
    tile_lo = lo // BLOCK_N
    tile_hi = tl.cdiv(hi, BLOCK_N)
    n_tiles = tl.maximum(tile_hi - tile_lo, 0)
    per_split = tl.cdiv(n_tiles, tl.minimum(tl.maximum(n_tiles, 1), n_splits))
    j_start = tile_lo + pid_s * per_split
    j_end = tl.minimum(j_start + per_split, tile_hi)

    if UPCAST:
        q = q.to(tl.float32)
    k_base = k_ptr + b64 * stride_kb + kvh * stride_kh
    v_base = v_ptr + b64 * stride_vb + kvh * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for j in range(j_start, j_end):
        offs_n = j * BLOCK_N + tl.arange(0, BLOCK_N)                            # [BN]
        kv_ok = (offs_n >= lo) & (offs_n < hi)     # never load outside the visible range (no NaN leaks)
        ld_mask = kv_ok[:, None] & d_ok[None, :]
        k = tl.load(k_base + offs_n[:, None] * stride_kt + offs_d[None, :], mask=ld_mask, other=0.0)
        v = tl.load(v_base + offs_n[:, None] * stride_vt + offs_d[None, :], mask=ld_mask, other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale       # [BM, BN] log2 domain
        vis = kv_ok[None, :] & (offs_n[None, :] < ke[:, None])
        qk = tl.where(vis, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, axis=1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)   # rows with nothing visible yet: no NaN
        p = tl.exp2(qk - m_use[:, None])
        alpha = tl.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
        m_i = m_new

    if SPLIT:
        part = (pid_bh * n_m_tiles + pid_m) * n_splits + pid_s
        r = tl.arange(0, BLOCK_M)
        tl.store(m_part_ptr + part * BLOCK_M + r, m_i)
        tl.store(l_part_ptr + part * BLOCK_M + r, l_i)
        # stored in full (rows that saw no key hold zeros): the merge's loads are unmasked and independent
        tl.store(acc_part_ptr + (part * BLOCK_M + r[:, None]) * BLOCK_D + offs_d[None, :], acc)
    else:
        o = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]     # fully masked rows: acc == 0 -> 0
        o_ptrs = o_ptr + b64 * stride_ob + t[:, None] * stride_ot + h[:, None] * stride_oh + offs_d[None, :]
        tl.store(o_ptrs, o.to(o_ptr.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


@triton.jit
def _block_attn_merge_kernel(
    m_part_ptr, l_part_ptr, acc_part_ptr, o_ptr,
    Tq, G, Hkv, n_splits, n_m_tiles,
    stride_ob, stride_ot, stride_oh,
    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
    MROWS: tl.constexpr, SPLITS_P2: tl.constexpr, USE_GDC: tl.constexpr = False,
):
    """Merge ``MROWS`` rows' ``n_splits`` partials in a fixed order; loads bypass L1 (written by the last launch)."""
    gdc_wait_and_release(USE_GDC)
    pid_m = tl.program_id(1)
    pid_bh = tl.program_id(2)
    kvh = pid_bh % Hkv
    r = tl.program_id(0) * MROWS + tl.arange(0, MROWS)      # [R] row inside the tile
    rows = pid_m * BLOCK_M + r
    t = rows // G
    h = kvh * G + rows % G
    offs_d = tl.arange(0, BLOCK_D)
    part0 = (pid_bh * n_m_tiles + pid_m) * n_splits
    s = tl.arange(0, SPLITS_P2)
    m_all = tl.load(m_part_ptr + (part0 + s[:, None]) * BLOCK_M + r[None, :],
                    mask=(s < n_splits)[:, None], other=float("-inf"), cache_modifier=".cg")   # [S, R]
    m_max = tl.max(m_all, axis=0)
    m_use = tl.where(m_max == float("-inf"), 0.0, m_max)       # rows no split saw: all weights 0
    l_tot = tl.zeros_like(m_use)
    acc = tl.zeros([MROWS, BLOCK_D], dtype=tl.float32)
    for i in range(n_splits):
        off = (part0 + i) * BLOCK_M + r
        m_s = tl.load(m_part_ptr + off, cache_modifier=".cg")
        l_s = tl.load(l_part_ptr + off, cache_modifier=".cg")
        w = tl.exp2(m_s - m_use)
        a = tl.load(acc_part_ptr + off[:, None] * BLOCK_D + offs_d[None, :], cache_modifier=".cg")
        l_tot += w * l_s
        acc += w[:, None] * a
    o = acc / tl.where(l_tot > 0.0, l_tot, 1.0)[:, None]
    o_ptrs = (o_ptr + (pid_bh // Hkv).to(tl.int64) * stride_ob + t[:, None] * stride_ot + h[:, None] * stride_oh
              + offs_d[None, :])
    tl.store(o_ptrs, o.to(o_ptr.dtype.element_ty), mask=(t < Tq)[:, None] & (offs_d < D)[None, :])


_INT_DTYPES = (torch.int32, torch.int64)


@memo_config
def _attention_config(B: int, Tq: int, H: int, Hkv: int, D: int, kv_len: int, device: torch.device,
                      interpret: bool) -> dict:
    """Meta-parameters, a function of the shapes and the SM count. ``n_splits`` is an upper bound from ``kv_len``
    (``T_max`` under CUDA graphs): splits only while ``B * Hkv`` query-tile groups leave SMs idle, with at least 4
    key tiles each (results/decisions.md); the kernel spreads the real range over them."""
    rows = Tq * (H // Hkv)
    if interpret:  # the interpreter pays per program: big tiles, few programs
        return dict(block_m=min(max(16, next_pow2(rows)), 128), block_n=256,
                    n_splits=min(2, max(1, cdiv(kv_len, 256))), num_warps=4, num_stages=1)
    block_m = min(max(16, next_pow2(rows)), 64)
    block_n = 64
    base = B * Hkv * cdiv(rows, block_m)
    n_sm = torch.cuda.get_device_properties(device).multi_processor_count
    n_tiles = cdiv(kv_len, block_n)
    n_splits = 1
    if base < n_sm:
        programs = n_sm if n_tiles < 32 else 2 * n_sm
        n_splits = max(1, min(programs // base, n_tiles // 4, 64))
    if n_splits == 1 and rows <= 32 and B * Hkv * cdiv(rows, 16) <= n_sm:
        # short ranges, small batch, no split: 16-row query tiles (2x programs), 128-key tiles (results/decisions.md)
        block_m, block_n = 16, 128
    elif n_splits == 1 and block_m == 32 and base >= 4 * n_sm and kv_len <= 256:
        # 32-row query tiles, many programs (>= 4 waves), short ranges: 32-key tiles (results/decisions.md)
        block_n = 32
    return dict(block_m=block_m, block_n=block_n, n_splits=n_splits, num_warps=4, num_stages=3)


def _check_inputs(q, k_cache, v_cache, kv_len, kv_start, key_end, scale):
    """Validate :func:`block_attention`'s arguments; return ``((kv_start b, key_end b, key_end t) strides, scale)``."""
    check_tensor("q", q, ndim=4, dtypes=DTYPES)
    check_tensor("k_cache", k_cache, ndim=4, dtypes=(q.dtype,))
    check_shape("v_cache", v_cache, k_cache.shape, (q.dtype,), k_cache.device)   # like k_cache
    B, Tq, H, D = q.shape
    Bk, T_max, Hkv, Dk = k_cache.shape
    if Bk != B or Dk != D:
        raise ValueError(f"k_cache shape {tuple(k_cache.shape)} does not match q shape {tuple(q.shape)}: "
                         f"need [B={B}, T_max, Hkv, D={D}]")
    if Hkv < 1 or H % Hkv:
        raise ValueError(f"q heads H={H} must be a multiple of the cache's kv heads Hkv={Hkv}")
    if not 16 <= D <= 256:
        raise ValueError(f"head dim D={D} not supported; allowed: 16 <= D <= 256")
    if k_cache.device != q.device:
        raise ValueError(f"k_cache and v_cache must be on q's device {q.device}, got {k_cache.device}")
    if isinstance(kv_len, bool) or not isinstance(kv_len, int):
        raise TypeError(f"kv_len must be a Python int (put per-row limits in key_end / kv_start), "
                        f"got {type(kv_len).__name__}")
    if not 0 <= kv_len <= T_max:
        raise ValueError(f"kv_len={kv_len} must be in [0, T_max={T_max}]")
    stride_ksb = stride_keb = stride_ket = 0
    if kv_start is not None:
        check_vector("kv_start", kv_start, B, _INT_DTYPES, q.device, contiguous_last=False)
        stride_ksb = kv_start.stride(0)
    if key_end is not None:
        check_tensor("key_end", key_end, dtypes=_INT_DTYPES, contiguous_last=False)
        if key_end.device != q.device:
            raise ValueError(f"key_end must be on {q.device}, got {key_end.device}")
        if key_end.ndim == 1 and key_end.shape[0] == Tq:
            stride_ket = key_end.stride(0)
        elif key_end.ndim == 2 and tuple(key_end.shape) == (B, Tq):
            stride_keb, stride_ket = key_end.stride()
        else:
            raise ValueError(f"key_end must have shape [Tq={Tq}] or [B={B}, Tq={Tq}], got {tuple(key_end.shape)}")
    scale = float(1.0 / math.sqrt(D) if scale is None else scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number, got {scale}")
    return (stride_ksb, stride_keb, stride_ket), scale


def _launch(q, k_cache, v_cache, kv_len, kv_start=None, key_end=None, scale=None, *,
            config: Optional[dict] = None, out: Optional[torch.Tensor] = None):
    """:func:`block_attention` with ``config`` overriding the tiles (tests run the GPU's) and a preallocated ``out``."""
    key_strides, scale = _check_inputs(q, k_cache, v_cache, kv_len, kv_start, key_end, scale)
    B, Tq, H, D = q.shape
    Hkv = k_cache.shape[2]
    out = check_out("out", out, q.shape, q.dtype, q.device)
    if out.numel() == 0:
        return out
    cfg = _attention_config(B, Tq, H, Hkv, D, kv_len, q.device, is_interpreter())
    unknown = set(config or ()) - set(cfg)
    if unknown:
        raise ValueError(f"config keys {sorted(unknown)} unknown; allowed: {sorted(cfg)}")
    cfg.update(config or {})
    G = H // Hkv
    block_m, n_splits = cfg["block_m"], cfg["n_splits"]
    block_d = max(16, next_pow2(D))
    n_m = cdiv(Tq * G, block_m)
    split = n_splits > 1
    if split:
        n_rows = B * Hkv * n_m * n_splits * block_m
        m_part, l_part = (torch.empty(n_rows, dtype=torch.float32, device=q.device) for _ in range(2))
        acc_part = torch.empty(n_rows * block_d, dtype=torch.float32, device=q.device)
    else:
        m_part = l_part = acc_part = out          # unused (constexpr SPLIT=False)
    pdl = gdc_options(q, B * Tq)
    _block_attn_fwd_kernel[(n_splits, n_m, B * Hkv)](
        q, k_cache, v_cache, out, m_part, l_part, acc_part,
        kv_start if kv_start is not None else out, key_end if key_end is not None else out,  # absent: never read
        Tq, G, Hkv, kv_len, n_splits, n_m,
        *q.stride()[:3], *k_cache.stride()[:3], *v_cache.stride()[:3], *out.stride()[:3], *key_strides, scale * _LOG2E,
        D=D, BLOCK_M=block_m, BLOCK_N=cfg["block_n"], BLOCK_D=block_d,
        HAS_KV_START=kv_start is not None, HAS_KEY_END=key_end is not None, SPLIT=split,
        UPCAST=is_interpreter() and q.dtype == torch.bfloat16, DOT_PREC="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **pdl,
    )
    if split:
        mrows = block_m if is_interpreter() else min(block_m, 8)
        _block_attn_merge_kernel[(block_m // mrows, n_m, B * Hkv)](
            m_part, l_part, acc_part, out, Tq, G, Hkv, n_splits, n_m, *out.stride()[:3],
            D=D, BLOCK_M=block_m, BLOCK_D=block_d, MROWS=mrows, SPLITS_P2=next_pow2(n_splits), num_warps=4, **pdl,
        )
    return out


def block_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, kv_len: int,
                    kv_start: Optional[torch.Tensor] = None, key_end: Optional[torch.Tensor] = None,
                    scale: Optional[float] = None) -> torch.Tensor:
    """Query i of batch row b attends to cache slots ``kv_start[b] <= j < min(kv_len, key_end[(b,) i])``, with no
    causal mask inside that range; softmax in fp32. Returns ``[B, Tq, H, D]`` contiguous, in ``q.dtype``.

    q: ``[B, Tq, H, D]`` fp16/bf16/fp32 (rotated queries, last dim contiguous, other strides free); k_cache,
    v_cache: ``[B, T_max, Hkv, D]`` of q's dtype, ``H % Hkv == 0`` (GQA), rotated keys, the block's own keys and
    values already written. kv_len: Python int in ``[0, T_max]``. kv_start: int ``[B]`` or None (left padding);
    key_end: int ``[Tq]`` or ``[B, Tq]`` or None (block-causal masks). scale: default ``1 / sqrt(D)``.
    Slots outside the visible range are never read (they may hold NaN); a query that sees no key gets 0. With
    PDL (sm_90+, up to 64 query rows) ``kv_start`` / ``key_end`` are read before the wait on the previous
    kernel, so a PDL kernel of this package launched just before must not write them (torch ops are safe).
    """
    return _launch(q, k_cache, v_cache, kv_len, kv_start, key_end, scale)
