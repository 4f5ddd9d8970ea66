"""Train a small LLaDA-architecture model on the synthetic tasks with LLaDA's SFT objective.

The model is the project's own pure forward (``llada.model.forward`` with ``REFERENCE_OPS``) over params
from ``llada.weights.init_params`` made trainable; there is no second model definition.

Objective (LLaDA SFT, GUIDELINES.md): a sequence is ``chat prompt + answer + <|eot_id|> + eos padding``
to a fixed answer length ``G``. Per sequence ``t ~ U(eps, 1]``; each answer token (eot and eos padding
included) is replaced by ``<|mdm_mask|>`` with probability ``t``; the prompt is never masked. The loss is
the cross-entropy on masked tokens weighted by ``1/t``, summed, divided by the answer length and averaged
over the batch. Prompts of a batch are left-padded with eos and the pads are hidden from attention
(``kv_start``), as ``decode.generate`` does for batched prompts.

Writes a checkpoint in the LLaDA Hugging Face layout to ``--out``: ``model.safetensors`` (bf16, via
``llada.weights.save_checkpoint``), ``config.json`` (every field of the LLaDA config), ``generation_config.json``,
the tokenizer files, ``train_log.json`` and, after the held-out evaluation, ``eval_results.json``.

    python scripts/train_tiny.py --config small --device cpu --out llada-small --steps 20 --eval-per-task 5
    python scripts/train_tiny.py --config default --device cuda --out /path/to/llada-tiny-tasks

Relative ``--out`` paths are relative to the current directory; the shipped checkpoint is
``checkpoints/llada-tiny-tasks`` in the checkout.
"""
from __future__ import annotations

import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, replace
from typing import Dict, Optional, Sequence, Tuple

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
for _p in (_HERE, _ROOT):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import cliutil  # noqa: E402
import eval_tasks  # noqa: E402
import trainutil  # noqa: E402
from trainutil import batch_stream, lr_at, trainable  # noqa: E402
import tasks as tasks_mod  # noqa: E402
from provenance import device_name, git_sha  # noqa: E402
import tiny_tokenizer as ttok  # noqa: E402
from llada_triton.models.config import LLaDAConfig  # noqa: E402
from llada_triton.models.model import forward  # noqa: E402
from llada_triton.models.ops import REFERENCE_OPS  # noqa: E402
from llada_triton.models.weights import Params, init_params, save_checkpoint  # noqa: E402

__all__ = ["TrainConfig", "CONFIGS", "model_config", "corrupt", "diffusion_loss", "batch_loss", "make_batch",
           "write_checkpoint", "hf_config_dict", "main"]

ANSWER_LENGTH = 32   # G: fixed answer length (answer + eot + eos padding), = gen_length at evaluation


@dataclass(frozen=True)
class TrainConfig:
    d_model: int
    n_heads: int
    n_layers: int
    mlp_hidden_size: int
    batch_size: int
    steps: int
    lr: float
    warmup: int
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.1
    betas: Tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    eps: float = 1e-3            # t ~ U(eps, 1]
    init_std: float = 0.02
    rope_theta: float = 500000.0
    eval_per_task: int = 500


CONFIGS: Dict[str, TrainConfig] = {
    # pipeline check on a 2-core CPU: a few minutes, learns part of the tasks
    "small": TrainConfig(d_model=64, n_heads=2, n_layers=2, mlp_hidden_size=176, batch_size=32, steps=600,
                         lr=3e-3, warmup=50, eval_per_task=50),
    # the shipped model (checkpoints/llada-tiny-tasks): 2.7M params, 5.4 MB bf16. 6322 steps is what a
    # --time-budget 370 run fitted on an H200 shared with a second training run (17 it/s, 371 s)
    "default": TrainConfig(d_model=192, n_heads=3, n_layers=6, mlp_hidden_size=512, batch_size=512,
                           steps=6322, lr=1e-3, warmup=500, eval_per_task=500),
    # a wider variant (4.0M params, 8 MB bf16); in the same time it learned addition more slowly
    # (69% held-out after 5705 steps, against 99.6% for "default")
    "large": TrainConfig(d_model=256, n_heads=4, n_layers=6, mlp_hidden_size=512, batch_size=512,
                         steps=5705, lr=1e-3, warmup=500, eval_per_task=500),
}


