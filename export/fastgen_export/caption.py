"""Image captioners (transformers ``save_pretrained`` folders) -> a fastgen "captioning" engine.

Supported: ``VisionEncoderDecoderModel`` (e.g. ViT encoder + GPT-2 decoder) and
``BlipForConditionalGeneration``. The engine holds three graphs (see docs/engine-format.md, "captioning"):

* ``vision_encoder``: pixel_values [batch, 3, H, W] -> encoder_hidden_states [batch, enc_seq, hidden]
  (ViT-GPT2: including the encoder-to-decoder projection when the model has one).
* ``cross_kv``: encoder_hidden_states [images, enc_seq, hidden] -> every decoder layer's cross-attention
  keys / values ``cross_key_values.{i}.key|value`` [images, heads, enc_seq, head_dim], computed once per
  image (transformers caches the same tensors in the cross-attention half of its ``EncoderDecoderCache``).
* ``text_decoder``: one merged graph with a self-attention KV cache. Inputs ``input_ids`` [rows, seq],
  ``cross_key_values.{i}.key|value`` (one per image: rows = images x beams, the beams of an image in
  consecutive rows, and each row attends to its image's keys / values) and
  ``past_key_values.{i}.key|value`` [rows, heads, past, head_dim] (past may be 0 long on the first step);
  outputs ``logits`` [rows, vocab] (last position only) and ``present.{i}.key|value``
  [rows, heads, past + seq, head_dim].

Engines from before the cross-attention cache (``cross_attention_cache=False``, kept for compatibility
tests) have no ``cross_kv`` and a ``text_decoder`` that takes ``encoder_hidden_states`` [rows, enc_seq,
hidden] instead and re-projects it every step.

Preprocessing constants (from preprocessor_config.json) and generation defaults go in ``config``.
:class:`CaptionExporter` declares these components; :class:`fastgen_export.base.Exporter` exports them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

from fastgen.errors import ExportError

from . import parity
from .base import Exporter, Log
from .sources import import_class, read_json
from .spec import ComponentSpec, TensorSpec, TokenizerSpec

__all__ = ["ARCHITECTURES", "CaptionExporter", "captioner_family", "export_captioner"]

#: transformers architecture -> captioning family
ARCHITECTURES = {"VisionEncoderDecoderModel": "vit-gpt2", "BlipForConditionalGeneration": "blip"}
_MODEL_TYPES = {"vision-encoder-decoder": "vit-gpt2", "blip": "blip"}
_MODEL_CLASS = {"vit-gpt2": "VisionEncoderDecoderModel", "blip": "BlipForConditionalGeneration"}
#: (images, beams, seq, past) of the text decoder's parity cases: beams > 1, seq > 1, past 0 all covered
_DECODER_CASES = ((1, 3, 1, 5), (2, 1, 3, 0), (2, 3, 1, 4))


def captioner_family(folder: str) -> str | None:
    """The captioning family of a transformers folder; None if it has no config.json or is a diffusers
    folder. An unreadable config.json raises ExportError naming it."""
    cfg_path = os.path.join(folder, "config.json")
    if not os.path.isfile(cfg_path) or os.path.isfile(os.path.join(folder, "model_index.json")):
        return None
    cfg = read_json(cfg_path)
    for arch in cfg.get("architectures") or []:
        if isinstance(arch, str) and arch in ARCHITECTURES:
            return ARCHITECTURES[arch]
    model_type = cfg.get("model_type")
    return _MODEL_TYPES.get(model_type) if isinstance(model_type, str) else None


def _kv_dims(decoder) -> tuple[int, int, int]:
    c = decoder.config
    heads = getattr(c, "num_attention_heads", None) or getattr(c, "n_head")
    hidden = getattr(c, "hidden_size", None) or getattr(c, "n_embd")
    return int(c.num_hidden_layers), int(heads), int(hidden) // int(heads)


def _preprocess_config(folder: str, image_size: int) -> dict[str, Any]:
    path = os.path.join(folder, "preprocessor_config.json")
    p = read_json(path) if os.path.isfile(path) else {}
    size = p.get("size") or {"height": image_size, "width": image_size}
    if isinstance(size, int):
        size = {"height": size, "width": size}
    if "height" not in size or "width" not in size:
        raise ExportError(f"{path}: only size {{height, width}} is supported, got {size}")
    if p.get("do_center_crop"):
        raise ExportError(f"{path}: do_center_crop is not supported for captioning engines")
    return {
        "do_resize": bool(p.get("do_resize", True)),
        "size": {"height": int(size["height"]), "width": int(size["width"])},
        "resample": int(p.get("resample", 2)),
        "do_rescale": bool(p.get("do_rescale", True)),
        "rescale_factor": float(p.get("rescale_factor", 1 / 255)),
        "do_normalize": bool(p.get("do_normalize", True)),
        "image_mean": [float(x) for x in p.get("image_mean", [0.5, 0.5, 0.5])],
        "image_std": [float(x) for x in p.get("image_std", [0.5, 0.5, 0.5])],
        "do_convert_rgb": bool(p.get("do_convert_rgb", True)),
    }


def _generation_config(model, family: str) -> dict[str, Any]:
    g = model.generation_config
    if family == "blip":
        tc = model.config.text_config
        return {"decoder_start_token_ids": [int(tc.bos_token_id)], "eos_token_ids": [int(tc.sep_token_id)],
                "pad_token_id": None if tc.pad_token_id is None else int(tc.pad_token_id),
                "prompt": "bos_replaces_first_drop_last", "max_length": int(g.max_length or 20)}
    start = g.decoder_start_token_id
    if start is None:
        start = model.config.decoder_start_token_id
    if start is None:
        start = g.bos_token_id
    if start is None:
        raise ExportError("the model has no decoder_start_token_id / bos_token_id")
    eos = g.eos_token_id
    eos = [] if eos is None else ([int(eos)] if isinstance(eos, int) else [int(e) for e in eos])
    pad = g.pad_token_id
    if pad is None:
        pad = model.config.pad_token_id
    return {"decoder_start_token_ids": [int(start)], "eos_token_ids": eos,
            "pad_token_id": None if pad is None else int(pad), "prompt": None, "max_length": int(g.max_length or 20)}


class CaptionExporter(Exporter):
    """A transformers captioner folder -> a "captioning" engine (see the module docstring).

    ``cross_attention_cache=False`` writes the older engine form (no ``cross_kv``; the decoder takes
    ``encoder_hidden_states`` and re-projects it every step): only to test that such engines still load.
    """

    dtypes = ("fp32",)

    def __init__(self, root: str, *, cross_attention_cache: bool = True, **options: Any):
        family = captioner_family(root)
        if family is None:
            raise ExportError(f"{root} is not a supported captioning model ({', '.join(ARCHITECTURES)})")
        super().__init__(kind="captioning", family=family, **options)
        self.root, self.cross_attention_cache = root, bool(cross_attention_cache)
        self.model_class = import_class("transformers", _MODEL_CLASS[family], entry="architectures",
                                        base="PreTrainedModel")

    # -- declarations
    def source_info(self) -> dict[str, Any]:
        import torch
        import transformers

        return {"id": os.path.basename(self.root.rstrip(os.sep)), "class": self.model_class.__name__,
                "transformers_version": transformers.__version__, "torch_version": torch.__version__}

    def tokenizer_specs(self) -> Iterable[TokenizerSpec]:
        yield TokenizerSpec("tokenizer", self.root, None, prompt_padding=False)

    def prepare(self) -> None:
        import torch

        from . import wrappers

        try:
            model = self.model_class.from_pretrained(self.root, attn_implementation="eager").eval()
        except Exception as e:
            raise ExportError(f"cannot load {self.model_class.__name__} from {self.root}: {e}") from e
        family = self.family
        self.model = model
        self.decoder = model.text_decoder if family == "blip" else model.decoder
        self.n_layers, self.heads, self.head_dim = _kv_dims(self.decoder)
        self.vocab = int(self.decoder.config.vocab_size)
        vcfg = model.config.vision_config if family == "blip" else model.config.encoder
        self.channels = int(getattr(vcfg, "num_channels", 3))
        self.preprocess = _preprocess_config(self.root, int(getattr(vcfg, "image_size", 224)))
        self.vision = wrappers.CaptionVisionEncoder(model, family).eval()
        h, w = self.preprocess["size"]["height"], self.preprocess["size"]["width"]
        with torch.no_grad():
            out = self.vision(torch.zeros(1, self.channels, h, w))
        self.enc_seq, self.enc_hidden = int(out.shape[1]), int(out.shape[2])
        self.export_dims, self.parity_dims = {"batch": 2}, {"batch": 3}

    def components(self) -> Iterator[ComponentSpec]:
        import torch

        from . import wrappers

        T = TensorSpec
        n, heads, head_dim, enc_seq, enc_hidden = (self.n_layers, self.heads, self.head_dim, self.enc_seq,
                                                   self.enc_hidden)
        h, w = self.preprocess["size"]["height"], self.preprocess["size"]["width"]
        yield ComponentSpec(
            "vision_encoder", self.vision, [T("pixel_values", "float32", ("batch", self.channels, h, w))],
            [T("encoder_hidden_states", "float32", ("batch", enc_seq, enc_hidden))],
            lambda dims, gen: (torch.randn(dims["batch"], self.channels, h, w, generator=gen),))

        cross_names = [f"cross_key_values.{i}.{kv}" for i in range(n) for kv in ("key", "value")]
        past_names = [f"past_key_values.{i}.{kv}" for i in range(n) for kv in ("key", "value")]
        present_names = [f"present.{i}.{kv}" for i in range(n) for kv in ("key", "value")]
        cross = wrappers.CrossKV(self.decoder, self.family).eval()
        legacy = wrappers.LegacyTextDecoder(self.decoder, n, self.family).eval()
        if self.cross_attention_cache:
            yield ComponentSpec(
                "cross_kv", cross, [T("encoder_hidden_states", "float32", ("images", enc_seq, enc_hidden))],
                [T(name, "float32", ("images", heads, enc_seq, head_dim)) for name in cross_names],
                lambda dims, gen: (torch.randn(dims["batch"], enc_seq, enc_hidden, generator=gen),))

        def dec_inputs(gen, images: int, beams: int, seq: int, past: int):
            """(inputs of the exported decoder, inputs of transformers' own forward: the reference)."""
            rows = images * beams
            ids = torch.randint(0, self.vocab, (rows, seq), generator=gen)
            ehs = torch.randn(images, enc_seq, enc_hidden, generator=gen)
            pk = [torch.randn(rows, heads, past, head_dim, generator=gen) for _ in past_names]
            ref_in = [ids, ehs.repeat_interleave(beams, dim=0), *pk]
            if not self.cross_attention_cache:
                return ref_in, ref_in
            with torch.no_grad():
                ckv = list(cross(ehs))
            return [ids, *ckv, *pk], ref_in

        def parity_cases(gen):
            # reference: transformers' own decoder forward on encoder_hidden_states repeated per beam (the
            # cross-attention projected from them), so the cached form is checked against the real thing
            for images, beams, seq, past in _DECODER_CASES:
                inp, ref_in = dec_inputs(gen, images, beams, seq, past)
                with torch.no_grad():
                    ref = legacy(*[t.clone() for t in ref_in])
                yield f"images {images}, beams {beams}, seq {seq}, past {past}", tuple(inp), ref

        past = [T(name, "float32", ("rows", heads, "past", head_dim)) for name in past_names]
        outputs = [T("logits", "float32", ("rows", self.vocab))] + \
            [T(name, "float32", ("rows", heads, "total", head_dim)) for name in present_names]
        if not self.cross_attention_cache:
            yield ComponentSpec(
                "text_decoder", legacy, [T("input_ids", "int64", ("rows", "seq")),
                                         T("encoder_hidden_states", "float32", ("rows", enc_seq, enc_hidden)), *past],
                outputs, lambda dims, gen: tuple(dec_inputs(gen, 2, 1, 2, 3)[0]), parity_cases=parity_cases)
            return
        slot: dict[int, tuple] = {}
        undo_patch = wrappers.patch_cross_attention(self.decoder, self.family, slot)
        try:
            dec = wrappers.TextDecoder(self.decoder, n, slot).eval()
            # in torch, even without parity: the patched cross-attention against transformers' own
            example, ref_in = dec_inputs(torch.Generator().manual_seed(0), 2, 2, 2, 3)  # rows != images
            with torch.no_grad():
                got, want = dec(*example), legacy(*ref_in)
            diff = max(float((a - b).abs().max()) for a, b in zip(got, want))
            tol = parity.tolerance_for("fp32", max(float(b.abs().max()) for b in want), self.tolerance)
            if not diff <= tol:
                raise ExportError(f"text_decoder with cached cross-attention differs from transformers' forward by "
                                  f"{diff:.3g} (> {tol:.3g}) in torch; this transformers version may need "
                                  "cross_attention_cache=False")
            cross_in = [T(name, "float32", ("images", heads, enc_seq, head_dim)) for name in cross_names]
            yield ComponentSpec(
                "text_decoder", dec, [T("input_ids", "int64", ("rows", "seq")), *cross_in, *past],
                outputs, lambda dims, gen: tuple(dec_inputs(gen, 2, 2, 2, 3)[0]),  # 2 images x 2 beams when traced
                parity_cases=parity_cases)
        finally:
            undo_patch()

    def config(self) -> dict[str, Any]:
        return {
            "preprocess": self.preprocess,
            "generation": _generation_config(self.model, self.family),
            "decoder": {"num_layers": self.n_layers, "num_heads": self.heads, "head_dim": self.head_dim,
                        "vocab_size": self.vocab, "past_names": "past_key_values.{i}.key|value",
                        "present_names": "present.{i}.key|value",
                        **({"cross_names": "cross_key_values.{i}.key|value", "cross_attention_cache": "per_image"}
                           if self.cross_attention_cache else {})},
            "encoder_seq_len": self.enc_seq, "encoder_hidden_size": self.enc_hidden,
        }


def export_captioner(src: str, out: str, *, dtype: str = "fp32", opset: int = 18, overwrite: bool = False,
                     optimize: bool = False, parity_check: bool = True, tolerance: float | None = None,
                     log: Log | None = None, cross_attention_cache: bool = True) -> str:
    """Export the captioner folder ``src`` to the engine directory ``out`` (see :class:`CaptionExporter`)."""
    exporter = CaptionExporter(os.path.realpath(src), cross_attention_cache=cross_attention_cache, dtype=dtype,
                               opset=opset, optimize=optimize, parity=parity_check, tolerance=tolerance, log=log)
    return exporter.export(out, overwrite=overwrite)
