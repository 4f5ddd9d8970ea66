"""One decoding step with the exact ``block`` cache, built from model-level public functions (not the driver):
what ``bench_decode --shape llada2-mini / llada-moe-7b`` times. Imports neither torch nor triton at module level.

A step at block start ``s``: the forward of the block's ``Lb`` tokens over the KV cache of the ``s`` tokens
before it (``models.forward_hidden`` with ``start=s``, ``kv_len=s + Lb``: the block's own K/V written at
``[s, s + Lb)``), the LM head with the greedy token and its confidence (``Ops.head``), and the commit of one
token per row (``Ops.commit``, else ``kernels.reference.commit_step_ref`` with ``Ops.select``). The block's
tokens are reset before each step (half committed random ids, half masks: a step in the middle of a block), so
every call does the same work and a CUDA graph can replay it. The cache holds random values (its content does
not change the work), sized for the whole sequence.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List


@dataclass
class BlockStep:
    """A built step: ``run()`` enqueues one step; ``touched[i]`` the distinct experts of MoE layer i at one step
    (measured on the step's own inputs; empty for a dense model)."""
    run: Callable[[], None]
    start: int
    kv_len: int
    rows: int
    touched: List[int]


def block_start(prompt: int, gen: int, block: int, at: str) -> int:
    """The block start of the timed step: ``mid`` (the block holding position ``prompt + gen // 2``; the dense
    bench's floor uses the same mid-sequence KV length) or ``last`` (the sequence's last block)."""
    if gen % block or gen < block:
        raise ValueError(f"gen={gen} must be a positive multiple of block={block}")
    if at not in ("mid", "last"):
        raise ValueError(f"at={at!r}; choose 'mid' or 'last'")
    return prompt + (gen // 2 // block) * block if at == "mid" else prompt + gen - block


def make_block_step(params, cfg, ops, *, batch: int, prompt: int, gen: int, block: int, at: str = "mid",
                    seed: int = 0) -> BlockStep:
    """Buffers and the closure of one block-cache step (see the module docstring)."""
    import torch

    from llada_triton.kernels.reference import commit_step_ref
    from llada_triton.models import forward_hidden, new_cache

    dev, dt = params.device, params.dtype
    s = block_start(prompt, gen, block, at)
    cache = new_cache(cfg, batch, prompt + gen, device=dev, dtype=dt)
    g = torch.Generator(device=dev).manual_seed(seed)
    for t in (cache.k, cache.v):
        t.normal_(generator=g)
    init = torch.randint(0, min(cfg.mask_token_id, cfg.pad_token_id), (batch, block), generator=g, device=dev)
    init[:, block // 2:] = cfg.mask_token_id  # committed ordinary ids, then masks
    blk = init.clone()
    one = torch.ones(batch, dtype=torch.int64, device=dev)
    commit = ops.commit or (lambda *a, **k: commit_step_ref(*a, select=ops.select, **k))

    def step(step_ops=ops):
        blk.copy_(init)
        h = forward_hidden(params, cfg, blk, start=s, cache=cache, kv_len=s + block, ops=step_ops)
        x0, conf = step_ops.head(h.reshape(batch * block, -1), params.lm_head)
        commit(blk, 0, x0.view(batch, block), conf.view(batch, block), mask_id=cfg.mask_token_id, k=one)

    return BlockStep(run=step, start=s, kv_len=s + block, rows=batch * block, touched=_touched(step, ops))


def _touched(step, ops) -> List[int]:
    """Distinct experts each MoE layer routes the step's rows to (one eager step with a recording router)."""
    if ops.moe_route is None:
        return []
    import torch

    counts = []

    def route(x, *a, **k):
        weights, ids = ops.moe_route(x, *a, **k)
        counts.append(int(torch.unique(ids).numel()))
        return weights, ids

    step(ops.replace(moe_route=route))
    return counts


def uniform_touched(n_experts: int, top_k: int, rows: int) -> float:
    """Expected distinct experts when each of ``rows`` rows picks ``top_k`` of ``n_experts`` uniformly."""
    return n_experts * (1 - (1 - top_k / n_experts) ** rows)


def step_cost(params, cfg, touched: List[int], *, batch: int, block: int, kv_len: int):
    """``(bytes, flops)`` a step must read / do: every non-expert weight (attention, norms, dense MLPs, routers,
    shared experts, the LM head; the embedding rows only), the touched experts' weights, the KV cache over
    ``kv_len`` slots; FLOPs of the projections, the top-k and shared experts, the attention and the head."""
    rows = batch * block
    es = params.lm_head.element_size()
    d, H, D = cfg.d_model, cfg.n_heads, cfg.head_dim
    nbytes = params.lm_head.numel() * es + params.ln_f.numel() * es + rows * d * es
    flops = 2 * rows * params.lm_head.numel()
    moe = iter(touched)
    for lp in params.layers:
        expert_numel = 0
        for name, t in vars(lp).items():
            if t is None:
                continue
            if name.startswith("experts_"):
                expert_numel += t[0].numel()
                continue
            nbytes += t.numel() * t.element_size()
            if t.dim() == 2:  # a matrix: every row of the step goes through it
                flops += 2 * rows * t.numel()
        if expert_numel:
            nbytes += next(moe) * expert_numel * es
            flops += 2 * rows * cfg.top_k * expert_numel
        nbytes += 2 * batch * kv_len * cfg.n_kv_heads * D * es      # K and V read
        flops += 4 * rows * kv_len * H * D                          # QK^T and PV
    return nbytes, flops
