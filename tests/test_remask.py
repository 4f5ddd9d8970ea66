"""kernels.confidence (head_confidence, logits_confidence) and kernels.selection (select_transfer, select_commit,
commit_step) against kernels.reference.

Exactness strategy for head_confidence: hidden states and head weights are small multiples of 1/4, so
every logit's fp32 dot product is exact whatever the summation order; the kernel and torch then round the
same fp32 value to the hidden dtype, so x0 must be *equal* (ties included: the values are discrete, ties
are common, and lowest-id tie-breaking is checked). conf is compared with an fp64 evaluation of the same
formula, within 2x the fp32 reference's own error plus a few fp32 ulps. Random (randn) inputs are checked
where the top-2 logits are separated by more than the logits' rounding.
"""
import os
import textwrap

import pytest
import torch

from tests.helpers import run_without_interpreter
import triton
import triton.language as tl

from llada_triton.kernels.reference import commit_step_ref, head_confidence_ref, logits_confidence_ref, select_transfer_ref
from llada_triton.kernels.confidence import (_head_confidence_launch, _logits_confidence_launch, _philox4x32_10,
                                             head_confidence, logits_confidence)
from llada_triton.kernels.selection import _select_launch, commit_step, select_commit, select_transfer

INTERP = os.environ.get("TRITON_INTERPRET", "0") == "1"
CPU_DTYPES = [torch.float32, torch.float16]
ALL_DTYPES = CPU_DTYPES + [pytest.param(torch.bfloat16, marks=pytest.mark.gpu, id="bfloat16")]
DT_ID = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
VOCAB_FULL = 126464  # LLaDA-8B
EPS32 = torch.finfo(torch.float32).eps
NMANT = {torch.float32: 23, torch.float16: 10, torch.bfloat16: 7}

# a small GPU-like tiling: several row tiles, vocab tiles and K steps, ragged edges (V % 64, D % 16)
SMALL_TILES = dict(BLOCK_M=16, BLOCK_V=128, BLOCK_K=32, SWAP_AB=False, num_warps=4, num_stages=2)
TILES = {"default": None, "small": SMALL_TILES, "small_swap": dict(SMALL_TILES, SWAP_AB=True)}


def _exact(shape, dtype, device, gen):
    """Values in {-1/2, -1/4, 0, 1/4, 1/2}: products are multiples of 1/16, sums exact in fp32."""
    return (torch.randint(-2, 3, shape, generator=gen) / 4).to(dtype).to(device)


def _ref_logits(hidden, w, uncond=None, cfg_scale=0.0, banned=()):
    """The reference's fp32 logits (before no_confidence_ids), for tolerance derivation."""
    logits = (hidden @ w.t()).float()
    if uncond is not None:
        lu = (uncond @ w.t()).float()
        logits = lu + (cfg_scale + 1.0) * (logits - lu)
    if len(banned):
        logits[:, list(banned)] = float("-inf")
    return logits


def _conf64(logits, x0, no_conf=()):
    lc = logits.double().clone()
    if len(no_conf):
        lc[:, list(no_conf)] = float("-inf")
    return torch.exp(lc.gather(1, x0[:, None].long())[:, 0] - torch.logsumexp(lc, 1))


def _check_conf(conf, conf_ref, truth):
    """|conf - truth| <= 2 |conf_ref - truth| + 8 fp32 ulps (+ tiny floor); NaN / inf patterns equal."""
    conf, conf_ref, truth = conf.double().cpu(), conf_ref.double().cpu(), truth.double().cpu()
    assert torch.equal(torch.isnan(conf), torch.isnan(conf_ref))
    fin = torch.isfinite(truth)
    assert torch.equal(conf[~fin & ~torch.isnan(truth)], truth[~fin & ~torch.isnan(truth)])
    err = (conf - truth).abs()[fin]
    tol = 2 * (conf_ref - truth).abs()[fin] + 8 * EPS32 * truth.abs()[fin] + 1e-30
    assert (err <= tol).all(), f"conf error {err.max().item():.3e} > tol"


def _run_head(hidden, w, config=None, **kw):
    """head_confidence through its launcher with NaN / garbage-poisoned outputs."""
    M = hidden.shape[0]
    x0 = torch.full((M,), -7, dtype=torch.int64, device=hidden.device)
    conf = torch.full((M,), float("nan"), dtype=torch.float32, device=hidden.device)
    opts = dict(temperature=0.0, seed=0, offset=0, banned_ids=(), no_confidence_ids=(), uncond_hidden=None,
                cfg_scale=0.0)
    opts.update(kw)
    return _head_confidence_launch(hidden, w, x0, conf, config=config, **opts)


# ---------------------------------------------------------------------------- head: temperature 0
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: DT_ID.get(d, str(d)))
@pytest.mark.parametrize("M", [1, 7, 32, 33], ids=lambda m: f"M{m}")
@pytest.mark.parametrize("tiles", list(TILES))
def test_head_exact_v320(device, dtype, M, tiles):
    gen = torch.Generator().manual_seed(100 + M)
    V, D = 320, 48
    h = _exact((M, D), dtype, device, gen)
    w = _exact((V, D), dtype, device, gen)
    w[250] = w[3]  # cross-tile tie: id 3 must win over id 250
    h[0] = 0  # all-equal row: x0 = 0, conf = 1 / V
    x0, conf = _run_head(h, w, config=TILES[tiles])
    rx, rc = head_confidence_ref(h, w)
    assert torch.equal(x0.cpu(), rx.cpu())
    assert int(x0[0]) == 0
    _check_conf(conf, rc, _conf64(_ref_logits(h, w), rx))


@pytest.mark.parametrize("dtype,M", [(torch.float16, 7), (torch.float32, 33),
                                     pytest.param(torch.bfloat16, 33, marks=pytest.mark.gpu)],
                         ids=["fp16-M7", "fp32-M33", "bf16-M33"])
def test_head_exact_full_vocab(device, dtype, M):
    gen = torch.Generator().manual_seed(7)
    V, D = VOCAB_FULL, 32
    h = _exact((M, D), dtype, device, gen)
    w = _exact((V, D), dtype, device, gen)
    w[VOCAB_FULL - 5] = w[40000]
    h[1] = 0
    x0, conf = _run_head(h, w, banned_ids=(7,), no_confidence_ids=(11, 126081))
    rx, rc = head_confidence_ref(h, w, banned_ids=(7,), no_confidence_ids=(11, 126081))
    assert torch.equal(x0.cpu(), rx.cpu())
    assert int(x0[1]) == 0
    _check_conf(conf, rc, _conf64(_ref_logits(h, w, banned=(7,)), rx, (11, 126081)))


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: DT_ID.get(d, str(d)))
@pytest.mark.parametrize("case", ["banned", "noconf", "cfg", "cfg0", "all"])
def test_head_options(device, dtype, case):
    gen = torch.Generator().manual_seed(3)
    M, V, D = 33, 320, 48
    h = _exact((M, D), dtype, device, gen)
    w = _exact((V, D), dtype, device, gen)
    hu = _exact((M, D), dtype, device, gen)
    top = head_confidence_ref(h, w)[0].tolist()
    kw = {}
    if case in ("banned", "all"):
        kw["banned_ids"] = (top[0], top[5], 0)
    if case in ("noconf", "all"):
        kw["no_confidence_ids"] = (top[1], top[2], 319, top[4])
    if case in ("cfg", "all"):
        kw.update(uncond_hidden=hu, cfg_scale=0.5)
    if case == "cfg0":  # the CFG formula still runs with scale 0 (lu + 1 * (l - lu))
        kw.update(uncond_hidden=hu, cfg_scale=0.0)
    x0, conf = _run_head(h, w, config=SMALL_TILES, **kw)
    rx, rc = head_confidence_ref(h, w, **kw)
    assert torch.equal(x0.cpu(), rx.cpu())
    logits = _ref_logits(h, w, kw.get("uncond_hidden"), kw.get("cfg_scale", 0.0), kw.get("banned_ids", ()))
    _check_conf(conf, rc, _conf64(logits, rx, kw.get("no_confidence_ids", ())))
    if "banned_ids" in kw:
        assert not torch.isin(x0.cpu(), torch.tensor(kw["banned_ids"])).any()
    if "no_confidence_ids" in kw:
        hit = torch.isin(x0.cpu(), torch.tensor(kw["no_confidence_ids"]))
        assert (conf.cpu()[hit] == 0).all()


