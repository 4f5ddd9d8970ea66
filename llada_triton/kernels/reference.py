"""Torch reference of every kernel in this package (``*_ref``): the model's torch path (``models/ops.py``) and
the tests' oracle. Never imports triton. Each ``*_ref`` has the signature of the kernel of the same stem and
defines its numerics, tie-breaking and output layout.

Layouts: activations ``[batch, tokens, heads, head_dim]`` (``[rows, features]`` for row-wise ops); a KV cache is
``[batch, T_max, n_kv_heads, head_dim]``, preallocated, written by position, holding rotated keys; linear weights
are ``[out_features, in_features]`` (``y = x @ w.T``).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "rms_norm_ref", "rope_tables", "rope_ref", "qkv_rope_cache_ref", "qkv_proj_rope_ref", "qkv_norm_rope_cache_ref",
    "qkv_proj_norm_rope_ref", "block_attention_ref", "swiglu_mlp_ref", "silu_mul_ref", "linear_rms_norm_ref",
    "swiglu_mlp_rms_norm_ref", "head_confidence_ref", "logits_confidence_ref", "select_transfer_ref",
    "commit_step_ref", "select_threshold_topk_ref", "filter_top_p_top_k_ref", "dream_confidence_ref",
    "head_dream_confidence_ref", "philox_gumbel_ref", "moe_route_ref", "moe_align_ref", "moe_experts_ref",
]


def check_eps(eps) -> float:
    """An RMSNorm ``eps`` as a float >= 0, or a ValueError (shared with the Triton norms)."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"eps must be a float >= 0, got {eps!r}")
    return float(eps)


def check_not_nan(name: str, v) -> None:
    """A ValueError when the rule value ``v`` is NaN (it would silently commit something else); None passes."""
    if v is not None and math.isnan(float(v)):
        raise ValueError(f"{name} must be a number (+-inf allowed), got {v}")


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: Optional[torch.Tensor] = None):
    """LLaDA's RMSNorm (:func:`llada_triton.kernels.norm.rms_norm`): ``h = x + residual`` in ``x.dtype``, then
    ``y = weight * (h.float() * rsqrt(mean(h.float()**2) + eps)).to(x.dtype)``; ``y``, or ``(y, h)`` with a
    residual."""
    eps = check_eps(eps)
    h = x if residual is None else x + residual
    hf = h.float()
    y = weight * (hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)).to(h.dtype)
    return y if residual is None else (y, h)


def rope_tables(head_dim: int, theta: float, length: int, device=None):
    """fp32 ``(cos, sin)`` tables ``[length, head_dim]`` for positions ``0..length-1``, built as the reference
    modeling code does (CPU, fp32, ``cat(freqs, freqs)``), then moved to ``device``: bit-identical values."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
    seq = torch.arange(length, dtype=torch.float)
    freqs = torch.einsum("i , j -> i j", seq, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(device), emb.sin().to(device)


def _rotate(xf: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Half-split rotation of the first ``cos.shape[-1]`` features of fp32 ``xf``; the others pass through."""
    R = cos.shape[-1]
    r = xf[..., :R]
    half = R // 2
    out = r * cos + torch.cat((-r[..., half:], r[..., :half]), dim=-1) * sin
    return out if R == xf.shape[-1] else torch.cat((out, xf[..., R:]), dim=-1)


