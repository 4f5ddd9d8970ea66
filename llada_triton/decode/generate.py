"""The one block-decoding driver: ``generate`` / ``generate_stream`` (semi-autoregressive masked diffusion).

:func:`generate_stream` checks the options (:func:`~llada_triton.decode.step.setup_decode`), builds a
:class:`_Decode` (buffers from the :class:`Workspace`, the cache policy, the
:class:`~llada_triton.decode.step.TransferRule`) and loops over blocks. A block runs step by step
(:meth:`_Decode.stepwise_block`: eager, or each step replayed from its own CUDA graph) or, with CUDA graphs and a
fixed schedule, as its first step plus one graph of all later steps (:meth:`_Decode.graphed_block`). One step is
:meth:`_Decode.step`: the policy's forward, then the rule's ``sample`` (LM head) and ``commit`` (selection).
:func:`generate` runs :func:`generate_stream` and keeps its final :class:`GenerateResult`.

Semantics follow the official LLaDA ``generate`` and Fast-dLLM v1; where they differ:

* A block ends as soon as it has no masked position (the official code always spends ``steps`` forwards per
  block, Fast-dLLM one more after a complete block): same tokens, NFE can be lower.
* Confidence is ``exp(l[x0] - logsumexp(l))`` in fp32 (official: softmax in the logits dtype; Fast-dLLM: fp64).
* ``confidence_eos_eot_inf`` removes both eos and eot from the confidence softmax after sampling: the intended
  semantics, which the official chained assignment realises only at temperature 0.
* Ties in confidence go to the lowest position; masked positions with ``-inf`` confidence are still committed
  if the schedule asks for them.
* With ``ops.head_rows`` the LM head runs only on the block's still-masked rows (gathered on the device,
  noise keyed by the original row) for blocks of more than ``ops.compact_above`` rows; tokens are unchanged.
"""
from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional, Union

import torch

from llada_triton.models.ops import REFERENCE_OPS, Ops
from .cache import StepContext, const, policies_for, take_cols
from .layout import Layout
from .schedule import CarrySchedule, dream_step_fractions
from .step import REMASKING, DecodeOptions, Graphs, HostFlag, check_ops, prompt_rows, setup_decode, top_candidates

__all__ = ["generate", "generate_stream", "GenerateResult", "StepEvent", "BlockEvent", "pad_prompts",
           "REMASKING", "Workspace"]


@dataclass
class StepEvent:
    """One denoising step: what was committed where (block-relative positions)."""
    block: int
    step: int
    committed: torch.Tensor      # bool [B, Lb]: positions committed at this step
    tokens: torch.Tensor         # int64 [B, Lb]: the block's tokens after the step
    confidence: torch.Tensor     # fp32 [B, Lb]: confidence of the sampled token (masked rows only)
    nfe: torch.Tensor            # int64 [B]: forwards spent so far per row


@dataclass
class BlockEvent:
    """A block fully committed."""
    block: int
    start: int                   # absolute position of the block in ``sequences``
    tokens: torch.Tensor         # int64 [B, Lb]


@dataclass
class GenerateResult:
    tokens: torch.Tensor          # int64 [B, gen_length]: the generated tokens
    sequences: torch.Tensor       # int64 [B, P + gen_length]: left-padded prompts + generated tokens
    prompt_lengths: List[int]     # unpadded prompt length per row
    nfe: List[int]                # forwards spent per row (a forward counts for the rows still decoding)
    steps: List[StepEvent] = field(default_factory=list)  # when record_steps=True
    seconds: float = 0.0
    answers: Optional[List[List[int]]] = None  # LLaDA2: each row's answer, cut after its first eos
    edits: Optional[List[int]] = None  # LLaDA2.1: tokens rewritten by editing per row

    def commit_order(self) -> torch.Tensor:
        """int64 [B, gen_length]: the step index at which each position was committed (``record_steps=True``)."""
        if not self.steps:
            raise ValueError("commit_order needs generate(..., record_steps=True)")
        if self.answers is not None:
            raise ValueError("commit_order is for LLaDA's layout; with decoding= read each StepEvent's committed "
                             "(block-relative; block b starts at BlockEvent.start)")
        B, G = self.tokens.shape
        out = torch.full((B, G), -1, dtype=torch.int64)
        for n, ev in enumerate(self.steps):
            Lb = ev.committed.shape[1]
            out[:, ev.block * Lb:(ev.block + 1) * Lb][ev.committed.cpu()] = n
        return out