def model_config(tc: TrainConfig) -> LLaDAConfig:
    ids = ttok.special_ids()
    return LLaDAConfig(
        d_model=tc.d_model, n_heads=tc.n_heads, n_kv_heads=tc.n_heads, n_layers=tc.n_layers,
        mlp_hidden_size=tc.mlp_hidden_size, vocab_size=ttok.padded_vocab_size(), max_sequence_length=4096,
        rope_theta=tc.rope_theta, rms_norm_eps=1e-5, weight_tying=False,
        mask_token_id=ids[ttok.MASK], eos_token_id=ids[ttok.EOS], pad_token_id=ids[ttok.EOS],
        bos_token_id=ids[ttok.BOS], eot_token_id=ids[ttok.EOT], tokenizer_vocab_size=ttok.padded_vocab_size(),
    )


# ------------------------------------------------------------------------------------------- objective
def corrupt(prompt: torch.Tensor, answer: torch.Tensor, mask_id: int, *, eps: float = 1e-3,
            generator: Optional[torch.Generator] = None):
    """Forward process of LLaDA's SFT: mask answer tokens only.

    prompt ``[B, P]``, answer ``[B, G]`` (int64). Draws ``t ~ U(eps, 1]`` per row (``(1 - eps) u + eps``
    with ``u ~ U[0, 1)``, as LLaDA) and masks each answer token with probability ``t``.
    Returns ``(tokens [B, P + G], masked bool [B, G], t fp32 [B])``; random numbers come from the CPU
    ``generator`` so a seed fixes them on any device.
    """
    B, G = answer.shape
    u = torch.rand(B, generator=generator)
    t = (1.0 - eps) * u + eps
    masked = torch.rand(B, G, generator=generator) < t[:, None]
    t, masked = t.to(answer.device), masked.to(answer.device)
    noisy = torch.where(masked, torch.full_like(answer, mask_id), answer)
    return torch.cat([prompt, noisy], dim=1), masked, t


def diffusion_loss(logits: torch.Tensor, answer: torch.Tensor, masked: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``mean_b [ sum_{masked i} CE(logits[b, i], answer[b, i]) / t[b] ] / G``.

    logits ``[B, G, V]`` at the answer positions; the division by the answer length ``G`` (answer, eot and
    eos padding all count, as LLaDA's ``answer_lengths``) makes the loss a per-token average.
    """
    B, G, V = logits.shape
    ce = F.cross_entropy(logits.float().reshape(B * G, V), answer.reshape(B * G), reduction="none").view(B, G)
    return ((ce * masked) / t[:, None]).sum() / (B * G)


def batch_loss(params: Params, cfg: LLaDAConfig, prompt: torch.Tensor, pad: Optional[torch.Tensor],
               answer: torch.Tensor, *, eps: float, generator: torch.Generator, autocast: bool = False) -> torch.Tensor:
    """One training loss on a left-padded batch. ``pad`` [B]: left-padding widths, hidden from attention
    (None when no row is padded). ``autocast``: bf16 autocast on the params' device type (fp32 master
    weights and residual stream). No host sync."""
    tokens, masked, t = corrupt(prompt, answer, cfg.mask_token_id, eps=eps, generator=generator)
    P, G = prompt.shape[1], answer.shape[1]
    with torch.autocast(params.device.type, dtype=torch.bfloat16, enabled=autocast):
        logits = forward(params, cfg, tokens, kv_start=pad, rows=slice(P, P + G), ops=REFERENCE_OPS)
    return diffusion_loss(logits, answer, masked, t)


# ------------------------------------------------------------------------------------------------ data
_ENCODER: Optional[ttok.ChatEncoder] = None


def make_batch(seed: int, index: int, batch_size: int, task_names: Sequence[str],
               answer_length: int = ANSWER_LENGTH):
    """Batch ``index`` of the training stream for ``seed``: train-split problems, the task of each row
    uniform over ``task_names``. Returns numpy ``(prompt [B, P], pad [B], answer [B, G])``."""
    global _ENCODER
    if _ENCODER is None:
        _ENCODER = ttok.ChatEncoder()
    rng = random.Random(f"train/{seed}/{index}")
    probs = tasks_mod.sample_problems(rng, batch_size, task_names, split="train")
    return _ENCODER.batch([p.prompt for p in probs], [p.answer for p in probs], answer_length)


def _stream(seed: int, tc: TrainConfig, task_names: Sequence[str], pool, start: int = 0):
    return batch_stream(make_batch, lambda k: (seed, k, tc.batch_size, tuple(task_names), ANSWER_LENGTH),
                        tc.steps, pool, start=start)


# ---------------------------------------------------------------------------------------- checkpoint
def hf_config_dict(cfg: LLaDAConfig) -> Dict:
    """``config.json`` with every field of LLaDA-8B-Instruct's config (same key set), sizes of ``cfg``."""
    d = {
        "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0, "architectures": ["LLaDAModelLM"],
        "attention_dropout": 0.0, "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
        "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig",
                     "AutoModel": "modeling_llada.LLaDAModelLM",
                     "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM"},
        "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "d_model": cfg.d_model,
        "embedding_dropout": 0.0, "embedding_size": cfg.vocab_size, "eos_token_id": cfg.eos_token_id,
        "flash_attention": False, "include_bias": False, "include_qkv_bias": False, "init_cutoff_factor": None,
        "init_device": "meta", "init_fn": "mitchell", "init_std": 0.02, "input_emb_norm": False,
        "layer_norm_type": "rms", "layer_norm_with_affine": True, "mask_token_id": cfg.mask_token_id,
        "max_sequence_length": cfg.max_sequence_length, "mlp_hidden_size": cfg.mlp_hidden_size,
        "mlp_ratio": 4, "model_type": "llada", "multi_query_attention": None, "n_heads": cfg.n_heads,
        "n_kv_heads": cfg.n_kv_heads, "n_layers": cfg.n_layers, "pad_token_id": cfg.pad_token_id,
        "precision": "amp_bf16", "residual_dropout": 0.0, "rms_norm_eps": cfg.rms_norm_eps, "rope": True,
        "rope_full_precision": True, "rope_theta": cfg.rope_theta, "scale_logits": False,
        "torch_dtype": "bfloat16", "transformers_version": "4.46.3", "use_cache": False,
        "vocab_size": cfg.tokenizer_vocab_size or cfg.vocab_size, "weight_tying": False,
    }
    return dict(sorted(d.items()))


