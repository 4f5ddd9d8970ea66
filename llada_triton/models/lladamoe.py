"""The LLaDA-MoE family record (``model_type: llada`` + ``LLaDAMoEModelLM``): config, loader and forward shared
with LLaDA2.x (:mod:`.moe_config`, :mod:`.moe_weights`, :mod:`.moe_model`); it decodes as LLaDA (the one driver)."""
from .family import Family
from .moe_config import LLaDAMoEConfig
from .moe_model import forward_hidden
from .moe_weights import load_moe_params

FAMILY = Family(name="lladamoe", config=LLaDAMoEConfig, forward_hidden=forward_hidden, load_params=load_moe_params)
