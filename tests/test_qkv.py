"""kernels.qkv: the QKV projection with RoPE and the cache write in its epilogue vs the reference."""
import os
import textwrap

import pytest
import torch

from llada_triton.kernels.qkv import fused_supported, qkv_proj_rope
from llada_triton.kernels.reference import qkv_proj_rope_ref, rope_tables
from tests.helpers import run_without_interpreter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16"),
          pytest.param(torch.bfloat16, id="bf16", marks=pytest.mark.gpu)]
# (B, T, H, Hkv, D, d): tiny-golden-like D=16, GQA, LLaDA's D=128 (2 tiles per head), D=96 (16 pairs a tile)
SHAPES = [(1, 7, 2, 2, 16, 32), (3, 5, 4, 2, 64, 48), (1, 32, 2, 2, 128, 64), (2, 3, 2, 1, 96, 40)]
T_MAX = 48


def _inputs(B, T, H, Hkv, D, d, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, d, generator=g).to(device=device, dtype=dtype)
    w = (torch.randn((H + 2 * Hkv) * D, d, generator=g) / d ** 0.5).to(device=device, dtype=dtype)
    cos, sin = rope_tables(D, 10000.0, 64, device=device)
    kc = torch.randn(B, T_MAX, Hkv, D, generator=g).to(device=device, dtype=dtype)
    vc = torch.randn(B, T_MAX, Hkv, D, generator=g).to(device=device, dtype=dtype)
    return x, w, cos, sin, kc, vc


def _close(got, ref, gold, dtype):
    """|got - gold| <= 2 |ref - gold| + one ulp of the dtype at the magnitude (the GEMM's summation order
    may move the rounded projection by an ulp before the rotation)."""
    err = (got.double() - gold).abs().max().item()
    err_ref = (ref.double() - gold).abs().max().item()
    floor = 2 * torch.finfo(dtype).eps * max(1.0, gold.abs().max().item())
    assert not torch.isnan(got).any()
    assert err <= 2 * err_ref + floor, (err, err_ref, floor)


@pytest.mark.parametrize("start_kind", ["int", "scalar", "per_row"])
@pytest.mark.parametrize("cache", [True, False], ids=["cache", "nocache"])
@pytest.mark.parametrize("shape", SHAPES, ids=["B{}-T{}-H{}-Hkv{}-D{}-d{}".format(*s) for s in SHAPES])
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(shape, dtype, cache, start_kind, device):
    B, T, H, Hkv, D, d = shape
    x, w, cos, sin, kc, vc = _inputs(*shape, dtype, device)
    assert fused_supported(B * T, D)
    starts = [3 + 5 * b for b in range(B)]
    start = {"int": 3, "scalar": torch.tensor(3, device=device),
             "per_row": torch.tensor(starts, device=device)}[start_kind]
    wf = torch.tensor([5 + b for b in range(B)], device=device) if cache and start_kind != "int" else None
    kw = dict(n_heads=H, write_from=wf, head_dim=D)
    if cache:
        k1, v1, k2, v2 = kc.clone(), vc.clone(), kc.clone(), vc.clone()
        kg, vg = kc.double(), vc.double()
        q, ko, vo = qkv_proj_rope(x, w, cos, sin, start, k1, v1, **kw)
        assert ko is k1 and vo is v1
        qr, _, _ = qkv_proj_rope_ref(x, w, cos, sin, start, k2, v2, **kw)
        qg, _, _ = qkv_proj_rope_ref(x.double(), w.double(), cos.double(), sin.double(), start, kg, vg, **kw)
        written = (k2 != kc).any(-1).any(-1) | (v2 != vc).any(-1).any(-1)         # [B, T_MAX] slots the ref wrote
        untouched = ~((kg != kc.double()).any(-1).any(-1) | written)
        assert torch.equal(k1[untouched], kc[untouched]) and torch.equal(v1[untouched], vc[untouched])
        _close(k1, k2, kg, dtype)
        _close(v1, v2, vg, dtype)
    else:
        q, k, v = qkv_proj_rope(x, w, cos, sin, start, **kw)
        qr, kr, vr = qkv_proj_rope_ref(x, w, cos, sin, start, **kw)
        qg, kg, vg = qkv_proj_rope_ref(x.double(), w.double(), cos.double(), sin.double(), start, **kw)
        _close(k, kr, kg, dtype)
        _close(v, vr, vg, dtype)
    assert q.shape == (B, T, H, D)
    _close(q, qr, qg, dtype)


def test_unfused_above_max_rows(device):
    """More than MAX_ROWS rows: F.linear + qkv_rope_cache, the same result as the reference."""
    B, T, H, Hkv, D, d = 2, 40, 2, 2, 16, 32
    x, w, cos, sin, kc, vc = _inputs(B, T, H, Hkv, D, d, torch.float32, device, seed=1)
    assert not fused_supported(B * T, D)
    k1, v1, k2, v2 = kc.clone(), vc.clone(), kc.clone(), vc.clone()
    q, _, _ = qkv_proj_rope(x, w, cos, sin, 4, k1, v1, n_heads=H)
    qr, _, _ = qkv_proj_rope_ref(x, w, cos, sin, 4, k2, v2, n_heads=H)
    torch.testing.assert_close(q, qr, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(k1, k2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v1, v2, atol=1e-5, rtol=1e-5)


def test_validation(device):
    x, w, cos, sin, kc, vc = _inputs(1, 4, 2, 2, 16, 32, torch.float32, device)
    with pytest.raises(ValueError, match="w_qkv must be"):
        qkv_proj_rope(x, w[:-16], cos, sin, 0, kc, vc, n_heads=2)
    with pytest.raises(ValueError, match="give both k_cache and v_cache"):
        qkv_proj_rope(x, w, cos, sin, 0, kc, None, n_heads=2)
    with pytest.raises(ValueError, match="exceed"):
        qkv_proj_rope(x, w, cos, sin, T_MAX - 2, kc, vc, n_heads=2)
    with pytest.raises(ValueError, match="a tensor start must be int64"):
        qkv_proj_rope(x, w, cos, sin, torch.tensor([0, 1], device=device), kc, vc, n_heads=2)


_COMPILE = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from llada_triton.kernels._common import compile_for
    from llada_triton.kernels import qkv
    for dt in ("bf16", "fp16"):
        for dyn, cache in ((True, True), (False, False)):
            sig = dict(x_ptr="*" + dt, w_ptr="*" + dt, b_ptr="*" + dt, out_ptr="*" + dt, cos_ptr="*fp32",
                       sin_ptr="*fp32", kc_ptr="*" + dt, vc_ptr="*" + dt, start_ptr="*i64", start_val="i32",
                       wf_ptr="*i64",
                       s_start="i32")
            sig.update({{n: "i32" for n in ("M", "T", "H", "HKV", "K", "stride_xm", "stride_wn", "sob", "sot",
                                            "soh", "skb", "skt", "skh", "svb", "svt", "svh", "sct")}})
            k = compile_for(qkv._qkv_proj_rope_kernel, sig,
                            dict(D=128, HB=32, BM=32, BK=64, DYN=dyn, HAS_CACHE=cache, HAS_WF=cache, HAS_BIAS=cache,
                                 EVEN_K=True, UPCAST=False, IEEE=False, USE_GDC=True))
            assert "griddepcontrol" in k.asm["ptx"] and "prefetch.global.L2" in k.asm["ptx"]
    print("ok")
""")


def test_compile_sm90():
    """The GPU frontend and ptxas accept the kernel (bf16, fp16; PDL on)."""
    res = run_without_interpreter(_COMPILE.format(root=ROOT))
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-4000:]
