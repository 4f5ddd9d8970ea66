"""Where the prompts and the blocks sit in the driver's token buffer (the block-grid hook of :func:`generate`).

A :class:`Layout` puts row r's prompt in columns ``[pad[r], pad[r] + P_r)`` of one ``[B, width]`` buffer (left
padding hidden by ``kv_start = pad``), block b in ``[first + b * Lb, first + (b + 1) * Lb)``, row r's answer from
``gen_start[r]``.

* :func:`prompt_layout` (LLaDA): prompts left-padded to width P, ``gen_length / Lb`` blocks from P.
* :func:`absolute_layout` (LLaDA2.x): blocks on the absolute grid ``[jB, (j+1)B)`` of each row's own positions,
  from the block holding the prompt's end to ``ceil((P + G) / B)`` (the overhang is decoded too); pads are
  multiples of B so the rows' grids share columns (a row whose grid ends a block earlier finishes at
  ``row_end``); the prompt is seen block-causally (``block_causal``), as LLaDA2 is trained.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Layout", "prompt_layout", "absolute_layout", "grid_key_end"]


@dataclass
class Layout:
    tokens: torch.Tensor      # int64 [B, P]: prompt columns (pads before each prompt, masks after it)
    pad: torch.Tensor         # int64 [B]: left pads (columns hidden from attention)
    first: int                # column of block 0's start
    n_blocks: int
    width: int                # columns of the token buffer: first + n_blocks * Lb
    gen_start: torch.Tensor   # int64 [B]: column of each row's first generated position
    row_end: torch.Tensor     # int64 [B]: column where each row's blocks end (a row is finished there)
    gen_length: int
    block_causal: bool        # the prompt attends block-causally on the grid (else it sees itself)

    @property
    def prompt_lengths(self) -> list:
        return (self.gen_start - self.pad).tolist()


def prompt_layout(tokens: torch.Tensor, pad: torch.Tensor, gen_length: int, block_length: int) -> Layout:
    """LLaDA's layout of left-padded prompts ``tokens`` ``[B, P]`` (``pad`` ``[B]``)."""
    B, P = tokens.shape
    full = torch.full((B,), P, dtype=torch.int64, device=tokens.device)
    return Layout(tokens, pad, P, gen_length // block_length, P + gen_length, full, full + gen_length, gen_length,
                  False)


def absolute_layout(rows: list, gen_length: int, block_length: int, *, pad_id: int, mask_id: int,
                    device=None, min_first: int = 0) -> Layout:
    """The absolute block grid (module docstring) of prompts ``rows`` (lists of ids); block 0 starts at column
    ``min_first`` or later (the slot runner wants a whole block before it)."""
    B_ = block_length
    j0 = [len(r) // B_ for r in rows]                     # each row's first block on its own grid
    first = max(max(j0) * B_, -(-min_first // B_) * B_)
    pads = [first - j * B_ for j in j0]
    ends = [p + -(-(len(r) + gen_length) // B_) * B_ for p, r in zip(pads, rows)]
    width = max(ends)
    P = max(p + len(r) for p, r in zip(pads, rows))
    tokens = torch.full((len(rows), P), mask_id, dtype=torch.int64)
    for i, (p, r) in enumerate(zip(pads, rows)):
        tokens[i, :p] = pad_id
        tokens[i, p:p + len(r)] = torch.tensor(r, dtype=torch.int64)
    i64 = dict(dtype=torch.int64, device=device)
    return Layout(tokens.to(device), torch.tensor(pads, **i64), first, (width - first) // B_, width,
                  torch.tensor([p + len(r) for p, r in zip(pads, rows)], **i64), torch.tensor(ends, **i64),
                  gen_length, True)


def grid_key_end(lo: int, hi: int, first: int, block_length: int, device) -> torch.Tensor:
    """int64 ``[hi - lo]``: column c of ``[lo, hi)`` sees keys ``<`` the end of its block on the grid whose
    boundaries are ``first + j * block_length`` (block-causal; columns below ``first`` included)."""
    c = torch.arange(lo, hi, device=device)
    return torch.div(c - first, block_length, rounding_mode="floor") * block_length + first + block_length
