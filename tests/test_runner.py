"""run_many: a fixed number of slots, refilled as sequences finish; each prompt as if decoded alone."""
import pytest

from llada_triton.decode import generate
from llada_triton.decode.runner import run_many
from tests.helpers import tiny_model

PROMPTS = [[5, 17, 90, 44, 23, 7, 11, 250, 3, 99, 100, 12], [43, 250, 114], [8, 9, 10, 11, 12, 13, 14],
           [43, 250, 114, 183, 251, 287, 35], [1, 2], [100, 101, 102, 103, 104]]
OPTS = dict(gen_length=32, block_length=8, steps=32)


@pytest.mark.parametrize("rule", [{}, {"threshold": 0.5}, {"factor": 1.0}], ids=["schedule", "thr0.5", "factor1"])
@pytest.mark.parametrize("early_stop", [True, False], ids=["early-stop", "full"])
@pytest.mark.parametrize("slots", [1, 3])
def test_each_prompt_as_alone(rule, early_stop, slots):
    params, cfg = tiny_model()
    out = run_many(params, cfg, PROMPTS, slots=slots, early_stop=early_stop, **OPTS, **rule)
    for i, p in enumerate(PROMPTS):
        alone = generate(params, cfg, [p], cache="block", early_stop=early_stop, **OPTS, **rule)
        assert out.tokens[i] == alone.tokens[0].tolist(), f"prompt {i}"
        assert out.nfe[i] == alone.nfe[0], f"prompt {i}"
    assert sorted(out.order) == list(range(len(PROMPTS)))


@pytest.mark.parametrize("rule", [{}, {"threshold": 0.5}], ids=["schedule", "thr0.5"])
@pytest.mark.parametrize("cfg_scale", [0.5, 2.0])
@pytest.mark.parametrize("slots", [1, 2])
def test_cfg_each_prompt_as_alone(rule, cfg_scale, slots):
    """Classifier-free guidance: each slot's unconditional copy (prompt masked, same pads) gives every
    prompt the tokens generate(..., cfg_scale) gives it alone, across refills of prompts of other widths."""
    params, cfg = tiny_model()
    out = run_many(params, cfg, PROMPTS, slots=slots, cfg_scale=cfg_scale, **OPTS, **rule)
    plain = run_many(params, cfg, PROMPTS, slots=slots, **OPTS, **rule)
    for i, p in enumerate(PROMPTS):
        alone = generate(params, cfg, [p], cache="block", cfg_scale=cfg_scale, **OPTS, **rule)
        assert out.tokens[i] == alone.tokens[0].tolist(), f"prompt {i}"
        assert out.nfe[i] == alone.nfe[0], f"prompt {i}"
    assert out.tokens != plain.tokens  # the guidance changes the result (else this test proves nothing)


def test_slots_are_refilled_as_soon_as_a_sequence_ends():
    params, cfg = tiny_model()
    seen = []
    out = run_many(params, cfg, PROMPTS, slots=2, on_result=lambda i, t: seen.append(i), **OPTS)
    assert seen == out.order
    # with refills, the batched step count is far below running the prompts two by two to their end
    pairs = sum(max(out.nfe[i:i + 2]) for i in range(0, len(PROMPTS), 2))
    assert out.steps <= pairs
    assert out.steps < sum(out.nfe)


def test_bad_input():
    params, cfg = tiny_model()
    with pytest.raises(ValueError, match="slots=0"):
        run_many(params, cfg, PROMPTS, slots=0, **OPTS)
    with pytest.raises(ValueError, match="mask id"):
        run_many(params, cfg, [[1, cfg.mask_token_id]], slots=1, **OPTS)
    with pytest.raises(ValueError, match="not a multiple of block_length"):
        run_many(params, cfg, PROMPTS, slots=2, gen_length=30, block_length=8, steps=30)
    for bad in (-0.5, float("nan")):
        with pytest.raises(ValueError, match="cfg_scale"):
            run_many(params, cfg, PROMPTS, slots=2, cfg_scale=bad, **OPTS)
    # the Dream option checks are generate's (setup_decode): origin needs Dream's schedule, which run_many lacks
    with pytest.raises(ValueError, match="remasking='origin' needs schedule='dream'"):
        run_many(params, cfg, PROMPTS, slots=2, remasking="origin", **OPTS)
    with pytest.raises(ValueError, match="remasking='entropy' takes no cfg_scale"):
        run_many(params, cfg, PROMPTS, slots=2, remasking="entropy", cfg_scale=1.0, **OPTS)
    for bad in ("cache", "top_k", "schedule", "stepz"):  # generate's Dream / cache options and typos: refused by name
        with pytest.raises(TypeError, match=f"run_many\\(\\) got an unexpected keyword argument '{bad}'"):
            run_many(params, cfg, PROMPTS, slots=2, **{bad: 3}, **OPTS)


