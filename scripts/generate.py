#!/usr/bin/env python
"""Generate with a LLaDA checkpoint, streaming each block as it is committed.

    python scripts/generate.py --prompt "12+34="                        # the shipped tiny model
    python scripts/generate.py --prompt "sort: qwerty123" --gen-length 32 --block-length 8 --cache block
    python scripts/generate.py --model /path/to/LLaDA-8B-Instruct --device cuda --ops triton --prompt "Hi" \\
        --gen-length 128 --block-length 32 --steps 128 --cache block

Chat template on by default when the tokenizer has one (Instruct); ``--no-chat-template`` feeds raw text.
``--prompt-ids 1,2,3`` feeds token ids directly (for checkpoints shipped without a tokenizer).
``--json`` prints token ids, NFE and timings as one JSON object per prompt instead of text.
Bad arguments and unusable checkpoints are reported in one line (exit status 2) before the model loads;
``--ops triton`` needs a CUDA GPU (or TRITON_INTERPRET=1 in the environment: the CPU interpreter, ~100x slower).
"""
from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cliutil  # noqa: E402

sys.path.insert(0, cliutil.ROOT)

DEFAULT_GEN_LENGTH, MAX_DEFAULT_BLOCK = 32, 32


def build_parser() -> cliutil.ArgumentParser:
    p = cliutil.ArgumentParser(prog=os.path.basename(__file__), description=__doc__)
    p.add_argument("--model", default=cliutil.DEFAULT_MODEL,
                   help="Hugging Face LLaDA folder (default: the shipped tiny model)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append", help="a prompt (repeat for a batch)")
    src.add_argument("--prompts-file", help="text file, one prompt per line (or JSONL with a 'prompt' field)")
    src.add_argument("--prompt-ids", action="append", type=cliutil.int_list,
                     help="comma-separated token ids (repeatable)")
    p.add_argument("--no-chat-template", action="store_true", help="do not apply the chat template")
    p.add_argument("--gen-length", type=cliutil.positive_int, default=DEFAULT_GEN_LENGTH,
                   help=f"tokens to generate (default {DEFAULT_GEN_LENGTH})")
    p.add_argument("--block-length", type=cliutil.positive_int, default=None,
                   help=f"block length, dividing --gen-length (default: the gen length, or {MAX_DEFAULT_BLOCK} "
                        f"when the gen length is a larger multiple of {MAX_DEFAULT_BLOCK})")
    p.add_argument("--steps", type=cliutil.positive_int, default=None,
                   help="denoising steps in total, a multiple of the block count (default: gen length)")
    p.add_argument("--temperature", type=float, default=0.0, help=">= 0 (0: greedy)")
    p.add_argument("--remasking", default="low_confidence", choices=["low_confidence", "random"])
    p.add_argument("--threshold", type=float, default=None, help="Fast-dLLM parallel decoding threshold, in (0, 1]")
    p.add_argument("--factor", type=float, default=None, help="Fast-dLLM factor rule, > 0")
    p.add_argument("--cfg-scale", type=float, default=0.0, help="classifier-free guidance scale, >= 0")
    p.add_argument("--cache", default="none", choices=["none", "prefix", "dual", "block"])
    p.add_argument("--logits-eos-inf", action="store_true")
    p.add_argument("--confidence-eos-eot-inf", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    cliutil.add_device_args(p)
    p.add_argument("--json", action="store_true", help="print JSON (ids, NFE, timings) instead of text")
    p.add_argument("--quiet", action="store_true", help="no streaming display")
    return p


def check_args(p: cliutil.ArgumentParser, args) -> None:
    """Schedule and rule values, with the defaults filled in (gen length, block length, steps)."""
    gen = args.gen_length
    if args.block_length is None:
        args.block_length = MAX_DEFAULT_BLOCK if gen > MAX_DEFAULT_BLOCK and gen % MAX_DEFAULT_BLOCK == 0 else gen
    if args.steps is None:
        args.steps = gen
    cliutil.check_schedule(p, gen, args.block_length, args.steps)
    if args.threshold is not None and args.factor is not None:
        p.fail("--threshold", "give --threshold or --factor, not both")
    if args.threshold is not None and not 0.0 < args.threshold <= 1.0:
        p.fail("--threshold", f"{args.threshold:g} is not in (0, 1]")
    if args.factor is not None and not args.factor > 0:
        p.fail("--factor", f"{args.factor:g} is not > 0")
    for arg, v in (("--temperature", args.temperature), ("--cfg-scale", args.cfg_scale)):
        if not v >= 0:
            p.fail(arg, f"{v:g} is not >= 0")


def read_prompts_file(p: cliutil.ArgumentParser, path: str) -> list:
    """Non-blank lines of ``path`` (a line starting with ``{`` is JSON with a 'prompt' field)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        p.fail("--prompts-file", f"cannot read {path!r}: {e}")
    texts = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if not line.lstrip().startswith("{"):
            texts.append(line)
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            p.fail("--prompts-file", f"{path!r} line {n} starts with '{{' but is not JSON ({e})")
        if not isinstance(rec.get("prompt"), str):
            p.fail("--prompts-file", f"{path!r} line {n} has no string 'prompt' field")
        texts.append(rec["prompt"])
    if not texts:
        p.fail("--prompts-file", f"{path!r} has no prompts (it is empty or has only blank lines)")
    return texts


def check_prompt_ids(p: cliutil.ArgumentParser, rows, cfg) -> None:
    for row in rows:
        bad = [t for t in row if not 0 <= t < cfg.vocab_size or t == cfg.mask_token_id]
        if bad:
            p.fail("--prompt-ids", f"id {bad[0]} is not allowed: ids must be in [0, {cfg.vocab_size}) and "
                                   f"not the mask id {cfg.mask_token_id}")


def encode_prompts(p: cliutil.ArgumentParser, args, texts, tokenizer) -> list:
    from llada_triton.models.chat import chat_prompt_ids

    arg = "--prompts-file" if args.prompts_file else "--prompt"
    if tokenizer is None:
        p.fail(arg, f"{args.model!r} has no tokenizer files; give token ids with --prompt-ids")
    chat = not args.no_chat_template and getattr(tokenizer, "chat_template", None) is not None
    out = []
    for t in texts:
        try:
            out.append(chat_prompt_ids(tokenizer, t, chat_template=chat))
        except ValueError as e:  # characters the tokenizer cannot represent
            p.fail(arg, f"{t!r}: {e}")
    return out


class Display:
    """Shows the block being decoded: masked positions as '_', end tokens as '.' (one line per prompt,
    redrawn at every step on a TTY; each committed block is printed)."""

    def __init__(self, tokenizer, cfg, n_blocks, stream, quiet):
        self.tok, self.cfg, self.n_blocks, self.stream, self.quiet = tokenizer, cfg, n_blocks, stream, quiet
        self.tty = stream.isatty()
        self.t0 = time.perf_counter()
        self.done = []

    def _text(self, ids):
        mask = self.cfg.mask_token_id
        if self.tok is None:
            return " ".join("_" if t == mask else str(t) for t in ids)
        ends = set(self.cfg.end_token_ids)
        out = []
        for t in ids:  # masked positions as "_", end tokens as "." (the answer stops at the first one)
            out.append("_" if t == mask else "." if t in ends else self.tok.decode([t], skip_special_tokens=False))
        return "".join(out).replace("\n", "\\n")

    def step(self, ev):
        if self.quiet or not self.tty:
            return
        row = ev.tokens[0].tolist()
        line = f"\r[block {ev.block + 1}/{self.n_blocks} step {ev.step + 1}] {self._text(row)}"
        self.stream.write(line[:200].ljust(120))
        self.stream.flush()

    def block(self, ev):
        self.done.append(ev.tokens)
        if self.quiet:
            return
        if self.tty:
            self.stream.write("\r" + " " * 140 + "\r")
        el = time.perf_counter() - self.t0
        for i, row in enumerate(ev.tokens.tolist()):
            tag = f"#{i} " if ev.tokens.shape[0] > 1 else ""
            self.stream.write(f"{tag}block {ev.block + 1}/{self.n_blocks} ({el:.1f}s): {self._text(row)}\n")
        self.stream.flush()


def _generate_llada2(p, args, params, cfg, prompts, ops):
    """LLaDA2.x checkpoints decode with their official semantics (``decoding=Llada2Decoding``: absolute block grid,
    threshold rule, eos stop), all prompts in one varlen batch (each row as the batch-1 reference); answers are cut
    after their first eos and padded with eos to the longest."""
    import torch

    from llada_triton.decode import Llada2Decoding, generate

    if args.cache not in ("block", "none"):
        p.fail("--cache", f"{args.cache!r} with an LLaDA2 checkpoint; allowed: block (native), none")
    dec = Llada2Decoding(threshold=0.95 if args.threshold is None else args.threshold)
    res = generate(params, cfg, prompts, gen_length=args.gen_length, block_length=args.block_length,
                   steps=args.steps, temperature=args.temperature, seed=args.seed, cache=args.cache, ops=ops,
                   decoding=dec)
    width = max(len(a) for a in res.answers)
    res.tokens = torch.full((len(res.answers), width), cfg.eos_token_id, dtype=torch.long)
    for i, a in enumerate(res.answers):
        res.tokens[i, :len(a)] = torch.tensor(a, dtype=torch.long)
    return res


def main(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    check_args(p, args)
    texts = read_prompts_file(p, args.prompts_file) if args.prompts_file else args.prompt
    device = cliutil.check_device(p, args.device, args.ops)  # before triton is imported
    cfg = cliutil.check_model(p, args.model)
    if args.prompt_ids:
        check_prompt_ids(p, args.prompt_ids, cfg)
    import torch

    from llada_triton.decode import generate
    from llada_triton.models import REFERENCE_OPS, triton_ops
    from llada_triton.models.chat import decode_answer, load_tokenizer

    tokenizer = None
    if any(os.path.isfile(os.path.join(args.model, f)) for f in ("tokenizer.json", "tokenizer_config.json")):
        tokenizer = load_tokenizer(args.model)
    prompts = [list(r) for r in args.prompt_ids] if args.prompt_ids else encode_prompts(p, args, texts, tokenizer)
    params, cfg = cliutil.load_checkpoint(p, args.model, device, getattr(torch, args.dtype) if args.dtype else None)
    gen, block, steps = args.gen_length, args.block_length, args.steps
    ops = triton_ops() if args.ops == "triton" else REFERENCE_OPS
    disp = Display(tokenizer, cfg, gen // block, sys.stderr, args.quiet or args.json)
    if cfg.family == "llada2":
        res = _generate_llada2(p, args, params, cfg, prompts, ops)
    else:
        res = generate(params, cfg, prompts, gen_length=gen, block_length=block, steps=steps,
                       temperature=args.temperature, remasking=args.remasking, threshold=args.threshold,
                       factor=args.factor, cfg_scale=args.cfg_scale, cache=args.cache,
                       logits_eos_inf=args.logits_eos_inf, confidence_eos_eot_inf=args.confidence_eos_eot_inf,
                       seed=args.seed, ops=ops, on_step=disp.step, on_block=disp.block)
    for i, ids in enumerate(res.tokens.tolist()):
        answer = decode_answer(tokenizer, ids, cfg) if tokenizer is not None else None
        if args.json:
            print(json.dumps({"prompt": texts[i] if texts else None, "prompt_ids": prompts[i], "tokens": ids,
                              "answer": answer, "nfe": res.nfe[i], "seconds": round(res.seconds, 4),
                              "gen_length": gen, "block_length": block, "steps": steps, "cache": args.cache}))
        else:
            head = f"[{i}] " if len(prompts) > 1 else ""
            print(head + (answer if answer is not None else " ".join(map(str, ids))))
    if not args.json and not args.quiet:
        print(f"({len(prompts)} prompt(s), {gen} tokens each, NFE {res.nfe}, {res.seconds:.2f}s on {device})",
              file=sys.stderr)
    return res


if __name__ == "__main__":
    main()
