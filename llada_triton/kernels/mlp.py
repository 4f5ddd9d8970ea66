"""SwiGLU MLP: a gate-up GEMM with the ``silu(gate) * up`` epilogue, then the down GEMM with the
residual add in its epilogue (split-K with a deterministic fp32 reduction at decode sizes).

Numerics mirror :func:`llada_triton.kernels.reference.swiglu_mlp_ref`: each GEMM accumulates in fp32; the gate and up
outputs are rounded to ``x.dtype`` before the activation, ``silu(gate)`` is computed in fp32 and rounded
to ``x.dtype``, the product with ``up`` is rounded to ``x.dtype`` (that is what torch does for 16-bit
tensors); the down GEMM output is rounded to ``x.dtype`` before ``residual + y`` (fp32 add, rounded).
The only differences from the reference are the fp32 accumulation order inside the GEMMs (and across
split-K partials, summed in a fixed order, so results are deterministic) and the SiLU's ``exp`` (the GPU's
``ex2.approx``; the division is IEEE ``div_rn``). fp32 inputs use IEEE fp32 dots (no TF32), as torch's
default matmul.

Measured on one H200 (triton 3.6, torch 2.11, bf16, d=4096, h=12288, + residual; CUDA-graph replays;
results/kernels/kernels_nvidia_h200_8d1e65f.md): M=32 80.7 us (88.8% of the weights-once memory floor) vs
cuBLAS + one-launch activation 83.6; M=256 132.8 vs 123.1 (cuBLAS's gate-up GEMM alone: 75-76 us, ours with
its epilogue 86-87); M=1024 459.4 vs 452.0. Above 64 rows the gate-up runs one ``[BM, 2 BN]`` dot per K-step
over a ``[2, BN, BK]`` TMA box of the weight viewed as ``[2, h, d]`` (``ONE_DOT``): 8-13% faster than two
``[BM, BN]`` dots at 128-256 rows.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from llada_triton.kernels._common import (as_rows, cdiv, check_tensor, gdc_options, gdc_wait_and_release,
                             is_interpreter, memo_config, next_pow2, pdl_launch, pdl_prefetch, prefetch_l2)
from llada_triton.kernels.reference import check_eps

__all__ = ["swiglu_mlp", "linear", "swiglu_mlp_rms_norm", "linear_rms_norm", "silu_mul"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# ------------------------------------------------------------------------------------------ kernels
@triton.jit
def _mma(a, b, acc, IEEE: tl.constexpr):
    if IEEE:
        out = tl.dot(a, b, acc, input_precision="ieee")
    else:
        out = tl.dot(a, b, acc)
    return out


@triton.jit
def _round_add_residual(acc, r_ptrs, mask, dt: tl.constexpr, HAS_RES: tl.constexpr):
    """The projection ``acc`` (fp32) rounded to ``dt``, then ``residual + y`` in fp32, rounded (torch's
    16-bit ``residual + F.linear(...)``)."""
    y = acc.to(dt)
    if HAS_RES:
        r = tl.load(r_ptrs, mask=mask, other=0.0)
        y = (r.to(tl.float32) + y.to(tl.float32)).to(dt)
    return y


@triton.jit
def _sum_partials(p_ptr, m, M, N, offs, mask, S: tl.constexpr, BLOCK: tl.constexpr):
    """Row ``m`` of the split-K partials ``[S, M, N]`` summed in a fixed order (deterministic; unrolled,
    so the loads overlap)."""
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in tl.static_range(S):
        acc += tl.load(p_ptr + (s * M + m) * N + offs, mask=mask, other=0.0)
    return acc


@triton.jit
def _silu_times(g, u, dt: tl.constexpr):
    """``silu(g) * u`` with torch's 16-bit roundings: ``g`` / ``u`` hold ``dt`` values; ``silu(g)`` is computed
    in fp32 and rounded to ``dt``, the product is computed in fp32 and rounded to ``dt``."""
    gf = g.to(tl.float32)
    s = tl.math.div_rn(gf, 1.0 + tl.exp(-gf)).to(dt).to(tl.float32)
    return (s * u.to(tl.float32)).to(dt)


@triton.jit
def _silu_mul_kernel(
    gu_ptr, a_ptr,                       # gu [M, 2H] (gate columns, then up columns), a [M, H]
    H, stride_gm, stride_am,
    BLOCK: tl.constexpr, USE_GDC: tl.constexpr = False,
):
    gdc_wait_and_release(USE_GDC)
    m = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < H
    g = tl.load(gu_ptr + m * stride_gm + offs, mask=mask, other=0.0)
    u = tl.load(gu_ptr + m * stride_gm + H + offs, mask=mask, other=0.0)
    tl.store(a_ptr + m * stride_am + offs, _silu_times(g, u, a_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _prefetch_rows(base, rows, stride, k0, K, PF_LINES: tl.constexpr, LINE: tl.constexpr, USE_GDC: tl.constexpr):
    """L2 prefetch of the first ``PF_LINES`` 128-byte lines from column ``k0`` of weight ``rows`` (PDL only)."""
    if USE_GDC and PF_LINES > 0:
        cols = tl.minimum(k0 + tl.arange(0, PF_LINES) * LINE, K - 1)
        prefetch_l2(base + rows[:, None] * stride + cols[None, :], USE_GDC)


@triton.jit
def _gate_up_silu_kernel(
    x_src, w_src, a_ptr, w_pf,           # x [M, K], w [2H, K] (gate rows, then up rows): pointers or TMA
    M, H, K,                             # descriptors (USE_TMA); a [M, H] pointer; w_pf: w's pointer (prefetch)
    stride_xm, stride_wn, stride_am,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    SWAP_AB: tl.constexpr,               # compute a.T tiles [BN, BM] = W @ x.T (weight rows fill the MMA's M)
    USE_TMA: tl.constexpr, EVEN_K: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
    USE_GDC: tl.constexpr = False, PF_LINES: tl.constexpr = 1, LINE: tl.constexpr = 64,
    ONE_DOT: tl.constexpr = False,       # USE_TMA, not SWAP_AB: w_src is a [2, H, K] descriptor (gate, up) with
                                         # [2, BN, BK] boxes; one [BM, 2 BN] dot a step, split in the epilogue
    X_TMA: tl.constexpr = True,          # ONE_DOT: x_src is a descriptor (else a pointer; rows past M wrap)
):
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BM)
    pid_m = pid % num_m                  # m fastest: programs sharing a weight tile run together (L2)
    pid_n = pid // num_m
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    if not USE_TMA:
        offs_k = tl.arange(0, BK)
        # wrap out-of-range rows instead of masking them: loads stay unpredicated; stores are masked
        rows_x = (offs_m % M).to(tl.int64)
        rows_w = (offs_n % H).to(tl.int64)
        x_ptrs = x_src + rows_x[:, None] * stride_xm + offs_k[None, :]           # [BM, BK]
        g_ptrs = w_src + rows_w[:, None] * stride_wn + offs_k[None, :]           # [BN, BK]
        u_ptrs = w_src + (rows_w + H)[:, None] * stride_wn + offs_k[None, :]     # [BN, BK]
    # PDL: the weights do not depend on the previous kernel; start pulling them into L2 before waiting
    rows_pf = (offs_n % H).to(tl.int64)
    _prefetch_rows(w_pf, rows_pf, stride_wn, 0, K, PF_LINES, LINE, USE_GDC)
    _prefetch_rows(w_pf, rows_pf + H, stride_wn, 0, K, PF_LINES, LINE, USE_GDC)
    gdc_wait_and_release(USE_GDC)
    if ONE_DOT:                          # the gate and up boxes land as one [2 BN, BK] tile
        if not X_TMA:
            offs_k = tl.arange(0, BK)
            x_ptrs = x_src + (offs_m % M).to(tl.int64)[:, None] * stride_xm + offs_k[None, :]     # [BM, BK]
        acc = tl.zeros((BM, 2 * BN), dtype=tl.float32)
        for k in range(0, K, BK):
            if X_TMA:
                xt = x_src.load([pid_m * BM, k])
            elif EVEN_K:
                xt = tl.load(x_ptrs)
            else:
                xt = tl.load(x_ptrs, mask=(offs_k < K - k)[None, :], other=0.0)
            gu = w_src.load([0, pid_n * BN, k]).reshape(2 * BN, BK)
            if UPCAST:
                xt = xt.to(tl.float32)
                gu = gu.to(tl.float32)
            acc = _mma(xt, tl.trans(gu), acc, IEEE)
            if not X_TMA:
                x_ptrs += BK
        # columns [0, BN) are the gate's, [BN, 2 BN) the up's
        acc_g, acc_u = tl.split(tl.permute(tl.reshape(acc, (BM, 2, BN)), (0, 2, 1)))
    else:
        if SWAP_AB:
            acc_g = tl.zeros((BN, BM), dtype=tl.float32)
            acc_u = tl.zeros((BN, BM), dtype=tl.float32)
        else:
            acc_g = tl.zeros((BM, BN), dtype=tl.float32)
            acc_u = tl.zeros((BM, BN), dtype=tl.float32)
        for k in range(0, K, BK):
            if USE_TMA:                      # out-of-bounds rows/cols of a box read as zeros
                xt = x_src.load([pid_m * BM, k])
                g = w_src.load([pid_n * BN, k])
                u = w_src.load([H + pid_n * BN, k])
            elif EVEN_K:
                xt = tl.load(x_ptrs)
                g = tl.load(g_ptrs)
                u = tl.load(u_ptrs)
            else:
                kmask = (offs_k < K - k)[None, :]
                xt = tl.load(x_ptrs, mask=kmask, other=0.0)
                g = tl.load(g_ptrs, mask=kmask, other=0.0)
                u = tl.load(u_ptrs, mask=kmask, other=0.0)
            if UPCAST:
                xt = xt.to(tl.float32)
                g = g.to(tl.float32)
                u = u.to(tl.float32)
            if SWAP_AB:
                xtt = tl.trans(xt)
                acc_g = _mma(g, xtt, acc_g, IEEE)
                acc_u = _mma(u, xtt, acc_u, IEEE)
            else:
                acc_g = _mma(xt, tl.trans(g), acc_g, IEEE)
                acc_u = _mma(xt, tl.trans(u), acc_u, IEEE)
            if not USE_TMA:
                x_ptrs += BK
                g_ptrs += BK
                u_ptrs += BK
    # epilogue, mirroring the reference's roundings: gate, up, silu(gate), product -> x.dtype
    dt = a_ptr.dtype.element_ty
    act = _silu_times(acc_g.to(dt), acc_u.to(dt), dt)
    if SWAP_AB:
        a_ptrs = a_ptr + offs_m.to(tl.int64)[None, :] * stride_am + offs_n[:, None]
        mask = (offs_m[None, :] < M) & (offs_n[:, None] < H)
    else:
        a_ptrs = a_ptr + offs_m.to(tl.int64)[:, None] * stride_am + offs_n[None, :]
        mask = (offs_m[:, None] < M) & (offs_n[None, :] < H)
    tl.store(a_ptrs, act, mask=mask)


@triton.jit
def _down_kernel(
    a_src, w_src, r_ptr, y_ptr, p_ptr,   # a [M, K], w [N, K] (pointers or TMA descriptors), residual [M, N],
    w_pf,                                # w's pointer (the PDL prefetch)
    M, N, K, K_PER_SPLIT,                # y [M, N], partials [S, M, N] fp32
    stride_am, stride_wn, stride_rm, stride_ym,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    SWAP_AB: tl.constexpr, USE_TMA: tl.constexpr, EVEN_K: tl.constexpr,
    SPLIT: tl.constexpr,                 # True: write fp32 partials (reduced by _splitk_reduce_kernel)
    HAS_RES: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
    USE_GDC: tl.constexpr = False, PF_LINES: tl.constexpr = 1, LINE: tl.constexpr = 64,
):
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    num_m = tl.cdiv(M, BM)
    pid_m = pid % num_m
    pid_n = pid // num_m
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    k_start = pid_k * K_PER_SPLIT
    k_len = tl.minimum(K - k_start, K_PER_SPLIT)   # K_PER_SPLIT % BK == 0: only the last split has a tail
    if not USE_TMA:
        offs_k = tl.arange(0, BK)
        rows_a = (offs_m % M).to(tl.int64)
        rows_w = (offs_n % N).to(tl.int64)
        a_ptrs = a_src + rows_a[:, None] * stride_am + (k_start + offs_k)[None, :]   # [BM, BK]
        w_ptrs = w_src + rows_w[:, None] * stride_wn + (k_start + offs_k)[None, :]   # [BN, BK]
    _prefetch_rows(w_pf, (offs_n % N).to(tl.int64), stride_wn, k_start, K, PF_LINES, LINE, USE_GDC)
    gdc_wait_and_release(USE_GDC)
    if SWAP_AB:
        acc = tl.zeros((BN, BM), dtype=tl.float32)
    else:
        acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in range(0, k_len, BK):
        if USE_TMA:
            at = a_src.load([pid_m * BM, k_start + k])
            wt = w_src.load([pid_n * BN, k_start + k])
        elif EVEN_K:
            at = tl.load(a_ptrs)
            wt = tl.load(w_ptrs)
        else:
            kmask = (offs_k < k_len - k)[None, :]
            at = tl.load(a_ptrs, mask=kmask, other=0.0)
            wt = tl.load(w_ptrs, mask=kmask, other=0.0)
        if UPCAST:
            at = at.to(tl.float32)
            wt = wt.to(tl.float32)
        if SWAP_AB:
            acc = _mma(wt, tl.trans(at), acc, IEEE)
        else:
            acc = _mma(at, tl.trans(wt), acc, IEEE)
        if not USE_TMA:
            a_ptrs += BK
            w_ptrs += BK
    if SWAP_AB:
        om = offs_m.to(tl.int64)[None, :]
        on = offs_n[:, None]
    else:
        om = offs_m.to(tl.int64)[:, None]
        on = offs_n[None, :]
    mask = (om < M) & (on < N)
    if SPLIT:
        p_ptrs = p_ptr + (pid_k * M + om) * N + on
        tl.store(p_ptrs, acc, mask=mask)
    else:
        y = _round_add_residual(acc, r_ptr + om * stride_rm + on, mask, y_ptr.dtype.element_ty, HAS_RES)
        tl.store(y_ptr + om * stride_ym + on, y, mask=mask)


@triton.jit
def _splitk_reduce_kernel(
    p_ptr, r_ptr, y_ptr,                 # partials [S, M, N] fp32, residual [M, N], y [M, N]
    M, N, stride_rm, stride_ym,
    S: tl.constexpr, BLOCK: tl.constexpr, HAS_RES: tl.constexpr, USE_GDC: tl.constexpr = False,
):
    gdc_wait_and_release(USE_GDC)
    m = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    acc = _sum_partials(p_ptr, m, M, N, offs, mask, S, BLOCK)
    y = _round_add_residual(acc, r_ptr + m * stride_rm + offs, mask, y_ptr.dtype.element_ty, HAS_RES)
    tl.store(y_ptr + m * stride_ym + offs, y, mask=mask)


@triton.jit
def _splitk_reduce_norm_kernel(
    p_ptr, r_ptr, h_ptr, w_ptr, y_ptr,   # partials [S, M, N] fp32, residual [M, N], h [M, N], norm weight [N],
    M, N, eps,                           # y = rms_norm(h) [M, N]
    stride_rm, stride_hm, stride_ym,
    S: tl.constexpr, BLOCK: tl.constexpr, HAS_RES: tl.constexpr, USE_GDC: tl.constexpr = False,
):
    """The split-K reduction of one output row, the residual add, and the RMSNorm of the result: the
    reduce of ``_splitk_reduce_kernel`` followed by ``_rms_norm_kernel``, in one launch."""
    gdc_wait_and_release(USE_GDC)
    m = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < N
    acc = _sum_partials(p_ptr, m, M, N, offs, mask, S, BLOCK)       # the same sums as the reduce kernel
    dt = h_ptr.dtype.element_ty
    h = _round_add_residual(acc, r_ptr + m * stride_rm + offs, mask, dt, HAS_RES)
    tl.store(h_ptr + m * stride_hm + offs, h, mask=mask)
    hf = h.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(hf * hf, axis=0) / N + eps)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = (hf * rstd).to(dt).to(tl.float32) * w
    tl.store(y_ptr + m * stride_ym + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------- launchers
def _clamp_pow2(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, next_pow2(n)))


def gate_up_config(M: int, N: int, K: int, dtype: torch.dtype, interpret: Optional[bool] = None,
                   num_sms: Optional[int] = None) -> dict:
    """Meta-parameters of the gate-up kernel for ``x [M, K]`` and ``N = h`` activation columns.

    A deterministic function of the shape and the GPU's SM count (no autotuning), chosen from sweeps on an
    H200 at d=4096, h=12288 (scripts/bench_mlp_norm_rope.py --sweep; results/gemm_sweep/).
    ``M <= 64`` (decode): operands swapped so the weight rows fill the MMA's M dimension, plain loads
    (TMA measured the same there). Larger ``M``: one dot over the gate and up tiles of a TMA box
    (``ONE_DOT``), the tile shape that the fewest waves of programs make cheapest (:data:`_ONE_DOT_TILES`).
    ``num_sms``: the GPU's multiprocessor count (None: 132, an H100 / H200).
    Returns a new dict on every call (the values are memoised per shape).
    """
    return _gate_up_config(M, N, K, dtype, is_interpreter() if interpret is None else bool(interpret),
                           132 if num_sms is None else int(num_sms))


# The one-dot tile shapes above 64 rows, (BM, BN, num_warps, num_stages, cost of one wave of programs): one
# program per SM at a time (the pipeline's shared memory), so a launch of T programs takes ~ceil(T / SMs) waves.
# The costs are us per wave at d=4096 measured on an H200 (128 x 128: 52, from 512 and 1024 rows; 128 x 64: 29;
# 64 x 128 with 4 warps: 31); only their ratios matter. The model picks the fastest measured config at every
# row count tried, 96-1024 (results/gemm_sweep/one_dot_ragged_h200_03e8f3f.txt).
_ONE_DOT_TILES = ((128, 128, 8, 4, 52.0), (128, 64, 8, 6, 29.0), (64, 128, 4, 5, 31.0))


@memo_config
def _gate_up_config(M: int, N: int, K: int, dtype: torch.dtype, interpret: bool, num_sms: int) -> dict:
    if interpret:  # big blocks, small grids: the interpreter pays per program, not per element
        return dict(BM=_clamp_pow2(M, 16, 64), BN=_clamp_pow2(N, 16, 128), BK=_clamp_pow2(K, 16, 256),
                    SWAP_AB=False, TMA=False, num_warps=4, num_stages=1)
    if dtype == torch.float32:  # correctness path (IEEE fp32 dots), not tuned
        return dict(BM=_clamp_pow2(M, 16, 32), BN=32, BK=32, SWAP_AB=False, TMA=False, num_warps=4, num_stages=2)
    if M <= 32:  # smem (BM + 2 BN) * BK * 2 B * 5 stages = 200 KiB; 192 programs
        return dict(BM=_clamp_pow2(M, 16, 32), BN=64, BK=128, SWAP_AB=True, TMA=True, num_warps=4, num_stages=5)
    if M <= 64:  # 192 KiB
        return dict(BM=64, BN=64, BK=128, SWAP_AB=True, TMA=False, num_warps=4, num_stages=4)
    # One [BM, 2 BN] dot a K-step over a [2, BN, BK] gate-up box (ONE_DOT), where the two-dot kernel ran two [BM, BN]
    # dots: H200, 256 rows 86.7 vs 94.8 us, 1024 rows 312.7 vs 319.7 (results/gemm_sweep/one_dot_h200_8d1e65f.txt)
    BM, BN, nw, ns, _ = min(_ONE_DOT_TILES, key=lambda t: cdiv(cdiv(M, t[0]) * cdiv(N, t[1]), num_sms) * t[4])
    return dict(BM=BM, BN=BN, BK=64, SWAP_AB=False, TMA=True, ONE_DOT=True, num_warps=nw, num_stages=ns)


def down_config(M: int, N: int, K: int, dtype: torch.dtype, interpret: Optional[bool] = None) -> dict:
    """Meta-parameters of the down kernel for ``a [M, K] @ w[N, K].T`` (``SPLIT_K`` > 1: fp32 partials).

    ``SPLIT_K`` brings the program count to about 128 (decode rows; 256 above 64 rows) when the output has
    few tiles and each split keeps at least 8 K-blocks; at up to 32 rows a split also holds at most 32 K-blocks
    (power-of-two splits). LLaDA-8B: the down projection 4 splits at M=32, 2 at M=256, 1 at M=1024; the O
    projection 2 at M=32.
    Returns a new dict on every call (the values are memoised per shape).
    """
    return _down_config(M, N, K, dtype, is_interpreter() if interpret is None else bool(interpret))


@memo_config
def _down_config(M: int, N: int, K: int, dtype: torch.dtype, interpret: bool) -> dict:
    if interpret:
        return dict(BM=_clamp_pow2(M, 16, 64), BN=_clamp_pow2(N, 16, 128), BK=_clamp_pow2(K, 16, 256),
                    SWAP_AB=False, TMA=False, SPLIT_K=1, num_warps=4, num_stages=1)
    if dtype == torch.float32:
        return dict(BM=_clamp_pow2(M, 16, 32), BN=32, BK=32, SWAP_AB=False, TMA=False, SPLIT_K=1, num_warps=4,
                    num_stages=2)
    if M <= 64:
        cfg = dict(BM=_clamp_pow2(M, 16, 64), BN=64, BK=128, SWAP_AB=True, TMA=False, num_warps=4, num_stages=4)
    elif M <= 256:
        cfg = dict(BM=64, BN=128, BK=64, SWAP_AB=False, TMA=True, num_warps=4, num_stages=4)
    else:
        cfg = dict(BM=128, BN=128, BK=64, SWAP_AB=False, TMA=True, num_warps=8, num_stages=3)
    tiles = cdiv(M, cfg["BM"]) * cdiv(N, cfg["BN"])
    # about one program per SM at decode sizes (with PDL, two per SM measured slower: 128 vs 256 programs
    # for the O and down projections at M = 32), two above
    target = 128 if M <= 64 else 256
    k_blocks = cdiv(K, cfg["BK"])
    max_split = cdiv(k_blocks, 8)        # every split keeps at least 8 K-blocks
    cfg["SPLIT_K"] = max(1, min(max_split, target // tiles))
    if M <= 32:
        # long K at 32 rows: at most 32 K-blocks a split (a power of two of splits). LLaDA-8B's down projection
        # (96 K-blocks) gets 4 splits, 256 programs: batch-1 block step 4.426 / 4.431 / 4.435 ms vs 4.445-4.447
        # with 2, alternating on one H200 lease; 3 or 6 splits (uneven grids) and 4 for the O projection (32
        # K-blocks) were slower (results/bench_decode/down_split_ab_h200_5d9fd17.txt)
        cfg["SPLIT_K"] = max(cfg["SPLIT_K"], min(max_split, next_pow2(cdiv(k_blocks, 32))))
    return cfg


def _flags(dtype: torch.dtype) -> dict:
    interp = is_interpreter()
    return dict(UPCAST=interp and dtype == torch.bfloat16, IEEE=dtype == torch.float32 and not interp)


# Bytes of each weight row a program pulls into L2 before gdc_wait (PDL). LLaDA-8B block decode, batch 1, H200
# (ms per step, two runs each): 0 B 4.351 / 4.344, 128 B 4.312 / 4.310, 256 B 4.297 / 4.302, 512 B 4.316,
# 1 KiB 4.375, 2 KiB 4.493, 4 KiB 4.813, 8 KiB 5.432 (deep prefetches compete with the running kernel). Absolute
# values 3.1% low (bench_decode's window before be219a1), the same for every row. Measured with the plain L2
# hint; with the evict_last hint used now (kernels._common.prefetch_l2) 512 B and 1 KiB are slower as well
# (results/bench_decode/prefetch_hint_ab_h200_7a84c1f.txt).
PREFETCH_BYTES = 256


def _pdl(t: torch.Tensor, k_len: int) -> dict:  # t: the [rows, K] activation
    """PDL launch options and the weight-prefetch depth: the first ``min(k_len, PREFETCH_BYTES)`` of
    each of the program's weight rows, in 128-byte lines (a power of two of them)."""
    return pdl_prefetch(t, t.shape[0], k_len, PREFETCH_BYTES)


