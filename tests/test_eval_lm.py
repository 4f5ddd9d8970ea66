"""The lm-eval model through scripts/eval_lm.py on the shipped tiny model: scores equal generate() / the
Monte-Carlo estimator called directly, and torchrun with 2 gloo processes gives the same results."""
import glob
import json
import os
import shutil
import subprocess
import sys

import pytest

from llada_triton.eval.distributed import Dist, gather_results, shard_indices

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CKPT = os.path.join(ROOT, "checkpoints", "llada-tiny-tasks")
N_DOCS = 6
MODEL_ARGS = f"pretrained={CKPT},gen_length=32,block_length=32,steps=32,mc_num=4,chunk_size=4,seed=5"
BATCH = 2


def _env():
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", TRITON_INTERPRET="1")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _launch(prefix, tasks_dir, out_dir, *extra, model_args=MODEL_ARGS):
    cmd = prefix + [os.path.join(ROOT, "scripts", "eval_lm.py"), "--include_path", tasks_dir,
                    "--tasks", "tiny_gen,tiny_mc", "--apply_chat_template", "--batch_size", str(BATCH),
                    "--model_args", model_args, "--output_path", out_dir, "--log_samples", *extra]
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)


def _results(out_dir):
    (res,) = glob.glob(os.path.join(out_dir, "*", "results_*.json"))
    with open(res) as f:
        scores = {t: {k: v for k, v in r.items() if k != "alias"} for t, r in json.load(f)["results"].items()}
    samples = {}
    for task in ("tiny_gen", "tiny_mc"):
        (path,) = glob.glob(os.path.join(out_dir, "*", f"samples_{task}_*.jsonl"))
        with open(path) as f:
            samples[task] = sorted(((d["doc_id"], json.dumps(d["resps"])) for d in map(json.loads, f)))
    with open(os.path.join(out_dir, "llada_triton_stats.json")) as f:
        stats = json.load(f)
    return scores, samples, stats


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    from lm_eval_tasks import write_tasks

    base = tmp_path_factory.mktemp("lm_eval")
    write_tasks(str(base / "tasks"), n=N_DOCS)
    single = _launch([sys.executable], str(base / "tasks"), str(base / "one"))
    assert single.returncode == 0, single.stderr[-3000:]
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    dp = _launch([torchrun, "--standalone", "--nproc_per_node=2"], str(base / "tasks"), str(base / "two"))
    assert dp.returncode == 0, dp.stderr[-3000:]
    return dict(tasks=str(base / "tasks"), one=_results(str(base / "one")), two=_results(str(base / "two")),
                dp_stdout=dp.stdout)


