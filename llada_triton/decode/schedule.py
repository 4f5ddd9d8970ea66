"""How many tokens to commit at each step of a block: LLaDA's linear schedule and Dream's float32 one."""
from __future__ import annotations

import torch

__all__ = ["num_transfer_tokens", "dream_step_fractions", "dream_transfer_counts", "CarrySchedule"]


def num_transfer_tokens(block_masked: torch.Tensor, steps: int) -> torch.Tensor:
    """Official ``get_num_transfer_tokens``: int64 ``[B, steps]``.

    With ``n`` masked positions in a row's block, every step commits ``n // steps`` tokens and the
    first ``n % steps`` steps one more. With ``steps > n`` the later steps commit 0.
    """
    if steps < 1:
        raise ValueError(f"steps={steps}: need at least one step per block")
    n = block_masked.sum(dim=1, keepdim=True)
    base = n // steps
    rem = n % steps
    out = base.expand(-1, steps).clone()
    out += (torch.arange(steps, device=n.device)[None, :] < rem).to(out.dtype)
    return out.to(torch.int64)


def dream_step_fractions(steps: int, eps: float) -> torch.Tensor:
    """Dream's ``1 - s / t`` per step in float32 (``timesteps = linspace(1, eps, steps + 1)``; the last step is 1):
    the fraction of the masked positions a step transfers (``alg='origin'``: each one's probability)."""
    if steps < 1:
        raise ValueError(f"steps={steps}: need at least one step")
    if not 0.0 < float(eps) < 1.0:
        raise ValueError(f"eps={eps} must be in (0, 1)")
    t = torch.linspace(1, float(eps), steps + 1, dtype=torch.float32)
    frac = 1 - t[1:] / t[:-1]
    frac[-1] = 1.0
    return frac


def dream_transfer_counts(n_masked: int, steps: int, eps: float, first: int = 0) -> list:
    """Dream's schedule: host ints, the tokens transferred at steps ``first .. steps - 1`` of a block that has
    ``n_masked`` masked positions at step ``first``. Step ``i < steps - 1`` transfers ``int(n * (1 - s / t))``,
    computed in float32 and truncated (so with ``steps == n_masked`` the first step transfers 0); the last step
    transfers what is left. Fast-dLLM's Dream caches count from ``first = 1`` after the block-start commit."""
    frac = dream_step_fractions(steps, eps)
    n = torch.tensor(float(n_masked), dtype=torch.float32)
    out = []
    for i in range(first, steps):
        c = int(n_masked) if i == steps - 1 else int(n * frac[i])
        out.append(c)
        n_masked -= c
        n = torch.tensor(float(n_masked), dtype=torch.float32)
    return out


class CarrySchedule:
    """Fast-dLLM's Dream threshold decoding without a cache (one block of ``n_masked`` positions, ``steps`` steps).

    Each step's candidates are the top ``n_masked / steps + carry``; the rule keeps the first and those above the
    threshold, and the rejected ones are carried into the next step's count. A rejection at the last step adds
    one step whose candidates are all the positions left (and so on until every position is committed).
    Host state: :meth:`next_k` before a step (None: decoding is over), :meth:`update` with the step's count.
    """

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
