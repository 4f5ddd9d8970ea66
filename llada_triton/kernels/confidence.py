"""The sampled token and its confidence per row: :func:`head_confidence` from final hidden states (LM head fused,
``[M, V]`` logits never stored), :func:`logits_confidence` from logits in memory (one read).

* ``_head_partials_kernel`` (grid ``(row tiles, vocab tiles)``): a logit tile from the K-steps of
  :mod:`llada_triton.kernels.gemm`, rounded to the hidden dtype, reduced to per-row partials by ``_tile_stats``
  (CFG, banned ids, in-kernel Philox Gumbel noise keyed by ``(seed, offset)`` with counters ``(vocab id, row)``,
  so samples do not depend on the tiling).
* ``_logits_partials_kernel`` (grid ``(row tiles, vocab slices)``): streams a vocab slice through ``_tile_stats``
  with an online max / sum-exp / argmax.
* ``_head_merge_kernel``: merges each row's partials into ``x0`` and ``conf`` (both paths).
* ``gumbel_noise``, ``head_config``, ``sampling_args``, ``rows_args``, ``merge_tiles`` are shared with
  :mod:`llada_triton.kernels.dream_head`.

References: :func:`llada_triton.kernels.reference.head_confidence_ref`, ``logits_confidence_ref``.
"""
from __future__ import annotations

import struct
from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from llada_triton.kernels._common import (DTYPES, cdiv, check_like, check_tensor, gdc_options, gdc_wait_and_release,
                                          is_interpreter, next_pow2)
from llada_triton.kernels.gemm import acc_zeros, dot_step, load_k

__all__ = ["head_confidence", "logits_confidence"]

MAX_SPECIAL_IDS = 4  # banned_ids / no_confidence_ids are passed as scalar kernel arguments


@triton.jit
def _philox4x32_10(c0, c1, c2, c3, k0, k1):
    """The first output word of Philox4x32-10 (Random123 constants) for uint32 counter words and key."""
    for _ in tl.static_range(10):
        p0 = c0
        p2 = c2
        c0 = tl.umulhi(p2, 0xCD9E8D57) ^ c1 ^ k0
        c2 = tl.umulhi(p0, 0xD2511F53) ^ c3 ^ k1
        c1 = p2 * 0xCD9E8D57
        c3 = p0 * 0xD2511F53
        k0 = k0 + 0x9E3779B9
        k1 = k1 + 0xBB67AE85
    return c0


@triton.jit
def gumbel_noise(vid, row, seed_lo, seed_hi, off_lo, off_hi):
    """Gumbel(0, 1) noise per (row, vocab id): Philox key (seed_lo, seed_hi), counter (vid, row, off_lo, off_hi);
    its first word -> w in (0, 1) -> E = -log1p(-w) (accurate for small w, where the winners are) -> -log(E)."""
    zero = (vid + row).to(tl.uint32) * 0  # [BM, BV] uint32
    one = tl.zeros([1, 1], dtype=tl.uint32)  # scalars (int32 bits) -> uint32 by promotion
    r = _philox4x32_10(vid.to(tl.uint32) + zero, row.to(tl.uint32) + zero, zero + (one + off_lo),
                       zero + (one + off_hi), one + seed_lo, one + seed_hi)
    w = (r.to(tl.float32) + 0.5) * 2.3283064365386963e-10  # (r + 1/2) / 2^32
    w = tl.minimum(w, 0.99999994)  # the uint32 -> fp32 rounding could reach 1.0
    u = 1.0 - w
    den = tl.where(u == 1.0, 1.0, 1.0 - u)
    e = tl.where(u == 1.0, w, -tl.log(u) * (w / den))  # -log1p(-w), Kahan's trick
    return -tl.log(e)


@triton.jit
def _in_ids(x, i0, i1, i2, i3, N: tl.constexpr):
    """x == one of the first N of (i0, i1, i2, i3); N >= 1."""
    hit = x == i0
    if N > 1:
        hit = hit | (x == i1)
    if N > 2:
        hit = hit | (x == i2)
    if N > 3:
        hit = hit | (x == i3)
    return hit


