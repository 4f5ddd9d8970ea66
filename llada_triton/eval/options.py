"""The evaluation model's options (lm-eval ``--model_args``), checked before anything is loaded."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from llada_triton.decode import POLICIES
from llada_triton.decode.step import DREAM_ALGS as _DREAM_CONFIDENCE, REMASKING, DecodeOptions

__all__ = ["EvalOptions", "parse_model_args", "MODEL_ARGS", "DREAM_ALGS", "llada2_decoding", "decode_kwargs"]

_DTYPES = ("float32", "bfloat16", "float16")
_OPS = ("reference", "triton")
_CACHES = tuple(POLICIES)
DREAM_ALGS = tuple(_DREAM_CONFIDENCE)  # Dream's ``alg``: decoded by dream_options
_DECODINGS = ("llada", "llada2")


@dataclass(frozen=True)
class EvalOptions:
    pretrained: str
    device: Optional[str] = None          # None: cuda when available (cuda:LOCAL_RANK under torchrun), else cpu
    dtype: Optional[str] = None           # None: bfloat16 on CUDA, float32 on the CPU
    ops: Optional[str] = None             # None: triton on CUDA, reference on the CPU
    batch_size: int = 32                  # run_many slots / generate batch; the MC mini-batch unless mc_batch_size
    chunk_size: Optional[int] = None      # prompts per decoding unit (None: 4 * batch_size); see runner
    gen_length: int = 256
    block_length: Optional[int] = None    # None: gen_length for Dream's cache 'none' (one block), else 32
    steps: Optional[int] = None           # None: gen_length (one token per step); block_length for llada2 (per block)
    cache: Optional[str] = None           # None: 'none' (exact) for a Dream remasking, else 'block'
    decoding: Optional[str] = None        # None: 'llada2' for LLaDA2 checkpoints, else 'llada'
    minimal_topk: Optional[int] = None    # llada2 decoding only (None: 1)
    eos_early_stop: Optional[bool] = None  # llada2 decoding only (None: False)
    top_p: Optional[float] = None         # Dream remasking only
    top_k: Optional[int] = None           # Dream remasking only
    alg_temp: Optional[float] = None      # Dream remasking only
    threshold: Optional[float] = None
    factor: Optional[float] = None
    temperature: float = 0.0
    remasking: Optional[str] = None       # None: maskgit_plus for Dream checkpoints, else low_confidence
    cfg_scale: float = 0.0
    logits_eos_inf: bool = False
    confidence_eos_eot_inf: bool = False
    early_stop: Optional[bool] = None     # None: the driver's default (on for the block cache)
    cuda_graphs: Optional[bool] = None    # None: on for CUDA
    seed: int = 0
    mc_num: int = 128
    mc_batch_size: Optional[int] = None   # None: batch_size
    check_greedy: bool = False
    stats_path: Optional[str] = None

    @property
    def decode_steps(self) -> int:
        if self.steps is not None:
            return self.steps
        return self.block_length if self.decoding == "llada2" else self.gen_length

    @property
    def dream(self) -> bool:
        """Whether generation runs Dream's decoders (:func:`llada_triton.decode.dream_options`)."""
        return self.remasking in DREAM_ALGS

    @property
    def slots(self) -> bool:
        """Whether a chunk decodes with ``run_many`` (the block cache; Dream's options need ``generate``)."""
        return self.cache == "block" and not self.dream

    @property
    def chunk(self) -> int:
        return 4 * self.batch_size if self.chunk_size is None else self.chunk_size

    @property
    def mc_batch(self) -> int:
        return self.batch_size if self.mc_batch_size is None else self.mc_batch_size


MODEL_ARGS = tuple(f.name for f in dataclasses.fields(EvalOptions))
# names used by LLaDA's eval_llada.py, accepted so its command lines carry over
_ALIASES = {"model_path": "pretrained", "cfg": "cfg_scale"}
# keys the harness itself may add (--device, --batch_size's sibling, --trust_remote_code); no remote code runs
_IGNORED = ("max_batch_size", "trust_remote_code")


