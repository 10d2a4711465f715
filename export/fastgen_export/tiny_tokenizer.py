"""Small, real CLIP byte-level BPE tokenizers built offline from a word list.

Tests and the demo model need a CLIP tokenizer without a model hub. This builds the same kind of
tokenizer as openai/clip-vit-*: the 256 byte symbols (plain and with the ``</w>`` end-of-word
marker), BPE merges that assemble each given word, and the ``<|startoftext|>`` / ``<|endoftext|>``
specials. Words outside the list still tokenize (to bytes), exactly as CLIP would do with unknown
merges.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable


def _byte_symbols() -> list[str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return list(bytes_to_unicode().values())


def make_clip_tokenizer(out_dir: str | os.PathLike, words: Iterable[str], *, model_max_length: int = 77,
                        pad_token: str | None = None):
    """Write vocab.json / merges.txt into ``out_dir`` and return a transformers ``CLIPTokenizer``.

    ``pad_token`` defaults to ``<|endoftext|>`` (SD 1.x); SDXL's second tokenizer uses ``"!"``.
    """
    from transformers import CLIPTokenizer

    os.makedirs(out_dir, exist_ok=True)
    symbols = _byte_symbols()
    vocab: dict[str, int] = {}
    for s in symbols:
        vocab[s] = len(vocab)
    for s in symbols:
        vocab[s + "</w>"] = len(vocab)
    merges: dict[str, None] = {}
    for w in sorted({w.lower() for w in words if w}):
        pieces = list(w[:-1]) + [w[-1] + "</w>"]
        while len(pieces) > 1:
            a, b = pieces[0], pieces[1]
            merges[f"{a} {b}"] = None
            vocab.setdefault(a + b, len(vocab))
            pieces = [a + b] + pieces[2:]
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    vocab_file = os.path.join(out_dir, "vocab.json")
    merges_file = os.path.join(out_dir, "merges.txt")
    with open(vocab_file, "w", encoding="utf-8") as f:
        json.dump(vocab, f)
    with open(merges_file, "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    kwargs = {"model_max_length": model_max_length}
    if pad_token is not None:
        kwargs["pad_token"] = pad_token
    return CLIPTokenizer(vocab_file, merges_file, **kwargs)
