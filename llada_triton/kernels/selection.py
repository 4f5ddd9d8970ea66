"""Which masked positions a denoising step commits (LLaDA's top-k, Fast-dLLM's threshold and factor rules). One
program per row ranks the masked positions (``rank_i = #{j: c_j > c_i or (c_j == c_i and j < i)}``, in
``[L, BLOCK_J]`` comparison blocks) and applies the rule to the ranks.

* :func:`select_transfer` / :func:`select_commit` (``_select_kernel``): the selection, optionally with the write
  of ``x0`` into the token block.
* :func:`commit_step` (``_commit_step_kernel``): a step's whole commit on the token buffer at a (device) block
  start: masked positions, selection, the write of ``x0``, the NFE count and the step's outputs.

References: :func:`llada_triton.kernels.reference.select_transfer_ref`, ``commit_step_ref``.
"""
from __future__ import annotations

import struct
from typing import Optional

import torch
import triton
import triton.language as tl

from llada_triton.kernels._common import (DTYPES, check_like, check_tensor, gdc_options, gdc_wait_and_release,
                                          is_interpreter, next_pow2)
from llada_triton.kernels.reference import check_not_nan

__all__ = ["select_transfer", "select_commit", "commit_step"]

MAX_SELECT_LEN = 4096  # one row of select_transfer is held in registers


@triton.jit
def _rank_masked(c, offs, L, c_row, m_row, tok_row, mask_id,
                 MASK_FROM_TOKENS: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_J: tl.constexpr):
    """``rank_i = #{masked j < L: c_j > c_i or (c_j == c_i and j < i)}``; masked: ``m_row`` or the tokens."""
    rank = tl.zeros([BLOCK_L], dtype=tl.int32)
    for j0 in range(0, L, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)  # [BJ]
        jm = j < L
        cj = tl.load(c_row + j, mask=jm, other=0.0).to(tl.float32)
        if MASK_FROM_TOKENS:
            mj = (tl.load(tok_row + j, mask=jm, other=-1) == mask_id) & jm
        else:
            mj = (tl.load(m_row + j, mask=jm, other=0) != 0) & jm
        beats = (cj[None, :] > c[:, None]) | ((cj[None, :] == c[:, None]) & (j[None, :] < offs[:, None]))
        rank += tl.sum((beats & mj[None, :]).to(tl.int32), axis=1)
    return rank


@triton.jit
def _apply_rule(c, mk, rank, k_ptr, row, threshold, f_hi, f_mid, f_lo, RULE: tl.constexpr):
    """The positions to commit among the masked ones (``mk``), from their confidences and ranks."""
    if RULE == 0:  # top-k
        kk = tl.load(k_ptr + row).to(tl.int64)
        sel = mk & (rank < kk)
    elif RULE == 1:  # threshold: the top-1 always, the others when conf >= threshold (fp32)
        sel = mk & ((rank == 0) | (c >= threshold))
    else:  # factor (Fast-dLLM get_transfer_index_dynamic); thresholds in fp64 as the reference
        n = tl.sum(mk.to(tl.int32), axis=0)  # masked count
        f = ((tl.zeros([1], dtype=tl.float64) + f_hi) + f_mid) + f_lo  # exact in fp64
        thr = 1.0 - f / (rank + 2).to(tl.float64)
        thr = tl.where(rank == 0, -1.0, thr)
        fail = mk & (c.to(tl.float64) < thr)
        first = tl.min(tl.where(fail, rank, n), axis=0)  # first failing rank, n if none
        cnt = tl.where((first == 0) | (first == n - 1), first + 1, first)
        cnt = tl.minimum(cnt, n)
        sel = mk & (rank < cnt)
    return sel


@triton.jit
def _select_kernel(
    conf_ptr, masked_ptr, k_ptr, x0_ptr, tok_ptr, out_ptr,
    L,
    stride_cb, stride_mb, stride_xb, stride_tb, stride_ob,
    threshold, f_hi, f_mid, f_lo,
    RULE: tl.constexpr, COMMIT: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_J: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_L)  # [BL]
    valid = offs < L
    c_row = conf_ptr + row * stride_cb
    m_row = masked_ptr + row * stride_mb
    c = tl.load(c_row + offs, mask=valid, other=0.0).to(tl.float32)
    mk = (tl.load(m_row + offs, mask=valid, other=0) != 0) & valid
    rank = _rank_masked(c, offs, L, c_row, m_row, m_row, 0, MASK_FROM_TOKENS=False, BLOCK_L=BLOCK_L,
                        BLOCK_J=BLOCK_J)
    sel = _apply_rule(c, mk, rank, k_ptr, row, threshold, f_hi, f_mid, f_lo, RULE=RULE)
    tl.store(out_ptr + row * stride_ob + offs, sel.to(tl.uint8), mask=valid)
    if COMMIT:
        x = tl.load(x0_ptr + row * stride_xb + offs, mask=sel, other=0)
        tl.store(tok_ptr + row * stride_tb + offs, x, mask=sel)


