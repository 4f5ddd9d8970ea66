#!/usr/bin/env python
"""Decoding ablations of a LLaDA checkpoint: accuracy, NFE and speed per decoding setting.

Sweeps one knob at a time around a baseline (one token per step, low-confidence remasking,
temperature 0, no CFG, no cache, one block of ``gen_length``) on the held-out split of the built-in
synthetic tasks (``scripts/tasks.py``) or on a JSONL file of ``{"prompt", "answer"}`` records:

  steps         total denoising steps (G, G/2, ..., G/16) for low-confidence and random remasking
  remasking     low_confidence, random, Fast-dLLM threshold (several values) and factor rules
  block_length  semi-autoregressive block length (one token per step)
  temperature   Gumbel-max sampling temperature
  cfg           classifier-free guidance scale (the unconditional branch masks the whole prompt)
  cache         none | prefix | dual | block, with the linear schedule and with a threshold

A setting shared by several studies (e.g. the baseline) is decoded once and reported in each.
Every (study, setting, task) gives one CSV row with the full setting, accuracy, mean NFE per problem,
tokens/s (``gen_length`` positions per problem / wall time of ``generate``), device, versions and git
sha; a row with task ``all`` pools the tasks. ``--render`` (or ``scripts/report.py``) turns the CSV into
``report.md`` and PNG plots. The whole grid is checked before the model loads; an existing CSV is kept
unless ``--append`` (add rows) or ``--force`` (overwrite) is given. A progress bar (stderr) shows the
settings done and the time left.

    python scripts/ablate.py --study all --n 100 --out ablations-tiny --render
    python scripts/ablate.py --model /path/to/LLaDA-8B-Instruct --device cuda --ops triton \\
        --jsonl gsm8k.jsonl --scorer numeric --gen-length 256 --block-length 32 --study steps
    torchrun --nproc_per_node=8 scripts/ablate.py ...same arguments, --problems for --n...   # 8 GPUs (NCCL)

Under ``torchrun`` each rank decodes its share of every setting's batches on ``cuda:LOCAL_RANK`` (gloo on
the CPU) and rank 0 writes the CSV: the same rows as one process, ``seconds`` being the slowest rank's.
"""
from __future__ import annotations

import csv
import datetime
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, fields
from typing import Dict, List, Optional, Sequence, Tuple

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
for _p in (_HERE, _ROOT):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import cliutil  # noqa: E402
from provenance import device_name, git_sha  # noqa: E402

DEFAULT_MODEL = cliutil.DEFAULT_MODEL
STUDIES = ("steps", "remasking", "block_length", "temperature", "cfg", "cache")
CSV_NAME = "ablation.csv"

__all__ = ["RunConfig", "Grid", "GridError", "Tokenizer", "STUDIES", "study_configs", "plan",
           "run_config", "csv_conflict", "main", "cli", "build_parser", "parse_args", "CSV_FIELDS"]


# ------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class RunConfig:
    """One decoding setting (the arguments of ``decode.generate`` that an ablation varies)."""
    gen_length: int
    block_length: int
    steps: int
    remasking: str = "low_confidence"
    threshold: Optional[float] = None
    factor: Optional[float] = None
    temperature: float = 0.0
    cfg_scale: float = 0.0
    cache: str = "none"

    @property
    def policy(self) -> str:
        """The remasking policy as one label: ``low_confidence``, ``random``, ``threshold=0.9``, ``factor=1``."""
        if self.threshold is not None:
            return f"threshold={self.threshold:g}"
        if self.factor is not None:
            return f"factor={self.factor:g}"
        return self.remasking

    def options(self) -> Dict:
        """Keyword arguments of ``decode.generate``."""
        return dict(gen_length=self.gen_length, block_length=self.block_length, steps=self.steps,
                    remasking=self.remasking, threshold=self.threshold, factor=self.factor,
                    temperature=self.temperature, cfg_scale=self.cfg_scale, cache=self.cache)


