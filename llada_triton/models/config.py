"""LLaDA model configuration: a frozen dataclass built from a Hugging Face checkpoint folder.

Every field of the reference ``config.json`` is understood: it is either used, ignored on purpose
(training-only or bookkeeping fields, listed in ``_IGNORED``), or checked against the values this
implementation supports, with an error naming the field and the value otherwise.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Optional

__all__ = ["LLaDAConfig", "ConfigError", "token_id_from_tokenizer_files", "read_config_files"]


class ConfigError(ValueError):
    """A configuration value this implementation does not support (names field and value)."""


# Fields that do not change inference numerics here: training, init, bookkeeping, HF plumbing; flash_attention (our
# attention is exact either way); alibi_bias_max / attention_layer_norm_with_affine (their features are rejected);
# mlp_ratio (used only without mlp_hidden_size); the dropouts (checked to be 0 below)
_IGNORED = {
    "architectures", "auto_map", "model_type", "transformers_version", "torch_dtype", "_name_or_path", "init_device",
    "init_fn", "init_std", "init_cutoff_factor", "precision", "use_cache", "flash_attention", "alibi_bias_max",
    "attention_layer_norm_with_affine", "mlp_ratio", "embedding_dropout", "attention_dropout", "residual_dropout",
    "_from_model_config", "return_dict", "output_hidden_states", "output_attentions",
}
_USED = {"d_model", "n_heads", "n_kv_heads", "n_layers", "mlp_hidden_size", "vocab_size", "embedding_size",
         "max_sequence_length", "rope", "rope_theta", "rms_norm_eps", "weight_tying", "mask_token_id", "eos_token_id",
         "pad_token_id", "bos_token_id", "eot_token_id"}
# field -> values we support (anything else raises ConfigError)
_SUPPORTED = {
    "block_type": ("llama",), "alibi": (False,), "rope_full_precision": (True,), "layer_norm_type": ("rms",),
    "layer_norm_with_affine": (True,), "bias_for_layer_norm": (False, None), "include_bias": (False,),
    "include_qkv_bias": (False, None), "attention_layer_norm": (False,), "input_emb_norm": (False,),
    "scale_logits": (False,), "activation_type": ("silu", "swiglu"), "block_group_size": (1,), "clip_qkv": (None,),
    "multi_query_attention": (None, False),
}


class ConfigBase:
    """What every family's config class shares (its dataclass fields include the special token ids)."""
    end_token_ids = property(lambda self: tuple(i for i in (self.eos_token_id, self.eot_token_id) if i is not None),
                             doc="Ids that end an answer: eos and, when known, eot.")

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class LLaDAConfig(ConfigBase):
    """What the model code needs, with the special token ids as fields (never literals in code). ``vocab_size``
    is the number of logits (the checkpoint's ``embedding_size``); ``eot_token_id`` comes from the tokenizer
    (``<|eot_id|>``) or an override; ``family`` names the ``models.family.REGISTRY`` entry that runs it."""
    family: ClassVar[str] = "llada"
    d_model: int
    n_heads: int
    n_kv_heads: int
    n_layers: int
    mlp_hidden_size: int
    vocab_size: int
    max_sequence_length: int = 4096
    rope: bool = True
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    weight_tying: bool = False
    mask_token_id: int = 126336
    eos_token_id: int = 126081
    pad_token_id: int = 126081
    bos_token_id: Optional[int] = None
    eot_token_id: Optional[int] = None
    tokenizer_vocab_size: Optional[int] = None  # the config's ``vocab_size`` (<= vocab_size)
    qkv_bias: bool = False    # q/k/v projections with biases (Qwen2 / Dream)
    logit_shift: int = 0      # position i is predicted from the logits of position i - logit_shift (Dream: 1)
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    end_of_turn: ClassVar[str] = "<|eot_id|>"  # the chat template's end of a turn: ``eot_token_id``

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim={self.head_dim} must be even for RoPE")
        check_token_ids(self)

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any], *, generation: Optional[Mapping[str, Any]] = None,
                  eot_token_id: Optional[int] = None, allow_unknown: bool = False) -> "LLaDAConfig":
        """Build from the parsed ``config.json`` (and ``generation_config.json``)."""
        extra = check_fields(cfg, _USED, _IGNORED, _SUPPORTED, allow_unknown,
                             dropouts=("embedding_dropout", "attention_dropout", "residual_dropout"))
        if cfg.get("model_type", "llada") != "llada":
            raise ConfigError(f"config field model_type={cfg['model_type']!r} is not supported (supported: 'llada')")
        n_heads, d_model = int(cfg["n_heads"]), int(cfg["d_model"])
        n_kv = 1 if cfg.get("multi_query_attention") else cfg.get("n_kv_heads")
        hidden = cfg.get("mlp_hidden_size")
        if hidden is None:
            hidden = int(cfg.get("mlp_ratio", 4)) * d_model
        tok_vocab = int(cfg["vocab_size"])
        emb = int(cfg.get("embedding_size") or tok_vocab)
        if emb < tok_vocab:
            raise ConfigError(f"embedding_size={emb} is smaller than vocab_size={tok_vocab}")
        return cls(
            d_model=d_model, n_heads=n_heads, n_kv_heads=int(n_kv or n_heads), n_layers=int(cfg["n_layers"]),
            mlp_hidden_size=int(hidden), vocab_size=emb, tokenizer_vocab_size=tok_vocab,
            max_sequence_length=int(cfg.get("max_sequence_length", 4096)),
            rope=bool(cfg.get("rope", True)), rope_theta=float(cfg.get("rope_theta", 10000.0)),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)), weight_tying=bool(cfg.get("weight_tying", False)),
            extra=extra, **token_ids(cfg, generation, eot_token_id, eos=126081, mask=126336),
        )

    @classmethod
    def from_pretrained(cls, path: str, *, eot_token_id: Optional[int] = None, mask_token_id: Optional[int] = None,
                        allow_unknown: bool = False) -> "LLaDAConfig":
        """Read ``config.json``, ``generation_config.json`` and the tokenizer's end of turn (``end_of_turn``)
        from a folder (``mask_token_id`` overrides the config's)."""
        cfg, gen = read_config_files(path)
        if mask_token_id is not None:
            cfg = dict(cfg, mask_token_id=int(mask_token_id))
        if eot_token_id is None:
            eot_token_id = token_id_from_tokenizer_files(path, cls.end_of_turn)
        return cls.from_dict(cfg, generation=gen, eot_token_id=eot_token_id, allow_unknown=allow_unknown)


