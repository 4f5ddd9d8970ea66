"""Package boundaries: the public kernel API, import-time behaviour and dependency direction."""
import subprocess
import sys

import kernels


def test_kernels_all_is_pinned():
    assert kernels.__all__ == ["block_attention", "rms_norm", "rope", "swiglu_mlp", "swiglu_mlp_rms_norm",
                               "linear_rms_norm", "silu_mul", "qkv_proj_rope", "head_confidence", "logits_confidence",
                               "select_transfer", "select_commit", "commit_step", "reference"]
    for name in kernels.__all__[:-1]:
        assert callable(getattr(kernels, name)), name


def test_importing_the_model_does_not_import_triton():
    code = "import sys, llada, decode, kernels.reference; print('triton' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_dependencies_point_one_way():
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1]
    for f in (root / "kernels").glob("*.py"):
        src = f.read_text()
        for mod in ("llada", "decode"):
            assert f"import {mod}" not in src and f"from {mod}" not in src, f
    for f in (root / "llada").glob("*.py"):
        src = f.read_text()
        assert "from decode" not in src and "import decode" not in src, f
    ref = (root / "kernels" / "reference.py").read_text()
    assert "import triton" not in ref
