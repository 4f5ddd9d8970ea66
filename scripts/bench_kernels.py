#!/usr/bin/env python
"""One benchmark for the public kernels (``llada_triton.kernels``) at LLaDA-8B decode shapes, in one long CSV.

Shapes come from the LLaDA-8B config (scripts/_bench.py) and the decode regime (batch x block 32 x KV
length); nothing about the model is typed here. Ops (rows = B * block) and providers:

  block_attention      B x KV grid, Tq = block   torch (reference), torch-compile, triton, sdpa-flash, flex-attention
  block_attention+key_end  the same KV lengths in a cache of the largest one, the limit in a device key_end (the
                       graphed decode step's form)   torch, torch-compile, triton
  qkv_proj_rope        B x block tokens          torch, torch-compile, triton (QKV GEMM + RoPE + K/V into the cache)
  linear_rms_norm      rows                      torch, torch-compile, triton, cublas (addmm + F.rms_norm)
  swiglu_mlp           rows (+residual)          torch, torch-compile, triton, cublas (addmm epilogue + torch SiLU),
                                                 cublas+silu_mul (the activation in one launch: kernels.silu_mul)
  swiglu_mlp_rms_norm  rows                      torch, torch-compile, triton, cublas+silu_mul (+ F.rms_norm)
  rms_norm(+residual)  rows                      torch, torch-compile, triton, F.rms_norm
  rope                 q of a fused qkv (view)   torch, torch-compile, triton
  head_confidence      rows, T = 0               torch, torch-compile, triton, cublas-matmul (the logits alone)
  head_confidence+T1   rows, T = 1 (sampled)     torch, triton, cublas-matmul (outputs not compared)
  head_confidence+cfg  rows, CFG scale 1         torch, torch-compile, triton, cublas-matmul
  logits_confidence    rows, T = 0               torch, torch-compile, triton, torch-official (fp64 softmax),
                                                 torch-official-bf16 (softmax in the logits dtype)
  select_transfer      B x block, top-k rule     torch, torch-compile, triton
  select_transfer+threshold, select_transfer+factor: the other two rules, same providers
  dream_head           rows, Dream-7B's head (V 152,064, d 3,584), greedy, negative-entropy confidence
                                                 torch, torch-compile, triton (kernels.head_dream_confidence),
                                                 cublas-matmul (the logits alone)

Yardsticks (kind ``yardstick``, never the "best other provider" of the headline): ``copy`` for the
memory-bound ops (norms, RoPE), a ``Tensor.copy_`` of half the op's bytes (read once, written once: what the
op's size allows, launch and ramp-up included), and ``cublas-matmul`` for the LM head (the floor of any path
that computes the logits).

Every provider is timed twice: ``triton.testing.do_bench`` quantiles (0.5, 0.2, 0.8) with the L2 flushed
before each call (provider ``NAME``), and replays of a CUDA graph holding >= 32 calls that rotate over up to
32 input sets, enough to exceed the L2 cache wherever a set is >= 5 MB (KV caches, large activations);
weights are shared and larger than L2 anyway (provider ``NAME-graph``; one replay per sample, 10 samples,
taken round-robin over the case's providers so that a drift of the GPU's clocks falls on all of them alike).
Decode kernels are launch-bound, so the graph numbers are what a captured decode step sees. ``extra_mib``:
the memory one call allocates, its output included (a call after the first, so compiles do not count).

Bytes and FLOPs are counted by formula (``*_cost`` below: every input read once, every output written once,
weights once per call); % of roofline = max(bytes / copy bandwidth, FLOPs / matmul peak) / p50, against a
1 GiB device copy and a bf16 8192^3 matmul measured in the same run. torch.compile runs last (after every
other provider), with a time budget; a compile that fails or is skipped is a row with the error.

    python scripts/bench_kernels.py --out results/kernels                     # every op, B 1,8,32, KV 128,1024,4096
    python scripts/bench_kernels.py --ops decode --batches 1,32 --kv-lens 256,384 --no-compile --out /tmp/k  # A/B
    python scripts/bench_kernels.py --ops dream_head --batches 1,32 --no-compile --out /tmp/k  # 32 and 1,024 rows
    python scripts/bench_kernels.py --render results/kernels/kernels_x.csv    # md + png, CPU
    python scripts/bench_kernels.py --dry-run --out /tmp/bk   # tiny, CPU, TRITON_INTERPRET=1: checks the script
"""
from __future__ import annotations

