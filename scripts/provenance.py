"""Provenance of a benchmark or experiment row: the git sha of the code that produced it (one helper for
every script)."""
from __future__ import annotations

import os
import subprocess

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
