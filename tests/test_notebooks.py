"""Execute the notebooks headless (nbclient) and check that they ran to the end.

The kernel inherits TRITON_INTERPRET=1 without CUDA (set by conftest.py) and runs one torch thread
(OMP_NUM_THREADS=1: on a busy 2-core machine a second thread slows tiny matmuls down a lot). A cell
tagged ``parameters`` may be followed by injected overrides that shrink the work for the test.
"""
import os

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NB_DIR = os.path.join(ROOT, "notebooks")


def _run(name, overrides="", timeout=300):
    nb = nbformat.read(os.path.join(NB_DIR, name), as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{name} is committed with outputs"
    if overrides:
        at = next((i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])), None)
        assert at is not None, f"{name} has no cell tagged 'parameters'"
        nb.cells.insert(at + 1, nbformat.v4.new_code_cell(overrides))
    old = {k: os.environ.get(k) for k in ("TRITON_INTERPRET", "OMP_NUM_THREADS", "MPLBACKEND")}
    os.environ.pop("MPLBACKEND", None)               # the kernel's inline backend, so figures become PNGs
    os.environ.setdefault("TRITON_INTERPRET", "1")   # conftest decided; a CPU machine gets "1"
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                         resources={"metadata": {"path": NB_DIR}})
        client.execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    text = []
    for c in nb.cells:
        for o in c.get("outputs", []):
            if o.get("output_type") == "stream":
                text.append(o["text"])
            elif "text/plain" in o.get("data", {}):
                text.append(o["data"]["text/plain"])
    n_png = sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    return "".join(text), n_png


def test_profile_kernels_notebook():
    out, n_png = _run("profile_kernels.ipynb")
    for marker in ("KERNELS_MATCH_REFERENCE", "ROOFLINE_OK", "PROFILE_OK", "decode_step"):
        assert marker in out, marker
    assert n_png >= 2  # timings and roofline


def test_decode_walkthrough_notebook():
    out, n_png = _run("decode_walkthrough.ipynb", overrides="N_PER_TASK = 2")
    assert "WALKTHROUGH_OK" in out
    assert "low_confidence" in out and "random" in out
    assert n_png >= 4  # one commit heatmap per task (3) + the averaged heatmap
