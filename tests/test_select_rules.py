"""The reference selection rules against literal per-row loops of the published rules."""
import pytest
import torch

from llada_triton.kernels.reference import select_transfer_ref


def _literal_threshold(conf, masked, thr):
    c = torch.where(masked, conf, torch.tensor(float("-inf")))
    n = int(masked.sum())
    out = torch.zeros_like(masked)
    if n == 0:
        return out
    order = sorted(range(len(c)), key=lambda i: (-float(c[i]), i))
    order = [i for i in order if masked[i]]
    out[order[0]] = True
    for i in order[1:]:
        if float(c[i]) >= thr:
            out[i] = True
    return out


def _literal_factor(conf, masked, factor):
    """Fast-dLLM get_transfer_index_dynamic, rewritten from its description."""
    n = int(masked.sum())
    out = torch.zeros_like(masked)
    if n == 0:
        return out
    threshs = [1 - factor / (k + 1) for k in range(1, n + 1)]
    threshs[0] = -1
    order = sorted([i for i in range(len(conf)) if masked[i]], key=lambda i: (-float(conf[i]), i))
    top_i = 0
    for top_i in range(n):
        if float(conf[order[top_i]]) < threshs[top_i]:
            break
    if top_i == 0 or top_i == n - 1:
        top_i += 1
    for i in order[:top_i]:
        out[i] = True
    return out


@pytest.mark.parametrize("seed", range(20))
def test_rules_match_literal_loops(seed):
    g = torch.Generator().manual_seed(seed)
    B, L = 4, 13
    conf = torch.rand(B, L, generator=g) ** 0.3
    conf[0, :] = 0.5  # all equal
    conf[1, 3] = float("-inf")
    masked = torch.rand(B, L, generator=g) < 0.7
    masked[2] = False  # nothing masked
    for thr in (0.3, 0.9, 1.0):
        got = select_transfer_ref(conf, masked, threshold=thr)
        for b in range(B):
            assert torch.equal(got[b], _literal_threshold(conf[b], masked[b], thr))
    for factor in (0.5, 1.0, 2.5):
        got = select_transfer_ref(conf, masked, factor=factor)
        for b in range(B):
            assert torch.equal(got[b], _literal_factor(conf[b], masked[b], factor)), (factor, b)
    k = torch.tensor([0, 3, 5, L])
    got = select_transfer_ref(conf, masked, k=k)
    for b in range(B):
        order = sorted([i for i in range(L) if masked[b, i]], key=lambda i: (-float(conf[b, i]), i))
        want = torch.zeros(L, dtype=torch.bool)
        want[order[:int(k[b])]] = True
        assert torch.equal(got[b], want)


def test_exactly_one_rule():
    with pytest.raises(ValueError, match="exactly one"):
        select_transfer_ref(torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool), k=torch.tensor([1]), threshold=0.5)
    for rule in ("threshold", "factor"):  # a NaN rule would silently commit only the top position
        with pytest.raises(ValueError, match=f"{rule} must be a number"):
            select_transfer_ref(torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool), **{rule: float("nan")})