def test_head_all_banned(device):
    """Every id banned: x0 = 0 and conf = NaN, as the reference (argmax of all -inf, -inf - -inf)."""
    gen = torch.Generator().manual_seed(5)
    h = _exact((3, 16), torch.float32, device, gen)
    w = _exact((4, 16), torch.float32, device, gen)
    x0, conf = _run_head(h, w, banned_ids=(0, 1, 2, 3))
    rx, rc = head_confidence_ref(h, w, banned_ids=(0, 1, 2, 3))
    assert torch.equal(x0.cpu(), rx.cpu()) and (x0 == 0).all()
    assert torch.isnan(rc).all() and torch.isnan(conf).all()


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: DT_ID.get(d, str(d)))
def test_head_randn(device, dtype):
    """Inexact (randn) inputs: x0 equal wherever the reference's top-2 logits are separated."""
    gen = torch.Generator().manual_seed(11)
    M, V, D = 32, 320, 96
    h = torch.randn(M, D, generator=gen).to(dtype).to(device)
    w = (torch.randn(V, D, generator=gen) / D ** 0.5).to(dtype).to(device)
    x0, conf = _run_head(h, w, config=SMALL_TILES)
    rx, rc = head_confidence_ref(h, w)
    logits = _ref_logits(h, w)
    top2 = logits.topk(2, dim=1).values
    # logits may differ by one rounding of the hidden dtype (fp32: accumulation order) on each side
    ulp = 2.0 ** (torch.floor(torch.log2(top2[:, 0].abs())) - NMANT[dtype])
    if dtype == torch.float32:
        ulp = ulp * 64  # summation order
    clear = (top2[:, 0] - top2[:, 1]) > 2 * ulp
    assert clear.sum() > M // 2
    assert torch.equal(x0[clear].cpu(), rx[clear].cpu())
    near = logits.gather(1, x0[:, None])[:, 0] >= top2[:, 0] - 2 * ulp
    assert near.all()
    c64 = _conf64(logits, rx)
    scale = 4 * (2.0 ** -NMANT[dtype] if dtype != torch.float32 else 64 * EPS32)
    assert torch.allclose(conf[clear].double().cpu(), c64[clear].cpu(), rtol=scale, atol=0)


def test_head_validation(device):
    h = torch.zeros(4, 16, device=device)
    w = torch.zeros(32, 16, device=device)
    with pytest.raises(ValueError, match="banned_ids"):
        head_confidence(h, w, banned_ids=(1, 2, 3, 4, 5))
    with pytest.raises(ValueError, match="no_confidence_ids"):
        head_confidence(h, w, no_confidence_ids=(32,))
    with pytest.raises(ValueError, match="w_head"):
        head_confidence(h, w.half())
    with pytest.raises(ValueError, match="w_head"):
        head_confidence(h, torch.zeros(32, 8, device=device))
    with pytest.raises(ValueError, match="temperature"):
        head_confidence(h, w, temperature=-1.0)
    with pytest.raises(ValueError, match="seed"):
        head_confidence(h, w, seed=-1)
    with pytest.raises(ValueError, match="uncond_hidden"):
        head_confidence(h, w, uncond_hidden=torch.zeros(3, 16, device=device))
    x0, conf = head_confidence(h[:0], w)
    assert x0.shape == (0,) and conf.shape == (0,)


# ---------------------------------------------------------------------------- head: sampling
@triton.jit
def _philox_probe(c_ptr, out_ptr, BLOCK: tl.constexpr):
    o = tl.arange(0, BLOCK)
    c0 = tl.load(c_ptr + o * 6 + 0).to(tl.uint32, bitcast=True)
    c1 = tl.load(c_ptr + o * 6 + 1).to(tl.uint32, bitcast=True)
    c2 = tl.load(c_ptr + o * 6 + 2).to(tl.uint32, bitcast=True)
    c3 = tl.load(c_ptr + o * 6 + 3).to(tl.uint32, bitcast=True)
    k0 = tl.load(c_ptr + o * 6 + 4).to(tl.uint32, bitcast=True)
    k1 = tl.load(c_ptr + o * 6 + 5).to(tl.uint32, bitcast=True)
    r = _philox4x32_10(c0, c1, c2, c3, k0, k1)
    tl.store(out_ptr + o, r.to(tl.int32, bitcast=True))


def test_philox_known_answers(device):
    """Random123 known-answer vectors of Philox4x32-10 (first output word)."""
    rows = [([0] * 6, 0x6627E8D5), ([0xFFFFFFFF] * 6, 0x408F276D),
            ([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344, 0xA4093822, 0x299F31D0], 0xD16CFE09)]
    s32 = lambda v: v - (1 << 32) if v >= 1 << 31 else v  # noqa: E731
    c = torch.tensor([[s32(v) for v in r] for r, _ in rows] + [[0] * 6] * 13, dtype=torch.int32, device=device)
    out = torch.empty(16, dtype=torch.int32, device=device)
    _philox_probe[(1,)](c, out, BLOCK=16)
    assert [v & 0xFFFFFFFF for v in out[:3].tolist()] == [want for _, want in rows]


def _sampling_setup(device, logits_row, M):
    """hidden / w with logits exactly ``logits_row`` for every one of M rows (fp32, D = 16)."""
    V = logits_row.numel()
    h = torch.zeros(M, 16)
    h[:, 0] = 1.0
    w = torch.zeros(V, 16)
    w[:, 0] = logits_row
    return h.to(device), w.to(device)


def _chi2_pvalue(counts, probs):
    n = counts.sum()
    exp = probs * n
    stat = float(((counts - exp) ** 2 / exp).sum())
    dof = counts.numel() - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64))), stat


@pytest.mark.parametrize("T", [1.0, 0.6, 1.7])
def test_head_sampling_distribution(device, T):
    """Sampled token frequencies follow softmax(logits / T) (chi-square, fixed seed: deterministic)."""
    gen = torch.Generator().manual_seed(1)
    V, M = 24, 4096
    row = (torch.randn(V, generator=gen) * 1.5).float()
    h, w = _sampling_setup(device, row, M)
    cfg = dict(BLOCK_M=1024, BLOCK_V=32, BLOCK_K=16) if INTERP else None
    x0, conf = _run_head(h, w, config=cfg, temperature=T, seed=1234, offset=int(T * 10), banned_ids=(5,))
    x0 = x0.cpu()
    row[5] = float("-inf")
    probs = torch.softmax(row.double() / T, 0)
    counts = torch.bincount(x0, minlength=V).double()
    assert counts[5] == 0
    keep = probs > 0
    p, stat = _chi2_pvalue(counts[keep], probs[keep])
    assert p > 1e-4, f"chi2 {stat:.1f}, p {p:.2e}"
    # confidence is the noise-free probability of the sampled token
    truth = torch.softmax(row.double(), 0)[x0]
    assert torch.allclose(conf.double().cpu(), truth, rtol=16 * EPS32, atol=0)