def write_checkpoint(params: Params, cfg: LLaDAConfig, out: str) -> None:
    """The LLaDA HF layout: bf16 safetensors, config.json, generation_config.json, tokenizer files."""
    os.makedirs(out, exist_ok=True)
    save_checkpoint(params, cfg, out, dtype=torch.bfloat16)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(hf_config_dict(cfg), f, indent=2)
        f.write("\n")
    with open(os.path.join(out, "generation_config.json"), "w") as f:
        json.dump({"_from_model_config": True, "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
                   "transformers_version": "4.46.3"}, f, indent=2)
        f.write("\n")
    ttok.save_tokenizer(out)


# ---------------------------------------------------------------------------------------------- utils
def _quick_eval_setup(task_names: Sequence[str], seed: int, n: int = 64):
    return {"tok": ttok.build_tokenizer(),
            "problems": {t: tasks_mod.heldout_problems(t, n, seed + 1) for t in task_names}}


@torch.no_grad()
def _quick_eval(params: Params, cfg: LLaDAConfig, quick: Dict) -> Dict[str, float]:
    rows = eval_tasks.evaluate(params, cfg, quick["tok"], quick["problems"], gen_length=ANSWER_LENGTH,
                               block_length=32, steps=ANSWER_LENGTH, batch_size=256)
    return {r["task"]: round(r["accuracy"], 3) for r in rows}


