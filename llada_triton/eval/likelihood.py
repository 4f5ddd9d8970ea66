"""LLaDA's Monte-Carlo estimate of log p(target | prefix), as the official ``get_log_likelihood.py`` /
``eval_llada.py`` define it (the lower-variance form of the paper's Appendix B.5).

Per mini-batch of ``b`` copies of ``prefix + target`` (``T`` target tokens): one offset ``k ~ U{1..T}``,
then row ``i`` masks ``l_i = ((round(linspace(k, k + (b-1) T/b))_i - 1) mod T) + 1`` target tokens (the
masked counts are stratified over ``1..T``), at positions from a uniform permutation; the prompt is never
masked. The mini-batch loss is ``sum over masked tokens of CE / (l_i / T)``, divided by ``b``; the estimate
is minus the mean over ``mc_num / b`` mini-batches. With ``cfg_scale > 0`` the logits are
``un + (w + 1)(cond - un)``, the unconditional copy having every prompt position masked.

Draws come from a CPU ``torch.Generator`` seeded per request (:func:`request_seed`: the seed and the
token ids), so an estimate does not depend on the device, the order of requests or how they are sharded.
Only the masked positions go through the LM head, and the cross-entropy is computed in float32. The
forward is the family's (``llada_triton.models.forward_hidden`` dispatches on the config), with LLaDA's
bidirectional definition of the estimate for every family.
"""
from __future__ import annotations

import hashlib
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F

from llada_triton.models import REFERENCE_OPS, Ops, forward_hidden, logits_from_hidden

__all__ = ["request_seed", "mc_draws", "mc_loglikelihood", "greedy_suffix_match", "check_mc"]


def request_seed(seed: int, prefix: Sequence[int], target: Sequence[int]) -> int:
    """A 63-bit seed from ``seed`` and the request's token ids (stable across processes and runs)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(int(seed).to_bytes(8, "little", signed=True))
    for part in (prefix, target):
        h.update(len(part).to_bytes(8, "little"))
        h.update(b"".join(int(t).to_bytes(8, "little") for t in part))
    return int.from_bytes(h.digest(), "little") & (2 ** 63 - 1)


def mc_draws(target_len: int, batch: int, generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """One mini-batch's draws: ``(is_mask bool [batch, target_len], ratio float32 [batch])`` with
    ``ratio = masked count / target_len`` (the official ``forward_process``, on a CPU generator)."""
    if target_len < 1:
        raise ValueError(f"target_len={target_len}: the continuation must have at least one token")
    T, b = target_len, batch
    k = torch.randint(1, T + 1, (), generator=generator)
    x = torch.round(torch.linspace(float(k), float(k + (b - 1) * (T / b)), steps=b)).long()
    x = ((x - 1) % T) + 1
    is_mask = torch.arange(T).repeat(b, 1) < x[:, None]
    for i in range(b):
        is_mask[i] = is_mask[i][torch.randperm(T, generator=generator)]
    return is_mask, (x / T).float()


def check_mc(mc_num: int, batch_size: int) -> None:
    """Clear errors for an impossible ``mc_num`` / ``mc_batch_size`` pair."""
    if not isinstance(mc_num, int) or mc_num < 1:
        raise ValueError(f"mc_num={mc_num!r} must be a positive int")
    if not isinstance(batch_size, int) or batch_size < 1 or mc_num % batch_size:
        raise ValueError(f"mc_batch_size={batch_size!r} must be a positive int dividing mc_num={mc_num}")


def _masked_logits(params, cfg, noisy, sel, n_prompt, cfg_scale, ops):
    """float32 logits ``[M, V]`` at the positions ``sel`` (bool [b, L]) of ``noisy`` [b, L] (CFG mixed in)."""
    b = noisy.shape[0]
    feed = noisy
    if cfg_scale > 0:  # the unconditional copy: every prompt position masked
        un = noisy.clone()
        un[:, :n_prompt] = cfg.mask_token_id
        feed = torch.cat([noisy, un])
    hidden = forward_hidden(params, cfg, feed, ops=ops)
    logits = logits_from_hidden(params, hidden[:b][sel], ops).float()
    if cfg_scale > 0:
        un_logits = logits_from_hidden(params, hidden[b:][sel], ops).float()
        logits = un_logits + (cfg_scale + 1) * (logits - un_logits)
    return logits


@torch.no_grad()
def mc_loglikelihood(params, cfg, prefix: Sequence[int], target: Sequence[int], *,
                     mc_num: int = 128, batch_size: int = 32, cfg_scale: float = 0.0, seed: int = 0,
                     ops: Ops = REFERENCE_OPS) -> Tuple[float, int]:
    """``(estimate of log p(target | prefix), forwards run)``; see the module docstring."""
    check_mc(mc_num, batch_size)
    prefix, target = [int(t) for t in prefix], [int(t) for t in target]
    P, T = len(prefix), len(target)
    if T < 1:
        raise ValueError("the continuation has no tokens: its likelihood is undefined")
    if P + T > cfg.max_sequence_length:
        raise ValueError(f"prefix + continuation = {P + T} tokens exceed max_sequence_length="
                         f"{cfg.max_sequence_length}")
    g = torch.Generator(device="cpu").manual_seed(request_seed(seed, prefix, target))
    device = params.device
    seq = torch.tensor(prefix + target, dtype=torch.int64, device=device).repeat(batch_size, 1)
    losses: List[float] = []
    for _ in range(mc_num // batch_size):
        is_mask, ratio = mc_draws(T, batch_size, g)
        sel = torch.cat([torch.zeros(batch_size, P, dtype=torch.bool), is_mask], 1).to(device)
        noisy = torch.where(sel, cfg.mask_token_id, seq)
        logits = _masked_logits(params, cfg, noisy, sel, P, cfg_scale, ops)
        w = ratio.to(device)[:, None].expand(batch_size, P + T)[sel]
        ce = F.cross_entropy(logits, seq[sel], reduction="none") / w
        losses.append(float(ce.sum()) / batch_size)
    return -sum(losses) / len(losses), len(losses)


@torch.no_grad()
def greedy_suffix_match(params, cfg, prefix: Sequence[int], target: Sequence[int], *,
                        cfg_scale: float = 0.0, ops: Ops = REFERENCE_OPS) -> bool:
    """Whether decoding the target positions one token per step (the most confident argmax first, as
    ``eval_llada.py``'s ``suffix_greedy_prediction``) reproduces ``target`` exactly."""
    P, T = len(prefix), len(target)
    device = params.device
    seq = torch.full((1, P + T), cfg.mask_token_id, dtype=torch.int64, device=device)
    seq[0, :P] = torch.tensor([int(t) for t in prefix], dtype=torch.int64)
    for _ in range(T):
        sel = seq == cfg.mask_token_id
        logits = _masked_logits(params, cfg, seq, sel, P, cfg_scale, ops)
        conf, x0 = torch.softmax(logits, -1).max(-1)
        pos = sel[0].nonzero().flatten()[int(torch.argmax(conf))]  # ties: the first masked position
        seq[0, pos] = x0[int(torch.argmax(conf))]
    return seq[0, P:].tolist() == [int(t) for t in target]
