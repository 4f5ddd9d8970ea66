"""Many prompts through a fixed number of slots, each slot refilled as soon as its sequence ends.

``run_many`` keeps ``slots`` sequences in flight with the exact block-causal cache (the ``block``
policy of :mod:`llada_triton.decode.cache`). Every row has its own block and step, so a row that finishes (an end
token committed, or its last block done) hands its slot to the next prompt at once: an eval set does
not wait on its slowest member batch by batch.

One step, for every row at once, with static shapes (one CUDA graph serves every step):
  * row r sits at block start ``s_r = P + blk_r * Lb`` (prompts left-padded to a common width P);
  * it feeds ``[block blk_r - 1 ; block blk_r]`` (2 Lb tokens, or the prompt's last Lb tokens for
    block 0) with the block-causal mask; the previous block's K/V are written only on the first step of
    a block (the fold that commits a finished block exactly once), never otherwise (``write_from``);
  * the LM head, selection and commit run on the current block's rows.
A new prompt is prefilled alone into its slot's cache rows (the prompt sees itself) before it joins.

With ``cfg_scale > 0`` (classifier-free guidance) slot r also owns cache row ``S + r``: the unconditional
copy of its sequence, the whole prompt region (pads included) masked, the same ``kv_start`` and the same
generated tokens. It is prefilled with the masked prompt on refill; each step feeds both copies (2S rows,
the unconditional feed is the conditional one with positions < P masked) and the head mixes them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import torch

from llada_triton.models.config import LLaDAConfig
from llada_triton.models import forward_hidden_of
from llada_triton.models.model import KVCache
from llada_triton.models.ops import REFERENCE_OPS, Ops
from llada_triton.models.weights import Params
from .generate import _Graphs, _make_rule, _validate, pad_prompts
from .schedule import num_transfer_tokens

__all__ = ["run_many", "RunResult"]


@dataclass
class RunResult:
    tokens: List[List[int]]      # generated tokens per prompt, in input order (eos after an early stop)
    nfe: List[int]               # forwards each prompt took part in while decoding
    seconds: float = 0.0
    steps: int = 0               # batched steps run
    order: List[int] = field(default_factory=list)  # prompt indices in the order they finished


@torch.no_grad()
def run_many(params: Params, cfg: LLaDAConfig, prompts: Sequence[Sequence[int]], *, slots: int,
             gen_length: int, block_length: int, steps: int, threshold: Optional[float] = None,
             factor: Optional[float] = None, cfg_scale: float = 0.0, temperature: float = 0.0,
             remasking: str = "low_confidence", logits_eos_inf: bool = False,
             confidence_eos_eot_inf: bool = False, early_stop: bool = True, seed: int = 0,
             ops: Ops = REFERENCE_OPS, cuda_graphs: bool = False,
             on_result: Optional[Callable[[int, List[int]], None]] = None) -> RunResult:
    """Decode ``prompts`` (token-id lists) with ``slots`` sequences in flight (block-causal cache).

    Options as :func:`llada_triton.decode.generate`, ``cfg_scale`` included (the unconditional copies double the rows
    of every step). ``on_result(index, tokens)`` is called as each prompt finishes. Returns a
    :class:`RunResult` with results in input order.
    """
    t0 = time.perf_counter()
    if not isinstance(slots, int) or slots < 1:
        raise ValueError(f"slots={slots!r} must be a positive int")
    prompts = [list(map(int, p)) for p in prompts]
    if not prompts:
        return RunResult([], [], 0.0)
    device = params.device
    Lb = block_length
    # a common prompt width P >= Lb, so that block 0's "previous block" is the prompt's tail
    width = max(Lb, max(len(p) for p in prompts))
    all_tokens, all_pad = pad_prompts([[cfg.pad_token_id] * (width - len(p)) + p for p in prompts], cfg,
                                      device="cpu")
    pads = torch.tensor([width - len(p) for p in prompts])
    _validate(cfg, all_tokens, pads, gen_length, block_length, steps, temperature, remasking, threshold, factor,
              cfg_scale, "block")
    if cuda_graphs and device.type != "cuda":
        raise ValueError(f"cuda_graphs=True needs params on a CUDA device, not {device}")
    graphs = _Graphs(cuda_graphs and temperature == 0 and remasking == "low_confidence" and factor is None)
    P, G, S = width, gen_length, slots
    use_cfg = cfg_scale > 0
    R = 2 * S if use_cfg else S  # cache rows: slot r at row r, its unconditional copy (CFG) at row S + r
    T = P + G
    nb, spb = G // Lb, steps // (G // Lb)
    mask_id = cfg.mask_token_id
    i64 = dict(dtype=torch.int64, device=device)
    x = torch.full((S, T), mask_id, **i64)
    kv_start = torch.zeros(R, **i64)
    blk = torch.zeros(S, **i64)
    step = torch.zeros(S, **i64)
    nfe = torch.zeros(S, **i64)
    active = torch.zeros(S, dtype=torch.bool, device=device)
    cache = KVCache.empty(cfg, R, T, device=device, dtype=params.dtype)
    sched = num_transfer_tokens(torch.ones(1, Lb, dtype=torch.bool), spb)[0].to(device)  # [spb]
    sched = torch.cat([sched, torch.zeros(1, **i64)])  # steps past the schedule commit nothing
    ar2 = torch.arange(2 * Lb, device=device)
    ar = torch.arange(Lb, device=device)
    gen_cols = torch.arange(G, device=device)
    end_ids = torch.tensor(cfg.end_token_ids, device=device)
    rule = _make_rule(cfg, temperature, remasking, threshold, factor, cfg_scale, seed, logits_eos_inf,
                      confidence_eos_eot_inf)
    rand_gen = torch.Generator(device=device).manual_seed(int(seed)) if remasking == "random" else None
    n_calls = [0]

    def batched_step():
        s = P + blk * Lb                                            # [S] current block start
        start = s - Lb                                              # the fed window: previous block + current
        pos = start[:, None] + ar2[None, :]                         # [S, 2Lb]
        feed = x.gather(1, pos)
        key_end = torch.cat([s[:, None].expand(S, Lb), (s + Lb)[:, None].expand(S, Lb)], 1)
        write_from = torch.where((step == 0) & (blk > 0), start, s)
        if use_cfg:  # rows S + r: the unconditional copies, prompt positions (pads included) masked
            feed = torch.cat([feed, torch.where(pos < P, mask_id, feed)])
            start, key_end, write_from = (torch.cat([t, t]) for t in (start, key_end, write_from))
        hidden = forward_hidden_of(cfg)(params, cfg, feed, start=start, cache=cache, kv_len=T, kv_start=kv_start,
                                key_end=key_end, rows=slice(Lb, 2 * Lb), write_from=write_from, ops=ops)
        masked = None
        if rule.compacts(ops, S * Lb):  # the head runs on the masked rows only: it needs them now
            masked = (x.gather(1, s[:, None] + ar[None, :]) == mask_id) & active[:, None]
        x0, conf = rule.sample(ops, params.lm_head, hidden[:S], hidden[S:] if use_cfg else None, masked,
                               offset=n_calls[0], rand_gen=rand_gen)
        _, _, new = rule.commit(ops, x, s, x0, conf, mask_id=mask_id, done=~active, k=sched[step.clamp(max=spb)],
                                nfe=nfe)
        done_blk = active & ~(new == mask_id).any(1)
        step.copy_(torch.where(done_blk, torch.zeros_like(step), step + 1))
        blk.add_(done_blk.to(blk.dtype))
        # finished: every block done, or (early stop) an end token among the committed blocks
        ended = (torch.isin(x[:, P:], end_ids) & (gen_cols[None, :] < (blk * Lb)[:, None])).any(1)
        return active & done_blk & ((blk >= nb) | (ended if early_stop else torch.zeros_like(ended)))

    results: List[Optional[List[int]]] = [None] * len(prompts)
    row_nfe = [0] * len(prompts)
    owner = [-1] * S
    order: List[int] = []
    pending = list(range(len(prompts)))[::-1]

    def prefill(row: int, tokens: torch.Tensor):
        """The prompt ``tokens`` [P] into cache row ``row``: it sees itself; its K/V are final from now on."""
        forward_hidden_of(cfg)(params, cfg, tokens[None], start=0,
                       cache=KVCache(cache.k[:, row:row + 1], cache.v[:, row:row + 1]), kv_len=P,
                       kv_start=kv_start[row:row + 1], rows=slice(P - 1, P), ops=ops)

    def refill(r: int):
        if not pending:  # the slot idles at block 0 (its writes land in its own, unused cache rows)
            owner[r] = -1
            active[r] = False
            blk[r] = 0
            step[r] = 0
            return
        i = pending.pop()
        owner[r] = i
        x[r].fill_(mask_id)
        x[r, :P] = all_tokens[i].to(device)
        kv_start[r] = int(pads[i])
        blk[r] = 0
        step[r] = 0
        nfe[r] = 0
        active[r] = True
        prefill(r, x[r, :P])
        if use_cfg:  # the unconditional copy: the same pads left out of attention, the prompt all masks
            kv_start[S + r] = int(pads[i])
            prefill(S + r, torch.full((P,), mask_id, **i64))

    for r in range(S):
        refill(r)
    n_steps = 0
    while bool(active.any()):
        finished = graphs.run("runner-step", batched_step)
        n_calls[0] += 1
        n_steps += 1
        if bool(finished.any()):  # one host check per step; rare refills happen outside the graph
            for r in finished.nonzero().flatten().tolist():
                i = owner[r]
                toks = x[r, P:].clone()
                end_at = int(blk[r]) * Lb
                toks[end_at:] = cfg.eos_token_id if early_stop else toks[end_at:]
                results[i] = toks.tolist()
                row_nfe[i] = int(nfe[r])
                order.append(i)
                if on_result is not None:
                    on_result(i, results[i])
                refill(r)
    return RunResult(tokens=results, nfe=row_nfe, seconds=time.perf_counter() - t0, steps=n_steps, order=order)