@dataclass(frozen=True)
class Grid:
    """The values each study sweeps (``None`` fields take defaults derived from ``gen_length``)."""
    gen_length: int = 32
    block_length: Optional[int] = None           # baseline block length (default: gen_length)
    steps: Optional[Sequence[int]] = None        # default: G, G/2, ..., G/16 (multiples of the block count)
    block_lengths: Optional[Sequence[int]] = None  # default: powers of two from 4 to G dividing G
    thresholds: Sequence[float] = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)
    factors: Sequence[float] = (0.5, 1.0, 2.0)
    temperatures: Sequence[float] = (0.0, 0.5, 1.0)
    cfg_scales: Sequence[float] = (0.0, 0.5, 1.0)
    caches: Sequence[str] = ("none", "prefix", "dual", "block")
    cache_block_length: Optional[int] = None      # default: G/4 (several blocks, so caches matter)
    cache_threshold: Optional[float] = 0.9        # cache study also runs this threshold (None: skip)

    def check(self) -> None:
        """Every value in the range ``decode.generate`` accepts; a ``GridError`` names the flag otherwise."""
        from llada_triton.decode import POLICIES

        G = self.gen_length
        ints = [("--gen-length", [G]), ("--block-length", [self.block_length]), ("--steps-list", self.steps),
                ("--block-lengths", self.block_lengths), ("--cache-block-length", [self.cache_block_length])]
        for flag, vals in ints:
            for v in vals or ():
                if v is not None and (not isinstance(v, int) or v < 1):
                    raise GridError(flag, f"{v!r} is not a positive integer")
        for flag, vals, ok, allowed in (
                ("--thresholds", self.thresholds, lambda v: 0 < v <= 1, "in (0, 1]"),
                ("--cache-threshold", [self.cache_threshold] if self.cache_threshold is not None else [],
                 lambda v: 0 < v <= 1, "in (0, 1]"),
                ("--factors", self.factors, lambda v: v > 0, "> 0"),
                ("--temperatures", self.temperatures, lambda v: v >= 0, ">= 0"),
                ("--cfg-scales", self.cfg_scales, lambda v: v >= 0, ">= 0")):
            bad = [v for v in vals if not ok(float(v))]
            if bad:
                raise GridError(flag, f"{bad[0]:g} is not {allowed}")
        bad = [c for c in self.caches if c not in POLICIES]
        if bad:
            raise GridError("--caches", f"{bad[0]!r} is not a cache policy; choose from {', '.join(POLICIES)}")


class GridError(ValueError):
    """A grid value outside what ``decode.generate`` accepts, naming the command-line flag."""

    def __init__(self, flag: str, message: str):
        super().__init__(f"{flag}: {message}")
        self.flag, self.message = flag, message


def _divisors_pow2(g: int, lo: int = 4) -> List[int]:
    out = [b for b in (2 ** i for i in range(0, 16)) if lo <= b <= g and g % b == 0]
    return out or [g]


