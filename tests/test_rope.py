"""kernels.rotary.rope / qkv_rope_cache against kernels.reference.rope_ref.

Tolerance (derived): the kernel's max error against an fp64 evaluation (fp64 x, fp64 tables built from
the same fp32 values) may be at most 2x the torch reference's error at the same precision plus one ulp
of the dtype at the output's magnitude. Both compute in fp32 and round once, so in practice they agree
to an ulp.
"""
import os
import textwrap

import pytest
import torch

from tests.helpers import run_without_interpreter

from llada_triton.kernels.reference import rope_ref, rope_tables
from llada_triton.kernels.rotary import _launch, qkv_rope_config, rope, rope_config

GPU = pytest.mark.gpu
DTYPES = [
    pytest.param(torch.float32, id="fp32"),
    pytest.param(torch.float16, id="fp16"),
    pytest.param(torch.bfloat16, id="bf16", marks=GPU),
]
# (B, T, H, D): the tiny golden model (H=2, D=32), odd T and H, D with a non-power-of-2 half, LLaDA heads
SHAPES = [(1, 1, 2, 32), (2, 7, 3, 64), (1, 33, 2, 32), (2, 5, 5, 96), (1, 32, 4, 128)]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tables(T, D, device, start=3):
    cos, sin = rope_tables(D, 500000.0, start + T)
    return cos[start:].to(device), sin[start:].to(device)


def _gold(x, cos, sin):
    xd = x.double()
    half = xd.shape[-1] // 2
    rot = torch.cat((-xd[..., half:], xd[..., :half]), dim=-1)
    return xd * cos.double()[None, :, None, :] + rot * sin.double()[None, :, None, :]


def _check(out, x, cos, sin):
    gold = _gold(x, cos, sin)
    ref = rope_ref(x, cos, sin)
    assert out.dtype == x.dtype and out.shape == x.shape
    assert not torch.isnan(out).any(), "unwritten (NaN) outputs"
    err = (out.double() - gold).abs().max().item()
    err_ref = (ref.double() - gold).abs().max().item()
    floor = torch.finfo(x.dtype).eps * max(1.0, gold.abs().max().item())
    assert err <= 2 * err_ref + floor, f"err {err:.3g} > 2 * torch err {err_ref:.3g} + {floor:.3g}"


def _qkv(B, T, H, D, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, 3, H, D, generator=g).to(device=device, dtype=dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=["B{}-T{}-H{}-D{}".format(*s) for s in SHAPES])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_contiguous(shape, dtype, device):
    B, T, H, D = shape
    x = torch.randn(shape).to(device=device, dtype=dtype)
    cos, sin = _tables(T, D, device)
    out = torch.full(shape, float("nan"), device=device, dtype=dtype)
    y = rope(x, cos, sin, out=out)
    assert y.data_ptr() == out.data_ptr()
    _check(y, x, cos, sin)


@pytest.mark.parametrize("which", [0, 1], ids=["q", "k"])
@pytest.mark.parametrize("shape", SHAPES, ids=["B{}-T{}-H{}-D{}".format(*s) for s in SHAPES])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_fused_qkv_view(shape, dtype, which, device):
    """q = qkv[:, :, 0] of a fused projection is read through its strides, without a copy."""
    B, T, H, D = shape
    qkv = _qkv(B, T, H, D, dtype, device)
    x = qkv[:, :, which]
    assert not x.is_contiguous() or B * T == 1
    before = qkv.clone()
    cos, sin = _tables(T, D, device)
    y = rope(x, cos, sin)
    assert y.is_contiguous()
    assert torch.equal(qkv, before), "input modified"
    _check(y, x, cos, sin)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_other_strides(dtype, device):
    """Transposed heads/tokens, a strided head dim, and a strided output."""
    B, T, H, D = 2, 9, 3, 64
    cos, sin = _tables(T, D, device)
    x = torch.randn(B, H, T, D).to(device=device, dtype=dtype).transpose(1, 2)      # [B, T, H, D] view
    _check(rope(x, cos, sin), x, cos, sin)
    xs = torch.randn(B, T, H, 2 * D).to(device=device, dtype=dtype)[..., ::2]       # stride 2 on D
    _check(rope(xs, cos, sin), xs, cos, sin)
    out = torch.full((B, H, T, D), float("nan"), device=device, dtype=dtype).transpose(1, 2)
    rope(x, cos, sin, out=out)
    _check(out, x, cos, sin)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_in_place(dtype, device):
    B, T, H, D = 2, 7, 3, 64
    qkv = _qkv(B, T, H, D, dtype, device, seed=1)
    cos, sin = _tables(T, D, device)
    q = qkv[:, :, 0]
    x0, rest = q.clone(), qkv[:, :, 1:].clone()
    assert rope(q, cos, sin, out=q).data_ptr() == q.data_ptr()
    _check(qkv[:, :, 0], x0, cos, sin)
    assert torch.equal(qkv[:, :, 0], rope(x0, cos, sin)), "in place differs from out of place"
    assert torch.equal(qkv[:, :, 1:], rest), "k or v modified"


