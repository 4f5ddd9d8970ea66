"""kernels.qkv_norm: the QKV projection with per-head QK-norm, partial RoPE and the cache write in its epilogue
(LLaDA2.x / LLaDA-MoE) vs the reference."""
import os
import textwrap

import pytest
import torch

from llada_triton.kernels import qkv_proj_norm_rope
from llada_triton.kernels.reference import qkv_proj_norm_rope_ref, rope_tables
from tests.helpers import run_without_interpreter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16"),
          pytest.param(torch.bfloat16, id="bf16", marks=pytest.mark.gpu)]
# (B, T, H, Hkv, D, R, d): llada2-tiny (GQA 2:1, rotary 8 of 16), lladamoe-tiny (MHA, full rotary), LLaDA2's head
# (128, rotary 64) over 74 rows (two row tiles, the second partial) with GQA 4:1, a head of 96 (padded tile rows) with
# GQA 3:1 and d not a multiple of the K-step
SHAPES = [(1, 7, 2, 1, 16, 8, 32), (3, 5, 4, 4, 16, 16, 64), (2, 37, 4, 1, 128, 64, 48), (1, 3, 3, 1, 96, 32, 40)]
T_MAX = 48


def _inputs(B, T, H, Hkv, D, R, d, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, d, generator=g).to(device=device, dtype=dtype)
    w = (torch.randn((H + 2 * Hkv) * D, d, generator=g) / d ** 0.5).to(device=device, dtype=dtype)
    qn, kn = ((1 + 0.3 * torch.randn(D, generator=g)).to(device=device, dtype=dtype) for _ in range(2))
    cos, sin = rope_tables(R, 10000.0, 96, device=device)
    kc = torch.randn(B, T_MAX, Hkv, D, generator=g).to(device=device, dtype=dtype)
    vc = torch.randn(B, T_MAX, Hkv, D, generator=g).to(device=device, dtype=dtype)
    return x, w, qn, kn, cos, sin, kc, vc


def _gold(x, w, qn, kn, cos, sin, *args, bias=None, **kw):
    """The reference in fp64 (the caches in ``args`` must be fp64 too)."""
    dbl = (lambda t: None if t is None else t.double())
    return qkv_proj_norm_rope_ref(x.double(), w.double(), dbl(qn), dbl(kn), 1e-6, cos.double(), sin.double(), *args,
                                  bias=dbl(bias), **kw)


def _close(got, ref, gold, dtype):
    """|got - gold| <= 2 |ref - gold| + two ulps of the dtype at the magnitude (the GEMM's and the norm's summation
    orders may move a rounded value by an ulp)."""
    err = (got.double() - gold).abs().max().item()
    err_ref = (ref.double() - gold).abs().max().item()
    floor = 2 * torch.finfo(dtype).eps * max(1.0, gold.abs().max().item())
    assert not torch.isnan(got).any()
    assert err <= 2 * err_ref + floor, (err, err_ref, floor)


def _run(shape, dtype, device, mode, *, bias=False, norm=True, config=None):
    """Kernel vs reference vs fp64 gold for one case; ``mode``: int start + cache, per-row start + write_from +
    cache, or a 0-dim tensor start without a cache."""
    B, T, H, Hkv, D, R, d = shape
    x, w, qn, kn, cos, sin, kc, vc = _inputs(*shape, dtype, device)
    if not norm:
        qn = kn = None
    b = (0.5 * torch.randn((H + 2 * Hkv) * D)).to(device=device, dtype=dtype) if bias else None
    rows = [(2 + 7 * i) % (T_MAX - T + 1) for i in range(B)]  # per-row starts that keep [start, start + T) in the cache
    start = {"int-cache": 3, "per_row-cache": torch.tensor(rows, device=device),
             "scalar-nocache": torch.tensor(5, device=device)}[mode]
    wf = torch.tensor([4 + i for i in range(B)], device=device) if mode == "per_row-cache" else None
    kw = dict(n_heads=H, write_from=wf, head_dim=D, bias=b)
    if mode.endswith("nocache"):
        got = qkv_proj_norm_rope(x, w, qn, kn, 1e-6, cos, sin, start, config=config, **kw)
        ref = qkv_proj_norm_rope_ref(x, w, qn, kn, 1e-6, cos, sin, start, **kw)
        gold = _gold(x, w, qn, kn, cos, sin, start, **kw)
    else:
        k1, v1, k2, v2 = kc.clone(), vc.clone(), kc.clone(), vc.clone()
        q, ko, vo = qkv_proj_norm_rope(x, w, qn, kn, 1e-6, cos, sin, start, k1, v1, config=config, **kw)
        assert ko is k1 and vo is v1
        qr, _, _ = qkv_proj_norm_rope_ref(x, w, qn, kn, 1e-6, cos, sin, start, k2, v2, **kw)
        qg, kg, vg = _gold(x, w, qn, kn, cos, sin, start, kc.double(), vc.double(), **kw)
        untouched = (kg == kc.double()).all(-1).all(-1) & (k2 == kc).all(-1).all(-1) & (v2 == vc).all(-1).all(-1)
        assert untouched.any() and torch.equal(k1[untouched], kc[untouched]) and torch.equal(v1[untouched],
                                                                                           vc[untouched])
        got, ref, gold = (q, k1, v1), (qr, k2, v2), (qg, kg, vg)
    assert got[0].shape == (B, T, H, D)
    for g_, r_, o_ in zip(got, ref, gold):
        _close(g_, r_, o_, dtype)


