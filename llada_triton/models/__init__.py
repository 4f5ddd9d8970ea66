"""Masked-diffusion LMs as pure functions: configs, strict weight loading, forwards, ``Ops``, chat helpers.

* :mod:`.config` / :mod:`.weights` / :mod:`.model`: the dense LLaDA family (config, loader, forward).
* :mod:`.dream`: Dream (Qwen2.5 layout, q/k/v biases, logit shift) on the same dense forward.
* :mod:`.moe_config` / :mod:`.moe_weights` / :mod:`.moe_model`: the LLaDA MoE families, LLaDA2.x
  (:mod:`.llada2`) and LLaDA-MoE (:mod:`.lladamoe`): one config parser, loader and forward for both.
* :mod:`.ops`: :class:`Ops`, which implementation (torch reference or Triton kernel) runs each op.
* :mod:`.family`: the seam a model family plugs into (:class:`Family`, ``REGISTRY``); :func:`forward_hidden`
  and :func:`new_cache` here dispatch on the config's family, and :func:`load_model` picks the family from a
  checkpoint's config.json. A new family is one module with a ``FAMILY`` record and one ``REGISTRY`` line.
"""
from .config import ConfigError, LLaDAConfig
from .dream import DreamConfig
from .family import REGISTRY, Family, family_for_config_json, family_of, forward_hidden, new_cache
from .model import KVCache, forward, logits_from_hidden
from .moe_config import LLaDA2Config, LLaDAMoEConfig, MoEConfig, detect_family
from .moe_weights import MoELayerParams, init_moe_params, load_moe_params, save_moe_checkpoint
from .ops import REFERENCE_OPS, Ops, triton_ops
from .weights import LayerParams, Params, WeightError, init_params, load_params, save_checkpoint

__all__ = ["LLaDAConfig", "DreamConfig", "ConfigError", "Params", "LayerParams", "WeightError", "load_params",
           "init_params", "save_checkpoint", "forward", "forward_hidden", "logits_from_hidden", "KVCache", "Ops",
           "REFERENCE_OPS", "triton_ops", "load_model", "Family", "REGISTRY", "family_of",
           "family_for_config_json", "new_cache", "MoEConfig", "LLaDA2Config", "LLaDAMoEConfig", "MoELayerParams",
           "load_moe_params", "init_moe_params", "save_moe_checkpoint", "detect_family"]


def load_model(path: str, *, device="cpu", dtype=None, eot_token_id=None, mask_token_id=None):
    """``(params, cfg)`` from a Hugging Face checkpoint folder of any registered family (chosen from config.json's
    ``architectures``, else ``model_type``); dtype defaults to bf16 on CUDA, fp32 on CPU. ``eot_token_id`` /
    ``mask_token_id`` override the ids read from the config and tokenizer files (a folder without a tokenizer,
    such as a tiny test checkpoint, may need the mask id: LLaDA2's config.json does not hold it)."""
    import torch

    fam = family_for_config_json(path)
    ids = {} if mask_token_id is None else {"mask_token_id": int(mask_token_id)}
    cfg = fam.config.from_pretrained(path, eot_token_id=eot_token_id, **ids)
    if dtype is None:
        dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    return fam.load_params(path, cfg, device=device, dtype=dtype), cfg
