"""The one block-decoding driver.

``generate(params, cfg, prompts, gen_length=..., block_length=..., steps=...)`` decodes a batch of
prompts block by block (semi-autoregressive masked diffusion). The schedule, the remasking rule and
the cache policy are arguments; ``generate_stream`` yields each step and block as it is committed.

Semantics follow the official LLaDA ``generate`` and Fast-dLLM v1 (see ``docs/decoding.md``); where
they disagree or have quirks the choice is stated here:

* A block ends as soon as it has no masked position. The official code always runs ``steps`` forwards
  per block, which only differs when ``steps_per_block > block_length`` (the extra forwards commit 0
  tokens and change nothing); Fast-dLLM's June code also spends one forward after a block is already
  complete. Neither wasted call is copied, so NFE can be lower than theirs with identical tokens.
* Confidence is ``exp(l[x0] - logsumexp(l))`` in fp32 from the (model-dtype) logits; the official code
  uses a softmax in the logits dtype, Fast-dLLM in float64.
* ``confidence_eos_eot_inf`` removes both eos and eot from the confidence softmax after sampling (a
  sampled end token gets confidence 0, the others renormalise): the intended semantics, which the
  official chained assignment (``lwn[..., eos] = logits[..., eot] = -inf``) realises only at
  temperature 0; at T > 0 it suppresses only eot.
* Ties in confidence go to the lowest position; masked positions with ``-inf`` confidence are still
  committed if the schedule asks for them.
* The LM head runs only on the block's still-masked rows when ``ops.head`` can skip rows (the Triton
  head: the rows are gathered on the device, the count stays on the device, the sampling noise is keyed
  by the original row), so finished rows and committed positions cost nothing; tokens are unchanged.
  Blocks of at most 64 rows (batch x block length) skip the compaction: their head is one weight-bound
  row tile either way.
"""
from __future__ import annotations

import functools
import inspect
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional, Union

import torch

from llada_triton.kernels.reference import commit_step_ref
from llada_triton.models.config import LLaDAConfig
from llada_triton.models.ops import REFERENCE_OPS, Ops
from llada_triton.models.weights import Params
from .cache import POLICIES, StepContext, const, make_policy, take_cols
from .schedule import CarrySchedule, dream_step_fractions, dream_transfer_counts, num_transfer_tokens

__all__ = ["generate", "generate_stream", "GenerateResult", "StepEvent", "BlockEvent", "pad_prompts",
           "REMASKING", "Workspace"]

REMASKING = ("low_confidence", "random", "maskgit_plus", "topk_margin", "entropy", "origin")
# Dream's ``alg`` -> the confidence of its head (kernels.reference.dream_confidence_ref); origin samples by maskgit_plus
DREAM_ALGS = {"maskgit_plus": "prob", "topk_margin": "margin", "entropy": "neg_entropy", "origin": "prob"}
SCHEDULES = ("linear", "dream", "carry")


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

    def commit_order(self) -> torch.Tensor:
        """int64 [B, gen_length]: global step index at which each generated position was committed
        (needs ``record_steps=True``)."""
        if not self.steps:
            raise ValueError("commit_order needs generate(..., record_steps=True)")
        B, G = self.tokens.shape
        out = torch.full((B, G), -1, dtype=torch.int64)
        for n, ev in enumerate(self.steps):
            Lb = ev.committed.shape[1]
            out[:, ev.block * Lb:(ev.block + 1) * Lb][ev.committed.cpu()] = n
        return out


def pad_prompts(prompts, cfg: LLaDAConfig, attention_mask=None, device=None):
    """Left-pad prompts with ``cfg.pad_token_id``. Returns ``(tokens [B, P], pad [B] int64)``.

    ``prompts`` is a list of token-id lists (any lengths) or an int tensor ``[B, P]``; with a tensor,
    ``attention_mask`` ``[B, P]`` (1 = token, 0 = left padding) marks padding already there.
    """
    if isinstance(prompts, torch.Tensor):
        if prompts.ndim != 2:
            raise ValueError(f"prompts tensor must be [B, P], got shape {tuple(prompts.shape)}")
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
    rows = [list(map(int, p)) for p in prompts]
    if not rows:
        raise ValueError("prompts is empty")
    P = max(len(r) for r in rows)
    tokens = torch.full((len(rows), P), cfg.pad_token_id, dtype=torch.int64)
    pad = torch.zeros(len(rows), dtype=torch.int64)
    for i, r in enumerate(rows):
        tokens[i, P - len(r):] = torch.tensor(r, dtype=torch.int64)
        pad[i] = P - len(r)
    return tokens.to(device), pad.to(device)