def _coerce(name: str, value: Any, kind: str) -> Any:
    if value is None or (isinstance(value, str) and value.lower() == "none"):
        return None
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
    elif kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
    elif kind == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    else:
        return str(value)
    raise ValueError(f"model_args {name}={value!r} must be {'an' if kind == 'int' else 'a'} {kind}")


def _kind(field: dataclasses.Field) -> str:
    t = str(field.type)
    return next(k for k in ("bool", "int", "float", "str") if k in t)


def _check_choices(o: EvalOptions) -> None:
    """The eval's own options and choices, with ``model_args`` messages (before anything is loaded)."""
    for name, allowed in (("dtype", _DTYPES), ("ops", _OPS), ("cache", _CACHES), ("remasking", REMASKING),
                          ("decoding", _DECODINGS)):
        value = getattr(o, name)
        if value is not None and value not in allowed:
            raise ValueError(f"model_args {name}={value!r}: choose one of {', '.join(allowed)}")
    for name, value in (("batch_size", o.batch_size), ("mc_num", o.mc_num), ("chunk_size", o.chunk),
                        ("mc_batch_size", o.mc_batch)):  # the decoding options: DecodeOptions.check
        if value < 1:
            raise ValueError(f"model_args {name}={value} must be >= 1")
    if o.threshold is not None and o.factor is not None:
        raise ValueError("model_args threshold and factor are exclusive: set one")
    if o.mc_num % o.mc_batch:
        raise ValueError(f"model_args mc_batch_size={o.mc_batch} must divide mc_num={o.mc_num} "
                         "(the MC mini-batch defaults to batch_size)")


def llada2_decoding(o: EvalOptions):
    """The :class:`~llada_triton.decode.Llada2Decoding` of ``o`` (``threshold`` is its threshold, default 0.95)."""
    from llada_triton.decode import Llada2Decoding

    return Llada2Decoding(threshold=0.95 if o.threshold is None else o.threshold,
                          minimal_topk=1 if o.minimal_topk is None else o.minimal_topk,
                          eos_early_stop=bool(o.eos_early_stop))


def decode_kwargs(o: EvalOptions) -> dict:
    """``generate`` / ``run_many`` keyword arguments of ``o``'s decoder, less ``ops`` and ``cuda_graphs``: LLaDA's
    rules, LLaDA2.0's decoding object (``decoding=``) or Dream's (:func:`llada_triton.decode.dream_options`)."""
    from llada_triton.decode import dream_options

    if o.dream:
        kw = dream_options(max_new_tokens=o.gen_length, steps=o.decode_steps, alg=o.remasking, alg_temp=o.alg_temp,
                           temperature=o.temperature, top_p=o.top_p, top_k=o.top_k, threshold=o.threshold,
                           cache=o.cache, block_length=o.block_length)
    else:
        kw = dict(gen_length=o.gen_length, block_length=o.block_length, steps=o.decode_steps, threshold=o.threshold,
                  factor=o.factor, cfg_scale=o.cfg_scale, temperature=o.temperature, remasking=o.remasking,
                  logits_eos_inf=o.logits_eos_inf, confidence_eos_eot_inf=o.confidence_eos_eot_inf, cache=o.cache)
    if o.decoding == "llada2":  # the threshold belongs to LLaDA2.0's rule, not to the driver's
        kw.update(threshold=None, decoding=llada2_decoding(o))
    if o.early_stop is not None:
        kw["early_stop"] = o.early_stop
    return kw


def _refuse(decoder: str, o: EvalOptions, names, allowed: str) -> None:
    """A one-line error for the first of ``names`` set on ``o`` (truthy) that ``decoder`` does not take."""
    bad = next((n for n in names if getattr(o, n) not in (None, False, 0.0)), None)
    if bad is not None:
        raise ValueError(f"model_args {bad}={getattr(o, bad)!r} is not an option of {decoder}; {allowed}")


