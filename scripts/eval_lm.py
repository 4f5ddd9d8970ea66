"""lm-evaluation-harness on llada-triton: lm-eval's own command line with the ``llada_triton`` model.

    pip install -e ".[eval]"
    python scripts/eval_lm.py --tasks gsm8k --num_fewshot 5 --batch_size 32 --output_path out/ --log_samples \\
        --model_args pretrained=/path/to/LLaDA-8B-Instruct,gen_length=256,block_length=32,steps=256,cache=block
    torchrun --nproc_per_node=8 scripts/eval_lm.py ...same arguments...   # one process per GPU (NCCL)

Every lm-eval ``run`` option works (``--tasks``, ``--num_fewshot``, ``--limit``, ``--output_path``,
``--log_samples``, ``--apply_chat_template``, ``--include_path``, ``--gen_kwargs``, ``--seed``, ...);
``--model`` defaults to ``llada_triton`` and ``--batch_size`` to 32 (the decoder's slots and the Monte-Carlo
mini-batch). ``--model_args`` keys: ``llada_triton.eval.options.EvalOptions`` (``pretrained``, ``dtype``,
``ops``, ``gen_length``, ``block_length``, ``steps``, ``cache``, ``threshold``, ``factor``, ``temperature``,
``remasking``, ``cfg_scale``, ``logits_eos_inf``, ``confidence_eos_eot_inf``, ``early_stop``, ``cuda_graphs``,
``seed``, ``mc_num``, ``mc_batch_size``, ``check_greedy``, ``chunk_size``, ``stats_path``; ``model_path``
and ``cfg`` as in LLaDA's ``eval_llada.py``). Checked before the model loads; unknown keys are errors.
Per family (read from config.json): ``decoding=llada2`` (the default for LLaDA2 checkpoints; ``llada`` for
LLaDA's rules) is LLaDA2.0's official decoder (``threshold`` default 0.95, ``minimal_topk``, ``eos_early_stop``;
``steps`` per block, default ``block_length``); Dream checkpoints default to ``remasking=maskgit_plus``
(also ``topk_margin``, ``entropy``, ``origin``; ``top_p``, ``top_k``, ``alg_temp``) with ``cache=none`` (one block
of ``gen_length``, Dream's ``diffusion_generate``); ``prefix`` / ``dual`` are Fast-dLLM's Dream decoders.

Under ``torchrun`` each process loads the model on ``cuda:LOCAL_RANK`` (gloo on CPU); every process runs the
harness on all requests, the model shards the work and gathers it, and only rank 0 prints and writes.
The per-task decoding stats go to ``<output_path>/llada_triton_stats.json`` (or ``stats_path``).

Offline: a local task is a YAML over a JSONL file (``--include_path DIR``; ``tests/test_eval_lm.py`` writes
one). Standard tasks read the Hugging Face datasets cache: download once where there is network
(``python -c "import datasets; datasets.load_dataset('openai/gsm8k', 'main')"``, likewise
``openai/openai_humaneval``), copy ``~/.cache/huggingface`` over, then run with
``HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1``. HumanEval executes generated code: add
``--confirm_run_unsafe_code`` and ``HF_ALLOW_CODE_EVAL=1`` (its post-processing is the task's own filter).
"""
from __future__ import annotations

import contextlib
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

DEFAULT_BATCH_SIZE = 32
STATS_FILE = "llada_triton_stats.json"


def _argv(argv):
    argv = list(argv)
    if not argv or argv[0] != "run":
        argv = ["run"] + argv
    if not any(a in ("--model", "-M") or a.startswith("--model=") for a in argv):
        argv += ["--model", "llada_triton"]
    if not any(a in ("--batch_size", "-b") or a.startswith("--batch_size=") for a in argv):
        argv += ["--batch_size", str(DEFAULT_BATCH_SIZE)]
    return argv


def prepare(args) -> None:
    """Check ``args`` (lm-eval's parsed ``run`` namespace) and fill our defaults; ValueError on bad input."""
    from llada_triton.eval.options import parse_model_args

    if args.model != "llada_triton":
        return
    model_args = dict(args.model_args or {})
    for key in ("batch_size", "device"):
        if key in model_args:
            raise ValueError(f"model_args {key}={model_args[key]!r}: give it as --{key} instead")
    if args.output_path and "stats_path" not in model_args:
        out = args.output_path
        out_dir = os.path.dirname(out) if out.endswith(".json") else out
        model_args["stats_path"] = os.path.join(out_dir or ".", STATS_FILE)
    device = getattr(args, "device", None)
    if device is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1 and device.startswith("cuda:"):
        raise ValueError(f"--device {device} under torchrun: give --device cuda (rank r uses cuda:LOCAL_RANK)")
    parse_model_args(dict(model_args, batch_size=args.batch_size, device=device))
    args.model_args = model_args


def main(argv=None) -> int:
    main_rank = int(os.environ.get("RANK", "0")) == 0
    if not main_rank:  # progress bars on rank 0 only (tqdm reads this when it is first imported)
        os.environ["TQDM_DISABLE"] = "1"
    from lm_eval._cli import HarnessCLI
    from lm_eval.utils import setup_logging

    import llada_triton.eval.lm_eval_model  # noqa: F401  (registers the model "llada_triton")

    argv = _argv(sys.argv[1:] if argv is None else argv)
    device_given = any(a == "--device" or a.startswith("--device=") for a in argv)
    setup_logging("INFO" if main_rank else "ERROR")
    parser = HarnessCLI()
    old_argv, sys.argv = sys.argv, [sys.argv[0]] + argv
    try:
        args = parser.parse_args()
    finally:
        sys.argv = old_argv
    if args.command != "run":
        parser.execute(args)
        return 0
    if not device_given:  # the harness's default is cuda:0; ours: CUDA when present (cuda:LOCAL_RANK per rank)
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        prepare(args)
    except ValueError as e:
        print(f"eval_lm.py: error: {e}", file=sys.stderr)
        return 2
    try:
        if main_rank:
            parser.execute(args)
            return 0
        # other ranks: the same evaluation (their model shares the work), nothing written or printed; errors
        # still reach stderr
        args.output_path, args.log_samples, args.wandb_args, args.trackio_args = None, False, None, None
        args.verbosity = "ERROR"
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
            parser.execute(args)
        return 0
    finally:
        import torch.distributed

        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