def _validate(cfg, tokens, pad, gen_length, block_length, steps, temperature, remasking, threshold, factor,
              cfg_scale, cache):
    if not isinstance(gen_length, int) or gen_length < 1:
        raise ValueError(f"gen_length={gen_length!r} must be a positive int")
    if not isinstance(block_length, int) or block_length < 1:
        raise ValueError(f"block_length={block_length!r} must be a positive int")
    if gen_length % block_length:
        raise ValueError(f"gen_length={gen_length} is not a multiple of block_length={block_length}")
    nb = gen_length // block_length
    if not isinstance(steps, int) or steps < 1 or steps % nb:
        raise ValueError(f"steps={steps!r} must be a positive multiple of the number of blocks "
                         f"({gen_length}/{block_length} = {nb})")
    P = tokens.shape[1]
    if P + gen_length > cfg.max_sequence_length:
        raise ValueError(f"prompt width {P} + gen_length {gen_length} = {P + gen_length} exceeds "
                         f"max_sequence_length={cfg.max_sequence_length}")
    if (pad >= P).any():
        raise ValueError("every prompt needs at least one token")
    real = torch.arange(P, device=tokens.device)[None, :] >= pad[:, None]
    bad = real & ((tokens < 0) | (tokens >= cfg.vocab_size))
    if bad.any():
        r, c = bad.nonzero()[0].tolist()
        raise ValueError(f"prompt row {r} has token id {int(tokens[r, c])} outside the vocabulary "
                         f"[0, {cfg.vocab_size})")
    if (real & (tokens == cfg.mask_token_id)).any():
        r, c = (real & (tokens == cfg.mask_token_id)).nonzero()[0].tolist()
        raise ValueError(f"prompt row {r} position {c} holds the mask id {cfg.mask_token_id}")
    if remasking not in REMASKING:
        raise ValueError(f"remasking={remasking!r}; choose one of {REMASKING}")
    if cache not in POLICIES:
        raise ValueError(f"cache={cache!r} is not a cache policy; choose one of {sorted(POLICIES)}")
    if threshold is not None and factor is not None:
        raise ValueError("give threshold or factor, not both")
    if threshold is not None and not (0.0 < float(threshold) <= 1.0):
        raise ValueError(f"threshold={threshold} must be in (0, 1]")
    if factor is not None and not float(factor) > 0:
        raise ValueError(f"factor={factor} must be > 0")
    if not float(temperature) >= 0:
        raise ValueError(f"temperature={temperature} must be >= 0")
    if not float(cfg_scale) >= 0:
        raise ValueError(f"cfg_scale={cfg_scale} must be >= 0")


def masked_first(masked: torch.Tensor):
    """Stable compaction of a bool ``[N]`` mask on the device (no host synchronisation, static shapes):
    ``(order, dest, n)`` with ``order`` int64 ``[N]`` the masked indices first, then the others, each
    group in increasing order; ``dest`` its inverse (``order[dest[i]] == i``); ``n`` the masked count as
    a 0-dim int64 device tensor."""
    N = masked.shape[0]
    cm = torch.cumsum(masked.to(torch.int64), 0)  # masked at or before i
    ar = torch.arange(N, device=masked.device)
    n = cm[-1] if N else torch.zeros((), dtype=torch.int64, device=masked.device)
    dest = torch.where(masked, cm - 1, n + ar - cm)  # unmasked i: n + #unmasked before i
    order = torch.empty_like(dest).scatter_(0, dest, ar)
    return order, dest, n


def head_skips_rows(head) -> bool:
    """Whether an ``Ops.head`` takes ``n_rows`` and ``row_ids`` (as ``kernels.remask.head_confidence``): then
    the LM head runs on the still-masked rows only (see :meth:`_Rule.commit`); otherwise on every row."""
    try:
        return _takes_rows(head)
    except TypeError:  # an unhashable callable
        return _takes_rows.__wrapped__(head)


@functools.lru_cache(maxsize=None)
def _takes_rows(head) -> bool:
    try:
        params = inspect.signature(head).parameters
    except (TypeError, ValueError):
        return False
    return "n_rows" in params and "row_ids" in params