def study_configs(study: str, grid: Grid) -> List[RunConfig]:
    """The settings of one study, baseline first."""
    G = grid.gen_length
    Lb = grid.block_length or G
    if G % Lb:
        raise GridError("--block-length", f"{Lb} does not divide --gen-length {G}")
    nb = G // Lb
    base = RunConfig(gen_length=G, block_length=Lb, steps=G)
    if study == "steps":
        halvings = (G, G // 2, G // 4, G // 8, G // 16)
        steps = grid.steps or list(dict.fromkeys(s for s in halvings if s >= nb and s % nb == 0))
        bad = [s for s in steps if s < 1 or s % nb]
        if bad:
            raise GridError("--steps-list", f"{bad[0]} is not a multiple of the block count {nb} "
                                            f"(--gen-length {G} / --block-length {Lb})")
        return [RunConfig(G, Lb, s, remasking=r) for r in ("low_confidence", "random") for s in steps]
    if study == "remasking":
        return ([base, RunConfig(G, Lb, G, remasking="random")]
                + [RunConfig(G, Lb, G, threshold=float(t)) for t in grid.thresholds]
                + [RunConfig(G, Lb, G, factor=float(f)) for f in grid.factors])
    if study == "block_length":
        bls = grid.block_lengths or _divisors_pow2(G)
        bad = [b for b in bls if G % b]
        if bad:
            raise GridError("--block-lengths", f"{bad[0]} does not divide --gen-length {G}")
        return [RunConfig(G, int(b), G) for b in bls]
    if study == "temperature":
        return [RunConfig(G, Lb, G, temperature=float(t)) for t in grid.temperatures]
    if study == "cfg":
        return [RunConfig(G, Lb, G, cfg_scale=float(c)) for c in grid.cfg_scales]
    if study == "cache":
        cb = grid.cache_block_length or max(1, G // 4)
        if G % cb:
            raise GridError("--cache-block-length", f"{cb} does not divide --gen-length {G}")
        out = [RunConfig(G, cb, G, cache=c) for c in grid.caches]
        if grid.cache_threshold is not None:
            out += [RunConfig(G, cb, G, threshold=float(grid.cache_threshold), cache=c) for c in grid.caches]
        return out
    raise ValueError(f"unknown study {study!r}; choose from {STUDIES} or 'all'")


def plan(studies: Sequence[str], grid: Grid) -> Tuple[List[RunConfig], List[Tuple[str, RunConfig]]]:
    """``(unique settings in run order, [(study, setting)] in report order)``; checks the whole grid first."""
    grid.check()
    pairs = [(s, c) for s in studies for c in study_configs(s, grid)]
    unique: List[RunConfig] = []
    for _, c in pairs:
        if c not in unique:
            unique.append(c)
    return unique, pairs


# ----------------------------------------------------------------------------------------- tokenizer
class Tokenizer:
    """Prompt ids and answer text for a checkpoint: its own tokenizer when it ships one, else the
    project's character tokenizer (``scripts/tiny_tokenizer.py``), whose ids are checked to fit the vocab.
    Encodings are memoised (every setting of an ablation decodes the same prompts)."""

    def __init__(self, path: str, cfg, chat_template: bool = True):
        from llada_triton.models import chat

        self._chat = chat
        self.fallback = not os.path.isfile(os.path.join(path, "tokenizer.json")) and \
            not os.path.isfile(os.path.join(path, "tokenizer.model"))
        if self.fallback:
            import tiny_tokenizer

            self.tok = tiny_tokenizer.build_tokenizer()
        else:  # by the class tokenizer_config.json names: transformers then never reads the model's config.json
            self.tok = chat.load_tokenizer(path)
        self.chat_template = chat_template and getattr(self.tok, "chat_template", None) is not None
        self.cfg = cfg
        self._ids: Dict[str, List[int]] = {}

    def encode(self, text: str) -> List[int]:
        if text in self._ids:
            return self._ids[text]
        ids = self._chat.chat_prompt_ids(self.tok, text, chat_template=self.chat_template)
        if self.fallback:  # keep the character ids inside the model vocabulary and off the mask id
            bad = [i for i in ids if i >= self.cfg.vocab_size or i == self.cfg.mask_token_id]
            if bad:
                raise ValueError(f"fallback tokenizer ids {bad[:4]} do not fit this checkpoint's vocabulary")
        self._ids[text] = ids
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        ids = self._chat.strip_answer(ids, self.cfg)
        if self.fallback:
            ids = [i for i in ids if i < len(self.tok)]
        return self.tok.decode(ids, skip_special_tokens=True)


# --------------------------------------------------------------------------------------------- runs
def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def run_config(params, cfg, tok: Tokenizer, problems: Dict[str, list], rc: RunConfig, *, scorer: str,
               batch_size: int, ops, seed: int, workspace=None, cuda_graphs: bool = False,
               warmup: bool = False, dist=None) -> List[Dict]:
    """Decode every problem with ``rc``; one result dict per task (accuracy, NFE, seconds, tokens/s).

    Prompts of a task are sorted by length and decoded in batches of ``batch_size`` (``generate`` left-pads
    each batch); ``warmup`` decodes the first batch once untimed (Triton compilation, CUDA-graph capture).
    With ``dist`` (a :class:`llada_triton.eval.Dist` of several ranks) each rank decodes its share of the
    batches and every rank gets all results (the same as one process: a batch's tokens do not depend on the
    rank); ``seconds`` is then the slowest rank's."""
    import tasks as tasks_mod
    from llada_triton.decode.generate import generate
    from llada_triton.eval.distributed import Dist, gather_results, shard_indices

    dist = dist or Dist()

    fn = tasks_mod.SCORERS[scorer]
    out = []
    for name, probs in problems.items():
        ids = [tok.encode(p.prompt) for p in probs]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
        costs = [sum(len(ids[i]) for i in b) for b in batches]
        batches = [batches[j] for j in shard_indices(len(batches), dist, costs, allow_idle=True)]
        kw = dict(rc.options(), ops=ops, seed=seed, workspace=workspace, cuda_graphs=cuda_graphs)
        if warmup and batches:
            generate(params, cfg, [ids[i] for i in batches[0]], **kw)
        preds: List[Optional[str]] = [None] * len(ids)
        nfe = [0] * len(ids)
        seconds = 0.0
        for idx in batches:
            _sync(params.device)
            t0 = time.perf_counter()
            res = generate(params, cfg, [ids[i] for i in idx], **kw)
            _sync(params.device)
            seconds += time.perf_counter() - t0
            toks = res.tokens.cpu().tolist()
            for row, i in enumerate(idx):
                preds[i] = tok.decode(toks[row])
                nfe[i] = int(res.nfe[row])
        if dist.world_size > 1:  # one unit per rank: its predictions, NFE and time
            done = [i for b in batches for i in b]
            parts = gather_results([dist.rank], [([(i, preds[i], nfe[i]) for i in done], seconds)],
                                   dist.world_size, dist)
            seconds = max(sec for _, sec in parts)
            for rows, _ in parts:
                for i, pr, nf in rows:
                    preds[i], nfe[i] = pr, nf
        ok = [bool(fn(pr, p.answer)) for pr, p in zip(preds, probs)]
        out.append({"task": name, "n": len(probs), "correct": sum(ok), "nfe_sum": sum(nfe), "seconds": seconds,
                    "examples": [(p.prompt, p.answer, pr) for p, pr in zip(probs[:3], preds[:3])]})
    return out


CSV_FIELDS = ["study", "policy", "task", "n", "correct", "accuracy", "nfe", "nfe_per_token", "seconds",
              "tokens_per_s"] + [f.name for f in fields(RunConfig)] + [
              "seed", "batch_size", "scorer", "model", "dtype", "ops", "device", "device_name", "torch", "triton",
              "python", "git_sha", "timestamp"]


def _rows(study: str, rc: RunConfig, results: List[Dict], meta: Dict) -> List[Dict]:
    def row(task, n, correct, nfe_sum, seconds):
        return {"study": study, "policy": rc.policy, "task": task, "n": n, "correct": correct,
                "accuracy": round(correct / max(1, n), 5), "nfe": round(nfe_sum / max(1, n), 3),
                "nfe_per_token": round(nfe_sum / max(1, n) / rc.gen_length, 4), "seconds": round(seconds, 3),
                "tokens_per_s": round(n * rc.gen_length / seconds, 2) if seconds > 0 else "",
                **asdict(rc), **meta}

    rows = [row(r["task"], r["n"], r["correct"], r["nfe_sum"], r["seconds"]) for r in results]
    if len(results) > 1:
        rows.append(row("all", sum(r["n"] for r in results), sum(r["correct"] for r in results),
                        sum(r["nfe_sum"] for r in results), sum(r["seconds"] for r in results)))
    for r in rows:  # CSV: None -> empty cell
        for k, v in r.items():
            if v is None:
                r[k] = ""
    return rows


def _version(pkg: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return ""


# --------------------------------------------------------------------------------------------- main
class PromptError(ValueError):
    """A problem's prompt that the checkpoint's tokenizer cannot encode."""


def csv_conflict(out: str, append: bool, force: bool) -> Optional[str]:
    """Why writing ``<out>/ablation.csv`` would destroy results (None when it would not)."""
    path = os.path.join(out, CSV_NAME)
    if os.path.exists(path) and not (append or force):
        return f"{path!r} exists; give --append to add rows to it or --force to overwrite it"
    if append and force:
        return "give --append or --force, not both"
    return None


def main(model: str = DEFAULT_MODEL, study: Sequence[str] = ("all",), n: int = 100, seed: int = 0,
         tasks: Optional[Sequence[str]] = None, jsonl: Optional[str] = None, scorer: str = "exact",
         device: str = "cpu", dtype: Optional[str] = None, ops: str = "reference", batch_size: int = 128,
         out: str = os.path.join("results", "ablations", "latest"), append: bool = False, render: bool = False,
         grid: Optional[Grid] = None, chat_template: bool = True, cuda_graphs: Optional[bool] = None,
         warmup: Optional[bool] = None, threads: Optional[int] = None, quiet: bool = False,
         force: bool = False) -> List[Dict]:
    """Run the selected studies and write ``<out>/ablation.csv``; returns the rows. Everything that can be
    checked without the model (studies, grid, scorer, ops, the CSV) is checked before it loads."""
    import torch

    import tasks as tasks_mod

    studies = list(STUDIES) if "all" in study else list(dict.fromkeys(study))
    for s in studies:
        if s not in STUDIES:
            raise ValueError(f"unknown study {s!r}; choose from {STUDIES} or 'all'")
    if scorer not in tasks_mod.SCORERS:
        raise ValueError(f"unknown scorer {scorer!r}; choose from {sorted(tasks_mod.SCORERS)}")
    unique, pairs = plan(studies, grid or Grid())
    problem = cliutil.triton_ops_problem(device) if ops == "triton" else None
    if problem:
        raise ValueError(f"ops='triton': {problem}")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but no CUDA device is visible")
    conflict = csv_conflict(out, append, force)
    if conflict:
        raise FileExistsError(conflict)
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _main(model, studies, unique, pairs, n, seed, tasks, jsonl, scorer, device, dtype, ops, batch_size,
                     out, append, render, chat_template, cuda_graphs, warmup, quiet)
    finally:
        torch.set_num_threads(old_threads)
        if torch.distributed.is_available() and torch.distributed.is_initialized():  # joined under torchrun
            torch.distributed.destroy_process_group()


def _encode_all(tok: Tokenizer, problems: Dict[str, list]) -> None:
    """Encode every prompt once before the first forward (memoised), so a bad prompt fails early."""
    for name, probs in problems.items():
        for k, p in enumerate(probs):
            try:
                tok.encode(p.prompt)
            except ValueError as e:
                raise PromptError(f"problem {k} of {name!r} ({p.prompt!r}): {e}") from None


def _progress_line(k: int, total: int, rc: RunConfig, res: List[Dict]) -> str:
    n_all = sum(r["n"] for r in res)
    acc = sum(r["correct"] for r in res) / max(1, n_all)
    nfe = sum(r["nfe_sum"] for r in res) / max(1, n_all)
    sec = sum(r["seconds"] for r in res)
    return (f"[ablate] {k + 1}/{total} {rc.policy:>16} steps={rc.steps:<4} block={rc.block_length:<4} "
            f"T={rc.temperature:g} cfg={rc.cfg_scale:g} cache={rc.cache:<6} acc={acc:.3f} nfe={nfe:.1f} {sec:.1f}s")


def _main(model, studies, unique, pairs, n, seed, tasks, jsonl, scorer, device, dtype, ops, batch_size, out, append,
          render, chat_template, cuda_graphs, warmup, quiet) -> List[Dict]:
    import torch
    from tqdm.auto import tqdm

    import tasks as tasks_mod
    from llada_triton.decode.generate import Workspace
    from llada_triton.models import REFERENCE_OPS, LLaDAConfig, load_params, triton_ops

    problems = tasks_mod.load_problems(jsonl, tasks or tuple(tasks_mod.TASKS), n, seed)
    cfg = LLaDAConfig.from_pretrained(model)
    tok = Tokenizer(model, cfg, chat_template)
    _encode_all(tok, problems)
    from llada_triton.eval.distributed import init_distributed

    dist = init_distributed(device)  # under torchrun: this rank's device and process group
    quiet = quiet or not dist.is_main
    tdtype = getattr(torch, dtype) if dtype else (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    params = load_params(model, cfg, device=dist.device, dtype=tdtype)
    op_impl = triton_ops() if ops == "triton" else REFERENCE_OPS
    cuda = params.device.type == "cuda"
    cuda_graphs = cuda if cuda_graphs is None else cuda_graphs
    warmup = (cuda or ops == "triton") if warmup is None else warmup
    meta = {"seed": seed, "batch_size": batch_size, "scorer": scorer, "model": os.path.relpath(model, _ROOT)
            if os.path.abspath(model).startswith(_ROOT + os.sep) else model,
            "dtype": str(params.dtype).replace("torch.", ""),
            "ops": op_impl.name, "device": str(params.device), "device_name": device_name(str(params.device)),
            "torch": torch.__version__, "triton": _version("triton"), "python": platform.python_version(),
            "git_sha": git_sha(short=False), "timestamp": datetime.datetime.now().isoformat(timespec="seconds")}
    if not quiet:
        print(f"[ablate] {len(unique)} settings for studies {studies}; tasks "
              f"{ {k: len(v) for k, v in problems.items()} }; {meta['device_name']}, ops={ops}", flush=True)

    if unique and not warmup:  # one-off library initialisation outside the timed calls (one prompt)
        from llada_triton.decode.generate import generate

        first = next(iter(problems.values()))[:1]
        if first:
            generate(params, cfg, [tok.encode(first[0].prompt)], **unique[0].options(), ops=op_impl, seed=seed)
    results: Dict[RunConfig, List[Dict]] = {}
    bar = tqdm(unique, desc="[ablate] settings", unit="setting", disable=quiet, file=sys.stderr, dynamic_ncols=True)
    for k, rc in enumerate(bar):
        ws = Workspace()  # buffers (and CUDA graphs) shared by the batches of one setting
        results[rc] = run_config(params, cfg, tok, problems, rc, scorer=scorer, batch_size=batch_size, ops=op_impl,
                                 seed=seed, workspace=ws, cuda_graphs=cuda_graphs, warmup=warmup, dist=dist)
        if not quiet:
            bar.write(_progress_line(k, len(unique), rc, results[rc]), file=sys.stdout)
    bar.close()
    rows = [r for s, rc in pairs for r in _rows(s, rc, results[rc], meta)]
    if not dist.is_main:  # rank 0 writes (every rank holds the same rows)
        return rows
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, CSV_NAME)
    new = not (append and os.path.isfile(path))
    with open(path, "w" if new else "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        if new:
            w.writeheader()
        w.writerows(rows)
    if not quiet:
        print(f"[ablate] wrote {len(rows)} rows to {path}", flush=True)
    if render:
        import report

        md = report.render(path, out)
        if not quiet:
            print(f"[ablate] rendered {md}", flush=True)
    return rows


def build_parser() -> cliutil.ArgumentParser:
    import tasks as tasks_mod

    ap = cliutil.ArgumentParser(prog=os.path.basename(__file__), description=__doc__)
    ap.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint folder (default: the shipped tiny model)")
    ap.add_argument("--study", type=cliutil.name_list(STUDIES + ("all",)), default=("all",),
                    help=f"comma-separated studies: {'|'.join(STUDIES)}|all (default all)")
    ap.add_argument("--n", "--problems", dest="n", type=cliutil.nonneg_int, default=100,
                    help="held-out problems per task (JSONL: first n; 0 = all); under torchrun write --problems "
                         "(torchrun takes --n for an abbreviation of its own options)")
    ap.add_argument("--seed", type=int, default=0, help="problem set, random remasking and sampling seed")
    ap.add_argument("--tasks", type=cliutil.name_list(tuple(tasks_mod.TASKS)),
                    help="comma-separated built-in tasks (default: all)")
    ap.add_argument("--jsonl", help="{prompt, answer} records instead of the built-in tasks")
    ap.add_argument("--scorer", default="exact", choices=sorted(tasks_mod.SCORERS),
                    help="exact | numeric (last number, GSM8K style)")
    cliutil.add_device_args(ap)
    ap.add_argument("--batch-size", type=cliutil.positive_int, default=128)
    ap.add_argument("--out", default=os.path.join("results", "ablations", "latest"),
                    help="results folder (relative to the current directory)")
    ap.add_argument("--append", action="store_true", help="append to an existing ablation.csv")
    ap.add_argument("--force", action="store_true", help="overwrite an existing ablation.csv")
    ap.add_argument("--render", action="store_true", help="also write report.md and PNGs (scripts/report.py)")
    ap.add_argument("--no-chat-template", action="store_true", help="feed raw prompt text")
    ap.add_argument("--cuda-graphs", dest="cuda_graphs", action="store_true", default=None)
    ap.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                    help="default: graphs on CUDA (static steps only), never on CPU")
    ap.add_argument("--warmup", dest="warmup", action="store_true", default=None,
                    help="decode the first batch once untimed (default: on CUDA or with --ops triton)")
    ap.add_argument("--no-warmup", dest="warmup", action="store_false")
    ap.add_argument("--threads", type=cliutil.positive_int, help="torch CPU threads")
    ap.add_argument("--quiet", action="store_true", help="no progress bar or per-setting lines")
    g = ap.add_argument_group("grid (comma-separated values, '' for none; defaults derive from --gen-length)")
    g.add_argument("--gen-length", type=cliutil.positive_int, default=32)
    g.add_argument("--block-length", type=cliutil.positive_int, help="baseline block length (default: gen length)")
    g.add_argument("--steps-list", type=_or_empty(cliutil.int_list),
                   help="steps study: total steps (default G,G/2,G/4,G/8,G/16)")
    g.add_argument("--block-lengths", type=_or_empty(cliutil.int_list),
                   help="block_length study (default 4..G, powers of two)")
    g.add_argument("--thresholds", type=_or_empty(cliutil.float_list), default=Grid.thresholds, help="in (0, 1]")
    g.add_argument("--factors", type=_or_empty(cliutil.float_list), default=Grid.factors, help="> 0")
    g.add_argument("--temperatures", type=_or_empty(cliutil.float_list), default=Grid.temperatures, help=">= 0")
    g.add_argument("--cfg-scales", type=_or_empty(cliutil.float_list), default=Grid.cfg_scales, help=">= 0")
    g.add_argument("--caches", type=_or_empty(cliutil.name_list(("none", "prefix", "dual", "block"))),
                   default=Grid.caches, help="cache policies of the cache study")
    g.add_argument("--cache-block-length", type=cliutil.positive_int,
                   help="block length of the cache study (default G/4)")
    g.add_argument("--cache-threshold", type=float, default=0.9,
                   help="the cache study also runs this threshold rule, in (0, 1] (<= 0: skip)")
    return ap


def _or_empty(parse):
    def f(s: str) -> tuple:
        return () if not s.strip() else parse(s)
    return f


def parse_args(argv=None, ap: Optional[cliutil.ArgumentParser] = None) -> Dict:
    """Keyword arguments of :func:`main`. Every check that needs no model weights runs here (one-line errors,
    exit status 2): device and ops, the checkpoint's config, the whole grid, the JSONL file, the CSV."""
    ap = ap or build_parser()
    a = ap.parse_args(argv)
    grid = Grid(gen_length=a.gen_length, block_length=a.block_length, steps=a.steps_list or None,
                block_lengths=a.block_lengths or None, thresholds=a.thresholds, factors=a.factors,
                temperatures=a.temperatures, cfg_scales=a.cfg_scales, caches=a.caches,
                cache_block_length=a.cache_block_length,
                cache_threshold=a.cache_threshold if a.cache_threshold > 0 else None)
    try:
        plan(STUDIES if "all" in a.study else a.study, grid)
    except GridError as e:
        ap.fail(e.flag, e.message)
    cliutil.check_problems(ap, a.jsonl, a.n, a.seed)
    device = cliutil.check_device(ap, a.device, a.ops)
    cliutil.check_model(ap, a.model)
    conflict = csv_conflict(a.out, a.append, a.force)
    if conflict:
        ap.fail("--force" if a.append and a.force else "--out", conflict)
    return dict(model=a.model, study=a.study, n=a.n, seed=a.seed, tasks=a.tasks, jsonl=a.jsonl,
                scorer=a.scorer, device=device, dtype=a.dtype, ops=a.ops, batch_size=a.batch_size, out=a.out,
                append=a.append, force=a.force, render=a.render, grid=grid, chat_template=not a.no_chat_template,
                cuda_graphs=a.cuda_graphs, warmup=a.warmup, threads=a.threads, quiet=a.quiet)


def cli(argv=None) -> List[Dict]:
    """The command line: checks, then :func:`main`; prompts the tokenizer cannot encode and unreadable
    weights are one-line errors too."""
    from llada_triton.models import WeightError

    ap = build_parser()
    kw = parse_args(argv, ap)
    try:
        return main(**kw)
    except PromptError as e:
        ap.fail("--jsonl" if kw["jsonl"] else "--tasks", str(e))
    except WeightError as e:
        ap.fail("--model", f"{kw['model']!r}: {e}")


if __name__ == "__main__":
    cli()
