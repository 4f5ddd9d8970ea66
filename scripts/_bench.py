"""What the benchmark scripts share (no script imports another script): the LLaDA-8B shape, the measured
roofline, the CUDA-graph timer and the timing window of decode steps. Imports neither torch nor triton at
module level."""
from __future__ import annotations

import time

LLADA_8B = dict(d_model=4096, n_heads=32, n_kv_heads=32, n_layers=32, mlp_hidden_size=12288, vocab_size=126464,
                max_sequence_length=4096, rope_theta=500000.0, mask_token_id=126336, eos_token_id=126081,
                pad_token_id=126081, bos_token_id=126080, eot_token_id=126348)


def llada_8b():
    """``LLaDAConfig`` of LLaDA-8B (the benchmarks make random weights of this shape; no file needed)."""
    from llada_triton.models import LLaDAConfig

    return LLaDAConfig(**LLADA_8B)


def graph_time_us(fn_per_set, n_sets: int, min_calls: int = 32, replays: int = 1) -> float:
    """Median us per call over ``replays`` replays of one CUDA graph holding at least ``min_calls`` calls of
    ``fn_per_set(i)``, rotating over the input sets ``i < n_sets`` (warmed up on a side stream first)."""
    import torch

    reps = max(1, -(-min_calls // n_sets))
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for i in range(n_sets):
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
    return sorted(times)[len(times) // 2]


def measure_roofline(copy_bytes: int = 1 << 30):
    """``(copy bytes/s, bf16 matmul FLOP/s)``: a device-to-device copy of ``copy_bytes`` (bytes read + written;
    graph replays after 0.5 s of copies, since memory clocks idle low) and a bf16 8192^3 matmul (do_bench)."""
    import torch
    from triton.testing import do_bench

    x = torch.empty(copy_bytes // 2, dtype=torch.bfloat16, device="cuda").normal_()
    y = torch.empty_like(x)
    t0 = time.time()
    while time.time() - t0 < 0.5:
        y.copy_(x)
        torch.cuda.synchronize()
    bw = 2 * copy_bytes / (graph_time_us(lambda i: y.copy_(x), 1, min_calls=8, replays=15) * 1e-6)
    del x, y
    m = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    flops = 2 * 8192 ** 3 / (do_bench(lambda: m @ m, warmup=10, rep=50) * 1e-3)
    return bw, flops


def timed_window(stream, n_steps, sync, clock=time.perf_counter):
    """``(seconds, steps, nfe)`` for the steps of ``stream`` (a :func:`llada_triton.decode.generate_stream`) that
    follow block 1's first step, through the end of the block in which the ``n_steps``-th of them falls
    (``n_steps <= 0``, or fewer steps in the stream: all of them). ``nfe`` is the number of forwards those steps
    spent, read from the driver's device counter (the events' ``nfe``; the most over the rows).

    A step's work is enqueued before its event is yielded (with CUDA graphs and a fixed schedule, a block's
    later steps are enqueued together, before the first of their events); ``sync`` waits for the enqueued
    work. The clock starts once block 1's first step has completed (nothing after it is enqueued yet) and
    stops, at a block's end, once the last counted step has completed, so exactly the counted steps run inside
    the window (tests/test_bench_decode.py)."""
    from llada_triton.decode import BlockEvent, StepEvent

    t0, n, first, last = None, 0, None, None
    for ev in stream:
        if isinstance(ev, BlockEvent) and t0 is not None and 0 < n_steps <= n:
            break
        if not isinstance(ev, StepEvent) or ev.block == 0:
            continue
        if t0 is None:  # block 1's first step has been enqueued: wait for it, then start the clock
            sync()
            t0 = clock()
            first = ev.nfe
            continue
        n += 1          # a step enqueued after t0
        last = ev.nfe
    if t0 is None or n == 0:
        raise ValueError("the stream has no step after block 1's first: nothing to time")
    sync()
    seconds = clock() - t0
    return seconds, n, int((last - first).max())