# Up to this many block rows (B * Lb) the LM head is one row tile that streams the weights once (weight-bound;
# kernels.remask configs): skipping unmasked rows saves nothing there and the compaction's small kernels cost
# ~15 us a step (H200, batch 1), so the head runs on every row. Read when a decode starts (tests set it to 0).
COMPACT_ABOVE = 64


@dataclass(frozen=True)
class _Rule:
    """How a step turns the block's hidden states into committed tokens (shared by generate and run_many)."""
    temperature: float
    remasking: str
    threshold: Optional[float]
    factor: Optional[float]
    cfg_scale: float
    seed: int
    banned: tuple
    no_conf: tuple
    compact_above: int = COMPACT_ABOVE
    confidence: Optional[str] = None  # a Dream confidence (DREAM_ALGS values): the head's Dream semantics
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    alg_temp: Optional[float] = None

    def compacts(self, ops, n_rows: int) -> bool:
        """Whether :meth:`sample` gathers the masked rows (and so needs ``masked``) for ``n_rows`` block rows."""
        return n_rows > self.compact_above and head_skips_rows(ops.head)

    def sample(self, ops, lm_head, hidden, uncond, masked, *, offset, rand_gen):
        """``hidden`` / ``uncond`` [B, Lb, d] -> (x0 int64 [B, Lb], conf [B, Lb]): the sampled token and its
        confidence (uniform noise with ``remasking='random'``) at every position; values at positions that are
        not masked are unspecified (:meth:`commit` ignores them).

        When :meth:`compacts`, the masked rows (bool ``masked`` [B, Lb]) are gathered to the front on the
        device (:func:`masked_first`) and the head runs on those only (``n_rows`` = their count; ``row_ids`` =
        their row in ``[B * Lb]``, so the sampling noise of a position does not depend on the compaction): no
        host synchronisation, static shapes (one CUDA graph serves every step). ``masked`` is unused otherwise.
        """
        B, Lb, d = hidden.shape
        N = B * Lb
        kw = dict(temperature=self.temperature, seed=self.seed, offset=offset, banned_ids=self.banned,
                  no_confidence_ids=self.no_conf, cfg_scale=self.cfg_scale)
        if self.confidence is not None:
            kw.update(confidence=self.confidence, top_p=self.top_p, top_k=self.top_k)
        h = hidden.reshape(N, d)
        hu = None if uncond is None else uncond.reshape(N, d)
        if self.compacts(ops, N):
            order, dest, n = masked_first(masked.reshape(N))
            x0, conf = ops.head(h.index_select(0, order), lm_head,
                                uncond_hidden=None if hu is None else hu.index_select(0, order), n_rows=n,
                                row_ids=order if self.temperature > 0 else None, **kw)
            x0, conf = x0.index_select(0, dest), conf.index_select(0, dest)  # rows >= n: unspecified
        else:
            x0, conf = ops.head(h, lm_head, uncond_hidden=hu, **kw)
        if self.remasking == "random":  # uniform confidences (only the masked positions' count)
            conf = torch.rand((B, Lb), generator=rand_gen, device=hidden.device)
        elif self.alg_temp:  # positions drawn without replacement from softmax(conf / alg_temp): Gumbel-top-k
            u = torch.rand((B, Lb), generator=rand_gen, device=hidden.device, dtype=torch.float64)
            conf = (conf.view(B, Lb).double() / self.alg_temp - torch.log(-torch.log(u.clamp_min(1e-300)))).float()
        return x0.view(B, Lb), conf.view(B, Lb)

    def origin(self, masked, frac: float, *, rand_gen):
        """Dream's ``alg='origin'``: each masked position is transferred with probability ``frac``. As the
        k-rule: confidence ``-u`` (u uniform) and ``k`` = the masked positions with ``u < frac`` per row."""
        u = torch.rand(masked.shape, generator=rand_gen, device=masked.device)
        return -u, ((u < frac) & masked).sum(1)

    def commit(self, ops, tokens, start, x0, conf, *, mask_id, done, k, nfe, k_only=False):
        """Select among the block's masked positions (``tokens[:, start:start + Lb] == mask_id`` in rows not
        ``done``) by the rule, write their ``x0`` into ``tokens`` and count a forward in ``nfe`` for every row
        with a masked position: ``ops.commit`` (one launch), or :func:`llada_triton.kernels.reference.commit_step_ref`
        around ``ops.select``. Returns (committed bool [B, Lb], conf [B, Lb] (-inf off the masked positions),
        the block's tokens after the step). ``k_only``: the top-``k`` rule whatever the rule is."""
        if k_only:
            rule = dict(k=k)
        elif self.threshold is not None:
            rule = dict(threshold=self.threshold)
        elif self.factor is not None:
            rule = dict(factor=self.factor)
        else:
            rule = dict(k=k)
        fn = ops.commit if ops.commit is not None else functools.partial(commit_step_ref, select=ops.select)
        return fn(tokens, start, x0, conf, mask_id=mask_id, done=done, nfe=nfe, **rule)


