import json
import os

import pytest

from llada_triton.models import ConfigError, LLaDAConfig
from tests.helpers import CKPT


def _raw():
    with open(os.path.join(CKPT, "config.json")) as f:
        return json.load(f)


def test_real_config_fields_all_understood():
    cfg = LLaDAConfig.from_dict(_raw(), generation={"bos_token_id": 312}, eot_token_id=315)
    assert (cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.n_layers, cfg.mlp_hidden_size, cfg.vocab_size) == \
        (64, 2, 2, 2, 176, 320)
    assert (cfg.mask_token_id, cfg.eos_token_id, cfg.pad_token_id, cfg.bos_token_id, cfg.eot_token_id) == \
        (316, 313, 313, 312, 315)
    assert cfg.rope_theta == 500000.0 and cfg.head_dim == 32 and cfg.end_token_ids == (313, 315)


def test_llada_8b_config_shape():
    raw = _raw()
    raw.update(d_model=4096, n_heads=32, n_kv_heads=32, n_layers=32, mlp_hidden_size=12288, vocab_size=126464,
               embedding_size=126464, mask_token_id=126336, eos_token_id=126081, pad_token_id=126081)
    cfg = LLaDAConfig.from_dict(raw)
    assert cfg.head_dim == 128 and cfg.vocab_size == 126464


@pytest.mark.parametrize("field,value", [
    ("alibi", True), ("block_type", "sequential"), ("include_bias", True), ("layer_norm_type", "default"),
    ("attention_layer_norm", True), ("scale_logits", True), ("activation_type", "gelu"),
    ("rope_full_precision", False), ("input_emb_norm", True), ("bias_for_layer_norm", True),
    ("residual_dropout", 0.1), ("model_type", "lladamoe"), ("block_group_size", 2),
])
def test_unsupported_values_name_field_and_value(field, value):
    raw = _raw()
    raw[field] = value
    with pytest.raises(ConfigError, match=f"{field}={value!r}"):
        LLaDAConfig.from_dict(raw)


def test_unknown_field_rejected_unless_allowed():
    raw = _raw()
    raw["new_fancy_option"] = 3
    with pytest.raises(ConfigError, match="new_fancy_option"):
        LLaDAConfig.from_dict(raw)
    LLaDAConfig.from_dict(raw, allow_unknown=True)


def test_inconsistent_sizes_and_ids():
    raw = _raw()
    raw["n_kv_heads"] = 3
    with pytest.raises(ConfigError, match="n_heads=2 is not a multiple of n_kv_heads=3"):
        LLaDAConfig.from_dict(raw)
    raw = _raw()
    raw["mask_token_id"] = 999
    with pytest.raises(ConfigError, match="mask_token_id=999"):
        LLaDAConfig.from_dict(raw)
    raw = _raw()
    raw["pad_token_id"] = raw["mask_token_id"]
    with pytest.raises(ConfigError, match="pad_token_id"):
        LLaDAConfig.from_dict(raw)


def test_gqa_and_mlp_ratio():
    raw = _raw()
    raw.update(n_heads=4, n_kv_heads=2, mlp_hidden_size=None, mlp_ratio=3)
    cfg = LLaDAConfig.from_dict(raw)
    assert cfg.n_kv_heads == 2 and cfg.mlp_hidden_size == 192


def test_missing_folder():
    with pytest.raises(FileNotFoundError, match="config.json"):
        LLaDAConfig.from_pretrained("/nonexistent/dir")
