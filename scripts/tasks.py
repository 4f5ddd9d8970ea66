"""Synthetic tasks with checkable answers, for training and evaluating a small LLaDA.

Each :class:`Task` turns a ``random.Random`` into one ``(prompt, answer)`` pair, both plain text. Problems
are split into ``train`` and ``heldout`` by a stable hash of the prompt text (the answer is a function of
the prompt), so the two splits never share a problem, whatever the seed or the sampling order.

``TASKS`` (add, reverse, sort) is every script's default mix; ``EXTRA_TASKS`` holds harder families (``mul``)
that a run asks for by name (``ALL_TASKS`` is both; ``get_task`` finds either).

Also here: exact-match and numeric (GSM8K-style, last number in the text) scorers and a JSONL loader of
``{"prompt": ..., "answer": ...}`` records. Importable as ``from tasks import ...`` when ``scripts/`` is
the script directory or on ``sys.path``; nothing happens at import.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import string
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

__all__ = [
    "Problem", "Task", "TASKS", "EXTRA_TASKS", "ALL_TASKS", "get_task", "split_of", "HELDOUT_PERCENT",
    "sample_problems", "heldout_problems", "exact_match", "numeric_match", "last_number", "load_jsonl",
    "score", "SCORERS", "MAX_ANSWER_CHARS", "load_problems",
]

HELDOUT_PERCENT = 10          # share of the problem space (by prompt hash) reserved for evaluation
MAX_ANSWER_CHARS = 16         # the longest answer any built-in task produces


@dataclass(frozen=True)
class Problem:
    prompt: str
    answer: str
    task: str = ""


def split_of(prompt: str) -> str:
    """``'heldout'`` for ~HELDOUT_PERCENT % of prompts (stable blake2b hash of the text), else ``'train'``."""
    h = int.from_bytes(hashlib.blake2b(prompt.encode("utf-8"), digest_size=8).digest(), "little")
    return "heldout" if h % 100 < HELDOUT_PERCENT else "train"


# --------------------------------------------------------------------------------------- generators
def _number(rng: random.Random, max_digits: int) -> int:
    """A number whose digit count is uniform in 1..max_digits (so short numbers are not rare)."""
    n = rng.randint(1, max_digits)
    return rng.randint(0, 9) if n == 1 else rng.randint(10 ** (n - 1), 10 ** n - 1)


def _gen_add(rng: random.Random, max_digits: int = 5) -> Tuple[str, str]:
    a, b = _number(rng, max_digits), _number(rng, max_digits)
    return f"{a}+{b}=", str(a + b)


def _gen_mul(rng: random.Random, max_a: int = 3, max_b: int = 2) -> Tuple[str, str]:
    a, b = _number(rng, max_a), _number(rng, max_b)
    return f"{a}*{b}=", str(a * b)


def _gen_reverse(rng: random.Random, max_len: int = 16) -> Tuple[str, str]:
    s = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(1, max_len)))
    return f"reverse: {s}", s[::-1]


_SORT_ALPHABET = string.digits + string.ascii_lowercase


def _gen_sort(rng: random.Random, max_len: int = 16) -> Tuple[str, str]:
    s = "".join(rng.choices(_SORT_ALPHABET, k=rng.randint(1, max_len)))
    return f"sort: {s}", "".join(sorted(s))


@dataclass(frozen=True)
class Task:
    """A deterministic problem generator with a train / held-out split and an exact-match scorer."""
    name: str
    generate_one: Callable[[random.Random], Tuple[str, str]]
    description: str

    def sample(self, rng: random.Random, split: str = "train") -> Problem:
        """One problem of ``split`` (rejection sampling on the prompt hash)."""
        if split not in ("train", "heldout", "any"):
            raise ValueError(f"split={split!r}; choose 'train', 'heldout' or 'any'")
        while True:
            prompt, answer = self.generate_one(rng)
            if split == "any" or split_of(prompt) == split:
                return Problem(prompt, answer, self.name)

    def problems(self, n: int, seed: int, split: str, *, distinct: bool = True) -> List[Problem]:
        """``n`` problems of ``split`` from ``seed`` (distinct prompts unless ``distinct=False``)."""
        rng = random.Random(f"{self.name}/{split}/{seed}")
        out, seen = [], set()
        tries = 0
        while len(out) < n:
            p = self.sample(rng, split)
            tries += 1
            if distinct and p.prompt in seen:
                if tries > 100 * n:
                    raise RuntimeError(f"task {self.name}: cannot find {n} distinct {split} problems")
                continue
            seen.add(p.prompt)
            out.append(p)
        return out

    def score(self, prediction: str, answer: str) -> bool:
        return exact_match(prediction, answer)


TASKS: Dict[str, Task] = {
    "add": Task("add", _gen_add, "a+b= for a, b with 1-5 digits (digit count uniform); answer the decimal sum"),
    "reverse": Task("reverse", _gen_reverse, "reverse a lowercase string of 1-16 letters"),
    "sort": Task("sort", _gen_sort, "sort 1-16 characters from 0-9a-z (with repeats) in ASCII order"),
}


# harder families, outside TASKS so that the dense shipped model's default training and evaluation mix (every
# script's default task list) stays the three above
EXTRA_TASKS: Dict[str, Task] = {
    "mul": Task("mul", _gen_mul, "a*b= for a with 1-3 digits and b with 1-2 digits (digit counts uniform); "
                                 "answer the decimal product"),
}
ALL_TASKS: Dict[str, Task] = {**TASKS, **EXTRA_TASKS}


def get_task(name: str) -> Task:
    try:
        return ALL_TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose from {sorted(ALL_TASKS)}") from None


def sample_problems(rng: random.Random, n: int, tasks: Sequence[str] = tuple(TASKS),
                    split: str = "train") -> List[Problem]:
    """``n`` training problems, the task of each drawn uniformly from ``tasks``."""
    ts = [get_task(t) for t in tasks]
    return [rng.choice(ts).sample(rng, split) for _ in range(n)]


def heldout_problems(task: str, n: int, seed: int = 0) -> List[Problem]:
    """The first ``n`` distinct held-out problems of ``task`` for ``seed`` (a fixed evaluation set)."""
    return get_task(task).problems(n, seed, "heldout")


# ------------------------------------------------------------------------------------------ scorers
def exact_match(prediction: str, answer: str) -> bool:
    """Equal after stripping surrounding whitespace."""
    return prediction.strip() == answer.strip()


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def last_number(text: str) -> Optional[str]:
    """The last number in ``text`` (GSM8K style: commas dropped, a trailing ``.0...`` removed), or None."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    s = found[-1].replace(",", "")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    if s in ("-", "", "-0"):
        s = "0"
    return s


