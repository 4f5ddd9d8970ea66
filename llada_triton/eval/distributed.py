"""Data parallel over processes with ``torch.distributed`` (launched by ``torchrun``): shard a list of
work units across ranks, run each rank's share, gather the results in input order.

Results equal those of one process when each unit's result does not depend on which other units share
its rank (the callers make sure of that: per-request seeds, rows decoded independently).

    dist = init_distributed("cuda")          # reads RANK / WORLD_SIZE / LOCAL_RANK; NCCL on CUDA, gloo on CPU
    mine = shard_indices(len(units), dist, costs=[len(u) for u in units])
    out = gather_results(mine, [work(units[i]) for i in mine], len(units), dist)   # every rank: all results
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

import torch

__all__ = ["Dist", "init_distributed", "shard_indices", "gather_results", "check_world_size"]


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    device: str = "cpu"          # this rank's device (cuda:LOCAL_RANK under torchrun on GPUs)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be an int") from None


def init_distributed(device: Optional[str] = None) -> Dist:
    """This process's :class:`Dist` from the ``torchrun`` environment, joining the default process group
    when ``WORLD_SIZE > 1`` (NCCL for CUDA devices, gloo otherwise). ``device``: ``cpu``, ``cuda`` or
    ``cuda:N``; under ``torchrun`` a bare ``cuda`` becomes ``cuda:LOCAL_RANK`` (else the current device). None: CUDA when available."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = str(device)
    if not (dev == "cpu" or dev == "cuda" or dev.startswith("cuda:")):
        raise ValueError(f"device={device!r}: use 'cpu', 'cuda' or 'cuda:N'")
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but no CUDA device is available")
    if dev == "cuda":  # one process: the current device; under torchrun: this rank's (set_device needs an index)
        dev = f"cuda:{local if world > 1 else torch.cuda.current_device()}"
    if dev.startswith("cuda"):
        torch.cuda.set_device(torch.device(dev))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if dev.startswith("cuda") else "gloo"
        kw = {"device_id": torch.device(dev)} if backend == "nccl" else {}
        torch.distributed.init_process_group(backend=backend, **kw)
    return Dist(rank=rank, world_size=world, device=dev)


def check_world_size(n_units: int, dist: Dist, what: str = "requests") -> None:
    """A clear error when there are fewer units than processes (some rank would have nothing to do)."""
    if dist.world_size > n_units:
        raise ValueError(f"world size {dist.world_size} is larger than the number of {what} ({n_units}): "
                         f"launch at most {n_units} processes")


def shard_indices(n_units: int, dist: Dist, costs: Optional[Sequence[float]] = None,
                  allow_idle: bool = False) -> List[int]:
    """The unit indices this rank runs, ascending. Units are ordered by decreasing cost (ties by index)
    and dealt round-robin, so every rank gets a similar mix; the split depends only on ``n_units``,
    ``costs`` and the world size. Fewer units than ranks is an error unless ``allow_idle``."""
    if not allow_idle:
        check_world_size(n_units, dist)
    if costs is not None and len(costs) != n_units:
        raise ValueError(f"costs has {len(costs)} entries for {n_units} units")
    order = sorted(range(n_units), key=lambda i: (-costs[i], i)) if costs is not None else list(range(n_units))
    return sorted(order[dist.rank::dist.world_size])


def gather_results(indices: Sequence[int], values: Sequence[Any], n_units: int, dist: Dist,
                   dst: Optional[int] = None) -> Optional[List[Any]]:
    """All units' results in input order, from each rank's ``(indices, values)`` (picklable values).
    ``dst=None``: every rank gets the list; ``dst=r``: rank r gets it, the others None."""
    if len(indices) != len(values):
        raise ValueError(f"{len(indices)} indices but {len(values)} values")
    mine = list(zip(indices, values))
    if dist.world_size == 1:
        parts = [mine]
    elif dst is None:
        parts = [None] * dist.world_size
        torch.distributed.all_gather_object(parts, mine)
    else:
        parts = [None] * dist.world_size if dist.rank == dst else None
        torch.distributed.gather_object(mine, parts, dst=dst)
        if dist.rank != dst:
            return None
    out: List[Any] = [None] * n_units
    seen = [False] * n_units
    for part in parts:
        for i, v in part:
            if seen[i]:
                raise RuntimeError(f"unit {i} was returned by two ranks")
            out[i], seen[i] = v, True
    if not all(seen):
        missing = [i for i, s in enumerate(seen) if not s][:5]
        raise RuntimeError(f"no rank returned units {missing} (of {n_units})")
    return out
