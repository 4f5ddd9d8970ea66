"""The small LLaDA2 block-diffusion model: saving in the exact LLaDA2 layout (round trip through ``load_model``), its
tokenizer layout, the block-diffusion objective of ``scripts/train_llada2_tiny.py``, a smoke training run end to end,
the ``mul`` task, and (once trained) the shipped checkpoint ``checkpoints/llada2-tiny-tasks``."""
import json
import os
import random
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts")
if SCRIPTS not in sys.path:
    sys.path.insert(0, SCRIPTS)

import tasks  # noqa: E402
import tiny_tokenizer as ttok  # noqa: E402
import train_llada2_tiny as tl2  # noqa: E402
from llada_triton.decode import generate_llada2  # noqa: E402
from llada_triton.kernels.reference import moe_experts_ref, moe_route_ref  # noqa: E402
from llada_triton.models import load_model, save_moe_checkpoint  # noqa: E402
from llada_triton.models.chat import chat_prompt_ids, decode_answer, load_tokenizer  # noqa: E402
from llada_triton.models.moe_config import llada2_config_dict  # noqa: E402

GOLDEN = os.path.join(ROOT, "tests", "data", "llada2-tiny", "checkpoint")
SHIPPED = os.path.join(ROOT, "checkpoints", "llada2-tiny-tasks")


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _json(path):
    with open(path) as f:
        return json.load(f)


# ------------------------------------------------------------------------------------------------- saving
@pytest.mark.parametrize("shard", [None, 40_000])
def test_save_moe_checkpoint_round_trips_the_golden_llada2(tmp_path, shard):
    params, cfg = load_model(GOLDEN, mask_token_id=303)
    files = save_moe_checkpoint(params, cfg, str(tmp_path), max_shard_bytes=shard)
    assert (len(files) > 1) == bool(shard)
    assert _json(tmp_path / "config.json") == _json(os.path.join(GOLDEN, "config.json"))
    assert _json(tmp_path / "generation_config.json") == _json(os.path.join(GOLDEN, "generation_config.json"))
    params2, cfg2 = load_model(str(tmp_path), mask_token_id=303)
    assert cfg2 == cfg
    names = [n for n, _ in params.tensors()]
    assert names == [n for n, _ in params2.tensors()]
    for (n, a), (_, b) in zip(params.tensors(), params2.tensors()):
        assert torch.equal(a, b), n
    from safetensors import safe_open

    golden_names = set(_json(os.path.join(GOLDEN, "model.safetensors.index.json"))["weight_map"])
    saved = set()
    for f in files:
        with safe_open(str(tmp_path / f), "pt") as h:
            saved |= set(h.keys())
    assert saved == golden_names


def test_llada2_config_dict_refuses_other_families():
    _, cfg = load_model(GOLDEN, mask_token_id=303)
    with pytest.raises(Exception, match="dense layers first"):
        llada2_config_dict(cfg.replace(moe_layers=(True, False, True)))


# ---------------------------------------------------------------------------------------------- tokenizer
def test_llada2_tokenizer_layout_matches_its_encoder(tmp_path):
    ttok.save_tokenizer(str(tmp_path), layout="llada2")
    tok = load_tokenizer(str(tmp_path))
    enc = ttok.ChatEncoder("llada2")
    for p in ("12*34=", "reverse: abc", "sort: b3a1"):
        assert chat_prompt_ids(tok, p) == enc.prompt(p)
    text = tok.apply_chat_template([{"role": "user", "content": "1+1="}], tokenize=False, add_generation_prompt=True)
    assert text == "<role>HUMAN</role>1+1=<|role_end|><role>ASSISTANT</role>"
    ids = ttok.special_ids("llada2")
    assert ids["<|mask|>"] == ids["<|endoftext|>"] + 3  # the real Ling tokenizer's offset (156892 / 156895)
    with pytest.raises(ValueError, match="layout='nope'"):
        ttok.vocab("nope")