def numeric_match(prediction: str, answer: str) -> bool:
    """True when the last number of ``prediction`` equals the last number of ``answer``
    (GSM8K answers end in ``#### 42``; that final number is the one compared)."""
    p, a = last_number(prediction), last_number(answer)
    if p is None or a is None:
        return False
    try:
        return float(p) == float(a)
    except ValueError:
        return p == a


SCORERS = {"exact": exact_match, "numeric": numeric_match}


def score(predictions: Iterable[str], answers: Iterable[str], scorer: str = "exact") -> float:
    """Fraction of ``predictions`` that match ``answers`` under ``scorer`` ('exact' | 'numeric')."""
    fn = SCORERS[scorer]
    pairs = list(zip(predictions, answers))
    return sum(fn(p, a) for p, a in pairs) / max(1, len(pairs))


def load_jsonl(path: str, *, prompt_key: str = "prompt", answer_key: str = "answer",
               task: str = "") -> List[Problem]:
    """Read ``{"prompt": ..., "answer": ...}`` records (one JSON object per non-empty line)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not JSON ({e})") from e
            if prompt_key not in rec or answer_key not in rec:
                raise ValueError(f"{path}:{n}: needs keys {prompt_key!r} and {answer_key!r}, has {sorted(rec)}")
            out.append(Problem(str(rec[prompt_key]), str(rec[answer_key]), task or rec.get("task", "")))
    return out


def load_problems(jsonl: Optional[str], tasks: Sequence[str], n: int, seed: int) -> Dict[str, List[Problem]]:
    """``{name: [Problem]}``: ``n`` held-out problems per built-in task, or the first ``n`` records of ``jsonl``
    (``n`` = 0: all of them) under the file's name without extension."""
    if jsonl:
        recs = load_jsonl(jsonl)
        return {os.path.splitext(os.path.basename(jsonl))[0]: recs[:n] if n > 0 else recs}
    return {t: heldout_problems(t, n, seed) for t in tasks}
