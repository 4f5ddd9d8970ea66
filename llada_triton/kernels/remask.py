"""Fused LM head + remasking: sampled token and its confidence per row, and top-k / threshold /
factor transfer selection (LLaDA low-confidence remasking, Fast-dLLM parallel rules).

* :func:`head_confidence` streams the vocabulary: ``[M, V]`` logits are never materialised. Kernel 1
  (``_head_partials_kernel``, grid ``(row tiles, vocab tiles)``) computes a ``[BLOCK_M, BLOCK_V]`` logit
  tile with ``tl.dot``, rounds it to the hidden dtype (as the model's logits are), applies CFG, banned
  ids and Gumbel noise (in-kernel Philox keyed by ``(seed, offset)``, counters ``(vocab id, row)``, so
  samples do not depend on the tiling) and reduces it to per-row partials. Kernel 2
  (``_head_merge_kernel``) merges the partials of each row into ``x0`` and ``conf``.
* :func:`logits_confidence`: the same from logits already in memory (``[M, V]``, one read):
  ``_logits_partials_kernel`` (grid ``(row tiles, vocab slices)``) streams a vocab slice in tiles with an
  online max / sum-exp / argmax, through the same epilogue (``_tile_stats``) and the same merge kernel.
* Both take an optional device ``n_rows`` (programs past it exit at once: the head on the still-masked rows
  gathered to the front) and ``row_ids`` (the Philox row counters of gathered rows).
* :func:`select_transfer` / :func:`select_commit`: one program per row ranks the masked positions by
  ``[L, BLOCK_J]`` comparison blocks (``rank_i = #{j: c_j > c_i or (c_j == c_i and j < i)}``), applies
  the rule to the ranks and stores the selection (optionally committing ``x0`` into the token block
  in place).
* :func:`commit_step`: a decoding step's whole commit in one launch, on the token buffer itself: the masked
  positions read from the tokens at a (device) block start, the selection, the write of ``x0``, the
  NFE count and the step's outputs (what the driver used to do with about a dozen torch kernels).

References: :func:`llada_triton.kernels.reference.head_confidence_ref`, :func:`llada_triton.kernels.reference.logits_confidence_ref`,
:func:`llada_triton.kernels.reference.select_transfer_ref`, :func:`llada_triton.kernels.reference.commit_step_ref`.
"""
from __future__ import annotations

import struct
from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from llada_triton.kernels._common import cdiv, check_tensor, gdc_options, gdc_wait_and_release, is_interpreter, next_pow2
from llada_triton.kernels.reference import check_not_nan

__all__ = ["head_confidence", "logits_confidence", "select_transfer", "select_commit", "commit_step"]

MAX_SPECIAL_IDS = 4  # banned_ids / no_confidence_ids are passed as scalar kernel arguments
MAX_SELECT_LEN = 4096  # one row of select_transfer is held in registers

_LOGIT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