# ---------------------------------------------------------------------------------------------- objective
def _batch(n=24, seed=0):
    tokens, plen, cend, rlen = (torch.from_numpy(a) for a in tl2.make_batch(seed, 0, n, tl2.DEFAULT_TASKS, 32))
    return tokens, plen, cend, rlen


def test_make_batch_rows_fill_the_block_grid():
    tokens, plen, cend, rlen = _batch()
    enc = ttok.ChatEncoder("llada2")
    assert (rlen % 32 == 0).all() and (rlen >= plen + tl2.GEN_LENGTH).all() and (rlen - 32 < plen + tl2.GEN_LENGTH).all()
    for n in range(tokens.shape[0]):
        assert tokens[n, cend[n] - 1] == enc.eot
        assert (tokens[n, cend[n]:] == enc.eos).all()
        assert enc.eos not in tokens[n, plen[n]:cend[n]].tolist()


def test_corrupt_block_masks_one_answer_block():
    tokens, plen, cend, rlen = _batch(64)
    g = torch.Generator().manual_seed(1)
    mask_id = ttok.special_ids("llada2")["<|mask|>"]
    noisy, masked, target, t, b = tl2.corrupt_block(tokens, plen, cend, rlen, 32, mask_id, generator=g)
    pos = torch.arange(tokens.shape[1])[None, :]
    assert torch.equal(noisy == mask_id, masked)
    assert not (masked & (pos < plen[:, None])).any()                 # the prompt is never masked
    assert not (masked & (pos // 32 != b[:, None])).any()             # only block b
    assert torch.equal(target, (pos // 32 == b[:, None]) & (pos >= plen[:, None]))
    assert ((b >= plen // 32) & (b < rlen // 32)).all()
    assert ((t > 1e-3 - 1e-9) & (t <= 1)).all()
    assert torch.equal(noisy[~masked], tokens[~masked])
    # an eos-only block is drawn, at its lower weight
    draws = [tl2.corrupt_block(tokens, plen, cend, rlen, 32, mask_id, generator=g)[4] for _ in range(20)]
    pad_only = torch.stack([d * 32 >= cend for d in draws])
    assert 0 < pad_only.float().mean() < 0.5


def test_block_loss_sees_only_blocks_up_to_the_noisy_one():
    """Block-causal attention: changing tokens after the noisy block changes no row's loss."""
    tc = tl2.CONFIGS["smoke"]
    cfg = tl2.model_config(tc)
    params = tl2.init_moe_params(cfg, seed=0)
    tokens, plen, cend, rlen = _batch(6)
    batch = [a.numpy() for a in (tokens, plen, cend, rlen)]
    l1, ids = tl2.train_step(params, cfg, batch, tc, torch.Generator().manual_seed(3), autocast=False)
    _, _, _, _, b = tl2.corrupt_block(tokens, plen, cend, rlen, 32, cfg.mask_token_id,
                                      generator=torch.Generator().manual_seed(3))
    later = torch.arange(tokens.shape[1])[None, :] >= (b[:, None] + 1) * 32
    changed = torch.where(later, torch.full_like(tokens, 5), tokens)
    batch2 = [changed.numpy()] + batch[1:]
    l2, _ = tl2.train_step(params, cfg, batch2, tc, torch.Generator().manual_seed(3), autocast=False)
    assert later.any()
    torch.testing.assert_close(l1, l2, atol=1e-5, rtol=0)
    assert len(ids) == sum(cfg.moe_layers)


def test_block_loss_weights_by_inverse_t():
    torch.manual_seed(0)
    N, T, V = 2, 4, 7
    logits, tokens = torch.randn(N, T, V), torch.randint(0, V, (N, T))
    masked = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    target = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]], dtype=torch.bool)
    t = torch.tensor([0.25, 0.5])
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, V), tokens.reshape(-1), reduction="none").view(N, T)
    want = ((ce[0, 0] + ce[0, 2]) / 0.25 / 3 + 0.0) / 2
    torch.testing.assert_close(tl2.block_loss(logits, tokens, masked, target, t), want)


def test_dense_moe_experts_equals_the_reference():
    torch.manual_seed(0)
    M, d, E, inter = 37, 24, 8, 12
    x, r = torch.randn(M, d), torch.randn(M, d)
    wgu, wd = torch.randn(E, 2 * inter, d) * 0.2, torch.randn(E, d, inter) * 0.2
    w, ids = moe_route_ref(x, torch.randn(E, d), top_k=3, n_group=2, topk_group=1, routed_scaling_factor=2.5)
    torch.testing.assert_close(tl2.dense_moe_experts(x, wgu, wd, w, ids, r), moe_experts_ref(x, wgu, wd, w, ids, r),
                               atol=1e-5, rtol=1e-5)


def test_balance_experts_moves_bias_against_the_load():
    cfg = tl2.model_config(tl2.CONFIGS["smoke"])
    params = tl2.init_moe_params(cfg, seed=0)
    lp = [lp for lp in params.layers if lp.is_moe][0]
    lp.expert_bias.zero_()
    ids = torch.tensor([[0, 1], [0, 2], [0, 1]], dtype=torch.int32)  # expert 0 busiest, 3..7 idle
    imb = tl2.balance_experts(params, [ids], 0.01)
    assert lp.expert_bias[0] == -0.01 and (lp.expert_bias[3:] == 0.01).all()
    assert float(imb[0]) == pytest.approx(3 / (6 / cfg.n_experts))
    with pytest.raises(ValueError, match="routing records"):
        tl2.balance_experts(params, [ids, ids], 0.01)


# -------------------------------------------------------------------------------------------- end to end
def test_smoke_training_writes_a_loadable_llada2_checkpoint(tmp_path, one_thread):
    out = str(tmp_path / "ckpt")
    res = tl2.main(config="smoke", out=out, steps=2, eval_per_task=1, log_every=1, task_names=("add", "mul"))
    assert res["log"]["steps_done"] == 2 and len(res["log"]["loss"]) == 2
    got = _json(os.path.join(out, "config.json"))
    assert set(got) == set(_json(os.path.join(GOLDEN, "config.json")))
    assert got["architectures"] == ["LLaDA2MoeModelLM"] and got["model_type"] == "llada2_moe"
    params, cfg = load_model(out)  # mask id from the tokenizer files, as for the real checkpoints
    assert cfg.family == "llada2" and cfg.mask_token_id == ttok.special_ids("llada2")["<|mask|>"]
    rows = _json(os.path.join(out, "eval_results.json"))["rows"]
    assert [r["task"] for r in rows] == ["add", "mul"]
    assert all(r["tokens_per_forward"] >= 1.0 and r["nfe_per_problem"] >= 1 for r in rows)
    with open(os.path.join(out, "README.md")) as f:
        card = f.read()
    assert "| add | 1 |" in card and "| mul | 1 |" in card and "threshold 0.95" in card
    again = tl2.main(out=out, eval_only=True, eval_per_task=1, task_names=("add",), eval_threshold=1.0,
                     eval_json=str(tmp_path / "full.json"))
    assert _json(tmp_path / "full.json")["setting"]["threshold"] == 1.0
    assert again["eval"]["rows"][0]["tokens_per_forward"] == 1.0  # the pure schedule: one token per forward
    one, many = (tl2.evaluate(out, ("add", "mul"), 5, batch=b) for b in (1, 3))  # batches: each row as batch 1
    for r1, rb in zip(one["rows"], many["rows"]):
        r1.pop("seconds"), rb.pop("seconds")
        assert r1 == rb
    res2 = tl2.main(config="smoke", out=str(tmp_path / "again"), steps=2, eval_per_task=0, log_every=1,
                    task_names=("add", "mul"))
    assert [r["loss"] for r in res2["log"]["loss"]] == [r["loss"] for r in res["log"]["loss"]]


def test_cli_refuses_bad_arguments(capsys):
    for argv, what in ((["--out", "x", "--tasks", "add,nope"], "--tasks"),
                       (["--out", "x", "--config", "smoke", "--time-budget", "9"], "--time-budget"),
                       (["--out", "nowhere", "--eval-only"], "--out"),
                       (["--out", "x", "--eval-threshold", "2"], "--eval-threshold")):
        with pytest.raises(SystemExit) as e:
            tl2.parse_args(argv)
        assert e.value.code == 2 and what in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- tasks
def test_mul_task_answers_and_split():
    task = tasks.get_task("mul")
    held = task.problems(200, seed=0, split="heldout")
    rng = random.Random(0)
    train = [task.sample(rng, "train") for _ in range(1000)]
    assert not {p.prompt for p in held} & {p.prompt for p in train}
    for p in held + train:
        a, b = p.prompt[:-1].split("*")
        assert int(p.answer) == int(a) * int(b) and len(a) <= 3 and len(b) <= 2
        assert len(p.answer) <= tasks.MAX_ANSWER_CHARS
    assert "mul" not in tasks.TASKS  # the dense model's default mix stays add / reverse / sort


# ----------------------------------------------------------------------------------------- shipped model
@pytest.mark.skipif(not os.path.isdir(SHIPPED), reason="checkpoints/llada2-tiny-tasks is not trained yet "
                                                      "(scripts/train_llada2_tiny.py on a GPU)")
def test_shipped_llada2_model_answers_heldout_problems(one_thread):
    """10 held-out problems per easy task with LLaDA2's decoder at threshold 0.95: >= 90% right; the
    500-per-task numbers are in its eval_results.json."""
    params, cfg = load_model(SHIPPED)
    assert cfg.family == "llada2"
    assert os.path.getsize(os.path.join(SHIPPED, "model.safetensors")) < 8 * 2 ** 20
    tok = load_tokenizer(SHIPPED)
    for name in ("add", "reverse", "sort"):
        probs = tasks.heldout_problems(name, 10, seed=7)
        ok = 0
        for p in probs:
            res = generate_llada2(params, cfg, chat_prompt_ids(tok, p.prompt), gen_length=32, block_length=32,
                                  steps=32, threshold=0.95)
            ok += tasks.exact_match(decode_answer(tok, res.tokens, cfg), p.answer)
        assert ok >= 9, (name, ok)


def test_step_planner_cuts_the_steps_to_the_budget():
    import trainutil

    tc = tl2.CONFIGS["smoke"]
    tc = tl2.replace(tc, warmup=30, steps=10_000)
    planner = trainutil.StepPlanner(1e-6, tc.warmup, False, 0.0)  # a budget long past: plan the warmup only
    log = {"train_config": {}}
    got = [planner.replan("t", k, tc, log) for k in range(1, 31)]
    assert all(g is None for g in got[:-1]) and got[-1].steps == 30 and log["train_config"]["steps"] == 30
    assert log["steps_from_time_budget"]["planned"] == 30
    with pytest.raises(ValueError, match="warmup > 20"):
        trainutil.StepPlanner(10.0, 5, False, 0.0)


@pytest.mark.gpu
def test_smoke_training_on_cuda_with_workers(tmp_path):
    """The GPU path of the shipped run: bf16 autocast, fused AdamW, spawned data workers, fp32 evaluation."""
    out = str(tmp_path / "ckpt")
    res = tl2.main(config="smoke", device="cuda", out=out, steps=3, eval_per_task=1, log_every=1, workers=1,
                   task_names=("add", "mul"))
    assert res["log"]["steps_done"] == 3 and all(torch.isfinite(torch.tensor(r["loss"])) for r in res["log"]["loss"])
    assert [r["task"] for r in _json(os.path.join(out, "eval_results.json"))["rows"]] == ["add", "mul"]
