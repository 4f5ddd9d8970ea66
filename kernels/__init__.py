"""Triton kernels for masked-diffusion LM decoding (LLaDA), importable on their own.

Every public kernel has a torch reference of the same signature in :mod:`kernels.reference`
(which never imports triton). Kernel modules are imported lazily, so ``import kernels.reference``
(or this package) does not import triton; set ``TRITON_INTERPRET=1`` before the first kernel use to
run them on a CPU. Module names differ from function names (``kernels.attention.block_attention``),
so ``kernels.block_attention`` is always the function.
"""
import importlib

__all__ = [
    "block_attention",
    "rms_norm",
    "rope",
    "swiglu_mlp",
    "swiglu_mlp_rms_norm",
    "linear_rms_norm",
    "silu_mul",
    "qkv_proj_rope",
    "head_confidence",
    "logits_confidence",
    "select_transfer",
    "select_commit",
    "commit_step",
    "reference",
]

_LAZY = {
    "block_attention": "kernels.attention",
    "rms_norm": "kernels.norm",
    "rope": "kernels.rotary",
    "swiglu_mlp": "kernels.mlp",
    "swiglu_mlp_rms_norm": "kernels.mlp",
    "linear_rms_norm": "kernels.mlp",
    "silu_mul": "kernels.mlp",
    "qkv_proj_rope": "kernels.qkv",
    "head_confidence": "kernels.remask",
    "logits_confidence": "kernels.remask",
    "select_transfer": "kernels.remask",
    "select_commit": "kernels.remask",
    "commit_step": "kernels.remask",
}


def __getattr__(name):
    if name == "reference":
        return importlib.import_module("kernels.reference")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kernels' has no attribute {name!r}")
