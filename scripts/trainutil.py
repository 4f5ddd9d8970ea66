"""What the tiny-model training scripts share (``train_tiny.py``: dense LLaDA; ``train_llada2_tiny.py``: LLaDA2 MoE).

The learning-rate schedule, the AdamW setup over a :class:`llada_triton.models.Params`, the ordered batch stream
(optionally built ahead by spawned worker processes) and the ``--time-budget`` step planner. Importable as
``import trainutil`` when ``scripts/`` is on ``sys.path``; nothing happens at import.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import time
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import torch

__all__ = ["lr_at", "trainable", "make_optimizer", "batch_stream", "StepPlanner", "add_common_args",
           "check_common_args", "finish"]


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

    def replan(self, tag: str, done: int, tc, log: dict):
        """After ``done`` steps: ``tc`` with the planned step count (recorded in ``log``) once the plan is made,
        else None."""
        plan = self.after_step(done, tc.steps)
        if plan is None:
            return None
        print(f"[{tag}] {plan['rate_it_s']:.1f} it/s: {plan['planned']} steps fit the {self.budget:.0f}s budget "
              f"(config: {tc.steps})", flush=True)
        log["train_config"]["steps"] = plan["planned"]
        log["steps_from_time_budget"] = plan
        return dataclasses.replace(tc, steps=plan["planned"])


def add_common_args(ap, configs, default_config: str, task_choices: Sequence[str], default_tasks: Sequence[str]):
    """The command-line options both training scripts have (``ap``: a ``cliutil.ArgumentParser``)."""
    import cliutil

    ap.add_argument("--config", choices=sorted(configs), default=default_config)
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    ap.add_argument("--out", required=True, help="checkpoint folder to write")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=cliutil.positive_int, help="training steps (default: the config's)")
    ap.add_argument("--batch-size", type=cliutil.positive_int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--tasks", type=cliutil.name_list(tuple(task_choices)), default=tuple(default_tasks),
                    help=f"comma-separated task names (default: {','.join(default_tasks)})")
    ap.add_argument("--workers", type=cliutil.nonneg_int, default=0, help="data worker processes (0 = in-process)")
    ap.add_argument("--eval-per-task", type=cliutil.nonneg_int, help="held-out problems per task at the end (0 = skip)")
    ap.add_argument("--log-every", type=cliutil.positive_int, default=100)
    ap.add_argument("--time-budget", type=float,
                    help="seconds of training: after warmup the step count is cut to what fits (recorded in "
                         "train_log.json; rerun with --steps N to reproduce)")
    ap.add_argument("--threads", type=cliutil.positive_int,
                    help="torch CPU threads (1 is often faster on a small shared CPU)")


def check_common_args(ap, a, configs) -> None:
    """One-line errors (exit status 2) for the options of :func:`add_common_args`, before anything trains."""
    import cliutil

    cliutil.check_device(ap, a.device)
    if a.lr is not None and not a.lr > 0:
        ap.fail("--lr", f"{a.lr:g} is not > 0")
    if a.time_budget is not None and configs[a.config].warmup <= 20:
        ap.fail("--time-budget", f"measures speed during warmup, which config {a.config!r} makes too short "
                                 f"({configs[a.config].warmup} <= 20 steps)")
    if os.path.isfile(a.out):
        ap.fail("--out", f"{a.out!r} is a file; give a folder to write the checkpoint into")


def finish(tag: str, stream, pool, cuda: bool, log: dict, t0: float, steps_done: int, named, write: Callable[[], None],
           out: str) -> None:
    """End a training run: stop the batch stream and workers, record steps and seconds in ``log``, freeze the
    parameters, ``write()`` the checkpoint and add ``train_log.json`` to ``out``."""
    stream.close()
    if pool is not None:
        pool.terminate()
    if cuda:
        torch.cuda.synchronize()
    log["steps_done"] = steps_done
    log["train_seconds"] = round(time.perf_counter() - t0, 1)
    print(f"[{tag}] trained {steps_done} steps in {log['train_seconds']}s", flush=True)
    for _, t in named:
        t.requires_grad_(False)
    write()
    with open(os.path.join(out, "train_log.json"), "w") as f:
        json.dump(log, f, indent=1)
        f.write("\n")
    print(f"[{tag}] wrote {out}", flush=True)