def _make_rule(cfg, temperature, remasking, threshold, factor, cfg_scale, seed, logits_eos_inf,
               confidence_eos_eot_inf, top_p=None, top_k=None, alg_temp=None) -> _Rule:
    return _Rule(temperature=float(temperature), remasking=remasking,
                 threshold=None if threshold is None else float(threshold),
                 factor=None if factor is None else float(factor), cfg_scale=float(cfg_scale), seed=int(seed),
                 banned=(cfg.eos_token_id,) if logits_eos_inf else (),
                 no_conf=cfg.end_token_ids if confidence_eos_eot_inf else (), compact_above=COMPACT_ABOVE,
                 confidence=DREAM_ALGS.get(remasking), top_p=top_p, top_k=top_k,
                 alg_temp=float(alg_temp) if alg_temp else None)


def _block_counts(schedule: str, Lb: int, spb: int, eps: float, refresh_commits_first: bool) -> List[int]:
    """A block's tokens per step (host ints; every block starts fully masked): LLaDA's linear schedule cut at
    ``Lb`` steps, or Dream's float32 schedule over all ``spb`` steps (its 0-token steps are model calls too), after
    the block-start commit of one position with ``refresh_commits_first``."""
    if schedule == "dream":
        if refresh_commits_first:
            return [1] + dream_transfer_counts(Lb - 1, spb, eps, first=1)
        return dream_transfer_counts(Lb, spb, eps)
    return num_transfer_tokens(torch.ones(1, Lb, dtype=torch.bool), spb)[0].tolist()[:min(spb, Lb)]


def top_candidates(conf: torch.Tensor, masked: torch.Tensor, k: int) -> torch.Tensor:
    """``conf`` ``[B, L]`` with every masked position outside the ``k`` most confident ones (ties to the lower
    position) set to ``-inf``: a threshold rule on the result chooses among those ``k`` only."""
    key = torch.where(masked, conf.float(), float("-inf"))
    order = torch.sort(key, dim=1, descending=True, stable=True).indices
    keep = torch.zeros_like(masked).scatter_(1, order[:, :k], True)
    return torch.where(keep, key, float("-inf"))


def _validate_dream(remasking, schedule, eps, top_p, top_k, alg_temp, threshold, factor, cfg_scale,
                    confidence_eos_eot_inf, refresh_commits_first, cache, batch):
    """The options of Dream's decoders (Dream's algs, its schedule, Fast-dLLM's carry and block-start commit)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r}; choose one of {SCHEDULES}")
    dream = remasking in DREAM_ALGS
    if not dream and (top_p is not None or top_k is not None or alg_temp):
        raise ValueError(f"top_p / top_k / alg_temp need a Dream remasking {tuple(DREAM_ALGS)}, not {remasking!r}")
    if dream and (cfg_scale or confidence_eos_eot_inf or factor is not None):
        raise ValueError(f"remasking={remasking!r} takes no cfg_scale, confidence_eos_eot_inf or factor")
    if top_p is not None and not 0.0 < float(top_p) <= 1.0:
        raise ValueError(f"top_p={top_p} must be in (0, 1]")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k={top_k!r} must be an int >= 1")
    if alg_temp is not None and not float(alg_temp) >= 0:
        raise ValueError(f"alg_temp={alg_temp} must be >= 0")
    if not 0.0 < float(eps) < 1.0:
        raise ValueError(f"eps={eps} must be in (0, 1)")
    if schedule == "carry" and (threshold is None or batch != 1):
        raise ValueError(f"schedule='carry' (Fast-dLLM's Dream threshold) needs a threshold and batch 1, got "
                         f"threshold={threshold}, batch {batch}")
    if remasking == "origin" and (schedule != "dream" or threshold is not None or alg_temp):
        raise ValueError("remasking='origin' needs schedule='dream' and no threshold or alg_temp")
    if refresh_commits_first and cache not in ("prefix", "dual"):
        raise ValueError(f"refresh_commits_first is Fast-dLLM's Dream prefix / dual cache rule, not cache={cache!r}")


class _HostFlag:
    """A device bool read on the host without blocking the queue: on CUDA, :meth:`put` copies it into one
    pinned buffer behind the work already queued and records an event, which :meth:`get` waits on. One
    value in flight at a time (each ``put`` is read before the next)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.host = torch.empty((), dtype=torch.bool, pin_memory=True) if self.cuda else None
        self.event = torch.cuda.Event() if self.cuda else None

    def put(self, flag: torch.Tensor) -> "_HostFlag":
        if self.cuda:
            self.host.copy_(flag, non_blocking=True)
            self.event.record()
        else:
            self.host = flag
        return self

    def get(self) -> bool:
        if self.cuda:
            self.event.synchronize()
        return bool(self.host)


