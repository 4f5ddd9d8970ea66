"""Dream (Dream-v0-7B, Dream-Coder-7B, DiffuCoder-7B): a Qwen2.5 layout run by the shared dense pure functions
of :mod:`llada_triton.models.model` (q/k/v biases in ``LayerParams.b_qkv``); what is Dream's own is data:
:class:`DreamConfig` (``model_type: "Dream"``; sliding windows, mrope and rope scaling refused by name),
:func:`dream_name_map` (Qwen2 tensor names onto the fused ``w_qkv`` / ``b_qkv`` / ``w_gate_up`` layout), Dream's
schedule (:func:`dream_transfer_counts`, the family's ``schedule`` hook) and the head's **logit shift**: position
``i`` is predicted from the logits of position ``i - 1`` (``cfg.logit_shift = 1``; :func:`shift_logits` on full
logits, row indexing in the decode package's cache policies).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Mapping, Optional

import torch

from .config import ConfigError, LLaDAConfig, check_fields, token_ids
from .family import Family
from .model import forward  # raw (unshifted) logits [B, T, V], as Dream's modeling: row i predicts token i + 1
from .model import forward_hidden
from .weights import Params, load_params

__all__ = ["DreamConfig", "dream_name_map", "load_dream_params", "forward", "shift_logits",
           "dream_step_fractions", "dream_transfer_counts", "dream_schedule", "FAMILY"]

# Fields that do not change inference numerics here (init, bookkeeping, HF plumbing).
_IGNORED = {
    "architectures", "auto_map", "model_type", "transformers_version", "torch_dtype", "_name_or_path",
    "initializer_range", "use_cache", "attention_dropout",  # checked to be 0 below
    "sliding_window", "max_window_layers",  # only read with use_sliding_window, which is refused
    "_from_model_config", "return_dict", "output_hidden_states", "output_attentions",
}
_USED = {"hidden_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers", "intermediate_size",
         "vocab_size", "max_position_embeddings", "rope_theta", "rms_norm_eps", "tie_word_embeddings",
         "mask_token_id", "bos_token_id", "eos_token_id", "pad_token_id"}
# field -> supported values; _WHAT: the feature a field turns on (named in the error)
_SUPPORTED = {"hidden_act": ("silu",), "use_sliding_window": (False, None), "use_mrope": (False, None),
              "rope_scaling": (None,)}
_WHAT = {"hidden_act": "the MLP activation", "use_sliding_window": "sliding-window attention",
         "use_mrope": "mrope (multimodal rotary position ids)", "rope_scaling": "rope scaling (incl. mrope sections)"}


@dataclass(frozen=True)
class DreamConfig(LLaDAConfig):
    """A Dream checkpoint's config: LLaDA's dense fields, q/k/v biases and the logit shift. ``eot_token_id`` is
    ``<|im_end|>`` (a chat turn's end; from the tokenizer files or an override): answers stop there as at eos."""
    qkv_bias: bool = True
    logit_shift: int = 1
    family: ClassVar[str] = "dream"
    end_of_turn: ClassVar[str] = "<|im_end|>"

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any], *, generation: Optional[Mapping[str, Any]] = None,
                  eot_token_id: Optional[int] = None, allow_unknown: bool = False) -> "DreamConfig":
        if cfg.get("model_type") != "Dream":
            raise ConfigError(f"config field model_type={cfg.get('model_type')!r} is not Dream's ('Dream')")
        extra = check_fields(cfg, _USED, _IGNORED, _SUPPORTED, allow_unknown, dropouts=("attention_dropout",),
                             what=_WHAT)
        ids = token_ids(cfg, generation, eot_token_id)
        for name, token in (("eos_token_id", "<|endoftext|>"), ("mask_token_id", "<|mask|>")):
            if ids[name] is None:
                raise ConfigError(f"config.json has no {name} (Dream's {token})")
        V = int(cfg["vocab_size"])
        return cls(d_model=int(cfg["hidden_size"]), n_heads=int(cfg["num_attention_heads"]),
                   n_kv_heads=int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"]),
                   n_layers=int(cfg["num_hidden_layers"]), mlp_hidden_size=int(cfg["intermediate_size"]),
                   vocab_size=V, tokenizer_vocab_size=V,
                   max_sequence_length=int(cfg.get("max_position_embeddings", 32768)),
                   rope=True, rope_theta=float(cfg.get("rope_theta", 10000.0)),
                   rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
                   weight_tying=bool(cfg.get("tie_word_embeddings", False)), extra=extra, **ids)