@pytest.mark.parametrize("mode", ["int-cache", "per_row-cache", "scalar-nocache"])
@pytest.mark.parametrize("shape", SHAPES, ids=["B{}-T{}-H{}-Hkv{}-D{}-R{}-d{}".format(*s) for s in SHAPES])
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(shape, dtype, mode, device):
    _run(shape, dtype, device, mode)


@pytest.mark.parametrize("shape", SHAPES[::2], ids=["tiny", "D128"])
@pytest.mark.parametrize("norm,bias", [(True, True), (False, False)], ids=["bias", "no-qk-norm"])
def test_bias_and_no_norm(shape, norm, bias, device):
    """A q/k/v bias (added before the one rounding), and no QK-norm (plain partial RoPE)."""
    _run(shape, torch.float32, device, "per_row-cache", bias=bias, norm=norm)
    _run(shape, torch.float16, device, "scalar-nocache", bias=bias, norm=norm)


@pytest.mark.parametrize("split", [1, 3], ids=["one-pass", "split-k"])
def test_gpu_like_blocks(split, device):
    """GPU-sized tiles under the interpreter: several K-steps (one partial) and row tiles; split over K (the
    partials summed by the second launch) with a short last split."""
    _run((2, 21, 2, 1, 128, 64, 72), torch.float32, device, "per_row-cache",
         config=dict(HP=64, BM=16, BK=16, SPLIT_K=split, num_warps=4, num_stages=1))
    _run((1, 5, 3, 1, 16, 8, 40), torch.float16, device, "scalar-nocache", bias=True,
         config=dict(HP=8, BM=16, BK=16, SPLIT_K=split, num_warps=4, num_stages=1))


def test_decode_config_splits_k():
    """At decode sizes the GPU config splits K to about 128 programs (LLaDA2.0-mini: 24 heads, d 2048), not above."""
    from llada_triton.kernels.qkv_norm import qkv_norm_config

    assert qkv_norm_config(32, 2048, 128, 24, torch.bfloat16, interpret=False)["SPLIT_K"] == 4
    assert qkv_norm_config(1024, 2048, 128, 24, torch.bfloat16, interpret=False)["SPLIT_K"] == 1
    assert qkv_norm_config(32, 2048, 128, 24, torch.bfloat16, interpret=True)["SPLIT_K"] == 1


def test_validation(device):
    x, w, qn, kn, cos, sin, kc, vc = _inputs(1, 4, 2, 1, 16, 8, 32, torch.float32, device)
    call = (lambda *a, **k: qkv_proj_norm_rope(*a, **{"n_heads": 2, "head_dim": 16, **k}))
    with pytest.raises(ValueError, match="q_norm and k_norm must both"):
        call(x, w, qn, None, 1e-6, cos, sin, 0, kc, vc)
    with pytest.raises(ValueError, match=r"k_norm must be \[16\]"):
        call(x, w, qn, kn[:8], 1e-6, cos, sin, 0, kc, vc)
    with pytest.raises(ValueError, match="q_norm has dtype"):
        call(x, w, qn.half(), kn, 1e-6, cos, sin, 0, kc, vc)
    wide_cos, wide_sin = rope_tables(32, 10000.0, 96, device=device)
    with pytest.raises(ValueError, match=r"cos_table must be fp32 \[L, R \(even, <= 16\)\]"):
        call(x, w, qn, kn, 1e-6, wide_cos, wide_sin, 0, kc, vc)
    with pytest.raises(ValueError, match="sin_table must be"):
        call(x, w, qn, kn, 1e-6, cos, sin[:, :6], 0, kc, vc)
    with pytest.raises(ValueError, match="eps must be"):
        call(x, w, qn, kn, -1.0, cos, sin, 0, kc, vc)
    with pytest.raises(ValueError, match="w_qkv must be"):
        call(x, w[:-16], qn, kn, 1e-6, cos, sin, 0, kc, vc)
    with pytest.raises(ValueError, match="exceed"):
        call(x, w, qn, kn, 1e-6, cos, sin, T_MAX - 2, kc, vc)
    with pytest.raises(ValueError, match="config HP=4 must be >= head_dim / 2 = 8"):
        call(x, w, qn, kn, 1e-6, cos, sin, 0, kc, vc, config=dict(HP=4, BM=16, BK=32, num_warps=4, num_stages=1))