@pytest.mark.gpu
def test_cuda_graph_replay_gives_the_eager_tokens():
    """Graph capture/replay (runner and generate) computes exactly what the same kernels compute eagerly."""
    import torch

    from llada_triton.models import LLaDAConfig, init_params, triton_ops

    cfg = LLaDAConfig(d_model=1024, n_heads=8, n_kv_heads=8, n_layers=4, mlp_hidden_size=3072, vocab_size=32768,
                      mask_token_id=32760, eos_token_id=32759, pad_token_id=32759, eot_token_id=32761)
    params = init_params(cfg, device="cuda", dtype=torch.bfloat16, std=0.5 / 1024 ** 0.5)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 32000, (n,), generator=g).tolist() for n in (40, 7, 64, 33, 12)]
    ops = triton_ops()
    opts = dict(gen_length=64, block_length=32, steps=64)
    eager = run_many(params, cfg, prompts, slots=2, ops=ops, **opts)
    graphed = run_many(params, cfg, prompts, slots=2, ops=ops, cuda_graphs=True, **opts)
    assert graphed.tokens == eager.tokens and graphed.nfe == eager.nfe
    eager = run_many(params, cfg, prompts, slots=2, ops=ops, cfg_scale=1.0, **opts)
    graphed = run_many(params, cfg, prompts, slots=2, ops=ops, cfg_scale=1.0, cuda_graphs=True, **opts)
    assert graphed.tokens == eager.tokens and graphed.nfe == eager.nfe, "cfg_scale=1.0"
    for cache in ("block", "dual", "none", "prefix"):
        a = generate(params, cfg, prompts[:3], cache=cache, ops=ops, device_positions=True, **opts)
        b = generate(params, cfg, prompts[:3], cache=cache, ops=ops, cuda_graphs=True, **opts)
        assert torch.equal(a.tokens, b.tokens), cache


@pytest.mark.gpu
def test_graphs_of_a_workspace_share_one_memory_pool():
    """Every policy over 6 blocks (``prefix`` captures a graph per block): the graphs of one workspace draw on one
    memory pool, and sharing it changes nothing in the tokens (each graph's intermediates may take memory another
    graph's used)."""
    import torch

    from llada_triton.decode import Workspace
    from llada_triton.models import LLaDAConfig, init_params, triton_ops

    cfg = LLaDAConfig(d_model=1024, n_heads=8, n_kv_heads=8, n_layers=4, mlp_hidden_size=3072, vocab_size=32768,
                      mask_token_id=32760, eos_token_id=32759, pad_token_id=32759, eot_token_id=32761)
    params = init_params(cfg, device="cuda", dtype=torch.bfloat16, std=0.5 / 1024 ** 0.5)
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, 32000, (n,), generator=g).tolist() for n in (40, 7, 64)]
    opts = dict(gen_length=192, block_length=32, steps=192, ops=triton_ops())

    def pools():
        return {seg["segment_pool_id"] for seg in torch.cuda.memory_snapshot()}

    for cache in ("prefix", "block", "dual", "none"):
        eager = generate(params, cfg, prompts, cache=cache, device_positions=True, **opts)
        before, ws = pools(), Workspace()
        graphed = generate(params, cfg, prompts, cache=cache, cuda_graphs=True, workspace=ws, **opts)
        assert torch.equal(eager.tokens, graphed.tokens), cache
        assert len(pools() - before) == 1, (cache, pools() - before)
        again = generate(params, cfg, prompts, cache=cache, cuda_graphs=True, workspace=ws, **opts)  # replays
        assert torch.equal(eager.tokens, again.tokens), cache


@pytest.mark.gpu
def test_graphed_step_events_equal_eager():
    """With graphs and the linear schedule a block's later steps replay as one graph and their events are stacked
    after it: every step event (committed, tokens, conf, NFE) equals the eager graph code path's, for 1 and 2
    tokens per step, early stop on and off."""
    import torch

    from llada_triton.decode import StepEvent, generate_stream
    from llada_triton.models import LLaDAConfig, init_params, triton_ops

    cfg = LLaDAConfig(d_model=1024, n_heads=8, n_kv_heads=8, n_layers=4, mlp_hidden_size=3072, vocab_size=32768,
                      mask_token_id=32760, eos_token_id=32759, pad_token_id=32759, eot_token_id=32761)
    params = init_params(cfg, device="cuda", dtype=torch.bfloat16, std=0.5 / 1024 ** 0.5)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 32000, (n,), generator=g).tolist() for n in (40, 7, 64)]
    ops = triton_ops()

    def events(**kw):
        out = [ev for ev in generate_stream(params, cfg, prompts, ops=ops, **kw)]
        steps = [(e.block, e.step, e.committed.cpu(), e.tokens.cpu(), e.confidence.cpu(), e.nfe.cpu())
                 for e in out if isinstance(e, StepEvent)]
        return steps, out[-1].tokens.cpu(), out[-1].nfe

    for cache, steps, early in (("block", 96, True), ("block", 48, False), ("dual", 96, False)):
        opts = dict(gen_length=96, block_length=32, steps=steps, cache=cache, early_stop=early)
        a, ta, na = events(device_positions=True, **opts)
        b, tb, nb = events(cuda_graphs=True, **opts)
        assert len(a) == len(b) and torch.equal(ta, tb) and na == nb, (cache, steps)
        for ea, eb in zip(a, b):
            assert ea[:2] == eb[:2]
            for x, y in zip(ea[2:], eb[2:]):
                assert torch.equal(x, y), (cache, steps, ea[:2])