# ------------------------------------------------------------------------------------- kernels
@triton.jit
def _philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 (Salmon et al., SC'11; Random123 constants); uint32 counter words and key. Returns
    the first output word (written out here so it does not depend on triton's private helpers)."""
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
def _gumbel(vid, row, seed_lo, seed_hi, off_lo, off_hi):
    """Gumbel(0, 1) noise for every (row, vocab id) pair: Philox4x32-10 with key (seed_lo, seed_hi) and
    counter (vid, row, off_lo, off_hi); first output word -> w in (0, 1) -> E = -log1p(-w) ~ Exp(1)
    (accurate for small w, where the winners are) -> g = -log(E)."""
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
    """The shared epilogue: per-row partials of one fp32 logit tile ``[BM, BV]`` whose column j is vocab
    id ``v0 + j`` (CFG already applied; ``prow`` ``[BM]``: the Philox row counters). Applies banned ids,
    the V edge (``MASK_V``), Gumbel noise and no_confidence ids, and returns ``(kmax, kidx, lx, m, s)``
    ``[BM]`` each: the largest sampling key and its lowest vocab id (int32), the confidence logit at that
    id, ``m = max(m_ref, max of the confidence logits)`` and the sum of their exp relative to ``m`` (0
    where -inf); ``m_ref`` ``[BM]``: a running max (``-inf``: the tile's own max)."""
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
        g = _gumbel(vcol, prow[:, None], seed_lo, seed_hi, off_lo, off_hi)
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
    UPCAST: tl.constexpr, DOT_PREC: tl.constexpr, SWAP_AB: tl.constexpr,
    EVEN_K: tl.constexpr, EVEN_V: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr, USE_GDC: tl.constexpr = False,
):
    gdc_wait_and_release(USE_GDC)  # PDL: the hidden states (and n_rows / row_ids) come from the kernel before
    pid_m = tl.program_id(0)  # row tiles vary fastest: programs sharing a W tile run together (L2)
    pid_v = tl.program_id(1)
    if HAS_N_ROWS:  # row tiles at or past n_rows do nothing (their rows' outputs are unspecified)
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
    if CFG:
        au_ptrs = hu_ptr + rows_c[:, None] * stride_hum + offs_k[None, :]
    if SWAP_AB:
        acc = tl.zeros([BLOCK_V, BLOCK_M], dtype=tl.float32)
        if CFG:
            accu = tl.zeros([BLOCK_V, BLOCK_M], dtype=tl.float32)
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_V], dtype=tl.float32)
        if CFG:
            accu = tl.zeros([BLOCK_M, BLOCK_V], dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            kmask = (k0 + offs_k) < D
            a = tl.load(a_ptrs, mask=kmask[None, :], other=0.0)
            b = tl.load(b_ptrs, mask=kmask[None, :], other=0.0)
        if UPCAST:  # the interpreter cannot compute on bf16
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        if SWAP_AB:
            acc = tl.dot(b, tl.trans(a), acc, input_precision=DOT_PREC)  # [BV, BM]
        else:
            acc = tl.dot(a, tl.trans(b), acc, input_precision=DOT_PREC)  # [BM, BV]
        if CFG:
            if EVEN_K:
                au = tl.load(au_ptrs)
            else:
                au = tl.load(au_ptrs, mask=kmask[None, :], other=0.0)
            if UPCAST:
                au = au.to(tl.float32)
            if SWAP_AB:
                accu = tl.dot(b, tl.trans(au), accu, input_precision=DOT_PREC)
            else:
                accu = tl.dot(au, tl.trans(b), accu, input_precision=DOT_PREC)
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


@triton.jit
def _rank_masked(c, offs, L, c_row, m_row, tok_row, mask_id,
                 MASK_FROM_TOKENS: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_J: tl.constexpr):
    """rank_i = #{masked j < L : c_j > c_i or (c_j == c_i and j < i)} (descending, lowest index first), the
    masked flags of the ``j`` side read from ``m_row`` or (MASK_FROM_TOKENS) computed as
    ``tok_row[j] == mask_id``."""
    rank = tl.zeros([BLOCK_L], dtype=tl.int32)
    for j0 in range(0, L, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)  # [BJ]
        jm = j < L
        cj = tl.load(c_row + j, mask=jm, other=0.0).to(tl.float32)
        if MASK_FROM_TOKENS:
            mj = (tl.load(tok_row + j, mask=jm, other=-1) == mask_id) & jm
        else:
            mj = (tl.load(m_row + j, mask=jm, other=0) != 0) & jm
        beats = (cj[None, :] > c[:, None]) | ((cj[None, :] == c[:, None]) & (j[None, :] < offs[:, None]))
        rank += tl.sum((beats & mj[None, :]).to(tl.int32), axis=1)
    return rank


@triton.jit
def _apply_rule(c, mk, rank, k_ptr, row, threshold, f_hi, f_mid, f_lo, RULE: tl.constexpr):
    """The positions to commit among the masked ones (``mk``), from their confidences and ranks."""
    if RULE == 0:  # top-k
        kk = tl.load(k_ptr + row).to(tl.int64)
        sel = mk & (rank < kk)
    elif RULE == 1:  # threshold: the top-1 always, the others when conf >= threshold (fp32)
        sel = mk & ((rank == 0) | (c >= threshold))
    else:  # factor (Fast-dLLM get_transfer_index_dynamic); thresholds in fp64 as the reference
        n = tl.sum(mk.to(tl.int32), axis=0)  # masked count
        f = ((tl.zeros([1], dtype=tl.float64) + f_hi) + f_mid) + f_lo  # exact in fp64
        thr = 1.0 - f / (rank + 2).to(tl.float64)
        thr = tl.where(rank == 0, -1.0, thr)
        fail = mk & (c.to(tl.float64) < thr)
        first = tl.min(tl.where(fail, rank, n), axis=0)  # first failing rank, n if none
        cnt = tl.where((first == 0) | (first == n - 1), first + 1, first)
        cnt = tl.minimum(cnt, n)
        sel = mk & (rank < cnt)
    return sel


@triton.jit
def _select_kernel(
    conf_ptr, masked_ptr, k_ptr, x0_ptr, tok_ptr, out_ptr,
    L,
    stride_cb, stride_mb, stride_xb, stride_tb, stride_ob,
    threshold, f_hi, f_mid, f_lo,
    RULE: tl.constexpr, COMMIT: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_J: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_L)  # [BL]
    valid = offs < L
    c_row = conf_ptr + row * stride_cb
    m_row = masked_ptr + row * stride_mb
    c = tl.load(c_row + offs, mask=valid, other=0.0).to(tl.float32)
    mk = (tl.load(m_row + offs, mask=valid, other=0) != 0) & valid
    rank = _rank_masked(c, offs, L, c_row, m_row, m_row, 0, MASK_FROM_TOKENS=False, BLOCK_L=BLOCK_L,
                        BLOCK_J=BLOCK_J)
    sel = _apply_rule(c, mk, rank, k_ptr, row, threshold, f_hi, f_mid, f_lo, RULE=RULE)
    tl.store(out_ptr + row * stride_ob + offs, sel.to(tl.uint8), mask=valid)
    if COMMIT:
        x = tl.load(x0_ptr + row * stride_xb + offs, mask=sel, other=0)
        tl.store(tok_ptr + row * stride_tb + offs, x, mask=sel)


@triton.jit(do_not_specialize=["start"])
def _commit_step_kernel(
    tok_ptr, start_ptr, x0_ptr, conf_ptr, done_ptr, k_ptr, nfe_ptr,  # inputs (tokens / nfe updated in place)
    sel_ptr, conf_out_ptr, blk_ptr,  # outputs [B, L]: committed (u8), conf (-inf off masked), block tokens
    L, T, start, mask_id,
    stride_tb, stride_sb, stride_xb, stride_cb,
    threshold, f_hi, f_mid, f_lo,
    RULE: tl.constexpr, START_PTR: tl.constexpr, HAS_DONE: tl.constexpr, HAS_NFE: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_J: tl.constexpr, USE_GDC: tl.constexpr = False,
):
    gdc_wait_and_release(USE_GDC)  # every input is an activation
    row = tl.program_id(0).to(tl.int64)
    if START_PTR:
        s0 = tl.load(start_ptr + row * stride_sb).to(tl.int64)
    else:
        s0 = start.to(tl.int64)
    # a block not inside [0, T) (a bad device start) is not read or written: that row commits nothing and
    # reports the tokens -1. L_live: the columns read (0 for such a row and for a done row)
    L_live = tl.where((s0 >= 0) & (s0 + L <= T), L, 0)
    L_tok = L_live
    if HAS_DONE:
        L_live = tl.where(tl.load(done_ptr + row) != 0, 0, L_live)
    offs = tl.arange(0, BLOCK_L)  # [BL]
    valid = offs < L
    t_row = tok_ptr + row * stride_tb + s0
    c_row = conf_ptr + row * stride_cb
    tok = tl.load(t_row + offs, mask=offs < L_tok, other=-1)
    mk = (tok == mask_id) & (offs < L_live)
    c = tl.load(c_row + offs, mask=valid, other=0.0).to(tl.float32)
    c = tl.where(mk, c, float("-inf"))
    rank = _rank_masked(c, offs, L_live, c_row, c_row, t_row, mask_id, MASK_FROM_TOKENS=True, BLOCK_L=BLOCK_L,
                        BLOCK_J=BLOCK_J)
    sel = _apply_rule(c, mk, rank, k_ptr, row, threshold, f_hi, f_mid, f_lo, RULE=RULE)
    x = tl.load(x0_ptr + row * stride_xb + offs, mask=sel, other=0)
    tl.store(t_row + offs, x, mask=sel)
    out = row * L + offs
    tl.store(sel_ptr + out, sel.to(tl.uint8), mask=valid)
    tl.store(conf_out_ptr + out, c, mask=valid)
    tl.store(blk_ptr + out, tl.where(sel, x, tok), mask=valid)
    if HAS_NFE:
        n = tl.sum(mk.to(tl.int32), axis=0)
        tl.store(nfe_ptr + row, tl.load(nfe_ptr + row) + (n > 0).to(tl.int64))


# ------------------------------------------------------------------------------------ launchers
def _i32(v: int) -> int:
    """A uint32 value as the int32 with the same bits (so the kernel argument is always i32)."""
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= (1 << 31) else v


def _f32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]


