"""Prompt building and answer stripping with a real tokenizer (the shipped tiny model's)."""
import os
import subprocess
import sys

import pytest

from llada_triton.models import LLaDAConfig
from llada_triton.models.chat import chat_prompt_ids, decode_answer, load_tokenizer, strip_answer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "checkpoints", "llada-tiny-tasks")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(MODEL)


@pytest.fixture(scope="module")
def cfg():
    return LLaDAConfig.from_pretrained(MODEL)


def test_instruct_prompt_is_the_official_template(tok, cfg):
    ids = chat_prompt_ids(tok, "12+34=")
    text = tok.decode(ids, skip_special_tokens=False)
    assert text == ("<|startoftext|><|start_header_id|>user<|end_header_id|>\n\n12+34=<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert ids[0] == cfg.bos_token_id and ids.count(cfg.bos_token_id) == 1  # no second bos added
    multi = chat_prompt_ids(tok, [{"role": "user", "content": " a "}, {"role": "assistant", "content": "b"},
                                  {"role": "user", "content": "c"}])
    assert tok.decode(multi, skip_special_tokens=False).count("<|eot_id|>") == 3


def test_raw_prompt_and_answer_stripping(tok, cfg):
    raw = chat_prompt_ids(tok, "abc", chat_template=False)
    assert tok.decode(raw) == "abc"
    ans = tok("46", add_special_tokens=False)["input_ids"]
    gen = ans + [cfg.eot_token_id] + [cfg.eos_token_id] * 3 + ans
    assert strip_answer(gen, cfg) == ans
    assert decode_answer(tok, gen, cfg) == "46"
    assert strip_answer([cfg.mask_token_id] + ans, cfg) == ans


def test_loading_never_asks_to_run_remote_code():
    code = f"import sys; sys.path.insert(0, {ROOT!r}); from llada_triton.models.chat import load_tokenizer; load_tokenizer({MODEL!r})"
    out = subprocess.run([sys.executable, "-c", code], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "custom code" not in out.stdout + out.stderr


def test_generate_script_main_job(capsys):
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import generate as script

    res = script.main(["--prompt", "12345+678=", "--quiet"])
    assert capsys.readouterr().out.strip() == "13023"
    assert res.nfe == [32]
