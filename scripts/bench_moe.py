#!/usr/bin/env python
"""The routed experts of one LLaDA2.0-mini MoE layer: kernels.moe against what a user could call instead.

Shape: LLaDA2.0-mini's MoE layer from its real config (scripts/_bench.py ``LLADA2_MINI``: hidden 2048,
moe_intermediate 512, 256 experts, top-8 of ``topk_group`` 4 of ``n_group`` 8 groups, scaling 2.5). Random bf16 weights made on the GPU, so routing is roughly uniform; the
distinct experts touched are counted from the routing and reported. Providers, on the same routing:

  triton        kernels.moe_experts (alignment + grouped gate-up + grouped down + combine)
  triton-layer  kernels.moe_route + kernels.moe_experts (the router included)
  grouped_mm    torch._grouped_mm over tokens sorted by expert (no host sync), torch SiLU, weighted combine
  gather-bmm    tokens gathered into [E, max count, d] (one host sync), torch.bmm over all experts, combine
  loop          kernels.reference.moe_experts_ref: a per-expert loop (the reference model's way; host syncs)
  route-triton, route-torch   the router alone: kernels.moe_route / kernels.reference.moe_route_ref (no GB/s)

Graph-capturable providers are timed as replays of a CUDA graph (``_bench.graph_time_us``); the others (host
syncs) eagerly with CUDA events. Bytes = the touched experts' weights (3 x I x d each); GB/s and % of a
device-to-device copy measured in the same run (``_bench.measure_copy_bandwidth``). The summary table gives, per token
count, ``triton`` against the best alternative a user could call (the fastest of grouped_mm, gather-bmm and loop
that ran) and its fraction of copy bandwidth (issue 22's fused-MoE targets: >= 1.5x and >= 80%). Rows go to
``<out>/bench_moe_<gpu>_<sha>.csv`` with provenance (GPU, torch / triton / CUDA versions, sha) and a markdown
table beside it.

    python scripts/bench_moe.py --out results/bench_moe
    python scripts/bench_moe.py --out results/bench_moe --sweep   # + moe_experts under the SWEEP configs
    python scripts/bench_moe.py --dry-run --out /tmp/bm    # CPU, TRITON_INTERPRET=1, tiny shape: checks the script
"""
from __future__ import annotations

