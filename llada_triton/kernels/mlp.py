"""SwiGLU MLP. :func:`swiglu_mlp` / :func:`swiglu_mlp_rms_norm`: ``_gate_up_silu_kernel`` (the gate-up GEMM with
the ``silu(gate) * up`` epilogue), then the down GEMM with the residual add (and the next RMSNorm) of
:mod:`llada_triton.kernels.gemm`. :func:`silu_mul` (``_silu_mul_kernel``): the activation alone, on a gate-up
product computed elsewhere (cuBLAS).

Numerics: the roundings of :func:`llada_triton.kernels.reference.swiglu_mlp_ref` (gate, up, ``silu(gate)``, the
product and the down output each rounded to ``x.dtype``); only the fp32 accumulation order (deterministic) and
the SiLU's ``exp`` (``ex2.approx``; the division is IEEE) differ. Up to 64 rows the gate-up runs two swapped
dots a K-step (weight rows fill the MMA's M); above, one ``[BM, 2 BN]`` dot over a ``[2, BN, BK]`` TMA box of
the weight viewed as ``[2, h, d]`` (``ONE_DOT``, results/decisions.md).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from llada_triton.kernels._common import (DTYPES, as_rows, cdiv, check_out, check_shape, check_tensor, clamp_pow2,
                                          dot_flags, gdc_options, gdc_wait_and_release, is_interpreter, memo_config,
                                          next_pow2, prefetch_weight_rows)
from llada_triton.kernels.gemm import (acc_zeros, dot_step, load_k, mma, out_offsets, run_linear, tile_offsets, tma_ok,
                                       tma_sources)

__all__ = ["swiglu_mlp", "swiglu_mlp_rms_norm", "silu_mul"]


@triton.jit
def silu_times(g, u, dt: tl.constexpr):
    """``silu(g) * u`` for ``dt`` values with torch's roundings: ``silu`` in fp32 rounded, then the product."""
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
    tl.store(a_ptr + m * stride_am + offs, silu_times(g, u, a_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gate_up_silu_kernel(
    x_src, w_src, a_ptr,                 # x [M, K], w [2H, K] (gate rows, then up rows): pointers or TMA
    M, H, K,                             # descriptors (USE_TMA); a [M, H] pointer
    stride_xm, stride_wn, stride_am,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    SWAP_AB: tl.constexpr,               # compute a.T tiles [BN, BM] = W @ x.T (weight rows fill the MMA's M)
    USE_TMA: tl.constexpr, EVEN_K: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
    USE_GDC: tl.constexpr = False,
    ONE_DOT: tl.constexpr = False,       # USE_TMA, not SWAP_AB: w_src is a [2, H, K] descriptor (gate, up) with
                                         # [2, BN, BK] boxes; one [BM, 2 BN] dot a step, split in the epilogue
    X_TMA: tl.constexpr = True,          # ONE_DOT: x_src is a descriptor (else a pointer; rows past M wrap)
):
    pid_m, pid_n, offs_m, offs_n = tile_offsets(M, BM, BN)
    offs_k = tl.arange(0, BK)
    # pointer operands wrap out-of-range rows instead of masking them: loads stay unpredicated; stores are masked
    if USE_TMA:
        g_ptrs = None
        u_ptrs = None
        if ONE_DOT and not X_TMA:
            x_ptrs = x_src + (offs_m % M).to(tl.int64)[:, None] * stride_xm + offs_k[None, :]   # [BM, BK]
        else:
            x_ptrs = None
    else:
        x_ptrs = x_src + (offs_m % M).to(tl.int64)[:, None] * stride_xm + offs_k[None, :]       # [BM, BK]
        rows_w = (offs_n % H).to(tl.int64)
        g_ptrs = w_src + rows_w[:, None] * stride_wn + offs_k[None, :]                      # [BN, BK]
        u_ptrs = w_src + (rows_w + H)[:, None] * stride_wn + offs_k[None, :]                # [BN, BK]
        prefetch_weight_rows(w_src, rows_w, stride_wn, 0, K, USE_GDC)
        prefetch_weight_rows(w_src, rows_w + H, stride_wn, 0, K, USE_GDC)
    gdc_wait_and_release(USE_GDC)
    if ONE_DOT:                          # the gate and up boxes land as one [2 BN, BK] tile
        acc = tl.zeros((BM, 2 * BN), dtype=tl.float32)
        for k in range(0, K, BK):
            xt = load_k(x_src, x_ptrs, pid_m * BM, k, K - k, BK, X_TMA, EVEN_K, UPCAST)
            gu = w_src.load([0, pid_n * BN, k]).reshape(2 * BN, BK)
            if UPCAST:
                gu = gu.to(tl.float32)
            acc = mma(xt, tl.trans(gu), acc, IEEE)
            if not X_TMA:
                x_ptrs += BK
        # columns [0, BN) are the gate's, [BN, 2 BN) the up's
        acc_g, acc_u = tl.split(tl.permute(tl.reshape(acc, (BM, 2, BN)), (0, 2, 1)))
    else:
        acc_g = acc_zeros(BM, BN, SWAP_AB)
        acc_u = tl.zeros_like(acc_g)
        for k in range(0, K, BK):
            xt = load_k(x_src, x_ptrs, pid_m * BM, k, K - k, BK, USE_TMA, EVEN_K, UPCAST)
            g = load_k(w_src, g_ptrs, pid_n * BN, k, K - k, BK, USE_TMA, EVEN_K, UPCAST)
            u = load_k(w_src, u_ptrs, H + pid_n * BN, k, K - k, BK, USE_TMA, EVEN_K, UPCAST)
            acc_g = dot_step(xt, g, acc_g, SWAP_AB, IEEE)
            acc_u = dot_step(xt, u, acc_u, SWAP_AB, IEEE)
            if not USE_TMA:
                x_ptrs += BK
                g_ptrs += BK
                u_ptrs += BK
    # the reference's roundings: gate, up, silu(gate), product -> x.dtype
    dt = a_ptr.dtype.element_ty
    act = silu_times(acc_g.to(dt), acc_u.to(dt), dt)
    om, on, mask = out_offsets(offs_m, offs_n, M, H, SWAP_AB)
    tl.store(a_ptr + om * stride_am + on, act, mask=mask)


# ONE_DOT tiles (BM, BN, num_warps, num_stages, measured cost of one wave at d=4096): one program per SM at a
# time (shared memory), so T programs take ceil(T / SMs) waves (results/decisions.md).
_ONE_DOT_TILES = ((128, 128, 8, 4, 52.0), (128, 64, 8, 6, 29.0), (64, 128, 4, 5, 31.0))


@memo_config
def gate_up_config(M: int, N: int, K: int, dtype: torch.dtype, interpret: Optional[bool] = None,
                   num_sms: Optional[int] = None) -> dict:
    """Meta-parameters of the gate-up kernel for ``x [M, K]`` and ``N = h`` columns, from sweeps at LLaDA-8B sizes
    (results/decisions.md; a new dict per call, memoised). ``M <= 64``: swapped operands; above, ``ONE_DOT`` with
    the :data:`_ONE_DOT_TILES` shape whose waves cost least on ``num_sms`` SMs (None: 132, an H100 / H200)."""
    interpret = is_interpreter() if interpret is None else interpret
    if interpret:  # big blocks, small grids: the interpreter pays per program, not per element
        return dict(BM=clamp_pow2(M, 16, 64), BN=clamp_pow2(N, 16, 128), BK=clamp_pow2(K, 16, 256),
                    SWAP_AB=False, TMA=False, num_warps=4, num_stages=1)
    if dtype == torch.float32:  # correctness path (IEEE fp32 dots), not tuned
        return dict(BM=clamp_pow2(M, 16, 32), BN=32, BK=32, SWAP_AB=False, TMA=False, num_warps=4, num_stages=2)
    if M <= 32:  # smem (BM + 2 BN) * BK * 2 B * 5 stages = 200 KiB; 192 programs
        return dict(BM=clamp_pow2(M, 16, 32), BN=64, BK=128, SWAP_AB=True, TMA=True, num_warps=4, num_stages=5)
    if M <= 64:  # 192 KiB
        return dict(BM=64, BN=64, BK=128, SWAP_AB=True, TMA=False, num_warps=4, num_stages=4)
    num_sms = 132 if num_sms is None else int(num_sms)
    BM, BN, nw, ns, _ = min(_ONE_DOT_TILES, key=lambda t: cdiv(cdiv(M, t[0]) * cdiv(N, t[1]), num_sms) * t[4])
    return dict(BM=BM, BN=BN, BK=64, SWAP_AB=False, TMA=True, ONE_DOT=True, num_warps=nw, num_stages=ns)


def launch_gate_up(x: torch.Tensor, w_gate_up: torch.Tensor, act: torch.Tensor, config: Optional[dict] = None):
    """``act[M, h] = silu(x @ Wg.T) * (x @ Wu.T)`` on validated 2D tensors; ``config``: see :func:`gate_up_config`."""
    M, K = x.shape
    H = w_gate_up.shape[0] // 2
    if config is None:  # the SM count matters above 64 rows only (decoding skips the query)
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda and M > 64 else None
        cfg = gate_up_config(M, H, K, x.dtype, num_sms=sms)
    else:
        cfg = dict(config)
    BM, BN, BK = cfg["BM"], cfg["BN"], cfg["BK"]
    if cfg.get("ONE_DOT", False) and (cfg["SWAP_AB"] or not cfg.get("TMA", False)):
        raise ValueError(f"config: ONE_DOT needs TMA=True and SWAP_AB=False, got {cfg}")
    one_dot = cfg.get("ONE_DOT", False) and tma_ok(x, w_gate_up)
    if one_dot:  # the weight as [2, H, K] (gate rows, up rows): one box holds a gate tile and its up tile
        from triton.tools.tensor_descriptor import TensorDescriptor
        sw = w_gate_up.stride(0)
        use_tma, w_src = True, TensorDescriptor(w_gate_up, [2, H, K], [H * sw, sw, 1], [2, BN, BK])
        # x through TMA only when every box is whole: ragged boxes are much slower (results/decisions.md)
        x_tma = bool(cfg.get("X_TMA", M % BM == 0))
        x_src = TensorDescriptor.from_tensor(x, [BM, BK]) if x_tma else x
    else:
        x_tma = True  # unused outside ONE_DOT
        use_tma, (x_src, w_src) = tma_sources(cfg, [(x, (BM, BK)), (w_gate_up, (BN, BK))])
    _gate_up_silu_kernel[(cdiv(M, BM) * cdiv(H, BN),)](
        x_src, w_src, act, M, H, K,
        x.stride(0), w_gate_up.stride(0), act.stride(0),
        BM=BM, BN=BN, BK=BK, SWAP_AB=cfg["SWAP_AB"], USE_TMA=use_tma, EVEN_K=(K % BK == 0), **dot_flags(x.dtype),
        ONE_DOT=one_dot, X_TMA=x_tma, **gdc_options(x, M), num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return act


def _mlp(x, w_gate_up, w_down, residual, out, norm_args=None):
    """Validate, allocate, launch (``norm_args``: a fused RMSNorm's arguments); returns ``(out, validated norm)``."""
    check_tensor("x", x, dtypes=DTYPES)
    if x.ndim < 2:
        raise ValueError(f"x must be [..., d] with at least 2 dims, got shape {tuple(x.shape)}")
    d = x.shape[-1]
    check_tensor("w_gate_up", w_gate_up, ndim=2, dtypes=(x.dtype,))
    if w_gate_up.shape[1] != d or w_gate_up.shape[0] % 2 or w_gate_up.shape[0] == 0 or w_gate_up.device != x.device:
        raise ValueError(f"w_gate_up must be [2h, d={d}] with h >= 1 on {x.device}, got {tuple(w_gate_up.shape)} on "
                         f"{w_gate_up.device}")
    h = w_gate_up.shape[0] // 2
    check_shape("w_down", w_down, (d, h), (x.dtype,), x.device)

    def gate_up(x2):
        return launch_gate_up(x2, w_gate_up, torch.empty((x2.shape[0], h), device=x.device, dtype=x.dtype))
    return run_linear(x, w_down, residual, out, norm_args, gate_up)


def swiglu_mlp(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor,
               residual: Optional[torch.Tensor] = None, *, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``residual + (silu(x @ Wg.T) * (x @ Wu.T)) @ w_down.T`` in ``x.dtype``, deterministic.

    x: ``[..., d]`` fp16/bf16/fp32 (last dim contiguous, rows viewable); w_gate_up: ``[2h, d]`` (gate rows, then
    up rows), w_down: ``[d, h]``, both in ``x.dtype``; residual: like ``x`` or None; out: preallocated output
    (may alias ``residual``). Two launches (three with split-K). The model uses it up to 64 rows; above, cuBLAS +
    :func:`silu_mul` is faster. Reference: :func:`llada_triton.kernels.reference.swiglu_mlp_ref`.
    """
    return _mlp(x, w_gate_up, w_down, residual, out)[0]


def swiglu_mlp_rms_norm(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor,
                        residual: Optional[torch.Tensor], norm_weight: torch.Tensor, eps: float, *,
                        out: Optional[torch.Tensor] = None, norm_out: Optional[torch.Tensor] = None):
    """:func:`swiglu_mlp` then the RMSNorm of its output (LLaDA: the next layer's attention norm, or the final
    norm): ``(y, h)`` with ``h`` the MLP output (``out``) and ``y`` its norm with ``norm_weight`` ``[d]`` (dtype
    ``promote_types(norm_weight.dtype, x.dtype)``, ``norm_out``). Reference:
    :func:`llada_triton.kernels.reference.swiglu_mlp_rms_norm_ref`."""
    h, norm = _mlp(x, w_gate_up, w_down, residual, out, (norm_weight, eps, norm_out))
    return norm[2], h


def silu_mul(gate_up: torch.Tensor, *, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``silu(gate_up[..., :h]) * gate_up[..., h:]`` in one launch (torch takes two and reads ``[..., h]`` twice
    more), with torch's roundings. gate_up: ``[..., 2h]`` fp16/bf16/fp32 (last dim contiguous, rows viewable),
    e.g. one cuBLAS GEMM over the fused weight; out: preallocated ``[..., h]`` or None. Reference:
    :func:`llada_triton.kernels.reference.silu_mul_ref`."""
    check_tensor("gate_up", gate_up, dtypes=DTYPES)
    if gate_up.ndim < 1 or gate_up.shape[-1] % 2 or gate_up.shape[-1] == 0:
        raise ValueError(f"gate_up must be [..., 2h] with h >= 1, got shape {tuple(gate_up.shape)}")
    h = gate_up.shape[-1] // 2
    out = check_out("out", out, (*gate_up.shape[:-1], h), gate_up.dtype, gate_up.device)
    g2, a2 = as_rows("gate_up", gate_up, 2 * h), as_rows("out", out, h)
    M = g2.shape[0]
    if M:
        block = clamp_pow2(h, 16, 1 << 16) if is_interpreter() else min(2048, next_pow2(h))
        _silu_mul_kernel[(M, cdiv(h, block))](
            g2, a2, h, g2.stride(0), a2.stride(0), BLOCK=block,
            num_warps=1 if is_interpreter() else max(1, min(8, block // 256)), **gdc_options(g2, M))
    return out
