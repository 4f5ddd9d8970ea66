#!/usr/bin/env python
"""Block configs of the decode GEMMs timed the way a decode step runs them (one GPU, bf16).

For each LLaDA-8B projection (fused QKV, O, gate-up, down) at a given row count, each candidate config
of kernels.mlp's gate-up / down kernels is launched ``--layers`` times back to back on distinct weight
copies inside one CUDA graph (so the weights stream from HBM as in a 32-layer step, and the gaps between
kernels count), and the graph replay time is divided by the number of launches. cuBLAS (``F.linear`` /
``addmm`` + the SiLU product) is timed the same way. The O and down projections are also timed with the
following RMSNorm folded into their split-K reduction (``norm`` rows) and as GEMM + ``rms_norm``.

    python scripts/sweep_gemm.py --rows 32 --out results/gemm_sweep --sha SHA

Writes DIR/sweep_gemm_<gpu>_<sha>.csv (op, rows, provider, config, us per call, GB/s, TFLOP/s, max rel.
error vs cuBLAS) and prints the best config per op. A tuning tool: the chosen configs live in
kernels/mlp.py (gate_up_config, down_config).
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

D, HID, VOCAB = 4096, 12288, 126464
OPS = {  # name: (N, K, kind)
    "qkv": (3 * D, D, "linear"),
    "o": (D, D, "linear"),
    "gate_up": (HID, D, "gate_up"),
    "down": (D, HID, "linear"),
}


def _sha(given):
    if given:
        return given
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except Exception:
        return "unknown"


def candidates(op: str, M: int):
    """Candidate configs per op and row count (the kernel's default first)."""
    from llada_triton.kernels import mlp
    import torch

    N, K, kind = OPS[op]
    bf = torch.bfloat16
    if kind == "gate_up":
        out = [mlp.gate_up_config(M, N, K, bf, interpret=False)]
        if M <= 64:
            for bn, bk, w, s in [(128, 128, 8, 3), (128, 128, 4, 3), (64, 128, 4, 4), (64, 128, 4, 3), (64, 128, 4, 5),
                                 (64, 256, 4, 2), (64, 256, 4, 3), (32, 128, 4, 4), (32, 128, 4, 6), (32, 256, 4, 3),
                                 (32, 256, 4, 4), (64, 64, 4, 8), (128, 64, 4, 6), (64, 128, 8, 4), (32, 64, 4, 8),
                                 (16, 256, 4, 4), (16, 128, 4, 8)]:
                for tma in (False, True):
                    out.append(dict(BM=max(16, min(64, M)), BN=bn, BK=bk, SWAP_AB=True, TMA=tma, num_warps=w,
                                    num_stages=s))
        else:
            for bm, bn, bk, w, s in [(128, 128, 64, 8, 4), (64, 128, 64, 4, 4), (128, 64, 64, 4, 4), (128, 256, 64, 8, 3),
                                     (64, 256, 64, 8, 3), (128, 128, 128, 8, 3), (256, 128, 64, 8, 3),
                                     (64, 128, 128, 4, 3), (128, 64, 128, 8, 3), (64, 64, 128, 4, 4),
                                     (128, 128, 64, 8, 3), (128, 128, 64, 8, 5), (128, 128, 64, 4, 4),
                                     (256, 64, 64, 8, 4), (64, 128, 64, 4, 5), (128, 128, 128, 8, 2),
                                     (256, 128, 32, 8, 5), (128, 64, 64, 8, 5), (64, 128, 64, 4, 6),
                                     (64, 128, 128, 4, 3), (64, 256, 64, 8, 4), (64, 64, 64, 4, 6),
                                     (64, 128, 64, 8, 5)]:
                out.append(dict(BM=bm, BN=bn, BK=bk, SWAP_AB=False, TMA=True, num_warps=w, num_stages=s))
        return out
    out = [mlp.down_config(M, N, K, bf, interpret=False)]
    if M <= 64:
        tiles = [(64, 128, 4, 4), (64, 128, 4, 3), (128, 128, 4, 3), (128, 128, 8, 3), (32, 128, 4, 4),
                 (32, 256, 4, 3), (64, 256, 4, 3), (64, 64, 4, 6)]
        for bn, bk, w, s in tiles:
            for split in (1, 2, 3, 4, 6, 8):
                out.append(dict(BM=max(16, min(64, M)), BN=bn, BK=bk, SWAP_AB=True, TMA=False, SPLIT_K=split,
                                num_warps=w, num_stages=s))
    else:
        for bm, bn, bk, w, s in [(64, 128, 64, 4, 4), (128, 128, 64, 8, 3), (128, 64, 64, 4, 4), (128, 256, 64, 8, 3),
                                 (64, 256, 64, 8, 3), (128, 128, 128, 8, 3), (64, 128, 128, 4, 3), (64, 64, 64, 4, 6),
                                 (128, 128, 64, 4, 4), (64, 128, 64, 4, 5), (64, 256, 64, 4, 3)]:
            for split in (1, 2, 3, 4):
                out.append(dict(BM=bm, BN=bn, BK=bk, SWAP_AB=False, TMA=True, SPLIT_K=split, num_warps=w,
                                num_stages=s))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default="32", help="comma-separated row counts (batch x block)")
    p.add_argument("--ops", default="qkv,o,gate_up,down")
    p.add_argument("--layers", type=int, default=16, help="distinct weight copies launched per graph")
    p.add_argument("--replays", type=int, default=10)
    p.add_argument("--budget-s", type=float, default=420.0)
    p.add_argument("--out", default=os.path.join(ROOT, "results", "gemm_sweep"))
    p.add_argument("--sha", default=None)
    a = p.parse_args(argv)

    import torch
    import torch.nn.functional as F
    import triton

    from llada_triton.kernels import mlp
    from llada_triton.kernels.norm import rms_norm

    dev = "cuda"
    dt = torch.bfloat16
    t0 = time.time()
    gpu = torch.cuda.get_device_name()
    sha = _sha(a.sha)
    meta = dict(gpu=gpu, torch=torch.__version__, triton=triton.__version__, sha=sha)
    g = torch.Generator(device=dev).manual_seed(0)
    rows_out = []

    def timed(fn):
        """us per launch of ``fn(layer)`` over a graph of ``a.layers`` launches."""
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for i in range(a.layers):  # warm-up / compile outside the capture
                fn(i)
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for i in range(a.layers):
                fn(i)
        graph.replay()
        torch.cuda.synchronize()
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
        ts = []
        for _ in range(a.replays):
            ev[0].record()
            graph.replay()
            ev[1].record()
            torch.cuda.synchronize()
            ts.append(ev[0].elapsed_time(ev[1]) * 1e3 / a.layers)
        ts.sort()
        return ts[len(ts) // 2]

    for M in [int(r) for r in a.rows.split(",")]:
        for op in a.ops.split(","):
            N, K, kind = OPS[op]
            wN = 2 * N if kind == "gate_up" else N
            ws = [(torch.randn(wN, K, device=dev, generator=g, dtype=torch.float32) / K ** 0.5).to(dt)
                  for _ in range(a.layers)]
            x = torch.randn(M, K, device=dev, generator=g).to(dt)
            r = torch.randn(M, N, device=dev, generator=g).to(dt)
            nw = (1 + 0.1 * torch.randn(N, device=dev, generator=g)).to(dt)
            out = torch.empty(M, N, device=dev, dtype=dt)
            y = torch.empty(M, N, device=dev, dtype=dt)
            nbytes = ws[0].numel() * 2 + M * (K + 2 * N) * 2
            flops = 2 * M * wN * K
            if kind == "gate_up":
                def cublas(i):
                    gu = F.linear(x, ws[i])
                    return F.silu(gu[:, :N]) * gu[:, N:]
                want = cublas(0).float()
            else:
                def cublas(i):
                    return torch.addmm(r, x, ws[i].t())
                want = cublas(0).float()

            def record(provider, cfg, us, err):
                row = dict(op=op, rows=M, N=N, K=K, provider=provider, config=str(cfg), us=round(us, 2),
                           GBps=round(nbytes / us / 1e3, 1), TFLOPs=round(flops / us / 1e6, 1),
                           rel_err=err, **meta)
                rows_out.append(row)
                print(f"{op:8s} M={M:<5d} {provider:14s} {us:8.2f} us {row['GBps']:7.0f} GB/s  err {err}  {cfg}",
                      flush=True)

            record("cublas", "", timed(cublas), 0.0)
            if op in ("o", "down"):
                record("cublas+norm", "", timed(lambda i: rms_norm(cublas(i), nw, 1e-5)), 0.0)
            scale = want.abs().max().item()
            for cfg in candidates(op, M):
                if time.time() - t0 > a.budget_s:
                    print("budget spent: stopping the sweep", flush=True)
                    break
                try:
                    if kind == "gate_up":
                        fn = lambda i, c=cfg: mlp._launch_gate_up(x, ws[i], out, config=c)  # noqa: E731
                    else:
                        fn = lambda i, c=cfg: mlp._launch_down(x, ws[i], r, out, config=c)  # noqa: E731
                    out.fill_(float("nan"))
                    fn(0)
                    err = round(((out.float() - want).abs().max() / scale).item(), 5)
                    us = timed(fn)
                    record("triton", cfg, us, err)
                    if op in ("o", "down"):
                        fnn = lambda i, c=cfg: mlp._launch_down(x, ws[i], r, out, config=c,  # noqa: E731
                                                                 norm=(nw, 1e-5, y))
                        record("triton+norm", cfg, timed(fnn), err)
                except Exception as e:  # noqa: BLE001 - out of resources etc.: record and go on
                    record("triton", cfg, float("nan"), f"{type(e).__name__}: {str(e)[:60]}")
            del ws
            torch.cuda.empty_cache()

    os.makedirs(a.out, exist_ok=True)
    slug = "".join(ch if ch.isalnum() else "_" for ch in gpu.replace("NVIDIA ", "")).lower()
    path = os.path.join(a.out, f"sweep_gemm_{slug}_{sha}.csv")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows_out[0]))
        w.writeheader()
        w.writerows(rows_out)
    print("wrote", path)
    best = {}
    for row in rows_out:
        if row["provider"].startswith("triton") and row["us"] == row["us"] and isinstance(row["rel_err"], float) \
                and row["rel_err"] < 0.02:
            key = (row["op"], row["rows"], row["provider"])
            if key not in best or row["us"] < best[key]["us"]:
                best[key] = row
    for key, row in sorted(best.items()):
        base = next(r for r in rows_out if (r["op"], r["rows"]) == key[:2] and r["provider"] ==
                    ("cublas+norm" if key[2] == "triton+norm" else "cublas"))
        default = next(r for r in rows_out if (r["op"], r["rows"], r["provider"]) == key)
        print(f"best {key}: {row['us']} us ({row['GBps']} GB/s) {row['config']}; default {default['us']} us; "
              f"cuBLAS {base['us']} us")


if __name__ == "__main__":
    main()
