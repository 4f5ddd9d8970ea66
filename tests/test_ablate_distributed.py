"""scripts/ablate.py under torchrun (2 gloo processes on the CPU) writes the rows of one process."""
import csv
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(ROOT, "tests", "data", "llada-tiny", "checkpoint")
TIMING = ("seconds", "tokens_per_s", "timestamp")


def _rows(path):
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(f)]


def test_torchrun_two_processes_same_rows(tmp_path):
    args = [os.path.join(ROOT, "scripts", "ablate.py"), "--model", GOLDEN, "--study", "steps,temperature",
            "--problems", "3", "--tasks", "add,sort", "--gen-length", "8", "--steps-list", "8,4", "--temperatures", "0,1",
            "--batch-size", "1", "--threads", "1", "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    one = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    two = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", *args, "--out", str(tmp_path / "two")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    rows = _rows(tmp_path / "one" / "ablation.csv")
    assert len(rows) == 3 * 6  # add, sort, all x (steps: 2 policies x 2 counts; temperature: 0 and 1)
    assert _rows(tmp_path / "two" / "ablation.csv") == rows