def _split_f64(x: float):
    """x as hi + mid + lo, each an fp32 value, the sum exact in fp64 (for normal-range x)."""
    hi = _f32(x)
    mid = _f32(x - hi)
    lo = _f32(x - hi - mid)
    return hi, mid, lo


def _id_args(name: str, ids: Sequence[int], lo: int, hi: int):
    ids = [int(i) for i in ids]
    if len(ids) > MAX_SPECIAL_IDS:
        raise ValueError(f"{name}: at most {MAX_SPECIAL_IDS} ids are supported, got {len(ids)}: {ids}")
    for i in ids:
        if not lo <= i < hi:
            raise ValueError(f"{name}: id {i} is outside [{lo}, {hi})")
    return ids + [-1] * (MAX_SPECIAL_IDS - len(ids)), len(ids)


def _head_config(M: int, V: int, D: int, dtype: torch.dtype, cfg: bool, interpret: bool,
                 sample: bool = False) -> dict:
    """Fixed meta-parameters per case (no autotune): a pure function of the shape and mode.

    GPU choices (bf16/fp16) were timed on an H200 (scripts/bench_remask.py --sweep, triton 3.6): the T=0
    configs are within ~3% of the best of the sweep at M = 32 / 256 / 1024. With Gumbel sampling the
    Philox epilogue needs more registers: 128x256 and 128x128 tiles spill (ptxas: 255 regs + 2.6 / 1 KB
    stack for sm_90), so sampling uses 64-wide vocab tiles above 32 rows (spill-free, 128-182 regs).
    """
    if interpret:  # big blocks, small grids: numpy vectorises inside a block
        return dict(BLOCK_M=min(next_pow2(max(M, 16)), 128), BLOCK_V=min(next_pow2(max(V, 16)), 16384),
                    BLOCK_K=min(next_pow2(max(D, 16)), 128), SWAP_AB=False, num_warps=4, num_stages=1)
    if dtype == torch.float32:  # exact fp32 FMA path (tests); not a performance path
        return dict(BLOCK_M=32, BLOCK_V=64, BLOCK_K=32, SWAP_AB=False, num_warps=4, num_stages=2)
    if M <= 32 or (M <= 64 and not sample):  # weight-streaming bound: W rows as the MMA M dimension
        bm = 16 if M <= 16 else (32 if M <= 32 else 64)
        return dict(BLOCK_M=bm, BLOCK_V=128, BLOCK_K=128, SWAP_AB=True, num_warps=4,
                    num_stages=3 if cfg else 4)
    if sample:
        if M <= 64:
            return dict(BLOCK_M=64, BLOCK_V=64, BLOCK_K=128, SWAP_AB=True, num_warps=4,
                        num_stages=3 if cfg else 4)
        return dict(BLOCK_M=128, BLOCK_V=64, BLOCK_K=64, SWAP_AB=False, num_warps=8, num_stages=3 if cfg else 4)
    if M <= 128 or cfg:
        return dict(BLOCK_M=128, BLOCK_V=128, BLOCK_K=64, SWAP_AB=False, num_warps=8, num_stages=3)
    return dict(BLOCK_M=128, BLOCK_V=256, BLOCK_K=64, SWAP_AB=False, num_warps=8, num_stages=3)