def check_fields(cfg: Mapping[str, Any], used, ignored, supported: Mapping[str, tuple], allow_unknown: bool, *,
                 dropouts=(), what: Optional[Mapping[str, str]] = None, absent_ok: bool = True) -> dict:
    """Check a config.json (any family's): every field used, ignored or in ``supported`` (field -> allowed values;
    an absent one is checked as None unless ``absent_ok``; ``what`` names a field's feature in the error) and the
    ``dropouts`` 0. Returns the ignored fields present (the config's ``extra``)."""
    unknown = sorted(set(cfg) - set(used) - set(ignored) - set(supported))
    if unknown and not allow_unknown:
        raise ConfigError(f"config.json has fields this implementation does not know: {unknown} "
                          "(pass allow_unknown=True to ignore them)")
    for name, allowed in supported.items():
        if (name in cfg or not absent_ok) and cfg.get(name) not in allowed:
            feature = f": {what[name]}" if what and name in what else ""
            raise ConfigError(f"config field {name}={cfg.get(name)!r}{feature} is not supported "
                              f"(supported: {allowed})")
    for name in dropouts:
        if cfg.get(name, 0.0) not in (0, 0.0, None):
            raise ConfigError(f"config field {name}={cfg[name]!r}: inference needs 0.0")
    return {k: cfg[k] for k in cfg if k in ignored}


def token_ids(cfg: Mapping[str, Any], generation: Optional[Mapping[str, Any]], eot_token_id: Optional[int], *,
              eos: Optional[int] = None, mask: Optional[int] = None) -> dict:
    """The special ids as config fields: bos / eos / pad / mask from config.json, else generation_config.json,
    else the defaults ``eos`` / ``mask`` (a list of eos ids gives its first; pad defaults to eos); eot from the
    argument, else config.json."""
    gen = generation or {}
    ids = {n: cfg.get(n, gen.get(n)) for n in ("bos_token_id", "eos_token_id", "pad_token_id", "mask_token_id")}
    if isinstance(ids["eos_token_id"], list):
        ids["eos_token_id"] = ids["eos_token_id"][0]
    for name, default in (("eos_token_id", eos), ("mask_token_id", mask)):
        ids[name] = default if ids[name] is None else ids[name]
    ids["pad_token_id"] = ids["eos_token_id"] if ids["pad_token_id"] is None else ids["pad_token_id"]
    ids["eot_token_id"] = cfg.get("eot_token_id") if eot_token_id is None else eot_token_id
    return {n: None if v is None else int(v) for n, v in ids.items()}


def check_token_ids(cfg) -> None:
    """Every special id of a config (any family's) lies in the vocabulary, and pad differs from mask."""
    for name in ("mask_token_id", "eos_token_id", "pad_token_id", "bos_token_id", "eot_token_id"):
        v = getattr(cfg, name)
        if v is not None and not 0 <= v < cfg.vocab_size:
            hint = " (pass mask_token_id= to load_model)" if name == "mask_token_id" else ""
            raise ConfigError(f"{name}={v} is outside the vocabulary [0, {cfg.vocab_size}){hint}")
    if cfg.pad_token_id == cfg.mask_token_id:
        raise ConfigError(f"pad_token_id={cfg.pad_token_id} must differ from mask_token_id")


def read_json(path: str, default=None):
    """The parsed JSON file at ``path``, or ``default`` when there is no such file."""
    if not os.path.isfile(path):
        return default
    with open(path) as f:
        return json.load(f)


def read_config_files(path: str):
    """``(config.json, generation_config.json or {})`` of a checkpoint folder, parsed."""
    cfg = read_json(os.path.join(path, "config.json"))
    if cfg is None:
        raise FileNotFoundError(f"no config.json in {path!r}")
    return cfg, read_json(os.path.join(path, "generation_config.json"), {})


def token_id_from_tokenizer_files(path: str, content: str) -> Optional[int]:
    """The id of the added token ``content`` from ``tokenizer.json`` / ``tokenizer_config.json``, if present."""
    for name, getter in (("tokenizer.json", lambda d: d.get("added_tokens", [])),
                         ("tokenizer_config.json",
                          lambda d: [dict(v, id=int(k)) for k, v in d.get("added_tokens_decoder", {}).items()])):
        for tok in getter(read_json(os.path.join(path, name), {})):
            if tok.get("content") == content:
                return int(tok["id"])
    return None