def test_head_sampling_seeds_and_tiling(device):
    """Same (seed, offset) -> same samples, whatever the tiling; another seed or offset -> different."""
    gen = torch.Generator().manual_seed(2)
    M, V, D = 40, 320, 32
    h = _exact((M, D), torch.float32, device, gen)
    w = _exact((V, D), torch.float32, device, gen) * 0.25  # nearly flat softmax: samples spread out
    kw = dict(temperature=1.0, seed=2 ** 40 + 17, offset=3)
    a, ca = _run_head(h, w, **kw)
    b, cb = _run_head(h, w, config=SMALL_TILES, **kw)
    assert torch.equal(a, b)
    torch.testing.assert_close(ca, cb, rtol=8 * EPS32, atol=0)
    c, _ = _run_head(h, w, **dict(kw, seed=kw["seed"] + 1))
    d, _ = _run_head(h, w, **dict(kw, offset=4))
    e, _ = _run_head(h, w, **dict(kw, offset=3 + 2 ** 32))
    for other in (c, d, e):
        assert (other != a).sum() > M // 2
    # rows are independent streams: identical rows get different samples
    same = _run_head(h[:1].expand(M, D).contiguous(), w, **kw)[0]
    assert same.unique().numel() > M // 4


def test_head_sampling_full_vocab(device):
    """A full-vocab sampled case: valid ids, banned never chosen, conf = noise-free probability."""
    gen = torch.Generator().manual_seed(9)
    M, V, D = 7, VOCAB_FULL, 32
    h = _exact((M, D), torch.float32, device, gen)
    w = _exact((V, D), torch.float32, device, gen)
    x0, conf = _run_head(h, w, temperature=0.8, seed=5, offset=1, banned_ids=(126081,))
    assert ((x0 >= 0) & (x0 < V) & (x0 != 126081)).all()
    truth = _conf64(_ref_logits(h, w, banned=(126081,)), x0).cpu()
    assert ((conf.double().cpu() - truth).abs() <= 16 * EPS32 * truth).all()


# ---------------------------------------------------------------------------- select_transfer
def _conf_rows(B, L, gen, device, dtype=torch.float32, kind="random"):
    c = torch.rand(B, L, generator=gen)
    if kind == "ties":
        c = torch.round(c * 4) / 4  # many equal confidences
    c = c.to(dtype).to(device)
    m = (torch.rand(B, L, generator=gen) > 0.3).to(device)
    if kind == "adversarial" and B >= 3:
        c[0] = 0.5  # all equal
        m[0] = True
        c[1] = float("-inf")  # all -inf
        m[1] = True
        m[2] = False  # nothing masked
    if kind == "adversarial" and L >= 4:
        c[-1, :3] = float("-inf")
        c[-1, 3] = -0.0
        c[-1, 2 % L] = 0.0
    return c, m


def _poisoned_select(conf, masked, **kw):
    out = torch.empty(conf.shape, dtype=torch.bool, device=conf.device)
    out.view(torch.uint8).fill_(7)
    _select_launch(conf, masked, out, **kw)
    assert (out.view(torch.uint8) <= 1).all(), "unwritten output"
    return out


RULES = {
    "k1": lambda B, L, g: dict(k=torch.full((B,), 1)),
    "k_rand": lambda B, L, g: dict(k=torch.randint(0, L + 2, (B,), generator=g)),
    "k0": lambda B, L, g: dict(k=torch.zeros(B, dtype=torch.int32)),
    "kL": lambda B, L, g: dict(k=torch.full((B,), L)),
    "kneg": lambda B, L, g: dict(k=torch.full((B,), -2)),
    "thr0.9": lambda B, L, g: dict(threshold=0.9),
    "thr0.5": lambda B, L, g: dict(threshold=0.5),
    "thr-inf": lambda B, L, g: dict(threshold=float("-inf")),
    "thr+inf": lambda B, L, g: dict(threshold=float("inf")),
    "thr0": lambda B, L, g: dict(threshold=0.0),
    "f0.5": lambda B, L, g: dict(factor=0.5),
    "f1": lambda B, L, g: dict(factor=1.0),
    "f3": lambda B, L, g: dict(factor=3.0),
}


@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("kind", ["random", "ties", "adversarial"])
@pytest.mark.parametrize("B,L", [(1, 1), (1, 7), (3, 32), (3, 33)], ids=lambda v: str(v))
def test_select_matches_reference(device, rule, kind, B, L):
    gen = torch.Generator().manual_seed(B * 1000 + L)
    conf, masked = _conf_rows(B, L, gen, device, kind=kind)
    kw = RULES[rule](B, L, gen)
    if "k" in kw:
        kw["k"] = kw["k"].to(device)
    out = _poisoned_select(conf, masked, **kw)
    ref = select_transfer_ref(conf, masked, **kw)
    assert torch.equal(out.cpu(), ref.cpu())


@pytest.mark.parametrize("dtype", [torch.float16, pytest.param(torch.bfloat16, marks=pytest.mark.gpu)],
                         ids=["fp16", "bf16"])
def test_select_low_precision_conf(device, dtype):
    gen = torch.Generator().manual_seed(4)
    conf, masked = _conf_rows(3, 33, gen, device, dtype=dtype, kind="ties")
    for kw in (dict(k=torch.tensor([1, 5, 40], device=device)), dict(threshold=0.5), dict(factor=1.0)):
        assert torch.equal(select_transfer(conf, masked, **kw).cpu(), select_transfer_ref(conf, masked, **kw).cpu())


def test_select_long_rows(device):
    """Block length 1024 (LLaDA evals) and an odd 1000, top-k with ties."""
    gen = torch.Generator().manual_seed(6)
    for L in (1000, 1024):
        conf, masked = _conf_rows(3, L, gen, device, kind="ties")
        for kw in (dict(k=torch.tensor([1, 300, 1024], device=device)), dict(threshold=0.75), dict(factor=2.0)):
            assert torch.equal(_poisoned_select(conf, masked, **kw).cpu(),
                               select_transfer_ref(conf, masked, **kw).cpu())


def _f32_up(x: float) -> float:
    """Smallest fp32 value >= x."""
    t = torch.tensor(x, dtype=torch.float64)
    f = t.float()
    if f.double() < t:
        f = torch.nextafter(f, torch.tensor(float("inf")))
    return float(f)


def test_select_threshold_edges(device):
    """threshold is compared in fp32 (as torch compares an fp32 tensor with a Python float)."""
    c = torch.tensor([[0.9, 0.1, 0.30000001192092896, 0.29999998211860657, 0.5, 0.95]], device=device)
    m = torch.ones_like(c, dtype=torch.bool)
    for thr in (0.3, 0.30000001192092896, 0.2999999821186066, 0.30000000000000004, 0.1000000015, 0.95,
                0.9500000001, 1.0, float("inf"), float("-inf")):
        assert torch.equal(select_transfer(c, m, threshold=thr).cpu(),
                           select_transfer_ref(c, m, threshold=thr).cpu()), thr
    for fn in (select_transfer, select_transfer_ref):  # NaN: an error in both, not "only the top position"
        with pytest.raises(ValueError, match="threshold must be a number"):
            fn(c, m, threshold=float("nan"))


