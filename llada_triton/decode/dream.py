"""Dream's decoders as options of the one driver (:func:`llada_triton.decode.generate`): :func:`dream_options` maps
the arguments of Dream's ``diffusion_generate`` and of Fast-dLLM's Dream decoders onto the driver's schedule, rule
and cache policy; :func:`diffusion_generate` runs them. What each mode is exact against (fp32, golden cases in
``tests/data/dream-tiny``):

* ``cache='none'``: Dream's ``diffusion_generate`` (``alg`` maskgit_plus / topk_margin / entropy, ``alg_temp``;
  ``steps`` model calls over one block of ``max_new_tokens`` masks with Dream's float32 truncating schedule).
  ``alg='origin'``, ``alg_temp > 0`` and ``temperature > 0`` (with ``top_p`` / ``top_k``) sample with the
  distribution of Dream's samplers, not their random stream (Triton head: Philox Gumbel-max keyed by seed, model
  call, row and vocab id, :func:`llada_triton.kernels.head_dream_confidence`; reference ops: a torch generator).
* ``cache='none'`` with ``threshold``: Fast-dLLM's ``alg='confidence_threshold'`` (top-``n/steps + carry``
  candidates, the first kept, the others if ``>= threshold``; the rejected carried; steps added at the end).
* ``cache='prefix'`` / ``'dual'``: Fast-dLLM's Dream block decoders: a refresh forward at each block start commits
  the block's first position, then the schedule with negative entropy **whatever alg says** (as Fast-dLLM), or
  with ``threshold`` the threshold rule over the block's masks.
* ``cache='block'``: the block-causal cache with Dream's schedule and ``alg`` per block: an approximation (Dream
  was trained with full attention; no reference).
"""
from __future__ import annotations

from typing import Optional

from .generate import generate

__all__ = ["dream_options", "diffusion_generate"]


def dream_options(*, max_new_tokens: int, steps: int, alg: str = "maskgit_plus", alg_temp: Optional[float] = None,
                  eps: float = 1e-3, temperature: float = 0.0, top_p: Optional[float] = None,
                  top_k: Optional[int] = None, threshold: Optional[float] = None, cache: str = "none",
                  block_length: Optional[int] = None) -> dict:
    """``generate`` keyword arguments for a Dream / Fast-dLLM-Dream decode (see the module docstring)."""
    G = max_new_tokens
    if cache == "none" and block_length not in (None, G):
        raise ValueError(f"cache='none' decodes one block: block_length={block_length} must be None or {G}")
    if cache in ("prefix", "dual", "block") and block_length is None:
        block_length = 32 if cache != "block" else G  # Fast-dLLM's default block length
    opts = dict(gen_length=G, block_length=G if cache == "none" else block_length, steps=steps,
                temperature=temperature, top_p=top_p, top_k=top_k, eps=eps, cache=cache, early_stop=False)
    if threshold is not None:
        if alg_temp:
            raise ValueError("threshold decoding takes no alg_temp (Fast-dLLM's confidence_threshold ignores it)")
        opts.update(remasking="maskgit_plus", threshold=threshold, schedule="carry" if cache == "none" else "linear")
    elif cache in ("prefix", "dual"):
        opts.update(remasking="entropy", schedule="dream", alg_temp=alg_temp)
    else:
        opts.update(remasking=alg, schedule="dream", alg_temp=alg_temp)
    if cache in ("prefix", "dual"):
        opts["refresh_commits_first"] = True
    return opts


def diffusion_generate(params, cfg, prompts, *, max_new_tokens: int, steps: int, alg: str = "maskgit_plus",
                       alg_temp: Optional[float] = None, eps: float = 1e-3, temperature: float = 0.0,
                       top_p: Optional[float] = None, top_k: Optional[int] = None,
                       threshold: Optional[float] = None, cache: str = "none", block_length: Optional[int] = None,
                       **options):
    """Decode ``prompts`` as Dream's ``diffusion_generate`` (``cache='none'``) or Fast-dLLM's Dream decoders;
    ``options`` go to :func:`llada_triton.decode.generate` (ops, seed, workspace, cuda_graphs, ...).
    Returns its :class:`GenerateResult`."""
    opts = dream_options(max_new_tokens=max_new_tokens, steps=steps, alg=alg, alg_temp=alg_temp, eps=eps,
                         temperature=temperature, top_p=top_p, top_k=top_k, threshold=threshold, cache=cache,
                         block_length=block_length)
    opts.update(options)
    return generate(params, cfg, prompts, **opts)
