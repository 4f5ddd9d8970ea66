"""Many prompts through a fixed number of slots, each slot refilled as soon as its sequence ends.

``run_many`` keeps ``slots`` sequences in flight with the exact block-causal cache (the ``block`` policy of
:mod:`llada_triton.decode.cache`); each row has its own block and step, so a finished row (an end token committed,
or its last block done) hands its slot to the next prompt at once. One step serves every row with static shapes
(one CUDA graph): row r at block start ``s_r = P + blk_r * Lb`` (prompts left-padded to a common width P) feeds
``[block blk_r - 1 ; block blk_r]`` with the block-causal mask, writing the previous block's K/V only on a block's
first step (``write_from``); head, selection and commit run on the current block. A new prompt is prefilled
alone into its slot's cache rows before it joins.

With ``cfg_scale > 0`` slot r also owns cache row ``S + r``: its unconditional copy (prompt region masked, same
``kv_start`` and generated tokens), prefilled on refill and fed beside it every step.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import torch

from llada_triton.models.family import forward_hidden, new_cache
from llada_triton.models.ops import REFERENCE_OPS, Ops
from .layout import Layout, grid_key_end
from .generate import pad_prompts
from .step import DecodeOptions, Graphs, TransferRule, check_ops, prompt_rows, setup_decode

__all__ = ["run_many", "RunResult"]


@dataclass
class RunResult:
    tokens: List[List[int]]      # generated tokens per prompt, in input order (eos after an early stop)
    nfe: List[int]               # forwards each prompt took part in while decoding
    seconds: float = 0.0
    steps: int = 0               # batched steps run
    order: List[int] = field(default_factory=list)  # prompt indices in the order they finished
    edits: Optional[List[int]] = None  # LLaDA2.1: tokens rewritten by editing per prompt


class _Slots:
    """``S`` sequences in flight: their tokens, blocks, steps and cache rows (see the module docstring)."""

    def __init__(self, params, cfg, rule: TransferRule, ops, counts: Optional[list], o: DecodeOptions, layout: Layout,
                 slots: int):
        self.params, self.cfg, self.rule, self.ops = params, cfg, rule, ops
        self.early_stop = True if o.early_stop is None else o.early_stop
        self.layout, self.decoding = layout, o.decoding  # LLaDA's layout or a decoding's grid (LLaDA2)
        self.edits = o.decoding is not None and o.decoding.edits  # LLaDA2.1 rewrites committed tokens
        device = params.device
        self.S, self.P, self.G, self.Lb = slots, layout.first, o.gen_length, o.block_length
        self.use_cfg = rule.cfg_scale > 0
        R = 2 * slots if self.use_cfg else slots  # cache rows: slot r at row r, its unconditional copy at S + r
        self.T = layout.width
        self.i64 = i64 = dict(dtype=torch.int64, device=device)
        self.nb, self.gen_start = torch.zeros(slots, **i64), torch.zeros(slots, **i64)  # per slot, set by load
        self.mask_id = cfg.mask_token_id
        self.x = torch.full((slots, self.T), self.mask_id, **i64)
        self.kv_start = torch.zeros(R, **i64)
        self.blk, self.step, self.nfe = (torch.zeros(slots, **i64) for _ in range(3))
        self.active = torch.zeros(slots, dtype=torch.bool, device=device)
        self.cache = new_cache(cfg, R, self.T, device=device, dtype=params.dtype)
        if self.decoding is not None:
            self.state = self.decoding.new_state(slots, device)
        sched = [] if counts is None else list(counts)  # no schedule: the rule decides (threshold, LLaDA2.1, ...)
        self.spb = len(sched)
        self.sched = torch.tensor(sched + [0], **i64)  # steps past the schedule commit nothing
        self.ar2 = torch.arange(2 * self.Lb, device=device)
        self.ar = torch.arange(self.Lb, device=device)
        self.cols = torch.arange(self.T, device=device)
        self.end_ids = torch.tensor(cfg.end_token_ids if o.decoding is None else o.decoding.end_ids(cfg),
                                    device=device)
        self.rand_gen = rule.generator(device)  # (origin and alg_temp are Dream options run_many does not take)
        self.calls = 0

    def forward_step(self):
        """Every slot's ``[block - 1 ; block]`` window through the model (block-causal, static shapes): the current
        block's hidden states and starts."""
        S, Lb, P, x, blk = self.S, self.Lb, self.P, self.x, self.blk
        sh = self.cfg.logit_shift  # the head reads rows s - sh ..: the fed window holds the previous block
        s = P + blk * Lb                                            # [S] current block start
        start = s - Lb                                              # the fed window: previous block + current
        pos = start[:, None] + self.ar2[None, :]                    # [S, 2Lb]
        feed = x.gather(1, pos)
        key_end = torch.cat([s[:, None].expand(S, Lb), (s + Lb)[:, None].expand(S, Lb)], 1)
        write_from = torch.where((self.step == 0) & (blk > 0), start, s)
        if self.use_cfg:  # rows S + r: the unconditional copies, prompt positions (pads included) masked
            feed = torch.cat([feed, torch.where(pos < P, self.mask_id, feed)])
            start, key_end, write_from = (torch.cat([t, t]) for t in (start, key_end, write_from))
        hidden = forward_hidden(self.params, self.cfg, feed, start=start, cache=self.cache, kv_len=self.T,
                                kv_start=self.kv_start, key_end=key_end, rows=slice(Lb - sh, 2 * Lb - sh),
                                write_from=write_from, ops=self.ops)
        return hidden, s

    def batched_step(self):
        """One step for every slot; returns bool ``[S]``: the slots whose sequence finished at this step."""
        S, Lb, x, rule = self.S, self.Lb, self.x, self.rule
        hidden, s = self.forward_step()
        masked = None
        if self.ops.compacts(S * Lb) and not self.edits:  # the head on the masked rows only (editing reads all)
            masked = (x.gather(1, s[:, None] + self.ar[None, :]) == self.mask_id) & self.active[:, None]
        x0, conf = rule.sample(self.ops, self.params.lm_head, hidden[:S], hidden[S:] if self.use_cfg else None,
                               masked, offset=self.calls, rand_gen=self.rand_gen)
        done, k = ~self.active, self.sched[self.step.clamp(max=self.spb)]
        if self.decoding is None:
            _, _, new = rule.commit(self.ops, x, s, x0, conf, mask_id=self.mask_id, done=done, k=k, nfe=self.nfe)
            done_blk = self.active & ~(new == self.mask_id).any(1)
        else:  # may end a row mid-block (LLaDA2's eos_early_stop); a row's next block starts fresh
            _, _, new = self.decoding.commit(self.cfg, self.state, x, s, x0, conf, done=done, k=k, nfe=self.nfe)
            done_blk = self.active & self.decoding.block_over(self.cfg, self.state, new)
            self.decoding.new_block(self.state, done_blk)
        self.step.copy_(torch.where(done_blk, torch.zeros_like(self.step), self.step + 1))
        self.blk.add_(done_blk.to(self.blk.dtype))
        # finished: every block done, or (early stop) an end token among the committed blocks
        window = (self.cols[None, :] >= self.gen_start[:, None]) & (self.cols[None, :] < (s + Lb)[:, None])
        ended = (torch.isin(x, self.end_ids) & window & done_blk[:, None]).any(1) if self.early_stop \
            else torch.zeros_like(done_blk)
        return (self.active & done_blk & ((self.blk >= self.nb) | ended)) | (done & self.active)

    def prefill(self, row: int, tokens: torch.Tensor):
        """The prompt ``tokens`` [P] into cache row ``row``: it sees itself (on an absolute grid: block-causally);
        its K/V are final from now on."""
        P = self.P
        key_end = None
        if self.layout.block_causal:
            key_end = grid_key_end(0, P, P, self.Lb, tokens.device)
        forward_hidden(self.params, self.cfg, tokens[None], start=0, cache=self.cache.rows(row, row + 1), kv_len=P,
                       kv_start=self.kv_start[row:row + 1], key_end=key_end, rows=slice(P - 1, P), ops=self.ops)

    def load(self, r: int, prompt: Optional[torch.Tensor], pad: int = 0, i: int = 0):
        """Slot ``r`` takes ``prompt`` [P] (prompt ``i`` of the layout, left-padded by ``pad``; on an absolute grid
        its columns reach into block 0) and prefills it; None: the slot idles at block 0 (its writes land
        in its own, unused cache rows)."""
        self.blk[r] = self.step[r] = 0
        self.active[r] = prompt is not None
        if prompt is None:
            return
        self.x[r].fill_(self.mask_id)
        self.x[r, :prompt.numel()] = prompt.to(self.x.device)
        self.kv_start[r] = pad
        self.nfe[r] = 0
        lay = self.layout  # row i's answer start and blocks (rows differ on a decoding's absolute grid)
        self.gen_start[r], self.nb[r] = lay.gen_start[i], (lay.row_end[i] - lay.first) // self.Lb
        if self.decoding is not None:
            self.decoding.reset_row(self.state, r, pad, lay.gen_start[i])
        self.prefill(r, self.x[r, :self.P])
        if self.use_cfg:  # the unconditional copy: the same pads left out of attention, the prompt all masks
            self.kv_start[self.S + r] = pad
            self.prefill(self.S + r, torch.full((self.P,), self.mask_id, **self.i64))

    def take(self, r: int) -> List[int]:
        """Slot ``r``'s generated tokens (eos after its last block when early stop ended it); with a decoding
        option its answer (LLaDA2: cut after the first eos)."""
        if self.decoding is not None:
            return self.decoding.answers(self.cfg, self.x, self.gen_start, self.G, self.state, rows=[r])[0]
        toks = self.x[r, self.P:].clone()
        end_at = int(self.blk[r]) * self.Lb
        if self.early_stop:
            toks[end_at:] = self.cfg.eos_token_id
        return toks.tolist()


