"""kernels.mlp.swiglu_mlp against kernels.reference.swiglu_mlp_ref.

Tolerance (derived, not tuned): the kernel's max error against an fp64 evaluation of the same formula
must be at most 2x the torch reference's error at the same precision, plus a floor of one ulp of the
dtype at the output's magnitude. The fp64 gold has no intermediate roundings, so both the kernel and the
torch reference pay the same activation roundings and only the fp32 accumulation order differs.
"""
import os
import textwrap

import pytest
import torch

from tests.helpers import run_without_interpreter

from llada_triton.kernels.gemm import launch_linear, linear_config, tma_ok
from llada_triton.kernels.mlp import gate_up_config, launch_gate_up, swiglu_mlp
from llada_triton.kernels.reference import swiglu_mlp_ref

GPU = pytest.mark.gpu
DTYPES = [
    pytest.param(torch.float32, id="fp32"),
    pytest.param(torch.float16, id="fp16"),
    pytest.param(torch.bfloat16, id="bf16", marks=GPU),
]
# (M, d, h): decode-odd rows, the tiny golden model (d=64, h=176), d/h not multiples of any block
# (M = 70: on the GPU the prefill-sized path with TMA loads)
SHAPES = [(1, 64, 176), (7, 96, 176), (32, 64, 176), (33, 96, 176), (70, 64, 176)]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _inputs(M, d, h, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, d, generator=g)
    w_gu = torch.randn(2 * h, d, generator=g) / d ** 0.5
    w_d = torch.randn(d, h, generator=g) / h ** 0.5
    r = torch.randn(M, d, generator=g)
    return [t.to(device=device, dtype=dtype) for t in (x, w_gu, w_d, r)]


def _floor(dtype, gold):
    """One ulp of the output dtype at the output's magnitude, plus 32 fp32 ulps for the fp32 epilogue's
    GPU approximations that torch does not share (``exp`` via ``ex2.approx``, whose argument rounding is
    amplified by ``|gate|``; a few ulps each, then carried through the down projection). Only matters for
    fp32 inputs; for 16-bit inputs the torch reference's own rounding error dominates."""
    return (torch.finfo(dtype).eps + 32 * torch.finfo(torch.float32).eps) * max(1.0, gold.abs().max().item())


def _check(out, args, residual):
    x, w_gu, w_d, r = args
    r = r if residual else None
    gold = swiglu_mlp_ref(*(t.double() for t in (x, w_gu, w_d)), None if r is None else r.double())
    ref = swiglu_mlp_ref(x, w_gu, w_d, r)
    assert out.dtype == x.dtype and out.shape == gold.shape
    assert not torch.isnan(out).any(), "unwritten (NaN) outputs"
    err = (out.double() - gold).abs().max().item()
    err_ref = (ref.double() - gold).abs().max().item()
    floor = _floor(x.dtype, gold)
    assert err <= 2 * err_ref + floor, f"err {err:.3g} > 2 * torch err {err_ref:.3g} + {floor:.3g}"


@pytest.mark.parametrize("residual", [False, True], ids=["nores", "res"])
@pytest.mark.parametrize("M,d,h", SHAPES, ids=[f"M{m}-d{d}-h{h}" for m, d, h in SHAPES])
@pytest.mark.parametrize("dtype", DTYPES)
def test_swiglu_mlp(M, d, h, dtype, residual, device):
    args = _inputs(M, d, h, dtype, device)
    out = torch.full((M, d), float("nan"), device=device, dtype=dtype)
    y = swiglu_mlp(*args[:3], args[3] if residual else None, out=out)
    assert y.data_ptr() == out.data_ptr()
    _check(y, args, residual)


@pytest.mark.parametrize("dtype", DTYPES)
def test_llada_like(dtype, device):
    """A bigger LLaDA-proportioned case (h = 3 d, decode rows), small enough for the interpreter."""
    M, d, h = 32, 256, 768
    args = _inputs(M, d, h, dtype, device, seed=1)
    _check(swiglu_mlp(*args), args, True)


