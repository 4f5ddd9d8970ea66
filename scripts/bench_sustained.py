#!/usr/bin/env python
"""Burst vs sustained speed of one decode step's matmuls: what the GPU's power cap leaves of its peak.

Compute-bound decode steps (``block`` at batch 32 = 1024 rows, ``none`` at batch 1 = 384 rows) run the GPU
at its board power limit, where the SM clock falls well below its maximum. Short benchmarks (``do_bench``
of one 8192^3 matmul, the "bf16 matmul peak" in bench_decode's floor) measure the burst speed; a decode
of hundreds of steps runs at the sustained one. This script measures both for the step's transformer
matmuls alone, done by cuBLAS (32 layers of fused QKV, O, fused gate-up and down at the LLaDA-8B shapes,
no LM head, no attention, no activation), captured in one CUDA graph and replayed back to back:

* burst: the median of the first replays after the GPU has idled for ``--idle`` seconds;
* sustained: the median of the replays in the last second of ``--seconds`` of continuous replays;
* the SM clock and board power sampled by ``nvidia-smi`` every 100 ms during each phase (when it is on the
  PATH; NaN when no sample fell inside a phase, as for a burst shorter than the sampling period).

The sustained time of the matmuls alone is a floor that no decode step at that row count can beat with
cuBLAS-speed GEMMs on this GPU and power limit.

    python scripts/bench_sustained.py --rows 384,1024 --out results/bench_decode/sustained.csv
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _p in (ROOT, os.path.join(ROOT, "scripts")):
    if _p not in sys.path:
        sys.path.insert(0, _p)


class Sampler:
    """``nvidia-smi`` samples of (time, SM MHz, watts, clock-event reasons) in a background thread."""

    def __init__(self, period_ms: int = 100):
        self.samples = []
        self.proc = None
        try:
            self.proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=clocks.sm,power.draw,clocks_event_reasons.active",
                 "--format=csv,noheader,nounits", f"-lms={period_ms}"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError:
            return
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            parts = [p.strip() for p in line.split(",")]
            try:
                self.samples.append((time.perf_counter(), float(parts[0]), float(parts[1]), parts[2]))
            except (ValueError, IndexError):
                continue

    def window(self, t0: float, t1: float):
        """(median SM MHz, median W, the clock-event reasons seen) of the samples in ``[t0, t1]``."""
        s = [x for x in self.samples if t0 <= x[0] <= t1]
        if not s:
            return float("nan"), float("nan"), ""
        return (statistics.median(x[1] for x in s), statistics.median(x[2] for x in s),
                "/".join(sorted({x[3] for x in s})))

    def close(self):
        if self.proc is not None:
            self.proc.terminate()


def step_matmuls(rows: int, weights, device):
    """A function running the step's 4 x n_layers cuBLAS matmuls for ``rows`` rows (static buffers)."""
    import torch

    d = weights[0][0].shape[1]
    h = weights[0][3].shape[1]
    x = torch.randn(rows, d, device=device, dtype=torch.bfloat16)
    qkv = torch.empty(rows, weights[0][0].shape[0], device=device, dtype=torch.bfloat16)
    big = torch.empty(rows, 2 * h, device=device, dtype=torch.bfloat16)
    act = torch.randn(rows, h, device=device, dtype=torch.bfloat16)
    y = torch.empty(rows, d, device=device, dtype=torch.bfloat16)

    def run():
        for w_qkv, w_o, w_gu, w_d in weights:
            torch.mm(x, w_qkv.t(), out=qkv)
            torch.mm(x, w_o.t(), out=y)
            torch.mm(x, w_gu.t(), out=big)
            torch.mm(act, w_d.t(), out=y)
    flops = 2 * rows * sum(w.numel() for layer in weights for w in layer)
    return run, flops


def mlp_chain(rows: int, weights, device, provider: str):
    """n_layers MLPs (no residual) for ``rows`` rows: ``mlp-cublas`` = two cuBLAS GEMMs around the Triton
    ``silu_mul`` (the decode path's MLP at 65-1023 rows), ``mlp-triton`` = ``kernels.swiglu_mlp``."""
    import torch

    from llada_triton.kernels import silu_mul, swiglu_mlp

    d, h = weights[0][0].shape[1], weights[0][3].shape[1]
    x = torch.randn(rows, d, device=device, dtype=torch.bfloat16)
    gu = torch.empty(rows, 2 * h, device=device, dtype=torch.bfloat16)
    act = torch.empty(rows, h, device=device, dtype=torch.bfloat16)
    y = torch.empty(rows, d, device=device, dtype=torch.bfloat16)

    def run():
        for _, _, w_gu, w_d in weights:
            if provider == "mlp-triton":
                swiglu_mlp(x, w_gu, w_d, out=y)
            else:
                torch.mm(x, w_gu.t(), out=gu)
                silu_mul(gu, out=act)
                torch.mm(act, w_d.t(), out=y)
    return run, 2 * rows * sum(w_gu.numel() + w_d.numel() for _, _, w_gu, w_d in weights)


