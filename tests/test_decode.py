"""The decode driver: input checks, batching, streaming, sampling statistics."""
import math

import numpy as np
import pytest
import torch

from llada_triton.decode import BlockEvent, StepEvent, generate, generate_stream, num_transfer_tokens
from llada_triton.models import REFERENCE_OPS, forward
from tests.helpers import tiny_model

PROMPTS = [[5, 17, 90, 44, 23, 7, 11, 250, 3, 99, 100, 12], [43, 250, 114], [8, 9, 10, 11, 12, 13, 14]]
BASE = dict(gen_length=16, block_length=8, steps=16)


def test_schedule_matches_official_formula():
    m = torch.tensor([[True] * 8, [True] * 5 + [False] * 3])
    assert num_transfer_tokens(m, 3).tolist() == [[3, 3, 2], [2, 2, 1]]
    assert num_transfer_tokens(m, 10).tolist()[1] == [1] * 5 + [0] * 5


@pytest.mark.parametrize("kwargs,match", [
    (dict(gen_length=20, block_length=8, steps=16), "gen_length=20 is not a multiple of block_length=8"),
    (dict(gen_length=16, block_length=8, steps=15), "steps=15 must be a positive multiple of the number of blocks"),
    (dict(gen_length=16, block_length=8, steps=16, threshold=1.5), r"threshold=1.5 must be in \(0, 1\]"),
    (dict(gen_length=16, block_length=8, steps=16, threshold=0.0), r"threshold=0.0 must be in \(0, 1\]"),
    (dict(gen_length=16, block_length=8, steps=16, cache="paged"), "cache='paged' is not a cache policy"),
    (dict(gen_length=16, block_length=8, steps=16, remasking="entropy"), "remasking='entropy'"),
    (dict(gen_length=16, block_length=8, steps=16, factor=-1.0), "factor=-1.0 must be > 0"),
    (dict(gen_length=16, block_length=8, steps=16, temperature=-0.5), "temperature=-0.5"),
    (dict(gen_length=4096, block_length=8, steps=512), "exceeds max_sequence_length=4096"),
])
def test_bad_options_fail_before_compute(kwargs, match):
    params, cfg = tiny_model()
    with pytest.raises(ValueError, match=match):
        generate(params, cfg, [[1, 2, 3]], **kwargs)


def test_bad_prompts():
    params, cfg = tiny_model()
    with pytest.raises(ValueError, match="token id 320 outside the vocabulary"):
        generate(params, cfg, [[1, 320]], **BASE)
    with pytest.raises(ValueError, match="holds the mask id 316"):
        generate(params, cfg, [[1, cfg.mask_token_id]], **BASE)
    with pytest.raises(ValueError, match="at least one token"):
        generate(params, cfg, [[1, 2], []], **BASE)
    with pytest.raises(ValueError, match="left padding"):
        generate(params, cfg, torch.tensor([[1, 2, 3]]), attention_mask=torch.tensor([[1, 0, 1]]), **BASE)


@pytest.mark.parametrize("cache", ["none", "prefix", "dual", "block"])
@pytest.mark.parametrize("rule", [{}, {"threshold": 0.5}, {"factor": 1.0}, {"cfg_scale": 1.0}],
                         ids=["schedule", "thr0.5", "factor1", "cfg1"])
def test_batch_rows_equal_single_prompts(cache, rule):
    """Left-padded varlen batch (key-padding mask): each row is what its prompt gives alone."""
    params, cfg = tiny_model()
    batch = generate(params, cfg, PROMPTS, cache=cache, **BASE, **rule)
    for i, p in enumerate(PROMPTS):
        alone = generate(params, cfg, [p], cache=cache, **BASE, **rule)
        assert batch.tokens[i].tolist() == alone.tokens[0].tolist(), f"row {i}"
        assert batch.nfe[i] == alone.nfe[0]
    assert batch.prompt_lengths == [len(p) for p in PROMPTS]


def test_tensor_prompt_with_attention_mask_equals_list():
    params, cfg = tiny_model()
    a = generate(params, cfg, PROMPTS[1:], **BASE)
    P = max(map(len, PROMPTS[1:]))
    t = torch.full((2, P), cfg.pad_token_id)
    am = torch.zeros(2, P, dtype=torch.long)
    for i, p in enumerate(PROMPTS[1:]):
        t[i, P - len(p):] = torch.tensor(p)
        am[i, P - len(p):] = 1
    b = generate(params, cfg, t, attention_mask=am, **BASE)
    assert torch.equal(a.tokens, b.tokens)


