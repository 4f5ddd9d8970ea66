"""kernels.dream_head: the streamed LM head with Dream's confidences against its torch reference (interpreter on
the CPU, fp32 / fp16), and the Dream golden cases with the Triton ops."""
import pytest
import torch

from llada_triton.kernels import head_dream_confidence
from llada_triton.kernels.reference import head_dream_confidence_ref

CONFS = ("prob", "margin", "neg_entropy")


def _inputs(M, V, D, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(M, D, generator=g).to(dtype)
    w = (torch.randn(V, D, generator=g) * 0.5).to(dtype)
    return h, w


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("confidence", CONFS)
@pytest.mark.parametrize("tiles", [None, dict(BLOCK_M=16, BLOCK_V=64, BLOCK_K=16)], ids=["one-tile", "tiled"])
def test_matches_reference(dtype, confidence, tiles):
    h, w = _inputs(37, 300, 48, dtype)  # ragged rows, ids and d: every edge mask
    x0, conf = head_dream_confidence(h, w, confidence=confidence, banned_ids=(5, 299), config=tiles)
    r0, rc = head_dream_confidence_ref(h, w, confidence=confidence, banned_ids=(5, 299))
    assert torch.equal(x0, r0)
    # neg_entropy: the streamed form leaves out Dream's 1e-10 inside the log (|change| < V * 1e-10)
    torch.testing.assert_close(conf, rc, atol=2e-6 + 300 * 1e-10, rtol=1e-5)


def test_ties_margin_zero_and_lowest_id():
    h = torch.ones(2, 16)
    w = torch.zeros(200, 16)
    w[[7, 150]] = 1.0  # two equal maxima in different vocab tiles
    x0, conf = head_dream_confidence(h, w, confidence="margin", config=dict(BLOCK_V=64))
    assert x0.tolist() == [7, 7] and conf.abs().max() < 1e-7


def test_n_rows_skips_tail_rows():
    h, w = _inputs(40, 128, 32, torch.float32)
    x0, conf = head_dream_confidence(h, w, confidence="neg_entropy", n_rows=torch.tensor([16]),
                                     config=dict(BLOCK_M=16))
    r0, rc = head_dream_confidence_ref(h[:16], w, confidence="neg_entropy")
    assert torch.equal(x0[:16], r0)
    torch.testing.assert_close(conf[:16], rc, atol=1e-5, rtol=1e-5)


def test_sampling_and_filters_use_the_reference_path():
    h, w = _inputs(8, 100, 16, torch.float32)
    x0, conf = head_dream_confidence(h, w, confidence="prob", top_k=1)
    assert torch.equal(x0, (h @ w.t()).argmax(-1)) and torch.allclose(conf, torch.ones(8))
    a = head_dream_confidence(h, w, confidence="margin", temperature=0.8, top_p=0.9, seed=3, offset=1)
    b = head_dream_confidence(h, w, confidence="margin", temperature=0.8, top_p=0.9, seed=3, offset=1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_errors_name_the_argument():
    h, w = _inputs(4, 32, 16, torch.float32)
    with pytest.raises(ValueError, match="confidence='entropy'"):
        head_dream_confidence(h, w, confidence="entropy")
    with pytest.raises(ValueError, match="banned_ids"):
        head_dream_confidence(h, w, banned_ids=(40,))
    with pytest.raises(ValueError, match="w_head"):
        head_dream_confidence(h, w.half())


@pytest.mark.parametrize("name", ["dream_p6_g32_s8_topk_margin",
                                  "fastdllm_dream_dual_p6_g32_b8_s32_entropy"])
def test_golden_with_triton_ops(name):
    """Every op a Triton kernel under the interpreter (fp32): the golden tokens and NFE."""
    from llada_triton.decode.dream import diffusion_generate
    from llada_triton.models import triton_ops
    from tests.test_dream import CASES, case_options, dream_model

    case = next(c for c in CASES if c["name"] == name)
    params, cfg = dream_model()
    out = diffusion_generate(params, cfg, case["prompt"], ops=triton_ops(), **case_options(case["params"]))
    assert out.tokens.tolist() == case["expected"]
    assert out.nfe == [case["params"]["nfe"]]
