"""The external oracle for the MoE families: LLaDA2.x (its own official 2.0 / 2.1 ``generate``) and LLaDA-MoE
(the official LLaDA ``generate``) on tiny checkpoints, fp32 on the CPU; every case token for token.
"""
import pytest
import torch

from llada_triton.decode import generate
from llada_triton.decode.layout import grid_key_end
from llada_triton.decode.llada2 import generate_llada2
from llada_triton.models import triton_ops
from llada_triton.models.moe_model import forward
from tests.helpers import family_golden, family_model

FAMILIES = ("llada2", "lladamoe")
FORWARD = [(f, i) for f in FAMILIES for i in range(len(family_golden(f)["forward"]))]
L2_CASES = family_golden("llada2")["cases"]
MOE_CASES = family_golden("lladamoe")["cases"]


@pytest.mark.parametrize("family", FAMILIES)
def test_ids_match_config(family):
    _, cfg = family_model(family)
    ids = family_golden(family)["ids"]
    assert (cfg.eos_token_id, cfg.pad_token_id, cfg.mask_token_id, cfg.eot_token_id) == \
        (ids["eos"], ids["pad"], ids["mask"], ids.get("eot"))


def _forward_logits(family, rec, ops=None):
    params, cfg = family_model(family)
    ids = torch.tensor([rec["input_ids"]])
    key_end = None
    if rec.get("block_length"):  # generate()'s block-causal mask over the absolute grid
        key_end = grid_key_end(0, ids.shape[1], 0, rec["block_length"], ids.device)
    kw = {} if ops is None else {"ops": ops}
    return forward(params, cfg, ids, key_end=key_end, **kw)[0]


def _check_logits(logits, rec):
    assert logits.argmax(-1).tolist() == rec["logits_argmax"]
    torch.testing.assert_close(logits[0], torch.tensor(rec["logits_first_row"]), atol=1e-4, rtol=0)
    torch.testing.assert_close(logits[-1], torch.tensor(rec["logits_last_row"]), atol=1e-4, rtol=0)
    assert abs(logits.sum().item() - rec["logits_sum"]) < 1e-4 * logits.numel()


@pytest.mark.parametrize("family,i", FORWARD, ids=[f"{f}-forward{i}" for f, i in FORWARD])
def test_forward_matches_recorded_logits(family, i):
    rec = family_golden(family)["forward"][i]
    _check_logits(_forward_logits(family, rec), rec)


def _llada2(case, **extra):
    params, cfg = family_model("llada2")
    p = case["params"]
    kw = dict(gen_length=p["gen_length"], block_length=p["block_length"], steps=p["steps"], threshold=p["threshold"],
              minimal_topk=p["minimal_topk"], eos_early_stop=p["eos_early_stop"], temperature=p["temperature"])
    if case["reference"] == "llada21_generate":
        kw.update(editing_threshold=p["editing_threshold"], max_post_steps=p["max_post_steps"],
                  num_to_transfer=p["num_to_transfer"])
    return generate_llada2(params, cfg, case["prompt"][0], **kw, **extra)


@pytest.mark.parametrize("case", L2_CASES, ids=[c["name"] for c in L2_CASES])
def test_llada2_block_cache_token_for_token(case):
    """The exact block-causal cache (LLaDA2's native mode) gives the official decoders' tokens, forwards
    and (2.1) edits."""
    out = _llada2(case, cache="block")
    assert [out.tokens] == case["expected"]
    assert out.nfe == case["params"]["nfe"]
    assert out.edits == case["params"].get("edits", 0)


@pytest.mark.parametrize("case", L2_CASES[::4], ids=[c["name"] for c in L2_CASES[::4]])
def test_llada2_full_recompute_token_for_token(case):
    """Recomputing the block-causal prefix every step, as the reference does, gives the same tokens."""
    out = _llada2(case, cache="none")
    assert [out.tokens] == case["expected"]
    assert out.nfe == case["params"]["nfe"]


@pytest.mark.parametrize("case", L2_CASES[1::4] + L2_CASES[-2:], ids=[c["name"] for c in L2_CASES[1::4] + L2_CASES[-2:]])
def test_llada2_device_positions_token_for_token(case):
    """The CUDA-graph code path (device block starts, static shapes), run eagerly: the same tokens, forwards and
    edits (2.0 and 2.1)."""
    out = _llada2(case, cache="block", device_positions=True)
    assert [out.tokens] == case["expected"]
    assert out.nfe == case["params"]["nfe"]
    assert out.edits == case["params"].get("edits", 0)


