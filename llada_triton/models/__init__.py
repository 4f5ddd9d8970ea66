"""Masked-diffusion LMs (LLaDA, Dream) as pure functions: configs, strict weight loading, forward, chat helpers."""
from .config import ConfigError, LLaDAConfig
from .dream import DreamConfig
from .model import KVCache, forward, forward_hidden, logits_from_hidden
from .ops import REFERENCE_OPS, Ops, triton_ops
from .weights import LayerParams, Params, WeightError, init_params, load_params, save_checkpoint

__all__ = ["LLaDAConfig", "DreamConfig", "ConfigError", "Params", "LayerParams", "WeightError", "load_params", "init_params",
           "save_checkpoint", "forward", "forward_hidden", "logits_from_hidden", "KVCache", "Ops",
           "REFERENCE_OPS", "triton_ops", "load_model"]


def load_model(path: str, *, device="cpu", dtype=None, eot_token_id=None):
    """``(params, cfg)`` from a Hugging Face checkpoint folder of a supported family (LLaDA, Dream: read from
    ``config.json``; ``cfg.family`` names it). dtype defaults to bf16 on CUDA, fp32 on CPU."""
    from .families import family_of, loader

    return loader(family_of(path))(path, device=device, dtype=dtype, eot_token_id=eot_token_id)
