"""A character-level tokenizer in the LLaDA layout, built with the ``tokenizers`` library.

Ordinary tokens are the 96 characters ``\\n`` and printable ASCII (ids 0..95). The saved tokenizer
normalises any other character to ``?`` (the shipped checkpoint's ``tokenizer.json`` does), so callers
check prompts first: ``llada_triton.models.chat.chat_prompt_ids`` and ``ChatEncoder`` raise an error
naming such characters instead. The special tokens follow at the top of the vocabulary in LLaDA-8B-Instruct's
relative order (bos, eos = pad, ``[CLS]``, ``[gMASK]``, reserved tokens with ``<|mdm_mask|>`` in one
reserved slot, role / arithmetic / number markers, then the header tokens and ``<|eot_id|>`` last).
The model's embedding is padded to a multiple of 64 (ids past the tokenizer are unused rows, as in
LLaDA-8B, whose 126464 rows exceed its 126349 tokens).

``save_tokenizer(dir)`` writes ``tokenizer.json``, ``tokenizer_config.json`` and the chat template so that
``transformers.AutoTokenizer.from_pretrained(dir)`` works offline. ``ChatEncoder`` is a pure-Python
encoder of the same chat prompts (used to build training batches fast); the tests check that it agrees
with the saved tokenizer.

``layout="llada2"`` (every function takes it; the default ``"llada"`` is the above, unchanged) gives the same
characters with LLaDA2's (Ling) special tokens: ``<|startoftext|>``, eos = pad ``<|endoftext|>``, ``[CLS]``,
``[gMASK]``, ``<|mask|>`` (eos + 3, as 156892 / 156895 in the real tokenizer), ``<role>``, ``</role>`` and
``<|role_end|>``, and LLaDA2's chat turns ``<role>HUMAN</role>{content}<|role_end|>`` ending in
``<role>ASSISTANT</role>``. Unlike the real template it adds no default system turn ("detailed thinking off"),
which would only lengthen every tiny-model prompt.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

__all__ = ["CHARS", "SPECIAL_TOKENS", "CHAT_TEMPLATE", "Layout", "LAYOUTS", "vocab", "special_ids", "padded_vocab_size",
           "build_tokenizer", "save_tokenizer", "ChatEncoder"]

CHARS: List[str] = ["\n"] + [chr(c) for c in range(32, 127)]
UNKNOWN_CHAR = "?"

SPECIAL_TOKENS: List[str] = [
    "<|startoftext|>", "<|endoftext|>", "[CLS]", "[gMASK]",
    "<|reserved_token_0|>", "<|reserved_token_1|>", "<|mdm_mask|>",
    "<|reserved_token_3|>", "<|reserved_token_4|>", "<|reserved_token_5|>",
    "<role>", "</role>", "<|arithmetic_start|>", "<|arithmetic_end|>", "<|number_start|>", "<|number_end|>",
    "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
]
BOS, EOS, MASK, EOT = "<|startoftext|>", "<|endoftext|>", "<|mdm_mask|>", "<|eot_id|>"
START_HEADER, END_HEADER = "<|start_header_id|>", "<|end_header_id|>"

# LLaDA-8B-Instruct's template: bos string first, then every message, then always the assistant header
# (add_generation_prompt is ignored, as in the original).
CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}"
    "{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
)

# LLaDA2.x (Ling tokenizer): role turns closed by <|role_end|>; the generation prompt opens the assistant turn
LLADA2_SPECIAL_TOKENS: List[str] = ["<|startoftext|>", "<|endoftext|>", "[CLS]", "[gMASK]", "<|mask|>",
                                    "<role>", "</role>", "<|role_end|>"]
LLADA2_CHAT_TEMPLATE = (
    "{% set names = {'system': 'SYSTEM', 'user': 'HUMAN', 'assistant': 'ASSISTANT'} %}"
    "{% for message in messages %}"
    "{{ '<role>' + names[message['role']] + '</role>' + message['content'] | trim + '<|role_end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<role>ASSISTANT</role>' }}{% endif %}"
)


@dataclass(frozen=True)
class Layout:
    """A checkpoint family's special tokens and chat turns over the shared characters. ``prefix`` / ``suffix``
    are the pieces around a user turn's content (a piece in ``special_tokens`` is that token, else text)."""
    name: str
    special_tokens: Tuple[str, ...]
    bos: str
    eos: str
    mask: str
    eot: str
    chat_template: str
    prefix: Tuple[str, ...]
    suffix: Tuple[str, ...]


LAYOUTS: Dict[str, Layout] = {
    "llada": Layout("llada", tuple(SPECIAL_TOKENS), BOS, EOS, MASK, EOT, CHAT_TEMPLATE,
                    (BOS, START_HEADER, "user", END_HEADER, "\n\n"),
                    (EOT, START_HEADER, "assistant", END_HEADER, "\n\n")),
    "llada2": Layout("llada2", tuple(LLADA2_SPECIAL_TOKENS), "<|startoftext|>", "<|endoftext|>", "<|mask|>",
                     "<|role_end|>", LLADA2_CHAT_TEMPLATE, ("<role>", "HUMAN", "</role>"),
                     ("<|role_end|>", "<role>", "ASSISTANT", "</role>")),
}

PAD_MULTIPLE = 64


def get_layout(layout: str) -> Layout:
    try:
        return LAYOUTS[layout]
    except KeyError:
        raise ValueError(f"layout={layout!r}; choose from {sorted(LAYOUTS)}") from None


