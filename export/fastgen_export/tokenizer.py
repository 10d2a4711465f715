"""Tokenizers -> ``tokenizer.json`` files the ``tokenizers`` library loads, padded like diffusers.

diffusers tokenizes every prompt with ``padding="max_length", max_length=L, truncation=True``. The
exported ``tokenizer.json`` has exactly that padding and truncation enabled, so the runtime's
``tokenizers.Tokenizer.from_file(path).encode(text).ids`` *is* the pipeline's ``input_ids``. The
export checks this on a set of prompts (empty, mixed case, punctuation, unicode, over-long) against
the transformers tokenizer and fails if any id differs.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from fastgen.errors import ExportError

__all__ = ["export_tokenizer", "CHECK_PROMPTS"]

CHECK_PROMPTS = (
    "",
    "a photo of a cat",
    "A Photo OF a CAT, red!  and   a blue dog.",
    "caf\u00e9 \u6771\u4eac \U0001f431 na\u00efve \u2014 \"quoted\" (parens) 3.14",
    "line one\nline two\ttabbed",
    " ".join(["a very long prompt about a red circle and a blue square"] * 40),
)


def _load(folder: str, library: str, cls_name: str):
    try:
        cls = getattr(importlib.import_module(library), cls_name)
        return cls.from_pretrained(folder)
    except Exception as e:
        raise ExportError(f"cannot load tokenizer {cls_name} from {folder}: {e}") from e


def export_tokenizer(folder: str, library: str, cls_name: str, out_path: str, *,
                     max_length: int | None = None) -> dict[str, Any]:
    """Write ``out_path`` (tokenizer.json) and return its manifest entry (without ``path``).

    ``max_length`` defaults to the tokenizer's ``model_max_length`` (77 for CLIP).
    """
    from tokenizers import Tokenizer

    tok = _load(folder, library, cls_name)
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise ExportError(f"tokenizer {cls_name} in {folder} has no `tokenizers` backend to export")
    length = int(max_length or tok.model_max_length)
    if length <= 0 or length > 100_000:
        raise ExportError(f"tokenizer in {folder} has no usable max length ({length}); pass max_length")
    if tok.pad_token_id is None:
        raise ExportError(f"tokenizer in {folder} has no pad token; diffusers pads prompts to {length}")

    fast = Tokenizer.from_str(backend.to_str())
    fast.no_padding()
    fast.no_truncation()
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
