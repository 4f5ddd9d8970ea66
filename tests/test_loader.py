"""Strict, streaming checkpoint loading."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from llada_triton.models import LLaDAConfig, WeightError, init_params, load_params, save_checkpoint
from llada_triton.models.weights import PREFIX, param_name_map
from tests.helpers import CKPT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def ckpt(tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(CKPT, dst)
    for p in dst.iterdir():
        os.chmod(p, 0o644)
    return dst


def _cfg(path):
    return LLaDAConfig.from_pretrained(str(path))


def _rewrite_shard(path, fname, edit):
    fpath = os.path.join(path, fname)
    with safe_open(fpath, "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    edit(tensors)
    save_file(tensors, fpath, metadata={"format": "pt"})


def _index(path):
    with open(os.path.join(path, "model.safetensors.index.json")) as f:
        return json.load(f)


def test_every_tensor_used_and_fused_correctly():
    cfg = _cfg(CKPT)
    params = load_params(CKPT, cfg, dtype=torch.float32)
    names = param_name_map(cfg)
    assert len(names) == 3 + 9 * cfg.n_layers == len(_index(CKPT)["weight_map"])
    h, D = cfg.mlp_hidden_size, cfg.head_dim
    for fname in sorted(set(_index(CKPT)["weight_map"].values())):
        with safe_open(os.path.join(CKPT, fname), "pt") as f:
            for k in f.keys():
                t = f.get_tensor(k).float()
                target, layer, rows, _ = names[k]
                got = getattr(params, target) if layer is None else getattr(params.layers[layer], target)
                assert torch.equal(got[rows], t), k
    lp = params.layers[0]
    # the fused layouts: q/k/v stacked by rows, gate (ff_proj) before up
    with safe_open(os.path.join(CKPT, _index(CKPT)["weight_map"][PREFIX + "blocks.0.up_proj.weight"]), "pt") as f:
        assert torch.equal(lp.w_gate_up[h:], f.get_tensor(PREFIX + "blocks.0.up_proj.weight").float())
    assert lp.w_qkv.shape == ((cfg.n_heads + 2 * cfg.n_kv_heads) * D, cfg.d_model)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_target_dtype(dtype):
    cfg = _cfg(CKPT)
    params = load_params(CKPT, cfg, dtype=dtype)
    for name, t in params.tensors():
        assert t.dtype == dtype, name
    assert params.rope_cos.dtype == torch.float32
    ref = load_params(CKPT, cfg, dtype=torch.float32)
    # bf16 checkpoint -> bf16 is exact
    if dtype == torch.bfloat16:
        assert torch.equal(params.lm_head.float(), ref.lm_head)


def test_missing_tensor(ckpt):
    name = PREFIX + "blocks.1.k_proj.weight"
    fname = _index(ckpt)["weight_map"][name]
    _rewrite_shard(ckpt, fname, lambda t: t.pop(name))
    with pytest.raises(WeightError, match="blocks.1.k_proj.weight"):
        load_params(str(ckpt), _cfg(ckpt))


def test_missing_from_index_and_file(ckpt):
    name = PREFIX + "blocks.0.ff_norm.weight"
    idx = _index(ckpt)
    fname = idx["weight_map"].pop(name)
    _rewrite_shard(ckpt, fname, lambda t: t.pop(name))
    with open(os.path.join(ckpt, "model.safetensors.index.json"), "w") as f:
        json.dump(idx, f)
    with pytest.raises(WeightError, match="lacks 1 tensors.*blocks.0.ff_norm.weight"):
        load_params(str(ckpt), _cfg(ckpt))


def test_extra_tensor(ckpt):
    idx = _index(ckpt)
    fname = sorted(set(idx["weight_map"].values()))[0]
    _rewrite_shard(ckpt, fname, lambda t: t.update({PREFIX + "blocks.0.attn_bias": torch.zeros(3)}))
    with pytest.raises(WeightError, match="attn_bias"):
        load_params(str(ckpt), _cfg(ckpt))
    idx["weight_map"][PREFIX + "blocks.0.attn_bias"] = fname
    with open(os.path.join(ckpt, "model.safetensors.index.json"), "w") as f:
        json.dump(idx, f)
    with pytest.raises(WeightError, match=r"unexpected tensor .*attn_bias.* in 'model-0000"):
        load_params(str(ckpt), _cfg(ckpt))


def test_wrong_shape(ckpt):
    name = PREFIX + "blocks.0.up_proj.weight"
    fname = _index(ckpt)["weight_map"][name]
    _rewrite_shard(ckpt, fname, lambda t: t.update({name: t[name][:-1].clone()}))
    with pytest.raises(WeightError, match=r"up_proj.weight.*has shape \(175, 64\), expected \(176, 64\)"):
        load_params(str(ckpt), _cfg(ckpt))


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_truncated_file(ckpt, keep):
    fname = sorted(set(_index(ckpt)["weight_map"].values()))[1]
    fpath = os.path.join(ckpt, fname)
    data = open(fpath, "rb").read()
    with open(fpath, "wb") as f:
        f.write(data[: int(len(data) * keep)])
    with pytest.raises(WeightError, match=fname):
        load_params(str(ckpt), _cfg(ckpt))


def test_missing_shard_and_folder(ckpt, tmp_path):
    fname = sorted(set(_index(ckpt)["weight_map"].values()))[0]
    os.remove(os.path.join(ckpt, fname))
    with pytest.raises(WeightError, match=fname):
        load_params(str(ckpt), _cfg(ckpt))
    with pytest.raises(FileNotFoundError):
        load_params(str(tmp_path), _cfg(CKPT))


def test_single_file_roundtrip_and_tied_weights(tmp_path):
    cfg = _cfg(CKPT)
    params = load_params(CKPT, cfg, dtype=torch.float32)
    save_checkpoint(params, cfg, str(tmp_path / "single"))
    shutil.copy(os.path.join(CKPT, "config.json"), tmp_path / "single" / "config.json")
    again = load_params(str(tmp_path / "single"), cfg, dtype=torch.float32)
    for (n, a), (_, b) in zip(params.tensors(), again.tensors()):
        assert torch.equal(a, b), n
    tied = cfg.replace(weight_tying=True)
    p2 = init_params(tied)
    assert p2.lm_head is p2.wte
    save_checkpoint(p2, tied, str(tmp_path / "tied"))
    loaded = load_params(str(tmp_path / "tied"), tied, dtype=torch.float32)
    assert loaded.lm_head is loaded.wte


RSS_SCRIPT = textwrap.dedent("""
    import json, resource, sys, torch
    sys.path.insert(0, {root!r})
    from llada_triton.models import LLaDAConfig, load_params
    import safetensors.torch  # imports done before the baseline
    path = sys.argv[1]
    cfg = LLaDAConfig.from_pretrained(path)
    def rss():
        with open('/proc/self/status') as f:
            return [int(l.split()[1]) * 1024 for l in f if l.startswith('VmRSS')][0]
    def hwm():
        with open('/proc/self/status') as f:
            return [int(l.split()[1]) * 1024 for l in f if l.startswith('VmHWM')][0]
    try:  # reset the peak-RSS mark so that only the load is measured (Linux >= 4.0)
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
    except OSError:
        pass
    before = rss()
    params = load_params(path, cfg, dtype=torch.float32)
    peak = hwm()
    model = sum(t.numel() * t.element_size() for _, t in params.tensors())
    print(json.dumps(dict(before=before, peak=peak, model=model)))
