"""The LM head on the still-masked rows only (decode/step.py: ``masked_first``, ``TransferRule.sample``).

The driver gathers the masked rows of the block to the front on the device, runs a head that takes
``n_rows`` / ``row_ids`` (the Triton head; ``Ops.head_rows``) on those rows only, and scatters x0 / conf
back. Checked here:
the compaction itself; a step with and without compaction gives bit-identical x0 / conf at masked
positions and the same selection and commit (argmax, Gumbel sampling, CFG, every rule); decoding the tiny golden
checkpoint with the Triton head gives the recorded tokens, and the same tokens as without compaction
at temperature > 0 (generate and run_many). The model runs on the torch reference ops here (fast; fp32
exactness is checked under the interpreter, as in tests/test_model_triton.py, whose all-Triton golden
decodes also go through the compaction). GPU (marked ``gpu``): a bf16 random model on the Triton ops,
compaction on and off, eager and CUDA graphs, argmax and sampling.
"""
import os

import pytest
import torch

from llada_triton.decode import generate, run_many
from llada_triton.decode.step import TransferRule, masked_first
from llada_triton.kernels.reference import select_transfer_ref
from llada_triton.kernels import commit_step, head_confidence, select_transfer
from llada_triton.models import REFERENCE_OPS
from tests.helpers import block_golden, decode_options, golden, tiny_model

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
CPU_EXACT = pytest.mark.skipif(not INTERPRET, reason="fp32 golden exactness is checked under the interpreter")
# decodes compact blocks of more than Ops.compact_above (64) rows only; these test sizes are smaller, so 0 here
HEAD_OPS = REFERENCE_OPS.replace(name="ref+triton-head", head=head_confidence, head_rows=True, compact_above=0,
                                 select=select_transfer)
# the same Triton head declared without row skipping: the driver runs it on every row
NOCOMPACT_OPS = HEAD_OPS.replace(name="ref+triton-head-all-rows", head_rows=False)
# the fused Triton commit (selection + commit + NFE in one launch) instead of the composed one around select
COMMIT_OPS = HEAD_OPS.replace(name="ref+triton-head+commit", commit=commit_step)


def test_head_capability_is_an_ops_field():
    """Compaction follows ``Ops.head_rows`` and ``Ops.compact_above`` only; replacing the head resets head_rows."""
    assert HEAD_OPS.compacts(1) and not NOCOMPACT_OPS.compacts(1000) and not REFERENCE_OPS.compacts(1000)
    default = HEAD_OPS.replace(compact_above=64)
    assert not default.compacts(64) and default.compacts(65)
    assert not HEAD_OPS.replace(head=head_confidence).head_rows
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="compact_above"):
            REFERENCE_OPS.replace(compact_above=bad)


@pytest.mark.parametrize("kind", ["random", "none", "all", "one"])
def test_masked_first(kind):
    gen = torch.Generator().manual_seed(0)
    N = 37
    m = {"random": torch.rand(N, generator=gen) > 0.6, "none": torch.zeros(N, dtype=torch.bool),
         "all": torch.ones(N, dtype=torch.bool), "one": torch.arange(N) == 36}[kind]
    order, dest, n = masked_first(m)
    idx = torch.arange(N)
    assert n.shape == () and int(n) == int(m.sum())
    assert torch.equal(order, torch.cat([idx[m], idx[~m]]))  # masked first, both groups in order
    assert torch.equal(order[dest], idx) and torch.equal(dest[order], idx)


def _setup(B, Lb, d, V, gen, device):
    """Exact fp32 inputs (multiples of 1/8: every logit exact whatever the summation order)."""
    hidden = (torch.randint(-2, 3, (B, Lb, d), generator=gen) / 4).float()
    uncond = (torch.randint(-2, 3, (B, Lb, d), generator=gen) / 4).float()
    w = (torch.randint(-2, 3, (V, d), generator=gen) / 4).float() * 0.5
    masked = torch.rand(B, Lb, generator=gen) > 0.5
    masked[0] = False  # a finished row
    masked[1] = True   # a fully masked row
    return hidden.to(device), uncond.to(device), w.to(device), masked.to(device)


