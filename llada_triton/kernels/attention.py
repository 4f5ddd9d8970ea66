"""Block attention over a KV cache with split-KV (flash-decoding) parallelism.

A block of ``Tq`` queries attends bidirectionally to the first ``kv_len`` slots of a preallocated KV
cache (the block's own keys already written there), restricted per batch row by ``kv_start`` (left
padding) and per query by ``key_end`` (block-causal masks). Torch meaning:
:func:`llada_triton.kernels.reference.block_attention_ref`.

Why split-KV: at batch 1 a 32-query block with 32 heads is only 32 (batch x head) tiles, far fewer than
the SMs of an H100/H200, so a plain flash-attention grid leaves most of the GPU idle. Here the visible
KV range of every (batch, kv-head, query-tile) is cut into ``n_splits`` chunks, one program each; each
program writes a partial softmax state ``(m, l, acc)`` for all its query rows; a small second kernel
merges the partials in a fixed order (deterministic results) and writes the output. An alternative
(``merge_in_kernel=True``) lets the last program of each group to arrive (an atomic counter) merge
instead; no program ever waits for another, so it is safe in any order and in the interpreter, but
with the counters' memset it measured slower on an H200 and is off by default (so did a memset-free
variant, on top of the batch-1 tiles below). With ``n_splits == 1`` the kernel normalises and writes the
output directly: when batch x heads fill the GPU, and for short ranges at small batch, where splitting
the keys measured slower than smaller query tiles (16 query rows and 128-key tiles at batch 1: twice the
programs, half the MMA work per key each). With four or more waves of 32-row query tiles over at most 256
keys (batch 32 at LLaDA-8B shapes) the key tiles are 32 wide.

GQA: the ``H // Hkv`` query heads that share a kv head are packed as extra query rows of one tile
(row ``r`` = query ``r // G``, head ``kvh * G + r % G``), so every K/V tile is loaded once per kv head.

CUDA graphs: every bound the kernel loops over is read from device memory (``kv_start``, ``key_end``);
a caller can pass ``kv_len = T_max`` and the kernel visits only the KV tiles that intersect
``[kv_start[b], max_i key_end[b, i])``; the chunking across splits is computed from that range on the
device, so the work stays spread over all split programs. No host synchronisation happens.

Layout: ``[batch, tokens, heads, head_dim]``; the last dim of every tensor must be contiguous, other
strides are free.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl

from llada_triton.kernels._common import cdiv, check_tensor, gdc_options, gdc_wait_and_release, is_interpreter, memo_config, next_pow2

__all__ = ["block_attention"]

_LOG2E = 1.4426950408889634


# ------------------------------------------------------------------------------------------ kernels
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
    counter_ptr,                               # int32 [B*Hkv*n_m], zeroed (MERGE_IN_KERNEL only)
    kv_start_ptr, key_end_ptr, tile_count_ptr,
    Tq, G, Hkv, kv_len, n_splits, n_m_tiles, min_tiles,
    stride_qb, stride_qt, stride_qh,
    stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh,
    stride_ob, stride_ot, stride_oh,
    stride_ksb, stride_keb, stride_ket,
    qk_scale,                                  # softmax scale * log2(e)
    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_KV_START: tl.constexpr, HAS_KEY_END: tl.constexpr, SPLIT: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PREC: tl.constexpr, COUNT_TILES: tl.constexpr,
    MERGE_IN_KERNEL: tl.constexpr, SPLITS_P2: tl.constexpr, USE_GDC: tl.constexpr = False,
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

    # The visible range is read before the PDL wait: kv_start / key_end are never written by the kernel
    # launched just before this one (it writes q, k, v), and every kernel of this package waits on its own
    # predecessor before it lets this one launch, so anything older is complete and visible here. Saves a
    # dependent load after the wait: batch-1 block step 4.368-4.370 vs 4.381-4.382 ms, H200
    # (results/bench_decode/attn_tiles_ab_h200_20819f6.txt).
    lo, ke, hi = _visible_range(kv_start_ptr, key_end_ptr, b, t, row_ok, kv_len, stride_ksb, stride_keb, stride_ket,
                                HAS_KV_START, HAS_KEY_END)
    gdc_wait_and_release(USE_GDC)
    q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)       # [BM, BD]

    # ---- this split's share of the tiles intersecting [lo, hi). The range is known only here (on
    # the device), so the number of splits that get work is decided here too: at least min_tiles
    # tiles per working split; the others only publish an empty partial.
    tile_lo = lo // BLOCK_N
    tile_hi = tl.cdiv(hi, BLOCK_N)
    n_tiles = tl.maximum(tile_hi - tile_lo, 0)
    eff_splits = tl.minimum(tl.maximum(n_tiles // min_tiles, 1), n_splits)
    per_split = tl.cdiv(n_tiles, eff_splits)
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

    if COUNT_TILES:
        part = (pid_bh * n_m_tiles + pid_m) * n_splits + pid_s
        tl.store(tile_count_ptr + part, tl.maximum(j_end - j_start, 0))

    if SPLIT:
        group = pid_bh * n_m_tiles + pid_m
        part = group * n_splits + pid_s
        r = tl.arange(0, BLOCK_M)
        tl.store(m_part_ptr + part * BLOCK_M + r, m_i)
        tl.store(l_part_ptr + part * BLOCK_M + r, l_i)
        # stored in full (rows that saw no key hold exact zeros), so the merge's loads are unmasked
        # and independent of each other
        tl.store(acc_part_ptr + (part * BLOCK_M + r[:, None]) * BLOCK_D + offs_d[None, :], acc)
        if MERGE_IN_KERNEL:
            # the last program of the group to finish merges (no spin-wait: safe in any order).
            # barrier: every thread's partial stores precede the release of the atomic.
            tl.debug_barrier()
            done = tl.atomic_add(counter_ptr + group, 1, sem="acq_rel")
            if done == n_splits - 1:
                _merge_store(m_part_ptr, l_part_ptr, acc_part_ptr, o_ptr, group * n_splits, n_splits,
                             r, t, h, row_ok, b64, offs_d, d_ok, stride_ob, stride_ot, stride_oh,
                             BLOCK_M, BLOCK_M, BLOCK_D, SPLITS_P2)
    else:
        o = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]     # fully masked rows: acc == 0 -> 0
        o_ptrs = o_ptr + b64 * stride_ob + t[:, None] * stride_ot + h[:, None] * stride_oh + offs_d[None, :]
        tl.store(o_ptrs, o.to(o_ptr.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


@triton.jit
def _merge_store(m_part_ptr, l_part_ptr, acc_part_ptr, o_ptr, part0, n_splits, r, t, h, row_ok, b64,
                 offs_d, d_ok, stride_ob, stride_ot, stride_oh,
                 ROWS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
                 SPLITS_P2: tl.constexpr):
    """Merge the n_splits partials (m, l, acc) of rows r (inside the tile) and store o. Loads bypass
    L1 (.cg): the partials were written by other programs of the same launch."""
    s = tl.arange(0, SPLITS_P2)
    m_all = tl.load(m_part_ptr + (part0 + s[:, None]) * BLOCK_M + r[None, :],
                    mask=(s < n_splits)[:, None], other=float("-inf"), cache_modifier=".cg")   # [S, R]
    m_max = tl.max(m_all, axis=0)
    m_use = tl.where(m_max == float("-inf"), 0.0, m_max)       # rows no split saw: all weights 0
    l_tot = tl.zeros_like(m_use)
    acc = tl.zeros([ROWS, BLOCK_D], dtype=tl.float32)
    for i in range(n_splits):
        off = (part0 + i) * BLOCK_M + r
        m_s = tl.load(m_part_ptr + off, cache_modifier=".cg")
        l_s = tl.load(l_part_ptr + off, cache_modifier=".cg")
        w = tl.exp2(m_s - m_use)
        a = tl.load(acc_part_ptr + off[:, None] * BLOCK_D + offs_d[None, :], cache_modifier=".cg")
        l_tot += w * l_s
        acc += w[:, None] * a
    o = acc / tl.where(l_tot > 0.0, l_tot, 1.0)[:, None]
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
    gdc_wait_and_release(USE_GDC)
    pid_r = tl.program_id(0)     # chunk of MROWS rows inside the query-row tile
    pid_m = tl.program_id(1)
    pid_bh = tl.program_id(2)
    b = pid_bh // Hkv
    kvh = pid_bh % Hkv
    r = pid_r * MROWS + tl.arange(0, MROWS)                  # [R] row inside the tile
    rows = pid_m * BLOCK_M + r
    t = rows // G
    h = kvh * G + rows % G
    offs_d = tl.arange(0, BLOCK_D)
    _merge_store(m_part_ptr, l_part_ptr, acc_part_ptr, o_ptr, (pid_bh * n_m_tiles + pid_m) * n_splits,
                 n_splits, r, t, h, t < Tq, b.to(tl.int64), offs_d, offs_d < D,
                 stride_ob, stride_ot, stride_oh, MROWS, BLOCK_M, BLOCK_D, SPLITS_P2)


# ----------------------------------------------------------------------------------------- launcher
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_INT_DTYPES = (torch.int32, torch.int64)


def _pick_config(B: int, Tq: int, H: int, Hkv: int, D: int, kv_len: int, device: torch.device) -> dict:
    """:func:`_attention_config` for the current mode (a new dict per call, memoised per shape and device)."""
    return _attention_config(B, Tq, H, Hkv, D, kv_len, device, is_interpreter())


@memo_config
def _attention_config(B: int, Tq: int, H: int, Hkv: int, D: int, kv_len: int, device: torch.device,
                      interpret: bool) -> dict:
    """Fixed meta-parameters as a deterministic function of the shapes (and the SM count).

    ``n_splits`` is an upper bound fixed on the host from ``kv_len`` (which is ``T_max`` under CUDA
    graphs); the kernel uses at most ``n_tiles // min_tiles`` of them, from the real range on the
    device. Measured on an H200 (132 SMs, bf16, D=128, Tq=32, CUDA graphs, see
    scripts/bench_block_attention.py): splitting never paid once B*Hkv >= #SMs; two programs per SM
    paid only for long ranges (>= 32 tiles). The separate merge kernel beat the in-kernel merge in every
    case. Splits of 2-3 tiles looked faster in isolation with PDL (B=1, 32 heads, KV 384: 8.5 vs 9.5 us
    per call over a full 384-key range) but made the decode step slower (4.43 vs 4.36 ms, H200, block 1
    only; over blocks 1-7 at 63a7ebb also slower, results/bench_decode/perblock_h200_63a7ebb.txt: most
    steps attend to fewer keys, and the merge kernel is one more launch), so the rule stays at 4.
    """
    rows = Tq * (H // Hkv)
    if interpret:
        # numpy vectorises inside a block and every program costs ~ms: big tiles, few programs
        block_m = min(max(16, next_pow2(rows)), 128)
        block_n = 256
        n_splits = min(2, max(1, cdiv(kv_len, block_n)))
        return dict(block_m=block_m, block_n=block_n, n_splits=n_splits, min_tiles=1,
                    merge_in_kernel=False, num_warps=4, num_stages=1)
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
        # short ranges at small batch (no split): 16-row query tiles (twice the programs, each with half the
        # MMA work per key tile) and 128-key tiles. LLaDA-8B batch-1 block step (32 queries, 32 heads,
        # KV <= 384): 4.380 / 4.388 ms vs 4.432 / 4.437 / 4.439 with 32 x 64 tiles, H200
        # (results/bench_decode/attn_tiles_ab_h200_20819f6.txt)
        block_m, block_n = 16, 128
    elif n_splits == 1 and block_m == 32 and base >= 4 * n_sm and kv_len <= 256:
        # 32-row query tiles, many programs (>= 4 waves), short ranges: 32-key tiles. LLaDA-8B shapes at batch 32
        # (32 queries, 32 heads), us per call: KV 128 26.5 vs 28.5, KV 192 33.8 vs 36.9, KV 256 41.6 vs 44.3; at
        # KV 384-1024 and at batch 8 (256 programs) the 64-key tiles are as fast or faster. H200
        # (results/kernels/attn_tiles_b32_h200_4da865a.txt)
        block_n = 32
    return dict(block_m=block_m, block_n=block_n, n_splits=n_splits, min_tiles=1,
                merge_in_kernel=False, num_warps=4, num_stages=3)


def _launch(q, k_cache, v_cache, kv_len, kv_start=None, key_end=None, scale=None, *,
            config: Optional[dict] = None, out: Optional[torch.Tensor] = None,
            tile_counts: Optional[torch.Tensor] = None, poison_workspace: bool = False):
    """Validate, pick meta-parameters (or take ``config``), allocate and launch.

    Internal knobs for tests and benchmarks: ``config`` overrides any of ``block_m, block_n,
    n_splits, min_tiles, merge_in_kernel, num_warps, num_stages``; ``out`` is a preallocated output
    (written in full); ``tile_counts`` (int32,
    ``B*Hkv*n_m*n_splits`` elements) receives the number of KV tiles each program visited;
    ``poison_workspace`` fills the partial buffers with NaN before the launch.
    """
    check_tensor("q", q, ndim=4, dtypes=_DTYPES)
    check_tensor("k_cache", k_cache, ndim=4, dtypes=_DTYPES)
    check_tensor("v_cache", v_cache, ndim=4, dtypes=_DTYPES)
    B, Tq, H, D = q.shape
    Bk, T_max, Hkv, Dk = k_cache.shape
    if k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        raise ValueError(f"k_cache/v_cache dtypes ({k_cache.dtype}, {v_cache.dtype}) must equal q.dtype "
                         f"({q.dtype})")
    if tuple(v_cache.shape) != tuple(k_cache.shape):
        raise ValueError(f"v_cache shape {tuple(v_cache.shape)} must equal k_cache shape "
                         f"{tuple(k_cache.shape)}")
    if Bk != B or Dk != D:
        raise ValueError(f"k_cache shape {tuple(k_cache.shape)} does not match q shape {tuple(q.shape)}: "
                         f"need [B={B}, T_max, Hkv, D={D}]")
    if Hkv < 1 or H % Hkv:
        raise ValueError(f"q heads H={H} must be a multiple of the cache's kv heads Hkv={Hkv}")
    if not 16 <= D <= 256:
        raise ValueError(f"head dim D={D} not supported; allowed: 16 <= D <= 256")
    if q.device != k_cache.device or q.device != v_cache.device:
        raise ValueError(f"q ({q.device}), k_cache ({k_cache.device}), v_cache ({v_cache.device}) "
                         f"must be on one device")
    if isinstance(kv_len, torch.Tensor) or isinstance(kv_len, bool) or not isinstance(kv_len, int):
        raise TypeError(f"kv_len must be a Python int (put per-row limits in key_end / kv_start), "
                        f"got {type(kv_len).__name__}")
    if not 0 <= kv_len <= T_max:
        raise ValueError(f"kv_len={kv_len} must be in [0, T_max={T_max}]")
    stride_ksb = stride_keb = stride_ket = 0
    if kv_start is not None:
        check_tensor("kv_start", kv_start, ndim=1, dtypes=_INT_DTYPES, contiguous_last=False)
        if kv_start.shape[0] != B or kv_start.device != q.device:
            raise ValueError(f"kv_start must be an int tensor [B={B}] on {q.device}, got shape "
                             f"{tuple(kv_start.shape)} on {kv_start.device}")
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
            raise ValueError(f"key_end must have shape [Tq={Tq}] or [B={B}, Tq={Tq}], got "
                             f"{tuple(key_end.shape)}")
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number, got {scale}")

    if out is None:
        out = torch.empty(B, Tq, H, D, dtype=q.dtype, device=q.device)
    else:
        check_tensor("out", out, ndim=4, dtypes=(q.dtype,))
        if tuple(out.shape) != (B, Tq, H, D) or out.device != q.device:
            raise ValueError(f"out must be [{B}, {Tq}, {H}, {D}] on {q.device}, got {tuple(out.shape)}")
    if out.numel() == 0:
        return out

    cfg = _pick_config(B, Tq, H, Hkv, D, kv_len, q.device)
    if config:
        unknown = set(config) - set(cfg)
        if unknown:
            raise ValueError(f"config keys {sorted(unknown)} unknown; allowed: {sorted(cfg)}")
        cfg.update(config)
    G = H // Hkv
    block_m, block_n, n_splits = cfg["block_m"], cfg["block_n"], cfg["n_splits"]
    block_d = max(16, next_pow2(D))
    n_m = cdiv(Tq * G, block_m)
    n_parts = B * Hkv * n_m * n_splits
    split = n_splits > 1
    if split:
        f32 = dict(dtype=torch.float32, device=q.device)
        m_part = torch.empty(n_parts * block_m, **f32)
        l_part = torch.empty(n_parts * block_m, **f32)
        acc_part = torch.empty(n_parts * block_m * block_d, **f32)
        if poison_workspace:
            for w in (m_part, l_part, acc_part):
                w.fill_(float("nan"))
    else:
        m_part = l_part = acc_part = out          # unused (constexpr SPLIT=False)
    if tile_counts is not None and tile_counts.numel() < n_parts:
        raise ValueError(f"tile_counts needs {n_parts} elements, has {tile_counts.numel()}")
    merge_in_kernel = split and bool(cfg["merge_in_kernel"])
    # arrival counters of the in-kernel merge (the only memset of a launch)
    counters = torch.zeros(B * Hkv * n_m, dtype=torch.int32, device=q.device) if merge_in_kernel else out
    upcast = is_interpreter() and q.dtype == torch.bfloat16
    dot_prec = "ieee" if q.dtype == torch.float32 else "tf32"
    splits_p2 = next_pow2(n_splits)

    grid = (n_splits, n_m, B * Hkv)
    _block_attn_fwd_kernel[grid](
        q, k_cache, v_cache, out,
        m_part, l_part, acc_part, counters,
        kv_start if kv_start is not None else out,          # pointers of absent inputs: never read
        key_end if key_end is not None else out,
        tile_counts if tile_counts is not None else out,
        Tq, G, Hkv, kv_len, n_splits, n_m, max(1, int(cfg["min_tiles"])),
        q.stride(0), q.stride(1), q.stride(2),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        stride_ksb, stride_keb, stride_ket,
        scale * _LOG2E,
        D=D, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
        HAS_KV_START=kv_start is not None, HAS_KEY_END=key_end is not None, SPLIT=split,
        UPCAST=upcast, DOT_PREC=dot_prec, COUNT_TILES=tile_counts is not None,
        MERGE_IN_KERNEL=merge_in_kernel, SPLITS_P2=splits_p2,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **gdc_options(q, B * Tq),
    )
    if split and not merge_in_kernel:
        mrows = block_m if is_interpreter() else min(block_m, 8)
        _block_attn_merge_kernel[(block_m // mrows, n_m, B * Hkv)](
            m_part, l_part, acc_part, out,
            Tq, G, Hkv, n_splits, n_m,
            out.stride(0), out.stride(1), out.stride(2),
            D=D, BLOCK_M=block_m, BLOCK_D=block_d, MROWS=mrows, SPLITS_P2=splits_p2,
            num_warps=4, **gdc_options(q, B * Tq),
        )
    return out


# ------------------------------------------------------------------------------------------- public
def block_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, kv_len: int,
                    kv_start: Optional[torch.Tensor] = None, key_end: Optional[torch.Tensor] = None,
                    scale: Optional[float] = None) -> torch.Tensor:
    """Bidirectional attention of a block of queries over the first ``kv_len`` slots of a KV cache.

    Args:
      q: ``[B, Tq, H, D]`` fp16 / bf16 / fp32 (rotated queries).
      k_cache, v_cache: ``[B, T_max, Hkv, D]``, same dtype as ``q``, ``H % Hkv == 0`` (GQA); keys
        already rotated; the block's own keys/values already written at their slots.
      kv_len: Python int in ``[0, T_max]``: only slots ``[0, kv_len)`` can be attended. Under CUDA
        graphs pass ``kv_len = T_max`` and give the real limits in ``key_end`` / ``kv_start``: KV
        tiles outside ``[kv_start[b], max_i key_end[b, i])`` are never loaded.
      kv_start: int32/int64 ``[B]`` or None: keys ``< kv_start[b]`` are invisible to batch row b.
      key_end: int32/int64 ``[Tq]`` or ``[B, Tq]`` or None: query i (of batch row b) sees only keys
        ``< key_end[(b,) i]`` (block-causal); None means all of ``[0, kv_len)``.
      scale: softmax scale, default ``1 / sqrt(D)``.

    Query i of row b attends to keys ``kv_start[b] <= j < min(kv_len, key_end[(b,) i])``, without
    causal masking inside that range; softmax in fp32 (exp2, ``log2(e)`` folded into the scale).
    By contract every query sees at least one key; a row that sees none gets an output of 0 (never
    NaN). Slots outside the visible range are never read, so they may hold anything (even NaN).
    With PDL (sm_90+, up to 64 query rows) ``kv_start`` / ``key_end`` are read before the kernel waits
    on the previous kernel of the stream: they must not be the output of the kernel launched just before
    (a torch op, or any kernel without PDL, is always safe: it lets this one start only when complete).

    Returns: ``[B, Tq, H, D]`` contiguous, in ``q.dtype``.
    """
    return _launch(q, k_cache, v_cache, kv_len, kv_start, key_end, scale)
