#!/usr/bin/env python
"""Does lm-eval add overhead? The LLaDA-8B shape (random bf16 weights made on the GPU) decodes the same
prompts through ``run_many`` called directly and through the harness (``simple_evaluate`` with the
``llada_triton`` model over a local generation task), alternately; also the shipped tiny model evaluated
through the harness with the Triton kernels. Writes ``bench_eval_lm.json`` and ``.md`` into ``--out``.

    python scripts/bench_eval_lm.py --out results/eval_lm            # 64 prompts of 128 tokens, 256 generated

The prompts are random characters: the shipped tokenizer maps each to one id, so every prompt has exactly
``--prompt-len`` tokens; with random weights the answers are meaningless, and both paths must give the
same ones (``identical_outputs``). Harness wall time includes building the requests and scoring.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import string
import sys
import tempfile
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(_HERE)
for _p in (_HERE, ROOT):
    if _p not in sys.path:
        sys.path.insert(0, _p)

TINY = os.path.join(ROOT, "checkpoints", "llada-tiny-tasks")


def _write_task(folder: str, texts) -> str:
    from lm_eval_tasks import write_task

    write_task(folder, "bench_prompts", [dict(prompt=t, answer="") for t in texts], "gen", until=())
    return "bench_prompts"


def _harness(lm, task, folder):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    t0 = time.perf_counter()
    res = simple_evaluate(model=lm, tasks=[task], task_manager=TaskManager(include_path=folder,
                                                                           include_defaults=False),
                          log_samples=True)
    return time.perf_counter() - t0, [s["resps"][0][0] for s in res["samples"][task]]


SMALL = dict(d_model=128, n_heads=2, n_kv_heads=2, n_layers=2, mlp_hidden_size=256, vocab_size=512,
             max_sequence_length=1024, rope_theta=500000.0, mask_token_id=300, eos_token_id=301, pad_token_id=301,
             bos_token_id=302, eot_token_id=303)


def bench_8b(args, tok):
    """Alternate run_many and the harness on the same prompts; returns the report dict."""
    import torch

    from _bench import LLADA_8B
    from llada_triton.decode import run_many
    from llada_triton.eval import Dist, EvalRunner, parse_model_args
    from llada_triton.eval.lm_eval_model import LLaDATritonLM
    from llada_triton.models import REFERENCE_OPS, LLaDAConfig, init_params, triton_ops
    from llada_triton.models.chat import decode_answer, strip_answer

    gpu = not args.small
    cfg = LLaDAConfig(**(SMALL if args.small else LLADA_8B))
    params = init_params(cfg, device="cuda" if gpu else "cpu", dtype=torch.bfloat16 if gpu else torch.float32)
    ops = triton_ops() if gpu else REFERENCE_OPS
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    rng = random.Random(0)
    texts = ["".join(rng.choices(string.ascii_lowercase + string.digits, k=args.prompt_len))
             for _ in range(args.prompts)]
    ids = [tok(t)["input_ids"] for t in texts]
    assert all(len(i) == args.prompt_len for i in ids), "the tokenizer must map each character to one id"
    dec = dict(gen_length=args.gen_length, block_length=args.block_length, steps=args.gen_length)
    opts = parse_model_args(dict(pretrained=TINY, batch_size=args.prompts, chunk_size=args.prompts, **dec))
    lm = LLaDATritonLM(runner=EvalRunner(opts, params, cfg, tok, Dist(device="cuda" if gpu else "cpu"), ops))
    folder = tempfile.mkdtemp()
    task = _write_task(folder, texts)
    run_many(params, cfg, ids[:8], slots=args.prompts, ops=ops, cuda_graphs=gpu, **dec)  # compile + capture
    direct_s, harness_s, harness_gen_s = [], [], []
    for _ in range(args.repeats):
        sync()
        t0 = time.perf_counter()
        res = run_many(params, cfg, ids, slots=args.prompts, ops=ops, cuda_graphs=gpu, **dec)
        sync()
        direct_s.append(time.perf_counter() - t0)
        wall, answers = _harness(lm, task, folder)
        harness_s.append(wall)
        harness_gen_s.append(lm.stats["generate_until"][task]["seconds"])
    row = lm.stats["generate_until"][task]
    direct_answers = [decode_answer(tok, t, cfg) for t in res.tokens]
    direct_tokens = sum(len(strip_answer(t, cfg)) for t in res.tokens)
    med = statistics.median
    return dict(shape="small-cpu" if args.small else "llada-8b", prompts=args.prompts, prompt_len=args.prompt_len,
                **dec, slots=args.prompts, answer_tokens=row["tokens"], nfe=row["nfe"], batched_steps=res.steps,
                direct_s=direct_s, harness_s=harness_s, harness_generate_s=harness_gen_s,
                direct_median_s=med(direct_s), harness_median_s=med(harness_s),
                harness_over_direct=round(med(harness_s) / med(direct_s), 4),
                harness_generate_over_direct=round(med(harness_gen_s) / med(direct_s), 4),
                identical_outputs=(answers == direct_answers and row["tokens"] == direct_tokens
                                   and row["nfe"] == sum(res.nfe)))


def tiny_through_harness(args, folder):
    """The shipped model (float32, Triton kernels; torch reference ops with --small) on the local tiny tasks
    through the harness."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from lm_eval_tasks import write_tasks
    from llada_triton.eval.lm_eval_model import LLaDATritonLM

    write_tasks(folder, n=args.tiny_docs)
    lm = LLaDATritonLM(pretrained=TINY, dtype="float32", ops="reference" if args.small else "triton",
                       device="cpu" if args.small else "cuda", gen_length=32, block_length=32, batch_size=32,
                       mc_num=32)
    res = simple_evaluate(model=lm, tasks=["tiny_gen", "tiny_mc"], apply_chat_template=True,
                          task_manager=TaskManager(include_path=folder, include_defaults=False))
    return dict(scores={t: {k: v for k, v in r.items() if k != "alias"} for t, r in res["results"].items()},
                stats=lm.stats)


