"""Block decoding of LLaDA: one functional driver, schedules, remasking rules and cache policies."""
from .cache import POLICIES
from .generate import BlockEvent, GenerateResult, StepEvent, generate, generate_stream, pad_prompts
from .schedule import num_transfer_tokens

__all__ = ["generate", "generate_stream", "GenerateResult", "StepEvent", "BlockEvent", "pad_prompts",
           "num_transfer_tokens", "POLICIES"]
