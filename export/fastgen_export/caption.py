"""Image captioners (transformers ``save_pretrained`` folders) -> a fastgen "captioning" engine.

Supported: ``VisionEncoderDecoderModel`` (e.g. ViT encoder + GPT-2 decoder) and
``BlipForConditionalGeneration``. The engine holds two graphs (see docs/engine-format.md, "captioning"):

* ``vision_encoder``: pixel_values [batch, 3, H, W] -> encoder_hidden_states [batch, enc_seq, hidden]
  (ViT-GPT2: including the encoder-to-decoder projection when the model has one).
* ``text_decoder``: one merged graph with a self-attention KV cache. Inputs ``input_ids`` [rows, seq],
  ``encoder_hidden_states`` and ``past_key_values.{i}.key|value`` [rows, heads, past, head_dim] (past may
  be 0 long on the first step); outputs ``logits`` [rows, vocab] (last position only) and
  ``present.{i}.key|value`` [rows, heads, past + seq, head_dim].

Preprocessing constants (from preprocessor_config.json) and generation defaults go in ``config``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from typing import Any, Callable

from fastgen.errors import ExportError

from . import __version__
from . import manifest as mf
from . import onnx_utils, parity

ARCHITECTURES = {"VisionEncoderDecoderModel": "vit-gpt2", "BlipForConditionalGeneration": "blip"}
Log = Callable[[str], None]


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ExportError(f"cannot read {path}: {e}") from e


def captioner_family(folder: str) -> str | None:
    """The captioning family of a transformers folder, or None if it is not a supported captioner."""
    cfg_path = os.path.join(folder, "config.json")
    if not os.path.isfile(cfg_path) or os.path.isfile(os.path.join(folder, "model_index.json")):
        return None
    try:
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    for arch in cfg.get("architectures") or []:
        if arch in ARCHITECTURES:
            return ARCHITECTURES[arch]
    return {"vision-encoder-decoder": "vit-gpt2", "blip": "blip"}.get(cfg.get("model_type"))


class _TS:  # TensorSpec-like record for mf.io_entry
    def __init__(self, name: str, dtype: str, shape: list):
        self.name, self.dtype, self.shape = name, dtype, shape


def _wrappers(model, family: str):
    import torch
    from transformers import DynamicCache

    class VisionEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, pixel_values):
            if family == "blip":
                return self.m.vision_model(pixel_values=pixel_values)[0]
            h = self.m.encoder(pixel_values=pixel_values)[0]
            dec_cfg = self.m.decoder.config
            if (self.m.encoder.config.hidden_size != dec_cfg.hidden_size
                    and getattr(dec_cfg, "cross_attention_hidden_size", None) is None):
                h = self.m.enc_to_dec_proj(h)
            return h

    decoder = model.text_decoder if family == "blip" else model.decoder
    n_layers = decoder.config.num_hidden_layers

    class TextDecoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.d = decoder

        def forward(self, input_ids, encoder_hidden_states, *past):
            cache = DynamicCache(config=self.d.config)
            for i in range(n_layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            kw: dict[str, Any] = dict(input_ids=input_ids, encoder_hidden_states=encoder_hidden_states,
                                      past_key_values=cache, use_cache=True, return_dict=True)
            if family == "blip":
                kw["encoder_attention_mask"] = torch.ones(encoder_hidden_states.shape[:2], dtype=torch.long)
            out = self.d(**kw)
            pkv = out.past_key_values
            self_cache = getattr(pkv, "self_attention_cache", pkv)
            presents = []
            for i in range(n_layers):
                layer = self_cache.layers[i]
                presents += [layer.keys, layer.values]
            return (out.logits[:, -1, :].float(), *presents)

    return VisionEncoder().eval(), TextDecoder().eval(), decoder


def _kv_dims(decoder) -> tuple[int, int, int]:
    c = decoder.config
    heads = getattr(c, "num_attention_heads", None) or getattr(c, "n_head")
    hidden = getattr(c, "hidden_size", None) or getattr(c, "n_embd")
    return int(c.num_hidden_layers), int(heads), int(hidden) // int(heads)


def _preprocess_config(folder: str, image_size: int) -> dict[str, Any]:
    path = os.path.join(folder, "preprocessor_config.json")
    p = _read_json(path) if os.path.isfile(path) else {}
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


def _export_tokenizer(folder: str, out_path: str) -> dict[str, Any]:
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(folder)
    except Exception as e:
        raise ExportError(f"cannot load the tokenizer saved in {folder}: {e}") from e
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise ExportError(f"tokenizer {type(tok).__name__} in {folder} has no `tokenizers` backend")
    fast = Tokenizer.from_str(backend.to_str())
    fast.no_padding()
    fast.no_truncation()
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    fast.save(out_path)
    re = Tokenizer.from_file(out_path)
    for text in ("a photo of", "two dogs on the grass"):
        if re.encode(text).ids != tok(text).input_ids:
            raise ExportError(f"exported tokenizer does not reproduce {type(tok).__name__} on {text!r}")
    # decoding (skip_special_tokens) must match transformers' batch_decode too (cleanup of spaces, ...)
    samples = [tok(t).input_ids for t in ("a photo of a cat, sitting on the grass.", "two dogs ; and a 'red' car!")]
    decode_ok = [re.decode(ids, skip_special_tokens=True).strip() for ids in samples] == \
        [s.strip() for s in tok.batch_decode(samples, skip_special_tokens=True)]
    return {"class": type(tok).__name__, "max_length": int(min(tok.model_max_length, 65536)),
            "decode_matches_transformers": bool(decode_ok),
            "pad_token_id": None if tok.pad_token_id is None else int(tok.pad_token_id),
            "special_token_ids": sorted(int(i) for i in tok.all_special_ids)}


def export_captioner(src: str, out: str, *, dtype: str = "fp32", opset: int = 18, overwrite: bool = False, parity_check: bool = True,
                     tolerance: float | None = None, log: Log | None = None,
                     check_output: Callable[[str, bool], None] | None = None,
                     commit: Callable[[str, str, bool], None] | None = None) -> str:
    """Export the captioner folder ``src`` to the engine directory ``out`` (see module docstring)."""
    import torch
    import transformers

    log = log or (lambda m: None)
    if dtype != "fp32":
        raise ExportError(f"captioning engines are exported in fp32 only, got dtype {dtype!r}")
    root = os.path.realpath(src)
    family = captioner_family(root)
    if family is None:
        raise ExportError(f"{src} is not a supported captioning model (VisionEncoderDecoderModel, "
                          "BlipForConditionalGeneration)")
    out = os.path.abspath(out)
    if check_output:
        check_output(out, overwrite)
    elif os.path.lexists(out) and not overwrite:
        raise ExportError(f"output {out} already exists (use overwrite=True / --overwrite to replace it)")
    t_start = time.perf_counter()
    cls = getattr(transformers, {"vit-gpt2": "VisionEncoderDecoderModel",
                                 "blip": "BlipForConditionalGeneration"}[family])
    try:
        model = cls.from_pretrained(root, attn_implementation="eager").eval()
    except Exception as e:
        raise ExportError(f"cannot load {cls.__name__} from {root}: {e}") from e

    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.partial-", dir=parent)
    try:
        os.chmod(work, 0o777 & ~mf.current_umask())
        import onnx
        import onnxruntime

        man = mf.base_manifest(kind="captioning", family=family, source={
            "id": os.path.basename(root.rstrip(os.sep)), "class": cls.__name__,
            "transformers_version": transformers.__version__, "torch_version": torch.__version__},
            exporter={"name": "fastgen_export", "version": __version__, "opset": opset, "dtype": "fp32",
                      "torch_exporter": "torchscript", "onnx_version": onnx.__version__,
                      "onnxruntime_version": onnxruntime.__version__, "created": mf.utc_now()})
        man.pop("scheduler", None)
        enc, dec, decoder = _wrappers(model, family)
        vcfg = model.config.vision_config if family == "blip" else model.config.encoder
        image_size = int(getattr(vcfg, "image_size", 224))
        channels = int(getattr(vcfg, "num_channels", 3))
        pre = _preprocess_config(root, image_size)
        h, w = pre["size"]["height"], pre["size"]["width"]
        gen = torch.Generator().manual_seed(0)
        n_layers, heads, head_dim = _kv_dims(decoder)
        vocab = int(decoder.config.vocab_size)

        # vision encoder
        pix = torch.randn(2, channels, h, w, generator=gen)
        with torch.no_grad():
            enc_out = enc(pix)
        enc_seq, enc_hidden = int(enc_out.shape[1]), int(enc_out.shape[2])
        comps: dict[str, dict[str, Any]] = {}
        rel = "vision_encoder/model.onnx"
        os.makedirs(os.path.join(work, "vision_encoder"))
        ext = onnx_utils.export_module(enc, (pix,), os.path.join(work, rel), input_names=["pixel_values"],
                                       output_names=["encoder_hidden_states"],
                                       dynamic_axes={"pixel_values": {0: "batch"},
                                                     "encoder_hidden_states": {0: "batch"}}, opset=opset)
        onnx_utils.check_graph(os.path.join(work, rel))
        rec = None
        if parity_check:
            p1 = torch.randn(3, channels, h, w, generator=gen)
            with torch.no_grad():
                ref = enc(p1)
            rec = parity.compare(os.path.join(work, rel), ["pixel_values"], ["encoder_hidden_states"], [p1], [ref],
                                 dtype="fp32", tolerance=tolerance)
            _check(rec, "vision_encoder")
        spec = type("S", (), {"inputs": [_TS("pixel_values", "float32", ["batch", channels, h, w])],
                              "outputs": [_TS("encoder_hidden_states", "float32", ["batch", enc_seq, enc_hidden])]})
        comps["vision_encoder"] = mf.component_entry(spec, rel, dtype="fp32",
                                                     external_data=onnx_utils.external_data_path(rel) if ext else None,
                                                     parity=rec)
        log(f"vision_encoder: {family}, {enc_seq} x {enc_hidden} ({time.perf_counter() - t_start:.1f}s)")

        # text decoder (merged: past may be empty)
        t0 = time.perf_counter()
        past_names = [f"past_key_values.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]
        present_names = [f"present.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]

        def dec_inputs(rows: int, seq: int, past: int):
            ids = torch.randint(0, vocab, (rows, seq), generator=gen)
            ehs = torch.randn(rows, enc_seq, enc_hidden, generator=gen)
            pk = [torch.randn(rows, heads, past, head_dim, generator=gen) for _ in past_names]
            return [ids, ehs, *pk]

        example = dec_inputs(2, 2, 3)
        dyn = {"input_ids": {0: "rows", 1: "seq"}, "encoder_hidden_states": {0: "rows"}, "logits": {0: "rows"}}
        for n in past_names:
            dyn[n] = {0: "rows", 2: "past"}
        for n in present_names:
            dyn[n] = {0: "rows", 2: "total"}
        rel = "text_decoder/model.onnx"
        os.makedirs(os.path.join(work, "text_decoder"))
        in_names = ["input_ids", "encoder_hidden_states", *past_names]
        out_names = ["logits", *present_names]
        ext = onnx_utils.export_module(dec, example, os.path.join(work, rel), input_names=in_names,
                                       output_names=out_names, dynamic_axes=dyn, opset=opset)
        onnx_utils.check_graph(os.path.join(work, rel))
        rec = None
        if parity_check:
            records = []
            for rows, seq, past in ((3, 1, 5), (2, 3, 0)):
                inp = dec_inputs(rows, seq, past)
                with torch.no_grad():
                    ref = dec(*[t.clone() for t in inp])
                r = parity.compare(os.path.join(work, rel), in_names, out_names, inp, ref, dtype="fp32",
                                   tolerance=tolerance)
                _check(r, f"text_decoder (rows {rows}, seq {seq}, past {past})")
                records.append(r)
            rec = max(records, key=lambda r: r["max_abs"])
        spec = type("S", (), {
            "inputs": [_TS("input_ids", "int64", ["rows", "seq"]),
                       _TS("encoder_hidden_states", "float32", ["rows", enc_seq, enc_hidden])]
            + [_TS(n, "float32", ["rows", heads, "past", head_dim]) for n in past_names],
            "outputs": [_TS("logits", "float32", ["rows", vocab])]
            + [_TS(n, "float32", ["rows", heads, "total", head_dim]) for n in present_names]})
        comps["text_decoder"] = mf.component_entry(spec, rel, dtype="fp32",
                                                   external_data=onnx_utils.external_data_path(rel) if ext else None,
                                                   parity=rec)
        log(f"text_decoder: {n_layers} layers, {heads} heads x {head_dim}, vocab {vocab} "
            f"({time.perf_counter() - t0:.1f}s)")
        man["components"] = comps

        tok_entry = _export_tokenizer(root, os.path.join(work, "tokenizer", "tokenizer.json"))
        man["tokenizers"] = {"tokenizer": {"path": "tokenizer/tokenizer.json", **tok_entry}}
        man["config"] = {
            "preprocess": pre,
            "generation": _generation_config(model, family),
            "decoder": {"num_layers": n_layers, "num_heads": heads, "head_dim": head_dim, "vocab_size": vocab,
                        "past_names": "past_key_values.{i}.key|value", "present_names": "present.{i}.key|value"},
            "encoder_seq_len": enc_seq, "encoder_hidden_size": enc_hidden,
        }
        mf.write_manifest(work, man)
        if commit:
            commit(work, out, overwrite)
        else:
            if os.path.lexists(out):
                shutil.rmtree(out)
            os.rename(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log(f"done: {out} ({time.perf_counter() - t_start:.1f}s)")
    return out


def _check(rec: dict, name: str) -> None:
    if not rec.get("skipped") and not rec["passed"]:
        raise ExportError(f"{name}: ONNX Runtime output differs from torch: max_abs {rec['max_abs']} > tolerance "
                          f"{rec['tolerance']:.3g} (per output: {rec['outputs']})")
