"""LLaDA2.x decoding pieces (grid, schedule, selection rule, cut) and the new reference ops (QK-norm with
partial RoPE); the golden cases are in test_golden_moe.py."""
import pytest
import torch

from llada_triton.decode import BlockEvent, StepEvent, generate, generate_stream, run_many
from llada_triton.decode.layout import absolute_layout, grid_key_end
from llada_triton.decode.llada2 import Llada21Decoding, Llada2Decoding, eos_cut, generate_llada2, llada2_schedule
from llada_triton.kernels.reference import qkv_norm_rope_cache_ref, rms_norm_ref, rope_tables, \
    select_threshold_topk_ref
from tests.helpers import family_golden, family_model


def test_grid_starts_at_the_prompts_block_and_overhangs():
    lay = absolute_layout([list(range(1, 11))], 9, 8, pad_id=0, mask_id=99)
    assert (lay.first, lay.n_blocks, lay.width) == (8, 2, 24)
    assert lay.tokens.tolist() == [list(range(1, 11))] and lay.gen_start.tolist() == [10]
    assert grid_key_end(6, 10, 0, 8, "cpu").tolist() == [8, 8, 16, 16]


def test_varlen_grids_share_columns():
    """Pads are multiples of the block length chosen so that every row's first block is at the same columns;
    a row whose grid needs one block less ends there (row_end)."""
    lay = absolute_layout([[5] * 3, [5] * 13, [5] * 16], 12, 8, pad_id=0, mask_id=99)
    assert lay.pad.tolist() == [16, 8, 0] and lay.first == 16
    assert lay.gen_start.tolist() == [19, 21, 16]
    assert lay.row_end.tolist() == [32, 40, 32] and lay.width == 40
    assert lay.tokens[0].tolist() == [0] * 16 + [5] * 3 + [99] * 2  # masks after a prompt, in the prompt width


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


def test_answers_of_asked_rows():
    """``answers(rows=...)`` (a finished slot of the runner) gives those rows' answers in the order asked: the
    early stop's window for a stopped row, else the row's gen_length tokens cut after the first eos."""
    class Cfg:
        eos_token_id = 7
    x = torch.tensor([[1, 2, 3, 7, 4, 5], [1, 9, 9, 9, 9, 9], [1, 1, 8, 7, 7, 6]])
    dec = Llada2Decoding()
    state = dec.new_state(3, "cpu")
    state["stop_end"][2] = 4  # row 2 stopped early: its answer is x[2, 2:4]
    gen_start = torch.tensor([1, 1, 2])
    want = [[2, 3, 7], [9, 9, 9], [8, 7]]
    assert dec.answers(Cfg, x, gen_start, 3, state) == want
    assert dec.answers(Cfg, x, gen_start, 3, state, rows=[2, 0]) == [want[2], want[0]]
    assert dec.answers(Cfg, x, gen_start, 3, state, rows=[1]) == [want[1]]


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


def test_generate_llada2_refuses_a_batch():
    params, cfg = family_model("llada2")
    with pytest.raises(ValueError, match=r"prompt must be one row of ids .* got shape \(2, 2\)"):
        generate_llada2(params, cfg, [[1, 2], [3, 4]], gen_length=8, block_length=8, steps=8)


def test_generate_llada2_refuses_the_mask_id_in_the_prompt():
    params, cfg = family_model("llada2")
    with pytest.raises(ValueError, match="mask id 303"):
        generate_llada2(params, cfg, [1, cfg.mask_token_id], gen_length=8, block_length=8, steps=8)


# --- LLaDA2.0 through the one driver (generate(..., decoding=Llada2Decoding(...))) ---------------------------------
L2_CASES = [c for c in family_golden("llada2")["cases"] if c["reference"] == "llada2_generate"]


def _golden_groups():
    """Golden 2.0 cases that share every option but the prompt: each group decodes as one batch."""
    groups = {}
    for c in L2_CASES:
        p = c["params"]
        key = tuple(p[k] for k in ("gen_length", "block_length", "steps", "threshold", "eos_early_stop",
                                   "minimal_topk"))
        groups.setdefault(key, []).append(c)
    return [(k, cs) for k, cs in groups.items() if len(cs) > 1]


@pytest.mark.parametrize("key,cases", _golden_groups(), ids=lambda v: "-".join(map(str, v)) if isinstance(v, tuple)
                         else None)
def test_varlen_batch_gives_each_golden_case(key, cases):
    """Prompts of different lengths in one batch (pads congruent mod the block length): every row is its
    golden case, tokens and forwards."""
    params, cfg = family_model("llada2")
    G, B, steps, thr, es, mt = key
    res = generate(params, cfg, [c["prompt"][0] for c in cases], gen_length=G, block_length=B, steps=steps,
                   cache="block", decoding=Llada2Decoding(thr, mt, es))
    assert res.answers == [c["expected"][0] for c in cases]
    assert res.nfe == [c["params"]["nfe"] for c in cases]


