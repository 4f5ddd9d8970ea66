"""The LLaDA2.x family record (``model_type: llada2_moe``; inclusionAI/LLaDA2.0-mini, -flash, LLaDA2.1-mini).

Config, loader and forward are shared with LLaDA-MoE (:mod:`.moe_config`, :mod:`.moe_weights`,
:mod:`.moe_model`); its official decoders are in the decode package (``decode.llada2``).
"""
from .family import Family
from .moe_config import LLaDA2Config
from .moe_model import forward_hidden
from .moe_weights import load_moe_params

FAMILY = Family(name="llada2", config=LLaDA2Config, forward_hidden=forward_hidden, load_params=load_moe_params)
