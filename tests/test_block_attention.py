"""kernels.attention against kernels.reference.block_attention_ref.

Tolerance (flash-attention style, derived, not tuned): the kernel's max error against an fp64 reference
may be at most 2x the error of the torch reference run at the same precision, plus a small floor.
Every cache slot no query may see is NaN-poisoned, as are the output and the split workspaces (``torch.empty``
NaN-filled during the launch).
"""
import os
import textwrap

import pytest
import torch

from tests.helpers import run_without_interpreter

from llada_triton.kernels.attention import _launch, block_attention
from llada_triton.kernels.reference import block_attention_ref

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BF16 = pytest.param(torch.bfloat16, marks=pytest.mark.gpu, id="bf16")
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16"), BF16]
FLOOR = {torch.float32: 2e-5, torch.float16: 2e-4, torch.bfloat16: 2e-3}


# ------------------------------------------------------------------------------------------ helpers
def _block_causal_key_end(Tq, cache, kv_len, sub):
    """Query i sees the prefix and its sub-block and those before it: keys < cache + (i//sub+1)*sub."""
    i = torch.arange(Tq)
    return torch.clamp(cache + (i // sub + 1) * sub, max=kv_len)


def _make_case(B, Tq, H, Hkv, D, cache, dtype, device, *, kv_start=None, key_end=None, slack=5,
               kv_len=None, seed=0):
    """Random q / cache; returns clean tensors (zeros where invisible) and NaN-poisoned ones."""
    g = torch.Generator().manual_seed(seed)
    kv_len_real = cache + Tq
    T_max = kv_len_real + slack
    kv_len = kv_len_real if kv_len is None else kv_len
    q = torch.randn(B, Tq, H, D, generator=g)
    k = torch.randn(B, T_max, Hkv, D, generator=g)
    v = torch.randn(B, T_max, Hkv, D, generator=g)
    ks = None if kv_start is None else torch.tensor(kv_start, dtype=torch.int32)
    ke = None if key_end is None else key_end.to(torch.int64)
    # which slots can any query of batch row b see?
    visible = torch.zeros(B, T_max, dtype=torch.bool)
    for b in range(B):
        lo = 0 if ks is None else int(ks[b])
        hi = min(kv_len, kv_len if ke is None else int((ke[b] if ke.ndim == 2 else ke).max()))
        visible[b, lo:hi] = True
    k = torch.where(visible[:, :, None, None], k, torch.zeros(()))
    v = torch.where(visible[:, :, None, None], v, torch.zeros(()))
    k_bad = torch.where(visible[:, :, None, None], k, torch.full((), float("nan")))
    v_bad = torch.where(visible[:, :, None, None], v, torch.full((), float("nan")))
    to = dict(device=device)
    return dict(
        q=q.to(dtype=dtype, **to), k=k.to(dtype=dtype, **to), v=v.to(dtype=dtype, **to),
        k_bad=k_bad.to(dtype=dtype, **to), v_bad=v_bad.to(dtype=dtype, **to), kv_len=kv_len,
        kv_start=None if ks is None else ks.to(device), key_end=None if ke is None else ke.to(device))


def _nan_empty(real):
    """``torch.empty`` whose float tensors come NaN-filled (the split workspaces: a read before a write shows)."""
    def empty(*args, **kw):
        t = real(*args, **kw)
        return t.fill_(float("nan")) if t.is_floating_point() else t
    return empty


def _run(c, config=None):
    """The kernel on the poisoned cache, NaN-filled output and workspaces."""
    out = torch.full_like(c["q"], float("nan"))
    with pytest.MonkeyPatch.context() as m:
        m.setattr(torch, "empty", _nan_empty(torch.empty))
        return _launch(c["q"], c["k_bad"], c["v_bad"], c["kv_len"], c["kv_start"], c["key_end"],
                       config=config, out=out)


def _check(c, o, dtype, rows_ok=None):
    args = (c["kv_len"], c["kv_start"], c["key_end"])
    ref64 = block_attention_ref(c["q"].double(), c["k"].double(), c["v"].double(), *args)
    ref_lp = block_attention_ref(c["q"], c["k"], c["v"], *args)
    assert o.dtype == dtype and o.shape == c["q"].shape
    if rows_ok is not None:
        o, ref64, ref_lp = o[:, rows_ok], ref64[:, rows_ok], ref_lp[:, rows_ok]
    assert torch.isfinite(o).all(), "non-finite output"
    err = (o.double() - ref64).abs().max().item()
    err_ref = (ref_lp.double() - ref64).abs().max().item()
    tol = 2 * err_ref + FLOOR[dtype]
    assert err <= tol, f"max err {err:.3g} > tol {tol:.3g} (torch ref err {err_ref:.3g})"


# -------------------------------------------------------------------------------------- correctness
# (B, Tq, H, Hkv, D, cache_len, kv_start, key_end kind); key_end kind: None | "tq<sub>" | "btq"
CASES = [
    (1, 32, 4, 4, 128, 111, None, None),
    (1, 1, 4, 4, 64, 0, None, None),
    (1, 7, 4, 2, 64, 63, None, "tq4"),
    (3, 7, 4, 2, 64, 63, [0, 5, 40], "tq2"),
    (3, 33, 4, 2, 128, 111, [0, 17, 100], "btq"),
    (3, 33, 4, 4, 64, 0, None, "btq"),
    (1, 32, 4, 2, 64, 1000, None, "tq8"),
    (3, 32, 4, 4, 128, 1000, [0, 300, 999], None),
]


def _case_id(c):
    B, Tq, H, Hkv, D, cache, ks, ke = c
    return f"B{B}-T{Tq}-H{H}kv{Hkv}-D{D}-c{cache}" + ("-ks" if ks else "") + (f"-{ke}" if ke else "")


def _key_end(kind, B, Tq, cache):
    kv_len = cache + Tq
    if kind is None:
        return None
    if kind.startswith("tq"):
        return _block_causal_key_end(Tq, cache, kv_len, int(kind[2:]))
    # "btq": a different block-causal pattern per batch row; the last row sees everything
    rows = [_block_causal_key_end(Tq, cache, kv_len, s) for s in (1, 4, 8)][:B - 1]
    rows.append(torch.full((Tq,), kv_len))
    return torch.stack(rows)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_matches_reference(case, dtype, device):
    B, Tq, H, Hkv, D, cache, ks, ke = case
    big = cache >= 1000
    if big and dtype == torch.float16 and INTERPRET:
        pytest.skip("big cache runs in fp32 only under the interpreter (time budget)")
    c = _make_case(B, Tq, H, Hkv, D, cache, dtype, device, kv_start=ks, key_end=_key_end(ke, B, Tq, cache))
    _check(c, _run(c), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_public_function(dtype, device):
    c = _make_case(2, 7, 4, 2, 64, 63, dtype, device, kv_start=[0, 9],
                   key_end=_block_causal_key_end(7, 63, 70, 3))
    o = block_attention(c["q"], c["k_bad"], c["v_bad"], c["kv_len"], c["kv_start"], c["key_end"])
    _check(c, o, dtype)
    # explicit scale, no masks at all
    c = _make_case(1, 7, 4, 4, 64, 20, dtype, device, slack=0)
    o = block_attention(c["q"], c["k"], c["v"], c["kv_len"], scale=0.3)
    ref64 = block_attention_ref(c["q"].double(), c["k"].double(), c["v"].double(), c["kv_len"], scale=0.3)
    ref_lp = block_attention_ref(c["q"], c["k"], c["v"], c["kv_len"], scale=0.3)
    err, err_ref = ((o.double() - ref64).abs().max().item(), (ref_lp.double() - ref64).abs().max().item())
    assert err <= 2 * err_ref + FLOOR[dtype]


# GPU-like tiles under the interpreter too: several query-row tiles, several KV tiles per split,
# more splits than tiles (empty splits), single split (no merge kernel).
GPU_LIKE = [
    dict(block_m=16, block_n=32, n_splits=3, num_warps=4, num_stages=2),
    dict(block_m=64, block_n=16, n_splits=4, num_warps=4, num_stages=2),
    dict(block_m=32, block_n=64, n_splits=1, num_warps=4, num_stages=2),
    # the batch-1 decode tiles (16 query rows, 128 keys, no split)
    dict(block_m=16, block_n=128, n_splits=1, num_warps=4, num_stages=3),
    # large batches over short ranges (32 query rows, 32 keys, no split)
    dict(block_m=32, block_n=32, n_splits=1, num_warps=4, num_stages=3),
]


def _cfg_id(d):
    return f"bm{d['block_m']}-bn{d['block_n']}-s{d['n_splits']}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", GPU_LIKE, ids=_cfg_id)
def test_gpu_like_configs(cfg, dtype, device):
    if INTERPRET and dtype == torch.float16 and cfg is not GPU_LIKE[0]:
        pytest.skip("fp16 runs the first config only under the interpreter (time budget)")
    B, Tq, H, Hkv, D, cache = 2, 33, 4, 2, 64, 63
    ke = torch.stack([_block_causal_key_end(Tq, cache, cache + Tq, 4), torch.full((Tq,), cache + Tq)])
    c = _make_case(B, Tq, H, Hkv, D, cache, dtype, device, kv_start=[0, 11], key_end=ke)
    _check(c, _run(c, config=cfg), dtype)
    # short range: kv_len = Tq, fewer tiles than splits
    c = _make_case(1, 7, 4, 4, D, 0, dtype, device, key_end=_block_causal_key_end(7, 0, 7, 2))
    _check(c, _run(c, config=cfg), dtype)


# ---------------------------------------------------------------------------------------- skipping
@pytest.mark.parametrize("dtype", DTYPES)
def test_graph_style_skips_tiles(dtype, device):
    """kv_len = T_max, real limits only in kv_start / key_end: slots outside are never read.

    Slots below kv_start[b] and from max(key_end[b]) on are NaN, so a load there would show up.
    """
    B, Tq, H, Hkv, D, cache, slack = 2, 32, 4, 2, 64, 150, 700
    kv_len_real = cache + Tq
    ke = torch.stack([_block_causal_key_end(Tq, 40, 40 + Tq, 8),            # row 0: short sequence
                      _block_causal_key_end(Tq, cache, kv_len_real, 16)])  # row 1: full length
    ks = [3, 70]
    T_max = kv_len_real + slack
    c = _make_case(B, Tq, H, Hkv, D, cache, dtype, device, kv_start=ks, key_end=ke, slack=slack,
                   kv_len=T_max)
    for cfg in (dict(block_m=32, block_n=64, n_splits=3, num_warps=4, num_stages=2), None):
        _check(c, _run(c, config=cfg), dtype)


@pytest.mark.gpu
def test_split_merge_is_deterministic(device):
    """Many groups x splits on the GPU: the merge order is fixed, so repeated launches are bitwise identical
    and match the reference."""
    dtype = torch.bfloat16
    B, Tq, H, D, cache = 4, 32, 32, 128, 2000
    c = _make_case(B, Tq, H, H, D, cache, dtype, device, kv_start=[0, 7, 500, 1999])
    cfg = dict(n_splits=16)
    first = _run(c, config=cfg)
    _check(c, first, dtype)
    for _ in range(20):
        assert torch.equal(_run(c, config=cfg), first)


@pytest.mark.parametrize("n_splits", [1, 3], ids=["s1", "s3"])
def test_fully_masked_rows_give_zero(n_splits, device):
    """Outside the contract (a query sees no key): the output row is 0, never NaN."""
    dtype = torch.float32
    B, Tq, H, D, cache = 2, 7, 4, 64, 40
    ke = torch.stack([_block_causal_key_end(Tq, cache, cache + Tq, 1),
                      torch.tensor([5, 5, 47, 47, 3, 47, 47])])   # row 1: queries 0,1,4 see nothing
    c = _make_case(B, Tq, H, H, D, cache, dtype, device, kv_start=[0, 10], key_end=ke)
    o = _run(c, config=dict(block_m=16, block_n=16, n_splits=n_splits, num_warps=4, num_stages=2))
    assert torch.isfinite(o).all()
    assert (o[1, [0, 1, 4]] == 0).all()
    alive = [2, 3, 5, 6]
    _check(dict(c, q=c["q"][:1], k=c["k"][:1], v=c["v"][:1], kv_start=c["kv_start"][:1],
                key_end=c["key_end"][:1]), o[:1], dtype)
    _check(dict(c, q=c["q"][1:, alive], k=c["k"][1:], v=c["v"][1:], kv_start=c["kv_start"][1:],
                key_end=c["key_end"][1:, alive]), o[1:, alive], dtype)
    # no key at all: kv_len = 0
    q = torch.randn(1, 3, 2, 64, device=device)
    kc = torch.full((1, 4, 2, 64), float("nan"), device=device)
    o = block_attention(q, kc, kc, 0)
    assert (o == 0).all()


def test_input_validation(device):
    q = torch.randn(1, 4, 4, 64, device=device)
    kc = torch.randn(1, 8, 2, 64, device=device)
    with pytest.raises(ValueError, match="multiple"):
        block_attention(q, kc[:, :, :1].expand(1, 8, 3, 64).contiguous(), kc[:, :, :1].expand(1, 8, 3, 64).contiguous(), 4)
    with pytest.raises(ValueError, match="kv_len"):
        block_attention(q, kc, kc, 9)
    with pytest.raises(TypeError, match="kv_len"):
        block_attention(q, kc, kc, torch.tensor(4))
    with pytest.raises(ValueError, match="key_end"):
        block_attention(q, kc, kc, 4, key_end=torch.ones(5, dtype=torch.int32, device=device))
    with pytest.raises(ValueError, match="kv_start"):
        block_attention(q, kc, kc, 4, kv_start=torch.zeros(2, dtype=torch.int32, device=device))
    with pytest.raises(ValueError, match="dtype"):
        block_attention(q, kc.half(), kc.half(), 4)
    with pytest.raises(ValueError, match="contiguous"):
        block_attention(q.transpose(2, 3), kc, kc, 4)
    for scale in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="scale must be"):
            block_attention(q, kc, kc, 4, scale=scale)


# ------------------------------------------------------------------------------ sm_90 compile check
_COMPILE_SCRIPT = textwrap.dedent("""
    import os
    assert "TRITON_INTERPRET" not in os.environ
    from llada_triton.kernels._common import compile_for
    from llada_triton.kernels.attention import _block_attn_fwd_kernel, _block_attn_merge_kernel
    INTS = ("Tq G Hkv kv_len n_splits n_m_tiles stride_qb stride_qt stride_qh stride_kb stride_kt "
            "stride_kh stride_vb stride_vt stride_vh stride_ob stride_ot stride_oh stride_ksb "
            "stride_keb stride_ket").split()
    for dt in ("fp16", "bf16"):
        for D in (64, 128):
            # every (dtype, D) with the split path; the direct path twice
            for split in ((True, False) if (dt, D) in (("fp16", 64), ("bf16", 128)) else (True,)):
                sig = dict(q_ptr="*" + dt, k_ptr="*" + dt, v_ptr="*" + dt, o_ptr="*" + dt,
                           m_part_ptr="*fp32", l_part_ptr="*fp32", acc_part_ptr="*fp32",
                           kv_start_ptr="*i32", key_end_ptr="*i64")
                sig.update({n: "i32" for n in INTS})
                sig["qk_scale"] = "fp32"
                k = compile_for(_block_attn_fwd_kernel, sig, dict(
                    D=D, BLOCK_M=32, BLOCK_N=64, BLOCK_D=D, HAS_KV_START=True, HAS_KEY_END=True,
                    SPLIT=split, UPCAST=False, DOT_PREC="tf32", USE_GDC=True))
                assert "mma" in k.asm["ptx"]
                print("ok fwd", dt, D, split, k.metadata.shared)
        sig = dict(m_part_ptr="*fp32", l_part_ptr="*fp32", acc_part_ptr="*fp32", o_ptr="*" + dt)
        sig.update({n: "i32" for n in "Tq G Hkv n_splits n_m_tiles stride_ob stride_ot stride_oh".split()})
        compile_for(_block_attn_merge_kernel, sig, dict(D=128, BLOCK_M=32, BLOCK_D=128, MROWS=8,
                                                        SPLITS_P2=8, USE_GDC=True))
        print("ok merge", dt)
""")


def test_compile_sm90():
    r = run_without_interpreter(_COMPILE_SCRIPT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("ok fwd") == 6 and r.stdout.count("ok merge") == 2, r.stdout


def test_attention_config_fresh_dict():
    """The launch config is memoised per shape; each call hands out its own dict (``_launch`` updates it)."""
    from llada_triton.kernels.attention import _attention_config
    a = _attention_config(1, 32, 4, 4, 16, 100, torch.device("cpu"), True)
    want = dict(a)
    a["n_splits"] = -1
    assert _attention_config(1, 32, 4, 4, 16, 100, torch.device("cpu"), True) == want


def test_gpu_config_rule(monkeypatch):
    """The GPU launch rule (a pure function of the shapes and the SM count), at LLaDA-8B decode shapes on a
    132-SM GPU: batch 1 with a short range gets 16-row query tiles and 128-key tiles, no split; longer
    ranges split the keys instead; batch 8 or more query rows keep 32/64-row tiles; batch 32 (>= 4 waves of
    programs) over at most 256 keys gets 32-key tiles."""
    import types

    from llada_triton.kernels.attention import _attention_config

    props = types.SimpleNamespace(multi_processor_count=132)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: props)
    cpu = torch.device("cpu")
    pick = lambda B, Tq, kv: _attention_config(B, Tq, 32, 32, 128, kv, cpu, False)  # noqa: E731
    c = pick(1, 32, 384)
    assert (c["block_m"], c["block_n"], c["n_splits"]) == (16, 128, 1)
    c = pick(1, 32, 4096)
    assert c["n_splits"] > 1 and (c["block_m"], c["block_n"]) == (32, 64)
    c = pick(8, 32, 384)
    assert (c["block_m"], c["block_n"], c["n_splits"]) == (32, 64, 1)
    c = pick(1, 64, 384)
    assert (c["block_m"], c["block_n"], c["n_splits"]) == (64, 64, 1)
    # batch 32 (1024 programs, >= 4 waves): 32-key tiles up to 256 keys, 64-key tiles above
    for kv, bn in ((128, 32), (256, 32), (384, 64), (1024, 64)):
        c = pick(32, 32, kv)
        assert (c["block_m"], c["block_n"], c["n_splits"]) == (32, bn, 1), (kv, c)
    c = pick(8, 32, 128)
    assert (c["block_m"], c["block_n"], c["n_splits"]) == (32, 64, 1)
    c = pick(32, 64, 128)   # 64-row query tiles: not measured with 32-key tiles, the default stays
    assert (c["block_m"], c["block_n"], c["n_splits"]) == (64, 64, 1)
