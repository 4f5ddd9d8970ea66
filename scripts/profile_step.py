#!/usr/bin/env python
"""Where the time of one decode step goes: torch.profiler over eager steps of the fast path.

LLaDA-8B shape with random bf16 weights on the GPU. Prints the CUDA time per kernel name (summed over
the profiled steps, divided per step) and per layer-level op, and writes a Chrome trace.

    python scripts/profile_step.py --policy block --batch 1 --trace results/step_trace.json
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))


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
    args = p.parse_args(argv)
    import torch
    from torch.profiler import ProfilerActivity, profile

    from bench_decode import LLADA_8B
    from decode import generate_stream
    from decode.generate import StepEvent, Workspace
    from llada import LLaDAConfig, init_params, triton_ops

    cfg = LLaDAConfig(**LLADA_8B)
    params = init_params(cfg, device="cuda", dtype=torch.bfloat16)
    ops = triton_ops()
    prompts = torch.randint(0, 126000, (args.batch, args.prompt), generator=torch.Generator().manual_seed(0)).tolist()
    opts = dict(gen_length=args.gen, block_length=args.block_length, steps=args.gen, cache=args.policy, ops=ops,
                early_stop=False, device_positions=True, workspace=Workspace())

    def run(n, prof=None):
        """Run until ``n`` steady steps of block 1 have run; profile exactly those when ``prof`` is given."""
        stream = generate_stream(params, cfg, prompts, **opts)
        k = 0
        for ev in stream:
            if not isinstance(ev, StepEvent) or ev.block < 1:
                continue
            if ev.step == 0:
                torch.cuda.synchronize()
                if prof is not None:
                    prof.start()
                continue
            k += 1
            if k == n:
                break
        torch.cuda.synchronize()
        if prof is not None:
            prof.stop()
        stream.close()

    run(3)  # compile
    prof = profile(activities=[ProfilerActivity.CUDA])
    run(args.steps, prof)
    per_kernel = defaultdict(float)
    count = defaultdict(int)
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            name = e.name
            per_kernel[name] += e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
            count[name] += 1
    total = sum(per_kernel.values())
    n = args.steps
    print(f"policy {args.policy} batch {args.batch}: GPU kernel time {total / n / 1e3:.3f} ms per step "
          f"({torch.cuda.get_device_name()})")
    for name, t in sorted(per_kernel.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"{t / n:10.1f} us/step  {count[name] / n:6.1f} calls/step  {name[:110]}")
    if args.trace:
        prof.export_chrome_trace(args.trace)


if __name__ == "__main__":
    main()
