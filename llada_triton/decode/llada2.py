"""LLaDA2.x's official decoders (LLaDA2.0's and LLaDA2.1's ``generate``) as options of the one driver:
``generate(params, cfg, prompts, ..., decoding=Llada2Decoding(...))`` (or :class:`Llada21Decoding`), whose hooks
the driver calls; :func:`generate_llada2` is the batch-1 wrapper. Where they differ from LLaDA's decoder (each
changes tokens):

* the absolute block grid (:func:`llada_triton.decode.layout.absolute_layout`): blocks ``[jB, (j+1)B)`` from
  position 0, decoded from the block holding the prompt's end P to ``ceil((P+G)/B)`` (the overhang past P+G is
  decoded and dropped); forwards see the prefix block-causally (LLaDA2.x is trained as block diffusion).
* :func:`llada2_schedule`: ``steps = min(steps, G // minimal_topk)`` budgets splitting ``block_length`` (not the
  block's masks), 0 for trailing steps when steps > B.
* the rules and stops of :class:`Llada2Decoding` (2.0) and :class:`Llada21Decoding` (2.1: token editing); the
  answer (``GenerateResult.answers``) is ``x[P:P+G]`` cut after its first eos.

The references are batch 1; in a varlen batch every row equals its batch-1 decode (the layout pads each row by a
multiple of B so the grids share columns). Caches ``'block'`` (a finished block joins the cache when the next
block's first step re-feeds it) and ``'none'`` (the prefix recomputed every step, as the reference) agree.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch

from llada_triton.kernels.reference import commit_step_ref, select_threshold_topk_ref
from .generate import generate
from .cache import const
from .layout import absolute_layout
from .schedule import linear_schedule
from .step import check_int, check_real

__all__ = ["Llada2Decoding", "Llada21Decoding", "llada2_schedule", "generate_llada2", "Llada2Result", "eos_cut"]


# tokens to commit at each step of a block: the official ``_get_num_transfer_tokens`` splits ``block_length`` over
# ``steps`` as LLaDA's linear schedule splits the block's masks (the first ``block_length % steps`` steps one more)
llada2_schedule = linear_schedule


def eos_cut(tokens: List[int], eos_id: int) -> List[int]:
    """``tokens`` up to and including the first ``eos_id`` (all of them when there is none)."""
    return tokens[:tokens.index(eos_id) + 1] if eos_id in tokens else tokens


def _check_unit(name, v):
    check_real(name, v, lambda u: 0.0 <= u <= 1.0, "a number in [0, 1]")


def _threshold_topk(conf, masked, *, k, threshold, factor=None):
    """:func:`select_threshold_topk_ref` in :func:`commit_step_ref`'s ``select`` signature."""
    return select_threshold_topk_ref(conf, masked, k=k, threshold=threshold)