def dream_name_map(cfg: DreamConfig) -> Dict[str, tuple]:
    """Checkpoint name -> (target param, layer or None, row slice, shape), as ``weights.param_name_map``."""
    d, D, h, V = cfg.d_model, cfg.head_dim, cfg.mlp_hidden_size, cfg.vocab_size
    nq, nkv = cfg.n_heads * D, cfg.n_kv_heads * D
    m = {"model.embed_tokens.weight": ("wte", None, slice(None), (V, d)),
         "model.norm.weight": ("ln_f", None, slice(None), (d,))}
    if not cfg.weight_tying:
        m["lm_head.weight"] = ("lm_head", None, slice(None), (V, d))
    qkv_rows = {"q": slice(0, nq), "k": slice(nq, nq + nkv), "v": slice(nq + nkv, nq + 2 * nkv)}
    for i in range(cfg.n_layers):
        b = f"model.layers.{i}."
        m.update({
            b + "input_layernorm.weight": ("attn_norm", i, slice(None), (d,)),
            b + "self_attn.o_proj.weight": ("w_o", i, slice(None), (d, nq)),
            b + "post_attention_layernorm.weight": ("ff_norm", i, slice(None), (d,)),
            b + "mlp.gate_proj.weight": ("w_gate_up", i, slice(0, h), (h, d)),
            b + "mlp.up_proj.weight": ("w_gate_up", i, slice(h, 2 * h), (h, d)),
            b + "mlp.down_proj.weight": ("w_down", i, slice(None), (d, h)),
        })
        for n, rows in qkv_rows.items():
            size = rows.stop - rows.start
            m[f"{b}self_attn.{n}_proj.weight"] = ("w_qkv", i, rows, (size, d))
            m[f"{b}self_attn.{n}_proj.bias"] = ("b_qkv", i, rows, (size,))
    return m


def load_dream_params(path: str, cfg: DreamConfig, *, device="cpu", dtype=torch.bfloat16) -> Params:
    """A Dream folder's weights, strictly and shard by shard (``weights.load_params`` with Dream's names)."""
    return load_params(path, cfg, device=device, dtype=dtype, name_map=dream_name_map(cfg))


def shift_logits(logits: torch.Tensor, shift: int = 1) -> torch.Tensor:
    """The head's shift on ``[B, T, V]`` logits: position ``i`` takes row ``max(i - shift, 0)`` (Dream's
    ``cat([l[:, :1], l[:, :-1]])`` for ``shift=1``: the first position keeps its own row)."""
    if shift < 0:
        raise ValueError(f"shift={shift} must be >= 0")
    idx = (torch.arange(logits.shape[1], device=logits.device) - shift).clamp_min(0)
    return logits.index_select(1, idx)


def dream_step_fractions(steps: int, eps: float) -> torch.Tensor:
    """Dream's ``1 - s / t`` per step in float32 (``timesteps = linspace(1, eps, steps + 1)``; the last step is 1):
    the fraction of the masked positions a step transfers (``alg='origin'``: each one's probability)."""
    if steps < 1:
        raise ValueError(f"steps={steps}: need at least one step")
    if not 0.0 < float(eps) < 1.0:
        raise ValueError(f"eps={eps} must be in (0, 1)")
    t = torch.linspace(1, float(eps), steps + 1, dtype=torch.float32)
    frac = 1 - t[1:] / t[:-1]
    frac[-1] = 1.0
    return frac


def dream_transfer_counts(n_masked: int, steps: int, eps: float, first: int = 0) -> list:
    """Dream's schedule: host ints, the tokens transferred at steps ``first .. steps - 1`` of a block that has
    ``n_masked`` masked positions at step ``first``. Step ``i < steps - 1`` transfers ``int(n * (1 - s / t))``,
    computed in float32 and truncated (so with ``steps == n_masked`` the first step transfers 0); the last step
    transfers what is left. Fast-dLLM's Dream caches count from ``first = 1`` after the block-start commit."""
    frac, out = dream_step_fractions(steps, eps), []
    for i in range(first, steps):
        n = torch.tensor(float(n_masked), dtype=torch.float32)
        out.append(int(n_masked) if i == steps - 1 else int(n * frac[i]))
        n_masked -= out[-1]
    return out


def dream_schedule(n_masked: int, steps: int) -> list:
    """The family's schedule hook: :func:`dream_transfer_counts` with Dream's default ``eps`` (1e-3)."""
    return dream_transfer_counts(n_masked, steps, 1e-3)


# the dense forward (q/k/v biases from the params, GQA from the config); the shift is read from cfg.logit_shift
FAMILY = Family(name="dream", config=DreamConfig, forward_hidden=forward_hidden, load_params=load_dream_params,
                schedule=dream_schedule)
