"""Held-out accuracy of a checkpoint on the synthetic tasks (or a JSONL file), decoded with
``llada_triton.decode.generate``.

Defaults follow the LLaDA evaluation recipe for short answers: ``gen_length`` = the training answer
length (32), one block of 32, ``steps = gen_length`` (one token per step), low-confidence remasking,
temperature 0. Prompts go through the checkpoint's own tokenizer and chat template; an answer is the
generated text up to the first eos / ``<|eot_id|>``, special tokens dropped. A progress bar (stderr)
shows problems done and the time left; ``--quiet`` hides it.

    python scripts/eval_tasks.py --n 100                    # the shipped tiny model, 100 problems per task
    python scripts/eval_tasks.py --model /path/to/checkpoint --jsonl problems.jsonl --scorer numeric
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from typing import Dict, List, Optional, Sequence

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
for _p in (_HERE, _ROOT):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import torch  # noqa: E402

import cliutil  # noqa: E402
import tasks as tasks_mod  # noqa: E402
from llada_triton.decode import generate  # noqa: E402
from llada_triton.models import REFERENCE_OPS, LLaDAConfig, Params, load_model as _load, triton_ops  # noqa: E402
from llada_triton.models import chat  # noqa: E402
from llada_triton.models.chat import load_tokenizer  # noqa: E402

__all__ = ["load_model", "load_tokenizer", "prompt_ids", "answer_text", "predict", "evaluate", "format_table", "main"]

GEN_LENGTH = 32


def load_model(model: str, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """``(params, cfg, tokenizer)`` from a checkpoint folder (strict load; the tokenizer is loaded by the class
    its ``tokenizer_config.json`` names, so transformers never reads the model's config.json)."""
    params, cfg = _load(model, device=device, dtype=dtype)
    return params, cfg, load_tokenizer(model)


def prompt_ids(tokenizer, text: str) -> List[int]:
    """Chat-template ids of one user turn (the template supplies the bos; no other specials added)."""
    return chat.chat_prompt_ids(tokenizer, text)


def answer_text(tokenizer, ids: Sequence[int], cfg: LLaDAConfig) -> str:
    """Text of ``ids`` up to the first end token (eos or eot), special tokens dropped."""
    return chat.decode_answer(tokenizer, ids, cfg)


def predict(params: Params, cfg: LLaDAConfig, tokenizer, prompts: Sequence[str], *, gen_length: int = GEN_LENGTH,
            block_length: int = 32, steps: Optional[int] = None, batch_size: int = 256, progress=None,
            **options) -> List[str]:
    """Decoded answers for ``prompts`` (batched; prompts are sorted by length to limit padding).
    ``progress``: a tqdm bar advanced by the problems of each batch."""
    steps = gen_length if steps is None else steps
    block_length = min(block_length, gen_length)
    ids = [prompt_ids(tokenizer, p) for p in prompts]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: List[Optional[str]] = [None] * len(ids)
    options.setdefault("remasking", "low_confidence")
    options.setdefault("temperature", 0.0)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        res = generate(params, cfg, [ids[i] for i in idx], gen_length=gen_length, block_length=block_length,
                       steps=steps, **options)
        for row, i in enumerate(idx):
            out[i] = answer_text(tokenizer, res.tokens[row].tolist(), cfg)
        if progress is not None:
            progress.update(len(idx))
    return out  # type: ignore[return-value]


def evaluate(params: Params, cfg: LLaDAConfig, tokenizer, problems: Dict[str, Sequence[tasks_mod.Problem]], *,
             scorer: str = "exact", progress: bool = False, **kwargs) -> List[Dict]:
    """One row per task: n, correct, accuracy, seconds, and up to 5 failures. ``progress``: a tqdm bar on
    stderr over all problems (with the time left)."""
    from tqdm.auto import tqdm

    fn = tasks_mod.SCORERS[scorer]
    rows = []
    bar = tqdm(total=sum(len(v) for v in problems.values()), unit="problem", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    for name, probs in problems.items():
        bar.set_description(name)
        t0 = time.perf_counter()
        preds = predict(params, cfg, tokenizer, [p.prompt for p in probs], progress=bar, **kwargs)
        if params.device.type == "cuda":
            torch.cuda.synchronize()
        ok = [fn(pr, p.answer) for pr, p in zip(preds, probs)]
        rows.append({"task": name, "n": len(probs), "correct": sum(ok), "accuracy": sum(ok) / max(1, len(probs)),
                     "seconds": round(time.perf_counter() - t0, 2),
                     "failures": [{"prompt": p.prompt, "answer": p.answer, "prediction": pr}
                                  for pr, p, k in zip(preds, probs, ok) if not k][:5]})
    bar.close()
    return rows


def format_table(rows: Sequence[Dict]) -> str:
    lines = ["| task | n | correct | exact match |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['n']} | {r['correct']} | {100 * r['accuracy']:.1f}% |")
    return "\n".join(lines)


def _env(device: str) -> Dict:
    from provenance import device_name, git_sha

    return {"device": device_name(device), "torch": torch.__version__, "python": platform.python_version(),
            "git_sha": git_sha(short=False)}


def append_csv(path: str, rows: List[Dict]) -> None:
    """Append ``rows`` to ``path`` under its existing header (a new file gets the rows' keys); columns the
    file lacks are dropped with a note on stderr."""
    fields = [k for k in rows[0] if k != "failures"]
    if os.path.isfile(path) and os.path.getsize(path):
        with open(path, newline="") as f:
            header = next(csv.reader(f))
        dropped = [k for k in fields if k not in header]
        if dropped:
            print(f"[eval_tasks] {path} has no columns {dropped}; not recorded there", file=sys.stderr)
        fields, new = header, False
    else:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        new = True
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore", restval="")
        if new:
            w.writeheader()
        w.writerows(rows)


def main(model: str = cliutil.DEFAULT_MODEL, n: int = 500, seed: int = 0, device: str = "cpu",
         dtype: Optional[str] = None, batch_size: int = 256, tasks: Sequence[str] = tuple(tasks_mod.TASKS),
         jsonl: Optional[str] = None, scorer: str = "exact", gen_length: int = GEN_LENGTH, block_length: int = 32,
         steps: Optional[int] = None, write_json: Optional[str] = None, results_csv: Optional[str] = None,
         threads: Optional[int] = None, ops: str = "reference", progress: bool = False) -> Dict:
    """Evaluate ``model`` and print the table; ``dtype`` None: bfloat16 on CUDA, float32 on CPU."""
    if ops == "triton" and cliutil.triton_ops_problem(device):
        raise ValueError(f"ops='triton': {cliutil.triton_ops_problem(device)}")
    if threads:
        torch.set_num_threads(threads)
    problems = tasks_mod.load_problems(jsonl, tasks, n, seed)
    params, cfg, tok = load_model(model, device, getattr(torch, dtype) if dtype else None)
    steps = gen_length if steps is None else steps
    rows = evaluate(params, cfg, tok, problems, scorer=scorer, gen_length=gen_length, block_length=block_length,
                    steps=steps, batch_size=batch_size, progress=progress,
                    ops=triton_ops() if ops == "triton" else REFERENCE_OPS)
    setting = {"checkpoint": model, "dtype": str(params.dtype).replace("torch.", ""), "ops": ops,
               "gen_length": gen_length, "block_length": min(block_length, gen_length), "steps": steps,
               "remasking": "low_confidence", "temperature": 0.0, "scorer": scorer,
               "split": "heldout" if not jsonl else jsonl, "seed": seed, **_env(device)}
    print(f"[eval_tasks] {json.dumps(setting)}")
    print(format_table(rows), flush=True)
    result = {"setting": setting, "rows": rows}
    if write_json:
        with open(write_json, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
    if results_csv:
        append_csv(results_csv, [{**r, **setting} for r in rows])
    return result


def build_parser() -> cliutil.ArgumentParser:
    ap = cliutil.ArgumentParser(prog=os.path.basename(__file__), description=__doc__)
    ap.add_argument("--model", default=cliutil.DEFAULT_MODEL,
                    help="checkpoint folder (default: the shipped tiny model)")
    ap.add_argument("--checkpoint", help=argparse.SUPPRESS)  # the old name of --model
    ap.add_argument("--n", type=cliutil.nonneg_int, default=500,
                    help="held-out problems per task (JSONL: first n, 0 = all)")
    ap.add_argument("--seed", type=int, default=0)
    cliutil.add_device_args(ap)
    ap.add_argument("--batch-size", type=cliutil.positive_int, default=256)
    ap.add_argument("--tasks", type=cliutil.name_list(tuple(tasks_mod.TASKS)), default=tuple(tasks_mod.TASKS),
                    help=f"comma-separated built-in tasks (default: {','.join(tasks_mod.TASKS)})")
    ap.add_argument("--jsonl", help="evaluate {prompt, answer} records instead of the built-in tasks")
    ap.add_argument("--scorer", default="exact", choices=sorted(tasks_mod.SCORERS))
    ap.add_argument("--gen-length", type=cliutil.positive_int, default=GEN_LENGTH)
    ap.add_argument("--block-length", type=cliutil.positive_int, default=32,
                    help="block length (capped at --gen-length; must divide it)")
    ap.add_argument("--steps", type=cliutil.positive_int, help="default: gen_length (one token per step)")
    ap.add_argument("--json-out", dest="write_json", help="write the table and setting as JSON here")
    ap.add_argument("--csv", dest="results_csv", help="append one row per task to this CSV")
    ap.add_argument("--threads", type=cliutil.positive_int, help="torch CPU threads")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def parse_args(argv=None) -> Dict:
    """Keyword arguments of :func:`main`, checked (one-line errors, exit status 2) before anything loads."""
    ap = build_parser()
    a = ap.parse_args(argv)
    if a.checkpoint is not None:
        if a.model != cliutil.DEFAULT_MODEL:
            ap.fail("--checkpoint", "is the old name of --model; give only --model")
        print("eval_tasks.py: --checkpoint is deprecated; use --model", file=sys.stderr)
        a.model = a.checkpoint
    cliutil.check_problems(ap, a.jsonl, a.n, a.seed)
    cliutil.check_schedule(ap, a.gen_length, min(a.block_length, a.gen_length), a.steps or a.gen_length)
    device = cliutil.check_device(ap, a.device, a.ops)
    cliutil.check_model(ap, a.model)
    return dict(model=a.model, n=a.n, seed=a.seed, device=device, dtype=a.dtype, batch_size=a.batch_size,
                tasks=a.tasks, jsonl=a.jsonl, scorer=a.scorer, gen_length=a.gen_length, block_length=a.block_length,
                steps=a.steps, write_json=a.write_json, results_csv=a.results_csv, threads=a.threads, ops=a.ops,
                progress=not a.quiet)


if __name__ == "__main__":
    main(**parse_args())
