#!/usr/bin/env python
"""Decode-speed benchmark at a real model shape (random bf16 weights made on the GPU; no file needed).

``--shape`` (``--model`` is the same option): ``llada-8b``, ``dream-7b`` (dense: the decoding driver), ``llada2-mini``,
``llada-moe-7b`` (MoE: one block-cache step from model-level functions, below).

Dense shapes: for every (cache policy, batch, prompt, gen) it times decode steps of the fast path (Triton ops +
CUDA graphs where the step is static) and of the in-repo torch reference path (REFERENCE_OPS, eager) in the
same run, and reports ms per step, tokens/s (one token per step per row), % of the step's floor
(max of weight+KV bytes / measured copy bandwidth and FLOPs / measured matmul peak), NFE of the timed
steps and peak GPU memory (two measures: the most memory held by live tensors, and the most memory held by
torch's allocator - which includes the CUDA graphs' private pools, whose intermediates the first does not
count once the capture has freed them). The steps after block 1's first are timed (all of them by default),
after a warm-up over the same steps (graph capture excluded); tokens/s assumes one committed token per step,
as configured. Dream-7B decodes with its logit shift (the head reads rows i - 1), the negative-entropy
confidence of Fast-dLLM's Dream caches (Triton: the streamed Dream head) and, for prefix / dual, the
block-start commit; one token per step as for LLaDA.

MoE shapes (policy ``block`` only): one decoding step with the exact block cache, built from
``llada_triton.models`` (``forward_hidden`` over a KV cache of the prompt and the previous blocks, ``Ops.head``,
``Ops.commit``; scripts/_block_step.py), not the driver: Triton ops replayed from a CUDA graph (eager, with the
reason in the note, if the capture fails) beside the torch reference ops (eager). The step sits in the middle of
the sequence (``--at mid``, KV = prompt + gen / 2) or at its last block (``--at last``: the whole cache in use,
the memory check). Rows add the distinct experts each MoE layer touched (measured on the step's inputs; the
uniform-routing expectation beside it) and the bytes the step must read: attention, dense and shared weights,
routers, the touched experts, the KV cache, the LM head; floor = max(bytes / copy bandwidth, FLOPs / matmul peak).

    python scripts/bench_decode.py --out results/bench_decode/decode.csv      # full sweep; decode.md beside it
    python scripts/bench_decode.py --policies block --batches 1,32 --shapes 128x256 --no-reference --out /tmp/b.csv
    python scripts/bench_decode.py --shape dream-7b --out results/bench_decode/decode_dream.csv
    python scripts/bench_decode.py --shape llada2-mini --batches 1,32 --shapes 128x256 --out /tmp/l2.csv
    python scripts/bench_decode.py --shape llada2-mini --batches 32 --shapes 128x2048 --at last --no-reference --out /tmp/mem.csv
    python scripts/bench_decode.py --shape llada2-mini --small --out /tmp/s.csv   # tiny config, CPU, interpreter: checks the script
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

from _bench import (SHAPES, device_sync, eager_time_us, graph_time_us, measure_roofline, random_params,  # noqa: E402
                    small_config, timed_window)
import cliutil  # noqa: E402
from _block_step import make_block_step, step_cost, uniform_touched  # noqa: E402
from provenance import environment  # noqa: E402

MOE_COLUMNS = ("experts_touched", "experts_uniform", "step_gb", "kv_len", "timing")  # MoE rows only


def render(csv_path, md_path=None):
    """Markdown table of a bench_decode CSV (fast path beside the reference path of the same run)."""
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SystemExit(f"{csv_path} has no rows")
    r0 = rows[0]
    model = SHAPES[r0.get("model") or "llada-8b"][1] + (" (small: a tiny config, CPU)" if r0.get("small") == "True" else "")
    moe = any(r.get("experts_touched") for r in rows)
    lines = [f"# Decode speed, {model} shape (random weights)", "",
             f"{r0['gpu']}, torch {r0['torch']}, triton {r0['triton']}, git {r0['sha']}; measured copy bandwidth "
             f"{r0['copy_tbps']} TB/s, bf16 matmul {r0['matmul_tflops']} TFLOP/s. One token per step per row, "
             f"block {r0['block']}, temperature 0; `steps` = the steps timed, those after block 1's first, after a warm-up "
             f"over the same steps; `NFE` = the forwards those steps spent per row (the driver's device counter). "
             f"`peak GiB` = torch.cuda.max_memory_allocated (live tensors; under CUDA graphs it misses the graphs' "
             f"intermediates), `peak held GiB` = torch.cuda.max_memory_reserved (all memory torch's allocator held, "
             f"graph pools and cached blocks included), both over the timed run (prefill included) after the warm-up. "
             f"Tables from before these three columns leave them empty. `floor` = max(weights + KV bytes / copy "
             f"bandwidth, FLOPs / matmul peak) for one step; `x floor` = ms/step over it.", ""]
    if moe:
        lines += ["MoE rows: one block-cache step from model-level functions (scripts/_block_step.py), `steps` = the "
                  "calls timed, `timing` how; `experts/layer` = distinct experts an MoE layer touched at the step "
                  "(mean over the MoE layers, measured), `uniform` = the expectation under uniform routing; "
                  "`step GB` = the bytes the floor counts (attention, dense and shared weights, routers, the touched "
                  "experts, the KV cache over `KV` slots, the LM head).", ""]
    extra = " experts/layer | uniform | step GB | KV | timing |" if moe else ""
    lines += ["| policy | batch | prompt x gen | provider | steps | NFE | ms/step | tokens/s | floor ms | % of floor | "
              "x floor |" + extra + " peak GiB | peak held GiB | note |",
              "|---" * (14 + (5 if moe else 0)) + "|"]
    for r in rows:
        cells = (f" {r.get('experts_touched', '')} | {r.get('experts_uniform', '')} | {r.get('step_gb', '')} | "
                 f"{r.get('kv_len', '')} | {r.get('timing', '')} |") if moe else ""
        lines.append(f"| {r['policy']} | {r['batch']} | {r['prompt']}x{r['gen']} | {r['provider']} | {r.get('timed_steps', '')} | {r.get('nfe', '')} | {r['ms_per_step']} | "
                     f"{r['tokens_per_s']} | {r['floor_ms']} | {r['pct_of_floor']} | {r.get('x_floor', '')} |{cells} {r['peak_gib']} | "
                     f"{r.get('peak_reserved_gib', '')} | {r['error']} |")
    text = "\n".join(lines) + "\n"
    if md_path:
        with open(md_path, "w") as f:
            f.write(text)
    return text


def step_floor(cfg, policy, B, P, G, Lb, bw, flops):
    """Floor of one steady step of a dense model: weights + KV bytes over bandwidth vs FLOPs over peak (seconds)."""
    d, h, V, nl = cfg.d_model, cfg.mlp_hidden_size, cfg.vocab_size, cfg.n_layers
    dkv = cfg.n_kv_heads * cfg.head_dim  # GQA: K and V are narrower than d
    layer_params = nl * (2 * d * d + 2 * d * dkv + 3 * d * h)
    L = P + G
    rows = {"none": L, "prefix": L - P - G // 2, "dual": Lb, "block": Lb}[policy] * B  # prefix: mid-sequence
    kv_len = {"none": L, "prefix": L, "dual": L, "block": P + G // 2}[policy]
    kv_bytes = 2 * nl * B * kv_len * dkv * 2
    mem = (layer_params + V * d) * 2 + kv_bytes
    fl = 2 * layer_params * rows + 2 * V * d * B * Lb + 4 * nl * rows * kv_len * d
    return max(mem / bw, fl / flops)


def decode_options(cfg, policy: str) -> dict:
    """The family's decoding options beside the shared ones (Dream: entropy confidence, block-start commit)."""
    if cfg.family != "dream":
        return {}
    return dict(remasking="entropy", refresh_commits_first=policy in ("prefix", "dual"))