def test_select_factor_edges(device):
    """The confidence at the deciding rank p sits on / one fp32 ulp around the fp64 threshold
    1 - f / (p + 2): ranks before p pass (1.0), ranks after p tie with it or are -inf; rows shuffled."""
    gen = torch.Generator().manual_seed(12)
    L = 12
    for f in (1.0, 0.7, 1 / 3, 2.5):
        rows = []
        for p in range(1, L):
            thr = 1.0 - f / (p + 2)
            up = _f32_up(thr)
            down = float(torch.nextafter(torch.tensor(up), torch.tensor(float("-inf"))))
            for v in sorted({up, down, float(torch.tensor(thr).float())}):
                for tail in (v, float("-inf")):
                    r = torch.tensor([1.0] * p + [v] + [tail] * (L - p - 1))
                    rows.append(r[torch.randperm(L, generator=gen)])
        c = torch.stack(rows).to(device)
        m = torch.ones_like(c, dtype=torch.bool)
        got = select_transfer(c, m, factor=f).cpu()
        assert torch.equal(got, select_transfer_ref(c, m, factor=f).cpu()), f
        assert got.sum(1).unique().numel() > 3  # the edges do move the count


def test_select_commit(device):
    gen = torch.Generator().manual_seed(8)
    B, T, start, L = 3, 80, 24, 33
    tokens = torch.randint(0, 1000, (B, T), generator=gen).to(device)
    conf, masked = _conf_rows(B, L, gen, device, kind="ties")
    x0 = torch.randint(1000, 2000, (B, L), generator=gen).to(device)
    for kw in (dict(k=torch.tensor([2, 0, 40], device=device)), dict(threshold=0.5), dict(factor=1.0)):
        tok = tokens.clone()
        sel = select_commit(tok[:, start:start + L], x0, conf, masked, **kw)
        ref = select_transfer_ref(conf, masked, **kw)
        assert torch.equal(sel.cpu(), ref.cpu())
        want = tokens.clone()
        blk = want[:, start:start + L]
        blk[ref] = x0[ref]
        assert torch.equal(tok.cpu(), want.cpu())


def test_select_validation(device):
    c = torch.rand(2, 8, device=device)
    m = torch.ones(2, 8, dtype=torch.bool, device=device)
    with pytest.raises(ValueError, match="exactly one"):
        select_transfer(c, m, k=torch.ones(2, dtype=torch.long, device=device), threshold=0.5)
    with pytest.raises(ValueError, match="exactly one"):
        select_transfer(c, m)
    with pytest.raises(ValueError, match="k must be"):
        select_transfer(c, m, k=torch.ones(3, dtype=torch.long, device=device))
    with pytest.raises(ValueError, match="threshold must be a number"):
        select_transfer(c, m, threshold=float("nan"))
    with pytest.raises(ValueError, match="factor must be finite"):
        select_transfer(c, m, factor=float("nan"))
    with pytest.raises(ValueError, match="masked"):
        select_transfer(c, m[:, :4], threshold=0.5)
    with pytest.raises(ValueError, match="masked"):
        select_transfer(c, m.int(), threshold=0.5)
    with pytest.raises(ValueError, match="block length"):
        select_transfer(torch.rand(1, 5000, device=device), torch.ones(1, 5000, dtype=torch.bool, device=device),
                        threshold=0.5)
    with pytest.raises(ValueError, match="tokens_block"):
        select_commit(torch.zeros(2, 8, dtype=torch.int32, device=device), torch.zeros(2, 8, dtype=torch.long,
                      device=device), c, m, threshold=0.5)


# ---------------------------------------------------------------------------- commit_step
MASK_ID = 900