class _Graphs:
    """CUDA graphs of whole decode steps, keyed by the policy's ``graph_key`` (replayed when seen again), or of
    a block's steps after its first (key ``("later", graph_key, steps)``: one graph, no boundary between them).

    The first call of a key runs the step eagerly on a side stream (a real step, which also warms up
    the libraries) and then captures it (capture executes nothing); later calls replay the graph.

    All the graphs share one memory pool: they replay one at a time on one stream, and each keeps its outputs
    (and anything else it must keep) alive as tensors, so a graph's intermediates may take the memory another
    graph's intermediates used. With a pool per graph, the ``prefix`` policy (a graph per block) held a pool
    per block: 28 GiB more than its tensors at batch 8 with 1,024 + 1,024 tokens (results/README.md).
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.graphs = {}
        self.pool = None  # the first capture's memory pool, shared by the later captures

    def run(self, key, fn):
        if not self.enabled or key is None:
            return fn()
        entry = self.graphs.get(key)
        if entry is None:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                out = fn()  # the real step, eager (also warms up cuBLAS / Triton)
            torch.cuda.current_stream().wait_stream(stream)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=self.pool):
                graph_out = fn()  # recorded, not executed
            if self.pool is None:
                self.pool = g.pool()
            self.graphs[key] = (g, graph_out)
            return out
        g, out = entry
        g.replay()
        return out


class Workspace:
    """Static buffers and captured CUDA graphs kept across :func:`generate` calls of the same shape.

    Pass the same ``Workspace`` to repeated calls (an eval loop, a benchmark) so that the token buffer,
    the KV cache and the graphs are allocated and captured once per bucket (batch, prompt width,
    generation length, block length, policy and rule) and only refilled afterwards.

    It keeps the ``max_entries`` buckets used most recently and drops the others (their memory goes back to
    torch's allocator): each bucket holds a KV cache, so an eval loop over batches of many prompt widths would
    otherwise keep one cache per width (LLaDA-8B, batch 32, 512-token sequences: 8.6 GB each).
    """

    def __init__(self, max_entries: int = 4):
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"max_entries must be an int >= 1, got {max_entries!r}")
        self.max_entries = max_entries
        self.entries = OrderedDict()

    def __len__(self):
        return len(self.entries)

    def get(self, key):
        """The bucket's buffers (now the most recently used), or None."""
        buf = self.entries.get(key)
        if buf is not None:
            self.entries.move_to_end(key)
        return buf

    def put(self, key, buf):
        """Keep ``buf`` for ``key``; drop the least recently used buckets beyond ``max_entries``."""
        self.entries[key] = buf
        self.entries.move_to_end(key)
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)


@dataclass
class _Buffers:
    x: torch.Tensor           # int64 [B, L] tokens
    kv_start: Optional[torch.Tensor]
    policy: object
    nfe: torch.Tensor
    done: torch.Tensor
    k_buf: torch.Tensor
    s_buf: torch.Tensor
    graphs: "_Graphs"
    k_consts: dict = field(default_factory=dict)

    def k_const(self, k: int) -> torch.Tensor:
        """A device ``[B]`` tensor of ``k`` kept as long as the workspace (graphs bake its address)."""
        t = self.k_consts.get(k)
        if t is None:
            t = self.k_consts[k] = torch.full_like(self.k_buf, k)
        return t