def random_prompts(cfg, B: int, P: int):
    """``B`` prompts of ``P`` random ordinary ids (below the mask and pad ids), seeded."""
    import torch

    g = torch.Generator(device="cpu").manual_seed(0)
    return torch.randint(0, min(cfg.mask_token_id, cfg.pad_token_id), (B, P), generator=g).tolist()


def _fresh_memory(device):
    """Free the last configuration's buffers and graphs, so the peaks below hold this configuration's only."""
    import torch

    gc.collect()
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()


def _reset_peak(device):
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def time_decode(params, cfg, ops, *, policy, B, P, G, Lb, graphs, timed_steps):
    """``(seconds per step, steps, nfe)`` over the ``timed_steps`` steps that follow block 1's first step, rounded up to a block's
    end (0 or more than there are: all of them), after a warm-up call over the same steps that compiles kernels and captures
    the graphs (so no capture falls inside the timed window). Block 0 holds the prompt prefill and is not
    timed. The clock starts once block 1's first step has completed, so exactly the counted steps run
    inside the window."""
    from llada_triton.decode import Workspace, generate_stream

    ws = Workspace()
    opts = dict(gen_length=G, block_length=Lb, steps=G, cache=policy, ops=ops, cuda_graphs=graphs,
                early_stop=False, workspace=ws, **decode_options(cfg, policy))
    prompts = random_prompts(cfg, B, P)

    def run(n_steps):
        stream = generate_stream(params, cfg, prompts, **opts)
        try:
            elapsed, n, nfe = timed_window(stream, n_steps, lambda: device_sync(params.device))
        finally:
            stream.close()
        return elapsed / n, n, nfe

    most = G - Lb - 1  # every step after block 1's first
    n = most if timed_steps <= 0 else min(timed_steps, most)
    _fresh_memory(params.device)
    run(n)  # warm-up over the same steps: compiles every shape and captures every graph key (prefix: one a block)
    _reset_peak(params.device)
    return run(n)


