"""Evaluation requests on one model, sharded over ``torch.distributed`` ranks (no lm_eval import here).

Generation: each task's prompts are sorted by length (longest first) and cut into *chunks* of
``chunk_size`` prompts (``batch_size`` for the caches other than ``block`` and for Dream's decoders); a chunk is
decoded by one call, ``run_many`` with ``min(batch_size, chunk)`` slots for the ``block`` cache (slots refilled as
sequences end, early stop), ``generate`` on the left-padded chunk otherwise, seeded from the chunk's own tokens.
The decoder is the options': LLaDA's rules, LLaDA2.0's official decoding (``decoding=llada2``: its answers, cut
after the first eos) or Dream's (a Dream ``remasking``, through :func:`llada_triton.decode.dream_options`). Chunks are the units
sharded across ranks, so every prompt is decoded in exactly the same call whatever the world size:
``torchrun`` with N processes gives the tokens of one process with the same options.

Likelihood: every distinct ``(context, continuation)`` pair is one unit, estimated by
:func:`llada_triton.eval.likelihood.mc_loglikelihood` with a per-request seed.

Answers are the generated tokens up to the first end token (eos / eot), decoded with special tokens
skipped, then cut before the earliest ``until`` stop string (what lm-eval's models return).
"""
from __future__ import annotations

import bisect
import logging
import time
from collections import defaultdict
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from llada_triton.models.chat import strip_answer
from .distributed import Dist, check_world_size, gather_results, init_distributed, shard_indices
from .likelihood import greedy_suffix_match, mc_loglikelihood, request_seed
from .options import EvalOptions, decode_kwargs

__all__ = ["EvalRunner", "cut_at_stops", "combine_stats"]

log = logging.getLogger(__name__)


def cut_at_stops(text: str, until: Sequence[str]) -> str:
    """``text`` before the earliest occurrence of any non-empty stop string."""
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text


def _add_rates(row: Dict) -> Dict:
    row["tokens_per_nfe"] = round(row["tokens"] / row["nfe"], 3) if row.get("nfe") else None
    row["tokens_per_s"] = round(row["tokens"] / row["seconds"], 2) if row.get("seconds") else None
    return row


def combine_stats(per_rank: Sequence[Dict[str, Dict]]) -> Dict[str, Dict]:
    """Per-task stats summed over ranks; ``seconds`` is the slowest rank's (the wall time)."""
    out: Dict[str, Dict] = {}
    for stats in per_rank:
        for task, row in stats.items():
            acc = out.setdefault(task, {k: 0 for k in row if k != "seconds"} | {"seconds": 0.0})
            for k, v in row.items():
                acc[k] = max(acc[k], v) if k == "seconds" else acc[k] + v
    return {task: _add_rates(dict(row, seconds=round(row["seconds"], 3))) for task, row in out.items()}


