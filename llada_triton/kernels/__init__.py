"""Triton kernels for masked-diffusion LM decoding (LLaDA), importable on their own.

Every public kernel has a torch reference of the same signature in :mod:`llada_triton.kernels.reference`
(which never imports triton). One op family per module: ``gemm`` (decode GEMM ``linear``, split-K, the shared
K-step), ``mlp`` (SwiGLU), ``attention``, ``norm``, ``rotary``, ``qkv`` (QKV GEMM + RoPE + cache write), ``qkv_norm``
(the same with per-head QK-norm and partial RoPE: LLaDA2.x / LLaDA-MoE),
``confidence`` (LM head / logits -> token and confidence), ``selection`` (which positions to commit);
``_common`` holds launch helpers (PDL, validation, CPU compile checks). Kernel modules are imported lazily, so ``import llada_triton.kernels.reference``
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
    "qkv_proj_norm_rope",
    "head_confidence",
    "logits_confidence",
    "select_transfer",
    "select_commit",
    "commit_step",
    "linear",
    "qkv_rope_cache",
    "moe_route",
    "moe_align",
    "moe_experts",
    "head_dream_confidence",
    "reference",
]

_LAZY = {
    "block_attention": "llada_triton.kernels.attention",
    "rms_norm": "llada_triton.kernels.norm",
    "rope": "llada_triton.kernels.rotary",
    "swiglu_mlp": "llada_triton.kernels.mlp",
    "swiglu_mlp_rms_norm": "llada_triton.kernels.mlp",
    "linear": "llada_triton.kernels.gemm",
    "linear_rms_norm": "llada_triton.kernels.gemm",
    "silu_mul": "llada_triton.kernels.mlp",
    "qkv_proj_rope": "llada_triton.kernels.qkv",
    "qkv_proj_norm_rope": "llada_triton.kernels.qkv_norm",
    "qkv_rope_cache": "llada_triton.kernels.rotary",
    "head_confidence": "llada_triton.kernels.confidence",
    "head_dream_confidence": "llada_triton.kernels.dream_head",
    "logits_confidence": "llada_triton.kernels.confidence",
    "select_transfer": "llada_triton.kernels.selection",
    "select_commit": "llada_triton.kernels.selection",
    "commit_step": "llada_triton.kernels.selection",
    "moe_route": "llada_triton.kernels.moe",
    "moe_align": "llada_triton.kernels.moe",
    "moe_experts": "llada_triton.kernels.moe",
}


def __getattr__(name):
    if name == "reference":
        return importlib.import_module("llada_triton.kernels.reference")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kernels' has no attribute {name!r}")
