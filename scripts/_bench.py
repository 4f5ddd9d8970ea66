"""What the benchmark scripts share (no script imports another script): the model shapes (``SHAPES``: the
real configs of LLaDA-8B, Dream-7B, LLaDA2.0-mini and LLaDA-MoE-7B, random weights made on the device), the
measured roofline, the CUDA-graph timer and the timing window of decode steps. Imports neither torch nor triton at
module level."""
from __future__ import annotations

import statistics
import time

LLADA_8B = dict(d_model=4096, n_heads=32, n_kv_heads=32, n_layers=32, mlp_hidden_size=12288, vocab_size=126464,
                max_sequence_length=4096, rope_theta=500000.0, mask_token_id=126336, eos_token_id=126081,
                pad_token_id=126081, bos_token_id=126080, eot_token_id=126348)


# Dream-v0-7B (Qwen2.5-7B layout: GQA 28/4, q/k/v biases, vocabulary 152,064), its real config.json values
DREAM_7B = dict(d_model=3584, n_heads=28, n_kv_heads=4, n_layers=28, mlp_hidden_size=18944, vocab_size=152064,
                tokenizer_vocab_size=152064, max_sequence_length=131072, rope_theta=1e6, rms_norm_eps=1e-6,
                mask_token_id=151666, eos_token_id=151643, pad_token_id=151643, bos_token_id=151643,
                eot_token_id=151645)


# LLaDA2.0-mini (inclusionAI/LLaDA2.0-mini, LLaDA2.1-mini: same architecture): the real config.json values
# (/work/shared/golden/llada2-tiny/README.md and its sources); these sizes give the 32,511,296,512 bytes of the
# released bf16 checkpoint's index exactly (tests/test_bench_decode.py)
LLADA2_MINI = {"architectures": ["LLaDA2MoeModelLM"], "model_type": "llada2_moe", "vocab_size": 157184,
               "hidden_size": 2048, "intermediate_size": 5120, "num_hidden_layers": 20, "num_attention_heads": 16,
               "num_key_value_heads": 4, "head_dim": 128, "partial_rotary_factor": 0.5, "rotary_dim": 64,
               "rope_theta": 600000, "rms_norm_eps": 1e-6, "max_position_embeddings": 16384,
               "num_experts": 256, "num_experts_per_tok": 8, "n_group": 8, "topk_group": 4,
               "num_shared_experts": 1, "moe_intermediate_size": 512, "first_k_dense_replace": 1,
               "routed_scaling_factor": 2.5, "score_function": "sigmoid", "use_qk_norm": True,
               "tie_word_embeddings": False, "hidden_act": "silu", "use_qkv_bias": False, "use_bias": False,
               "eos_token_id": 156892, "pad_token_id": 156892}
# LLaDA-MoE-7B-A1B (inclusionAI/LLaDA-MoE-7B-A1B-Instruct): the sizes quoted in
# /work/shared/golden/lladamoe-tiny/README.md (weakly confirmed there); vocabulary of the Ling tokenizer
LLADA_MOE_7B = {"architectures": ["LLaDAMoEModelLM"], "model_type": "llada", "vocab_size": 157184,
                "hidden_size": 2048, "dense_intermediate_size": 8192, "expert_intermediate_size": 1024,
                "num_hidden_layers": 16, "num_attention_heads": 16, "num_key_value_heads": 16,
                "num_experts": 64, "num_experts_per_tok": 8, "moe_layer_freq": [1] * 16, "qk_layernorm": True,
                "rope_theta": 50000, "rms_norm_eps": 1e-5, "max_position_embeddings": 8192,
                "partial_rotary_factor": 1.0, "tie_word_embeddings": False, "hidden_act": "silu",
                "attention_bias": False, "eos_token_id": 156892, "pad_token_id": 156892}


def llada_8b():
    """``LLaDAConfig`` of LLaDA-8B (the benchmarks make random weights of this shape; no file needed)."""
    from llada_triton.models import LLaDAConfig

    return LLaDAConfig(**LLADA_8B)


def dream_7b():
    """``DreamConfig`` of Dream-v0-7B (random weights of this shape; no file needed)."""
    from llada_triton.models import DreamConfig

    return DreamConfig(**DREAM_7B)


def llada2_mini():
    """``LLaDA2Config`` of LLaDA2.0-mini (16B, 256 experts top-8), parsed from its config.json values."""
    from llada_triton.models import LLaDA2Config

    return LLaDA2Config.from_dict(LLADA2_MINI, mask_token_id=156895)


def llada_moe_7b():
    """``LLaDAMoEConfig`` of LLaDA-MoE-7B-A1B (64 experts top-8), parsed from its config.json values."""
    from llada_triton.models import LLaDAMoEConfig

    return LLaDAMoEConfig.from_dict(LLADA_MOE_7B, mask_token_id=156895)


