"""Shared test helpers (not a conftest: imported explicitly)."""
import functools
import json
import os

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
    from llada import LLaDAConfig, load_params

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