import argparse
import csv
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _p in (ROOT, os.path.join(ROOT, "scripts")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

ALTERNATIVES = ("grouped_mm", "gather-bmm", "loop")  # what a user could call instead of kernels.moe_experts
TINY = dict(d=64, inter=32, E=16, top_k=4, n_group=4, topk_group=2, scale=2.5)
# moe_experts meta-parameters tried by --sweep (each overrides kernels.moe.moe_config's choice)
SWEEP = [dict(SWAP_AB=False), dict(SWAP_AB=True), dict(DN_BN=128), dict(GU_BN=32), dict(GU_BN=128, GU_BK=64), dict(GU_BK=64), dict(DN_BN=128), dict(DN_BN=128, DN_BK=64),
         dict(DN_BN=32), dict(num_stages=3), dict(num_stages=5), dict(num_warps=8), dict(BM=16), dict(BM=32),
         dict(BM=64, GU_BK=64, DN_BK=64)]
FIELDS = ["provider", "timing", "tokens", "touched_experts", "us", "expert_bytes", "gbps", "pct_copy", "maxdiff",
          "error", "copy_gbps", "gpu", "torch", "cuda", "triton", "python", "sha", "timestamp"]


def llada2_mini_layer() -> dict:
    """LLaDA2.0-mini's MoE-layer shape, from its config (scripts/_bench.py)."""
    from _bench import llada2_mini
    c = llada2_mini()
    return dict(d=c.d_model, inter=c.moe_intermediate_size, E=c.n_experts, top_k=c.top_k, n_group=c.n_group,
                topk_group=c.topk_group, scale=c.routed_scaling_factor)


def grouped_mm_moe(x, w_gu_t, w_d_t, weights, ids, residual):
    """torch._grouped_mm over the pairs sorted by expert; w_*_t: the weights as [E, K, N] views."""
    import torch
    M, k = ids.shape
    E, inter = w_d_t.shape[0], w_d_t.shape[1]
    flat = ids.reshape(-1).long()
    order = torch.argsort(flat, stable=True)
    counts = torch.zeros(E, dtype=torch.int32, device=x.device).index_add_(0, flat, torch.ones_like(flat, dtype=torch.int32))
    offs = torch.cumsum(counts, 0, dtype=torch.int32)
    gu = torch._grouped_mm(x[order // k], w_gu_t, offs=offs)
    y_sorted = torch._grouped_mm(torch.nn.functional.silu(gu[:, :inter]) * gu[:, inter:], w_d_t, offs=offs)
    return _combine(torch.empty_like(y_sorted).index_copy_(0, order, y_sorted), weights, residual)


def gather_bmm_moe(x, w_gu, w_d, weights, ids, residual):
    """Tokens gathered per expert into [E, max count, d] (capacity read back to the host), bmm over all experts."""
    import torch
    M, k = ids.shape
    E, d, inter = w_d.shape
    flat = ids.reshape(-1).long()
    counts = torch.bincount(flat, minlength=E)
    cap = int(counts.max())
    order = torch.argsort(flat, stable=True)
    e_sorted = flat[order]
    slot = torch.arange(M * k, device=x.device) - (torch.cumsum(counts, 0) - counts)[e_sorted]
    xp = x.new_zeros(E, cap, d)
    xp[e_sorted, slot] = x[order // k]
    gu = torch.bmm(xp, w_gu.transpose(1, 2))
    yp = torch.bmm(torch.nn.functional.silu(gu[..., :inter]) * gu[..., inter:], w_d.transpose(1, 2))
    y = torch.empty(M * k, d, device=x.device, dtype=x.dtype)
    y[order] = yp[e_sorted, slot]
    return _combine(y, weights, residual)


def _combine(y_pairs, weights, residual):
    M, k = weights.shape
    y = (y_pairs.view(M, k, -1).float() * weights[:, :, None]).sum(1).to(y_pairs.dtype)
    return residual + y


def bench_tokens(M: int, shape: dict, dev: str, dry_run: bool, gen, sweep: bool = False):
    """Rows (without provenance) of every provider at ``M`` tokens."""
    import torch
    from llada_triton.kernels import moe_experts, moe_route
    from llada_triton.kernels.reference import moe_experts_ref, moe_route_ref
    from _bench import eager_time_us, graph_time_us
    d, inter, E = shape["d"], shape["inter"], shape["E"]
    dt = torch.float16 if dry_run else torch.bfloat16
    rnd = lambda *s, scale=1.0: (torch.randn(*s, generator=gen, device=dev) * scale).to(dt)  # noqa: E731
    x, r = rnd(M, d), rnd(M, d)
    router, bias = rnd(E, d, scale=d ** -0.5), rnd(E, scale=0.1)
    w_gu, w_d = rnd(E, 2 * inter, d, scale=d ** -0.5), rnd(E, d, inter, scale=inter ** -0.5)
    opts = dict(top_k=shape["top_k"], n_group=shape["n_group"], topk_group=shape["topk_group"],
                routed_scaling_factor=shape["scale"])
    weights, ids = moe_route(x, router, bias, **opts)
    touched = int(torch.unique(ids).numel())
    want = moe_experts_ref(x, w_gu, w_d, weights, ids, r)
    providers = {
        "triton": (True, lambda: moe_experts(x, w_gu, w_d, weights, ids, r)),
        "triton-layer": (True, lambda: moe_experts(x, w_gu, w_d, *moe_route(x, router, bias, **opts), r)),
        "grouped_mm": (True, lambda: grouped_mm_moe(x, w_gu.transpose(1, 2), w_d.transpose(1, 2), weights, ids, r)),
        "gather-bmm": (False, lambda: gather_bmm_moe(x, w_gu, w_d, weights, ids, r)),
        "loop": (False, lambda: moe_experts_ref(x, w_gu, w_d, weights, ids, r)),
        "route-triton": (True, lambda: moe_route(x, router, bias, **opts)[0]),
        "route-torch": (True, lambda: moe_route_ref(x, router, bias, **opts)[0]),
    }
    for cfg in SWEEP if sweep else ():
        name = "triton[" + ",".join(f"{k}={v}" for k, v in cfg.items()) + "]"
        providers[name] = (True, lambda cfg=cfg: moe_experts(x, w_gu, w_d, weights, ids, r, config=cfg))
    expert_bytes = touched * 3 * inter * d * x.element_size()
    rows = []
    for name, (graph, fn) in providers.items():
        row = dict(provider=name, tokens=M, touched_experts=touched, expert_bytes=expert_bytes, error="")
        try:
            ref = weights if name.startswith("route") else want
            diff = (fn().float() - ref.float()).abs().max().item()
            row["maxdiff"] = f"{diff:.3g}"
            if graph and not dry_run:
                row.update(timing="cuda-graph", us=graph_time_us(lambda i: fn(), 1, min_calls=20, replays=10))
            else:
                us = eager_time_us(fn, dev, 2 if dry_run else 10)  # 10 calls with CUDA events; 2 wall-clock dry
                row.update(timing="wall" if dry_run else "eager-events", us=us)
            row["gbps"] = "" if name.startswith("route") else expert_bytes / row["us"] / 1e3
        except Exception as e:  # a provider missing from this torch is a row with the error, not a gap
            row.update(timing="", us="", gbps="", error=f"{type(e).__name__}: {str(e).splitlines()[0][:160]}")
        rows.append(row)
    return rows


def summary(rows) -> list:
    """Per token count: triton (experts only) against the fastest alternative that ran, and its % of copy."""
    out = []
    for M in dict.fromkeys(r["tokens"] for r in rows):
        ours = next((r for r in rows if r["tokens"] == M and r["provider"] == "triton" and r["us"] != ""), None)
        alts = [r for r in rows if r["tokens"] == M and r["provider"] in ALTERNATIVES and r["us"] != ""]
        best = min(alts, key=lambda r: float(r["us"])) if alts else None
        out.append(dict(tokens=M, touched=rows[0]["touched_experts"] if ours is None else ours["touched_experts"],
                        triton_us=None if ours is None else float(ours["us"]),
                        best=best["provider"] if best else "", best_us=float(best["us"]) if best else None,
                        speedup=float(best["us"]) / float(ours["us"]) if best and ours else None,
                        pct_copy=None if ours is None else float(ours["pct_copy"])))
    return out


def render(rows, path: str) -> None:
    r0 = rows[0]
    num = lambda v, f: "" if v in ("", None) else format(float(v), f)  # noqa: E731
    lines = [f"# Routed experts of one LLaDA2.0-mini MoE layer ({r0['gpu']}, torch {r0['torch']}, "
             f"triton {r0['triton']}, {r0['sha']}; copy {float(r0['copy_gbps']):.0f} GB/s)", "",
             "## Fused MoE vs the best alternative (issue 22: >= 1.5x, >= 80% of copy over the touched experts)", "",
             "| tokens | experts touched | triton us | best alternative | its us | speedup | triton % copy |",
             "|---|---|---|---|---|---|---|"]
    for h in summary(rows):
        lines.append(f"| {h['tokens']} | {h['touched']} | {num(h['triton_us'], '.1f')} | {h['best']} | "
                     f"{num(h['best_us'], '.1f')} | {num(h['speedup'], '.2f')}{'x' if h['speedup'] else ''} | "
                     f"{num(h['pct_copy'], '.1f')} |")
    lines += ["", "## Every provider", "",
              "| tokens | experts touched | provider | timing | us | GB/s (touched experts) | % copy | vs triton | "
              "maxdiff | error |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ours = next(o for o in rows if o["tokens"] == r["tokens"] and o["provider"] == "triton")
        ratio = f"{r['us'] / ours['us']:.2f}x" if "" not in (r["us"], ours["us"]) and r["gbps"] != "" else ""
        lines.append(f"| {r['tokens']} | {r['touched_experts']} | {r['provider']} | {r['timing']} | {num(r['us'], '.1f')} "
                     f"| {num(r['gbps'], '.0f')} | {num(r['pct_copy'], '.1f')} | {ratio} | {r.get('maxdiff', '')} "
                     f"| {r['error']} |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main(out: str, tokens=(32, 256, 1024), dry_run: bool = False, seed: int = 0, sweep: bool = False,
         sha=None) -> str:
    if dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch
    from _bench import measure_copy_bandwidth
    from provenance import environment
    dev = "cpu" if dry_run else "cuda"
    shape = TINY if dry_run else llada2_mini_layer()
    copy_gbps = 1.0 if dry_run else measure_copy_bandwidth(device=dev) / 1e9
    gen = torch.Generator(device=dev).manual_seed(seed)
    env = environment(dev, sha)
    if dry_run:
        env["gpu"] = "cpu-interpreter"
    prov = dict(env, copy_gbps=copy_gbps)
    rows = []
    os.makedirs(out, exist_ok=True)
    stem = os.path.join(out, f"bench_moe_{env['gpu'].replace(' ', '_').lower()}_{env['sha']}")
    for M in tokens:
        for r in bench_tokens(M, shape, dev, dry_run, gen, sweep):
            r.update(prov, pct_copy=100 * r["gbps"] / copy_gbps if r["gbps"] != "" else "")
            rows.append(r)
        with open(stem + ".csv", "w", newline="") as f:  # after every token count: a cut-off run keeps its rows
            w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
        render(rows, stem + ".md")
    print(open(stem + ".md").read())
    return stem


def cli(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output folder (CSV + markdown)")
    p.add_argument("--tokens", type=int, nargs="+", default=[32, 256, 1024])
    p.add_argument("--dry-run", action="store_true", help="tiny shape on the CPU under the Triton interpreter")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sweep", action="store_true", help="also time moe_experts under each SWEEP config")
    p.add_argument("--sha", default=None, help="git sha to record (when the run has no .git)")
    a = p.parse_args(argv)
    return main(a.out, tuple(a.tokens), a.dry_run, a.seed, a.sweep, a.sha)


if __name__ == "__main__":
    cli()
