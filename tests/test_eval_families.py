"""The lm-eval runner decodes every family with its own decoder (``--model_args``): LLaDA2.0's official decoding
(``decoding=llada2``, the default for LLaDA2 checkpoints) and Dream's algorithms (``remasking`` maskgit_plus /
topk_margin / entropy) give per prompt the tokens of the driver called directly; impossible combinations are
refused with one-line errors before loading."""
import os

import pytest

from llada_triton.decode import diffusion_generate, generate_llada2
from llada_triton.eval.distributed import Dist
from llada_triton.eval.options import parse_model_args
from llada_triton.eval.runner import EvalRunner
from llada_triton.models import REFERENCE_OPS
from tests.helpers import family_dir, family_golden, family_model

LLADA2 = os.path.join(family_dir("llada2"), "checkpoint")
DREAM = os.path.join(family_dir("dream"), "checkpoint")


def _chunk(family, path, prompts, **model_args):
    """The runner's generated tokens for one chunk of ``prompts`` (token ids: the golden folders ship no
    tokenizer), on the CPU in float32 with the reference ops."""
    opts = parse_model_args(dict(pretrained=path, **model_args))
    params, cfg = family_model(family)
    runner = EvalRunner(opts, params, cfg, None, Dist(), REFERENCE_OPS)
    toks, nfe, _ = runner._run_chunk(prompts, lambda n: None)
    return opts, toks, nfe, params, cfg


def _llada2_prompts():
    cases = {c["name"]: c for c in family_golden("llada2")["cases"]}
    names = ("llada2_overhang_p10_g9_b8_s8_thr0.5", "llada2_p13_g32_b8_s8_thr1.0", "llada2_p5_g32_b8_s8_thr0.95")
    return [cases[n]["prompt"][0] for n in names]


@pytest.mark.parametrize("cache", ["block", "none"])  # run_many's slots / generate on the padded chunk
def test_llada2_answers_equal_generate_llada2(cache):
    prompts = _llada2_prompts()
    opts, toks, nfe, params, cfg = _chunk("llada2", LLADA2, prompts, gen_length=12, block_length=8, threshold=0.5,
                                          eos_early_stop=True, batch_size=2, cache=cache)
    assert (opts.decoding, opts.decode_steps) == ("llada2", 8)  # the family's default; steps per block
    ref = [generate_llada2(params, cfg, p, gen_length=12, block_length=8, steps=8, threshold=0.5,
                           eos_early_stop=True, cache=cache) for p in prompts]
    assert toks == [r.tokens for r in ref] and nfe == [r.nfe for r in ref]
    assert all(toks)


@pytest.mark.parametrize("args, alg", [(dict(), "maskgit_plus"),
                                       (dict(remasking="entropy", cache="dual", block_length=8), "entropy")])
def test_dream_tokens_equal_diffusion_generate(args, alg):
    cases = family_golden("dream")["cases"]
    prompts = [cases[0]["prompt"][0], cases[1]["prompt"][0]]
    assert len(prompts[0]) != len(prompts[1])  # a left-padded chunk
    opts, toks, nfe, params, cfg = _chunk("dream", DREAM, prompts, gen_length=16, steps=8, batch_size=2, **args)
    assert opts.remasking == alg and opts.cache == args.get("cache", "none")
    ref = [diffusion_generate(params, cfg, [p], max_new_tokens=16, steps=8, alg=alg, cache=opts.cache,
                              block_length=args.get("block_length")) for p in prompts]
    assert toks == [r.tokens[0].tolist() for r in ref] and nfe == [r.nfe[0] for r in ref]


@pytest.mark.parametrize("path, args, message", [
    (LLADA2, dict(remasking="random"),
     r"remasking='random' is not an option of LLaDA2 decoding \(allowed: 'low_confidence'"),
    (LLADA2, dict(logits_eos_inf="1"), r"logits_eos_inf=True is not an option of LLaDA2 decoding \(allowed: False\)"),
    (LLADA2, dict(cache="dual"), r"cache='dual' with LLaDA2 decoding; choose one of \('block', 'none'\)"),
    (LLADA2, dict(cfg_scale="1"), r"cfg_scale=1.0 is not an option of LLaDA2 decoding \(allowed: 0.0"),
    (LLADA2, dict(minimal_topk="0"), r"minimal_topk=0 must be an int >= 1"),
    (LLADA2, dict(threshold="1.5"), r"threshold=1.5 must be a number in \[0, 1\]"),
    (LLADA2, dict(decoding="bogus"), r"decoding='bogus': choose one of llada, llada2"),
    (DREAM, dict(decoding="llada2"), r"decoding='llada2' needs a LLaDA2 checkpoint, not family 'dream'"),
    (DREAM, dict(minimal_topk="2"), r"minimal_topk=2 is not an option of decoding=llada; "),
    (DREAM, dict(remasking="low_confidence", block_length="16", top_k="5"), r"top_k=5 is not an option of remasking=low_confidence"),
    (DREAM, dict(cfg_scale="2"), r"cfg_scale=2.0 is not an option of remasking=maskgit_plus \(Dream\)"),
    (DREAM, dict(block_length="8"), r"cache='none' decodes one block: block_length=8 must be None or 16"),
    (DREAM, dict(threshold="0.9", batch_size="2"), r"set batch_size=1, not 2"),
    (DREAM, dict(top_p="1.5"), r"top_p=1.5 must be in \(0, 1\]"),
], ids=lambda v: os.path.basename(os.path.dirname(v)) if isinstance(v, str) and os.sep in v else None)
def test_family_options_are_refused_in_one_line(path, args, message):
    with pytest.raises(ValueError, match=message):
        parse_model_args(dict(pretrained=path, gen_length="16", **args))


class _IdsTokenizer:
    """Text is space-separated ids (the golden folders ship no tokenizer)."""
    bos_token = None

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [int(w) for w in text.split()]}

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


@pytest.mark.parametrize("cache", ["block", "none"])  # run_many's slots / generate on the padded chunk
def test_llada2_prompts_trimmed_to_fit_the_grid(cache):
    """With ``decoding=llada2`` a prompt is trimmed so that its block grid (overhang included, in any batch) fits
    ``max_sequence_length``: B=8, G=12, M=48 leave 31 prompt tokens (3 whole blocks + 7; the tail spans up to 3
    blocks); one more can overflow a batch whose other prompt ends a block's last column."""
    from llada_triton.models.chat import strip_answer

    params, cfg = family_model("llada2")
    cfg = cfg.replace(max_sequence_length=48)
    opts = parse_model_args(dict(pretrained=LLADA2, gen_length=12, block_length=8, threshold=0.5, batch_size=2,
                                 cache=cache))
    runner = EvalRunner(opts, params, cfg, _IdsTokenizer(), Dist(), REFERENCE_OPS)
    assert runner._prompt_room() == 31
    base = _llada2_prompts()[1]
    long, short = (base * 4)[:40], (base * 2)[:23]
    texts, _ = runner.generate([" ".join(map(str, p)) for p in (long, short)], [[], []], ["t", "t"])
    assert runner.truncated == 1
    ref = [generate_llada2(params, cfg, p, gen_length=12, block_length=8, steps=8, threshold=0.5, cache=cache)
           for p in (long[-31:], short)]
    assert texts == [" ".join(map(str, strip_answer(r.tokens, cfg))) for r in ref]
    with pytest.raises(ValueError, match="the block grid needs 56 positions"):
        runner._run_chunk([long[-32:], short], lambda n: None)