# the options of DecodeOptions that run_many takes (its cache is 'block'; Dream's options need generate)
RUN_MANY_OPTIONS = ("gen_length", "block_length", "steps", "threshold", "factor", "cfg_scale", "temperature",
                    "remasking", "logits_eos_inf", "confidence_eos_eot_inf", "early_stop", "seed", "decoding")


@torch.no_grad()
def run_many(params, cfg, prompts: Sequence[Sequence[int]], *, slots: int, ops: Ops = REFERENCE_OPS,
             cuda_graphs: bool = False, on_result: Optional[Callable[[int, List[int]], None]] = None,
             **options) -> RunResult:
    """Decode ``prompts`` (token-id lists) with ``slots`` sequences in flight (block-causal cache).

    ``options``: those of :func:`llada_triton.decode.generate` named in ``RUN_MANY_OPTIONS`` (``cfg_scale`` and
    ``decoding`` included: with a decoding each prompt's tokens are its answer, cut after its first eos; LLaDA2.1's
    edits in ``RunResult.edits``). ``on_result(index, tokens)`` is called as each prompt finishes. Returns a
    :class:`RunResult` in input order.
    """
    t0 = time.perf_counter()
    bad = next((k for k in options if k not in RUN_MANY_OPTIONS), None)
    if bad is not None:
        raise TypeError(f"run_many() got an unexpected keyword argument {bad!r} (its options: "
                        f"{', '.join(RUN_MANY_OPTIONS)}; its cache is 'block')")
    o = DecodeOptions(cache="block", **options)
    if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
        raise ValueError(f"slots={slots!r} must be a positive int")
    check_ops(ops, cuda_graphs, params.device)
    if hasattr(prompts, "__len__") and not isinstance(prompts, (str, bytes)) and len(prompts) == 0:
        return RunResult([], [], 0.0)  # an empty eval shard: nothing to decode
    rows = prompt_rows(prompts)
    # a common prompt width P >= Lb, so that block 0's "previous block" is the prompt's tail
    tokens, pad = pad_prompts(rows, cfg, min_width=o.block_length if isinstance(o.block_length, int) else 1)
    # a decoding's grid puts block 0 at column >= Lb: its previous block is prompt
    o, layout, rule, counts = setup_decode(cfg, tokens, pad, o, min_first=o.block_length)
    tokens, pads = layout.tokens, layout.pad.tolist()
    graphs = Graphs(bool(cuda_graphs) and rule.fixed_work)
    st = _Slots(params, cfg, rule, ops, counts, o, layout, slots)
    out = RunResult(tokens=[None] * len(rows), nfe=[0] * len(rows), edits=[0] * len(rows) if st.edits else None)
    owner = [-1] * slots
    pending = list(range(len(rows)))[::-1]

    def refill(r: int):
        owner[r] = pending.pop() if pending else -1
        st.load(r, tokens[owner[r]] if owner[r] >= 0 else None, pads[owner[r]] if owner[r] >= 0 else 0, owner[r])

    for r in range(slots):
        refill(r)
    while bool(st.active.any()):
        finished = graphs.run("runner-step", st.batched_step)
        st.calls += 1
        out.steps += 1
        if bool(finished.any()):  # one host check per step; rare refills happen outside the graph
            for r in finished.nonzero().flatten().tolist():
                i = owner[r]
                out.tokens[i], out.nfe[i] = st.take(r), int(st.nfe[r])
                if st.edits:
                    out.edits[i] = int(st.decoding.edit_counts(st.state)[r])
                out.order.append(i)
                if on_result is not None:
                    on_result(i, out.tokens[i])
                refill(r)
    out.seconds = time.perf_counter() - t0
    return out
