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


@dataclass
class ThresholdTopK:
    """LLaDA2.0's rule and stopping (see the module docstring)."""
    schedule: List[int]
    threshold: float
    eos_early_stop: bool = False

    def start_block(self):
        pass

    def wants_step(self, step: int, any_masked: bool) -> bool:
        return step < len(self.schedule) and any_masked

    def transfer(self, blk: _Block, step: int):
        """``(positions to write x0 into, edits, block finished)``."""
        k = torch.tensor([self.schedule[step]], device=blk.conf.device)
        take = select_threshold_topk_ref(blk.conf[None], blk.masked[None], k=k, threshold=self.threshold)[0]
        return take, 0, False

    def early_answer(self, x: torch.Tensor, P: int, mask_id: int, eos_id: int, wrote_eos: bool):
        """The answer to return now (``eos_early_stop``), or None."""
        if not (self.eos_early_stop and wrote_eos):
            return None
        eos = (x == eos_id).nonzero()
        if len(eos) == 0:
            return None
        e = int(eos[0])
        return x[P:e + 1].tolist() if not bool((x[P:e] == mask_id).any()) else None

    def stop_after_block(self, window: torch.Tensor, mask_id: int, eos_id: int) -> bool:
        return bool((window == eos_id).any())


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
