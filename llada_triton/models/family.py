"""Where a model family plugs in: one :class:`Family` record per family, found from the config.

The decoding driver never imports a family's model code: it calls :func:`forward_hidden` and :func:`new_cache`
(dispatch on ``type(cfg).family``), reads ``params.lm_head`` / ``device`` / ``dtype`` and the config fields
``mask_token_id``, ``eos_token_id``, ``eot_token_id``, ``pad_token_id``, ``end_token_ids``, ``vocab_size``,
``max_sequence_length`` and ``logit_shift`` (the head reads rows ``i - logit_shift``: Dream's shifted logits).

Adding a family (as ``llada_triton/models/dream.py``):

1. a frozen config class with those fields, a class attribute ``family = "name"`` and
   ``from_pretrained(path, *, eot_token_id=None)`` (``config.ConfigBase``, ``check_fields`` and ``token_ids`` help);
2. ``forward_hidden(params, cfg, tokens, *, start=0, cache=None, kv_len=None, kv_start=None, key_end=None,
   rows=None, write_from=None, ops=REFERENCE_OPS)`` with the semantics of
   :func:`llada_triton.models.model.forward_hidden` (final normed hidden states; the cache written by position):
   a transformer of the same layer shape is ``model.make_forward_hidden(qkv_step, ffn_step)`` (as ``moe_model``);
3. ``load_params(path, cfg, *, device, dtype)`` returning params with ``lm_head`` ``[V, d]``, ``device``, ``dtype``
   (``weights.load_into`` fills ``weights.new_params`` strictly from a checkpoint name map);
4. a module-level ``FAMILY = Family(name=..., config=..., forward_hidden=..., load_params=...)`` (``new_cache``
   defaults to :meth:`llada_triton.models.model.KVCache.empty`; the drivers only call its ``rows(r0, r1)``);
5. one line in :data:`REGISTRY` (module, config.json ``model_type`` / ``architectures``) for ``load_model``.

Decoding that differs by family plugs into the same record, never an ``if family`` in the driver: ``policies``
replaces cache policies by name (``decode.cache.CachePolicy`` subclasses) and ``schedule`` the linear schedule
(``schedule(n_masked, steps) -> per-step counts``). A family's own official decoder is a ``decoding=`` object
(``decode.llada2.Llada2Decoding``); the CLI (``scripts/generate.py``) and eval defaults
(``llada_triton/eval/options.py``) name such a decoder per family.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

from .config import read_config_files

__all__ = ["Family", "REGISTRY", "family_of", "family_for_config_json", "forward_hidden", "new_cache"]

# family name -> (module defining FAMILY, config.json model_type values, architectures values): one line a family
REGISTRY = {
    "llada": ("llada_triton.models.model", ("llada",), ("LLaDAModelLM",)),
    "llada2": ("llada_triton.models.llada2", ("llada2_moe",), ("LLaDA2MoeModelLM",)),
    "lladamoe": ("llada_triton.models.lladamoe", ("lladamoe",), ("LLaDAMoEModelLM",)),
    "dream": ("llada_triton.models.dream", ("Dream",), ("DreamModel",)),
}


def _default_cache(cfg, batch, t_max, *, device, dtype):
    from .model import KVCache
    return KVCache.empty(cfg, batch, t_max, device=device, dtype=dtype)


@dataclass(frozen=True)
class Family:
    """A model family: its config class, forward and loader, and its decoding hooks (see the module docstring)."""
    name: str
    config: type
    forward_hidden: Callable
    load_params: Callable
    new_cache: Callable = _default_cache     # (cfg, batch, t_max, *, device, dtype) -> a KVCache
    policies: Mapping[str, type] = field(default_factory=dict)  # cache-policy name -> CachePolicy subclass
    schedule: Optional[Callable] = None      # (n_masked, steps) -> per-step counts of a block; None: linear


_LOADED = {}  # (name, registry entry) -> Family: the dispatch runs once per forward, so no import per call


def _load(name: str) -> Family:
    entry = REGISTRY.get(name)
    if entry is None:
        raise ValueError(f"model family {name!r} is not registered; registered: {sorted(REGISTRY)}")
    fam = _LOADED.get((name, entry))
    if fam is None:
        fam = importlib.import_module(entry[0]).FAMILY
        if fam.name != name:
            raise ValueError(f"{entry[0]}.FAMILY is named {fam.name!r}, registered as {name!r}")
        _LOADED[(name, entry)] = fam
    return fam


def family_of(cfg) -> Family:
    """The :class:`Family` of a config object (its class attribute ``family``)."""
    name = getattr(type(cfg), "family", None)
    if name is None:
        raise TypeError(f"cfg of type {type(cfg).__name__} names no model family (class attribute 'family')")
    return _load(name)


def family_for_config_json(path: str) -> Family:
    """The :class:`Family` a checkpoint folder's config.json selects (``architectures``, else ``model_type``)."""
    raw = read_config_files(path)[0]
    model_type, archs = raw.get("model_type"), raw.get("architectures") or []
    # architectures first: LLaDA-MoE's config.json says model_type 'llada' too, its architecture tells it apart
    for name, (_, types, arch_names) in REGISTRY.items():
        if any(a in arch_names for a in archs):
            return _load(name)
    for name, (_, types, arch_names) in REGISTRY.items():
        if model_type in types:
            return _load(name)
    if model_type is None and not archs:  # the original LLaDA release names neither
        return _load("llada")
    known = sorted(t for _, types, _ in REGISTRY.values() for t in types)
    raise ValueError(f"{os.path.join(path, 'config.json')}: model_type={model_type!r} (architectures={archs}) is "
                     f"not a supported model family; supported model_type values: {known}")


def forward_hidden(params, cfg, tokens, **kwargs):
    """The family's ``forward_hidden`` (dispatch on ``cfg``): the one call the decoding driver makes per forward."""
    return family_of(cfg).forward_hidden(params, cfg, tokens, **kwargs)


def new_cache(cfg, batch: int, t_max: int, *, device, dtype):
    """An empty KV cache of ``batch`` rows and ``t_max`` slots for the family of ``cfg``."""
    return family_of(cfg).new_cache(cfg, batch, t_max, device=device, dtype=dtype)