def pad_prompts(prompts, cfg, attention_mask=None, device=None, min_width: int = 1):
    """Left-pad prompts with ``cfg.pad_token_id``. Returns ``(tokens [B, P], pad [B] int64)``.

    ``prompts`` is a list of token-id lists (any lengths; padded to at least ``min_width`` columns) or an int tensor
    ``[B, P]``; with a tensor, ``attention_mask`` ``[B, P]`` (1 = token, 0 = left padding) marks padding already
    there.
    """
    if isinstance(prompts, torch.Tensor):
        if prompts.ndim != 2 or prompts.is_floating_point() or prompts.dtype == torch.bool:
            raise ValueError(f"prompts tensor must be an int tensor [B, P], got {prompts.dtype} of shape "
                             f"{tuple(prompts.shape)}")
        tokens = prompts.to(device=device, dtype=torch.int64)
        if attention_mask is None:
            return tokens, torch.zeros(tokens.shape[0], dtype=torch.int64, device=tokens.device)
        am = attention_mask.to(tokens.device).bool()
        if am.shape != tokens.shape:
            raise ValueError(f"attention_mask shape {tuple(am.shape)} != prompts shape {tuple(tokens.shape)}")
        pad = (~am).sum(1)
        expect = torch.arange(tokens.shape[1], device=am.device)[None, :] >= pad[:, None]
        if not torch.equal(expect, am):
            raise ValueError("attention_mask must be left padding: zeros then ones in every row")
        return tokens, pad.to(torch.int64)
    if attention_mask is not None:
        raise ValueError("attention_mask is only for a prompts tensor; lists are padded here")
    rows = prompt_rows(prompts)
    P = max([min_width] + [len(r) for r in rows])
    tokens = torch.tensor([[cfg.pad_token_id] * (P - len(r)) + r for r in rows], dtype=torch.int64)
    return tokens.to(device), torch.tensor([P - len(r) for r in rows], dtype=torch.int64).to(device)


class Workspace:
    """Static buffers and captured CUDA graphs kept across :func:`generate` calls of the same shape.

    Pass one ``Workspace`` to repeated calls (an eval loop, a benchmark): the token buffer, the KV cache and the
    graphs are made once per bucket (batch, widths, block length, policy, rule) and refilled afterwards. Only the
    ``max_entries`` most recently used buckets are kept (each holds a KV cache: GBs at LLaDA-8B, batch 32).
    """

    def __init__(self, max_entries: int = 4):
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"max_entries must be an int >= 1, got {max_entries!r}")
        self.max_entries = max_entries
        self.entries = OrderedDict()

    def __len__(self):
        return len(self.entries)

    def get(self, key):
        buf = self.entries.get(key)
        if buf is not None:
            self.entries.move_to_end(key)
        return buf

    def put(self, key, buf):
        self.entries[key] = buf
        self.entries.move_to_end(key)
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)


@dataclass
class _Buffers:
    """A workspace bucket: the static tensors, the cache policy and the graphs of one decode shape."""
    params: object            # the params the policy and the graphs were built for
    x: torch.Tensor           # int64 [B, L] tokens
    kv_start: Optional[torch.Tensor]
    policy: object
    nfe: torch.Tensor
    done: torch.Tensor
    k_buf: torch.Tensor       # this step's schedule count, [B]
    s_buf: torch.Tensor       # this block's start, 0-dim (the graphed steps read it)
    graphs: Graphs
    state: Optional[dict] = None  # a decoding option's device state (LLaDA2: where early stop cut each row)


