"""The decode-shaped GEMM ``residual + x @ w.T``: :func:`linear` (``_linear_kernel``, split over K when the output
has few tiles, then ``_splitk_reduce_kernel``) and :func:`linear_rms_norm` (the reduction also applies the next
RMSNorm: ``_splitk_reduce_norm_kernel``). fp32 accumulation, the product rounded to ``x.dtype`` before the
residual add (torch's ``residual + F.linear(x, w)``), split-K partials summed in a fixed order (deterministic);
fp32 inputs use IEEE dots (no TF32). Reference: :func:`llada_triton.kernels.reference.linear_rms_norm_ref`.

Also the K-loop pieces every weight-streaming GEMM here shares (gate-up, fused QKV, LM heads, MoE experts):
:func:`load_k`, :func:`dot_step` (optionally with the weight rows as the MMA's M dimension), :func:`dot_loop`,
:func:`acc_zeros`, :func:`tma_ok` / :func:`tma_sources`.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from llada_triton.kernels._common import (DTYPES, as_rows, cdiv, check_like, check_out, check_tensor, clamp_pow2,
                                          dot_flags, gdc_options, gdc_wait_and_release, is_interpreter, memo_config,
                                          next_pow2, prefetch_weight_rows)
from llada_triton.kernels.norm import launch_rms_norm, norm_target

__all__ = ["linear", "linear_rms_norm"]


@triton.jit
def load_k(src, ptrs, row0, k, k_left, BK: tl.constexpr, USE_TMA: tl.constexpr, EVEN_K: tl.constexpr,
           UPCAST: tl.constexpr):
    """A ``[rows, BK]`` K-tile: descriptor ``src``'s box at ``(row0, k)``, or ``ptrs`` masked to ``k_left`` columns."""
    if USE_TMA:
        t = src.load([row0, k])
    elif EVEN_K:
        t = tl.load(ptrs)
    else:
        t = tl.load(ptrs, mask=(tl.arange(0, BK) < k_left)[None, :], other=0.0)
    if UPCAST:
        t = t.to(tl.float32)
    return t


@triton.jit
def mma(a, b, acc, IEEE: tl.constexpr):
    """``acc + a @ b`` (IEEE fp32 products when ``IEEE``, else the dtype's default)."""
    if IEEE:
        out = tl.dot(a, b, acc, input_precision="ieee")
    else:
        out = tl.dot(a, b, acc)
    return out


@triton.jit
def dot_step(a, w, acc, SWAP_AB: tl.constexpr, IEEE: tl.constexpr):
    """``acc + a @ w.T``, or with ``SWAP_AB`` ``acc + w @ a.T`` (weight rows fill the MMA's M; ``a`` is tiny)."""
    if SWAP_AB:
        out = mma(w, tl.trans(a), acc, IEEE)
    else:
        out = mma(a, tl.trans(w), acc, IEEE)
    return out


@triton.jit
def acc_zeros(BM: tl.constexpr, BN: tl.constexpr, SWAP_AB: tl.constexpr):
    """The fp32 accumulator of a ``[BM, BN]`` output tile, laid out ``[BN, BM]`` with ``SWAP_AB``."""
    if SWAP_AB:
        acc = tl.zeros((BN, BM), dtype=tl.float32)
    else:
        acc = tl.zeros((BM, BN), dtype=tl.float32)
    return acc


@triton.jit
def dot_loop(a_ptr, a_ptrs, w_ptr, w_ptrs, K, acc, BK: tl.constexpr, EVEN_K: tl.constexpr, UPCAST: tl.constexpr,
             SWAP_AB: tl.constexpr, IEEE: tl.constexpr):
    """``acc`` plus every K-step of ``a @ w.T`` from ``[rows, BK]`` pointer tiles; ``SWAP_AB`` as :func:`dot_step`."""
    for k in range(0, K, BK):
        a = load_k(a_ptr, a_ptrs, 0, k, K - k, BK, False, EVEN_K, UPCAST)
        w = load_k(w_ptr, w_ptrs, 0, k, K - k, BK, False, EVEN_K, UPCAST)
        acc = dot_step(a, w, acc, SWAP_AB, IEEE)
        a_ptrs += BK
        w_ptrs += BK
    return acc


