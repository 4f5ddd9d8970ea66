"""Prompts and answers with the checkpoint's own tokenizer and chat template (LLaDA's; Dream's Qwen one).

As the official chat code: the Instruct template with the assistant header at the end, rendered as text and
tokenized without adding special tokens (the template holds the bos string); answers cut at the first end token
(eos or eot) and decoded with special tokens skipped. A prompt character the tokenizer cannot represent is an
error naming it, unless ``allow_unknown=True``.
"""
from __future__ import annotations

from typing import List, Sequence, Union

from .config import LLaDAConfig, read_json

__all__ = ["load_tokenizer", "chat_prompt_ids", "unknown_chars", "strip_answer", "decode_answer"]

Messages = Union[str, Sequence[dict]]
# remote tokenizer classes -> the transformers class that tokenizes identically
_SAME_TOKENIZER = {"DreamTokenizer": "Qwen2Tokenizer"}


def load_tokenizer(path: str):
    """The checkpoint's tokenizer (offline; never runs remote code): the class ``tokenizer_config.json`` names,
    loaded directly so that ``config.json``'s ``auto_map`` is never read (Dream's remote ``DreamTokenizer`` is
    Qwen2's byte-level BPE: ``Qwen2Tokenizer``), else ``AutoTokenizer``."""
    import os

    import transformers

    cls_name = read_json(os.path.join(path, "tokenizer_config.json"), {}).get("tokenizer_class")
    cls_name = _SAME_TOKENIZER.get(cls_name, cls_name)
    cls = (getattr(transformers, cls_name, None) if cls_name else None) or transformers.AutoTokenizer
    return cls.from_pretrained(path, local_files_only=True, trust_remote_code=False)


def unknown_chars(tokenizer, text: str) -> List[str]:
    """The distinct characters of ``text`` that, encoded alone, give the unknown token or do not decode back
    (whitespace decoding to whitespace or nothing counts as represented: SentencePiece folds it)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    bad = []
    for c in dict.fromkeys(text):
        ids = tokenizer(c, add_special_tokens=False)["input_ids"]
        back = tokenizer.decode(ids)
        if (unk is not None and unk in ids) or (c not in back and not (c.isspace() and not back.strip())):
            bad.append(c)
    return bad


def chat_prompt_ids(tokenizer, messages: Messages, *, chat_template: bool = True,
                    allow_unknown: bool = False) -> List[int]:
    """Token ids of a prompt (``messages``: a user string or a list of ``{"role", "content"}``): the chat template
    rendered to text (``chat_template``, Instruct checkpoints) or the raw text, tokenized with
    ``add_special_tokens=False``; characters the tokenizer cannot represent raise, unless ``allow_unknown``."""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if not allow_unknown:
        bad = unknown_chars(tokenizer, "".join(m["content"] for m in messages))
        if bad:
            names = ", ".join(f"{c!r} (U+{ord(c):04X})" for c in bad)
            raise ValueError(f"the prompt has characters this tokenizer cannot represent: {names}")
    if not chat_template:
        text = "".join(m["content"] for m in messages)
    elif getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("this tokenizer has no chat template; pass chat_template=False for a Base model")
    else:
        text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def strip_answer(ids: Sequence[int], cfg: LLaDAConfig) -> List[int]:
    """Generated ids up to (not including) the first eos or eot, with any left-over mask removed."""
    ends = set(cfg.end_token_ids)
    out = []
    for t in map(int, ids):
        if t in ends:
            break
        if t != cfg.mask_token_id:
            out.append(t)
    return out


def decode_answer(tokenizer, ids: Sequence[int], cfg: LLaDAConfig) -> str:
    """The answer text: :func:`strip_answer`, then decoded with special tokens skipped."""
    return tokenizer.decode(strip_answer(ids, cfg), skip_special_tokens=True)
