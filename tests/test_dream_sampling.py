"""Dream's streamed head with sampling (kernels.head_dream_confidence at temperature > 0, top-p / top-k) against
its torch reference given the kernel's own Philox Gumbel noise (reference.philox_gumbel_ref), plus the
distribution of the samples, determinism, tiling independence and Dream's 1e-10 in the entropy.

Logits of the exactness tests are multiples of 1/16 (inputs in {0, +-1/4, +-1/2}): exact in fp32 and fp16 in any
summation order, so the kernel and torch see the same logits and the same noise, and the tokens must be equal."""
import math

import pytest
import torch

from llada_triton.kernels import head_dream_confidence
from llada_triton.kernels.reference import dream_confidence_ref, head_dream_confidence_ref, philox_gumbel_ref

CONFS = ("prob", "margin", "neg_entropy")
TILED = dict(BLOCK_M=16, BLOCK_V=64, BLOCK_K=16)  # several row tiles, vocab tiles and K steps, ragged edges
SWAPPED = dict(BLOCK_M=16, BLOCK_V=128, BLOCK_K=32, SWAP_AB=True)


def _exact(M, V, D, dtype, device, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randint(-2, 3, (M, D), generator=g) / 4
    w = torch.randint(-2, 3, (V, D), generator=g) / 4 * scale
    return h.to(dtype).to(device), w.to(dtype).to(device)


def _ref(h, w, *, seed, offset, rows=None, **kw):
    rows = torch.arange(h.shape[0]) if rows is None else rows
    g = philox_gumbel_ref(seed, offset, rows.to(h.device), w.shape[0]) if kw.get("temperature", 0) > 0 else None
    return head_dream_confidence_ref(h, w, gumbel=g, **kw)


def _conf_tol(confidence, V, tiled, dtype):
    # the streamed entropy over several fp16 vocab tiles leaves out Dream's 1e-10 (|change| < V * 1e-10)
    gap = tiled and confidence == "neg_entropy" and dtype != torch.float32
    return dict(rtol=1e-5, atol=2e-6 + (V * 1e-10 if gap else 0.0))


def test_philox_gumbel_ref_known_answer():
    """Counter 0, key 0 gives Random123's first word 0x6627e8d5; the noise is -log(-log1p(-w)) of it."""
    w = (0x6627E8D5 + 0.5) / 2 ** 32
    g = philox_gumbel_ref(0, 0, torch.tensor([0]), 3)
    assert abs(g[0, 0].item() - (-math.log(-math.log1p(-w)))) < 1e-6
    pair = philox_gumbel_ref(7, 9, torch.tensor([4, 2]), 5)
    assert torch.equal(pair[1], philox_gumbel_ref(7, 9, torch.tensor([2]), 5)[0])  # a row's noise is its own


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("confidence", CONFS)
def test_sampling_matches_reference_with_the_same_noise(device, dtype, confidence):
    """Tokens equal to the reference's Gumbel-max with the kernel's noise, confidences on the tempered
    distribution, for one vocab tile and for GPU-like tilings (tiling independence)."""
    M, V, D = 37, 300, 48
    h, w = _exact(M, V, D, dtype, device, scale=0.5)
    kw = dict(confidence=confidence, temperature=0.7, seed=2 ** 40 + 3, offset=5, banned_ids=(5, 299))
    r0, rc = _ref(h, w, **kw)
    for tiles in (None, TILED, SWAPPED):
        x0, conf = head_dream_confidence(h, w, config=tiles, **kw)
        assert torch.equal(x0, r0), tiles
        torch.testing.assert_close(conf, rc, **_conf_tol(confidence, V, tiles is not None, dtype))
    assert not bool(((r0 == 5) | (r0 == 299)).any())


def test_flat_logits_sample_the_noise_argmax(device):
    """Zero logits: the sample is the argmax of the noise itself, so every row checks the Philox stream."""
    M, V = 64, 200
    h = torch.zeros(M, 16, device=device)
    w = torch.zeros(V, 16, device=device)
    x0, conf = head_dream_confidence(h, w, temperature=1.3, seed=11, offset=2 ** 33 + 1, config=TILED)
    assert torch.equal(x0.cpu(), philox_gumbel_ref(11, 2 ** 33 + 1, torch.arange(M), V).argmax(1))
    torch.testing.assert_close(conf.cpu(), torch.full((M,), 1 / V), rtol=1e-6, atol=0)


def test_seeds_offsets_and_row_ids(device):
    """Same (seed, offset) -> same samples; another seed or offset -> different ones; a row gathered with its
    row id keeps its sample (the driver's compaction)."""
    M, V, D = 48, 256, 32
    h, w = _exact(M, V, D, torch.float32, device, seed=1, scale=0.25)  # a nearly flat softmax: samples spread out
    kw = dict(confidence="prob", temperature=1.0, seed=123, offset=7)
    a, ca = head_dream_confidence(h, w, **kw)
    b, cb = head_dream_confidence(h, w, **kw)
    assert torch.equal(a, b) and torch.equal(ca, cb)
    for other in (dict(kw, seed=124), dict(kw, offset=8), dict(kw, offset=7 + 2 ** 32)):
        assert (head_dream_confidence(h, w, **other)[0] != a).sum() > M // 2
    perm = torch.randperm(M, generator=torch.Generator().manual_seed(0)).to(device)
    n = 20
    g0, gc = head_dream_confidence(h.index_select(0, perm), w, n_rows=torch.tensor(n, device=device),
                                   row_ids=perm, config=dict(BLOCK_M=16), **kw)
    assert torch.equal(g0[:n], a[perm[:n]])
    torch.testing.assert_close(gc[:n], ca[perm[:n]], rtol=1e-6, atol=0)


def _one_row(logit_row, M, device):
    """hidden / w whose logits are ``logit_row`` in every one of M rows (fp32, D = 16)."""
    h = torch.zeros(M, 16)
    h[:, 0] = 1.0
    w = torch.zeros(logit_row.numel(), 16)
    w[:, 0] = logit_row
    return h.to(device), w.to(device)


def _chi2_pvalue(counts, probs):
    exp = probs * counts.sum()
    stat = float(((counts - exp) ** 2 / exp).sum())
    dof = counts.numel() - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))


