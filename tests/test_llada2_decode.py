"""LLaDA2.x decoding pieces (grid, schedule, selection rule, cut) and the new reference ops (QK-norm with
partial RoPE); the golden cases are in test_golden_moe.py."""
import pytest
import torch

from llada_triton.decode.llada2 import BlockGrid, eos_cut, generate_llada2, llada2_schedule
from llada_triton.kernels.reference import qkv_norm_rope_cache_ref, rms_norm_ref, rope_tables, \
    select_threshold_topk_ref
from tests.helpers import family_model


def test_grid_starts_at_the_prompts_block_and_overhangs():
    g = BlockGrid(prompt_len=10, gen_length=9, block_length=8)
    assert (g.first_block, g.num_blocks, g.total_length) == (1, 3, 24)
    assert g.key_end(6, 10, "cpu").tolist() == [8, 8, 16, 16]


def test_schedule_splits_block_length():
    assert llada2_schedule(8, 3) == [3, 3, 2]
    assert llada2_schedule(4, 6) == [1, 1, 1, 1, 0, 0]


def test_threshold_topk_rule():
    conf = torch.tensor([[0.9, 0.5, 0.95, 0.2, 0.96]])
    masked = torch.tensor([[True, True, True, True, False]])
    sel = lambda k, thr: select_threshold_topk_ref(conf, masked, k=torch.tensor([k]), threshold=thr)[0].tolist()  # noqa
    assert sel(1, 0.8) == [True, False, True, False, False]    # >= k above the threshold: all of them
    assert sel(3, 0.8) == [True, True, True, False, False]     # fewer: the top-k
    assert sel(2, 0.95) == [True, False, True, False, False]   # strict >: 0.95 is not above 0.95
    assert sel(0, 1.0) == [False] * 5                          # a 0 budget takes only what passes
    assert sel(9, 1.0) == [True, True, True, True, False]      # capped at the masked count


def test_eos_cut():
    assert eos_cut([1, 2, 7, 3, 7], 7) == [1, 2, 7]
    assert eos_cut([1, 2], 7) == [1, 2]


def test_qk_norm_partial_rope_matches_the_hf_formula():
    torch.manual_seed(0)
    B, T, H, Hkv, D, R = 2, 5, 4, 2, 16, 8
    qkv = torch.randn(B, T, H + 2 * Hkv, D)
    qn, kn = torch.rand(D) + 0.5, torch.rand(D) + 0.5
    cos, sin = rope_tables(R, 1e4, 32)
    q, k, v = qkv_norm_rope_cache_ref(qkv, qn, kn, 1e-6, cos, sin, 3, n_heads=H)

    def hf(x, w):  # apply_rotary_pos_emb of the LLaDA2 modeling code over rotary_dim = R after the per-head norm
        x = rms_norm_ref(x, w, 1e-6)
        c, s = cos[3:3 + T, None, :], sin[3:3 + T, None, :]
        r, rest = x[..., :R], x[..., R:]
        rot = torch.cat((-r[..., R // 2:], r[..., :R // 2]), -1)
        return torch.cat((r * c + rot * s, rest), -1)

    torch.testing.assert_close(q, hf(qkv[:, :, :H], qn))
    torch.testing.assert_close(k, hf(qkv[:, :, H:H + Hkv], kn))
    torch.testing.assert_close(v, qkv[:, :, H + Hkv:])
    k_cache, v_cache = torch.zeros(B, 16, Hkv, D), torch.zeros(B, 16, Hkv, D)
    pos = torch.tensor([3, 5])  # per-row starts take the same rotation path as the cache writes
    _, kc, _ = qkv_norm_rope_cache_ref(qkv, qn, kn, 1e-6, cos, sin, pos, k_cache, v_cache, n_heads=H)
    torch.testing.assert_close(kc[0, 3:3 + T], k[0])


@pytest.mark.parametrize("kw,match", [(dict(minimal_topk=99), "minimal_topk=99"), (dict(cache="dual"), "cache='dual'"),
                                      (dict(gen_length=0), "gen_length=0")])
def test_generate_llada2_errors(kw, match):
    params, cfg = family_model("llada2")
    args = dict(gen_length=16, block_length=8, steps=8)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        generate_llada2(params, cfg, [1, 2, 3], **args)


def test_generate_llada2_refuses_the_mask_id_in_the_prompt():
    params, cfg = family_model("llada2")
    with pytest.raises(ValueError, match="mask id 303"):
        generate_llada2(params, cfg, [1, cfg.mask_token_id], gen_length=8, block_length=8, steps=8)