def _commit_inputs(B, L, gen, device, kind, start_kind, conf_dtype=torch.float32):
    """A token buffer whose block rows start at different columns (``start_kind`` int / 0-dim / per row), the
    block's masked positions from :func:`_conf_rows`, random x0, a done row when B >= 3."""
    conf, masked = _conf_rows(B, L, gen, device, dtype=conf_dtype, kind=kind)
    T = L + 9
    tokens = torch.randint(0, 800, (B, T), generator=gen).to(device)
    if start_kind == "rows":
        start = torch.tensor([(3 * b) % 10 for b in range(B)], device=device)
    else:
        start = 5 if start_kind == "int" else torch.tensor(5, device=device)
    st = start.expand(B) if isinstance(start, torch.Tensor) else torch.full((B,), start, device=device)
    cols = st[:, None] + torch.arange(L, device=device)[None, :]
    tokens.scatter_(1, cols, torch.where(masked, MASK_ID, tokens.gather(1, cols)))
    x0 = torch.randint(0, 800, (B, L), generator=gen).to(device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    if B >= 3:
        done[B - 1] = True
    nfe = torch.randint(0, 5, (B,), generator=gen).to(device)
    return tokens, start, x0, conf, done, nfe


def _poisoned_empty(real):
    def empty(*shape, dtype=None, device=None, **kw):
        t = real(*shape, dtype=dtype, device=device, **kw)
        if t.dtype == torch.bool:
            t.view(torch.uint8).fill_(7)
        else:
            t.fill_(float("nan") if t.is_floating_point() else -77)
        return t
    return empty


def _check_commit(tokens, start, x0, conf, done, nfe, monkeypatch=None, **kw):
    """commit_step (outputs poisoned before the launch) against commit_step_ref, everything exactly equal."""
    t_ref, n_ref = tokens.clone(), nfe.clone()
    want = commit_step_ref(t_ref, start, x0, conf, mask_id=MASK_ID, done=done, nfe=n_ref, **kw)
    t_got, n_got = tokens.clone(), nfe.clone()
    if monkeypatch is not None:
        with monkeypatch.context() as m:
            m.setattr(torch, "empty", _poisoned_empty(torch.empty))
            got = commit_step(t_got, start, x0, conf, mask_id=MASK_ID, done=done, nfe=n_got, **kw)
    else:
        got = commit_step(t_got, start, x0, conf, mask_id=MASK_ID, done=done, nfe=n_got, **kw)
    assert got[0].dtype == torch.bool and (got[0].view(torch.uint8) <= 1).all(), "unwritten selection"
    for g, w in zip(got, want):
        assert torch.equal(g.cpu(), w.cpu())
    assert torch.equal(t_got.cpu(), t_ref.cpu()) and torch.equal(n_got.cpu(), n_ref.cpu())
    return want


@pytest.mark.parametrize("rule", ["k_rand", "kL", "k0", "thr0.5", "thr+inf", "f1", "f3"])
@pytest.mark.parametrize("kind", ["random", "ties", "adversarial"])
@pytest.mark.parametrize("B,L", [(1, 1), (1, 7), (3, 32), (3, 33)], ids=lambda v: str(v))
@pytest.mark.parametrize("start_kind", ["int", "dev", "rows"])
def test_commit_step_matches_reference(device, monkeypatch, rule, kind, B, L, start_kind):
    gen = torch.Generator().manual_seed(B * 100 + L)
    tokens, start, x0, conf, done, nfe = _commit_inputs(B, L, gen, device, kind, start_kind)
    kw = RULES[rule](B, L, gen)
    if "k" in kw:
        kw["k"] = kw["k"].to(device)
    committed, c, blk = _check_commit(tokens, start, x0, conf, done, nfe, monkeypatch, **kw)
    if B >= 3:  # the done row: nothing masked, nothing committed, no forward counted
        assert not committed[-1].any() and (c[-1] == float("-inf")).all()


def test_commit_step_meaning(device):
    """Against the driver's composition it replaces: masks, where, select_transfer_ref, the write, the count."""
    gen = torch.Generator().manual_seed(21)
    B, L = 3, 33
    tokens, start, x0, conf, done, nfe = _commit_inputs(B, L, gen, device, "ties", "rows")
    k = torch.tensor([4, 40, 2], device=device)
    cols = start[:, None] + torch.arange(L, device=device)[None, :]
    block = tokens.gather(1, cols)
    masked = (block == MASK_ID) & ~done[:, None]
    sel = select_transfer_ref(torch.where(masked, conf, float("-inf")), masked, k=k)
    want_tokens = tokens.clone()
    want_tokens.scatter_(1, cols, torch.where(sel, x0, block))
    t, n = tokens.clone(), nfe.clone()
    committed, c, blk = commit_step(t, start, x0, conf, mask_id=MASK_ID, done=done, k=k, nfe=n)
    assert torch.equal(committed, sel) and sel.any() and not (sel & ~masked).any()
    assert torch.equal(t, want_tokens) and torch.equal(blk, want_tokens.gather(1, cols))
    assert torch.equal(n, nfe + masked.any(1)) and torch.equal(c[masked], conf[masked])


def test_commit_step_bad_device_start(device):
    """A device start whose block leaves [0, T) commits nothing (tokens -1 reported, buffer and NFE unchanged);
    the other rows are unaffected."""
    gen = torch.Generator().manual_seed(5)
    B, L = 3, 8
    tokens, _, x0, conf, _, nfe = _commit_inputs(B, L, gen, device, "random", "int")
    tokens[:, 5:5 + L] = MASK_ID
    T = tokens.shape[1]
    start = torch.tensor([5, T - L + 1, -1], device=device)
    t, n = tokens.clone(), nfe.clone()
    committed, c, blk = _check_commit(tokens, start, x0, conf, None, nfe, k=torch.tensor([2, 2, 2], device=device))
    committed, c, blk = commit_step(t, start, x0, conf, mask_id=MASK_ID, k=torch.tensor([2, 2, 2], device=device),
                                    nfe=n)
    assert committed[0].sum() == 2 and not committed[1:].any() and (blk[1:] == -1).all()
    assert torch.equal(t[1:], tokens[1:]) and torch.equal(n[1:], nfe[1:]) and n[0] == nfe[0] + 1


@pytest.mark.parametrize("dtype", [torch.float16, pytest.param(torch.bfloat16, marks=pytest.mark.gpu)],
                         ids=["fp16", "bf16"])
def test_commit_step_low_precision_conf(device, dtype):
    gen = torch.Generator().manual_seed(4)
    tokens, start, x0, conf, done, nfe = _commit_inputs(3, 33, gen, device, "ties", "rows", conf_dtype=dtype)
    for kw in (dict(k=torch.tensor([1, 5, 40], device=device)), dict(threshold=0.5), dict(factor=1.0)):
        _check_commit(tokens, start, x0, conf, done, nfe, **kw)


@pytest.mark.gpu
def test_commit_step_compiled(device):
    """The CPU matrix above, compiled (every rule, start form and adversarial row), plus a long block."""
    for B, L in ((1, 1), (1, 7), (3, 32), (3, 33), (2, 1024)):
        for kind in ("random", "ties", "adversarial"):
            for start_kind in ("int", "dev", "rows"):
                for rule in ("k_rand", "kL", "k0", "thr0.5", "f1"):
                    gen = torch.Generator().manual_seed(B * 100 + L)
                    tokens, start, x0, conf, done, nfe = _commit_inputs(B, L, gen, device, kind, start_kind)
                    kw = RULES[rule](B, L, gen)
                    if "k" in kw:
                        kw["k"] = kw["k"].to(device)
                    _check_commit(tokens, start, x0, conf, done, nfe, **kw)


def test_commit_step_validation(device):
    B, T, L = 2, 20, 8
    tok = torch.zeros(B, T, dtype=torch.long, device=device)
    x0 = torch.zeros(B, L, dtype=torch.long, device=device)
    c = torch.rand(B, L, device=device)
    k = torch.ones(B, dtype=torch.long, device=device)
    with pytest.raises(ValueError, match="tokens"):
        commit_step(tok.int(), 0, x0, c, mask_id=9, k=k)
    with pytest.raises(ValueError, match="conf must be"):
        commit_step(tok, 0, x0, c[:, :4], mask_id=9, k=k)
    with pytest.raises(ValueError, match="start=13"):
        commit_step(tok, 13, x0, c, mask_id=9, k=k)
    with pytest.raises(ValueError, match="start=-1"):
        commit_step(tok, -1, x0, c, mask_id=9, k=k)
    with pytest.raises(ValueError, match="start must be"):
        commit_step(tok, torch.zeros(3, dtype=torch.long, device=device), x0, c, mask_id=9, k=k)
    with pytest.raises(TypeError, match="start must be"):
        commit_step(tok, 1.5, x0, c, mask_id=9, k=k)
    with pytest.raises(ValueError, match="mask_id"):
        commit_step(tok, 0, x0, c, mask_id=-3, k=k)
    with pytest.raises(ValueError, match="done has dtype"):
        commit_step(tok, 0, x0, c, mask_id=9, k=k, done=torch.zeros(B, dtype=torch.long, device=device))
    with pytest.raises(ValueError, match="nfe must be"):
        commit_step(tok, 0, x0, c, mask_id=9, k=k, nfe=torch.zeros(B + 1, dtype=torch.long, device=device))
    with pytest.raises(ValueError, match="exactly one"):
        commit_step(tok, 0, x0, c, mask_id=9, k=k, threshold=0.5)
    with pytest.raises(ValueError, match="threshold must be a number"):
        commit_step(tok, 0, x0, c, mask_id=9, threshold=float("nan"))


# ---------------------------------------------------------------------------- logits_confidence
# small GPU-like tiling of the from-logits kernel: several row tiles, vocab slices of 2 tiles, ragged V edge
SMALL_LOGITS = dict(BLOCK_M=32, BLOCK_V=128, TILES=2, num_warps=4)
# rows4: 4-row tiles, 8 vocab tiles of 64 per program (the online rescaling runs often)
LTILES = {"default": None, "small": SMALL_LOGITS, "rows4": dict(BLOCK_M=4, BLOCK_V=64, TILES=8, num_warps=4)}


def _run_logits(logits, config=None, **kw):
    """logits_confidence through its launcher with NaN / garbage-poisoned outputs."""
    M = logits.shape[0]
    x0 = torch.full((M,), -7, dtype=torch.int64, device=logits.device)
    conf = torch.full((M,), float("nan"), dtype=torch.float32, device=logits.device)
    opts = dict(temperature=0.0, seed=0, offset=0, banned_ids=(), no_confidence_ids=(), uncond_logits=None,
                cfg_scale=0.0)
    opts.update(kw)
    return _logits_confidence_launch(logits, x0, conf, config=config, **opts)


def _exact_logits(M, V, D, dtype, device, seed):
    """hidden, w and the logits ``hidden @ w.T`` in ``dtype``: exact (multiples of 1/16), so the head and the
    from-logits paths see the same values."""
    gen = torch.Generator().manual_seed(seed)
    h = _exact((M, D), dtype, device, gen)
    w = _exact((V, D), dtype, device, gen)
    w[V - 5] = w[min(3, V - 1)]  # a cross-tile tie: the lower id must win
    h[0] = 0  # all-equal row
    return h, w, (h @ w.t()).to(dtype)


LOGITS_CASES = {
    "plain": lambda h, w, hu: {},
    "ban_noconf": lambda h, w, hu: dict(banned_ids=(0, 3), no_confidence_ids=(1, 2, 7, 11)),
    "cfg": lambda h, w, hu: dict(uncond=hu, cfg_scale=0.5),
    "sample": lambda h, w, hu: dict(temperature=0.7, seed=2 ** 33 + 5, offset=9, banned_ids=(4,),
                                     no_confidence_ids=(6,)),
}


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: DT_ID.get(d, str(d)))
@pytest.mark.parametrize("V", [320, 1000])
@pytest.mark.parametrize("case", list(LOGITS_CASES))
def test_logits_vs_head_and_reference(device, dtype, V, case):
    """Same logits as the head computes -> the same tokens as head_confidence (sampling included: same
    Philox noise) and as the reference (temperature 0), with the default and a small GPU-like tiling;
    conf within the derived bound of the fp64 truth."""
    M, D = 33, 48
    h, w, logits = _exact_logits(M, V, D, dtype, device, seed=V)
    hu = _exact((M, D), dtype, device, torch.Generator().manual_seed(1))
    kw = LOGITS_CASES[case](h, w, hu)
    uncond = kw.pop("uncond", None)
    hx, hc = _run_head(h, w, uncond_hidden=uncond, **kw)
    lu = None if uncond is None else (uncond @ w.t()).to(dtype)
    truth_logits = _ref_logits(h, w, uncond, kw.get("cfg_scale", 0.0), kw.get("banned_ids", ()))
    if case != "sample":
        rx, rc = logits_confidence_ref(logits, uncond_logits=lu, **kw)
        assert torch.equal(hx.cpu(), rx.cpu())
    for tiles in ("default", "small"):
        x0, conf = _run_logits(logits, config=LTILES[tiles], uncond_logits=lu, **kw)
        assert torch.equal(x0.cpu(), hx.cpu()), tiles
        truth = _conf64(truth_logits, x0, kw.get("no_confidence_ids", ()))
        if case == "sample":  # conf is the noise-free probability of the sampled token
            assert torch.allclose(conf.double().cpu(), truth.cpu(), rtol=16 * EPS32, atol=0)
        else:
            _check_conf(conf, rc, truth)
        if case in ("plain", "ban_noconf"):  # the all-equal row: the lowest id not banned
            assert int(x0[0]) == (1 if case == "ban_noconf" else 0)


