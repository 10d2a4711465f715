"""Image captioning (ViT-GPT2 style VisionEncoderDecoder and BLIP engines).

The vision encoder and the cross-attention keys / values (``cross_kv``) run once per image; greedy /
beam search runs in the C++ core (``fastgen._core.caption_search``), which calls back here for each
decoder step and tells us when to reorder the self-attention KV cache (``np.take`` along the row axis).
The cross-attention keys / values stay one per image: the decoder graph attends each row (the beams of
an image are consecutive rows) to its image's, so they are neither repeated per beam nor reordered.
Engines exported before ``cross_kv`` existed (their decoder takes ``encoder_hidden_states``) still run,
recomputing the cross-attention projections every step. With the same engine, images and settings the
token ids equal transformers' ``generate(do_sample=False)``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import _core
from ..errors import InvalidArgumentError, ManifestError, ModelLoadError, UnsupportedError
from .._args import check_float, check_int
from ..image import load_image
from .base import Pipeline

MAX_IMAGES_PER_CALL = 256


@dataclass
class CaptionOutput:
    """``texts[i]`` / ``token_ids[i]``: for image i // num_return_sequences, candidate i % num_return_sequences."""

    texts: list[str]
    token_ids: list[list[int]]
    scores: list[float] | None = None
    timings: dict[str, float] = field(default_factory=dict)