class _Decode:
    """One decode in flight: the buffers, the policy, the rule, the schedule and the step counter."""

    def __init__(self, params, cfg, layout: Layout, counts: Optional[list], o: DecodeOptions, *, rule, ops,
                 cuda_graphs, device_positions, workspace):
        self.params, self.cfg, self.ops, self.rule = params, cfg, ops, rule
        self.layout, self.decoding = layout, o.decoding
        self.B, self.P = layout.tokens.shape
        self.Lb, self.n_blocks = o.block_length, layout.n_blocks
        spb = o.steps // self.n_blocks
        self.use_cfg = rule.cfg_scale > 0
        self.schedule = counts  # every block starts fully masked: known up front (host ints; None: the rule decides)
        self.useful = None if self.schedule is None else len(self.schedule)  # the steps a block runs
        self.carry = CarrySchedule(o.block_length, spb) if o.schedule == "carry" else None
        self.leftmost = o.refresh_commits_first  # a block's first step commits its first position (Fast-dLLM Dream)
        self.origin_frac = dream_step_fractions(spb, o.eps).tolist() if rule.remasking == "origin" else None
        policy = policies_for(cfg)[o.cache]
        graphable = bool(cuda_graphs) and rule.fixed_work and policy.supports_graphs
        self.dynamic = graphable if device_positions is None else device_positions
        self.buf = self._buffers(layout, policy, graphable and self.dynamic, workspace)
        self.policy, self.graphs = self.buf.policy, self.buf.graphs
        self.early_stop = self.policy.early_stop_by_default if o.early_stop is None else o.early_stop
        self.flag = HostFlag(params.device) if self.early_stop and self.schedule is not None else None
        self.rand_gen = rule.generator(params.device)
        self.end_ids = torch.tensor(cfg.end_token_ids if o.decoding is None else o.decoding.end_ids(cfg),
                                    device=params.device)
        # a block also ends once no live row has a mask left (read one step late on CUDA, so the GPU never waits)
        self.block_flags = o.decoding is not None
        self.edits = o.decoding is not None and o.decoding.edits  # LLaDA2.1 rewrites committed tokens
        self.flags = [HostFlag(params.device), HostFlag(params.device)] if self.block_flags else []
        self.calls = 0
        self.records: List[StepEvent] = []

    def _buffers(self, layout: Layout, policy, graphed, workspace) -> _Buffers:
        """The workspace bucket of this shape (made on a miss), refilled with the layout's tokens."""
        B, P, device, pad, W = self.B, self.P, self.params.device, layout.pad, layout.width
        padded = bool((pad > 0).any())
        key = (B, P, W, layout.first, self.Lb, policy, padded, dataclasses.replace(self.rule, seed=0), self.ops,
               self.cfg, graphed, self.dynamic, self.decoding)
        buf = workspace.get(key) if workspace is not None else None
        if buf is not None and buf.params is not self.params:
            buf = None  # other weights: the policy and the graphs hold the old ones
        if buf is None:
            kv_start = (torch.cat([pad, pad]) if self.use_cfg else pad.clone()) if padded else None
            ctx = StepContext(self.params, self.cfg, self.ops, P, self.Lb, W, kv_start, layout.first,
                              layout.block_causal)
            i64 = dict(dtype=torch.int64, device=device)
            buf = _Buffers(params=self.params, x=torch.empty((B, W), **i64), kv_start=kv_start,
                           policy=policy(ctx, 2 * B if self.use_cfg else B), nfe=torch.zeros(B, **i64),
                           done=torch.zeros(B, dtype=torch.bool, device=device), k_buf=torch.zeros(B, **i64),
                           s_buf=torch.zeros((), **i64), graphs=Graphs(graphed),
                           state=None if self.decoding is None else self.decoding.new_state(B, device))
            if workspace is not None:
                workspace.put(key, buf)
        elif padded:
            buf.kv_start.copy_(torch.cat([pad, pad]) if self.use_cfg else pad)
        buf.x.fill_(self.cfg.mask_token_id)
        buf.x[:, :P] = layout.tokens
        buf.nfe.zero_()
        buf.done.zero_()
        if self.decoding is not None:
            self.decoding.reset_state(buf.state, layout)
        return buf

    def step(self, kind: str, b: int, s, k=None, *, leftmost=False, cap=None, i=0):
        """One step of block ``b`` at start ``s`` (int, or the device ``s_buf``): the policy's forward, the LM head,
        the commit. ``leftmost``: commit the block's first masked position (Fast-dLLM's Dream block start); ``cap``:
        threshold among the top-``cap`` only (``schedule='carry'``); ``i``: the step (``origin``'s fraction)."""
        buf, rule, ops, B, mask_id = self.buf, self.rule, self.ops, self.B, self.cfg.mask_token_id
        x_in = buf.x
        if self.use_cfg:  # unconditional branch: the whole prompt (pads included) masked
            un = buf.x.clone()
            un[:, :self.P] = mask_id
            x_in = torch.cat([buf.x, un])
        hidden = self.policy.first(x_in, b, s) if kind == "first" else self.policy.steady(x_in, b, s)
        masked = ((take_cols(buf.x, s, self.Lb) == mask_id) & ~buf.done[:, None]) \
            if ops.compacts(B * self.Lb) and not self.edits else None  # editing reads every row's argmax
        x0, conf = rule.sample(ops, self.params.lm_head, hidden[:B], hidden[B:] if self.use_cfg else None, masked,
                               offset=self.calls, rand_gen=self.rand_gen)
        k = buf.k_buf if k is None else k
        if leftmost:  # the first position ranks first
            conf = -const("arange", self.Lb, buf.x.device).float().expand(B, self.Lb)
            k = const("full", B, buf.x.device, 1)
        elif self.origin_frac is not None or cap is not None:
            blk_masked = (take_cols(buf.x, s, self.Lb) == mask_id) & ~buf.done[:, None]
            if self.origin_frac is not None:
                conf, k = rule.origin(blk_masked, self.origin_frac[i], rand_gen=self.rand_gen)
            else:
                conf = top_candidates(conf, blk_masked, cap)
        if self.decoding is None:
            committed, conf, blk = rule.commit(ops, buf.x, s, x0, conf, mask_id=mask_id, done=buf.done, k=k,
                                               nfe=buf.nfe, k_only=leftmost)
        else:
            committed, conf, blk = self.decoding.commit(self.cfg, buf.state, buf.x, s, x0, conf, done=buf.done, k=k,
                                                        nfe=buf.nfe)
        return committed, blk, conf  # conf is -inf off the masked positions

    def run_step(self, kind: str, b: int, i: int = 0, cap=None):
        """:meth:`step` ``i`` of block ``b``, replayed from a CUDA graph where the policy names one (device
        positions)."""
        leftmost = self.leftmost and i == 0
        key = self.policy.graph_key(kind, b) if self.dynamic else None
        if key is None:
            return self.step(kind, b, self.start(b), leftmost=leftmost, cap=cap, i=i)
        key = ("leftmost", key) if leftmost else key
        return self.graphs.run(key, lambda: self.step(kind, b, self.buf.s_buf, leftmost=leftmost))

    def start(self, b: int) -> int:
        return self.layout.first + b * self.Lb

    def event(self, b: int, i: int, committed, blk, conf, nfe) -> "StepEvent":
        self.calls += 1
        self.records.append(StepEvent(b, i, committed, blk, conf, nfe))
        return self.records[-1]

    def set_k(self, i: int):
        """The schedule's count for step ``i`` into ``k_buf`` (refilled only when it changes)."""
        if i == 0 or self.schedule[i] != self.schedule[i - 1]:
            self.buf.k_buf.fill_(self.schedule[i])

    def stepwise_block(self, b: int, all_done: Optional[HostFlag]):
        """Block ``b`` step by step (each step eager or replayed from its own graph). Yields its
        :class:`StepEvent` s; returns True when early stop found every row finished before this block."""
        i = 0
        while self.more_steps(b, i):
            if self.schedule is not None:
                self.set_k(i)
            cap = None if self.carry is None else self.carry.next_k()
            if self.carry is not None and cap is None:
                break
            committed, blk, conf = self.run_step("first" if i == 0 else "steady", b, i, cap)
            if self.carry is not None:
                self.carry.update(cap, int(committed.sum()))
            if i == 0 and all_done is not None and all_done.get():
                return True  # every row had finished: this step committed nothing and is not reported
            yield self.event(b, i, committed.clone(), blk.clone(), conf.clone(), self.buf.nfe.clone())
            i += 1
            if self.block_flags:  # the block ends once every row is done or over with it
                over = self.decoding.block_over(self.cfg, self.buf.state, blk)
                self.flags[i % 2].put((self.buf.done | over).all())
        return False

    def more_steps(self, b: int, i: int) -> bool:
        """Whether block ``b`` runs step ``i``: a schedule for its length; the data-dependent rules while a live row
        has a mask; with ``block_flags`` while the block was incomplete after step ``i - 1`` (CUDA: ``i - 2``, read
        behind the queued step, so at most one step per block commits nothing)."""
        if self.block_flags:
            if self.schedule is not None and i >= self.useful:
                return False
            lag = 1 if self.flags[0].cuda and i >= 2 else 0
            return i == 0 or not self.flags[(i - lag) % 2].get()
        if self.schedule is not None:
            return i < self.useful
        x, done = self.buf.x, self.buf.done  # a host check: the data-dependent rules sync every step anyway
        return bool(((take_cols(x, self.start(b), self.Lb) == self.cfg.mask_token_id) & ~done[:, None]).any())

    def graphed_block(self, b: int, all_done: Optional[HostFlag]):
        """Block ``b`` with CUDA graphs and a fixed schedule: the first step, then all later steps as one graph
        (schedule counts baked in), whose events follow stacked."""
        if self.policy.graph_key("steady", b) is None:  # a policy that runs these steps eagerly
            return (yield from self.stepwise_block(b, all_done))
        self.set_k(0)
        committed, blk, conf = self.run_step("first", b)
        if all_done is not None and all_done.get():
            return True
        yield self.event(b, 0, committed.clone(), blk.clone(), conf.clone(), self.buf.nfe.clone())
        if self.useful > 1:
            ks = [const("full", self.B, self.buf.x.device, k) for k in self.schedule]  # kept: the graph bakes them
            later = lambda: [self.step("steady", b, self.buf.s_buf, k=ks[i]) + (self.buf.nfe.clone(),)  # noqa: E731
                             for i in range(1, self.useful)]
            outs = self.graphs.run(("later", self.policy.graph_key("steady", b), self.useful), later)
            for j, ev in enumerate(zip(*(torch.stack(t) for t in zip(*outs)))):
                yield self.event(b, j + 1, *ev)
        return False

    def before_block(self, b: int):
        """(stop now, the flag to read after the block's first step): early stop's check of the batch."""
        stop, all_done = False, None
        if self.early_stop and b > 0:  # (done changes only with early stop)
            if self.schedule is None:
                stop = bool(self.buf.done.all())  # the data-dependent rules sync every step anyway
            else:  # read behind the queued work once this block's first step is queued (no GPU drain)
                all_done = self.flag.put(self.buf.done.all())
        if self.dynamic:
            self.buf.s_buf.fill_(self.start(b))  # the block start the graphed steps read (once per block)
        if self.decoding is not None:
            self.decoding.new_block(self.buf.state)
        return stop, all_done

    def after_block(self, b: int) -> "BlockEvent":
        """Early stop: a row is finished once an end token is committed (every earlier position is, blockwise);
        its later positions become eos."""
        x, done, s, Lb = self.buf.x, self.buf.done, self.start(b), self.Lb
        if self.early_stop:
            cols = const("arange", s + Lb, x.device)
            window = torch.isin(x[:, :s + Lb], self.end_ids) & (cols >= self.layout.gen_start[:, None])
            finished = window.any(1) & ~done
            x[:, s + Lb:].masked_fill_((finished | done)[:, None], self.cfg.eos_token_id)
            done |= finished
        done |= self.layout.row_end <= s + Lb  # a row whose grid ends here (absolute grid: one block earlier)
        return BlockEvent(b, s, x[:, s:s + Lb].clone())

    def result(self, t0: float) -> "GenerateResult":
        x, lay = self.buf.x, self.layout
        cols = lay.gen_start[:, None] + const("arange", lay.gen_length, x.device)[None, :]
        answers = None if self.decoding is None else \
            self.decoding.answers(self.cfg, x, lay.gen_start, lay.gen_length, self.buf.state)
        edits = self.decoding.edit_counts(self.buf.state).tolist() if self.edits else None
        return GenerateResult(tokens=x.gather(1, cols), sequences=x.clone(), prompt_lengths=lay.prompt_lengths,
                              nfe=self.buf.nfe.tolist(), steps=self.records, seconds=time.perf_counter() - t0,
                              answers=answers, edits=edits)


