"""How many tokens to commit at each step of a block: LLaDA's linear schedule, Dream's float32 one and
Fast-dLLM's Dream threshold carry (a family may bring its own through ``Family.schedule``)."""
from __future__ import annotations

from typing import Callable, Optional

import torch

from llada_triton.models.dream import dream_step_fractions, dream_transfer_counts  # Dream's schedule (its family's)

__all__ = ["num_transfer_tokens", "linear_schedule", "dream_step_fractions", "dream_transfer_counts",
           "block_counts", "CarrySchedule"]


def num_transfer_tokens(block_masked: torch.Tensor, steps: int) -> torch.Tensor:
    """Official ``get_num_transfer_tokens``, int64 ``[B, steps]``: a row with ``n`` masked positions commits
    ``n // steps`` per step, the first ``n % steps`` steps one more."""
    if steps < 1:
        raise ValueError(f"steps={steps}: need at least one step per block")
    n = block_masked.sum(dim=1, keepdim=True)
    base, rem = n // steps, n % steps
    out = base.expand(-1, steps).clone()
    out += (torch.arange(steps, device=n.device)[None, :] < rem).to(out.dtype)
    return out.to(torch.int64)


def linear_schedule(n_masked: int, steps: int) -> list:
    """Per-step counts (host ints) of a block with ``n_masked`` masks in ``steps`` steps (the official schedule;
    ``Family.schedule`` may replace it)."""
    return num_transfer_tokens(torch.ones(1, n_masked, dtype=torch.bool), steps)[0].tolist()


def block_counts(schedule: Optional[str], family_schedule: Optional[Callable], Lb: int, spb: int, eps: float,
                 refresh_commits_first: bool) -> list:
    """A block's tokens per step (host ints; every block starts fully masked): ``schedule`` None is the family's
    (else LLaDA's linear one cut at ``Lb`` steps), ``"linear"`` LLaDA's, ``"dream"`` Dream's float32 one over all
    ``spb`` steps. ``refresh_commits_first``: the first step commits one position, the rest follow."""
    first = 1 if refresh_commits_first else 0
    if schedule == "dream":
        rest = dream_transfer_counts(Lb - first, spb, eps, first=first)
    else:
        hook = linear_schedule if schedule == "linear" or family_schedule is None else family_schedule
        rest = list(hook(Lb - first, spb - first))
        if hook is linear_schedule:
            rest = rest[:Lb - first]
    return [1] * first + rest


class CarrySchedule:
    """Fast-dLLM's Dream threshold decoding without a cache (one block, ``steps`` steps): each step's candidates
    are the top ``n_masked / steps + carry`` (rejected ones carry over; a rejection at the last step adds a step).
    :meth:`next_k` before a step (None: over), :meth:`update` after it."""

    def __init__(self, n_masked: int, steps: int):
        if steps < 1 or n_masked % steps:
            raise ValueError(f"schedule='carry' needs gen_length ({n_masked}) divisible by steps ({steps})")
        self.base, self.steps, self.carry, self.i = n_masked // steps, steps, 0, 0

    def next_k(self):
        return None if self.i >= self.steps else self.base + self.carry

    def update(self, k: int, committed: int) -> None:
        self.carry = k - committed
        if self.carry and self.i == self.steps - 1:
            self.base, self.steps = 0, self.steps + 1
        self.i += 1
