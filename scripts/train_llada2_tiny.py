"""Train a small LLaDA2-architecture MoE on the synthetic tasks as block diffusion, and evaluate it with LLaDA2's decoder.

The model is the project's own pure forward (``llada_triton.models.moe_model.forward``) over params from
``init_moe_params`` made trainable; there is no second model definition. The checkpoint is written in the exact
LLaDA2 Hugging Face layout (``save_moe_checkpoint``: ``config.json`` with every field of LLaDA2.0-mini's,
per-expert bf16 tensors under LLaDA2's names, ``generation_config.json``) with a character tokenizer in LLaDA2's
layout (``<|mask|>``, ``<|endoftext|>``, ``<role>HUMAN</role>...<|role_end|><role>ASSISTANT</role>``).

Objective: block diffusion on LLaDA2's absolute block grid, in the simpler of the two standard forms, **one noisy
block per sequence**. A row is ``chat prompt (P tokens) + answer + <|role_end|> + eos``, the eos padding running to
the end of the grid block that holds position ``P + G - 1`` (``G`` = 32, the decode's ``gen_length``), so a row
is a whole number of blocks, as the decoder's grid with its overhang. Per row: ``t ~ U(eps, 1]``; one block ``b`` is
drawn among the blocks holding answer positions (an eos-only block at a quarter of the weight of one holding
answer text: the decoder stops after the block where eos appears, so it rarely decodes those); its answer
positions (never the prompt tail sharing it) are masked with probability ``t``; blocks before ``b`` stay clean; the attention is block-causal (query ``i`` sees
keys ``< (i // B + 1) B``: its own block and the clean blocks before it; later blocks, invisible to block ``b``,
are never looked at). The loss is the cross-entropy on the masked tokens weighted by ``1 / t``, summed, divided by
the row's answer positions in block ``b`` and averaged over the batch. (The other form concatenates ``[x_t ; x_0]``
and trains every block at once; per token fed it trains about as many answer tokens here, because a row is
only 2-3 blocks.) Routing is balanced without an auxiliary loss, as in Ling 2.0 / DeepSeek-V3 (whose router LLaDA2
has): the expert bias, which only selects experts, gets no gradient and moves by ``bias_rate * sign(mean load -
load)`` after each step.

Evaluation: ``generate`` with ``Llada2Decoding`` (LLaDA2.0's official ``generate``: absolute grid, threshold rule,
eos cut, ``block`` cache; batches of varlen rows, each equal to its batch-1 result), gen_length 32, block_length 32,
steps 32, threshold 0.95, temperature 0, on the saved checkpoint in fp32; ``eval_results.json`` gets per-task
exact match, forwards (NFE) and tokens per forward.

    python scripts/train_llada2_tiny.py --config smoke --out /tmp/l2smoke            # CPU, seconds
    python scripts/train_llada2_tiny.py --config default --device cuda --out checkpoints/llada2-tiny-tasks \\
        --time-budget 370 --workers 6
    python scripts/train_llada2_tiny.py --out checkpoints/llada2-tiny-tasks --eval-only --eval-threshold 1.0 \\
        --tasks mul --eval-per-task 100 --eval-json /tmp/mul_full_steps.json    # the pure schedule (full steps)
"""
from __future__ import annotations

import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
for _p in (_HERE, _ROOT):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import cliutil  # noqa: E402
import tasks as tasks_mod  # noqa: E402
import tiny_tokenizer as ttok  # noqa: E402
import trainutil  # noqa: E402
from provenance import device_name, git_sha  # noqa: E402
from llada_triton.decode import Llada2Decoding, generate  # noqa: E402
from llada_triton.kernels.reference import silu_mul_ref  # noqa: E402
from llada_triton.models import (REFERENCE_OPS, LLaDA2Config, Params, forward, init_moe_params,  # noqa: E402
                                 load_model, save_moe_checkpoint)