@triton.jit
def tile_offsets(M, BM: tl.constexpr, BN: tl.constexpr):
    """``(pid_m, pid_n, offs_m, offs_n)`` of this program's tile; m fastest: weight tiles are shared in L2."""
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BM)
    pid_m = pid % num_m
    pid_n = pid // num_m
    return pid_m, pid_n, pid_m * BM + tl.arange(0, BM), pid_n * BN + tl.arange(0, BN)


@triton.jit
def out_offsets(offs_m, offs_n, M, N, SWAP_AB: tl.constexpr):
    """``(rows, cols, mask)`` of an output tile laid out ``[BM, BN]``, or ``[BN, BM]`` with ``SWAP_AB``."""
    if SWAP_AB:
        om = offs_m.to(tl.int64)[None, :]
        on = offs_n[:, None]
    else:
        om = offs_m.to(tl.int64)[:, None]
        on = offs_n[None, :]
    return om, on, (om < M) & (on < N)


@triton.jit
def round_add_residual(acc, r_ptrs, mask, dt: tl.constexpr, HAS_RES: tl.constexpr):
    """``acc`` rounded to ``dt``, then ``residual + y`` in fp32, rounded (torch's ``residual + F.linear(...)``)."""
    y = acc.to(dt)
    if HAS_RES:
        r = tl.load(r_ptrs, mask=mask, other=0.0)
        y = (r.to(tl.float32) + y.to(tl.float32)).to(dt)
    return y


@triton.jit
def _sum_partials(p_ptr, m, M, N, offs, mask, S: tl.constexpr, BLOCK: tl.constexpr):
    """Row ``m`` of the split-K partials ``[S, M, N]`` summed in a fixed order (unrolled: the loads overlap)."""
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in tl.static_range(S):
        acc += tl.load(p_ptr + (s * M + m) * N + offs, mask=mask, other=0.0)
    return acc


@triton.jit
def _linear_kernel(
    a_src, w_src, r_ptr, y_ptr, p_ptr,   # a [M, K], w [N, K] (pointers or TMA descriptors), residual [M, N],
    M, N, K, K_PER_SPLIT,                # y [M, N], partials [S, M, N] fp32
    stride_am, stride_wn, stride_rm, stride_ym,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    SWAP_AB: tl.constexpr, USE_TMA: tl.constexpr, EVEN_K: tl.constexpr,
    SPLIT: tl.constexpr,                 # True: write fp32 partials (reduced by _splitk_reduce_kernel)
    HAS_RES: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr, USE_GDC: tl.constexpr = False,
):
    pid_m, pid_n, offs_m, offs_n = tile_offsets(M, BM, BN)
    pid_k = tl.program_id(1)
    k_start = pid_k * K_PER_SPLIT
    k_len = tl.minimum(K - k_start, K_PER_SPLIT)   # K_PER_SPLIT % BK == 0: only the last split has a tail
    if USE_TMA:
        a_ptrs = None
        w_ptrs = None
    else:  # wrap out-of-range rows instead of masking them: loads stay unpredicated; stores are masked
        offs_k = k_start + tl.arange(0, BK)
        a_ptrs = a_src + (offs_m % M).to(tl.int64)[:, None] * stride_am + offs_k[None, :]   # [BM, BK]
        w_ptrs = w_src + (offs_n % N).to(tl.int64)[:, None] * stride_wn + offs_k[None, :]   # [BN, BK]
        prefetch_weight_rows(w_src, offs_n % N, stride_wn, k_start, K, USE_GDC)
    gdc_wait_and_release(USE_GDC)
    acc = acc_zeros(BM, BN, SWAP_AB)
    for k in range(0, k_len, BK):
        at = load_k(a_src, a_ptrs, pid_m * BM, k_start + k, k_len - k, BK, USE_TMA, EVEN_K, UPCAST)
        wt = load_k(w_src, w_ptrs, pid_n * BN, k_start + k, k_len - k, BK, USE_TMA, EVEN_K, UPCAST)
        acc = dot_step(at, wt, acc, SWAP_AB, IEEE)
        if not USE_TMA:
            a_ptrs += BK
            w_ptrs += BK
    om, on, mask = out_offsets(offs_m, offs_n, M, N, SWAP_AB)
    if SPLIT:
        tl.store(p_ptr + (pid_k * M + om) * N + on, acc, mask=mask)
    else:
        y = round_add_residual(acc, r_ptr + om * stride_rm + on, mask, y_ptr.dtype.element_ty, HAS_RES)
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
    y = round_add_residual(acc, r_ptr + m * stride_rm + offs, mask, y_ptr.dtype.element_ty, HAS_RES)
    tl.store(y_ptr + m * stride_ym + offs, y, mask=mask)


