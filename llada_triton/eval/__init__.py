"""Evaluation: LLaDA's Monte-Carlo likelihood estimator, request sharding over ``torch.distributed`` ranks,
and an lm-evaluation-harness model (``llada_triton.eval.lm_eval_model``, imported only on demand: importing
this package imports neither lm_eval nor the model code)."""
import importlib

__all__ = ["mc_loglikelihood", "mc_draws", "greedy_suffix_match", "request_seed", "Dist", "init_distributed",
           "shard_indices", "gather_results", "EvalOptions", "parse_model_args", "EvalRunner"]

_LAZY = {
    "mc_loglikelihood": "llada_triton.eval.likelihood",
    "mc_draws": "llada_triton.eval.likelihood",
    "greedy_suffix_match": "llada_triton.eval.likelihood",
    "request_seed": "llada_triton.eval.likelihood",
    "Dist": "llada_triton.eval.distributed",
    "init_distributed": "llada_triton.eval.distributed",
    "shard_indices": "llada_triton.eval.distributed",
    "gather_results": "llada_triton.eval.distributed",
    "EvalOptions": "llada_triton.eval.options",
    "parse_model_args": "llada_triton.eval.options",
    "EvalRunner": "llada_triton.eval.runner",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'llada_triton.eval' has no attribute {name!r}")
