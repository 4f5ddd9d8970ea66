"""Which implementation runs each op: an explicit record passed to the model and the driver.

``REFERENCE_OPS`` is plain torch (runs anywhere, defines the numerics); ``triton_ops()`` the Triton kernels
(imports triton on call). Mix them with :meth:`Ops.replace`, e.g. ``triton_ops().replace(select=REFERENCE_OPS.select)``
(which also clears the fused ``commit``, so the reference selection really runs).

Which kernel runs each op of a decoding step (``triton_ops()``): QKV projection + RoPE + cache write
``kernels.qkv_proj_rope`` (MoE families: ``kernels.qkv_proj_norm_rope``, with QK-norm and partial RoPE); attention
``kernels.block_attention``; output projection + the MLP's norm ``kernels.linear_rms_norm``; MLP + the next norm
``kernels.swiglu_mlp_rms_norm`` (up to 64 rows; cuBLAS GEMMs around ``kernels.silu_mul`` above); MoE router and
experts ``kernels.moe_route`` / ``kernels.moe_experts``; LM head with sampling and confidence
``kernels.head_confidence`` (Dream: ``kernels.head_dream_confidence``); selection and commit ``kernels.commit_step``
(an ``Ops`` without ``commit`` runs ``select`` inside the torch ``commit_step_ref``). The first layer's input norm,
the final norm, the norm after an MoE block and every norm above 64 rows: ``kernels.rms_norm``; an MoE shared
expert: ``mlp``; GEMMs above 64 rows: cuBLAS. Not used by the driver (for importers): ``kernels.logits_confidence``
(the head on logits already in memory).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from llada_triton.kernels import reference as ref

__all__ = ["Ops", "REFERENCE_OPS", "triton_ops"]


# plain field -> the fused fields built on it (replacing the plain op clears them, see Ops.replace)
FUSED_WITH = {"linear": ("linear_norm", "qkv_proj_rope", "qkv_proj_norm_rope"), "rms_norm": ("linear_norm", "mlp_norm"),
              "qkv_rope": ("qkv_proj_rope",), "qk_norm_rope": ("qkv_proj_norm_rope",), "mlp": ("mlp_norm",),
              "select": ("commit",), "head": ("head_rows",)}


@dataclass(frozen=True)
class Ops:
    """Op implementations; each field has the signature of the ``kernels.reference`` function named.

    linear(x, w, residual=None) -> residual + x @ w.T; rms_norm -> rms_norm_ref; qkv_rope -> qkv_rope_cache_ref
    (RoPE on q/k of the fused projection + K/V into the cache); attention -> block_attention_ref;
    mlp -> swiglu_mlp_ref; head(hidden, w, *, temperature, seed, offset, banned_ids, no_confidence_ids,
    uncond_hidden, cfg_scale) -> (x0, conf) as head_confidence_ref (noise from (seed, offset); with
    ``confidence``, ``top_p``, ``top_k``: Dream's, head_dream_confidence_ref); select -> select_transfer_ref.
    MoE families (None where an ``Ops`` lacks them; the model names the missing field): qk_norm_rope ->
    qkv_norm_rope_cache_ref; moe_route -> moe_route_ref; moe_experts -> moe_experts_ref.

    Fused fields (None: composed from the plain ones; set: run instead of them): linear_norm ->
    linear_rms_norm_ref (output projection + the MLP's norm); mlp_norm -> swiglu_mlp_rms_norm_ref (MLP + the next
    norm); qkv_proj_rope -> qkv_proj_rope_ref (QKV projection, optional q/k/v ``bias``, RoPE, cache write);
    qkv_proj_norm_rope -> qkv_proj_norm_rope_ref (the same with ``qk_norm_rope``); commit -> commit_step_ref
    (selection, commit into the token buffer and NFE count in one launch).

    head_rows: ``head`` also takes ``n_rows`` (0-dim device count) and ``row_ids`` (as ``kernels.head_confidence``):
    the driver then runs it on the block's still-masked rows only, for blocks of more than ``compact_above`` rows
    (batch x block length; below, the head is one weight-bound row tile either way).

    :meth:`replace` clears the fused fields built on a replaced plain field (``FUSED_WITH``) unless the same call
    sets them (``dataclasses.replace`` keeps them).
    """
    name: str
    linear: Callable
    rms_norm: Callable
    qkv_rope: Callable
    attention: Callable
    mlp: Callable
    head: Callable
    select: Callable
    linear_norm: Optional[Callable] = None
    mlp_norm: Optional[Callable] = None
    qkv_proj_rope: Optional[Callable] = None
    commit: Optional[Callable] = None
    qk_norm_rope: Optional[Callable] = None
    qkv_proj_norm_rope: Optional[Callable] = None
    moe_route: Optional[Callable] = None
    moe_experts: Optional[Callable] = None
    head_rows: bool = False
    compact_above: int = 64

    def __post_init__(self):
        if isinstance(self.compact_above, bool) or not isinstance(self.compact_above, int) or self.compact_above < 0:
            raise ValueError(f"Ops.compact_above={self.compact_above!r} must be an int >= 0")

    def replace(self, **changes) -> "Ops":
        """A copy with ``changes``; a replaced plain field clears its fused fields (``FUSED_WITH``) unless
        ``changes`` names them too (``head`` resets ``head_rows`` to False: the new head runs on every row)."""
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise TypeError(f"Ops has no field(s) {unknown}; fields: {[f.name for f in fields(self)]}")
        cleared = {f: False if f == "head_rows" else None
                   for plain, fused in FUSED_WITH.items() if plain in changes for f in fused}
        return dataclasses.replace(self, **{**cleared, **changes})

    def compacts(self, n_rows: int) -> bool:
        """Whether the LM head runs on the masked rows only for a block of ``n_rows`` rows."""
        return self.head_rows and n_rows > self.compact_above


def _linear_ref(x, w, residual=None):
    y = F.linear(x, w)
    return y if residual is None else residual + y


# Up to this many rows (weight-bound) the Triton GEMMs and fused MLP beat cuBLAS (results/decisions.md)
TRITON_MAX_ROWS = 64


def _triton_rows(x) -> bool:
    return x.numel() // x.shape[-1] <= TRITON_MAX_ROWS


def _linear_decode(x, w, residual=None):
    """Triton GEMM for decode-sized inputs (weight-bandwidth bound), cuBLAS above."""
    if _triton_rows(x):
        from llada_triton.kernels import linear
        return linear(x, w, residual)
    return _linear_ref(x, w, residual)


def _head_triton(hidden, w, *, temperature=0.0, seed=0, offset=0, banned_ids=(), no_confidence_ids=(),
                 uncond_hidden=None, cfg_scale=0.0, n_rows=None, row_ids=None, confidence=None, top_p=None,
                 top_k=None):
    """The Triton head: LLaDA's (``kernels.head_confidence``), or with ``confidence`` Dream's
    (``kernels.head_dream_confidence``; no guidance or confidence-only bans there)."""
    if confidence is None:
        from llada_triton.kernels import head_confidence
        return head_confidence(hidden, w, temperature=temperature, seed=seed, offset=offset, banned_ids=banned_ids,
                               no_confidence_ids=no_confidence_ids, uncond_hidden=uncond_hidden,
                               cfg_scale=cfg_scale, n_rows=n_rows, row_ids=row_ids)
    from llada_triton.kernels import head_dream_confidence
    return head_dream_confidence(hidden, w, confidence=confidence, temperature=temperature, top_p=top_p,
                                 top_k=top_k, seed=seed, offset=offset, banned_ids=banned_ids, n_rows=n_rows,
                                 row_ids=row_ids)


def _mlp_ref(x, w_gate_up, w_down, residual=None):
    # separate gate / up products, exactly as the reference modeling code (ff_proj, up_proj)
    h = w_down.shape[1]
    y = F.linear(F.silu(F.linear(x, w_gate_up[:h])) * F.linear(x, w_gate_up[h:]), w_down)
    return y if residual is None else residual + y


def _head_ref(hidden, w, *, temperature=0.0, seed=0, offset=0, banned_ids=(), no_confidence_ids=(),
              uncond_hidden=None, cfg_scale=0.0, confidence=None, top_p=None, top_k=None):
    gen = None
    if temperature > 0:
        gen = torch.Generator(device=hidden.device).manual_seed((int(seed) * 1_000_003 + int(offset)) % (2 ** 63))
    if confidence is not None:  # Dream's confidences (no guidance, no confidence-only bans)
        return ref.head_dream_confidence_ref(hidden, w, confidence=confidence, temperature=temperature,
                                             top_p=top_p, top_k=top_k, generator=gen, banned_ids=banned_ids)
    return ref.head_confidence_ref(hidden, w, temperature=temperature, generator=gen, banned_ids=banned_ids,
                                   no_confidence_ids=no_confidence_ids, uncond_hidden=uncond_hidden,
                                   cfg_scale=cfg_scale)


def _mlp_cublas(x, w_gate_up, w_down):
    """The MLP without its residual: cuBLAS GEMMs (one over the fused gate-up weight) around the Triton
    ``silu_mul`` (one launch for the activation instead of torch's silu and mul)."""
    from llada_triton.kernels import silu_mul
    return F.linear(silu_mul(F.linear(x, w_gate_up)), w_down)


def _add_norm(y, residual, norm_weight, eps):
    """``(rms_norm(h), h)`` with ``h = residual + y`` (one Triton launch: the add fused into the norm)."""
    from llada_triton.kernels import rms_norm
    if residual is None:
        return rms_norm(y, norm_weight, eps), y
    return rms_norm(y, norm_weight, eps, residual)


def _mlp_decode(x, w_gate_up, w_down, residual=None):
    """Fused Triton MLP up to ``TRITON_MAX_ROWS`` rows, cuBLAS GEMMs + the Triton activation above."""
    if not _triton_rows(x):
        y = _mlp_cublas(x, w_gate_up, w_down)
        return y if residual is None else residual + y
    from llada_triton.kernels import swiglu_mlp
    return swiglu_mlp(x, w_gate_up, w_down, residual)


def _linear_norm_decode(x, w, residual, norm_weight, eps):
    """Triton GEMM with the norm folded into its split-K reduction, else cuBLAS + the Triton add-RMSNorm."""
    if _triton_rows(x):
        from llada_triton.kernels import linear_rms_norm
        return linear_rms_norm(x, w, residual, norm_weight, eps)
    return _add_norm(F.linear(x, w), residual, norm_weight, eps)


def _mlp_norm_decode(x, w_gate_up, w_down, residual, norm_weight, eps):
    """:func:`_mlp_decode` with the following RMSNorm (fused into the Triton MLP, or the add-RMSNorm)."""
    if not _triton_rows(x):
        return _add_norm(_mlp_cublas(x, w_gate_up, w_down), residual, norm_weight, eps)
    from llada_triton.kernels import swiglu_mlp_rms_norm
    return swiglu_mlp_rms_norm(x, w_gate_up, w_down, residual, norm_weight, eps)


REFERENCE_OPS = Ops(name="reference", linear=_linear_ref, rms_norm=ref.rms_norm_ref, qkv_rope=ref.qkv_rope_cache_ref,
                    attention=ref.block_attention_ref, mlp=_mlp_ref, head=_head_ref, select=ref.select_transfer_ref,
                    qk_norm_rope=ref.qkv_norm_rope_cache_ref, moe_route=ref.moe_route_ref,
                    moe_experts=ref.moe_experts_ref)


def triton_ops(**overrides) -> Ops:
    """The Triton implementations (imports ``kernels``' Triton modules now); ``overrides`` replace fields through
    :meth:`Ops.replace`. The unfused ``qk_norm_rope`` (used only where ``qkv_proj_norm_rope`` is cleared) stays the
    torch reference."""
    from llada_triton.kernels import (block_attention, commit_step, moe_experts, moe_route, qkv_proj_norm_rope,
                                      qkv_proj_rope, qkv_rope_cache, rms_norm, select_transfer)

    ops = Ops(name="triton", linear=_linear_decode, rms_norm=rms_norm, qkv_rope=qkv_rope_cache,
              attention=block_attention, mlp=_mlp_decode, head=_head_triton, select=select_transfer,
              linear_norm=_linear_norm_decode, mlp_norm=_mlp_norm_decode, qkv_proj_rope=qkv_proj_rope,
              commit=commit_step, head_rows=True, qk_norm_rope=ref.qkv_norm_rope_cache_ref,
              qkv_proj_norm_rope=qkv_proj_norm_rope, moe_route=moe_route, moe_experts=moe_experts)
    return ops.replace(**overrides) if overrides else ops
