"""llada-triton: fast, exact decoding of masked-diffusion language models on hand-written Triton kernels.

Subpackages: :mod:`llada_triton.kernels` (the Triton kernels, each with a torch reference in
``kernels.reference``), :mod:`llada_triton.models` (configs, strict loading, pure-function forwards, ``Ops``)
and :mod:`llada_triton.decode` (the one decoding driver, cache policies, the slot runner). The names below
are re-exported lazily: ``import llada_triton`` imports neither triton nor the model code.
"""
import importlib

__all__ = ["load_model", "triton_ops", "REFERENCE_OPS", "generate", "generate_stream", "run_many", "Workspace"]

_LAZY = {
    "load_model": "llada_triton.models",
    "triton_ops": "llada_triton.models",
    "REFERENCE_OPS": "llada_triton.models",
    "generate": "llada_triton.decode",
    "generate_stream": "llada_triton.decode",
    "run_many": "llada_triton.decode",
    "Workspace": "llada_triton.decode",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'llada_triton' has no attribute {name!r}")