RULES = {"k": dict(threshold=None, factor=None), "threshold": dict(threshold=0.05, factor=None),
         "factor": dict(threshold=None, factor=1.0)}


MASK = 1000  # outside the test vocabulary


def _step(r, ops, w, hidden, uncond, masked, k):
    """One step of the driver's rule on a token buffer whose block (columns 3..) is ``masked``:
    (x0, conf) of :meth:`TransferRule.sample`, then (committed, conf, block, tokens) of :meth:`TransferRule.commit`."""
    x0, conf = r.sample(ops, w, hidden, uncond, masked, offset=3, rand_gen=None)
    B = masked.shape[0]
    tokens = torch.cat([torch.zeros(B, 3, dtype=torch.long, device=masked.device),
                        torch.where(masked, MASK, 4).long()], 1)
    return (x0, conf) + r.commit(ops, tokens, 3, x0, conf, mask_id=MASK, done=None, k=k, nfe=None) + (tokens,)


@pytest.mark.parametrize("T", [0.0, 0.9])
@pytest.mark.parametrize("cfg", [False, True])
@pytest.mark.parametrize("rule", list(RULES))
def test_commit_with_and_without_compaction(device, T, cfg, rule):
    """Bit-identical x0 / conf at masked positions and the same selection, with and without compaction (and
    with the fused Triton commit); unmasked positions are never selected (conf -inf there, tokens kept); at
    T = 0 x0 is the reference's."""
    gen = torch.Generator().manual_seed(int(T * 10) + 2 * cfg)
    B, Lb, d, V = 4, 9, 32, 320
    hidden, uncond, w, masked = _setup(B, Lb, d, V, gen, device)
    r = TransferRule(temperature=T, remasking="low_confidence", cfg_scale=1.5 if cfg else 0.0, seed=7,
                     banned=(5,), no_conf=(6, 7), **RULES[rule])
    k = torch.tensor([3, 2, 0, 9], device=device)
    out = {}
    for ops in (HEAD_OPS, NOCOMPACT_OPS, COMMIT_OPS, REFERENCE_OPS):
        out[ops.name] = _step(r, ops, w, hidden, uncond if cfg else None, masked, k)
    x0, conf, sel, conf_m, blk, tokens = out[HEAD_OPS.name]
    x0_all, conf_all, sel_all = out[NOCOMPACT_OPS.name][:3]
    assert torch.equal(x0[masked], x0_all[masked])
    assert torch.equal(conf[masked], conf_all[masked])
    assert torch.equal(sel, sel_all) and not (sel & ~masked).any() and sel.any()
    assert (conf_m[~masked] == float("-inf")).all() and torch.equal(conf_m[masked], conf[masked])
    assert torch.equal(sel, select_transfer_ref(conf_m, masked, k=k) if rule == "k" else sel_all)
    assert torch.equal(blk, torch.where(sel, x0, torch.where(masked, MASK, 4))) and torch.equal(tokens[:, 3:], blk)
    for i, t in enumerate(out[COMMIT_OPS.name][2:]):  # the fused commit: the same selection, conf, tokens
        assert torch.equal(t, out[HEAD_OPS.name][2 + i])
    if T == 0:  # exact inputs: the reference head gives the same tokens
        assert torch.equal(x0[masked], out[REFERENCE_OPS.name][0][masked])


def test_commit_nothing_masked(device):
    """A block with no masked position: the head's programs all exit; nothing is selected."""
    gen = torch.Generator().manual_seed(1)
    hidden, _, w, masked = _setup(2, 8, 32, 320, gen, device)
    masked[:] = False
    r = TransferRule(temperature=0.0, remasking="low_confidence", threshold=None, factor=None, cfg_scale=0.0,
                     seed=0)
    for ops in (HEAD_OPS, COMMIT_OPS):
        _, _, sel, conf_m, blk, tokens = _step(r, ops, w, hidden, None, masked, torch.tensor([1, 1], device=device))
        assert not sel.any() and (conf_m == float("-inf")).all() and (blk == 4).all() and (tokens[:, 3:] == 4).all()


