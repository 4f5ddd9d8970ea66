"""Dream: config, strict loading, forward and the logit shift, and its decoders against the golden cases.

Golden: ``tests/data/dream-tiny`` (Dream's ``diffusion_generate`` and Fast-dLLM's Dream decoders on a tiny random
checkpoint in Dream-v0-Instruct-7B's layout), fp32 on the CPU with the torch reference ops, token for token.
"""
import functools
import json
import os
import shutil

import pytest
import torch

from llada_triton.decode import generate
from llada_triton.decode.cache import shifted_rows
from llada_triton.decode.dream import diffusion_generate, dream_options
from llada_triton.decode.step import DecodeOptions, TransferRule, top_candidates
from llada_triton.decode.schedule import CarrySchedule, dream_step_fractions, dream_transfer_counts
from llada_triton.kernels.reference import dream_confidence_ref, filter_top_p_top_k_ref
from llada_triton.models import ConfigError, DreamConfig, WeightError, load_model, save_checkpoint
from llada_triton.models.dream import dream_name_map, forward, shift_logits
from tests import helpers
from tests.helpers import assert_forward_record

DATA = os.path.join(os.path.dirname(__file__), "data", "dream-tiny")
CKPT = os.path.join(DATA, "checkpoint")


def golden():
    return helpers.golden("dream-tiny")


@functools.lru_cache(maxsize=None)
def dream_model():
    return load_model(CKPT, dtype=torch.float32)


CASES = golden()["cases"]


def case_options(p: dict) -> dict:
    """``diffusion_generate`` arguments of a golden case (Fast-dLLM's confidence_threshold is ``threshold``)."""
    alg = "maskgit_plus" if p["alg"] == "confidence_threshold" else p["alg"]
    return dict(max_new_tokens=p["gen_length"], steps=p["steps"], alg=alg, alg_temp=p["alg_temp"], eps=p["eps"],
                temperature=p["temperature"], top_p=p["top_p"], top_k=p["top_k"], threshold=p.get("threshold"),
                cache=p.get("cache", "none"), block_length=p.get("block_length"))


# ------------------------------------------------------------------------------------ config and loading
def _raw_config():
    with open(os.path.join(CKPT, "config.json")) as f:
        return json.load(f)


def test_load_model_recognises_dream_and_fills_every_parameter():
    from safetensors.torch import load_file

    params, cfg = dream_model()
    ids = golden()["ids"]
    assert isinstance(cfg, DreamConfig) and cfg.family == "dream"
    assert (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.rope_theta, cfg.qkv_bias, cfg.logit_shift) == \
        (4, 2, 16, 1e6, True, 1)
    assert (cfg.mask_token_id, cfg.eos_token_id, cfg.pad_token_id, cfg.bos_token_id) == \
        (ids["mask"], ids["eos"], ids["pad"], ids["bos"])
    raw = {}
    for f in sorted(os.listdir(CKPT)):
        if f.endswith(".safetensors"):
            raw.update({k: v.float() for k, v in load_file(os.path.join(CKPT, f)).items()})
    for i, lp in enumerate(params.layers):
        a = f"model.layers.{i}.self_attn."
        assert torch.equal(lp.w_qkv, torch.cat([raw[a + n + "_proj.weight"] for n in "qkv"]))
        assert torch.equal(lp.b_qkv, torch.cat([raw[a + n + "_proj.bias"] for n in "qkv"]))
        m = f"model.layers.{i}.mlp."
        assert torch.equal(lp.w_gate_up, torch.cat([raw[m + "gate_proj.weight"], raw[m + "up_proj.weight"]]))
        assert torch.equal(lp.w_down, raw[m + "down_proj.weight"])
    assert torch.equal(params.lm_head, raw["lm_head.weight"]) and torch.equal(params.ln_f, raw["model.norm.weight"])
    assert set(raw) == set(dream_name_map(cfg))  # every tensor of the checkpoint has a place