# GPU-like block sizes under the interpreter too: several tiles, K tails, operand swap, split-K
CONFIGS = {
    "swap-split3": (dict(BM=16, BN=32, BK=32, SWAP_AB=True, num_warps=4, num_stages=2),
                    dict(BM=16, BN=32, BK=32, SWAP_AB=True, SPLIT_K=3, num_warps=4, num_stages=2)),
    "noswap-split2": (dict(BM=16, BN=64, BK=32, SWAP_AB=False, num_warps=4, num_stages=2),
                      dict(BM=16, BN=16, BK=64, SWAP_AB=False, SPLIT_K=2, num_warps=4, num_stages=2)),
    "swap-nosplit": (dict(BM=32, BN=16, BK=64, SWAP_AB=True, num_warps=4, num_stages=2),
                     dict(BM=32, BN=64, BK=16, SWAP_AB=True, SPLIT_K=1, num_warps=4, num_stages=2)),
    # TMA descriptors: out-of-bounds rows and the K tail read as zeros
    "tma-swap-split3": (dict(BM=16, BN=32, BK=32, SWAP_AB=True, TMA=True, num_warps=4, num_stages=3),
                        dict(BM=16, BN=32, BK=32, SWAP_AB=True, TMA=True, SPLIT_K=3, num_warps=4, num_stages=3)),
    "tma-noswap": (dict(BM=32, BN=64, BK=64, SWAP_AB=False, TMA=True, num_warps=4, num_stages=3),
                   dict(BM=32, BN=32, BK=64, SWAP_AB=False, TMA=True, SPLIT_K=1, num_warps=4, num_stages=3)),
    # one dot over [2, BN, BK] gate-up boxes: the h edge (176 = 5.5 x 32) inside the box, the K tail (96 = 1.5 x 64)
    # (M = 7, 33: boxes of x would run past the last row, so x is read through pointers, rows wrapped)
    "tma-one-dot": (dict(BM=16, BN=32, BK=64, SWAP_AB=False, TMA=True, ONE_DOT=True, num_warps=4, num_stages=3),
                    dict(BM=32, BN=32, BK=64, SWAP_AB=False, TMA=True, SPLIT_K=1, num_warps=4, num_stages=3)),
    # the same with x through TMA all the same: the rows past M read as zeros
    "tma-one-dot-xtma": (dict(BM=16, BN=32, BK=64, SWAP_AB=False, TMA=True, ONE_DOT=True, X_TMA=True, num_warps=4,
                              num_stages=3),
                         dict(BM=32, BN=32, BK=64, SWAP_AB=False, TMA=True, SPLIT_K=2, num_warps=4, num_stages=3)),
}