class CaptioningPipeline(Pipeline):
    """``pipe(images, prompt=None, max_new_tokens=20, num_beams=1, ...)`` -> CaptionOutput."""

    kind = "captioning"

    def __init__(self, manifest, **kw):
        super().__init__(manifest, **kw)
        c = manifest.config
        try:
            self._pre = dict(c["preprocess"])
            self._gen = dict(c["generation"])
            self._dec = dict(c["decoder"])
            size = self._pre["size"]
            self._h, self._w = int(size["height"]), int(size["width"])
            self._mean = np.asarray(self._pre["image_mean"], dtype=np.float32)
            self._std = np.asarray(self._pre["image_std"], dtype=np.float32)
            self._layers = int(self._dec["num_layers"])
            self._heads = int(self._dec["num_heads"])
            self._head_dim = int(self._dec["head_dim"])
            self._start = [int(t) for t in self._gen["decoder_start_token_ids"]]
            self._eos = [int(t) for t in self._gen.get("eos_token_ids") or []]
            pad = self._gen.get("pad_token_id")
            self._pad = None if pad is None else int(pad)
        except (KeyError, TypeError, ValueError) as e:
            raise ManifestError(f"captioning engine {manifest.root}: bad or missing config entry: {e}") from e
        if not self._start:
            raise ManifestError("captioning engine: generation.decoder_start_token_ids is empty")
        self._tok = None
        self._past_names = [f"past_key_values.{i}.{kv}" for i in range(self._layers) for kv in ("key", "value")]
        self._present_names = [f"present.{i}.{kv}" for i in range(self._layers) for kv in ("key", "value")]
        self._cross_names = [f"cross_key_values.{i}.{kv}" for i in range(self._layers) for kv in ("key", "value")]
        dec_inputs = manifest.component("text_decoder").inputs
        # the decoder form: cross K/V per image (cross_kv component), or the older encoder_hidden_states one
        self._legacy = "encoder_hidden_states" in dec_inputs
        if not self._legacy:
            missing = [n for n in self._cross_names if n not in dec_inputs]
            if missing or not manifest.has("cross_kv"):
                raise ManifestError(f"captioning engine {manifest.root}: text_decoder takes neither "
                                    "encoder_hidden_states nor cross_key_values.{i}.key|value with a cross_kv "
                                    f"component (missing: {', '.join(missing[:4]) or 'cross_kv'}); re-export it")

    # ---------------------------------------------------------------- pieces
    @property
    def tokenizer(self):
        if self._tok is None:
            spec = self.manifest.tokenizers.get("tokenizer")
            if spec is None:
                raise ManifestError("captioning engine has no 'tokenizer' entry")
            try:
                from tokenizers import Tokenizer

                tok = Tokenizer.from_file(spec.path)
            except Exception as e:
                raise ModelLoadError(f"cannot load tokenizer {spec.path}: {e}") from e
            tok.no_padding()
            tok.no_truncation()
            self._tok = tok
        return self._tok

    def preprocess(self, images: list) -> np.ndarray:
        """pixel_values [n, 3, H, W] float32, equal to the model's (PIL backend) image processor."""
        from PIL import Image

        p = self._pre
        out = []
        for i, im in enumerate(images):
            im = load_image(im, what=f"images[{i}]")
            if p.get("do_convert_rgb", True) or im.mode not in ("RGB",):
                im = im.convert("RGB")
            if p.get("do_resize", True) and im.size != (self._w, self._h):
                im = im.resize((self._w, self._h), resample=Image.Resampling(int(p.get("resample", 2))))
            x = np.asarray(im)
            x = np.moveaxis(x, -1, 0)
            if p.get("do_rescale", True):
                x = (x.astype(np.float64) * float(p.get("rescale_factor", 1 / 255))).astype(np.float32)
            if p.get("do_normalize", True):
                x = x.astype(np.float32) if x.dtype != np.float32 else x
                x = (x - self._mean[:, None, None]) / self._std[:, None, None]
            out.append(np.ascontiguousarray(x, dtype=np.float32))
        if len({a.shape for a in out}) != 1:
            raise InvalidArgumentError("images have different sizes and this engine does not resize them "
                                       f"(do_resize false): {sorted({a.shape[1:] for a in out})}")
        return np.stack(out)

    def _prompt_ids(self, prompt: Any, n: int) -> np.ndarray:
        if prompt is None:
            return np.tile(np.asarray(self._start, dtype=np.int64), (n, 1))
        if self._gen.get("prompt") != "bos_replaces_first_drop_last":
            raise UnsupportedError(f"this {self.manifest.family} engine does not take a text prompt")
        prompts = [prompt] * n if isinstance(prompt, str) else prompt
        if not isinstance(prompts, (list, tuple)) or len(prompts) != n or not all(isinstance(p, str) for p in prompts):
            raise InvalidArgumentError(f"prompt must be a string or a list of {n} strings (one per image)")
        rows = []
        for p in prompts:
            ids = list(self.tokenizer.encode(p).ids)
            if len(ids) < 2:
                ids = self._start + [0]
            ids[0] = self._start[0]  # BLIP: bos replaces [CLS], the trailing [SEP] is dropped
            rows.append(ids[:-1])
        if len({len(r) for r in rows}) != 1:
            raise InvalidArgumentError("prompts must tokenize to the same length (no padding in captioning batches)")
        return np.asarray(rows, dtype=np.int64)

    # ---------------------------------------------------------------- call
    def __call__(self, images, prompt: Any = None, *, max_new_tokens: int = 20, num_beams: int = 1,
                 length_penalty: float = 1.0, no_repeat_ngram_size: int = 0, early_stopping: Any = False,
                 num_return_sequences: int = 1, repetition_penalty: float = 1.0) -> CaptionOutput:
        t0 = time.perf_counter()
        if not isinstance(images, (list, tuple)):
            images = [images]
        if len(images) == 0:
            raise InvalidArgumentError("images is empty: pass at least one image")
        if len(images) > MAX_IMAGES_PER_CALL:
            raise InvalidArgumentError(f"at most {MAX_IMAGES_PER_CALL} images per call, got {len(images)}")
        max_new_tokens = check_int("max_new_tokens", max_new_tokens, 1, 4096)
        num_beams = check_int("num_beams", num_beams, 1, 64)
        num_return_sequences = check_int("num_return_sequences", num_return_sequences, 1, num_beams)
        no_repeat_ngram_size = check_int("no_repeat_ngram_size", no_repeat_ngram_size, 0, 4096)
        length_penalty = check_float("length_penalty", length_penalty)
        repetition_penalty = check_float("repetition_penalty", repetition_penalty, 0.0, open_lo=True)
        if not (early_stopping is True or early_stopping is False or early_stopping == "never"):
            raise InvalidArgumentError(f'early_stopping must be True, False or "never", got {early_stopping!r}')
        pixels = self.preprocess(list(images))
        n = pixels.shape[0]
        prompt_ids = self._prompt_ids(prompt, n)
        t1 = time.perf_counter()
        enc = self.session("vision_encoder").run({"pixel_values": pixels}, ["encoder_hidden_states"])
        ehs = enc["encoder_hidden_states"].astype(np.float32, copy=False)
        t2 = time.perf_counter()
        if self._legacy:
            fixed = {"encoder_hidden_states": np.repeat(ehs, num_beams, axis=0) if num_beams > 1 else ehs}
        else:  # one set per image, fed unchanged to every step
            fixed = self.session("cross_kv").run({"encoder_hidden_states": ehs}, self._cross_names)
        del enc, ehs
        t3 = time.perf_counter()
        dec = self.session("text_decoder")
        rows = n * num_beams
        state: dict[str, Any] = {
            "past": [np.zeros((rows, self._heads, 0, self._head_dim), np.float32) for _ in self._past_names]}

        def step(ids: np.ndarray, reorder):
            past = state["past"]
            if reorder is not None:
                past = [np.take(p, reorder, axis=0) for p in past]
            feeds = {"input_ids": ids, **fixed}
            feeds.update(zip(self._past_names, past))
            out = dec.run(feeds, ["logits", *self._present_names])
            state["past"] = [out[k] for k in self._present_names]
            return np.ascontiguousarray(out["logits"], dtype=np.float32)

        seqs, scores, steps = _core.caption_search(
            prompt_ids, step, max_new_tokens=max_new_tokens, num_beams=num_beams,
            num_return_sequences=num_return_sequences, length_penalty=length_penalty, early_stopping=early_stopping,
            no_repeat_ngram_size=no_repeat_ngram_size, repetition_penalty=repetition_penalty,
            eos_token_ids=self._eos, pad_token_id=self._pad)
        state.clear()
        fixed.clear()
        t4 = time.perf_counter()
        token_ids = [[int(t) for t in row] for row in seqs]
        texts = self.decode(token_ids)
        return CaptionOutput(texts=texts, token_ids=token_ids,
                             scores=None if scores is None else [float(s) for s in scores],
                             timings={"preprocess": t1 - t0, "vision_encoder": t2 - t1, "cross_kv": t3 - t2,
                                      "decode": t4 - t3,
                                      "decoder_steps": float(steps), "total": time.perf_counter() - t0})

    def decode(self, token_ids: list[list[int]]) -> list[str]:
        """Token ids -> text with special tokens skipped (like ``batch_decode(skip_special_tokens=True)``)."""
        return [s.strip() for s in self.tokenizer.decode_batch(token_ids, skip_special_tokens=True)]