@dataclass(frozen=True)
class Llada2Decoding:
    """LLaDA2.0's ``generate``: at most ``steps`` forwards per block, each committing the masked positions with
    confidence ``> threshold`` if there are at least the step's budget of them, else the budget's top-k
    (:func:`llada_triton.kernels.reference.select_threshold_topk_ref`); a row stops after a block whose window
    ``x[P:end]`` holds an eos; ``eos_early_stop`` ends a row on the device once its first eos has no mask before it
    (answer ``x[P:eos+1]``, longer than G when that eos is in the overhang).

    The hooks the driver and ``run_many`` call (``state`` is this object's own, from :meth:`new_state`; no per-step
    hook syncs the host): option checks :meth:`check`, :meth:`check_driver_options`; grid and budgets
    :meth:`layout`, :meth:`schedule`, :meth:`end_ids`, ``stops_at_eos`` (``early_stop``'s default: a row whose
    window holds an eos after a block stops) and ``edits`` (committed tokens are rewritten: the head runs on every
    row); per-row device state :meth:`new_state`, :meth:`reset_state`, :meth:`reset_row`, :meth:`new_block`; each
    step :meth:`commit`, then :meth:`block_over`; results :meth:`answers`, :meth:`edit_counts`."""
    threshold: float = 0.95
    minimal_topk: int = 1
    eos_early_stop: bool = False
    caches = ("block", "none")
    edits = False
    stops_at_eos = True

    def check(self, o):
        """Its own fields, given the driver options ``o`` (a ``DecodeOptions`` whose lengths are checked)."""
        check_int("minimal_topk", self.minimal_topk)
        _check_unit("threshold", self.threshold)
        if self.minimal_topk > o.gen_length:
            raise ValueError(f"minimal_topk={self.minimal_topk} exceeds gen_length={o.gen_length} (no step would run)")
        if not isinstance(self.eos_early_stop, bool):
            raise ValueError(f"eos_early_stop={self.eos_early_stop!r} must be True or False")

    def check_driver_options(self, o):
        """The driver options (a :class:`~llada_triton.decode.DecodeOptions`) this decoder replaces or cannot take,
        refused by name."""
        if o.cache not in self.caches:
            raise ValueError(f"cache={o.cache!r} with LLaDA2 decoding; choose one of {self.caches}")
        for name, ok in (("remasking", "low_confidence"), ("threshold", None), ("factor", None), ("cfg_scale", 0.0),
                         ("schedule", None), ("logits_eos_inf", False), ("confidence_eos_eot_inf", False),
                         ("refresh_commits_first", False)):
            v = getattr(o, name)
            if v != ok:
                hint = f"; its threshold is {type(self).__name__}.threshold" if name == "threshold" else ""
                raise ValueError(f"{name}={v!r} is not an option of LLaDA2 decoding (allowed: {ok!r}{hint})")

    def layout(self, rows, cfg, gen_length, block_length, device, min_first: int = 0):
        return absolute_layout(rows, gen_length, block_length, pad_id=cfg.pad_token_id,
                               mask_id=cfg.mask_token_id, device=device, min_first=min_first)

    def schedule(self, block_length, steps, gen_length) -> Optional[List[int]]:
        """The step budgets of a block (host ints; their count is the block's step limit); None: no schedule."""
        return llada2_schedule(block_length, min(steps, gen_length // self.minimal_topk))

    def end_ids(self, cfg) -> tuple:
        return (cfg.eos_token_id,)

    def new_state(self, batch, device) -> dict:
        i64 = dict(dtype=torch.int64, device=device)
        return dict(stop_end=torch.full((batch,), -1, **i64), first_real=torch.zeros(batch, **i64),
                    gen_start=torch.zeros(batch, **i64), post=torch.zeros(batch, **i64),
                    edits=torch.zeros(batch, **i64), block_over=torch.zeros(batch, dtype=torch.bool, device=device))

    def reset_state(self, state, layout):
        """Every row starts a sequence laid out by ``layout``."""
        state["stop_end"].fill_(-1)
        state["edits"].zero_()
        state["first_real"].copy_(layout.pad)
        state["gen_start"].copy_(layout.gen_start)

    def reset_row(self, state, r: int, first_real: int, gen_start):
        """Row ``r`` starts a new sequence (the slot runner's refill)."""
        state["stop_end"][r], state["first_real"][r], state["gen_start"][r] = -1, first_real, gen_start
        state["post"][r], state["edits"][r], state["block_over"][r] = 0, 0, False

    def new_block(self, state, rows: Optional[torch.Tensor] = None):
        """Rows ``rows`` (bool ``[B]``; None: every row) start a new block."""

    def commit(self, cfg, state, tokens, start, x0, conf, *, done, k, nfe):
        """One step in the block at ``start`` (an int, a 0-dim tensor, or one start per row) of the rows not
        ``done``: commit by the threshold rule with the step's budget ``k`` ``[B]``, count a forward in ``nfe``,
        then ``eos_early_stop``. Returns (committed bool ``[B, L]``, conf fp32 (-inf off the masked positions),
        the block's tokens after the step)."""
        committed, c, blk = commit_step_ref(tokens, start, x0, conf, mask_id=cfg.mask_token_id, done=done, k=k,
                                            threshold=float(self.threshold), nfe=nfe, select=_threshold_topk)
        if self.eos_early_stop:
            self._stop_at_eos(cfg, state, tokens, committed, blk, done)
        return committed, c, blk

    @staticmethod
    def _stop_at_eos(cfg, state, x, committed, blk, done):
        """A row that committed an eos at this step, whose first eos (from its first real token) has no mask
        between its answer's start and it, is finished; its answer ends after that eos."""
        eos = cfg.eos_token_id
        cols = const("arange", x.shape[1], x.device)[None, :]
        is_eos = (x == eos) & (cols >= state["first_real"][:, None])
        e = torch.where(is_eos.any(1), is_eos.to(torch.int32).argmax(1), x.shape[1])
        gap = ((x == cfg.mask_token_id) & (cols >= state["gen_start"][:, None]) & (cols < e[:, None])).any(1)
        stop = (committed & (blk == eos)).any(1) & ~gap & ~done
        state["stop_end"].copy_(torch.where(stop, e + 1, state["stop_end"]))
        done.logical_or_(stop)

    def block_over(self, cfg, state, blk) -> torch.Tensor:
        """bool ``[B]`` on the device: the rows whose block is finished after this step (``blk``: its tokens)."""
        return ~(blk == cfg.mask_token_id).any(1)

    def answers(self, cfg, x, gen_start, gen_length, state, rows=None) -> List[List[int]]:
        """The answers of rows ``rows`` (None: all) of the token buffer ``x`` (their starts ``gen_start`` ``[B]``):
        up to the early stop's eos, else the row's ``gen_length`` tokens cut after the first eos."""
        bounds = torch.stack((gen_start, state["stop_end"]))  # [2, B]: one host read below
        if rows is None:
            rows = range(x.shape[0])
        else:  # a finished slot: only its start and stop reach the host
            rows = list(rows)
            bounds = bounds[:, rows]
        starts, stop_ends = bounds.tolist()
        return [x[r, g:max(g, e)].tolist() if e >= 0 else eos_cut(x[r, g:g + gen_length].tolist(), cfg.eos_token_id)
                for r, g, e in zip(rows, starts, stop_ends)]

    def edit_counts(self, state) -> torch.Tensor:
        """int64 ``[B]``: the tokens each row's editing rewrote (always 0 here)."""
        return state["edits"]


@dataclass(frozen=True, kw_only=True)
class Llada21Decoding(Llada2Decoding):
    """LLaDA2.1's ``generate``: 2.0's grid, cut and answers; each step commits by the threshold rule with the
    fixed budget ``num_to_transfer`` (``steps`` unused, as in the reference) and rewrites the block's generated
    tokens whose argmax changed with confidence ``> editing_threshold``; once a row's block has no mask, at most
    ``max_post_steps`` more steps, stopping at a step that edits nothing. ``eos_early_stop``: a row stops after a
    block whose window holds an eos."""
    editing_threshold: float
    max_post_steps: int = 16
    num_to_transfer: int = 1
    edits = True

    @property
    def stops_at_eos(self) -> bool:
        return self.eos_early_stop

    def check(self, o):
        super().check(o)
        _check_unit("editing_threshold", self.editing_threshold)
        check_int("max_post_steps", self.max_post_steps, low=0)
        check_int("num_to_transfer", self.num_to_transfer)

    def schedule(self, block_length, steps, gen_length):
        return None

    def new_block(self, state, rows: Optional[torch.Tensor] = None):
        for t in (state["post"], state["block_over"]):
            t.zero_() if rows is None else t.masked_fill_(rows, 0)

    def block_over(self, cfg, state, blk) -> torch.Tensor:
        return state["block_over"]

    def commit(self, cfg, state, tokens, start, x0, conf, *, done, k, nfe):
        """The step's transfer and edits (``k`` unused: the budget is ``num_to_transfer``); a row takes part while
        it is live and its block is not over (a post step past ``max_post_steps`` ends it first)."""
        L, mask_id = x0.shape[1], cfg.mask_token_id
        cols = ((start.reshape(-1, 1) if isinstance(start, torch.Tensor) else start)
                + const("arange", L, tokens.device)).expand(tokens.shape[0], L)
        blk = tokens.gather(1, cols)
        live = ~done & ~state["block_over"]
        masked = blk == mask_id
        post = state["post"] + (live & ~masked.any(1)).long()
        act = live & (post <= self.max_post_steps)
        state["post"].copy_(post)
        state["block_over"].logical_or_(live & ~act)
        masked = masked & act[:, None]
        conf = conf.float()
        c = torch.where(masked, conf, float("-inf"))
        take = select_threshold_topk_ref(c, masked, k=const("full", nfe.shape[0], nfe.device, self.num_to_transfer),
                                         threshold=float(self.threshold))
        edit = (act[:, None] & (blk != mask_id) & (cols >= state["gen_start"][:, None])
                & (conf > self.editing_threshold) & (x0 != blk))
        new = torch.where(take | edit, x0, blk)
        tokens.scatter_(1, cols, new)
        n_edits = edit.sum(1)
        state["edits"].add_(n_edits)
        nfe.add_(act.long())
        state["block_over"].logical_or_(act & ~masked.any(1) & (n_edits == 0))
        return take | edit, c, new


@dataclass
class Llada2Result:
    tokens: List[int]          # the answer: x[P:P+G] cut after its first eos (or the early-stop answer)
    sequence: torch.Tensor     # int64 [total_length]: the decoded grid, prompt included
    nfe: int                   # forwards
    edits: int = 0             # LLaDA2.1: tokens rewritten by editing


@torch.no_grad()
def generate_llada2(params, cfg, prompt, *, gen_length: int, block_length: int = 32, steps: int = 32,
                    threshold: float = 0.95, minimal_topk: int = 1, eos_early_stop: bool = False,
                    editing_threshold: Optional[float] = None, max_post_steps: int = 16, num_to_transfer: int = 1,
                    **options) -> Llada2Result:
    """Decode one prompt (ids, or an int tensor ``[P]`` / ``[1, P]``) as LLaDA2.0's ``generate``
    (``editing_threshold=None``) or LLaDA2.1's (token editing, ``num_to_transfer``, ``max_post_steps``; ``steps``
    unused, as in the reference): :func:`llada_triton.decode.generate` with :class:`Llada2Decoding` /
    :class:`Llada21Decoding`, batch 1. ``options`` go to ``generate`` (``cache`` 'block' (default) or 'none',
    ``temperature`` (above 0: the head's Gumbel-max sampling, not the reference's RNG stream), ``seed``, ``ops``,
    ``cuda_graphs``, ``workspace``, ...)."""
    if editing_threshold is None:
        decoding = Llada2Decoding(threshold, minimal_topk, eos_early_stop)
    else:
        decoding = Llada21Decoding(threshold=threshold, minimal_topk=minimal_topk, eos_early_stop=eos_early_stop,
                                   editing_threshold=editing_threshold, max_post_steps=max_post_steps,
                                   num_to_transfer=num_to_transfer)
    options.setdefault("cache", "block")
    ids = torch.as_tensor(prompt, dtype=torch.int64)
    if ids.ndim > 2 or (ids.ndim == 2 and ids.shape[0] != 1):
        raise ValueError(f"prompt must be one row of ids (shape [P] or [1, P]; for a batch use generate(..., "
                         f"decoding=...)), got shape {tuple(ids.shape)}")
    ids = ids.reshape(-1).tolist()
    res = generate(params, cfg, [ids], gen_length=gen_length, block_length=block_length, steps=steps,
                   decoding=decoding, **options)
    return Llada2Result(res.answers[0], res.sequences[0], res.nfe[0], res.edits[0] if res.edits else 0)