def replay_times(g, seconds: float):
    """Back-to-back replays of graph ``g`` for ``seconds``: [(host time at the end, ms of the replay)]."""
    import torch

    out, pending = [], []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        pending.append((a, b))
        if len(pending) >= 4:  # keep a few replays queued, read the oldest
            a0, b0 = pending.pop(0)
            b0.synchronize()
            out.append((time.perf_counter(), a0.elapsed_time(b0)))
    for a0, b0 in pending:
        b0.synchronize()
        out.append((time.perf_counter(), a0.elapsed_time(b0)))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default="384,1024", help="row counts (batch x block, or the whole sequence for none)")
    p.add_argument("--seconds", type=float, default=10.0, help="continuous replay per row count")
    p.add_argument("--idle", type=float, default=5.0, help="idle seconds before each burst measurement")
    p.add_argument("--burst-replays", type=int, default=5)
    p.add_argument("--out", default=os.path.join(ROOT, "results", "bench_decode", "sustained.csv"))
    p.add_argument("--chains", default="matmuls", help="comma list of: matmuls (the step's four cuBLAS matmuls "
                   "per layer), mlp-cublas, mlp-triton (the MLP alone: cuBLAS + silu_mul, or the fused Triton MLP)")
    p.add_argument("--sha", default=None)
    args = p.parse_args(argv)
    import torch

    from _bench import LLADA_8B
    from provenance import environment

    info = environment("cuda", args.sha)
    d, h, nl = LLADA_8B["d_model"], LLADA_8B["mlp_hidden_size"], LLADA_8B["n_layers"]
    dev = torch.device("cuda")

    def w(n, k):
        return torch.randn(n, k, device=dev, dtype=torch.bfloat16) / k ** 0.5
    weights = [(w(3 * d, d), w(d, d), w(2 * h, d), w(d, h)) for _ in range(nl)]
    sampler = Sampler()
    rows_out = []
    try:
        for chain, rows in [(c, r) for r in map(int, args.rows.split(",")) for c in args.chains.split(",")]:
            if chain == "matmuls":
                run, flops = step_matmuls(rows, weights, dev)
            elif chain in ("mlp-cublas", "mlp-triton"):
                run, flops = mlp_chain(rows, weights, dev, chain)
            else:
                raise SystemExit(f"--chains: unknown chain {chain!r}; choose from matmuls, mlp-cublas, mlp-triton")
            run()  # warm-up (cuBLAS algorithm choice and workspace, Triton compilation) before capture
            torch.cuda.synchronize()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                run()
            torch.cuda.synchronize()
            time.sleep(args.idle)
            t0 = time.perf_counter()
            times = []
            for _ in range(args.burst_replays):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                g.replay()
                b.record()
                b.synchronize()
                times.append(a.elapsed_time(b))
            burst = statistics.median(times)
            burst_clk, burst_w, _ = sampler.window(t0, time.perf_counter())
            rep = replay_times(g, args.seconds)
            t_last = rep[-1][0]
            last = [ms for t, ms in rep if t >= t_last - 1.0]
            sust = statistics.median(last)
            clk, watts, reasons = sampler.window(t_last - 1.0, t_last)
            row = dict(chain=chain, rows=rows, burst_ms=round(burst, 3), sustained_ms=round(sust, 3),
                       burst_tflops=round(flops / burst / 1e9, 1), sustained_tflops=round(flops / sust / 1e9, 1),
                       burst_sm_mhz=burst_clk, sustained_sm_mhz=clk, sustained_w=watts, clock_reasons=reasons,
                       seconds=args.seconds, replays=len(rep), **info)
            print(row, flush=True)
            rows_out.append(row)
            del g
    finally:
        sampler.close()
    if not rows_out:
        raise SystemExit("no chain was measured")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows_out[0]))
        wr.writeheader()
        wr.writerows(rows_out)
    return rows_out


if __name__ == "__main__":
    main()
