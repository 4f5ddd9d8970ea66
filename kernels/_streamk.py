"""Stream-K work split for the decode GEMMs (weight streaming at a handful of token rows).

A decode GEMM has ``tiles`` output tiles of ``KI`` K-blocks each. With one program per tile the grid is
``tiles`` programs, which on 132 SMs is uneven for LLaDA-8B's gate-up and QKV projections (192 tiles:
1.45 programs per SM, so some SMs stream twice as much weight as others). Stream-K runs ``G`` programs
(one per SM) and gives program ``p`` the contiguous range ``[p * TOTAL // G, (p + 1) * TOTAL // G)`` of the
``TOTAL = tiles * KI`` (tile, K-block) iterations, tile-major: every program streams the same number of
weight bytes, up to one K-block.

A tile whose iterations fall to several programs (at most :func:`max_slots` of them) is finished by the
last of them to arrive: each writes its fp32 partial into its own slot of a workspace
``[tiles, slots, ...]``, then increments the tile's counter (release/acquire at GPU scope); the program that
sees the count reach the number of contributors sums the slots **in slot order** (deterministic: the same
sum whoever arrives last), runs the epilogue and resets the counter to zero. Nothing waits, so there is no
deadlock whatever the scheduling. The counters live in one zero-initialised int32 buffer per device
(:func:`counters`), which every launch leaves at zero; two stream-K launches must therefore not run at the
same time on different streams of one device (all decode paths of this package run on one stream, and PDL
kernels touch the counters only after ``gdc_wait``, i.e. after the previous kernel has completed).
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from kernels._common import cdiv


@triton.jit
def sk_range(pid, G, TOTAL):
    """Program ``pid``'s half-open iteration range."""
    return pid * TOTAL // G, (pid + 1) * TOTAL // G


@triton.jit
def sk_owner(i, G, TOTAL):
    """The program whose range holds iteration ``i``: the largest ``p`` with ``p * TOTAL // G <= i``."""
    return ((i + 1) * G - 1) // TOTAL


@triton.jit
def sk_segment(it, end, KI):
    """The segment of a program's range that starts at iteration ``it``: ``(tile, k0, k1)``, K-blocks
    ``[k0, k1)`` of ``tile`` (it ends at the tile's end or at the range's end)."""
    tile = it // KI
    k0 = it - tile * KI
    k1 = tl.minimum(KI, k0 + (end - it))
    return tile, k0, k1


@triton.jit
def sk_contributors(tile, KI, G, TOTAL):
    """``(first, n)``: the first program holding iterations of ``tile``, and how many programs do."""
    first = sk_owner(tile * KI, G, TOTAL)
    return first, sk_owner(tile * KI + KI - 1, G, TOTAL) - first + 1


@triton.jit
def _tile_offsets(R: tl.constexpr, C: tl.constexpr):
    return tl.arange(0, R)[:, None] * C + tl.arange(0, C)[None, :]


@triton.jit
def sk_publish(ws_ptr, acc, slot_off, R: tl.constexpr, C: tl.constexpr):
    """Write this program's fp32 partial ``acc [R, C]`` at element offset ``slot_off`` of the workspace."""
    tl.store(ws_ptr + slot_off + _tile_offsets(R, C), acc)


@triton.jit
def sk_arrive(cnt_ptr, n):
    """Count this program's partials of a tile (after :func:`sk_publish`); True for the last of the ``n``
    contributors, which also resets the counter.

    Ordering (the pattern of CUTLASS's semaphores): every thread's partial stores, a CTA barrier, then one
    thread's ``atom.acq_rel.gpu``; its result reaches the other threads through shared memory and a second
    barrier, so their loads of the other programs' partials come after the acquire. Triton emits both
    barriers around a scalar atomic (checked on the PTX by tests/test_streamk.py); an explicit
    ``tl.debug_barrier()`` here would stop the caller's K loop from being software-pipelined."""
    old = tl.atomic_add(cnt_ptr, 1, sem="acq_rel", scope="gpu")
    last = old == n - 1
    tl.store(cnt_ptr, 0, mask=last)
    return last


@triton.jit
def sk_collect(ws_ptr, tile_off, n, slot_stride, R: tl.constexpr, C: tl.constexpr, SLOTS: tl.constexpr):
    """The sum of a tile's ``n <= SLOTS`` partials in slot order (L2 loads: other SMs wrote them). Unrolled
    over ``SLOTS`` with masks: a nested loop would stop the caller's K loop from being pipelined."""
    offs = _tile_offsets(R, C)
    acc = tl.zeros((R, C), dtype=tl.float32)
    for s in tl.static_range(SLOTS):
        live = tl.full((R, C), s, tl.int32) < n
        acc += tl.load(ws_ptr + tile_off + s * slot_stride + offs, mask=live, other=0.0, cache_modifier=".cg")
    return acc


@functools.lru_cache(maxsize=1024)
def max_slots(tiles: int, KI: int, G: int) -> int:
    """The most programs sharing one tile (the workspace's slots per tile)."""
    total = tiles * KI
    owner = lambda i: ((i + 1) * G - 1) // total  # noqa: E731  (the kernel's sk_owner)
    return max(owner(t * KI + KI - 1) - owner(t * KI) + 1 for t in range(tiles))


@functools.lru_cache(maxsize=None)
def sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def programs(device: torch.device, tiles: int, KI: int, per_sm: int = 1) -> int:
    """The stream-K grid: ``per_sm`` programs per SM, at most one per iteration (CPU: 4 per "SM" of 1)."""
    if device.type == "cuda":
        g = per_sm * sm_count(device.index if device.index is not None else torch.cuda.current_device())
    else:
        g = per_sm
    return max(1, min(g, tiles * KI))


_COUNTERS: dict = {}


def counters(device: torch.device, n: int) -> torch.Tensor:
    """The device's zeroed int32 tile counters (at least ``n``; every stream-K launch leaves them zero).
    Grown (a new zeroed buffer) when a launch needs more; allocate outside CUDA-graph capture first (the
    decode engine's eager warm-up step does)."""
    key = (device.type, device.index)
    buf = _COUNTERS.get(key)
    if buf is None or buf.numel() < n:
        buf = torch.zeros(max(n, 4096), dtype=torch.int32, device=device)
        _COUNTERS[key] = buf
    return buf


def check_sizes(tiles: int, KI: int, G: int) -> None:
    """The kernels index iterations in int32: ``(TOTAL + 1) * G`` must fit."""
    if (tiles * KI + 1) * G >= 2 ** 31:
        raise ValueError(f"stream-K split of {tiles} tiles x {KI} K-blocks over {G} programs overflows int32")


__all__ = ["sk_range", "sk_owner", "sk_segment", "sk_contributors", "sk_publish", "sk_arrive", "sk_collect",
           "max_slots", "programs", "counters", "check_sizes", "cdiv"]