def time_block_step(params, cfg, ops, *, B, P, G, Lb, at, graphs, calls):
    """One MoE configuration: ``(seconds per step, calls timed, timing, note, step)`` of the block-cache step
    (scripts/_block_step.py). ``graphs``: replays of a CUDA graph of ``calls`` steps (median of 5 replays); a
    failed capture falls back to eager timing and says why in the note."""
    _fresh_memory(params.device)
    st = make_block_step(params, cfg, ops, batch=B, prompt=P, gen=G, block=Lb, at=at)  # its eager step compiles
    _reset_peak(params.device)
    if graphs:
        try:
            return graph_time_us(lambda i: st.run(), 1, min_calls=calls, replays=5) * 1e-6, calls, "cuda-graph", "", st
        except Exception as e:  # noqa: BLE001 - time it eagerly and report why
            note = f"graph capture failed ({type(e).__name__}: {str(e)[:100]}); timed eagerly"
            print(note, flush=True)
            _fresh_memory(params.device)
            st = make_block_step(params, cfg, ops, batch=B, prompt=P, gen=G, block=Lb, at=at)
            return eager_time_us(st.run, params.device, calls) * 1e-6, calls, "eager", note, st
    calls = min(calls, 3)  # the reference's per-expert loops: thousands of launches a step
    return eager_time_us(st.run, params.device, calls) * 1e-6, calls, "eager", "", st


def moe_row(params, cfg, st, *, B, Lb, bw, flops):
    """The MoE-only columns and the floor (seconds) of a timed step."""
    nbytes, fl = step_cost(params, cfg, st.touched, batch=B, block=Lb, kv_len=st.kv_len)
    floor = max(nbytes / bw, fl / flops)
    mean = sum(st.touched) / len(st.touched)
    return floor, dict(experts_touched=f"{mean:.1f} of {cfg.n_experts} (min {min(st.touched)}, max {max(st.touched)})",
                       experts_uniform=round(uniform_touched(cfg.n_experts, cfg.top_k, B * Lb), 1),
                       step_gb=round(nbytes / 1e9, 3), kv_len=st.kv_len)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", "--model", dest="shape", default="llada-8b", choices=sorted(SHAPES),
                   help="the real config whose shape the random weights take")
    p.add_argument("--small", action="store_true",
                   help="a tiny config of the same family on the CPU (fp32, TRITON_INTERPRET=1, no graphs): checks "
                        "the script end to end; numbers meaningless")
    p.add_argument("--policies", default=None, help="default none,prefix,dual,block (MoE shapes: block only)")
    p.add_argument("--batches", default=None, help="default 1,8,32 (small 1,2)")
    p.add_argument("--shapes", default=None, help="PROMPTxGEN list (default 128x256,1024x1024; small 8x32)")
    p.add_argument("--block-length", type=cliutil.positive_int, default=None, help="default 32 (small 8)")
    p.add_argument("--timed-steps", type=int, default=0,
                   help="dense: steps timed per configuration, after block 1's first step, rounded up to a block's end "
                        "(0: all the remaining steps)")
    p.add_argument("--at", default="mid", choices=("mid", "last"),
                   help="MoE: the timed step's block: mid-sequence, or the last block (the whole KV cache in use)")
    p.add_argument("--calls", type=cliutil.positive_int, default=8,
                   help="MoE: steps per graph replay (5 replays, the median); eager: this many calls, at most 3")
    p.add_argument("--providers", type=cliutil.name_list(("fast", "reference")), default="fast,reference",
                   help="fast (Triton ops, CUDA graphs on a GPU) and / or reference (the torch reference ops, eager)")
    p.add_argument("--no-reference", action="store_true", help="skip the torch reference path (--providers fast)")
    p.add_argument("--reference-max-batch", type=int, default=8)
    p.add_argument("--out", default=os.path.join(ROOT, "results", "bench_decode", "decode.csv"),
                   help="CSV path (the markdown table goes beside it)")
    p.add_argument("--sha", default=None, help="git sha to record (when the run has no .git)")
    p.add_argument("--render", metavar="CSV", help="only render CSV to markdown beside it, then exit")
    args = p.parse_args(argv)
    args.policies = args.policies or ("block" if args.shape in ("llada2-mini", "llada-moe-7b") else "none,prefix,dual,block")
    args.providers = [v for v in args.providers if not (args.no_reference and v == "reference")]
    if not args.providers:
        p.error("--providers: choose fast and / or reference (--no-reference leaves none)")
    args.batches = args.batches or ("1,2" if args.small else "1,8,32")
    args.shapes = args.shapes or ("8x32" if args.small else "128x256,1024x1024")
    args.block_length = args.block_length if args.block_length is not None else (8 if args.small else 32)
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.render:
        print(render(args.render, os.path.splitext(args.render)[0] + ".md"))
        return []
    if args.small:
        if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError("--small needs TRITON_INTERPRET=1 before triton is imported (run it as a script)")
        os.environ["TRITON_INTERPRET"] = "1"
    import torch

    from llada_triton.models import REFERENCE_OPS, MoEConfig, triton_ops

    device, dtype = ("cpu", torch.float32) if args.small else ("cuda", torch.bfloat16)
    cfg = SHAPES[args.shape][0]()
    cfg = small_config(cfg) if args.small else cfg
    moe = isinstance(cfg, MoEConfig)
    if moe and args.policies != "block":
        raise SystemExit(f"--policies {args.policies}: the MoE shapes time the block-cache step only (--policies block)")
    info = environment(device, args.sha)
    bw, flops = measure_roofline(device=device)
    print(f"{info} copy {bw / 1e12:.2f} TB/s, bf16 matmul {flops / 1e12:.0f} TFLOP/s", flush=True)
    params = random_params(cfg, device, dtype)
    weights_gb = sum(t.numel() * t.element_size() for _, t in params.tensors()) / 1e9
    fast, graphs = triton_ops(), device == "cuda"
    rows = []
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    for shape in args.shapes.split(","):
        P, G = map(int, shape.split("x"))
        for policy in args.policies.split(","):
            for B in map(int, args.batches.split(",")):
                for kind, provider, ops, graphed in (("fast", "triton+graphs" if graphs else "triton", fast, graphs),
                                                     ("reference", "torch-reference", REFERENCE_OPS, False)):
                    if kind not in args.providers or (kind == "reference" and B > args.reference_max_batch):
                        continue
                    row = run_config(params, cfg, ops, args, policy=policy, B=B, P=P, G=G, graphed=graphed,
                                     bw=bw, flops=flops, moe=moe)
                    row = dict(dict(model=args.shape, small=args.small, policy=policy, provider=provider, batch=B,
                                    prompt=P, gen=G, block=args.block_length), **row,
                               weights_gb=round(weights_gb, 2), copy_tbps=round(bw / 1e12, 3),
                               matmul_tflops=round(flops / 1e12, 1), **info)
                    rows.append(row)
                    print(row, flush=True)
                    with open(args.out, "w", newline="") as f:
                        w = csv.DictWriter(f, fieldnames=list(rows[0]))
                        w.writeheader()
                        w.writerows(rows)
    if rows:
        print(render(args.out, os.path.splitext(args.out)[0] + ".md"))
    return rows