@triton.jit
def _tile_stats(logit, v0, prow, m_ref, V, inv_temp, seed_lo, seed_hi, off_lo, off_hi,
                ban0, ban1, ban2, ban3, nc0, nc1, nc2, nc3,
                N_BAN: tl.constexpr, N_NC: tl.constexpr, SAMPLE: tl.constexpr, MASK_V: tl.constexpr,
                BLOCK_V: tl.constexpr):
    """Per-row partials of an fp32 logit tile ``[BM, BV]`` (column j = vocab id ``v0 + j``, CFG applied; ``prow``:
    Philox row counters) after banned ids, the V edge (``MASK_V``), Gumbel noise and no_confidence ids:
    ``(kmax, kidx, lx, m, s)``, the largest sampling key and its lowest id (int32), the confidence logit there,
    ``m = max(m_ref, max confidence logit)`` (``m_ref``: a running max) and the sum of ``exp(l_c - m)``."""
    vcol = (v0 + tl.arange(0, BLOCK_V))[None, :]  # [1, BV]
    if N_BAN > 0:
        logit = tl.where(_in_ids(vcol, ban0, ban1, ban2, ban3, N_BAN), float("-inf"), logit)
    if MASK_V:
        logit = tl.where(vcol < V, logit, float("-inf"))
    # the confidence softmax also drops no_confidence_ids (after sampling)
    if N_NC > 0:
        logit_c = tl.where(_in_ids(vcol, nc0, nc1, nc2, nc3, N_NC), float("-inf"), logit)
    else:
        logit_c = logit

    if SAMPLE:
        g = gumbel_noise(vcol, prow[:, None], seed_lo, seed_hi, off_lo, off_hi)
        key = logit * inv_temp + g
        kmax, kloc = tl.max(key, axis=1, return_indices=True, return_indices_tie_break_left=True)
        lsel = tl.arange(0, BLOCK_V)[None, :] == kloc[:, None]
        lx = tl.max(tl.where(lsel, logit_c, float("-inf")), axis=1)  # l_c[x0]
    else:
        kmax, kloc = tl.max(logit, axis=1, return_indices=True, return_indices_tie_break_left=True)
        lx = kmax
        if N_NC > 0:
            lx = tl.where(_in_ids(v0 + kloc, nc0, nc1, nc2, nc3, N_NC), float("-inf"), lx)
    m = tl.maximum(tl.max(logit_c, axis=1), m_ref)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    s = tl.sum(tl.exp(logit_c - m_safe[:, None]), axis=1)
    return kmax, v0 + kloc.to(tl.int32), lx, m, s


