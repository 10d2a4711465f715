"""Tokenizers -> ``tokenizer.json`` files the ``tokenizers`` library loads.

Text encoders (``prompt_padding=True``): diffusers tokenizes every prompt with
``padding="max_length", max_length=L, truncation=True``. The exported ``tokenizer.json`` has exactly
that padding and truncation enabled, so the runtime's ``Tokenizer.from_file(path).encode(text).ids``
*is* the pipeline's ``input_ids``. The export checks this on a set of prompts (empty, mixed case,
punctuation, unicode, over-long) against the transformers tokenizer and fails if any id differs.

Captioners (``prompt_padding=False``): no padding or truncation; encoding is checked against
transformers, and whether decoding matches ``batch_decode`` is recorded.

Either way a degenerate tokenizer (fewer than :data:`MIN_VOCAB` tokens, or one that turns a plain
English prompt into nothing but special / unknown tokens) is refused: an engine built on it could only
ever see the same few ids.
"""

from __future__ import annotations

import os
from typing import Any

from fastgen.errors import ExportError

from .sources import import_class
from .spec import TokenizerSpec

__all__ = ["export_tokenizer", "CHECK_PROMPTS", "MIN_VOCAB", "PLAIN_PROMPT"]

CHECK_PROMPTS = (
    "",
    "a photo of a cat",
    "A Photo OF a CAT, red!  and   a blue dog.",
    "caf\u00e9 \u6771\u4eac \U0001f431 na\u00efve \u2014 \"quoted\" (parens) 3.14",
    "line one\nline two\ttabbed",
    " ".join(["a very long prompt about a red circle and a blue square"] * 40),
)
#: smallest vocabulary (added tokens included) a tokenizer may have
MIN_VOCAB = 2
#: a prompt every usable tokenizer encodes to at least one ordinary (not special, not unknown) token
PLAIN_PROMPT = "a photo of a cat"
_CAPTION_CHECKS = ("a photo of", "two dogs on the grass")
_CAPTION_DECODE = ("a photo of a cat, sitting on the grass.", "two dogs ; and a 'red' car!")


def _load(spec: TokenizerSpec):
    if spec.source_class is None:
        from transformers import AutoTokenizer

        cls, label = AutoTokenizer, "AutoTokenizer"
    else:
        library, cls_name = spec.source_class
        cls = import_class(library, cls_name, entry=spec.name, base="PreTrainedTokenizerBase")
        label = cls_name
    try:
        return cls.from_pretrained(spec.folder)
    except Exception as e:
        raise ExportError(f"cannot load tokenizer {label} from {spec.folder}: {e}") from e


def _check_not_degenerate(tok, fast, spec: TokenizerSpec) -> None:
    size = fast.get_vocab_size(with_added_tokens=True)
    if size < MIN_VOCAB:
        raise ExportError(f"{spec.name} in {spec.folder} has {size} token(s) in its vocabulary; a tokenizer "
                          f"needs at least {MIN_VOCAB} to encode anything")
    special = {int(i) for i in tok.all_special_ids}
    if tok.unk_token_id is not None:
        special.add(int(tok.unk_token_id))
    ids = fast.encode(PLAIN_PROMPT).ids
    if not [i for i in ids if i not in special]:
        raise ExportError(f"{spec.name} in {spec.folder} encodes {PLAIN_PROMPT!r} to {list(ids)[:16]}: only "
                          "special / unknown tokens; it cannot tokenize ordinary prompts")


def export_tokenizer(spec: TokenizerSpec, out_path: str) -> dict[str, Any]:
    """Write ``out_path`` (tokenizer.json) and return its manifest entry (without ``path``)."""
    from tokenizers import Tokenizer

    tok = _load(spec)
    cls_name = type(tok).__name__ if spec.source_class is None else spec.source_class[1]
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise ExportError(f"tokenizer {cls_name} in {spec.folder} has no `tokenizers` backend to export")
    fast = Tokenizer.from_str(backend.to_str())
    fast.no_padding()
    fast.no_truncation()
    _check_not_degenerate(tok, fast, spec)
    if not spec.prompt_padding:
        return _export_plain(tok, fast, cls_name, out_path)

    length = int(spec.max_length or tok.model_max_length)
    if length <= 0 or length > 100_000:
        raise ExportError(f"tokenizer in {spec.folder} has no usable max length ({length}); pass max_length")
    if tok.pad_token_id is None:
        raise ExportError(f"tokenizer in {spec.folder} has no pad token; diffusers pads prompts to {length}")
    fast.enable_truncation(length, strategy="longest_first", direction=tok.truncation_side)
    fast.enable_padding(direction=tok.padding_side, pad_id=tok.pad_token_id, pad_token=tok.pad_token, length=length)
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    fast.save(out_path)

    reloaded = Tokenizer.from_file(out_path)
    for prompt in CHECK_PROMPTS:
        want = tok(prompt, padding="max_length", max_length=length, truncation=True).input_ids
        got = reloaded.encode(prompt).ids
        if list(want) != list(got):
            raise ExportError(f"exported tokenizer {out_path} does not reproduce {cls_name} on {prompt[:40]!r}: "
                              f"{list(got)[:12]}... vs {list(want)[:12]}...")
    return {
        "class": cls_name,
        "max_length": length,
        "pad_token_id": int(tok.pad_token_id),
        "pad_token": str(tok.pad_token),
        "bos_token_id": None if tok.bos_token_id is None else int(tok.bos_token_id),
        "eos_token_id": None if tok.eos_token_id is None else int(tok.eos_token_id),
        "padding": "max_length",
        "truncation": True,
        "padding_side": tok.padding_side,
        "truncation_side": tok.truncation_side,
        "checked_prompts": len(CHECK_PROMPTS),
    }


def _export_plain(tok, fast, cls_name: str, out_path: str) -> dict[str, Any]:
    from tokenizers import Tokenizer

    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    fast.save(out_path)
    reloaded = Tokenizer.from_file(out_path)
    for text in _CAPTION_CHECKS:
        if reloaded.encode(text).ids != tok(text).input_ids:
            raise ExportError(f"exported tokenizer does not reproduce {cls_name} on {text!r}")
    # decoding (skip_special_tokens) must match transformers' batch_decode too (cleanup of spaces, ...)
    samples = [tok(t).input_ids for t in _CAPTION_DECODE]
    decode_ok = [reloaded.decode(ids, skip_special_tokens=True).strip() for ids in samples] == \
        [s.strip() for s in tok.batch_decode(samples, skip_special_tokens=True)]
    return {"class": cls_name, "max_length": int(min(tok.model_max_length, 65536)),
            "decode_matches_transformers": bool(decode_ok),
            "pad_token_id": None if tok.pad_token_id is None else int(tok.pad_token_id),
            "special_token_ids": sorted(int(i) for i in tok.all_special_ids)}
