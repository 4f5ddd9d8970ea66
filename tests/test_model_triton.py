"""The model and the driver on the Triton ops (the kernels end to end).

CPU: the Triton interpreter in fp32 must reproduce the golden logits and decode cases exactly.
GPU (marked ``gpu``): bf16 Triton model vs the torch reference model on a realistic-size random model.
"""
import dataclasses
import os

import pytest
import torch

from llada_triton.decode import generate
from llada_triton.models import LLaDAConfig, REFERENCE_OPS, forward, init_params, triton_ops
from tests.helpers import block_golden, decode_options, golden, tiny_model

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# a representative subset under the interpreter (each reference decoder, cache policy and option)
SUBSET = ["official_p7_g32_b8_s16", "official_batch3_leftpad", "official_p12_cfg1.5",
          "official_p12_confidence_eos_eot_inf", "official_p12_logits_eos_inf",
          "fastdllm_prefix_p7_g32_b8_s32_thr0.5", "fastdllm_dual_p19_g32_b8_s32_thr0.5",
          "fastdllm_none_p19_g32_b8_s32_thr0.5"]
BLOCK_SUBSET = ["block_batch3_varlen", "block_p7_g32_b8_s32_thr0.5"]


@pytest.mark.skipif(not INTERPRET, reason="fp32 exactness is checked under the interpreter (GPU fp32 dots use TF32)")
@pytest.mark.parametrize("i", range(2), ids=["forward0", "forward1"])
def test_triton_forward_matches_golden_logits(i):
    params, cfg = tiny_model()
    rec = golden()["forward"][i]
    logits = forward(params, cfg, torch.tensor([rec["input_ids"]]), ops=triton_ops())[0]
    assert logits.argmax(-1).tolist() == rec["logits_argmax"]
    torch.testing.assert_close(logits[0], torch.tensor(rec["logits_first_row"]), atol=1e-4, rtol=0)
    torch.testing.assert_close(logits[-1], torch.tensor(rec["logits_last_row"]), atol=1e-4, rtol=0)


@pytest.mark.skipif(not INTERPRET, reason="fp32 exactness is checked under the interpreter (GPU fp32 dots use TF32)")
@pytest.mark.parametrize("name", SUBSET + BLOCK_SUBSET)
def test_triton_golden_decode(name):
    """Exact tokens on the Triton ops; the block cases run the CUDA-graph code path (device positions)."""
    case = next(c for c in golden()["cases"] + block_golden()["cases"] if c["name"] == name)
    device_positions = name.startswith("block")
    params, cfg = tiny_model()
    out = generate(params, cfg, case["prompt"], ops=triton_ops(), early_stop=False,
                   device_positions=device_positions, **decode_options(case["params"]))
    assert out.tokens.tolist() == case["expected"]


def _random_model(d, heads, layers, hidden, vocab, dtype, device):
    cfg = LLaDAConfig(d_model=d, n_heads=heads, n_kv_heads=heads, n_layers=layers, mlp_hidden_size=hidden,
                      vocab_size=vocab, rope_theta=500000.0, mask_token_id=vocab - 8, eos_token_id=vocab - 9,
                      pad_token_id=vocab - 9, eot_token_id=vocab - 7)
    # std chosen so that activations neither vanish nor explode over the layers (logits spread of a few units)
    return init_params(cfg, device=device, dtype=dtype, seed=0, std=0.5 / d ** 0.5), cfg


@pytest.mark.gpu
@pytest.mark.parametrize("d,heads", [(1024, 8), (2048, 32)], ids=["D128", "D64"])
def test_bf16_triton_model_vs_reference(d, heads):
    """Logits error of the bf16 Triton model against the fp32 reference is at most 2x that of the bf16
    torch reference model (+ a small floor); the decode agreement rate is reported."""
    params32, cfg = _random_model(d, heads, 4, 3 * d, 32768, torch.float32, "cuda")
    params16 = dataclasses.replace(params32, **{f: getattr(params32, f).to(torch.bfloat16)
                                                for f in ("wte", "ln_f", "lm_head")})
    params16.layers = [dataclasses.replace(lp, **{f.name: getattr(lp, f.name).to(torch.bfloat16)
                                                  for f in dataclasses.fields(lp) if getattr(lp, f.name) is not None})
                       for lp in params32.layers]  # absent optional tensors (LLaDA has no b_qkv) stay None
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randint(0, cfg.vocab_size - 16, (2, 160), generator=g).cuda()
    x[:, 128:] = cfg.mask_token_id
    with torch.no_grad():
        ref = forward(params32, cfg, x).float()
        torch.backends.cuda.matmul.allow_tf32 = False
        ref_bf16 = forward(params16, cfg, x).float()
        tri = forward(params16, cfg, x, ops=triton_ops()).float()
    err_torch = (ref_bf16 - ref).abs().max().item()
    err_triton = (tri - ref).abs().max().item()
    spread = ref.std().item()
    print(f"\nlogits std {spread:.3f}; max |err| vs fp32: torch-bf16 {err_torch:.4f}, triton-bf16 {err_triton:.4f}")
    assert err_triton <= 2 * err_torch + 1e-2 * spread
    prompts = x[:, :128].tolist()
    opts = dict(gen_length=64, block_length=32, steps=64, cache="block", early_stop=False)
    a = generate(params16, cfg, prompts, ops=REFERENCE_OPS, **opts).tokens
    b = generate(params16, cfg, prompts, ops=triton_ops(), cuda_graphs=True, **opts).tokens
    agree = (a == b).float().mean().item()
    first = [(int((ra != rb).nonzero()[0]) if (ra != rb).any() else len(ra)) for ra, rb in zip(a, b)]
    print(f"block decode bf16 triton+graphs vs torch reference: token agreement {agree:.3f}, "
          f"first divergence at {first} of 64")


@pytest.mark.parametrize("which", ["reference", "triton", "unfused"])
def test_forward_rows_and_fused_norms(which):
    """``rows`` runs the last layer's queries, projections and MLP only on those rows: the returned hidden
    states equal the full forward's rows; the fused projection+norm ops equal the composed ones."""
    from llada_triton.models.model import forward_hidden

    params, cfg = tiny_model()
    ops = {"reference": REFERENCE_OPS, "triton": triton_ops(),
           "unfused": dataclasses.replace(triton_ops(), linear_norm=None, mlp_norm=None,
                                             qkv_proj_rope=None)}[which]
    tokens = torch.tensor([golden()["forward"][0]["input_ids"]] * 2)
    T = tokens.shape[1]
    full = forward_hidden(params, cfg, tokens, ops=ops)
    part = forward_hidden(params, cfg, tokens, ops=ops, rows=slice(3, T - 2))
    assert part.shape == (2, T - 5, cfg.d_model)
    torch.testing.assert_close(part, full[:, 3:T - 2], atol=2e-5, rtol=0)
    ref = forward_hidden(params, cfg, tokens, ops=REFERENCE_OPS)
    torch.testing.assert_close(full, ref, atol=2e-4, rtol=0)
