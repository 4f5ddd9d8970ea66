"""Package boundaries: one import namespace, the public kernel API, import-time behaviour, dependency direction."""
import os
import pathlib
import subprocess
import sys

from llada_triton import kernels

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = ROOT / "llada_triton"


def test_kernels_all_is_pinned():
    assert kernels.__all__ == ["block_attention", "rms_norm", "rope", "swiglu_mlp", "swiglu_mlp_rms_norm",
                               "linear_rms_norm", "silu_mul", "qkv_proj_rope", "qkv_proj_norm_rope", "head_confidence",
                               "logits_confidence",
                               "select_transfer", "select_commit", "commit_step", "linear", "qkv_rope_cache",
                               "moe_route", "moe_align", "moe_experts", "head_dream_confidence", "reference"]
    for name in kernels.__all__[:-1]:
        assert callable(getattr(kernels, name)), name


def test_importing_the_model_does_not_import_triton():
    code = ("import sys, llada_triton, llada_triton.models, llada_triton.decode, llada_triton.kernels.reference; "
            "llada_triton.generate; print('triton' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_public_api_imports_outside_the_checkout_beside_hf_kernels(tmp_path):
    """transformers >= 5.25 installs Hugging Face's top-level ``kernels``; ours lives under ``llada_triton``."""
    code = ("import importlib.util, kernels as hf, llada_triton\n"
            "from llada_triton.kernels import head_confidence, block_attention\n"
            "from llada_triton.models import load_model\n"
            "from llada_triton.decode import generate, run_many\n"
            "print(importlib.util.find_spec('kernels') is not None, 'llada_triton' not in hf.__name__,\n"
            "      llada_triton.load_model is load_model, callable(head_confidence))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "True", "True", "True"]


def test_dependencies_point_one_way():
    for f in (PKG / "kernels").glob("*.py"):
        src = f.read_text()
        for mod in ("models", "decode"):
            assert f"llada_triton.{mod}" not in src, f
    for f in (PKG / "models").glob("*.py"):
        assert "llada_triton.decode" not in f.read_text(), f
    ref = (PKG / "kernels" / "reference.py").read_text()
    assert "import triton" not in ref


def test_no_top_level_generic_packages():
    """The distribution installs one top-level package, so nothing shadows ``kernels``, ``decode`` or ``llada``."""
    for name in ("kernels", "decode", "llada"):
        assert not (ROOT / name / "__init__.py").exists(), name
