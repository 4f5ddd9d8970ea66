"""Fused mixture-of-experts: router + grouped top-k, token->expert alignment, grouped expert GEMMs, combine.

No step syncs with the host and every grid is sized from ``M * top_k`` and ``E`` alone (programs past the real
work exit at once), so a whole layer can be captured in a CUDA graph.

* :func:`moe_route` (two launches): fp32 router logits over row and expert tiles (so the router weight streams
  from many SMs at decode sizes), then per ``[BM, E]`` row tile the scores (sigmoid or softmax), the
  group-limited top-k (ties to the lowest index) and the weights.
* :func:`moe_align` (three launches): the ``M * top_k`` (token, slot) pairs sorted by expert into segments padded
  to the GEMM tile ``BM``: per-chunk histograms, one scan (segment ends and each chunk's base in every segment),
  a stable in-chunk sort scattering each pair to its row. Padding rows hold ``M * top_k``.
* :func:`moe_experts` (+ three launches): the gate-up GEMM over the tiles of experts that received pairs (rows
  gathered from ``x``, ``silu(gate) * up`` epilogue), the down GEMM writing each pair's output (in ``x.dtype``)
  to its (token, slot) row, and a per-token combine: weights applied, slots summed in fp32 in slot order, the
  residual added. No atomics: deterministic. A tile finds its expert by counting segment ends at or below its
  first row.

References: :func:`llada_triton.kernels.reference.moe_route_ref`, ``moe_align_ref``, ``moe_experts_ref``.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from llada_triton.kernels._common import (DTYPES, cdiv, check_like, check_tensor, clamp_pow2, dot_flags, is_interpreter,
                                          check_vector, memo_config, next_pow2)
from llada_triton.kernels.gemm import acc_zeros, dot_loop, dot_step, load_k
from llada_triton.kernels.mlp import silu_times
from llada_triton.kernels.reference import check_moe_route_args

__all__ = ["moe_route", "moe_align", "moe_experts", "moe_align_size"]

MAX_EXPERTS = 1024  # a router tile holds every expert's logit of its rows in registers


@triton.jit
def _argmax_low(v, cols, E_P: tl.constexpr):
    """Per row of ``v [R, C]``: the max and the lowest column holding it."""
    m = tl.max(v, axis=1)
    i = tl.min(tl.where(v == m[:, None], cols[None, :], E_P), axis=1)
    return m, i


@triton.jit
def _router_logits_kernel(
    x_ptr, w_ptr, l_ptr,                     # x [M, D], router_w [E, D], logits fp32 [M, E]
    M, E, D, stride_xm, stride_wn,
    BM: tl.constexpr, BE: tl.constexpr, BK: tl.constexpr,
    EVEN_K: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,   # IEEE: fp32 products (fp32 inputs)
):
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    cols = tl.program_id(1) * BE + tl.arange(0, BE)
    offs_k = tl.arange(0, BK)
    x_ptrs = x_ptr + (rows % M).to(tl.int64)[:, None] * stride_xm + offs_k[None, :]       # [BM, BK]
    w_ptrs = w_ptr + (cols % E).to(tl.int64)[:, None] * stride_wn + offs_k[None, :]       # [BE, BK]
    acc = tl.zeros((BM, BE), dtype=tl.float32)
    acc = dot_loop(x_ptr, x_ptrs, w_ptr, w_ptrs, D, acc, BK, EVEN_K, UPCAST, False, IEEE)
    tl.store(l_ptr + rows.to(tl.int64)[:, None] * E + cols[None, :], acc,
             mask=(rows < M)[:, None] & (cols < E)[None, :])


@triton.jit
def _route_select_kernel(
    l_ptr, b_ptr, wts_ptr, ids_ptr,          # logits fp32 [M, E], bias [E], weights fp32 [M, K], ids i32 [M, K]
    M, E, scale,
    TOP_K: tl.constexpr, N_GROUP: tl.constexpr, TOPK_GROUP: tl.constexpr,
    SIGMOID: tl.constexpr, HAS_BIAS: tl.constexpr, NORM: tl.constexpr,
    BM: tl.constexpr, E_P: tl.constexpr, G_P: tl.constexpr, K_P: tl.constexpr,
):
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    cols = tl.arange(0, E_P)
    acc = tl.load(l_ptr + rows.to(tl.int64)[:, None] * E + cols[None, :],
                  mask=(rows < M)[:, None] & (cols < E)[None, :], other=0.0)
    valid = (cols < E)[None, :]
    if SIGMOID:
        s = tl.math.div_rn(1.0, 1.0 + tl.exp(-acc))
    else:
        p = tl.where(valid, tl.exp(acc - tl.max(tl.where(valid, acc, float("-inf")), axis=1)[:, None]), 0.0)
        s = tl.math.div_rn(p, tl.sum(p, axis=1)[:, None])
    sel = s
    if HAS_BIAS:
        sel = sel + tl.load(b_ptr + cols, mask=cols < E, other=0.0).to(tl.float32)[None, :]
    sel = tl.where(valid, sel, float("-inf"))
    if N_GROUP > 1:  # each group scored by its two best experts; the TOPK_GROUP best groups kept
        gid = cols // (E // N_GROUP)
        gcols = tl.arange(0, G_P)
        gscore = tl.full((BM, G_P), float("-inf"), tl.float32)
        for g in tl.static_range(N_GROUP):
            sg = tl.where((gid == g)[None, :], sel, float("-inf"))
            m1, i1 = _argmax_low(sg, cols, E_P)
            m2 = tl.max(tl.where(cols[None, :] == i1[:, None], float("-inf"), sg), axis=1)
            gscore = tl.where(gcols[None, :] == g, (m1 + m2)[:, None], gscore)
        keep = tl.zeros((BM, E_P), dtype=tl.int1)
        for t in tl.static_range(TOPK_GROUP):
            _, gi = _argmax_low(gscore, gcols, G_P)
            keep = keep | (gid[None, :] == gi[:, None])
            gscore = tl.where(gcols[None, :] == gi[:, None], float("-inf"), gscore)
        sel = tl.where(keep, sel, float("-inf"))
    kcols = tl.arange(0, K_P)
    ids = tl.zeros((BM, K_P), dtype=tl.int32)
    wts = tl.zeros((BM, K_P), dtype=tl.float32)
    total = tl.zeros((BM,), dtype=tl.float32)
    for j in tl.static_range(TOP_K):
        _, i = _argmax_low(sel, cols, E_P)
        hit = cols[None, :] == i[:, None]
        u = tl.sum(tl.where(hit, s, 0.0), axis=1)            # the unbiased score (one nonzero term: exact)
        ids = tl.where(kcols[None, :] == j, i[:, None], ids)
        wts = tl.where(kcols[None, :] == j, u[:, None], wts)
        total += u
        sel = tl.where(hit, float("-inf"), sel)
    if NORM:
        wts = tl.math.div_rn(wts, (total + 1e-20)[:, None])
    wts = wts * scale
    out = rows.to(tl.int64)[:, None] * TOP_K + kcols[None, :]
    omask = (rows < M)[:, None] & (kcols < TOP_K)[None, :]
    tl.store(ids_ptr + out, ids, mask=omask)
    tl.store(wts_ptr + out, wts, mask=omask)


@triton.jit
def _align_count_kernel(
    ids_ptr, cnt_ptr, sorted_ptr,            # ids [N] (flat), per-chunk histograms i32 [P, E_P], sorted ids i32 [L]
    N, E, L,
    CHUNK: tl.constexpr, E_P: tl.constexpr, FILL: tl.constexpr,
):
    p = tl.program_id(0)
    offs = p * CHUNK + tl.arange(0, CHUNK)
    e = tl.load(ids_ptr + offs, mask=offs < N, other=-1).to(tl.int32)
    ok = (e >= 0) & (e < E)
    hist = tl.histogram(tl.where(ok, e, 0), E_P, mask=ok)
    tl.store(cnt_ptr + p * E_P + tl.arange(0, E_P), hist)
    # every slot starts as padding (the scatter kernel overwrites the real ones)
    for f in range(p * FILL, L, tl.num_programs(0) * FILL):
        o = f + tl.arange(0, FILL)
        tl.store(sorted_ptr + o, tl.full((FILL,), 0, tl.int32) + N, mask=o < L)


@triton.jit
def _align_scan_kernel(
    cnt_ptr, base_ptr, end_ptr, total_ptr,   # histograms [P, E_P] -> bases [P, E_P]; segment ends [E]; total [1]
    P, E,
    BM: tl.constexpr, E_P: tl.constexpr, P_B: tl.constexpr,
):
    ec = tl.arange(0, E_P)
    pr = tl.arange(0, P_B)
    count = tl.zeros((E_P,), dtype=tl.int32)
    for p0 in range(0, P, P_B):
        m = (p0 + pr < P)[:, None]
        count += tl.sum(tl.load(cnt_ptr + (p0 + pr)[:, None] * E_P + ec[None, :], mask=m, other=0), axis=0)
    padded = tl.where(ec < E, (count + BM - 1) // BM * BM, 0)
    end = tl.cumsum(padded, axis=0)
    tl.store(end_ptr + ec, end, mask=ec < E)
    tl.store(total_ptr, tl.sum(padded, axis=0))
    # base[p, e] = segment start + pairs of e in earlier chunks - pairs of chunk p with a smaller expert id, so
    # that a pair's slot is base[p, e] + its position in chunk p sorted by (expert, index)
    carry = end - padded
    for p0 in range(0, P, P_B):
        m = (p0 + pr < P)[:, None]
        ptrs = (p0 + pr)[:, None] * E_P + ec[None, :]
        tab = tl.load(cnt_ptr + ptrs, mask=m, other=0)
        base = carry[None, :] + tl.cumsum(tab, axis=0) - tab - (tl.cumsum(tab, axis=1) - tab)
        tl.store(base_ptr + ptrs, base, mask=m)
        carry += tl.sum(tab, axis=0)


@triton.jit
def _align_scatter_kernel(
    ids_ptr, base_ptr, sorted_ptr,           # ids [N], bases [P, E_P], sorted ids [L]
    N, E,
    CHUNK: tl.constexpr, E_P: tl.constexpr,
):
    p = tl.program_id(0)
    loc = tl.arange(0, CHUNK)
    offs = p * CHUNK + loc
    e = tl.load(ids_ptr + offs, mask=offs < N, other=-1).to(tl.int32)
    e = tl.where((e >= 0) & (e < E), e, E_P)          # dropped pairs sort last
    key = tl.sort(e * CHUNK + loc)                    # stable by construction: the index breaks ties
    es = key // CHUNK
    ok = es < E
    dest = tl.load(base_ptr + p * E_P + es, mask=ok, other=0) + loc
    tl.store(sorted_ptr + dest, p * CHUNK + key % CHUNK, mask=ok)


@triton.jit
def _tile_of(NUM_TILES, BM: tl.constexpr, BN: tl.constexpr):
    """First sorted row and output columns of this program; tiles vary fastest, so the tiles of one expert run
    together and share its weight tile in L2."""
    pid = tl.program_id(0)
    return (pid % NUM_TILES) * BM, (pid // NUM_TILES) * BN + tl.arange(0, BN)


@triton.jit
def _tile_rows(sorted_ptr, end_ptr, row0, E, BM: tl.constexpr, E_P: tl.constexpr):
    """The expert of the tile starting at sorted row ``row0`` and its pair ids (the caller has checked that
    the tile is in use)."""
    ec = tl.arange(0, E_P)
    ends = tl.load(end_ptr + ec, mask=ec < E, other=2147483647)
    e = tl.sum((ends <= row0).to(tl.int32), axis=0)
    pair = tl.load(sorted_ptr + row0 + tl.arange(0, BM))
    return e.to(tl.int64), pair


@triton.jit
def _acc_index(r, c, SWAP_AB: tl.constexpr):
    """Row ids ``r [BM]`` and column ids ``c [BN]`` broadcast to the accumulator's layout."""
    if SWAP_AB:
        rr, cc = r[None, :], c[:, None]
    else:
        rr, cc = r[:, None], c[None, :]
    return rr, cc


