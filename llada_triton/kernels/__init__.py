"""Triton kernels for masked-diffusion LM decoding, importable on their own; each public kernel has a torch
reference of the same signature in :mod:`llada_triton.kernels.reference` (which never imports triton).

One op family per module: ``gemm`` (decode GEMM ``linear`` / ``linear_rms_norm``, split-K, the shared K-loop),
``mlp`` (SwiGLU), ``attention`` (block attention over the KV cache), ``norm`` (RMSNorm), ``rotary`` (RoPE + cache
write), ``qkv`` (QKV GEMM + RoPE + cache write), ``qkv_norm`` (the same with per-head QK-norm and partial RoPE:
LLaDA2.x / LLaDA-MoE), ``confidence`` (LM head / logits -> token and confidence), ``dream_head`` (Dream's head),
``selection`` (which positions to commit), ``moe`` (router, token alignment, grouped experts); ``_common``: launch
helpers (PDL, validation, CPU compile checks). Modules load lazily (importing this package does not import
triton); set ``TRITON_INTERPRET=1`` before the first kernel use to run them on a CPU.
"""
import importlib

_LAZY = {  # public kernel -> its module, in __all__'s order
    "block_attention": "attention", "rms_norm": "norm", "rope": "rotary", "swiglu_mlp": "mlp",
    "swiglu_mlp_rms_norm": "mlp", "linear_rms_norm": "gemm", "silu_mul": "mlp", "qkv_proj_rope": "qkv",
    "qkv_proj_norm_rope": "qkv_norm", "head_confidence": "confidence", "logits_confidence": "confidence",
    "select_transfer": "selection", "select_commit": "selection", "commit_step": "selection", "linear": "gemm",
    "qkv_rope_cache": "rotary", "moe_route": "moe", "moe_align": "moe", "moe_experts": "moe",
    "head_dream_confidence": "dream_head",
}
__all__ = [*_LAZY, "reference"]


def __getattr__(name):
    if name == "reference":
        return importlib.import_module("llada_triton.kernels.reference")
    if name in _LAZY:
        return getattr(importlib.import_module(f"llada_triton.kernels.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'kernels' has no attribute {name!r}")