@pytest.mark.filterwarnings("ignore:invalid value encountered in divide")  # the all -inf row: 0 / 0
def test_logits_adversarial_rows(device):
    """Rows the head cannot produce: all -inf but one; a lone finite id that is banned (all -inf: x0 0, conf
    NaN, as the reference); the max on a no-confidence id (conf 0); two equal maxima far apart; huge and
    very negative magnitudes (the online rescaling); the max in the last (ragged) tile; a tie across a
    tile edge; an all-zero row."""
    V = 1000
    gen = torch.Generator().manual_seed(21)
    rows = torch.randn(10, V, generator=gen) * 3
    rows[0] = float("-inf")
    rows[0, 777] = -5.0
    rows[1] = float("-inf")
    rows[1, 13] = 2.0  # banned below
    rows[2] = float("-inf")
    rows[2, 600] = 1.0
    rows[2, 7] = 0.5  # 600 is a no-confidence id: only 7 is left in the softmax
    rows[3, 900] = rows[3, 50] = 40.0
    rows[4] = rows[4] * 1e4
    rows[5] = rows[5] - 1e4
    rows[6, :500] = float("-inf")
    rows[7, V - 1] = 50.0
    rows[8, 127] = rows[8, 128] = 30.0  # a tie across a tile edge
    rows[9] = 0.0
    kw = dict(banned_ids=(13,), no_confidence_ids=(600, 999))
    for dtype in (torch.float32, torch.float16):
        fin = torch.isfinite(rows)
        logits = torch.where(fin, rows.clamp(-6e4, 6e4), rows).to(dtype).to(device)
        rx, rc = logits_confidence_ref(logits, **kw)
        lf = logits.float().cpu().clone()
        lf[:, 13] = float("-inf")
        truth = _conf64(lf, rx.cpu(), kw["no_confidence_ids"])
        for tiles in LTILES.values():
            x0, conf = _run_logits(logits, config=tiles, **kw)
            assert torch.equal(x0.cpu(), rx.cpu()), tiles
            _check_conf(conf, rc, truth)
        assert x0[:4].tolist() == [777, 0, 600, 50] and int(x0[7]) == V - 1 and int(x0[8]) == 127
        assert torch.isnan(conf[1]) and conf[2] == 0 and float(conf[9]) == pytest.approx(1 / (V - 3), rel=1e-6)


def test_logits_full_vocab(device):
    """LLaDA's V = 126464 once under the interpreter: fp16, banned and no-confidence ids, strided rows."""
    M, V = 7, VOCAB_FULL
    gen = torch.Generator().manual_seed(17)
    base = (torch.randn(M, V + 64, generator=gen) * 4).to(torch.float16).to(device)
    logits = base[:, 32:32 + V]  # row stride V + 64
    logits[1, 126000] = logits[1, 5] = 30.0
    kw = dict(banned_ids=(126081,), no_confidence_ids=(11, 126348))
    x0, conf = _run_logits(logits, **kw)
    rx, rc = logits_confidence_ref(logits, **kw)
    assert torch.equal(x0.cpu(), rx.cpu()) and int(x0[1]) == 5
    lf = logits.float().cpu().clone()
    lf[:, 126081] = float("-inf")
    _check_conf(conf, rc, _conf64(lf, rx.cpu(), kw["no_confidence_ids"]))


def test_logits_sampling_distribution(device):
    """Sampled token frequencies follow softmax(logits / T) (chi-square, fixed seed)."""
    gen = torch.Generator().manual_seed(1)
    V, M, T = 24, 4096, 0.8
    row = (torch.randn(V, generator=gen) * 1.5).float()
    logits = row[None, :].expand(M, V).contiguous().to(device)
    cfg = dict(BLOCK_M=1024, BLOCK_V=16, TILES=1, num_warps=4) if INTERP else None
    x0, conf = _run_logits(logits, config=cfg, temperature=T, seed=77, offset=3)
    counts = torch.bincount(x0.cpu(), minlength=V).double()
    p, stat = _chi2_pvalue(counts, torch.softmax(row.double() / T, 0))
    assert p > 1e-4, f"chi2 {stat:.1f}, p {p:.2e}"


