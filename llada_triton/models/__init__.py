"""LLaDA (masked-diffusion LM) as pure functions: config, strict weight loading, forward, chat helpers."""
from .config import ConfigError, LLaDAConfig
from .model import KVCache, forward, forward_hidden, logits_from_hidden
from .ops import REFERENCE_OPS, Ops, triton_ops
from .weights import LayerParams, Params, WeightError, init_params, load_params, save_checkpoint

__all__ = ["LLaDAConfig", "ConfigError", "Params", "LayerParams", "WeightError", "load_params", "init_params",
           "save_checkpoint", "forward", "forward_hidden", "logits_from_hidden", "KVCache", "Ops",
           "REFERENCE_OPS", "triton_ops", "load_model"]


def load_model(path: str, *, device="cpu", dtype=None, eot_token_id=None):
    """``(params, cfg)`` from a Hugging Face LLaDA folder (dtype defaults to bf16 on CUDA, fp32 on CPU)."""
    import torch

    cfg = LLaDAConfig.from_pretrained(path, eot_token_id=eot_token_id)
    if dtype is None:
        dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    return load_params(path, cfg, device=device, dtype=dtype), cfg