@pytest.mark.parametrize("field, value, words", [
    ("use_sliding_window", True, "sliding-window attention"),
    ("use_mrope", True, "mrope"),
    ("rope_scaling", {"type": "mrope", "mrope_section": [16, 24, 24]}, "rope scaling"),
    ("hidden_act", "gelu", "activation"),
    ("attention_dropout", 0.1, "attention_dropout"),
])
def test_config_refuses_unsupported_by_name(field, value, words):
    raw = dict(_raw_config(), **{field: value})
    with pytest.raises(ConfigError, match=words) as e:
        DreamConfig.from_dict(raw)
    assert field in str(e.value)


def test_config_unknown_field_and_family_dispatch(tmp_path):
    with pytest.raises(ConfigError, match="does_not_exist"):
        DreamConfig.from_dict(dict(_raw_config(), does_not_exist=1))
    assert DreamConfig.from_dict(dict(_raw_config(), use_mrope=False, does_not_exist=1), allow_unknown=True)
    shutil.copytree(CKPT, tmp_path / "m")
    with open(tmp_path / "m" / "config.json", "w") as f:
        json.dump(dict(_raw_config(), model_type="mamba"), f)
    with pytest.raises(ValueError, match="model_type='mamba'"):
        load_model(str(tmp_path / "m"))


def test_eot_is_im_end_from_the_tokenizer_files(tmp_path):
    shutil.copytree(CKPT, tmp_path / "m")
    with open(tmp_path / "m" / "tokenizer_config.json", "w") as f:
        json.dump({"added_tokens_decoder": {"282": {"content": "<|im_end|>"}, "281": {"content": "<|im_start|>"}}}, f)
    cfg = DreamConfig.from_pretrained(str(tmp_path / "m"))
    assert cfg.eot_token_id == golden()["ids"]["im_end"]
    assert cfg.end_token_ids == (golden()["ids"]["eos"], golden()["ids"]["im_end"])


def test_strict_loading_roundtrip_and_errors(tmp_path):
    from safetensors.torch import load_file, save_file

    params, cfg = dream_model()
    out = tmp_path / "rt"
    save_checkpoint(params, cfg, str(out), name_map=dream_name_map(cfg))
    shutil.copy(os.path.join(CKPT, "config.json"), out / "config.json")
    p2, _ = load_model(str(out))
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(params.tensors(), p2.tensors()))
    tensors = load_file(str(out / "model.safetensors"))
    bias = "model.layers.1.self_attn.v_proj.bias"
    save_file({k: v for k, v in tensors.items() if k != bias}, str(out / "model.safetensors"))
    with pytest.raises(WeightError, match="lacks 1 tensors"):
        load_model(str(out))
    extra = {"model.layers.0.self_attn.o_proj.bias": tensors[bias].clone()}
    save_file(dict(tensors, **extra), str(out / "model.safetensors"))
    with pytest.raises(WeightError, match="o_proj.bias"):
        load_model(str(out))


# --------------------------------------------------------------------------------- forward and the shift
@pytest.mark.parametrize("i", range(len(golden()["forward"])), ids=lambda i: f"forward{i}")
def test_forward_matches_recorded_raw_logits(i):
    params, cfg = dream_model()
    rec = golden()["forward"][i]
    assert_forward_record(forward(params, cfg, torch.tensor([rec["input_ids"]]))[0], rec)


def test_shift_is_the_references_concatenation_and_row_indexing():
    x = torch.randn(2, 7, 5)
    assert torch.equal(shift_logits(x), torch.cat([x[:, :1], x[:, :-1]], dim=1))
    assert torch.equal(shift_logits(x, 0), x)
    assert torch.equal(shifted_rows(x, 1), shift_logits(x))  # the policies' row indexing: the same step
    with pytest.raises(ValueError, match="shift=-1"):
        shift_logits(x, -1)


