"""The seams a new model family and an ablation plug into, and the API's one-line input errors.

* ``models.family``: the driver reaches the model only through ``forward_hidden`` / ``new_cache`` dispatched on the
  config's family; a family's ``policies`` and ``schedule`` replace the defaults; ``load_model`` picks the family
  from config.json. A toy family (LLaDA's forward behind another config class) goes through every seam.
* ``Ops.replace``: a replaced plain op clears the fused op built on it, so the new op really runs.
* ``generate`` / ``run_many``: bad prompts and options fail before any compute with one line naming them.
"""
import json
from dataclasses import fields

import pytest
import torch

from llada_triton.decode import Workspace, generate, run_many
from llada_triton.decode.cache import NoCache
from llada_triton.models import (REGISTRY, REFERENCE_OPS, Family, LLaDAConfig, family_for_config_json, family_of,
                                 forward, init_params, load_model, load_params)
from llada_triton.models import model as dense
from tests.helpers import CKPT, tiny_model

PROMPTS = [[5, 17, 90, 44, 23, 7, 11], [43, 250, 114]]
BASE = dict(gen_length=16, block_length=8, steps=16)


class ToyConfig(LLaDAConfig):
    family = "toy"


SEEN = {"forward": 0, "policy": 0}


def _toy_forward(params, cfg, tokens, **kw):
    SEEN["forward"] += 1
    return dense.forward_hidden(params, cfg, tokens, **kw)


class _CountingNoCache(NoCache):
    def steady(self, x, b, s):
        SEEN["policy"] += 1
        return super().steady(x, b, s)


def _one_shot(n_masked, steps):
    """Everything at the first step of a block (a family's own schedule)."""
    return [n_masked] + [0] * (steps - 1)


FAMILY = Family(name="toy", config=ToyConfig, forward_hidden=_toy_forward, load_params=load_params,
                policies={"none": _CountingNoCache}, schedule=_one_shot)


@pytest.fixture
def toy(monkeypatch):
    """The toy family registered the documented way: one REGISTRY line naming its module."""
    monkeypatch.setitem(REGISTRY, "toy", (__name__, ("toy",), ("ToyForMaskedLM",)))
    SEEN.update(forward=0, policy=0)
    params, cfg = tiny_model()
    return params, ToyConfig(**{f.name: getattr(cfg, f.name) for f in fields(cfg)})


def test_dense_family_is_registered():
    _, cfg = tiny_model()
    assert family_of(cfg).name == "llada" and family_for_config_json(CKPT) is family_of(cfg)
    params, cfg2 = load_model(CKPT)
    assert cfg2 == LLaDAConfig.from_pretrained(CKPT) and params.lm_head.shape == (cfg.vocab_size, cfg.d_model)


def test_driver_reaches_the_model_through_the_family(toy):
    params, cfg = toy
    out = generate(params, cfg, PROMPTS, cache="block", **BASE)
    ref = generate(params, tiny_model()[1], PROMPTS, cache="block", steps=2, gen_length=16, block_length=8)
    assert SEEN["forward"] > 0 and SEEN["policy"] == 0
    # the family's one-shot schedule commits a block in its first step: the linear schedule with one step a block
    assert torch.equal(out.tokens, ref.tokens) and out.nfe == ref.nfe == [2, 2]
    many = run_many(params, cfg, PROMPTS, slots=1, early_stop=False, **BASE)
    assert many.tokens == ref.tokens.tolist() and many.nfe == [2, 2]
    n = SEEN["forward"]
    logits = forward(params, cfg, torch.tensor(PROMPTS[:1]))  # the logits too go through the family
    assert SEEN["forward"] == n + 1 and torch.equal(logits, forward(params, tiny_model()[1], torch.tensor(PROMPTS[:1])))


def test_family_policy_replaces_the_default(toy):
    params, cfg = toy
    out = generate(params, cfg, PROMPTS, cache="none", **BASE)
    assert SEEN["policy"] > 0 and out.nfe == [2, 2]


def test_load_model_picks_the_family_from_config_json(toy, tmp_path):
    for raw, name in (({"model_type": "toy"}, "toy"), ({"architectures": ["ToyForMaskedLM"]}, "toy"),
                      ({"model_type": "llada"}, "llada")):
        (tmp_path / "config.json").write_text(json.dumps(raw))
        assert family_for_config_json(str(tmp_path)).name == name
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match=r"model_type='gpt2' .* is not a supported model family"):
        load_model(str(tmp_path))


