"""Configuration of the LLaDA mixture-of-experts families, LLaDA2.x and LLaDA-MoE (one :class:`MoEConfig`; the
family's differences are data, never a run-time ``if family``):

* ``llada2`` (``model_type: llada2_moe``; LLaDA2.0-mini, -flash, LLaDA2.1-mini): fused QKV, GQA, QK-norm, partial
  RoPE, ``first_k_dense_replace`` dense layers, then MoE layers with a sigmoid router (expert bias for the
  selection, group-limited top-k, normalised weights x ``routed_scaling_factor``) and shared experts.
* ``lladamoe`` (``model_type: llada`` + ``LLaDAMoEModelLM``; LLaDA-MoE-7B-A1B): separate q/k/v, QK-norm, RoPE,
  ``moe_layer_freq`` MoE layers with a softmax top-k router (the reference ignores the score function, groups,
  scaling and ``norm_topk_prob`` fields, and so does this one).

Every ``config.json`` field is used, ignored on purpose (listed) or checked against what is supported; anything
else raises a :class:`ConfigError` naming the field and its value.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Optional, Tuple

from .config import (ConfigBase, ConfigError, check_fields, check_token_ids, read_config_files,
                     token_id_from_tokenizer_files, token_ids)

__all__ = ["MoEConfig", "LLaDA2Config", "LLaDAMoEConfig", "detect_family", "llada2_config_dict",
           "llada2_generation_config"]

# the real checkpoints' ids (Ling tokenizer): used when neither the tokenizer files nor an override give them
_MASK_ID = 156895
_EOS_ID = 156892

_COMMON_IGNORED = {"architectures", "auto_map", "model_type", "transformers_version", "torch_dtype", "dtype",
                   "_name_or_path", "initializer_range", "use_cache", "output_router_logits", "_from_model_config",
                   "return_dict", "output_hidden_states", "output_attentions"}
_COMMON_USED = {"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "rms_norm_eps", "tie_word_embeddings", "attention_dropout", "max_position_embeddings", "rope_theta",
                "pad_token_id", "eos_token_id", "bos_token_id", "mask_token_id", "num_experts", "num_experts_per_tok",
                "partial_rotary_factor"}
# field -> values this implementation supports (anything else raises ConfigError naming the field)
_LLADA2_SUPPORTED = {
    "hidden_act": ("silu",), "use_qkv_bias": (False,), "use_bias": (False,), "use_sliding_window": (False, None),
    "rope_scaling": (None,), "norm_head": (False, None), "norm_softmax": (False, None), "use_rmsnorm": (True, None),
    "score_function": ("sigmoid", None), "router_dtype": ("fp32", "float32", None), "norm_topk_prob": (True, None),
    "num_nextn_predict_layers": (0, None), "mtp_layers": (0, None),
}
_LLADA2_IGNORED = {"sliding_window", "max_window_layers",  # only with use_sliding_window (refused)
                   "moe_router_enable_expert_bias",  # the reference gate always has (and loads) expert_bias
                   "router_aux_loss_coef"}
_LLADA2_USED = {"intermediate_size", "use_qk_norm", "embedding_dropout", "output_dropout", "num_shared_experts",
                "n_group", "topk_group", "routed_scaling_factor", "moe_intermediate_size", "first_k_dense_replace",
                "head_dim", "rotary_dim"}
_LLADAMOE_SUPPORTED = {
    "hidden_act": ("silu",), "attention_bias": (False,), "clip_qkv": (None,), "rope_scaling": (None,),
    "moe_router_enable_expert_bias": (False, None),  # the reference adds it to the weights too: not supported
}
_LLADAMOE_IGNORED = {"router_aux_loss_coef",
                     # the reference MoE block ignores these (always softmax top-k, unnormalised, unscaled)
                     "moe_router_score_function", "norm_topk_prob", "routed_scaling_factor", "router_num_group",
                     "router_topk_group"}
_LLADAMOE_USED = {"dense_intermediate_size", "expert_intermediate_size", "shared_expert_intermediate_size",
                  "qk_layernorm", "moe_layer_freq"}


@dataclass(frozen=True)
class MoEConfig(ConfigBase):
    """What the MoE model code needs (the fields the driver reads are named as :class:`LLaDAConfig`'s); instances
    are :class:`LLaDA2Config` or :class:`LLaDAMoEConfig`. ``moe_layers[i]``: layer i is MoE (else a dense SwiGLU
    MLP of ``intermediate_size``); ``rotary_dim`` features of each head rotate (partial RoPE when < head_dim);
    ``shared_intermediate_size``: the shared expert's hidden size (None: none)."""
    family: ClassVar[str] = ""
    logit_shift: ClassVar[int] = 0  # position i is predicted from its own row (no Dream-style shift)
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    n_layers: int
    vocab_size: int
    intermediate_size: int
    moe_layers: Tuple[bool, ...]
    n_experts: int
    top_k: int
    moe_intermediate_size: int
    shared_intermediate_size: Optional[int] = None
    n_group: int = 1
    topk_group: int = 1
    score_func: str = "sigmoid"
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.0
    expert_bias: bool = False
    qk_norm: bool = True
    rotary_dim: Optional[int] = None
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    max_sequence_length: int = 4096
    weight_tying: bool = False
    mask_token_id: int = _MASK_ID
    eos_token_id: int = _EOS_ID
    pad_token_id: int = _EOS_ID
    bos_token_id: Optional[int] = None
    eot_token_id: Optional[int] = None
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        if self.family not in ("llada2", "lladamoe"):
            raise ConfigError(f"{type(self).__name__} is not an MoE family config (use LLaDA2Config or LLaDAMoEConfig)")
        if self.rotary_dim is None:
            object.__setattr__(self, "rotary_dim", self.head_dim)
        if self.n_layers < 1 or len(self.moe_layers) != self.n_layers:
            raise ConfigError(f"n_layers={self.n_layers} with {len(self.moe_layers)} MoE-layer flags")
        if not all(self.moe_layers) and self.intermediate_size < 1:
            raise ConfigError(f"dense layers {[i for i, m in enumerate(self.moe_layers) if not m]} need an "
                              f"intermediate size >= 1, got {self.intermediate_size}")
        if self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads:
            raise ConfigError(f"num_attention_heads={self.n_heads} is not a multiple of "
                              f"num_key_value_heads={self.n_kv_heads}")
        if self.rotary_dim % 2 or not 0 < self.rotary_dim <= self.head_dim:
            raise ConfigError(f"rotary_dim={self.rotary_dim} must be even and in (0, head_dim={self.head_dim}]")
        if self.n_group < 1 or self.n_experts % self.n_group:
            raise ConfigError(f"num_experts={self.n_experts} is not divisible by n_group={self.n_group}")
        if self.n_group > 1 and self.n_experts // self.n_group < 2:
            raise ConfigError(f"n_group={self.n_group}: each group needs >= 2 experts (a group scores its top 2)")
        if not 1 <= self.topk_group <= self.n_group:
            raise ConfigError(f"topk_group={self.topk_group} must be in [1, n_group={self.n_group}]")
        if not 1 <= self.top_k <= self.topk_group * (self.n_experts // self.n_group):
            raise ConfigError(f"num_experts_per_tok={self.top_k} must be in [1, {self.topk_group} groups x "
                              f"{self.n_experts // self.n_group} experts]")
        check_token_ids(self)

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any], *, generation: Optional[Mapping[str, Any]] = None,
                  mask_token_id: Optional[int] = None, eot_token_id: Optional[int] = None,
                  allow_unknown: bool = False) -> "MoEConfig":
        """Build from the parsed ``config.json`` (and ``generation_config.json``) of either family."""
        family = detect_family(cfg)
        if family == "llada":
            raise ConfigError("this config.json is the dense LLaDA (use LLaDAConfig / load_model)")
        target = LLaDA2Config if family == "llada2" else LLaDAMoEConfig
        if cls.family and cls is not target:
            raise ConfigError(f"this config.json is the {family} family, not {cls.family} (use {target.__name__})")
        sup, ign, used = ((_LLADA2_SUPPORTED, _LLADA2_IGNORED, _LLADA2_USED) if family == "llada2" else
                          (_LLADAMOE_SUPPORTED, _LLADAMOE_IGNORED, _LLADAMOE_USED))
        extra = check_fields(cfg, _COMMON_USED | used, _COMMON_IGNORED | ign, sup, allow_unknown, absent_ok=False,
                             dropouts=("embedding_dropout", "attention_dropout", "output_dropout"))
        kw = _llada2_fields(cfg) if family == "llada2" else _lladamoe_fields(cfg)
        ids = token_ids(cfg, generation, eot_token_id, eos=_EOS_ID, mask=_MASK_ID)
        if mask_token_id is not None:
            ids["mask_token_id"] = int(mask_token_id)
        d, H = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
        return target(d_model=d, n_heads=H, n_layers=int(cfg["num_hidden_layers"]),
                   n_kv_heads=int(cfg.get("num_key_value_heads") or H), vocab_size=int(cfg["vocab_size"]),
                   top_k=int(cfg["num_experts_per_tok"]), n_experts=int(cfg["num_experts"]),
                   rope_theta=float(cfg["rope_theta"]), rms_norm_eps=float(cfg["rms_norm_eps"]),
                   max_sequence_length=int(cfg.get("max_position_embeddings", 4096)),
                   weight_tying=bool(cfg.get("tie_word_embeddings", False)), extra=extra, **ids, **kw)

    @classmethod
    def from_pretrained(cls, path: str, *, mask_token_id: Optional[int] = None, eot_token_id: Optional[int] = None,
                        allow_unknown: bool = False) -> "MoEConfig":
        """Read ``config.json``, ``generation_config.json`` and the tokenizer's ``<|mask|>`` (and, for LLaDA-MoE,
        ``<|role_end|>`` as eot) from a folder; explicit ids win."""
        cfg, gen = read_config_files(path)
        if mask_token_id is None:
            mask_token_id = token_id_from_tokenizer_files(path, "<|mask|>")
        if eot_token_id is None and detect_family(cfg) == "lladamoe":
            eot_token_id = token_id_from_tokenizer_files(path, "<|role_end|>")
        return cls.from_dict(cfg, generation=gen, mask_token_id=mask_token_id, eot_token_id=eot_token_id,
                             allow_unknown=allow_unknown)


