"""LLaDA2.x decoding (the official ``generate`` of LLaDA2.0 and of LLaDA2.1) as a grid, a schedule and rules.

LLaDA2.x is trained as block diffusion, so the block-causal cache is its exact decoding mode. Its official
decoders differ from LLaDA's in ways that change tokens; each is one small piece here:

* :class:`BlockGrid`: blocks are ``[jB, (j+1)B)`` from position 0; decoding starts at the block holding
  position P (the prompt's tail shares it) and runs to ``ceil((P+G)/B)`` blocks, so positions past P+G (the
  overhang) are decoded too and dropped from the answer. Every forward sees the prefix with a block-causal
  mask; later blocks are never fed.
* :func:`llada2_schedule`: ``steps = min(steps, G // minimal_topk)``; the per-step budget splits
  ``block_length`` (not the block's masks) over the steps, trailing steps get 0 when steps > B.
* :class:`ThresholdTopK` (2.0): at most ``steps`` forwards per block, each commits the masked positions
  with confidence ``> threshold`` if there are at least the step's budget of them, else the budget's top-k
  (:func:`llada_triton.kernels.reference.select_threshold_topk_ref`); decoding stops after a block whose
  window ``x[P:end]`` holds an eos; ``eos_early_stop`` returns ``x[P:eos+1]`` as soon as the first eos (from
  position 0) has no mask before it, which can be longer than G when the eos is in the overhang.
* :class:`Editing` (2.1): the same rule with a fixed ``num_to_transfer`` budget and no step limit, plus token
  editing: non-prompt, non-mask block tokens whose argmax changed with confidence ``> editing_threshold``
  are rewritten; once the block has no mask, at most ``max_post_steps`` more forwards run, stopping early
  when nothing is edited. ``eos_early_stop`` stops after a mask-free block holding an eos.
* The answer is ``x[P:P+G]`` cut after its first eos (inclusive), so its length varies.

The reference decoders are batch 1; so is :func:`generate_llada2`. Cache ``'block'`` keeps the K/V of the
final tokens of every finished block (each block joins the cache when the next block's first step re-feeds
it with its final tokens, as :class:`llada_triton.decode.cache.BlockCache`); ``'none'`` recomputes the
whole prefix every step, as the reference does. Both give the same tokens.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch

from llada_triton.kernels.reference import select_threshold_topk_ref
from llada_triton.models.family import forward_hidden, new_cache
from llada_triton.models.ops import REFERENCE_OPS, Ops
from .generate import generate
from .layout import absolute_layout

__all__ = ["BlockGrid", "llada2_schedule", "ThresholdTopK", "Editing", "generate_llada2", "Llada2Result",
           "eos_cut"]

CACHES = ("block", "none")


@dataclass(frozen=True)
class BlockGrid:
    """The absolute block grid of a prompt of ``prompt_len`` tokens and ``gen_length`` new ones."""
    prompt_len: int
    gen_length: int
    block_length: int

    @property
    def num_blocks(self) -> int:
        return -(-(self.prompt_len + self.gen_length) // self.block_length)

    @property
    def total_length(self) -> int:
        return self.num_blocks * self.block_length

    @property
    def first_block(self) -> int:
        return self.prompt_len // self.block_length

    def key_end(self, lo: int, hi: int, device) -> torch.Tensor:
        """int64 ``[hi - lo]``: position i (of ``[lo, hi)``) sees keys ``< (i // B + 1) B`` (block-causal)."""
        B = self.block_length
        return (torch.arange(lo, hi, device=device) // B + 1) * B


def llada2_schedule(block_length: int, steps: int) -> List[int]:
    """Tokens to commit at each of ``steps`` steps of a block: ``block_length`` split evenly, the first
    ``block_length % steps`` steps one more (the official ``_get_num_transfer_tokens``)."""
    base, rem = divmod(block_length, steps)
    return [base + (i < rem) for i in range(steps)]


def eos_cut(tokens: List[int], eos_id: int) -> List[int]:
    """``tokens`` up to and including the first ``eos_id`` (all of them when there is none)."""
    return tokens[:tokens.index(eos_id) + 1] if eos_id in tokens else tokens


@dataclass
class _Block:
    """What a rule sees of the current block at a step (row 0; the reference is batch 1)."""
    tokens: torch.Tensor      # int64 [B] before the step
    masked: torch.Tensor      # bool [B]
    prompt: torch.Tensor      # bool [B]: prompt positions inside the block
    x0: torch.Tensor          # int64 [B]: the argmax (or sample) at every position
    conf: torch.Tensor        # fp32 [B]: its probability


def _check_int(name, v, low=1):
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ValueError(f"{name}={v!r} must be an int >= {low}")


def _check_unit(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
        raise ValueError(f"{name}={v!r} must be a number in [0, 1]")


@dataclass(frozen=True)
class Llada2Decoding:
    """LLaDA2.0's official ``generate`` as an option of :func:`llada_triton.decode.generate` (``decoding=``): the
    absolute block grid (:func:`llada_triton.decode.layout.absolute_layout`), the threshold-or-top-k rule
    (``TransferRule.threshold_topk``) over :func:`llada2_schedule`, the eos stop after a block, the cut after
    the first eos (``GenerateResult.answers``) and ``eos_early_stop`` (on the device after every step). The
    driver calls the hooks below; none syncs the host inside a block except the block-complete flag."""
    threshold: float = 0.95
    minimal_topk: int = 1
    eos_early_stop: bool = False
    caches = CACHES
    ends_blocks_early = True  # a block ends once no live row has a mask (the reference's loop condition)

    def check(self, *, gen_length, block_length, steps):
        for name, v in (("gen_length", gen_length), ("block_length", block_length), ("steps", steps),
                        ("minimal_topk", self.minimal_topk)):
            _check_int(name, v)
        _check_unit("threshold", self.threshold)
        if self.minimal_topk > gen_length:
            raise ValueError(f"minimal_topk={self.minimal_topk} exceeds gen_length={gen_length} (no step would run)")
        if not isinstance(self.eos_early_stop, bool):
            raise ValueError(f"eos_early_stop={self.eos_early_stop!r} must be True or False")

    def check_driver_options(self, *, cache, remasking, threshold, factor, cfg_scale, schedule, **flags):
        """The driver options this decoder replaces or cannot take, refused by name."""
        if cache not in self.caches:
            raise ValueError(f"cache={cache!r} with LLaDA2 decoding; choose one of {self.caches}")
        for name, v, ok in (("remasking", remasking, "low_confidence"), ("threshold", threshold, None),
                            ("factor", factor, None), ("cfg_scale", cfg_scale, 0.0), ("schedule", schedule, None)):
            if v != ok:
                raise ValueError(f"{name}={v!r} is not an option of LLaDA2 decoding (allowed: {ok!r}; its "
                                 f"threshold is {type(self).__name__}.threshold)")
        bad = [k for k, v in flags.items() if v]
        if bad:
            raise ValueError(f"{bad[0]}=True is not an option of LLaDA2 decoding (allowed: False)")

    def layout(self, rows, cfg, gen_length, block_length, device):
        return absolute_layout(rows, gen_length, block_length, pad_id=cfg.pad_token_id,
                               mask_id=cfg.mask_token_id, device=device)

    def schedule(self, block_length, steps, gen_length) -> List[int]:
        return llada2_schedule(block_length, min(steps, gen_length // self.minimal_topk))

    def rule_fields(self) -> dict:
        return dict(threshold_topk=float(self.threshold))

    def end_ids(self, cfg) -> tuple:
        return (cfg.eos_token_id,)

    def new_state(self, batch, device) -> dict:
        i64 = dict(dtype=torch.int64, device=device)
        return dict(stop_end=torch.full((batch,), -1, **i64), first_real=torch.zeros(batch, **i64),
                    gen_start=torch.zeros(batch, **i64))

    def reset_state(self, state, layout):
        state["stop_end"].fill_(-1)
        state["first_real"].copy_(layout.pad)
        state["gen_start"].copy_(layout.gen_start)

    def after_step(self, cfg, x, committed, blk, done, state):
        """``eos_early_stop``: a row that committed an eos at this step, whose first eos (from its first real
        token) has no mask between its answer's start and it, is finished; its answer ends after that eos."""
        if not self.eos_early_stop:
            return
        eos = cfg.eos_token_id
        cols = torch.arange(x.shape[1], device=x.device)[None, :]
        is_eos = (x == eos) & (cols >= state["first_real"][:, None])
        e = torch.where(is_eos.any(1), is_eos.to(torch.int32).argmax(1), x.shape[1])
        gap = ((x == cfg.mask_token_id) & (cols >= state["gen_start"][:, None]) & (cols < e[:, None])).any(1)
        stop = (committed & (blk == eos)).any(1) & ~gap & ~done
        state["stop_end"].copy_(torch.where(stop, e + 1, state["stop_end"]))
        done.logical_or_(stop)

    def answers(self, cfg, x, layout, state) -> List[List[int]]:
        """Each row's answer: up to its early stop's eos, else its ``gen_length`` tokens cut after the first eos."""
        out = []
        for r, (g, se) in enumerate(zip(layout.gen_start.tolist(), state["stop_end"].tolist())):
            out.append(x[r, g:max(g, se)].tolist() if se >= 0 else
                       eos_cut(x[r, g:g + layout.gen_length].tolist(), cfg.eos_token_id))
        return out


@dataclass
class Editing:
    """LLaDA2.1's rule with token editing and its stopping (see the module docstring)."""
    threshold: float
    editing_threshold: float
    max_post_steps: int = 16
    num_to_transfer: int = 1
    eos_early_stop: bool = False
    post_steps: int = field(default=0, init=False)

    def start_block(self):
        self.post_steps = 0

    def wants_step(self, step: int, any_masked: bool) -> bool:
        if not any_masked:
            self.post_steps += 1
        return self.post_steps <= self.max_post_steps

    def transfer(self, blk: _Block, step: int):
        any_masked = bool(blk.masked.any())
        take = torch.zeros_like(blk.masked)
        if any_masked:
            k = torch.tensor([self.num_to_transfer], device=blk.conf.device)
            take = select_threshold_topk_ref(blk.conf[None], blk.masked[None], k=k, threshold=self.threshold)[0]
        edit = ~blk.masked & ~blk.prompt & (blk.conf > self.editing_threshold) & (blk.x0 != blk.tokens)
        n_edits = int(edit.sum())
        return take | edit, n_edits, not any_masked and n_edits == 0

    def early_answer(self, x, P, mask_id, eos_id, wrote_eos):
        return None

    def stop_after_block(self, window: torch.Tensor, mask_id: int, eos_id: int) -> bool:
        return self.eos_early_stop and not bool((window == mask_id).any()) and bool((window == eos_id).any())


@dataclass
class Llada2Result:
    tokens: List[int]          # the answer: x[P:P+G] cut after its first eos (or the early-stop answer)
    sequence: torch.Tensor     # int64 [total_length]: the decoded grid, prompt included
    nfe: int                   # forwards
    edits: int = 0             # LLaDA2.1: tokens rewritten by editing


def _validate(cfg, prompt, gen_length, block_length, steps, minimal_topk, temperature, cache):
    for name, v in (("gen_length", gen_length), ("block_length", block_length), ("steps", steps),
                    ("minimal_topk", minimal_topk)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}={v!r} must be a positive int")
    if minimal_topk > gen_length:
        raise ValueError(f"minimal_topk={minimal_topk} exceeds gen_length={gen_length} (no step would run)")
    if cache not in CACHES:
        raise ValueError(f"cache={cache!r}; choose one of {CACHES}")
    if not float(temperature) >= 0:
        raise ValueError(f"temperature={temperature} must be >= 0")
    if prompt.ndim != 1 or prompt.numel() < 1:
        raise ValueError(f"prompt must be one non-empty row of ids (the reference is batch 1), got shape "
                         f"{tuple(prompt.shape)}")
    if bool(((prompt < 0) | (prompt >= cfg.vocab_size)).any()) or bool((prompt == cfg.mask_token_id).any()):
        raise ValueError(f"prompt ids must be in [0, {cfg.vocab_size}) and differ from the mask id "
                         f"{cfg.mask_token_id}")
    total = BlockGrid(prompt.numel(), gen_length, block_length).total_length
    if total > cfg.max_sequence_length:
        raise ValueError(f"the block grid needs {total} positions; max_sequence_length={cfg.max_sequence_length}")


@torch.no_grad()
def generate_llada2(params, cfg, prompt, *, gen_length: int, block_length: int = 32, steps: int = 32,
                    threshold: float = 0.95, minimal_topk: int = 1, eos_early_stop: bool = False,
                    editing_threshold: Optional[float] = None, max_post_steps: int = 16, num_to_transfer: int = 1,
                    temperature: float = 0.0, seed: int = 0, cache: str = "block",
                    ops: Ops = REFERENCE_OPS) -> Llada2Result:
    """Decode one prompt (a list of ids or an int tensor ``[P]`` / ``[1, P]``) as LLaDA2.0's official
    ``generate`` (``editing_threshold=None``) or LLaDA2.1's (``editing_threshold`` set: token editing,
    ``num_to_transfer`` and ``max_post_steps``; ``steps`` is accepted and unused there, as in the reference).
    Temperature 0 is argmax; above 0 the head's Gumbel-max sampling (not the reference's RNG stream)."""
    if editing_threshold is None:
        ids = torch.as_tensor(prompt, dtype=torch.int64).reshape(-1).tolist()
        res = generate(params, cfg, [ids], gen_length=gen_length, block_length=block_length, steps=steps,
                       temperature=temperature, seed=seed, cache=cache, ops=ops,
                       decoding=Llada2Decoding(threshold, minimal_topk, eos_early_stop))
        return Llada2Result(res.answers[0], res.sequences[0], res.nfe[0])
    device = params.device
    prompt = torch.as_tensor(prompt, dtype=torch.int64).to(device).reshape(-1)
    _validate(cfg, prompt, gen_length, block_length, steps, minimal_topk, temperature, cache)
    if editing_threshold is None:
        rule = ThresholdTopK(llada2_schedule(block_length, min(steps, gen_length // minimal_topk)),
                             float(threshold), eos_early_stop)
    else:
        rule = Editing(float(threshold), float(editing_threshold), int(max_post_steps), int(num_to_transfer),
                       eos_early_stop)
    P, B, mask_id, eos_id = prompt.numel(), block_length, cfg.mask_token_id, cfg.eos_token_id
    grid = BlockGrid(P, gen_length, B)
    x = torch.full((grid.total_length,), mask_id, dtype=torch.int64, device=device)
    x[:P] = prompt
    run = _Forward(params, cfg, ops, grid, cache, x, float(temperature), int(seed))
    edits = 0
    for j in range(grid.first_block, grid.num_blocks):
        s, end = j * B, (j + 1) * B
        prompt_in_block = torch.arange(s, end, device=device) < P
        rule.start_block()
        step = 0
        while rule.wants_step(step, bool((x[s:end] == mask_id).any())):
            x0, conf = run.block(j, first=step == 0)
            blk = _Block(x[s:end].clone(), x[s:end] == mask_id, prompt_in_block, x0, conf)
            take, n_edits, finished = rule.transfer(blk, step)
            x[s:end] = torch.where(take, x0, blk.tokens)
            edits += n_edits
            answer = rule.early_answer(x[:end], P, mask_id, eos_id, bool((x0[take] == eos_id).any()))
            if answer is not None:
                return Llada2Result(answer, x.clone(), run.nfe, edits)
            step += 1
            if finished:
                break
        if rule.stop_after_block(x[P:end], mask_id, eos_id):
            break
    return Llada2Result(eos_cut(x[P:P + gen_length].tolist(), eos_id), x.clone(), run.nfe, edits)


class _Forward:
    """The block's hidden states -> (x0, conf) through the cache policy of the grid (``block``: a block's
    first step re-feeds every position since the last finished block's start, so the cache holds the K/V of
    final tokens below the current block; ``none``: the whole prefix every step)."""

    def __init__(self, params, cfg, ops, grid: BlockGrid, cache: str, x: torch.Tensor, temperature: float,
                 seed: int):
        self.params, self.cfg, self.ops, self.grid, self.x = params, cfg, ops, grid, x
        self.cache = new_cache(cfg, 1, grid.total_length, device=params.device, dtype=params.dtype) \
            if cache == "block" else None
        self.final_end = 0  # cache slots below this hold the K/V of final tokens
        self.temperature, self.seed, self.nfe = temperature, seed, 0

    def block(self, j: int, *, first: bool):
        B = self.grid.block_length
        s, end = j * B, (j + 1) * B
        lo = 0 if self.cache is None else (self.final_end if first else s)
        ke = self.grid.key_end(lo, end, self.x.device)
        hidden = forward_hidden(self.params, self.cfg, self.x[None, lo:end], start=lo, cache=self.cache,
                                kv_len=None if self.cache is None else end, key_end=ke,
                                rows=slice(s - lo, end - lo), ops=self.ops)
        if self.cache is not None and first:
            self.final_end = s
        x0, conf = self.ops.head(hidden[0], self.params.lm_head, temperature=self.temperature, seed=self.seed,
                                 offset=self.nfe)
        self.nfe += 1
        return x0.long(), conf.float()
