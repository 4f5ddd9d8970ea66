"""Fused LM head with Dream's sampling and confidences (:func:`head_dream_confidence`): per row the token and its
``prob`` / ``margin`` / ``neg_entropy``, streaming the vocabulary (no ``[M, V]`` logits, except for top-p / top-k).

Kernel 1 (grid ``(row tiles, vocab tiles)``) computes a logit tile with the K-loop of :mod:`llada_triton.kernels.gemm`,
rounds it to the hidden dtype (the model's logits), divides by the temperature when sampling (IEEE, as Dream's
``logits / T``) and stores per-row partials: the top-1 ``z`` (lowest id), the top-2, ``s = sum e^(z - m)``,
``t = sum e^(z - m) (z - m)`` and, when sampling, the top Gumbel key ``z + g`` (lowest id) with ``z`` there. ``g``
is the Philox noise of :func:`llada_triton.kernels.head_confidence` (counters: vocab id, row or ``row_ids[row]``,
offset; torch twin :func:`llada_triton.kernels.reference.philox_gumbel_ref`), not the stream of Dream's
``Categorical``: sampled tokens match the reference in distribution only. Kernel 2 merges a row's partials into the
token (argmax, or Gumbel-max) and the confidence on ``p = softmax(z)``: ``p[x0]``, ``(1 - e^(top2 - M)) / S`` or
``sum p log(p + 1e-10)``. The entropy over several vocab tiles runs a second partials pass given each row's
log-sum-exp in fp32 (exact); bf16 / fp16 merge ``T / S - log S`` (the ``1e-10`` left out: below ``V * 1e-10``).

top-p / top-k run :func:`llada_triton.kernels.reference.dream_confidence_ref` on the logits of every row given
(``n_rows`` is not read: no host sync) with the same Philox noise. Dream's logit shift is row indexing before the
head. Reference: :func:`llada_triton.kernels.reference.head_dream_confidence_ref`.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from llada_triton.kernels._common import (DTYPES, cdiv, check_tensor, dot_flags, gdc_options, gdc_wait_and_release,
                                          is_interpreter)
from llada_triton.kernels.confidence import gumbel_noise, head_config, merge_tiles, rows_args, sampling_args
from llada_triton.kernels.gemm import acc_zeros, dot_loop
from llada_triton.kernels.reference import DREAM_CONFIDENCES, dream_confidence_ref, philox_gumbel_ref

__all__ = ["head_dream_confidence"]


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "off_lo", "off_hi"])
def _dream_partials_kernel(
    h_ptr, w_ptr,  # [M, D], [V, D]
    pf_ptr, pidx_ptr,  # fp32 partials [NP, M, NVT] (top1, top2, s, t[, key, z at key]); int32 [M, NVT] (x0 id)
    n_rows_ptr, row_ids_ptr, lse_ptr, M, V, D, NVT, stride_hm, stride_wv,  # lse [M] fp32 (HAS_LSE)
    temp, seed_lo, seed_hi, off_lo, off_hi, ban0, ban1, ban2, ban3,
    N_BAN: tl.constexpr, HAS_N_ROWS: tl.constexpr, HAS_ROW_IDS: tl.constexpr, SAMPLE: tl.constexpr,
    ENT_EPS: tl.constexpr, HAS_LSE: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
    SWAP_AB: tl.constexpr, EVEN_K: tl.constexpr, EVEN_V: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr, USE_GDC: tl.constexpr = False,
):
    gdc_wait_and_release(USE_GDC)  # PDL: the hidden states come from the kernel before
    pid_m = tl.program_id(0)
    pid_v = tl.program_id(1)
    if HAS_N_ROWS:  # row tiles at or past n_rows do nothing (their outputs are unspecified)
        if pid_m * BLOCK_M >= tl.load(n_rows_ptr):
            return
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    vids = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    offs_k = tl.arange(0, BLOCK_K)
    # clamped M / V edges: the duplicated rows are not stored, the duplicated ids get -inf below
    rows_c = tl.minimum(rows, M - 1).to(tl.int64)
    a_ptrs = h_ptr + rows_c[:, None] * stride_hm + offs_k[None, :]
    b_ptrs = w_ptr + tl.minimum(vids, V - 1).to(tl.int64)[:, None] * stride_wv + offs_k[None, :]
    acc = acc_zeros(BLOCK_M, BLOCK_V, SWAP_AB)
    acc = dot_loop(h_ptr, a_ptrs, w_ptr, b_ptrs, D, acc, BLOCK_K, EVEN_K, UPCAST, SWAP_AB, IEEE)
    if SWAP_AB:
        acc = tl.trans(acc)
    logit = acc.to(h_ptr.dtype.element_ty).to(tl.float32)  # the model's logits: rounded to the hidden dtype
    vcol = vids[None, :]
    if N_BAN > 0:
        ban = (vcol == ban0) | (vcol == ban1) | (vcol == ban2) | (vcol == ban3)
        logit = tl.where(ban, float("-inf"), logit)
    if not EVEN_V:
        logit = tl.where(vcol < V, logit, float("-inf"))
    if SAMPLE:
        logit = tl.math.div_rn(logit, temp)  # Dream's logits / T, rounded as torch divides
    top1, loc = tl.max(logit, axis=1, return_indices=True, return_indices_tie_break_left=True)
    cols = tl.arange(0, BLOCK_V)[None, :]
    top2 = tl.max(tl.where(cols == loc[:, None], float("-inf"), logit), axis=1)
    m_safe = tl.where(top1 == float("-inf"), 0.0, top1)
    z = logit - m_safe[:, None]
    e = tl.exp(z)
    s = tl.sum(e, axis=1)
    if ENT_EPS:  # p known: the whole row is this tile, or its log-sum-exp comes from a first pass
        if HAS_LSE:
            p = tl.exp(logit - tl.load(lse_ptr + rows_c)[:, None])
        else:
            p = e / s[:, None]
        t = tl.sum(tl.where(e > 0, p * tl.log(p + 1e-10), 0.0), axis=1)
    else:
        t = tl.sum(tl.where(e > 0, e * z, 0.0), axis=1)  # 0 * -inf at -inf logits: dropped
    po = rows.to(tl.int64) * NVT + pid_v
    rmask = rows < M
    plane = M.to(tl.int64) * NVT
    tl.store(pf_ptr + po, top1, mask=rmask)
    tl.store(pf_ptr + plane + po, top2, mask=rmask)
    tl.store(pf_ptr + 2 * plane + po, s, mask=rmask)
    tl.store(pf_ptr + 3 * plane + po, t, mask=rmask)
    if SAMPLE:  # Gumbel-max: the sample is the argmax of z + g over the whole row
        if HAS_ROW_IDS:
            prow = tl.load(row_ids_ptr + rows_c).to(tl.int32)
        else:
            prow = rows
        key = logit + gumbel_noise(vcol, prow[:, None], seed_lo, seed_hi, off_lo, off_hi)
        kmax, loc = tl.max(key, axis=1, return_indices=True, return_indices_tie_break_left=True)
        zx = tl.max(tl.where(cols == loc[:, None], logit, float("-inf")), axis=1)
        tl.store(pf_ptr + 4 * plane + po, kmax, mask=rmask)
        tl.store(pf_ptr + 5 * plane + po, zx, mask=rmask)
    tl.store(pidx_ptr + po, pid_v * BLOCK_V + loc.to(tl.int32), mask=rmask)


@triton.jit
def _dream_merge_kernel(
    pf_ptr, pidx_ptr, x0_ptr, conf_ptr, lse_ptr, n_rows_ptr, M, NVT,
    CONF: tl.constexpr, SAMPLE: tl.constexpr, ENT_EPS: tl.constexpr, LSE_OUT: tl.constexpr, HAS_N_ROWS: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr,
):
    if HAS_N_ROWS:
        if tl.program_id(0) * BLOCK_R >= tl.load(n_rows_ptr):
            return
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    tt = tl.arange(0, BLOCK_T)
    rmask = rows < M
    valid = rmask[:, None] & (tt[None, :] < NVT)
    po = rows.to(tl.int64)[:, None] * NVT + tt[None, :]
    plane = M.to(tl.int64) * NVT
    top1 = tl.load(pf_ptr + po, mask=valid, other=float("-inf"))
    big = tl.max(top1, axis=1)
    tsel = tl.min(tl.where(valid & (top1 == big[:, None]), tt[None, :], BLOCK_T), axis=1)  # lowest id on ties
    at = tt[None, :] == tsel[:, None]  # the tile of the largest z
    if SAMPLE:  # x0 from the tile of the largest Gumbel key (lowest tile on ties: lowest id)
        key = tl.load(pf_ptr + 4 * plane + po, mask=valid, other=float("-inf"))
        kbig = tl.max(key, axis=1)
        ksel = tl.min(tl.where(valid & (key == kbig[:, None]), tt[None, :], BLOCK_T), axis=1)
        at_x = tt[None, :] == ksel[:, None]
    else:
        at_x = at
    x0 = tl.max(tl.where(at_x, tl.load(pidx_ptr + po, mask=valid, other=0), -1), axis=1)
    big_safe = tl.where(big == float("-inf"), 0.0, big)
    scale = tl.where(valid & (top1 > float("-inf")), tl.exp(top1 - big_safe[:, None]), 0.0)
    s = tl.load(pf_ptr + 2 * plane + po, mask=valid, other=0.0)
    S = tl.sum(scale * s, axis=1)
    if CONF == 0:
        if SAMPLE:
            zx = tl.max(tl.where(at_x, tl.load(pf_ptr + 5 * plane + po, mask=valid, other=float("-inf")),
                                 float("-inf")), axis=1)
            conf = tl.exp(zx - big_safe) / S
        else:
            conf = 1.0 / S
    elif CONF == 1:
        top2 = tl.load(pf_ptr + plane + po, mask=valid, other=float("-inf"))
        second = tl.maximum(tl.max(top2, axis=1), tl.max(tl.where(at, float("-inf"), top1), axis=1))
        conf = (1.0 - tl.exp(second - big_safe)) / S
    else:
        t = tl.load(pf_ptr + 3 * plane + po, mask=valid, other=0.0)
        if ENT_EPS:  # the tiles' partials are sums of p log(p + 1e-10)
            conf = tl.sum(t, axis=1)
        else:
            dm = tl.where(scale > 0, top1 - big_safe[:, None], 0.0)
            T = tl.sum(scale * (t + dm * s), axis=1)
            conf = T / S - tl.log(S)
    if LSE_OUT:
        tl.store(lse_ptr + rows, big_safe + tl.log(S), mask=rmask)
    tl.store(x0_ptr + rows, x0.to(tl.int64), mask=rmask)
    tl.store(conf_ptr + rows, conf, mask=rmask)


def _check(hidden, w_head, confidence, top_p, top_k):
    check_tensor("hidden", hidden, ndim=2, dtypes=DTYPES)
    check_tensor("w_head", w_head, ndim=2, dtypes=DTYPES)
    if w_head.dtype != hidden.dtype or w_head.shape[1] != hidden.shape[1] or w_head.device != hidden.device:
        raise ValueError(f"w_head must be [V, {hidden.shape[1]}] {hidden.dtype} on {hidden.device} like hidden, "
                         f"got {tuple(w_head.shape)} {w_head.dtype} on {w_head.device}")
    if confidence not in DREAM_CONFIDENCES:
        raise ValueError(f"confidence={confidence!r}; choose one of {DREAM_CONFIDENCES}")
    if top_p is not None and (isinstance(top_p, bool) or not 0.0 < float(top_p) <= 1.0):
        raise ValueError(f"top_p={top_p!r} must be in (0, 1]")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k={top_k!r} must be an int >= 1")


def head_dream_confidence(hidden: torch.Tensor, w_head: torch.Tensor, *, confidence: str = "prob",
                          temperature: float = 0.0, top_p: Optional[float] = None, top_k: Optional[int] = None,
                          seed: int = 0, offset: int = 0, banned_ids: Sequence[int] = (),
                          n_rows: Optional[torch.Tensor] = None, row_ids: Optional[torch.Tensor] = None,
                          config: Optional[dict] = None):
    """``(x0 int64 [M], conf fp32 [M])`` from final hidden states ``[M, d]`` and the LM head ``[V, d]`` (same
    dtype): Dream's ``sample_tokens`` with ``confidence`` ``"prob"`` / ``"margin"`` / ``"neg_entropy"``: argmax at
    ``temperature`` 0, else a Gumbel-max sample with Philox noise keyed by ``seed`` (a new ``offset`` per step).
    ``n_rows`` (one-element device tensor): only the first ``n_rows`` rows are computed, the others' outputs are
    unspecified; ``row_ids``: the rows' Philox row counters (a gathered row keeps its noise); ``top_p < 1`` /
    ``top_k`` materialise the logits; ``config`` overrides the block sizes (tests)."""
    _check(hidden, w_head, confidence, top_p, top_k)
    (M, D), V = hidden.shape, w_head.shape[0]
    sa = sampling_args(V, temperature, seed, offset, banned_ids, ())  # validates T, seed, offset, ids
    x0 = torch.empty(M, dtype=torch.int64, device=hidden.device)
    conf = torch.empty(M, dtype=torch.float32, device=hidden.device)
    nr, rid, rows_ce = rows_args(M, hidden.device, n_rows, row_ids, x0)
    if (top_p is not None and top_p < 1) or top_k is not None:  # the reference on every row's logits
        g = None if temperature == 0 else philox_gumbel_ref(  # the kernel's Philox noise
            seed, offset, torch.arange(M, device=hidden.device) if row_ids is None else row_ids, V)
        return dream_confidence_ref(hidden @ w_head.t(), confidence=confidence, temperature=float(temperature),
                                    top_p=top_p, top_k=top_k, banned_ids=banned_ids, gumbel=g)
    if M == 0:
        return x0, conf
    sample, interpret = sa["constexprs"]["SAMPLE"], is_interpreter()
    c = dict(head_config(M, V, D, hidden.dtype, False, interpret, sample=sample), **(config or {}))
    BM, BV, BK = c["BLOCK_M"], c["BLOCK_V"], c["BLOCK_K"]
    nvt, entropy = cdiv(V, BV), confidence == "neg_entropy"
    # entropy over several vocab tiles in fp32 (the exactness path) runs both launches twice: the second partials
    # pass knows each row's log-sum-exp, so its tiles sum Dream's p log(p + 1e-10)
    two_pass = entropy and nvt > 1 and hidden.dtype == torch.float32
    lse = torch.empty(M, dtype=torch.float32, device=hidden.device) if two_pass else conf  # conf: never read
    pf = torch.empty(6 if sample else 4, M, nvt, dtype=torch.float32, device=hidden.device)
    pidx = torch.empty(M, nvt, dtype=torch.int32, device=hidden.device)
    extra = {} if interpret else dict(num_warps=c["num_warps"], num_stages=c["num_stages"])
    BR, BT = merge_tiles(M, nvt, interpret)
    pdl = gdc_options(hidden, M)
    for second in ((False, True) if two_pass else (False,)):
        ent_eps = entropy and (nvt == 1 or second)
        _dream_partials_kernel[(cdiv(M, BM), nvt)](
            hidden, w_head, pf, pidx, nr, rid, lse, M, V, D, nvt, hidden.stride(0), w_head.stride(0),
            float(temperature) if sample else 1.0, *sa["rng"][:8],
            N_BAN=sa["constexprs"]["N_BAN"], **rows_ce, SAMPLE=sample, ENT_EPS=ent_eps, HAS_LSE=second,
            SWAP_AB=c.get("SWAP_AB", False), EVEN_K=D % BK == 0, EVEN_V=V % BV == 0, BLOCK_M=BM, BLOCK_V=BV,
            BLOCK_K=BK, **dot_flags(hidden.dtype), **extra, **pdl)
        _dream_merge_kernel[(cdiv(M, BR),)](
            pf, pidx, x0, conf, lse, nr, M, nvt, CONF=DREAM_CONFIDENCES.index(confidence), SAMPLE=sample,
            ENT_EPS=ent_eps, LSE_OUT=two_pass and not second, HAS_N_ROWS=rows_ce["HAS_N_ROWS"], BLOCK_R=BR,
            BLOCK_T=BT, **({} if interpret else dict(num_warps=8 if BR == 1 else 4)))
    return x0, conf
