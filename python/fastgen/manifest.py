"""Reading and validating an engine directory's fastgen.json (see docs/engine-format.md)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from .errors import ManifestError, ModelLoadError

MANIFEST_NAME = "fastgen.json"
FORMAT = "fastgen-engine"
SUPPORTED_FORMAT_VERSION = 1
KINDS = ("text2img", "inpaint", "captioning", "text2video", "img2video")


def safe_path(root: str, rel: Any, what: str) -> str:
    """Resolve a manifest path, refusing anything that is not a plain relative path inside ``root``."""
    if not isinstance(rel, str) or not rel:
        raise ManifestError(f"{what}: path must be a non-empty string, got {rel!r}")
    if "\x00" in rel or "\\" in rel:
        raise ManifestError(f"{what}: path {rel!r} contains a forbidden character")
    if os.path.isabs(rel) or rel.startswith("/") or (len(rel) > 1 and rel[1] == ":"):
        raise ManifestError(f"{what}: absolute path {rel!r} is not allowed; manifest paths are relative")
    parts = rel.split("/")
    if any(p in ("..", "") for p in parts):
        raise ManifestError(f"{what}: path {rel!r} escapes or is not normalised; '..' and empty parts are refused")
    root_real = os.path.realpath(root)
    full = os.path.realpath(os.path.join(root_real, *parts))
    if os.path.commonpath([root_real, full]) != root_real:
        raise ManifestError(f"{what}: path {rel!r} resolves outside the engine directory (symlink?)")
    return full


@dataclass
class ComponentSpec:
    name: str
    path: str  # absolute, validated
    rel_path: str
    inputs: dict[str, dict] = field(default_factory=dict)
    outputs: dict[str, dict] = field(default_factory=dict)
    dtype: str = "fp32"
    raw: dict = field(default_factory=dict)


@dataclass
class TokenizerSpec:
    name: str
    path: str
    max_length: int
    pad_token_id: int | None
    raw: dict = field(default_factory=dict)


@dataclass
class Manifest:
    root: str
    data: dict
    kind: str
    family: str | None
    components: dict[str, ComponentSpec]
    tokenizers: dict[str, TokenizerSpec]
    scheduler_config: dict | None
    config: dict

    def component(self, name: str) -> ComponentSpec:
        try:
            return self.components[name]
        except KeyError:
            raise ManifestError(f"engine {self.root} has no component {name!r} "
                                f"(it has: {', '.join(self.components) or 'none'})") from None

    def has(self, name: str) -> bool:
        return name in self.components

    def cfg(self, key: str, default: Any = None) -> Any:
        return self.config.get(key, default)

    @property
    def tensorrt(self) -> dict:
        t = self.data.get("tensorrt") or {}
        return t if isinstance(t, dict) else {}


def _require(d: dict, key: str, typ, where: str):
    if key not in d:
        raise ManifestError(f"{where}: missing required key {key!r}")
    v = d[key]
    if not isinstance(v, typ):
        raise ManifestError(f"{where}: {key!r} must be {getattr(typ, '__name__', typ)}, got {type(v).__name__}")
    return v


def load_manifest(engine_dir: str | os.PathLike) -> Manifest:
    """Load and validate ``engine_dir/fastgen.json``. Checks paths and that referenced files exist."""
    root = os.fspath(engine_dir)
    if not os.path.isdir(root):
        raise ManifestError(f"engine directory not found: {root}")
    mpath = os.path.join(root, MANIFEST_NAME)
    if not os.path.isfile(mpath):
        raise ManifestError(f"{root} is not a fastgen engine directory: no {MANIFEST_NAME} "
                            "(create one with `fastgen export`)")
    try:
        with open(mpath, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"{mpath} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ManifestError(f"{mpath} must hold a JSON object")
    where = MANIFEST_NAME
    if data.get("format") != FORMAT:
        raise ManifestError(f"{where}: 'format' must be {FORMAT!r}, got {data.get('format')!r}")
    version = _require(data, "format_version", int, where)
    if version > SUPPORTED_FORMAT_VERSION or version < 1:
        raise ManifestError(f"{where}: format_version {version} is not supported by this fastgen "
                            f"(supports up to {SUPPORTED_FORMAT_VERSION}); upgrade fastgen or re-export")
    kind = _require(data, "kind", str, where)
    if kind not in KINDS:
        raise ManifestError(f"{where}: unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    comps_raw = _require(data, "components", dict, where)
    components: dict[str, ComponentSpec] = {}
    for name, spec in comps_raw.items():
        w = f"{where}: component {name!r}"
        if not isinstance(spec, dict):
            raise ManifestError(f"{w} must be an object")
        rel = _require(spec, "path", str, w)
        path = safe_path(root, rel, w)
        if not os.path.isfile(path):
            raise ModelLoadError(f"component {name!r}: model file {rel} is missing from {root}")
        inputs = spec.get("inputs", {}) or {}
        outputs = spec.get("outputs", {}) or {}
        if not isinstance(inputs, dict) or not isinstance(outputs, dict):
            raise ManifestError(f"{w}: inputs/outputs must be objects")
        components[name] = ComponentSpec(name, path, rel, inputs, outputs, str(spec.get("dtype", "fp32")), spec)
    toks: dict[str, TokenizerSpec] = {}
    for name, spec in (data.get("tokenizers") or {}).items():
        w = f"{where}: tokenizer {name!r}"
        if not isinstance(spec, dict):
            raise ManifestError(f"{w} must be an object")
        rel = _require(spec, "path", str, w)
        path = safe_path(root, rel, w)
        if not os.path.isfile(path):
            raise ModelLoadError(f"tokenizer {name!r}: {rel} is missing from {root}")
        max_length = spec.get("max_length", 77)
        if not isinstance(max_length, int) or not (1 <= max_length <= 65536):
            raise ManifestError(f"{w}: max_length must be a positive int, got {max_length!r}")
        pad = spec.get("pad_token_id")
        if pad is not None and not isinstance(pad, int):
            raise ManifestError(f"{w}: pad_token_id must be an int, got {pad!r}")
        toks[name] = TokenizerSpec(name, path, max_length, pad, spec)
    sched = None
    if data.get("scheduler"):
        s = data["scheduler"]
        if not isinstance(s, dict):
            raise ManifestError(f"{where}: 'scheduler' must be an object")
        spath = safe_path(root, _require(s, "path", str, f"{where}: scheduler"), f"{where}: scheduler")
        from .schedulers import load_config
        from .errors import ConfigError

        try:
            sched = load_config(spath)
        except ConfigError as e:
            raise ManifestError(f"scheduler config: {e}") from e
    config = data.get("config") or {}
    if not isinstance(config, dict):
        raise ManifestError(f"{where}: 'config' must be an object")
    family = data.get("family")
    return Manifest(root=os.path.realpath(root), data=data, kind=kind, family=family, components=components,
                    tokenizers=toks, scheduler_config=sched, config=config)
