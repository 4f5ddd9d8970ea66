"""The lm-evaluation-harness model ``llada_triton`` (importing this module registers it; needs ``lm-eval``).

    python scripts/eval_lm.py --model_args pretrained=DIR,gen_length=256,block_length=32 --tasks gsm8k
    torchrun --nproc_per_node=8 scripts/eval_lm.py ...   # data parallel, same results as one process

Under ``torchrun`` every process receives every request from the harness (the model reports rank 0 of 1,
the harness's tensor-parallel convention); :class:`llada_triton.eval.runner.EvalRunner` shards the work
over ranks and gathers the results on all of them, so each process's harness computes the same scores
and only rank 0 writes and prints (``scripts/eval_lm.py`` sees to it). Per-task decoding stats (tokens,
NFE, forwards, wall time, tokens/s) are printed on rank 0 after each request type and, with
``stats_path``, written there as JSON.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Dict, List, Optional

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from .options import parse_model_args
from .runner import EvalRunner

__all__ = ["LLaDATritonLM", "format_stats"]

log = logging.getLogger(__name__)


def format_stats(kind: str, stats: Dict[str, Dict]) -> str:
    """A plain-text table of per-task stats."""
    cols = ("requests", "tokens", "nfe", "forwards", "seconds", "tokens_per_nfe", "tokens_per_s")
    lines = [f"llada_triton {kind}: " + " | ".join(("task",) + cols)]
    for task, row in sorted(stats.items()):
        lines.append(" | ".join([task] + [str(row.get(c)) for c in cols]))
    return "\n".join(lines)


@register_model("llada_triton")
class LLaDATritonLM(LM):
    """LLaDA through llada-triton's decoder (``generate_until``) and Monte-Carlo estimator
    (``loglikelihood``); ``model_args`` are :class:`llada_triton.eval.options.EvalOptions`."""

    def __init__(self, runner: Optional[EvalRunner] = None, **model_args):
        super().__init__()
        if runner is None:
            runner = EvalRunner.load(parse_model_args(model_args))
        elif model_args:
            raise ValueError(f"pass either a runner or model_args, not both ({sorted(model_args)})")
        self.runner = runner
        self.stats: Dict[str, Dict[str, Dict]] = {}
        self._warned_gen_kwargs = set()

    @property
    def tokenizer_name(self) -> str:
        return self.runner.opts.pretrained.rstrip("/").replace("/", "__")

    def chat_template(self, chat_template=False) -> Optional[str]:
        return getattr(self.runner.tokenizer, "chat_template", None)

    def apply_chat_template(self, chat_history: List[Dict[str, str]], add_generation_prompt: bool = True) -> str:
        tok = self.runner.tokenizer
        if getattr(tok, "chat_template", None) is None:
            raise ValueError(f"--apply_chat_template: the tokenizer of {self.runner.opts.pretrained} has no chat "
                             "template (a Base model): run without it")
        return tok.apply_chat_template(chat_history, tokenize=False, add_generation_prompt=add_generation_prompt)

    def _report(self, kind: str, stats: Dict[str, Dict]) -> None:
        self.stats[kind] = stats
        if not self.runner.dist.is_main:
            return
        print(format_stats(kind, stats), flush=True)
        if self.runner.truncated:
            log.warning("%d prompts were cut from the left to fit max_sequence_length", self.runner.truncated)
        path = self.runner.opts.stats_path
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "w") as f:
                json.dump(self.stats, f, indent=2)

    def _untils(self, requests) -> List[List[str]]:
        out = []
        for req in requests:
            kwargs = dict(req.args[1]) if len(req.args) > 1 and req.args[1] else {}
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            # the decoder takes its settings from model_args only; say once which task settings it did not use
            ignored = sorted(set(kwargs) - self._warned_gen_kwargs)
            if ignored and self.runner.dist.is_main:
                log.warning("gen_kwargs %s of task %s are not used: decoding follows model_args "
                            "(gen_length, temperature, ...)", ignored, req.task_name)
            self._warned_gen_kwargs.update(ignored)
            out.append(until)
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> List[str]:
        if not requests:
            return []
        texts, stats = self.runner.generate([r.args[0] for r in requests], self._untils(requests),
                                            [r.task_name or "" for r in requests])
        self._report("generate_until", stats)
        return texts

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        if not requests:
            return []
        if not self.runner.opts.check_greedy and self.runner.dist.is_main:
            log.info("check_greedy=False: is_greedy is reported False for every request (as eval_llada.py "
                     "with is_check_greedy=False); pass check_greedy=true for metrics that use it")
        out, stats = self.runner.loglikelihood([(r.args[0], r.args[1]) for r in requests],
                                               [r.task_name or "" for r in requests])
        self._report("loglikelihood", stats)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError(
            "llada_triton does not implement loglikelihood_rolling (perplexity tasks such as wikitext): a masked-"
            "diffusion LM has no left-to-right token likelihood; use generation or multiple-choice tasks")