""")


def test_streaming_peak_memory(tmp_path):
    """Peak host memory while loading stays near model + one shard, never model + whole checkpoint."""
    cfg = LLaDAConfig(d_model=512, n_heads=8, n_kv_heads=8, n_layers=12, mlp_hidden_size=1536, vocab_size=8192,
                      mask_token_id=8000, eos_token_id=8001, pad_token_id=8001)
    params = init_params(cfg, dtype=torch.bfloat16)
    shard = 12 * 2 ** 20
    save_checkpoint(params, cfg, str(tmp_path), max_shard_bytes=shard)
    src = json.load(open(os.path.join(CKPT, "config.json")))
    src.update(d_model=512, n_heads=8, n_kv_heads=8, n_layers=12, mlp_hidden_size=1536, vocab_size=8192,
               embedding_size=8192, mask_token_id=8000, eos_token_id=8001, pad_token_id=8001)
    with open(os.path.join(tmp_path, "config.json"), "w") as f:
        json.dump(src, f)
    del params
    ckpt_bytes = sum(os.path.getsize(os.path.join(tmp_path, f)) for f in os.listdir(tmp_path)
                     if f.endswith(".safetensors"))
    max_shard = max(os.path.getsize(os.path.join(tmp_path, f)) for f in os.listdir(tmp_path)
                    if f.endswith(".safetensors"))
    assert len([f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]) >= 8
    out = subprocess.run([sys.executable, "-c", RSS_SCRIPT.format(root=ROOT), str(tmp_path)],
                         capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    grew = r["peak"] - r["before"]
    # allowed: the fp32 model + one shard mapped + the largest tensor's temporaries (bf16 read + fp32 cast)
    largest = 8192 * 512 * (2 + 4)
    bound = r["model"] + max_shard + largest + 16 * 2 ** 20
    two_copies = r["model"] + ckpt_bytes
    assert bound < two_copies, "the test would not tell streaming from loading everything first"
    print(f"peak RSS growth {grew / 2**20:.0f} MiB, bound {bound / 2**20:.0f}, two copies {two_copies / 2**20:.0f}")
    assert grew <= bound, f"peak RSS grew by {grew / 2**20:.0f} MiB; bound {bound / 2**20:.0f} MiB"
