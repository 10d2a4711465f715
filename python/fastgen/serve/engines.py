"""The served engines: name -> loaded pipeline and its kind (image, caption, video)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidArgumentError

KINDS = ("image", "caption", "video")


@dataclass
class Engine:
    name: str
    pipe: Any
    kind: str  # "image" | "caption" | "video"
    root: str

    def describe(self) -> dict:
        return {"id": self.name, "object": "model", "kind": self.kind, "owned_by": "fastgen"}


def kind_of(pipe) -> str:
    k = getattr(pipe, "kind", "") or getattr(getattr(pipe, "manifest", None), "kind", "")
    if k == "captioning":
        return "caption"
    if "video" in k:
        return "video"
    return "image"


def _default_name(e: Any, taken: dict) -> str:
    if isinstance(e, (str, os.PathLike)):
        name = os.path.basename(os.path.normpath(os.fspath(e)))
    else:
        name = os.path.basename(os.path.normpath(str(getattr(e, "engine_dir", "") or ""))) or "engine"
    base, i = name, 2
    while name in taken:
        name, i = f"{base}-{i}", i + 1
    return name


def load_engines(engines, **load_options) -> dict[str, Engine]:
    """{name: dir | Pipeline} or [dir | Pipeline, ...] -> {name: Engine}. List names are directory names
    (``demo`` for the demo engine, ``sd15-2`` for a second ``sd15``), so the demo serves next to another
    engine without naming either."""
    from ..pipelines import Pipeline

    items: list[tuple[str | None, Any]]
    if isinstance(engines, dict):
        items = list(engines.items())
    elif isinstance(engines, (str, os.PathLike)):
        items = [(None, engines)]
    else:
        items = [(None, e) for e in engines]
    if not items:
        raise InvalidArgumentError("serve at least one engine")
    out: dict[str, Engine] = {}
    for name, e in items:
        pipe = e if not isinstance(e, (str, os.PathLike)) else Pipeline.load(e, **load_options)
        root = getattr(pipe, "engine_dir", None) or str(e)
        if name is None:
            name = _default_name(e, out)
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9._:/-]{1,128}", name):
            raise InvalidArgumentError(f"engine name {name!r}: use letters, digits and ._:/- only")
        if name in out:
            raise InvalidArgumentError(f"two engines are named {name!r}")
        out[name] = Engine(name, pipe, kind_of(pipe), root)
    return out