@triton.jit(do_not_specialize=["start"])
def _commit_step_kernel(
    tok_ptr, start_ptr, x0_ptr, conf_ptr, done_ptr, k_ptr, nfe_ptr,  # inputs (tokens / nfe updated in place)
    sel_ptr, conf_out_ptr, blk_ptr,  # outputs [B, L]: committed (u8), conf (-inf off masked), block tokens
    L, T, start, mask_id,
    stride_tb, stride_sb, stride_xb, stride_cb,
    threshold, f_hi, f_mid, f_lo,
    RULE: tl.constexpr, START_PTR: tl.constexpr, HAS_DONE: tl.constexpr, HAS_NFE: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_J: tl.constexpr, USE_GDC: tl.constexpr = False,
):
    gdc_wait_and_release(USE_GDC)  # every input is an activation
    row = tl.program_id(0).to(tl.int64)
    if START_PTR:
        s0 = tl.load(start_ptr + row * stride_sb).to(tl.int64)
    else:
        s0 = start.to(tl.int64)
    # a block outside [0, T) (a bad device start) is neither read nor written: the row commits nothing and
    # reports tokens -1. L_live: the columns read (0 for such a row and for a done row)
    L_live = tl.where((s0 >= 0) & (s0 + L <= T), L, 0)
    L_tok = L_live
    if HAS_DONE:
        L_live = tl.where(tl.load(done_ptr + row) != 0, 0, L_live)
    offs = tl.arange(0, BLOCK_L)  # [BL]
    valid = offs < L
    t_row = tok_ptr + row * stride_tb + s0
    c_row = conf_ptr + row * stride_cb
    tok = tl.load(t_row + offs, mask=offs < L_tok, other=-1)
    mk = (tok == mask_id) & (offs < L_live)
    c = tl.load(c_row + offs, mask=valid, other=0.0).to(tl.float32)
    c = tl.where(mk, c, float("-inf"))
    rank = _rank_masked(c, offs, L_live, c_row, c_row, t_row, mask_id, MASK_FROM_TOKENS=True, BLOCK_L=BLOCK_L,
                        BLOCK_J=BLOCK_J)
    sel = _apply_rule(c, mk, rank, k_ptr, row, threshold, f_hi, f_mid, f_lo, RULE=RULE)
    x = tl.load(x0_ptr + row * stride_xb + offs, mask=sel, other=0)
    tl.store(t_row + offs, x, mask=sel)
    out = row * L + offs
    tl.store(sel_ptr + out, sel.to(tl.uint8), mask=valid)
    tl.store(conf_out_ptr + out, c, mask=valid)
    tl.store(blk_ptr + out, tl.where(sel, x, tok), mask=valid)
    if HAS_NFE:
        n = tl.sum(mk.to(tl.int32), axis=0)
        tl.store(nfe_ptr + row, tl.load(nfe_ptr + row) + (n > 0).to(tl.int64))


def _split_f64(x: float):
    """x as hi + mid + lo, each an fp32 value, the sum exact in fp64 (for normal-range x)."""
    parts = []
    for _ in range(3):
        parts.append(struct.unpack("f", struct.pack("f", x))[0])
        x -= parts[-1]
    return tuple(parts)


