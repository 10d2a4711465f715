"""``export()``: a diffusers pipeline (local folder or hub id) -> a fastgen engine directory.

The engine is assembled in a hidden temp directory next to ``out`` and renamed into place only when
every component has been exported, validated and parity-checked, and ``fastgen.json`` written last.
An interrupted or failed export therefore never leaves a valid-looking engine directory behind.
"""

from __future__ import annotations

import gc
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from fastgen.errors import ExportError

from . import __version__
from . import diffusion as dif
from . import manifest as mf
from . import onnx_utils, parity
from .tokenizer import export_tokenizer

__all__ = ["export", "DTYPES", "MIN_OPSET"]

DTYPES = ("fp32", "fp16")
MIN_OPSET = 17
#: components kept in float32 by ``dtype="fp16"`` (the SD / SDXL VAEs overflow in fp16)
FP32_COMPONENTS = ("vae_decoder", "vae_encoder")

_COLLECT_ABOVE = 256 * 1024**2  # bytes of weights above which a component's memory is reclaimed eagerly
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+$")
_TOKENIZER_OF = {"text_encoder": "tokenizer", "text_encoder_2": "tokenizer_2", "text_encoder_3": "tokenizer_3"}

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(f"fastgen export: {msg}", file=sys.stderr, flush=True)


def export(src: str | os.PathLike, out: str | os.PathLike, *, dtype: str = "fp32", opset: int = 18,
           overwrite: bool = False, optimize: bool = False, parity: bool = True, tolerance: float | None = None,
           fifo_unet: bool = True, log: Log | None = _stderr) -> str:
    """Export the diffusers pipeline ``src`` (a ``save_pretrained`` folder or a hub id) to ``out``.

    Args:
        dtype: "fp32", or "fp16" (fp16 weights and compute for text encoders and the denoiser; the
            VAE stays fp32; every graph input / output stays float32).
        opset: ONNX opset, >= 17.
        overwrite: replace an existing engine directory at ``out``.
        optimize: apply ONNX Runtime's basic graph optimisations offline (and onnxslim if installed).
        parity: compare every graph with torch in ONNX Runtime at a shape other than the traced one.
        tolerance: absolute parity bound for every component (default: per dtype, see parity.py).
        fifo_unet: AnimateDiff (text2video) sources only: also export ``unet_fifo``, the motion UNet with
            one timestep per frame that ``long_video="fifo"`` needs (it doubles the UNet on disk). False
            leaves it out; such an engine raises UnsupportedError for ``long_video="fifo"``. Other
            sources have no such component and ignore it.
        log: progress sink (default: stderr); None silences it.
    Returns:
        the absolute path of the engine directory.
    Raises:
        ExportError: bad source, unsupported pipeline, existing output, failed conversion or parity.
    """
    log = log or (lambda msg: None)
    if dtype not in DTYPES:
        raise ExportError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if not isinstance(opset, int) or opset < MIN_OPSET:
        raise ExportError(f"opset must be an integer >= {MIN_OPSET}, got {opset!r}")
    if tolerance is not None and not tolerance > 0:
        raise ExportError(f"tolerance must be > 0, got {tolerance!r}")
    if not isinstance(fifo_unet, bool):
        raise ExportError(f"fifo_unet must be True or False, got {fifo_unet!r}")
    out = os.path.abspath(os.fspath(out))
    _check_output(out, overwrite)
    # --- captioning (issue 8): transformers captioner folders go to fastgen_export.caption ---
    if os.path.isdir(os.fspath(src)):
        from .caption import captioner_family, export_captioner

        if captioner_family(os.fspath(src)) is not None:
            return export_captioner(os.fspath(src), out, dtype=dtype, opset=opset, overwrite=overwrite, parity_check=parity,
                                    tolerance=tolerance, log=log, check_output=_check_output, commit=_commit)
    # --- end captioning ---
    root, source_id = _resolve_source(os.fspath(src), log)
    # --- video (issue 9): AnimateDiffPipeline folders are planned / exported by fastgen_export.video ---
    from . import video as _video

    exporter_cls: Callable[..., Any] = _Exporter
    extra: dict[str, Any] = {}
    if _video.is_video_pipeline(root):
        plan, exporter_cls = _video.plan_video_pipeline(root), _video.VideoExporter
        extra["fifo_unet"] = fifo_unet
    else:
        plan = dif.plan_pipeline(root)
    # --- end video ---
    real_out = os.path.realpath(out)
    if real_out == root or real_out.startswith(root + os.sep) or root.startswith(real_out + os.sep):
        raise ExportError(f"output {out} must not be the source folder {root}, inside it, or contain it")

    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.partial-", dir=parent)
    started = time.perf_counter()
    try:
        os.chmod(work, 0o777 & ~mf.current_umask())
        exporter_cls(plan, work, source_id=source_id, dtype=dtype, opset=opset, optimize=optimize,
                  parity=parity, tolerance=tolerance, log=log, **extra).run()
        _commit(work, out, overwrite)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log(f"done: {out} ({time.perf_counter() - started:.1f}s)")
    return out


