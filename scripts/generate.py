#!/usr/bin/env python
"""Generate with a LLaDA checkpoint, streaming each block as it is committed.

    python scripts/generate.py --prompt "12+34="                        # the shipped tiny model
    python scripts/generate.py --model /path/to/LLaDA-8B-Instruct --device cuda --prompt "Hi" \\
        --gen-length 128 --block-length 32 --steps 128 --cache block

Chat template on by default when the tokenizer has one (Instruct); ``--no-chat`` feeds raw text.
``--prompt-ids 1,2,3`` feeds token ids directly (for checkpoints shipped without a tokenizer).
``--json`` prints token ids, NFE and timings as one JSON object per prompt instead of text.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
DEFAULT_MODEL = os.path.join(ROOT, "checkpoints", "llada-tiny-tasks")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL, help="Hugging Face LLaDA folder (default: shipped tiny model)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", action="append", help="a prompt (repeat for a batch)")
    src.add_argument("--prompts-file", help="text file, one prompt per line (or JSONL with a 'prompt' field)")
    src.add_argument("--prompt-ids", action="append", help="comma-separated token ids (repeatable)")
    p.add_argument("--no-chat", action="store_true", help="do not apply the chat template")
    p.add_argument("--gen-length", type=int, default=None, help="tokens to generate (default 32)")
    p.add_argument("--block-length", type=int, default=None, help="block length (default: gen length, max 32)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps in total (default: gen length)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--remasking", default="low_confidence", choices=["low_confidence", "random"])
    p.add_argument("--threshold", type=float, default=None, help="Fast-dLLM parallel decoding threshold")
    p.add_argument("--factor", type=float, default=None, help="Fast-dLLM factor rule")
    p.add_argument("--cfg-scale", type=float, default=0.0, help="classifier-free guidance scale")
    p.add_argument("--cache", default="none", choices=["none", "prefix", "dual", "block"])
    p.add_argument("--logits-eos-inf", action="store_true")
    p.add_argument("--confidence-eos-eot-inf", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    p.add_argument("--ops", default="reference", choices=["reference", "triton"], help="op implementations")
    p.add_argument("--json", action="store_true", help="print JSON (ids, NFE, timings) instead of text")
    p.add_argument("--quiet", action="store_true", help="no streaming display")
    return p.parse_args(argv)


def _prompts(args, tokenizer, cfg):
    from llada_triton.models.chat import chat_prompt_ids

    if args.prompt_ids:
        return [[int(t) for t in s.split(",") if t.strip()] for s in args.prompt_ids], None
    texts = args.prompt
    if args.prompts_file:
        texts = []
        with open(args.prompts_file) as f:
            for line in f:
                line = line.rstrip("\n")
                if not line.strip():
                    continue
                texts.append(json.loads(line)["prompt"] if line.lstrip().startswith("{") else line)
    if not texts:
        raise SystemExit("give --prompt, --prompts-file or --prompt-ids")
    if tokenizer is None:
        raise SystemExit(f"{args.model} has no tokenizer; use --prompt-ids")
    chat = not args.no_chat and getattr(tokenizer, "chat_template", None) is not None
    return [chat_prompt_ids(tokenizer, t, chat_template=chat) for t in texts], texts


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


def main(argv=None):
    args = parse_args(argv)
    import torch

    from llada_triton.decode import generate
    from llada_triton.models import load_model, triton_ops, REFERENCE_OPS
    from llada_triton.models.chat import decode_answer, load_tokenizer

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype) if args.dtype else None
    params, cfg = load_model(args.model, device=device, dtype=dtype)
    tokenizer = None
    if any(os.path.isfile(os.path.join(args.model, f)) for f in ("tokenizer.json", "tokenizer_config.json")):
        tokenizer = load_tokenizer(args.model)
    prompts, texts = _prompts(args, tokenizer, cfg)
    gen = args.gen_length or 32
    block = args.block_length or min(gen, 32)
    steps = args.steps or gen
    ops = triton_ops() if args.ops == "triton" else REFERENCE_OPS
    disp = Display(tokenizer, cfg, gen // block, sys.stderr, args.quiet or args.json)
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