def vocab(layout: str = "llada") -> Dict[str, int]:
    v = {c: i for i, c in enumerate(CHARS)}
    for s in get_layout(layout).special_tokens:
        v[s] = len(v)
    return v


def special_ids(layout: str = "llada") -> Dict[str, int]:
    v = vocab(layout)
    return {s: v[s] for s in get_layout(layout).special_tokens}


def padded_vocab_size(multiple: int = PAD_MULTIPLE, layout: str = "llada") -> int:
    n = len(CHARS) + len(get_layout(layout).special_tokens)
    return -(-n // multiple) * multiple


def build_tokenizer(layout: str = "llada"):
    """The ``transformers`` fast tokenizer (a ``tokenizers`` BPE model with no merges = characters)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    lay = get_layout(layout)
    chars = {c: i for i, c in enumerate(CHARS)}
    tok = Tokenizer(models.BPE(vocab=chars, merges=[]))
    tok.normalizer = normalizers.Replace(Regex(r"[^\n\x20-\x7e]"), UNKNOWN_CHAR)
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(list(lay.special_tokens))  # ids len(CHARS).. in list order
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=lay.bos, eos_token=lay.eos, pad_token=lay.eos, mask_token=lay.mask,
        chat_template=lay.chat_template, add_bos_token=False, add_eos_token=False,
        clean_up_tokenization_spaces=False, model_max_length=4096,
    )
    got = {s: fast.convert_tokens_to_ids(s) for s in lay.special_tokens}
    if got != special_ids(layout):
        raise RuntimeError(f"special token ids came out as {got}, expected {special_ids(layout)}")
    return fast


def save_tokenizer(path: str, layout: str = "llada"):
    """Write the tokenizer files to ``path``; returns the tokenizer.

    ``tokenizer_config.json`` is made to look like LLaDA-8B-Instruct's: class
    ``PreTrainedTokenizerFast`` (so transformers 4.x loads it too), ``add_bos_token``/``add_eos_token``
    false and the chat template inline (transformers 5 also writes ``chat_template.jinja``).
    """
    lay = get_layout(layout)
    fast = build_tokenizer(layout)
    os.makedirs(path, exist_ok=True)
    fast.save_pretrained(path)
    cfg_path = os.path.join(path, "tokenizer_config.json")
    with open(cfg_path) as f:
        tc = json.load(f)
    tc.pop("backend", None)
    tc.update({"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": False, "add_eos_token": False,
               "chat_template": lay.chat_template, "clean_up_tokenization_spaces": False})
    v = vocab(layout)
    tc["added_tokens_decoder"] = {
        str(v[s]): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                    "single_word": False, "special": True} for s in lay.special_tokens}
    with open(cfg_path, "w") as f:
        json.dump(dict(sorted(tc.items())), f, indent=2, ensure_ascii=False)
        f.write("\n")
    return fast


class ChatEncoder:
    """Pure-Python encoding of single-turn chat prompts and answers, identical to the saved tokenizer's
    ``tokenizer(apply_chat_template([{'role': 'user', 'content': c}], tokenize=False))``."""

    def __init__(self, layout: str = "llada"):
        lay = get_layout(layout)
        v = vocab(layout)
        self.char_ids = {c: v[c] for c in CHARS}
        self.bos, self.eos, self.mask, self.eot = v[lay.bos], v[lay.eos], v[lay.mask], v[lay.eot]
        pieces = lambda ps: [i for p in ps for i in ([v[p]] if p in lay.special_tokens else self.encode(p))]  # noqa: E731
        self._prefix, self._suffix = pieces(lay.prefix), pieces(lay.suffix)

    def encode(self, text: str) -> List[int]:
        get = self.char_ids.get
        ids = [get(c) for c in text]
        if None in ids:
            bad = "".join(dict.fromkeys(c for c, i in zip(text, ids) if i is None))
            raise ValueError(f"{text!r} has characters outside the tokenizer's alphabet "
                             f"(newline and printable ASCII): {bad!r}")
        return ids

    def prompt(self, content: str, role: str = "user") -> List[int]:
        if role != "user":
            raise ValueError("ChatEncoder renders single user turns only")
        return self._prefix + self.encode(content.strip()) + self._suffix

    def answer(self, text: str, length: int) -> List[int]:
        """``text`` + eot (``<|eot_id|>``; LLaDA2: ``<|role_end|>``) + eos padding to exactly ``length`` tokens
        (LLaDA SFT layout)."""
        ids = self.encode(text) + [self.eot]
        if len(ids) > length:
            raise ValueError(f"answer {text!r} needs {len(ids)} tokens > answer length {length}")
        return ids + [self.eos] * (length - len(ids))

    def batch(self, prompts: Sequence[str], answers: Sequence[str], length: int):
        """Left-padded prompt ids ``[B, P]`` (pad = eos), pad widths ``[B]`` and answers ``[B, length]``,
        as numpy int64 arrays."""
        import numpy as np

        ps = [self.prompt(p) for p in prompts]
        P = max(len(p) for p in ps)
        tok = np.full((len(ps), P), self.eos, dtype=np.int64)
        pad = np.zeros(len(ps), dtype=np.int64)
        for i, p in enumerate(ps):
            tok[i, P - len(p):] = p
            pad[i] = P - len(p)
        ans = np.array([self.answer(a, length) for a in answers], dtype=np.int64)
        return tok, pad, ans