@pytest.mark.parametrize("T", [0.7, 1.5])
def test_samples_follow_the_tempered_softmax(device, T):
    """Token frequencies over many rows follow softmax(l / T) (chi-square, fixed seed: deterministic), and the
    same counts reject a wrong temperature; the prob confidence is the tempered probability of the sample."""
    V, M = 24, 4096
    row = torch.randn(V, generator=torch.Generator().manual_seed(3)).float() * 1.5
    h, w = _one_row(row, M, device)
    x0, conf = head_dream_confidence(h, w, confidence="prob", temperature=T, seed=99, offset=int(T * 10),
                                     banned_ids=(4,), config=dict(BLOCK_M=1024, BLOCK_V=32, BLOCK_K=16))
    x0 = x0.cpu()
    row[4] = float("-inf")
    counts = torch.bincount(x0, minlength=V).double()
    assert counts[4] == 0
    keep = torch.arange(V) != 4
    probs = torch.softmax(row.double() / T, 0)
    assert _chi2_pvalue(counts[keep], probs[keep]) > 1e-4
    for wrong in (T * 0.75, T * 1.33):
        assert _chi2_pvalue(counts[keep], torch.softmax(row.double() / wrong, 0)[keep]) < 1e-6, wrong
    torch.testing.assert_close(conf.double().cpu(), probs[x0], rtol=1e-5, atol=0)


@pytest.mark.parametrize("confidence", CONFS)
@pytest.mark.parametrize("filt", [dict(top_k=3), dict(top_p=0.8), dict(top_p=0.9, top_k=40)],
                         ids=["top_k", "top_p", "both"])