def _sampling_args(V, temperature, seed, offset, banned_ids, no_confidence_ids) -> dict:
    """Validated scalar kernel arguments shared by both partials kernels (Philox key / counter words,
    special ids, 1 / T)."""
    temperature = float(temperature)
    if not (temperature >= 0.0 and temperature < float("inf")):
        raise ValueError(f"temperature must be finite and >= 0, got {temperature}")
    for nm, v in (("seed", seed), ("offset", offset)):
        if not isinstance(v, int) or not 0 <= v < 2 ** 64:
            raise ValueError(f"{nm} must be an int in [0, 2^64), got {v!r}")
    ban, n_ban = _id_args("banned_ids", banned_ids, 0, V)
    nc, n_nc = _id_args("no_confidence_ids", no_confidence_ids, 0, V)
    return dict(
        args=((1.0 / temperature) if temperature > 0 else 1.0,),
        rng=(_i32(seed), _i32(seed >> 32), _i32(offset), _i32(offset >> 32), *ban, *nc),
        constexprs=dict(N_BAN=n_ban, N_NC=n_nc, SAMPLE=temperature > 0))


def _rows_args(M, device, n_rows, row_ids, placeholder):
    """(n_rows pointer, row_ids pointer, HAS_N_ROWS, HAS_ROW_IDS) after validation; ``placeholder`` stands in
    for an absent pointer (never read)."""
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


def _partials(M, nvt, device):
    """Per-row partials of every vocab slice: key max, its id, l_c there, max and sum-exp of l_c."""
    pkey = torch.empty(M, nvt, dtype=torch.float32, device=device)
    return pkey, torch.empty(M, nvt, dtype=torch.int32, device=device), torch.empty_like(pkey), \
        torch.empty_like(pkey), torch.empty_like(pkey)