@pytest.mark.parametrize("case", MOE_CASES, ids=[c["name"] for c in MOE_CASES])
def test_lladamoe_official_generate_token_for_token(case):
    params, cfg = family_model("lladamoe")
    p = case["params"]
    out = generate(params, cfg, case["prompt"], gen_length=p["gen_length"], block_length=p["block_length"],
                   steps=p["steps"], temperature=p["temperature"], remasking=p["remasking"],
                   cfg_scale=p["cfg_scale"], cache="none", early_stop=False,
                   logits_eos_inf=p.get("logits_eos_inf", False),
                   confidence_eos_eot_inf=p.get("confidence_eos_eot_inf", False))
    assert out.tokens.tolist() == case["expected"]
    assert out.nfe == [p["nfe"]] * len(case["prompt"])


# The Triton kernels (router, experts, attention, GEMMs, norms, head) under the interpreter: a representative
# subset (each interpreted forward takes seconds on the CPU).
@pytest.mark.parametrize("family,i", [("llada2", 2), ("lladamoe", 0)], ids=["llada2-blockmask", "lladamoe"])
def test_forward_triton_ops(family, i):
    rec = family_golden(family)["forward"][i]
    _check_logits(_forward_logits(family, rec, ops=triton_ops()), rec)


def test_llada2_decode_triton_ops():
    case = next(c for c in L2_CASES if c["name"] == "llada2_p8_g40_b8_s4_thr0.5")
    out = _llada2(case, cache="block", ops=triton_ops())
    assert [out.tokens] == case["expected"]


def _random_llada2(device, dtype):
    """A 3-layer LLaDA2-shaped model (first layer dense): head_dim 128 with rotary 64, GQA 8/2, 64 experts in 8
    groups (4 kept), top-8, one shared expert; random weights scaled so logits spread over a few units."""
    import dataclasses

    from llada_triton.models import LLaDA2Config, init_moe_params

    d, V = 1024, 32768
    cfg = LLaDA2Config(d_model=d, n_heads=8, n_kv_heads=2, head_dim=128, n_layers=3, vocab_size=V,
                       intermediate_size=2048, moe_layers=(False, True, True), n_experts=64, top_k=8,
                       moe_intermediate_size=256, shared_intermediate_size=256, n_group=8, topk_group=4,
                       routed_scaling_factor=2.5, expert_bias=True, rotary_dim=64, rope_theta=600000.0,
                       max_sequence_length=512, mask_token_id=V - 3, eos_token_id=V - 6, pad_token_id=V - 6)
    p32 = init_moe_params(cfg, device=device, dtype=torch.float32, seed=0, std=0.5 / d ** 0.5)
    keep32 = ("expert_bias",)  # fp32, as the loader keeps it
    p16 = dataclasses.replace(p32, **{f: getattr(p32, f).to(dtype) for f in ("wte", "ln_f", "lm_head")})
    p16.layers = [dataclasses.replace(lp, **{f.name: getattr(lp, f.name).to(dtype) for f in dataclasses.fields(lp)
                                             if getattr(lp, f.name) is not None and f.name not in keep32})
                  for lp in p32.layers]
    return p32, p16, cfg


@pytest.mark.gpu
def test_bf16_triton_moe_model_vs_reference():
    """Mean |logit error| of the bf16 Triton LLaDA2 model (fused MoE kernels) against the fp32 reference is at
    most 2x that of the bf16 torch model (+ a small floor); max errors are printed (a routing flip between
    near-tied experts moves single rows in either bf16 model)."""
    p32, p16, cfg = _random_llada2("cuda", torch.bfloat16)
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randint(0, cfg.vocab_size - 16, (2, 160), generator=g).cuda()
    x[:, 128:] = cfg.mask_token_id
    with torch.no_grad():
        torch.backends.cuda.matmul.allow_tf32 = False
        ref = forward(p32, cfg, x).float()
        ref16 = forward(p16, cfg, x).float()
        tri = forward(p16, cfg, x, ops=triton_ops()).float()
    e_torch, e_tri = (ref16 - ref).abs(), (tri - ref).abs()
    print(f"\nlogits std {ref.std().item():.3f}; |err| vs fp32 mean/max: torch-bf16 {e_torch.mean().item():.4f}/"
          f"{e_torch.max().item():.4f}, triton-bf16 {e_tri.mean().item():.4f}/{e_tri.max().item():.4f}")
    assert e_tri.mean().item() <= 2 * e_torch.mean().item() + 1e-3 * ref.std().item()
    out = generate_llada2(p16, cfg, x[0, :100].tolist(), gen_length=64, block_length=32, steps=32, threshold=0.9,
                          ops=triton_ops())
    ref_out = generate_llada2(p16, cfg, x[0, :100].tolist(), gen_length=64, block_length=32, steps=32,
                              threshold=0.9)
    print(f"LLaDA2 block decode bf16 triton vs torch: {len(out.tokens)} / {len(ref_out.tokens)} tokens, "
          f"equal prefix {next((i for i, (a, b) in enumerate(zip(out.tokens, ref_out.tokens)) if a != b), None)}")