def rope_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Half-split (NeoX) RoPE in fp32 (:func:`llada_triton.kernels.rotary.rope`): x ``[B, T, H, D]``; cos, sin fp32
    ``[T, R]``, ``R <= D`` even (``R < D``: partial RoPE, the other features pass through). Returns
    ``x * cos + rotate_half(x) * sin`` in ``x.dtype``."""
    return _rotate(x.float(), cos[None, :, None, :], sin[None, :, None, :]).to(x.dtype)


def qkv_rope_cache_ref(qkv: torch.Tensor, cos_table: torch.Tensor, sin_table: torch.Tensor, start,
                       k_cache: Optional[torch.Tensor] = None, v_cache: Optional[torch.Tensor] = None, *,
                       n_heads: int, write_from: Optional[torch.Tensor] = None):
    """Torch reference of :func:`llada_triton.kernels.rotary.qkv_rope_cache` (arguments there), without its in-place
    rotation of ``qkv``; cos_table, sin_table may be ``[L, R]`` with ``R < D`` (partial RoPE)."""
    B, T, NH, _ = qkv.shape
    H = n_heads
    Hkv = (NH - H) // 2
    per_row = isinstance(start, torch.Tensor) and start.dim() == 1
    pos = (start[:, None] if per_row else start) + torch.arange(T, device=qkv.device)  # [B, T] or [T]
    cos, sin = cos_table[pos][..., None, :], sin_table[pos][..., None, :]              # [(B,) T, 1, R]
    q, k = (_rotate(t.float(), cos, sin).to(t.dtype) for t in (qkv[:, :, :H], qkv[:, :, H:H + Hkv]))
    v = qkv[:, :, H + Hkv:]
    if k_cache is None:
        return q, k, v
    if per_row or write_from is not None:
        pos = pos.expand(B, T)
        rows = torch.arange(B, device=qkv.device)[:, None]
        keep = torch.ones(B, T, dtype=torch.bool, device=qkv.device) if write_from is None else \
            pos >= write_from[:, None]
        m = keep[:, :, None, None]
        k_cache[rows, pos] = torch.where(m, k, k_cache[rows, pos])   # no host sync: graph-capturable
        v_cache[rows, pos] = torch.where(m, v, v_cache[rows, pos])
    elif isinstance(start, torch.Tensor):
        k_cache.index_copy_(1, pos, k)
        v_cache.index_copy_(1, pos, v)
    else:
        k_cache[:, start:start + T] = k
        v_cache[:, start:start + T] = v
    return q, k_cache, v_cache


def qkv_proj_rope_ref(x: torch.Tensor, w_qkv: torch.Tensor, cos_table: torch.Tensor, sin_table: torch.Tensor,
                      start, k_cache: Optional[torch.Tensor] = None, v_cache: Optional[torch.Tensor] = None, *,
                      n_heads: int, write_from: Optional[torch.Tensor] = None, head_dim: Optional[int] = None,
                      bias: Optional[torch.Tensor] = None):
    """Torch reference of :func:`llada_triton.kernels.qkv.qkv_proj_rope`: :func:`qkv_proj_norm_rope_ref` without
    QK-norm (the projection, then :func:`qkv_rope_cache_ref`)."""
    return qkv_proj_norm_rope_ref(x, w_qkv, None, None, 0.0, cos_table, sin_table, start, k_cache, v_cache,
                                  n_heads=n_heads, write_from=write_from, head_dim=head_dim, bias=bias)


def qkv_norm_rope_cache_ref(qkv: torch.Tensor, q_norm: Optional[torch.Tensor], k_norm: Optional[torch.Tensor],
                            eps: float, cos_table: torch.Tensor, sin_table: torch.Tensor, start,
                            k_cache: Optional[torch.Tensor] = None, v_cache: Optional[torch.Tensor] = None, *,
                            n_heads: int, write_from: Optional[torch.Tensor] = None):
    """Per-head QK-norm (LLaDA2.x, LLaDA-MoE): :func:`rms_norm_ref` of every q head with ``q_norm`` ``[D]`` and of
    every k head with ``k_norm`` (both None: none; values are not normed), then :func:`qkv_rope_cache_ref`."""
    if (q_norm is None) != (k_norm is None):
        raise ValueError("q_norm and k_norm must both be given or both be None")
    if q_norm is not None:
        H = n_heads
        Hkv = (qkv.shape[2] - H) // 2
        qkv = torch.cat([rms_norm_ref(qkv[:, :, :H], q_norm, eps), rms_norm_ref(qkv[:, :, H:H + Hkv], k_norm, eps),
                         qkv[:, :, H + Hkv:]], dim=2)
    return qkv_rope_cache_ref(qkv, cos_table, sin_table, start, k_cache, v_cache, n_heads=n_heads,
                              write_from=write_from)


def qkv_proj_norm_rope_ref(x: torch.Tensor, w_qkv: torch.Tensor, q_norm: Optional[torch.Tensor],
                           k_norm: Optional[torch.Tensor], eps: float, cos_table: torch.Tensor, sin_table: torch.Tensor,
                           start, k_cache: Optional[torch.Tensor] = None, v_cache: Optional[torch.Tensor] = None, *,
                           n_heads: int, write_from: Optional[torch.Tensor] = None, head_dim: Optional[int] = None,
                           bias: Optional[torch.Tensor] = None):
    """Torch reference of :func:`llada_triton.kernels.qkv_norm.qkv_proj_norm_rope` (LLaDA2.x / LLaDA-MoE):
    ``F.linear(x, w_qkv, bias)`` (rounded once to ``x.dtype``) viewed as ``[B, T, NH, D]`` (``D = head_dim``,
    default the caches' head dim, else ``d // n_heads``), then :func:`qkv_norm_rope_cache_ref`."""
    B, T, d = x.shape
    D = head_dim if head_dim is not None else k_cache.shape[-1] if k_cache is not None else d // n_heads
    qkv = F.linear(x, w_qkv, bias).view(B, T, w_qkv.shape[0] // D, D)
    return qkv_norm_rope_cache_ref(qkv, q_norm, k_norm, eps, cos_table, sin_table, start, k_cache, v_cache,
                                   n_heads=n_heads, write_from=write_from)


def attention_mask(batch: int, n_q: int, kv_len: int, device, kv_start=None, key_end=None):
    """Boolean ``[B, 1, n_q, kv_len]`` mask (True = attend) of :func:`block_attention_ref`, or None."""
    if kv_start is None and key_end is None:
        return None
    keys = torch.arange(kv_len, device=device)
    mask = torch.ones(batch, 1, n_q, kv_len, dtype=torch.bool, device=device)
    if kv_start is not None:
        mask = mask & (keys[None, None, None, :] >= kv_start.to(device).view(batch, 1, 1, 1))
    if key_end is not None:  # [n_q] shared by the batch, or [B, n_q] per batch row
        ke = key_end.to(device).view(batch if key_end.dim() == 2 else 1, 1, n_q, 1)
        mask = mask & (keys[None, None, None, :] < ke)
    return mask


def block_attention_ref(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                        kv_len: int, kv_start: Optional[torch.Tensor] = None,
                        key_end: Optional[torch.Tensor] = None,
                        scale: Optional[float] = None) -> torch.Tensor:
    """Torch reference of :func:`llada_triton.kernels.attention.block_attention` (arguments there): SDPA over the
    first ``kv_len`` slots, kv heads repeated for GQA, the mask of :func:`attention_mask`."""
    B, Tq, H, D = q.shape
    Hkv = k_cache.shape[2]
    k = k_cache[:, :kv_len].transpose(1, 2)
    v = v_cache[:, :kv_len].transpose(1, 2)
    if Hkv != H:
        k = k.repeat_interleave(H // Hkv, dim=1)
        v = v.repeat_interleave(H // Hkv, dim=1)
    mask = attention_mask(B, Tq, kv_len, q.device, kv_start, key_end)
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=mask, scale=scale)
    return o.transpose(1, 2)


def silu_mul_ref(gate_up: torch.Tensor) -> torch.Tensor:
    """SwiGLU's activation on a fused gate-up product ``[..., 2h]``: ``silu(gate) * up`` ``[..., h]``."""
    h = gate_up.shape[-1] // 2
    return F.silu(gate_up[..., :h]) * gate_up[..., h:]


def swiglu_mlp_ref(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor,
                   residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``residual + (silu(x @ Wg.T) * (x @ Wu.T)) @ w_down.T`` (:func:`llada_triton.kernels.mlp.swiglu_mlp`), each
    matmul output rounded to ``x.dtype``. w_gate_up ``[2h, d]``: gate rows (LLaDA's ``ff_proj``), then up rows."""
    y = silu_mul_ref(x @ w_gate_up.t()) @ w_down.t()
    return y if residual is None else residual + y


def linear_rms_norm_ref(x: torch.Tensor, w: torch.Tensor, residual: Optional[torch.Tensor],
                        norm_weight: torch.Tensor, eps: float):
    """:func:`llada_triton.kernels.gemm.linear_rms_norm`: ``h = residual + x @ w.T`` (the product rounded to
    ``x.dtype`` first), ``y = rms_norm_ref(h, norm_weight, eps)``; returns ``(y, h)``."""
    y = x @ w.t()
    h = y if residual is None else residual + y
    return rms_norm_ref(h, norm_weight, eps), h


def swiglu_mlp_rms_norm_ref(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor,
                            residual: Optional[torch.Tensor], norm_weight: torch.Tensor, eps: float):
    """:func:`swiglu_mlp_ref` then the RMSNorm of its output ``h`` (residual included); returns ``(y, h)``."""
    h = swiglu_mlp_ref(x, w_gate_up, w_down, residual)
    return rms_norm_ref(h, norm_weight, eps), h


def head_confidence_ref(hidden: torch.Tensor, w_head: torch.Tensor, *,
                        temperature: float = 0.0, generator: Optional[torch.Generator] = None,
                        banned_ids: Sequence[int] = (), no_confidence_ids: Sequence[int] = (),
                        uncond_hidden: Optional[torch.Tensor] = None, cfg_scale: float = 0.0,
                        n_rows: Optional[torch.Tensor] = None, row_ids: Optional[torch.Tensor] = None):
    """Torch reference of :func:`llada_triton.kernels.confidence.head_confidence`: :func:`logits_confidence_ref`
    of ``hidden @ w_head.T`` rounded to the hidden dtype (CFG with ``uncond_hidden @ w_head.T``)."""
    uncond_logits = None if uncond_hidden is None else uncond_hidden @ w_head.t()
    return logits_confidence_ref(hidden @ w_head.t(), temperature=temperature, generator=generator,
                                 banned_ids=banned_ids, no_confidence_ids=no_confidence_ids,
                                 uncond_logits=uncond_logits, cfg_scale=cfg_scale, n_rows=n_rows, row_ids=row_ids)


def logits_confidence_ref(logits: torch.Tensor, *, temperature: float = 0.0,
                          generator: Optional[torch.Generator] = None, banned_ids: Sequence[int] = (),
                          no_confidence_ids: Sequence[int] = (), uncond_logits: Optional[torch.Tensor] = None,
                          cfg_scale: float = 0.0, n_rows: Optional[torch.Tensor] = None,
                          row_ids: Optional[torch.Tensor] = None):
    """Torch reference of :func:`llada_triton.kernels.confidence.logits_confidence` (semantics there), in fp32.
    Its Gumbel noise is one fp64 ``[M, V]`` draw from ``generator``; row i takes row ``row_ids[i]`` of it
    (values in ``[0, M)``). ``n_rows`` is ignored (every row is computed). ``banned_ids`` is the official
    ``logits_eos_inf``, ``no_confidence_ids`` its ``confidence_eos_eot_inf``."""
    logits = logits.float()  # a copy unless already fp32 (then cloned below)
    if uncond_logits is not None:
        lu = uncond_logits.float()
        logits = lu + (cfg_scale + 1.0) * (logits - lu)
    elif logits.dtype == torch.float32 and (len(banned_ids) or len(no_confidence_ids)):
        logits = logits.clone()  # the -inf writes below must not reach the caller's tensor
    if len(banned_ids):
        logits[:, list(banned_ids)] = float("-inf")
    if temperature > 0:
        u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float64)
        if row_ids is not None:
            M = logits.shape[0]
            if row_ids.shape != (M,) or (M and not bool(((row_ids >= 0) & (row_ids < M)).all())):
                raise ValueError(f"row_ids must be [{M}] with values in [0, {M}), got shape {tuple(row_ids.shape)}")
            u = u[row_ids.to(u.device).long()]
        g = -torch.log(-torch.log(u.clamp_min(1e-300)))
        x0 = torch.argmax(logits.double() / temperature + g, dim=-1)
    else:
        x0 = torch.argmax(logits, dim=-1)
    if len(no_confidence_ids):
        logits[:, list(no_confidence_ids)] = float("-inf")
    lse = torch.logsumexp(logits, dim=-1)
    conf = torch.exp(logits.gather(-1, x0[:, None])[:, 0] - lse)
    return x0, conf


def select_transfer_ref(conf: torch.Tensor, masked: torch.Tensor, *,
                        k: Optional[torch.Tensor] = None, threshold: Optional[float] = None,
                        factor: Optional[float] = None) -> torch.Tensor:
    """Torch reference of :func:`llada_triton.kernels.selection.select_transfer` (rules and ranking there);
    the factor rule is :func:`_factor_count`. Returns bool ``[B, L]``."""
    if sum(r is not None for r in (k, threshold, factor)) != 1:
        raise ValueError("select_transfer_ref: give exactly one of k, threshold, factor")
    for name, v in (("threshold", threshold), ("factor", factor)):
        check_not_nan(name, v)
    L = conf.shape[1]
    key, order = _masked_order(conf, masked)
    ranked = key.gather(1, order)
    n_masked = masked.sum(1)
    if k is not None:
        count = torch.minimum(k.to(n_masked.device).long(), n_masked)
    elif threshold is not None:
        # the top-1 always; the others pass individually (sorted, so a count works)
        passing = (ranked >= threshold) & (torch.arange(L, device=conf.device)[None, :] < n_masked[:, None])
        count = torch.where(n_masked > 0, torch.clamp(passing[:, 1:].sum(1) + 1, max=L), n_masked)
    else:
        count = _factor_count(ranked, n_masked, factor)
    return _take_first(order, count, masked)


def select_threshold_topk_ref(conf: torch.Tensor, masked: torch.Tensor, *, k: torch.Tensor,
                              threshold: float) -> torch.Tensor:
    """LLaDA2.x's rule: every masked position with ``conf > threshold`` (strict) when there are at least ``k[b]``
    of them, else the ``min(k[b], #masked)`` most confident masked ones (``k = 0``: only those above the
    threshold; ``threshold >= 1``: pure top-k). conf fp32 / masked bool ``[B, L]``, k int ``[B]``; ranking as
    :func:`select_transfer_ref`. Returns bool ``[B, L]``."""
    check_not_nan("threshold", threshold)
    key, order = _masked_order(conf, masked)
    n_masked = masked.sum(1)
    n_high = (masked & (key > threshold)).sum(1)
    k = k.to(n_masked.device).long()
    return _take_first(order, torch.where(n_high >= k, n_high, torch.minimum(k, n_masked)), masked)


def commit_step_ref(tokens: torch.Tensor, start, x0: torch.Tensor, conf: torch.Tensor, *, mask_id: int,
                    done: Optional[torch.Tensor] = None, k: Optional[torch.Tensor] = None,
                    threshold: Optional[float] = None, factor: Optional[float] = None,
                    nfe: Optional[torch.Tensor] = None, select=select_transfer_ref):
    """Torch reference of :func:`llada_triton.kernels.selection.commit_step` (semantics there), in place on
    ``tokens``. ``select`` (not in the kernel's signature) is the selection rule, for ablations."""
    B, T = tokens.shape
    L = x0.shape[1]
    dev = tokens.device
    s = start.to(dev).long().expand(B) if isinstance(start, torch.Tensor) else torch.full((B,), int(start), device=dev)
    cols = s[:, None] + torch.arange(L, device=dev)[None, :]
    ok = (s >= 0) & (s + L <= T)
    cols = torch.where(ok[:, None], cols, torch.zeros_like(cols))
    block = tokens.gather(1, cols)
    masked = (block == mask_id) & ok[:, None]
    if done is not None:
        masked &= ~done.to(dev)[:, None]
    c = torch.where(masked, conf.float(), float("-inf"))
    committed = select(c, masked, k=k, threshold=threshold, factor=factor)
    new = torch.where(committed, x0, block)
    tokens.scatter_(1, cols, torch.where(ok[:, None], new, block))
    if nfe is not None:
        nfe.add_(masked.any(1).to(nfe.dtype))
    return committed, c, torch.where(ok[:, None], new, torch.full_like(new, -1))


def _masked_order(conf: torch.Tensor, masked: torch.Tensor):
    """``(key, order)``: fp32 ``conf`` with ``-inf`` off the masked positions, and each row's positions by (masked
    desc, key desc, index asc): stable sorts by key, then by the masked flag."""
    key = torch.where(masked, conf.float(), torch.full_like(conf, float("-inf"), dtype=torch.float))
    o1 = torch.sort(key, dim=1, descending=True, stable=True).indices
    m1 = masked.gather(1, o1).to(torch.int8)
    o2 = torch.sort(m1, dim=1, descending=True, stable=True).indices
    return key, o1.gather(1, o2)


def _take_first(order: torch.Tensor, count: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """The first ``count[b]`` positions of each row's ``order``, as a bool ``[B, L]`` mask within ``masked``."""
    take = torch.arange(masked.shape[1], device=masked.device)[None, :] < count[:, None]
    return torch.zeros(masked.shape, dtype=torch.bool, device=masked.device).scatter_(1, order, take) & masked


def _factor_count(ranked: torch.Tensor, n_masked: torch.Tensor, factor: float) -> torch.Tensor:
    """Fast-dLLM's ``get_transfer_index_dynamic`` count on descending-sorted confidences ``c_0 >= c_1 >= ...``:
    rank 0 always passes, rank ``i > 0`` needs ``c_i >= 1 - factor / (i + 2)`` (fp64); the count is the first
    failing rank, bumped by one when it is 0 or ``n - 1`` (Fast-dLLM's loop variable), at most ``n``."""
    out = torch.zeros(ranked.shape[0], dtype=torch.long, device=ranked.device)
    for b in range(ranked.shape[0]):
        n, i = int(n_masked[b]), 0
        while i < n and not float(ranked[b, i]) < (-1.0 if i == 0 else 1.0 - factor / (i + 2)):
            i += 1
        out[b] = min(i + 1 if i in (0, n - 1) else i, n)
    return out


DREAM_CONFIDENCES = ("prob", "margin", "neg_entropy")


def filter_top_p_top_k_ref(logits: torch.Tensor, top_p: Optional[float] = None,
                           top_k: Optional[int] = None) -> torch.Tensor:
    """Dream's nucleus then top-k filter on fp32 logits ``[M, V]`` (a new tensor): a removed id gets
    ``finfo.min``. top-p keeps the shortest prefix of the descending ids whose softmax mass exceeds ``top_p``
    (the id that crosses it included; the top-1 always); top-k keeps ids with logits ``>=`` the k-th largest."""
    out = logits.clone()
    low = torch.finfo(out.dtype).min
    if top_p is not None and top_p < 1:
        sl, si = torch.sort(out, dim=-1, descending=True)
        drop = torch.cumsum(torch.softmax(sl, dim=-1), dim=-1) > top_p
        drop[..., 1:] = drop[..., :-1].clone()
        drop[..., 0] = False
        out = out.masked_fill(torch.zeros_like(drop).scatter_(-1, si, drop), low)
    if top_k is not None:
        kth = torch.topk(out, min(int(top_k), out.shape[-1]), dim=-1).values[..., -1:]
        out = out.masked_fill(out < kth, low)
    return out


_U32 = 0xFFFFFFFF


def _mulhilo32(a: torch.Tensor, b: int):
    """(high, low) 32-bit words of ``a * b`` (int64 ``a < 2^32``, 32-bit ``b``), by 16-bit halves: no overflow."""
    x, y = a * (b & 0xFFFF), a * (b >> 16)  # < 2^48 each
    return (y + (x >> 16)) >> 16, (x + ((y & 0xFFFF) << 16)) & _U32


def philox_gumbel_ref(seed: int, offset: int, rows: torch.Tensor, V: int) -> torch.Tensor:
    """The Triton heads' Gumbel noise (``kernels.confidence.gumbel_noise``) in torch, fp32 ``[len(rows), V]``:
    entry ``(i, v)`` from counter ``(v, rows[i], offset)``, each step in fp32 as the kernel. The integer stream
    is bit-exact; the logs may differ from the device's in the last ulp."""
    c1 = rows.to(torch.int64).reshape(-1, 1) & _U32
    c0 = torch.arange(V, dtype=torch.int64, device=c1.device).reshape(1, -1) + c1 * 0
    c1 = c1 + c0 * 0
    c2 = torch.full_like(c0, offset & _U32)
    c3 = torch.full_like(c0, (offset >> 32) & _U32)
    k0, k1 = seed & _U32, (seed >> 32) & _U32
    for _ in range(10):
        hi0, lo0 = _mulhilo32(c0, 0xD2511F53)
        hi2, lo2 = _mulhilo32(c2, 0xCD9E8D57)
        c0, c1, c2, c3 = hi2 ^ c1 ^ k0, lo2, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + 0x9E3779B9) & _U32, (k1 + 0xBB67AE85) & _U32
    w = ((c0.to(torch.float32) + 0.5) * 2.3283064365386963e-10).clamp_max(0.99999994)
    u = 1.0 - w
    den = torch.where(u == 1.0, 1.0, 1.0 - u)
    e = torch.where(u == 1.0, w, -torch.log(u) * (w / den))
    return -torch.log(e)


def dream_confidence_ref(logits: torch.Tensor, *, confidence: str = "prob", temperature: float = 0.0,
                         top_p: Optional[float] = None, top_k: Optional[int] = None,
                         generator: Optional[torch.Generator] = None, banned_ids: Sequence[int] = (),
                         row_ids: Optional[torch.Tensor] = None, gumbel: Optional[torch.Tensor] = None):
    """Dream's ``sample_tokens`` in fp32: ``(x0 int64 [M], conf fp32 [M])`` from logits ``[M, V]``.

    ``p = softmax(filter_top_p_top_k(l / T))`` (``l`` at ``T = 0``; ``banned_ids`` get ``-inf`` first); ``x0`` is
    ``argmax(p)`` at ``T = 0``, else ``argmax(filtered l / T + g)`` with ``g`` = ``gumbel`` ``[M, V]`` when given
    (the Triton head's noise, :func:`philox_gumbel_ref`), else the noise of :func:`logits_confidence_ref` (not
    Dream's ``Categorical`` stream). The confidence, on ``p``: ``"prob"`` ``p[x0]`` (maskgit_plus), ``"margin"``
    top-1 minus top-2 (topk_margin), ``"neg_entropy"`` ``sum(p * log(p + 1e-10))`` (<= 0, higher is surer).
    """
    if confidence not in DREAM_CONFIDENCES:
        raise ValueError(f"confidence={confidence!r}; choose one of {DREAM_CONFIDENCES}")
    l = logits.float().clone()
    if len(banned_ids):
        l[:, list(banned_ids)] = float("-inf")
    if temperature > 0:
        l = l / temperature
    l = filter_top_p_top_k_ref(l, top_p, top_k)
    probs = torch.softmax(l, dim=-1)
    if temperature > 0 and gumbel is not None:
        if gumbel.shape != l.shape:
            raise ValueError(f"gumbel must be {tuple(l.shape)} like the logits, got {tuple(gumbel.shape)}")
        x0 = torch.argmax(l + gumbel.to(l.device, torch.float32), dim=-1)
    elif temperature > 0:
        x0, _ = logits_confidence_ref(l, temperature=1.0, generator=generator, row_ids=row_ids)
    else:
        x0 = torch.argmax(probs, dim=-1)
    if confidence == "prob":
        conf = probs.gather(-1, x0[:, None])[:, 0]
    elif confidence == "margin":
        top2 = torch.topk(probs, min(2, probs.shape[-1]), dim=-1).values
        conf = top2[:, 0] - (top2[:, 1] if top2.shape[-1] > 1 else 0)
    else:
        conf = torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
    return x0, conf


def head_dream_confidence_ref(hidden: torch.Tensor, w_head: torch.Tensor, **kw):
    """:func:`dream_confidence_ref` of ``hidden [M, d] @ w_head [V, d].T`` rounded to the hidden dtype."""
    return dream_confidence_ref(hidden @ w_head.t(), **kw)


_SCORE_FUNCS = ("sigmoid", "softmax")


def check_moe_route_args(n_experts: int, top_k, n_group, topk_group, score_func, expert_bias=None,
                         routed_scaling_factor=1.0) -> None:
    """ValueErrors for the routing options of :func:`moe_route_ref` (shared with the Triton router)."""
    E = n_experts
    for name, v in (("top_k", top_k), ("n_group", n_group), ("topk_group", topk_group)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if score_func not in _SCORE_FUNCS:
        raise ValueError(f"score_func must be one of {_SCORE_FUNCS}, got {score_func!r}")
    if E % n_group:
        raise ValueError(f"n_group={n_group} must divide the number of experts {E}")
    if topk_group > n_group:
        raise ValueError(f"topk_group={topk_group} must be <= n_group={n_group}")
    if n_group > 1 and E // n_group < 2:
        raise ValueError(f"n_group={n_group} leaves groups of {E // n_group} expert; groups are scored by their "
                         f"top-2 experts, so each needs >= 2")
    if top_k > topk_group * (E // n_group):
        raise ValueError(f"top_k={top_k} must be <= the experts of the kept groups, "
                         f"topk_group * experts per group = {topk_group * (E // n_group)}")
    if expert_bias is not None and score_func != "sigmoid":
        raise ValueError(f"expert_bias is supported with score_func='sigmoid' only, got score_func={score_func!r}")
    if isinstance(routed_scaling_factor, bool) or not isinstance(routed_scaling_factor, (int, float)) \
            or math.isnan(routed_scaling_factor):
        raise ValueError(f"routed_scaling_factor must be a number, got {routed_scaling_factor!r}")


def _topk_lowest_index(v: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of each row's ``k`` largest entries, descending, ties to the lowest index (unlike ``torch.topk``)."""
    return torch.sort(v, dim=-1, descending=True, stable=True).indices[..., :k]


def moe_route_ref(x: torch.Tensor, router_w: torch.Tensor, expert_bias: Optional[torch.Tensor] = None, *,
                  top_k: int, n_group: int = 1, topk_group: int = 1, score_func: str = "sigmoid",
                  norm_topk_prob: bool = True, routed_scaling_factor: float = 1.0):
    """MoE router: the ``top_k`` experts of each token and their weights, ``(weights fp32 [M, top_k], ids int32
    [M, top_k])``, from fp32 logits ``x [M, d] @ router_w [E, d].T``.

    Scores ``s``: ``sigmoid(logits)`` (LLaDA2.x, DeepSeek-V3; ``expert_bias`` ``[E]`` added for the selection
    only) or ``softmax`` (LLaDA-MoE, OLMoE; no ``expert_bias``). With ``n_group > 1`` the experts form contiguous
    groups scored by their two largest biased scores, and ``top_k`` are chosen among the ``topk_group`` best
    groups. Ties go to the lowest index; ``ids`` in descending selection score. ``weights``: the unbiased scores,
    divided by their sum (+ 1e-20) when ``norm_topk_prob and top_k > 1``, times ``routed_scaling_factor``.
    """
    E = router_w.shape[0]
    check_moe_route_args(E, top_k, n_group, topk_group, score_func, expert_bias, routed_scaling_factor)
    logits = x.float() @ router_w.float().t()
    s = torch.sigmoid(logits) if score_func == "sigmoid" else torch.softmax(logits, dim=-1)
    sel = s if expert_bias is None else s + expert_bias.float()
    M = x.shape[0]
    if n_group > 1:
        group_scores = sel.view(M, n_group, -1).topk(2, dim=-1).values.sum(-1)
        groups = _topk_lowest_index(group_scores, topk_group)
        keep = torch.zeros(M, n_group, dtype=torch.bool, device=x.device)
        keep.scatter_(1, groups, True)
        sel = sel.masked_fill(~keep.repeat_interleave(E // n_group, dim=1), float("-inf"))
    ids = _topk_lowest_index(sel, top_k)
    w = s.gather(1, ids)
    if norm_topk_prob and top_k > 1:
        w = w / (w.sum(-1, keepdim=True) + 1e-20)
    return w * routed_scaling_factor, ids.to(torch.int32)


def moe_experts_ref(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor, weights: torch.Tensor,
                    ids: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """MoE experts (:func:`llada_triton.kernels.moe.moe_experts`, arguments there; ids in ``[0, E)``):
    ``residual + sum_j weights[:, j] * expert_{ids[:, j]}(x)`` ``[M, d]``, looping over experts. Each expert is
    :func:`swiglu_mlp_ref`; the weighted sum is fp32, slot 0 first, rounded to ``x.dtype`` (LLaDA2's ``moe_infer``)."""
    M, d = x.shape
    k = ids.shape[1]
    flat = ids.reshape(-1).long()
    out = torch.zeros(M * k, d, dtype=x.dtype, device=x.device)
    for e in torch.unique(flat).tolist():
        rows = (flat == e).nonzero()[:, 0]
        out[rows] = swiglu_mlp_ref(x[rows // k], w_gate_up[e], w_down[e])
    out = out.view(M, k, d).float()
    w = weights.float()
    y = out[:, 0] * w[:, :1]
    for j in range(1, k):
        y = y + out[:, j] * w[:, j:j + 1]
    y = y.to(x.dtype)
    return y if residual is None else residual + y


def moe_align_ref(ids: torch.Tensor, n_experts: int, block_m: int, *, chunk: Optional[int] = None):
    """Token->expert alignment (:func:`llada_triton.kernels.moe.moe_align`, semantics there): each expert's pairs
    in increasing flat index, its segment padded to a multiple of ``block_m`` rows holding ``N``; pairs with an id
    outside ``[0, E)`` dropped; ``chunk`` (the kernel's pairs per program) is ignored."""
    N, E = ids.numel(), n_experts
    flat = ids.reshape(-1).long()
    L = -(-(N + min(E, N) * (block_m - 1)) // block_m) * block_m
    ok = (flat >= 0) & (flat < E)
    counts = torch.bincount(flat[ok], minlength=E)
    end = torch.cumsum(-(-counts // block_m) * block_m, 0)
    sorted_ids = torch.full((L,), N, dtype=torch.int32, device=ids.device)
    order = torch.sort(torch.where(ok, flat, E), stable=True).indices[:int(ok.sum())]
    start = (end - -(-counts // block_m) * block_m)
    rank = torch.arange(order.numel(), device=ids.device) - (torch.cumsum(counts, 0) - counts)[flat[order]]
    sorted_ids[start[flat[order]] + rank] = order.to(torch.int32)
    return sorted_ids, end.to(torch.int32), end[-1:].to(torch.int32)
