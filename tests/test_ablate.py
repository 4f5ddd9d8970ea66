"""scripts/ablate.py and scripts/report.py end to end on the golden tiny checkpoint (random weights, no
tokenizer: the character-tokenizer fallback), plus the findings logic of the report on synthetic rows."""
import csv
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts")
if SCRIPTS not in sys.path:
    sys.path.insert(0, SCRIPTS)

import ablate  # noqa: E402
import report  # noqa: E402

GOLDEN = os.path.join(ROOT, "tests", "data", "llada-tiny", "checkpoint")
PNGS = ("acc_vs_nfe.png", "acc_vs_block_length.png", "speed_vs_accuracy.png", "cache_speed.png")


def _read(path):
    with open(path, newline="") as f:
        r = csv.DictReader(f)
        return r.fieldnames, list(r)


def test_ablation_end_to_end(tmp_path):
    grid = ablate.Grid(gen_length=8, steps=(8, 4), thresholds=(0.9,), factors=(), block_lengths=(4, 8),
                       caches=("none", "block"), cache_block_length=4, cache_threshold=None)
    rows = ablate.main(model=GOLDEN, study=("steps", "remasking", "block_length", "cache"), n=2,
                       tasks=("add", "sort"), out=str(tmp_path), render=True, grid=grid, threads=1, quiet=True)
    header, csv_rows = _read(tmp_path / ablate.CSV_NAME)
    assert header == ablate.CSV_FIELDS
    assert len(csv_rows) == len(rows)
    # steps: 2 policies x 2 step counts; remasking: lc, random, threshold; block_length: 2; cache: 2 caches
    n_settings = 4 + 3 + 2 + 2
    assert len(rows) == 3 * n_settings            # add, sort and the pooled 'all' row per setting
    for r in csv_rows:
        assert r["task"] in ("add", "sort", "all")
        assert 0.0 <= float(r["accuracy"]) <= 1.0
        assert float(r["nfe"]) > 0 and float(r["tokens_per_s"]) > 0
        assert r["device"] == "cpu" and r["torch"] and r["git_sha"] and r["model"]
    by = {(r["study"], r["policy"], r["steps"], r["task"]): r for r in csv_rows}
    assert float(by[("steps", "low_confidence", "4", "all")]["nfe"]) == 4.0
    assert int(by[("steps", "random", "8", "all")]["n"]) == 4
    # the baseline is shared by several studies and decoded once: identical numbers in each
    shared = [by[(st, "low_confidence", "8", "add")]["seconds"] for st in ("steps", "remasking")]
    assert shared[0] == shared[1]
    for png in PNGS:
        assert (tmp_path / png).stat().st_size > 1000, png
    md = (tmp_path / "report.md").read_text()
    assert "Published findings" in md and "acc_vs_nfe.png" in md and "| low_confidence s8 b8 |" in md


def test_jsonl_numeric_scorer_and_cli(tmp_path):
    data = tmp_path / "probs.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"{a}+1=", "answer": f"#### {a + 1}"}) for a in range(3)) + "\n")
    kw = ablate.parse_args(["--model", GOLDEN, "--jsonl", str(data), "--scorer", "numeric", "--study", "temperature",
                            "--temperatures", "0,1", "--gen-length", "8", "--n", "0", "--out", str(tmp_path / "o"),
                            "--threads", "1", "--quiet"])
    rows = ablate.main(**kw)
    assert [r["temperature"] for r in rows] == [0.0, 1.0]          # one task: no pooled row
    assert all(r["task"] == "probs" and r["n"] == 3 and r["scorer"] == "numeric" for r in rows)
    path = report.render(str(tmp_path / "o" / ablate.CSV_NAME))
    assert os.path.isfile(path) and os.path.isfile(tmp_path / "o" / "acc_vs_temperature_cfg.png")


def test_study_configs_and_plan():
    g = ablate.Grid(gen_length=32)
    steps = ablate.study_configs("steps", g)
    assert [c.steps for c in steps if c.remasking == "random"] == [32, 16, 8, 4, 2]
    cache = ablate.study_configs("cache", g)
    assert {c.cache for c in cache} == {"none", "prefix", "dual", "block"} and {c.block_length for c in cache} == {8}
    unique, pairs = ablate.plan(["steps", "remasking", "temperature"], g)
    assert len(unique) < len(pairs)                                # the baseline is shared
    assert ablate.RunConfig(32, 32, 32, threshold=0.9).policy == "threshold=0.9"
    with pytest.raises(ValueError):
        ablate.study_configs("steps", ablate.Grid(gen_length=32, block_length=8, steps=(6,)))
    with pytest.raises(ValueError):
        ablate.study_configs("nope", g)


def _row(study, acc, n=300, steps=32, remasking="low_confidence", threshold=None, nfe=None, task="all"):
    return {"study": study, "task": task, "accuracy": acc, "n": n, "steps": steps, "block_length": 32,
            "gen_length": 32, "remasking": remasking, "threshold": threshold, "factor": None, "temperature": 0.0,
            "cfg_scale": 0.0, "cache": "none", "nfe": float(steps if nfe is None else nfe),
            "policy": f"threshold={threshold:g}" if threshold is not None else remasking, "tokens_per_s": 100.0}


def test_findings_verdicts():
    good = ([_row("steps", a, steps=s) for s, a in ((32, 0.9), (16, 0.8), (8, 0.6))]
            + [_row("steps", a, steps=s, remasking="random") for s, a in ((32, 0.5), (16, 0.4), (8, 0.3))]
            + [_row("remasking", 0.9), _row("remasking", 0.5, remasking="random"),
               _row("remasking", 0.89, threshold=0.9, nfe=6.0), _row("remasking", 0.7, threshold=0.5, nfe=3.0)])
    assert [f["status"] for f in report.findings(good)] == ["yes", "yes", "yes"]
    flat = ([_row("steps", 0.95, steps=s) for s in (32, 16, 8)]
            + [_row("steps", 0.95, steps=s, remasking="random") for s in (32, 16, 8)]
            + [_row("remasking", 0.95), _row("remasking", 0.6, threshold=0.9, nfe=30.0)])
    got = report.findings(flat)
    assert [f["status"] for f in got] == ["no", "no", "no"]
    assert report.findings([_row("temperature", 0.9)])[0]["status"] == "not run"
