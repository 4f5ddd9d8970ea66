"""Fused LM head with Dream's confidences: argmax token and max prob / top-1 minus top-2 margin / negative
entropy per row, streaming the vocabulary (``[M, V]`` logits are never stored).

Kernel 1 (``_dream_partials_kernel``, grid ``(row tiles, vocab tiles)``) computes a ``[BLOCK_M, BLOCK_V]`` logit
tile with the K-steps of :mod:`llada_triton.kernels.gemm` (the tiles of LLaDA's head at temperature 0), rounds it
to the hidden dtype (as the model's logits are) and reduces it to per-row partials: the tile's largest logit
``m`` and its lowest id, the second largest (the largest at another id), and
``s = sum exp(l - m)``, ``t = sum exp(l - m) * (l - m)``. Kernel 2 (``_dream_merge_kernel``) merges a row's
partials (``S = sum s_i e^(m_i - M)``, ``T = sum e^(m_i - M) (t_i + (m_i - M) s_i)``) into

* ``prob``: ``1 / S`` (the max prob, Dream's maskgit_plus at temperature 0);
* ``margin``: ``(1 - e^(top2 - M)) / S`` (topk_margin);
* ``neg_entropy``: ``T / S - log S`` = ``sum p log p``. Dream adds ``1e-10`` inside the log; the streamed form
  leaves it out, which changes the value by less than ``V * 1e-10`` (1.5e-5 at Dream's 152,064 ids).

Dream's logit shift is row indexing before the head (the decoding policies hand it the rows ``i - 1``).
Temperature > 0 and top-p / top-k need the whole distribution of a row (a sort for top-p): those calls compute
the ``[rows, V]`` logits of the rows given (the still-masked rows when the driver compacts) and run
:func:`llada_triton.kernels.reference.dream_confidence_ref` (a torch generator keyed by ``(seed, offset)``).
Reference: :func:`llada_triton.kernels.reference.head_dream_confidence_ref`.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from llada_triton.kernels._common import (cdiv, check_tensor, dot_flags, gdc_options, gdc_wait_and_release,
                                          is_interpreter, next_pow2)
from llada_triton.kernels.confidence import _head_config
from llada_triton.kernels.gemm import dot_loop
from llada_triton.kernels.reference import DREAM_CONFIDENCES, dream_confidence_ref

__all__ = ["head_dream_confidence"]

MAX_BANNED = 4
_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@triton.jit
def _dream_partials_kernel(
    h_ptr, w_ptr,  # [M, D], [V, D]
    pf_ptr, pidx_ptr,  # fp32 partials [4, M, NVT] (top1, top2, s, t); int32 [M, NVT] (id of top1)
    n_rows_ptr, M, V, D, NVT, stride_hm, stride_wv,
    ban0, ban1, ban2, ban3,
    N_BAN: tl.constexpr, HAS_N_ROWS: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
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
    a_ptrs = h_ptr + tl.minimum(rows, M - 1).to(tl.int64)[:, None] * stride_hm + offs_k[None, :]
    b_ptrs = w_ptr + tl.minimum(vids, V - 1).to(tl.int64)[:, None] * stride_wv + offs_k[None, :]
    if SWAP_AB:
        acc = tl.zeros([BLOCK_V, BLOCK_M], dtype=tl.float32)
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_V], dtype=tl.float32)
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
    top1, loc = tl.max(logit, axis=1, return_indices=True, return_indices_tie_break_left=True)
    cols = tl.arange(0, BLOCK_V)[None, :]
    top2 = tl.max(tl.where(cols == loc[:, None], float("-inf"), logit), axis=1)
    m_safe = tl.where(top1 == float("-inf"), 0.0, top1)
    z = logit - m_safe[:, None]
    e = tl.exp(z)
    s = tl.sum(e, axis=1)
    t = tl.sum(tl.where(e > 0, e * z, 0.0), axis=1)  # 0 * -inf at -inf logits: dropped
    po = rows.to(tl.int64) * NVT + pid_v
    rmask = rows < M
    plane = M.to(tl.int64) * NVT
    tl.store(pf_ptr + po, top1, mask=rmask)
    tl.store(pf_ptr + plane + po, top2, mask=rmask)
    tl.store(pf_ptr + 2 * plane + po, s, mask=rmask)
    tl.store(pf_ptr + 3 * plane + po, t, mask=rmask)
    tl.store(pidx_ptr + po, pid_v * BLOCK_V + loc.to(tl.int32), mask=rmask)


@triton.jit
def _dream_merge_kernel(
    pf_ptr, pidx_ptr, x0_ptr, conf_ptr, n_rows_ptr, M, NVT,
    CONF: tl.constexpr, HAS_N_ROWS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr,
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
    at = tt[None, :] == tsel[:, None]
    x0 = tl.max(tl.where(at, tl.load(pidx_ptr + po, mask=valid, other=0), -1), axis=1)
    big_safe = tl.where(big == float("-inf"), 0.0, big)
    scale = tl.where(valid & (top1 > float("-inf")), tl.exp(top1 - big_safe[:, None]), 0.0)
    s = tl.load(pf_ptr + 2 * plane + po, mask=valid, other=0.0)
    S = tl.sum(scale * s, axis=1)
    if CONF == 0:
        conf = 1.0 / S
    elif CONF == 1:
        top2 = tl.load(pf_ptr + plane + po, mask=valid, other=float("-inf"))
        second = tl.maximum(tl.max(top2, axis=1), tl.max(tl.where(at, float("-inf"), top1), axis=1))
        conf = (1.0 - tl.exp(second - big_safe)) / S
    else:
        t = tl.load(pf_ptr + 3 * plane + po, mask=valid, other=0.0)
        dm = tl.where(scale > 0, top1 - big_safe[:, None], 0.0)
        T = tl.sum(scale * (t + dm * s), axis=1)
        conf = T / S - tl.log(S)
    tl.store(x0_ptr + rows, x0.to(tl.int64), mask=rmask)
    tl.store(conf_ptr + rows, conf, mask=rmask)


def _check(hidden, w_head, confidence, banned_ids, n_rows):
    check_tensor("hidden", hidden, ndim=2, dtypes=_DTYPES)
    check_tensor("w_head", w_head, ndim=2, dtypes=_DTYPES)
    if w_head.dtype != hidden.dtype or w_head.shape[1] != hidden.shape[1] or w_head.device != hidden.device:
        raise ValueError(f"w_head must be [V, {hidden.shape[1]}] {hidden.dtype} on {hidden.device} like hidden, "
                         f"got {tuple(w_head.shape)} {w_head.dtype} on {w_head.device}")
    if confidence not in DREAM_CONFIDENCES:
        raise ValueError(f"confidence={confidence!r}; choose one of {DREAM_CONFIDENCES}")
    V = w_head.shape[0]
    if len(banned_ids) > MAX_BANNED or any(not 0 <= int(i) < V for i in banned_ids):
        raise ValueError(f"banned_ids={list(banned_ids)}: at most {MAX_BANNED} ids in [0, {V})")
    if n_rows is not None and (n_rows.numel() != 1 or n_rows.device != hidden.device):
        raise ValueError(f"n_rows must be a one-element int tensor on {hidden.device}, got shape "
                         f"{tuple(n_rows.shape)} on {n_rows.device}")


def head_dream_confidence(hidden: torch.Tensor, w_head: torch.Tensor, *, confidence: str = "prob",
                          temperature: float = 0.0, top_p: Optional[float] = None, top_k: Optional[int] = None,
                          seed: int = 0, offset: int = 0, banned_ids: Sequence[int] = (),
                          n_rows: Optional[torch.Tensor] = None, row_ids: Optional[torch.Tensor] = None,
                          config: Optional[dict] = None):
    """``(x0 int64 [M], conf fp32 [M])`` from final hidden states ``[M, d]`` and the LM head ``[V, d]`` (same
    dtype): Dream's ``sample_tokens`` with ``confidence`` ``"prob"`` / ``"margin"`` / ``"neg_entropy"`` (see the
    module docstring). ``n_rows`` (one-element device tensor): only the first ``n_rows`` rows are computed, the
    others' outputs are unspecified; ``row_ids``: the rows' noise rows when sampling. ``config`` overrides the
    block sizes (tests)."""
    _check(hidden, w_head, confidence, banned_ids, n_rows)
    if temperature > 0 or top_p is not None or top_k is not None:  # the row's whole distribution is needed
        gen = torch.Generator(device=hidden.device).manual_seed((int(seed) * 1_000_003 + int(offset)) % (2 ** 63))
        return dream_confidence_ref(hidden @ w_head.t(), confidence=confidence, temperature=temperature,
                                    top_p=top_p, top_k=top_k, generator=gen, banned_ids=banned_ids, row_ids=row_ids)
    M, D = hidden.shape
    V = w_head.shape[0]
    x0 = torch.empty(M, dtype=torch.int64, device=hidden.device)
    conf = torch.empty(M, dtype=torch.float32, device=hidden.device)
    if M == 0:
        return x0, conf
    interpret = is_interpreter()
    c = dict(_head_config(M, V, D, hidden.dtype, False, interpret), **(config or {}))  # LLaDA's T = 0 tiles
    BM, BV, BK = c["BLOCK_M"], c["BLOCK_V"], c["BLOCK_K"]
    nvt = cdiv(V, BV)
    pf = torch.empty(4, M, nvt, dtype=torch.float32, device=hidden.device)
    pidx = torch.empty(M, nvt, dtype=torch.int32, device=hidden.device)
    ban = [int(i) for i in banned_ids] + [-1] * (MAX_BANNED - len(banned_ids))
    nr = x0 if n_rows is None else n_rows  # a placeholder pointer when absent (never read)
    extra = {} if interpret else dict(num_warps=c["num_warps"], num_stages=c["num_stages"])
    _dream_partials_kernel[(cdiv(M, BM), nvt)](
        hidden, w_head, pf, pidx, nr, M, V, D, nvt, hidden.stride(0), w_head.stride(0), *ban,
        N_BAN=len(banned_ids), HAS_N_ROWS=n_rows is not None, SWAP_AB=c.get("SWAP_AB", False),
        EVEN_K=D % BK == 0, EVEN_V=V % BV == 0, BLOCK_M=BM, BLOCK_V=BV, BLOCK_K=BK, **dot_flags(hidden.dtype),
        **extra, **gdc_options(hidden, M))
    BT = next_pow2(max(nvt, 2))
    BR = min(next_pow2(max(M, 2)), 64) if interpret else (1 if M <= 256 else max(1, min(16, 4096 // BT)))
    _dream_merge_kernel[(cdiv(M, BR),)](
        pf, pidx, x0, conf, nr, M, nvt, CONF=DREAM_CONFIDENCES.index(confidence),
        HAS_N_ROWS=n_rows is not None, BLOCK_R=BR, BLOCK_T=BT,
        **({} if interpret else dict(num_warps=8 if BR == 1 else 4)))
    return x0, conf
