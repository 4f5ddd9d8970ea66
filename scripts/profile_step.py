#!/usr/bin/env python
"""Where the time of one decode step goes: torch.profiler over steps of the fast path.

LLaDA-8B shape with random bf16 weights on the GPU. Prints the CUDA time per kernel name (summed over
the profiled steps, divided per step), the GPU's busy time (union of kernel intervals) against the span of
the profiled steps (the rest is idle: launch gaps, host stalls), and writes a Chrome trace. ``--graphs``
profiles CUDA-graph replays (as the benchmark runs) instead of eager steps, and first times the same steps
without the profiler.

    python scripts/profile_step.py --policy block --batch 1 --trace /tmp/step_trace.json
    python scripts/profile_step.py --policy none --batch 1 --graphs
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _p in (ROOT, os.path.join(ROOT, "scripts")):
    if _p not in sys.path:
        sys.path.insert(0, _p)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--policy", default="block")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--gen", type=int, default=256)
    p.add_argument("--block-length", type=int, default=32)
    p.add_argument("--steps", type=int, default=8, help="steady steps profiled")
    p.add_argument("--trace", default=None)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--graphs", action="store_true", help="profile CUDA-graph replays instead of eager steps")
    args = p.parse_args(argv)
    import torch
    from torch.profiler import ProfilerActivity, profile

    from _bench import llada_8b, timed_window
    from provenance import environment
    from llada_triton.decode import Workspace, generate_stream
    from llada_triton.models import init_params, triton_ops

    cfg = llada_8b()
    params = init_params(cfg, device="cuda", dtype=torch.bfloat16)
    ops = triton_ops()
    prompts = torch.randint(0, 126000, (args.batch, args.prompt), generator=torch.Generator().manual_seed(0)).tolist()
    opts = dict(gen_length=args.gen, block_length=args.block_length, steps=args.gen, cache=args.policy, ops=ops,
                early_stop=False, workspace=Workspace(), cuda_graphs=args.graphs)

    def run(n, prof=None):
        """Run the ``n`` steps after block 1's first (bench_decode's window); profile exactly those when
        ``prof`` is given. Returns (seconds per step, steps run)."""
        stream = generate_stream(params, cfg, prompts, **opts)

        def sync():  # the window's first sync starts the profiler
            torch.cuda.synchronize()
            if prof is not None and not prof_on:
                prof.start()
                prof_on.append(True)
        prof_on = []
        try:
            elapsed, k, _ = timed_window(stream, n, sync)
        finally:
            stream.close()
            if prof_on:
                prof.stop()
        return elapsed / k, k

    run(3)  # compile (and capture the graphs)
    wall, _ = run(args.steps)  # the same steps without the profiler (host and GPU)
    prof = profile(activities=[ProfilerActivity.CUDA])
    _, n = run(args.steps, prof)
    per_kernel = defaultdict(float)
    count = defaultdict(int)
    spans = []
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            name = e.name
            per_kernel[name] += e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
            count[name] += 1
            spans.append((e.time_range.start, e.time_range.end))
    total = sum(per_kernel.values())
    busy, span = _busy(spans)
    print(f"policy {args.policy} batch {args.batch} ({'graphs' if args.graphs else 'eager'}): GPU kernel time "
          f"{total / n / 1e3:.3f} ms per step, GPU busy {busy / n / 1e3:.3f} ms of a {span / n / 1e3:.3f} ms span "
          f"per step ({environment()}); unprofiled: {wall * 1e3:.3f} ms per step")
    for name, t in sorted(per_kernel.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"{t / n:10.1f} us/step  {count[name] / n:6.1f} calls/step  {name[:110]}")
    if args.trace:
        prof.export_chrome_trace(args.trace)


def _busy(spans):
    """(time covered by the union of the ``(start, end)`` intervals, first start to last end)."""
    if not spans:
        return 0.0, 0.0
    spans = sorted(spans)
    busy, (cs, ce) = 0.0, spans[0]
    for s0, e0 in spans[1:]:
        if s0 > ce:
            busy += ce - cs
            cs, ce = s0, e0
        else:
            ce = max(ce, e0)
    busy += ce - cs
    return busy, max(e for _, e in spans) - spans[0][0]


if __name__ == "__main__":
    main()