@triton.jit
def _splitk_reduce_norm_kernel(
    p_ptr, r_ptr, h_ptr, w_ptr, y_ptr,   # partials [S, M, N] fp32, residual [M, N], h [M, N], norm weight [N],
    M, N, eps,                           # y = rms_norm(h) [M, N]
    stride_rm, stride_hm, stride_ym,
    S: tl.constexpr, BLOCK: tl.constexpr, HAS_RES: tl.constexpr, USE_GDC: tl.constexpr = False,
):
    """``_splitk_reduce_kernel`` then ``norm._rms_norm_kernel`` on one output row, in one launch."""
    gdc_wait_and_release(USE_GDC)
    m = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < N
    acc = _sum_partials(p_ptr, m, M, N, offs, mask, S, BLOCK)       # the same sums as the reduce kernel
    dt = h_ptr.dtype.element_ty
    h = round_add_residual(acc, r_ptr + m * stride_rm + offs, mask, dt, HAS_RES)
    tl.store(h_ptr + m * stride_hm + offs, h, mask=mask)
    hf = h.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(hf * hf, axis=0) / N + eps)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = (hf * rstd).to(dt).to(tl.float32) * w
    tl.store(y_ptr + m * stride_ym + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@memo_config
def linear_config(M: int, N: int, K: int, dtype: torch.dtype, interpret: Optional[bool] = None) -> dict:
    """Meta-parameters of ``a [M, K] @ w[N, K].T`` (a new dict per call, memoised per shape; results/decisions.md).
    ``SPLIT_K`` brings the programs to about 128 (256 above 64 rows) while each split keeps >= 8 K-blocks; up to
    32 rows a split also holds at most 32 K-blocks."""
    interpret = is_interpreter() if interpret is None else interpret
    if interpret:  # big blocks, small grids: the interpreter pays per program, not per element
        return dict(BM=clamp_pow2(M, 16, 64), BN=clamp_pow2(N, 16, 128), BK=clamp_pow2(K, 16, 256),
                    SWAP_AB=False, TMA=False, SPLIT_K=1, num_warps=4, num_stages=1)
    if dtype == torch.float32:  # correctness path (IEEE fp32 dots), not tuned
        return dict(BM=clamp_pow2(M, 16, 32), BN=32, BK=32, SWAP_AB=False, TMA=False, SPLIT_K=1, num_warps=4,
                    num_stages=2)
    if M <= 64:
        cfg = dict(BM=clamp_pow2(M, 16, 64), BN=64, BK=128, SWAP_AB=True, TMA=False, num_warps=4, num_stages=4)
    elif M <= 256:
        cfg = dict(BM=64, BN=128, BK=64, SWAP_AB=False, TMA=True, num_warps=4, num_stages=4)
    else:
        cfg = dict(BM=128, BN=128, BK=64, SWAP_AB=False, TMA=True, num_warps=8, num_stages=3)
    tiles = cdiv(M, cfg["BM"]) * cdiv(N, cfg["BN"])
    target = 128 if M <= 64 else 256     # about one program per SM at decode sizes, two above
    k_blocks = cdiv(K, cfg["BK"])
    max_split = cdiv(k_blocks, 8)        # every split keeps at least 8 K-blocks
    cfg["SPLIT_K"] = max(1, min(max_split, target // tiles))
    if M <= 32:  # long K at 32 rows: at most 32 K-blocks a split (results/decisions.md)
        cfg["SPLIT_K"] = max(cfg["SPLIT_K"], min(max_split, next_pow2(cdiv(k_blocks, 32))))
    return cfg


def tma_ok(*ts: torch.Tensor) -> bool:
    """TMA descriptors need 16-byte aligned bases and row strides and a contiguous last dim."""
    return all(t.data_ptr() % 16 == 0 and t.stride(-1) == 1 and (t.stride(0) * t.element_size()) % 16 == 0 for t in ts)


def tma_sources(cfg: dict, pairs):
    """``(use_tma, [src, ...])``: TMA descriptors of the boxes when ``cfg["TMA"]`` and the tensors allow, else them."""
    if cfg.get("TMA", False) and tma_ok(*(t for t, _ in pairs)):
        from triton.tools.tensor_descriptor import TensorDescriptor
        return True, [TensorDescriptor.from_tensor(t, list(box)) for t, box in pairs]
    return False, [t for t, _ in pairs]


_FUSED_NORM_MAX = 8192  # widest row the reduce + norm kernel holds in registers


def _split_partials(M: int, N: int, K: int, BK: int, split_k: int, partials, device):
    """``(k_per_split, split, partials)``: no empty splits; the fp32 ``[split, M, N]`` buffer when split."""
    k_per_split = cdiv(cdiv(K, BK), max(1, split_k)) * BK
    split = cdiv(K, k_per_split)
    if split > 1:
        if partials is None:
            partials = torch.empty((split, M, N), device=device, dtype=torch.float32)
        elif partials.shape[0] < split or tuple(partials.shape[1:]) != (M, N) or not partials.is_contiguous():
            raise ValueError(f"partials must be a contiguous fp32 [>= {split}, {M}, {N}] tensor, "
                             f"got {tuple(partials.shape)}")
    return k_per_split, split, partials


def launch_linear(act: torch.Tensor, w: torch.Tensor, residual: Optional[torch.Tensor], out: torch.Tensor,
                  config: Optional[dict] = None, partials: Optional[torch.Tensor] = None, norm=None):
    """``out[M, N] = (residual +) act @ w.T`` on validated 2D row views; ``config`` / ``partials``: a
    :func:`linear_config` dict and the split-K buffer. norm: optional ``(weight, eps, y)``: also
    ``y = rms_norm(out)``, inside the split-K reduction when there is one, else one norm launch."""
    M, K = act.shape
    N = w.shape[0]
    cfg = linear_config(M, N, K, act.dtype) if config is None else dict(config)
    BM, BN, BK = cfg["BM"], cfg["BN"], cfg["BK"]
    k_per_split, split, partials = _split_partials(M, N, K, BK, cfg["SPLIT_K"], partials, act.device)
    has_res = residual is not None
    r = residual if has_res else out
    use_tma, (a_src, w_src) = tma_sources(cfg, [(act, (BM, BK)), (w, (BN, BK))])
    pdl = gdc_options(act, M)
    _linear_kernel[(cdiv(M, BM) * cdiv(N, BN), split)](
        a_src, w_src, r, out, partials if split > 1 else out, M, N, K, k_per_split,
        act.stride(0), w.stride(0), r.stride(0), out.stride(0),
        BM=BM, BN=BN, BK=BK, SWAP_AB=cfg["SWAP_AB"], USE_TMA=use_tma, EVEN_K=(K % BK == 0), SPLIT=split > 1,
        HAS_RES=has_res, **dot_flags(act.dtype), **pdl, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    if split > 1 and norm is not None and N <= _FUSED_NORM_MAX:
        nw, eps, y = norm
        block = next_pow2(N)
        _splitk_reduce_norm_kernel[(M,)](  # one program per row, latency-bound: up to 16 warps (results/decisions.md)
            partials, r, out, nw, y, M, N, float(eps), r.stride(0), out.stride(0), y.stride(0),
            S=split, BLOCK=block, HAS_RES=has_res, num_warps=1 if is_interpreter() else min(16, max(4, block // 256)),
            **pdl,
        )
        return out
    if split > 1:
        block = min(1024, next_pow2(N)) if not is_interpreter() else clamp_pow2(N, 16, 1 << 16)
        _splitk_reduce_kernel[(M, cdiv(N, block))](
            partials, r, out, M, N, r.stride(0), out.stride(0),
            S=split, BLOCK=block, HAS_RES=has_res, num_warps=4, **pdl,
        )
    if norm is not None:
        launch_rms_norm(out, None, norm[0], norm[2], None, norm[1])
    return out


def run_linear(x, w, residual, out, norm_args=None, pre=None):
    """Check ``residual`` / ``out`` ``[..., N]``, allocate, launch ``(residual +) pre(x) @ w.T`` on row views
    (``pre``: e.g. mlp's gate-up, default none; ``norm_args``: a fused RMSNorm's arguments); returns ``(out,
    validated norm)``."""
    N = w.shape[0]
    shape = (*x.shape[:-1], N)
    check_like("residual", residual, shape, x.dtype, x.device)
    out = check_out("out", out, shape, x.dtype, x.device)
    norm = None if norm_args is None else norm_target(out, *norm_args)
    x2 = as_rows("x", x, x.shape[-1])
    if x2.shape[0]:
        r2 = None if residual is None else as_rows("residual", residual, N)
        norm2 = None if norm is None else (norm[0], norm[1], as_rows("norm_out", norm[2], N))
        launch_linear(x2 if pre is None else pre(x2), w, r2, as_rows("out", out, N), norm=norm2)
    return out, norm


def _linear(x, w, residual, out, norm_args=None):
    """Validate ``x`` and ``w``, then :func:`run_linear`."""
    check_tensor("x", x, dtypes=DTYPES)
    check_tensor("w", w, ndim=2, dtypes=(x.dtype,))
    K = x.shape[-1]
    if w.shape[1] != K or w.device != x.device:
        raise ValueError(f"w must be [N, K={K}] on {x.device}, got {tuple(w.shape)} on {w.device}")
    return run_linear(x, w, residual, out, norm_args)


def linear(x: torch.Tensor, w: torch.Tensor, residual: Optional[torch.Tensor] = None, *,
           out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``residual + x @ w.T`` (or ``x @ w.T``), the product rounded to ``x.dtype`` first. x: ``[..., K]``
    fp16/bf16/fp32 (rows viewable); w: ``[N, K]`` in ``x.dtype``; residual, out (preallocated): ``[..., N]`` or
    None. Reference: the ``h`` of :func:`llada_triton.kernels.reference.linear_rms_norm_ref`."""
    return _linear(x, w, residual, out)[0]


def linear_rms_norm(x: torch.Tensor, w: torch.Tensor, residual: Optional[torch.Tensor],
                    norm_weight: torch.Tensor, eps: float, *, out: Optional[torch.Tensor] = None,
                    norm_out: Optional[torch.Tensor] = None):
    """:func:`linear` then the RMSNorm of its output (LLaDA: attention output projection, MLP norm): ``(y, h)``
    with ``h = residual + x @ w.T`` (``out``) and ``y`` its norm with ``norm_weight`` ``[N]`` (``norm_out``).
    Reference: :func:`llada_triton.kernels.reference.linear_rms_norm_ref`."""
    h, norm = _linear(x, w, residual, out, (norm_weight, eps, norm_out))
    return norm[2], h