# rows with different masks (left-padded batch), CFG (the unconditional rows gathered alike), the block cache
# on the graph code path (device positions)
GOLDEN = ["official_batch3_leftpad", "official_p12_cfg1.5", "block_batch3_varlen"]


@CPU_EXACT
@pytest.mark.parametrize("name", GOLDEN)
def test_golden_tokens_with_the_compacting_head(name):
    """The recorded tokens of the official decoders, with the LM head on the masked rows only."""
    case = next(c for c in golden()["cases"] + block_golden()["cases"] if c["name"] == name)
    params, cfg = tiny_model()
    out = generate(params, cfg, case["prompt"], ops=HEAD_OPS, early_stop=False,
                   device_positions=name.startswith("block"), **decode_options(case["params"]))
    assert out.tokens.tolist() == case["expected"]


def _prompts():
    """The distinct prompts of the golden cases (lengths 7 to 19)."""
    out = []
    for c in golden()["cases"]:
        for p in c["prompt"]:
            if p not in out:
                out.append(p)
    return out


@CPU_EXACT
@pytest.mark.parametrize("cache", ["none", "block"])
def test_sampling_decode_same_tokens_with_and_without_compaction(cache):
    """Temperature > 0 (Gumbel noise keyed by the original row), a left-padded batch, early stop on for the
    block cache (finished rows drop out of the head): the same tokens and NFE as the all-rows head."""
    params, cfg = tiny_model()
    prompts = _prompts()[:3]
    opts = dict(gen_length=16, block_length=8, steps=8, temperature=0.9, seed=11, cache=cache,
                confidence_eos_eot_inf=True)
    a = generate(params, cfg, prompts, ops=HEAD_OPS, **opts)
    b = generate(params, cfg, prompts, ops=NOCOMPACT_OPS, **opts)
    assert torch.equal(a.tokens, b.tokens) and a.nfe == b.nfe
    assert a.tokens.unique().numel() > 3


@CPU_EXACT
def test_run_many_same_tokens_with_and_without_compaction():
    params, cfg = tiny_model()
    prompts = _prompts()
    opts = dict(slots=2, gen_length=16, block_length=8, steps=16, temperature=0.7, seed=4)
    a = run_many(params, cfg, prompts, ops=HEAD_OPS, **opts)
    b = run_many(params, cfg, prompts, ops=NOCOMPACT_OPS, **opts)
    assert a.tokens == b.tokens and a.nfe == b.nfe


@pytest.mark.gpu
def test_gpu_triton_ops_same_tokens_with_and_without_compaction():
    """bf16 random model on the Triton ops: compaction on / off give the same tokens, eagerly and replayed from
    CUDA graphs (argmax), and with Gumbel sampling (eager), for generate (block and none caches) and run_many."""
    from llada_triton.models import LLaDAConfig, init_params, triton_ops

    cfg = LLaDAConfig(d_model=1024, n_heads=8, n_kv_heads=8, n_layers=4, mlp_hidden_size=3072, vocab_size=32768,
                      mask_token_id=32760, eos_token_id=32759, pad_token_id=32759, eot_token_id=32761)
    params = init_params(cfg, device="cuda", dtype=torch.bfloat16, std=0.5 / 1024 ** 0.5)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 32000, (n,), generator=g).tolist() for n in (40, 7, 64, 33, 12)]
    ops = triton_ops()
    plain = ops.replace(head_rows=False)
    assert ops.head_rows and ops.compacts(65) and not plain.compacts(65)
    opts = dict(gen_length=64, block_length=32, steps=64)
    for extra in (dict(cuda_graphs=True), dict(temperature=0.8, seed=3)):
        for cache in ("block", "none"):
            a = generate(params, cfg, prompts[:3], cache=cache, ops=ops, **opts, **extra)
            b = generate(params, cfg, prompts[:3], cache=cache, ops=plain, **opts, **extra)
            assert torch.equal(a.tokens, b.tokens) and a.nfe == b.nfe, (cache, extra)
        a = run_many(params, cfg, prompts, slots=2, ops=ops, **opts, **extra)
        b = run_many(params, cfg, prompts, slots=2, ops=plain, **opts, **extra)
        assert a.tokens == b.tokens and a.nfe == b.nfe, extra