def test_stream_events_and_records():
    params, cfg = tiny_model()
    events = list(generate_stream(params, cfg, PROMPTS[:2], gen_length=16, block_length=8, steps=8))
    steps = [e for e in events if isinstance(e, StepEvent)]
    blocks = [e for e in events if isinstance(e, BlockEvent)]
    result = events[-1]
    assert len(blocks) == 2 and len(steps) == 8
    assert all((s.committed.sum(1) == 2).all() for s in steps)  # 8 tokens / 4 steps per block
    assert torch.equal(torch.cat([b.tokens for b in blocks], 1), result.tokens)
    res = generate(params, cfg, PROMPTS[:2], gen_length=16, block_length=8, steps=8, record_steps=True)
    order = res.commit_order()
    assert sorted(order[0].tolist()) == sorted([i for i in range(8) for _ in range(2)])
    seen = []
    generate(params, cfg, PROMPTS[:1], gen_length=16, block_length=8, steps=8, on_block=seen.append)
    assert [b.block for b in seen] == [0, 1]


def test_no_wasted_forward_when_steps_exceed_block():
    params, cfg = tiny_model()
    out = generate(params, cfg, [PROMPTS[0]], gen_length=8, block_length=8, steps=16)
    assert out.nfe == [8]  # the official code runs 16 forwards, 8 of them commit nothing


def test_threshold_one_commits_one_token_per_step_unless_certain():
    params, cfg = tiny_model()
    out = generate(params, cfg, [PROMPTS[0]], gen_length=16, block_length=8, steps=16, threshold=1.0)
    sched = generate(params, cfg, [PROMPTS[0]], gen_length=16, block_length=8, steps=16)
    assert out.tokens.tolist() == sched.tokens.tolist()


def _chi2_ok(counts, probs, n, alpha_z=4.5):
    """Pearson chi-square with cells of expected count < 5 merged; passes if below mean + z * sd."""
    exp = probs * n
    keep = exp >= 5
    obs = np.append(counts[keep], counts[~keep].sum())
    e = np.append(exp[keep], exp[~keep].sum())
    if e[-1] == 0:
        obs, e = obs[:-1], e[:-1]
    chi2 = float(((obs - e) ** 2 / e).sum())
    dof = len(e) - 1
    return chi2 < dof + alpha_z * math.sqrt(2 * dof), chi2, dof


@pytest.mark.parametrize("temperature", [0.7, 1.5])
def test_temperature_samples_softmax(temperature):
    """First committed token's frequencies match softmax(logits / T) (chi-square bound, fixed seed)."""
    params, cfg = tiny_model()
    prompt = [43, 250, 114, 183, 251, 287, 35]
    n = 3000
    out = generate(params, cfg, [prompt] * n, gen_length=1, block_length=1, steps=1,
                   temperature=temperature, seed=1234)
    x = torch.tensor([prompt + [cfg.mask_token_id]])
    probs = torch.softmax(forward(params, cfg, x)[0, -1].double() / temperature, -1).numpy()
    counts = np.bincount(out.tokens[:, 0].numpy(), minlength=cfg.vocab_size).astype(float)
    ok, chi2, dof = _chi2_ok(counts, probs, n)
    assert ok, f"chi2={chi2:.1f} dof={dof}"
    # same seed, same samples; another seed, other samples
    again = generate(params, cfg, [prompt] * 64, gen_length=1, block_length=1, steps=1, temperature=temperature,
                     seed=1234)
    other = generate(params, cfg, [prompt] * 64, gen_length=1, block_length=1, steps=1, temperature=temperature,
                     seed=99)
    assert torch.equal(again.tokens, out.tokens[:64]) and not torch.equal(other.tokens, again.tokens)


def test_random_remasking_is_uniform_over_masked_positions():
    params, cfg = tiny_model()
    n, Lb = 2000, 8
    res = generate(params, cfg, [[43, 250, 114]] * n, gen_length=Lb, block_length=Lb, steps=Lb,
                   remasking="random", seed=7, record_steps=True)
    first = res.steps[0].committed
    assert (first.sum(1) == 1).all()
    counts = first.sum(0).double().numpy()
    ok, chi2, dof = _chi2_ok(counts, np.full(Lb, 1.0 / Lb), n)
    assert ok, f"chi2={chi2:.1f}"
    # second step: uniform over the 7 still-masked positions (relative to the first choice)
    second = res.steps[1].committed
    assert not (first & second).any()


