"""Strict, streaming weight loading (and saving) for the LLaDA MoE families: a
:class:`llada_triton.models.weights.Params` whose layers are :class:`MoELayerParams`.

Per-expert checkpoint tensors are stacked at load time into the kernels' layout, ``[E, 2I, d]`` gate-up (gate rows
first) and ``[E, d, I]`` down; LLaDA-MoE's separate q/k/v are fused into one ``[(H + 2 Hkv) D, d]`` matrix (LLaDA2's
is fused already). Every target is allocated once on the target device and dtype and filled shard by shard
(:func:`llada_triton.models.weights.stream_checkpoint`: every tensor used, every parameter filled). The router
weight stays in the model dtype (``moe_route`` computes the logits in fp32, as the reference), the expert bias fp32.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch

from .moe_config import MoEConfig, llada2_config_dict, llada2_generation_config
from .weights import Params, fill_random, load_into, new_params, save_checkpoint

__all__ = ["MoELayerParams", "load_moe_params", "moe_param_name_map", "empty_moe_params", "init_moe_params",
           "save_moe_checkpoint"]


@dataclass
class MoELayerParams:
    attn_norm: torch.Tensor                 # [d]
    w_qkv: torch.Tensor                     # [(H + 2 Hkv) D, d]: rows q, then k, then v
    w_o: torch.Tensor                       # [d, H D]
    ff_norm: torch.Tensor                   # [d]
    q_norm: Optional[torch.Tensor] = None   # [D] (QK-norm)
    k_norm: Optional[torch.Tensor] = None   # [D]
    w_gate_up: Optional[torch.Tensor] = None        # dense layer: [2h, d]
    w_down: Optional[torch.Tensor] = None           # dense layer: [d, h]
    router_w: Optional[torch.Tensor] = None         # MoE layer: [E, d] (logits in fp32 by moe_route)
    expert_bias: Optional[torch.Tensor] = None      # fp32 [E] (selection only)
    experts_gate_up: Optional[torch.Tensor] = None  # [E, 2I, d]
    experts_down: Optional[torch.Tensor] = None     # [E, d, I]
    shared_gate_up: Optional[torch.Tensor] = None   # [2Is, d]
    shared_down: Optional[torch.Tensor] = None      # [d, Is]

    @property
    def is_moe(self) -> bool:
        return self.router_w is not None


# checkpoint name -> (param field, layer or None, expert or None, row slice, shape)
Entry = Tuple[str, Optional[int], Optional[int], slice, Tuple[int, ...]]
_NAMES = {  # per family: embeddings, attention (fused qkv or separate q/k/v), q/k norms, output, shared expert
    "llada2": dict(wte="model.word_embeddings.weight", qkv=("attention.query_key_value.weight",),
                   q_norm="attention.query_layernorm.weight", k_norm="attention.key_layernorm.weight",
                   w_o="attention.dense.weight", shared="mlp.shared_experts."),
    "lladamoe": dict(wte="model.embed_tokens.weight",
                     qkv=("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
                     q_norm="self_attn.q_norm.weight", k_norm="self_attn.k_norm.weight", w_o="self_attn.o_proj.weight",
                     shared="shared_expert."),
}


def _swiglu_entries(prefix: str, field_gu: str, field_down: str, layer: int, expert, h: int, d: int):
    return {prefix + "gate_proj.weight": (field_gu, layer, expert, slice(0, h), (h, d)),
            prefix + "up_proj.weight": (field_gu, layer, expert, slice(h, 2 * h), (h, d)),
            prefix + "down_proj.weight": (field_down, layer, expert, slice(None), (d, h))}


def moe_param_name_map(cfg: MoEConfig) -> Dict[str, Entry]:
    """The one explicit map from checkpoint names to slots of :class:`Params`."""
    names = _NAMES[cfg.family]
    d, D, V, E = cfg.d_model, cfg.head_dim, cfg.vocab_size, cfg.n_experts
    nq, nkv = cfg.n_heads * D, cfg.n_kv_heads * D
    m: Dict[str, Entry] = {names["wte"]: ("wte", None, None, slice(None), (V, d)),
                           "model.norm.weight": ("ln_f", None, None, slice(None), (d,))}
    if not cfg.weight_tying:
        m["lm_head.weight"] = ("lm_head", None, None, slice(None), (V, d))
    for i in range(cfg.n_layers):
        b = f"model.layers.{i}."
        m[b + "input_layernorm.weight"] = ("attn_norm", i, None, slice(None), (d,))
        m[b + "post_attention_layernorm.weight"] = ("ff_norm", i, None, slice(None), (d,))
        m[b + names["w_o"]] = ("w_o", i, None, slice(None), (d, nq))
        if len(names["qkv"]) == 1:
            m[b + names["qkv"][0]] = ("w_qkv", i, None, slice(None), (nq + 2 * nkv, d))
        else:
            for name, lo, n in zip(names["qkv"], (0, nq, nq + nkv), (nq, nkv, nkv)):
                m[b + name] = ("w_qkv", i, None, slice(lo, lo + n), (n, d))
        if cfg.qk_norm:
            m[b + names["q_norm"]] = ("q_norm", i, None, slice(None), (D,))
            m[b + names["k_norm"]] = ("k_norm", i, None, slice(None), (D,))
        if not cfg.moe_layers[i]:
            m.update(_swiglu_entries(b + "mlp.", "w_gate_up", "w_down", i, None, cfg.intermediate_size, d))
            continue
        m[b + "mlp.gate.weight"] = ("router_w", i, None, slice(None), (E, d))
        if cfg.expert_bias:
            m[b + "mlp.gate.expert_bias"] = ("expert_bias", i, None, slice(None), (E,))
        for e in range(E):
            m.update(_swiglu_entries(f"{b}mlp.experts.{e}.", "experts_gate_up", "experts_down", i, e,
                                     cfg.moe_intermediate_size, d))
        if cfg.shared_intermediate_size is not None:
            m.update(_swiglu_entries(b + names["shared"], "shared_gate_up", "shared_down", i, None,
                                     cfg.shared_intermediate_size, d))
    return m


def _empty_layer(cfg: MoEConfig, i: int, device, dtype) -> MoELayerParams:
    d, D, E, I = cfg.d_model, cfg.head_dim, cfg.n_experts, cfg.moe_intermediate_size  # noqa: E741
    e = lambda *shape, dt=dtype: torch.empty(shape, device=device, dtype=dt)  # noqa: E731
    lp = MoELayerParams(attn_norm=e(d), w_qkv=e((cfg.n_heads + 2 * cfg.n_kv_heads) * D, d),
                        w_o=e(d, cfg.n_heads * D), ff_norm=e(d))
    if cfg.qk_norm:
        lp.q_norm, lp.k_norm = e(D), e(D)
    if not cfg.moe_layers[i]:
        lp.w_gate_up, lp.w_down = e(2 * cfg.intermediate_size, d), e(d, cfg.intermediate_size)
        return lp
    lp.router_w = e(E, d)
    lp.expert_bias = e(E, dt=torch.float32) if cfg.expert_bias else None
    lp.experts_gate_up, lp.experts_down = e(E, 2 * I, d), e(E, d, I)
    if cfg.shared_intermediate_size is not None:
        Is = cfg.shared_intermediate_size
        lp.shared_gate_up, lp.shared_down = e(2 * Is, d), e(d, Is)
    return lp


def empty_moe_params(cfg: MoEConfig, *, device="cpu", dtype=torch.bfloat16) -> Params:
    """Uninitialised :class:`Params` of ``cfg``'s shapes (RoPE tables filled)."""
    return new_params(cfg, [_empty_layer(cfg, i, device, dtype) for i in range(cfg.n_layers)], cfg.rotary_dim,
                      device=device, dtype=dtype)


