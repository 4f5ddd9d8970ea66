"""What the tiny-model training scripts share (``train_tiny.py``: dense LLaDA; ``train_llada2_tiny.py``: LLaDA2 MoE).

The learning-rate schedule, the AdamW setup over a :class:`llada_triton.models.Params`, the ordered batch stream
(optionally built ahead by spawned worker processes) and the ``--time-budget`` step planner. Importable as
``import trainutil`` when ``scripts/`` is on ``sys.path``; nothing happens at import.
"""
from __future__ import annotations

import collections
import math
import time
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import torch

__all__ = ["lr_at", "trainable", "make_optimizer", "batch_stream", "StepPlanner"]


def lr_at(step: int, tc) -> float:
    """Linear warmup to ``tc.lr`` over ``tc.warmup`` steps, then cosine to ``tc.min_lr_ratio * tc.lr`` at
    ``tc.steps``."""
    if step < tc.warmup:
        return tc.lr * (step + 1) / tc.warmup
    p = (step - tc.warmup) / max(1, tc.steps - tc.warmup)
    return tc.lr * (tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


def trainable(params, skip: Sequence[str] = ()) -> List[Tuple[str, torch.Tensor]]:
    """``(name, tensor)`` of every parameter whose name does not end in one of ``skip``, made to require grad."""
    named = [(n, t) for n, t in params.tensors() if not any(n.endswith(s) for s in skip)]
    for _, t in named:
        t.requires_grad_(True)
    return named


def make_optimizer(named: Sequence[Tuple[str, torch.Tensor]], tc, cuda: bool) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices (and stacked expert matrices) only."""
    decay = [t for _, t in named if t.dim() >= 2]
    no_decay = [t for _, t in named if t.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=tc.lr, betas=tc.betas,
                             **({"fused": True} if cuda else {}))


def _call(fn_args):
    fn, args = fn_args
    return fn(*args)


def batch_stream(make: Callable, args: Callable[[int], tuple], steps: int, pool=None, start: int = 0,
                 ahead: int = 32) -> Iterator:
    """``make(*args(k))`` for k in ``start..steps-1``, in order. With a ``multiprocessing`` ``pool`` they are built up
    to ``ahead`` batches in advance by its workers (``make`` must be a module-level function); a batch depends only
    on its arguments, never on the worker."""
    if pool is None:
        for k in range(start, steps):
            yield make(*args(k))
        return
    pending = collections.deque()
    nxt = start
    while nxt < min(steps, start + ahead):
        pending.append(pool.apply_async(_call, ((make, args(nxt)),)))
        nxt += 1
    for _ in range(start, steps):
        res = pending.popleft().get()
        if nxt < steps:
            pending.append(pool.apply_async(_call, ((make, args(nxt)),)))
            nxt += 1
        yield res


class StepPlanner:
    """``--time-budget``: time steps 10..warmup, then fix the step count to what fits the budget (warmup does not
    depend on it, so rerunning with ``--steps`` the planned count reproduces the run)."""

    def __init__(self, budget_s: Optional[float], warmup: int, cuda: bool, t0: float):
        if budget_s is not None and warmup <= 20:
            raise ValueError(f"--time-budget measures speed during warmup: needs warmup > 20 steps, got {warmup}")
        self.budget, self.warmup, self.cuda, self.t0, self.t_calib = budget_s, warmup, cuda, t0, None

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def after_step(self, done: int, configured: int) -> Optional[dict]:
        """Call after ``done`` steps; returns ``{budget_s, rate_it_s, planned}`` once, at the end of warmup."""
        if self.budget is None:
            return None
        if done == 10:
            self.t_calib = self._now()
        if done != self.warmup:
            return None
        rate = (done - 10) / (self._now() - self.t_calib)
        planned = max(done, min(configured, int((self.budget - (self.t_calib - self.t0)) * rate)))
        return {"budget_s": self.budget, "rate_it_s": round(rate, 2), "planned": planned}
