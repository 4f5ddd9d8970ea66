"""scripts/timeline_step.py: grouping of per-CTA records into launches and windows (CPU, synthetic records),
and the recorder kernel helper compiling for sm_90 inside a real kernel (no GPU needed)."""
import os
import sys
import textwrap

import numpy as np

from helpers import run_without_interpreter

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import timeline_step as tl_step  # noqa: E402

S = tl_step._TAG_SCALE


def _ctas(label, n, entry, release, jitter=10):
    """n CTA records of one launch: [smid, entry, release, label]."""
    return [[i, entry + i, release + (i * jitter) % 40, label] for i in range(n)]


def test_launches_groups_ctas_and_waves():
    attn, gemm, red = 2 * S + 4, 1 * S + 6, 1 * S + 4
    recs = (_ctas(attn, 4, 0, 1_000) + _ctas(gemm, 4, 500, 9_000)        # first wave of a 6-program launch
            + _ctas(gemm, 2, 20_000, 20_000)                              # its second wave, released later
            + _ctas(red, 4, 9_500, 30_000) + _ctas(attn, 4, 30_500, 31_000))
    rng = np.random.default_rng(0)
    recs = np.array(recs, dtype=np.int64)[rng.permutation(len(recs))]
    ls = tl_step.launches(recs)
    assert ls[:, 0].tolist() == [attn, gemm, red, attn]
    assert ls[:, 1].tolist() == [4, 6, 4, 4]                  # the second wave joined its launch
    assert ls[1, 4] == 9_000 and ls[1, 5] == 20_010           # release min from the first wave, max from the second
    assert ls[1, 2] == 500 and ls[1, 3] == 20_001


def test_launches_splits_back_to_back_launches_of_one_kernel():
    a = 1 * S + 3
    recs = np.array(_ctas(a, 3, 0, 1_000) + _ctas(a, 3, 900, 5_000), dtype=np.int64)
    ls = tl_step.launches(recs)
    assert ls[:, 1].tolist() == [3, 3] and ls[:, 4].tolist() == [1_000, 5_000]


def test_windows_are_release_to_release_by_position_after_attention():
    attn, o, red = 2 * S + 32, 1 * S + 128, 1 * S + 32
    ls = np.array([[attn, 32, 0, 0, 1_000, 1_010], [o, 128, 0, 0, 9_000, 9_020], [red, 32, 0, 0, 19_000, 19_010],
                   [attn, 32, 0, 0, 22_000, 22_010], [o, 128, 0, 0, 31_000, 31_020],
                   [red, 32, 0, 0, 2_000_000, 2_000_010]], dtype=np.int64)
    w = tl_step.windows(ls, anchor_tag=2, max_us=1000.0)
    assert w[(0, 2, 32)] == [8.0, 9.0]
    assert w[(1, 1, 128)] == [10.0]                            # the 1969 us window (between steps) is dropped
    assert w[(2, 1, 32)] == [3.0]


_COMPILE = textwrap.dedent("""
    import os, sys, tempfile
    assert "TRITON_INTERPRET" not in os.environ
    sys.path.insert(0, "scripts")
    import timeline_step
    import llada_triton.kernels.norm as norm
    from llada_triton.kernels._common import compile_for
    norm.gdc_wait_and_release = timeline_step.make_recorder(1 << 40, (1 << 40) + 4096, 1024, 4, tempfile.mkdtemp())
    sig = dict(x_ptr="*bf16", r_ptr="*bf16", w_ptr="*bf16", y_ptr="*bf16", h_ptr="*bf16", R="i32", N="i32",
               eps="fp32", stride_x="i32", stride_r="i32", stride_y="i32", stride_h="i32")
    k = compile_for(norm._rms_norm_kernel, sig, dict(BLOCK_R=1, BLOCK_N=4096, NUM_CHUNKS=1, HAS_RES=True, USE_GDC=True))
    ptx = k.asm["ptx"]
    assert "%globaltimer" in ptx and "%smid" in ptx and "griddepcontrol.wait" in ptx and "atom.global" in ptx
    print("ok")
""")


def test_recorder_compiles_for_sm90():
    r = run_without_interpreter(_COMPILE)
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout + r.stderr