@torch.no_grad()
def generate_stream(params, cfg, prompts, *, attention_mask: Optional[torch.Tensor] = None, ops: Ops = REFERENCE_OPS,
                    cuda_graphs: bool = False, device_positions: Optional[bool] = None,
                    workspace: Optional[Workspace] = None, **options,
                    ) -> Iterator[Union[StepEvent, BlockEvent, GenerateResult]]:
    """Like :func:`generate`, but yields a :class:`StepEvent` after every step, a :class:`BlockEvent` after every
    block, and finally the :class:`GenerateResult`. Events hold device tensors, final once the GPU ran the step
    (a graphed block's later steps are all enqueued before their events are yielded)."""
    t0 = time.perf_counter()
    o = DecodeOptions(**options)
    for name, v in (("cuda_graphs", cuda_graphs), ("device_positions", device_positions)):
        if v is not None and not isinstance(v, bool):
            raise TypeError(f"{name}={v!r} must be True, False or None")
    if workspace is not None and not isinstance(workspace, Workspace):
        raise TypeError(f"workspace={workspace!r:.60} must be a Workspace or None")
    check_ops(ops, cuda_graphs, params.device)
    tokens, pad = pad_prompts(prompts, cfg, attention_mask, params.device)
    o, layout, rule, counts = setup_decode(cfg, tokens, pad, o)
    run = _Decode(params, cfg, layout, counts, o, rule=rule, ops=ops, cuda_graphs=cuda_graphs,
                  device_positions=device_positions, workspace=workspace)
    graphed = run.graphs.enabled and run.schedule is not None and not run.block_flags
    for b in range(run.n_blocks):
        stop, all_done = run.before_block(b)
        if stop:
            break
        blocks = run.graphed_block if graphed else run.stepwise_block
        if (yield from blocks(b, all_done)):
            break
        yield run.after_block(b)
    yield run.result(t0)


