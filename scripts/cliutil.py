"""What the command lines of generate.py, ablate.py, eval_tasks.py and train_tiny.py share.

Expected errors (a bad argument, a checkpoint that is not there or not supported) print one line,
``prog: error: argument --x: ...`` naming the argument, the value and what is allowed, and exit with
status 2, as argparse does for its own errors; the ``--ops``/``--device`` checks run before a model is
loaded or triton is imported. Default paths resolve against the checkout, never the current directory.
Nothing happens at import (torch and triton are imported by the functions that need them).
"""
from __future__ import annotations

import argparse
import os
from typing import Callable, List, Optional, Sequence

__all__ = ["ROOT", "DEFAULT_MODEL", "ArgumentParser", "positive_int", "nonneg_int", "int_list", "float_list",
           "name_list", "check_schedule", "add_device_args", "check_problems", "default_device",
           "triton_ops_problem", "check_device", "check_model",
           "load_checkpoint"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODEL = os.path.join(ROOT, "checkpoints", "llada-tiny-tasks")


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage block) and exit with status 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def fail(self, arg: str, message: str):
        """One-line error about ``arg`` (``message`` names the value and what is allowed)."""
        self.error(f"argument {arg}: {message}")


# ------------------------------------------------------------------------------------ argument types
def _number(kind: Callable, s: str, what: str):
    try:
        return kind(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not {what}") from None


def positive_int(s: str) -> int:
    v = _number(int, s, "an integer")
    if v < 1:
        raise argparse.ArgumentTypeError(f"{s!r} is not allowed: give a positive integer (>= 1)")
    return v


def nonneg_int(s: str) -> int:
    v = _number(int, s, "an integer")
    if v < 0:
        raise argparse.ArgumentTypeError(f"{s!r} is not allowed: give an integer >= 0")
    return v


def _items(s: str) -> List[str]:
    items = [x.strip() for x in s.split(",")]
    if not s.strip() or any(not x for x in items):
        raise argparse.ArgumentTypeError(f"{s!r} is not a comma-separated list (empty item)")
    return items


def _typed_list(kind: Callable, what: str, example: str) -> Callable[[str], tuple]:
    """Type of a comma-separated list of ``kind``; the error names the first item that does not parse."""
    def parse(s: str) -> tuple:
        out = []
        for x in _items(s):
            try:
                out.append(kind(x))
            except ValueError:
                raise argparse.ArgumentTypeError(f"{x!r} in {s!r} is not {what}; give comma-separated "
                                                 f"{what.split(' ', 1)[1]}s such as {example}") from None
        return tuple(out)
    return parse


int_list = _typed_list(int, "an integer", "1,2,3")            # '1,2,3' -> (1, 2, 3)
float_list = _typed_list(float, "a number", "0.5,0.9")


def name_list(choices: Sequence[str]) -> Callable[[str], tuple]:
    """Type of a comma-separated list of names from ``choices`` (duplicates dropped, order kept)."""
    def parse(s: str) -> tuple:
        items = _items(s)
        bad = [x for x in items if x not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"{bad[0]!r} in {s!r} is not one of {', '.join(choices)}")
        return tuple(dict.fromkeys(items))
    return parse


def check_schedule(parser: ArgumentParser, gen_length: int, block_length: int, steps: int) -> None:
    """The block length divides the gen length and the steps are a multiple of the block count."""
    if gen_length % block_length:
        parser.fail("--block-length", f"{block_length} does not divide --gen-length {gen_length}; give a divisor")
    n_blocks = gen_length // block_length
    if steps % n_blocks:
        parser.fail("--steps", f"{steps} is not a multiple of the block count {n_blocks} "
                               f"(--gen-length {gen_length} / --block-length {block_length})")


# ------------------------------------------------------------------------------------ device and ops
def add_device_args(parser: ArgumentParser) -> None:
    """``--device``, ``--dtype`` and ``--ops``, the same in every script that decodes."""
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--ops", default="reference", choices=["reference", "triton"],
                        help="op implementations (triton: needs CUDA, or TRITON_INTERPRET=1 on CPU)")


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def triton_ops_problem(device: str) -> Optional[str]:
    """Why ``--ops triton`` cannot run on ``device`` in this process (None when it can). Compiled Triton
    needs a CUDA device; on the CPU the kernels run only under the interpreter, which must be chosen in
    the environment before triton is imported."""
    if device.startswith("cuda") or os.environ.get("TRITON_INTERPRET") == "1":
        return None
    return (f"'triton' needs a CUDA GPU, but the device is {device!r}; use --ops reference, or set "
            f"TRITON_INTERPRET=1 in the environment to run the Triton kernels on the CPU interpreter "
            f"(about 100x slower)")


def check_device(parser: ArgumentParser, device: Optional[str], ops: str = "reference") -> str:
    """The device to use (``None``: cuda when visible, else cpu), or a one-line error."""
    import torch

    device = device or default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        parser.fail("--device", f"{device!r} is not a device; use cpu, cuda or cuda:N")
    if dev.type not in ("cpu", "cuda"):
        parser.fail("--device", f"{device!r} is not supported; use cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            parser.fail("--device", f"{device!r} but no CUDA device is visible; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            parser.fail("--device", f"{device!r} but only {torch.cuda.device_count()} CUDA device(s) are visible")
    problem = triton_ops_problem(device) if ops == "triton" else None
    if problem:
        parser.fail("--ops", problem)
    return device


def check_problems(parser: ArgumentParser, jsonl: Optional[str], n: int, seed: int) -> None:
    """``--n 0`` only with ``--jsonl`` (all records), and the JSONL file readable (before any model loads)."""
    import tasks

    if not jsonl and n == 0:
        parser.fail("--n", "0 is allowed only with --jsonl (all records); give a positive number of problems "
                           "per task")
    if jsonl:
        try:
            tasks.load_problems(jsonl, (), n, seed)
        except (OSError, ValueError) as e:
            parser.fail("--jsonl", str(e))


# ---------------------------------------------------------------------------------------- checkpoints
def check_model(parser: ArgumentParser, path: str, arg: str = "--model"):
    """The config of the checkpoint folder ``path`` (any registered family), or a one-line error (before any
    weights load)."""
    import json

    from llada_triton.models import ConfigError, family_for_config_json

    if not os.path.isdir(path):
        parser.fail(arg, f"{path!r} is not a folder; give a Hugging Face checkpoint folder "
                         f"(config.json + safetensors)")
    if not os.path.isfile(os.path.join(path, "config.json")):
        parser.fail(arg, f"{path!r} has no config.json; give a Hugging Face checkpoint folder")
    try:
        return family_for_config_json(path).config.from_pretrained(path)
    except (ConfigError, ValueError, json.JSONDecodeError, KeyError, TypeError) as e:
        parser.fail(arg, f"{path!r} has a config this implementation does not support: {e}")


def load_checkpoint(parser: ArgumentParser, path: str, device: str, dtype=None, arg: str = "--model"):
    """``(params, cfg)``; a missing or mis-shaped weight is a one-line error."""
    import torch

    from llada_triton.models import WeightError, load_model

    check_model(parser, path, arg)
    if dtype is None:
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return load_model(path, device=device, dtype=dtype)
    except (WeightError, FileNotFoundError) as e:
        parser.fail(arg, f"{path!r}: {e}")