def _check_family(o: EvalOptions, family: str) -> None:
    """The options against the checkpoint's model family (read from config.json before loading), then the
    decoder's model-free checks (:meth:`llada_triton.decode.DecodeOptions.check`) with their messages.
    Refused here: what only the flat ``model_args`` namespace can get wrong, and what the driver's grouped
    messages would not name."""
    if o.decoding == "llada2" and family != "llada2":
        raise ValueError(f"model_args decoding='llada2' needs a LLaDA2 checkpoint, not family {family!r}; "
                         "use decoding=llada")
    if o.decoding != "llada2":  # Llada2Decoding's fields: no driver option to check them
        _refuse("decoding=llada", o, ("minimal_topk", "eos_early_stop"), "use decoding=llada2 (LLaDA2 checkpoints)")
    if not o.dream:
        _refuse(f"remasking={o.remasking}", o, ("top_p", "top_k", "alg_temp"),
                f"top_p / top_k / alg_temp need a Dream remasking ({', '.join(DREAM_ALGS)})")
    else:
        _refuse(f"remasking={o.remasking} (Dream)", o, ("factor", "cfg_scale", "confidence_eos_eot_inf"),
                "Dream's decoders take threshold, temperature, top_p, top_k, alg_temp")
        if o.cache == "none" and o.threshold is not None and o.batch_size != 1:  # the decoder's batch is a chunk
            raise ValueError(f"model_args threshold with Dream's cache='none' (Fast-dLLM's carry schedule) decodes "
                             f"one prompt at a time: set batch_size=1, not {o.batch_size}")
    try:
        DecodeOptions(**decode_kwargs(o)).check(o.batch_size)
    except (TypeError, ValueError) as e:
        raise ValueError(f"model_args {e}") from None


def _with_family_defaults(o: EvalOptions, family: str) -> EvalOptions:
    """``o`` with the family-dependent defaults (the ``None`` fields) filled in."""
    decoding = o.decoding or ("llada2" if family == "llada2" else "llada")
    remasking = o.remasking or ("maskgit_plus" if family == "dream" and decoding == "llada" else "low_confidence")
    cache = o.cache or ("none" if remasking in DREAM_ALGS else "block")
    block = o.block_length if o.block_length is not None else (o.gen_length if remasking in DREAM_ALGS and cache == "none" else 32)
    return dataclasses.replace(o, decoding=decoding, remasking=remasking, cache=cache, block_length=block)


def parse_model_args(args: Mapping[str, Any]) -> EvalOptions:
    """:class:`EvalOptions` from lm-eval's parsed ``--model_args`` (plus the harness's ``batch_size`` and
    ``device``), with one-line errors for unknown keys, bad types and impossible combinations."""
    fields = {f.name: f for f in dataclasses.fields(EvalOptions)}
    out = {}
    for key, value in args.items():
        name = _ALIASES.get(key, key)
        if key in _IGNORED:
            continue
        if name not in fields:
            raise ValueError(f"unknown model_args key {key!r}; known: {', '.join(MODEL_ARGS)}")
        if name in out:
            raise ValueError(f"model_args {key!r} given twice (also as {name!r})")
        if name in ("batch_size",) and isinstance(value, str) and value.startswith("auto"):
            raise ValueError(f"batch_size={value!r}: give an int (slots of the decoder, MC mini-batch)")
        if name == "device" and value is None:
            continue
        out[name] = _coerce(key, value, _kind(fields[name]))
    if out.get("pretrained") is None:
        raise ValueError("model_args needs pretrained=DIR (a local LLaDA folder)")
    for name in ("batch_size",):
        if out.get(name) is None:
            out.pop(name, None)
    opts = EvalOptions(**out)
    if not os.path.isdir(opts.pretrained):
        raise ValueError(f"model_args pretrained={opts.pretrained!r} is not a directory (a local model folder)")
    from llada_triton.models import family_for_config_json

    family = family_for_config_json(opts.pretrained).name
    opts = _with_family_defaults(opts, family)
    _check_choices(opts)
    _check_family(opts, family)
    return opts
