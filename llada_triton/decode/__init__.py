"""Block decoding of masked-diffusion LMs: one functional driver, schedules, transfer rules, cache policies.

Where a decoding step goes:

* :mod:`.generate`: ``generate`` / ``generate_stream``, the block loop over one batch (``Workspace`` keeps buffers
  and CUDA graphs across calls); :mod:`.runner`: ``run_many``, a fixed number of slots in flight.
* :mod:`.step`: what both share: the options and their checks (:class:`DecodeOptions`), ``setup_decode``, the
  :class:`TransferRule` (LM head via ``Ops.head``, selection and commit via ``Ops.commit`` / ``Ops.select``),
  :class:`Graphs`.
* :mod:`.cache`: the cache policies ``none | prefix | dual | block`` (what a step feeds the model and keeps;
  whether CUDA graphs and early stop apply); :mod:`.schedule`: tokens per step; :mod:`.layout`: where prompts and
  blocks sit in the token buffer.
* :mod:`.llada2` (``decoding=Llada2Decoding(...)`` / ``Llada21Decoding(...)``) and :mod:`.dream`
  (``dream_options``, ``diffusion_generate``): the families' official decoders as options of ``generate``.

Which kernel runs each op: the ``Ops`` record passed as ``ops=`` (:mod:`llada_triton.models.ops`).

Where a new model family plugs in: the driver calls the model only through
:func:`llada_triton.models.forward_hidden` / :func:`~llada_triton.models.new_cache`, which dispatch on the config's
family (:mod:`llada_triton.models.family`); ``Family.policies`` (cache policies by name) and ``Family.schedule``
change its decoding; a new selection rule is a :class:`TransferRule` field; a family's own official decoder is a
``decoding=`` object with :class:`Llada2Decoding`'s hooks.
"""
from .cache import POLICIES, CachePolicy, StepContext, policies_for
from .generate import BlockEvent, GenerateResult, StepEvent, Workspace, generate, generate_stream, pad_prompts
from .runner import RunResult, run_many
from .schedule import linear_schedule, num_transfer_tokens
from .step import DecodeOptions, Graphs, TransferRule
from .dream import diffusion_generate, dream_options
from .llada2 import Llada21Decoding, Llada2Decoding, generate_llada2

__all__ = ["generate", "generate_stream", "GenerateResult", "StepEvent", "BlockEvent", "Workspace", "pad_prompts",
           "num_transfer_tokens", "linear_schedule", "POLICIES", "CachePolicy", "StepContext", "policies_for",
           "run_many", "RunResult", "DecodeOptions", "TransferRule", "Graphs", "diffusion_generate", "dream_options",
           "generate_llada2", "Llada2Decoding", "Llada21Decoding"]
