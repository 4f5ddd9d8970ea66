"""The command lines of scripts/generate.py, ablate.py, eval_tasks.py, train_tiny.py and report.py, run as a user
runs them: a subprocess started in a temporary directory outside the checkout (PYTHONPATH = the checkout).

Expected errors print one line ``<script>: error: argument <flag>: ...`` naming the value and what is allowed and
exit with status 2, before a model loads; long runs show a tqdm bar; the --help examples run from anywhere."""
import csv
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts")
if SCRIPTS not in sys.path:
    sys.path.insert(0, SCRIPTS)

import ablate  # noqa: E402
import cliutil  # noqa: E402
import eval_tasks  # noqa: E402
import generate  # noqa: E402
import report  # noqa: E402

MODEL = os.path.join(ROOT, "checkpoints", "llada-tiny-tasks")
TRANSFORMERS_WARNING = "You are using a model of type"


@pytest.fixture
def outside(tmp_path_factory):
    """A fresh working directory outside the checkout."""
    d = tmp_path_factory.mktemp("cli")
    assert not os.path.realpath(str(d)).startswith(os.path.realpath(ROOT) + os.sep)
    return d


def run(script, args, cwd, env=None, timeout=600):
    e = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # as a user's shell: not set
    e["PYTHONPATH"] = ROOT
    e.update(env or {})
    return subprocess.run([sys.executable, os.path.join(SCRIPTS, script), *args], cwd=cwd, env=e,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def one_line_error(p, script, flag, *fragments):
    """Exit status 2, nothing on stdout, and exactly one stderr line naming the flag and the fragments."""
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert "Traceback" not in p.stderr and p.stdout == ""
    assert lines[0].startswith(f"{script}: error: argument {flag}: "), lines[0]
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def in_process_error(capsys, parse, argv, script, flag, *fragments):
    """The same check as :func:`one_line_error` on the script's own parser, called in this process (the exit
    path is argparse's; the subprocess tests cover the process boundary)."""
    with pytest.raises(SystemExit) as e:
        parse(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"{script}: error: argument {flag}: "), err
    for f in fragments:
        assert f in err, (f, err)


# ---------------------------------------------------------------------- point 2: --ops triton, no GPU
@pytest.mark.parametrize("script,extra", [("generate.py", ["--prompt", "1+1="]), ("eval_tasks.py", []),
                                          ("ablate.py", ["--study", "cfg"])])
def test_ops_triton_without_cuda_fails_before_loading(outside, script, extra):
    # a model folder that does not exist: the ops check must come first, so no model is ever loaded
    p = run(script, ["--ops", "triton", "--device", "cpu", "--model", str(outside / "no-model"), *extra], outside)
    one_line_error(p, script, "--ops", "'triton' needs a CUDA GPU", "--ops reference", "TRITON_INTERPRET=1",
                   "slower")


def test_triton_ops_problem_follows_the_environment(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert "TRITON_INTERPRET=1" in cliutil.triton_ops_problem("cpu")
    assert cliutil.triton_ops_problem("cuda:0") is None
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # set before triton is imported: the kernels run interpreted
    assert cliutil.triton_ops_problem("cpu") is None
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        ablate.main(model=MODEL, study=("cfg",), ops="triton", device="cpu", out="unused")


# ------------------------------------------------------------------------ point 4: generate.py errors
GENERATE_ERRORS = [  # the cases of issue 21, each in a subprocess
    (["--gen-length", "0", "--prompt", "x"], "--gen-length", ["'0'", "positive integer"]),
    (["--steps", "0", "--prompt", "x"], "--steps", ["'0'", "positive integer"]),
    (["--prompt-ids", "1,abc"], "--prompt-ids", ["'abc'", "'1,abc'", "integer"]),
    (["--model", "/nonexistent/ckpt", "--prompt", "x"], "--model", ["'/nonexistent/ckpt'", "checkpoint folder"]),
]


@pytest.mark.parametrize("args,flag,fragments", GENERATE_ERRORS, ids=[a[0] + a[1] for a, _, _ in GENERATE_ERRORS])
def test_generate_bad_arguments_are_one_line(outside, args, flag, fragments):
    one_line_error(run("generate.py", args, outside), "generate.py", flag, *fragments)


GENERATE_CHECKS = [
    (["--block-length", "5", "--prompt", "x"], "--block-length", ["5", "--gen-length 32"]),
    (["--block-length", "8", "--steps", "6", "--prompt", "x"], "--steps", ["6", "block count 4"]),
    (["--threshold", "1.5", "--prompt", "x"], "--threshold", ["1.5", "(0, 1]"]),
    (["--threshold", "0.9", "--factor", "1", "--prompt", "x"], "--threshold", ["not both"]),
    (["--temperature", "-1", "--prompt", "x"], "--temperature", ["-1", ">= 0"]),
    (["--cfg-scale", "-0.5", "--prompt", "x"], "--cfg-scale", ["-0.5", ">= 0"]),
    (["--device", "gpu", "--prompt", "x"], "--device", ["'gpu'", "cpu, cuda or cuda:N"]),
]


@pytest.mark.parametrize("args,flag,fragments", GENERATE_CHECKS, ids=[a[0] + a[1] for a, _, _ in GENERATE_CHECKS])
def test_generate_argument_checks(capsys, args, flag, fragments):
    in_process_error(capsys, generate.main, args, "generate.py", flag, *fragments)


def test_generate_prompt_sources(outside):
    (outside / "empty.txt").write_text("\n  \n")
    one_line_error(run("generate.py", ["--prompts-file", "empty.txt"], outside), "generate.py", "--prompts-file",
                   "'empty.txt'", "no prompts")
    one_line_error(run("generate.py", ["--prompts-file", "missing.txt"], outside), "generate.py", "--prompts-file",
                   "cannot read 'missing.txt'")
    p = run("generate.py", [], outside)
    assert p.returncode == 2 and "one of the arguments --prompt --prompts-file --prompt-ids is required" in p.stderr


def test_generate_checkpoint_and_vocabulary_errors(outside):
    bad_cfg = outside / "bad-config"
    shutil.copytree(MODEL, bad_cfg)
    cfg = json.loads((bad_cfg / "config.json").read_text())
    cfg["alibi"] = True
    (bad_cfg / "config.json").write_text(json.dumps(cfg))
    one_line_error(run("generate.py", ["--model", str(bad_cfg), "--prompt", "x"], outside), "generate.py",
                   "--model", "alibi", "not supported")
    no_weights = outside / "no-weights"
    os.makedirs(no_weights)
    shutil.copy(os.path.join(MODEL, "config.json"), no_weights)
    one_line_error(run("generate.py", ["--model", str(no_weights), "--prompt-ids", "1,2"], outside), "generate.py",
                   "--model", "no model.safetensors")
    one_line_error(run("generate.py", ["--prompt-ids", "1,99999"], outside), "generate.py", "--prompt-ids",
                   "99999", "[0, 128)")
    # characters outside the tiny tokenizer's alphabet are named, never silently turned into '?'
    one_line_error(run("generate.py", ["--prompt", "sort: h\u00e9llo\t"], outside), "generate.py", "--prompt",
                   "'\u00e9' (U+00E9)", "'\\t' (U+0009)")


def test_chat_prompt_ids_names_unknown_characters():
    from llada_triton.models.chat import chat_prompt_ids, load_tokenizer, unknown_chars

    tok = load_tokenizer(MODEL)
    assert unknown_chars(tok, "sort: abc 12\n~") == []
    assert unknown_chars(tok, "a\u00e9b\u00e9\u2192") == ["\u00e9", "\u2192"]
    with pytest.raises(ValueError, match="U\\+00E9"):
        chat_prompt_ids(tok, "h\u00e9llo")
    assert len(chat_prompt_ids(tok, "h\u00e9llo", allow_unknown=True)) == len(chat_prompt_ids(tok, "h?llo"))


# -------------------------------------------------------------------------- point 4: ablate.py errors
def test_ablate_bad_grid_fails_before_the_model_loads(outside):
    # --model points nowhere: the grid is checked first, so the error is about the grid, not the model
    p = run("ablate.py", ["--thresholds", "0.9,1.5", "--model", str(outside / "no-model"), "--out", "o"], outside)
    one_line_error(p, "ablate.py", "--thresholds", "1.5", "(0, 1]")
    assert not (outside / "o").exists()


ABLATE_CHECKS = [
    (["--thresholds", "0.5,x"], "--thresholds", ["'x'", "number"]),
    (["--factors", "0"], "--factors", ["0", "> 0"]),
    (["--temperatures", "0,-1"], "--temperatures", ["-1", ">= 0"]),
    (["--cache-threshold", "2"], "--cache-threshold", ["2", "(0, 1]"]),
    (["--study", "steps,nope"], "--study", ["'nope'", "steps, remasking"]),
    (["--steps-list", "6", "--block-length", "8"], "--steps-list", ["6", "block count 4"]),
    (["--block-lengths", "3,8"], "--block-lengths", ["3", "--gen-length 32"]),
    (["--caches", "none,fast"], "--caches", ["'fast'", "none, prefix, dual, block"]),
    (["--tasks", "add,mul"], "--tasks", ["'mul'", "add, reverse, sort"]),
    (["--n", "0"], "--n", ["--jsonl"]),
    (["--jsonl", "/nonexistent/p.jsonl"], "--jsonl", ["/nonexistent/p.jsonl"]),
]


@pytest.mark.parametrize("args,flag,fragments", ABLATE_CHECKS, ids=[a[0] + a[1] for a, _, _ in ABLATE_CHECKS])
def test_ablate_argument_checks(capsys, tmp_path, args, flag, fragments):
    argv = [*args, "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "o")]
    in_process_error(capsys, ablate.parse_args, argv, "ablate.py", flag, *fragments)
    assert not (tmp_path / "o").exists()


def test_ablate_grid_checked_before_loading_in_the_library(tmp_path):
    with pytest.raises(ablate.GridError, match="--thresholds: 1.5 is not in"):
        ablate.main(model=str(tmp_path / "no-model"), study=("remasking",), out=str(tmp_path),
                    grid=ablate.Grid(thresholds=(0.9, 1.5)))


def test_ablate_keeps_an_existing_csv(outside):
    os.makedirs(outside / "o")
    (outside / "o" / ablate.CSV_NAME).write_text("earlier results\n")
    one_line_error(run("ablate.py", ["--out", "o", "--study", "cfg"], outside), "ablate.py", "--out",
                   "ablation.csv' exists", "--append", "--force")
    one_line_error(run("ablate.py", ["--out", "o", "--append", "--force"], outside), "ablate.py", "--force",
                   "not both")
    assert (outside / "o" / ablate.CSV_NAME).read_text() == "earlier results\n"
    assert ablate.csv_conflict(str(outside / "o"), append=True, force=False) is None
    assert ablate.csv_conflict(str(outside / "o"), append=False, force=True) is None
    with pytest.raises(FileExistsError):
        ablate.main(model=MODEL, study=("cfg",), out=str(outside / "o"))


def test_ablate_prompt_outside_the_vocabulary_is_one_line(outside):
    (outside / "p.jsonl").write_text(json.dumps({"prompt": "2\u00d73=", "answer": "6"}) + "\n")
    p = run("ablate.py", ["--jsonl", "p.jsonl", "--study", "temperature", "--temperatures", "0", "--out", "o",
                          "--threads", "1"], outside)
    one_line_error(p, "ablate.py", "--jsonl", "'\u00d7' (U+00D7)")


# ------------------------------------------------------------- point 4: eval_tasks / train_tiny / report
def test_other_scripts_bad_arguments_are_one_line(outside, capsys):
    one_line_error(run("eval_tasks.py", ["--model", "nowhere"], outside), "eval_tasks.py", "--model", "'nowhere'")
    one_line_error(run("report.py", ["missing.csv"], outside), "report.py", "csv_path", "'missing.csv'")
    in_process_error(capsys, eval_tasks.parse_args, ["--block-length", "5"], "eval_tasks.py", "--block-length", "5")
    in_process_error(capsys, eval_tasks.parse_args, ["--block-length", "8", "--steps", "6"], "eval_tasks.py",
                     "--steps", "6", "block count 4")
    in_process_error(capsys, eval_tasks.parse_args, ["--tasks", "add,mul"], "eval_tasks.py", "--tasks", "'mul'")
    in_process_error(capsys, eval_tasks.parse_args, ["--n", "0"], "eval_tasks.py", "--n", "--jsonl")
    import train_tiny

    in_process_error(capsys, train_tiny.parse_args, ["--out", "x", "--steps", "0"], "train_tiny.py", "--steps", "'0'")
    in_process_error(capsys, train_tiny.parse_args, ["--out", "x", "--lr", "-1"], "train_tiny.py", "--lr", "-1")


# ------------------------------------------------------------------- point 5: consistency and progress
def test_one_flag_name_for_the_same_thing():
    opts = {name: {o for a in mod.build_parser()._actions for o in a.option_strings}
            for name, mod in (("generate", generate), ("ablate", ablate), ("eval_tasks", eval_tasks))}
    shared = {"--model", "--device", "--dtype", "--ops", "--seed", "--gen-length", "--block-length", "--quiet"}
    for name, o in opts.items():
        assert shared <= o, (name, shared - o)
    assert "--no-chat-template" in opts["generate"] and "--no-chat-template" in opts["ablate"]
    assert "--threads" in opts["ablate"] and "--threads" in opts["eval_tasks"]
    assert "--json" not in opts["eval_tasks"]  # generate's --json prints JSON; eval_tasks writes a file: --json-out


def test_eval_tasks_does_not_import_train_tiny():
    code = "import sys, eval_tasks; print('train_tiny' in sys.modules)"
    p = subprocess.run([sys.executable, "-c", code], cwd=SCRIPTS, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": ROOT})
    assert p.returncode == 0 and p.stdout.strip() == "False", p.stderr


def test_eval_tasks_from_elsewhere_shows_progress_and_no_transformers_warning(outside):
    p = run("eval_tasks.py", ["--n", "2", "--tasks", "add", "--threads", "1", "--csv", "r.csv"], outside)
    assert p.returncode == 0, p.stderr
    assert re.search(r"2/2 \[[0-9:]+<[0-9:]+", p.stderr), p.stderr   # tqdm: done/total [elapsed<left
    assert TRANSFORMERS_WARNING not in p.stderr + p.stdout
    assert "| add | 2 |" in p.stdout
    with open(outside / "r.csv") as f:
        assert [r["task"] for r in csv.DictReader(f)] == ["add"]
    p = run("eval_tasks.py", ["--checkpoint", MODEL, "--n", "1", "--tasks", "add", "--quiet", "--threads", "1"],
            outside)
    assert p.returncode == 0 and "--checkpoint is deprecated; use --model" in p.stderr, p.stderr


def test_ablate_progress_shows_time_left(outside):
    p = run("ablate.py", ["--study", "temperature", "--temperatures", "0,1", "--n", "1", "--tasks", "add",
                          "--gen-length", "8", "--threads", "1", "--out", "o"], outside)
    assert p.returncode == 0, p.stderr
    assert re.search(r"2/2 \[[0-9:]+<[0-9:]+", p.stderr), p.stderr
    assert TRANSFORMERS_WARNING not in p.stderr + p.stdout
    assert p.stdout.count("[ablate] ") >= 4 and os.path.isfile(outside / "o" / ablate.CSV_NAME)
    # a second run appends with --append (--force: test_ablate_keeps_an_existing_csv)
    for flag, rows in (("--append", 4),):
        p = run("ablate.py", ["--study", "temperature", "--temperatures", "0,1", "--n", "1", "--tasks", "add",
                              "--gen-length", "8", "--threads", "1", "--out", "o", "--quiet", flag], outside)
        assert p.returncode == 0, p.stderr
        with open(outside / "o" / ablate.CSV_NAME) as f:
            assert len(list(csv.DictReader(f))) == rows


# --------------------------------------------------------------------------------- point 6: tied plots
def _tied_rows():
    base = dict(study="block_length", policy="low_confidence", n=10, nfe=8.0, gen_length=8, steps=8,
                remasking="low_confidence", threshold=None, factor=None, temperature=0.0, cfg_scale=0.0, cache="none",
                tokens_per_s=100.0)
    return [dict(base, task=t, block_length=b, accuracy=1.0) for t in ("all", "add", "sort") for b in (4, 8)]


def test_tied_series_get_distinct_styles_and_display_offsets():
    plt = report._plt()
    fig, ax = plt.subplots()
    styles = [report._series_style(ax, k, 4) for k in range(4)]
    assert len({s["marker"] for s in styles}) == 4 and len({s["linestyle"] for s in styles}) == 4
    ys = [s["transform"].transform((1.0, 1.0))[1] for s in styles]
    assert all(b - a >= 2.0 for a, b in zip(ys, ys[1:]))  # the same value lands >= 2 px apart per series
    plt.close(fig)


def test_pareto_labels_do_not_overlap(tmp_path):
    plt = report._plt()
    fig, ax = plt.subplots(figsize=(10, 5))
    pts = [dict(r, tokens_per_s=1000.0 + 10 * k, accuracy=0.9 + 0.001 * k, policy=f"threshold=0.{k}")
           for k, r in enumerate(_tied_rows()[:5])]
    front = report.pareto_front(pts)
    assert [r["accuracy"] for r in front] == [0.904]  # fastest is also the most accurate: a front of one
    pts = [dict(r, tokens_per_s=1000.0 + 10 * k, accuracy=0.95 - 0.001 * k, policy=f"threshold=0.{k}")
           for k, r in enumerate(_tied_rows()[:5])]
    front = report.pareto_front(pts)
    assert len(front) == 5
    ax.set_xscale("log")
    ax.scatter([r["tokens_per_s"] for r in pts], [r["accuracy"] for r in pts])
    ax.set_xlim(900, 2000)  # neighbouring points about 10 px apart
    ax.set_ylim(0.5, 1.0)
    artists = report.label_front(ax, front)
    fig.canvas.draw()
    boxes = [a.get_window_extent() for a in artists]
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert not boxes[i].overlaps(boxes[j]), (i, j)
    plt.close(fig)
    report.plot_acc_vs_block_length(_tied_rows(), str(tmp_path / "b.png"))
    assert (tmp_path / "b.png").stat().st_size > 1000


# ----------------------------------------------------------------------- --help examples, run elsewhere
def _examples(script):
    """The ``python scripts/<script> ...`` lines of the script's docstring (continuation lines joined)."""
    doc = re.sub(r"\\\n\s*", " ", run(script, ["--help"], ROOT).stdout)
    return [shlex.split(m.split("#")[0])[2:] for m in re.findall(rf"python scripts/{script}[^\n]*", doc)]


# smaller sizes appended to each example (argparse keeps the last value) so the test stays fast
SHRINK = {"generate.py": ["--quiet"],
          "ablate.py": ["--study", "temperature,cache", "--temperatures", "0", "--caches", "none", "--n", "1",
                        "--tasks", "add", "--gen-length", "8", "--threads", "1", "--quiet"],
          "eval_tasks.py": ["--n", "1", "--tasks", "add", "--threads", "1", "--quiet"],
          "train_tiny.py": ["--steps", "2", "--eval-per-task", "1", "--threads", "1"], "report.py": []}


def test_help_examples_run_outside_the_checkout(outside):
    ran = []
    for script in ("generate.py", "ablate.py", "report.py", "eval_tasks.py", "train_tiny.py"):
        examples = _examples(script)
        assert examples, script
        for args in examples:
            if any(a.startswith("/path/to") for a in args):
                continue  # needs a downloaded model or a GPU (the README's GPU section)
            p = run(script, args + SHRINK[script], outside)
            assert p.returncode == 0, (script, args, p.stderr[-2000:])
            ran.append(script)
    assert set(ran) == set(SHRINK), ran


def test_generate_script_decodes_llada2_with_its_official_semantics():
    """An LLaDA2 checkpoint goes through generate_llada2 (absolute block grid, threshold rule), not LLaDA's loop."""
    import json
    from types import SimpleNamespace

    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import generate as script
    from llada_triton.models import REFERENCE_OPS, load_model

    data = os.path.join(ROOT, "tests", "data", "llada2-tiny")
    with open(os.path.join(data, "cases.json")) as f:
        gold = json.load(f)
    case = next(c for c in gold["cases"] if c["name"] == "llada2_p5_g32_b8_s8_thr0.95")
    params, cfg = load_model(os.path.join(data, "checkpoint"), mask_token_id=gold["ids"]["mask"])
    kw = case["params"]
    args = SimpleNamespace(cache="block", gen_length=kw["gen_length"], block_length=kw["block_length"],
                           steps=kw["steps"], threshold=kw["threshold"], temperature=0.0, seed=0)
    res = script._generate_llada2(None, args, params, cfg, case["prompt"], REFERENCE_OPS)
    assert res.tokens[0, :len(case["expected"][0])].tolist() == case["expected"][0]
    assert res.nfe == [kw["nfe"]]