import argparse
import csv
import io
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _p in (ROOT, os.path.join(ROOT, "scripts")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from _bench import dream_7b, graph_time_us, llada_8b, measure_roofline, small_config  # noqa: E402  (no torch / triton at module level)
from provenance import environment  # noqa: E402

QUANTILES = (0.5, 0.2, 0.8)
OPS = ("block_attention", "block_attention+key_end", "qkv_proj_rope", "linear_rms_norm", "swiglu_mlp", "swiglu_mlp_rms_norm", "rms_norm",
       "rms_norm+residual", "rope", "head_confidence", "head_confidence+T1", "head_confidence+cfg",
       "logits_confidence", "select_transfer", "select_transfer+threshold", "select_transfer+factor", "dream_head")
DECODE_OPS = ("block_attention", "block_attention+key_end", "qkv_proj_rope", "linear_rms_norm", "swiglu_mlp", "swiglu_mlp_rms_norm",
              "rms_norm+residual", "head_confidence", "select_transfer")  # what a decode step runs (--ops decode)
FIELDS = ["op", "provider", "kind", "timing", "shape", "batch", "rows", "kv_len", "dtype",
          "p50_us", "p20_us", "p80_us", "bytes", "flops", "gbps", "tflops", "roofline_us", "pct_roofline", "bound",
          "check", "error", "note", "n_sets", "bench_s", "extra_mib",
          "copy_gbps", "matmul_tflops", "gpu", "torch", "cuda", "triton", "sha", "timestamp"]
MAX_SETS = 32  # input sets a graph rotates over: 3x L2 for KV caches / activations >= 5 MB a set
PROVIDERS = {  # what each provider name calls (the markdown prints this)
    "torch": "the same-signature reference in kernels/reference.py, eager (for attention: SDPA, default backend)",
    "torch-compile": "torch.compile of that reference (inductor, default mode; sizes dynamic after the 2nd shape)",
    "triton": "the kernel (llada_triton.kernels.<op>)",
    "sdpa-flash": "F.scaled_dot_product_attention under sdpa_kernel(FLASH_ATTENTION)",
    "flex-attention": "torch.compile(flex_attention), no mask, compiled per shape",
    "cublas": "cuBLAS GEMMs (F.linear / addmm with the residual as its epilogue) + torch ops for the rest",
    "cublas+silu_mul": "the same GEMMs with the activation in one launch (kernels.silu_mul, Triton)",
    "F.rms_norm": "torch.nn.functional.rms_norm (after x + residual for +residual)",
    "torch-official": "the official LLaDA per-step confidence: F.softmax(logits.to(float64)), argmax, gather",
    "torch-official-bf16": "the same with the softmax in the logits' dtype",
    "copy": "yardstick: Tensor.copy_ of a buffer of half the op's bytes (as many bytes moved)",
    "cublas-matmul": "yardstick: the head's logits matmul alone (hidden @ w_head.T)",
}
KINDS = ("triton", "reference", "library", "compile", "yardstick")  # column order of the tables
COPY_OPS = ("rms_norm", "rms_norm+residual", "rope")  # memory-bound ops that get the copy yardstick


@dataclass(frozen=True)
class Regime:
    """The decode regime: batch sizes, block length (queries per step), KV lengths."""
    batches: Tuple[int, ...] = (1, 8, 32)
    block: int = 32
    kv_lens: Tuple[int, ...] = (128, 1024, 4096)


DRY_REGIME = Regime(batches=(1, 2), block=8, kv_lens=(16,))


def model_config(dry_run: bool = False):
    """The LLaDA-8B config, or (dry run) the same config shrunk with ``replace`` to toy sizes."""
    cfg = llada_8b()
    if dry_run:
        v = 512
        cfg = cfg.replace(d_model=64, n_heads=2, n_kv_heads=2, mlp_hidden_size=96, vocab_size=v,
                          max_sequence_length=64, mask_token_id=v - 1, eos_token_id=v - 2, pad_token_id=v - 2,
                          bos_token_id=v - 3, eot_token_id=v - 4)
    return cfg


# ------------------------------------------------------------------------------ cost formulas
def attention_cost(B, Tq, kv, H, Hkv, D, es):
    """K and V over the visible range read once, q read, o written; QK^T and PV: 2 * 2 B H Tq kv D."""
    return es * (2 * B * kv * Hkv * D + 2 * B * Tq * H * D), 4 * B * H * Tq * kv * D


def qkv_proj_cost(M, d, H, Hkv, D, T, es):
    """The QKV weights once, x read, q, k and v written, fp32 cos/sin rows read; the GEMM's FLOPs."""
    nh = H + 2 * Hkv
    return es * (nh * D * d + M * d + M * nh * D) + 2 * 4 * T * D, 2 * M * nh * D * d


def linear_norm_cost(M, d, es):
    """The [d, d] weight once, x and residual read, h and its norm written; 2 M d d FLOPs."""
    return es * (d * d + 4 * M * d + d), 2 * M * d * d


def mlp_cost(M, d, h, es, norm=False):
    """Weights (gate-up 2hd + down dh) once, x and residual read, y (and its norm) written; 6 M d h FLOPs."""
    return es * (3 * d * h + (4 if norm else 3) * M * d), 6 * M * d * h


def norm_cost(R, d, es, residual):
    """x (and residual) read, y (and h = x + residual) written, weight once; ~4 FLOPs per element."""
    return es * ((4 if residual else 2) * R * d + d), (5 if residual else 4) * R * d


def rope_cost(B, T, H, D, es):
    """q read and written, fp32 cos/sin rows read; 3 FLOPs per element."""
    return es * 2 * B * T * H * D + 2 * 4 * T * D, 3 * B * T * H * D


def head_cost(M, V, d, es, cfg=False):
    """The head weights once plus the hidden rows (twice with CFG), x0 (int64) and conf (fp32) written."""
    n = 2 if cfg else 1
    return es * (V * d + n * M * d) + 12 * M, 2 * n * M * V * d


def logits_cost(M, V, es):
    """The logits read once, x0 (int64) and conf (fp32) written; no FLOPs counted (a few per logit)."""
    return es * M * V + 12 * M, 0


def select_cost(B, L):
    """conf (fp32) and masked (bool) read, the bool mask written, k (int64) read; no FLOPs to speak of."""
    return B * L * (4 + 1 + 1) + 8 * B, 0


# ------------------------------------------------------------------------------------- cases
@dataclass
class Case:
    """One (op, shape): how to make inputs and what each provider calls on one input set."""
    op: str
    shape: str
    batch: int
    rows: int
    kv_len: int
    nbytes: int
    flops: int
    set_bytes: int                       # bytes of one input set (sizing the L2-busting rotation)
    make: Callable                       # make(n_sets) -> (shared, [set, ...])
    providers: Dict[str, Tuple[str, Callable]] = field(default_factory=dict)  # name -> (kind, fn(shared, s))
    out_of: Callable = lambda out: out   # the output compared with the reference's (None: not compared)


def _first(out):
    return out[0]


def _copy_last(shared, s):
    """The ``copy`` provider: the set's last entry is (source, destination)."""
    s[-1][1].copy_(s[-1][0])


def _with_copy(case, dev, dt, gen, es):
    """Add the copy yardstick: each input set also carries a source and a destination of half the op's
    bytes (appended last, so the op's providers see their set unchanged)."""
    import torch

    half = -(-case.nbytes // (2 * es))

    def make(n, inner=case.make):
        shared, sets = inner(n)
        return shared, [tuple(s) + ((torch.empty(half, device=dev, dtype=dt).normal_(generator=gen),
                                      torch.empty(half, device=dev, dtype=dt)),) for s in sets]

    case.make = make
    case.providers["copy"] = ("yardstick", _copy_last)


def _standard(ctx, op, ref_fn, kernel_fn, call, kernel_call=None):
    """torch / torch-compile / triton providers: ``call(fn, shared, set)`` with the reference and its
    torch.compile, ``kernel_call`` (default ``call``) with the kernel."""
    kc = kernel_call or call
    return {"torch": ("reference", lambda sh, s: call(ref_fn, sh, s)),
            "torch-compile": ("compile", lambda sh, s: call(ctx.compiled(op, ref_fn), sh, s)),
            "triton": ("triton", lambda sh, s: kc(kernel_fn(), sh, s))}


def build_cases(cfg, reg: Regime, ctx) -> List[Case]:
    """Every (op, shape) of the sweep, in OPS order, with its providers. Inputs are made lazily."""
    import torch
    import torch.nn.functional as F

    from llada_triton import kernels
    from llada_triton.kernels import reference as ref

    dev, dt, g = ctx.device, ctx.dtype, ctx.gen
    es = torch.tensor([], dtype=dt).element_size()
    d, H, Hkv, D, h, V = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.mlp_hidden_size, cfg.vocab_size
    eps, T, NH = cfg.rms_norm_eps, reg.block, cfg.n_heads + 2 * cfg.n_kv_heads
    cases: List[Case] = []
    memo: Dict[str, object] = {}

    def rn(*shape, scale=1.0):
        return (torch.randn(*shape, device=dev, generator=g) * scale).to(dt)

    def once(key, fn):
        """Weights shared by every shape of an op, made on first use."""
        if key not in memo:
            memo[key] = fn()
        return memo[key]

    def case(op, shape, B, rows, kv, cost, set_bytes, make, providers, out_of=lambda out: out):
        cases.append(Case(op, shape, B, rows, kv, cost[0], cost[1], set_bytes, make, providers, out_of))
        return cases[-1]

    # a kernel is looked up on first call (that imports triton), then memoised
    kern = lambda name: (lambda: once("kernel " + name, lambda: getattr(kernels, name)))  # noqa: E731
    norm_w = lambda: once("norm", lambda: (1 + 0.1 * torch.randn(d, device=dev, generator=g)).to(dt))  # noqa: E731
    mlp_w = lambda: once("mlp", lambda: (rn(2 * h, d, scale=d ** -0.5), rn(d, h, scale=h ** -0.5)))  # noqa: E731
    head_w = lambda: once("head", lambda: rn(V, d, scale=d ** -0.5))  # noqa: E731

    # ---- block_attention: B x KV, Tq = block queries over a cache holding kv_len keys (its own included)
    def flex(q, k, v):
        from torch.nn.attention.flex_attention import flex_attention
        fn = flex_attention if ctx.dry_run else ctx.compiled("flex_attention", flex_attention, dynamic=False)
        return fn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)

    def sdpa_flash(q, k, v):
        from torch.nn.attention import SDPBackend, sdpa_kernel
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return o.transpose(1, 2)

    for B in reg.batches:
        for kv in reg.kv_lens:
            c = case("block_attention", f"B{B}-Tq{T}-KV{kv}-H{H}-D{D}", B, B * T, kv,
                     attention_cost(B, T, kv, H, Hkv, D, es), attention_cost(B, T, kv, H, Hkv, D, es)[0],
                     lambda n, B=B, kv=kv: (kv, [(rn(B, T, H, D), rn(B, kv, Hkv, D), rn(B, kv, Hkv, D))
                                                 for _ in range(n)]),
                     _standard(ctx, "block_attention", ref.block_attention_ref, kern("block_attention"),
                               lambda fn, kv, s: fn(s[0], s[1], s[2], kv)))
            c.providers["sdpa-flash"] = ("library", lambda sh, s: sdpa_flash(*s))
            c.providers["flex-attention"] = ("compile", lambda sh, s: flex(*s))
            if ctx.dry_run:  # the CPU has no flash backend
                c.providers.pop("sdpa-flash")

    # ---- the form a CUDA-graphed decode step calls: kv_len = the cache's T_max slots (the largest KV length),
    # the real limit kv in a device key_end
    t_max = max(reg.kv_lens)
    for B in reg.batches:
        for kv in reg.kv_lens:
            case("block_attention+key_end", f"B{B}-Tq{T}-KV{kv}-Tmax{t_max}-H{H}-D{D}", B, B * T, kv,
                 attention_cost(B, T, kv, H, Hkv, D, es), attention_cost(B, T, t_max, H, Hkv, D, es)[0],
                 lambda n, B=B, kv=kv: (torch.full((T,), kv, dtype=torch.int32, device=dev),
                                        [(rn(B, T, H, D), rn(B, t_max, Hkv, D), rn(B, t_max, Hkv, D))
                                         for _ in range(n)]),
                 _standard(ctx, "block_attention+key_end", ref.block_attention_ref, kern("block_attention"),
                           lambda fn, key_end, s: fn(s[0], s[1], s[2], t_max, None, key_end)))

    # ---- qkv_proj_rope: x [B, T, d] -> q, and rotated K / V into a cache at slots [T, 2T) (the cost does not
    # depend on the position, so the cache holds 2T slots)
    def qkv_shared():
        cos, sin = ref.rope_tables(D, cfg.rope_theta, 2 * T, device=dev)
        return rn(NH * D, d, scale=d ** -0.5), cos, sin, torch.tensor(T, dtype=torch.int64, device=dev)

    for B in reg.batches:
        case("qkv_proj_rope", f"B{B}-T{T}-d{d}-NH{NH}-D{D}", B, B * T, 0, qkv_proj_cost(B * T, d, H, Hkv, D, T, es),
             B * T * d * es,
             lambda n, B=B: (once("qkv", qkv_shared), [(rn(B, T, d), rn(B, 2 * T, Hkv, D), rn(B, 2 * T, Hkv, D))
                                                       for _ in range(n)]),
             _standard(ctx, "qkv_proj_rope", ref.qkv_proj_rope_ref, kern("qkv_proj_rope"),
                       lambda fn, sh, s: fn(s[0], sh[0], sh[1], sh[2], sh[3], s[1], s[2], n_heads=H)),
             out_of=_first)

    # ---- linear_rms_norm: the attention output projection, its residual add and the MLP's norm
    def linear_norm_cublas(x, w, r, nw):
        hh = torch.addmm(r, x, w.t())
        return F.rms_norm(hh, (d,), nw, eps), hh

    for B in reg.batches:
        M = B * T
        c = case("linear_rms_norm", f"B{B}-M{M}-d{d}", B, M, 0, linear_norm_cost(M, d, es), 2 * M * d * es,
                 lambda n, M=M: ((once("o", lambda: rn(d, d, scale=d ** -0.5)), norm_w()),
                                 [(rn(M, d), rn(M, d)) for _ in range(n)]),
                 _standard(ctx, "linear_rms_norm", ref.linear_rms_norm_ref, kern("linear_rms_norm"),
                           lambda fn, sh, s: fn(s[0], sh[0], s[1], sh[1], eps)), out_of=_first)
        c.providers["cublas"] = ("library", lambda sh, s: linear_norm_cublas(s[0], sh[0], s[1], sh[1]))

    # ---- swiglu_mlp (+ residual), and swiglu_mlp_rms_norm (+ the next norm): rows = B * block
    def mlp_cublas(x, w_gu, w_d, r):
        gu = F.linear(x, w_gu)
        return torch.addmm(r, F.silu(gu[:, :h]).mul_(gu[:, h:]), w_d.t())

    def mlp_cublas_silu_mul(x, w_gu, w_d, r):
        return torch.addmm(r, kern("silu_mul")()(F.linear(x, w_gu)), w_d.t())

    def mlp_norm_cublas(x, w_gu, w_d, r, nw):
        hh = mlp_cublas_silu_mul(x, w_gu, w_d, r)
        return F.rms_norm(hh, (d,), nw, eps), hh

    for norm in (False, True):
        op = "swiglu_mlp_rms_norm" if norm else "swiglu_mlp"
        for B in reg.batches:
            M = B * T
            make = lambda n, M=M: ((*mlp_w(), norm_w()), [(rn(M, d), rn(M, d)) for _ in range(n)])  # noqa: E731
            if norm:
                c = case(op, f"B{B}-M{M}-d{d}-h{h}", B, M, 0, mlp_cost(M, d, h, es, True), 2 * M * d * es, make,
                         _standard(ctx, op, ref.swiglu_mlp_rms_norm_ref, kern(op),
                                   lambda fn, sh, s: fn(s[0], sh[0], sh[1], s[1], sh[2], eps)), out_of=_first)
                c.providers["cublas+silu_mul"] = ("library", lambda sh, s: mlp_norm_cublas(s[0], *sh[:2], s[1], sh[2]))
            else:
                c = case(op, f"B{B}-M{M}-d{d}-h{h}", B, M, 0, mlp_cost(M, d, h, es), 2 * M * d * es, make,
                         _standard(ctx, op, ref.swiglu_mlp_ref, kern(op),
                                   lambda fn, sh, s: fn(s[0], sh[0], sh[1], s[1])))
                c.providers["cublas"] = ("library", lambda sh, s: mlp_cublas(s[0], sh[0], sh[1], s[1]))
                c.providers["cublas+silu_mul"] = ("library", lambda sh, s: mlp_cublas_silu_mul(s[0], *sh[:2], s[1]))

    # ---- rms_norm, with and without the fused residual add: rows = B * block
    for res in (False, True):
        op = "rms_norm+residual" if res else "rms_norm"
        for B in reg.batches:
            R = B * T
            c = case(op, f"B{B}-R{R}-d{d}", B, R, 0, norm_cost(R, d, es, res), (2 if res else 1) * R * d * es,
                     lambda n, R=R, res=res: (norm_w(), [(rn(R, d), rn(R, d) if res else None) for _ in range(n)]),
                     _standard(ctx, "rms_norm", ref.rms_norm_ref, kern("rms_norm"),
                               lambda fn, sh, s: fn(s[0], sh, eps, s[1])),
                     out_of=_first if res else (lambda out: out))
            if res:
                c.providers["F.rms_norm"] = ("library", lambda sh, s: (F.rms_norm(s[0] + s[1], (d,), sh, eps), None))
            else:
                c.providers["F.rms_norm"] = ("library", lambda sh, s: F.rms_norm(s[0], (d,), sh, eps))

    # ---- rope: q of a fused [B, T, H + 2 Hkv, D] projection (a strided view, read in place), positions [T, 2T)
    def rope_shared():
        cos, sin = ref.rope_tables(D, cfg.rope_theta, 2 * T, device=dev)
        return cos[T:].contiguous(), sin[T:].contiguous()

    for B in reg.batches:
        case("rope", f"B{B}-T{T}-H{H}-D{D}", B, B * T, 0, rope_cost(B, T, H, D, es), B * T * NH * D * es,
             lambda n, B=B: (once("rope", rope_shared), [(rn(B, T, NH, D)[:, :, :H],) for _ in range(n)]),
             _standard(ctx, "rope", ref.rope_ref, kern("rope"), lambda fn, sh, s: fn(s[0], sh[0], sh[1])))

    for c in cases:
        if c.op in COPY_OPS:
            _with_copy(c, dev, dt, g, es)

    # ---- head_confidence: rows = B * block, at temperature 0, 1 (sampled: outputs not compared) and with CFG
    for variant, kw in (("", {}), ("+T1", dict(temperature=1.0)), ("+cfg", dict(cfg_scale=1.0))):
        for B in reg.batches:
            M = B * T
            two = variant == "+cfg"
            kk = dict(kw, **({"seed": 1, "offset": 2} if kw.get("temperature") else {}))  # the kernel's RNG

            def call(fn, sh, s, kw=kw):
                return fn(s[0], sh, **kw, **(dict(uncond_hidden=s[1]) if len(s) > 1 else {}))

            c = case("head_confidence" + variant, f"B{B}-M{M}-V{V}-d{d}", B, M, 0, head_cost(M, V, d, es, two),
                     (2 if two else 1) * M * d * es,
                     lambda n, M=M, two=two: (head_w(), [tuple(rn(M, d) for _ in range(1 + two)) for _ in range(n)]),
                     _standard(ctx, "head_confidence", ref.head_confidence_ref, kern("head_confidence"), call,
                               lambda fn, sh, s, kk=kk, call=call: call(fn, sh, s, kk)),
                     out_of=(lambda out: None) if variant == "+T1" else _first)
            c.providers["cublas-matmul"] = ("yardstick", lambda sh, s: F.linear(s[0], sh))
            if variant == "+T1":  # the reference's fp64 noise does not trace (torch.rand); nothing to compare
                c.providers.pop("torch-compile")

    # ---- logits_confidence at temperature 0: the block's logits rows = B * block
    def official_conf(lg, dtype):
        """The official LLaDA code's confidence of the argmax token (softmax in ``dtype``)."""
        p = F.softmax(lg.to(dtype), dim=-1)
        x0 = torch.argmax(lg, dim=-1)
        return x0, torch.gather(p, -1, x0[:, None])[:, 0]

    for B in reg.batches:
        M = B * T
        c = case("logits_confidence", f"B{B}-M{M}-V{V}", B, M, 0, logits_cost(M, V, es), M * V * es,
                 lambda n, M=M: (None, [(rn(M, V, scale=3.0),) for _ in range(n)]),
                 _standard(ctx, "logits_confidence", ref.logits_confidence_ref, kern("logits_confidence"),
                           lambda fn, sh, s: fn(s[0])), out_of=_first)
        c.providers["torch-official"] = ("reference", lambda sh, s: official_conf(s[0], torch.float64))
        c.providers["torch-official-bf16"] = ("reference", lambda sh, s: official_conf(s[0], s[0].dtype))

    # ---- select_transfer: B rows of one block, each selection rule
    for rule in ("topk", "threshold", "factor"):
        for B in reg.batches:
            def make(n, B=B, rule=rule):
                def one():
                    k = torch.randint(1, 5, (B,), device=dev, generator=g)
                    rule_kw = dict(k=k) if rule == "topk" else dict(threshold=0.9) if rule == "threshold" \
                        else dict(factor=1.0)
                    return (torch.rand(B, T, device=dev, generator=g),
                            torch.rand(B, T, device=dev, generator=g) > 0.3, rule_kw)
                return None, [one() for _ in range(n)]

            op = "select_transfer" + ("" if rule == "topk" else "+" + rule)
            case(op, f"B{B}-L{T}", B, B, 0, select_cost(B, T), select_cost(B, T)[0], make,
                 _standard(ctx, f"select_transfer-{rule}", ref.select_transfer_ref, kern("select_transfer"),
                           lambda fn, sh, s: fn(s[0], s[1], **s[2])))

    # ---- dream_head: Dream-7B's LM head at temperature 0 with the negative-entropy confidence (Fast-dLLM's Dream
    # caches), rows = B * block; the check compares the confidences
    dcfg = small_config(dream_7b()) if ctx.dry_run else dream_7b()
    dd, dV = dcfg.d_model, dcfg.vocab_size
    for B in reg.batches:
        M = B * T
        c = case("dream_head", f"B{B}-M{M}-V{dV}-d{dd}", B, M, 0, head_cost(M, dV, dd, es), M * dd * es,
                 lambda n, M=M: (once("dream head", lambda: rn(dV, dd, scale=dd ** -0.5)),
                                 [(rn(M, dd),) for _ in range(n)]),
                 _standard(ctx, "dream_head", ref.head_dream_confidence_ref, kern("head_dream_confidence"),
                           lambda fn, sh, s: fn(s[0], sh, confidence="neg_entropy")), out_of=lambda out: out[1])
        c.providers["cublas-matmul"] = ("yardstick", lambda sh, s: F.linear(s[0], sh))
    return cases


# -------------------------------------------------------------------------------------- timing
class Timer:
    """p50/p20/p80 in us: do_bench (L2 flushed per call) and CUDA-graph replays over rotating input sets.

    Dry run: wall clock of a few calls on the CPU (numbers meaningless; checks the plumbing)."""

    def __init__(self, dry_run: bool, warmup_ms: float, rep_ms: float, graph_samples: int, graph_calls: int):
        self.dry_run, self.warmup_ms, self.rep_ms = dry_run, warmup_ms, rep_ms
        self.graph_samples = 1 if dry_run else graph_samples
        self.graph_calls = graph_calls

    @staticmethod
    def quantiles(samples_us) -> List[float]:
        import torch
        t = torch.tensor(samples_us, dtype=torch.float64)
        return [float(v) for v in torch.quantile(t, torch.tensor(QUANTILES, dtype=torch.float64))]

    def eager(self, fn) -> List[float]:
        if self.dry_run:
            return self.quantiles([self._wall_us(fn)])
        from triton.testing import do_bench
        return [1e3 * v for v in do_bench(fn, warmup=self.warmup_ms, rep=self.rep_ms, quantiles=list(QUANTILES))]

    def graph_sample(self, fn_per_set, n_sets: int) -> float:
        """One sample of the graph timing: us per call of one replay (one capture) of >= ``graph_calls``
        calls rotating over the ``n_sets`` input sets; ``graph_samples`` of them make a graph row."""
        if self.dry_run:
            return self._wall_us(lambda: [fn_per_set(i) for i in range(n_sets)]) / n_sets
        return graph_time_us(fn_per_set, n_sets, min_calls=self.graph_calls, replays=1)

    @staticmethod
    def _wall_us(fn):
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e6


def roofline(dry_run: bool):
    """(copy bytes/s, bf16 matmul FLOP/s): scripts/_bench.py's measure_roofline (dry run: its tiny CPU version)."""
    return measure_roofline(device="cpu" if dry_run else "cuda")


# ---------------------------------------------------------------------------------------- run
class Ctx:
    def __init__(self, dry_run, device, dtype, gen, compile_backend, compile_mode):
        self.dry_run, self.device, self.dtype, self.gen = dry_run, device, dtype, gen
        self.compile_backend, self.compile_mode = compile_backend, compile_mode
        self._compiled = {}

    def compiled(self, key, fn, dynamic=None):
        """One torch.compile wrapper per op. ``dynamic=None`` (torch's default): a second shape recompiles
        with dynamic sizes that later shapes reuse; flex-attention is compiled per shape (``dynamic=False``)."""
        if key not in self._compiled:
            import torch
            kw = dict(backend=self.compile_backend, dynamic=dynamic)
            if self.compile_backend == "inductor" and self.compile_mode != "default":
                kw["mode"] = self.compile_mode
            self._compiled[key] = torch.compile(fn, **kw)
        return self._compiled[key]


def _check(out, want) -> str:
    """How a provider's output compares with the reference's: max |diff| (floats) or equal count (discrete)."""
    import torch
    if out is None or want is None:
        return ""
    if out.dtype in (torch.bool, torch.int32, torch.int64):
        return f"equal {int((out == want).sum())}/{want.numel()}"
    return f"maxdiff {(out.float() - want.float()).abs().max().item():.3g}"


def _extra_mib(dry_run, fn):
    """MiB that one call allocates beyond what is held before it (its output included); empty on the CPU."""
    if dry_run:
        return ""
    import torch
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    del out
    return round((torch.cuda.max_memory_allocated() - before) / 2 ** 20, 1)


def _sync(dry_run):
    if not dry_run:
        import torch
        torch.cuda.synchronize()


def _row(case: Case, base: dict, name: str, kind: str, timing: str, n_sets: int) -> dict:
    return dict(base, op=case.op, provider=name + ("-graph" if timing == "cuda-graph" else ""), kind=kind,
                timing=timing, shape=case.shape, batch=case.batch, rows=case.rows, kv_len=case.kv_len or "",
                bytes=case.nbytes, flops=case.flops, n_sets=n_sets, error="", note="", check="")


def _error(e: Exception) -> str:
    return re.sub(r"\s+", " ", f"{type(e).__name__}: {e}".replace("\n", " "))[:300]


def _finish(r: dict, seconds: float):
    """Derived columns and the progress line of a finished row (``seconds``: time spent on it)."""
    r["bench_s"] = round(seconds, 2)
    _derive(r)
    print(f"{r['op']:17s} {r['provider']:22s} {r['shape']:28s} "
          + (f"{r['p50_us']:10.2f} us {r['pct_roofline']:6.1f}% {r['check']}" if r.get("p50_us") != ""
             else f"ERROR {r['error'][:120]}") + f"  [{r['bench_s']} s]", flush=True)


def run_case(case: Case, providers, timer: Timer, ctx: Ctx, base: dict, deadline: float, l2_bytes: int):
    """Rows (eager + graph) for ``providers`` of one case; errors and budget skips become rows.

    Each provider's first call (compile, output check) and ``do_bench`` row come first, provider by provider;
    then the graph samples are taken round-robin (sample ``s`` of every provider before sample ``s + 1`` of
    any), so a slow drift of the GPU during the case (clocks under the power cap, temperature) weighs on every
    provider alike and the graph rows' ratios stay comparable."""
    import torch

    rows = []
    n_sets = 2 if ctx.dry_run else int(min(MAX_SETS, max(2, math.ceil(3 * l2_bytes / max(1, case.set_bytes)))))
    shared, sets = case.make(n_sets)
    want = None
    try:
        want = case.out_of(case.providers["torch"][1](shared, sets[0]))
    except Exception:  # noqa: BLE001 - the torch row below records it
        pass
    graphed = []  # (graph row, fn per input set, samples, seconds spent)
    for name in providers:
        kind, f = case.providers[name]
        t0 = time.time()
        r = _row(case, base, name, kind, "do_bench", n_sets)
        g = _row(case, base, name, kind, "cuda-graph", n_sets)
        try:
            if time.time() > deadline:
                raise TimeoutError("skipped: time budget (--budget-s) spent")
            tc = time.time()
            out = f(shared, sets[0])  # first call: compiles (triton JIT / torch.compile)
            _sync(ctx.dry_run)
            r["note"] = f"first call {time.time() - tc:.2f} s" + (
                f" (torch.compile {ctx.compile_backend}, mode {ctx.compile_mode})" if kind == "compile" else "")
            r["check"] = "" if kind == "yardstick" else _check(case.out_of(out), want)
            del out
            r["extra_mib"] = _extra_mib(ctx.dry_run, lambda f=f: f(shared, sets[0]))
            q = timer.eager(lambda f=f: f(shared, sets[0]))
            r.update(p50_us=q[0], p20_us=q[1], p80_us=q[2])
        except Exception as e:  # noqa: BLE001 - record and go on
            r["error"] = _error(e)
            g.update(error="not timed: " + r["error"])  # the graph timing would fail the same way
        _finish(r, time.time() - t0)
        rows += [r, g]
        if g["error"]:
            g["bench_s"] = 0.0
            _derive(g)
        else:
            graphed.append([g, (lambda i, f=f: f(shared, sets[i])), [], 0.0])
    for s in range(timer.graph_samples):
        for item in graphed:
            g, fn, samples, _ = item
            if g["error"]:
                continue
            t0 = time.time()
            try:
                if not samples and time.time() > deadline:
                    raise TimeoutError("skipped: time budget (--budget-s) spent")
                samples.append(timer.graph_sample(fn, n_sets))
            except Exception as e:  # noqa: BLE001 - record and go on
                g["error"] = _error(e)
            item[3] += time.time() - t0
    for g, _, samples, spent in graphed:
        if not g["error"]:
            q = timer.quantiles(samples)
            g.update(p50_us=q[0], p20_us=q[1], p80_us=q[2])
        _finish(g, spent)
    del sets, shared, want, graphed
    if not ctx.dry_run:
        torch.cuda.empty_cache()
    return rows


def _derive(r):
    """GB/s, TFLOP/s, roofline time and % of it from p50, bytes, flops and the measured roofline."""
    t_mem = r["bytes"] / (r["copy_gbps"] * 1e9)
    t_cmp = r["flops"] / (r["matmul_tflops"] * 1e12) if r["flops"] else 0.0
    r["roofline_us"] = round(1e6 * max(t_mem, t_cmp), 3)
    r["bound"] = "compute" if t_cmp > t_mem else "memory"
    p50 = r.get("p50_us", "")
    if p50 == "" or p50 is None:
        for k in ("p50_us", "p20_us", "p80_us", "gbps", "tflops", "pct_roofline"):
            r[k] = ""
        return
    for k in ("p50_us", "p20_us", "p80_us"):
        r[k] = round(r[k], 3)
    r["gbps"] = round(r["bytes"] / (p50 * 1e-6) / 1e9, 1)
    r["tflops"] = round(r["flops"] / (p50 * 1e-6) / 1e12, 2) if r["flops"] else ""
    r["pct_roofline"] = round(100 * r["roofline_us"] / p50, 1)


def write_csv(rows, path):
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def _slug(s):
    return re.sub(r"[^a-z0-9]+", "_", s.lower()).strip("_")


def main(out: str, sha: Optional[str] = None, dry_run: bool = False, ops=OPS, regime: Optional[Regime] = None,
         budget_s: float = 330.0, warmup_ms: float = 10.0, rep_ms: float = 40.0, graph_samples: int = 10,
         graph_calls: int = 32, compile_backend: Optional[str] = None, compile_mode: str = "default",
         no_compile: bool = False, render_too: bool = True) -> str:
    """Run the sweep; returns the CSV path. ``ops`` selects a subset of OPS."""
    t_start = time.time()
    deadline = t_start + budget_s
    if dry_run:
        if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError("--dry-run needs TRITON_INTERPRET=1 before triton is imported (run it as a script)")
        os.environ["TRITON_INTERPRET"] = "1"
        regime = regime or DRY_REGIME
    regime = regime or Regime()
    import torch

    unknown = set(ops) - set(OPS)
    if unknown:
        raise SystemExit(f"unknown ops {sorted(unknown)}; choose from {OPS}")
    cfg = model_config(dry_run)
    dev = "cpu" if dry_run else "cuda"
    dtype = torch.float32 if dry_run else torch.bfloat16  # the interpreter computes bf16 wrongly
    env = environment(dev, sha)
    if dry_run:
        env["gpu"] = "cpu (dry run)"
    gpu = env["gpu"]
    bw, mm = roofline(dry_run)
    base = dict(env, dtype=str(dtype).replace("torch.", ""), copy_gbps=float(f"{bw / 1e9:.5g}"),
                matmul_tflops=float(f"{mm / 1e12:.5g}"))
    print(f"{gpu} torch {env['torch']} triton {env['triton']} sha {base['sha']}: copy "
          f"{base['copy_gbps']} GB/s, bf16 matmul {base['matmul_tflops']} TFLOP/s; config d={cfg.d_model} "
          f"H={cfg.n_heads}x{cfg.head_dim} h={cfg.mlp_hidden_size} V={cfg.vocab_size}; {regime}", flush=True)
    import torch._dynamo

    for name, val in (("recompile_limit", 64), ("cache_size_limit", 64), ("accumulated_recompile_limit", 1024),
                      ("fail_on_recompile_limit_hit", True)):  # a silent fallback to eager would mislabel rows
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, val)
    l2 = 0 if dry_run else getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20)
    ctx = Ctx(dry_run, dev, dtype, torch.Generator(device=dev).manual_seed(0),
              compile_backend or ("eager" if dry_run else "inductor"), compile_mode)
    timer = Timer(dry_run, warmup_ms, rep_ms, graph_samples, graph_calls)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"kernels_{_slug(gpu)}_{base['sha']}.csv")
    cases = [c for c in build_cases(cfg, regime, ctx) if c.op in ops]
    rows: List[dict] = []
    # pass 1: everything but torch.compile; pass 2: providers that need torch.compile (flex first)
    for pass_kinds in (("reference", "triton", "library", "yardstick"), ("compile",)):
        if pass_kinds == ("compile",) and no_compile:
            break
        order = sorted(range(len(cases)), key=lambda i: (cases[i].op != "block_attention", i))
        for i in order if pass_kinds == ("compile",) else range(len(cases)):
            c = cases[i]
            names = [n for n, (k, _) in c.providers.items() if k in pass_kinds]
            names.sort(key=lambda n: n != "flex-attention")
            t_op = time.time()
            rows += run_case(c, names, timer, ctx, base, deadline, l2)
            print(f"  {c.op} {c.shape}: {time.time() - t_op:.1f} s (total {time.time() - t_start:.0f} s)", flush=True)
            write_csv(_ordered(rows, cases), path)
    write_csv(_ordered(rows, cases), path)
    print(f"wrote {path} ({len(rows)} rows) in {time.time() - t_start:.0f} s", flush=True)
    for h in headline(_ordered(rows, cases)):
        if h["timing"] == "cuda-graph" or dry_run:
            print(f"{h['op']} {h['shape']} ({h['timing']}): triton {h['triton_us']:.1f} us; best other {h['best']} "
                  + (f"{h['speedup']:.2f}x" if h["speedup"] else "-") + "; vs torch "
                  + (f"{h['vs_torch']:.2f}x" if h["vs_torch"] else "-"), flush=True)
    if render_too:
        try:
            render(path)
        except ImportError as e:  # matplotlib missing on the GPU box: render later on a CPU
            print(f"render skipped: {e}", flush=True)
    return path


