"""LLaDA2.x / LLaDA-MoE configs and strict loading: family recognition, refused fields, missing experts."""
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from llada_triton.models import (ConfigError, LLaDA2Config, LLaDAConfig, LLaDAMoEConfig, MoEConfig, WeightError,
                                 detect_family, load_model)
from tests.helpers import CKPT, family_dir, family_model


def _raw(family):
    with open(os.path.join(family_dir(family), "checkpoint", "config.json")) as f:
        return json.load(f)


def _from(family, **changes):
    raw = dict(_raw(family), **changes)
    return MoEConfig.from_dict(raw, mask_token_id=303)


def test_detect_family():
    assert detect_family(_raw("llada2")) == "llada2"
    assert detect_family(_raw("lladamoe")) == "lladamoe"  # model_type 'llada', told apart by architectures
    assert detect_family({"model_type": "llada", "architectures": ["LLaDAModelLM"], "d_model": 8}) == "llada"
    with pytest.raises(ConfigError, match="model_type='qwen2'"):
        detect_family({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]})


def test_load_model_dispatches_on_config_json():
    _, cfg = load_model(CKPT)
    assert isinstance(cfg, LLaDAConfig)
    params, cfg = family_model("llada2")
    assert isinstance(cfg, LLaDA2Config) and cfg.moe_layers == (False, True, True)
    lp = params.layers[1]
    assert lp.experts_gate_up.shape == (16, 64, 64) and lp.experts_down.shape == (16, 64, 32)
    assert lp.router_w.dtype == torch.float32 and lp.expert_bias.dtype == torch.float32  # fp32 load
    assert lp.expert_bias.abs().sum() > 0
    assert params.layers[0].w_gate_up.shape == (2 * 96, 64) and params.rope_cos.shape[1] == 8  # partial RoPE
    _, cfg = family_model("lladamoe")
    assert isinstance(cfg, LLaDAMoEConfig) and cfg.score_func == "softmax" and cfg.rotary_dim == cfg.head_dim


def test_experts_stacked_from_checkpoint_names():
    params, _ = family_model("llada2")
    path = os.path.join(family_dir("llada2"), "checkpoint")
    shard = next(f for f in sorted(os.listdir(path)) if f.endswith(".safetensors"))
    tensors = load_file(os.path.join(path, shard))
    name = next(n for n in tensors if ".mlp.experts." in n and n.endswith("up_proj.weight"))
    layer, expert = int(name.split(".")[2]), int(name.split(".")[5])
    I = tensors[name].shape[0]  # noqa: E741
    torch.testing.assert_close(params.layers[layer].experts_gate_up[expert, I:], tensors[name].float(), atol=0, rtol=0)


@pytest.mark.parametrize("field,value", [("use_qkv_bias", True), ("use_bias", True), ("use_sliding_window", True),
                                         ("num_nextn_predict_layers", 1), ("rope_scaling", {"type": "linear"}),
                                         ("score_function", "softmax"), ("hidden_act", "gelu")])
def test_llada2_unsupported_fields_are_named(field, value):
    with pytest.raises(ConfigError, match=field):
        _from("llada2", **{field: value})


def test_group_and_rotary_checks():
    with pytest.raises(ConfigError, match="num_experts=16 is not divisible by n_group=3"):
        _from("llada2", n_group=3)
    with pytest.raises(ConfigError, match="topk_group"):
        _from("llada2", topk_group=5)
    with pytest.raises(ConfigError, match="rotary_dim=6 disagrees"):
        _from("llada2", rotary_dim=6)
    with pytest.raises(ConfigError, match="unknown_field"):
        _from("llada2", unknown_field=1)


def test_lladamoe_refuses_bias_on_weights_and_bad_layer_flags():
    with pytest.raises(ConfigError, match="moe_router_enable_expert_bias"):
        _from("lladamoe", moe_router_enable_expert_bias=True)
    with pytest.raises(ConfigError, match="moe_layer_freq"):
        _from("lladamoe", moe_layer_freq=[1])
    with pytest.raises(ConfigError, match="attention_bias"):
        _from("lladamoe", attention_bias=True)


def test_mask_id_outside_vocab_says_how_to_fix():
    with pytest.raises(ConfigError, match="mask_token_id=156895 .*pass mask_token_id="):
        MoEConfig.from_dict(_raw("llada2"))


def _copy_ckpt(tmp_path, family):
    dst = tmp_path / "ckpt"
    shutil.copytree(os.path.join(family_dir(family), "checkpoint"), dst)
    return dst


def _rewrite(dst, drop=None, add=None):
    """Merge the shards into one model.safetensors (no index), dropping / adding tensors."""
    tensors = {}
    for f in sorted(os.listdir(dst)):
        if f.endswith(".safetensors"):
            tensors.update(load_file(dst / f))
            os.remove(dst / f)
    os.remove(dst / "model.safetensors.index.json")
    tensors.pop(drop, None)
    tensors.update(add or {})
    save_file(tensors, dst / "model.safetensors")


def test_missing_expert_tensor_names_layer_and_expert(tmp_path):
    dst = _copy_ckpt(tmp_path, "llada2")
    _rewrite(dst, drop="model.layers.2.mlp.experts.7.down_proj.weight")
    with pytest.raises(WeightError, match=r"experts\.7\.down_proj\.weight \(layer 2, expert 7\)"):
        load_model(str(dst), mask_token_id=303)


def test_unexpected_tensor_is_refused(tmp_path):
    dst = _copy_ckpt(tmp_path, "lladamoe")
    _rewrite(dst, add={"model.layers.0.mlp.experts.16.up_proj.weight": torch.zeros(32, 64)})
    with pytest.raises(WeightError, match="unexpected tensor 'model.layers.0.mlp.experts.16"):
        load_model(str(dst), mask_token_id=303)


def test_mask_and_eot_ids_from_tokenizer_files(tmp_path):
    dst = _copy_ckpt(tmp_path, "lladamoe")
    with open(dst / "tokenizer_config.json", "w") as f:
        json.dump({"added_tokens_decoder": {"303": {"content": "<|mask|>"}, "305": {"content": "<|role_end|>"}}}, f)
    _, cfg = load_model(str(dst))
    assert (cfg.mask_token_id, cfg.eot_token_id, cfg.end_token_ids) == (303, 305, (300, 305))


def test_random_params_at_config_shapes_run_both_caches_alike():
    """init_moe_params gives every slot (expert bias in fp32) and the model runs on them; the block-causal
    cache and the full recompute agree on the random model too."""
    from llada_triton.decode.llada2 import generate_llada2
    from llada_triton.models import init_moe_params

    _, cfg = family_model("llada2")
    params = init_moe_params(cfg, dtype=torch.float32, seed=3, std=0.2)
    assert params.layers[1].expert_bias.dtype == torch.float32 and params.layers[1].expert_bias.std() > 0
    outs = [generate_llada2(params, cfg, [5, 6, 7, 8, 9], gen_length=12, block_length=4, steps=4, threshold=0.3,
                            cache=c) for c in ("block", "none")]
    assert outs[0].tokens == outs[1].tokens and outs[0].nfe == outs[1].nfe
