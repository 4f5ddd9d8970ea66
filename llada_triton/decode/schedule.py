"""How many tokens to commit at each step of a block (LLaDA's linear schedule; a family may bring its own)."""
from __future__ import annotations

import torch

__all__ = ["num_transfer_tokens", "linear_schedule"]


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


def linear_schedule(n_masked: int, steps: int) -> list:
    """Per-step counts (host ints) for a block with ``n_masked`` masked positions in ``steps`` steps: the official
    schedule (the drivers call it with the block length: every block starts fully masked). A model family may
    replace it through ``Family.schedule`` (same signature)."""
    return num_transfer_tokens(torch.ones(1, n_masked, dtype=torch.bool), steps)[0].tolist()
