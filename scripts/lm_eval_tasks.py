"""Write the built-in synthetic tasks (scripts/tasks.py) as local lm-eval tasks: a YAML over a JSONL
file each, no download. ``--include_path DIR`` makes them available to ``scripts/eval_lm.py``.

    python scripts/lm_eval_tasks.py --out /tmp/tiny_tasks --n 20
    python scripts/eval_lm.py --include_path /tmp/tiny_tasks --tasks tiny_gen,tiny_mc --apply_chat_template \\
        --model_args pretrained=checkpoints/llada-tiny-tasks,gen_length=32,block_length=32,mc_num=8 --batch_size 8

``tiny_gen`` (generate_until, exact match): held-out problems of every task. ``tiny_mc`` (multiple choice,
accuracy): held-out additions with the true sum and two near misses as choices.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import tasks as tasks_mod  # noqa: E402

__all__ = ["write_tasks", "write_task", "GEN_TASK", "MC_TASK"]

GEN_TASK, MC_TASK = "tiny_gen", "tiny_mc"

_GEN_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {jsonl}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: {until}
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""

_MC_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {jsonl}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{prompt}}}}"
doc_to_choice: choices
doc_to_target: label
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def _mc_docs(n: int, seed: int) -> List[Dict]:
    docs = []
    for i, p in enumerate(tasks_mod.heldout_problems("add", n, seed)):
        right = int(p.answer)
        choices = [str(right), str(right + 1), str(right + 10)]
        label = i % 3  # the true answer's place rotates
        choices[0], choices[label] = choices[label], choices[0]
        docs.append(dict(prompt=p.prompt, choices=choices, label=label))
    return docs


def write_task(out_dir: str, name: str, docs: List[Dict], kind: str = "gen", until=("\n",)) -> str:
    """``docs`` as ``<out_dir>/<name>.jsonl`` and a task YAML beside it: ``kind`` 'gen' (prompt -> answer,
    exact match, stop strings ``until``) or 'mc' (prompt, choices, label; accuracy). Returns the YAML path."""
    os.makedirs(out_dir, exist_ok=True)
    jsonl = os.path.abspath(os.path.join(out_dir, f"{name}.jsonl"))
    with open(jsonl, "w") as f:
        f.writelines(json.dumps(d) + "\n" for d in docs)
    template = {"gen": _GEN_YAML, "mc": _MC_YAML}[kind]
    path = os.path.join(out_dir, f"{name}.yaml")
    with open(path, "w") as f:
        f.write(template.format(name=name, jsonl=json.dumps(jsonl), until=json.dumps(list(until))))
    return path


def write_tasks(out_dir: str, n: int = 20, seed: int = 0) -> Dict[str, str]:
    """Write ``tiny_gen`` and ``tiny_mc`` (``n`` documents each) into ``out_dir``; returns name -> YAML path."""
    per_task = -(-n // len(tasks_mod.TASKS))
    gen = [dict(prompt=p.prompt, answer=p.answer, task=t)
           for t in tasks_mod.TASKS for p in tasks_mod.heldout_problems(t, per_task, seed)][:n]
    return {GEN_TASK: write_task(out_dir, GEN_TASK, gen, "gen"),
            MC_TASK: write_task(out_dir, MC_TASK, _mc_docs(n, seed), "mc")}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for the YAML and JSONL files")
    p.add_argument("--n", type=int, default=20, help="documents per task")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for name, path in write_tasks(args.out, args.n, args.seed).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