def test_logits_validation(device):
    lg = torch.zeros(4, 32, device=device)
    with pytest.raises(ValueError, match="logits has dtype"):
        logits_confidence(lg.long())
    with pytest.raises(ValueError, match="logits must have 2 dims"):
        logits_confidence(lg[0])
    with pytest.raises(ValueError, match="logits must be contiguous in its last dim"):
        logits_confidence(lg.t())
    with pytest.raises(ValueError, match="uncond_logits"):
        logits_confidence(lg, uncond_logits=lg[:3])
    with pytest.raises(ValueError, match="uncond_logits has dtype"):
        logits_confidence(lg, uncond_logits=lg.half())
    with pytest.raises(ValueError, match="banned_ids: id 32 is outside"):
        logits_confidence(lg, banned_ids=(32,))
    with pytest.raises(ValueError, match="temperature"):
        logits_confidence(lg, temperature=float("nan"))
    with pytest.raises(ValueError, match="offset"):
        logits_confidence(lg, offset=2 ** 64)
    with pytest.raises(ValueError, match="n_rows must be an int32/int64 tensor of one element"):
        logits_confidence(lg, n_rows=torch.tensor([1, 2], device=device))
    with pytest.raises(ValueError, match="n_rows has dtype"):
        logits_confidence(lg, n_rows=torch.tensor(1.0, device=device))
    with pytest.raises(ValueError, match=r"row_ids must be an int32/int64 tensor \[4\]"):
        logits_confidence(lg, row_ids=torch.arange(3, device=device))
    with pytest.raises(ValueError, match="row_ids has dtype"):
        head_confidence(torch.zeros(4, 16, device=device), torch.zeros(32, 16, device=device),
                        row_ids=torch.arange(4, device=device).float())
    x0, conf = logits_confidence(lg[:0])
    assert x0.shape == (0,) and conf.shape == (0,)


