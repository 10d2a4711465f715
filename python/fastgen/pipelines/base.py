"""Pipeline.load and what every task pipeline shares: lazy, cached, thread-safe sessions."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any

from ..backends import BACKENDS, open_session
from ..backends.base import Session
from ..errors import InvalidArgumentError, ManifestError
from ..manifest import Manifest, load_manifest

# Sessions are shared between Pipeline objects loading the same engine with the same backend
# settings, so a second Pipeline.load of a directory is cheap. Keyed by the manifest's identity.
_SESSION_CACHE: dict[tuple, dict[str, Session]] = {}
_CACHE_LOCK = threading.Lock()


def _demo_dir() -> str:
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "demo")


def resolve_engine_dir(engine_dir: str | os.PathLike) -> str:
    """'demo' names the engine shipped inside the package; anything else is a directory path."""
    path = os.fspath(engine_dir)
    if path == "demo" and not os.path.isdir(path):
        demo = _demo_dir()
        if not os.path.isdir(demo):
            raise ManifestError("the demo engine is not part of this installation (python/fastgen/models/demo)")
        return demo
    return path


@dataclass
class PipelineOutput:
    """What a generation returns: ``images`` (PIL list, NHWC float array or latents)."""

    images: Any
    seed: int | None = None
    timings: dict[str, float] = field(default_factory=dict)


class Pipeline:
    """Base of every task pipeline. Use ``Pipeline.load(engine_dir)``."""

    kind: str = ""

    @staticmethod
    def load(engine_dir: str | os.PathLike, backend: str = "onnxruntime", device: str = "cpu", providers=None,
             session_options=None) -> "Pipeline":
        """Open an engine directory and return the pipeline its manifest asks for.

        Components load lazily on first use and are shared with other pipelines of the same engine.
        """
        if backend not in BACKENDS:
            raise InvalidArgumentError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if device not in ("cpu", "cuda"):
            raise InvalidArgumentError(f"device must be 'cpu' or 'cuda', got {device!r}")
        manifest = load_manifest(resolve_engine_dir(engine_dir))
        cls = _pipeline_class(manifest)
        return cls(manifest, backend=backend, device=device, providers=providers, session_options=session_options)

    def __init__(self, manifest: Manifest, *, backend: str = "onnxruntime", device: str = "cpu", providers=None,
                 session_options=None):
        self.manifest = manifest
        self.backend = backend
        self.device = device
        self._providers = providers
        self._session_options = session_options
        if session_options is None:
            mtime = os.stat(os.path.join(manifest.root, "fastgen.json")).st_mtime_ns
            key = (manifest.root, mtime, backend, device, tuple(map(str, providers or ())))
            with _CACHE_LOCK:
                self._sessions = _SESSION_CACHE.setdefault(key, {})
        else:
            self._sessions = {}
        self._lock = threading.Lock()

    @property
    def engine_dir(self) -> str:
        return self.manifest.root

    def session(self, name: str) -> Session:
        s = self._sessions.get(name)
        if s is not None:
            return s
        with self._lock:
            s = self._sessions.get(name)
            if s is None:
                s = open_session(self.manifest, name, backend=self.backend, device=self.device,
                                 providers=self._providers, session_options=self._session_options)
                self._sessions[name] = s
        return s

    def __repr__(self) -> str:
        return f"<fastgen {type(self).__name__} {self.manifest.root} ({self.backend}, {self.device})>"


def _pipeline_class(manifest: Manifest):
    kind, family = manifest.kind, manifest.family
    if kind in ("text2img", "inpaint"):
        from .diffusion import pipeline_for_family

        return pipeline_for_family(family)
    if kind == "captioning":
        try:
            from .caption import CaptioningPipeline
        except ImportError as e:
            raise ManifestError(f"captioning engines are not supported by this build: {e}") from e
        return CaptioningPipeline
    if kind in ("text2video", "img2video"):
        try:
            from .video import pipeline_for_video
        except ImportError as e:
            raise ManifestError(f"video engines are not supported by this build: {e}") from e
        return pipeline_for_video(manifest)
    raise ManifestError(f"no pipeline for engine kind {kind!r}")