@pytest.mark.parametrize("T", [0.0, 0.8])
def test_top_p_top_k_rows(device, confidence, filt, T):
    """top-p / top-k: the rows' logits filtered as Dream (p then k), sampled with the kernel's noise; with
    ``n_rows`` the first rows equal the reference (the rest are unspecified)."""
    M, V, D = 24, 160, 32
    h, w = _exact(M, V, D, torch.float32, device, seed=4, scale=0.5)
    kw = dict(confidence=confidence, temperature=T, seed=5, offset=3, banned_ids=(0,), **filt)
    x0, conf = head_dream_confidence(h, w, **kw)
    r0, rc = _ref(h, w, **kw)
    assert torch.equal(x0, r0)
    torch.testing.assert_close(conf, rc, rtol=1e-6, atol=1e-7)
    rows = torch.arange(M - 1, -1, -1, device=device)
    n = 10
    x1, c1 = head_dream_confidence(h.flip(0), w, n_rows=torch.tensor([n], device=device), row_ids=rows, **kw)
    assert torch.equal(x1[:n], r0.flip(0)[:n])
    torch.testing.assert_close(c1[:n], rc.flip(0)[:n], rtol=1e-6, atol=1e-7)


def test_top_k_one_is_greedy(device):
    g = torch.Generator().manual_seed(2)  # randn: no tied maxima (top-k keeps ties)
    h, w = torch.randn(8, 16, generator=g).to(device), torch.randn(100, 16, generator=g).to(device)
    x0, conf = head_dream_confidence(h, w, confidence="prob", temperature=0.9, top_k=1, seed=1)
    logits = h @ w.t()
    top = logits.max(1, keepdim=True).values
    assert bool((logits.gather(1, x0[:, None]) == top).all()) and torch.equal(conf, torch.ones_like(conf))


