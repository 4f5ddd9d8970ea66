"""The LLaDA2.x family record (``model_type: llada2_moe``): config, loader and forward shared with LLaDA-MoE
(:mod:`.moe_config`, :mod:`.moe_weights`, :mod:`.moe_model`); its official decoders are ``decode.llada2``'s."""
from .family import Family
from .moe_config import LLaDA2Config
from .moe_model import forward_hidden
from .moe_weights import load_moe_params

FAMILY = Family(name="llada2", config=LLaDA2Config, forward_hidden=forward_hidden, load_params=load_moe_params)