from llada_triton.models.chat import chat_prompt_ids, decode_answer, load_tokenizer  # noqa: E402

__all__ = ["TrainConfig", "CONFIGS", "DEFAULT_TASKS", "model_config", "make_batch", "corrupt_block",
           "block_loss", "dense_moe_experts", "RouteRecorder", "balance_experts", "evaluate", "model_card", "main"]

LAYOUT = "llada2"
GEN_LENGTH = 32           # G: answer region (answer + role_end + eos) before the grid overhang; gen_length at eval
DEFAULT_TASKS = ("add", "reverse", "sort", "mul")


@dataclass(frozen=True)
class TrainConfig:
    d_model: int
    n_heads: int
    n_kv_heads: int
    n_layers: int
    first_dense: int
    intermediate_size: int
    n_experts: int
    top_k: int
    n_group: int
    topk_group: int
    moe_intermediate_size: int
    batch_size: int
    steps: int
    lr: float
    warmup: int
    head_dim: int = 0                # 0: d_model // n_heads (LLaDA2's config names it separately)
    block_length: int = 32
    pad_block_weight: float = 0.25   # how often an eos-only block is the noisy one, relative to a content block
    routed_scaling_factor: float = 2.5
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.1
    betas: Tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    eps: float = 1e-3
    init_std: float = 0.02
    bias_rate: float = 1e-3
    rope_theta: float = 10000.0      # LLaDA2 uses 600000 for 32K contexts; rows here are < 100 positions
    eval_per_task: int = 500


CONFIGS: Dict[str, TrainConfig] = {
    # seconds on a CPU: checks the pipeline end to end, learns nothing
    "smoke": TrainConfig(d_model=32, n_heads=2, n_kv_heads=1, n_layers=2, first_dense=1, intermediate_size=64,
                         n_experts=8, top_k=2, n_group=2, topk_group=1, moe_intermediate_size=16, batch_size=8,
                         steps=4, lr=3e-3, warmup=2, eval_per_task=2),
    # a CPU check that the objective and LLaDA2's decoder agree: learns one easy task in minutes
    "small": TrainConfig(d_model=64, n_heads=2, n_kv_heads=1, n_layers=3, first_dense=1, intermediate_size=128,
                         n_experts=8, top_k=2, n_group=2, topk_group=1, moe_intermediate_size=32, batch_size=32,
                         steps=1500, lr=3e-3, warmup=50, eval_per_task=50),
    # the shipped model: 3.2M params (6.1 MiB bf16), 1 dense + 5 MoE layers of 16 experts (top 4 within the best 2 of
    # 4 groups) and a shared expert; GQA 4/2 heads of 64 with partial RoPE over 32 (LLaDA2-mini's proportions:
    # 128 / 64). Steps are planned to fit --time-budget (one device call); 8000 is the cap, not the expectation
    "default": TrainConfig(d_model=192, n_heads=4, n_kv_heads=2, head_dim=64, n_layers=6, first_dense=1,
                           intermediate_size=512, n_experts=16, top_k=4, n_group=4, topk_group=2,
                           moe_intermediate_size=40, batch_size=1024, steps=8000, lr=1e-3, warmup=300,
                           eval_per_task=500),
}


def model_config(tc: TrainConfig) -> LLaDA2Config:
    ids = ttok.special_ids(LAYOUT)
    lay = ttok.LAYOUTS[LAYOUT]
    D = tc.head_dim or tc.d_model // tc.n_heads
    return LLaDA2Config(
        d_model=tc.d_model, n_heads=tc.n_heads, n_kv_heads=tc.n_kv_heads, head_dim=D, n_layers=tc.n_layers,
        vocab_size=ttok.padded_vocab_size(layout=LAYOUT), intermediate_size=tc.intermediate_size,
        moe_layers=tuple(i >= tc.first_dense for i in range(tc.n_layers)), n_experts=tc.n_experts, top_k=tc.top_k,
        moe_intermediate_size=tc.moe_intermediate_size, shared_intermediate_size=tc.moe_intermediate_size,
        n_group=tc.n_group, topk_group=tc.topk_group, score_func="sigmoid", norm_topk_prob=True,
        routed_scaling_factor=tc.routed_scaling_factor, expert_bias=True, qk_norm=True, rotary_dim=D // 2,
        rope_theta=tc.rope_theta, rms_norm_eps=1e-6, max_sequence_length=4096, weight_tying=False,
        mask_token_id=ids[lay.mask], eos_token_id=ids[lay.eos], pad_token_id=ids[lay.eos])