def run_config(params, cfg, ops, args, *, policy, B, P, G, graphed, bw, flops, moe) -> dict:
    """The measured columns of one (policy, batch, prompt x gen, provider); a failure is a row with its error."""
    import torch

    Lb, extra, timing, note = args.block_length, {}, "", ""
    try:
        if moe:
            sec, n, timing, note, st = time_block_step(params, cfg, ops, B=B, P=P, G=G, Lb=Lb, at=args.at,
                                                       graphs=graphed, calls=args.calls)
            floor, extra = moe_row(params, cfg, st, B=B, Lb=Lb, bw=bw, flops=flops)
            nfe = ""
            del st
        else:
            sec, n, nfe = time_decode(params, cfg, ops, policy=policy, B=B, P=P, G=G, Lb=Lb, graphs=graphed,
                                      timed_steps=args.timed_steps)
            floor = step_floor(cfg, policy, B, P, G, Lb, bw, flops)
        err = note
    except Exception as e:  # report in the row, do not hide; go on with the sweep
        sec, n, nfe, err = float("nan"), 0, 0, f"{type(e).__name__}: {str(e)[:160]}"
        floor = step_floor(cfg, policy, B, P, G, Lb, bw, flops) if not moe else float("nan")
        print(f"{policy} B={B} {P}x{G} failed: {err}", flush=True)
        _fresh_memory(params.device)
    cuda = str(params.device).startswith("cuda")
    row = dict(ms_per_step=round(sec * 1e3, 3), tokens_per_s=round(B / sec, 1), floor_ms=round(floor * 1e3, 3),
               pct_of_floor=round(100 * floor / sec, 1), x_floor=round(sec / floor, 2), timed_steps=n, nfe=nfe,
               peak_gib=round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if cuda else "",
               peak_reserved_gib=round(torch.cuda.max_memory_reserved() / 2 ** 30, 2) if cuda else "",
               error=err)
    if moe:
        row.update({k: extra.get(k, "") for k in MOE_COLUMNS}, timing=timing)
    return row


if __name__ == "__main__":
    main()
