"""Which model functions run a config: the one place that maps a config type to its family's forward.

The decoding driver and its cache policies call :func:`forward_hidden_of` (never a family name): the dense
LLaDA and the MoE families (LLaDA2.x, LLaDA-MoE) share the call contract of
:func:`llada_triton.models.model.forward_hidden`.
"""
from __future__ import annotations

from typing import Callable

from . import model, moe_model
from .config import LLaDAConfig
from .moe_config import LLaDA2Config, LLaDAMoEConfig

__all__ = ["forward_hidden_of"]

_FORWARD_HIDDEN = {LLaDAConfig: model.forward_hidden, LLaDA2Config: moe_model.forward_hidden,
                   LLaDAMoEConfig: moe_model.forward_hidden}


def forward_hidden_of(cfg) -> Callable:
    """The ``forward_hidden`` of ``cfg``'s family."""
    fn = _FORWARD_HIDDEN.get(type(cfg))
    if fn is None:
        raise TypeError(f"no model family for a config of type {type(cfg).__name__} "
                        f"(known: {[c.__name__ for c in _FORWARD_HIDDEN]})")
    return fn