# ---------------------------------------------------------------------------- n_rows / row_ids
@pytest.mark.parametrize("kernel", ["head", "logits"])
@pytest.mark.parametrize("n", [0, 5, 8, 33, 40])
def test_n_rows_exits(device, kernel, n):
    """Row tiles at or past n_rows are skipped by both kernels (outputs keep their poison); rows of the tiles
    that run are exact (tiles of 4 rows under the interpreter, 16 compiled: tl.dot's smallest M)."""
    M, V, D = 33, 320, 48
    tile = 4 if INTERP else 16
    h, w, logits = _exact_logits(M, V, D, torch.float32, device, seed=4)
    nr = torch.tensor(n, dtype=torch.int32 if n % 2 else torch.int64, device=device)
    if n == 8:
        nr = nr.reshape(1)
    if kernel == "head":
        x0, conf = _run_head(h, w, config=dict(SMALL_TILES, BLOCK_M=tile, BLOCK_R=tile), n_rows=nr)
    else:
        x0, conf = _run_logits(logits, config=dict(SMALL_LOGITS, BLOCK_M=tile, BLOCK_R=tile), n_rows=nr)
    rx, rc = logits_confidence_ref(logits)
    run = min(M, -(-n // tile) * tile)
    assert torch.equal(x0[:run].cpu(), rx[:run].cpu())
    _check_conf(conf[:run], rc[:run], _conf64(logits.float(), rx)[:run])
    assert (x0[run:] == -7).all() and torch.isnan(conf[run:]).all()


@pytest.mark.parametrize("kernel", ["head", "logits"])
@pytest.mark.parametrize("T", [0.0, 1.0])
def test_row_ids_keep_noise_under_compaction(device, kernel, T):
    """Rows gathered in another order with their original indices as row_ids give the same tokens and
    confidences as the uncompacted call (Gumbel sampling included); n_rows on top skips the tail."""
    M, V, D = 24, 320, 32
    h, w, logits = _exact_logits(M, V, D, torch.float32, device, seed=8)
    w = w * 0.25  # a flat softmax: samples spread out, so a wrong row counter would show
    logits = h @ w.t()
    gen = torch.Generator().manual_seed(3)
    perm = torch.randperm(M, generator=gen).to(device)
    kw = dict(temperature=T, seed=123, offset=7)
    n = torch.tensor(13, device=device)
    if kernel == "head":
        full = _run_head(h, w, **kw)
        comp = _run_head(h[perm], w, row_ids=perm, n_rows=n, **kw)
        plain = _run_head(h[perm], w, **kw)
    else:
        full = _run_logits(logits, **kw)
        comp = _run_logits(logits[perm], row_ids=perm.to(torch.int32), n_rows=n, **kw)
        plain = _run_logits(logits[perm], **kw)
    assert torch.equal(comp[0][:13].cpu(), full[0][perm][:13].cpu())
    torch.testing.assert_close(comp[1][:13], full[1][perm][:13], rtol=0, atol=0)
    if T > 0:  # without row_ids the gathered rows would draw other noise
        assert (plain[0] != full[0][perm]).sum() > M // 3
        rg = lambda: torch.Generator().manual_seed(5)  # noqa: E731
        r_full = logits_confidence_ref(logits.cpu(), temperature=T, generator=rg())
        r_comp = logits_confidence_ref(logits.cpu()[perm.cpu()], temperature=T, generator=rg(), row_ids=perm.cpu())
        assert torch.equal(r_comp[0], r_full[0][perm.cpu()])


# ---------------------------------------------------------------------------- GPU-only: LLaDA size
@pytest.mark.gpu
@pytest.mark.parametrize("M", [32, 256])
def test_head_llada_size_bf16(device, M):
    """LLaDA-8B head (V=126464, d=4096) in bf16: x0 equal where the top-2 logits are separated by more
    than one bf16 rounding; otherwise x0's logit within that rounding of the max."""
    g = torch.Generator(device=device).manual_seed(0)
    h = torch.randn(M, 4096, device=device, generator=g).to(torch.bfloat16)
    w = (torch.randn(VOCAB_FULL, 4096, device=device, generator=g) / 64).to(torch.bfloat16)
    x0, conf = head_confidence(h, w)
    rx, rc = head_confidence_ref(h, w)
    logits = (h @ w.t()).float()
    top2 = logits.topk(2, dim=1).values
    ulp = 2.0 ** (torch.floor(torch.log2(top2[:, 0].abs())) - 7)
    clear = (top2[:, 0] - top2[:, 1]) > 2 * ulp
    assert torch.equal(x0[clear], rx[clear])
    assert (logits.gather(1, x0[:, None])[:, 0] >= top2[:, 0] - 2 * ulp).all()
    assert torch.allclose(conf[clear], rc[clear], rtol=2 ** -6, atol=0)



@pytest.mark.gpu
@pytest.mark.parametrize("M", [32, 256, 1024])
def test_logits_llada_size_bf16(device, M):
    """bf16 logits [M, 126464] (LLaDA-8B), compiled default tiles: x0 equal to the reference everywhere (the
    same bf16 values, exact fp32 comparisons, ties to the lowest id), conf within the derived bound."""
    g = torch.Generator(device=device).manual_seed(M)
    logits = (torch.randn(M, VOCAB_FULL, device=device, generator=g) * 3).to(torch.bfloat16)
    kw = dict(banned_ids=(126081,), no_confidence_ids=(126348,))
    x0, conf = _run_logits(logits, **kw)
    rx, rc = logits_confidence_ref(logits, **kw)
    assert torch.equal(x0, rx)
    lf = logits.float()
    lf[:, 126081] = float("-inf")
    _check_conf(conf, rc, _conf64(lf, rx, kw["no_confidence_ids"]))
    xs, _ = _run_logits(logits, temperature=1.0, seed=3, offset=1, **kw)
    assert ((xs >= 0) & (xs < VOCAB_FULL) & (xs != 126081)).all() and (xs != x0).any()


@pytest.mark.gpu
def test_n_rows_in_cuda_graph(device):
    """One captured graph serves every n_rows value (a device tensor refilled between replays): tiles past
    it are skipped, the others exact; also with sampling and row_ids."""
    M, V, D = 64, 4096, 256
    h, w, logits = _exact_logits(M, V, D, torch.bfloat16, device, seed=2)
    n = torch.tensor(M, device=device)
    rid = torch.randperm(M, device=device)
    outs = {k: (torch.empty(M, dtype=torch.int64, device=device), torch.empty(M, device=device))
            for k in ("head", "logits")}
    hcfg = dict(BLOCK_M=16, BLOCK_V=128, BLOCK_K=64, SWAP_AB=True, num_warps=4, num_stages=3, BLOCK_R=16)
    lcfg = dict(BLOCK_M=4, BLOCK_V=512, TILES=2, num_warps=4, BLOCK_R=4)
    kw = dict(temperature=1.0, seed=9, offset=4, banned_ids=(), no_confidence_ids=(), cfg_scale=0.0, n_rows=n,
              row_ids=rid)

    def step():
        _head_confidence_launch(h, w, *outs["head"], uncond_hidden=None, config=hcfg, **kw)
        _logits_confidence_launch(logits, *outs["logits"], uncond_logits=None, config=lcfg, **kw)

    step()  # compiles
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    want = {"head": _run_head(h, w, config=hcfg, **dict(kw, n_rows=None)),
            "logits": _run_logits(logits, config=lcfg, **dict(kw, n_rows=None))}
    assert torch.equal(want["head"][0], want["logits"][0])
    for nv in (M, 17, 0, 40):
        for x0, conf in outs.values():
            x0.fill_(-7)
            conf.fill_(float("nan"))
        n.fill_(nv)
        graph.replay()
        torch.cuda.synchronize()
        for k, tile in (("head", 16), ("logits", 4)):
            run = min(M, -(-nv // tile) * tile)
            x0, conf = outs[k]
            assert torch.equal(x0[:run], want[k][0][:run]), (k, nv)
            assert torch.equal(conf[:run], want[k][1][:run]), (k, nv)
            assert (x0[run:] == -7).all() and torch.isnan(conf[run:]).all(), (k, nv)

# ---------------------------------------------------------------------------- compile-only sm_90
_COMPILE_SCRIPT = textwrap.dedent(r"""
    import os, sys
    sys.path.insert(0, sys.argv[1])
    sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
    from llada_triton.kernels import confidence as R, selection as S
    from llada_triton.kernels._common import compile_for
    ids = ("seed_lo", "seed_hi", "off_lo", "off_hi", "ban0", "ban1", "ban2", "ban3", "nc0", "nc1", "nc2", "nc3")
    for dt in ("bf16", "fp16"):
        parts = {"pkey_ptr": "*fp32", "pidx_ptr": "*i32", "plx_ptr": "*fp32", "pm_ptr": "*fp32", "ps_ptr": "*fp32"}
        sig = {"h_ptr": f"*{dt}", "hu_ptr": f"*{dt}", "w_ptr": f"*{dt}", **parts, "n_rows_ptr": "*i64",
               "row_ids_ptr": "*i64", "M": "i32", "V": "i32", "D": "i32",
               "NVT": "i32", "stride_hm": "i32", "stride_hum": "i32", "stride_wv": "i32", "inv_temp": "fp32",
               "cfg_w": "fp32", **{n: "i32" for n in ids}}
        for cfg, sample, nb, swap, bm, bv, bk in ((False, False, 0, False, 64, 64, 32),
                                                  (True, True, 2, True, 16, 64, 32)):
            ce = dict(N_BAN=nb, N_NC=nb, SAMPLE=sample, CFG=cfg, HAS_N_ROWS=sample, HAS_ROW_IDS=sample, UPCAST=False,
                      IEEE=False, SWAP_AB=swap, EVEN_K=not cfg, EVEN_V=not cfg, BLOCK_M=bm, BLOCK_V=bv,
                      BLOCK_K=bk, USE_GDC=not cfg)
            k = compile_for(R._head_partials_kernel, sig, ce)
            assert "mma" in k.asm["ptx"], "no tensor-core instructions"
        # from logits: the default GPU tiles (T = 0 and sampling), and the options on a ragged V
        sig = {"l_ptr": f"*{dt}", "lu_ptr": f"*{dt}", **parts, "n_rows_ptr": "*i32", "row_ids_ptr": "*i64",
               "M": "i32", "V": "i32", "NVT": "i32", "CHUNK": "i32", "stride_lm": "i32", "stride_lum": "i32",
               "inv_temp": "fp32", "cfg_w": "fp32", **{n: "i32" for n in ids}}
        for t, (bm, bv) in ((0.0, (2, 2048)), (1.0, (2, 512))):
            c = R._logits_config(1024, 126464, False, t > 0)
            assert (c["BLOCK_M"], c["BLOCK_V"]) == (bm, bv), c
        for cfg, sample, nb, even, bm, bv in ((False, False, 0, False, 2, 2048), (False, False, 0, True, 2, 1024),
                                              (True, True, 4, False, 2, 512))[:3 if dt == "bf16" else 1]:
            ce = dict(N_BAN=nb, N_NC=nb, SAMPLE=sample, CFG=cfg, HAS_N_ROWS=cfg, HAS_ROW_IDS=cfg, EVEN_V=even,
                      BLOCK_M=bm, BLOCK_V=bv)
            compile_for(R._logits_partials_kernel, sig, ce)
        for rule in (0, 1, 2):
            sig = {"conf_ptr": f"*{dt}", "masked_ptr": "*u8", "k_ptr": "*i64", "x0_ptr": "*i64", "tok_ptr": "*i64",
                   "out_ptr": "*u8", "L": "i32", "stride_cb": "i32", "stride_mb": "i32", "stride_xb": "i32",
                   "stride_tb": "i32", "stride_ob": "i32", "threshold": "fp32", "f_hi": "fp32", "f_mid": "fp32",
                   "f_lo": "fp32"}
            compile_for(S._select_kernel, sig, dict(RULE=rule, COMMIT=rule == 2, BLOCK_L=1024, BLOCK_J=4))
            sig = {"tok_ptr": "*i64", "start_ptr": "*i64", "x0_ptr": "*i64", "conf_ptr": f"*{dt}", "done_ptr": "*u8",
                   "k_ptr": "*i64", "nfe_ptr": "*i64", "sel_ptr": "*u8", "conf_out_ptr": "*fp32", "blk_ptr": "*i64",
                   "L": "i32", "T": "i32", "start": "i32", "mask_id": "i32", "stride_tb": "i32", "stride_sb": "i32",
                   "stride_xb": "i32", "stride_cb": "i32", "threshold": "fp32", "f_hi": "fp32", "f_mid": "fp32",
                   "f_lo": "fp32"}
            for sp, bl, bj in ((True, 32, 32), (False, 1024, 4)):  # the decode block (PDL), a long block
                compile_for(S._commit_step_kernel, sig, dict(RULE=rule, START_PTR=sp, HAS_DONE=sp, HAS_NFE=sp,
                                                             BLOCK_L=bl, BLOCK_J=bj, USE_GDC=sp))
    sig = {n: "*fp32" for n in ("pkey_ptr", "plx_ptr", "pm_ptr", "ps_ptr", "conf_ptr")}
    sig.update({"pidx_ptr": "*i32", "x0_ptr": "*i64", "n_rows_ptr": "*i64", "M": "i32", "NVT": "i32"})
    for has in (False, True):
        compile_for(R._head_merge_kernel, sig, dict(HAS_N_ROWS=has, BLOCK_R=4, BLOCK_T=1024, USE_GDC=has))
    import test_remask as T
    compile_for(T._philox_probe, {"c_ptr": "*i32", "out_ptr": "*i32"}, dict(BLOCK=16))
    print("OK")
""")


def test_compile_sm90():
    """Every kernel variant compiles for sm_90 (bf16 and fp16), in a process without the interpreter."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = run_without_interpreter(_COMPILE_SCRIPT, root)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]