def _merge_launch(parts, x0, conf, M, nvt, n_rows_ptr, has_n_rows, interpret, block_r=None, pdl=None):
    """The merge kernel over ``nvt`` partials per row; ``block_r`` (tests: a config's ``BLOCK_R``) overrides
    the rows per program."""
    BT = next_pow2(max(nvt, 2))
    # one row a program up to 256 rows (decode blocks: enough programs to hide the partials' latency; 4 rows a
    # program left 8 programs at 32 rows, 14 us on an H200), then up to 16 rows a program
    BR = min(next_pow2(max(M, 2)), 64) if interpret else (1 if M <= 256 else max(1, min(16, 4096 // BT)))
    BR = block_r or BR
    # one-row programs run 8 warps: batch-1 block step 4.3639-4.3646 ms vs 4.3675-4.3694 with 4 (H200, alternated
    # twice; results/bench_decode/merge_warps_h200_9af50fe.txt)
    extra = {} if interpret or BR != 1 else dict(num_warps=8)
    _head_merge_kernel[(cdiv(M, BR),)](
        *parts, x0, conf, n_rows_ptr, M, nvt,
        HAS_N_ROWS=has_n_rows, BLOCK_R=BR, BLOCK_T=BT, **(pdl or {}), **extra,
    )


def _head_confidence_launch(hidden, w_head, x0, conf, *, temperature, seed, offset, banned_ids,
                            no_confidence_ids, uncond_hidden, cfg_scale, config=None, n_rows=None, row_ids=None):
    check_tensor("hidden", hidden, ndim=2, dtypes=_LOGIT_DTYPES)
    check_tensor("w_head", w_head, ndim=2, dtypes=_LOGIT_DTYPES)
    M, D = hidden.shape
    V = w_head.shape[0]
    if w_head.dtype != hidden.dtype:
        raise ValueError(f"w_head dtype {w_head.dtype} must equal hidden dtype {hidden.dtype}")
    if w_head.shape[1] != D:
        raise ValueError(f"w_head must be [V, {D}] to match hidden [M, {D}], got {tuple(w_head.shape)}")
    if w_head.device != hidden.device:
        raise ValueError(f"w_head is on {w_head.device}, hidden on {hidden.device}")
    if V < 1 or V >= 2 ** 31 or D < 1:
        raise ValueError(f"need 1 <= V < 2^31 and d >= 1, got V={V}, d={D}")
    cfg = uncond_hidden is not None
    if cfg:
        _check_uncond("uncond_hidden", uncond_hidden, "hidden", hidden)
    sa = _sampling_args(V, temperature, seed, offset, banned_ids, no_confidence_ids)
    nr_ptr, rid_ptr, rows_ce = _rows_args(M, hidden.device, n_rows, row_ids, x0)
    if M == 0:
        return x0, conf

    interpret = is_interpreter()
    c = dict(_head_config(M, V, D, hidden.dtype, cfg, interpret, sample=sa["constexprs"]["SAMPLE"]))
    if config:
        c.update(config)
    BM, BV, BK = c["BLOCK_M"], c["BLOCK_V"], c["BLOCK_K"]
    nvt = cdiv(V, BV)
    parts = _partials(M, nvt, hidden.device)
    hu = uncond_hidden if cfg else hidden
    extra = {} if interpret else dict(num_warps=c["num_warps"], num_stages=c["num_stages"],
                                      enable_fp_fusion=False)  # CFG epilogue rounds as torch does
    pdl = gdc_options(hidden, M)  # decode-sized blocks: launched while the final norm finishes
    _head_partials_kernel[(cdiv(M, BM), nvt)](
        hidden, hu, w_head, *parts, nr_ptr, rid_ptr,
        M, V, D, nvt,
        hidden.stride(0), hu.stride(0), w_head.stride(0),
        *sa["args"], float(cfg_scale) + 1.0, *sa["rng"],
        CFG=cfg, **sa["constexprs"], **rows_ce,
        UPCAST=interpret and hidden.dtype == torch.bfloat16,
        DOT_PREC="ieee" if hidden.dtype == torch.float32 else "tf32", SWAP_AB=c["SWAP_AB"],
        EVEN_K=D % BK == 0, EVEN_V=V % BV == 0,
        BLOCK_M=BM, BLOCK_V=BV, BLOCK_K=BK, **extra, **pdl,
    )
    _merge_launch(parts, x0, conf, M, nvt, nr_ptr, rows_ce["HAS_N_ROWS"], interpret, c.get("BLOCK_R"), pdl)
    return x0, conf


def _check_uncond(name: str, u: torch.Tensor, like_name: str, like: torch.Tensor):
    """The CFG branch's input must have the conditional input's shape, dtype and device."""
    check_tensor(name, u, ndim=2, dtypes=(like.dtype,))
    if u.shape != like.shape or u.device != like.device:
        raise ValueError(f"{name} must match {like_name} {tuple(like.shape)} on {like.device}, "
                         f"got {tuple(u.shape)} on {u.device}")


LOGITS_TARGET_PROGRAMS = 2048  # GPU: vocab slices per row tile are chosen to launch about this many programs


def _logits_config(M: int, V: int, interpret: bool, sample: bool) -> dict:
    """Fixed meta-parameters of the from-logits kernel (no autotune): a pure function of the shape and mode.

    ``BLOCK_M`` rows x ``BLOCK_V`` vocab ids per step; each program streams ``TILES`` steps (one vocab slice
    of ``TILES * BLOCK_V`` ids), so the partials have ``ceil(V / (TILES * BLOCK_V))`` columns per row. GPU,
    temperature 0: the configs of a CUDA-graph sweep (below). With Gumbel sampling (not swept): 2 rows per
    step (keeps the Philox epilogue's registers in check), ``BLOCK_V = 512`` (LLaDA's V = 126464 = 247 * 512:
    no edge masks), ``TILES`` so that the grid has about ``LOGITS_TARGET_PROGRAMS`` programs.
    Interpreter: big tiles, few programs (numpy vectorises inside a block).
    """
    if interpret:
        bv = min(next_pow2(max(V, 16)), 16384)
        return dict(BLOCK_M=min(next_pow2(max(M, 1)), 64), BLOCK_V=bv, TILES=cdiv(V, bv), num_warps=4)
    if not sample:  # swept under CUDA graphs on an H200 (V = 126464, bf16): 2 rows x 2048 ids x 4 steps a program
        # (M=1024: 126 us vs 153 us with 4 x 512 and ~2048 programs; M=256: 38 vs 43 us). Below 128 rows one row
        # x 4096 ids a program, one step (M=32: 8.9 vs 11.0 us with 2 rows x 1024 ids x 4 steps; per-lane running
        # stats reduced once per slice were no faster: results/remask/logits_small_m_h200_8d1e65f.txt)
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
    check_tensor("logits", logits, ndim=2, dtypes=_LOGIT_DTYPES)
    M, V = logits.shape
    if V < 1 or V >= 2 ** 31:
        raise ValueError(f"logits must have 1 <= V < 2^31 columns, got shape {tuple(logits.shape)}")
    cfg = uncond_logits is not None
    if cfg:
        _check_uncond("uncond_logits", uncond_logits, "logits", logits)
    sa = _sampling_args(V, temperature, seed, offset, banned_ids, no_confidence_ids)
    nr_ptr, rid_ptr, rows_ce = _rows_args(M, logits.device, n_rows, row_ids, x0)
    if M == 0:
        return x0, conf

    interpret = is_interpreter()
    c = dict(_logits_config(M, V, interpret, sa["constexprs"]["SAMPLE"]))
    if config:
        c.update(config)
    BM, BV = c["BLOCK_M"], c["BLOCK_V"]
    chunk = BV * c["TILES"]
    nvt = cdiv(V, chunk)
    parts = _partials(M, nvt, logits.device)
    lu = uncond_logits if cfg else logits
    extra = {} if interpret else dict(num_warps=c["num_warps"], num_stages=c.get("num_stages", 3),
                                      enable_fp_fusion=False)
    _logits_partials_kernel[(cdiv(M, BM), nvt)](
        logits, lu, *parts, nr_ptr, rid_ptr,
        M, V, nvt, chunk,
        logits.stride(0), lu.stride(0),
        *sa["args"], float(cfg_scale) + 1.0, *sa["rng"],
        CFG=cfg, **sa["constexprs"], **rows_ce, EVEN_V=V % BV == 0,
        BLOCK_M=BM, BLOCK_V=BV, **extra,
    )
    _merge_launch(parts, x0, conf, M, nvt, nr_ptr, rows_ce["HAS_N_ROWS"], interpret, c.get("BLOCK_R"))
    return x0, conf


def _rule_args(B: int, dev, k, threshold, factor):
    """Validated ``(RULE, k tensor or None, threshold, factor words)`` of the selection rule (exactly one)."""
    given = [n for n, v in (("k", k), ("threshold", threshold), ("factor", factor)) if v is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of k, threshold, factor (got {given or 'none'})")
    if k is not None:
        check_tensor("k", k, ndim=1, dtypes=(torch.int32, torch.int64), contiguous_last=False)
        if k.shape[0] != B or k.device != dev:
            raise ValueError(f"k must be an int tensor [{B}] on {dev}, got {tuple(k.shape)} on {k.device}")
        return 0, k, 0.0, (0.0, 0.0, 0.0)
    if threshold is not None:
        check_not_nan("threshold", threshold)
        return 1, None, float(threshold), (0.0, 0.0, 0.0)
    factor = float(factor)
    if not (abs(factor) < 1e30 and (factor == 0.0 or abs(factor) > 1e-30)):
        raise ValueError(f"factor must be finite with 1e-30 < |factor| < 1e30 (or 0), got {factor}")
    return 2, None, 0.0, _split_f64(factor)


def _select_tiles(L: int, interpret: bool):
    """``(BLOCK_L, BLOCK_J, launch options)`` of the one-program-per-row selection kernels."""
    BL = next_pow2(max(L, 16))
    BJ = BL if interpret else max(1, min(BL, 4096 // BL))  # [BL, BJ] comparisons per step
    return BL, BJ, ({} if interpret else dict(num_warps=4 if BL <= 1024 else 8))


def _select_launch(conf, masked, out, *, k=None, threshold=None, factor=None, tokens=None, x0=None):
    check_tensor("conf", conf, ndim=2, dtypes=_LOGIT_DTYPES)
    B, L = conf.shape
    check_tensor("masked", masked, ndim=2, dtypes=(torch.bool,))
    if masked.shape != (B, L) or masked.device != conf.device:
        raise ValueError(f"masked must be bool [{B}, {L}] on {conf.device}, got {tuple(masked.shape)} "
                         f"on {masked.device}")
    if L > MAX_SELECT_LEN:
        raise ValueError(f"block length {L} exceeds {MAX_SELECT_LEN} (one row is held in registers)")
    dev = conf.device
    rule, kt, thr, fparts = _rule_args(B, dev, k, threshold, factor)
    commit = tokens is not None
    if commit:
        check_tensor("tokens_block", tokens, ndim=2, dtypes=(torch.int64,))
        check_tensor("x0", x0, ndim=2, dtypes=(torch.int64,))
        for nm, t in (("tokens_block", tokens), ("x0", x0)):
            if t.shape != (B, L) or t.device != dev:
                raise ValueError(f"{nm} must be [{B}, {L}] on {dev}, got {tuple(t.shape)} on {t.device}")
    if B == 0 or L == 0:
        return out
    BL, BJ, extra = _select_tiles(L, is_interpreter())
    ov = out.view(torch.uint8)
    tok = tokens if commit else ov
    xx = x0 if commit else ov
    _select_kernel[(B,)](
        conf, masked.view(torch.uint8), conf if kt is None else kt, xx, tok, ov,
        L,
        conf.stride(0), masked.stride(0), xx.stride(0), tok.stride(0), ov.stride(0),
        thr, *fparts,
        RULE=rule, COMMIT=commit, BLOCK_L=BL, BLOCK_J=BJ, **extra,
    )
    return out


def _commit_step_launch(tokens, start, x0, conf, *, mask_id, done, k, threshold, factor, nfe):
    check_tensor("tokens", tokens, ndim=2, dtypes=(torch.int64,))
    check_tensor("x0", x0, ndim=2, dtypes=(torch.int64,))
    check_tensor("conf", conf, ndim=2, dtypes=_LOGIT_DTYPES)
    B, T = tokens.shape
    L = x0.shape[1]
    dev = tokens.device
    for nm, t in (("x0", x0), ("conf", conf)):
        if t.shape != (B, L) or t.device != dev:
            raise ValueError(f"{nm} must be [{B}, {L}] (x0's shape) on {dev}, got {tuple(t.shape)} on {t.device}")
    if L > MAX_SELECT_LEN:
        raise ValueError(f"block length {L} exceeds {MAX_SELECT_LEN} (one row is held in registers)")
    if not isinstance(mask_id, int) or isinstance(mask_id, bool) or not 0 <= mask_id < 2 ** 63:
        raise ValueError(f"mask_id={mask_id!r} must be a non-negative int")
    if isinstance(start, torch.Tensor):
        check_tensor("start", start, dtypes=(torch.int32, torch.int64), contiguous_last=False)
        if start.device != dev or start.ndim > 1 or (start.ndim == 1 and start.shape[0] != B):
            raise ValueError(f"start must be an int, or an int32/int64 tensor of shape () or [{B}] on {dev}, got "
                             f"shape {tuple(start.shape)} on {start.device}")
        s_ptr, s_val, s_stride = start, 0, (start.stride(0) if start.ndim == 1 else 0)
    elif isinstance(start, int) and not isinstance(start, bool):
        if not 0 <= start <= T - L:
            raise ValueError(f"start={start}: the block [start, start + {L}) must lie inside the {T} token columns")
        s_ptr, s_val, s_stride = tokens, start, 0
    else:
        raise TypeError(f"start must be an int or an int tensor, got {type(start).__name__}")
    for nm, t, dt in (("done", done, torch.bool), ("nfe", nfe, torch.int64)):
        if t is not None:
            check_tensor(nm, t, ndim=1, dtypes=(dt,))
            if t.shape[0] != B or t.device != dev:
                raise ValueError(f"{nm} must be {dt} [{B}] on {dev}, got {tuple(t.shape)} on {t.device}")
    rule, kt, thr, fparts = _rule_args(B, dev, k, threshold, factor)
    sel = torch.empty((B, L), dtype=torch.bool, device=dev)
    conf_out = torch.empty((B, L), dtype=torch.float32, device=dev)
    blk = torch.empty((B, L), dtype=torch.int64, device=dev)
    if B == 0 or L == 0:
        return sel, conf_out, blk
    BL, BJ, extra = _select_tiles(L, is_interpreter())
    _commit_step_kernel[(B,)](
        tokens, s_ptr, x0, conf, tokens if done is None else done.view(torch.uint8), tokens if kt is None else kt,
        tokens if nfe is None else nfe,
        sel.view(torch.uint8), conf_out, blk,
        L, T, s_val, mask_id,
        tokens.stride(0), s_stride, x0.stride(0), conf.stride(0),
        thr, *fparts,
        RULE=rule, START_PTR=isinstance(start, torch.Tensor), HAS_DONE=done is not None, HAS_NFE=nfe is not None,
        BLOCK_L=BL, BLOCK_J=BJ, **extra, **gdc_options(conf, B * L),
    )
    return sel, conf_out, blk


# ---------------------------------------------------------------------------------- public API
def head_confidence(hidden: torch.Tensor, w_head: torch.Tensor, *, temperature: float = 0.0,
                    seed: int = 0, offset: int = 0, banned_ids: Sequence[int] = (),
                    no_confidence_ids: Sequence[int] = (), uncond_hidden: Optional[torch.Tensor] = None,
                    cfg_scale: float = 0.0, n_rows: Optional[torch.Tensor] = None,
                    row_ids: Optional[torch.Tensor] = None):
    """Sampled token and its confidence per row, straight from final (normed) hidden states.

    hidden: ``[M, d]`` bf16/fp16/fp32 (last dim contiguous); w_head: ``[V, d]``, same dtype.
    Logits ``hidden @ w_head.T`` are computed tile by tile (never stored), rounded to the hidden dtype,
    then in fp32: CFG ``lu + (cfg_scale + 1) * (l - lu)`` when ``uncond_hidden`` (``[M, d]``) is given;
    ``banned_ids`` (<= 4) -> ``-inf``; ``x0`` = argmax (``temperature == 0``, lowest id on ties) or a
    Gumbel-max sample of ``softmax(l / T)`` with Philox noise keyed by ``seed`` and counters
    ``(vocab id, row, offset)`` (use a new ``offset`` per decoding step); then ``no_confidence_ids``
    (<= 4) get ``-inf`` logits ``l_c`` and ``conf = exp(l_c[x0] - logsumexp(l_c))`` without noise (0 when
    ``x0`` is one of them; the others renormalise).

    Row compaction (no host synchronisation): ``n_rows``, an int32/int64 device tensor of one element,
    makes every program whose row tile starts at or past ``n_rows`` return at once (the LM head on the
    first ``n_rows`` rows only, e.g. the still-masked rows gathered to the front); the outputs of rows
    ``>= n_rows`` are then **unspecified** (garbage, possibly NaN). ``row_ids`` (int32/int64 ``[M]``, values
    in ``[0, 2^31)``) are the Philox row counters instead of ``0..M-1``, so a gathered row keeps the noise
    of its original row.
    Returns ``(x0 int64 [M], conf fp32 [M])``. Memory: ``5 * M * ceil(V / BLOCK_V)`` partials.
    See :func:`llada_triton.kernels.reference.head_confidence_ref` (same numerics; its RNG is a torch generator).
    """
    M = hidden.shape[0] if isinstance(hidden, torch.Tensor) and hidden.ndim == 2 else 0
    dev = hidden.device if isinstance(hidden, torch.Tensor) else None
    x0 = torch.empty(M, dtype=torch.int64, device=dev)
    conf = torch.empty(M, dtype=torch.float32, device=dev)
    return _head_confidence_launch(hidden, w_head, x0, conf, temperature=temperature, seed=seed,
                                   offset=offset, banned_ids=banned_ids,
                                   no_confidence_ids=no_confidence_ids, uncond_hidden=uncond_hidden,
                                   cfg_scale=cfg_scale, n_rows=n_rows, row_ids=row_ids)


def logits_confidence(logits: torch.Tensor, *, temperature: float = 0.0, seed: int = 0, offset: int = 0,
                      banned_ids: Sequence[int] = (), no_confidence_ids: Sequence[int] = (),
                      uncond_logits: Optional[torch.Tensor] = None, cfg_scale: float = 0.0,
                      n_rows: Optional[torch.Tensor] = None, row_ids: Optional[torch.Tensor] = None):
    """:func:`head_confidence` from logits already computed: sampled token and its confidence per row.

    logits: ``[M, V]`` bf16/fp16/fp32, rows may be strided, the last dim contiguous (e.g. the block's rows
    of a ``[B, L, V]`` model output viewed as ``[B * Lb, V]``); uncond_logits: the same shape and dtype
    (CFG). One read of the logits: each program streams a vocab slice of its rows in ``BLOCK_V`` tiles
    with an online max / sum-exp / argmax (the :func:`head_confidence` epilogue), and a second tiny
    kernel merges the slices; nothing of size ``[M, V]`` is allocated.
    Same semantics and the same Philox noise (counters ``(vocab id, row or row_ids[row], offset)``) as
    :func:`head_confidence`: ``logits_confidence((hidden @ w.T).to(hidden.dtype))`` gives the tokens of
    ``head_confidence(hidden, w)`` (conf equal up to fp32 summation order). ``n_rows`` / ``row_ids`` as
    there (rows ``>= n_rows`` unspecified). NaN logits are not supported.
    Returns ``(x0 int64 [M], conf fp32 [M])``. See :func:`llada_triton.kernels.reference.logits_confidence_ref`.
    """
    M = logits.shape[0] if isinstance(logits, torch.Tensor) and logits.ndim == 2 else 0
    dev = logits.device if isinstance(logits, torch.Tensor) else None
    x0 = torch.empty(M, dtype=torch.int64, device=dev)
    conf = torch.empty(M, dtype=torch.float32, device=dev)
    return _logits_confidence_launch(logits, x0, conf, temperature=temperature, seed=seed, offset=offset,
                                     banned_ids=banned_ids, no_confidence_ids=no_confidence_ids,
                                     uncond_logits=uncond_logits, cfg_scale=cfg_scale, n_rows=n_rows,
                                     row_ids=row_ids)


def select_transfer(conf: torch.Tensor, masked: torch.Tensor, *, k: Optional[torch.Tensor] = None,
                    threshold: Optional[float] = None, factor: Optional[float] = None) -> torch.Tensor:
    """Which masked positions of each row to commit this step; exactly one rule must be given.

    conf: ``[B, L]`` fp32 (bf16/fp16 accepted) confidences; masked: bool ``[B, L]``; ``L <= 4096``.
    * ``k``: int32/int64 tensor ``[B]`` on the same device: the ``k[b]`` most confident masked positions;
    * ``threshold``: the top-1 masked position plus every masked position with ``conf >= threshold``
      (compared in fp32, as torch compares an fp32 tensor with a Python float);
    * ``factor``: Fast-dLLM's dynamic rule with its off-by-one quirk (``reference._factor_count``),
      thresholds ``1 - factor / (n + 1)`` evaluated in fp64 as the reference does.
    Ranking: descending confidence, lowest index first on ties, ``-inf`` last among masked; NaN
    confidences are not supported. One program per row, no host synchronisation.
    Returns bool ``[B, L]``. Same result as :func:`llada_triton.kernels.reference.select_transfer_ref`.
    """
    out = torch.empty(conf.shape, dtype=torch.bool, device=conf.device) \
        if isinstance(conf, torch.Tensor) else None
    return _select_launch(conf, masked, out, k=k, threshold=threshold, factor=factor)


def select_commit(tokens_block: torch.Tensor, x0: torch.Tensor, conf: torch.Tensor, masked: torch.Tensor, *,
                  k: Optional[torch.Tensor] = None, threshold: Optional[float] = None,
                  factor: Optional[float] = None) -> torch.Tensor:
    """:func:`select_transfer` fused with the commit: ``tokens_block[b, i] = x0[b, i]`` wherever
    position ``(b, i)`` is selected, in place (``tokens_block`` may be a strided int64 view ``[B, L]``,
    e.g. ``x[:, start:end]``; x0 int64 ``[B, L]``). Returns the bool transfer mask ``[B, L]``."""
    out = torch.empty(conf.shape, dtype=torch.bool, device=conf.device) \
        if isinstance(conf, torch.Tensor) else None
    return _select_launch(conf, masked, out, k=k, threshold=threshold, factor=factor,
                          tokens=tokens_block, x0=x0)


def commit_step(tokens: torch.Tensor, start, x0: torch.Tensor, conf: torch.Tensor, *, mask_id: int,
                done: Optional[torch.Tensor] = None, k: Optional[torch.Tensor] = None,
                threshold: Optional[float] = None, factor: Optional[float] = None,
                nfe: Optional[torch.Tensor] = None):
    """One denoising step's selection and commit into the token buffer, in one launch (no host sync).

    tokens: int64 ``[B, T]``, updated in place; start: the block's first column, an int or an int32/int64
    device tensor of shape ``()`` or ``[B]`` (a start per row); x0: int64 ``[B, L]`` sampled tokens and conf:
    ``[B, L]`` confidences (fp32; bf16/fp16 accepted) of the block's positions, any values off the masked
    ones; done: optional bool ``[B]``, rows that take no part (nothing of theirs counts as masked).

    With ``masked[b, i] = tokens[b, start_b + i] == mask_id and not done[b]``: the positions
    ``committed = select_transfer(where(masked, conf, -inf), masked, k= | threshold= | factor=)`` (exactly one
    rule, as :func:`select_transfer`) get ``tokens[b, start_b + i] = x0[b, i]``, and ``nfe[b] += 1`` for every
    row with a masked position (when ``nfe``, int64 ``[B]``, is given; updated in place).
    A device ``start`` is not checked on the host: a row whose block ``[start_b, start_b + L)`` is not inside
    ``[0, T)`` commits nothing and reports the tokens -1.
    Returns ``(committed bool [B, L], conf fp32 [B, L] with -inf off the masked positions, the block's tokens
    int64 [B, L] after the commit)``. Same results as :func:`llada_triton.kernels.reference.commit_step_ref`.
    """
    return _commit_step_launch(tokens, start, x0, conf, mask_id=mask_id, done=done, k=k, threshold=threshold,
                               factor=factor, nfe=nfe)