@dataclass(frozen=True)
class LLaDA2Config(MoEConfig):
    """LLaDA2.x (``llada2_moe``): see the module docstring."""
    family: ClassVar[str] = "llada2"


@dataclass(frozen=True)
class LLaDAMoEConfig(MoEConfig):
    """LLaDA-MoE (``llada`` + ``LLaDAMoEModelLM``): see the module docstring."""
    family: ClassVar[str] = "lladamoe"


def detect_family(cfg: Mapping[str, Any]) -> str:
    """``'llada'`` (dense), ``'llada2'`` or ``'lladamoe'`` from ``model_type`` / ``architectures`` (LLaDA-MoE shares
    ``model_type: llada`` with the dense model: ``LLaDAMoEModelLM`` or a ``num_experts`` field tells them apart)."""
    mt, arch = cfg.get("model_type"), cfg.get("architectures") or []
    if mt == "llada2_moe" or "LLaDA2MoeModelLM" in arch:
        return "llada2"
    if mt in ("llada", "lladamoe", None):
        if "LLaDAMoEModelLM" in arch or mt == "lladamoe" or "num_experts" in cfg:
            return "lladamoe"
        if mt == "llada" or "LLaDAModelLM" in arch:
            return "llada"
    raise ConfigError(f"unknown model family: model_type={mt!r}, architectures={arch!r} "
                      "(supported: llada, llada2_moe / LLaDA2MoeModelLM, llada / LLaDAMoEModelLM)")


