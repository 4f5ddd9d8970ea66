"""Time kernels.mlp / kernels.norm / kernels.rotary against torch at LLaDA-8B shapes (bf16, one GPU).

python scripts/bench_mlp_norm_rope.py [--sweep] [--out DIR] [--budget-s 200]

Rows go to DIR/bench.csv (op, provider, shape, us, GB/s, % of the measured copy bandwidth, TFLOP/s, GPU,
versions, git sha); --sweep also times candidate block configs of each kernel (DIR/sweep.csv) so the
deterministic per-shape configs in the kernel files can be chosen from data. Bytes are counted by formula:
every input read once and every output written once (weights once per call). Times are medians of
triton.testing.do_bench (L2 flushed before every repetition) and, for the MLP, of CUDA-graph replays.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# LLaDA-8B
D_MODEL, HIDDEN, N_HEADS, HEAD_DIM, BLOCK = 4096, 12288, 32, 128, 32


def main(sweep: bool, out: str, budget_s: float, dry_run: bool = False):
    global D_MODEL, HIDDEN, N_HEADS, HEAD_DIM
    if dry_run:  # exercise the script on a CPU under the interpreter, at toy sizes (numbers meaningless)
        os.environ["TRITON_INTERPRET"] = "1"
        D_MODEL, HIDDEN, N_HEADS, HEAD_DIM = 64, 176, 2, 32
    import triton
    from triton.testing import do_bench, do_bench_cudagraph

    if dry_run:
        def do_bench(f, **kw):  # noqa: F811
            t = time.perf_counter()
            f()
            return (time.perf_counter() - t) * 1e3
        do_bench_cudagraph = do_bench  # noqa: F811

    from llada_triton.kernels import mlp, norm, rotary as rope_mod
    from llada_triton.kernels.reference import rms_norm_ref, rope_ref, rope_tables, swiglu_mlp_ref

    os.makedirs(out, exist_ok=True)
    dev = "cpu" if dry_run else "cuda"
    dt = torch.float16 if dry_run else torch.bfloat16
    gpu = "dry-run" if dry_run else torch.cuda.get_device_name()
    from provenance import git_sha
    meta = dict(gpu=gpu, torch=torch.__version__, triton=triton.__version__, sha=git_sha())
    print(meta, flush=True)
    t_start = time.time()
    bench = lambda f: do_bench(f, warmup=25, rep=100, return_mode="median")  # noqa: E731

    # ---- roofline: device-to-device copy (bytes read + written)
    n = 1 << (20 if dry_run else 30)
    src = torch.empty(n, dtype=torch.uint8, device=dev).random_()
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src))
    copy_bw = 2 * n / ms / 1e6  # GB/s
    del src, dst
    print(f"copy bandwidth {copy_bw:.0f} GB/s", flush=True)

    rows = []

    def row(op, provider, shape, ms, nbytes, flops=0.0, note=""):
        gbs = nbytes / ms / 1e6
        r = dict(op=op, provider=provider, shape=shape, us=round(ms * 1e3, 2), GBps=round(gbs, 1),
                 pct_copy=round(100 * gbs / copy_bw, 1), TFLOPs=round(flops / ms / 1e9, 1) if flops else "",
                 note=note, copy_GBps=round(copy_bw), **meta)
        rows.append(r)
        print(f"{op:10s} {provider:14s} {shape:28s} {r['us']:9.2f} us {gbs:8.0f} GB/s {r['pct_copy']:6.1f}% "
              f"{r['TFLOPs']!s:>7} TF {note}", flush=True)

    g = torch.Generator(device=dev).manual_seed(0)
    w_gu = (torch.randn(2 * HIDDEN, D_MODEL, device=dev, generator=g) / D_MODEL ** 0.5).to(dt)
    w_d = (torch.randn(D_MODEL, HIDDEN, device=dev, generator=g) / HIDDEN ** 0.5).to(dt)
    w_bytes = (w_gu.numel() + w_d.numel()) * 2

    def mlp_with(x, r, cfg_gu, cfg_d):
        """swiglu_mlp with explicit configs (what the config functions would return)."""
        act = torch.empty(x.shape[0], HIDDEN, device=dev, dtype=dt)
        y = torch.empty_like(x)
        mlp._launch_gate_up(x, w_gu, act, config=cfg_gu)
        return mlp._launch_down(act, w_d, r, y, config=cfg_d)

    best = {}
    # ---- sweep of block configs (optional): (BM, BN, BK, warps, stages[, split]) x pointer / TMA loads
    if sweep:
        sw = []

        def gu(bm, bn, bk, w, s, swap=False, tma=False):
            return dict(BM=bm, BN=bn, BK=bk, SWAP_AB=swap, TMA=tma, num_warps=w, num_stages=s)

        def dn(bm, bn, bk, sk, w, s, swap=False, tma=False):
            return dict(BM=bm, BN=bn, BK=bk, SWAP_AB=swap, TMA=tma, SPLIT_K=sk, num_warps=w, num_stages=s)

        gu_cands = {
            32: [gu(32, bn, bk, w, s, True, t) for t in (False, True) for bn, bk, w, s in
                 [(128, 128, 8, 3), (128, 64, 4, 4), (64, 128, 4, 4), (32, 128, 4, 4), (64, 256, 4, 3),
                  (128, 64, 8, 5), (64, 64, 4, 6)]],
            256: [gu(bm, bn, bk, w, s, False, t) for t in (False, True) for bm, bn, bk, w, s in
                  [(128, 64, 128, 8, 3), (128, 64, 64, 8, 4), (64, 128, 64, 4, 4), (128, 128, 64, 8, 3),
                   (128, 128, 64, 8, 4), (256, 64, 64, 8, 3)]],
            1024: [gu(bm, bn, bk, w, s, False, t) for t in (False, True) for bm, bn, bk, w, s in
                   [(128, 128, 64, 8, 4), (128, 128, 64, 8, 3), (128, 64, 64, 8, 4), (256, 64, 64, 8, 3),
                    (128, 128, 32, 8, 6)]],
        }
        dn_cands = {
            32: [dn(32, bn, bk, sk, w, s, True, t) for t in (False, True) for bn, bk, sk, w, s in
                 [(64, 128, 4, 4, 4), (128, 128, 4, 4, 4), (64, 128, 8, 4, 4), (128, 128, 2, 8, 3),
                  (64, 256, 4, 4, 3), (32, 128, 8, 4, 4), (64, 64, 4, 4, 6), (128, 64, 4, 4, 5)]],
            256: [dn(bm, bn, bk, sk, w, s, False, t) for t in (False, True) for bm, bn, bk, sk, w, s in
                  [(64, 128, 64, 2, 4, 4), (128, 64, 64, 2, 8, 4), (128, 128, 64, 2, 8, 3), (64, 128, 64, 1, 4, 4),
                   (128, 128, 64, 4, 8, 3), (64, 64, 128, 2, 4, 4)]],
            1024: [dn(bm, bn, bk, sk, w, s, False, t) for t in (False, True) for bm, bn, bk, sk, w, s in
                   [(128, 128, 64, 1, 8, 4), (128, 128, 64, 1, 8, 3), (128, 256, 64, 1, 8, 3), (128, 256, 64, 1, 8, 4),
                    (128, 64, 64, 1, 4, 4)]],
        }
        for M in (32, 256, 1024):
            x = torch.randn(M, D_MODEL, device=dev, generator=g).to(dt)
            r = torch.randn(M, D_MODEL, device=dev, generator=g).to(dt)
            act = torch.empty(M, HIDDEN, device=dev, dtype=dt)
            y = torch.empty(M, D_MODEL, device=dev, dtype=dt)
            gu_out = x @ w_gu.t()
            act_ref = torch.nn.functional.silu(gu_out[:, :HIDDEN]) * gu_out[:, HIDDEN:]
            y_ref = r + act_ref @ w_d.t()
            t_mm = bench(lambda: x @ w_gu.t())
            t_act = bench(lambda: torch.nn.functional.silu(gu_out[:, :HIDDEN]) * gu_out[:, HIDDEN:])
            t_dn = bench(lambda: torch.addmm(r, act_ref, w_d.t()))
            sw.append(dict(kernel="gate_up", M=M, cfg="cublas+act", us=round((t_mm + t_act) * 1e3, 2), GBps="", err=""))
            sw.append(dict(kernel="down", M=M, cfg="cublas addmm", us=round(t_dn * 1e3, 2), GBps="", err=""))
            print(f"M={M} cublas gate-up {t_mm*1e3:.1f} us + act {t_act*1e3:.1f} us; down+res {t_dn*1e3:.1f} us",
                  flush=True)
            for kind, cands in (("gate_up", [mlp.gate_up_config(M, HIDDEN, D_MODEL, dt)] + gu_cands[M]),
                                ("down", [mlp.down_config(M, D_MODEL, HIDDEN, dt)] + dn_cands[M])):
                for cfg in cands:
                    if time.time() - t_start > budget_s:
                        break
                    try:
                        if kind == "gate_up":
                            act.fill_(float("nan"))
                            mlp._launch_gate_up(x, w_gu, act, config=cfg)
                            err = ((act.float() - act_ref.float()).abs().max() / act_ref.float().abs().max()).item()
                            t = bench(lambda: mlp._launch_gate_up(x, w_gu, act, config=cfg))
                            nb = w_gu.numel() * 2 + M * (D_MODEL + HIDDEN) * 2
                        else:
                            y.fill_(float("nan"))
                            mlp._launch_down(act_ref, w_d, r, y, config=cfg)
                            err = ((y.float() - y_ref.float()).abs().max() / y_ref.float().abs().max()).item()
                            t = bench(lambda: mlp._launch_down(act_ref, w_d, r, y, config=cfg))
                            nb = w_d.numel() * 2 + M * (3 * D_MODEL + HIDDEN) * 2
                    except Exception as e:  # noqa: BLE001 - out of resources etc.: record and go on
                        t, err, nb = float("nan"), f"{type(e).__name__}: {str(e)[:80]}", 0
                    ok = isinstance(err, float) and err < 0.02 and t == t
                    sw.append(dict(kernel=kind, M=M, cfg=str(cfg), us=round(t * 1e3, 2),
                                   GBps=round(nb / t / 1e6) if ok else "", err=err))
                    print(f"  {kind:7s} M={M:<5d} {t*1e3:8.1f} us {nb / t / 1e6 if ok else 0:6.0f} GB/s err {err} {cfg}",
                          flush=True)
                    if ok and t < best.get((kind, M), (float("inf"), None))[0]:
                        best[(kind, M)] = (t, cfg)
            if ("gate_up", M) in best and ("down", M) in best:
                print(f"  best M={M}: gate_up {best[('gate_up', M)]} down {best[('down', M)]}", flush=True)
        # rope heads per program at the decode shapes
        for B in (1, 32):
            qkv = torch.randn(B, BLOCK, 3, N_HEADS, HEAD_DIM, device=dev, generator=g).to(dt)
            cos, sin = (t.to(dev) for t in rope_tables(HEAD_DIM, 500000.0, BLOCK))
            o = torch.empty(B, BLOCK, N_HEADS, HEAD_DIM, device=dev, dtype=dt)
            for bh, nw in [(1, 1), (2, 1), (4, 2), (8, 2), (16, 4), (16, 2), (32, 4)]:
                cfg = dict(BLOCK_H=bh, BLOCK_D2=64, num_warps=nw)
                t = bench(lambda: rope_mod._launch(qkv[:, :, 0].unsqueeze(2), o.unsqueeze(2), cos, sin, config=cfg))
                sw.append(dict(kernel="rope", M=B, cfg=str(cfg), us=round(t * 1e3, 2), GBps="", err=""))
                print(f"  rope B={B} {t*1e3:7.2f} us {cfg}", flush=True)
        with open(os.path.join(out, "sweep.csv"), "w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=list(sw[0]))
            wr.writeheader()
            wr.writerows(sw)

    # ---- MLP: ours (default configs) vs the torch reference path, eager and CUDA graph
    for M in (32, 256, 1024):
        x = torch.randn(M, D_MODEL, device=dev, generator=g).to(dt)
        r = torch.randn(M, D_MODEL, device=dev, generator=g).to(dt)
        ours = lambda: mlp.swiglu_mlp(x, w_gu, w_d, r)  # noqa: E731
        ref = lambda: swiglu_mlp_ref(x, w_gu, w_d, r)  # noqa: E731
        y, yr = ours(), ref()
        y64 = swiglu_mlp_ref(x.double(), w_gu.double(), w_d.double(), r.double())
        note = f"maxerr ours {(y.double() - y64).abs().max().item():.3g} torch {(yr.double() - y64).abs().max().item():.3g}"
        nbytes = w_bytes + M * D_MODEL * 2 * 3 + M * HIDDEN * 2 * 2
        flops = 2 * M * D_MODEL * 3 * HIDDEN
        shape = f"M{M}-d{D_MODEL}-h{HIDDEN}"
        row("swiglu_mlp", "triton", shape, bench(ours), nbytes, flops, note)
        row("swiglu_mlp", "torch", shape, bench(ref), nbytes, flops)
        row("swiglu_mlp", "triton-graph", shape, do_bench_cudagraph(ours, rep=100, return_mode="median"), nbytes, flops)
        row("swiglu_mlp", "torch-graph", shape, do_bench_cudagraph(ref, rep=100, return_mode="median"), nbytes, flops)
        cfgs = f"gate_up {mlp.gate_up_config(M, HIDDEN, D_MODEL, dt)} down {mlp.down_config(M, D_MODEL, HIDDEN, dt)}"
        print("   configs:", cfgs, flush=True)
        if ("gate_up", M) in best and ("down", M) in best:  # the sweep's best pair, end to end
            cg, cd = best[("gate_up", M)][1], best[("down", M)][1]
            yb = mlp_with(x, r, cg, cd)
            note = f"maxerr {(yb.double() - y64).abs().max().item():.3g}; gate_up {cg} down {cd}"
            row("swiglu_mlp", "triton-best", shape, bench(lambda: mlp_with(x, r, cg, cd)), nbytes, flops, note)
            row("swiglu_mlp", "triton-best-graph", shape,
                do_bench_cudagraph(lambda: mlp_with(x, r, cg, cd), rep=100, return_mode="median"), nbytes, flops)

    # ---- RMSNorm (+ residual)
    for R in (32, 256, 1024, 16384):
        x = torch.randn(R, D_MODEL, device=dev, generator=g).to(dt)
        r = torch.randn_like(x)
        w = (1 + 0.1 * torch.randn(D_MODEL, device=dev, generator=g)).to(dt)
        shape = f"R{R}-d{D_MODEL}"
        for res in (False, True):
            rr = r if res else None
            y = norm.rms_norm(x, w, 1e-5, rr)
            yr = rms_norm_ref(x, w, 1e-5, rr)
            y, yr = (y[0], yr[0]) if res else (y, yr)
            note = f"maxdiff vs torch {(y.float() - yr.float()).abs().max().item():.3g}"
            nbytes = R * D_MODEL * 2 * (4 if res else 2) + D_MODEL * 2
            op = "rms_norm+res" if res else "rms_norm"
            row(op, "triton", shape, bench(lambda: norm.rms_norm(x, w, 1e-5, rr)), nbytes, note=note)
            row(op, "torch", shape, bench(lambda: rms_norm_ref(x, w, 1e-5, rr)), nbytes)
        print("   config:", norm.norm_config(R, D_MODEL), flush=True)

    # ---- RoPE on q of a fused qkv (strided view), and q+k in place
    for B in (1, 8, 32):
        qkv = torch.randn(B, BLOCK, 3, N_HEADS, HEAD_DIM, device=dev, generator=g).to(dt)
        cos, sin = (t.to(dev) for t in rope_tables(HEAD_DIM, 500000.0, 128 + BLOCK))
        cos, sin = cos[128:], sin[128:]
        q = qkv[:, :, 0]
        shape = f"B{B}-T{BLOCK}-H{N_HEADS}-D{HEAD_DIM}"
        y, yr = rope_mod.rope(q, cos, sin), rope_ref(q, cos, sin)
        note = f"maxdiff vs torch {(y.float() - yr.float()).abs().max().item():.3g}"
        nbytes = q.numel() * 2 * 2 + BLOCK * HEAD_DIM * 4 * 2
        row("rope", "triton", shape, bench(lambda: rope_mod.rope(q, cos, sin)), nbytes, note=note)
        row("rope", "torch", shape, bench(lambda: rope_ref(q, cos, sin)), nbytes)
        k = qkv[:, :, 1]

        def torch_qk():
            qkv[:, :, 0] = rope_ref(q, cos, sin)
            qkv[:, :, 1] = rope_ref(k, cos, sin)

        row("rope_qk_", "triton", shape, bench(lambda: rope_mod.rope_qk_(q, k, cos, sin)), 2 * nbytes)
        row("rope_qk_", "torch", shape, bench(torch_qk), 2 * nbytes)
        print("   config:", rope_mod.rope_config(B, BLOCK, 1, N_HEADS, HEAD_DIM), flush=True)

    with open(os.path.join(out, "bench.csv"), "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    print(f"done in {time.time() - t_start:.0f} s", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--out", default=os.environ.get("OUT", "results"))
    ap.add_argument("--budget-s", type=float, default=200.0, help="stop the sweep after this many seconds")
    ap.add_argument("--dry-run", action="store_true", help="CPU interpreter, toy sizes: checks the script only")
    a = ap.parse_args()
    main(a.sweep, a.out, a.budget_s, a.dry_run)
