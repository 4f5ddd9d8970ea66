"""Block decoding of masked-diffusion LMs: one functional driver, schedules, transfer rules, cache policies.

Module map (where a decoding step goes):

* :mod:`.generate`: ``generate`` / ``generate_stream``, the block loop over one batch (``Workspace`` keeps its
  buffers and CUDA graphs across calls); ``run_many`` in :mod:`.runner` keeps a fixed number of slots in flight.
* :mod:`.cache`: the cache policies (``none | prefix | dual | block``): what a step feeds the model and what it
  keeps; each says whether it supports CUDA graphs and whether early stop is on by default.
* :mod:`.step`: the step machinery both drivers share: :class:`TransferRule` (LM head via ``Ops.head``,
  then selection and commit via ``Ops.commit`` / ``Ops.select``), their setup (``setup_decode``: option
  checks, rule, schedule), :class:`Graphs`.
* :mod:`.schedule`: how many tokens each step commits (the linear schedule; Dream's float32 one; Fast-dLLM's
  Dream threshold carry).
* :mod:`.llada2`: LLaDA2.0 / 2.1's official decoders as ``generate`` options (``decoding=Llada2Decoding(...)`` /
  ``Llada21Decoding(...)``: block grid, rule, eos stop and cut; ``generate_llada2`` is the batch-1 wrapper).
* :mod:`.layout`: where prompts and blocks sit in the token buffer (LLaDA's layout; the absolute grid).
* :mod:`.dream`: Dream's ``diffusion_generate`` and Fast-dLLM's Dream decoders as options of ``generate``.

Which kernel runs each op is the ``Ops`` record passed as ``ops=`` (:mod:`llada_triton.models.ops`).

Where a new model family plugs in: the driver calls the model only through
:func:`llada_triton.models.forward_hidden` and :func:`llada_triton.models.new_cache`, which dispatch on the
config's family (:mod:`llada_triton.models.family`). A family's own decoding plugs into the same record:
``Family.policies`` (a :class:`~.cache.CachePolicy` subclass by name, e.g. shifted logits) and
``Family.schedule`` (per-step counts); a new selection rule is a :class:`TransferRule` field; a family's own
official decoder is a ``decoding=`` object with the hooks of :class:`Llada2Decoding` (grid, schedule, commit,
block end, answers).
"""
from .cache import POLICIES, CachePolicy, StepContext, policies_for
from .generate import BlockEvent, GenerateResult, StepEvent, Workspace, generate, generate_stream, pad_prompts
from .runner import RunResult, run_many
from .schedule import linear_schedule, num_transfer_tokens
from .step import Graphs, TransferRule
from .dream import diffusion_generate, dream_options
from .llada2 import Llada21Decoding, Llada2Decoding, generate_llada2

__all__ = ["generate", "generate_stream", "GenerateResult", "StepEvent", "BlockEvent", "Workspace", "pad_prompts",
           "num_transfer_tokens", "linear_schedule", "POLICIES", "CachePolicy", "StepContext", "policies_for",
           "run_many", "RunResult", "TransferRule", "Graphs", "diffusion_generate", "dream_options",
           "generate_llada2", "Llada2Decoding", "Llada21Decoding"]
