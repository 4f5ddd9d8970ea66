"""kernels.norm.rms_norm against kernels.reference.rms_norm_ref.

``h = x + residual`` is defined as a rounding of an exact fp32 add, so it must be bit-equal. ``y`` is
compared with an fp64 evaluation from that ``h`` (the normalised row's rounding to ``x.dtype`` is part of
the definition, so the gold skips it): the kernel's max error may be at most 2x the torch reference's at
the same precision plus one ulp of the output dtype at the output's magnitude.
"""
import os
import textwrap

import pytest
import torch

from tests.helpers import run_without_interpreter

from llada_triton.kernels.norm import launch_rms_norm, norm_config, rms_norm
from llada_triton.kernels.reference import rms_norm_ref

GPU = pytest.mark.gpu
DTYPES = [
    pytest.param(torch.float32, id="fp32"),
    pytest.param(torch.float16, id="fp16"),
    pytest.param(torch.bfloat16, id="bf16", marks=GPU),
]
SHAPES = [(1, 64), (7, 96), (32, 64), (33, 4096), (2, 3, 176), (5, 5000)]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPS = 1e-5


def _inputs(shape, dtype, wdtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * 3).to(device=device, dtype=dtype)
    r = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    w = (1 + 0.2 * torch.randn(shape[-1], generator=g)).to(device=device, dtype=wdtype)
    return x, r, w


def _check_y(y, h, w, ref_y):
    hd = h.double()
    gold = w.double() * (hd * torch.rsqrt(hd.pow(2).mean(-1, keepdim=True) + EPS))
    assert y.dtype == ref_y.dtype and y.shape == ref_y.shape
    assert not torch.isnan(y).any(), "unwritten (NaN) outputs"
    err = (y.double() - gold).abs().max().item()
    err_ref = (ref_y.double() - gold).abs().max().item()
    floor = torch.finfo(y.dtype).eps * max(1.0, gold.abs().max().item())
    assert err <= 2 * err_ref + floor, f"err {err:.3g} > 2 * torch err {err_ref:.3g} + {floor:.3g}"


@pytest.mark.parametrize("residual", [False, True], ids=["nores", "res"])
@pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm(shape, dtype, residual, device):
    x, r, w = _inputs(shape, dtype, dtype, device)
    out = torch.full(shape, float("nan"), device=device, dtype=dtype)
    if residual:
        h_out = torch.full(shape, float("nan"), device=device, dtype=dtype)
        y, h = rms_norm(x, w, EPS, r, out=out, residual_out=h_out)
        ref_y, ref_h = rms_norm_ref(x, w, EPS, r)
        assert h.data_ptr() == h_out.data_ptr()
        assert torch.equal(h, ref_h)
    else:
        y = rms_norm(x, w, EPS, out=out)
        ref_y, h = rms_norm_ref(x, w, EPS), x
    assert y.data_ptr() == out.data_ptr()
    _check_y(y, h, w, ref_y)


