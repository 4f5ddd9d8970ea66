"""kernels.moe (moe_route, moe_align, moe_experts) against kernels.reference (moe_*_ref).

Routing ids and alignment are discrete: equal to the reference (ties to the lowest index). Expert outputs use the
derived tolerance of tests/test_mlp.py: the kernel's max error against an fp64 evaluation of the same formula is
at most 2x the torch reference's error at the same precision, plus one ulp of the dtype at the output's magnitude.
"""
import os
import textwrap

import pytest
import torch

from tests.helpers import run_without_interpreter

from llada_triton.kernels import moe_align, moe_experts, moe_route
from llada_triton.kernels.reference import moe_align_ref, moe_experts_ref, moe_route_ref

GPU = pytest.mark.gpu
DTYPES = [
    pytest.param(torch.float32, id="fp32"),
    pytest.param(torch.float16, id="fp16"),
    pytest.param(torch.bfloat16, id="bf16", marks=GPU),
]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LLADA2_TINY = dict(top_k=4, n_group=4, topk_group=2, score_func="sigmoid", norm_topk_prob=True,
                   routed_scaling_factor=2.5)

# (name, M, d, E, routing options, with expert_bias)
ROUTES = [
    ("llada2-tiny", 9, 64, 16, LLADA2_TINY, True),
    ("llada2-1tok", 1, 64, 16, LLADA2_TINY, True),
    ("sigmoid-top1", 7, 64, 16, dict(top_k=1, routed_scaling_factor=2.5), True),
    ("lladamoe-softmax", 11, 64, 16, dict(top_k=4, score_func="softmax", norm_topk_prob=False), False),
    ("softmax-norm", 5, 32, 8, dict(top_k=2, score_func="softmax", norm_topk_prob=True), False),
    ("odd-E12-G3-d48", 6, 48, 12, dict(top_k=3, n_group=3, topk_group=2, routed_scaling_factor=1.5), True),
    ("E64-top8-G8", 33, 80, 64, dict(top_k=8, n_group=8, topk_group=4, routed_scaling_factor=2.5), True),
]


def _route_inputs(M, d, E, dtype, device, bias, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, d, generator=g).to(device=device, dtype=dtype)
    w = (torch.randn(E, d, generator=g) / d ** 0.5).to(device=device, dtype=dtype)
    b = (0.1 * torch.randn(E, generator=g)).to(device=device, dtype=dtype) if bias else None
    return x, w, b


def _check_weights(w, w_ref, scale):
    """fp32 weights from the same logits summed in another order: a few fp32 ulps of the scale."""
    assert w.dtype == torch.float32 and not torch.isnan(w).any()
    torch.testing.assert_close(w, w_ref, rtol=0, atol=64 * torch.finfo(torch.float32).eps * max(1.0, abs(scale)))


@pytest.mark.parametrize("name,M,d,E,opts,bias", ROUTES, ids=[r[0] for r in ROUTES])
@pytest.mark.parametrize("dtype", DTYPES)
def test_route(name, M, d, E, opts, bias, dtype, device):
    x, w, b = _route_inputs(M, d, E, dtype, device, bias)
    got_w, got_ids = moe_route(x, w, b, **opts)
    ref_w, ref_ids = moe_route_ref(x, w, b, **opts)
    assert got_ids.dtype == torch.int32 and got_ids.shape == (M, opts["top_k"])
    assert torch.equal(got_ids, ref_ids)
    _check_weights(got_w, ref_w, opts.get("routed_scaling_factor", 1.0))


def test_route_mixed_dtypes(device):
    """A bf16/fp16 x with an fp32 router weight (``router_dtype: fp32``) is routed in fp32."""
    x, w, b = _route_inputs(9, 64, 16, torch.float16, device, True, seed=1)
    got = moe_route(x, w.float(), b.float(), **LLADA2_TINY)
    ref = moe_route_ref(x, w.float(), b.float(), **LLADA2_TINY)
    assert torch.equal(got[1], ref[1])
    _check_weights(got[0], ref[0], 2.5)


