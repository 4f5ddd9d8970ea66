"""LLaDA's Monte-Carlo likelihood estimator (llada_triton.eval.likelihood) against a direct torch
computation of the official get_log_likelihood on the same draws."""
import pytest
import torch
import torch.nn.functional as F

from llada_triton.eval.likelihood import greedy_suffix_match, mc_draws, mc_loglikelihood, request_seed
from llada_triton.models import forward
from tests.helpers import CKPT, tiny_model

PREFIX = [5, 17, 90, 44, 23, 7, 11]
TARGET = [43, 250, 114, 183, 9]


def official_estimate(params, cfg, prefix, target, *, mc_num, batch_size, cfg_scale, seed):
    """get_log_likelihood.py step by step: full logits of every row (the unconditional copy concatenated to
    the batch), CE over the masked positions / p_mask, sum / batch, mean over mini-batches, negated."""
    g = torch.Generator().manual_seed(request_seed(seed, prefix, target))
    seq = torch.tensor(prefix + target)[None].repeat(batch_size, 1)
    prompt_index = torch.arange(seq.shape[1]) < len(prefix)
    losses = []
    for _ in range(mc_num // batch_size):
        is_mask, ratio = mc_draws(len(target), batch_size, g)
        is_mask = torch.cat([torch.zeros(batch_size, len(prefix), dtype=torch.bool), is_mask], 1)
        noisy = torch.where(is_mask, cfg.mask_token_id, seq)
        p_mask = ratio[:, None].repeat(1, seq.shape[1])
        batch = noisy
        if cfg_scale > 0:
            un = noisy.clone()
            un[prompt_index[None].repeat(batch_size, 1)] = cfg.mask_token_id
            batch = torch.cat([noisy, un])
        logits = forward(params, cfg, batch).float()
        if cfg_scale > 0:
            logits, un_logits = torch.chunk(logits, 2, dim=0)
            logits = un_logits + (cfg_scale + 1) * (logits - un_logits)
        mask_index = noisy == cfg.mask_token_id
        loss = F.cross_entropy(logits[mask_index], seq[mask_index], reduction="none") / p_mask[mask_index]
        losses.append(loss.sum().item() / batch_size)
    return -sum(losses) / len(losses)


@pytest.mark.parametrize("mc_num,batch_size,cfg_scale", [(8, 4, 0.0), (6, 2, 0.0), (4, 4, 1.5), (1, 1, 0.0)])
def test_matches_official_on_same_draws(mc_num, batch_size, cfg_scale):
    params, cfg = tiny_model()
    ll, fwd = mc_loglikelihood(params, cfg, PREFIX, TARGET, mc_num=mc_num, batch_size=batch_size,
                               cfg_scale=cfg_scale, seed=3)
    ref = official_estimate(params, cfg, PREFIX, TARGET, mc_num=mc_num, batch_size=batch_size,
                            cfg_scale=cfg_scale, seed=3)
    assert fwd == mc_num // batch_size
    assert ll < 0
    assert ll == pytest.approx(ref, rel=1e-5, abs=1e-5)


def test_draws_are_stratified():
    """With batch = target length the masked counts are a permutation of 1..T, and each row masks exactly
    its count of target positions."""
    g = torch.Generator().manual_seed(0)
    for T in (1, 5, 9):
        is_mask, ratio = mc_draws(T, T, g)
        counts = is_mask.sum(1)
        assert sorted(counts.tolist()) == list(range(1, T + 1))
        assert torch.allclose(ratio, counts.float() / T)


def test_deterministic_per_request_and_seed():
    params, cfg = tiny_model()
    kw = dict(mc_num=4, batch_size=2)
    a = mc_loglikelihood(params, cfg, PREFIX, TARGET, seed=1, **kw)[0]
    mc_loglikelihood(params, cfg, PREFIX, TARGET[:3], seed=1, **kw)  # another request in between
    assert mc_loglikelihood(params, cfg, PREFIX, TARGET, seed=1, **kw)[0] == a
    assert mc_loglikelihood(params, cfg, PREFIX, TARGET, seed=2, **kw)[0] != a


@pytest.mark.parametrize("kw,match", [(dict(mc_num=6, batch_size=4), "mc_batch_size=4 must be a positive int "
                                       "dividing mc_num=6"), (dict(mc_num=0), "mc_num=0")])
def test_bad_mc_arguments(kw, match):
    params, cfg = tiny_model()
    with pytest.raises(ValueError, match=match):
        mc_loglikelihood(params, cfg, PREFIX, TARGET, **kw)
    with pytest.raises(ValueError, match="no tokens"):
        mc_loglikelihood(params, cfg, PREFIX, [], mc_num=1, batch_size=1)


def _official_greedy(params, cfg, prefix, target):
    """eval_llada.py's suffix_greedy_prediction with full logits."""
    seq = torch.full((1, len(prefix) + len(target)), cfg.mask_token_id)
    seq[0, :len(prefix)] = torch.tensor(prefix)
    for _ in range(len(target)):
        mask_index = seq == cfg.mask_token_id
        logits = forward(params, cfg, seq).float()[mask_index]
        x0 = torch.argmax(logits, -1)
        confidence = torch.softmax(logits, -1).gather(-1, x0[:, None])[:, 0]
        _, index = torch.sort(confidence, descending=True, stable=True)
        x0[index[1:]] = cfg.mask_token_id
        seq[mask_index] = x0
    return seq[0, len(prefix):].tolist()


def test_greedy_suffix_match():
    params, cfg = tiny_model()
    greedy = _official_greedy(params, cfg, PREFIX, TARGET)
    assert greedy_suffix_match(params, cfg, PREFIX, greedy)
    wrong = list(greedy)
    wrong[0] = (wrong[0] + 1) % cfg.vocab_size
    assert not greedy_suffix_match(params, cfg, PREFIX, wrong)


@pytest.mark.gpu
def test_triton_ops_match_reference_on_gpu():
    from llada_triton.models import load_params, triton_ops

    _, cfg = tiny_model()
    params = load_params(CKPT, cfg, device="cuda", dtype=torch.float32)
    kw = dict(mc_num=4, batch_size=2, seed=1, cfg_scale=0.5)
    ref = mc_loglikelihood(params, cfg, PREFIX, TARGET, **kw)[0]
    fast = mc_loglikelihood(params, cfg, PREFIX, TARGET, ops=triton_ops(), **kw)[0]
    assert fast == pytest.approx(ref, rel=1e-3)
    greedy = _official_greedy(*tiny_model(), PREFIX, TARGET)
    assert greedy_suffix_match(params, cfg, PREFIX, greedy, ops=triton_ops())