def _rotary_dim(cfg, head_dim: int) -> int:
    factor = cfg.get("partial_rotary_factor")
    rd = int(head_dim * (1.0 if factor is None else float(factor)))
    if cfg.get("rotary_dim") is not None and int(cfg["rotary_dim"]) != rd:
        raise ConfigError(f"config field rotary_dim={cfg['rotary_dim']} disagrees with head_dim={head_dim} x "
                          f"partial_rotary_factor={factor} = {rd} (the reference uses the latter)")
    return rd


def _llada2_fields(cfg) -> dict:
    d, H, n = int(cfg["hidden_size"]), int(cfg["num_attention_heads"]), int(cfg["num_hidden_layers"])
    D = int(cfg.get("head_dim") or d // H)
    shared = cfg.get("num_shared_experts")
    if shared is not None and int(shared) < 1:
        raise ConfigError(f"config field num_shared_experts={shared!r} is not supported (null or >= 1)")
    inter, first_dense = int(cfg["moe_intermediate_size"]), int(cfg.get("first_k_dense_replace", 0))
    return dict(head_dim=D, intermediate_size=int(cfg.get("intermediate_size") or 0),
                moe_layers=tuple(i >= first_dense for i in range(n)), moe_intermediate_size=inter,
                shared_intermediate_size=None if shared is None else inter * int(shared),
                n_group=int(cfg.get("n_group") or 1), topk_group=int(cfg.get("topk_group") or 1),
                score_func="sigmoid", norm_topk_prob=True,
                routed_scaling_factor=float(cfg.get("routed_scaling_factor", 1.0)), expert_bias=True,
                qk_norm=bool(cfg.get("use_qk_norm", True)), rotary_dim=_rotary_dim(cfg, D))


def _lladamoe_fields(cfg) -> dict:
    n, D = int(cfg["num_hidden_layers"]), int(cfg["hidden_size"]) // int(cfg["num_attention_heads"])
    freq = cfg.get("moe_layer_freq")
    if not isinstance(freq, (list, tuple)) or len(freq) != n or any(f not in (0, 1) for f in freq):
        raise ConfigError(f"config field moe_layer_freq={freq!r} must list 0 or 1 for each of the {n} layers")
    shared = cfg.get("shared_expert_intermediate_size")
    return dict(head_dim=D, intermediate_size=int(cfg.get("dense_intermediate_size") or 0),
                moe_layers=tuple(bool(f) for f in freq), moe_intermediate_size=int(cfg["expert_intermediate_size"]),
                shared_intermediate_size=None if shared is None else int(shared), n_group=1, topk_group=1,
                score_func="softmax", norm_topk_prob=False, routed_scaling_factor=1.0, expert_bias=False,
                qk_norm=bool(cfg.get("qk_layernorm")), rotary_dim=_rotary_dim(cfg, D))


def llada2_config_dict(cfg: MoEConfig) -> dict:
    """``config.json`` of ``cfg`` with exactly the key set of LLaDA2.0-mini's (the golden ``llada2-tiny`` folder's),
    sorted; fixed fields take the real model's values. Inverse of :meth:`MoEConfig.from_dict` for llada2."""
    if cfg.family != "llada2":
        raise ConfigError(f"llada2_config_dict needs a LLaDA2 config, got family {cfg.family!r}")
    n_dense = cfg.moe_layers.index(True) if any(cfg.moe_layers) else cfg.n_layers
    if any(not m for m in cfg.moe_layers[n_dense:]):
        raise ConfigError(f"LLaDA2 has dense layers first, then MoE layers; moe_layers={cfg.moe_layers}")
    shared = cfg.shared_intermediate_size
    if shared is not None and shared % cfg.moe_intermediate_size:
        raise ConfigError(f"shared_intermediate_size={shared} is not a multiple of moe_intermediate_size="
                          f"{cfg.moe_intermediate_size} (LLaDA2 stores num_shared_experts)")
    d = {
        "architectures": ["LLaDA2MoeModelLM"], "attention_dropout": 0.0,
        "auto_map": {"AutoConfig": "configuration_llada2_moe.LLaDA2MoeConfig",
                     "AutoModel": "modeling_llada2_moe.LLaDA2MoeModel",
                     "AutoModelForCausalLM": "modeling_llada2_moe.LLaDA2MoeModelLM"},
        "dtype": "bfloat16", "embedding_dropout": 0.0, "first_k_dense_replace": n_dense, "head_dim": cfg.head_dim,
        "hidden_act": "silu", "hidden_size": cfg.d_model, "initializer_range": 0.02,
        "intermediate_size": cfg.intermediate_size, "max_position_embeddings": cfg.max_sequence_length,
        "max_window_layers": 28, "model_type": "llada2_moe", "moe_intermediate_size": cfg.moe_intermediate_size,
        "moe_router_enable_expert_bias": True, "n_group": cfg.n_group, "norm_head": False, "norm_softmax": False,
        "norm_topk_prob": True, "num_attention_heads": cfg.n_heads, "num_experts": cfg.n_experts,
        "num_experts_per_tok": cfg.top_k, "num_hidden_layers": cfg.n_layers, "num_key_value_heads": cfg.n_kv_heads,
        "num_shared_experts": None if shared is None else shared // cfg.moe_intermediate_size,
        "output_dropout": 0.0, "output_router_logits": False, "pad_token_id": cfg.pad_token_id,
        "partial_rotary_factor": cfg.rotary_dim / cfg.head_dim, "rms_norm_eps": cfg.rms_norm_eps,
        "rope_scaling": None, "rope_theta": cfg.rope_theta, "rotary_dim": cfg.rotary_dim,
        "routed_scaling_factor": cfg.routed_scaling_factor, "router_dtype": "fp32", "score_function": "sigmoid",
        "sliding_window": 4096, "tie_word_embeddings": cfg.weight_tying, "topk_group": cfg.topk_group,
        "transformers_version": "4.56.0", "use_bias": False, "use_cache": False, "use_qkv_bias": False,
        "use_rmsnorm": True, "use_sliding_window": False, "vocab_size": cfg.vocab_size,
    }
    return dict(sorted(d.items()))


def llada2_generation_config(cfg: MoEConfig) -> dict:
    """``generation_config.json`` as LLaDA2's: eos and pad (LLaDA2's config.json holds neither eos nor mask)."""
    return {"_from_model_config": True, "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id,
            "transformers_version": "4.56.0"}
