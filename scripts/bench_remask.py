"""Time kernels.remask (head_confidence, logits_confidence, select_transfer) against torch paths (bf16, one GPU).

python scripts/bench_remask.py [--cases head,select,logits] [--sweep] [--out DIR] [--budget-s 200]
python scripts/bench_remask.py --dry-run --out /tmp/br     # CPU smoke of the from-logits case (interpreter)

LLaDA-8B head: V = 126464, d = 4096, rows M in {32, 256, 1024} (block 32: batch 1, 8, 32).
* ``head``: the reference path is kernels.reference.head_confidence_ref (cuBLAS matmul -> fp32 logits ->
  argmax / logsumexp / gather). Also timed: the cuBLAS matmul alone (the floor of any path that computes
  the logits), and the peak extra memory of each call. Bytes by formula: the head weights once (V * d * 2)
  + the hidden rows; FLOPs 2 M V d. x0 agreement with the reference is checked at every shape (exact
  wherever the reference's top-2 logits are more than 2 bf16 ulps apart).
* ``select``: select_transfer against select_transfer_ref at launch-bound sizes.
* ``logits``: from bf16 logits of the block rows at T = 0, confidence + top-k selection (k = 1 per row):
  the official LLaDA per-step code (fp64 softmax, gather, per-row torch.topk; also with the softmax in the
  logits dtype as LLaDA's HEAD), the in-repo references (logits_confidence_ref + select_transfer_ref), their
  torch.compile, and logits_confidence + select_transfer; do_bench medians and CUDA-graph replays (provider
  suffix ``-graph``); bytes = the logits read once.
Rows go to DIR/remask_bench.csv (all cases; DIR/remask_bench_<cases>.csv for a subset) and
DIR/remask_sweep.csv (remask_sweep_<cases>.csv) with --sweep, each with GPU, versions and git sha. Times: medians of
triton.testing.do_bench unless the provider ends in -graph.
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

VOCAB, D_MODEL = 126464, 4096  # LLaDA-8B


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


# ------------------------------------------------------------------------------------------ from logits
LOGITS_SWEEP = [dict(BLOCK_M=bm, BLOCK_V=bv, TILES=t, num_warps=w) for bm, bv, t, w in
                [(1, 1024, 4, 4), (2, 512, 4, 4), (4, 512, 2, 4), (4, 512, 8, 4), (8, 512, 4, 8), (4, 1024, 4, 8),
                 (2, 2048, 2, 8), (16, 256, 4, 8)]]


def official_select(logits3, masked, k_host, softmax_dtype=torch.float64):
    """What the official LLaDA ``generate`` does per step on the block rows at temperature 0 (the softmax
    in ``softmax_dtype``: float64 as Fast-dLLM / LLaDA before f51cb17, the logits dtype since), with the
    per-row top-k of the schedule; ``k_host``: the schedule's counts as host ints (the official code
    indexes a device tensor, one sync per row; host ints keep it capturable in a CUDA graph).
    logits3 ``[B, Lb, V]``, masked bool ``[B, Lb]``. Returns (x0, transfer bool ``[B, Lb]``)."""
    import torch.nn.functional as F

    p = F.softmax(logits3.to(softmax_dtype), dim=-1)
    x0 = torch.argmax(logits3, dim=-1)
    x0_p = torch.squeeze(torch.gather(p, dim=-1, index=torch.unsqueeze(x0, -1)), -1)
    confidence = torch.where(masked, x0_p, -float("inf"))
    transfer = torch.zeros_like(x0, dtype=torch.bool)
    for j in range(confidence.shape[0]):
        _, select_index = torch.topk(confidence[j], k=k_host[j])
        transfer[j, select_index] = True
    return x0, transfer


def _wall_ms(f, n=3):
    f()
    t = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t) * 1e3 / n


def bench_from_logits(rows_list, block, vocab, meta, copy_bw, dev, dt, g, dry_run=False, sweep=False,
                      l2_bytes=50 << 20):
    """From logits at temperature 0, the block's rows: confidence + top-k selection (k = 1 per row).

    Providers: ``torch_official`` (fp64 softmax + gather + per-row topk, :func:`official_select`),
    ``torch_official_bf16softmax`` (the same, softmax in the logits dtype as LLaDA's HEAD), ``torch_ref``
    (``logits_confidence_ref`` + ``select_transfer_ref``), ``torch_compile`` (torch.compile of torch_ref) and
    ``triton`` (``logits_confidence`` + ``select_transfer``); each timed with do_bench (median, L2 flushed)
    and under a CUDA graph (``-graph``: one graph of >= 32 calls rotating over input sets >= 3x L2).
    Bytes: the logits read once (+ x0, conf, masks: negligible)."""
    from llada_triton.kernels import remask
    from llada_triton.kernels.reference import logits_confidence_ref, select_transfer_ref

    if dry_run:
        bench = _wall_ms
    else:
        from triton.testing import do_bench
        bench = lambda f: do_bench(f, warmup=10, rep=60, return_mode="median")  # noqa: E731
    rows, sw = [], []
    es = torch.tensor([], dtype=dt).element_size()

    def ref_path(lg, m, k):
        B, L = m.shape
        _, conf = logits_confidence_ref(lg)
        return select_transfer_ref(conf.view(B, L), m, k=k)

    compiled = None if dry_run else torch.compile(ref_path)

    def peak(f):
        if dry_run:
            return 0
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        f()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    def graph_us(fn_per_set, n_sets):
        if dry_run:
            return float("nan")
        sys.path.insert(0, os.path.join(ROOT, "scripts"))
        from bench_block_attention import _graph_time_us
        return _graph_time_us(fn_per_set, n_sets, min_calls=32, replays=10)

    for M in rows_list:
        B = M // block
        set_bytes = M * vocab * es
        n_sets = 1 if dry_run else int(min(32, max(1, -(-3 * l2_bytes // set_bytes))))
        sets = []
        for _ in range(n_sets):
            lg = (torch.randn(M, vocab, device=dev, generator=g) * 3).to(dt)
            m = torch.rand(B, block, device=dev, generator=g) > 0.3
            sets.append((lg, m))
        k = torch.ones(B, dtype=torch.int64, device=dev)
        k_host = [1] * B
        nbytes = set_bytes + M * (8 + 4) + 2 * B * block
        provs = {
            "torch_official": lambda s: official_select(s[0].view(B, block, vocab), s[1], k_host),
            "torch_official_bf16softmax": lambda s: official_select(s[0].view(B, block, vocab), s[1], k_host,
                                                                    softmax_dtype=s[0].dtype),
            "torch_ref": lambda s: ref_path(s[0], s[1], k),
            "torch_compile": lambda s: compiled(s[0], s[1], k),
            "triton": lambda s: remask.select_transfer(remask.logits_confidence(s[0])[1].view(B, block), s[1], k=k),
        }
        if dry_run:
            provs.pop("torch_compile")
        # agreement on the first set: x0 and the transfer masks
        lg0, m0 = sets[0]
        rx, rc = logits_confidence_ref(lg0)
        x0, conf = remask.logits_confidence(lg0)
        sel_t = remask.select_transfer(conf.view(B, block), m0, k=k)
        sel_r = select_transfer_ref(rc.view(B, block), m0, k=k)
        ox0, sel_o = official_select(lg0.view(B, block, vocab), m0, k_host)
        conf_rel = float(((conf - rc).abs() / rc).max())
        agree = (f"x0 equal ref {int((x0 == rx).sum())}/{M}, official {int((x0 == ox0.flatten()).sum())}/{M}; "
                 f"transfer equal ref {int((sel_t == sel_r).all(1).sum())}/{B} rows, official "
                 f"{int((sel_t == sel_o).all(1).sum())}/{B} rows; conf max rel diff vs ref {conf_rel:.1e}")
        del rx, rc, x0, conf, ox0
        times = {}
        for name, f in provs.items():
            errs = {}
            t_ms, t_graph, mem = float("nan"), float("nan"), 0
            try:
                t_ms = bench(lambda: f(sets[0]))
                mem = peak(lambda: f(sets[0]))
            except Exception as e:  # noqa: BLE001 - a failing provider is a row, not a crash
                errs[name] = f"{type(e).__name__}: {str(e)[:120]}"
            if name not in errs:
                try:
                    t_graph = graph_us(lambda i: f(sets[i]), n_sets) / 1e3
                except Exception as e:  # noqa: BLE001
                    errs[name + "-graph"] = f"{type(e).__name__}: {str(e)[:120]}"
            times[name] = (t_ms, t_graph)
            for prov, t in ((name, t_ms), (name + "-graph", t_graph)):
                note = errs.get(prov, errs.get(name, ""))
                if name == "triton" and t == t:
                    base = times["torch_official"][0 if prov == name else 1]
                    note = f"speedup x{base / t:.1f} vs torch_official; {agree}"
                elif name == "torch_official" and prov == name:
                    note = "k as host ints (official: one sync per row); fp64 softmax"
                if prov.endswith("-graph"):
                    note = (note + f"; {n_sets} input sets").lstrip("; ")
                r = dict(op="from_logits T=0 +topk", provider=prov, M=M, V=vocab, d="",
                         us=round(t * 1e3, 1) if t == t else "",
                         GBps=round(nbytes / t / 1e6) if t == t else "",
                         pct_copy=round(100 * nbytes / t / 1e6 / copy_bw, 1) if t == t else "", TFLOPs="",
                         extra_mem_MB=round(mem / 2 ** 20, 1), note=note, copy_GBps=round(copy_bw), **meta)
                rows.append(r)
                print(f"{r['op']:22s} {prov:34s} M={M:5d} {r['us']!s:>9} us {r['GBps']!s:>6} GB/s "
                      f"mem+{r['extra_mem_MB']:8.1f} MB {note[:150]}", flush=True)
        del sets
        if sweep and not dry_run:
            lg0 = lg0.contiguous()
            dflt = remask._logits_config(M, vocab, False, False)
            want, _ = remask.logits_confidence(lg0)
            for cfg in LOGITS_SWEEP:
                try:
                    x0c = torch.full((M,), -1, dtype=torch.int64, device=dev)
                    cc = torch.full((M,), float("nan"), device=dev)
                    f = lambda: remask._logits_confidence_launch(  # noqa: E731
                        lg0, x0c, cc, temperature=0.0, seed=0, offset=0, banned_ids=(), no_confidence_ids=(),
                        uncond_logits=None, cfg_scale=0.0, config=cfg)
                    f()
                    ok = bool(torch.equal(x0c, want))
                    t = bench(f)
                except Exception as e:  # noqa: BLE001
                    t, ok = float("nan"), f"{type(e).__name__}: {str(e)[:80]}"
                sw.append(dict(M=M, cfg="logits " + str(cfg), us=round(t * 1e3, 1), x0_same_as_default=ok,
                               default=str(cfg == dflt), **meta))
                print(f"  logits sweep M={M} {t * 1e3:9.1f} us ({100 * set_bytes / t / 1e6 / copy_bw:5.1f}% of copy) "
                      f"same_x0={ok} {cfg}", flush=True)
            sw.append(dict(M=M, cfg="logits default " + str(dflt), us=round(bench(lambda: remask.logits_confidence(lg0)) * 1e3, 1),
                           x0_same_as_default=True, default="True", **meta))
        if not dry_run:
            torch.cuda.empty_cache()
    return rows, sw


def main(sweep: bool, out: str, budget_s: float, rows_list=(32, 256, 1024), cases=("head", "select", "logits"),
         dry_run: bool = False, sha=None):
    if dry_run:  # the from-logits case only, tiny, on the CPU under the interpreter
        if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError("--dry-run needs TRITON_INTERPRET=1 before triton is imported (run it as a script)")
        os.environ["TRITON_INTERPRET"] = "1"
        cases, rows_list = ("logits",), (8, 16)
    import triton

    from llada_triton.kernels import remask
    from llada_triton.kernels.reference import head_confidence_ref, select_transfer_ref

    os.makedirs(out, exist_ok=True)
    dev, dt = ("cpu", torch.float32) if dry_run else ("cuda", torch.bfloat16)
    from provenance import git_sha
    meta = dict(gpu="cpu (dry run)" if dry_run else torch.cuda.get_device_name(), torch=torch.__version__,
                triton=triton.__version__, sha=sha or git_sha())
    print(meta, flush=True)
    t0 = time.time()
    g = torch.Generator(device=dev).manual_seed(0)
    rows, sw_rows = [], []
    if dry_run:
        lr, lsw = bench_from_logits(rows_list, 8, 1000, meta, 1.0, dev, dt, g, dry_run=True)
        _write(out, "remask_bench_dry_run.csv", lr)
        print(f"done in {time.time() - t0:.0f} s", flush=True)
        return
    from triton.testing import do_bench
    bench = lambda f: do_bench(f, warmup=10, rep=60, return_mode="median")  # noqa: E731

    n = 1 << 30
    src = torch.empty(n, dtype=torch.uint8, device=dev).random_()
    dst = torch.empty_like(src)
    copy_bw = 2 * n / bench(lambda: dst.copy_(src)) / 1e6  # GB/s
    del src, dst
    print(f"copy bandwidth {copy_bw:.0f} GB/s", flush=True)

    w = (torch.randn(VOCAB, D_MODEL, device=dev, generator=g) / 64).to(dt) if "head" in cases else None

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

    for M in (rows_list if "head" in cases else ()):
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
    for B, L in (((1, 32), (8, 32), (32, 32), (8, 1024)) if "select" in cases else ()):
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

    # ---- from logits (confidence + top-k) against the official per-step torch code
    if "logits" in cases:
        lr, lsw = bench_from_logits(rows_list, 32, VOCAB, meta, copy_bw, dev, dt, g, sweep=sweep,
                                    l2_bytes=getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20))
        rows += lr
        sw_rows += lsw
    name = "remask_bench.csv" if set(cases) == {"head", "select", "logits"} else \
        f"remask_bench_{'_'.join(cases)}.csv"
    _write(out, name, rows)

    # ---- block-config sweep (after every base measurement, so a budget stop loses only sweep rows)
    if sweep and "head" in cases:
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

    _write(out, name, rows)
    if sw_rows:
        _write(out, "remask_sweep.csv" if name == "remask_bench.csv" else name.replace("bench", "sweep"), sw_rows)
    print(f"done in {time.time() - t0:.0f} s", flush=True)


def _write(out, name, rows):
    if not rows:
        return
    with open(os.path.join(out, name), "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--out", default=os.path.join(ROOT, "results"))
    ap.add_argument("--budget-s", type=float, default=200.0)
    ap.add_argument("--cases", default="head,select,logits", help="comma-separated subset of head,select,logits")
    ap.add_argument("--rows", default="32,256,1024", help="rows M (= batch x block 32)")
    ap.add_argument("--sha", default=None, help="git sha to record (the GPU copy of the repo has no .git)")
    ap.add_argument("--dry-run", action="store_true", help="CPU smoke of the from-logits case (TRITON_INTERPRET=1)")
    a = ap.parse_args()
    cs = tuple(a.cases.split(","))
    if set(cs) - {"head", "select", "logits"}:
        raise SystemExit(f"--cases {a.cases}: choose from head, select, logits")
    main(a.sweep, a.out, a.budget_s, rows_list=tuple(int(v) for v in a.rows.split(",")), cases=cs,
         dry_run=a.dry_run, sha=a.sha)