def _ordered(rows, cases):
    """Rows grouped by op and shape in sweep order, providers in a fixed order."""
    pos = {(c.op, c.shape): i for i, c in enumerate(cases)}
    kind_rank = {k: i for i, k in enumerate(KINDS)}
    return sorted(rows, key=lambda r: (pos[(r["op"], r["shape"])], r["timing"] != "do_bench",
                                       kind_rank[r["kind"]], r["provider"]))


# ------------------------------------------------------------------------------------- render
def _f(v, nd=1):
    return "" if v in ("", None) else f"{float(v):.{nd}f}"


def _uniq(rows, *keys):
    """The distinct values (tuples for several keys) of ``keys`` over ``rows``, in order of appearance."""
    return list(dict.fromkeys(r[keys[0]] if len(keys) == 1 else tuple(r[k] for k in keys) for r in rows))


def headline(rows) -> List[dict]:
    """Per (op, shape, timing): triton against the fastest other provider timed the same way."""
    out = []
    for k in _uniq(rows, "op", "shape", "timing"):
        grp = [r for r in rows if (r["op"], r["shape"], r["timing"]) == k and r["p50_us"] not in ("", None)]
        tri = [r for r in grp if r["kind"] == "triton"]
        oth = [r for r in grp if r["kind"] not in ("triton", "yardstick")]
        cp = [r for r in grp if r["provider"] in ("copy", "copy-graph")]
        if not tri:
            continue
        t = tri[0]
        best = min(oth, key=lambda r: float(r["p50_us"])) if oth else None
        ref = [r for r in grp if r["provider"] in ("torch", "torch-graph")]
        out.append(dict(op=k[0], shape=k[1], timing=k[2], triton_us=float(t["p50_us"]),
                        pct=t["pct_roofline"], roofline_us=t["roofline_us"], bound=t["bound"],
                        best=best["provider"] if best else "", best_us=float(best["p50_us"]) if best else None,
                        speedup=float(best["p50_us"]) / float(t["p50_us"]) if best else None,
                        copy_us=float(cp[0]["p50_us"]) if cp else None,
                        vs_torch=float(ref[0]["p50_us"]) / float(t["p50_us"]) if ref else None))
    return out


