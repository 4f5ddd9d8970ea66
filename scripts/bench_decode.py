#!/usr/bin/env python
"""Decode-speed benchmark at the LLaDA-8B shape (random bf16 weights made on the GPU; no file needed).

For every (cache policy, batch, prompt, gen) it times decode steps of the fast path (Triton ops + CUDA
graphs where the step is static) and of the in-repo torch reference path (REFERENCE_OPS, eager) in the
same run, and reports ms per step, tokens/s (one token per step per row), % of the step's floor
(max of weight+KV bytes / measured copy bandwidth and FLOPs / measured matmul peak), NFE of the timed
steps and peak GPU memory (two measures: the most memory held by live tensors, and the most memory held by
torch's allocator - which includes the CUDA graphs' private pools, whose intermediates the first does not
count once the capture has freed them). The steps after block 1's first are timed (all of them by default),
after a warm-up over the same steps (graph capture excluded); tokens/s assumes one committed token per step,
as configured.

    python scripts/bench_decode.py --out results/bench_decode/decode.csv      # full sweep; decode.md beside it
    python scripts/bench_decode.py --policies block --batches 1,32 --shapes 128x256 --no-reference --out /tmp/b.csv
"""
from __future__ import annotations

import argparse
import csv
import gc
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _p in (ROOT, os.path.join(ROOT, "scripts")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from _bench import llada_8b, measure_roofline, timed_window  # noqa: E402
from provenance import environment  # noqa: E402


def render(csv_path, md_path=None):
    """Markdown table of a bench_decode CSV (fast path beside the reference path of the same run)."""
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SystemExit(f"{csv_path} has no rows")
    r0 = rows[0]
    lines = ["# Decode speed, LLaDA-8B shape (random bf16 weights)", "",
             f"{r0['gpu']}, torch {r0['torch']}, triton {r0['triton']}, git {r0['sha']}; measured copy bandwidth "
             f"{r0['copy_tbps']} TB/s, bf16 matmul {r0['matmul_tflops']} TFLOP/s. One token per step per row, "
             f"block {r0['block']}, temperature 0; `steps` = the steps timed, those after block 1's first, after a warm-up "
             f"over the same steps; `NFE` = the forwards those steps spent per row (the driver's device counter). "
             f"`peak GiB` = torch.cuda.max_memory_allocated (live tensors; under CUDA graphs it misses the graphs' "
             f"intermediates), `peak held GiB` = torch.cuda.max_memory_reserved (all memory torch's allocator held, "
             f"graph pools and cached blocks included), both over the timed run (prefill included) after the warm-up. "
             f"Tables from before these three columns leave them empty. `floor` = max(weights + KV bytes / copy "
             f"bandwidth, FLOPs / matmul peak) for one step.", "",
             "| policy | batch | prompt x gen | provider | steps | NFE | ms/step | tokens/s | floor ms | % of floor | peak GiB | "
             "peak held GiB | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['policy']} | {r['batch']} | {r['prompt']}x{r['gen']} | {r['provider']} | {r.get('timed_steps', '')} | {r.get('nfe', '')} | {r['ms_per_step']} | "
                     f"{r['tokens_per_s']} | {r['floor_ms']} | {r['pct_of_floor']} | {r['peak_gib']} | "
                     f"{r.get('peak_reserved_gib', '')} | {r['error']} |")
    text = "\n".join(lines) + "\n"
    if md_path:
        with open(md_path, "w") as f:
            f.write(text)
    return text


def step_floor(cfg, policy, B, P, G, Lb, bw, flops):
    """Floor of one steady step: weights + KV bytes over bandwidth vs FLOPs over peak (seconds)."""
    d, h, V, nl = cfg.d_model, cfg.mlp_hidden_size, cfg.vocab_size, cfg.n_layers
    layer_params = nl * (4 * d * d + 3 * d * h)
    L = P + G
    rows = {"none": L, "prefix": L - P - G // 2, "dual": Lb, "block": Lb}[policy] * B  # prefix: mid-sequence
    kv_len = {"none": L, "prefix": L, "dual": L, "block": P + G // 2}[policy]
    kv_bytes = 2 * nl * B * kv_len * d * 2
    mem = (layer_params + V * d) * 2 + kv_bytes
    fl = 2 * layer_params * rows + 2 * V * d * B * Lb + 4 * nl * rows * kv_len * d
    return max(mem / bw, fl / flops)


def time_decode(params, cfg, ops, *, policy, B, P, G, Lb, graphs, timed_steps):
    """``(seconds per step, steps, nfe)`` over the ``timed_steps`` steps that follow block 1's first step, rounded up to a block's
    end (0 or more than there are: all of them), after a warm-up call over the same steps that compiles kernels and captures
    the graphs (so no capture falls inside the timed window). Block 0 holds the prompt prefill and is not
    timed. The clock starts once block 1's first step has completed, so exactly the counted steps run
    inside the window."""
    import torch

    from llada_triton.decode import Workspace, generate_stream

    g = torch.Generator(device="cpu").manual_seed(0)
    prompts = torch.randint(0, 126000, (B, P), generator=g).tolist()
    ws = Workspace()
    opts = dict(gen_length=G, block_length=Lb, steps=G, cache=policy, ops=ops, cuda_graphs=graphs,
                early_stop=False, workspace=ws)

    def run(n_steps):
        stream = generate_stream(params, cfg, prompts, **opts)
        try:
            elapsed, n, nfe = timed_window(stream, n_steps, torch.cuda.synchronize)
        finally:
            stream.close()
        return elapsed / n, n, nfe

    most = G - Lb - 1  # every step after block 1's first
    n = most if timed_steps <= 0 else min(timed_steps, most)
    gc.collect()                    # the last configuration's buffers and graphs: free, and give back to the driver,
    torch.cuda.empty_cache()        # so the allocator's peak below holds this configuration's memory only
    run(n)  # warm-up over the same steps: compiles every shape and captures every graph key (prefix: one a block)
    torch.cuda.reset_peak_memory_stats()
    return run(n)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policies", default="none,prefix,dual,block")
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--shapes", default="128x256,1024x1024", help="PROMPTxGEN list")
    p.add_argument("--block-length", type=int, default=32)
    p.add_argument("--timed-steps", type=int, default=0,
                   help="steps timed per configuration, after block 1's first step, rounded up to a block's end "
                        "(0: all the remaining steps)")
    p.add_argument("--no-reference", action="store_true", help="skip the torch reference path")
    p.add_argument("--reference-max-batch", type=int, default=8)
    p.add_argument("--out", default=os.path.join(ROOT, "results", "bench_decode", "decode.csv"),
                   help="CSV path (the markdown table goes beside it)")
    p.add_argument("--sha", default=None, help="git sha to record (when the run has no .git)")
    p.add_argument("--render", metavar="CSV", help="only render CSV to markdown beside it, then exit")
    args = p.parse_args(argv)
    if args.render:
        print(render(args.render, os.path.splitext(args.render)[0] + ".md"))
        return []
    import torch

    from llada_triton.models import REFERENCE_OPS, init_params, triton_ops

    cfg = llada_8b()
    info = environment("cuda", args.sha)
    bw, flops = measure_roofline()
    print(f"{info} copy {bw / 1e12:.2f} TB/s, bf16 matmul {flops / 1e12:.0f} TFLOP/s", flush=True)
    params = init_params(cfg, device="cuda", dtype=torch.bfloat16)
    weights_gb = sum(t.numel() * t.element_size() for _, t in params.tensors()) / 1e9
    fast = triton_ops()
    rows = []
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    for shape in args.shapes.split(","):
        P, G = map(int, shape.split("x"))
        for policy in args.policies.split(","):
            for B in map(int, args.batches.split(",")):
                floor = step_floor(cfg, policy, B, P, G, args.block_length, bw, flops)
                for provider, ops, graphs in (("triton+graphs", fast, True), ("torch-reference", REFERENCE_OPS, False)):
                    if provider == "torch-reference" and (args.no_reference or B > args.reference_max_batch):
                        continue
                    try:
                        sec, n, nfe = time_decode(params, cfg, ops, policy=policy, B=B, P=P, G=G, Lb=args.block_length,
                                             graphs=graphs, timed_steps=args.timed_steps)
                        err = ""
                    except Exception as e:  # report in the row, do not hide; go on with the sweep
                        sec, n, nfe, err = float("nan"), 0, 0, f"{type(e).__name__}: {str(e)[:160]}"
                        print(f"{policy} {provider} B={B} {P}x{G} failed: {err}", flush=True)
                        torch.cuda.empty_cache()
                    row = dict(policy=policy, provider=provider, batch=B, prompt=P, gen=G, block=args.block_length,
                               ms_per_step=round(sec * 1e3, 3), tokens_per_s=round(B / sec, 1),
                               floor_ms=round(floor * 1e3, 3), pct_of_floor=round(100 * floor / sec, 1),
                               timed_steps=n, nfe=nfe, peak_gib=round(torch.cuda.max_memory_allocated() / 2 ** 30, 2),
                               peak_reserved_gib=round(torch.cuda.max_memory_reserved() / 2 ** 30, 2),
                               weights_gb=round(weights_gb, 2), copy_tbps=round(bw / 1e12, 3),
                               matmul_tflops=round(flops / 1e12, 1), error=err, **info)
                    rows.append(row)
                    print(row, flush=True)
                    with open(args.out, "w", newline="") as f:
                        w = csv.DictWriter(f, fieldnames=list(rows[0]))
                        w.writeheader()
                        w.writerows(rows)
    if rows:
        render(args.out, os.path.splitext(args.out)[0] + ".md")
    return rows


if __name__ == "__main__":
    main()
