"""Dream's kernels against their torch references (interpreter on the CPU, fp32 / fp16): the streamed LM head
with Dream's confidences (kernels.dream_head), the QKV projection with q/k/v biases in its epilogue
(kernels.qkv), and the Dream golden cases with the Triton ops."""
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
@pytest.mark.parametrize("tiles", [None, dict(BLOCK_M=16, BLOCK_V=64, BLOCK_K=16),
                                   dict(BLOCK_M=16, BLOCK_V=64, BLOCK_K=32, SWAP_AB=True)],
                         ids=["one-tile", "tiled", "swapped"])
def test_matches_reference(dtype, confidence, tiles):
    h, w = _inputs(37, 300, 48, dtype)  # ragged rows, ids and d: every edge mask
    x0, conf = head_dream_confidence(h, w, confidence=confidence, banned_ids=(5, 299), config=tiles)
    r0, rc = head_dream_confidence_ref(h, w, confidence=confidence, banned_ids=(5, 299))
    assert torch.equal(x0, r0)
    # neg_entropy over several fp16 vocab tiles leaves out Dream's 1e-10 inside the log (|change| < V * 1e-10)
    gap = 300 * 1e-10 if tiles is not None and confidence == "neg_entropy" and dtype != torch.float32 else 0.0
    torch.testing.assert_close(conf, rc, atol=2e-6 + gap, rtol=1e-5)


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


def test_errors_name_the_argument():
    h, w = _inputs(4, 32, 16, torch.float32)
    with pytest.raises(ValueError, match="confidence='entropy'"):
        head_dream_confidence(h, w, confidence="entropy")
    with pytest.raises(ValueError, match="banned_ids"):
        head_dream_confidence(h, w, banned_ids=(40,))
    with pytest.raises(ValueError, match="w_head"):
        head_dream_confidence(h, w.half())