@pytest.mark.parametrize("residual", [False, True], ids=["nores", "res"])
@pytest.mark.parametrize("cfg", list(CONFIGS), ids=list(CONFIGS))
@pytest.mark.parametrize("M,d,h", [(7, 96, 176), (33, 64, 176)], ids=["M7-d96-h176", "M33-d64-h176"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_configs(M, d, h, dtype, cfg, residual, device):
    args = _inputs(M, d, h, dtype, device, seed=2)
    x, w_gu, w_d, r = args
    cfg_gu, cfg_d = CONFIGS[cfg]
    act = torch.full((M, h), float("nan"), device=device, dtype=dtype)
    if cfg_gu.get("TMA"):
        assert tma_ok(x, w_gu, act, w_d) and (w_gu.shape[0] // 2 * w_gu.stride(0) * w_gu.element_size()) % 16 == 0, \
            "this case must exercise the TMA path"
    launch_gate_up(x, w_gu, act, config=cfg_gu)
    # the activation alone mirrors the reference's roundings: compare with torch at the same precision
    gu = x @ w_gu.t()
    act_ref = torch.nn.functional.silu(gu[:, :h]) * gu[:, h:]
    gu64 = x.double() @ w_gu.double().t()
    act_gold = torch.nn.functional.silu(gu64[:, :h]) * gu64[:, h:]
    floor = _floor(dtype, act_gold)
    assert not torch.isnan(act).any()
    assert (act.double() - act_gold).abs().max() <= 2 * (act_ref.double() - act_gold).abs().max() + floor
    out = torch.full((M, d), float("nan"), device=device, dtype=dtype)
    split = cfg_d["SPLIT_K"]
    partials = torch.full((split, M, d), float("nan"), device=device) if split > 1 else None
    launch_linear(act, w_d, r if residual else None, out, config=cfg_d, partials=partials)
    _check(out, args, residual)


@pytest.mark.parametrize("dtype", DTYPES)
def test_deterministic_split_k(dtype, device):
    M, d, h = 33, 64, 176
    x, w_gu, w_d, r = _inputs(M, d, h, dtype, device, seed=3)
    act = torch.randn(M, h, device=device).to(dtype)
    cfg = dict(BM=16, BN=32, BK=16, SWAP_AB=True, SPLIT_K=4, num_warps=4, num_stages=2)
    outs = [launch_linear(act, w_d, r, torch.empty(M, d, device=device, dtype=dtype), config=cfg) for _ in range(3)]
    assert all(torch.equal(outs[0], o) for o in outs[1:])


@pytest.mark.parametrize("dtype", DTYPES)
def test_tma_fallback_misaligned(dtype, device):
    """A TMA config on tensors TMA cannot describe (row stride not 16-byte aligned) uses plain loads."""
    M, d, h = 5, 66, 176
    x, w_gu, w_d, r = _inputs(M, d, h, dtype, device, seed=5)
    assert not tma_ok(x)
    for gate_up_cfg in ("tma-noswap", "tma-one-dot"):
        act = torch.full((M, h), float("nan"), device=device, dtype=dtype)
        launch_gate_up(x, w_gu, act, config=CONFIGS[gate_up_cfg][0])
        out = torch.full((M, d), float("nan"), device=device, dtype=dtype)
        launch_linear(act, w_d, r, out, config=CONFIGS["tma-swap-split3"][1])
        _check(out, (x, w_gu, w_d, r), True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_dot_strided_weight(dtype, device):
    """The one-dot gate-up reads a gate-up weight whose rows are strided (a view of a wider matrix): the
    [2, h, d] descriptor takes the row stride, so the up rows start h strided rows after the gate rows."""
    M, d, h = 33, 64, 176
    x, w_gu, w_d, r = _inputs(M, d, h, dtype, device, seed=6)
    wide = torch.full((2 * h, d + 8), float("nan"), device=device, dtype=dtype)
    wide[:, :d] = w_gu
    w_view = wide[:, :d]
    act = torch.full((M, h), float("nan"), device=device, dtype=dtype)
    launch_gate_up(x, w_view, act, config=CONFIGS["tma-one-dot"][0])
    want = torch.full((M, h), float("nan"), device=device, dtype=dtype)
    launch_gate_up(x, w_gu, want, config=CONFIGS["tma-one-dot"][0])
    assert torch.equal(act, want) and not torch.isnan(act).any()
    with pytest.raises(ValueError, match="ONE_DOT needs TMA=True and SWAP_AB=False"):
        launch_gate_up(x, w_gu, act, config=dict(CONFIGS["tma-one-dot"][0], SWAP_AB=True))
    with pytest.raises(ValueError, match="ONE_DOT needs TMA=True and SWAP_AB=False"):
        launch_gate_up(x, w_gu, act, config=dict(CONFIGS["tma-one-dot"][0], TMA=False))


def test_leading_dims_and_aliasing(device):
    x, w_gu, w_d, r = _inputs(12, 64, 176, torch.float32, device, seed=4)
    x3, r3 = x.view(3, 4, 64), r.view(3, 4, 64)
    ref = swiglu_mlp_ref(x, w_gu, w_d, r).view(3, 4, 64)
    y = swiglu_mlp(x3, w_gu, w_d, r3)
    assert y.shape == (3, 4, 64)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    r_copy = r3.clone()
    swiglu_mlp(x3, w_gu, w_d, r_copy, out=r_copy)  # residual stream updated in place
    torch.testing.assert_close(r_copy, ref, rtol=1e-5, atol=1e-5)
    # a strided (non-contiguous rows) x is read in place
    xs = torch.randn(12, 128, device=device)[:, :64]
    torch.testing.assert_close(swiglu_mlp(xs, w_gu, w_d), swiglu_mlp_ref(xs, w_gu, w_d), rtol=1e-5, atol=1e-5)


def test_validation(device):
    x, w_gu, w_d, r = _inputs(4, 64, 176, torch.float32, device)
    with pytest.raises(ValueError, match="w_gate_up"):
        swiglu_mlp(x, w_gu[:-1], w_d)
    with pytest.raises(ValueError, match="w_down"):
        swiglu_mlp(x, w_gu, w_d.t().contiguous())
    with pytest.raises(ValueError, match="dtype"):
        swiglu_mlp(x, w_gu.half(), w_d)
    with pytest.raises(ValueError, match="residual"):
        swiglu_mlp(x, w_gu, w_d, r[:2])
    with pytest.raises(ValueError, match="x"):
        swiglu_mlp(x.t(), w_gu, w_d)


def test_one_dot_tiles_by_waves():
    """Above 64 rows the gate-up tile is the one whose waves of programs cost least (LLaDA-8B's h = 12288, 132
    SMs): the configs measured fastest at 96-1024 rows; another SM count can pick another tile."""
    want = {96: (128, 128), 128: (128, 128), 160: (128, 64), 256: (128, 64), 320: (64, 128), 384: (128, 64),
            512: (128, 128), 1024: (128, 128)}
    for M, tile in want.items():
        c = gate_up_config(M, 12288, 4096, torch.bfloat16, interpret=False)
        assert (c["BM"], c["BN"]) == tile and c["ONE_DOT"] and c["TMA"], (M, c)
    assert gate_up_config(256, 12288, 4096, torch.bfloat16, interpret=False, num_sms=96)["BN"] == 128


def test_configs_deterministic():
    """Meta-parameters are a pure function of the shape (no autotuning)."""
    for M in (1, 32, 33, 256, 1024):
        for dt in (torch.bfloat16, torch.float16, torch.float32):
            for interp in (False, True):
                assert gate_up_config(M, 12288, 4096, dt, interp) == gate_up_config(M, 12288, 4096, dt, interp)
                c = linear_config(M, 4096, 12288, dt, interp)
                assert c == linear_config(M, 4096, 12288, dt, interp) and c["SPLIT_K"] >= 1


def test_down_split_rule():
    """The GPU split-K rule at LLaDA-8B's decode shapes (K-blocks of 128): at <= 32 rows a split holds at most
    32 K-blocks (down projection, 96 K-blocks: 4 splits; O projection, 32 K-blocks: 2); above 32 rows ~128
    programs (2 splits); at 1024 rows the tiles fill the GPU (1)."""
    want = {(1, 12288): 4, (32, 12288): 4, (33, 12288): 2, (64, 12288): 2, (32, 4096): 2, (256, 12288): 2,
            (1024, 12288): 1}
    for (M, K), split in want.items():
        c = linear_config(M, 4096, K, torch.bfloat16, False)
        k_blocks = -(-K // c["BK"])
        assert c["SPLIT_K"] == split, (M, K, c)
        assert -(-k_blocks // split) >= 8  # every split keeps at least 8 K-blocks


def test_configs_are_fresh_dicts():
    """The configs are memoised per shape; each call must still hand out its own dict (launchers and sweep
    scripts edit theirs)."""
    from llada_triton.kernels.norm import norm_config
    from llada_triton.kernels.qkv import qkv_config
    for fn, args in ((gate_up_config, (32, 12288, 4096, torch.bfloat16, False)),
                     (linear_config, (32, 4096, 12288, torch.bfloat16, False)),
                     (norm_config, (32, 4096, False)), (qkv_config, (32, 4096, torch.bfloat16, False))):
        a = fn(*args)
        want = dict(a)
        a.clear()
        a["poison"] = 1
        assert fn(*args) == want, fn.__name__


_COMPILE = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {root!r})
    import torch
    from llada_triton.kernels._common import compile_for, with_defaults
    from llada_triton.kernels import gemm, mlp
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    import triton

    def build(kernel, sig, cx, cfg):
        # like kernels._common.compile_for, plus the launch's num_warps/num_stages and the 16-divisibility
        # that a real launch specialises (without it the loads are not pipelined and smem is not checked)
        cx = dict(cx, USE_GDC=True)  # what sm_90 launches (PDL)
        cx = with_defaults(kernel, sig, cx)
        sig = dict(sig)
        attrs = {{(kernel.arg_names.index(n),): [["tt.divisibility", 16]] for n in sig
                  if n not in ("M", "N") and not sig[n].startswith("tensordesc")}}
        for k in cx:
            sig[k] = "constexpr"
        src = ASTSource(fn=kernel, signature=sig, constexprs=cx, attrs=attrs)
        k = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                           options=dict(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"]))
        assert k.metadata.shared <= 227 * 1024, (kernel.fn.__name__, cx, k.metadata.shared)
        # pointer-loaded weights are prefetched into L2 before the PDL wait (kernels._common.prefetch_weight_rows)
        assert ("prefetch.global.L2" in k.asm["ptx"]) == (not cx.get("USE_TMA", False)), kernel.fn.__name__
        return k

    d, h = 4096, 12288
    for dt, tdt in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        cands = [(M, mlp.gate_up_config(M, h, d, tdt, interpret=False), gemm.linear_config(M, d, h, tdt, interpret=False))
                 for M in ((16, 32, 64, 96, 256, 320, 1024) if dt == "bf16" else (32, 1024))]  # every distinct config
        if dt == "bf16":  # the TMA variants once (the dtype changes nothing in their structure)
            cands.append((32, dict(BM=32, BN=64, BK=128, SWAP_AB=True, TMA=True, num_warps=4, num_stages=4),
                          dict(BM=32, BN=64, BK=128, SWAP_AB=True, TMA=True, SPLIT_K=4, num_warps=4, num_stages=4)))
            cands.append((1024, dict(BM=128, BN=128, BK=64, SWAP_AB=False, TMA=True, num_warps=8, num_stages=4),
                          dict(BM=128, BN=128, BK=64, SWAP_AB=False, TMA=True, SPLIT_K=1, num_warps=8,
                               num_stages=4)))
        for M, c, cd in cands:
            tma = c.get("TMA", False)
            one_dot = c.get("ONE_DOT", False)
            x_tma = tma and M % c["BM"] == 0  # the launcher's rule for one-dot configs
            src = lambda r, c_: ("tensordesc<%s[%d, %d]>" % (dt, r, c_)) if tma else "*" + dt
            w_src = "tensordesc<%s[2, %d, %d]>" % (dt, c["BN"], c["BK"]) if one_dot else src(c["BN"], c["BK"])
            x_src = src(c["BM"], c["BK"]) if (x_tma or not one_dot) else "*" + dt
            build(mlp._gate_up_silu_kernel,
                  dict(x_src=x_src, w_src=w_src, a_ptr="*" + dt,
                       M="i32", H="i32", K="i32", stride_xm="i32", stride_wn="i32", stride_am="i32"),
                  dict(BM=c["BM"], BN=c["BN"], BK=c["BK"], SWAP_AB=c["SWAP_AB"], USE_TMA=tma, EVEN_K=True,
                       UPCAST=False, IEEE=False, ONE_DOT=one_dot, X_TMA=x_tma or not one_dot), c)
            c = cd
            for has_res in (True,):  # HAS_RES=False only drops the residual load
                build(gemm._linear_kernel,
                      dict(a_src=src(c["BM"], c["BK"]), w_src=src(c["BN"], c["BK"]), r_ptr="*" + dt, y_ptr="*" + dt,
                           p_ptr="*fp32", M="i32", N="i32", K="i32", K_PER_SPLIT="i32", stride_am="i32",
                           stride_wn="i32", stride_rm="i32", stride_ym="i32"),
                      dict(BM=c["BM"], BN=c["BN"], BK=c["BK"], SWAP_AB=c["SWAP_AB"], USE_TMA=tma, EVEN_K=True,
                           SPLIT=c["SPLIT_K"] > 1, HAS_RES=has_res, UPCAST=False, IEEE=False), c)
        for has_res in ((False, True) if dt == "bf16" else (True,)):
            compile_for(gemm._splitk_reduce_kernel,
                        dict(p_ptr="*fp32", r_ptr="*" + dt, y_ptr="*" + dt, M="i32", N="i32",
                             stride_rm="i32", stride_ym="i32"),
                        dict(S=4, BLOCK=1024, HAS_RES=has_res, USE_GDC=True))
            for S in (2, 4):  # the O and down projections' splits at 32 rows
                compile_for(gemm._splitk_reduce_norm_kernel,
                            dict(p_ptr="*fp32", r_ptr="*" + dt, h_ptr="*" + dt, w_ptr="*" + dt, y_ptr="*" + dt,
                                 M="i32", N="i32", eps="fp32", stride_rm="i32", stride_hm="i32",
                                 stride_ym="i32"),
                            dict(S=S, BLOCK=4096, HAS_RES=has_res, USE_GDC=True))
        compile_for(mlp._silu_mul_kernel, dict(gu_ptr="*" + dt, a_ptr="*" + dt, H="i32", stride_gm="i32",
                                               stride_am="i32"), dict(BLOCK=2048, USE_GDC=True))
    print("ok")
""")


def test_compile_sm90():
    """The GPU frontend and ptxas accept every decode/prefill variant (bf16, fp16) for sm_90."""
    res = run_without_interpreter(_COMPILE.format(root=ROOT))
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-4000:]


LINEAR_SHAPES = [(1, 64, 96), (7, 96, 64), (33, 64, 176), (32, 192, 128)]


@pytest.mark.parametrize("shape", LINEAR_SHAPES, ids=["M{}-N{}-K{}".format(*s) for s in LINEAR_SHAPES])
@pytest.mark.parametrize("dtype", [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16"),
                                   pytest.param(torch.bfloat16, id="bf16", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
def test_linear(shape, dtype, with_residual, device):
    """kernels.gemm.linear = residual + F.linear(x, w), the product rounded first (derived tolerance)."""
    from llada_triton.kernels.gemm import linear

    M, N, K = shape
    g = torch.Generator().manual_seed(3)
    x = torch.randn(M, K, generator=g).to(device=device, dtype=dtype)
    w = (torch.randn(N, K, generator=g) / K ** 0.5).to(device=device, dtype=dtype)
    r = torch.randn(M, N, generator=g).to(device=device, dtype=dtype) if with_residual else None
    out = torch.full((M, N), float("nan"), device=device, dtype=dtype)
    got = linear(x, w, r, out=out)
    gold = x.double() @ w.double().t() + (0 if r is None else r.double())
    ref = torch.nn.functional.linear(x, w) + (0 if r is None else r)
    err = (got.double() - gold).abs().max().item()
    err_ref = (ref.double() - gold).abs().max().item()
    floor = torch.finfo(dtype).eps * max(1.0, gold.abs().max().item())
    assert got.data_ptr() == out.data_ptr() and not torch.isnan(got).any()
    assert err <= 2 * err_ref + floor, (err, err_ref)


def _check_norm(y, h, norm_w, eps):
    """y must be the RMSNorm of the h the kernel wrote: equal to the reference norm of that h up to one
    ulp of the output (the fp32 sum of squares is ordered differently)."""
    from llada_triton.kernels.reference import rms_norm_ref

    want = rms_norm_ref(h, norm_w, eps)
    assert y.dtype == want.dtype and not torch.isnan(y).any(), "unwritten (NaN) norm outputs"
    ulp = torch.finfo(y.dtype).eps * want.abs().double().clamp_min(torch.finfo(y.dtype).tiny)
    assert ((y.double() - want.double()).abs() <= ulp + 4 * torch.finfo(torch.float32).eps).all()


NORM_CONFIGS = {
    "split3": dict(BM=16, BN=32, BK=32, SWAP_AB=True, SPLIT_K=3, num_warps=4, num_stages=2),
    "nosplit": dict(BM=16, BN=64, BK=32, SWAP_AB=False, SPLIT_K=1, num_warps=4, num_stages=2),
}


@pytest.mark.parametrize("cfg", list(NORM_CONFIGS), ids=list(NORM_CONFIGS))
@pytest.mark.parametrize("residual", [False, True], ids=["nores", "res"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_down_with_norm(dtype, residual, cfg, device):
    """The down GEMM with the next RMSNorm folded into its split-K reduction (or run after it)."""
    M, d, h = 33, 96, 176
    x, w_gu, w_d, r = _inputs(M, d, h, dtype, device, seed=5)
    norm_w = (1 + 0.1 * torch.randn(d, generator=torch.Generator().manual_seed(6))).to(device=device, dtype=dtype)
    act = (torch.randn(M, h, generator=torch.Generator().manual_seed(7)) / 2).to(device=device, dtype=dtype)
    out = torch.full((M, d), float("nan"), device=device, dtype=dtype)
    y = torch.full((M, d), float("nan"), device=device, dtype=dtype)
    c = NORM_CONFIGS[cfg]
    partials = torch.full((c["SPLIT_K"], M, d), float("nan"), device=device) if c["SPLIT_K"] > 1 else None
    launch_linear(act, w_d, r if residual else None, out, config=c, partials=partials, norm=(norm_w, 1e-5, y))
    plain = launch_linear(act, w_d, r if residual else None, torch.empty_like(out), config=c)
    assert torch.equal(out, plain), "the fused norm must not change the GEMM's output"
    _check_norm(y, out, norm_w, 1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_and_mlp_rms_norm(dtype, device):
    """Public fused ops: same h as linear / swiglu_mlp, y = RMSNorm(h); leading dims kept."""
    from llada_triton.kernels import linear, linear_rms_norm, swiglu_mlp_rms_norm

    B, T, d, h = 2, 9, 64, 176
    x, w_gu, w_d, r = _inputs(B * T, d, h, dtype, device, seed=8)
    x, r = x.view(B, T, d), r.view(B, T, d)
    norm_w = (1 + 0.1 * torch.randn(d, generator=torch.Generator().manual_seed(9))).to(device=device, dtype=dtype)
    w_o = w_gu[:d, :]
    y, hh = linear_rms_norm(x, w_o, r, norm_w, 1e-6)
    assert hh.shape == (B, T, d) and torch.equal(hh, linear(x, w_o, r))
    _check_norm(y, hh, norm_w, 1e-6)
    y2, h2 = swiglu_mlp_rms_norm(x, w_gu, w_d, r, norm_w, 1e-6, out=torch.empty_like(x),
                                 norm_out=torch.full_like(x, float("nan")))
    assert torch.equal(h2, swiglu_mlp(x, w_gu, w_d, r))
    _check_norm(y2, h2, norm_w, 1e-6)


def test_norm_validation(device):
    from llada_triton.kernels.gemm import linear_rms_norm

    x = torch.randn(4, 8, device=device)
    w = torch.randn(16, 8, device=device)
    with pytest.raises(ValueError, match=r"norm_weight must be \[16\]"):
        linear_rms_norm(x, w, None, torch.ones(8, device=device), 1e-6)
    with pytest.raises(ValueError, match="eps must be a float >= 0"):
        linear_rms_norm(x, w, None, torch.ones(16, device=device), -1.0)
    with pytest.raises(ValueError, match=r"out must be \(4, 16\)"):
        linear_rms_norm(x, w, None, torch.ones(16, device=device), 1e-6, out=torch.empty(4, 8, device=device))
    with pytest.raises(ValueError, match="norm_out must be"):
        linear_rms_norm(x, w, None, torch.ones(16, device=device), 1e-6, norm_out=torch.empty(4, 8, device=device))


SILU_SHAPES = [(1, 2), (5, 2 * 176), (3, 4, 2 * 1000), (2, 2 * 4100)]


@pytest.mark.parametrize("shape", SILU_SHAPES, ids=["x".join(map(str, s)) for s in SILU_SHAPES])
@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul(shape, dtype, device):
    """The standalone activation (cuBLAS-row MLP path) against torch's ``F.silu(g) * u`` and an fp64 gold:
    no worse than 2x torch's own error plus one ulp of the dtype (the same two roundings, a different exp)."""
    from llada_triton.kernels.mlp import silu_mul
    from llada_triton.kernels.reference import silu_mul_ref

    g = torch.Generator().manual_seed(1)
    gu = (3 * torch.randn(*shape, generator=g)).to(device=device, dtype=dtype)
    out = torch.full((*shape[:-1], shape[-1] // 2), float("nan"), device=device, dtype=dtype)
    got = silu_mul(gu, out=out)
    assert got is out and not torch.isnan(got).any(), "unwritten (NaN) outputs"
    gold = silu_mul_ref(gu.double())
    err = (got.double() - gold).abs().max().item()
    err_ref = (silu_mul_ref(gu).double() - gold).abs().max().item()
    floor = _floor(dtype, gold)
    assert err <= 2 * err_ref + floor, f"err {err:.3g} > 2 * torch err {err_ref:.3g} + {floor:.3g}"
    assert torch.equal(silu_mul(gu), got)  # fresh output, same values


def test_silu_mul_validation(device):
    from llada_triton.kernels.mlp import silu_mul

    with pytest.raises(ValueError, match="gate_up must be"):
        silu_mul(torch.zeros(3, 5, device=device))
    with pytest.raises(ValueError, match="out must be"):
        silu_mul(torch.zeros(3, 6, device=device), out=torch.zeros(3, 6, device=device))
    with pytest.raises((TypeError, ValueError), match="gate_up"):
        silu_mul(torch.zeros(3, 6, device=device, dtype=torch.int32))
    with pytest.raises(ValueError, match="gate_up of shape"):
        silu_mul(torch.zeros(4, 6, 6, device=device)[:, :3])  # leading dims do not flatten
