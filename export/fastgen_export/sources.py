"""Reading a source checkpoint folder safely: JSON files, model_index.json entries, the classes they name.

Everything here treats the folder as untrusted input. A JSON file that is not UTF-8, not JSON, nested
too deeply for the parser, too large, or not an object raises :class:`ExportError` naming the file
(never a raw ``UnicodeDecodeError`` / ``RecursionError``). A ``model_index.json`` entry
``[library, class]`` may only name a library of :data:`LISTED_LIBRARIES`; classes are only ever
imported from :data:`IMPORTABLE_LIBRARIES`, by a module name written here, never by the string read
from the file. Pure Python: no torch, diffusers or transformers at import time.
"""

from __future__ import annotations

import importlib
import json
import os
import re
from collections.abc import Callable
from typing import Any

from fastgen.errors import ExportError

__all__ = ["IMPORTABLE_LIBRARIES", "LISTED_LIBRARIES", "MAX_JSON_BYTES", "read_json", "read_model_index",
           "check_entries", "model_index_entry", "import_class", "resolve_source"]

#: libraries the exporter imports classes from (key: the name a model_index.json entry uses; value: the
#: module imported; the file's string is only ever used as a key into this table)
IMPORTABLE_LIBRARIES: dict[str, str] = {"diffusers": "diffusers", "transformers": "transformers"}
#: libraries a model_index.json entry may name. Besides the importable ones: "stable_diffusion", the
#: diffusers pipeline module that SD 1.x / 2.x / inpainting checkpoints name for their safety checker
#: (``["stable_diffusion", "StableDiffusionSafetyChecker"]``), which the exporter never loads.
LISTED_LIBRARIES: tuple[str, ...] = (*IMPORTABLE_LIBRARIES, "stable_diffusion")
#: config / index files larger than this are refused (the largest real ones are a few kB)
MAX_JSON_BYTES = 16 * 1024**2

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+$")
_IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")

Log = Callable[[str], None]


def read_json(path: str | os.PathLike, *, what: str = "") -> dict[str, Any]:
    """The JSON object in ``path``; ExportError naming the file for anything else."""
    path = os.fspath(path)
    label = f"{what} {path}" if what else path
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_JSON_BYTES + 1)
    except OSError as e:
        raise ExportError(f"cannot read {label}: {e.strerror or e}") from e
    if len(raw) > MAX_JSON_BYTES:
        raise ExportError(f"{label} is larger than {MAX_JSON_BYTES // 1024**2} MiB; refusing to parse it")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ExportError(f"{label} is not UTF-8 text (byte {e.start}: {e.reason})") from e
    try:
        data = json.loads(text)
    except RecursionError as e:
        raise ExportError(f"{label} is nested too deeply to be a configuration file") from e
    except ValueError as e:  # json.JSONDecodeError, and int-digit limits
        raise ExportError(f"{label} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ExportError(f"{label} must hold a JSON object, not {type(data).__name__}")
    return data


def read_model_index(root: str) -> dict[str, Any]:
    """``root/model_index.json``, with its ``_class_name`` checked (the entries: :func:`check_entries`)."""
    path = os.path.join(root, "model_index.json")
    index = read_json(path)
    cls = index.get("_class_name")
    if not isinstance(cls, str) or not cls:
        raise ExportError(f"{path} has no '_class_name' string (got {_short(cls)})")
    return index


def check_entries(index: dict[str, Any], path: str) -> None:
    """Validate every ``[library, class]`` entry of a model_index.json, used by the export or not."""
    for name, value in index.items():
        if not name.startswith("_") and isinstance(value, list):
            model_index_entry(index, name, path)


def model_index_entry(index: dict[str, Any], name: str, path: str) -> tuple[str, str] | None:
    """(library, class) of the entry ``name``, None if it is absent or ``[null, null]``.

    Raises ExportError naming the entry for a malformed one or a library outside :data:`LISTED_LIBRARIES`.
    """
    entry = index.get(name)
    if entry is None or (isinstance(entry, list) and len(entry) == 2 and entry[0] is None and entry[1] is None):
        return None
    if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(x, str) and x for x in entry)):
        raise ExportError(f"{path}: entry {name!r} must be [library, class name], got {_short(entry)}")
    library, cls = entry
    if library not in LISTED_LIBRARIES:
        raise ExportError(f"{path}: entry {name!r} names library {_short(library)}; only "
                          f"{', '.join(LISTED_LIBRARIES)} are allowed")
    if not _IDENTIFIER.match(cls):
        raise ExportError(f"{path}: entry {name!r} names class {_short(cls)}, which is not a class name")
    return library, cls


def import_class(library: str, cls_name: str, *, entry: str, base: str | None = None) -> type:
    """The class ``cls_name`` of an allowed library (model_index.json entry ``entry``).

    ``base`` names a class of the same library the result must derive from (``"ModelMixin"``,
    ``"PreTrainedModel"``, ``"PreTrainedTokenizerBase"``), so an entry cannot point at a function or an
    unrelated class.
    """
    module_name = IMPORTABLE_LIBRARIES.get(library)
    if module_name is None:
        raise ExportError(f"{entry!r}: library {_short(library)} is not one the exporter loads classes from "
                          f"({', '.join(IMPORTABLE_LIBRARIES)})")
    if not _IDENTIFIER.match(cls_name or ""):
        raise ExportError(f"{entry!r}: {_short(cls_name)} is not a class name")
    try:
        module = importlib.import_module(module_name)
        cls = getattr(module, cls_name)
    except (ImportError, AttributeError) as e:
        raise ExportError(f"cannot import {module_name}.{cls_name} for {entry!r}: {e}") from e
    if not isinstance(cls, type):
        raise ExportError(f"{entry!r}: {module_name}.{cls_name} is not a class")
    if base is not None and not issubclass(cls, getattr(module, base)):
        raise ExportError(f"{entry!r}: {module_name}.{cls_name} is not a {base}")
    return cls


def resolve_source(src: str, log: Log) -> tuple[str, str]:
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


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...'"
