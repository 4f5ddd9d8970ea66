"""LLaDA (masked-diffusion LM) as pure functions: config, strict weight loading, forward, chat helpers.

Families: the dense LLaDA (``config``, ``weights``, ``model``) and the MoE families LLaDA2.x and LLaDA-MoE
(``moe_config``, ``moe_weights``, ``moe_model``); :func:`load_model` recognises them from ``config.json``.
"""
from .config import ConfigError, LLaDAConfig
from .family import forward_hidden_of
from .moe_config import LLaDA2Config, LLaDAMoEConfig, MoEConfig, detect_family
from .moe_weights import MoELayerParams, init_moe_params, load_moe_params
from .model import KVCache, forward, forward_hidden, logits_from_hidden
from .ops import REFERENCE_OPS, Ops, triton_ops
from .weights import LayerParams, Params, WeightError, init_params, load_params, save_checkpoint

__all__ = ["LLaDAConfig", "ConfigError", "Params", "LayerParams", "WeightError", "load_params", "init_params",
           "save_checkpoint", "forward", "forward_hidden", "logits_from_hidden", "KVCache", "Ops",
           "REFERENCE_OPS", "triton_ops", "load_model", "MoEConfig", "LLaDA2Config", "LLaDAMoEConfig", "MoELayerParams",
           "load_moe_params",
           "detect_family", "forward_hidden_of"]


def load_model(path: str, *, device="cpu", dtype=None, eot_token_id=None, mask_token_id=None):
    """``(params, cfg)`` from a Hugging Face checkpoint folder of any supported family, recognised from
    ``config.json`` (``model_type`` / ``architectures``): the dense LLaDA, LLaDA2.x (``llada2_moe``) or
    LLaDA-MoE (``llada`` with ``LLaDAMoEModelLM``); an unknown family raises :class:`ConfigError`. dtype
    defaults to bf16 on CUDA, fp32 on CPU; ``eot_token_id`` / ``mask_token_id`` override the ids read from
    the config and tokenizer files."""
    import torch

    from .config import read_config_files

    if dtype is None:
        dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    if detect_family(read_config_files(path)[0]) != "llada":
        cfg = MoEConfig.from_pretrained(path, mask_token_id=mask_token_id, eot_token_id=eot_token_id)
        return load_moe_params(path, cfg, device=device, dtype=dtype), cfg
    cfg = LLaDAConfig.from_pretrained(path, eot_token_id=eot_token_id)
    if mask_token_id is not None:
        cfg = cfg.replace(mask_token_id=int(mask_token_id))
    return load_params(path, cfg, device=device, dtype=dtype), cfg