def test_logit_shift_by_row_indexing(device):
    """Dream's shift (position i from row i - 1, position 0 its own row) is row indexing before the head: the
    head on the shifted rows samples exactly what the reference samples from the shifted logits."""
    from llada_triton.decode.cache import shifted_rows

    B, L, D, V = 2, 12, 32, 96
    h, w = _exact(B * L, V, D, torch.float32, device, seed=6, scale=0.5)
    kw = dict(confidence="margin", temperature=0.6)
    x0, conf = head_dream_confidence(shifted_rows(h.view(B, L, D), 1).reshape(B * L, D), w, seed=8, offset=1, **kw)
    logits = (h @ w.t()).view(B, L, V)
    shifted = torch.cat([logits[:, :1], logits[:, :-1]], 1).reshape(B * L, V)
    g = philox_gumbel_ref(8, 1, torch.arange(B * L).to(device), V)
    r0, rc = dream_confidence_ref(shifted, gumbel=g, **kw)
    assert torch.equal(x0, r0)
    torch.testing.assert_close(conf, rc, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("tiles", [None, TILED], ids=["one-tile", "tiled"])
@pytest.mark.parametrize("T", [0.0, 0.5])
def test_entropy_has_dreams_epsilon(device, T, tiles):
    """A peaked row whose other ids sit at p = 1e-10: Dream's ``sum p log(p + 1e-10)`` (the fp32 reference)
    differs from ``sum p log p`` by about 3%; the fp32 kernel matches Dream's, in one vocab tile and in several
    (the second pass)."""
    V = 256
    row = torch.full((V,), math.log(1e-10) * (T or 1.0))
    row[17] = 0.0
    h, w = _one_row(row, 4, device)
    _, conf = head_dream_confidence(h, w, confidence="neg_entropy", temperature=T, seed=1, config=tiles)
    _, ref = head_dream_confidence_ref(h, w, confidence="neg_entropy", temperature=T,
                                       gumbel=torch.zeros(4, V, device=device))
    p = torch.softmax(row.to(device) / (T or 1.0), 0)
    plain = (p * torch.log(p)).sum()
    assert bool(((ref - plain).abs() > 0.02 * ref.abs()).all())
    torch.testing.assert_close(conf, ref, rtol=1e-4, atol=0)


def test_sampling_arguments_are_checked(device):
    h, w = _exact(4, 32, 16, torch.float32, device)
    for bad, match in ((dict(top_p=0.0), "top_p=0.0"), (dict(top_k=0), "top_k=0"), (dict(top_k=2.5), "top_k=2.5"),
                       (dict(temperature=-1.0), "temperature"), (dict(temperature=1.0, seed=-1), "seed"),
                       (dict(row_ids=torch.arange(3, device=device)), "row_ids")):
        with pytest.raises(ValueError, match=match):
            head_dream_confidence(h, w, **bad)


@pytest.mark.gpu
@pytest.mark.parametrize("M", [32, 1024])
def test_dream_size_sampling_bf16(device, M):
    """Dream-7B's head (V 152,064, d 3,584) in bf16 on the GPU against the reference on fp32 logits rounded to
    bf16 (as the kernel rounds its fp32 tiles), with the kernel's noise: a logit whose fp32 sum sits at a bf16
    rounding boundary may round the other way, so high agreement rather than equality; greedy unchanged; top-p
    on the first n_rows (the same cuBLAS logits and noise as the reference: equal)."""
    V, D = 152064, 3584
    g = torch.Generator(device="cuda").manual_seed(0)
    h = torch.randn(M, D, device="cuda", generator=g).to(torch.bfloat16)
    w = (torch.randn(V, D, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
    logits = (h.float() @ w.float().t()).to(torch.bfloat16)  # fp32 products (no TF32), rounded as the kernel
    noise = philox_gumbel_ref(3, 2, torch.arange(M, device="cuda"), V)
    for conf_kind in CONFS:
        for T, gum in ((0.8, noise), (0.0, None)):
            x0, c = head_dream_confidence(h, w, confidence=conf_kind, temperature=T, seed=3, offset=2)
            r0, rc = dream_confidence_ref(logits, confidence=conf_kind, temperature=T, gumbel=gum)
            same = x0 == r0
            assert same.float().mean().item() > 0.99, (conf_kind, T)
            assert (c - rc)[same].abs().max().item() < 1e-3, (conf_kind, T)
    kw = dict(confidence="neg_entropy", temperature=0.8, top_p=0.95, seed=3, offset=2)
    x0, c = head_dream_confidence(h, w, n_rows=torch.tensor(M // 2, device="cuda"), **kw)
    r0, rc = _ref(h[: M // 2], w, **kw)
    assert torch.equal(x0[: M // 2], r0)
    torch.testing.assert_close(c[: M // 2], rc, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("filt", [dict(), dict(top_p=0.9, top_k=50)], ids=["plain", "top_p_top_k"])
def test_driver_samples_with_the_triton_head(filt):
    """diffusion_generate with the Triton ops at temperature > 0 (no reference fallback): the same tokens whether
    the head runs on the gathered masked rows or on every row (row ids keep each position's noise), the same
    tokens again for the same seed, others for another seed."""
    from llada_triton.decode.dream import diffusion_generate
    from llada_triton.models import triton_ops
    from tests.test_dream import dream_model

    params, cfg = dream_model()
    prompts = [[281, 12, 40, 7, 282, 281], [281, 99, 5, 282, 281, 60]]
    opts = dict(max_new_tokens=8, steps=4, alg="entropy", temperature=0.7, seed=3, **filt)
    ops = triton_ops()
    a = diffusion_generate(params, cfg, prompts, ops=ops.replace(compact_above=0, head_rows=True), **opts).tokens
    b = diffusion_generate(params, cfg, prompts, ops=ops.replace(compact_above=10 ** 6, head_rows=True),
                           **opts).tokens
    assert torch.equal(a, b)
    if not filt:
        c = diffusion_generate(params, cfg, prompts, ops=ops, **dict(opts, seed=4)).tokens
        assert not torch.equal(a, c)
    assert bool(((a >= 0) & (a < cfg.vocab_size)).all())
