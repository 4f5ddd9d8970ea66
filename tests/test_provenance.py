"""scripts/provenance.py: the sha every benchmark and experiment row records."""
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "scripts", "provenance.py")
GIT = shutil.which("git")


def _sha_of(tree, env=None):
    """git_sha() of a copy of provenance.py at ``tree``/scripts, in a fresh interpreter."""
    code = "import sys; sys.path.insert(0, sys.argv[1]); from provenance import git_sha; " \
           "print(git_sha()); print(git_sha(short=False))"
    e = {k: v for k, v in os.environ.items() if k != "GIT_SHA"}
    e.update(env or {})
    p = subprocess.run([sys.executable, "-c", code, os.path.join(tree, "scripts")], capture_output=True, text=True,
                       env=e, check=True)
    return p.stdout.split()


def _tree(path):
    os.makedirs(path / "scripts")
    shutil.copy(SRC, path / "scripts" / "provenance.py")
    return str(path)


def test_env_override_and_no_repo(tmp_path):
    tree = _tree(tmp_path / "copy")  # tmp: no git repository around it
    assert _sha_of(tree) == ["unknown", "unknown"]
    assert _sha_of(tree, {"GIT_SHA": "abc1234"}) == ["abc1234", "abc1234"]


@pytest.mark.skipif(GIT is None, reason="needs the git executable")
def test_repo_clean_dirty_and_enclosing_repo(tmp_path):
    tree = _tree(tmp_path / "repo")
    git = ["git", "-C", tree, "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-qm", "x"], check=True)
    full = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    short, long_ = _sha_of(tree)
    assert long_ == full and full.startswith(short) and re.fullmatch(r"[0-9a-f]{7,}", short)
    with open(os.path.join(tree, "scripts", "provenance.py"), "a") as f:
        f.write("# edit\n")
    assert _sha_of(tree) == [short + "+dirty", full + "+dirty"]
    # a copy of the tree inside that repository is not described by the repository's sha
    inner = _tree(tmp_path / "repo" / "inner")
    assert _sha_of(inner) == ["unknown", "unknown"]


def test_this_checkout():
    """In this repository (a clone in CI) the sha is HEAD's."""
    if GIT is None or subprocess.run(["git", "-C", ROOT, "rev-parse", "--show-toplevel"], capture_output=True,
                                     text=True).stdout.strip() != os.path.realpath(ROOT):
        pytest.skip("not a git checkout")
    head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    short, full = _sha_of(ROOT)
    assert full.split("+")[0] == head and head.startswith(short.split("+")[0])
