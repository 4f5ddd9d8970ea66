"""Time kernels.remask (head_confidence, select_transfer) against the torch reference path (bf16, one GPU).

python scripts/bench_remask.py [--sweep] [--out DIR] [--budget-s 200]

LLaDA-8B head: V = 126464, d = 4096, rows M in {32, 256, 1024}. The reference path is
kernels.reference.head_confidence_ref (cuBLAS matmul -> fp32 logits -> argmax / logsumexp / gather).
Also timed: the cuBLAS matmul alone (the floor of any path that computes the logits), and the peak extra
memory of each call. Bytes by formula: the head weights once (V * d * 2) + the hidden rows; FLOPs 2 M V d.
x0 agreement with the reference is checked at every shape (exact wherever the reference's top-2 logits
are more than 2 bf16 ulps apart). Rows go to DIR/remask_bench.csv (and DIR/remask_sweep.csv with --sweep),
each with GPU, versions and git sha. Times: medians of triton.testing.do_bench.
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

VOCAB, D_MODEL = 126464, 4096  # LLaDA-8B


def _sha():
    if os.environ.get("GIT_SHA"):
        return os.environ["GIT_SHA"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except Exception:
        return "unknown"


def _agreement(x0, rx, logits):
    top2 = logits.topk(2, dim=1).values
    ulp = 2.0 ** (torch.floor(torch.log2(top2[:, 0].abs())) - 7)
    clear = (top2[:, 0] - top2[:, 1]) > 2 * ulp
    exact_clear = bool(torch.equal(x0[clear], rx[clear]))
    near = bool((logits.gather(1, x0[:, None])[:, 0] >= top2[:, 0] - 2 * ulp).all())
    return dict(rows=x0.numel(), clear_rows=int(clear.sum()), x0_equal_all=int((x0 == rx).sum()),
                x0_exact_on_clear=exact_clear, x0_within_2ulp=near)


SWEEP = {
    32: [dict(BLOCK_M=32, BLOCK_V=bv, BLOCK_K=bk, SWAP_AB=sw, num_warps=w, num_stages=s) for bv, bk, sw, w, s in
         [(128, 128, True, 4, 4), (64, 128, True, 4, 5), (128, 64, True, 4, 6), (256, 64, True, 8, 4),
          (128, 128, False, 4, 4), (128, 256, True, 4, 3), (256, 128, True, 8, 3)]],
    256: [dict(BLOCK_M=bm, BLOCK_V=bv, BLOCK_K=bk, SWAP_AB=False, num_warps=w, num_stages=s)
          for bm, bv, bk, w, s in
          [(128, 256, 64, 8, 3), (128, 128, 64, 8, 3), (128, 128, 64, 8, 4), (256, 128, 64, 8, 3),
           (64, 256, 64, 4, 3), (128, 256, 64, 8, 4), (128, 128, 128, 8, 3)]],
    1024: [dict(BLOCK_M=bm, BLOCK_V=bv, BLOCK_K=bk, SWAP_AB=False, num_warps=w, num_stages=s)
           for bm, bv, bk, w, s in
           [(128, 256, 64, 8, 3), (128, 128, 64, 8, 3), (128, 128, 64, 8, 4), (256, 128, 64, 8, 3),
            (128, 256, 64, 8, 4), (128, 128, 128, 8, 3)]],
}


def main(sweep: bool, out: str, budget_s: float, rows_list=(32, 256, 1024)):
    import triton
    from triton.testing import do_bench

    from kernels import remask
    from kernels.reference import head_confidence_ref, select_transfer_ref

    os.makedirs(out, exist_ok=True)
    dev, dt = "cuda", torch.bfloat16
    meta = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__, sha=_sha())
    print(meta, flush=True)
    t0 = time.time()
    bench = lambda f: do_bench(f, warmup=10, rep=60, return_mode="median")  # noqa: E731

    n = 1 << 30
    src = torch.empty(n, dtype=torch.uint8, device=dev).random_()
    dst = torch.empty_like(src)
    copy_bw = 2 * n / bench(lambda: dst.copy_(src)) / 1e6  # GB/s
    del src, dst
    print(f"copy bandwidth {copy_bw:.0f} GB/s", flush=True)

    g = torch.Generator(device=dev).manual_seed(0)
    w = (torch.randn(VOCAB, D_MODEL, device=dev, generator=g) / 64).to(dt)
    rows, sw_rows = [], []

    def add(op, provider, M, ms, extra_mem, note="", **kw):
        nbytes = VOCAB * D_MODEL * 2 + M * D_MODEL * 2
        flops = 2 * M * VOCAB * D_MODEL
        r = dict(op=op, provider=provider, M=M, V=VOCAB, d=D_MODEL, us=round(ms * 1e3, 1),
                 GBps=round(nbytes / ms / 1e6), pct_copy=round(100 * nbytes / ms / 1e6 / copy_bw, 1),
                 TFLOPs=round(flops / ms / 1e9, 1), extra_mem_MB=round(extra_mem / 2 ** 20, 1), note=note,
                 copy_GBps=round(copy_bw), **kw, **meta)
        rows.append(r)
        print(f"{op:16s} {provider:18s} M={M:5d} {r['us']:9.1f} us {r['GBps']:6d} GB/s {r['TFLOPs']:6.1f} TF "
              f"mem+{r['extra_mem_MB']:8.1f} MB {note}", flush=True)

    def peak(f):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        f()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    for M in rows_list:
        h = torch.randn(M, D_MODEL, device=dev, generator=g).to(dt)
        # ---- temperature 0
        logits = (h @ w.t()).float()
        rx, rc = head_confidence_ref(h, w)
        x0, conf = remask.head_confidence(h, w)
        agree = _agreement(x0, rx, logits)
        conf_rel = float(((conf - rc).abs() / rc).max())
        del logits
        t_ref = bench(lambda: head_confidence_ref(h, w))
        t_mm = bench(lambda: h @ w.t())
        t_k = bench(lambda: remask.head_confidence(h, w))
        add("head_conf T=0", "torch_ref", M, t_ref, peak(lambda: head_confidence_ref(h, w)))
        add("head_conf T=0", "cublas_mm_only", M, t_mm, peak(lambda: h @ w.t()), note="floor of logits paths")
        add("head_conf T=0", "triton", M, t_k, peak(lambda: remask.head_confidence(h, w)),
            note=f"speedup x{t_ref / t_k:.2f} vs ref; conf max rel diff {conf_rel:.1e}; {agree}")
        # ---- temperature 1 (reference draws fp64 noise for every logit)
        gen = torch.Generator(device=dev).manual_seed(1)
        t_ref1 = bench(lambda: head_confidence_ref(h, w, temperature=1.0, generator=gen))
        t_k1 = bench(lambda: remask.head_confidence(h, w, temperature=1.0, seed=1, offset=2))
        add("head_conf T=1", "torch_ref", M, t_ref1,
            peak(lambda: head_confidence_ref(h, w, temperature=1.0, generator=gen)))
        add("head_conf T=1", "triton", M, t_k1,
            peak(lambda: remask.head_confidence(h, w, temperature=1.0, seed=1, offset=2)),
            note=f"speedup x{t_ref1 / t_k1:.2f} vs ref")
        # ---- CFG (two hidden sets)
        hu = torch.randn(M, D_MODEL, device=dev, generator=g).to(dt)
        t_refc = bench(lambda: head_confidence_ref(h, w, uncond_hidden=hu, cfg_scale=1.0))
        t_kc = bench(lambda: remask.head_confidence(h, w, uncond_hidden=hu, cfg_scale=1.0))
        rxc, _ = head_confidence_ref(h, w, uncond_hidden=hu, cfg_scale=1.0)
        xc, _ = remask.head_confidence(h, w, uncond_hidden=hu, cfg_scale=1.0)
        add("head_conf CFG", "torch_ref", M, t_refc, 0)
        add("head_conf CFG", "triton", M, t_kc, 0,
            note=f"speedup x{t_refc / t_kc:.2f}; x0 equal {int((xc == rxc).sum())}/{M}")

    # ---- select_transfer (launch-bound sizes) vs the reference
    for B, L in ((1, 32), (8, 32), (32, 32), (8, 1024)):
        c = torch.rand(B, L, device=dev, generator=g)
        m = torch.rand(B, L, device=dev, generator=g) > 0.3
        k = torch.randint(1, 5, (B,), device=dev, generator=g)
        for name, kw in (("k", dict(k=k)), ("threshold", dict(threshold=0.9)), ("factor", dict(factor=1.0))):
            same = bool(torch.equal(remask.select_transfer(c, m, **kw), select_transfer_ref(c, m, **kw)))
            t_r = bench(lambda: select_transfer_ref(c, m, **kw))
            t_s = bench(lambda: remask.select_transfer(c, m, **kw))
            r = dict(op=f"select {name}", provider="triton", M=B, V=L, d="", us=round(t_s * 1e3, 1), GBps="",
                     pct_copy="", TFLOPs="", extra_mem_MB="", note=f"ref {t_r * 1e3:.1f} us; equal={same}",
                     copy_GBps=round(copy_bw), **meta)
            rows.append(r)
            print(f"select {name:9s} B={B:3d} L={L:5d} triton {t_s * 1e3:7.1f} us  ref {t_r * 1e3:8.1f} us "
                  f"equal={same}", flush=True)

    with open(os.path.join(out, "remask_bench.csv"), "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)

    # ---- block-config sweep (after every base measurement, so a budget stop loses only sweep rows)
    if sweep:
        for M in rows_list:
            h = torch.randn(M, D_MODEL, device=dev, generator=g).to(dt)
            x0, _ = remask.head_confidence(h, w)
            ref_cfg = remask._head_config(M, VOCAB, D_MODEL, dt, False, False)
            for cfg in SWEEP[M]:
                if time.time() - t0 > budget_s:
                    print("sweep: budget reached", flush=True)
                    break
                try:
                    x0c = torch.full((M,), -1, dtype=torch.int64, device=dev)
                    cc = torch.full((M,), float("nan"), device=dev)
                    f = lambda: remask._head_confidence_launch(  # noqa: E731
                        h, w, x0c, cc, temperature=0.0, seed=0, offset=0, banned_ids=(), no_confidence_ids=(),
                        uncond_hidden=None, cfg_scale=0.0, config=cfg)
                    f()
                    ok = bool(torch.equal(x0c, x0))
                    t = bench(f)
                except Exception as e:  # noqa: BLE001 - out of resources etc.
                    t, ok = float("nan"), f"{type(e).__name__}: {str(e)[:80]}"
                sw_rows.append(dict(M=M, cfg=str(cfg), us=round(t * 1e3, 1), x0_same_as_default=ok,
                                    default=str(cfg == ref_cfg), **meta))
                print(f"  sweep M={M} {t * 1e3:9.1f} us same_x0={ok} {cfg}", flush=True)

    with open(os.path.join(out, "remask_bench.csv"), "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    if sw_rows:
        with open(os.path.join(out, "remask_sweep.csv"), "w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=list(sw_rows[0]))
            wr.writeheader()
            wr.writerows(sw_rows)
    print(f"done in {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--out", default=os.path.join(ROOT, "results"))
    ap.add_argument("--budget-s", type=float, default=200.0)
    a = ap.parse_args()
    main(a.sweep, a.out, a.budget_s)