# ------------------------------------------------------------------------------------------------ data
_ENCODER: Optional[ttok.ChatEncoder] = None


def make_batch(seed: int, index: int, batch_size: int, task_names: Sequence[str], block_length: int,
               gen_length: int = GEN_LENGTH):
    """Batch ``index`` of the training stream: numpy ``(tokens [N, T], prompt_len [N], content_end [N],
    row_len [N])``. Row n is its chat prompt from position 0, the answer and ``<|role_end|>`` (ending at
    ``content_end``), then eos up to ``row_len`` (the end of the grid block holding position
    ``prompt_len + gen_length - 1``); eos fills the rest (whole later blocks, which block-causal attention hides)."""
    import numpy as np

    global _ENCODER
    if _ENCODER is None:
        _ENCODER = ttok.ChatEncoder(LAYOUT)
    rng = random.Random(f"llada2-train/{seed}/{index}")
    probs = tasks_mod.sample_problems(rng, batch_size, task_names, split="train")
    prompts = [_ENCODER.prompt(p.prompt) for p in probs]
    plen = np.array([len(p) for p in prompts], dtype=np.int64)
    cend = plen + np.array([len(p.answer) + 1 for p in probs], dtype=np.int64)
    rlen = -(-(plen + gen_length) // block_length) * block_length
    tokens = np.full((batch_size, int(rlen.max())), _ENCODER.eos, dtype=np.int64)
    for n, (p, prob) in enumerate(zip(prompts, probs)):
        tokens[n, :len(p)] = p
        tokens[n, len(p):rlen[n]] = _ENCODER.answer(prob.answer, int(rlen[n]) - len(p))
    return tokens, plen, cend, rlen


# ------------------------------------------------------------------------------------------- objective
def corrupt_block(tokens: torch.Tensor, prompt_len: torch.Tensor, content_end: torch.Tensor, row_len: torch.Tensor,
                  block_length: int, mask_id: int, *, eps: float = 1e-3, pad_block_weight: float = 0.25,
                  generator: Optional[torch.Generator] = None):
    """The one-noisy-block forward process. Per row: ``t ~ U(eps, 1]``; a block ``b`` among the blocks holding
    answer positions (``prompt_len // B .. row_len / B - 1``), drawn with weight 1 for a block holding answer text
    or ``<|role_end|>`` (positions below ``content_end``) and ``pad_block_weight`` for a block of eos padding only
    (the decoder rarely reaches those: it stops after the block where eos appears); each answer position of block
    ``b`` masked with probability ``t``. Returns ``(noisy [N, T], masked bool [N, T], target bool [N, T] (the
    answer positions of block b), t fp32 [N], b int64 [N])``; random numbers come from the CPU ``generator``."""
    N, T = tokens.shape
    B = block_length
    plen, cend, rlen = prompt_len.cpu(), content_end.cpu(), row_len.cpu()
    t = (1.0 - eps) * torch.rand(N, generator=generator) + eps
    j = torch.arange(-(-T // B))[None, :]
    w = torch.where(j * B < cend[:, None], 1.0, pad_block_weight)
    w = w * ((j >= (plen // B)[:, None]) & (j < (rlen // B)[:, None]))
    b = torch.multinomial(w, 1, generator=generator)[:, 0]
    pos = torch.arange(T)[None, :]
    target = (pos // B == b[:, None]) & (pos >= plen[:, None])
    masked = target & (torch.rand(N, T, generator=generator) < t[:, None])
    dev = tokens.device
    masked, target, t, b = masked.to(dev), target.to(dev), t.to(dev), b.to(dev)
    return torch.where(masked, torch.full_like(tokens, mask_id), tokens), masked, target, t, b


def block_loss(logits: torch.Tensor, tokens: torch.Tensor, masked: torch.Tensor, target: torch.Tensor,
               t: torch.Tensor) -> torch.Tensor:
    """``mean_n [ sum_{masked i} CE(logits[n, i], tokens[n, i]) / t[n] / |target_n| ]``: the 1/t-weighted masked
    cross-entropy per answer position of the noisy block."""
    N, T, V = logits.shape
    ce = F.cross_entropy(logits.float().reshape(N * T, V), tokens.reshape(N * T), reduction="none").view(N, T)
    per_row = (ce * masked).sum(1) / t / target.sum(1).clamp(min=1)
    return per_row.mean()


def dense_moe_experts(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor, weights: torch.Tensor,
                      ids: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``moe_experts`` (same arguments and function as ``moe_experts_ref``) computed densely for training: every
    expert runs on every token, as two plain GEMMs over all experts at once (``[M, E * 2I]`` gate-up, then the
    routing-weighted ``[M, E * I]`` activations times the stacked down weights; zero weight for unchosen experts).
    At this size that beats the reference's per-expert loop (a host sync per expert) and a batched matmul over
    ``[E, M, d]`` (most of the step's time in a CPU profile)."""
    M, E, d = x.shape[0], w_gate_up.shape[0], x.shape[1]
    inter = w_down.shape[2]
    gate = torch.zeros(M, E, dtype=torch.float32, device=x.device).scatter_add(1, ids.long(), weights.float())
    h = silu_mul_ref((x @ w_gate_up.reshape(E * 2 * inter, d).t()).view(M, E, 2 * inter))
    h = (h * gate.unsqueeze(-1).to(h.dtype)).reshape(M, E * inter)
    y = h @ w_down.transpose(1, 2).reshape(E * inter, d)
    return y if residual is None else residual + y


class RouteRecorder:
    """A ``moe_route`` op that runs the reference router and keeps each call's expert ids (MoE layers in order),
    for the bias update; passed as ``Ops.replace(moe_route=recorder)``."""

    def __init__(self):
        self.ids: List[torch.Tensor] = []

    def __call__(self, *args, **kwargs):
        weights, ids = REFERENCE_OPS.moe_route(*args, **kwargs)
        self.ids.append(ids.detach())
        return weights, ids


@torch.no_grad()
def balance_experts(params: Params, ids: Sequence[torch.Tensor], rate: float) -> List[torch.Tensor]:
    """Auxiliary-loss-free balancing: each MoE layer's expert bias += ``rate * sign(mean load - load)``.
    ``ids``: the routed ids of one forward, one tensor per MoE layer in order. Returns each layer's max load
    over the mean (1.0 = balanced) as 0-dim device tensors (no host sync)."""
    layers = [lp for lp in params.layers if lp.is_moe]
    if len(ids) != len(layers):
        raise ValueError(f"{len(ids)} routing records for {len(layers)} MoE layers")
    imbalance = []
    for lp, i in zip(layers, ids):
        flat = i.reshape(-1).long()  # index_add, not bincount: no host sync
        load = torch.zeros_like(lp.expert_bias).index_add_(0, flat, torch.ones_like(flat, dtype=torch.float32))
        lp.expert_bias.add_(rate * torch.sign(load.mean() - load))
        imbalance.append(load.max() / load.mean())
    return imbalance


def train_step(params: Params, cfg: LLaDA2Config, batch, tc: TrainConfig, generator: torch.Generator,
               autocast: bool):
    """Loss of one batch (numpy arrays from :func:`make_batch`) and the router's ids of its forward."""
    tokens, plen, cend, rlen = (torch.from_numpy(a).to(params.device) for a in batch)
    noisy, masked, target, t, _ = corrupt_block(tokens, plen, cend, rlen, tc.block_length, cfg.mask_token_id,
                                                eps=tc.eps, pad_block_weight=tc.pad_block_weight,
                                                generator=generator)
    T = tokens.shape[1]
    key_end = (torch.arange(T, device=params.device) // tc.block_length + 1) * tc.block_length
    rec = RouteRecorder()
    with torch.autocast(params.device.type, dtype=torch.bfloat16, enabled=autocast):
        logits = forward(params, cfg, noisy, key_end=key_end,
                         ops=REFERENCE_OPS.replace(moe_route=rec, moe_experts=dense_moe_experts))
    return block_loss(logits, tokens, masked, target, t), rec.ids


def init_model(tc: TrainConfig, device: str, seed: int):
    """``(cfg, params fp32 with zero expert bias, trainable (name, tensor) list: all but the expert bias)``."""
    cfg = model_config(tc)
    params = init_moe_params(cfg, device=device, dtype=torch.float32, seed=seed, std=tc.init_std)
    with torch.no_grad():
        for lp in params.layers:
            if lp.is_moe:
                lp.expert_bias.zero_()
    return cfg, params, trainutil.trainable(params, skip=("expert_bias",))


def update(params: Params, named, opt, loss: torch.Tensor, ids, tc: TrainConfig):
    """Backward, clip, AdamW step, then the expert-bias balancing; returns ``(grad norm, load imbalance)``
    as device tensors."""
    loss.backward()
    gnorm = torch.nn.utils.clip_grad_norm_([t for _, t in named], tc.grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return gnorm, balance_experts(params, ids, tc.bias_rate)


# ------------------------------------------------------------------------------------------- evaluation
def _decoded_positions(seq: torch.Tensor, prompt_len: int, block_length: int, cfg) -> int:
    """Positions the decoder committed: non-mask ids from the prompt's end to the end of the block where it
    stopped (the block of the first eos; the driver fills the blocks after a stop with eos unread)."""
    eos = (seq[prompt_len:] == cfg.eos_token_id).nonzero()
    end = len(seq) if len(eos) == 0 else (prompt_len + int(eos[0])) // block_length * block_length + block_length
    return int((seq[prompt_len:end] != cfg.mask_token_id).sum())


@torch.no_grad()
def evaluate(model: str, tasks: Sequence[str], n: int, *, device: str = "cpu", seed: int = 0,
             gen_length: int = GEN_LENGTH, block_length: int = 32, steps: int = 32, threshold: float = 0.95,
             write_json: Optional[str] = None, batch: int = 128) -> Dict:
    """Held-out exact match of checkpoint folder ``model`` with LLaDA2.0's decoder (``generate`` with
    ``Llada2Decoding``, ``block`` cache, fp32), ``batch`` problems a call (varlen rows, each equal to its batch-1
    result): per task ``accuracy``, forwards per problem and tokens per forward (positions decoded, the grid's
    overhang included, over forwards)."""
    params, cfg = load_model(model, device=device, dtype=torch.float32)
    tok = load_tokenizer(model)
    decoding = Llada2Decoding(threshold=threshold)
    rows = []
    for name in tasks:
        probs = tasks_mod.heldout_problems(name, n, seed)
        t0, ok, nfe, decoded, fails = time.perf_counter(), 0, 0, 0, []
        for i in range(0, len(probs), batch):
            chunk = probs[i:i + batch]
            ids = [chat_prompt_ids(tok, p.prompt) for p in chunk]
            res = generate(params, cfg, ids, gen_length=gen_length, block_length=block_length, steps=steps,
                           cache="block", decoding=decoding)
            lay = decoding.layout(ids, cfg, gen_length, block_length, "cpu")  # the grid generate laid the rows on
            for r, p in enumerate(chunk):
                pred = decode_answer(tok, res.answers[r], cfg)
                good = tasks_mod.exact_match(pred, p.answer)
                ok += good
                nfe += res.nfe[r]
                row = res.sequences[r, int(lay.pad[r]):int(lay.row_end[r])]  # the row as batch 1 lays it out
                decoded += _decoded_positions(row, len(ids[r]), block_length, cfg)
                if not good and len(fails) < 5:
                    fails.append({"prompt": p.prompt, "answer": p.answer, "prediction": pred})
        rows.append({"task": name, "n": len(probs), "correct": ok, "accuracy": ok / max(1, len(probs)),
                     "nfe_per_problem": round(nfe / max(1, len(probs)), 3),
                     "tokens_per_forward": round(decoded / max(1, nfe), 3),
                     "seconds": round(time.perf_counter() - t0, 2), "failures": fails})
        print(f"[train_llada2_tiny] {name}: {ok}/{len(probs)} = {100 * ok / max(1, len(probs)):.1f}% "
              f"({rows[-1]['tokens_per_forward']} tokens/forward)", flush=True)
    setting = {"checkpoint": model, "decoder": "llada_triton.decode.generate + Llada2Decoding", "batch": batch,
               "cache": "block",
               "dtype": "float32", "gen_length": gen_length, "block_length": block_length, "steps": steps,
               "threshold": threshold, "temperature": 0.0, "scorer": "exact", "split": "heldout", "seed": seed,
               "device": device_name(device), "torch": torch.__version__, "git_sha": git_sha(short=False)}
    result = {"setting": setting, "rows": rows}
    if write_json:
        with open(write_json, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
    return result


# ----------------------------------------------------------------------------------------------- main
def write_checkpoint(params: Params, cfg: LLaDA2Config, out: str) -> None:
    """The LLaDA2 HF layout (bf16 safetensors, config.json, generation_config.json) and the tokenizer files."""
    save_moe_checkpoint(params, cfg, out, dtype=torch.bfloat16)
    ttok.save_tokenizer(out, layout=LAYOUT)


def model_card(cfg: LLaDA2Config, log: Dict, result: Optional[Dict]) -> str:
    """``README.md`` of the checkpoint folder: architecture, tokenizer, objective, training run and held-out table."""
    tc, ids = log["train_config"], ttok.special_ids(LAYOUT)
    lines = [
        "# llada2-tiny-tasks", "",
        f"A {log['n_params'] / 1e6:.2f}M-parameter model with the LLaDA2.0 (`llada2_moe`) architecture and checkpoint "
        "layout, trained from scratch as block diffusion on synthetic tasks by `scripts/train_llada2_tiny.py` "
        f"(config `{log['config']}`; the objective is in that script's docstring).", "",
        "| | |", "|---|---|",
        f"| architecture | d {cfg.d_model}, {cfg.n_layers} layers ({cfg.moe_layers.count(False)} dense SwiGLU "
        f"{cfg.intermediate_size}, then MoE), {cfg.n_heads} query / {cfg.n_kv_heads} KV heads of {cfg.head_dim}, "
        f"QK-norm, partial RoPE over {cfg.rotary_dim} (theta {cfg.rope_theta:g}); {cfg.n_experts} experts of "
        f"{cfg.moe_intermediate_size}, top {cfg.top_k} in the best {cfg.topk_group} of {cfg.n_group} groups, sigmoid "
        f"router with expert bias, x{cfg.routed_scaling_factor:g}, 1 shared expert |",
        f"| vocabulary | 96 characters + {len(ids)} LLaDA2 special tokens, embedding {cfg.vocab_size}; eos = pad "
        f"`<|endoftext|>` {cfg.eos_token_id}, `<|mask|>` {cfg.mask_token_id}, `<|role_end|>` {ids['<|role_end|>']} |",
        "| chat | `<role>HUMAN</role>{content}<|role_end|><role>ASSISTANT</role>`; answers end in `<|role_end|>` + eos |",
        f"| training | {log.get('steps_done')} steps of {tc['batch_size']} rows, block {tc['block_length']}, lr "
        f"{tc['lr']:g}, tasks {', '.join(log['tasks'])}; {log.get('train_seconds')} s on {log['device']} |",
    ]
    if result is not None:
        st = result["setting"]
        lines += ["", f"## Held-out exact match ({st['decoder']}, gen {st['gen_length']}, block {st['block_length']}, "
                      f"steps {st['steps']}, threshold {st['threshold']}, cache {st['cache']}, {st['dtype']}, "
                      f"{st['device']})", "", "| task | n | exact match | forwards / problem | tokens / forward |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['task']} | {r['n']} | {100 * r['accuracy']:.1f}% | {r['nfe_per_problem']} | "
                  f"{r['tokens_per_forward']} |" for r in result["rows"]]
    return "\n".join(lines) + "\n"


def _stream(seed: int, tc: TrainConfig, task_names: Sequence[str], pool, start: int = 0):
    return trainutil.batch_stream(
        make_batch, lambda k: (seed, k, tc.batch_size, tuple(task_names), tc.block_length), tc.steps, pool,
        start=start)


def main(config: str = "smoke", device: str = "cpu", out: str = "runs/llada2-tiny", seed: int = 0,
         steps: Optional[int] = None, batch_size: Optional[int] = None, lr: Optional[float] = None,
         task_names: Sequence[str] = DEFAULT_TASKS, workers: int = 0, eval_per_task: Optional[int] = None,
         log_every: int = 100, time_budget: Optional[float] = None, threads: Optional[int] = None,
         eval_only: bool = False, eval_threshold: float = 0.95, eval_steps: int = 32,
         eval_json: Optional[str] = None) -> Dict:
    """Train, save to ``out`` and evaluate; ``eval_only``: evaluate the checkpoint already at ``out`` (``eval_per_task``
    problems per task, default 500) and write ``eval_json`` when given."""
    if eval_only:
        if threads:
            torch.set_num_threads(threads)
        return {"eval": evaluate(out, task_names, 500 if eval_per_task is None else eval_per_task, device=device,
                                 seed=seed, steps=eval_steps, threshold=eval_threshold, write_json=eval_json)}
    tc = CONFIGS[config]
    tc = replace(tc, **{k: v for k, v in dict(steps=steps, batch_size=batch_size, lr=lr,
                                               eval_per_task=eval_per_task).items() if v is not None})
    if threads:
        torch.set_num_threads(threads)
    cuda = device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but no CUDA device is visible")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    pool = None
    if workers > 0:  # spawned (not forked) workers: safe whatever the CUDA state of this process
        import multiprocessing as mp

        pool = mp.get_context("spawn").Pool(workers)
    torch.manual_seed(seed)
    cfg, params, named = init_model(tc, device, seed)
    opt = trainutil.make_optimizer(named, tc, cuda)
    gen = torch.Generator().manual_seed(seed)
    n_params = sum(t.numel() for _, t in params.tensors())
    print(f"[train_llada2_tiny] config={config} {asdict(tc)}", flush=True)
    print(f"[train_llada2_tiny] {n_params:,} params, device={device_name(device)}, tasks={list(task_names)}",
          flush=True)
    log = {"config": config, "train_config": asdict(tc), "seed": seed, "tasks": list(task_names),
           "gen_length": GEN_LENGTH, "objective": "block diffusion, one noisy block per sequence",
           "n_params": n_params, "device": device_name(device), "torch": torch.__version__,
           "git_sha": git_sha(short=False), "argv": sys.argv, "loss": []}
    t0 = time.perf_counter()
    planner = trainutil.StepPlanner(time_budget, tc.warmup, cuda, t0)
    stream = _stream(seed, tc, task_names, pool)
    step = 0
    while step < tc.steps:
        try:
            batch = next(stream)
        except StopIteration:
            break
        lr_now = trainutil.lr_at(step, tc)
        for g in opt.param_groups:
            g["lr"] = lr_now
        loss, ids = train_step(params, cfg, batch, tc, gen, autocast=cuda)
        gnorm, imbalance = update(params, named, opt, loss, ids, tc)
        step += 1
        if step % log_every == 0 or step == 1:
            el = time.perf_counter() - t0
            rec = {"step": step, "loss": round(float(loss.detach()), 5), "grad_norm": round(float(gnorm), 4),
                   "lr": lr_now, "expert_load_max_over_mean": [round(float(x), 3) for x in imbalance],
                   "seconds": round(el, 1)}
            log["loss"].append(rec)
            print(f"[train_llada2_tiny] step {step}/{tc.steps} loss {rec['loss']:.4f} gnorm {rec['grad_norm']:.3f} "
                  f"lr {lr_now:.2e} load max/mean {rec['expert_load_max_over_mean']} {el:.0f}s", flush=True)
        new_tc = planner.replan("train_llada2_tiny", step, tc, log)
        if new_tc is not None:
            tc = new_tc
            stream.close()
            stream = _stream(seed, tc, task_names, pool, start=step)
    trainutil.finish("train_llada2_tiny", stream, pool, cuda, log, t0, step, named,
                     lambda: write_checkpoint(params, cfg, out), out)
    result = {"log": log}
    torch.backends.cuda.matmul.allow_tf32 = False  # the evaluation runs in true fp32
    if tc.eval_per_task > 0:
        result["eval"] = evaluate(out, task_names, tc.eval_per_task, device=device, steps=eval_steps,
                                  threshold=eval_threshold,
                                  write_json=eval_json or os.path.join(out, "eval_results.json"))
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(model_card(cfg, log, result.get("eval")))
    return result


def parse_args(argv=None) -> Dict:
    """Keyword arguments of :func:`main`, checked (one-line errors, exit status 2) before training starts."""
    ap = cliutil.ArgumentParser(prog=os.path.basename(__file__), description=__doc__)
    trainutil.add_common_args(ap, CONFIGS, "smoke", tuple(tasks_mod.ALL_TASKS), DEFAULT_TASKS)
    ap.add_argument("--eval-only", action="store_true",
                    help="no training: evaluate the checkpoint at --out (--eval-per-task problems, default 500)")
    ap.add_argument("--eval-threshold", type=float, default=0.95,
                    help="Llada2Decoding's threshold (1.0: the pure schedule, one token per step at --eval-steps 32)")
    ap.add_argument("--eval-steps", type=cliutil.positive_int, default=32, help="steps per block")
    ap.add_argument("--eval-json", help="write the evaluation here (default after training: OUT/eval_results.json)")
    a = ap.parse_args(argv)
    trainutil.check_common_args(ap, a, CONFIGS)
    if not 0.0 <= a.eval_threshold <= 1.0:
        ap.fail("--eval-threshold", f"{a.eval_threshold:g} is not in [0, 1]")
    if a.eval_only:
        cliutil.check_model(ap, a.out, "--out")
    return dict(config=a.config, device=a.device, out=a.out, seed=a.seed, steps=a.steps, batch_size=a.batch_size,
                lr=a.lr, task_names=a.tasks, workers=a.workers, eval_per_task=a.eval_per_task,
                log_every=a.log_every, time_budget=a.time_budget, threads=a.threads, eval_only=a.eval_only,
                eval_threshold=a.eval_threshold, eval_steps=a.eval_steps, eval_json=a.eval_json)


if __name__ == "__main__":
    main(**parse_args())
