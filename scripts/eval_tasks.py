"""Held-out accuracy of a checkpoint on the synthetic tasks (or a JSONL file), decoded with
``decode.generate.generate``.

Defaults follow the LLaDA evaluation recipe for short answers: ``gen_length`` = the training answer
length (32), one block of 32, ``steps = gen_length`` (one token per step), low-confidence remasking,
temperature 0. Prompts go through the checkpoint's own tokenizer and chat template; an answer is the
generated text up to the first eos / ``<|eot_id|>``, special tokens dropped.

    python scripts/eval_tasks.py --checkpoint checkpoints/llada-tiny-tasks --n 500
    python scripts/eval_tasks.py --checkpoint DIR --jsonl problems.jsonl --scorer numeric
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

import tasks as tasks_mod  # noqa: E402
from llada_triton.decode.generate import generate  # noqa: E402
from llada_triton.models import chat  # noqa: E402
from llada_triton.models.config import LLaDAConfig  # noqa: E402
from llada_triton.models.weights import Params, load_params  # noqa: E402

__all__ = ["load_model", "load_tokenizer", "prompt_ids", "answer_text", "predict", "evaluate", "format_table", "main"]

GEN_LENGTH = 32


def load_model(checkpoint: str, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """``(params, cfg, tokenizer)`` from a checkpoint folder (strict load)."""
    cfg = LLaDAConfig.from_pretrained(checkpoint)
    params = load_params(checkpoint, cfg, device=device, dtype=dtype)
    return params, cfg, load_tokenizer(checkpoint)


def load_tokenizer(checkpoint: str):
    """``AutoTokenizer`` offline. ``trust_remote_code=False`` because config.json carries LLaDA's
    ``auto_map`` (remote code that is not shipped): without it transformers asks on stdin."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(checkpoint, local_files_only=True, trust_remote_code=False)


def prompt_ids(tokenizer, text: str) -> List[int]:
    """Chat-template ids of one user turn (the template supplies the bos; no other specials added)."""
    return chat.chat_prompt_ids(tokenizer, text)


def answer_text(tokenizer, ids: Sequence[int], cfg: LLaDAConfig) -> str:
    """Text of ``ids`` up to the first end token (eos or eot), special tokens dropped."""
    return chat.decode_answer(tokenizer, ids, cfg)


def predict(params: Params, cfg: LLaDAConfig, tokenizer, prompts: Sequence[str], *, gen_length: int = GEN_LENGTH,
            block_length: int = 32, steps: Optional[int] = None, batch_size: int = 256, **options) -> List[str]:
    """Decoded answers for ``prompts`` (batched; prompts are sorted by length to limit padding)."""
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
    return out  # type: ignore[return-value]


def evaluate(params: Params, cfg: LLaDAConfig, tokenizer, problems: Dict[str, Sequence[tasks_mod.Problem]], *,
             scorer: str = "exact", **kwargs) -> List[Dict]:
    """One row per task: n, correct, accuracy, seconds, and up to 5 failures."""
    fn = tasks_mod.SCORERS[scorer]
    rows = []
    for name, probs in problems.items():
        t0 = time.perf_counter()
        preds = predict(params, cfg, tokenizer, [p.prompt for p in probs], **kwargs)
        if params.device.type == "cuda":
            torch.cuda.synchronize()
        ok = [fn(pr, p.answer) for pr, p in zip(preds, probs)]
        rows.append({"task": name, "n": len(probs), "correct": sum(ok), "accuracy": sum(ok) / max(1, len(probs)),
                     "seconds": round(time.perf_counter() - t0, 2),
                     "failures": [{"prompt": p.prompt, "answer": p.answer, "prediction": pr}
                                  for pr, p, k in zip(preds, probs, ok) if not k][:5]})
    return rows


def format_table(rows: Sequence[Dict]) -> str:
    lines = ["| task | n | correct | exact match |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['n']} | {r['correct']} | {100 * r['accuracy']:.1f}% |")
    return "\n".join(lines)


def _env(device: str) -> Dict:
    from provenance import git_sha
    from train_tiny import device_name

    return {"device": device_name(device), "torch": torch.__version__, "python": platform.python_version(),
            "git_sha": git_sha(short=False)}


def main(checkpoint: str = "checkpoints/llada-tiny-tasks", n: int = 500, seed: int = 0, device: str = "cpu",
         dtype: str = "float32", batch_size: int = 256, tasks: Sequence[str] = tuple(tasks_mod.TASKS),
         jsonl: Optional[str] = None, scorer: str = "exact", gen_length: int = GEN_LENGTH, block_length: int = 32,
         steps: Optional[int] = None, write_json: Optional[str] = None, results_csv: Optional[str] = None,
         threads: Optional[int] = None) -> Dict:
    if threads:
        torch.set_num_threads(threads)
    params, cfg, tok = load_model(checkpoint, device, getattr(torch, dtype))
    if jsonl:
        problems = {os.path.basename(jsonl): tasks_mod.load_jsonl(jsonl)[:n] if n else tasks_mod.load_jsonl(jsonl)}
    else:
        problems = {t: tasks_mod.heldout_problems(t, n, seed) for t in tasks}
    steps = gen_length if steps is None else steps
    rows = evaluate(params, cfg, tok, problems, scorer=scorer, gen_length=gen_length, block_length=block_length,
                    steps=steps, batch_size=batch_size)
    setting = {"checkpoint": checkpoint, "dtype": dtype, "gen_length": gen_length,
               "block_length": min(block_length, gen_length), "steps": steps, "remasking": "low_confidence",
               "temperature": 0.0, "scorer": scorer, "split": "heldout" if not jsonl else jsonl, "seed": seed,
               **_env(device)}
    print(f"[eval_tasks] {json.dumps(setting)}")
    print(format_table(rows), flush=True)
    result = {"setting": setting, "rows": rows}
    if write_json:
        with open(write_json, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
    if results_csv:
        new = not os.path.isfile(results_csv)
        os.makedirs(os.path.dirname(os.path.abspath(results_csv)), exist_ok=True)
        fields = ["task", "n", "correct", "accuracy", "seconds"] + list(setting)
        with open(results_csv, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            if new:
                w.writeheader()
            for r in rows:
                w.writerow({**r, **setting})
    return result


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="checkpoints/llada-tiny-tasks")
    ap.add_argument("--n", type=int, default=500, help="held-out problems per task (JSONL: first n, 0 = all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--tasks", default=",".join(tasks_mod.TASKS))
    ap.add_argument("--jsonl", help="evaluate {prompt, answer} records instead of the built-in tasks")
    ap.add_argument("--scorer", default="exact", choices=sorted(tasks_mod.SCORERS))
    ap.add_argument("--gen-length", type=int, default=GEN_LENGTH)
    ap.add_argument("--block-length", type=int, default=32)
    ap.add_argument("--steps", type=int, help="default: gen_length (one token per step)")
    ap.add_argument("--json", dest="write_json", help="write the table and setting as JSON here")
    ap.add_argument("--csv", dest="results_csv", help="append one row per task to this CSV")
    ap.add_argument("--threads", type=int)
    a = ap.parse_args(argv)
    return dict(checkpoint=a.checkpoint, n=a.n, seed=a.seed, device=a.device, dtype=a.dtype,
                batch_size=a.batch_size, tasks=tuple(t for t in a.tasks.split(",") if t), jsonl=a.jsonl,
                scorer=a.scorer, gen_length=a.gen_length, block_length=a.block_length, steps=a.steps,
                write_json=a.write_json, results_csv=a.results_csv, threads=a.threads)


if __name__ == "__main__":
    main(**parse_args())