def _docs(tasks_dir, name):
    with open(os.path.join(tasks_dir, f"{name}.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def tiny():
    """The shipped model in float32 on the CPU and its tokenizer."""
    from llada_triton.models import load_model
    from llada_triton.models.chat import load_tokenizer

    return (*load_model(CKPT), load_tokenizer(CKPT))


def test_generation_scores_equal_generate(runs, tiny):
    from llada_triton.decode import generate
    from llada_triton.models.chat import chat_prompt_ids, decode_answer

    params, cfg, tok = tiny
    scores, samples, stats = runs["one"]
    hits, answers = [], []
    for d in _docs(runs["tasks"], "tiny_gen"):
        out = generate(params, cfg, [chat_prompt_ids(tok, d["prompt"])], gen_length=32, block_length=32, steps=32,
                       cache="block")
        text = decode_answer(tok, out.tokens[0].tolist(), cfg).split("\n")[0]
        answers.append(text)
        hits.append(float(text == d["answer"]))
    assert [json.loads(r) for _, r in samples["tiny_gen"]] == [[[a]] for a in answers]
    assert scores["tiny_gen"]["exact_match,none"] == pytest.approx(sum(hits) / len(hits), abs=1e-12)
    assert sum(hits) >= N_DOCS // 2  # the model answers (else equality would prove little)
    row = stats["generate_until"]["tiny_gen"]
    assert row["requests"] == N_DOCS and row["tokens"] == sum(len(tok(a)["input_ids"]) for a in answers)


def test_multiple_choice_scores_equal_estimator(runs, tiny):
    import torch

    from llada_triton.eval.likelihood import mc_loglikelihood

    params, cfg, tok = tiny
    scores, samples, _ = runs["one"]
    hits, lls = [], []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the harness processes (OMP_NUM_THREADS=1): CPU GEMMs round by thread count
    for d in _docs(runs["tasks"], "tiny_mc"):
        # eval_llada.py's split: the context's trailing whitespace (the template's "\n\n") joins the continuation
        text = tok.apply_chat_template([{"role": "user", "content": d["prompt"]}], tokenize=False,
                                       add_generation_prompt=True)
        assert text.endswith("\n\n")
        ctx = tok(text[:-2], add_special_tokens=False)["input_ids"]
        ll = [mc_loglikelihood(params, cfg, ctx, tok("\n\n" + c, add_special_tokens=False)["input_ids"], mc_num=4,
                               batch_size=BATCH, seed=5)[0] for c in d["choices"]]
        lls.append(ll)
        hits.append(float(max(range(len(ll)), key=ll.__getitem__) == d["label"]))
    torch.set_num_threads(threads)
    logged = [[float(r[0][0]) for r in json.loads(resps)] for _, resps in samples["tiny_mc"]]
    assert [x for row in logged for x in row] == pytest.approx([x for row in lls for x in row], rel=1e-12)
    assert scores["tiny_mc"]["acc,none"] == pytest.approx(sum(hits) / len(hits), abs=1e-12)


def test_torchrun_two_processes_same_results(runs):
    one_scores, one_samples, one_stats = runs["one"]
    two_scores, two_samples, two_stats = runs["two"]
    assert two_scores == one_scores
    assert two_samples == one_samples
    for kind in ("generate_until", "loglikelihood"):
        for task, row in one_stats[kind].items():
            for key in ("requests", "tokens", "nfe", "forwards"):
                assert two_stats[kind][task][key] == row[key], (kind, task, key)
    assert runs["dp_stdout"].count("exact_match") == 1  # only rank 0 prints the table


def test_bad_model_args_fail_before_loading(tmp_path):
    r = _launch([sys.executable], str(tmp_path), str(tmp_path / "out"), model_args=f"pretrained={CKPT},stepz=3")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("eval_lm.py: error: unknown model_args key 'stepz'")
    assert not (tmp_path / "out").exists()


def test_shard_indices_partition_and_balance():
    costs = [5, 1, 9, 3, 3, 7, 2]
    parts = [shard_indices(len(costs), Dist(rank=r, world_size=3), costs) for r in range(3)]
    assert sorted(i for p in parts for i in p) == list(range(len(costs)))
    loads = [sum(costs[i] for i in p) for p in parts]
    assert max(loads) - min(loads) <= max(costs)
    with pytest.raises(ValueError, match="world size 8 is larger than the number of requests \\(7\\)"):
        shard_indices(len(costs), Dist(rank=0, world_size=8), costs)


def test_gather_single_process_restores_order():
    dist = Dist()
    idx = shard_indices(4, dist, costs=[1, 4, 2, 3])
    assert gather_results(idx, [f"r{i}" for i in idx], 4, dist) == ["r0", "r1", "r2", "r3"]
    with pytest.raises(RuntimeError, match="no rank returned units"):
        gather_results([0, 1], ["a", "b"], 3, dist)


@pytest.mark.parametrize("args,match", [
    ({}, "needs pretrained=DIR"),
    ({"pretrained": "/no/such/dir"}, "is not a directory"),
    ({"pretrained": CKPT, "stepz": 3}, "unknown model_args key 'stepz'"),
    ({"pretrained": CKPT, "cache": "full"}, "cache='full': choose one of none, prefix, dual, block"),
    ({"pretrained": CKPT, "gen_length": 30, "block_length": 32}, "multiple of block_length=32"),
    ({"pretrained": CKPT, "gen_length": 32, "block_length": 8, "steps": 6}, "steps=6 must be a positive multiple"),
    ({"pretrained": CKPT, "mc_num": 6, "batch_size": 4}, "mc_batch_size=4 must divide mc_num=6"),
    ({"pretrained": CKPT, "threshold": 0.9, "factor": 1.0}, "threshold and factor are exclusive"),
    ({"pretrained": CKPT, "batch_size": "auto"}, "batch_size='auto': give an int"),
    ({"pretrained": CKPT, "early_stop": "maybe"}, "early_stop='maybe' must be a bool"),
    ({"pretrained": CKPT, "cfg": 0.5, "cfg_scale": 1.0}, "given twice"),
])
def test_model_args_errors(args, match):
    from llada_triton.eval.options import parse_model_args

    with pytest.raises(ValueError, match=match):
        parse_model_args(args)


def test_model_args_aliases_and_types():
    from llada_triton.eval.options import parse_model_args

    o = parse_model_args({"model_path": CKPT, "cfg": "0.5", "batch_size": "8", "early_stop": "false",
                          "threshold": "None", "trust_remote_code": True})
    assert (o.pretrained, o.cfg_scale, o.batch_size, o.early_stop, o.threshold) == (CKPT, 0.5, 8, False, None)
    assert (o.mc_batch, o.chunk, o.decode_steps) == (8, 32, o.gen_length)


def _runner(world_size, **kw):
    from llada_triton.eval.options import parse_model_args
    from llada_triton.eval.runner import EvalRunner
    from llada_triton.models import REFERENCE_OPS, load_model
    from llada_triton.models.chat import load_tokenizer

    params, cfg = load_model(CKPT)
    opts = parse_model_args(dict(dict(pretrained=CKPT, gen_length=32, block_length=32), **kw))
    return EvalRunner(opts, params, cfg, load_tokenizer(CKPT), Dist(rank=0, world_size=world_size), REFERENCE_OPS)


def test_world_size_larger_than_work_units():
    runner = _runner(3, chunk_size=4)
    with pytest.raises(ValueError, match="world size 3 is larger than the number of decoding chunks"):
        runner.generate(["1+2=", "3+4="], [[], []], ["t", "t"])
    with pytest.raises(ValueError, match="world size 3 is larger than the number of requests \\(2\\)"):
        runner.loglikelihood([("1+2=", "3"), ("1+2=", "4")], ["t", "t"])


def test_loglikelihood_rolling_refused():
    from llada_triton.eval.lm_eval_model import LLaDATritonLM

    lm = LLaDATritonLM(runner=_runner(1))
    with pytest.raises(NotImplementedError, match="does not implement loglikelihood_rolling"):
        lm.loglikelihood_rolling([])
    with pytest.raises(ValueError, match="either a runner or model_args"):
        LLaDATritonLM(runner=lm.runner, pretrained=CKPT)


def test_eval_package_imports_neither_lm_eval_nor_triton():
    code = ("import sys, llada_triton.eval; bad = [m for m in ('lm_eval', 'triton') if m in sys.modules]; "
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr


def test_other_caches_decode_length_sorted_chunks_with_their_own_seed(tiny):
    """cache != block: chunks of batch_size prompts (longest first) through generate, each seeded from its own
    tokens, so sampling does not depend on which rank runs the chunk."""
    from llada_triton.decode import generate
    from llada_triton.eval.likelihood import request_seed
    from llada_triton.models.chat import decode_answer

    params, cfg, tok = tiny
    runner = _runner(1, cache="dual", batch_size=2, block_length=8, temperature=0.7)
    texts = ["1+2=", "12+5=", "3+4="]
    got, stats = runner.generate(texts, [[], [], []], ["t"] * 3)
    ids = [runner.encode(t) for t in texts]
    want = [None] * 3
    for chunk in ([1, 0], [2]):
        out = generate(params, cfg, [ids[i] for i in chunk], gen_length=32, block_length=8, steps=32, cache="dual",
                       temperature=0.7, seed=request_seed(0, ids[chunk[0]], [len(chunk)]))
        for row, i in enumerate(chunk):
            want[i] = decode_answer(tok, out.tokens[row].tolist(), cfg)
    assert got == want
    assert stats["t"]["requests"] == 3