def test_router_logits_tiles(device):
    """The GPU's logits tiling (several expert tiles, a K tail, rows past M) under the interpreter too."""
    from llada_triton.kernels.moe import _router_logits_kernel

    M, d, E = 19, 80, 40
    x, w, _ = _route_inputs(M, d, E, torch.float32, device, False, seed=3)
    logits = torch.full((M, E), float("nan"), device=device)
    _router_logits_kernel[(2, 3)](x, w, logits, M, E, d, x.stride(0), w.stride(0), BM=16, BE=16, BK=32,
                                  EVEN_K=False, UPCAST=False, IEEE=False)
    torch.testing.assert_close(logits, x @ w.t(), rtol=1e-5, atol=1e-5)


# exact ties: a zero router makes every score 0.5; the bias decides, ties go to the lowest index
TIES = [
    # all equal: groups 0 and 1 (lowest), then experts 0..3
    ("all-equal", [0.0] * 16, LLADA2_TINY, [0, 1, 2, 3]),
    # groups 2 and 3 tie at 2 x 1.0; the 1.0 experts first (lowest index first), then the 0.5 ones of those groups
    ("group-tie", [0.0] * 8 + [0.5, 0.5, 0, 0, 0, 0.5, 0.5, 0], dict(LLADA2_TINY, top_k=6), [8, 9, 13, 14, 10, 11]),
    # group 0's best expert beats everything but its runner-up is low: group 1 (sum 1.5 + 1.5) and group 0
    # (sum 2.5 + 0.5) tie at 3.0, group 2 (3.0) too: the lowest two, 0 and 1, win
    ("group-sum", [2.0, 0, 0, 0, 1.0, 1.0, 0, 0, 1.0, 1.0, 0, 0, 0, 0, 0, 0],
     dict(LLADA2_TINY, top_k=4), [0, 4, 5, 1]),
    ("softmax-uniform", [None] * 16, dict(top_k=4, score_func="softmax", norm_topk_prob=False), [0, 1, 2, 3]),
]


@pytest.mark.parametrize("name,bias,opts,want", TIES, ids=[t[0] for t in TIES])
def test_route_ties(name, bias, opts, want, device):
    M, d = 5, 32
    x = torch.randn(M, d, generator=torch.Generator().manual_seed(2)).to(device)
    w = torch.zeros(16, d, device=device)
    b = None if bias[0] is None else torch.tensor(bias, device=device)
    got_w, got_ids = moe_route(x, w, b, **opts)
    ref_w, ref_ids = moe_route_ref(x, w, b, **opts)
    assert torch.equal(ref_ids, torch.tensor([want] * M, dtype=torch.int32, device=device))
    assert torch.equal(got_ids, ref_ids)
    _check_weights(got_w, ref_w, opts.get("routed_scaling_factor", 1.0))


def test_route_validation(device):
    x, w, b = _route_inputs(3, 32, 16, torch.float32, device, True)
    bad = [
        (dict(top_k=0), "top_k must be an int >= 1, got 0"),
        (dict(top_k=2, n_group=3), "n_group=3 must divide the number of experts 16"),
        (dict(top_k=2, n_group=4, topk_group=5), "topk_group=5 must be <= n_group=4"),
        (dict(top_k=2, n_group=16), "groups are scored by their top-2"),
        (dict(top_k=9, n_group=4, topk_group=2), "top_k=9 must be <= the experts of the kept groups"),
        (dict(top_k=2, score_func="relu"), "score_func must be one of"),
        (dict(top_k=2, routed_scaling_factor=float("nan")), "routed_scaling_factor must be a number"),
    ]
    for fn in (moe_route, moe_route_ref):
        for opts, msg in bad:
            with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace("[", r"\[")):
                fn(x, w, b, **opts)
        with pytest.raises(ValueError, match="expert_bias is supported with score_func='sigmoid' only"):
            fn(x, w, b, top_k=2, score_func="softmax")
    with pytest.raises(ValueError, match=r"router_w must be \[E >= 1, d=32\]"):
        moe_route(x, w[:, :16], b, top_k=2)
    with pytest.raises(ValueError, match=r"expert_bias must be \[16\]"):
        moe_route(x, w, b[:8], top_k=2)
    with pytest.raises(ValueError, match="at most 1024"):
        moe_route(x, torch.zeros(2048, 32, device=device), None, top_k=2)


