"""Root test configuration: decides the Triton mode *before* anything imports triton.

On a machine without CUDA the kernels run under the Triton interpreter (``TRITON_INTERPRET=1``),
which computes in numpy; on a GPU machine they are compiled. Set ``TRITON_INTERPRET`` yourself to
override. Markers: ``gpu`` (needs CUDA; skipped on CPU machines), ``slow`` (long under the interpreter).
"""
import os
import sys

if "triton" in sys.modules:  # pragma: no cover - a guard, not a test
    raise RuntimeError("triton was imported before conftest.py; set TRITON_INTERPRET in the environment")
if "TRITON_INTERPRET" not in os.environ:
    import torch

    os.environ["TRITON_INTERPRET"] = "0" if torch.cuda.is_available() else "1"
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

INTERPRET = os.environ["TRITON_INTERPRET"] == "1"
HAS_CUDA = torch.cuda.is_available()


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (compiled kernels, bf16); skipped on CPU")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA and not INTERPRET:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the GPU machine: see README)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def device():
    """Where kernels run: 'cuda' when compiled, 'cpu' under the interpreter."""
    return "cpu" if INTERPRET or not HAS_CUDA else "cuda"