@torch.no_grad()
def generate_stream(params: Params, cfg: LLaDAConfig, prompts, *, gen_length: int, block_length: int,
                    steps: int, temperature: float = 0.0, remasking: str = "low_confidence",
                    threshold: Optional[float] = None, factor: Optional[float] = None, cfg_scale: float = 0.0,
                    cache: str = "none", logits_eos_inf: bool = False, confidence_eos_eot_inf: bool = False,
                    early_stop: Optional[bool] = None, attention_mask: Optional[torch.Tensor] = None,
                    seed: int = 0, ops: Ops = REFERENCE_OPS, cuda_graphs: bool = False,
                    device_positions: Optional[bool] = None, workspace: Optional[Workspace] = None,
                    schedule: str = "linear", eps: float = 1e-3, top_p: Optional[float] = None,
                    top_k: Optional[int] = None, alg_temp: Optional[float] = None,
                    refresh_commits_first: bool = False,
                    ) -> Iterator[Union[StepEvent, BlockEvent, GenerateResult]]:
    """Like :func:`generate`, but yields a :class:`StepEvent` after every step, a :class:`BlockEvent`
    after every block, and finally the :class:`GenerateResult`.

    Events hold device tensors whose values are final once the GPU has run the step. A step is enqueued before
    its event is yielded; with CUDA graphs and the linear schedule, a block's steps after its first run as one
    graph, so all of them are enqueued before the first of their events is yielded."""
    t0 = time.perf_counter()
    device = params.device
    tokens, pad = pad_prompts(prompts, cfg, attention_mask, device)
    _validate(cfg, tokens, pad, gen_length, block_length, steps, temperature, remasking, threshold, factor,
              cfg_scale, cache)
    _validate_dream(remasking, schedule, eps, top_p, top_k, alg_temp, threshold, factor, cfg_scale,
                    confidence_eos_eot_inf, refresh_commits_first, cache, tokens.shape[0])
    if schedule == "carry" and block_length != gen_length:
        raise ValueError(f"schedule='carry' decodes one block: block_length={block_length} must be gen_length")
    if confidence_eos_eot_inf and cfg.eot_token_id is None:
        raise ValueError("confidence_eos_eot_inf needs cfg.eot_token_id (from the tokenizer or an override)")
    if cuda_graphs and device.type != "cuda":
        raise ValueError(f"cuda_graphs=True needs params on a CUDA device, not {device}")
    # graphs replay fixed work: sampling noise, random remasking and the factor rule's host loop stay eager
    graphable = (cuda_graphs and temperature == 0 and remasking not in ("random", "origin") and not alg_temp
                 and factor is None and schedule != "carry")
    dynamic = graphable if device_positions is None else device_positions
    early_stop = (cache == "block") if early_stop is None else early_stop
    B, P = tokens.shape
    L = P + gen_length
    Lb = block_length
    nb, spb = gen_length // Lb, steps // (gen_length // Lb)
    mask_id = cfg.mask_token_id
    use_cfg = cfg_scale > 0
    padded = bool((pad > 0).any())
    key = (B, P, L, Lb, cache, use_cfg, padded, threshold, factor, float(temperature), remasking,
           logits_eos_inf, confidence_eos_eot_inf, ops, id(params), graphable, dynamic, schedule, float(eps), top_p,
           top_k, alg_temp, refresh_commits_first)
    buf = workspace.get(key) if workspace is not None else None
    if buf is None:
        kv_start = None
        if padded:
            kv_start = torch.cat([pad, pad]) if use_cfg else pad.clone()
        policy = make_policy(cache, StepContext(params, cfg, ops, P, Lb, L, kv_start), 2 * B if use_cfg else B)
        buf = _Buffers(x=torch.empty((B, L), dtype=torch.int64, device=device), kv_start=kv_start, policy=policy,
                       nfe=torch.zeros(B, dtype=torch.int64, device=device),
                       done=torch.zeros(B, dtype=torch.bool, device=device),
                       k_buf=torch.zeros(B, dtype=torch.int64, device=device),   # this step's schedule count
                       s_buf=torch.zeros((), dtype=torch.int64, device=device),  # this block's start
                       graphs=_Graphs(graphable))
        if workspace is not None:
            workspace.put(key, buf)
    elif padded:
        buf.kv_start.copy_(torch.cat([pad, pad]) if use_cfg else pad)
    x, policy, nfe, done, k_buf, s_buf, graphs = (buf.x, buf.policy, buf.nfe, buf.done, buf.k_buf, buf.s_buf,
                                                  buf.graphs)
    x.fill_(mask_id)
    x[:, :P] = tokens
    nfe.zero_()
    done.zero_()
    rule = _make_rule(cfg, temperature, remasking, threshold, factor, cfg_scale, seed, logits_eos_inf,
                      confidence_eos_eot_inf, top_p, top_k, alg_temp)
    rand_gen = torch.Generator(device=device).manual_seed(int(seed)) \
        if remasking in ("random", "origin") or alg_temp else None
    calls = 0
    records: List[StepEvent] = []
    end_ids = torch.tensor(cfg.end_token_ids, device=device)
    origin_frac = dream_step_fractions(spb, eps).tolist() if remasking == "origin" else None
    leftmost_conf = -const("arange", Lb, device).float().expand(B, Lb)  # the first position ranks first

    def step(kind: str, b: int, s, k=None, *, leftmost=False, cap=None, i=0):
        """One model call and commit; ``leftmost``: commit exactly the block's first masked position (Fast-dLLM's
        Dream block start); ``cap``: the threshold rule among the top-``cap`` candidates only (``carry``)."""
        x_in = x
        if use_cfg:  # unconditional branch: the whole prompt (pads included) masked
            un = x.clone()
            un[:, :P] = mask_id
            x_in = torch.cat([x, un])
        hidden = policy.first(x_in, b, s) if kind == "first" else policy.steady(x_in, b, s)
        masked = (take_cols(x, s, Lb) == mask_id) & ~done[:, None] if rule.compacts(ops, B * Lb) else None
        x0, conf = rule.sample(ops, params.lm_head, hidden[:B], hidden[B:] if use_cfg else None, masked,
                               offset=calls, rand_gen=rand_gen)
        k = k_buf if k is None else k
        if leftmost:
            conf, k = leftmost_conf, buf.k_const(1)
        elif origin_frac is not None or cap is not None:
            blk_masked = (take_cols(x, s, Lb) == mask_id) & ~done[:, None]
            if origin_frac is not None:
                conf, k = rule.origin(blk_masked, origin_frac[i], rand_gen=rand_gen)
            else:
                conf = top_candidates(conf, blk_masked, cap)
        committed, conf, blk = rule.commit(ops, x, s, x0, conf, mask_id=mask_id, done=done, k=k, nfe=nfe,
                                           k_only=leftmost)
        return committed, blk, conf  # conf is -inf off the masked positions

    def later_steps(b: int):
        """Steps 1 .. useful - 1 of block b with the fixed schedule, for one CUDA graph: their outputs."""
        return [step("steady", b, s_buf, k=buf.k_const(schedule[i])) + (nfe.clone(),) for i in range(1, useful)]

    # the schedule is the same for every block (each starts fully masked): host ints, the useful steps known up
    # front (k_buf is refilled only when the count changes, not at every step)
    counts = _block_counts(schedule, Lb, spb, eps, refresh_commits_first) \
        if threshold is None and factor is None else None
    useful = None if counts is None else len(counts)
    carry = CarrySchedule(Lb, spb) if schedule == "carry" else None
    schedule = counts
    done_flag = _HostFlag(device) if early_stop and schedule is not None else None
    stop = False
    for b in range(nb):
        s_int = P + b * Lb
        all_done = None
        if early_stop and b > 0:  # (done changes only with early stop)
            if schedule is None:
                if bool(done.all()):  # the data-dependent rules sync every step anyway
                    break
            else:
                # every row finished? Read without stalling the GPU: the flag is copied to the host behind the
                # queued work and checked once this block's first step is queued too (a host sync here would let
                # the GPU drain and then wait for the next graph launch: ~0.67 ms per block on an H200). If every
                # row had finished, that step commits nothing (only masked positions of unfinished rows can be
                # committed) and is not reported.
                all_done = done_flag.put(done.all())
        if dynamic:
            s_buf.fill_(s_int)  # the block start the graphed steps read (once per block)
        i = 0
        while True:
            if schedule is not None:
                if i >= useful:
                    break
                if i == 0 or schedule[i] != schedule[i - 1]:
                    k_buf.fill_(schedule[i])
            elif not bool(((take_cols(x, s_int, Lb) == mask_id) & ~done[:, None]).any()):
                break  # a data-dependent rule: one host check per step
            cap = None if carry is None else carry.next_k()
            if carry is not None and cap is None:
                break
            kind = "first" if i == 0 else "steady"
            leftmost = refresh_commits_first and i == 0
            key = policy.graph_key(kind, b) if dynamic else None
            if key is not None and leftmost:
                key = ("leftmost", key)
            if i == 1 and key is not None and graphs.enabled and schedule is not None:
                # the rest of the block in one graph (no per-step graph boundary, schedule counts baked in);
                # its steps are all enqueued before the first of their events is yielded
                outs = graphs.run(("later", key, useful), lambda: later_steps(b))
                for j, ev_t in enumerate(zip(*(torch.stack(t) for t in zip(*outs)))):
                    calls += 1
                    ev = StepEvent(b, j + 1, *ev_t)
                    records.append(ev)
                    yield ev
                break
            if key is not None:
                committed, blk, conf = graphs.run(key, lambda: step(kind, b, s_buf, leftmost=leftmost))
            else:
                committed, blk, conf = step(kind, b, s_int, leftmost=leftmost, cap=cap, i=i)
            if carry is not None:
                carry.update(cap, int(committed.sum()))
            if all_done is not None and i == 0 and all_done.get():
                stop = True
                break
            calls += 1
            ev = StepEvent(b, i, committed.clone(), blk.clone(), conf.clone(), nfe.clone())
            records.append(ev)
            yield ev
            i += 1
        if stop:
            break
        if early_stop:
            # a row is finished once an end token is committed (every earlier position is, blockwise)
            gen = x[:, P:s_int + Lb]
            finished = torch.isin(gen, end_ids).any(1) & ~done
            x[:, s_int + Lb:] = torch.where(finished[:, None] | done[:, None],
                                            torch.full_like(x[:, s_int + Lb:], cfg.eos_token_id), x[:, s_int + Lb:])
            done |= finished
        yield BlockEvent(b, s_int, x[:, s_int:s_int + Lb].clone())

    yield GenerateResult(tokens=x[:, P:].clone(), sequences=x.clone(), prompt_lengths=(P - pad).tolist(),
                         nfe=nfe.tolist(), steps=records, seconds=time.perf_counter() - t0)


