"""Precision variants recorded in an engine's fastgen.json (``"variants"``), written by ``fastgen optimize``.

::

    "variants": {
      "int8":     {"backend": "openvino", "method": "nncf-hybrid",
                   "components": {"unet": {"path": "int8/unet/model.xml", "method": "hybrid"}, ...},
                   "calibration": {...}, "created": "...", "nncf_version": "...", "openvino_version": "..."},
      "int8-ort": {"backend": "onnxruntime", "method": "ort-qdq",
                   "components": {"unet": {"path": "int8-ort/unet/model.onnx", "method": "qdq"}}, ...}
    }

``precision="int8"`` picks the variant made for the backend (:data:`VARIANT_FOR`). Its components run
from their int8 graphs; the engine's other components run at fp32. The record is checked when a pipeline
loads with that precision (a damaged record refuses to load there; other precisions ignore it): paths are
relative and stay inside the engine directory (``manifest.safe_path``), the files exist (an IR's ``.bin``
too), components are the engine's, and the backend matches.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import InvalidArgumentError, ManifestError, ModelLoadError
from ..manifest import Manifest, safe_path

# (backend, precision) -> the variant name it runs
VARIANT_FOR = {("openvino", "int8"): "int8", ("onnxruntime", "int8"): "int8-ort"}
# the optimize command that writes each variant
MAKE_COMMAND = {"int8": "fastgen optimize ENGINE --int8",
                "int8-ort": "fastgen optimize ENGINE --int8 --int8-format ort-qdq"}
SUFFIX = {"openvino": ".xml", "onnxruntime": ".onnx"}


@dataclass(frozen=True)
class Variant:
    name: str
    backend: str
    method: str
    paths: dict  # component -> absolute, validated path of its graph
    record: dict


def variant_name(backend: str, precision: str) -> str | None:
    return VARIANT_FOR.get((backend, precision))


def load_variant(manifest: Manifest, name: str, backend: str) -> Variant:
    """The validated variant ``name`` of this engine (ManifestError / ModelLoadError when damaged,
    InvalidArgumentError naming the optimize command when the engine has none)."""
    where = f"fastgen.json: variants[{name!r}]"
    variants = manifest.data.get("variants")
    if variants is not None and not isinstance(variants, dict):
        raise ManifestError(f"fastgen.json: 'variants' must be an object, got {type(variants).__name__}")
    rec = (variants or {}).get(name)
    if rec is None:
        cmd = MAKE_COMMAND.get(name, "fastgen optimize ENGINE")
        raise InvalidArgumentError(f"engine {manifest.root} has no {name} variant for backend {backend!r}: "
                                   f"make one with `{cmd.replace('ENGINE', manifest.root)}`")
    if not isinstance(rec, dict):
        raise ManifestError(f"{where} must be an object")
    if rec.get("backend") != backend:
        raise ManifestError(f"{where}: 'backend' is {rec.get('backend')!r}; precision int8 with backend "
                            f"{backend!r} needs {backend!r}")
    method = rec.get("method")
    if not isinstance(method, str) or not method:
        raise ManifestError(f"{where}: 'method' must be a non-empty string, got {method!r}")
    comps = rec.get("components")
    if not isinstance(comps, dict) or not comps:
        raise ManifestError(f"{where}: 'components' must be a non-empty object")
    paths = {}
    for comp, spec in comps.items():
        w = f"{where} component {comp!r}"
        if comp not in manifest.components:
            raise ManifestError(f"{w}: the engine has no such component ({', '.join(manifest.components)})")
        if not isinstance(spec, dict):
            raise ManifestError(f"{w} must be an object")
        path = safe_path(manifest.root, spec.get("path"), w)
        if not path.endswith(SUFFIX[backend]):
            raise ManifestError(f"{w}: path {spec.get('path')!r} must be a {SUFFIX[backend]} file for {backend}")
        if not os.path.isfile(path):
            raise ModelLoadError(f"{w}: {spec.get('path')} is missing from {manifest.root} "
                                 f"(re-run `{MAKE_COMMAND.get(name, 'fastgen optimize')}`)")
        if backend == "openvino":
            weights = path[:-len(".xml")] + ".bin"
            if not os.path.isfile(weights):
                raise ModelLoadError(f"{w}: the weights {os.path.basename(weights)} of {spec.get('path')} are "
                                     f"missing from {manifest.root}")
        paths[comp] = path
    return Variant(name, backend, method, paths, rec)


def check_variant(manifest: Manifest, backend: str, precision: str) -> Variant | None:
    """At load: the variant this backend / precision runs, validated (None for precisions that need none)."""
    name = variant_name(backend, precision)
    return None if name is None else load_variant(manifest, name, backend)
