"""Shared test helpers (not a conftest: imported explicitly)."""
import functools
import json
import os
import subprocess
import sys

import torch

DATA = os.path.join(os.path.dirname(__file__), "data", "llada-tiny")
CKPT = os.path.join(DATA, "checkpoint")


@functools.lru_cache(maxsize=None)
def golden():
    with open(os.path.join(DATA, "cases.json")) as f:
        return json.load(f)


@functools.lru_cache(maxsize=None)
def block_golden():
    with open(os.path.join(DATA, "block_cases.json")) as f:
        return json.load(f)


@functools.lru_cache(maxsize=None)
def tiny_model(dtype=torch.float32):
    """The golden checkpoint (weights stored in bf16) upcast to ``dtype`` on the CPU."""
    from llada_triton.models import LLaDAConfig, load_params

    ids = golden()["ids"]
    cfg = LLaDAConfig.from_pretrained(CKPT, eot_token_id=ids["eot"])
    return load_params(CKPT, cfg, dtype=dtype), cfg


def decode_options(params: dict) -> dict:
    """generate() keyword arguments from a golden case's ``params``."""
    return dict(gen_length=params["gen_length"], block_length=params["block_length"], steps=params["steps"],
                temperature=params["temperature"], remasking=params["remasking"], cache=params["cache"],
                threshold=params.get("threshold"), cfg_scale=params.get("cfg_scale", 0.0),
                logits_eos_inf=params.get("logits_eos_inf", False),
                confidence_eos_eot_inf=params.get("confidence_eos_eot_inf", False))


def run_without_interpreter(code: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python without ``TRITON_INTERPRET`` (compile-only checks for sm_90 need
    the real compiler, and one process cannot switch modes)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    return subprocess.run([sys.executable, "-c", code, *args], cwd=root, env=env, capture_output=True, text=True,
                          timeout=timeout)


def family_dir(family: str) -> str:
    """``tests/data/<family>-tiny``: a golden folder copied from ``../shared/golden`` (checkpoint + cases.json)."""
    return os.path.join(os.path.dirname(__file__), "data", f"{family}-tiny")


@functools.lru_cache(maxsize=None)
def family_golden(family: str):
    with open(os.path.join(family_dir(family), "cases.json")) as f:
        return json.load(f)


@functools.lru_cache(maxsize=None)
def family_model(family: str, dtype=torch.float32):
    """A golden family checkpoint through ``load_model`` (ids the checkpoint folder lacks from cases.json)."""
    from llada_triton.models import load_model

    ids = family_golden(family)["ids"]
    return load_model(os.path.join(family_dir(family), "checkpoint"), dtype=dtype, mask_token_id=ids["mask"],
                      eot_token_id=ids.get("eot"))