def generate(params: Params, cfg: LLaDAConfig, prompts, *, gen_length: int, block_length: int, steps: int,
             record_steps: bool = False, on_step: Optional[Callable[[StepEvent], None]] = None,
             on_block: Optional[Callable[[BlockEvent], None]] = None, **options) -> GenerateResult:
    """Decode ``prompts`` (list of id lists, or a ``[B, P]`` tensor with optional ``attention_mask``).

    Options: temperature (0 = argmax; else Gumbel-max sampling of softmax(l/T)), remasking
    ('low_confidence' | 'random'), threshold (Fast-dLLM parallel decoding: commit the top-1 and every
    masked token with confidence >= threshold) or factor (Fast-dLLM's factor rule) instead of the linear
    schedule, cfg_scale (classifier-free guidance, prompt fully masked in the unconditional branch),
    cache ('none' | 'prefix' | 'dual' | 'block'), logits_eos_inf, confidence_eos_eot_inf, seed, ops,
    early_stop (default on for 'block' only: once a row has committed an end token at a block's end,
    its later positions become eos and it spends no more forwards; the batch stops when every row
    has), cuda_graphs (capture each step kind into a CUDA graph and replay it; only where the step's
    work is fixed: temperature 0, low_confidence, schedule or threshold; other settings run eagerly),
    device_positions (run the graph code path, block starts as device tensors, without graphs),
    workspace (a :class:`Workspace` that keeps buffers and graphs across calls of the same shape).
    ``on_step`` / ``on_block`` are called as steps and blocks are committed (with graphs and the linear
    schedule, a block's later steps are enqueued together and their callbacks follow).

    Host synchronisation: one check per block (early stop); with threshold or factor, also one per
    step (is the block complete?). With the linear schedule a block's steps never sync.
    Returns a :class:`GenerateResult` (``steps`` filled when ``record_steps``).
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