@pytest.mark.parametrize("residual", [False, True], ids=["nores", "res"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fp32_weight_promotes(dtype, residual, device):
    """``weight * y`` with an fp32 weight returns fp32, as torch's type promotion in the reference."""
    x, r, w = _inputs((9, 96), dtype, torch.float32, device, seed=1)
    res = rms_norm(x, w, EPS, r if residual else None)
    ref = rms_norm_ref(x, w, EPS, r if residual else None)
    y, ref_y = (res[0], ref[0]) if residual else (res, ref)
    assert y.dtype == torch.float32
    _check_y(y, ref[1] if residual else x, w, ref_y)


# GPU-like multi-chunk and multi-row tiles under the interpreter too
CONFIGS = {"chunks3-rows1": dict(BLOCK_R=1, BLOCK_N=64, NUM_CHUNKS=3, num_warps=2),
           "chunks2-rows4": dict(BLOCK_R=4, BLOCK_N=128, NUM_CHUNKS=2, num_warps=4),
           "chunks1-rows8": dict(BLOCK_R=8, BLOCK_N=256, NUM_CHUNKS=1, num_warps=4)}


@pytest.mark.parametrize("residual", [False, True], ids=["nores", "res"])
@pytest.mark.parametrize("cfg", list(CONFIGS), ids=list(CONFIGS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_configs(dtype, cfg, residual, device):
    R, N = 13, 176
    x, r, w = _inputs((R, N), dtype, dtype, device, seed=2)
    y = torch.full((R, N), float("nan"), device=device, dtype=dtype)
    h = torch.full((R, N), float("nan"), device=device, dtype=dtype) if residual else None
    launch_rms_norm(x, r if residual else None, w, y, h, EPS, config=CONFIGS[cfg])
    if residual:
        ref_y, ref_h = rms_norm_ref(x, w, EPS, r)
        assert torch.equal(h, ref_h)
    else:
        ref_y, ref_h = rms_norm_ref(x, w, EPS), x
    _check_y(y, ref_h, w, ref_y)


def test_strided_rows_and_in_place(device):
    base = torch.randn(6, 200, device=device)
    x = base[:, :96]                     # row stride 200: read in place
    r = torch.randn(6, 96, device=device)
    w = torch.rand(96, device=device) + 0.5
    ref_y, ref_h = rms_norm_ref(x, w, EPS, r)
    y, h = rms_norm(x, w, EPS, r, residual_out=r)  # residual stream updated in place
    assert h.data_ptr() == r.data_ptr()
    assert torch.equal(h, ref_h)
    torch.testing.assert_close(y, ref_y, rtol=1e-5, atol=1e-5)


def test_validation(device):
    x, r, w = _inputs((4, 64), torch.float32, torch.float32, device)
    with pytest.raises(ValueError, match="weight"):
        rms_norm(x, w[:-1], EPS)
    with pytest.raises(ValueError, match="residual"):
        rms_norm(x, w, EPS, r[:2])
    with pytest.raises(ValueError, match="residual"):
        rms_norm(x, w, EPS, r.half())
    with pytest.raises(ValueError, match="x"):
        rms_norm(x.t(), w, EPS)
    with pytest.raises(ValueError, match="residual_out"):
        rms_norm(x, w, EPS, residual_out=r)
    for eps in (float("nan"), -1e-6, True, "1e-5"):
        for fn in (rms_norm, rms_norm_ref):
            with pytest.raises(ValueError, match="eps must be"):
                fn(x, w, eps)


def test_config_deterministic():
    for R in (1, 32, 1024):
        for N in (64, 4096, 20000):
            for interp in (False, True):
                c = norm_config(R, N, interp)
                assert c == norm_config(R, N, interp)
                assert c["BLOCK_N"] * c["NUM_CHUNKS"] >= N


_COMPILE = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from llada_triton.kernels._common import compile_for
    from llada_triton.kernels import norm
    # bf16: single-chunk with/without residual, multi-row tiles, multi-chunk; fp16: the decode shape
    for dt, R, N, has_res in (("bf16", 32, 4096, False), ("bf16", 32, 4096, True), ("bf16", 1024, 64, True),
                              ("bf16", 8, 20000, True), ("fp16", 32, 4096, True)):
        c = norm.norm_config(R, N, interpret=False)
        compile_for(norm._rms_norm_kernel,
                    dict(x_ptr="*" + dt, r_ptr="*" + dt, w_ptr="*" + dt, y_ptr="*" + dt, h_ptr="*" + dt,
                         R="i32", N="i32", eps="fp32", stride_x="i32", stride_r="i32", stride_y="i32",
                         stride_h="i32"),
                    dict(BLOCK_R=c["BLOCK_R"], BLOCK_N=c["BLOCK_N"], NUM_CHUNKS=c["NUM_CHUNKS"], HAS_RES=has_res,
                         USE_GDC=True))
    print("ok")
""")


def test_compile_sm90():
    """The GPU frontend and ptxas accept the kernel variants (bf16, fp16; single/multi-chunk) for sm_90."""
    res = run_without_interpreter(_COMPILE.format(root=ROOT))
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-4000:]