def _rule_args(B: int, L: int, dev, k, threshold, factor):
    """Validated ``(RULE, k tensor or None, threshold, factor words)`` of the one rule given (and block length L)."""
    if L > MAX_SELECT_LEN:
        raise ValueError(f"block length {L} exceeds {MAX_SELECT_LEN} (one row is held in registers)")
    given = [n for n, v in (("k", k), ("threshold", threshold), ("factor", factor)) if v is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of k, threshold, factor (got {given or 'none'})")
    if k is not None:
        check_tensor("k", k, ndim=1, dtypes=(torch.int32, torch.int64), contiguous_last=False)
        if k.shape[0] != B or k.device != dev:
            raise ValueError(f"k must be an int tensor [{B}] on {dev}, got {tuple(k.shape)} on {k.device}")
        return 0, k, 0.0, (0.0, 0.0, 0.0)
    if threshold is not None:
        check_not_nan("threshold", threshold)
        return 1, None, float(threshold), (0.0, 0.0, 0.0)
    factor = float(factor)
    if not (abs(factor) < 1e30 and (factor == 0.0 or abs(factor) > 1e-30)):
        raise ValueError(f"factor must be finite with 1e-30 < |factor| < 1e30 (or 0), got {factor}")
    return 2, None, 0.0, _split_f64(factor)


def _select_tiles(L: int, interpret: bool):
    """``(BLOCK_L, BLOCK_J, launch options)`` of the one-program-per-row selection kernels."""
    BL = next_pow2(max(L, 16))
    BJ = BL if interpret else max(1, min(BL, 4096 // BL))  # [BL, BJ] comparisons per step
    return BL, BJ, ({} if interpret else dict(num_warps=4 if BL <= 1024 else 8))


def _select_launch(conf, masked, out=None, *, k=None, threshold=None, factor=None, tokens=None, x0=None):
    check_tensor("conf", conf, ndim=2, dtypes=DTYPES)
    B, L = conf.shape
    dev = conf.device
    out = torch.empty((B, L), dtype=torch.bool, device=dev) if out is None else out
    check_tensor("masked", masked, ndim=2, dtypes=(torch.bool,))
    check_like("masked", masked, (B, L), torch.bool, dev)
    rule, kt, thr, fparts = _rule_args(B, L, dev, k, threshold, factor)
    commit = tokens is not None
    if commit:
        for nm, t in (("tokens_block", tokens), ("x0", x0)):
            check_tensor(nm, t, ndim=2, dtypes=(torch.int64,))
            check_like(nm, t, (B, L), torch.int64, dev)
    if B == 0 or L == 0:
        return out
    BL, BJ, extra = _select_tiles(L, is_interpreter())
    ov = out.view(torch.uint8)
    tok = tokens if commit else ov
    xx = x0 if commit else ov
    _select_kernel[(B,)](
        conf, masked.view(torch.uint8), conf if kt is None else kt, xx, tok, ov, L,
        conf.stride(0), masked.stride(0), xx.stride(0), tok.stride(0), ov.stride(0), thr, *fparts,
        RULE=rule, COMMIT=commit, BLOCK_L=BL, BLOCK_J=BJ, **extra,
    )
    return out


def select_transfer(conf: torch.Tensor, masked: torch.Tensor, *, k: Optional[torch.Tensor] = None,
                    threshold: Optional[float] = None, factor: Optional[float] = None) -> torch.Tensor:
    """Which masked positions of each row to commit, by exactly one rule; returns bool ``[B, L]``.

    conf: ``[B, L]`` fp32 (bf16/fp16 accepted; no NaN) confidences; masked: bool ``[B, L]``; ``L <= 4096``.
    * ``k`` (int ``[B]``, on conf's device): the ``k[b]`` most confident masked positions;
    * ``threshold``: the top-1 masked position plus every masked position with ``conf >= threshold`` (fp32);
    * ``factor``: Fast-dLLM's dynamic rule, off-by-one quirk included
      (:func:`llada_triton.kernels.reference._factor_count`; thresholds in fp64).
    Ranking: descending confidence, lowest index first on ties, ``-inf`` last among the masked; ``k`` may pick
    ``-inf`` ones. No host sync. Reference: :func:`llada_triton.kernels.reference.select_transfer_ref`.
    """
    return _select_launch(conf, masked, k=k, threshold=threshold, factor=factor)


def select_commit(tokens_block: torch.Tensor, x0: torch.Tensor, conf: torch.Tensor, masked: torch.Tensor, *,
                  k: Optional[torch.Tensor] = None, threshold: Optional[float] = None,
                  factor: Optional[float] = None) -> torch.Tensor:
    """:func:`select_transfer`, then ``tokens_block[b, i] = x0[b, i]`` (int64 ``[B, L]``; ``tokens_block`` may be
    a strided view such as ``x[:, start:end]``) at every selected position, in place. Returns the selection."""
    return _select_launch(conf, masked, k=k, threshold=threshold, factor=factor, tokens=tokens_block, x0=x0)


def commit_step(tokens: torch.Tensor, start, x0: torch.Tensor, conf: torch.Tensor, *, mask_id: int,
                done: Optional[torch.Tensor] = None, k: Optional[torch.Tensor] = None,
                threshold: Optional[float] = None, factor: Optional[float] = None,
                nfe: Optional[torch.Tensor] = None):
    """One denoising step's selection and commit into the token buffer, one launch, no host sync.

    tokens: int64 ``[B, T]``, updated in place; start: the block's first column, an int or an int32/int64 device
    tensor ``()`` or ``[B]``; x0: int64 ``[B, L]`` sampled tokens, conf: ``[B, L]`` fp32 (bf16/fp16 accepted);
    done: bool ``[B]`` or None (rows that take no part); nfe: int64 ``[B]`` or None, updated in place.
    With ``masked[b, i] = tokens[b, start_b + i] == mask_id and not done[b]``, the positions
    ``committed = select_transfer(where(masked, conf, -inf), masked, <one rule>)`` get ``x0``, and ``nfe[b] += 1``
    for every row with a masked position. A row whose device ``start`` puts the block outside ``[0, T)`` commits
    nothing and reports tokens -1. Returns ``(committed bool, conf fp32 with -inf off the masked positions, the
    block's tokens after the commit)``, each ``[B, L]``. Reference:
    :func:`llada_triton.kernels.reference.commit_step_ref`.
    """
    check_tensor("tokens", tokens, ndim=2, dtypes=(torch.int64,))
    check_tensor("x0", x0, ndim=2, dtypes=(torch.int64,))
    check_tensor("conf", conf, ndim=2, dtypes=DTYPES)
    B, T = tokens.shape
    L = x0.shape[1]
    dev = tokens.device
    for nm, t in (("x0", x0), ("conf", conf)):
        if t.shape != (B, L) or t.device != dev:
            raise ValueError(f"{nm} must be [{B}, {L}] (x0's shape) on {dev}, got {tuple(t.shape)} on {t.device}")
    if not isinstance(mask_id, int) or isinstance(mask_id, bool) or not 0 <= mask_id < 2 ** 63:
        raise ValueError(f"mask_id={mask_id!r} must be a non-negative int")
    if isinstance(start, torch.Tensor):
        check_tensor("start", start, dtypes=(torch.int32, torch.int64), contiguous_last=False)
        if start.device != dev or start.ndim > 1 or (start.ndim == 1 and start.shape[0] != B):
            raise ValueError(f"start must be an int, or an int32/int64 tensor of shape () or [{B}] on {dev}, got "
                             f"shape {tuple(start.shape)} on {start.device}")
        s_ptr, s_val, s_stride = start, 0, (start.stride(0) if start.ndim == 1 else 0)
    elif isinstance(start, int) and not isinstance(start, bool):
        if not 0 <= start <= T - L:
            raise ValueError(f"start={start}: the block [start, start + {L}) must lie inside the {T} token columns")
        s_ptr, s_val, s_stride = tokens, start, 0
    else:
        raise TypeError(f"start must be an int or an int tensor, got {type(start).__name__}")
    for nm, t, dt in (("done", done, torch.bool), ("nfe", nfe, torch.int64)):
        check_like(nm, t, (B,), dt, dev)
    rule, kt, thr, fparts = _rule_args(B, L, dev, k, threshold, factor)
    sel = torch.empty((B, L), dtype=torch.bool, device=dev)
    conf_out = torch.empty((B, L), dtype=torch.float32, device=dev)
    blk = torch.empty((B, L), dtype=torch.int64, device=dev)
    if B == 0 or L == 0:
        return sel, conf_out, blk
    BL, BJ, extra = _select_tiles(L, is_interpreter())
    _commit_step_kernel[(B,)](
        tokens, s_ptr, x0, conf, tokens if done is None else done.view(torch.uint8), tokens if kt is None else kt,
        tokens if nfe is None else nfe, sel.view(torch.uint8), conf_out, blk, L, T, s_val, mask_id,
        tokens.stride(0), s_stride, x0.stride(0), conf.stride(0), thr, *fparts,
        RULE=rule, START_PTR=isinstance(start, torch.Tensor), HAS_DONE=done is not None, HAS_NFE=nfe is not None,
        BLOCK_L=BL, BLOCK_J=BJ, **extra, **gdc_options(conf, B * L),
    )
    return sel, conf_out, blk