def _tma_ok(*ts: torch.Tensor) -> bool:
    """TMA descriptors need 16-byte aligned bases and row strides and a contiguous last dim."""
    return all(t.data_ptr() % 16 == 0 and t.stride(-1) == 1 and (t.stride(0) * t.element_size()) % 16 == 0
               for t in ts)


def _sources(cfg: dict, pairs):
    """Kernel operands: the tensors themselves, or TMA descriptors of the given boxes."""
    if cfg.get("TMA", False) and _tma_ok(*(t for t, _ in pairs)):
        from triton.tools.tensor_descriptor import TensorDescriptor
        return True, [TensorDescriptor.from_tensor(t, list(box)) for t, box in pairs]
    return False, [t for t, _ in pairs]


def _launch_gate_up(x: torch.Tensor, w_gate_up: torch.Tensor, act: torch.Tensor, config: Optional[dict] = None):
    """act[M, h] = silu(x @ Wg.T) * (x @ Wu.T) with the reference's roundings (inputs already validated)."""
    M, K = x.shape
    H = w_gate_up.shape[0] // 2
    if config is None:
        # the SM count matters above 64 rows only (the decode path skips the query)
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda and M > 64 else None
        cfg = gate_up_config(M, H, K, x.dtype, num_sms=sms)
    else:
        cfg = dict(config)
    BM, BN, BK = cfg["BM"], cfg["BN"], cfg["BK"]
    if cfg.get("ONE_DOT", False) and (cfg["SWAP_AB"] or not cfg.get("TMA", False)):
        raise ValueError(f"config: ONE_DOT needs TMA=True and SWAP_AB=False, got {cfg}")
    one_dot = cfg.get("ONE_DOT", False) and _tma_ok(x, w_gate_up)
    if one_dot:  # the weight as [2, H, K] (gate rows, up rows): one box holds a gate tile and its up tile
        from triton.tools.tensor_descriptor import TensorDescriptor
        sw = w_gate_up.stride(0)
        use_tma, w_src = True, TensorDescriptor(w_gate_up, [2, H, K], [H * sw, sw, 1], [2, BN, BK])
        # x through TMA only when every box is whole: boxes that run past the last row made the kernel up to 1.5x
        # slower (H200, 160 rows: 136.5 vs 87.7 us with pointer loads; results/gemm_sweep/one_dot_ragged_h200_03e8f3f.txt)
        x_tma = bool(cfg.get("X_TMA", M % BM == 0))
        x_src = TensorDescriptor.from_tensor(x, [BM, BK]) if x_tma else x
    else:
        x_tma = True  # unused outside ONE_DOT
        use_tma, (x_src, w_src) = _sources(cfg, [(x, (BM, BK)), (w_gate_up, (BN, BK))])
    grid = (cdiv(M, BM) * cdiv(H, BN),)
    _gate_up_silu_kernel[grid](
        x_src, w_src, act, w_gate_up, M, H, K,
        x.stride(0), w_gate_up.stride(0), act.stride(0),
        BM=BM, BN=BN, BK=BK, SWAP_AB=cfg["SWAP_AB"], USE_TMA=use_tma, EVEN_K=(K % BK == 0), **_flags(x.dtype),
        ONE_DOT=one_dot, X_TMA=x_tma, **_pdl(x, K), num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return act


_FUSED_NORM_MAX = 8192  # widest row the reduce + norm kernel holds in registers


def _launch_down(act: torch.Tensor, w_down: torch.Tensor, residual: Optional[torch.Tensor], out: torch.Tensor,
                 config: Optional[dict] = None, partials: Optional[torch.Tensor] = None, norm=None):
    """out[M, d] = (residual +) act @ w_down.T, split over K when the config says so.

    norm: optional ``(weight, eps, y)``: also ``y = rms_norm(out)`` (rows of ``y`` as ``out``). With a
    split-K GEMM the norm is folded into the reduction kernel (no extra launch); otherwise it is one
    ``rms_norm`` launch after the GEMM."""
    M, K = act.shape
    N = w_down.shape[0]
    cfg = down_config(M, N, K, act.dtype) if config is None else dict(config)
    BM, BN, BK = cfg["BM"], cfg["BN"], cfg["BK"]
    k_per_split = cdiv(cdiv(K, BK), max(1, cfg["SPLIT_K"])) * BK
    split = cdiv(K, k_per_split)        # no empty splits
    has_res = residual is not None
    r = residual if has_res else out
    if split > 1:
        if partials is None:
            partials = torch.empty((split, M, N), device=act.device, dtype=torch.float32)
        elif partials.shape[0] < split or tuple(partials.shape[1:]) != (M, N) or not partials.is_contiguous():
            raise ValueError(f"partials must be a contiguous fp32 [>= {split}, {M}, {N}] tensor, "
                             f"got {tuple(partials.shape)}")
    p = partials if split > 1 else out
    use_tma, (a_src, w_src) = _sources(cfg, [(act, (BM, BK)), (w_down, (BN, BK))])
    grid = (cdiv(M, BM) * cdiv(N, BN), split)
    _down_kernel[grid](
        a_src, w_src, r, out, p, w_down, M, N, K, k_per_split,
        act.stride(0), w_down.stride(0), r.stride(0), out.stride(0),
        BM=BM, BN=BN, BK=BK, SWAP_AB=cfg["SWAP_AB"], USE_TMA=use_tma, EVEN_K=(K % BK == 0), SPLIT=split > 1,
        HAS_RES=has_res, **_flags(act.dtype), **_pdl(act, k_per_split),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    pdl = pdl_launch(act, M)
    if split > 1 and norm is not None and N <= _FUSED_NORM_MAX:
        nw, eps, y = norm
        block = next_pow2(N)
        # one program per row, latency-bound: 16 warps at d = 4096 (LLaDA-8B batch-1 block step on an H200,
        # 4.496 / 4.497 ms with 16 warps vs 4.516 / 4.515 with 8, alternating; results/bench_decode/ab_rn_warps_h200_04cbe57.txt)
        _splitk_reduce_norm_kernel[(M,)](
            partials, r, out, nw, y, M, N, float(eps), r.stride(0), out.stride(0), y.stride(0),
            S=split, BLOCK=block, HAS_RES=has_res, num_warps=1 if is_interpreter() else min(16, max(4, block // 256)),
            USE_GDC=bool(pdl), **pdl,
        )
        return out
    if split > 1:
        block = min(1024, next_pow2(N)) if not is_interpreter() else _clamp_pow2(N, 16, 1 << 16)
        _splitk_reduce_kernel[(M, cdiv(N, block))](
            partials, r, out, M, N, r.stride(0), out.stride(0),
            S=split, BLOCK=block, HAS_RES=has_res, num_warps=4, USE_GDC=bool(pdl), **pdl,
        )
    if norm is not None:
        from llada_triton.kernels.norm import _launch as _norm_launch
        nw, eps, y = norm
        _norm_launch(out, None, nw, y, None, eps)
    return out


def _validate(x, w_gate_up, w_down, residual, out):
    check_tensor("x", x, dtypes=_DTYPES)
    if x.ndim < 2:
        raise ValueError(f"x must be [..., d] with at least 2 dims, got shape {tuple(x.shape)}")
    d = x.shape[-1]
    check_tensor("w_gate_up", w_gate_up, ndim=2, dtypes=(x.dtype,))
    check_tensor("w_down", w_down, ndim=2, dtypes=(x.dtype,))
    if w_gate_up.shape[1] != d or w_gate_up.shape[0] % 2 or w_gate_up.shape[0] == 0:
        raise ValueError(f"w_gate_up must be [2h, d={d}] with h >= 1, got {tuple(w_gate_up.shape)}")
    h = w_gate_up.shape[0] // 2
    if tuple(w_down.shape) != (d, h):
        raise ValueError(f"w_down must be [d, h] = [{d}, {h}], got {tuple(w_down.shape)}")
    for name, t in (("w_gate_up", w_gate_up), ("w_down", w_down)):
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device}, x on {x.device}")
    for name, t in (("residual", residual), ("out", out)):
        if t is None:
            continue
        check_tensor(name, t, dtypes=(x.dtype,))
        if t.shape != x.shape or t.device != x.device:
            raise ValueError(f"{name} must be {tuple(x.shape)} on {x.device}, got {tuple(t.shape)} on {t.device}")
    return d, h


_rows = as_rows


def _norm_target(norm_weight, eps, like: torch.Tensor, norm_out):
    """Validate the fused RMSNorm's arguments; return ``(weight, eps, y)`` with ``y`` shaped like ``like``."""
    d = like.shape[-1]
    check_tensor("norm_weight", norm_weight, ndim=1, dtypes=_DTYPES)
    if norm_weight.shape[0] != d or norm_weight.device != like.device:
        raise ValueError(f"norm_weight must be [{d}] on {like.device}, got {tuple(norm_weight.shape)} "
                         f"on {norm_weight.device}")
    eps = check_eps(eps)
    y_dtype = torch.promote_types(norm_weight.dtype, like.dtype)
    if norm_out is None:
        norm_out = torch.empty(like.shape, device=like.device, dtype=y_dtype)
    else:
        check_tensor("norm_out", norm_out, dtypes=(y_dtype,))
        if norm_out.shape != like.shape or norm_out.device != like.device:
            raise ValueError(f"norm_out must be {tuple(like.shape)} on {like.device}, got "
                             f"{tuple(norm_out.shape)} on {norm_out.device}")
    return norm_weight, eps, norm_out


# ------------------------------------------------------------------------------------------- public
def swiglu_mlp(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor,
               residual: Optional[torch.Tensor] = None, *, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Fused SwiGLU MLP: ``residual + (silu(x @ Wg.T) * (x @ Wu.T)) @ w_down.T`` in ``x.dtype``.

    x: ``[..., d]`` (fp16, bf16 or fp32; last dim contiguous, leading dims viewable as rows);
    w_gate_up: ``[2h, d]``, rows ``[0, h)`` the gate and ``[h, 2h)`` the up projection; w_down: ``[d, h]``
    (both in ``x.dtype``, last dim contiguous); residual: ``[..., d]`` like ``x`` or None;
    out: optional preallocated ``[..., d]`` output (may alias ``residual``).
    Two launches (three when the down projection is split over K): the ``[M, 2h]`` gate-up product is
    never written, only the ``[M, h]`` activation. Deterministic. Returns ``[..., d]`` in ``x.dtype``.
    See :func:`llada_triton.kernels.reference.swiglu_mlp_ref` for the numerics.
    Speed (H200, LLaDA-8B sizes, under CUDA graphs): faster than cuBLAS + :func:`silu_mul` up to 128 rows; at
    160-384 rows cuBLAS + :func:`silu_mul` is up to 1.33x faster; at 512 and 1024 rows they are within 2%
    (results/gemm_sweep/one_dot_ragged_h200_03e8f3f.txt). ``llada.ops`` runs cuBLAS + :func:`silu_mul` above 64
    rows.
    """
    return _mlp(x, w_gate_up, w_down, residual, out)


def swiglu_mlp_rms_norm(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor,
                        residual: Optional[torch.Tensor], norm_weight: torch.Tensor, eps: float, *,
                        out: Optional[torch.Tensor] = None, norm_out: Optional[torch.Tensor] = None):
    """:func:`swiglu_mlp` followed by the RMSNorm of its output (in LLaDA: the next layer's attention
    norm, or the final norm). Returns ``(y, h)``: ``h`` the MLP output (``out``), ``y`` its norm with
    ``norm_weight`` ``[d]`` (dtype ``promote_types(norm_weight.dtype, x.dtype)``; ``norm_out``
    preallocates it). When the down projection is split over K, the norm runs inside the split-K
    reduction (no launch of its own). See :func:`llada_triton.kernels.reference.swiglu_mlp_rms_norm_ref`.
    """
    d, h = _validate(x, w_gate_up, w_down, residual, out)
    y = torch.empty_like(x, memory_format=torch.contiguous_format) if out is None else out
    norm = _norm_target(norm_weight, eps, y, norm_out)
    _mlp_launch(x, w_gate_up, w_down, residual, y, d, h, norm)
    return norm[2], y


def _mlp(x, w_gate_up, w_down, residual, out):
    d, h = _validate(x, w_gate_up, w_down, residual, out)
    return _mlp_launch(x, w_gate_up, w_down, residual, out, d, h)


def _mlp_launch(x, w_gate_up, w_down, residual, out, d, h, norm=None):
    """Allocate and launch (arguments already validated by :func:`_validate`)."""
    x2 = _rows("x", x, d)
    M = x2.shape[0]
    y = torch.empty_like(x, memory_format=torch.contiguous_format) if out is None else out
    if M == 0:
        return y
    act = torch.empty((M, h), device=x.device, dtype=x.dtype)
    _launch_gate_up(x2, w_gate_up, act)
    _launch_down(act, w_down, None if residual is None else _rows("residual", residual, d), _rows("out", y, d),
                 norm=None if norm is None else (norm[0], norm[1], _rows("norm_out", norm[2], d)))
    return y


def linear(x: torch.Tensor, w: torch.Tensor, residual: Optional[torch.Tensor] = None, *,
           out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``residual + x @ w.T`` (or ``x @ w.T``) with the decode-shaped GEMM of the down projection.

    x: ``[..., K]`` (fp16/bf16/fp32, rows viewable); w: ``[N, K]`` in ``x.dtype``; residual: ``[..., N]``
    or None. The product is rounded to ``x.dtype`` before the residual add (as ``residual + F.linear``).
    Split over K when the output has few tiles, with a fixed-order reduction (deterministic).
    """
    return _linear(x, w, residual, out)[0]


def linear_rms_norm(x: torch.Tensor, w: torch.Tensor, residual: Optional[torch.Tensor],
                    norm_weight: torch.Tensor, eps: float, *, out: Optional[torch.Tensor] = None,
                    norm_out: Optional[torch.Tensor] = None):
    """:func:`linear` followed by the RMSNorm of its output (in LLaDA: the attention output projection
    and the MLP's norm). Returns ``(y, h)``: ``h = residual + x @ w.T`` (``out``), ``y`` its norm with
    ``norm_weight`` ``[N]``. With a split-K GEMM the norm runs inside the reduction kernel (one launch
    fewer). See :func:`llada_triton.kernels.reference.linear_rms_norm_ref`.
    """
    h, norm = _linear(x, w, residual, out, (norm_weight, eps, norm_out))
    return norm[2], h


def _check_out(out, x, w):
    check_tensor("out", out, dtypes=(x.dtype,))
    shape = (*x.shape[:-1], w.shape[0])
    if out.shape != shape or out.device != x.device:
        raise ValueError(f"out must be {shape} on {x.device}, got {tuple(out.shape)} on {out.device}")


def _linear(x, w, residual, out, norm_args=None):
    """Validate, allocate and launch; ``norm_args``: ``(norm_weight, eps, norm_out)`` of a fused RMSNorm.
    Returns ``(out, norm)`` with ``norm`` the validated ``(weight, eps, y)`` or None."""
    check_tensor("x", x, dtypes=_DTYPES)
    check_tensor("w", w, ndim=2, dtypes=(x.dtype,))
    K = x.shape[-1]
    if w.shape[1] != K or w.device != x.device:
        raise ValueError(f"w must be [N, K={K}] on {x.device}, got {tuple(w.shape)} on {w.device}")
    N = w.shape[0]
    lead = x.shape[:-1]
    x2 = _rows("x", x, K)
    r2 = None
    if residual is not None:
        check_tensor("residual", residual, dtypes=(x.dtype,))
        if residual.shape != (*lead, N) or residual.device != x.device:
            raise ValueError(f"residual must be {(*lead, N)} on {x.device}, got {tuple(residual.shape)}")
        r2 = _rows("residual", residual, N)
    if out is None:
        out = torch.empty((*lead, N), device=x.device, dtype=x.dtype)
    else:
        _check_out(out, x, w)
    norm = None if norm_args is None else _norm_target(norm_args[0], norm_args[1], out, norm_args[2])
    o2 = _rows("out", out, N)
    if x2.shape[0]:
        _launch_down(x2, w, r2, o2, norm=None if norm is None else (norm[0], norm[1], _rows("norm_out", norm[2], N)))
    return out, norm


def silu_mul(gate_up: torch.Tensor, *, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """SwiGLU's activation on a fused gate-up product: ``silu(gate_up[..., :h]) * gate_up[..., h:]``.

    gate_up: ``[..., 2h]`` (fp16, bf16 or fp32; last dim contiguous, leading dims viewable as rows), e.g. the
    output of one cuBLAS GEMM over the fused ``[2h, d]`` weight; out: optional preallocated ``[..., h]``.
    One launch, one read of ``gate_up`` and one write of the result (torch's ``F.silu(g) * u`` takes two
    launches and reads ``[..., h]`` twice more). Numerics: torch's (``silu`` in fp32, rounded to the dtype;
    the product in fp32, rounded), as in :func:`swiglu_mlp`'s epilogue. See
    :func:`llada_triton.kernels.reference.silu_mul_ref`.
    """
    check_tensor("gate_up", gate_up, dtypes=_DTYPES)
    if gate_up.ndim < 1 or gate_up.shape[-1] % 2 or gate_up.shape[-1] == 0:
        raise ValueError(f"gate_up must be [..., 2h] with h >= 1, got shape {tuple(gate_up.shape)}")
    h = gate_up.shape[-1] // 2
    shape = (*gate_up.shape[:-1], h)
    if out is None:
        out = torch.empty(shape, device=gate_up.device, dtype=gate_up.dtype)
    else:
        check_tensor("out", out, dtypes=(gate_up.dtype,))
        if tuple(out.shape) != shape or out.device != gate_up.device:
            raise ValueError(f"out must be {shape} on {gate_up.device}, got {tuple(out.shape)} on {out.device}")
    g2, a2 = _rows("gate_up", gate_up, 2 * h), _rows("out", out, h)
    M = g2.shape[0]
    if M:
        block = _clamp_pow2(h, 16, 1 << 16) if is_interpreter() else min(2048, next_pow2(h))
        _silu_mul_kernel[(M, cdiv(h, block))](
            g2, a2, h, g2.stride(0), a2.stride(0), BLOCK=block,
            num_warps=1 if is_interpreter() else max(1, min(8, block // 256)), **gdc_options(g2, M))
    return out
