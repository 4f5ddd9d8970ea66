"""Block decoding of LLaDA: one functional driver, schedules, remasking rules and cache policies."""
from .cache import POLICIES
from .generate import BlockEvent, GenerateResult, StepEvent, Workspace, generate, generate_stream, pad_prompts
from .runner import RunResult, run_many
from .schedule import num_transfer_tokens

__all__ = ["generate", "generate_stream", "GenerateResult", "StepEvent", "BlockEvent", "Workspace", "pad_prompts",
           "num_transfer_tokens", "POLICIES", "run_many", "RunResult"]
