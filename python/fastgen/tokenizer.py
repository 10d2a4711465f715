"""Prompt tokenisation with the `tokenizers` library, padded and truncated like diffusers does."""

from __future__ import annotations

import numpy as np

from .errors import ModelLoadError
from .manifest import TokenizerSpec


class PromptTokenizer:
    """``tokenizer(prompts, padding="max_length", max_length=L, truncation=True)`` as int64 ids."""

    def __init__(self, spec: TokenizerSpec):
        try:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(spec.path)
        except Exception as e:
            raise ModelLoadError(f"tokenizer {spec.name!r}: cannot load {spec.path}: {e}") from e
        self.name = spec.name
        self.max_length = spec.max_length
        pad_id = spec.pad_token_id
        if pad_id is None:
            pad_id = tok.padding["pad_id"] if tok.padding else 0
        self.pad_token_id = int(pad_id)
        pad_token = tok.id_to_token(self.pad_token_id)
        if pad_token is None:
            raise ModelLoadError(f"tokenizer {spec.name!r}: pad_token_id {pad_id} is not in its vocabulary")
        tok.enable_truncation(self.max_length)
        tok.enable_padding(length=self.max_length, pad_id=self.pad_token_id, pad_token=pad_token)
        self._tok = tok

    def __call__(self, prompts: list[str]) -> np.ndarray:
        encs = self._tok.encode_batch(list(prompts))
        return np.array([e.ids for e in encs], dtype=np.int64).reshape(len(prompts), self.max_length)
