"""Time kernels.attention against torch SDPA (flash backend) on decode-sized shapes.

Timing: each provider is captured in a CUDA graph that calls it once on each of several input sets
(enough sets to exceed the L2 cache, so every call reads its KV from HBM as in a real layer stack);
the graph is replayed and the time per call is the median over replays / calls per graph. Bytes per
call = K + V read over the visible range + q read + o written; % of bandwidth is against a
device-to-device copy measured in the same run (bytes read + written / time).

Usage: python scripts/bench_block_attention.py [--sweep] [--out results.json]
"""
from __future__ import annotations

import argparse
import json
import time

import torch


def _graph_time_us(fn_per_set, n_sets: int, min_calls: int = 64, replays: int = 15) -> float:
    """Median us per call of ``fn_per_set(i)`` (i = input set) replayed from one CUDA graph."""
    reps = max(1, -(-min_calls // n_sets))
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for i in range(n_sets):       # warm-up: compiles, autotune-free, allocator
            fn_per_set(i)
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(reps):
            for i in range(n_sets):
                fn_per_set(i)
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3 / (reps * n_sets))
    del g
    times.sort()
    return times[len(times) // 2]


def copy_bandwidth_gbs(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth (bytes read + written per second), median of graph replays,
    after ~0.5 s of warm-up copies (memory clocks idle low)."""
    x = torch.empty(nbytes // 2, dtype=torch.bfloat16, device="cuda").normal_()
    y = torch.empty_like(x)
    t0 = time.time()
    while time.time() - t0 < 0.5:
        y.copy_(x)
        torch.cuda.synchronize()
    us = _graph_time_us(lambda i: y.copy_(x), 1, min_calls=8)
    return 2 * nbytes / (us * 1e-6) / 1e9


def bench_block_attention(shapes, *, Tq=32, H=32, Hkv=32, D=128, dtype=torch.bfloat16, configs=None,
                          providers=("triton", "sdpa_flash"), t_max=None, l2_bytes=None, eager=False):
    """Rows of {provider, B, kv_len, us, bytes, GB/s, ...} for each (B, kv_len) in ``shapes``.

    ``configs``: optional list of kernel config overrides (see ``kernels.attention._launch``),
    timed as provider ``triton[<config>]``. ``t_max``: if set, the triton call is made CUDA-graph style
    (kv_len = T_max, real length only in a device ``key_end`` tensor) with that cache size.
    """
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from llada_triton.kernels.attention import _launch, _pick_config

    dev = torch.device("cuda")
    if l2_bytes is None:
        l2_bytes = getattr(torch.cuda.get_device_properties(dev), "L2_cache_size", 50 << 20)
    es = torch.tensor([], dtype=dtype).element_size()
    rows = []
    for B, kv_len in shapes:
        T = max(kv_len, t_max or 0)
        kv_bytes = 2 * B * kv_len * Hkv * D * es
        qo_bytes = 2 * B * Tq * H * D * es
        set_bytes = 2 * B * T * Hkv * D * es + qo_bytes
        n_sets = max(2, min(64, -(-4 * l2_bytes // set_bytes)))
        sets = []
        for _ in range(n_sets):
            q = torch.randn(B, Tq, H, D, device=dev, dtype=dtype)
            k = torch.randn(B, T, Hkv, D, device=dev, dtype=dtype)
            v = torch.randn(B, T, Hkv, D, device=dev, dtype=dtype)
            sets.append((q, k, v))
        key_end = torch.full((Tq,), kv_len, dtype=torch.int32, device=dev)
        todo = []
        for p in providers:
            if p == "triton":
                todo.append(("triton", None))
            elif p == "sdpa_flash":
                todo.append(("sdpa_flash", None))
        for cfg in configs or []:
            todo.append(("triton", cfg))
        for name, cfg in todo:
            if name == "sdpa_flash":
                def fn(i):
                    q, k, v = sets[i]
                    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                        return F.scaled_dot_product_attention(
                            q.transpose(1, 2), k[:, :kv_len].transpose(1, 2), v[:, :kv_len].transpose(1, 2))
                label = name
            else:
                if t_max:
                    def fn(i, cfg=cfg):
                        q, k, v = sets[i]
                        return _launch(q, k, v, T, None, key_end, config=cfg)
                else:
                    def fn(i, cfg=cfg):
                        q, k, v = sets[i]
                        return _launch(q, k, v, kv_len, config=cfg)
                label = "triton" if cfg is None else "triton" + json.dumps(cfg, sort_keys=True)
            try:
                if eager:   # launch overheads included, L2 flushed by do_bench
                    import triton.testing
                    us = 1e3 * triton.testing.do_bench(lambda: fn(0), return_mode="median")
                    label += "@eager"
                else:
                    us = _graph_time_us(fn, n_sets)
            except Exception as e:  # keep the sweep going; record the failure
                rows.append(dict(provider=label, B=B, kv_len=kv_len, error=repr(e)[:300]))
                continue
            eff = _pick_config(B, Tq, H, Hkv, D, kv_len, dev)
            if cfg:
                eff.update(cfg)
            rows.append(dict(provider=label, B=B, kv_len=kv_len, t_max=T, Tq=Tq, H=H, Hkv=Hkv, D=D,
                             dtype=str(dtype), us=us, bytes=kv_bytes + qo_bytes,
                             gbs=(kv_bytes + qo_bytes) / (us * 1e-6) / 1e9, n_sets=n_sets,
                             config=eff if name == "triton" else None))
        del sets
        torch.cuda.empty_cache()
    return rows


def _env():
    import triton
    from provenance import git_sha
    sha = git_sha()
    return dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                git=sha, sms=torch.cuda.get_device_properties(0).multi_processor_count)


def main(sweep: bool = False, out: str | None = None, budget_s: float = 300.0):
    t0 = time.time()
    env = _env()
    bw = copy_bandwidth_gbs()
    env["copy_gbs"] = bw
    print(json.dumps(env))
    main_shapes = [(1, 384), (32, 2048)] + [(b, kv) for b in (1, 8, 32) for kv in (128, 1024, 4096)]
    rows = bench_block_attention(main_shapes)
    rows += bench_block_attention([(1, 384), (32, 2048)], eager=True)
    rows += [dict(r, provider=r["provider"] + "@graph_tmax4096")
             for r in bench_block_attention([(1, 384), (1, 1024), (8, 1024)], providers=("triton",),
                                            t_max=4096)]
    if sweep:
        variants = [dict(merge_in_kernel=mk, min_tiles=mt, block_n=bn)
                    for mk in (True, False) for mt in (1, 2, 4) for bn in (32, 64)]
        for shape in [(1, 384), (1, 128), (1, 1024), (1, 4096)]:
            if time.time() - t0 > budget_s:
                break
            rows += bench_block_attention([shape], providers=(), configs=variants)
        for shape in [(2, 1024), (4, 1024), (4, 4096), (1, 384), (1, 4096)]:
            if time.time() - t0 > budget_s:
                break
            rows += bench_block_attention([shape], providers=("sdpa_flash",), configs=[
                dict(n_splits=s) for s in (1, 2, 4, 8, 16) if s <= -(-shape[1] // 64)])
    env["copy_gbs_end"] = copy_bandwidth_gbs()
    bw = max(bw, env["copy_gbs_end"])
    env["copy_gbs"] = bw
    print("copy bandwidth GB/s (start, end):", env["copy_gbs_end"], bw)
    for r in rows:
        if "us" in r:
            r["pct_copy_bw"] = 100 * r["gbs"] / bw
            print(f"{r['provider'][:80]:80s} B={r['B']:3d} KV={r['kv_len']:5d} {r['us']:9.2f} us "
                  f"{r['gbs']:7.0f} GB/s {r['pct_copy_bw']:5.1f}%")
        else:
            print(r)
    if out:
        with open(out, "w") as f:
            json.dump(dict(env=env, rows=rows), f, indent=1)
    print(f"done in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", action="store_true", help="also sweep tile configs and n_splits")
    ap.add_argument("--out", default=None, help="write rows as JSON here")
    ap.add_argument("--budget-s", type=float, default=300.0, help="stop sweeping after this many seconds")
    a = ap.parse_args()
    main(sweep=a.sweep, out=a.out, budget_s=a.budget_s)