# (name, M, k, E, ids rule, block_m, chunk)
ALIGNS = [
    ("random", 13, 4, 16, "random", 16, None),
    ("one-expert", 40, 1, 16, "one", 16, None),
    ("few-experts", 9, 2, 16, "few", 4, None),
    ("1-token", 1, 8, 64, "random", 16, None),
    ("dropped-ids", 10, 3, 8, "dropped", 8, None),
    ("multi-chunk", 25, 3, 16, "random", 16, 16),
    ("no-padding", 7, 2, 5, "random", 1, 4),
]


def _ids(rule, M, k, E, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    if rule == "one":
        ids = torch.full((M, k), 3)
    elif rule == "few":
        ids = torch.tensor([0, 7, 15])[torch.randint(0, 3, (M, k), generator=g)]
    else:
        ids = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(M)])
        if rule == "dropped":
            ids[torch.rand(M, k, generator=g) < 0.3] = -1
            ids[0, 0] = E
    return ids.to(device=device, dtype=torch.int32)


@pytest.mark.parametrize("name,M,k,E,rule,block_m,chunk", ALIGNS, ids=[a[0] for a in ALIGNS])
def test_align(name, M, k, E, rule, block_m, chunk, device):
    ids = _ids(rule, M, k, E, device)
    got = moe_align(ids, E, block_m, chunk=chunk)
    want = moe_align_ref(ids, E, block_m)
    for a, b in zip(got, want):
        assert a.dtype == torch.int32 and torch.equal(a, b)
    assert torch.equal(moe_align(ids.long(), E, block_m, chunk=chunk)[0], want[0])


def _experts_inputs(M, d, E, inter, k, dtype, device, rule="route", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, d, generator=g)
    w_gu = torch.randn(E, 2 * inter, d, generator=g) / d ** 0.5
    w_d = torch.randn(E, d, inter, generator=g) / inter ** 0.5
    r = torch.randn(M, d, generator=g)
    x, w_gu, w_d, r = (t.to(device=device, dtype=dtype) for t in (x, w_gu, w_d, r))
    if rule == "route":
        router = (torch.randn(E, d, generator=g) / d ** 0.5).to(device=device, dtype=dtype)
        weights, ids = moe_route_ref(x, router, top_k=k, routed_scaling_factor=2.5)
    else:
        ids = _ids(rule, M, k, E, device, seed)
        weights = torch.rand(M, k, generator=g).to(device)
    return x, w_gu, w_d, weights, ids, r


def _check_experts(out, args, residual):
    x, w_gu, w_d, weights, ids, r = args
    r = r if residual else None
    gold = moe_experts_ref(x.double(), w_gu.double(), w_d.double(), weights.double(), ids,
                           None if r is None else r.double())
    ref = moe_experts_ref(x, w_gu, w_d, weights, ids, r)
    assert out.dtype == x.dtype and out.shape == gold.shape
    assert not torch.isnan(out).any(), "unwritten (NaN) outputs"
    err = (out.double() - gold).abs().max().item()
    err_ref = (ref.double() - gold).abs().max().item()
    floor = (torch.finfo(x.dtype).eps + 32 * torch.finfo(torch.float32).eps) * max(1.0, gold.abs().max().item())
    assert err <= 2 * err_ref + floor, f"err {err:.3g} > 2 * torch err {err_ref:.3g} + {floor:.3g}"


# (name, M, d, E, I, k, ids rule)
EXPERTS = [
    ("ragged", 13, 64, 16, 32, 4, "route"),
    ("1-token", 1, 64, 16, 32, 4, "route"),
    ("top1", 10, 64, 16, 32, 1, "route"),
    ("one-expert", 40, 64, 16, 32, 1, "one"),
    ("empty-experts", 9, 48, 16, 24, 2, "few"),
]


@pytest.mark.parametrize("residual", [False, True], ids=["nores", "res"])
@pytest.mark.parametrize("name,M,d,E,inter,k,rule", EXPERTS, ids=[e[0] for e in EXPERTS])
@pytest.mark.parametrize("dtype", DTYPES)
def test_experts(name, M, d, E, inter, k, rule, dtype, residual, device):
    args = _experts_inputs(M, d, E, inter, k, dtype, device, rule)
    out = torch.full((M, d), float("nan"), device=device, dtype=dtype)
    y = moe_experts(*args[:5], args[5] if residual else None, out=out)
    assert y.data_ptr() == out.data_ptr()
    _check_experts(y, args, residual)