@triton.jit
def _moe_gate_up_kernel(
    x_ptr, w_ptr, a_ptr, sorted_ptr, end_ptr, total_ptr,   # x [M, K], w [E, 2I, K], act [L, I] (sorted rows)
    N_PAIRS, E, I, K, NUM_TILES,
    stride_xm, stride_we, stride_wn, stride_am,
    TOP_K: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, E_P: tl.constexpr,
    EVEN_K: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr, SWAP_AB: tl.constexpr,  # IEEE: fp32 dots
):
    row0, offs_n = _tile_of(NUM_TILES, BM, BN)
    if row0 >= tl.load(total_ptr):
        return
    e, pair = _tile_rows(sorted_ptr, end_ptr, row0, E, BM, E_P)
    tok = tl.where(pair < N_PAIRS, pair // TOP_K, 0).to(tl.int64)   # padding rows compute token 0, unused
    offs_k = tl.arange(0, BK)
    rows_w = (offs_n % I).to(tl.int64)   # wrapped: loads stay unmasked, stores are masked
    x_ptrs = x_ptr + tok[:, None] * stride_xm + offs_k[None, :]                         # [BM, BK]
    g_ptrs = w_ptr + e * stride_we + rows_w[:, None] * stride_wn + offs_k[None, :]      # [BN, BK]
    u_ptrs = g_ptrs + I * stride_wn
    acc_g = acc_zeros(BM, BN, SWAP_AB)
    acc_u = acc_zeros(BM, BN, SWAP_AB)
    for k in range(0, K, BK):
        xt = load_k(x_ptr, x_ptrs, 0, k, K - k, BK, False, EVEN_K, UPCAST)
        g = load_k(w_ptr, g_ptrs, 0, k, K - k, BK, False, EVEN_K, UPCAST)
        u = load_k(w_ptr, u_ptrs, 0, k, K - k, BK, False, EVEN_K, UPCAST)
        acc_g = dot_step(xt, g, acc_g, SWAP_AB, IEEE)
        acc_u = dot_step(xt, u, acc_u, SWAP_AB, IEEE)
        x_ptrs += BK
        g_ptrs += BK
        u_ptrs += BK
    dt = a_ptr.dtype.element_ty
    act = silu_times(acc_g.to(dt), acc_u.to(dt), dt)
    rr, cc = _acc_index((row0 + tl.arange(0, BM)).to(tl.int64), offs_n, SWAP_AB)
    tl.store(a_ptr + rr * stride_am + cc, act, mask=cc < I)


@triton.jit
def _moe_down_kernel(
    a_ptr, w_ptr, y_ptr, sorted_ptr, end_ptr, total_ptr,   # act [L, K], w [E, N, K], y [N_PAIRS, N] (pair rows)
    N_PAIRS, E, N, K, NUM_TILES,
    stride_am, stride_we, stride_wn, stride_ym,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, E_P: tl.constexpr,
    EVEN_K: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr, SWAP_AB: tl.constexpr,  # IEEE: fp32 dots
):
    row0, offs_n = _tile_of(NUM_TILES, BM, BN)
    rows = (row0 + tl.arange(0, BM)).to(tl.int64)
    if row0 >= tl.load(total_ptr):
        return
    e, pair = _tile_rows(sorted_ptr, end_ptr, row0, E, BM, E_P)
    offs_k = tl.arange(0, BK)
    a_ptrs = a_ptr + rows[:, None] * stride_am + offs_k[None, :]                                    # [BM, BK]
    w_ptrs = w_ptr + e * stride_we + (offs_n % N).to(tl.int64)[:, None] * stride_wn + offs_k[None, :]  # [BN, BK]
    acc = acc_zeros(BM, BN, SWAP_AB)
    acc = dot_loop(a_ptr, a_ptrs, w_ptr, w_ptrs, K, acc, BK, EVEN_K, UPCAST, SWAP_AB, IEEE)
    rr, cc = _acc_index(pair.to(tl.int64), offs_n, SWAP_AB)
    tl.store(y_ptr + rr * stride_ym + cc, acc.to(y_ptr.dtype.element_ty), mask=(rr < N_PAIRS) & (cc < N))


@triton.jit
def _moe_combine_kernel(
    y_ptr, w_ptr, ids_ptr, r_ptr, out_ptr,   # y [M * K, D] pair outputs, weights [M, K], ids [M, K], residual, out
    E, D, stride_wm, stride_rm, stride_om,
    TOP_K: tl.constexpr, BLOCK: tl.constexpr, HAS_RES: tl.constexpr,
):
    m = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < D
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for j in tl.static_range(TOP_K):     # slot 0 first, as the reference
        e = tl.load(ids_ptr + m * TOP_K + j)
        ok = (e >= 0) & (e < E)          # a pair with an out-of-range id was dropped: it adds nothing
        wj = tl.load(w_ptr + m * stride_wm + j).to(tl.float32)
        yj = tl.load(y_ptr + (m * TOP_K + j) * D + offs, mask=offs < tl.where(ok, D, 0), other=0.0).to(tl.float32)
        acc += yj * tl.where(ok, wj, 0.0)
    dt = out_ptr.dtype.element_ty
    y = acc.to(dt)
    if HAS_RES:
        r = tl.load(r_ptr + m * stride_rm + offs, mask=mask, other=0.0)
        y = (r.to(tl.float32) + y.to(tl.float32)).to(dt)
    tl.store(out_ptr + m * stride_om + offs, y, mask=mask)


def moe_align_size(n_pairs: int, n_experts: int, block_m: int) -> int:
    """Rows of :func:`moe_align`'s sorted ids: every expert that can receive a pair padded to ``block_m``."""
    return cdiv(n_pairs + min(n_experts, n_pairs) * (block_m - 1), block_m) * block_m


@memo_config
def moe_config(n_pairs: int, n_experts: int, inter: int, d: int, dtype: torch.dtype,
               interpret: Optional[bool] = None) -> dict:
    """Meta-parameters of :func:`moe_experts` (a new dict each call, no autotuning) for ``n_pairs = M * top_k``
    over ``n_experts`` experts, intermediate size ``inter``, hidden size ``d``: tile rows ``BM`` (from the pairs
    per expert), the gate-up ``GU_*`` and down ``DN_*`` tiles, the alignment ``CHUNK``; ``interpret`` (default:
    whether the interpreter runs) picks the interpreter's tiles."""
    interpret = is_interpreter() if interpret is None else interpret
    if interpret:  # big blocks, small grids: the interpreter pays per program
        return dict(BM=16, GU_BN=clamp_pow2(inter, 16, 128), GU_BK=clamp_pow2(d, 16, 256),
                    DN_BN=clamp_pow2(d, 16, 128), DN_BK=clamp_pow2(inter, 16, 256), CHUNK=clamp_pow2(n_pairs, 16, 256),
                    SWAP_AB=False, num_warps=4, num_stages=1)
    per_expert = n_pairs / max(1, n_experts)
    BM = 16 if per_expert <= 16 else 32 if per_expert <= 48 else 64
    if dtype == torch.float32:  # correctness path (IEEE fp32 dots), not tuned
        return dict(BM=BM, GU_BN=32, GU_BK=32, DN_BN=32, DN_BK=32, CHUNK=256, SWAP_AB=False, num_warps=4,
                    num_stages=2)
    # weight streaming: per stage the gate-up reads (BM + 2 BN) * BK and the down (BM + BN) * BK elements; few
    # token rows per tile: weight rows fill the MMA's M (SWAP_AB), as kernels.mlp's decode GEMMs (not yet swept here)
    return dict(BM=BM, GU_BN=64, GU_BK=128 if BM <= 32 else 64, DN_BN=64 if BM <= 32 else 128,
                DN_BK=128 if BM <= 32 else 64, CHUNK=256, SWAP_AB=BM <= 32, num_warps=4, num_stages=4)


def _align_launch(ids: torch.Tensor, n_experts: int, block_m: int, chunk: int):
    """The three alignment launches (``ids`` validated, contiguous). Returns ``(sorted_ids, expert_end, total)``."""
    N, E, E_P, i32 = ids.numel(), n_experts, next_pow2(n_experts), dict(device=ids.device, dtype=torch.int32)
    L, P, interp = moe_align_size(N, E, block_m), cdiv(N, chunk), is_interpreter()
    sorted_ids, ends, total = torch.empty(L, **i32), torch.empty(E, **i32), torch.empty(1, **i32)
    cnt, base = torch.empty((P, E_P), **i32), torch.empty((P, E_P), **i32)  # per-chunk histograms and bases
    _align_count_kernel[(P,)](ids, cnt, sorted_ids, N, E, L, CHUNK=chunk, E_P=E_P,
                              FILL=clamp_pow2(cdiv(L, P), 16, 1 << 16) if interp else 1024, num_warps=4)
    p_b = max(1, min(next_pow2(P), 8192 // E_P))
    _align_scan_kernel[(1,)](cnt, base, ends, total, P, E, BM=block_m, E_P=E_P, P_B=p_b,
                             num_warps=1 if interp else 8)
    _align_scatter_kernel[(P,)](ids, base, sorted_ids, N, E, CHUNK=chunk, E_P=E_P, num_warps=4)
    return sorted_ids, ends, total


def moe_route(x: torch.Tensor, router_w: torch.Tensor, expert_bias: Optional[torch.Tensor] = None, *,
              top_k: int, n_group: int = 1, topk_group: int = 1, score_func: str = "sigmoid",
              norm_topk_prob: bool = True, routed_scaling_factor: float = 1.0):
    """Router of a mixture-of-experts layer in two launches: ``(weights fp32 [M, top_k], ids int32 [M, top_k])``.

    x: ``[M, d]``; router_w: ``[E, d]`` (``E <= 1024``); expert_bias: ``[E]`` or None (fp16/bf16/fp32, last dims
    contiguous). Logits accumulate in fp32 (16-bit ``x`` and ``router_w`` of one dtype on the tensor cores, whose
    products are exact in fp32; else IEEE fp32 dots). Semantics, ties (lowest index) and output order:
    :func:`llada_triton.kernels.reference.moe_route_ref`, up to the last bits of the weights (summation order)."""
    check_tensor("x", x, ndim=2, dtypes=DTYPES)
    check_tensor("router_w", router_w, ndim=2, dtypes=DTYPES)
    (M, d), E = x.shape, router_w.shape[0]
    if router_w.shape[1] != d or router_w.device != x.device or E == 0:
        raise ValueError(f"router_w must be [E >= 1, d={d}] on {x.device}, got {tuple(router_w.shape)} "
                         f"on {router_w.device}")
    if E > MAX_EXPERTS:
        raise ValueError(f"router_w has {E} experts; at most {MAX_EXPERTS} are supported")
    if expert_bias is not None:
        check_vector("expert_bias", expert_bias, E, DTYPES, x.device)
    check_moe_route_args(E, top_k, n_group, topk_group, score_func, expert_bias, routed_scaling_factor)
    weights = torch.empty((M, top_k), device=x.device, dtype=torch.float32)
    ids = torch.empty((M, top_k), device=x.device, dtype=torch.int32)
    if M == 0:
        return weights, ids
    interp, E_P = is_interpreter(), next_pow2(E)
    native = x.dtype == router_w.dtype and x.dtype != torch.float32
    BM = clamp_pow2(M, 16, 64) if interp else 16
    BE = E_P if interp else min(E_P, 32)     # logits split over experts: enough programs to stream router_w
    BK = clamp_pow2(d, 16, 256) if interp else 128
    logits = torch.empty((M, E), device=x.device, dtype=torch.float32)
    _router_logits_kernel[(cdiv(M, BM), cdiv(E, BE))](
        x, router_w, logits, M, E, d, x.stride(0), router_w.stride(0), BM=BM, BE=BE, BK=BK, EVEN_K=d % BK == 0,
        UPCAST=(interp and x.dtype == torch.bfloat16) or not native, IEEE=not (native or interp),
        num_warps=4, num_stages=1 if interp else 4)
    _route_select_kernel[(cdiv(M, BM),)](
        logits, router_w if expert_bias is None else expert_bias, weights, ids, M, E, float(routed_scaling_factor),
        TOP_K=top_k, N_GROUP=n_group, TOPK_GROUP=topk_group, SIGMOID=score_func == "sigmoid",
        HAS_BIAS=expert_bias is not None, NORM=bool(norm_topk_prob) and top_k > 1,
        BM=BM, E_P=E_P, G_P=next_pow2(n_group), K_P=next_pow2(top_k),
        num_warps=4 if interp or E_P <= 128 else 8,
    )
    return weights, ids


def _check_ids(ids: torch.Tensor):
    check_tensor("ids", ids, ndim=2, dtypes=(torch.int32, torch.int64))
    if not ids.is_contiguous():
        raise ValueError(f"ids must be contiguous, got strides {ids.stride()}")


def moe_align(ids: torch.Tensor, n_experts: int, block_m: int, *, chunk: Optional[int] = None):
    """Token->expert alignment on the device: the ``N = M * k`` pairs ``(m, j)`` (flat index ``m * k + j``) of
    ``ids [M, k]`` grouped by expert, each expert's segment padded to a multiple of ``block_m`` rows.

    Returns ``(sorted_ids int32 [L], expert_end int32 [E], total int32 [1])`` with
    ``L = moe_align_size(N, E, block_m)``: segment ``e`` is rows ``[expert_end[e-1], expert_end[e])``, its pairs
    first in increasing flat index, then padding rows holding ``N``; rows ``>= total = expert_end[E-1]`` hold
    ``N`` too. Pairs whose id is outside ``[0, E)`` are dropped. ``chunk`` (a power of two, default from
    :func:`moe_config`): pairs per program of the sort. See :func:`llada_triton.kernels.reference.moe_align_ref`."""
    _check_ids(ids)
    E = _check_count("n_experts", n_experts, MAX_EXPERTS)
    block_m = _check_count("block_m", block_m, 1 << 12)
    if chunk is None:
        chunk = clamp_pow2(ids.numel(), 16, 256) if is_interpreter() else 256
    elif _check_count("chunk", chunk, 1 << 14) & (chunk - 1):
        raise ValueError(f"chunk must be a power of two, got {chunk}")
    if ids.numel() == 0:
        i32 = dict(device=ids.device, dtype=torch.int32)
        return torch.empty(0, **i32), torch.zeros(E, **i32), torch.zeros(1, **i32)
    return _align_launch(ids, E, block_m, chunk)


def _check_count(name: str, v, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= hi:
        raise ValueError(f"{name} must be an int in [1, {hi}], got {v!r}")
    return v


def _validate_experts(x, w_gate_up, w_down, weights, ids, residual, out):
    check_tensor("x", x, ndim=2, dtypes=DTYPES)
    M, d = x.shape
    check_tensor("w_gate_up", w_gate_up, ndim=3, dtypes=(x.dtype,))
    check_tensor("w_down", w_down, ndim=3, dtypes=(x.dtype,))
    E, two_i = w_gate_up.shape[:2]
    if w_gate_up.shape[2] != d or two_i % 2 or two_i == 0 or E == 0 or E > MAX_EXPERTS:
        raise ValueError(f"w_gate_up must be [E in 1..{MAX_EXPERTS}, 2I, d={d}] with I >= 1, "
                         f"got {tuple(w_gate_up.shape)}")
    inter = two_i // 2
    if tuple(w_down.shape) != (E, d, inter):
        raise ValueError(f"w_down must be [E, d, I] = [{E}, {d}, {inter}], got {tuple(w_down.shape)}")
    for name, t in (("w_gate_up", w_gate_up), ("w_down", w_down)):
        if t.stride(1) != t.shape[2] and t.shape[1] > 1:
            raise ValueError(f"{name} rows must be contiguous within an expert, got strides {t.stride()}")
    _check_ids(ids)
    check_tensor("weights", weights, ndim=2, dtypes=DTYPES)
    if ids.shape[0] != M or ids.shape[1] == 0 or weights.shape != ids.shape:
        raise ValueError(f"ids and weights must both be [M={M}, k >= 1], got {tuple(ids.shape)} and "
                         f"{tuple(weights.shape)}")
    for name, t in (("w_gate_up", w_gate_up), ("w_down", w_down), ("weights", weights), ("ids", ids)):
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device}, x on {x.device}")
    for name, t in (("residual", residual), ("out", out)):
        check_like(name, t, x.shape, x.dtype, x.device)
    return M, d, E, inter, ids.shape[1]


def moe_experts(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor, weights: torch.Tensor,
                ids: torch.Tensor, residual: Optional[torch.Tensor] = None, *, out: Optional[torch.Tensor] = None,
                config: Optional[dict] = None) -> torch.Tensor:
    """The routed experts: ``residual + sum_j weights[:, j] * expert_{ids[:, j]}(x)`` in ``x.dtype``, on the GPU
    without a host sync (alignment + grouped gate-up + grouped down + combine: six launches).

    x: ``[M, d]`` (fp16/bf16/fp32); w_gate_up: ``[E, 2I, d]`` (per expert: gate rows, then up rows); w_down:
    ``[E, d, I]`` (both in ``x.dtype``, rows contiguous); weights: ``[M, k]`` (fp32 from :func:`moe_route`, any
    float dtype); ids: int32/int64 ``[M, k]``, contiguous (pairs with an id outside ``[0, E)`` add nothing);
    residual: ``[M, d]`` or None; out: optional ``[M, d]`` output (may alias ``residual``). Only experts that
    received pairs are read. Deterministic. ``config``: meta-parameters overriding :func:`moe_config`'s.
    Numerics: :func:`llada_triton.kernels.reference.moe_experts_ref` up to the GEMMs' fp32 accumulation order."""
    M, d, E, inter, k = _validate_experts(x, w_gate_up, w_down, weights, ids, residual, out)
    y = torch.empty_like(x) if out is None else out
    if M == 0:
        return y
    N = M * k
    cfg = dict(moe_config(N, E, inter, d, x.dtype), **(config or {}))
    BM = cfg["BM"]
    sorted_ids, ends, total = _align_launch(ids, E, BM, cfg["CHUNK"])
    L = sorted_ids.shape[0]
    tiles = L // BM
    act = torch.empty((L, inter), device=x.device, dtype=x.dtype)
    pair_out = torch.empty((N, d), device=x.device, dtype=x.dtype)
    E_P, flags = next_pow2(E), dot_flags(x.dtype)
    launch = dict(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    bn, bk = cfg["GU_BN"], cfg["GU_BK"]
    _moe_gate_up_kernel[(tiles * cdiv(inter, bn),)](
        x, w_gate_up, act, sorted_ids, ends, total, N, E, inter, d, tiles,
        x.stride(0), w_gate_up.stride(0), w_gate_up.stride(1), act.stride(0),
        TOP_K=k, BM=BM, BN=bn, BK=bk, E_P=E_P, EVEN_K=d % bk == 0, SWAP_AB=cfg["SWAP_AB"], **flags, **launch)
    bn, bk = cfg["DN_BN"], cfg["DN_BK"]
    _moe_down_kernel[(tiles * cdiv(d, bn),)](
        act, w_down, pair_out, sorted_ids, ends, total, N, E, d, inter, tiles,
        act.stride(0), w_down.stride(0), w_down.stride(1), pair_out.stride(0),
        BM=BM, BN=bn, BK=bk, E_P=E_P, EVEN_K=inter % bk == 0, SWAP_AB=cfg["SWAP_AB"], **flags, **launch)
    block = clamp_pow2(d, 16, 1 << 16) if is_interpreter() else min(1024, next_pow2(d))
    r = residual if residual is not None else y
    _moe_combine_kernel[(M, cdiv(d, block))](
        pair_out, weights, ids, r, y, E, d, weights.stride(0), r.stride(0), y.stride(0),
        TOP_K=k, BLOCK=block, HAS_RES=residual is not None, num_warps=4)
    return y