def init_moe_params(cfg: MoEConfig, *, device="cpu", dtype=torch.float32, seed: int = 0,
                    std: float = 0.02) -> Params:
    """Random :class:`Params` of ``cfg``'s shapes (norms near 1, expert bias ``std``-sized), made on ``device``:
    for tests and benchmarks at the real shapes without a checkpoint."""
    return fill_random(empty_moe_params(cfg, device=device, dtype=dtype), seed=seed, std=std)


_EXPERT = re.compile(r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.")


def _describe_missing(missing: List[str]) -> str:
    """Missing tensors, naming layer and expert for per-expert ones."""
    matches = [(name, _EXPERT.match(name)) for name in missing[:5]]
    return "e.g. " + ", ".join(f"{n} (layer {m.group(1)}, expert {m.group(2)})" if m else n for n, m in matches)


def load_moe_params(path: str, cfg: MoEConfig, *, device="cpu", dtype: torch.dtype = torch.bfloat16) -> Params:
    """Load a LLaDA2.x / LLaDA-MoE checkpoint folder strictly, shard by shard, to ``device`` and ``dtype``;
    a missing, extra or mis-shaped tensor raises :class:`WeightError` naming it (and, for an expert tensor,
    its layer and expert)."""
    return load_into(path, empty_moe_params(cfg, device=device, dtype=dtype), moe_param_name_map(cfg),
                     describe_missing=_describe_missing)


def save_moe_checkpoint(params: Params, cfg: MoEConfig, path: str, *, dtype: torch.dtype = torch.bfloat16,
                        max_shard_bytes: Optional[int] = None) -> List[str]:
    """:func:`~llada_triton.models.weights.save_checkpoint` under :func:`moe_param_name_map`'s names (per expert;
    LLaDA-MoE's q/k/v apart; the expert bias in fp32); for LLaDA2 also ``config.json`` and ``generation_config.json``
    (the caller adds the tokenizer files). :func:`load_moe_params` reads them back."""
    files = save_checkpoint(params, cfg, path, dtype=dtype, max_shard_bytes=max_shard_bytes,
                            name_map=moe_param_name_map(cfg))
    if cfg.family == "llada2":
        for fname, d in (("config.json", llada2_config_dict(cfg)),
                         ("generation_config.json", llada2_generation_config(cfg))):
            with open(os.path.join(path, fname), "w") as f:
                json.dump(d, f, indent=2)
                f.write("\n")
    return files
