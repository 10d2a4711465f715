"""The exporter base class: a subclass declares an engine, this class writes it.

The CTranslate2 converter pattern: a subclass (image: :class:`fastgen_export.diffusion.ImageExporter`,
video: :mod:`fastgen_export.video`, captioning: :class:`fastgen_export.caption.CaptionExporter`) says

* :meth:`Exporter.components` - the graphs, as :class:`~fastgen_export.spec.ComponentSpec` (name, torch
  module, example inputs, io names / dtypes / dynamic axes, dtype policy), yielded one at a time so each
  model is loaded only when it is exported and freed right after;
* :meth:`Exporter.tokenizer_specs` - the tokenizers;
* :meth:`Exporter.scheduler_path` - the diffusers scheduler config (None: the engine has no scheduler);
* :meth:`Exporter.source_info` and :meth:`Exporter.config` - the manifest's ``source`` and ``config``.

:meth:`Exporter.run` then does every step once, the same way for every engine kind: validate and copy the
scheduler config (with the runtime's own scheduler validation), export and check the tokenizers, and for
each component: ONNX export, optional offline optimisation, ``onnx.checker``, parity against torch in ONNX
Runtime at a shape other than the traced one, and the manifest record; ``fastgen.json`` is written last.
:meth:`Exporter.export` wraps that in the staging / crash-safe commit of :mod:`fastgen_export.output`.
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from fastgen.errors import ConfigError, ExportError
from fastgen.manifest import ATTENTIONS, DEFAULT_ATTENTION

from . import manifest as mf
from . import onnx_utils, output, parity
from ._version import __version__
from .spec import ComponentSpec, TokenizerSpec
from .tokenizer import export_tokenizer

__all__ = ["Exporter", "DTYPES", "MIN_OPSET", "Log"]

DTYPES = ("fp32", "fp16")
MIN_OPSET = 17

Log = Callable[[str], None]

_COLLECT_ABOVE = 256 * 1024**2  # bytes of weights above which a component's memory is reclaimed eagerly


def _silent(msg: str) -> None:
    pass


class Exporter:
    """Base of every exporter. Subclasses set ``kind`` / ``family`` and implement the declaration hooks."""

    #: dtypes this exporter can write
    dtypes: tuple[str, ...] = DTYPES

    def __init__(self, *, kind: str, family: str, dtype: str = "fp32", opset: int = 18, optimize: bool = False,
                 parity: bool = True, tolerance: float | None = None, attention: str = DEFAULT_ATTENTION,
                 log: Log | None = None):
        if dtype not in self.dtypes:
            raise ExportError(f"dtype must be one of {', '.join(self.dtypes)} for {kind} engines, got {dtype!r}")
        if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
            raise ExportError(f"opset must be an integer >= {MIN_OPSET}, got {opset!r}")
        if tolerance is not None and not tolerance > 0:
            raise ExportError(f"tolerance must be > 0, got {tolerance!r}")
        if attention not in ATTENTIONS:
            raise ExportError(f"attention must be one of {', '.join(ATTENTIONS)}, got {attention!r}")
        self.attention = attention
        self.kind, self.family = kind, family
        self.dtype, self.opset, self.optimize, self.parity, self.tolerance = dtype, opset, optimize, parity, tolerance
        self.log: Log = log or _silent
        #: component name -> ComponentSpec.info of the components exported so far
        self.info: dict[str, dict[str, Any]] = {}
        #: the validated scheduler config (None without one)
        self.scheduler: dict[str, Any] | None = None
        #: dims of the traced example inputs and of the parity inputs (see ComponentSpec.make_inputs)
        self.export_dims: dict[str, int] = {"batch": 2}
        self.parity_dims: dict[str, int] = {"batch": 1}
        self.work = ""
        self.manifest: dict[str, Any] = {}

    # ------------------------------------------------------------------ what a subclass declares
    def source_info(self) -> dict[str, Any]:
        raise NotImplementedError

    def scheduler_path(self) -> str | None:
        """The source's scheduler_config.json; None for engines without a scheduler."""
        return None

    def tokenizer_specs(self) -> Iterable[TokenizerSpec]:
        return ()

    def prepare(self) -> None:
        """Cheap preparation after the scheduler and tokenizer steps (read configs, set the dims)."""

    def components(self) -> Iterator[ComponentSpec]:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """The manifest's ``config`` section, after every component (``self.info``) was exported."""
        raise NotImplementedError

    # ------------------------------------------------------------------ what the base does
    def export(self, out: str | os.PathLike, *, overwrite: bool = False) -> str:
        """Check ``out``, write the engine in a staging folder, move it into place; returns ``out``."""
        out = output.check_output(out, overwrite, self.log)
        started = time.perf_counter()
        with output.Stage(out, overwrite) as stage:
            self.run(stage.work)
            stage.commit()
        self.log(f"done: {out} ({time.perf_counter() - started:.1f}s)")
        return out

    def run(self, work: str) -> None:
        """Write the engine into the (empty) folder ``work``; ``fastgen.json`` last."""
        self.work = work
        self.manifest = mf.base_manifest(kind=self.kind, family=self.family, source=self.source_info(),
                                         exporter=self.exporter_info())
        self._scheduler()
        for spec in self.tokenizer_specs():
            self._tokenizer(spec)
        self.prepare()
        with contextlib.closing(self.components()) as specs:
            for spec in specs:
                self._component(spec)
        self.manifest["config"] = self.config()
        mf.write_manifest(work, self.manifest)

    def exporter_info(self) -> dict[str, Any]:
        import onnx
        import onnxruntime

        return {"name": "fastgen_export", "version": __version__, "opset": self.opset, "dtype": self.dtype,
                "torch_exporter": "torchscript", "attention": self.attention,
                "optimize": "ort-basic" if self.optimize else None,
                "onnx_version": onnx.__version__, "onnxruntime_version": onnxruntime.__version__,
                "created": mf.utc_now()}

    def _scheduler(self) -> None:
        """Validate the scheduler config as the runtime will load it, copy it, record it."""
        src = self.scheduler_path()
        if src is None:
            self.manifest.pop("scheduler", None)
            return
        from fastgen import schedulers

        if not os.path.isfile(src):
            raise ExportError(f"missing scheduler config {src}")
        try:
            cfg = schedulers.load_config(src)
            schedulers.from_config(cfg)
        except ConfigError as e:
            raise ExportError(f"{src}: {e}; the runtime could not load this engine's scheduler") from e
        rel = "scheduler/scheduler_config.json"
        os.makedirs(os.path.join(self.work, "scheduler"))
        shutil.copyfile(src, os.path.join(self.work, rel))
        self.manifest["scheduler"] = {"path": rel, "class": cfg.get("_class_name")}
        self.scheduler = cfg

    def _tokenizer(self, spec: TokenizerSpec) -> None:
        rel = f"{spec.name}/tokenizer.json"
        t0 = time.perf_counter()
        entry = export_tokenizer(spec, os.path.join(self.work, rel))
        record: dict[str, Any] = {"path": rel}
        if spec.text_encoder is not None:
            record["text_encoder"] = spec.text_encoder
        self.manifest["tokenizers"][spec.name] = {**record, **entry}
        pad = f", pad id {entry['pad_token_id']}" if entry.get("pad_token_id") is not None else ""
        self.log(f"{spec.name}: {entry['class']}, max_length {entry['max_length']}{pad} "
                 f"({time.perf_counter() - t0:.1f}s)")

    def component_dtype(self, spec: ComponentSpec) -> str:
        return "fp32" if spec.dtype == "fp32" else self.dtype

    def _parity_cases(self, spec: ComponentSpec, gen) -> list[tuple[str, tuple, tuple]]:
        import torch

        if spec.parity_cases is not None:
            return list(spec.parity_cases(gen))
        inputs = spec.make_inputs(self.parity_dims, gen)
        with torch.no_grad():
            reference = spec.module(*inputs)
        return [("", inputs, reference if isinstance(reference, tuple) else (reference,))]

    def _component(self, spec: ComponentSpec) -> None:
        import torch

        from .attention import fused_attention, graph_attention

        t0 = time.perf_counter()
        name = spec.name
        comp_dtype = self.component_dtype(spec)
        gen = torch.Generator().manual_seed(0)
        cases = self._parity_cases(spec, gen) if self.parity else []
        if comp_dtype == "fp16":
            spec.module.half()
        example = spec.make_inputs(self.export_dims, gen)

        rel = f"{name}/model.onnx"
        path = os.path.join(self.work, rel)
        os.makedirs(os.path.dirname(path))
        with fused_attention(self.attention == "mha" and spec.fuse_attention):
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

        record = self._check_parity(name, path, spec, comp_dtype, cases) if self.parity else None
        ext_rel = onnx_utils.external_data_path(rel) if external else None
        attention = graph_attention(path) if spec.fuse_attention and self.attention != DEFAULT_ATTENTION else None
        self.manifest["components"][name] = mf.component_entry(spec, rel, dtype=comp_dtype, external_data=ext_rel,
                                                               parity=record, attention=attention)
        if record is None:
            msg = "parity off"
        elif record.get("skipped"):
            msg = f"parity skipped: {record['reason']}"
        else:
            shapes = " ".join(f"{k}{v}" for k, v in record["inputs"].items())
            msg = f"parity max_abs {record['max_abs']:.3g} vs tolerance {record['tolerance']:.3g} at {shapes}"
        size = sum(os.path.getsize(os.path.join(self.work, p)) for p in (rel, ext_rel) if p)
        self.log(f"{name}: {comp_dtype}, {size / 1e6:.1f} MB, exported in {t_export:.1f}s, {msg} "
                 f"({time.perf_counter() - t0:.1f}s)")

    def _check_parity(self, name: str, path: str, spec: ComponentSpec, comp_dtype: str,
                      cases: list[tuple[str, tuple, tuple]]) -> dict[str, Any]:
        """Compare the graph with torch on every case; the record of the worst one (ExportError on failure)."""
        worst: dict[str, Any] | None = None
        for label, inputs, reference in cases:
            record = parity.compare(path, spec.input_names, spec.output_names, inputs, reference, dtype=comp_dtype,
                                    tolerance=self.tolerance)
            if record.get("skipped"):
                return record
            if not record["passed"]:
                where = f"{name} ({label})" if label else name
                raise ExportError(f"{where}: ONNX Runtime output differs from torch: max_abs {record['max_abs']} > "
                                  f"tolerance {record['tolerance']:.3g} (per output: {record['outputs']})")
            if worst is None or _max_abs(record) > _max_abs(worst):
                worst = record
        assert worst is not None, f"{name}: no parity case"
        return worst


def _max_abs(record: dict[str, Any]) -> float:
    v = record["max_abs"]
    return float("inf") if v == "inf" else float(v)