# ----------------------------------------------------------------------------------- schedules and rules
@pytest.mark.parametrize("case", [c for c in CASES if "transfer_counts" in c["params"]], ids=lambda c: c["name"])
def test_dream_schedule_matches_recorded_counts(case):
    p = case["params"]
    if p.get("cache") in ("prefix", "dual"):  # per block: the block-start commit, then steps 1 .. spb - 1
        Lb = p["block_length"]
        spb = p["steps"] // (p["gen_length"] // Lb)
        got = [c for _ in range(p["gen_length"] // Lb) for c in dream_transfer_counts(Lb - 1, spb, p["eps"], 1)[:-1]]
    else:
        got = dream_transfer_counts(p["gen_length"], p["steps"], p["eps"])[:-1]
    assert got == p["transfer_counts"]


def test_dream_schedule_properties():
    counts = dream_transfer_counts(24, 24, 1e-3)
    assert counts[0] == 0 and sum(counts) == 24 and len(counts) == 24  # float32 truncation: 0 at step 0
    frac = dream_step_fractions(4, 0.5)
    assert frac.dtype == torch.float32 and frac[-1] == 1.0
    with pytest.raises(ValueError, match="eps=1.5"):
        dream_step_fractions(4, 1.5)


def test_carry_schedule_adds_a_step_per_rejecting_last_step():
    c = CarrySchedule(8, 2)
    assert c.next_k() == 4
    c.update(4, 1)                  # 3 rejected: carried
    assert c.next_k() == 7
    c.update(7, 5)                  # the last step rejects 2: one more step over what is left
    assert c.next_k() == 2
    c.update(2, 2)
    assert c.next_k() is None
    with pytest.raises(ValueError, match="divisible"):
        CarrySchedule(10, 4)


def test_top_candidates_limits_the_threshold_rule():
    conf = torch.tensor([[0.95, 0.2, 0.99, 0.97, 0.5]])
    masked = torch.tensor([[True, True, True, True, False]])
    out = top_candidates(conf, masked, 2)
    assert torch.isinf(out[0, [0, 1, 4]]).all() and out[0, 2] == 0.99 and out[0, 3] == 0.97


def test_dream_confidences():
    torch.manual_seed(0)
    logits = torch.randn(5, 50)
    p = torch.softmax(logits, -1)
    x0, c = dream_confidence_ref(logits, confidence="prob")
    assert torch.equal(x0, logits.argmax(-1)) and torch.allclose(c, p.max(-1).values)
    _, c = dream_confidence_ref(logits, confidence="margin")
    top = p.sort(-1, descending=True).values
    assert torch.allclose(c, top[:, 0] - top[:, 1])
    _, c = dream_confidence_ref(logits, confidence="neg_entropy")
    assert torch.allclose(c, (p * torch.log(p + 1e-10)).sum(-1)) and (c <= 0).all()
    kept = filter_top_p_top_k_ref(logits, top_k=3) > torch.finfo(torch.float32).min
    assert (kept.sum(-1) == 3).all()
    kept = filter_top_p_top_k_ref(logits, top_p=1e-6) > torch.finfo(torch.float32).min
    assert (kept.sum(-1) == 1).all() and kept.gather(1, logits.argmax(-1, keepdim=True)).all()
    _, c = dream_confidence_ref(logits, confidence="prob", top_k=1)  # renormalised over the kept ids
    assert torch.allclose(c, torch.ones(5))
    with pytest.raises(ValueError, match="confidence='max'"):
        dream_confidence_ref(logits, confidence="max")


# ------------------------------------------------------------------------------------------- golden decode
@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_reference_decoders_token_for_token(case):
    params, cfg = dream_model()
    out = diffusion_generate(params, cfg, case["prompt"], **case_options(case["params"]))
    assert out.tokens.tolist() == case["expected"]
    assert out.nfe == [case["params"]["nfe"]] * len(case["prompt"])  # every model call, as recorded


@pytest.mark.parametrize("case", [c for c in CASES if c["params"].get("threshold") is None][::2],
                         ids=lambda c: c["name"])
def test_device_position_path_matches(case):
    """The graph-capturable code path (block starts as device tensors) gives the same tokens."""
    params, cfg = dream_model()
    out = diffusion_generate(params, cfg, case["prompt"], device_positions=True, **case_options(case["params"]))
    assert out.tokens.tolist() == case["expected"]


def test_left_padded_batch_matches_single_rows():
    """Positions are absolute here and relative (from the first real token) in Dream: RoPE makes the scores
    the same, so a padded batch decodes each row as alone."""
    params, cfg = dream_model()
    cases = [c for c in CASES if c["params"].get("cache") == "dual" and c["params"]["threshold"] is None]
    prompts = [cases[0]["prompt"][0], cases[1]["prompt"][0]]
    assert len(prompts[0]) != len(prompts[1])
    out = diffusion_generate(params, cfg, prompts, **case_options(cases[0]["params"]))
    assert out.tokens.tolist() == [cases[0]["expected"][0], cases[1]["expected"][0]]


def test_origin_and_alg_temp_are_seeded_and_complete():
    params, cfg = dream_model()
    prompt = CASES[0]["prompt"]
    for kw in (dict(alg="origin"), dict(alg="entropy", alg_temp=0.5), dict(alg="maskgit_plus", temperature=0.7,
                                                                        top_p=0.9, top_k=20)):
        a = diffusion_generate(params, cfg, prompt, max_new_tokens=16, steps=8, seed=3, **kw)
        b = diffusion_generate(params, cfg, prompt, max_new_tokens=16, steps=8, seed=3, **kw)
        assert torch.equal(a.tokens, b.tokens) and a.nfe == [8]
        if kw["alg"] != "origin":  # origin may leave masks, as Dream's (each transfer is a coin flip)
            assert not (a.tokens == cfg.mask_token_id).any()


def test_origin_transfers_each_masked_position_with_the_step_fraction():
    rule = TransferRule.from_options(dream_model()[1], DecodeOptions(gen_length=16, block_length=16, steps=8,
                                                                     remasking="origin", schedule="dream"))
    masked = torch.ones(4, 5000, dtype=torch.bool)
    masked[:, ::2] = False
    conf, k = rule.origin(masked, 0.3, rand_gen=torch.Generator().manual_seed(0))
    frac = k.float() / masked.sum(1)
    assert ((frac - 0.3).abs() < 0.03).all()
    chosen = torch.topk(torch.where(masked, conf, float("-inf")), int(k[0]), dim=1).values[0]
    assert (chosen > -0.3).all()  # the k most confident are exactly those with u < 0.3


def _block_causal_oracle(params, cfg, prompt, G, Lb, steps, alg):
    """Dream's schedule per block with block-causal attention, every step a full uncached forward."""
    P = len(prompt)
    x = torch.tensor([prompt + [cfg.mask_token_id] * G])
    ends = torch.tensor([P] * P + [P + (j // Lb + 1) * Lb for j in range(G)])
    conf_kind = {"maskgit_plus": "prob", "topk_margin": "margin", "entropy": "neg_entropy"}[alg]
    for b in range(G // Lb):
        s = P + b * Lb
        for k in dream_transfer_counts(Lb, steps // (G // Lb), 1e-3):
            n = s + Lb
            logits = shift_logits(forward(params, cfg, x[:, :n], key_end=ends[:n]))[0, s:n]
            x0, conf = dream_confidence_ref(logits, confidence=conf_kind)
            conf = torch.where(x[0, s:n] == cfg.mask_token_id, conf, float("-inf"))
            idx = torch.topk(conf, k).indices
            x[0, s + idx] = x0[idx]
    return x[0, P:].tolist()


@pytest.mark.parametrize("alg", ["maskgit_plus", "entropy"])
def test_block_cache_is_the_block_causal_recompute(alg):
    """``cache='block'`` (an approximation of Dream, which was trained with full attention) is exact against its
    own definition: Dream's schedule per block with block-causal attention, recomputed without a cache."""
    params, cfg = dream_model()
    prompt = CASES[0]["prompt"][0]
    expect = _block_causal_oracle(params, cfg, prompt, 16, 8, 8, alg)
    for dp in (False, True):
        out = diffusion_generate(params, cfg, [prompt], max_new_tokens=16, steps=8, alg=alg, cache="block",
                                 block_length=8, device_positions=dp)
        assert out.tokens[0].tolist() == expect


def test_options_errors():
    params, cfg = dream_model()
    with pytest.raises(ValueError, match="top_p"):
        generate(params, cfg, [[1, 2]], gen_length=4, block_length=4, steps=4, top_p=0.9)
    with pytest.raises(ValueError, match="schedule='carry'"):
        generate(params, cfg, [[1, 2], [3]], gen_length=4, block_length=4, steps=2, remasking="maskgit_plus",
                 threshold=0.9, schedule="carry")
    with pytest.raises(ValueError, match="refresh_commits_first"):
        generate(params, cfg, [[1, 2]], gen_length=4, block_length=4, steps=4, refresh_commits_first=True)
    with pytest.raises(ValueError, match="block_length=2"):
        dream_options(max_new_tokens=4, steps=4, block_length=2)
    assert dream_options(max_new_tokens=64, steps=64, alg="maskgit_plus", cache="dual")["remasking"] == "entropy"


# ------------------------------------------------------------------------------------------------- chat
def _byte_level_chars():
    """GPT-2 / Qwen byte-level alphabet: byte -> printable unicode character."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


QWEN_TEMPLATE = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                 "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
                 "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
                 "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def write_dream_tokenizer(path):
    """A byte-level BPE in Dream's file layout (vocab.json, merges.txt, tokenizer_config.json naming the remote
    DreamTokenizer) with the golden ids of the special tokens and Dream-Instruct's Qwen chat template."""
    ids = golden()["ids"]
    vocab = {c: b for b, c in _byte_level_chars().items()}
    vocab.update({f"<unused{i}>": i for i in range(256, ids["eos"])})
    names = {ids["eos"]: "<|endoftext|>", ids["im_start"]: "<|im_start|>", ids["im_end"]: "<|im_end|>",
             ids["mask"]: "<|mask|>"}
    added = {str(i): {"content": names.get(i, f"<|reserved_{i}|>"), "special": True, "lstrip": False,
                      "rstrip": False, "normalized": False, "single_word": False}
             for i in range(ids["eos"], ids["mask"] + 1)}
    with open(os.path.join(path, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(path, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "DreamTokenizer", "added_tokens_decoder": added, "chat_template": QWEN_TEMPLATE,
                   "auto_map": {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]},
                   "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "bos_token": None}, f)


def test_chat_with_dreams_tokenizer_and_template(tmp_path):
    from llada_triton.models.chat import chat_prompt_ids, decode_answer, load_tokenizer

    path = str(tmp_path / "dream")
    shutil.copytree(CKPT, path)
    write_dream_tokenizer(path)
    tok = load_tokenizer(path)  # the remote DreamTokenizer is never run: Qwen2's tokenizer reads its files
    params, cfg = load_model(path)
    ids = golden()["ids"]
    assert cfg.eot_token_id == ids["im_end"]
    prompt = chat_prompt_ids(tok, "hi")
    assert tok.decode(prompt) == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                                  "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert prompt.count(ids["im_start"]) == 3 and prompt.count(ids["eos"]) == 0  # no special token added
    out = diffusion_generate(params, cfg, [prompt], max_new_tokens=8, steps=8)
    gen = [ord("o"), ord("k"), ids["im_end"], ids["eos"]] + out.tokens[0].tolist()
    assert decode_answer(tok, gen, cfg) == "ok"


def test_slot_runner_matches_the_block_cache():
    """``run_many`` (slots refilled as rows end) reads the shifted rows too: Dream's entropy confidence with the
    linear schedule gives ``generate(cache='block')``'s tokens per prompt."""
    from llada_triton.decode import run_many

    params, cfg = dream_model()
    prompts = [c["prompt"][0] for c in CASES[:3]]
    opts = dict(gen_length=16, block_length=8, steps=16, remasking="entropy")
    res = run_many(params, cfg, prompts, slots=2, early_stop=False, **opts)
    for p, toks in zip(prompts, res.tokens):
        assert toks == generate(params, cfg, [p], cache="block", early_stop=False, **opts).tokens[0].tolist()
