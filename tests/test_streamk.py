"""The stream-K GEMM (kernels/streamk.py): the plan, both epilogues against fp64, every way a tile can be
cut between programs, determinism, and the self-resetting arrival counters."""
import pytest
import torch

from kernels import streamk
from kernels.mlp import _launch_down, _launch_gate_up, _tma_ok

DTYPES = [
    pytest.param(torch.float32, id="fp32"),
    pytest.param(torch.float16, id="fp16"),
    pytest.param(torch.bfloat16, id="bf16", marks=pytest.mark.gpu),
]


def _check_plan(tiles, k_iters, n_prog, sk_waves):
    grid, dp, ipp, extra = streamk.streamk_plan(tiles, k_iters, n_prog, sk_waves)
    assert 1 <= grid <= n_prog and 0 <= dp <= tiles and dp % grid == 0 and 0 <= extra < grid
    assert grid * ipp + extra == (tiles - dp) * k_iters, "every cut iteration is assigned exactly once"
    return grid, dp, ipp, extra


def test_plan():
    assert streamk.streamk_plan(264, 64, 132) == (132, 264, 0, 0)          # whole waves: nothing cut
    assert streamk.streamk_plan(192, 64, 132) == (132, 132, 29, 12)        # 60 tiles cut over 132 programs
    assert streamk.streamk_plan(192, 64, 132, 2) == (132, 0, 93, 12)       # all 192 tiles cut
    assert streamk.streamk_plan(3, 4, 8) == (8, 0, 1, 4)                   # 12 iterations over 8 programs
    assert streamk.streamk_plan(1, 2, 8) == (2, 0, 1, 0)                   # fewer iterations than programs
    for tiles in (1, 5, 9, 131, 133, 288, 768):
        for k_iters in (1, 3, 64, 192):
            for waves in (1, 2, 3):
                _check_plan(tiles, k_iters, 132, waves)
    with pytest.raises(ValueError, match="streamk_plan"):
        streamk.streamk_plan(0, 4, 8)


# (M, N, K, BM, BN, BK, programs, sk_waves): odd M (wrapped rows), K tails, tiles cut between 1..4 programs
CASES = [
    (70, 48, 80, 32, 16, 16, 4, 1),    # 9 tiles: 8 whole, the last cut over 4 programs (5 k-blocks)
    (70, 48, 88, 32, 16, 16, 4, 2),    # all 9 tiles cut, K tail (6 k-blocks, the last 8 wide)
    (33, 40, 64, 16, 16, 16, 4, 1),    # 9 tiles, the last cut one k-block per program
    (100, 64, 96, 32, 32, 32, 4, 1),   # 8 tiles on 4 programs: data-parallel only
    (16, 16, 96, 16, 16, 16, 3, 1),    # one tile, cut over 3 programs (2 k-blocks each)
    (70, 40, 72, 32, 16, 16, 5, 2),    # 9 tiles, 45 iterations over 5 programs, K tail
    (16, 80, 48, 16, 16, 16, 4, 1),    # 5 tiles: 4 whole, the last's 3 k-blocks on 3 programs, one idle
]
IDS = ["M{}-N{}-K{}-P{}-w{}".format(c[0], c[1], c[2], c[6], c[7]) for c in CASES]


def _data(M, N, K, dtype, device, gate_up, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g)
    w = torch.randn(2 * N if gate_up else N, K, generator=g) / K ** 0.5
    r = torch.randn(M, N, generator=g)
    return [t.to(device=device, dtype=dtype) for t in (x, w, r)]


def _cfg(BM, BN, BK, programs, waves, tma=False):
    return dict(BM=BM, BN=BN, BK=BK, SWAP_AB=False, TMA=tma, STREAM_K=True, SK_WAVES=waves, SK_PROGRAMS=programs,
                num_warps=4, num_stages=2)