@pytest.mark.parametrize("es", [False, True], ids=["stop", "early_stop"])
@pytest.mark.parametrize("cache,device_positions", [("block", False), ("block", True), ("none", True)],
                         ids=["block", "block-device-positions", "none-device-positions"])
def test_varlen_batch_rows_equal_batch_one(es, cache, device_positions):
    """Varlen rows (the overhang case, whose early-stop answer is longer than gen_length, among them; with
    gen_length 12 their grids end at different blocks): each row equals its batch-1 decode; ``device_positions`` runs the CUDA-graph code
    path (device block starts) eagerly."""
    params, cfg = family_model("llada2")
    names = ("llada2_overhang_p10_g9_b8_s8_thr0.5", "llada2_p13_g32_b8_s8_thr1.0", "llada2_p5_g32_b8_s8_thr0.95",
             "llada2_p16_g32_b8_s8_thr0.5", "llada2_p8_g32_b8_s8_thr0.95")
    prompts = [next(c for c in L2_CASES if c["name"] == n)["prompt"][0] for n in names]
    G = 12 if device_positions else 9  # 12: the rows' grids end at different blocks
    kw = dict(gen_length=G, block_length=8, steps=8, cache=cache, device_positions=device_positions,
              decoding=Llada2Decoding(0.5, 1, es))
    res = generate(params, cfg, prompts, **kw)
    alone = [generate(params, cfg, [p], **kw) for p in prompts]
    assert res.answers == [a.answers[0] for a in alone]
    assert res.nfe == [a.nfe[0] for a in alone]
    assert res.prompt_lengths == [len(p) for p in prompts]
    assert [r.tolist() for r in res.tokens] == [a.tokens[0].tolist() for a in alone]
    if es and G == 9:
        assert len(res.answers[0]) == 11  # the golden overhang case: an eos in the overhang, past gen_length


def test_stream_yields_llada2_steps_and_blocks():
    params, cfg = family_model("llada2")
    case = next(c for c in L2_CASES if c["name"] == "llada2_p5_g32_b8_s8_thr0.5")
    evs = list(generate_stream(params, cfg, case["prompt"], gen_length=32, block_length=8, steps=8, cache="block",
                               decoding=Llada2Decoding(0.5)))
    res = evs[-1]
    assert res.answers == case["expected"]
    steps = [e for e in evs if isinstance(e, StepEvent)]
    assert sum(int(e.committed.sum()) for e in steps) == 40 - 5  # every masked position of the grid, once
    assert [e.start for e in evs if isinstance(e, BlockEvent)] == [0, 8, 16, 24, 32]
    with pytest.raises(ValueError, match="commit_order is for LLaDA's layout"):
        res.commit_order()


@pytest.mark.parametrize("kw,match", [
    (dict(cache="dual"), "cache='dual' with LLaDA2 decoding"),
    (dict(threshold=0.9), "threshold=0.9 is not an option of LLaDA2 decoding"),
    (dict(remasking="random"), "remasking='random'"),
    (dict(cfg_scale=1.0), "cfg_scale=1.0"),
    (dict(logits_eos_inf=True), "logits_eos_inf=True"),
    (dict(decoding=Llada2Decoding(threshold=1.5)), r"threshold=1.5 must be a number in \[0, 1\]"),
    (dict(decoding=Llada2Decoding(minimal_topk=0)), "minimal_topk=0"),
    (dict(block_length=0), "block_length=0"),
    (dict(gen_length=16382), "the block grid needs 16392 positions"),
])
def test_driver_llada2_option_errors(kw, match):
    params, cfg = family_model("llada2")
    args = dict(gen_length=16, block_length=8, steps=8, cache="block", decoding=Llada2Decoding())
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        generate(params, cfg, [[1, 2, 3]], **args)


def _mixed_prompts():
    names = ("llada2_overhang_p10_g9_b8_s8_thr0.5", "llada2_p13_g32_b8_s8_thr1.0", "llada2_p5_g32_b8_s8_thr0.95",
             "llada2_p16_g32_b8_s8_thr0.5", "llada2_p8_g32_b8_s8_thr0.95")
    return [next(c for c in L2_CASES if c["name"] == n)["prompt"][0] for n in names]