def render(csv_path: str, md_path: Optional[str] = None, png_path: Optional[str] = None) -> str:
    """Markdown (headline + one table per op) and one PNG (p50 per provider per shape, log scale)."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SystemExit(f"{csv_path} has no rows")
    stem = os.path.splitext(csv_path)[0]
    md_path = md_path or stem + ".md"
    png_path = png_path or stem + ".png"
    r0 = rows[0]
    lines = ["# Kernel benchmark, LLaDA-8B decode shapes", "",
             f"{r0['gpu']}, torch {r0['torch']}, triton {r0['triton']}, git {r0['sha']}, {r0['dtype']}, "
             f"{r0['timestamp']}. Measured roofline in the same run: copy {r0['copy_gbps']} GB/s (bytes read + "
             f"written), bf16 8192^3 matmul {r0['matmul_tflops']} TFLOP/s. `% roof` = max(bytes / copy bandwidth, "
             f"FLOPs / matmul peak) / p50. `do_bench`: triton.testing.do_bench, L2 flushed before each call "
             f"(launch overhead included); `graph`: CUDA-graph replays of >= 32 calls rotating over up to 32 input "
             f"sets (KV caches and large activations cold in L2; weights are larger than L2), what a captured "
             f"decode step sees. Times are p50 in us; p20/p80 in the CSV. Bytes and FLOPs by formula "
             f"(scripts/bench_kernels.py, `*_cost`); the roofline's copy moves as many bytes written as read, so "
             f"read-dominated kernels can pass 100%.", "",
             "Providers (`-graph`: the same call timed under a CUDA graph): "
             + "; ".join(f"`{k}` {v}" for k, v in PROVIDERS.items() if any(r["provider"] == k for r in rows)) + ".",
             "",
             f"![p50 per provider]({os.path.basename(png_path)})", "",
             "## Headline: triton vs the fastest other provider, same timing", "",
             "| op | shape | bound | roofline us | triton graph us | % roof | same-bytes copy (graph) us "
             "| best other (graph) | us | speedup | triton do_bench us | best other (do_bench) | us | speedup "
             "| vs torch (graph) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    hl = headline(rows)
    by = {(h["op"], h["shape"], h["timing"]): h for h in hl}
    for op, shape in _uniq(hl, "op", "shape"):
        g, e = by.get((op, shape, "cuda-graph"), {}), by.get((op, shape, "do_bench"), {})
        h = g or e
        lines.append(
            f"| {op} | {shape} | {h['bound']} | {_f(h['roofline_us'], 2)} | {_f(g.get('triton_us'))} | "
            f"{_f(g.get('pct'))} | {_f(g.get('copy_us'))} | {g.get('best', '')} | {_f(g.get('best_us'))} | "
            f"{_f(g.get('speedup'), 2)}{'x' if g.get('speedup') else ''} | {_f(e.get('triton_us'))} | "
            f"{e.get('best', '')} | {_f(e.get('best_us'))} | {_f(e.get('speedup'), 2)}{'x' if e.get('speedup') else ''} | "
            f"{_f(g.get('vs_torch'), 2)}{'x' if g.get('vs_torch') else ''} |")
    lines += ["", "speedup = best other p50 / triton p50 (> 1: triton is faster); vs torch = the torch reference's "
              "p50 / triton's, both graphed (issue 23's confidence-kernel target reads this column for dream_head).", ""]
    wall = {op: sum(float(r["bench_s"] or 0) for r in rows if r["op"] == op) for op in _uniq(rows, "op")}
    lines += ["Benchmark wall time per op (compiles included): "
              + ", ".join(f"{op} {s:.0f} s" for op, s in wall.items()) + f"; total {sum(wall.values()):.0f} s.", ""]
    ops = _uniq(rows, "op")
    for op in ops:
        orows = [r for r in rows if r["op"] == op]
        provs, shapes = _uniq(orows, "provider"), _uniq(orows, "shape")
        cell = {(r["shape"], r["provider"]): r for r in orows}
        lines += [f"## {op}", "", "p50 us (% of roofline)", "",
                  "| shape | MB | GFLOP | roofline us | " + " | ".join(provs) + " |",
                  "|---|---|---|---|" + "---|" * len(provs)]
        for s in shapes:
            any_r = next(r for r in orows if r["shape"] == s)
            cells = []
            for p in provs:
                r = cell.get((s, p))
                if r is None:
                    cells.append("")
                elif r["p50_us"] == "":
                    cells.append("skipped" if "skipped" in r["error"] else "error")
                else:
                    cells.append(f"{float(r['p50_us']):.1f} ({float(r['pct_roofline']):.0f}%)")
            lines.append(f"| {s} | {int(any_r['bytes']) / 1e6:.2f} | {int(any_r['flops']) / 1e9:.2f} | "
                         f"{_f(any_r['roofline_us'], 2)} | " + " | ".join(cells) + " |")
        errs = []
        for r in orows:
            if r["error"] and not r["error"].startswith("not timed") and "skipped" not in r["error"] \
                and r["error"] not in [e[1] for e in errs]:
                errs.append((f"{r['provider']} {r['shape']}", r["error"]))
        checks = _check_summary(orows)
        if checks:
            lines += ["", "Output vs the torch reference on the first input set, worst over shapes: " + checks]
        for where, e in errs:
            lines += ["", f"- error ({where}): `{e}`"]
        n_skip = sum("skipped" in r["error"] for r in orows)
        if n_skip:
            lines += ["", f"- {n_skip} rows skipped: the run's time budget (--budget-s) was spent"]
        lines.append("")
    text = "\n".join(lines) + "\n"
    with open(md_path, "w") as f:
        f.write(text)
    _plot(rows, ops, png_path)
    return text


def _check_summary(orows) -> str:
    """'triton: max |diff| 3e-3; ...' / 'triton: equal 31/32 (worst)' per provider over the shapes."""
    worst = {}
    for r in orows:
        c = r["check"]
        if not c or r["kind"] == "reference":
            continue
        if c.startswith("maxdiff"):
            v = float(c.split()[1])
            worst[r["provider"]] = ("maxdiff", max(v, worst.get(r["provider"], ("", -1.0))[1]))
        else:
            a, b = map(int, c.split()[1].split("/"))
            prev = worst.get(r["provider"], ("", 2.0))
            if a / b <= prev[1]:
                worst[r["provider"]] = ("equal", a / b, f"{a}/{b}")
    out = []
    for p, w in worst.items():
        out.append(f"{p}: max abs diff {w[1]:.3g}" if w[0] == "maxdiff" else f"{p}: equal {w[2]} (lowest)")
    return "; ".join(out)


def _plot(rows, ops, png_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(ops)
    ncol = min(4, n)
    nrow = -(-n // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.6 * ncol, 3.8 * nrow), squeeze=False)
    colors = {}
    cmap = plt.get_cmap("tab10")
    for ax, op in zip(axes.flat, ops):
        orows = [r for r in rows if r["op"] == op]
        shapes = _uniq(orows, "shape")
        x = {s: i for i, s in enumerate(shapes)}
        for p in _uniq(orows, "provider"):
            pr = [r for r in orows if r["provider"] == p and r["p50_us"] != ""]
            if not pr:
                continue
            base = p[:-6] if p.endswith("-graph") else p
            colors.setdefault(base, cmap(len(colors) % 10))
            xs = [x[r["shape"]] for r in pr]
            ys = [float(r["p50_us"]) for r in pr]
            lo = [max(0.0, y - float(r["p20_us"])) for y, r in zip(ys, pr)]
            hi = [max(0.0, float(r["p80_us"]) - y) for y, r in zip(ys, pr)]
            ax.errorbar(xs, ys, yerr=[lo, hi], color=colors[base], marker="o" if p == base else "s",
                        linestyle="-" if p == base else "--", markersize=3, linewidth=1, capsize=2, label=p)
        roof = {r["shape"]: float(r["roofline_us"]) for r in orows}
        times = [float(r["p20_us"]) for r in orows if r["p20_us"] != ""]
        floor = min(times) / 10 if times else 0.0  # a roofline far below every time would squash the axis
        ax.plot(range(len(shapes)), [roof[s] if roof[s] >= floor else float("nan") for s in shapes], color="black",
                linestyle=":", linewidth=1.2, label="roofline" if any(roof[s] >= floor for s in shapes)
                else "roofline (< 1/10 of every time)")
        ax.set_yscale("log")
        ax.set_title(op, fontsize=10)
        ax.set_xticks(range(len(shapes)))
        ax.set_xticklabels([_short(s) for s in shapes], rotation=60, fontsize=7, ha="right")
        ax.set_ylabel("p50 us (log)", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(True, which="both", linewidth=0.3, alpha=0.5)
        ax.legend(fontsize=6, ncol=2)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    r0 = rows[0]
    fig.suptitle(f"{r0['gpu']} | torch {r0['torch']} triton {r0['triton']} | git {r0['sha']} | "
                 f"solid: do_bench, dashed: CUDA graph", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=72)
    plt.close(fig)
    from PIL import Image  # a matplotlib dependency: a 128-colour palette keeps the committed PNG small

    buf.seek(0)
    Image.open(buf).convert("RGB").quantize(colors=128).save(png_path, optimize=True)


def _short(shape):
    """Shape label without the parts fixed by the config (kept in the markdown)."""
    keep = [p for p in shape.split("-") if re.match(r"^(B|KV|M|R)\d+$", p)]
    return "-".join(keep) or shape


# ---------------------------------------------------------------------------------------- cli
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "results", "kernels"), help="folder for the CSV (and md/png)")
    ap.add_argument("--sha", default=None, help="git sha to record (the GPU copy of the repo has no .git)")
    ap.add_argument("--render", metavar="CSV", help="only render CSV to markdown + PNG beside it (CPU), then exit")
    ap.add_argument("--dry-run", action="store_true", help="tiny config on the CPU under TRITON_INTERPRET=1")
    ap.add_argument("--ops", default=",".join(OPS),
                    help="comma-separated subset of " + ",".join(OPS) + "; 'decode': " + ",".join(DECODE_OPS))
    ap.add_argument("--batches", default=None, help="default 1,8,32 (dry run 1,2)")
    ap.add_argument("--block", type=int, default=None, help="block length, default 32 (dry run 8)")
    ap.add_argument("--kv-lens", default=None, help="default 128,1024,4096 (dry run 16)")
    ap.add_argument("--budget-s", type=float, default=330.0, help="stop timing (rows say so) after this many s")
    ap.add_argument("--warmup-ms", type=float, default=10.0)
    ap.add_argument("--rep-ms", type=float, default=40.0, help="do_bench rep (ms of timed calls)")
    ap.add_argument("--graph-samples", type=int, default=10, help="graph replays (one capture each) per row")
    ap.add_argument("--graph-calls", type=int, default=32, help="calls per graph replay (at least)")
    ap.add_argument("--compile-backend", default=None, help="torch.compile backend (default inductor; dry run eager)")
    ap.add_argument("--compile-mode", default="default", help="e.g. max-autotune-no-cudagraphs (slow to compile)")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile providers (and flex-attention)")
    ap.add_argument("--no-render", action="store_true")
    return ap.parse_args(argv)


def cli(argv=None):
    a = parse_args(argv)
    if a.render:
        print(render(a.render))
        return a.render
    ints = lambda s: tuple(int(v) for v in s.split(","))  # noqa: E731
    reg = None
    if a.batches or a.block or a.kv_lens:
        dflt = DRY_REGIME if a.dry_run else Regime()
        reg = Regime(batches=ints(a.batches) if a.batches else dflt.batches, block=a.block or dflt.block,
                     kv_lens=ints(a.kv_lens) if a.kv_lens else dflt.kv_lens)
    ops = DECODE_OPS if a.ops == "decode" else tuple(a.ops.split(","))
    return main(a.out, sha=a.sha, dry_run=a.dry_run, ops=ops, regime=reg, budget_s=a.budget_s,
                warmup_ms=a.warmup_ms, rep_ms=a.rep_ms, graph_samples=a.graph_samples, graph_calls=a.graph_calls,
                compile_backend=a.compile_backend, compile_mode=a.compile_mode, no_compile=a.no_compile,
                render_too=not a.no_render)


if __name__ == "__main__":
    cli()