def test_ops_replace_clears_the_fused_ops_it_would_shadow():
    counted = []

    def select(conf, masked, **kw):
        counted.append(1)
        return REFERENCE_OPS.select(conf, masked, **kw)

    from llada_triton.kernels.reference import commit_step_ref
    fused = REFERENCE_OPS.replace(commit=commit_step_ref, linear_norm=print, qkv_proj_rope=print, mlp_norm=print)
    ops = fused.replace(select=select)
    assert ops.commit is None and ops.linear_norm is print
    assert fused.replace(linear=print).linear_norm is None and fused.replace(linear=print).qkv_proj_rope is None
    assert fused.replace(rms_norm=print).mlp_norm is None and fused.replace(mlp=print).mlp_norm is None
    assert fused.replace(select=select, commit=commit_step_ref).commit is commit_step_ref  # named: kept
    with pytest.raises(TypeError, match="no field"):
        REFERENCE_OPS.replace(linera=print)
    params, cfg = tiny_model()
    generate(params, cfg, PROMPTS[:1], ops=ops.replace(linear_norm=None, qkv_proj_rope=None, mlp_norm=None), **BASE)
    assert counted, "the replaced selection did not run"


def test_workspace_rebuilds_for_other_weights():
    """A workspace bucket is tied to the params it was built with: other weights of the same shape get their own."""
    params, cfg = tiny_model()
    other = init_params(cfg, seed=3)
    ws = Workspace()
    opts = dict(cache="dual", device_positions=True, workspace=ws, **BASE)
    a = generate(params, cfg, PROMPTS, **opts)
    b = generate(other, cfg, PROMPTS, **opts)
    assert torch.equal(b.tokens, generate(other, cfg, PROMPTS, cache="dual", **BASE).tokens)
    assert torch.equal(a.tokens, generate(params, cfg, PROMPTS, **opts).tokens)
    assert not torch.equal(a.tokens, b.tokens)


@pytest.mark.parametrize("prompts,err,match", [
    ("hello", TypeError, r"prompts='hello' must be a list of token-id lists"),
    (["hello", "world"], TypeError, r"prompts\[0\]='hello' is text: give token ids"),
    ([5, 17, 90], TypeError, r"prompts\[0\]=5 is not a list of token ids \(for one prompt pass \[\[id, ...\]\]\)"),
    ([[5, 17], []], ValueError, r"prompts\[1\] is empty: every prompt needs at least one token"),
    ([[5, 1.5]], TypeError, r"prompts\[0\] holds 1.5: token ids must be ints"),
    ([], ValueError, r"prompts=\[\] is empty"),
])
def test_bad_prompts_fail_in_one_line(prompts, err, match):
    params, cfg = tiny_model()
    calls = [lambda: generate(params, cfg, prompts, **BASE)]
    if prompts != []:  # run_many([]) is an empty result (an empty eval shard)
        calls.append(lambda: run_many(params, cfg, prompts, slots=1, **BASE))
    for call in calls:
        with pytest.raises(err, match=match) as e:
            call()
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("opts,err,match", [
    (dict(seed=None), TypeError, "seed=None must be an int"),
    (dict(seed=1.5), TypeError, "seed=1.5 must be an int"),
    (dict(temperature=None), TypeError, "temperature=None must be >= 0"),
    (dict(cfg_scale="1"), TypeError, "cfg_scale='1' must be >= 0"),
    (dict(threshold=float("nan")), ValueError, r"threshold=nan must be in \(0, 1\]"),
    (dict(steps=0), ValueError, "steps=0 must be an int >= 1"),
    (dict(gen_length=16.0), TypeError, "gen_length=16.0 must be an int >= 1"),
    (dict(block_length=True), TypeError, "block_length=True must be an int >= 1"),
    (dict(ops="triton"), TypeError, "ops='triton' must be an Ops"),
    (dict(stepz=3), TypeError, "unexpected keyword argument 'stepz'"),
])
def test_bad_options_fail_in_one_line(opts, err, match):
    params, cfg = tiny_model()
    kw = {**BASE, **opts}
    for call in (lambda: generate(params, cfg, PROMPTS, **kw), lambda: run_many(params, cfg, PROMPTS, slots=1, **kw)):
        with pytest.raises(err, match=match) as e:
            call()
        assert "\n" not in str(e.value)
    with pytest.raises(TypeError, match="workspace=.* must be a Workspace"):
        generate(params, cfg, PROMPTS, workspace={}, **BASE)