def render(report) -> str:
    b = report["llada_8b"]
    lines = [f"# lm-eval overhead, {b['shape']} shape ({report['env']['gpu']}, torch {report['env']['torch']}, "
             f"triton {report['env']['triton']}, {report['env']['sha']})", "",
             f"{b['prompts']} prompts x {b['prompt_len']} tokens, gen {b['gen_length']}, block {b['block_length']}, "
             f"{b['slots']} slots, block cache, Triton + CUDA graphs, {b['answer_tokens']} answer tokens", "",
             "| path | median s | runs (s) |", "|---|---|---|",
             f"| run_many direct | {b['direct_median_s']:.3f} | {', '.join(f'{x:.3f}' for x in b['direct_s'])} |",
             f"| harness (simple_evaluate) | {b['harness_median_s']:.3f} | "
             f"{', '.join(f'{x:.3f}' for x in b['harness_s'])} |",
             f"| harness: generate_until alone | {statistics.median(b['harness_generate_s']):.3f} | "
             f"{', '.join(f'{x:.3f}' for x in b['harness_generate_s'])} |", "",
             f"harness / direct = {b['harness_over_direct']:.3f} (generate_until alone: "
             f"{b['harness_generate_over_direct']:.3f}); identical outputs (texts, answer tokens, NFE): "
             f"{b['identical_outputs']}", ""]
    if "tiny" in report:
        lines += ["## Shipped tiny model through the harness (Triton kernels, float32)", "",
                  "```", json.dumps(report["tiny"], indent=1), "```"]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for bench_eval_lm.json and .md")
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--gen-length", type=int, default=256)
    p.add_argument("--block-length", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tiny-docs", type=int, default=300, help="documents per tiny task (0: skip that part)")
    p.add_argument("--small", action="store_true", help="a 2-layer random model on the CPU (a smoke test)")
    args = p.parse_args(argv)
    from llada_triton.models.chat import load_tokenizer
    from provenance import environment

    os.makedirs(args.out, exist_ok=True)
    report = dict(env=environment("cpu" if args.small else "cuda"))
    if args.tiny_docs:
        report["tiny"] = tiny_through_harness(args, tempfile.mkdtemp())
    report["llada_8b"] = bench_8b(args, load_tokenizer(TINY))
    with open(os.path.join(args.out, "bench_eval_lm.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(args.out, "bench_eval_lm.md"), "w") as f:
        f.write(render(report))
    print(render(report))


if __name__ == "__main__":
    main()
