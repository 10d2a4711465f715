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

from typing import Any

import numpy as np

from .. import _core
from .. import image as imgproc
from .._args import check_float, check_int, check_prompts
from ..errors import InvalidArgumentError, ManifestError, ModelLoadError, UnsupportedError
from ..outputs import CaptionOutput, Timer
from ..requests import CaptionRequest
from .base import Components, Pipeline

__all__ = ["CaptioningPipeline", "CaptionOutput", "pipeline_class"]

MAX_IMAGES_PER_CALL = 256


def pipeline_class(manifest) -> type["CaptioningPipeline"]:
    return CaptioningPipeline


class CaptioningPipeline(Pipeline):
    """``pipe(images, prompt=None, max_new_tokens=20, num_beams=1, ...)`` -> CaptionOutput."""

    kind = "captioning"

    def __init__(self, components: Components):
        super().__init__(components)
        manifest = self.manifest
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

    def preprocess(self, images) -> np.ndarray:
        """pixel_values [n, 3, H, W] float32, equal to the model's (PIL backend) image processor."""
        from PIL import Image

        p = self._pre
        out = []
        for im in imgproc.load_images("images", images):
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

    def _prompt_ids(self, prompts: tuple[str, ...] | None, n: int) -> np.ndarray:
        if prompts is None:
            return np.tile(np.asarray(self._start, dtype=np.int64), (n, 1))
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
    def validate(self, images=None, prompt: Any = None, *, max_new_tokens: int = 20, num_beams: int = 1,
                 length_penalty: float = 1.0, no_repeat_ngram_size: int = 0, early_stopping: Any = False,
                 num_return_sequences: int = 1, repetition_penalty: float = 1.0, **unknown) -> CaptionRequest:
        """Check a call's arguments and return the complete request (images loaded)."""
        self.refuse_unknown(unknown)
        if images is None:
            raise InvalidArgumentError("images is required: an image or a non-empty list of images")
        if isinstance(images, (list, tuple)) and len(images) > MAX_IMAGES_PER_CALL:
            raise InvalidArgumentError(f"at most {MAX_IMAGES_PER_CALL} images per call, got {len(images)}")
        pil = imgproc.load_images("images", images)
        prompts = None
        if prompt is not None:
            if self._gen.get("prompt") != "bos_replaces_first_drop_last":
                raise UnsupportedError(f"this {self.manifest.family} engine does not take a text prompt")
            prompts = tuple(check_prompts("prompt", prompt, len(pil)))
        num_beams = check_int("num_beams", num_beams, 1, 64)
        if not (early_stopping is True or early_stopping is False or early_stopping == "never"):
            raise InvalidArgumentError(f'early_stopping must be True, False or "never", got {early_stopping!r}')
        return CaptionRequest(
            images=pil, prompts=prompts, max_new_tokens=check_int("max_new_tokens", max_new_tokens, 1, 4096),
            num_beams=num_beams, length_penalty=check_float("length_penalty", length_penalty),
            no_repeat_ngram_size=check_int("no_repeat_ngram_size", no_repeat_ngram_size, 0, 4096),
            early_stopping=early_stopping,
            num_return_sequences=check_int("num_return_sequences", num_return_sequences, 1, num_beams),
            repetition_penalty=check_float("repetition_penalty", repetition_penalty, 0.0, open_lo=True))

    def run(self, req: CaptionRequest) -> CaptionOutput:
        if not isinstance(req, CaptionRequest):
            raise InvalidArgumentError(f"run() takes the CaptionRequest made by validate(), got {type(req).__name__}")
        timer = Timer()
        num_beams = req.num_beams
        with timer.stage("preprocess"):
            pixels = self.preprocess(req.images)
            n = pixels.shape[0]
            prompt_ids = self._prompt_ids(req.prompts, n)
        with timer.stage("image_encode"):
            enc = self.session("vision_encoder").run({"pixel_values": pixels}, ["encoder_hidden_states"])
            ehs = enc["encoder_hidden_states"].astype(np.float32, copy=False)
        with timer.stage("cross_kv"):
            if self._legacy:
                fixed = {"encoder_hidden_states": np.repeat(ehs, num_beams, axis=0) if num_beams > 1 else ehs}
            else:  # one set per image, fed unchanged to every step
                fixed = self.session("cross_kv").run({"encoder_hidden_states": ehs}, self._cross_names)
            del enc, ehs
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

        with timer.stage("text_decode"):
            seqs, scores, steps = _core.caption_search(
                prompt_ids, step, max_new_tokens=req.max_new_tokens, num_beams=num_beams,
                num_return_sequences=req.num_return_sequences, length_penalty=req.length_penalty,
                early_stopping=req.early_stopping, no_repeat_ngram_size=req.no_repeat_ngram_size,
                repetition_penalty=req.repetition_penalty, eos_token_ids=self._eos, pad_token_id=self._pad)
            state.clear()
            fixed.clear()
            token_ids = [[int(t) for t in row] for row in seqs]
            texts = self.decode(token_ids)
        timer.add("decoder_steps", steps)
        return CaptionOutput(texts=texts, token_ids=token_ids,
                             scores=None if scores is None else [float(s) for s in scores], timings=timer.finish())

    def decode(self, token_ids: list[list[int]]) -> list[str]:
        """Token ids -> text with special tokens skipped (like ``batch_decode(skip_special_tokens=True)``)."""
        return [s.strip() for s in self.tokenizer.decode_batch(token_ids, skip_special_tokens=True)]