class EvalRunner:
    """A loaded model with its tokenizer and options; :meth:`generate` and :meth:`loglikelihood` take
    plain strings and return results in input order on every rank, with per-task stats."""

    def __init__(self, opts: EvalOptions, params, cfg, tokenizer, dist: Dist, ops):
        self.opts, self.params, self.cfg, self.tokenizer, self.dist, self.ops = opts, params, cfg, tokenizer, dist, ops
        self.truncated = 0
        self._workspace = None

    @classmethod
    def load(cls, opts: EvalOptions, dist: Optional[Dist] = None) -> "EvalRunner":
        from llada_triton.models import REFERENCE_OPS, load_model, triton_ops
        from llada_triton.models.chat import load_tokenizer

        dist = init_distributed(opts.device) if dist is None else dist
        on_cuda = dist.device.startswith("cuda")
        dtype = getattr(torch, opts.dtype) if opts.dtype else None
        params, cfg = load_model(opts.pretrained, device=dist.device, dtype=dtype)
        ops_name = opts.ops or ("triton" if on_cuda else "reference")
        ops = triton_ops() if ops_name == "triton" else REFERENCE_OPS
        return cls(opts, params, cfg, load_tokenizer(opts.pretrained), dist, ops)

    # ------------------------------------------------------------------ tokens
    def encode(self, text: str) -> List[int]:
        """Token ids; the tokenizer's special tokens are added unless the text already starts with the bos
        string (a chat-templated prompt)."""
        bos = getattr(self.tokenizer, "bos_token", None)
        add = not (bos and text.startswith(bos))
        return list(self.tokenizer(text, add_special_tokens=add)["input_ids"])

    def _prompt_room(self) -> int:
        """The longest prompt that fits ``max_sequence_length`` with ``gen_length``. On a decoding's own block grid
        (``decoding=llada2``) the widest batch it can be in decides: its layout beside a prompt that ends one token
        short of a block (the longest overhang), block 0 at column >= B in the slot runner (as ``run_many``)."""
        o, M = self.opts, self.cfg.max_sequence_length
        dec = decode_kwargs(o).get("decoding")
        if dec is None:
            return M - o.gen_length
        B, tok = o.block_length, self.cfg.pad_token_id

        def too_wide(p: int) -> bool:  # nondecreasing in p
            lay = dec.layout([[tok] * p, [tok] * (B - 1)], self.cfg, o.gen_length, B, "cpu",
                             min_first=B if o.slots else 0)
            return lay.width > M
        return max(0, bisect.bisect_left(range(M + 1), True, key=too_wide) - 1)

    def _fit(self, ids: List[int], room: int) -> List[int]:
        """``ids`` cut from the left to ``room`` tokens (counted in ``truncated``)."""
        if room < 1:
            raise ValueError(f"gen_length / continuation leave no room for the prompt within "
                             f"max_sequence_length={self.cfg.max_sequence_length}")
        if len(ids) > room:
            self.truncated += 1
            return ids[-room:]
        return ids

    def encode_pair(self, context: str, continuation: str) -> Tuple[List[int], List[int]]:
        """``eval_llada.py``'s split: trailing spaces of the context move to the continuation, whose ids are
        those of ``context + continuation`` after the context's own ids."""
        n = len(context) - len(context.rstrip())
        if n:
            context, continuation = context[:-n], context[-n:] + continuation
        whole = self.encode(context + continuation)
        ctx = self.encode(context)
        cont = whole[len(ctx):]
        return self._fit(ctx, self.cfg.max_sequence_length - len(cont)), cont

    # ------------------------------------------------------------------ generation
    def _chunks(self, prompts: Sequence[List[int]], tasks: Sequence[str]) -> List[List[int]]:
        size = self.opts.chunk if self.opts.slots else self.opts.batch_size
        by_task: Dict[str, List[int]] = defaultdict(list)
        for i, t in enumerate(tasks):
            by_task[t].append(i)
        chunks = []
        for t in sorted(by_task):
            idx = sorted(by_task[t], key=lambda i: (-len(prompts[i]), i))
            chunks += [idx[j:j + size] for j in range(0, len(idx), size)]
        return chunks

    def _decode_kwargs(self) -> Dict:
        """The driver's keyword arguments: the options' decoder (:func:`~llada_triton.eval.options.decode_kwargs`),
        the ops and CUDA graphs."""
        graphs = self.dist.device.startswith("cuda") if self.opts.cuda_graphs is None else self.opts.cuda_graphs
        return dict(decode_kwargs(self.opts), ops=self.ops, cuda_graphs=graphs)

    def _run_chunk(self, prompts: List[List[int]], on_done) -> Tuple[List[List[int]], List[int], int]:
        """One chunk: (generated tokens per prompt, NFE per prompt, batched forwards)."""
        from llada_triton.decode import Workspace, generate, run_many

        seed = request_seed(self.opts.seed, prompts[0], [len(prompts)])
        kw = self._decode_kwargs()
        if self.opts.slots:
            kw.pop("cache")
            slots = min(self.opts.batch_size, len(prompts))  # fixed by the chunk: the same on every world size
            res = run_many(self.params, self.cfg, prompts, slots=slots, seed=seed,
                           on_result=lambda i, toks: on_done(1), **kw)
            return res.tokens, res.nfe, res.steps
        if self._workspace is None:
            self._workspace = Workspace()
        res = generate(self.params, self.cfg, prompts, seed=seed, workspace=self._workspace, **kw)
        on_done(len(prompts))
        toks = res.tokens.tolist() if res.answers is None else res.answers  # LLaDA2: answers cut after the eos
        return toks, list(res.nfe), max(res.nfe)

    def generate(self, contexts: Sequence[str], untils: Sequence[Sequence[str]],
                 tasks: Sequence[str]) -> Tuple[List[str], Dict[str, Dict]]:
        """Answers (cut at the stop strings) in input order, and per-task stats, on every rank."""
        room = self._prompt_room()
        prompts = [self._fit(self.encode(c), room) for c in contexts]
        chunks = self._chunks(prompts, tasks)
        check_world_size(len(chunks), self.dist, f"decoding chunks ({len(prompts)} prompts; lower chunk_size)")
        mine = shard_indices(len(chunks), self.dist, costs=[sum(len(prompts[i]) for i in c) for c in chunks])
        stats: Dict[str, Dict] = {}
        bar = _progress(sum(len(chunks[c]) for c in mine), "generate_until", self.dist)
        done = []
        for c in mine:
            t0 = time.perf_counter()
            toks, nfe, fwd = self._run_chunk([prompts[i] for i in chunks[c]], bar.update)
            row = stats.setdefault(tasks[chunks[c][0]], dict(requests=0, tokens=0, nfe=0, forwards=0, seconds=0.0))
            row["seconds"] += time.perf_counter() - t0
            row["forwards"] += fwd
            for i, t, n in zip(chunks[c], toks, nfe):
                answer = strip_answer(t, self.cfg)
                row["requests"] += 1
                row["tokens"] += len(answer)
                row["nfe"] += n
                text = self.tokenizer.decode(answer, skip_special_tokens=True)
                done.append(cut_at_stops(text, untils[i]))
        bar.close()
        per_chunk = _split(done, [len(chunks[c]) for c in mine])
        gathered = gather_results(mine, per_chunk, len(chunks), self.dist)
        texts: List[Optional[str]] = [None] * len(prompts)
        for chunk, outs in zip(chunks, gathered):
            for i, s in zip(chunk, outs):
                texts[i] = s
        return texts, self._all_stats(stats)

    # ------------------------------------------------------------------ likelihood
    def loglikelihood(self, pairs: Sequence[Tuple[str, str]],
                      tasks: Sequence[str]) -> Tuple[List[Tuple[float, bool]], Dict[str, Dict]]:
        """``(log-likelihood estimate, is_greedy)`` per pair in input order, and per-task stats."""
        enc = [self.encode_pair(c, x) for c, x in pairs]
        units: Dict[Tuple, int] = {}
        keys = [units.setdefault((tuple(p), tuple(t)), len(units)) for p, t in enc]
        unit_list = list(units)
        unit_task = {}
        for k, task in zip(keys, tasks):
            unit_task.setdefault(k, task)
        mine = shard_indices(len(unit_list), self.dist, costs=[len(p) + len(t) for p, t in unit_list])
        o, stats, values = self.opts, {}, []
        bar = _progress(len(mine), "loglikelihood", self.dist)
        for u in mine:
            t0 = time.perf_counter()
            p, t = unit_list[u]
            ll, fwd = mc_loglikelihood(self.params, self.cfg, p, t, mc_num=o.mc_num, batch_size=o.mc_batch,
                                       cfg_scale=o.cfg_scale, seed=o.seed, ops=self.ops)
            greedy = o.check_greedy and greedy_suffix_match(self.params, self.cfg, p, t, cfg_scale=o.cfg_scale,
                                                            ops=self.ops)
            values.append((ll, bool(greedy)))
            row = stats.setdefault(unit_task[u], dict(requests=0, tokens=0, nfe=0, forwards=0, seconds=0.0))
            row["requests"] += 1
            row["tokens"] += len(t)
            row["forwards"] += fwd + (len(t) if o.check_greedy else 0)
            row["seconds"] += time.perf_counter() - t0
            bar.update(1)
        bar.close()
        out = gather_results(mine, values, len(unit_list), self.dist)
        return [out[k] for k in keys], self._all_stats(stats)

    def _all_stats(self, stats: Dict[str, Dict]) -> Dict[str, Dict]:
        if self.dist.world_size == 1:
            return combine_stats([stats])
        parts = [None] * self.dist.world_size
        torch.distributed.all_gather_object(parts, stats)
        return combine_stats(parts)


def _split(flat: List, sizes: List[int]) -> List[List]:
    out, j = [], 0
    for n in sizes:
        out.append(flat[j:j + n])
        j += n
    return out


def _progress(total: int, desc: str, dist: Dist):
    from tqdm import tqdm

    return tqdm(total=total, desc=f"{desc} (rank 0 of {dist.world_size})", disable=not dist.is_main)