@triton.jit
def _store_partials(pkey_ptr, pidx_ptr, plx_ptr, pm_ptr, ps_ptr, rows, pid_v, M, NVT, kmax, kidx, lx, m, s):
    po = rows.to(tl.int64) * NVT + pid_v
    rmask = rows < M
    tl.store(pkey_ptr + po, kmax, mask=rmask)
    tl.store(pidx_ptr + po, kidx, mask=rmask)
    tl.store(plx_ptr + po, lx, mask=rmask)
    tl.store(pm_ptr + po, m, mask=rmask)
    tl.store(ps_ptr + po, s, mask=rmask)


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "off_lo", "off_hi"])
def _head_partials_kernel(
    h_ptr, hu_ptr, w_ptr,  # [M, D], [M, D] (CFG only), [V, D]
    pkey_ptr, pidx_ptr, plx_ptr, pm_ptr, ps_ptr,  # partials [M, NVT]
    n_rows_ptr, row_ids_ptr,  # [1] rows to compute (HAS_N_ROWS), [M] Philox row counters (HAS_ROW_IDS)
    M, V, D, NVT,
    stride_hm, stride_hum, stride_wv,
    inv_temp, cfg_w,
    seed_lo, seed_hi, off_lo, off_hi,
    ban0, ban1, ban2, ban3, nc0, nc1, nc2, nc3,
    N_BAN: tl.constexpr, N_NC: tl.constexpr, SAMPLE: tl.constexpr, CFG: tl.constexpr,
    HAS_N_ROWS: tl.constexpr, HAS_ROW_IDS: tl.constexpr,
    UPCAST: tl.constexpr, IEEE: tl.constexpr, SWAP_AB: tl.constexpr,
    EVEN_K: tl.constexpr, EVEN_V: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr, USE_GDC: tl.constexpr = False,
):
    gdc_wait_and_release(USE_GDC)  # PDL: the hidden states (and n_rows / row_ids) come from the kernel before
    pid_m = tl.program_id(0)  # row tiles vary fastest: programs sharing a W tile run together (L2)
    pid_v = tl.program_id(1)
    if HAS_N_ROWS:  # row tiles at or past n_rows do nothing (their outputs are unspecified)
        if pid_m * BLOCK_M >= tl.load(n_rows_ptr):
            return
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    vids = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)  # [BV]
    offs_k = tl.arange(0, BLOCK_K)  # [BK]
    # clamp instead of masking the M / V edges: the duplicated rows / ids are dropped in the epilogue
    rows_c = tl.minimum(rows, M - 1).to(tl.int64)
    vids_c = tl.minimum(vids, V - 1).to(tl.int64)
    a_ptrs = h_ptr + rows_c[:, None] * stride_hm + offs_k[None, :]  # [BM, BK]
    b_ptrs = w_ptr + vids_c[:, None] * stride_wv + offs_k[None, :]  # [BV, BK]
    au_ptrs = hu_ptr + rows_c[:, None] * stride_hum + offs_k[None, :]  # CFG only
    acc = acc_zeros(BLOCK_M, BLOCK_V, SWAP_AB)
    accu = tl.zeros_like(acc)
    for k0 in range(0, D, BLOCK_K):
        b = load_k(w_ptr, b_ptrs, 0, k0, D - k0, BLOCK_K, False, EVEN_K, UPCAST)
        a = load_k(h_ptr, a_ptrs, 0, k0, D - k0, BLOCK_K, False, EVEN_K, UPCAST)
        acc = dot_step(a, b, acc, SWAP_AB, IEEE)
        if CFG:
            au = load_k(hu_ptr, au_ptrs, 0, k0, D - k0, BLOCK_K, False, EVEN_K, UPCAST)
            accu = dot_step(au, b, accu, SWAP_AB, IEEE)
            au_ptrs += BLOCK_K
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K

    if SWAP_AB:
        acc = tl.trans(acc)
        if CFG:
            accu = tl.trans(accu)
    # logits as the model returns them: rounded to the hidden dtype, then fp32
    logit = acc.to(h_ptr.dtype.element_ty).to(tl.float32)  # [BM, BV]
    if CFG:
        lu = accu.to(h_ptr.dtype.element_ty).to(tl.float32)
        logit = lu + cfg_w * (logit - lu)
    if HAS_ROW_IDS:
        prow = tl.load(row_ids_ptr + rows_c).to(tl.int32)
    else:
        prow = rows
    m_ref = tl.full([BLOCK_M], float("-inf"), tl.float32)
    kmax, kidx, lx, m, s = _tile_stats(logit, pid_v * BLOCK_V, prow, m_ref, V, inv_temp, seed_lo, seed_hi, off_lo,
                                       off_hi, ban0, ban1, ban2, ban3, nc0, nc1, nc2, nc3,
                                       N_BAN=N_BAN, N_NC=N_NC, SAMPLE=SAMPLE, MASK_V=not EVEN_V, BLOCK_V=BLOCK_V)
    _store_partials(pkey_ptr, pidx_ptr, plx_ptr, pm_ptr, ps_ptr, rows, pid_v, M, NVT, kmax, kidx, lx, m, s)


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "off_lo", "off_hi"])
def _logits_partials_kernel(
    l_ptr, lu_ptr,  # [M, V] logits, [M, V] unconditional logits (CFG only); last dim contiguous
    pkey_ptr, pidx_ptr, plx_ptr, pm_ptr, ps_ptr,  # partials [M, NVT]
    n_rows_ptr, row_ids_ptr,  # as _head_partials_kernel
    M, V, NVT, CHUNK,  # program (i, j) streams vocab ids [j * CHUNK, min((j + 1) * CHUNK, V)), BLOCK_V at a time
    stride_lm, stride_lum,
    inv_temp, cfg_w,
    seed_lo, seed_hi, off_lo, off_hi,
    ban0, ban1, ban2, ban3, nc0, nc1, nc2, nc3,
    N_BAN: tl.constexpr, N_NC: tl.constexpr, SAMPLE: tl.constexpr, CFG: tl.constexpr,
    HAS_N_ROWS: tl.constexpr, HAS_ROW_IDS: tl.constexpr, EVEN_V: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_v = tl.program_id(1)
    if HAS_N_ROWS:
        if pid_m * BLOCK_M >= tl.load(n_rows_ptr):
            return
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    rows_c = tl.minimum(rows, M - 1).to(tl.int64)  # edge rows duplicated, dropped at the store
    if HAS_ROW_IDS:
        prow = tl.load(row_ids_ptr + rows_c).to(tl.int32)
    else:
        prow = rows
    l_rows = l_ptr + rows_c[:, None] * stride_lm  # [BM, 1]
    if CFG:
        lu_rows = lu_ptr + rows_c[:, None] * stride_lum
    v_start = pid_v * CHUNK
    v_end = tl.minimum(v_start + CHUNK, V)
    # running partials: key max and its (lowest) id, l_c at that id, online max / sum-exp of l_c
    K = tl.full([BLOCK_M], float("-inf"), tl.float32)
    I = tl.zeros([BLOCK_M], dtype=tl.int32) + v_start
    LX = tl.full([BLOCK_M], float("-inf"), tl.float32)
    MR = tl.full([BLOCK_M], float("-inf"), tl.float32)
    SR = tl.zeros([BLOCK_M], dtype=tl.float32)
    for v0 in range(v_start, v_end, BLOCK_V):
        vcol = (v0 + tl.arange(0, BLOCK_V))[None, :]  # [1, BV]
        if EVEN_V:
            logit = tl.load(l_rows + vcol).to(tl.float32)  # [BM, BV]
            if CFG:
                lu = tl.load(lu_rows + vcol).to(tl.float32)
        else:
            logit = tl.load(l_rows + vcol, mask=vcol < V, other=0.0).to(tl.float32)
            if CFG:
                lu = tl.load(lu_rows + vcol, mask=vcol < V, other=0.0).to(tl.float32)
        if CFG:
            logit = lu + cfg_w * (logit - lu)
        # s comes relative to mn = max(MR, tile max): the running sum is rescaled only when the max grows
        kmax, kidx, lx, mn, s = _tile_stats(logit, v0, prow, MR, V, inv_temp, seed_lo, seed_hi, off_lo, off_hi,
                                            ban0, ban1, ban2, ban3, nc0, nc1, nc2, nc3,
                                            N_BAN=N_BAN, N_NC=N_NC, SAMPLE=SAMPLE, MASK_V=not EVEN_V,
                                            BLOCK_V=BLOCK_V)
        take = kmax > K  # strictly: an earlier tile (lower ids) keeps a tie
        K = tl.where(take, kmax, K)
        I = tl.where(take, kidx, I)
        LX = tl.where(take, lx, LX)
        mn_safe = tl.where(mn == float("-inf"), 0.0, mn)
        SR = tl.where(mn > MR, SR * tl.exp(MR - mn_safe), SR) + s  # MR = -inf: SR = 0 * 0
        MR = mn
    _store_partials(pkey_ptr, pidx_ptr, plx_ptr, pm_ptr, ps_ptr, rows, pid_v, M, NVT, K, I, LX, MR, SR)


@triton.jit
def _head_merge_kernel(
    pkey_ptr, pidx_ptr, plx_ptr, pm_ptr, ps_ptr,  # [M, NVT]
    x0_ptr, conf_ptr,  # [M] int64, [M] fp32
    n_rows_ptr,  # [1] (HAS_N_ROWS): row tiles at or past it do nothing
    M, NVT,
    HAS_N_ROWS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr, USE_GDC: tl.constexpr = False,
):
    gdc_wait_and_release(USE_GDC)
    if HAS_N_ROWS:
        if tl.program_id(0) * BLOCK_R >= tl.load(n_rows_ptr):
            return
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # [BR]
    t = tl.arange(0, BLOCK_T)  # [BT]
    rmask = rows < M
    valid = rmask[:, None] & (t[None, :] < NVT)
    po = rows.to(tl.int64)[:, None] * NVT + t[None, :]
    key = tl.load(pkey_ptr + po, mask=valid, other=float("-inf"))
    kmax = tl.max(key, axis=1)
    # lowest tile holding the max key = lowest vocab id (each tile already broke ties to the left)
    tsel = tl.min(tl.where(valid & (key == kmax[:, None]), t[None, :], BLOCK_T), axis=1)
    at = t[None, :] == tsel[:, None]
    idx = tl.load(pidx_ptr + po, mask=valid, other=0)
    x0 = tl.max(tl.where(at, idx, -1), axis=1)
    lxs = tl.load(plx_ptr + po, mask=valid, other=float("-inf"))
    lx = tl.max(tl.where(at, lxs, float("-inf")), axis=1)
    m = tl.load(pm_ptr + po, mask=valid, other=float("-inf"))
    s = tl.load(ps_ptr + po, mask=valid, other=0.0)
    mmax = tl.max(m, axis=1)
    mmax_safe = tl.where(mmax == float("-inf"), 0.0, mmax)
    ssum = tl.sum(s * tl.exp(m - mmax_safe[:, None]), axis=1)
    # = exp(l_c[x0] - logsumexp(l_c)); 0 / 0 = NaN when l_c is all -inf (as the reference)
    conf = tl.exp(lx - mmax_safe) / tl.where(rmask, ssum, 1.0)
    tl.store(x0_ptr + rows, x0.to(tl.int64), mask=rmask)
    tl.store(conf_ptr + rows, conf, mask=rmask)


def _id_args(name: str, ids: Sequence[int], V: int):
    ids = [int(i) for i in ids]
    if len(ids) > MAX_SPECIAL_IDS:
        raise ValueError(f"{name}: at most {MAX_SPECIAL_IDS} ids are supported, got {len(ids)}: {ids}")
    for i in ids:
        if not 0 <= i < V:
            raise ValueError(f"{name}: id {i} is outside [0, {V})")
    return ids + [-1] * (MAX_SPECIAL_IDS - len(ids)), len(ids)


def head_config(M: int, V: int, D: int, dtype: torch.dtype, cfg: bool, interpret: bool, sample: bool = False) -> dict:
    """Meta-parameters of the head kernels, a function of the shape and mode: bf16/fp16 temperature-0 tiles from
    a sweep at M = 32 / 256 / 1024; with sampling, 64-wide vocab tiles above 32 rows (the Philox epilogue spills
    128x128 tiles on sm_90)."""
    if interpret:  # big blocks, small grids: numpy vectorises inside a block
        return dict(BLOCK_M=min(next_pow2(max(M, 16)), 128), BLOCK_V=min(next_pow2(max(V, 16)), 16384),
                    BLOCK_K=min(next_pow2(max(D, 16)), 128), SWAP_AB=False, num_warps=4, num_stages=1)
    if dtype == torch.float32:  # exact fp32 FMA path (tests); not a performance path
        return dict(BLOCK_M=32, BLOCK_V=64, BLOCK_K=32, SWAP_AB=False, num_warps=4, num_stages=2)
    if M <= 32 or (M <= 64 and not sample):  # weight-streaming bound: W rows as the MMA M dimension
        bm = 16 if M <= 16 else (32 if M <= 32 else 64)
        return dict(BLOCK_M=bm, BLOCK_V=128, BLOCK_K=128, SWAP_AB=True, num_warps=4, num_stages=3 if cfg else 4)
    if sample:
        if M <= 64:
            return dict(BLOCK_M=64, BLOCK_V=64, BLOCK_K=128, SWAP_AB=True, num_warps=4, num_stages=3 if cfg else 4)
        return dict(BLOCK_M=128, BLOCK_V=64, BLOCK_K=64, SWAP_AB=False, num_warps=8, num_stages=3 if cfg else 4)
    if M <= 128 or cfg:
        return dict(BLOCK_M=128, BLOCK_V=128, BLOCK_K=64, SWAP_AB=False, num_warps=8, num_stages=3)
    return dict(BLOCK_M=128, BLOCK_V=256, BLOCK_K=64, SWAP_AB=False, num_warps=8, num_stages=3)


def sampling_args(V, temperature, seed, offset, banned_ids, no_confidence_ids) -> dict:
    """Validated scalar kernel arguments of the partials kernels: 1 / T, Philox words, special ids, constexprs."""
    temperature = float(temperature)
    if not (temperature >= 0.0 and temperature < float("inf")):
        raise ValueError(f"temperature must be finite and >= 0, got {temperature}")
    for nm, v in (("seed", seed), ("offset", offset)):
        if not isinstance(v, int) or not 0 <= v < 2 ** 64:
            raise ValueError(f"{nm} must be an int in [0, 2^64), got {v!r}")
    ban, n_ban = _id_args("banned_ids", banned_ids, V)
    nc, n_nc = _id_args("no_confidence_ids", no_confidence_ids, V)
    return dict(
        args=((1.0 / temperature) if temperature > 0 else 1.0,),
        # the 32-bit words (low first) of seed and offset as int32 (so the kernel arguments are always i32)
        rng=(*struct.unpack("<4i", struct.pack("<2Q", seed, offset)), *ban, *nc),
        constexprs=dict(N_BAN=n_ban, N_NC=n_nc, SAMPLE=temperature > 0))


def rows_args(M, device, n_rows, row_ids, placeholder):
    """Validated ``(n_rows pointer, row_ids pointer, {HAS_N_ROWS, HAS_ROW_IDS})``; absent pointers: ``placeholder``."""
    if n_rows is not None:
        check_tensor("n_rows", n_rows, dtypes=(torch.int32, torch.int64), contiguous_last=False)
        if n_rows.numel() != 1 or n_rows.ndim > 1 or n_rows.device != device:
            raise ValueError(f"n_rows must be an int32/int64 tensor of one element (0-dim or [1]) on {device}, "
                             f"got shape {tuple(n_rows.shape)} on {n_rows.device}")
    if row_ids is not None:
        check_tensor("row_ids", row_ids, ndim=1, dtypes=(torch.int32, torch.int64))
        if row_ids.shape[0] != M or row_ids.device != device:
            raise ValueError(f"row_ids must be an int32/int64 tensor [{M}] on {device} (one Philox row counter per "
                             f"row), got shape {tuple(row_ids.shape)} on {row_ids.device}")
    return (placeholder if n_rows is None else n_rows, placeholder if row_ids is None else row_ids,
            dict(HAS_N_ROWS=n_rows is not None, HAS_ROW_IDS=row_ids is not None))


def merge_tiles(M: int, nvt: int, interpret: bool):
    """``(BLOCK_R, BLOCK_T)`` of a merge over ``nvt`` partials per row (shared with the Dream head): one row a
    program up to 256 rows (enough programs to hide the partials' latency), then up to 16."""
    BT = next_pow2(max(nvt, 2))
    return (min(next_pow2(max(M, 2)), 64) if interpret else (1 if M <= 256 else max(1, min(16, 4096 // BT)))), BT


def _prepare(M, V, x0, like, uncond_name, uncond, n_rows, row_ids, temperature, seed, offset, banned_ids,
             no_confidence_ids):
    """Checks both launchers share: ``(uncond or like, sampling args, (n_rows, row_ids) pointers, constexprs)``."""
    check_like(uncond_name, uncond, like.shape, like.dtype, like.device)
    sa = sampling_args(V, temperature, seed, offset, banned_ids, no_confidence_ids)
    nr, rid, rows_ce = rows_args(M, like.device, n_rows, row_ids, x0)
    ce = dict(CFG=uncond is not None, **sa["constexprs"], **rows_ce)
    return (like if uncond is None else uncond), sa, (nr, rid), ce


def _launch(kernel, x0, conf, nvt, c, inputs, ptrs, sizes, sa, cfg_scale, ce, pdl=None, **constexprs):
    """``kernel`` on ``(row tiles, nvt)`` programs (arguments: ``inputs``, the partials, ``ptrs``, ``sizes``, the
    sampling scalars), then the merge of the partials into ``x0`` and ``conf``. ``c``: the config (its optional
    ``BLOCK_R``, for tests, overrides the merge's rows per program); ``pdl``: both launches' PDL options."""
    M, dev, interpret, pdl = inputs[0].shape[0], inputs[0].device, is_interpreter(), pdl or {}
    if M == 0:
        return x0, conf
    # per-row partials of every vocab slice: key max, its id, l_c there, max and sum-exp of l_c
    pkey = torch.empty(M, nvt, dtype=torch.float32, device=dev)
    parts = (pkey, torch.empty(M, nvt, dtype=torch.int32, device=dev), torch.empty_like(pkey), torch.empty_like(pkey),
             torch.empty_like(pkey))
    extra = {} if interpret else dict(num_warps=c["num_warps"], num_stages=c.get("num_stages", 3),
                                      enable_fp_fusion=False)  # CFG epilogue rounds as torch does
    kernel[(cdiv(M, c["BLOCK_M"]), nvt)](
        *inputs, *parts, *ptrs, *sizes, *sa["args"], float(cfg_scale) + 1.0, *sa["rng"],
        **ce, **constexprs, BLOCK_M=c["BLOCK_M"], BLOCK_V=c["BLOCK_V"], **extra, **pdl,
    )
    BR, BT = merge_tiles(M, nvt, interpret)
    BR = c.get("BLOCK_R") or BR
    _head_merge_kernel[(cdiv(M, BR),)](*parts, x0, conf, ptrs[0], M, nvt, HAS_N_ROWS=ce["HAS_N_ROWS"], BLOCK_R=BR,
                                       BLOCK_T=BT, **pdl)
    return x0, conf


def _head_confidence_launch(hidden, w_head, x0, conf, *, temperature, seed, offset, banned_ids,
                            no_confidence_ids, uncond_hidden, cfg_scale, config=None, n_rows=None, row_ids=None):
    check_tensor("hidden", hidden, ndim=2, dtypes=DTYPES)
    check_tensor("w_head", w_head, ndim=2, dtypes=(hidden.dtype,))
    M, D = hidden.shape
    V = w_head.shape[0]
    if w_head.shape[1] != D or w_head.device != hidden.device:
        raise ValueError(f"w_head must be [V, {D}] on {hidden.device} to match hidden [M, {D}], "
                         f"got {tuple(w_head.shape)} on {w_head.device}")
    if V < 1 or V >= 2 ** 31 or D < 1:
        raise ValueError(f"need 1 <= V < 2^31 and d >= 1, got V={V}, d={D}")
    hu, sa, ptrs, ce = _prepare(M, V, x0, hidden, "uncond_hidden", uncond_hidden, n_rows, row_ids, temperature, seed,
                                offset, banned_ids, no_confidence_ids)
    interpret = is_interpreter()
    c = dict(head_config(M, V, D, hidden.dtype, ce["CFG"], interpret, sample=ce["SAMPLE"]), **(config or {}))
    BV, BK = c["BLOCK_V"], c["BLOCK_K"]
    nvt = cdiv(V, BV)
    return _launch(_head_partials_kernel, x0, conf, nvt, c, (hidden, hu, w_head), ptrs,
                   (M, V, D, nvt, hidden.stride(0), hu.stride(0), w_head.stride(0)), sa, cfg_scale, ce,
                   gdc_options(hidden, M),  # decode-sized blocks: launched while the final norm finishes
                   UPCAST=interpret and hidden.dtype == torch.bfloat16, IEEE=hidden.dtype == torch.float32,
                   SWAP_AB=c["SWAP_AB"], EVEN_K=D % BK == 0, EVEN_V=V % BV == 0, BLOCK_K=BK)


LOGITS_TARGET_PROGRAMS = 2048  # GPU: vocab slices per row tile are chosen to launch about this many programs


def _logits_config(M: int, V: int, interpret: bool, sample: bool) -> dict:
    """Meta-parameters of the from-logits kernel, a function of the shape and mode: ``BLOCK_M`` rows x ``BLOCK_V``
    ids a step, ``TILES`` steps a program (a vocab slice). With sampling (not swept): 2 rows a step (the Philox
    epilogue's registers), ``BLOCK_V = 512`` (LLaDA's V = 247 * 512), about ``LOGITS_TARGET_PROGRAMS`` programs."""
    if interpret:  # big tiles, few programs
        bv = min(next_pow2(max(V, 16)), 16384)
        return dict(BLOCK_M=min(next_pow2(max(M, 1)), 64), BLOCK_V=bv, TILES=cdiv(V, bv), num_warps=4)
    if not sample:  # swept under CUDA graphs at V = 126464, bf16 (results/decisions.md): 2 rows x 2048 ids x 4
        # steps a program; below 128 rows one row x 4096 ids a program, one step
        if M < 128:
            return dict(BLOCK_M=1, BLOCK_V=4096, TILES=max(1, cdiv(cdiv(V, 4096), 1024)), num_warps=8, num_stages=1)
        bv = 2048
        tiles = max(4, cdiv(cdiv(V, bv), 1024))  # the merge holds a row's partials in one block
        return dict(BLOCK_M=2, BLOCK_V=bv, TILES=tiles, num_warps=4, num_stages=1)
    bm, bv = 2, 512
    n_vt = cdiv(V, bv)
    tiles = max(1, min(n_vt, cdiv(M, bm) * n_vt // LOGITS_TARGET_PROGRAMS))
    tiles = max(tiles, cdiv(n_vt, 1024))  # the merge holds a row's partials in one block
    return dict(BLOCK_M=bm, BLOCK_V=bv, TILES=tiles, num_warps=4)


def _logits_confidence_launch(logits, x0, conf, *, temperature, seed, offset, banned_ids, no_confidence_ids,
                              uncond_logits, cfg_scale, config=None, n_rows=None, row_ids=None):
    check_tensor("logits", logits, ndim=2, dtypes=DTYPES)
    M, V = logits.shape
    if V < 1 or V >= 2 ** 31:
        raise ValueError(f"logits must have 1 <= V < 2^31 columns, got shape {tuple(logits.shape)}")
    lu, sa, ptrs, ce = _prepare(M, V, x0, logits, "uncond_logits", uncond_logits, n_rows, row_ids, temperature, seed,
                                offset, banned_ids, no_confidence_ids)
    c = dict(_logits_config(M, V, is_interpreter(), ce["SAMPLE"]), **(config or {}))
    chunk = c["BLOCK_V"] * c["TILES"]
    nvt = cdiv(V, chunk)
    return _launch(_logits_partials_kernel, x0, conf, nvt, c, (logits, lu), ptrs,
                   (M, V, nvt, chunk, logits.stride(0), lu.stride(0)), sa, cfg_scale, ce, EVEN_V=V % c["BLOCK_V"] == 0)


def _outputs(src):
    """Empty ``(x0 int64 [M], conf fp32 [M])`` for ``src`` ``[M, ...]`` (the launcher validates ``src``)."""
    ok = isinstance(src, torch.Tensor)
    M = src.shape[0] if ok and src.ndim == 2 else 0
    dev = src.device if ok else None
    return torch.empty(M, dtype=torch.int64, device=dev), torch.empty(M, dtype=torch.float32, device=dev)


def head_confidence(hidden: torch.Tensor, w_head: torch.Tensor, *, temperature: float = 0.0,
                    seed: int = 0, offset: int = 0, banned_ids: Sequence[int] = (),
                    no_confidence_ids: Sequence[int] = (), uncond_hidden: Optional[torch.Tensor] = None,
                    cfg_scale: float = 0.0, n_rows: Optional[torch.Tensor] = None,
                    row_ids: Optional[torch.Tensor] = None):
    """Sampled token and its confidence per row from final (normed) hidden states; returns ``(x0 int64 [M],
    conf fp32 [M])``.

    hidden: ``[M, d]`` bf16/fp16/fp32, last dim contiguous; w_head: ``[V, d]``, same dtype. The logits
    ``hidden @ w_head.T`` are rounded to the hidden dtype, then in fp32: CFG ``lu + (cfg_scale + 1) * (l - lu)``
    with ``uncond_hidden`` ``[M, d]``; ``banned_ids`` (<= 4) get ``-inf``; ``x0`` is the argmax at temperature 0
    (lowest id on ties), else a Gumbel-max sample of ``softmax(l / T)`` with Philox noise keyed by ``seed``,
    counters ``(vocab id, row, offset)`` (a new ``offset`` each step); then ``no_confidence_ids`` (<= 4) get
    ``-inf`` and ``conf = exp(l_c[x0] - logsumexp(l_c))`` without noise (0 when ``x0`` is one of them).
    ``n_rows`` (int32/int64 device tensor of one element): only row tiles below it run (no host sync); the
    outputs of rows ``>= n_rows`` are unspecified. ``row_ids`` (int ``[M]``, values in ``[0, 2^31)``): the
    Philox row counters instead of ``0..M-1``, so a gathered row keeps its noise. Reference:
    :func:`llada_triton.kernels.reference.head_confidence_ref` (same numerics; its RNG is a torch generator).
    """
    return _head_confidence_launch(hidden, w_head, *_outputs(hidden), temperature=temperature, seed=seed,
                                   offset=offset, banned_ids=banned_ids, no_confidence_ids=no_confidence_ids,
                                   uncond_hidden=uncond_hidden, cfg_scale=cfg_scale, n_rows=n_rows, row_ids=row_ids)


def logits_confidence(logits: torch.Tensor, *, temperature: float = 0.0, seed: int = 0, offset: int = 0,
                      banned_ids: Sequence[int] = (), no_confidence_ids: Sequence[int] = (),
                      uncond_logits: Optional[torch.Tensor] = None, cfg_scale: float = 0.0,
                      n_rows: Optional[torch.Tensor] = None, row_ids: Optional[torch.Tensor] = None):
    """:func:`head_confidence` (same semantics, same Philox noise) from logits ``[M, V]`` bf16/fp16/fp32 (rows
    may be strided, last dim contiguous; ``uncond_logits`` alike), read once, nothing ``[M, V]`` allocated:
    ``logits_confidence((hidden @ w.T).to(hidden.dtype))`` gives the tokens of ``head_confidence(hidden, w)``
    (conf equal up to fp32 summation order). NaN logits are not supported. Reference:
    :func:`llada_triton.kernels.reference.logits_confidence_ref`.
    """
    return _logits_confidence_launch(logits, *_outputs(logits), temperature=temperature, seed=seed, offset=offset,
                                     banned_ids=banned_ids, no_confidence_ids=no_confidence_ids,
                                     uncond_logits=uncond_logits, cfg_scale=cfg_scale, n_rows=n_rows,
                                     row_ids=row_ids)