# ------------------------------------------------------------------------------------ source / output


def _resolve_source(src: str, log: Log) -> tuple[str, str]:
    """(local folder, id recorded in the manifest). Downloads hub ids with diffusers."""
    if os.path.isdir(src):
        root = os.path.realpath(src)
        return root, os.path.basename(root.rstrip(os.sep))
    if os.path.exists(src):
        raise ExportError(f"{src} is not a diffusers pipeline folder (not a directory)")
    if not _HUB_ID.match(src) or ".." in src:
        raise ExportError(f"{src} does not exist and is not a Hugging Face hub id")
    log(f"{src}: downloading from the Hugging Face hub")
    try:
        from diffusers import DiffusionPipeline

        folder = DiffusionPipeline.download(src)
    except Exception as e:
        raise ExportError(f"cannot download {src!r} from the Hugging Face hub: {e}") from e
    return os.path.realpath(folder), src


def _is_engine_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, mf.MANIFEST_NAME))


def _check_output(out: str, overwrite: bool) -> None:
    if not os.path.lexists(out):
        return
    if not overwrite:
        raise ExportError(f"output {out} already exists (use overwrite=True / --overwrite to replace it)")
    if not os.path.isdir(out) or os.path.islink(out):
        raise ExportError(f"output {out} exists and is not a directory; refusing to replace it")
    if os.listdir(out) and not _is_engine_dir(out):
        raise ExportError(f"output {out} is a non-empty directory that is not a fastgen engine "
                          f"(no {mf.MANIFEST_NAME}); refusing to overwrite it")