def test_run_many_llada2_equals_generate():
    """The slot runner (2 slots refilled as prompts finish, each on its own block of the shared grid) gives
    every prompt its driver answer and forwards, eos_early_stop included."""
    params, cfg = family_model("llada2")
    prompts, dec = _mixed_prompts(), Llada2Decoding(0.5, 1, True)
    kw = dict(gen_length=12, block_length=8, steps=8, decoding=dec)
    many = run_many(params, cfg, prompts, slots=2, **kw)
    ref = generate(params, cfg, prompts, cache="block", **kw)
    assert many.tokens == ref.answers
    assert many.nfe == ref.nfe


@pytest.mark.parametrize("es", [False, True], ids=["stop", "early_stop"])
def test_run_many_llada21_equals_generate(es):
    """LLaDA2.1 in the slot runner (2 slots; each row's post steps, block end and edit count carried per slot)
    gives every prompt its batch-1 driver answer, forwards and edits."""
    params, cfg = family_model("llada2")
    prompts = _mixed_prompts()
    dec = Llada21Decoding(threshold=0.7, editing_threshold=0.5, max_post_steps=3, eos_early_stop=es)
    kw = dict(gen_length=12, block_length=8, steps=8, decoding=dec)
    many = run_many(params, cfg, prompts, slots=2, **kw)
    alone = [generate(params, cfg, [p], cache="block", **kw) for p in prompts]
    assert many.tokens == [a.answers[0] for a in alone]
    assert many.nfe == [a.nfe[0] for a in alone]
    assert many.edits == [a.edits[0] for a in alone] and sum(many.edits) > 0


@pytest.mark.parametrize("es", [False, True], ids=["stop", "early_stop"])
def test_llada21_varlen_batch_rows_equal_batch_one(es):
    """LLaDA2.1's editing, per-row post steps and block ends on the device: each row of a varlen batch equals its
    batch-1 decode (answers, forwards, edits)."""
    params, cfg = family_model("llada2")
    prompts = _mixed_prompts()[:3]
    kw = dict(gen_length=12, block_length=8, steps=8, cache="block",
              decoding=Llada21Decoding(threshold=0.7, editing_threshold=0.5, max_post_steps=3, eos_early_stop=es))
    res = generate(params, cfg, prompts, **kw)
    alone = [generate(params, cfg, [p], **kw) for p in prompts]
    assert res.answers == [a.answers[0] for a in alone]
    assert res.nfe == [a.nfe[0] for a in alone]
    assert res.edits == [a.edits[0] for a in alone] and sum(res.edits) > 0


@pytest.mark.gpu
@pytest.mark.parametrize("edit", [False, True], ids=["llada2.0", "llada2.1"])
def test_llada2_cuda_graphs_equal_eager(edit):
    """CUDA graphs (each step replayed from its graph; the block-complete flag read one step late) give the
    eager tokens and forwards, Triton ops, varlen batch; a second call reuses the workspace's graphs."""
    from llada_triton.decode import Workspace
    from llada_triton.models import load_model, triton_ops
    from tests.helpers import family_dir

    ids = family_golden("llada2")["ids"]
    params, cfg = load_model(f"{family_dir('llada2')}/checkpoint", device="cuda", mask_token_id=ids["mask"])
    dec = Llada21Decoding(threshold=0.7, editing_threshold=0.5, max_post_steps=3) if edit else Llada2Decoding(0.5)
    kw = dict(gen_length=12, block_length=8, steps=8, cache="block", decoding=dec, ops=triton_ops())
    eager = generate(params, cfg, _mixed_prompts(), **kw)
    ws = Workspace()
    for _ in range(2):
        graphed = generate(params, cfg, _mixed_prompts(), cuda_graphs=True, workspace=ws, **kw)
        assert graphed.answers == eager.answers and graphed.nfe == eager.nfe


@pytest.mark.gpu
@pytest.mark.parametrize("edit", [False, True], ids=["llada2.0", "llada2.1"])
def test_run_many_llada2_cuda_graphs_equal_eager(edit):
    """The slot runner under CUDA graphs (per-slot grid, post steps and edit counts in persistent device tensors)
    gives the eager runner's answers, forwards and edits, Triton ops."""
    from llada_triton.models import load_model, triton_ops
    from tests.helpers import family_dir

    ids = family_golden("llada2")["ids"]
    params, cfg = load_model(f"{family_dir('llada2')}/checkpoint", device="cuda", mask_token_id=ids["mask"])
    dec = Llada21Decoding(threshold=0.7, editing_threshold=0.5, max_post_steps=3) if edit else Llada2Decoding(0.5)
    kw = dict(slots=2, gen_length=12, block_length=8, steps=8, decoding=dec, ops=triton_ops())
    eager = run_many(params, cfg, _mixed_prompts(), **kw)
    graphed = run_many(params, cfg, _mixed_prompts(), cuda_graphs=True, **kw)
    assert graphed.tokens == eager.tokens and graphed.nfe == eager.nfe and graphed.edits == eager.edits
