"""Evaluation: LLaDA's Monte-Carlo likelihood estimator, request sharding over ``torch.distributed`` ranks,
the evaluation runner, and an lm-evaluation-harness model (``llada_triton.eval.lm_eval_model``, imported only
on demand: importing this package imports neither lm_eval nor triton)."""
from .distributed import Dist, gather_results, init_distributed, shard_indices
from .likelihood import greedy_suffix_match, mc_draws, mc_loglikelihood, request_seed
from .options import EvalOptions, parse_model_args
from .runner import EvalRunner

__all__ = ["mc_loglikelihood", "mc_draws", "greedy_suffix_match", "request_seed", "Dist", "init_distributed",
           "shard_indices", "gather_results", "EvalOptions", "parse_model_args", "EvalRunner"]