# GPU-like tiles under the interpreter too: several K-steps with tails, several N-tiles, multi-chunk alignment
SMALL_TILES = dict(BM=16, GU_BN=16, GU_BK=32, DN_BN=32, DN_BK=16, CHUNK=16, SWAP_AB=False, num_warps=4, num_stages=2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_experts_small_tiles(dtype, device):
    args = _experts_inputs(11, 80, 8, 40, 3, dtype, device, seed=3)
    y = moe_experts(*args, config=SMALL_TILES)
    _check_experts(y, args, True)
    assert torch.equal(y, moe_experts(*args, config=SMALL_TILES)), "run to run deterministic"
    _check_experts(moe_experts(*args, config=dict(SMALL_TILES, BM=32, CHUNK=32)), args, True)
    swapped = moe_experts(*args, config=dict(SMALL_TILES, SWAP_AB=True))
    _check_experts(swapped, args, True)


def test_experts_dropped_ids_and_alias(device):
    """Pairs with an id outside [0, E) add nothing; out may alias residual (updated in place)."""
    x, w_gu, w_d, weights, ids, r = _experts_inputs(10, 64, 8, 32, 3, torch.float32, device, "dropped", seed=4)
    ok = (ids >= 0) & (ids < 8)
    want = moe_experts_ref(x, w_gu, w_d, torch.where(ok, weights, 0.0), torch.where(ok, ids, 0), r)
    got = moe_experts(x, w_gu, w_d, weights, ids, r.clone())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    stream = r.clone()
    moe_experts(x, w_gu, w_d, weights, ids, stream, out=stream)
    assert torch.equal(stream, got)
    empty = moe_experts(x[:0], w_gu, w_d, weights[:0], ids[:0], r[:0])
    assert empty.shape == (0, 64)


def test_experts_validation(device):
    x, w_gu, w_d, weights, ids, r = _experts_inputs(4, 32, 8, 16, 2, torch.float32, device)
    bad = [
        ((x, w_gu[:, :-1], w_d, weights, ids), r"w_gate_up must be \[E in 1..1024, 2I, d=32\]"),
        ((x, w_gu, w_d[:, :, :8], weights, ids), r"w_down must be \[E, d, I\] = \[8, 32, 16\]"),
        ((x, w_gu.half(), w_d, weights, ids), "w_gate_up has dtype torch.float16"),
        ((x, w_gu, w_d, weights[:, :1], ids), r"ids and weights must both be \[M=4, k >= 1\]"),
        ((x, w_gu, w_d, weights, ids.float()), "ids has dtype torch.float32"),
        ((x, w_gu, w_d, weights, ids.t().contiguous().t()), "ids must be contiguous"),
        ((x[None], w_gu, w_d, weights, ids), "x must have 2 dims"),
    ]
    for a, msg in bad:
        with pytest.raises(ValueError, match=msg):
            moe_experts(*a)
    with pytest.raises(ValueError, match=r"residual must be \(4, 32\)"):
        moe_experts(x, w_gu, w_d, weights, ids, r[:2])
    with pytest.raises(ValueError, match=r"block_m must be an int in \[1, 4096\], got 0"):
        moe_align(ids, 8, 0)
    with pytest.raises(ValueError, match="chunk must be a power of two, got 24"):
        moe_align(ids, 8, 16, chunk=24)


@GPU
@pytest.mark.parametrize("M", [32, 256])
def test_llada2_mini_shapes_gpu(M, device):
    """LLaDA2.0-mini's MoE (d 2048, I 512, 256 experts, top-8 of 4 of 8 groups) in bf16: routing equal to the
    reference except at near-ties of the fp32 logits, experts within the derived tolerance."""
    d, E, inter = 2048, 256, 512
    x, router, bias = _route_inputs(M, d, E, torch.bfloat16, device, True, seed=5)
    opts = dict(top_k=8, n_group=8, topk_group=4, routed_scaling_factor=2.5)
    w, ids = moe_route(x, router, bias, **opts)
    w_ref, ids_ref = moe_route_ref(x, router, bias, **opts)
    same = (ids == ids_ref).all(1)
    assert same.float().mean() >= 0.95, "routing differs beyond near-ties"
    _check_weights(w[same], w_ref[same], 2.5)
    g = torch.Generator().manual_seed(6)
    w_gu = (torch.randn(E, 2 * inter, d, generator=g) / d ** 0.5).to(device=device, dtype=torch.bfloat16)
    w_d = (torch.randn(E, d, inter, generator=g) / inter ** 0.5).to(device=device, dtype=torch.bfloat16)
    r = torch.randn(M, d, generator=g).to(device=device, dtype=torch.bfloat16)
    args = (x, w_gu, w_d, w_ref, ids_ref, r)
    out = torch.full((M, d), float("nan"), device=device, dtype=torch.bfloat16)
    _check_experts(moe_experts(*args[:5], r, out=out), args, True)


def test_shared_expert_folded(device):
    """A shared expert of the routed experts' size can ride along as expert E with weight 1 for every token: the
    result equals routed + shared computed apart, up to the roundings the fold removes (one fewer bf16/fp16 add)."""
    M, d, E, inter, k = 7, 64, 8, 32, 2
    x, w_gu, w_d, weights, ids, r = _experts_inputs(M, d, E, inter, k, torch.float32, device, seed=7)
    g = torch.Generator().manual_seed(8)
    s_gu = (torch.randn(1, 2 * inter, d, generator=g) / d ** 0.5).to(device)
    s_d = (torch.randn(1, d, inter, generator=g) / inter ** 0.5).to(device)
    fold_ids = torch.cat([ids, torch.full((M, 1), E, dtype=ids.dtype, device=device)], 1).contiguous()
    fold_w = torch.cat([weights, torch.ones(M, 1, device=device)], 1)
    got = moe_experts(x, torch.cat([w_gu, s_gu]), torch.cat([w_d, s_d]), fold_w, fold_ids, r)
    from llada_triton.kernels.reference import swiglu_mlp_ref
    want = moe_experts_ref(x, w_gu, w_d, weights, ids, r) + swiglu_mlp_ref(x, s_gu[0], s_d[0])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@GPU
def test_cuda_graph_gpu(device):
    """Route + experts captured in one CUDA graph (no host sync) and replayed on new inputs and new routing."""
    M, d, E, inter = 32, 256, 64, 128
    opts = dict(top_k=8, n_group=8, topk_group=4, routed_scaling_factor=2.5)
    x, router, bias = _route_inputs(M, d, E, torch.bfloat16, device, True, seed=9)
    g = torch.Generator().manual_seed(10)
    w_gu = (torch.randn(E, 2 * inter, d, generator=g) / d ** 0.5).to(device=device, dtype=torch.bfloat16)
    w_d = (torch.randn(E, d, inter, generator=g) / inter ** 0.5).to(device=device, dtype=torch.bfloat16)
    r = torch.randn(M, d, generator=g).to(device=device, dtype=torch.bfloat16)
    layer = lambda: moe_experts(x, w_gu, w_d, *moe_route(x, router, bias, **opts), r)  # noqa: E731
    eager = layer()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        layer()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = layer()
    graph.replay()
    assert torch.equal(out, eager)
    x.copy_(torch.randn(M, d, generator=g).to(device=device, dtype=torch.bfloat16))
    graph.replay()
    assert torch.equal(out, layer())


_COMPILE = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    import torch, triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from llada_triton.kernels import moe
    from llada_triton.kernels._common import with_defaults

    def build(kernel, sig, cx, num_warps=4, num_stages=3):
        # the launch's 16-divisibility of pointers and strides, so loads vectorise and pipeline as on the GPU
        cx = with_defaults(kernel, sig, cx)
        attrs = {{(kernel.arg_names.index(n),): [["tt.divisibility", 16]] for n in sig
                  if sig[n].startswith("*") or n.startswith("stride")}}
        sig = dict(sig, **{{k: "constexpr" for k in cx}})
        k = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=cx, attrs=attrs),
                           target=GPUTarget("cuda", 90, 32), options=dict(num_warps=num_warps, num_stages=num_stages))
        assert k.metadata.shared <= 227 * 1024, (kernel.fn.__name__, cx, k.metadata.shared)

    d, E, inter = 2048, 256, 512
    for dt, tdt in (("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32)):
        for M, swap in ((32, False), (32, True), (256, False), (256, True), (1024, False)):
            c = dict(moe.moe_config(M * 8, E, inter, d, tdt, interpret=False), SWAP_AB=swap)
            ieee = tdt == torch.float32
            common = dict(sorted_ptr="*i32", end_ptr="*i32", total_ptr="*i32", N_PAIRS="i32", E="i32",
                          NUM_TILES="i32")
            build(moe._moe_gate_up_kernel,
                  dict(x_ptr="*" + dt, w_ptr="*" + dt, a_ptr="*" + dt, I="i32", K="i32", stride_xm="i32",
                       stride_we="i32", stride_wn="i32", stride_am="i32", **common),
                  dict(TOP_K=8, BM=c["BM"], BN=c["GU_BN"], BK=c["GU_BK"], E_P=E, EVEN_K=True, UPCAST=False,
                       IEEE=ieee, SWAP_AB=swap), c["num_warps"], c["num_stages"])
            build(moe._moe_down_kernel,
                  dict(a_ptr="*" + dt, w_ptr="*" + dt, y_ptr="*" + dt, N="i32", K="i32", stride_am="i32",
                       stride_we="i32", stride_wn="i32", stride_ym="i32", **common),
                  dict(BM=c["BM"], BN=c["DN_BN"], BK=c["DN_BK"], E_P=E, EVEN_K=True, UPCAST=False, IEEE=ieee,
                       SWAP_AB=swap),
                  c["num_warps"], c["num_stages"])
        for rw in (dt, "fp32"):  # a 16-bit router weight of x's dtype goes through the tensor cores
            native = rw == dt and dt != "fp32"
            build(moe._router_logits_kernel,
                  dict(x_ptr="*" + dt, w_ptr="*" + rw, l_ptr="*fp32", M="i32", E="i32", D="i32", stride_xm="i32",
                       stride_wn="i32"),
                  dict(BM=16, BE=32, BK=128, EVEN_K=True, UPCAST=not native, IEEE=not native), 4, 4)
        build(moe._moe_combine_kernel,
              dict(y_ptr="*" + dt, w_ptr="*fp32", ids_ptr="*i32", r_ptr="*" + dt, out_ptr="*" + dt, E="i32",
                   D="i32", stride_wm="i32", stride_rm="i32", stride_om="i32"),
              dict(TOP_K=8, BLOCK=1024, HAS_RES=True))
    for e_p, groups, sigmoid in ((256, 8, True), (64, 1, False)):  # LLaDA2.0-mini; LLaDA-MoE's softmax top-8 of 64
        build(moe._route_select_kernel,
              dict(l_ptr="*fp32", b_ptr="*bf16", wts_ptr="*fp32", ids_ptr="*i32", M="i32", E="i32", scale="fp32"),
              dict(TOP_K=8, N_GROUP=groups, TOPK_GROUP=groups // 2 or 1, SIGMOID=sigmoid, HAS_BIAS=sigmoid, NORM=sigmoid,
                   BM=16, E_P=e_p, G_P=groups, K_P=8), 8 if e_p > 128 else 4, 1)
    build(moe._align_count_kernel, dict(ids_ptr="*i32", cnt_ptr="*i32", sorted_ptr="*i32", N="i32", E="i32",
                                        L="i32"), dict(CHUNK=256, E_P=256, FILL=1024))
    build(moe._align_scan_kernel, dict(cnt_ptr="*i32", base_ptr="*i32", end_ptr="*i32", total_ptr="*i32",
                                       P="i32", E="i32"), dict(BM=16, E_P=256, P_B=32), 8)
    build(moe._align_scatter_kernel, dict(ids_ptr="*i32", base_ptr="*i32", sorted_ptr="*i32", N="i32", E="i32"),
          dict(CHUNK=256, E_P=256))
    print("ok")
""")


def test_compile_sm90():
    """The GPU frontend and ptxas accept every kernel at LLaDA2.0-mini's shapes for sm_90 (bf16, fp16, fp32)."""
    res = run_without_interpreter(_COMPILE.format(root=ROOT))
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-4000:]