# GPU-like tiles under the interpreter too: several head blocks, masked heads, padded half dim
@pytest.mark.parametrize("cfg", [dict(BLOCK_H=2, BLOCK_D2=64, num_warps=1), dict(BLOCK_H=1, BLOCK_D2=64, num_warps=2)],
                         ids=["h2", "h1"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_configs(dtype, cfg, device):
    B, T, H, D = 2, 3, 5, 96
    qkv = _qkv(B, T, H, D, dtype, device, seed=3)
    x = qkv[:, :, 0]
    cos, sin = _tables(T, D, device)
    out = torch.full((B, T, H, D), float("nan"), device=device, dtype=dtype)
    _launch(x.unsqueeze(2), out.unsqueeze(2), cos, sin, config=cfg)
    _check(out, x, cos, sin)


def test_validation(device):
    x = torch.randn(2, 4, 3, 64, device=device)
    cos, sin = _tables(4, 64, device)
    with pytest.raises(ValueError, match="cos"):
        rope(x, cos[:3], sin)
    with pytest.raises(ValueError, match="sin"):
        rope(x, cos, sin.half())
    with pytest.raises(ValueError, match="even"):
        rope(torch.randn(2, 4, 3, 63, device=device), cos[:, :63], sin[:, :63])
    with pytest.raises(ValueError, match="x"):
        rope(x[0], cos, sin)


def test_config_deterministic():
    for B in (1, 8, 32):
        for G in (1, 2):
            c = rope_config(B, 32, G, 32, 128, interpret=False)
            assert c == rope_config(B, 32, G, 32, 128, interpret=False)
            assert 1 <= c["BLOCK_H"] <= 32 and c["BLOCK_D2"] == 64
    for n_rows in (32, 32 * 32, 32 * 32 * 32):  # qkv_rope_cache: batch 1 / 32 / 1024 tokens of 32 heads
        for interp in (False, True):
            c = qkv_rope_config(n_rows, 128, interpret=interp)
            assert c == qkv_rope_config(n_rows, 128, interpret=interp) and c["BLOCK_D2"] == 64
            assert 1 <= c["BLOCK_R"] <= n_rows and c["num_warps"] in (1, 2, 4, 8)
    assert qkv_rope_config(32 * 32 * 32, 128, interpret=False)["BLOCK_R"] == 16  # the measured choice at D=128


_COMPILE = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from llada_triton.kernels._common import compile_for
    from llada_triton.kernels import rotary as rope
    for dt, B in (("bf16", 1), ("bf16", 32), ("fp16", 32)):
        c = rope.rope_config(B, 32, 1, 32, 128, interpret=False)
        sig = dict(x_ptr="*" + dt, o_ptr="*" + dt, cos_ptr="*fp32", sin_ptr="*fp32", T="i32", H="i32")
        sig.update({{n: "i64" for n in ("sxb", "sxt", "sxg", "sxh", "sxd", "sob", "sot", "sog", "soh", "sod")}})
        sig.update(sct="i32", sst="i32")
        compile_for(rope._rope_kernel, sig, dict(HALF=64, BLOCK_H=c["BLOCK_H"], BLOCK_D2=c["BLOCK_D2"]))
    for dt in ("bf16", "fp16"):
        for dyn, cache in ((True, True), (False, False)):
            sig = dict(qkv_ptr="*" + dt, cos_ptr="*fp32", sin_ptr="*fp32", kc_ptr="*" + dt, vc_ptr="*" + dt,
                       start_ptr="*i64" if dyn else "*" + dt, start_val="i32", wf_ptr="*i64", s_start="i32",
                       T="i32", H="i32", HKV="i32", n_rows_q="i32")
            sig.update({{n: "i64" for n in ("sqb", "sqt", "sqh", "sqd", "skb", "skt", "skh", "skd",
                                            "svb", "svt", "svh", "svd")}})
            sig.update(sct="i32")
            c = rope.qkv_rope_config(32 * 32 * 32, 128, interpret=False)
            compile_for(rope._qkv_rope_cache_kernel, sig,
                        dict(DYN=dyn, HAS_CACHE=cache, HAS_WF=cache, HALF=64, BLOCK_R=c["BLOCK_R"],
                             BLOCK_D2=c["BLOCK_D2"], USE_GDC=True))
    print("ok")
""")


def test_compile_sm90():
    """The GPU frontend and ptxas accept the kernel (bf16, fp16) for sm_90."""
    res = run_without_interpreter(_COMPILE.format(root=ROOT))
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-4000:]


QKV_SHAPES = [(1, 1, 2, 2, 32), (2, 7, 4, 2, 64), (3, 33, 2, 2, 32), (1, 32, 4, 4, 128)]


@pytest.mark.parametrize("shape", QKV_SHAPES, ids=["B{}-T{}-H{}-Hkv{}-D{}".format(*s) for s in QKV_SHAPES])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dynamic", [False, True], ids=["int-start", "tensor-start"])
@pytest.mark.parametrize("cached", [True, False], ids=["cache", "no-cache"])
def test_qkv_rope_cache(shape, dtype, dynamic, cached, device):
    """Fused RoPE + KV-cache write equals the reference bit for bit (same fp32 formula, one rounding);
    cache slots outside [start, start + T) are never touched."""
    from llada_triton.kernels.reference import qkv_rope_cache_ref
    from llada_triton.kernels.rotary import qkv_rope_cache

    B, T, H, Hkv, D = shape
    g = torch.Generator().manual_seed(1)
    qkv = torch.randn(B, T, H + 2 * Hkv, D, generator=g).to(device=device, dtype=dtype)
    cos, sin = rope_tables(D, 500000.0, 64)
    cos, sin = cos.to(device), sin.to(device)
    start = 5
    st = torch.tensor(start, device=device) if dynamic else start
    kc = torch.full((B, 64, Hkv, D), float("nan"), device=device, dtype=dtype) if cached else None
    vc = kc.clone() if cached else None
    ref = qkv_rope_cache_ref(qkv.clone(), cos, sin, st, None if kc is None else kc.clone(),
                             None if vc is None else vc.clone(), n_heads=H)
    out = qkv_rope_cache(qkv, cos, sin, st, kc, vc, n_heads=H)
    for name, a, b in zip("qkv", out, ref):
        if cached and name != "q":
            assert torch.isnan(a[:, :start]).all() and torch.isnan(a[:, start + T:]).all(), name
            a, b = a[:, start:start + T], b[:, start:start + T]
        if name == "v" or device == "cpu":
            assert torch.equal(a, b), name
        else:  # the GPU may contract x * c + y * s into an FMA: one fp32 rounding apart before the cast
            torch.testing.assert_close(a, b, rtol=2 * torch.finfo(dtype).eps, atol=2 * torch.finfo(dtype).eps)
    assert out[0].data_ptr() == qkv.data_ptr()  # q rotated in place


def test_qkv_rope_cache_validation():
    from llada_triton.kernels.rotary import qkv_rope_cache

    cos, sin = rope_tables(32, 500000.0, 16)
    qkv = torch.randn(1, 4, 6, 32)
    with pytest.raises(ValueError, match="n_heads=3"):
        qkv_rope_cache(qkv, cos, sin, 0, n_heads=3)
    with pytest.raises(ValueError, match=r"positions \[14, 18\)"):
        qkv_rope_cache(qkv, cos, sin, 14, n_heads=2)
    with pytest.raises(ValueError, match="both k_cache and v_cache"):
        qkv_rope_cache(qkv, cos, sin, 0, torch.zeros(1, 8, 2, 32), n_heads=2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_qkv_rope_cache_per_row_start_and_write_from(dtype, device):
    """Per-row starts ([B] tensor) and read-only slots below write_from[b]: equal to the reference."""
    from llada_triton.kernels.reference import qkv_rope_cache_ref
    from llada_triton.kernels.rotary import qkv_rope_cache

    B, T, H, Hkv, D = 3, 8, 4, 2, 64
    g = torch.Generator().manual_seed(2)
    qkv = torch.randn(B, T, H + 2 * Hkv, D, generator=g).to(device=device, dtype=dtype)
    cos, sin = rope_tables(D, 500000.0, 64)
    cos, sin = cos.to(device), sin.to(device)
    start = torch.tensor([3, 10, 20], device=device)
    write_from = torch.tensor([0, 14, 28], device=device)
    kc = torch.full((B, 40, Hkv, D), float("nan"), device=device, dtype=dtype)
    vc = kc.clone()
    ref = qkv_rope_cache_ref(qkv.clone(), cos, sin, start, kc.clone(), vc.clone(), n_heads=H, write_from=write_from)
    out = qkv_rope_cache(qkv, cos, sin, start, kc, vc, n_heads=H, write_from=write_from)
    written = (~torch.isnan(kc)).any(-1).any(-1).sum(1).tolist()
    assert written == [8, 4, 0]
    for name, a, b in zip("qkv", out, ref):
        a, b = a.nan_to_num(7.0), b.nan_to_num(7.0)
        if name == "v" or device == "cpu":
            assert torch.equal(a, b), name
        else:
            torch.testing.assert_close(a, b, rtol=2 * torch.finfo(dtype).eps, atol=2 * torch.finfo(dtype).eps)
