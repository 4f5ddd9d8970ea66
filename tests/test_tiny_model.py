"""The shipped small LLaDA (checkpoints/llada-tiny-tasks): tokenizer, config, strict load, that it really
answers held-out task problems, the training objective, and an end-to-end run of train_tiny."""
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

import eval_tasks  # noqa: E402
import tasks  # noqa: E402
import tiny_tokenizer as ttok  # noqa: E402
import train_tiny  # noqa: E402
from llada_triton.models.config import LLaDAConfig  # noqa: E402
from llada_triton.models.weights import load_params  # noqa: E402

CKPT = os.path.join(ROOT, "checkpoints", "llada-tiny-tasks")
REF_CONFIG = os.path.join(ROOT, "tests", "data", "llada-tiny", "checkpoint", "config.json")


@pytest.fixture(scope="module")
def tok():
    return eval_tasks.load_tokenizer(CKPT)


@pytest.fixture
def one_thread():
    """One intra-op thread: on a small shared CPU, two OpenMP threads that wait for each other are several
    times slower than one (measured: 64 ms vs 300 ms per forward of 8 x 80 tokens under load)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def model():
    cfg = LLaDAConfig.from_pretrained(CKPT)
    return load_params(CKPT, cfg, device="cpu", dtype=torch.float32), cfg


# ------------------------------------------------------------------------------------------ tokenizer
def test_tokenizer_round_trip(tok):
    texts = ["", "12345+678=", "reverse: hello world", "sort: 9a0z", "A b\nC!~ {x}", "  spaces  ", "a , b ."]
    rng = random.Random(0)
    texts += ["".join(rng.choice(ttok.CHARS) for _ in range(rng.randint(1, 40))) for _ in range(50)]
    for t in texts:
        ids = tok(t, add_special_tokens=False)["input_ids"]
        assert len(ids) == len(t)  # one token per character
        assert tok.decode(ids) == t
    assert tok.decode(tok("é", add_special_tokens=False)["input_ids"]) == "?"  # outside the alphabet


def test_tokenizer_special_layout(tok):
    ids = ttok.special_ids()
    assert [ids[s] for s in ttok.SPECIAL_TOKENS] == list(range(len(ttok.CHARS), len(ttok.CHARS) + 19))
    assert tok.bos_token == "<|startoftext|>" and tok.bos_token_id == ids["<|startoftext|>"]
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token_id == tok.eos_token_id == ids["<|endoftext|>"]
    assert tok.convert_tokens_to_ids("<|mdm_mask|>") == ids["<|mdm_mask|>"]
    assert ids["<|start_header_id|>"] + 1 == ids["<|end_header_id|>"] == ids["<|eot_id|>"] - 1
    assert ids["<|eot_id|>"] == max(ids.values())  # eot last, as 126348 in LLaDA-8B
    assert len(tok) == len(ttok.CHARS) + 19 and ttok.padded_vocab_size() % 64 == 0
    with open(os.path.join(CKPT, "tokenizer_config.json")) as f:
        tc = json.load(f)
    assert tc["add_bos_token"] is False and tc["add_eos_token"] is False
    assert tc["tokenizer_class"] == "PreTrainedTokenizerFast"
    # special tokens are single tokens even inside text; no bos is added by plain tokenization
    assert tok("<|eot_id|>x")["input_ids"] == [ids["<|eot_id|>"], ttok.vocab()["x"]]


def test_chat_template_exact(tok):
    msgs = [{"role": "user", "content": "  12+34=\n"}]
    want = ("<|startoftext|><|start_header_id|>user<|end_header_id|>\n\n12+34=<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n")
    for gen_prompt in (True, False):  # LLaDA's template always appends the assistant header
        assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen_prompt) == want
    two = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
           {"role": "assistant", "content": " ok "}, {"role": "user", "content": "more"}]
    assert tok.apply_chat_template(two, tokenize=False) == (
        "<|startoftext|><|start_header_id|>system<|end_header_id|>\n\nbe brief<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nok<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nmore<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    enc = ttok.ChatEncoder()
    rng = random.Random(1)
    for p in tasks.sample_problems(rng, 60, split="any"):
        ids = eval_tasks.prompt_ids(tok, p.prompt)
        assert ids == enc.prompt(p.prompt)  # the fast training encoder agrees with the saved tokenizer
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1


# ---------------------------------------------------------------------------------------------- config
def test_config_and_special_ids():
    cfg = LLaDAConfig.from_pretrained(CKPT)
    ids = ttok.special_ids()
    assert cfg.mask_token_id == ids["<|mdm_mask|>"]
    assert cfg.eos_token_id == cfg.pad_token_id == ids["<|endoftext|>"]
    assert cfg.bos_token_id == ids["<|startoftext|>"]
    assert cfg.eot_token_id == ids["<|eot_id|>"]  # read from the tokenizer files
    assert cfg.vocab_size == ttok.padded_vocab_size()
    with open(REF_CONFIG) as f:
        ref = json.load(f)
    with open(os.path.join(CKPT, "config.json")) as f:
        ours = json.load(f)
    assert set(ours) == set(ref)
    same = {k for k in ref if k not in ("d_model", "n_heads", "n_kv_heads", "n_layers", "mlp_hidden_size",
                                          "vocab_size", "embedding_size", "mask_token_id", "eos_token_id",
                                          "pad_token_id")}
    assert {k: ours[k] for k in same} == {k: ref[k] for k in same}
    with open(os.path.join(CKPT, "generation_config.json")) as f:
        gen = json.load(f)
    assert gen["bos_token_id"] == cfg.bos_token_id and gen["eos_token_id"] == cfg.eos_token_id


def test_checkpoint_loads_strictly(model):
    params, cfg = model
    from safetensors import safe_open

    with safe_open(os.path.join(CKPT, "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert all(f.get_slice(k).get_dtype() == "BF16" for k in keys)
    assert len(keys) == 3 + 9 * cfg.n_layers
    assert os.path.getsize(os.path.join(CKPT, "model.safetensors")) < 8 * 2 ** 20
    assert all(torch.isfinite(t).all() for _, t in params.tensors())


# --------------------------------------------------------------------------- the shipped model works
def test_shipped_model_answers_heldout_problems(model, tok, one_thread):
    """20 held-out problems per task, canonical decode (gen 32, one block, 32 steps, low confidence,
    temperature 0, fp32 CPU): >= 90% right per task. The 500-per-task tables are in
    results/tiny_tasks_eval.csv."""
    params, cfg = model
    acc = {}
    for name in tasks.TASKS:
        probs = tasks.heldout_problems(name, 20, seed=123)
        assert all(tasks.split_of(p.prompt) == "heldout" for p in probs)
        preds = eval_tasks.predict(params, cfg, tok, [p.prompt for p in probs], gen_length=32, block_length=32,
                                   steps=32, batch_size=len(probs))
        acc[name] = sum(tasks.exact_match(pr, p.answer) for pr, p in zip(preds, probs)) / len(probs)
    assert all(a >= 0.9 for a in acc.values()), acc


# ------------------------------------------------------------------------------------------- objective
def test_corrupt_never_masks_prompt():
    g = torch.Generator().manual_seed(0)
    B, P, G, mask_id = 64, 7, 32, 102
    prompt = torch.randint(0, 96, (B, P))
    answer = torch.randint(0, 96, (B, G))
    tokens, masked, t = train_tiny.corrupt(prompt, answer, mask_id, eps=1e-3, generator=g)
    assert torch.equal(tokens[:, :P], prompt)
    assert torch.equal(tokens[:, P:] == mask_id, masked)
    assert torch.equal(tokens[:, P:][~masked], answer[~masked])
    assert ((t > 1e-3 - 1e-9) & (t <= 1)).all()
    # the masked fraction follows t
    big = train_tiny.corrupt(prompt, torch.zeros(B, 4096, dtype=torch.long), mask_id, generator=g)
    assert torch.allclose(big[1].float().mean(1), big[2], atol=0.05)


def test_diffusion_loss_weights_by_inverse_t():
    torch.manual_seed(0)
    B, G, V = 3, 5, 11
    logits = torch.randn(B, G, V)
    answer = torch.randint(0, V, (B, G))
    masked = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    t = torch.tensor([0.2, 0.6, 0.9])
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, V), answer.reshape(-1), reduction="none").view(B, G)
    want = (ce[0, 0] / 0.2 + ce[1, :3].sum() / 0.6) / G / B
    got = train_tiny.diffusion_loss(logits, answer, masked, t)
    assert torch.allclose(got, want)
    # halving t doubles a row's contribution; unmasked tokens contribute nothing
    got2 = train_tiny.diffusion_loss(logits, answer, masked, torch.tensor([0.1, 0.6, 0.9]))
    assert torch.allclose(got2 - got, ce[0, 0] / 0.2 / G / B)
    logits2 = logits.clone()
    logits2[~masked] = 100.0
    assert torch.allclose(train_tiny.diffusion_loss(logits2, answer, masked, t), got)


def test_batch_loss_gradients_skip_prompt_pads():
    """Left-padding is hidden from attention: the loss of a row does not depend on its pad tokens."""
    tc = train_tiny.CONFIGS["small"]
    cfg = train_tiny.model_config(tc)
    params = train_tiny.init_params(cfg, seed=0)
    prompt, pad, answer = (torch.from_numpy(a) for a in train_tiny.make_batch(0, 0, 6, tuple(tasks.TASKS)))
    assert (pad > 0).any()
    l1 = train_tiny.batch_loss(params, cfg, prompt, pad, answer, eps=1e-3, generator=torch.Generator().manual_seed(5))
    prompt2 = prompt.clone()
    cols = torch.arange(prompt.shape[1])[None, :] < pad[:, None]
    prompt2[cols] = 7  # change only the pads
    l2 = train_tiny.batch_loss(params, cfg, prompt2, pad, answer, eps=1e-3, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(l1, l2, atol=1e-5)


# ----------------------------------------------------------------------------------------- end to end
def test_train_tiny_small_end_to_end(tmp_path, one_thread):
    out = str(tmp_path / "ckpt")
    res = train_tiny.main(config="small", device="cpu", out=out, seed=3, steps=2, eval_per_task=1, eval_batch=8,
                          log_every=1)
    assert res["log"]["steps_done"] == 2 and len(res["log"]["loss"]) == 2
    assert [r["task"] for r in res["eval"]["rows"]] == list(tasks.TASKS)
    cfg = LLaDAConfig.from_pretrained(out)
    assert cfg.eot_token_id == ttok.special_ids()["<|eot_id|>"] and cfg.n_layers == 2
    params = load_params(out, cfg, dtype=torch.float32)
    assert params.wte.shape == (ttok.padded_vocab_size(), 64)
    tok = eval_tasks.load_tokenizer(out)
    assert tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False).startswith("<|startoftext|>")
    # deterministic given the seed
    res2 = train_tiny.main(config="small", device="cpu", out=str(tmp_path / "again"), seed=3, steps=2,
                           eval_per_task=0, log_every=1)
    assert [r["loss"] for r in res2["log"]["loss"]] == [r["loss"] for r in res["log"]["loss"]]


# ------------------------------------------------------------------------------------------------ tasks
def test_tasks_split_and_answers():
    for name, task in tasks.TASKS.items():
        held = task.problems(200, seed=0, split="heldout")
        assert len({p.prompt for p in held}) == 200
        assert held == task.problems(200, seed=0, split="heldout")  # deterministic
        rng = random.Random(0)
        train = [task.sample(rng, "train") for _ in range(2000)]
        assert not {p.prompt for p in held} & {p.prompt for p in train}
        assert all(tasks.split_of(p.prompt) == "train" for p in train)
        assert all(len(p.answer) <= tasks.MAX_ANSWER_CHARS for p in held + train)
    for p in tasks.heldout_problems("add", 50):
        a, b = p.prompt[:-1].split("+")
        assert int(p.answer) == int(a) + int(b)
    for p in tasks.heldout_problems("reverse", 50):
        assert p.answer == p.prompt.split(": ")[1][::-1]
    for p in tasks.heldout_problems("sort", 50):
        assert p.answer == "".join(sorted(p.prompt.split(": ")[1]))


def test_scorers_and_jsonl(tmp_path):
    assert tasks.exact_match(" 42 ", "42") and not tasks.exact_match("42.", "42")
    assert tasks.last_number("so 3 + 4 = 7. The answer is 1,234.50") == "1234.5"
    assert tasks.last_number("no digits") is None
    assert tasks.numeric_match("The answer is 72.", "Natalia sold ... #### 72")
    assert tasks.numeric_match("-5", "#### -5.0") and not tasks.numeric_match("7", "#### 72")
    p = tmp_path / "x.jsonl"
    p.write_text('{"prompt": "1+1=", "answer": "2"}\n\n{"prompt": "q", "answer": 3}\n')
    probs = tasks.load_jsonl(str(p))
    assert [(x.prompt, x.answer) for x in probs] == [("1+1=", "2"), ("q", "3")]
    assert tasks.score(["2", "x 3"], [x.answer for x in probs], "numeric") == 1.0
