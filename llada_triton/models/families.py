"""Which model family a checkpoint folder holds, read from its ``config.json`` (the one dispatch on it).

A family is a loader ``(path, *, device, dtype, eot_token_id) -> (params, cfg)``; ``cfg.family`` names it
afterwards, and everything downstream reads the config's fields (``qkv_bias``, ``logit_shift``, ids), never
the family name.
"""
from __future__ import annotations

from typing import Callable, Dict

from .config import ConfigError, read_config_files

__all__ = ["FAMILIES", "family_of"]


def _load_llada(path, *, device="cpu", dtype=None, eot_token_id=None):
    import torch

    from .config import LLaDAConfig
    from .weights import load_params

    cfg = LLaDAConfig.from_pretrained(path, eot_token_id=eot_token_id)
    if dtype is None:
        dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    return load_params(path, cfg, device=device, dtype=dtype), cfg


def _load_dream(path, **kw):
    from .dream import load_dream
    return load_dream(path, **kw)


# family -> (model_type values, architectures values, loader)
FAMILIES: Dict[str, tuple] = {
    "llada": (("llada",), ("LLaDAModelLM",), _load_llada),
    "dream": (("Dream",), ("DreamModel",), _load_dream),
}


def family_of(path: str) -> str:
    """The family of the checkpoint folder ``path`` from ``model_type`` (else ``architectures``; LLaDA when
    the config names neither, as ``LLaDAConfig`` reads it)."""
    cfg, _ = read_config_files(path)
    mt, arch = cfg.get("model_type"), cfg.get("architectures") or []
    for name, (types, archs, _) in FAMILIES.items():
        if mt in types or (mt is None and any(a in archs for a in arch)):
            return name
    if mt is None and not arch:
        return "llada"  # LLaDAConfig's default when a config names neither
    known = {n: t[0] for n, t in FAMILIES.items()}
    raise ConfigError(f"config.json model_type={mt!r} (architectures={arch}) is not a supported family; "
                      f"supported model_type values: {known}")


def loader(family: str) -> Callable:
    if family not in FAMILIES:
        raise ValueError(f"family={family!r}; choose one of {sorted(FAMILIES)}")
    return FAMILIES[family][2]