def _commit(work: str, out: str, overwrite: bool) -> None:
    """Move the finished engine into place; an existing engine is swapped out, then deleted."""
    if not os.path.lexists(out):
        os.rename(work, out)
        return
    _check_output(out, overwrite)  # re-check: it may have appeared while exporting
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old-", dir=os.path.dirname(out))
    os.rmdir(old)
    os.rename(out, old)
    try:
        os.rename(work, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------------ exporter


def _round(x: float, m: int) -> int:
    return max(m, int(round(x / m)) * m)


class _Exporter:
    def __init__(self, plan: dif.PipelinePlan, work: str, *, source_id: str, dtype: str, opset: int,
                 optimize: bool, parity: bool, tolerance: float | None, log: Log):
        self.plan, self.work, self.dtype, self.opset = plan, work, dtype, opset
        self.optimize, self.parity, self.tolerance, self.log = optimize, parity, tolerance, log
        self.info: dict[str, dict[str, Any]] = {}
        self.manifest = mf.base_manifest(kind=plan.kind, family=plan.family, source=self._source(source_id),
                                         exporter=self._exporter_info())

    def _source(self, source_id: str) -> dict[str, Any]:
        import diffusers
        import torch
        import transformers

        return {"id": source_id, "class": self.plan.class_name, "diffusers_version": diffusers.__version__,
                "transformers_version": transformers.__version__, "torch_version": torch.__version__}

    def _exporter_info(self) -> dict[str, Any]:
        import onnx
        import onnxruntime

        return {"name": "fastgen_export", "version": __version__, "opset": self.opset, "dtype": self.dtype,
                "torch_exporter": "torchscript", "optimize": "ort-basic" if self.optimize else None,
                "onnx_version": onnx.__version__, "onnxruntime_version": onnxruntime.__version__,
                "created": mf.utc_now()}

    # -- shapes
    def _latent_dims(self, cfg: dict[str, Any]) -> tuple[tuple[int, int], tuple[int, int]]:
        """(traced latent height/width, parity latent height/width) from the denoiser config.

        The trace uses half the model's sample size (cheaper; the graph is shape-generic), parity a
        non-square 3/4 x 5/4 of it, so a size baked into the graph cannot go unnoticed."""
        s = cfg.get("sample_size") or 64
        sh, sw = (s, s) if isinstance(s, int) else (int(s[0]), int(s[1]))
        if self.plan.family == "sd3":
            m = int(cfg.get("patch_size") or 1)
            max_side = (cfg.get("pos_embed_max_size") or 0) * m or None
        else:
            m = 2 ** (len(cfg["block_out_channels"]) - 1)
            max_side = None
        export_hw = (_round(sh / 2, m), _round(sw / 2, m))
        parity_hw = (_round(sh * 3 / 4, m), _round(sw * 5 / 4, m))
        if max_side:
            parity_hw = (min(parity_hw[0], max_side), min(parity_hw[1], max_side))
        if parity_hw == export_hw:
            parity_hw = (parity_hw[0] + m, parity_hw[1] + 2 * m)
        return export_hw, parity_hw

    @staticmethod
    def _dims(batch: int, hw: tuple[int, int], f: int) -> dict[str, int]:
        return {"batch": batch, "latent_height": hw[0], "latent_width": hw[1], "height": hw[0] * f,
                "width": hw[1] * f}

    # -- steps
    def run(self) -> None:
        plan, m = self.plan, self.manifest
        den_name = "transformer" if plan.family == "sd3" else "unet"
        den_cfg = dif.read_json(os.path.join(plan.path(den_name), "config.json"))
        vae_cfg = dif.read_json(os.path.join(plan.path("vae"), "config.json"))
        f = 2 ** (len(vae_cfg["block_out_channels"]) - 1)
        export_hw, parity_hw = self._latent_dims(den_cfg)
        self.export_dims = self._dims(2, export_hw, f)
        self.parity_dims = self._dims(1, parity_hw, f)

        self._tokenizers()
        sched = self._scheduler()

        for te in ("text_encoder", "text_encoder_2", "text_encoder_3"):
            if plan.has(te):
                length = m["tokenizers"][_TOKENIZER_OF[te]]["max_length"]
                self._component(lambda te=te, length=length: dif.build_text_encoder(plan, te, length))

        if plan.family == "sd3":
            t5_len = m["tokenizers"]["tokenizer_3"]["max_length"] if plan.has("tokenizer_3") else dif.T5_MAX_LENGTH
            text_length = m["tokenizers"]["tokenizer"]["max_length"] + t5_len
        else:
            first = "tokenizer" if plan.has("tokenizer") else "tokenizer_2"
            text_length = m["tokenizers"][first]["max_length"]
        pooled = self.info.get("text_encoder_2", {}).get("pooled_size")
        self._component(lambda: dif.build_denoiser(plan, text_length=text_length, pooled_size=pooled))
        dec, enc = dif.build_vae(plan)
        self._component(lambda: dec)
        self._component(lambda: enc)

        m["config"] = dif.pipeline_config(plan, self.info, m["tokenizers"], sched)
        mf.write_manifest(self.work, m)

    def _scheduler(self) -> dict:
        """Copy the scheduler config into the engine, record it in the manifest and return it."""
        sched = dif.scheduler_config(self.plan)
        rel = "scheduler/scheduler_config.json"
        os.makedirs(os.path.join(self.work, "scheduler"))
        shutil.copyfile(os.path.join(self.plan.path("scheduler"), "scheduler_config.json"),
                        os.path.join(self.work, rel))
        self.manifest["scheduler"] = {"path": rel, "class": sched.get("_class_name")}
        return sched

    def _tokenizers(self) -> None:
        for te, tok in _TOKENIZER_OF.items():
            if not self.plan.has(tok):
                continue
            library, cls = self.plan.parts[tok]
            rel = f"{tok}/tokenizer.json"
            t0 = time.perf_counter()
            entry = export_tokenizer(self.plan.path(tok), library, cls, os.path.join(self.work, rel),
                                     max_length=dif.T5_MAX_LENGTH if tok == "tokenizer_3" else None)
            self.manifest["tokenizers"][tok] = {"path": rel, "text_encoder": te, **entry}
            self.log(f"{tok}: {cls}, max_length {entry['max_length']}, pad id {entry['pad_token_id']} "
                     f"({time.perf_counter() - t0:.1f}s)")

    def _component(self, build: Callable[[], dif.ComponentSpec]) -> None:
        import torch

        t0 = time.perf_counter()
        spec = build()
        name = spec.name
        comp_dtype = "fp16" if self.dtype == "fp16" and name not in FP32_COMPONENTS else "fp32"
        gen = torch.Generator().manual_seed(0)
        check_inputs = reference = None
        if self.parity:
            check_inputs = spec.make_inputs(self.parity_dims, gen)
            with torch.no_grad():
                reference = spec.module(*check_inputs)
            reference = reference if isinstance(reference, tuple) else (reference,)
        if comp_dtype == "fp16":
            spec.module.half()
        example = spec.make_inputs(self.export_dims, gen)

        rel = f"{name}/model.onnx"
        path = os.path.join(self.work, rel)
        os.makedirs(os.path.dirname(path))
        external = onnx_utils.export_module(spec.module, example, path, input_names=spec.input_names,
                                            output_names=spec.output_names, dynamic_axes=spec.dynamic_axes(),
                                            opset=self.opset)
        if self.optimize:
            onnx_utils.optimize_graph(path, external=external)
        onnx_utils.check_graph(path)
        t_export = time.perf_counter() - t0
        self.info[name] = spec.info
        big = onnx_utils.module_bytes(spec.module) > _COLLECT_ABOVE
        spec.module = None  # free the weights before the next component is loaded
        if big:  # a full collection costs ~0.5 s with diffusers + transformers imported: only when it pays
            gc.collect()

        record = None
        msg = "parity off"
        if self.parity:
            record = parity.compare(path, spec.input_names, spec.output_names, check_inputs, reference,
                                    dtype=comp_dtype, tolerance=self.tolerance)
            if record.get("skipped"):
                msg = f"parity skipped: {record['reason']}"
            else:
                shapes = " ".join(f"{k}{v}" for k, v in record["inputs"].items())
                msg = (f"parity max_abs {record['max_abs']:.3g} vs tolerance {record['tolerance']:.3g} "
                       f"at {shapes}")
                if not record["passed"]:
                    raise ExportError(f"{name}: ONNX Runtime output differs from torch: max_abs "
                                      f"{record['max_abs']} > tolerance {record['tolerance']:.3g} "
                                      f"(per output: {record['outputs']})")
        ext_rel = onnx_utils.external_data_path(rel) if external else None
        self.manifest["components"][name] = mf.component_entry(spec, rel, dtype=comp_dtype, external_data=ext_rel,
                                                               parity=record)
        size = sum(os.path.getsize(os.path.join(self.work, p)) for p in (rel, ext_rel) if p)
        self.log(f"{name}: {comp_dtype}, {size / 1e6:.1f} MB, exported in {t_export:.1f}s, {msg} "
                 f"({time.perf_counter() - t0:.1f}s)")
