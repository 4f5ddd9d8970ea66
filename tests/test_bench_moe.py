"""scripts/bench_moe.py: the dry run (tiny MoE layer, CPU, TRITON_INTERPRET=1) end to end in a subprocess: every
provider's row, the summary against the best alternative, provenance; the real layer shape from the config.
Numbers are not checked, only plumbing (and that every provider's output matches the reference's)."""
import csv
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts")
if SCRIPTS not in sys.path:
    sys.path.insert(0, SCRIPTS)

import bench_moe as bm  # noqa: E402  (imports neither torch nor triton at module level)


def test_layer_shape_is_llada2_minis():
    assert bm.llada2_mini_layer() == dict(d=2048, inter=512, E=256, top_k=8, n_group=8, topk_group=4, scale=2.5)


def test_dry_run_rows_and_summary(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    p = subprocess.run([sys.executable, os.path.join(SCRIPTS, "bench_moe.py"), "--dry-run", "--out", str(tmp_path),
                        "--tokens", "1", "5", "--sha", "abc1234"], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert sorted(os.listdir(tmp_path)) == ["bench_moe_cpu-interpreter_abc1234.csv", "bench_moe_cpu-interpreter_abc1234.md"]
    with open(tmp_path / "bench_moe_cpu-interpreter_abc1234.csv") as f:
        reader = csv.DictReader(f)
        header, rows = reader.fieldnames, list(reader)
    assert header == bm.FIELDS
    providers = ["triton", "triton-layer", "grouped_mm", "gather-bmm", "loop", "route-triton", "route-torch"]
    assert [(r["tokens"], r["provider"]) for r in rows] == [(m, p) for m in ("1", "5") for p in providers]
    for r in rows:
        assert r["error"] == "" and float(r["maxdiff"]) < 1e-2, r  # fp16 outputs of the same computation
        assert r["sha"] == "abc1234" and r["gpu"] == "cpu-interpreter" and r["torch"] and r["triton"]
        assert (r["gbps"] == "") == r["provider"].startswith("route")
    assert 0 < int(rows[0]["touched_experts"]) <= 4 and int(rows[-1]["touched_experts"]) <= 16
    md = (tmp_path / "bench_moe_cpu-interpreter_abc1234.md").read_text()
    assert "| tokens | experts touched | triton us | best alternative | its us | speedup | triton % copy |" in md
    summary = bm.summary([dict(r, us=float(r["us"]), pct_copy=r["pct_copy"]) for r in rows])
    assert [s["tokens"] for s in summary] == ["1", "5"]
    assert all(s["best"] in bm.ALTERNATIVES and s["speedup"] > 0 for s in summary)