def generate(params, cfg, prompts, *, gen_length: int, block_length: int, steps: int,
             record_steps: bool = False, on_step: Optional[Callable[[StepEvent], None]] = None,
             on_block: Optional[Callable[[BlockEvent], None]] = None, **options) -> GenerateResult:
    """Decode ``prompts`` (list of id lists, or a ``[B, P]`` tensor with optional ``attention_mask``).

    ``options``: the fields of :class:`~llada_triton.decode.DecodeOptions` (temperature, remasking, threshold,
    cache, early_stop, decoding, ...; with ``decoding`` ``answers`` holds each row's answer cut after its first
    eos). Run-time arguments: ``ops`` (which kernel runs each op), ``cuda_graphs`` (capture each step kind where its
    work is fixed: temperature 0, low_confidence, schedule or threshold), ``device_positions`` (the graph code path
    without graphs), ``workspace`` (buffers and graphs kept across calls); ``on_step`` / ``on_block`` are called as
    steps and blocks commit.

    Host syncs: one per block (early stop); with threshold or factor also one per step; with ``decoding`` a
    block-complete flag per step, read one step late on CUDA. Returns a :class:`GenerateResult` (``steps``
    filled when ``record_steps``).
    """
    result = None
    for ev in generate_stream(params, cfg, prompts, gen_length=gen_length, block_length=block_length,
                              steps=steps, **options):
        if isinstance(ev, StepEvent) and on_step is not None:
            on_step(ev)
        elif isinstance(ev, BlockEvent) and on_block is not None:
            on_block(ev)
        elif isinstance(ev, GenerateResult):
            result = ev
    if not record_steps:
        result.steps = []
    return result