# ----------------------------------------------------------------------------------------------- main
def main(config: str = "small", device: str = "cpu", out: str = "runs/llada-tiny", seed: int = 0,
         steps: Optional[int] = None, batch_size: Optional[int] = None, lr: Optional[float] = None,
         task_names: Sequence[str] = tuple(tasks_mod.TASKS), workers: int = 0, eval_per_task: Optional[int] = None,
         eval_batch: int = 256, log_every: int = 100, time_limit: Optional[float] = None,
         time_budget: Optional[float] = None, eval_every: int = 0, threads: Optional[int] = None,
         bf16: bool = False) -> Dict:
    tc = CONFIGS[config]
    over = {k: v for k, v in dict(steps=steps, batch_size=batch_size, lr=lr, eval_per_task=eval_per_task).items()
            if v is not None}
    tc = replace(tc, **over)
    if threads:
        torch.set_num_threads(threads)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but no CUDA device is visible")
    pool = None
    if workers > 0:  # spawned (not forked) workers: safe whatever the CUDA state of this process
        import multiprocessing as mp

        pool = mp.get_context("spawn").Pool(workers)
    torch.manual_seed(seed)
    cuda = device.startswith("cuda")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    cfg = model_config(tc)
    params = init_params(cfg, device=device, dtype=torch.float32, seed=seed, std=tc.init_std)
    named = trainable(params)
    opt = trainutil.make_optimizer(named, tc, cuda)
    n_params = sum(t.numel() for _, t in named)
    gen = torch.Generator().manual_seed(seed)
    print(f"[train_tiny] config={config} {asdict(tc)}", flush=True)
    print(f"[train_tiny] {n_params:,} params, device={device_name(device)}, tasks={list(task_names)}",
          flush=True)

    log = {"config": config, "train_config": asdict(tc), "seed": seed, "tasks": list(task_names),
           "answer_length": ANSWER_LENGTH, "n_params": n_params, "device": device_name(device),
           "torch": torch.__version__, "git_sha": git_sha(short=False), "argv": sys.argv, "loss": [], "stopped_early": False}
    t0 = time.perf_counter()
    step = 0
    planner = trainutil.StepPlanner(time_budget, tc.warmup, cuda, t0)
    quick = _quick_eval_setup(task_names, seed) if eval_every else None
    stream = _stream(seed, tc, task_names, pool)
    while True:
        try:
            pt, pad, ans = next(stream)
        except StopIteration:
            break
        lr_now = lr_at(step, tc)
        for g in opt.param_groups:
            g["lr"] = lr_now
        pad = torch.from_numpy(pad).to(device) if pad.any() else None
        pt = torch.from_numpy(pt).to(device)
        ans = torch.from_numpy(ans).to(device)
        loss = batch_loss(params, cfg, pt, pad, ans, eps=tc.eps, generator=gen, autocast=cuda or bf16)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_([t for _, t in named], tc.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % log_every == 0 or step == 0:
            el = time.perf_counter() - t0
            rec = {"step": step + 1, "loss": round(float(loss.detach()), 5), "grad_norm": round(float(gnorm), 4),
                   "lr": lr_now, "seconds": round(el, 1)}
            log["loss"].append(rec)
            print(f"[train_tiny] step {step + 1}/{tc.steps} loss {rec['loss']:.4f} gnorm {rec['grad_norm']:.3f} "
                  f"lr {lr_now:.2e} {el:.0f}s ({(step + 1) / el:.1f} it/s)", flush=True)
        new_tc = planner.replan("train_tiny", step + 1, tc, log)
        if new_tc is not None:
            tc = new_tc
            stream.close()
            stream = _stream(seed, tc, task_names, pool, start=step + 1)
        if quick is not None and ((step + 1) % eval_every == 0):
            acc = _quick_eval(params, cfg, quick)
            log.setdefault("quick_eval", []).append({"step": step + 1, **acc})
            print(f"[train_tiny] step {step + 1} held-out quick eval {acc}", flush=True)
        if step + 1 >= tc.steps:
            break
        if time_limit is not None and time.perf_counter() - t0 > time_limit:
            log["stopped_early"] = True
            print(f"[train_tiny] time limit {time_limit}s reached at step {step + 1}", flush=True)
            break
        step += 1
    trainutil.finish("train_tiny", stream, pool, cuda, log, t0, step + 1, named,
                     lambda: write_checkpoint(params, cfg, out), out)

    result = {"log": log}
    if tc.eval_per_task > 0:
        result["eval"] = eval_tasks.main(model=out, n=tc.eval_per_task, device=device,
                                         dtype="bfloat16" if cuda else "float32", batch_size=eval_batch,
                                         tasks=task_names, write_json=os.path.join(out, "eval_results.json"))
    return result


def parse_args(argv=None) -> Dict:
    """Keyword arguments of :func:`main`, checked (one-line errors, exit status 2) before training starts."""
    ap = cliutil.ArgumentParser(prog=os.path.basename(__file__), description=__doc__)
    trainutil.add_common_args(ap, CONFIGS, "small", tuple(tasks_mod.TASKS), tuple(tasks_mod.TASKS))
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast on CPU too (always on for CUDA)")
    ap.add_argument("--eval-batch", type=cliutil.positive_int, default=256)
    ap.add_argument("--time-limit", type=float, help="stop training after this many seconds (then save + eval)")
    ap.add_argument("--eval-every", type=cliutil.nonneg_int, default=0,
                    help="quick held-out eval (64 per task) every N steps")
    a = ap.parse_args(argv)
    trainutil.check_common_args(ap, a, CONFIGS)
    return dict(config=a.config, device=a.device, out=a.out, seed=a.seed, steps=a.steps, batch_size=a.batch_size,
                lr=a.lr, task_names=a.tasks, workers=a.workers,
                eval_per_task=a.eval_per_task, eval_batch=a.eval_batch, log_every=a.log_every,
                time_limit=a.time_limit, time_budget=a.time_budget, eval_every=a.eval_every, threads=a.threads,
                bf16=a.bf16)


if __name__ == "__main__":
    main(**parse_args())
