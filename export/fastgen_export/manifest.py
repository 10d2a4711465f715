"""Writing ``fastgen.json`` (see docs/engine-format.md). Pure Python: no torch here."""

from __future__ import annotations

import datetime as _dt
import json
import os
import posixpath
import tempfile
from collections.abc import Iterable
from typing import Any

from fastgen.errors import ExportError

__all__ = ["FORMAT", "FORMAT_VERSION", "MANIFEST_NAME", "io_entry", "component_entry", "base_manifest",
           "write_manifest", "read_manifest", "check_relative", "utc_now", "current_umask"]

FORMAT = "fastgen-engine"
FORMAT_VERSION = 1
MANIFEST_NAME = "fastgen.json"


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def check_relative(path: str) -> str:
    """A manifest path: relative, '/'-separated, normalised, not escaping the engine directory."""
    if not path or path.startswith("/") or "\\" in path or posixpath.normpath(path) != path or \
            path == ".." or path.startswith("../"):
        raise ExportError(f"internal error: manifest path {path!r} is not a normalised relative path")
    return path


def io_entry(tensors: Iterable[Any]) -> dict[str, dict[str, Any]]:
    """{name: {"dtype", "shape"}} for TensorSpec-like objects (name, dtype, shape)."""
    return {t.name: {"dtype": t.dtype, "shape": list(t.shape)} for t in tensors}


def component_entry(spec: Any, path: str, *, dtype: str, external_data: str | None,
                    parity: dict[str, Any] | None, attention: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "path": check_relative(path),
        "dtype": dtype,
        "inputs": io_entry(spec.inputs),
        "outputs": io_entry(spec.outputs),
    }
    if external_data:
        entry["external_data"] = check_relative(external_data)
    if attention is not None:  # "mha": the graph holds com.microsoft MultiHeadAttention nodes
        entry["attention"] = attention
    entry["parity"] = parity if parity is not None else {"passed": None, "skipped": True,
                                                         "reason": "parity disabled (--no-parity)"}
    return entry


def base_manifest(*, kind: str, family: str, source: dict[str, Any], exporter: dict[str, Any]) -> dict[str, Any]:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind, "family": family,
            "source": source, "exporter": exporter, "components": {}, "tokenizers": {}, "scheduler": {},
            "config": {}}


def write_manifest(engine_dir: str, manifest: dict[str, Any]) -> str:
    """Write ``fastgen.json`` atomically (temp file + rename) and return its path. The manifest is first
    checked with the runtime's own rules (``fastgen.manifest.validate_manifest_data``), so an exporter bug
    cannot write an engine that ``Pipeline.load`` refuses."""
    from fastgen.errors import ManifestError
    from fastgen.manifest import validate_manifest_data

    try:
        validate_manifest_data(manifest)
    except ManifestError as e:
        raise ExportError(f"refusing to write an invalid manifest: {e}") from e
    path = os.path.join(engine_dir, MANIFEST_NAME)
    text = json.dumps(manifest, indent=2, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(dir=engine_dir, prefix=".fastgen.json.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def read_manifest(engine_dir: str) -> dict[str, Any]:
    path = os.path.join(engine_dir, MANIFEST_NAME)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ExportError(f"{engine_dir} is not a fastgen engine directory ({MANIFEST_NAME}: {e})") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ExportError(f"{path} is not a fastgen engine manifest")
    return data