def _assert_close(got, gold, ref):
    """Within twice torch's own error at the same precision, plus one ulp of the output (and 32 fp32 ulps
    for the GPU's exp in the SiLU epilogue), as tests/test_mlp.py."""
    assert not torch.isnan(got).any(), "unwritten (NaN) outputs"
    err = (got.double() - gold).abs().max().item()
    err_ref = (ref.double() - gold).abs().max().item()
    floor = (torch.finfo(got.dtype).eps + 32 * torch.finfo(torch.float32).eps) * max(1.0, gold.abs().max().item())
    assert err <= 2 * err_ref + floor, f"err {err:.3g} > 2 * torch err {err_ref:.3g} + {floor:.3g}"


@pytest.mark.parametrize("tma", [False, True], ids=["ptr", "tma"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_linear(case, dtype, tma, device):
    M, N, K, BM, BN, BK, programs, waves = case
    x, w, r = _data(M, N, K, dtype, device, False)
    if tma and not _tma_ok(x, w):
        pytest.skip("rows not 16-byte aligned: TMA not applicable to this shape")
    cfg = _cfg(BM, BN, BK, programs, waves, tma)
    for res in (None, r):
        out = torch.full((M, N), float("nan"), device=device, dtype=dtype)
        _launch_down(x, w, res, out, config=cfg)
        gold = x.double() @ w.double().t() + (0 if res is None else res.double())
        ref = torch.nn.functional.linear(x, w) + (0 if res is None else res)
        _assert_close(out, gold, ref)
        again = _launch_down(x, w, res, torch.empty_like(out), config=cfg)
        assert torch.equal(out, again), "deterministic: the cut tiles are summed in program order"
    assert not streamk._counters(x.device, 1).any(), "arrival counters are reset by the kernel"


@pytest.mark.parametrize("tma", [False, True], ids=["ptr", "tma"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gate_up(case, dtype, tma, device):
    M, N, K, BM, BN, BK, programs, waves = case
    x, w, _ = _data(M, N, K, dtype, device, True, seed=1)
    if tma and not _tma_ok(x, w):
        pytest.skip("rows not 16-byte aligned: TMA not applicable to this shape")
    act = torch.full((M, N), float("nan"), device=device, dtype=dtype)
    _launch_gate_up(x, w, act, config=_cfg(BM, BN, BK, programs, waves, tma))
    gu64 = x.double() @ w.double().t()
    gold = torch.nn.functional.silu(gu64[:, :N]) * gu64[:, N:]
    gu = x @ w.t()
    _assert_close(act, gold, torch.nn.functional.silu(gu[:, :N]) * gu[:, N:])
    again = _launch_gate_up(x, w, torch.empty_like(act), config=_cfg(BM, BN, BK, programs, waves, tma))
    assert torch.equal(act, again)
    assert not streamk._counters(x.device, 1).any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_mlp_and_norm_through_public_ops(dtype, device, monkeypatch):
    """swiglu_mlp_rms_norm with stream-K configs for both GEMMs equals the data-parallel path's numerics
    bound, and its norm is the norm of the h it wrote."""
    from kernels import mlp
    from kernels.reference import rms_norm_ref, swiglu_mlp_ref

    M, d, h = 70, 64, 176
    g = torch.Generator().manual_seed(4)
    x, r = (torch.randn(M, d, generator=g).to(device=device, dtype=dtype) for _ in range(2))
    w_gu = (torch.randn(2 * h, d, generator=g) / d ** 0.5).to(device=device, dtype=dtype)
    w_d = (torch.randn(d, h, generator=g) / h ** 0.5).to(device=device, dtype=dtype)
    nw = (1 + 0.1 * torch.randn(d, generator=g)).to(device=device, dtype=dtype)
    monkeypatch.setattr(mlp, "gate_up_config", lambda *a, **k: _cfg(32, 16, 16, 4, 1))
    monkeypatch.setattr(mlp, "down_config", lambda *a, **k: _cfg(32, 16, 32, 4, 2))
    y, hh = mlp.swiglu_mlp_rms_norm(x, w_gu, w_d, r, nw, 1e-5)
    gold = swiglu_mlp_ref(*(t.double() for t in (x, w_gu, w_d, r)))
    _assert_close(hh, gold, swiglu_mlp_ref(x, w_gu, w_d, r))
    want = rms_norm_ref(hh, nw, 1e-5)
    assert ((y.double() - want.double()).abs() <= torch.finfo(dtype).eps * want.abs().double() + 1e-6).all()
