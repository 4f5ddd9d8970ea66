#!/usr/bin/env python
"""Per-kernel time windows of the graphed decode step, measured on the GPU's own clock (CUDA, sm_90+).

With programmatic dependent launch (PDL) the kernels of a step overlap: each one is launched while its
predecessor runs and then waits (``gdc_wait``) until the predecessor has finished, so profiler kernel
durations add up to far more than the step (``scripts/profile_step.py --graphs``: 7.2 ms of kernel time in a
4.5 ms step) and do not say where the step's time goes. This script instead records, in every CTA of every
Triton kernel that waits through ``kernels._common.gdc_wait_and_release``, the SM clock-independent
``%globaltimer`` at kernel entry and at the moment the wait returned (the *release*: the previous kernel has
completed). Consecutive releases partition the step: the window of a kernel, from its release to the next
kernel's release, is the time the step spends on it, including its tail and the dependency hop to the next
kernel. Kernels that do not wait through that helper (cuBLAS, torch ops, launches of more than 64 rows) fall
inside the window of the recorded kernel before them; the LM head, its merge and the fused commit are recorded
(module ``remask``) when they run with PDL (up to 64 rows).

How: before the kernels compile, the script replaces ``gdc_wait_and_release`` in each kernel module by a
version that also writes ``(smid, entry, release, module tag and program count)`` of its CTA into a device
buffer (global addresses baked into the generated function as constants). Nothing in the library changes;
the instrumented step runs a few percent slower than the plain one (the table prints both step times).

    python scripts/timeline_step.py                       # block policy, batch 1, 128 x 256 (LLaDA-8B shape)
    python scripts/timeline_step.py --csv results/kernels.csv

Rows are labelled by module, program count and position after the layer's attention kernel (for the LLaDA
block step at batch 1: attention, O projection, its split-K reduce + RMSNorm, gate-up, down, reduce + norm,
QKV of the next layer).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))

MODULES = ("mlp", "attention", "qkv", "norm", "rotary", "remask")  # kernel modules that use gdc_wait_and_release
_TAG_SCALE = 1_000_000                                    # record label = tag * _TAG_SCALE + program count

_SRC = '''
import triton
import triton.language as tl

BUF = tl.constexpr({buf})
CNT = tl.constexpr({cnt})
CAP = tl.constexpr({cap})
LABEL = tl.constexpr({label})


@triton.jit
def gdc_wait_and_release(USE_GDC: tl.constexpr):
    if USE_GDC:
        pid = tl.program_id(0)
        t0 = tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l,r", [pid], dtype=tl.int64, is_pure=False,
                                       pack=1)
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
        t1 = tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l,r", [pid], dtype=tl.int64, is_pure=False,
                                       pack=1)
        sm = tl.inline_asm_elementwise("mov.u32 $0, %smid;", "=r,r", [pid], dtype=tl.int32, is_pure=False, pack=1)
        slot = tl.atomic_add(tl.full((), CNT, tl.int64).to(tl.pointer_type(tl.int32)), 1) % CAP
        base = tl.full((), BUF, tl.int64).to(tl.pointer_type(tl.int64)) + slot.to(tl.int64) * 4
        nprog = tl.num_programs(0) * tl.num_programs(1) * tl.num_programs(2)
        tl.store(base, sm.to(tl.int64))
        tl.store(base + 1, t0)
        tl.store(base + 2, t1)
        tl.store(base + 3, nprog.to(tl.int64) + LABEL)
'''


def make_recorder(buf_addr: int, cnt_addr: int, capacity: int, tag: int, directory: str):
    """A drop-in ``gdc_wait_and_release`` that also records its CTA (see the module docstring)."""
    path = os.path.join(directory, f"_timeline_wait_{tag}.py")
    with open(path, "w") as f:
        f.write(_SRC.format(buf=int(buf_addr), cnt=int(cnt_addr), cap=int(capacity), label=tag * _TAG_SCALE))
    spec = importlib.util.spec_from_file_location(f"_timeline_wait_{tag}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.gdc_wait_and_release


def launches(records, gap_ns: int = 150):
    """Group per-CTA records ``[smid, entry, release, label]`` into launches: CTAs of one launch are released
    together (within ``gap_ns``); CTAs that only found a free SM later (further waves) join the open launch
    of the same label until it has all its programs. Returns rows ``[label, ctas, entry_min, entry_max,
    release_min, release_max]`` in release order."""
    import numpy as np

    r = records[np.argsort(records[:, 2], kind="stable")]
    out = []
    start = 0
    for i in range(1, len(r) + 1):
        if i == len(r) or r[i, 2] - r[i - 1, 2] > gap_ns or r[i, 3] != r[start, 3]:
            g = r[start:i]
            label = int(g[0, 3])
            if out and out[-1][0] == label and out[-1][1] < label % _TAG_SCALE:
                last = out[-1]
                last[1] += len(g)
                last[3] = max(last[3], int(g[:, 1].max()))
                last[5] = max(last[5], int(g[:, 2].max()))
            else:
                out.append([label, len(g), int(g[:, 1].min()), int(g[:, 1].max()), int(g[:, 2].min()),
                            int(g[:, 2].max())])
            start = i
    return np.array(out, dtype=np.int64).reshape(-1, 6)


def windows(ls, anchor_tag: int, max_us: float = 1000.0):
    """Window of each launch (its release to the next launch's release, us), keyed by
    ``(position after the last launch of module ``anchor_tag`` that follows another module, module tag,
    program count)``. Windows longer than ``max_us`` (between steps: host work, the LM head) are dropped."""
    out = {}
    pos = -1
    for i in range(len(ls) - 1):
        tag, nprog = divmod(int(ls[i, 0]), _TAG_SCALE)
        if tag == anchor_tag and (i == 0 or int(ls[i - 1, 0]) // _TAG_SCALE != anchor_tag):
            pos = 0
        w = (ls[i + 1, 4] - ls[i, 4]) / 1e3
        if pos >= 0 and w <= max_us:
            out.setdefault((pos, tag, nprog), []).append(w)
        if pos >= 0:
            pos += 1
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", default="block")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--gen", type=int, default=256)
    p.add_argument("--block-length", type=int, default=32)
    p.add_argument("--capacity", type=int, default=8 << 20, help="CTA records kept (32 bytes each)")
    p.add_argument("--min-count", type=float, default=0.5,
                   help="print rows seen in at least this fraction of the most frequent row's launches")
    p.add_argument("--csv", default=None, help="also write every launch (label, CTAs, entry/release times)")
    args = p.parse_args(argv)

    import numpy as np
    import torch
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9:
        raise SystemExit("timeline_step.py needs a CUDA GPU with PDL (sm_90 or newer)")
    import llada_triton.kernels._common as common
    buf = torch.zeros(args.capacity * 4, device="cuda", dtype=torch.int64)
    cnt = torch.zeros(1, device="cuda", dtype=torch.int32)
    tmp = tempfile.mkdtemp(prefix="llada_timeline_")
    tags = {}
    for tag, name in enumerate(MODULES, start=1):
        mod = importlib.import_module(f"kernels.{name}")
        if getattr(mod, "gdc_wait_and_release", None) is not common.gdc_wait_and_release:
            raise SystemExit(f"kernels.{name} no longer imports gdc_wait_and_release; update MODULES")
        mod.gdc_wait_and_release = make_recorder(buf.data_ptr(), cnt.data_ptr(), args.capacity, tag, tmp)
        tags[tag] = name

    from bench_decode import LLADA_8B, timed_window
    from llada_triton.decode import generate_stream
    from llada_triton.decode.generate import Workspace
    from llada_triton.models import LLaDAConfig, init_params, triton_ops

    cfg = LLaDAConfig(**LLADA_8B)
    params = init_params(cfg, device="cuda", dtype=torch.bfloat16)
    prompts = torch.randint(0, 126000, (args.batch, args.prompt), generator=torch.Generator().manual_seed(0)).tolist()
    opts = dict(gen_length=args.gen, block_length=args.block_length, steps=args.gen, cache=args.policy,
                ops=triton_ops(), early_stop=False, cuda_graphs=True, workspace=Workspace())

    def run():  # every step after block 1's first (bench_decode's window); the whole generation runs
        return timed_window(generate_stream(params, cfg, prompts, **opts), 0, torch.cuda.synchronize)

    run()                              # compiles the kernels and captures the graphs
    cnt.zero_()
    seconds, n_steps, _ = run()        # the recorded run
    n = int(cnt.item())
    if n > args.capacity:
        raise SystemExit(f"{n} CTA records exceed --capacity {args.capacity}; raise it")
    rec = buf[: 4 * n].view(-1, 4).cpu().numpy()
    ls = launches(rec)
    if args.csv:
        np.savetxt(args.csv, ls, fmt="%d", delimiter=",",
                   header="label(tag*1e6+programs),ctas,entry_min_ns,entry_max_ns,release_min_ns,release_max_ns")
    win = windows(ls, anchor_tag=MODULES.index("attention") + 1)
    gpu = torch.cuda.get_device_name()
    import triton
    print(f"# {args.policy} batch {args.batch}, {args.prompt} x {args.gen}, block {args.block_length}, CUDA graphs, "
          f"PDL; {gpu}, torch {torch.__version__}, triton {triton.__version__}")
    print(f"# instrumented step: {seconds / n_steps * 1e3:.3f} ms (mean over the {n_steps} steps after block 1's first); "
          f"{len(ls)} launches, {n} CTA records")
    if not win:
        print("# no attention launches recorded (the policy's kernels run without PDL at these sizes?)")
        return
    top = max(len(v) for v in win.values())
    print(f"{'pos':>3s} {'module':9s} {'CTAs':>5s} {'count':>6s} {'median us':>10s} {'p10':>8s} {'p90':>8s}")
    total = {True: 0.0, False: 0.0}
    for key in sorted(win):
        v = np.array(win[key])
        if len(v) < args.min_count * top:
            continue
        total[len(v) >= 0.5 * top] += float(np.median(v))
        print(f"{key[0]:3d} {tags[key[1]]:9s} {key[2]:5d} {len(v):6d} {np.median(v):10.2f} "
              f"{np.percentile(v, 10):8.2f} {np.percentile(v, 90):8.2f}")
    print(f"sum of medians: {total[True]:.2f} us per layer (rows seen at least half as often as the most frequent)")
    if total[False]:
        print(f"sum of medians of the rarer rows shown (once a step or less: the LM head, its merge, the commit, "
              f"the step's first norm): {total[False]:.2f} us")


if __name__ == "__main__":
    main()
