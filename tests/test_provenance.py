"""scripts/provenance.py: the sha, device and versions every benchmark and experiment row records."""
import os
import re
import shutil
import subprocess
import sys


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


def _git(*args, cwd):
    return subprocess.run(["git", "-C", cwd, "-c", "user.name=t", "-c", "user.email=t@t", "-c",
                           "commit.gpgsign=false", *args], capture_output=True, text=True, check=True).stdout.strip()


def test_repo_clean_dirty_and_enclosing_repo(tmp_path):
    tree = _tree(tmp_path / "repo")
    if GIT is None:  # no git executable: nothing to read a sha with
        assert _sha_of(tree) == ["unknown", "unknown"]
        return
    _git("init", "-q", cwd=tree)
    _git("add", "-A", cwd=tree)
    _git("commit", "-qm", "x", cwd=tree)
    full = _git("rev-parse", "HEAD", cwd=tree)
    short, long_ = _sha_of(tree)
    assert long_ == full and full.startswith(short) and re.fullmatch(r"[0-9a-f]{7,}", short)
    with open(os.path.join(tree, "scripts", "provenance.py"), "a") as f:
        f.write("# edit\n")
    assert _sha_of(tree) == [short + "+dirty", full + "+dirty"]
    # a copy of the tree inside that repository is not described by the repository's sha
    inner = _tree(tmp_path / "repo" / "inner")
    assert _sha_of(inner) == ["unknown", "unknown"]


def test_this_tree():
    """This tree: HEAD's sha when it is a git checkout (a clone in CI), else ``unknown`` (e.g. a copy on a GPU
    machine without ``.git``)."""
    top = None if GIT is None else subprocess.run(["git", "-C", ROOT, "rev-parse", "--show-toplevel"],
                                                   capture_output=True, text=True).stdout.strip()
    short, full = _sha_of(ROOT)
    if top and os.path.realpath(top) == os.path.realpath(ROOT):
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        assert full.split("+")[0] == head and head.startswith(short.split("+")[0])
    else:
        assert (short, full) == ("unknown", "unknown")


def test_environment_columns():
    """The columns every result row carries; the sha given wins over git's, the CPU is named with its threads."""
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    from provenance import device_name, environment

    env = environment("cpu", sha="abc1234")
    assert set(env) == {"gpu", "torch", "cuda", "triton", "python", "sha", "timestamp"}
    assert env["sha"] == "abc1234" and env["gpu"] == device_name("cpu")
    assert re.fullmatch(r"cpu \(.+, \d+ threads\)", env["gpu"]) and env["torch"] and env["python"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", env["timestamp"])