@pytest.mark.parametrize("rows", [7, 80], ids=["fused", "unfused"])  # above MAX_ROWS: addmm + the rotary kernel
@pytest.mark.parametrize("cache", [True, False], ids=["cache", "nocache"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_qkv_projection_with_bias(dtype, cache, rows):
    from llada_triton.kernels.qkv import qkv_proj_rope
    from llada_triton.kernels.reference import qkv_proj_rope_ref, rope_tables
    from tests.test_qkv import _close, _inputs as qkv_inputs

    shape = (1, rows, 4, 2, 16, 64)  # Dream's GQA layout at the tiny golden's head dim
    x, w, _, _, kc, vc = qkv_inputs(*shape, dtype, "cpu")
    cos, sin = rope_tables(16, 1e6, 128)  # Dream's theta
    kc, vc = torch.zeros(1, 96, 2, 16, dtype=dtype), torch.zeros(1, 96, 2, 16, dtype=dtype)
    bias = torch.randn(w.shape[0], generator=torch.Generator().manual_seed(1)).to(dtype)
    caches = lambda: (kc.clone(), vc.clone()) if cache else (None, None)  # noqa: E731
    kw = dict(n_heads=4, head_dim=16, bias=bias)
    got = qkv_proj_rope(x, w, cos, sin, 2, *caches(), **kw)
    ref = qkv_proj_rope_ref(x, w, cos, sin, 2, *caches(), **kw)
    gold = qkv_proj_rope_ref(x.double(), w.double(), cos.double(), sin.double(), 2,
                             *(None if c is None else c.double() for c in caches()), n_heads=4, head_dim=16,
                             bias=bias.double())
    for g, r, o in zip(got, ref, gold):
        _close(g, r, o, dtype)
    nobias = qkv_proj_rope_ref(x, w, cos, sin, 2, *caches(), n_heads=4, head_dim=16)
    assert not torch.equal(ref[0], nobias[0])  # the bias is applied


def test_qkv_bias_errors():
    from llada_triton.kernels.qkv import qkv_proj_rope

    x = torch.randn(1, 3, 32)
    w = torch.randn(8 * 8, 32)
    cos, sin = torch.ones(16, 8), torch.zeros(16, 8)
    with pytest.raises(ValueError, match="bias must be"):
        qkv_proj_rope(x, w, cos, sin, 0, n_heads=4, head_dim=8, bias=torch.zeros(10))


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


_COMPILE = """
import sys
sys.path.insert(0, {root!r})
from llada_triton.kernels._common import compile_for
from llada_triton.kernels import dream_head as k
for dt in ("bf16", "fp16"):
    sig = dict(h_ptr="*" + dt, w_ptr="*" + dt, pf_ptr="*fp32", pidx_ptr="*i32", n_rows_ptr="*i64",
               row_ids_ptr="*i64", lse_ptr="*fp32", temp="fp32",
               **{{n: "i32" for n in ("M", "V", "D", "NVT", "stride_hm", "stride_wv", "seed_lo", "seed_hi",
                                     "off_lo", "off_hi", "ban0", "ban1", "ban2", "ban3")}})
    sampled = ((16, 128, 128, True), (128, 64, 64, True)) if dt == "bf16" else ()  # the epilogue is dtype-free
    for bm, bv, bk, sample in ((16, 128, 128, False), (128, 128, 64, False)) + sampled:
        compile_for(k._dream_partials_kernel, sig, dict(N_BAN=1, HAS_N_ROWS=True, HAS_ROW_IDS=sample,
                    SAMPLE=sample, ENT_EPS=False, HAS_LSE=False, UPCAST=False, IEEE=False, SWAP_AB=bm == 16,
                    EVEN_K=True, EVEN_V=False, BLOCK_M=bm, BLOCK_V=bv, BLOCK_K=bk, USE_GDC=True))
compile_for(k._dream_partials_kernel, sig, dict(N_BAN=0, HAS_N_ROWS=False, HAS_ROW_IDS=False, SAMPLE=True,
                ENT_EPS=True, HAS_LSE=True, UPCAST=False, IEEE=False, SWAP_AB=True, EVEN_K=True, EVEN_V=True,
                BLOCK_M=16, BLOCK_V=512, BLOCK_K=64))
msig = dict(pf_ptr="*fp32", pidx_ptr="*i32", x0_ptr="*i64", conf_ptr="*fp32", lse_ptr="*fp32",
            n_rows_ptr="*i64", M="i32", NVT="i32")
for conf in range(3):
    for sample in (False, True):
        compile_for(k._dream_merge_kernel, msig, dict(CONF=conf, SAMPLE=sample, ENT_EPS=conf == 2 and sample,
                                                      LSE_OUT=conf == 2 and not sample, HAS_N_ROWS=False,
                                                      BLOCK_R=1, BLOCK_T=2048))
print("ok")
"""


def test_head_kernels_compile_sm90():
    """The GPU frontend and ptxas accept the Dream head kernels (bf16, fp16; the real vocab's merge width)."""
    import os

    from tests.helpers import run_without_interpreter

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = run_without_interpreter(_COMPILE.format(root=root))
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-4000:]


def _random_dream(dtype, device, d=1792, heads=14, kv_heads=2, layers=4, vocab=32768):
    """A random Dream-layout model (GQA 7:1 as Dream-7B's 28/4, head dim 128, q/k/v biases, theta 1e6)."""
    from llada_triton.models import DreamConfig, init_params

    cfg = DreamConfig(d_model=d, n_heads=heads, n_kv_heads=kv_heads, n_layers=layers, mlp_hidden_size=3 * d,
                      vocab_size=vocab, max_sequence_length=4096, rope_theta=1e6, rms_norm_eps=1e-6,
                      mask_token_id=vocab - 8, eos_token_id=vocab - 9, pad_token_id=vocab - 9,
                      eot_token_id=vocab - 7)
    return init_params(cfg, device=device, dtype=dtype, seed=0, std=0.5 / d ** 0.5), cfg


@pytest.mark.gpu
def test_bf16_triton_dream_vs_reference():
    """Logits error of the bf16 Triton Dream model against the fp32 reference is at most 2x that of the bf16 torch
    reference model (+ a small floor); the Dream head's confidences in bf16 against the reference's; the decode
    agreement of a dual-cache Fast-dLLM decode is reported."""
    import dataclasses

    from llada_triton.decode.dream import diffusion_generate
    from llada_triton.models import REFERENCE_OPS, triton_ops
    from llada_triton.models.dream import forward

    params32, cfg = _random_dream(torch.float32, "cuda")
    to16 = lambda o: dataclasses.replace(o, **{f.name: getattr(o, f.name).to(torch.bfloat16)  # noqa: E731
                                               for f in dataclasses.fields(o) if f.name in
                                               ("wte", "ln_f", "lm_head", "attn_norm", "w_qkv", "b_qkv", "w_o",
                                                "ff_norm", "w_gate_up", "w_down")})
    params16 = to16(params32)
    params16.layers = [to16(lp) for lp in params32.layers]
    x = torch.randint(0, cfg.vocab_size - 16, (2, 160), generator=torch.Generator().manual_seed(0)).cuda()
    x[:, 128:] = cfg.mask_token_id
    torch.backends.cuda.matmul.allow_tf32 = False
    with torch.no_grad():
        ref = forward(params32, cfg, x).float()
        err_torch = (forward(params16, cfg, x).float() - ref).abs().max().item()
        err_triton = (forward(params16, cfg, x, ops=triton_ops()).float() - ref).abs().max().item()
    print(f"\nlogits std {ref.std().item():.3f}; max |err| vs fp32: torch-bf16 {err_torch:.4f}, "
          f"triton-bf16 {err_triton:.4f}")
    assert err_triton <= 2 * err_torch + 1e-2 * ref.std().item()
    h = torch.randn(64, cfg.d_model, device="cuda", dtype=torch.bfloat16)
    for conf in CONFS:
        x0, c = head_dream_confidence(h, params16.lm_head, confidence=conf)
        r0, rc = head_dream_confidence_ref(h.float(), params16.lm_head.float(), confidence=conf)
        print(f"{conf}: argmax agreement {(x0 == r0).float().mean().item():.3f}, "
              f"max |conf err| {(c - rc).abs().max().item():.2e}")
        assert (c - rc).abs().max().item() < 1e-2
    prompts = x[:, :128].tolist()
    opts = dict(max_new_tokens=64, steps=64, block_length=32, cache="dual")
    a = diffusion_generate(params16, cfg, prompts, ops=REFERENCE_OPS, **opts).tokens
    b = diffusion_generate(params16, cfg, prompts, ops=triton_ops(), cuda_graphs=True, **opts).tokens
    print(f"dual decode bf16 triton+graphs vs torch reference: token agreement {(a == b).float().mean().item():.3f}")
