"""``export()``: a diffusers pipeline (local folder or hub id) or a transformers captioner folder -> a fastgen
engine directory.

OUT is checked first (:func:`fastgen_export.output.check_output`: its parent creatable and writable, not in
a virtual filesystem, an existing OUT only replaced with ``overwrite`` and only if it is an engine), then
the source is read and planned without loading weights, then the chosen exporter writes the engine in a
staging folder that is moved into place only when every component has been exported, validated and
parity-checked and ``fastgen.json`` written last (crash-safe ``overwrite``: see :mod:`fastgen_export.output`).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from fastgen.errors import ExportError
from fastgen.manifest import ATTENTIONS, DEFAULT_ATTENTION

from . import output
from .base import DTYPES, MIN_OPSET, Log
from .caption import CaptionExporter, captioner_family
from .diffusion import DiffusersExporter, ImageExporter
from .sources import read_model_index, resolve_source
from .video import AnimateDiffExporter, SVDExporter

__all__ = ["export", "DTYPES", "MIN_OPSET", "DIFFUSERS_EXPORTERS", "exporter_for_pipeline"]

#: the diffusers exporters, each taking the pipeline classes of its ``PIPELINES``
DIFFUSERS_EXPORTERS: tuple[type[DiffusersExporter], ...] = (ImageExporter, AnimateDiffExporter, SVDExporter)


def _stderr(msg: str) -> None:
    print(f"fastgen export: {msg}", file=sys.stderr, flush=True)


def exporter_for_pipeline(class_name: str) -> type[DiffusersExporter]:
    for cls in DIFFUSERS_EXPORTERS:
        if class_name in cls.PIPELINES:
            return cls
    supported = sorted(name for cls in DIFFUSERS_EXPORTERS for name in cls.PIPELINES)
    raise ExportError(f"unsupported pipeline class {class_name!r}; supported: {', '.join(supported)}")


def export(src: str | os.PathLike, out: str | os.PathLike, *, dtype: str = "fp32", opset: int = 18,
           overwrite: bool = False, optimize: bool = False, parity: bool = True, tolerance: float | None = None,
           fifo_unet: bool = True, cache: Any = None, lora_branches: bool = False, lora=(), controlnet=(),
           attention: str = DEFAULT_ATTENTION,
           log: Log | None = _stderr) -> str:
    """Export the diffusers pipeline ``src`` (a ``save_pretrained`` folder or a hub id), or a transformers
    captioner folder, to ``out``.

    Args:
        dtype: "fp32", or "fp16" (fp16 weights and compute for text encoders and the denoiser; the
            VAE stays fp32; every graph input / output stays float32). Captioners: fp32 only.
        opset: ONNX opset, >= 17.
        overwrite: replace an existing engine directory at ``out`` (crash-safe: an engine is at ``out``, or
            restored there by the next export, at every instant).
        optimize: apply ONNX Runtime's basic graph optimisations offline (and onnxslim if installed).
        parity: compare every graph with torch in ONNX Runtime at a shape other than the traced one.
        tolerance: absolute parity bound for every component (default: per dtype, see parity.py).
        fifo_unet: AnimateDiff (text2video) sources only: also export ``unet_fifo``, the motion UNet with
            one timestep per frame that ``long_video="fifo"`` needs (it doubles the UNet on disk). False
            leaves it out; such an engine raises UnsupportedError for ``long_video="fifo"``. Other
            sources have no such component and ignore it.
        cache: step-cache graphs to add (``fastgen export --cache``): a spec or a list of specs,
            "deepcache" / "deepcache:branch=N" (SD / SDXL / AnimateDiff UNets: the deep-feature outputs and one shallow
            UNet per branch), "first_block" (SD3: the transformer split for First-Block Cache). None: none (engines then run without ``cache=``).
        lora_branches: image pipelines only: also export ``<component>_lora`` graphs of the text encoders and
            the denoiser with low-rank side inputs at every Linear / Conv2d, so requests can carry any set of
            LoRAs (``pipe(..., loras={FILE: strength})``) without a re-export (see :mod:`fastgen_export.lora`).
        lora: LoRA ``.safetensors`` files to fuse into the weights permanently: ``{path: strength}`` or a list of
            ``(path, strength)`` pairs (image pipelines only).
        controlnet: diffusers ControlNetModel folders (SD 1.x / 2.x, SDXL): each is exported as
            ``controlnet_<i>``, with ``unet_control``, the UNet taking their residuals (see
            :mod:`fastgen_export.controlnet`).
        attention: how the attention of the denoiser (UNet / transformer) and the VAE is written: "sdpa"
            (default: ONNX-standard MatMul / Softmax / MatMul, runs everywhere incl. TensorRT) or "mha" (one
            ONNX Runtime ``com.microsoft.MultiHeadAttention`` node per attention: no materialised score tensor,
            faster and leaner on ONNX Runtime at 512 px, OpenVINO reads it; ``fastgen build-trt`` refuses it).
            Diffusion pipelines only.
        log: progress sink (default: stderr); None silences it.
    Returns:
        the absolute path of the engine directory.
    Raises:
        ExportError: bad source, unsupported pipeline, bad or existing output, failed conversion or parity.
    """
    log = log or (lambda msg: None)
    if dtype not in DTYPES:
        raise ExportError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise ExportError(f"opset must be an integer >= {MIN_OPSET}, got {opset!r}")
    if tolerance is not None and not tolerance > 0:
        raise ExportError(f"tolerance must be > 0, got {tolerance!r}")
    if not isinstance(fifo_unet, bool):
        raise ExportError(f"fifo_unet must be True or False, got {fifo_unet!r}")
    if not isinstance(lora_branches, bool):
        raise ExportError(f"lora_branches must be True or False, got {lora_branches!r}")
    fused = _lora_files(lora)
    if attention not in ATTENTIONS:
        raise ExportError(f"attention must be one of {', '.join(ATTENTIONS)}, got {attention!r}")
    out = output.check_output(out, overwrite, log)
    options: dict[str, Any] = dict(dtype=dtype, opset=opset, optimize=optimize, parity=parity, tolerance=tolerance,
                                   log=log)
    src = os.fspath(src)
    if os.path.isdir(src) and not os.path.isfile(os.path.join(src, "model_index.json")) and \
            os.path.isfile(os.path.join(src, "config.json")):
        root = os.path.realpath(src)
        _check_apart(root, out)
        if captioner_family(root) is None:
            raise ExportError(f"{src} is neither a diffusers pipeline folder (no model_index.json) nor a supported "
                              "captioning model (config.json architectures: VisionEncoderDecoderModel, "
                              "BlipForConditionalGeneration)")
        if attention != DEFAULT_ATTENTION:
            raise ExportError(f"attention={attention!r} applies to diffusion pipelines only; captioners are exported "
                              f"with attention={DEFAULT_ATTENTION!r}")
        return CaptionExporter(root, **options).export(out, overwrite=overwrite)

    root, source_id = resolve_source(src, log)
    if not os.path.isfile(os.path.join(root, "model_index.json")):
        raise ExportError(f"{root} is not a diffusers pipeline folder (no model_index.json)")
    _check_apart(root, out)
    index = read_model_index(root)
    cls = exporter_for_pipeline(index["_class_name"])
    plan = cls.plan_folder(root, index)
    extra = {"fifo_unet": fifo_unet} if "fifo_unet" in cls.EXTRA_OPTIONS else {}
    if "cache" in cls.EXTRA_OPTIONS:
        extra["cache"] = cache
    elif cache:
        raise ExportError(f"--cache applies to SD, SDXL, SD3 and AnimateDiff engines, not {index['_class_name']}")
    controlnets = [os.fspath(c) for c in (controlnet or ())]
    if lora_branches or fused or controlnets:
        if "lora_branches" not in cls.EXTRA_OPTIONS:
            raise ExportError(f"adapter options (--lora-branches, --lora, --controlnet) apply to image pipelines, "
                              f"not {index['_class_name']}")
        extra.update(lora_branches=lora_branches, lora_fuse=fused, controlnets=controlnets)
    return cls(plan, source_id=source_id, attention=attention, **options, **extra).export(out, overwrite=overwrite)


def _lora_files(lora) -> list:
    """``export(lora=...)`` -> [(fastgen.lora.LoraFile, strength)]; ExportError naming a bad file or strength."""
    from fastgen.errors import FastgenError
    from fastgen.lora import check_loras

    try:
        return list(check_loras(lora or None))
    except FastgenError as e:
        raise ExportError(f"lora: {e}") from e


def _check_apart(root: str, out: str) -> None:
    real_out = os.path.realpath(out)
    if real_out == root or real_out.startswith(root + os.sep) or root.startswith(real_out + os.sep):
        raise ExportError(f"output {out} must not be the source folder {root}, inside it, or contain it")
