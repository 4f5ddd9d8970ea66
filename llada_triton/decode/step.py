"""The step machinery shared by :func:`llada_triton.decode.generate` and :func:`llada_triton.decode.run_many`.

A decoding step is: the cache policy's forward (:mod:`.cache`) -> the block's final hidden states ->
:meth:`TransferRule.sample` (the LM head, ``Ops.head``: sampled token and confidence per position) ->
:meth:`TransferRule.commit` (selection and write into the token buffer, ``Ops.commit`` or ``Ops.select``), or a
``decoding=`` option's own ``commit`` (LLaDA2.x: the hooks of :class:`llada_triton.decode.llada2.Llada2Decoding`).
Also here: the options (:class:`DecodeOptions`, whose model-free checks the eval runs too) and
:func:`setup_decode` (checks, grid, rule and schedule before any compute), the CUDA-graph cache :class:`Graphs`
and :class:`HostFlag` (reads early stop without stalling the GPU).

A new transfer rule is a :class:`TransferRule` field, a branch in :meth:`TransferRule.commit` and the
``Ops.select`` / ``Ops.commit`` kernels.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Optional

import torch

from llada_triton.kernels.reference import commit_step_ref
from llada_triton.models.family import family_of
from .cache import policies_for
from .layout import prompt_layout
from .schedule import block_counts

__all__ = ["REMASKING", "DREAM_ALGS", "SCHEDULES", "DecodeOptions", "TransferRule", "masked_first", "top_candidates",
           "check_model_options", "setup_decode", "check_ops", "prompt_rows", "Graphs", "HostFlag"]

REMASKING = ("low_confidence", "random", "maskgit_plus", "topk_margin", "entropy", "origin")
# Dream's ``alg`` -> the confidence of its head (kernels.reference.dream_confidence_ref); origin samples by maskgit_plus
DREAM_ALGS = {"maskgit_plus": "prob", "topk_margin": "margin", "entropy": "neg_entropy", "origin": "prob"}
SCHEDULES = ("linear", "dream", "carry")


def check_int(name, v, low=1):
    if isinstance(v, bool) or not isinstance(v, Integral):
        raise TypeError(f"{name}={v!r} must be an int" + ("" if low is None else f" >= {low}"))
    if low is not None and v < low:
        raise ValueError(f"{name}={v!r} must be an int >= {low}")


def check_real(name, v, ok, allowed, optional=False):
    if optional and v is None:
        return
    if isinstance(v, bool) or not isinstance(v, Real) or math.isnan(v) or not ok(float(v)):
        raise (ValueError if isinstance(v, Real) and not isinstance(v, bool) else TypeError)(
            f"{name}={v!r} must be {allowed}")


def check_ops(ops, cuda_graphs=False, device=None):
    """``ops`` is an :class:`~llada_triton.models.ops.Ops`; ``cuda_graphs`` needs params on a CUDA ``device``."""
    from llada_triton.models.ops import Ops
    if not isinstance(ops, Ops):
        raise TypeError(f"ops={ops!r:.60} must be an Ops (REFERENCE_OPS or triton_ops())")
    if cuda_graphs and device.type != "cuda":
        raise ValueError(f"cuda_graphs=True needs params on a CUDA device, not {device}")


def prompt_rows(prompts) -> list:
    """``prompts`` (a list of token-id lists) as lists of Python ints, or a one-line TypeError / ValueError naming
    what is wrong (a string, a flat id list, an empty prompt, a non-integer id)."""
    if isinstance(prompts, (str, bytes)) or not hasattr(prompts, "__len__"):
        raise TypeError(f"prompts={prompts!r:.60} must be a list of token-id lists (tokenize text first) "
                        "or an int tensor [B, P]")
    if len(prompts) == 0:
        raise ValueError("prompts=[] is empty: give at least one prompt (a list of token ids)")
    rows = []
    for i, p in enumerate(prompts):
        if isinstance(p, (str, bytes)):
            raise TypeError(f"prompts[{i}]={p!r:.40} is text: give token ids (tokenize the prompt first)")
        if isinstance(p, Integral) or not hasattr(p, "__len__"):
            raise TypeError(f"prompts[{i}]={p!r:.40} is not a list of token ids (for one prompt pass [[id, ...]])")
        if len(p) == 0:
            raise ValueError(f"prompts[{i}] is empty: every prompt needs at least one token")
        bad = next((t for t in p if isinstance(t, bool) or not isinstance(t, Integral)), None)
        if bad is not None or (isinstance(p, torch.Tensor) and p.is_floating_point()):
            raise TypeError(f"prompts[{i}] holds {bad!r:.20}: token ids must be ints")
        rows.append([int(t) for t in p])
    return rows


@dataclass(frozen=True)
class DecodeOptions:
    """The model-free decoding options: the keyword arguments of the same names of
    :func:`~llada_triton.decode.generate` (and of ``run_many``), with these defaults. :meth:`check` validates them."""
    gen_length: int                        # tokens generated per prompt
    block_length: int                      # tokens per block (blocks decode left to right)
    steps: int                             # forwards, split evenly over the blocks (with ``decoding``: per block)
    temperature: float = 0.0               # 0: argmax; else Gumbel-max sampling of softmax(logits / temperature)
    remasking: str = "low_confidence"      # which masked positions commit first (REMASKING: 'random', Dream's algs)
    threshold: Optional[float] = None      # Fast-dLLM: commit the positions with confidence > threshold (no schedule)
    factor: Optional[float] = None         # Fast-dLLM's factor rule instead of the schedule
    cfg_scale: float = 0.0                 # classifier-free guidance (unconditional branch: the prompt all masked)
    cache: str = "none"                    # cache policy: 'none' | 'prefix' | 'dual' | 'block' (.cache)
    logits_eos_inf: bool = False           # eos is never sampled
    confidence_eos_eot_inf: bool = False   # eos and eot are left out of the confidence softmax
    early_stop: Optional[bool] = None      # a row that committed an end token by a block's end gets eos after it and
    #                                        spends no more forwards; None: the decoding's or policy's ('block': on)
    seed: int = 0                          # keys the sampling noise
    schedule: Optional[str] = None         # tokens per step (SCHEDULES); None: the model family's
    eps: float = 1e-3                      # Dream's schedule: its last time step
    top_p: Optional[float] = None          # Dream's samplers (a Dream remasking only): nucleus
    top_k: Optional[int] = None            # ... top-k
    alg_temp: Optional[float] = None       # ... positions drawn from softmax(confidence / alg_temp)
    refresh_commits_first: bool = False    # Fast-dLLM's Dream prefix / dual: a block's first step commits position 0
    decoding: Any = None                   # a family's official decoder as hooks (Llada2Decoding, Llada21Decoding)

    def check(self, batch: int) -> None:
        """Every check of these options for ``batch`` rows that needs no model or prompt: a one-line error naming
        the argument, its value and what is allowed. :func:`setup_decode` runs it first; the eval runs it on its
        ``model_args`` before loading anything."""
        gen_length, block_length, steps, decoding = self.gen_length, self.block_length, self.steps, self.decoding
        remasking, threshold, factor, schedule = self.remasking, self.threshold, self.factor, self.schedule
        for name, v in (("gen_length", gen_length), ("block_length", block_length), ("steps", steps)):
            check_int(name, v)
        if decoding is not None:  # its own fields; its absolute grid takes any gen_length and per-block steps
            decoding.check(self)
        check_int("seed", self.seed, low=None)
        if self.early_stop is not None and not isinstance(self.early_stop, bool):
            raise TypeError(f"early_stop={self.early_stop!r} must be True, False or None")
        if decoding is None:
            if gen_length % block_length:
                raise ValueError(f"gen_length={gen_length} is not a multiple of block_length={block_length}")
            nb = gen_length // block_length
            if steps % nb:
                raise ValueError(f"steps={steps!r} must be a positive multiple of the number of blocks "
                                 f"({gen_length}/{block_length} = {nb})")
        if remasking not in REMASKING:
            raise ValueError(f"remasking={remasking!r}; choose one of {REMASKING}")
        if threshold is not None and factor is not None:
            raise ValueError(f"give threshold or factor, not both (threshold={threshold!r}, factor={factor!r})")
        check_real("threshold", threshold, lambda v: 0.0 < v <= 1.0, "in (0, 1]", optional=True)
        check_real("factor", factor, lambda v: v > 0, "> 0", optional=True)
        check_real("temperature", self.temperature, lambda v: v >= 0, ">= 0")
        check_real("cfg_scale", self.cfg_scale, lambda v: v >= 0, ">= 0")
        if decoding is not None:
            decoding.check_driver_options(self)
        # Dream's decoders: its algs and schedule, Fast-dLLM's carry and block-start commit
        if schedule is not None and schedule not in SCHEDULES:
            raise ValueError(f"schedule={schedule!r}; choose one of {SCHEDULES} or None (the model family's)")
        dream = remasking in DREAM_ALGS
        if not dream and (self.top_p is not None or self.top_k is not None or self.alg_temp):
            raise ValueError(f"top_p / top_k / alg_temp need a Dream remasking {tuple(DREAM_ALGS)}, not {remasking!r}")
        if dream and (self.cfg_scale or self.confidence_eos_eot_inf or factor is not None):
            raise ValueError(f"remasking={remasking!r} takes no cfg_scale, confidence_eos_eot_inf or factor")
        check_real("top_p", self.top_p, lambda v: 0.0 < v <= 1.0, "in (0, 1]", optional=True)
        if self.top_k is not None:
            check_int("top_k", self.top_k)
        check_real("alg_temp", self.alg_temp, lambda v: v >= 0, ">= 0", optional=True)
        check_real("eps", self.eps, lambda v: 0.0 < v < 1.0, "in (0, 1)")
        if schedule == "carry" and (threshold is None or batch != 1 or block_length != gen_length):
            raise ValueError(f"schedule='carry' (Fast-dLLM's Dream threshold) needs a threshold, batch 1 and one "
                             f"block, got threshold={threshold}, batch {batch}, block_length={block_length}")
        if remasking == "origin" and (schedule != "dream" or threshold is not None or self.alg_temp):
            raise ValueError("remasking='origin' needs schedule='dream' and no threshold or alg_temp")
        if self.refresh_commits_first and self.cache not in ("prefix", "dual"):
            raise ValueError(f"refresh_commits_first is Fast-dLLM's Dream prefix / dual cache rule, not "
                             f"cache={self.cache!r}")


def check_model_options(cfg, tokens, pad, o: DecodeOptions, width: int):
    """The checks that need the config and the left-padded prompts ``tokens`` / ``pad``: the sequence length
    (``width``: the columns of the layout's token buffer), the prompt ids and the cache policy."""
    P = tokens.shape[1]
    if width > cfg.max_sequence_length:
        raise ValueError(f"the block grid needs {width} positions (prompt width {P}, gen_length={o.gen_length}, "
                         f"block_length={o.block_length}): it exceeds max_sequence_length={cfg.max_sequence_length}")
    if (pad >= P).any():
        raise ValueError("every prompt needs at least one token")
    real = torch.arange(P, device=tokens.device)[None, :] >= pad[:, None]
    bad = real & ((tokens < 0) | (tokens >= cfg.vocab_size))
    if bad.any():
        r, c = bad.nonzero()[0].tolist()
        raise ValueError(f"prompt row {r} has token id {int(tokens[r, c])} outside the vocabulary "
                         f"[0, {cfg.vocab_size})")
    masks = real & (tokens == cfg.mask_token_id)
    if masks.any():
        r, c = masks.nonzero()[0].tolist()
        raise ValueError(f"prompt row {r} position {c} holds the mask id {cfg.mask_token_id}")
    policies = policies_for(cfg)
    if o.cache not in policies:
        raise ValueError(f"cache={o.cache!r} is not a cache policy; choose one of {sorted(policies)}")


def setup_decode(cfg, tokens, pad, o: DecodeOptions, min_first: int = 0):
    """What ``generate`` and ``run_many`` set up before any compute from their options ``o`` and the left-padded
    prompts ``tokens`` / ``pad``: every check (:meth:`DecodeOptions.check`, :func:`check_model_options`), then
    ``(o, layout, rule, counts)``: ``o`` with ``early_stop`` defaulted by its decoding (else left None), the
    :class:`~llada_triton.decode.layout.Layout` (LLaDA's, or the ``decoding``'s block grid with block 0 at column
    ``>= min_first``), the :class:`TransferRule` and a block's per-step counts (host ints; None where the rule
    decides)."""
    o.check(tokens.shape[0])
    dec = o.decoding
    if dec is None:
        layout = prompt_layout(tokens, pad, o.gen_length, o.block_length)
    else:
        rows = [r[p:] for r, p in zip(tokens.tolist(), pad.tolist())]
        layout = dec.layout(rows, cfg, o.gen_length, o.block_length, tokens.device, min_first=min_first)
        o = dataclasses.replace(o, early_stop=dec.stops_at_eos if o.early_stop is None else o.early_stop)
    check_model_options(cfg, tokens, pad, o, layout.width)
    rule = TransferRule.from_options(cfg, o)
    counts = None
    if dec is not None:
        counts = dec.schedule(o.block_length, o.steps, o.gen_length)
    elif rule.scheduled:
        counts = block_counts(o.schedule, family_of(cfg).schedule, o.block_length,
                              o.steps // (o.gen_length // o.block_length), o.eps, o.refresh_commits_first)
    return o, layout, rule, counts


def top_candidates(conf: torch.Tensor, masked: torch.Tensor, k: int) -> torch.Tensor:
    """``conf`` ``[B, L]`` with the masked positions outside the ``k`` most confident (ties: lower) at ``-inf``."""
    key = torch.where(masked, conf.float(), float("-inf"))
    order = torch.sort(key, dim=1, descending=True, stable=True).indices
    keep = torch.zeros_like(masked).scatter_(1, order[:, :k], True)
    return torch.where(keep, key, float("-inf"))


def masked_first(masked: torch.Tensor):
    """Stable compaction of a bool ``[N]`` mask on the device (no host sync, static shapes): ``(order, dest, n)``,
    ``order`` the masked indices then the others (each increasing), ``dest`` its inverse, ``n`` the 0-dim count."""
    N = masked.shape[0]
    cm = torch.cumsum(masked.to(torch.int64), 0)  # masked at or before i
    ar = torch.arange(N, device=masked.device)
    n = cm[-1] if N else torch.zeros((), dtype=torch.int64, device=masked.device)
    dest = torch.where(masked, cm - 1, n + ar - cm)  # unmasked i: n + #unmasked before i
    order = torch.empty_like(dest).scatter_(0, dest, ar)
    return order, dest, n


@dataclass(frozen=True)
class TransferRule:
    """How a step turns the block's hidden states into committed tokens: sampling (temperature, banned and
    no-confidence ids, guidance, Dream's confidence) and selection (``threshold``, ``factor`` or the count ``k``)."""
    temperature: float
    remasking: str
    threshold: Optional[float]
    factor: Optional[float]
    cfg_scale: float
    seed: int
    banned: tuple = ()
    no_conf: tuple = ()
    confidence: Optional[str] = None  # a Dream confidence (DREAM_ALGS values): the head's Dream semantics
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    alg_temp: Optional[float] = None

    @classmethod
    def from_options(cls, cfg, o: DecodeOptions) -> "TransferRule":
        if o.confidence_eos_eot_inf and cfg.eot_token_id is None:
            raise ValueError("confidence_eos_eot_inf=True needs cfg.eot_token_id (from the tokenizer or an override)")
        return cls(temperature=float(o.temperature), remasking=o.remasking,
                   threshold=None if o.threshold is None else float(o.threshold),
                   factor=None if o.factor is None else float(o.factor), cfg_scale=float(o.cfg_scale),
                   seed=int(o.seed), banned=(cfg.eos_token_id,) if o.logits_eos_inf else (),
                   no_conf=cfg.end_token_ids if o.confidence_eos_eot_inf else (),
                   confidence=DREAM_ALGS.get(o.remasking), top_p=o.top_p, top_k=o.top_k,
                   alg_temp=float(o.alg_temp) if o.alg_temp else None)

    @property
    def fixed_work(self) -> bool:
        """Whether a step does the same device work every time (what a CUDA graph replays)."""
        return (self.temperature == 0 and self.remasking not in ("random", "origin") and not self.alg_temp
                and self.factor is None)

    def generator(self, device) -> Optional[torch.Generator]:
        """The seeded generator of the host-drawn noise (random / origin remasking, ``alg_temp``), else None."""
        if self.remasking in ("random", "origin") or self.alg_temp:
            return torch.Generator(device=device).manual_seed(self.seed)
        return None

    @property
    def scheduled(self) -> bool:
        """Whether the per-step count comes from the schedule (else threshold / factor decide, data-dependent)."""
        return self.threshold is None and self.factor is None

    def sample(self, ops, lm_head, hidden, uncond, masked, *, offset, rand_gen):
        """``hidden`` / ``uncond`` [B, Lb, d] -> (x0 int64 [B, Lb], conf [B, Lb]): sampled token and confidence
        per position (unspecified off the masked positions). When ``ops.compacts(B * Lb)`` the head runs only on
        the rows of bool ``masked`` [B, Lb], gathered on the device (:func:`masked_first`; ``row_ids`` keep each
        position's noise independent of the compaction)."""
        B, Lb, d = hidden.shape
        N = B * Lb
        kw = dict(temperature=self.temperature, seed=self.seed, offset=offset, banned_ids=self.banned,
                  no_confidence_ids=self.no_conf, cfg_scale=self.cfg_scale)
        if self.confidence is not None:
            kw.update(confidence=self.confidence, top_p=self.top_p, top_k=self.top_k)
        h = hidden.reshape(N, d)
        hu = None if uncond is None else uncond.reshape(N, d)
        if ops.compacts(N) and masked is not None:
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
        """Dream's ``alg='origin'`` (each masked position commits with probability ``frac``) as a k-rule."""
        u = torch.rand(masked.shape, generator=rand_gen, device=masked.device)
        return -u, ((u < frac) & masked).sum(1)

    def commit(self, ops, tokens, start, x0, conf, *, mask_id, done, k, nfe, k_only=False):
        """Select among the block's masked positions (rows not ``done``) by the rule, write their ``x0`` into
        ``tokens`` and count a forward in ``nfe`` per row with a mask (``ops.commit``, or ``commit_step_ref``
        around ``ops.select``). Returns (committed bool [B, Lb], conf (-inf off the masked positions), the
        block's tokens). ``k_only``: the top-``k`` rule whatever the rule is."""
        fn = ops.commit if ops.commit is not None else functools.partial(commit_step_ref, select=ops.select)
        if self.threshold is not None and not k_only:
            rule = dict(threshold=self.threshold)
        elif self.factor is not None and not k_only:
            rule = dict(factor=self.factor)
        else:
            rule = dict(k=k)
        return fn(tokens, start, x0, conf, mask_id=mask_id, done=done, nfe=nfe, **rule)


class HostFlag:
    """A device bool read on the host without blocking the queue (CUDA: copied into pinned memory behind the
    queued work, :meth:`get` waits on its event). One value in flight at a time."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.host = torch.empty((), dtype=torch.bool, pin_memory=True) if self.cuda else None
        self.event = torch.cuda.Event() if self.cuda else None

    def put(self, flag: torch.Tensor) -> "HostFlag":
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


class Graphs:
    """CUDA graphs of decode steps by key (a policy's ``graph_key``, or any hashable), replayed when seen again.

    A key's first call runs the step eagerly on a side stream (a real step that also warms up the libraries),
    then captures it; later calls replay it and return the captured outputs (overwritten by each replay).
    Disabled, or key None: the step just runs. The graphs share one memory pool (they replay one at a time).
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.graphs = {}
        self.pool = None

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