def test_early_stop_fills_eos_after_end_and_saves_forwards():
    params, cfg = tiny_model()
    ends = set(cfg.end_token_ids)
    found = False
    for p in PROMPTS + [[43, 250, 114, 183, 251, 287, 35]]:
        full = generate(params, cfg, [p], gen_length=32, block_length=8, steps=32, cache="block", early_stop=False)
        es = generate(params, cfg, [p], gen_length=32, block_length=8, steps=32, cache="block",
                      record_steps=True)  # early stop: default on
        f, e = full.tokens[0].tolist(), es.tokens[0].tolist()
        first_end = next((i for i, t in enumerate(f) if t in ends), None)
        if first_end is None or first_end >= 24:
            assert e == f and es.nfe == full.nfe
            continue
        found = True
        blk_end = (first_end // 8 + 1) * 8
        assert e[:blk_end] == f[:blk_end]
        assert e[blk_end:] == [cfg.eos_token_id] * (32 - blk_end)
        assert es.nfe[0] == blk_end < full.nfe[0]
        # the steps reported are exactly those of the blocks up to the end (8 steps a block); the first step of
        # the next block, queued before the host learns that every row has finished, is not reported
        assert len(es.steps) == blk_end and {st.block for st in es.steps} == set(range(blk_end // 8))
        # the device-position (graph) code path stops the same way
        dp = generate(params, cfg, [p], gen_length=32, block_length=8, steps=32, cache="block", device_positions=True,
                      record_steps=True)
        assert dp.tokens.tolist() == es.tokens.tolist() and dp.nfe == es.nfe and len(dp.steps) == blk_end
        # and a stream stops after the last block's event
        kinds = [type(ev).__name__ for ev in generate_stream(params, cfg, [p], gen_length=32, block_length=8,
                                                             steps=32, cache="block")]
        assert kinds.count("BlockEvent") == blk_end // 8 and kinds[-1] == "GenerateResult"
    assert found, "no prompt ended early: the test checks nothing"


def test_early_stop_in_batch_only_stops_finished_rows():
    params, cfg = tiny_model()
    prompts = PROMPTS + [[43, 250, 114, 183, 251, 287, 35]]
    es = generate(params, cfg, prompts, gen_length=32, block_length=8, steps=32, cache="block")
    for i, p in enumerate(prompts):
        alone = generate(params, cfg, [p], gen_length=32, block_length=8, steps=32, cache="block")
        assert es.tokens[i].tolist() == alone.tokens[0].tolist() and es.nfe[i] == alone.nfe[0]


def test_workspace_reuses_buffers_and_gives_the_same_tokens():
    from llada_triton.decode.generate import Workspace

    params, cfg = tiny_model()
    ws = Workspace()
    opts = dict(gen_length=16, block_length=8, steps=16, cache="dual", device_positions=True, workspace=ws)
    first = generate(params, cfg, PROMPTS[1:], **opts)
    other = generate(params, cfg, [[1, 2, 3], [9, 8, 7, 6, 5, 4, 3]], **opts)  # same bucket, other prompts
    again = generate(params, cfg, PROMPTS[1:], **opts)
    plain = generate(params, cfg, PROMPTS[1:], gen_length=16, block_length=8, steps=16, cache="dual")
    assert len(ws) == 1
    assert first.tokens.tolist() == again.tokens.tolist() == plain.tokens.tolist()
    assert other.tokens.tolist() != first.tokens.tolist()


def test_workspace_keeps_the_most_recently_used_buckets():
    """A bucket per prompt width: with max_entries=2 the least recently used one is dropped, and a dropped bucket
    comes back (new buffers) with the same tokens."""
    from llada_triton.decode.generate import Workspace

    params, cfg = tiny_model()
    ws = Workspace(max_entries=2)
    opts = dict(gen_length=16, block_length=8, steps=16, cache="block", workspace=ws)
    widths = {w: [[7 + i for i in range(w)]] for w in (3, 5, 9)}
    out = {w: generate(params, cfg, widths[w], **opts).tokens for w in (3, 5)}
    first = ws.entries[next(iter(ws.entries))]   # width 3's buffers (reading them leaves the order as it is)
    generate(params, cfg, widths[3], **opts)   # width 3 is now the most recently used
    generate(params, cfg, widths[9], **opts)   # drops width 5
    assert len(ws) == 2 and sorted(k[1] for k in ws.entries) == [3, 9]
    assert any(b is first for b in ws.entries.values()), "width 3's bucket was kept, not rebuilt"
    again = generate(params, cfg, widths[5], **opts)   # rebuilt; drops width 3
    assert sorted(k[1] for k in ws.entries) == [5, 9]
    assert torch.equal(again.tokens, out[5])
    for bad in (0, -1, 1.5, True, None):
        with pytest.raises(ValueError, match="max_entries"):
            Workspace(max_entries=bad)


def test_block_prefill_in_row_chunks_gives_the_same_tokens():
    """Block 0's prefill in row chunks (BlockCache.prefill_tokens, here one row per forward) gives the hidden
    states and the cache of one whole-batch forward."""
    from llada_triton.decode.cache import BlockCache, StepContext
    from llada_triton.decode.generate import pad_prompts

    params, cfg = tiny_model()
    x, pad = pad_prompts(PROMPTS, cfg)
    P, Lb = x.shape[1], 8
    x = torch.cat([x, torch.full((len(PROMPTS), Lb), cfg.mask_token_id)], 1)
    ctx = StepContext(params, cfg, REFERENCE_OPS, P, Lb, P + Lb, pad)
    whole, chunked = BlockCache(ctx, len(PROMPTS)), BlockCache(ctx, len(PROMPTS))
    chunked.prefill_tokens = P + Lb  # one row per prefill forward
    a, b = whole.first(x, 0, P), chunked.first(x, 0, P)
    assert torch.equal(a, b) and torch.equal(whole.cache.k, chunked.cache.k)
    assert torch.equal(whole.cache.v, chunked.cache.v) and whole.cache.k.abs().sum() > 0