# --shape name -> (config, title); the one spelling the scripts take
SHAPES = {"llada-8b": (llada_8b, "LLaDA-8B"), "dream-7b": (dream_7b, "Dream-7B"),
          "llada2-mini": (llada2_mini, "LLaDA2.0-mini"), "llada-moe-7b": (llada_moe_7b, "LLaDA-MoE-7B-A1B")}


def small_config(cfg):
    """``cfg`` shrunk to toy sizes, same family and structure (GQA ratio, dense / MoE layers, groups, partial
    RoPE): what ``--small`` runs on the CPU to check a script end to end."""
    v = 256
    ids = dict(vocab_size=v, mask_token_id=v - 1, eos_token_id=v - 2, pad_token_id=v - 2, bos_token_id=v - 3,
               eot_token_id=v - 4, max_sequence_length=256)
    if not hasattr(cfg, "n_experts"):  # dense (LLaDA, Dream)
        return cfg.replace(d_model=64, n_heads=4, n_kv_heads=4 // (cfg.n_heads // cfg.n_kv_heads) or 1,
                           n_layers=2, mlp_hidden_size=96, tokenizer_vocab_size=v, **ids)
    layers = cfg.moe_layers[:1] + cfg.moe_layers[-1:] + cfg.moe_layers[-1:]  # the first layer's kind, then MoE
    return cfg.replace(d_model=64, n_heads=4, n_kv_heads=4 // (cfg.n_heads // cfg.n_kv_heads) or 1, head_dim=16,
                       rotary_dim=16 * cfg.rotary_dim // cfg.head_dim, n_layers=3, moe_layers=layers,
                       intermediate_size=96, n_experts=16, top_k=4, n_group=min(cfg.n_group, 4),
                       topk_group=min(cfg.topk_group, 2), moe_intermediate_size=32,
                       shared_intermediate_size=None if cfg.shared_intermediate_size is None else 32, **ids)


def random_params(cfg, device, dtype, seed: int = 0):
    """Random parameters of any family's config, made on ``device`` (never loaded from disk)."""
    from llada_triton.models import MoEConfig, init_moe_params, init_params

    init = init_moe_params if isinstance(cfg, MoEConfig) else init_params
    return init(cfg, device=device, dtype=dtype, seed=seed)


def device_sync(device) -> None:
    """Wait for the device's queued work (CUDA); nothing to wait for on the CPU."""
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


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


def eager_time_us(fn, device, calls: int) -> float:
    """Median us of ``calls`` eager calls of ``fn`` after one warm-up call: CUDA events on a GPU, the wall clock
    else (for work a CUDA graph cannot hold, such as host syncs)."""
    import torch

    fn()
    device_sync(device)
    times = []
    for _ in range(calls):
        if str(device).startswith("cuda"):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) * 1e3)
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e6)
    return statistics.median(times)


def measure_copy_bandwidth(copy_bytes: int = 1 << 30, device="cuda") -> float:
    """Bytes/s (read + written) of a device-to-device copy of ``copy_bytes``: graph replays after 0.5 s of copies,
    since memory clocks idle low. On the CPU (script checks): a 4 MB copy, wall clock (meaningless)."""
    import torch

    if not str(device).startswith("cuda"):
        a = torch.randn(1 << 20)
        b = torch.empty_like(a)
        t = time.perf_counter()
        b.copy_(a)
        return 2 * a.numel() * 4 / (time.perf_counter() - t)
    x = torch.empty(copy_bytes // 2, dtype=torch.bfloat16, device="cuda").normal_()
    y = torch.empty_like(x)
    t0 = time.time()
    while time.time() - t0 < 0.5:
        y.copy_(x)
        torch.cuda.synchronize()
    return 2 * copy_bytes / (graph_time_us(lambda i: y.copy_(x), 1, min_calls=8, replays=15) * 1e-6)


def measure_roofline(copy_bytes: int = 1 << 30, device="cuda"):
    """``(copy bytes/s, bf16 matmul FLOP/s)``: :func:`measure_copy_bandwidth` and a bf16 8192^3 matmul (do_bench).
    On the CPU (script checks): a 256^3 fp32 matmul, wall clock (meaningless)."""
    import torch

    bw = measure_copy_bandwidth(copy_bytes, device)
    if not str(device).startswith("cuda"):
        x = torch.randn(256, 256)
        t = time.perf_counter()
        x @ x
        return bw, 2 * 256 ** 3 / (time.perf_counter() - t)
    from triton.testing import do_bench

    m = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    return bw, 2 * 8192 ** 3 / (do_bench(lambda: m @ m, warmup=10, rep=50) * 1e-3)


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
