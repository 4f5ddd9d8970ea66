"""Provenance of a benchmark or experiment row: the git sha of the code, the device and the library versions
(one module for every script that records results)."""
from __future__ import annotations

import os
import platform
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", ROOT, *args], capture_output=True, text=True)


def git_sha(short: bool = True) -> str:
    """The sha of this repository's HEAD (abbreviated unless ``short=False``), with ``+dirty`` when tracked
    files differ from HEAD (the numbers then come from edits on top of it).

    The environment variable ``GIT_SHA`` takes precedence (for a copy of the tree without ``.git``, e.g. on a
    lent GPU machine); ``"unknown"`` when neither is there. A git repository *around* a copy of the tree
    (its top level elsewhere) does not count: its sha would describe other code."""
    if os.environ.get("GIT_SHA"):
        return os.environ["GIT_SHA"]
    try:
        top = _git("rev-parse", "--show-toplevel")
        if top.returncode != 0 or os.path.realpath(top.stdout.strip()) != os.path.realpath(ROOT):
            return "unknown"
        sha = _git("rev-parse", *(["--short"] if short else []), "HEAD")
        if sha.returncode != 0:
            return "unknown"
        dirty = _git("diff", "--quiet", "HEAD", "--").returncode == 1
    except OSError:  # no git executable
        return "unknown"
    return sha.stdout.strip() + ("+dirty" if dirty else "")


def device_name(device="cuda") -> str:
    """The GPU's name for a CUDA device, else ``cpu (<processor>, <n> threads)``."""
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def environment(device="cuda", sha: str | None = None) -> dict:
    """The columns every result row carries: ``gpu`` (:func:`device_name`), ``torch``, ``cuda``, ``triton``
    (empty when not installed), ``python``, ``sha`` (``sha`` if given, else :func:`git_sha`) and ``timestamp``."""
    import torch

    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = ""
    return dict(gpu=device_name(device), torch=torch.__version__, cuda=torch.version.cuda or "",
                triton=triton_version, python=platform.python_version(), sha=sha or git_sha(),
                timestamp=time.strftime("%Y-%m-%dT%H:%M:%S"))