def test_ops_wiring():
    """triton_ops() runs the fused kernel for the MoE families; replacing ``linear`` or ``qk_norm_rope`` clears
    it (so an ablation of either really runs), the reference ops compose ``linear`` + ``qk_norm_rope``."""
    from llada_triton.models import REFERENCE_OPS, triton_ops

    ops = triton_ops()
    assert ops.qkv_proj_norm_rope is qkv_proj_norm_rope
    assert ops.replace(linear=REFERENCE_OPS.linear).qkv_proj_norm_rope is None
    assert ops.replace(qk_norm_rope=REFERENCE_OPS.qk_norm_rope).qkv_proj_norm_rope is None
    assert REFERENCE_OPS.qkv_proj_norm_rope is None


@pytest.mark.gpu
@pytest.mark.parametrize("rows", [32, 1024], ids=["B1xT32", "B32xT32"])
def test_bf16_llada2_mini_shape(rows):
    """LLaDA2.0-mini's attention input (d 2048, 16 q / 4 kv heads of 128, rotary 64) in bf16 on the GPU."""
    _run((rows // 32, 32, 16, 4, 128, 64, 2048), torch.bfloat16, "cuda", "per_row-cache")


_COMPILE = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    import torch
    from llada_triton.kernels._common import compile_for
    from llada_triton.kernels import qkv_norm
    ptrs = ("x_ptr", "w_ptr", "b_ptr", "qn_ptr", "kn_ptr", "out_ptr", "kc_ptr", "vc_ptr")
    ints = ("s_start", "start_val", "M", "T", "H", "HKV", "K", "K_PER_SPLIT", "sps", "stride_xm", "stride_wn", "sob",
            "sot", "soh", "skb", "skt", "skh", "svb", "svt", "svh", "sct")
    # LLaDA2's head at decode size (split over K: both phases, PDL on), the tiny head at prefill size (one pass)
    cases = [("bf16", 128, 64, True, True, 1), ("bf16", 128, 64, True, True, 2), ("bf16", 16, 8, False, False, 0),
             ("fp16", 128, 128, False, False, 0)]
    for dt, D, R, dyn, cache, phase in cases:
        sig = {{n: "*" + dt for n in ptrs}}
        sig.update({{n: "i32" for n in ints}})
        sig.update(cos_ptr="*fp32", sin_ptr="*fp32", p_ptr="*fp32", start_ptr="*i64", wf_ptr="*i64", eps="fp32")
        cfg = qkv_norm.qkv_norm_config(32 if cache else 1024, 2048, D, 24, torch.bfloat16, interpret=False)
        assert (cfg["SPLIT_K"] > 1) == cache
        k = compile_for(qkv_norm._qkv_norm_rope_kernel, sig,
                        dict(D=D, R=R, HP=cfg["HP"], BM=cfg["BM"], BK=cfg["BK"], PHASE=phase, S=cfg["SPLIT_K"],
                             DYN=dyn, HAS_CACHE=cache, HAS_WF=cache, HAS_BIAS=not cache, HAS_NORM=True,
                             EVEN_K=True, UPCAST=False, IEEE=False, USE_GDC=cache))
        assert ("griddepcontrol" in k.asm["ptx"]) == cache
    print("ok")
""")


def test_compile_sm90():
    """The GPU frontend and ptxas accept the kernel (bf16, fp16; LLaDA2's and the tiny head; split-K phases and the
    one-pass kernel; PDL on and off)."""
    res = run_without_interpreter(_COMPILE.format(root=ROOT))
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-4000:]
