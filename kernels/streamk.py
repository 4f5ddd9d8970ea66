"""Stream-K GEMM for the row counts between decode and prefill (about 65 to 1023 token rows).

At these sizes a data-parallel GEMM of ``[M, K] @ [N, K].T`` has a few hundred output tiles on 132 SMs, and
the last wave leaves most SMs idle: at M = 256 the gate-up projection of LLaDA-8B has 192 tiles of
128 x (128 gate + 128 up) columns, 1.45 waves, so a plain launch costs two full waves. Here one program
per SM walks a contiguous range of the flattened ``(tile, k-block)`` iteration space (Osama et al.,
"Stream-K", PPoPP 2023): the first ``DP_TILES`` tiles go whole to programs in turn (data-parallel), the
rest are cut along K so that every program gets the same number of k-blocks.

A tile cut between programs is finished by whichever contributor arrives last: each contributor writes
its fp32 partial accumulator to its own slot, then increments the tile's arrival counter; the one that
sees the count complete sums every contributor's partial in program order (a fixed order, so results do
not depend on timing) and runs the epilogue. Nobody waits on anybody, so the kernel cannot deadlock,
whatever the number of co-resident programs (and it runs under the interpreter). The counter is reset
to zero by that last contributor, so the counters need zeroing only once, when allocated.

Epilogues: ``residual + round(x @ w.T)`` (the projections; :func:`kernels.mlp.linear`) and the SwiGLU
activation ``silu(gate) * up`` (two accumulators per tile: gate rows ``n`` and up rows ``H + n``), with
the roundings of :mod:`kernels.mlp`.

Scratch: the arrival counters live in a small int32 buffer per (device, stream), allocated on first use,
zero between launches and never freed (CUDA graphs keep its address), like cuBLAS's workspace. The fp32
partials are allocated per call (``torch.empty``, no kernel). Two launches on different streams never
share counters.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import triton
import triton.language as tl

__all__ = ["streamk_plan", "launch_streamk"]


@triton.jit
def _mma(a, b, acc, IEEE: tl.constexpr):
    if IEEE:
        out = tl.dot(a, b, acc, input_precision="ieee")
    else:
        out = tl.dot(a, b, acc)
    return out


@triton.jit
def _tile_k_range(x_src, w_src, m0, n0, k_lo, k_hi, M, N, K, H_UP, stride_xm, stride_wn,
                  BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GATE_UP: tl.constexpr,
                  USE_TMA: tl.constexpr, EVEN_K: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr):
    """fp32 accumulators of output tile ``(m0, n0)`` over k-blocks ``[k_lo, k_hi)``: ``(acc, acc_up)``
    (``acc_up`` only with ``GATE_UP``: the weight rows ``H_UP + n``; zeros otherwise)."""
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    acc_u = tl.zeros((BM, BN), dtype=tl.float32)
    if not USE_TMA:
        offs_k = tl.arange(0, BK)
        # out-of-range rows wrap instead of being masked (loads stay unpredicated; stores are masked)
        rows_x = ((m0 + tl.arange(0, BM)) % M).to(tl.int64)
        rows_w = ((n0 + tl.arange(0, BN)) % N).to(tl.int64)
        x_ptrs = x_src + rows_x[:, None] * stride_xm + (k_lo * BK + offs_k)[None, :]
        w_ptrs = w_src + rows_w[:, None] * stride_wn + (k_lo * BK + offs_k)[None, :]
        u_ptrs = w_ptrs + H_UP * stride_wn
    for kb in range(k_lo, k_hi):
        if USE_TMA:  # out-of-bounds rows / columns of a box read as zeros
            xt = x_src.load([m0, kb * BK])
            wt = w_src.load([n0, kb * BK])
            if GATE_UP:
                ut = w_src.load([H_UP + n0, kb * BK])
        elif EVEN_K:
            xt = tl.load(x_ptrs)
            wt = tl.load(w_ptrs)
            if GATE_UP:
                ut = tl.load(u_ptrs)
        else:
            kmask = (offs_k < K - kb * BK)[None, :]
            xt = tl.load(x_ptrs, mask=kmask, other=0.0)
            wt = tl.load(w_ptrs, mask=kmask, other=0.0)
            if GATE_UP:
                ut = tl.load(u_ptrs, mask=kmask, other=0.0)
        if UPCAST:
            xt = xt.to(tl.float32)
            wt = wt.to(tl.float32)
            if GATE_UP:
                ut = ut.to(tl.float32)
        acc = _mma(xt, tl.trans(wt), acc, IEEE)
        if GATE_UP:
            acc_u = _mma(xt, tl.trans(ut), acc_u, IEEE)
        if not USE_TMA:
            x_ptrs += BK
            w_ptrs += BK
            u_ptrs += BK
    return acc, acc_u


@triton.jit
def _epilogue(acc, acc_u, out_ptr, r_ptr, m0, n0, M, N, stride_om, stride_rm,
              BM: tl.constexpr, BN: tl.constexpr, GATE_UP: tl.constexpr, HAS_RES: tl.constexpr):
    offs_m = (m0 + tl.arange(0, BM)).to(tl.int64)
    offs_n = n0 + tl.arange(0, BN)
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    dt = out_ptr.dtype.element_ty
    if GATE_UP:  # the reference's roundings: gate, up, silu(gate), product -> out dtype
        gf = acc.to(dt).to(tl.float32)
        uf = acc_u.to(dt).to(tl.float32)
        s = tl.math.div_rn(gf, 1.0 + tl.exp(-gf)).to(dt).to(tl.float32)
        y = (s * uf).to(dt)
    else:  # round the product, then residual + y in fp32, rounded (torch's 16-bit residual + F.linear)
        y = acc.to(dt)
        if HAS_RES:
            r = tl.load(r_ptr + offs_m[:, None] * stride_rm + offs_n[None, :], mask=mask, other=0.0)
            y = (r.to(tl.float32) + y.to(tl.float32)).to(dt)
    tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :], y, mask=mask)


@triton.jit
def _owner(i, IPP, EXTRA):
    """The program whose stream-K range holds iteration ``i`` (programs < EXTRA take IPP + 1 iterations)."""
    big = EXTRA * (IPP + 1)
    return tl.where(i < big, i // (IPP + 1), EXTRA + (i - big) // tl.maximum(IPP, 1))


@triton.jit
def _slot(p, j, k_iters, IPP, EXTRA):
    """Partial slot of program ``p`` for stream-K tile ``j``: 2p for the first tile of its range, 2p + 1 for
    its last (only these two can be partial)."""
    first = (p * IPP + tl.minimum(p, EXTRA)) // k_iters
    return 2 * p + (j != first).to(tl.int32)


@triton.jit
def _streamk_kernel(
    x_src, w_src, out_ptr, r_ptr, p_ptr, cnt_ptr,   # x [M, K], w [rows, K] (pointers or TMA descriptors), out
    M, N, K, H_UP,                                  # [M, N], residual [M, N], partials, counters [SK tiles]
    stride_xm, stride_wn, stride_om, stride_rm,
    DP_TILES, IPP, EXTRA,                           # plan (streamk_plan): whole tiles, then IPP (+1) k-blocks each
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GATE_UP: tl.constexpr, HAS_RES: tl.constexpr,
    USE_TMA: tl.constexpr, EVEN_K: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
):
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    num_m = tl.cdiv(M, BM)
    k_iters = tl.cdiv(K, BK)
    # data-parallel part: whole tiles, m fastest (programs sharing a weight tile run together: L2)
    for t in range(pid, DP_TILES, n_prog):
        m0 = (t % num_m) * BM
        n0 = (t // num_m) * BN
        acc, acc_u = _tile_k_range(x_src, w_src, m0, n0, 0, k_iters, M, N, K, H_UP, stride_xm, stride_wn,
                                   BM, BN, BK, GATE_UP, USE_TMA, EVEN_K, UPCAST, IEEE)
        _epilogue(acc, acc_u, out_ptr, r_ptr, m0, n0, M, N, stride_om, stride_rm, BM, BN, GATE_UP, HAS_RES)
    # stream-K part: this program's contiguous range of (tile, k-block) iterations
    PARTS: tl.constexpr = 2 if GATE_UP else 1
    tile_offs = tl.arange(0, BM)[:, None] * BN + tl.arange(0, BN)[None, :]
    start = pid * IPP + tl.minimum(pid, EXTRA)
    end = start + IPP + (pid < EXTRA).to(tl.int32)
    # a `for` over the range's tiles, not a `while` over iterations: the k-loop inside gets software-pipelined
    # (under a while loop it did not: 2x slower per k-block on an H200, triton 3.6)
    j_end = tl.where(end > start, tl.cdiv(end, k_iters), start // k_iters)   # idle programs: no tiles
    for j in range(start // k_iters, j_end):   # stream-K tile j is tile DP_TILES + j
        k0 = tl.maximum(start - j * k_iters, 0)
        k1 = tl.minimum(end - j * k_iters, k_iters)
        t = DP_TILES + j
        m0 = (t % num_m) * BM
        n0 = (t // num_m) * BN
        acc, acc_u = _tile_k_range(x_src, w_src, m0, n0, k0, k1, M, N, K, H_UP, stride_xm, stride_wn,
                                   BM, BN, BK, GATE_UP, USE_TMA, EVEN_K, UPCAST, IEEE)
        if (k0 == 0) & (k1 == k_iters):   # a whole tile inside the range
            _epilogue(acc, acc_u, out_ptr, r_ptr, m0, n0, M, N, stride_om, stride_rm, BM, BN, GATE_UP, HAS_RES)
        else:
            slot_ptr = p_ptr + _slot(pid, j, k_iters, IPP, EXTRA).to(tl.int64) * (PARTS * BM * BN)
            tl.store(slot_ptr + tile_offs, acc)
            if GATE_UP:
                tl.store(slot_ptr + BM * BN + tile_offs, acc_u)
            tl.debug_barrier()            # every thread's partial is written before the arrival is counted
            arrived = tl.atomic_add(cnt_ptr + j, 1, sem="acq_rel")
            p_lo = _owner(j * k_iters, IPP, EXTRA)
            p_hi = _owner(j * k_iters + k_iters - 1, IPP, EXTRA)
            if arrived == p_hi - p_lo:     # the last contributor: sum all partials in program order
                acc = tl.zeros((BM, BN), dtype=tl.float32)
                acc_u = tl.zeros((BM, BN), dtype=tl.float32)
                for p in range(p_lo, p_hi + 1):
                    src = p_ptr + _slot(p, j, k_iters, IPP, EXTRA).to(tl.int64) * (PARTS * BM * BN)
                    acc += tl.load(src + tile_offs, cache_modifier=".cg")
                    if GATE_UP:
                        acc_u += tl.load(src + BM * BN + tile_offs, cache_modifier=".cg")
                tl.atomic_xchg(cnt_ptr + j, 0)   # ready for the next launch
                _epilogue(acc, acc_u, out_ptr, r_ptr, m0, n0, M, N, stride_om, stride_rm, BM, BN, GATE_UP,
                          HAS_RES)


# ---------------------------------------------------------------------------------------- launcher
def streamk_plan(tiles: int, k_iters: int, n_prog: int, sk_waves: int = 1) -> Tuple[int, int, int, int]:
    """Split ``tiles`` output tiles of ``k_iters`` k-blocks over at most ``n_prog`` programs.

    Returns ``(grid, dp_tiles, ipp, extra)``: the first ``dp_tiles`` tiles are handed out whole, and the
    remaining ``(tiles - dp_tiles) * k_iters`` k-block iterations are split evenly (programs below
    ``extra`` take ``ipp + 1``). ``sk_waves`` is how many waves' worth of tiles (the partial last wave plus
    ``sk_waves - 1`` full ones) are cut along K; when the tiles fill whole waves nothing is cut.
    """
    if tiles <= 0 or k_iters <= 0 or n_prog <= 0 or sk_waves < 1:
        raise ValueError(f"streamk_plan needs tiles, k_iters, n_prog, sk_waves >= 1, got {tiles}, {k_iters}, "
                         f"{n_prog}, {sk_waves}")
    if tiles % n_prog == 0:
        return n_prog, tiles, 0, 0
    full = tiles // n_prog
    dp = max(0, full - (sk_waves - 1)) * n_prog
    sk_iters = (tiles - dp) * k_iters
    grid = min(n_prog, sk_iters) if dp == 0 else n_prog
    return grid, dp, sk_iters // grid, sk_iters % grid


_COUNTERS: Dict[Tuple[str, int, int], list] = {}
_COUNTER_LEN = 4096


def _counters(device: torch.device, n: int) -> torch.Tensor:
    """Zeroed int32 arrival counters for ``n`` tiles on ``device`` and the current stream (see the module
    docstring: reset by the kernel itself, kept alive for CUDA graphs)."""
    if n > _COUNTER_LEN:
        raise ValueError(f"stream-K GEMM with {n} cut tiles; at most {_COUNTER_LEN} are supported")
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (device.type, device.index if device.index is not None else -1, stream)
    bufs = _COUNTERS.get(key)
    if bufs is None:
        bufs = _COUNTERS[key] = [torch.zeros(_COUNTER_LEN, dtype=torch.int32, device=device)]
    return bufs[0]


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # the interpreter: a few programs, enough to cut tiles between them
    return torch.cuda.get_device_properties(device).multi_processor_count


def launch_streamk(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, residual: Optional[torch.Tensor],
                   cfg: dict, *, gate_up: bool, use_tma: bool, x_src, w_src, flags: dict) -> torch.Tensor:
    """Run the stream-K kernel (inputs validated by the caller; ``x_src`` / ``w_src`` are the tensors or
    their TMA descriptors). ``gate_up``: ``out[M, H] = silu(x @ w[:H].T) * (x @ w[H:].T)``; else
    ``out[M, N] = (residual +) x @ w.T``. ``cfg``: BM, BN, BK, num_warps, num_stages, optional SK_WAVES
    (:func:`streamk_plan`) and SK_PROGRAMS (programs; default the GPU's SM count, 4 under the interpreter)."""
    M, K = x.shape
    N = w.shape[0] // 2 if gate_up else w.shape[0]
    BM, BN, BK = cfg["BM"], cfg["BN"], cfg["BK"]
    tiles = triton.cdiv(M, BM) * triton.cdiv(N, BN)
    k_iters = triton.cdiv(K, BK)
    n_prog = int(cfg.get("SK_PROGRAMS") or _num_sms(x.device))
    grid, dp, ipp, extra = streamk_plan(tiles, k_iters, n_prog, cfg.get("SK_WAVES", 1))
    sk_tiles = tiles - dp
    parts = 2 if gate_up else 1
    partials = torch.empty((2 * grid * parts * BM * BN) if sk_tiles else 1, device=x.device, dtype=torch.float32)
    counters = _counters(x.device, sk_tiles)
    has_res = residual is not None
    r = residual if has_res else out
    _streamk_kernel[(grid,)](
        x_src, w_src, out, r, partials, counters, M, N, K, N if gate_up else 0,
        x.stride(0), w.stride(0), out.stride(0), r.stride(0), dp, ipp, extra,
        BM=BM, BN=BN, BK=BK, GATE_UP=gate_up, HAS_RES=has_res, USE_TMA=use_tma, EVEN_K=(K % BK == 0), **flags,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return out
