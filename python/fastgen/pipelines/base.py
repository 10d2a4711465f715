"""The pipeline protocol and what every task pipeline holds: the engine's components.

Every task pipeline turns its call's arguments into a typed, validated request object
(``pipe.validate(*args, **kwargs)``: unknown keywords, types and ranges are checked there and
nowhere else) and runs it (``pipe.run(request)``); ``pipe(...)`` is the two in one. The CLI and the
server build requests with the same ``validate``.

Sessions: ``Components`` opens each component lazily and is shared by the pipelines that load the
same engine files with the same backend settings. The cache holds it weakly, so its sessions are
freed once no pipeline holds it (``pipe.close()``, ``with Pipeline.load(...) as pipe``, or garbage
collection); a re-exported engine (new fastgen.json) gets new sessions.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import threading
import weakref
from abc import ABC, abstractmethod
from typing import Any

from .._args import check_int, check_keywords
from ..backends import BACKENDS, check_precision, check_variant, open_session
from ..backends.base import Session
from ..errors import FastgenError, InvalidArgumentError, ManifestError
from ..manifest import Manifest, load_manifest

DEVICES = ("cpu", "cuda")

# engine kind -> (module, class); imported on first use, so loading an image engine never imports video code
PIPELINE_CLASSES = {
    "text2img": ("fastgen.pipelines.image", "pipeline_class"),
    "inpaint": ("fastgen.pipelines.image", "pipeline_class"),
    "text2video": ("fastgen.pipelines.video", "pipeline_class"),
    "img2video": ("fastgen.pipelines.svd", "pipeline_class"),
    "captioning": ("fastgen.pipelines.caption", "pipeline_class"),
}


def _demo_dir() -> str:
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "demo")


def resolve_engine_dir(engine_dir: Any) -> str:
    """'demo' names the engine shipped inside the package; anything else is a directory path."""
    if not isinstance(engine_dir, (str, os.PathLike)) or isinstance(engine_dir, bytes):
        raise InvalidArgumentError(f"engine_dir must be a path (str or os.PathLike) or 'demo', "
                                   f"got {type(engine_dir).__name__}")
    path = os.fspath(engine_dir)
    if not isinstance(path, str):  # a PathLike returning bytes
        raise InvalidArgumentError(f"engine_dir must be a str path, got {type(path).__name__}")
    if not path or "\x00" in path:
        raise InvalidArgumentError(f"engine_dir {path!r} is not a valid path")
    if path == "demo" and not os.path.isdir(path):
        demo = _demo_dir()
        if not os.path.isdir(demo):
            raise ManifestError("the demo engine is not part of this installation (python/fastgen/models/demo)")
        return demo
    return path


class Components:
    """The engine's sessions (opened lazily, thread-safe) and manifest, shared by pipelines."""

    def __init__(self, manifest: Manifest, backend: str, device: str, providers, session_options,
                 precision: str = "fp32", threads: int | None = None, cpu_fallback: bool = False):
        self.manifest = manifest
        self.cpu_fallback = cpu_fallback
        self.backend, self.device, self.precision, self.threads = backend, device, precision, threads
        self._providers, self._session_options = providers, session_options
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def session(self, name: str) -> Session:
        s = self._sessions.get(name)
        if s is not None:
            return s
        with self._lock:
            s = self._sessions.get(name)
            if s is None:
                s = open_session(self.manifest, name, backend=self.backend, device=self.device,
                                 providers=self._providers, session_options=self._session_options,
                                 precision=self.precision, threads=self.threads, cpu_fallback=self.cpu_fallback)
                self._sessions[name] = s
        return s

    def loaded(self) -> list[str]:
        return list(self._sessions)


# (engine identity, backend settings) -> Components, held weakly: freed when no pipeline holds it
_COMPONENTS: "weakref.WeakValueDictionary[tuple, Components]" = weakref.WeakValueDictionary()
_COMPONENTS_LOCK = threading.Lock()


def _engine_identity(manifest: Manifest) -> tuple:
    """The engine's cache key: the identity of the manifest file load_manifest read (not a second stat,
    which could see a manifest replaced in between)."""
    return (manifest.root, *manifest.identity)


def shared_components(manifest: Manifest, backend: str, device: str, providers, session_options,
                      precision: str = "fp32", threads: int | None = None, cpu_fallback: bool = False) -> Components:
    if session_options is not None:  # options objects are not comparable: never shared
        return Components(manifest, backend, device, providers, session_options, precision, threads, cpu_fallback)
    key = (_engine_identity(manifest), backend, device, tuple(map(str, providers or ())), precision, threads,
           cpu_fallback)
    with _COMPONENTS_LOCK:
        c = _COMPONENTS.get(key)
        if c is None:
            c = Components(manifest, backend, device, providers, None, precision, threads, cpu_fallback)
            _COMPONENTS[key] = c
        return c


def cached_engines() -> int:
    """How many engines have live shared sessions (for tests and diagnostics)."""
    with _COMPONENTS_LOCK:
        return len(_COMPONENTS)


def _shape_checked(validate):
    """Wrap a pipeline's ``validate`` so that a call of the wrong shape (too many positionals, a keyword given
    twice) raises InvalidArgumentError like every other bad argument, not Python's TypeError."""
    sig = inspect.signature(validate)

    @functools.wraps(validate)
    def checked(self, *args, **kwargs):
        try:
            sig.bind(self, *args, **kwargs)
        except TypeError as e:
            raise InvalidArgumentError(f"{type(self).__name__}: {e}") from None
        return validate(self, *args, **kwargs)

    return checked


class Pipeline(ABC):
    """Base of every task pipeline. Use ``Pipeline.load(engine_dir)``."""

    kind: str = ""

    @staticmethod
    def load(engine_dir: str | os.PathLike, backend: str = "onnxruntime", device: str = "cpu", providers=None,
             session_options=None, precision: str = "fp32", threads: int | None = None,
             cpu_fallback: bool = False) -> "Pipeline":
        """Open an engine directory and return the pipeline its manifest asks for.

        ``precision``: "fp32" (the exact path, the default); with ``backend="openvino"`` also "bf16" or
        "auto" (bf16 where the CPU has native bf16); "int8" (openvino or onnxruntime) runs the engine's int8
        variant, made by ``fastgen optimize ENGINE --int8``. ``threads``: the most threads one network call uses
        (openvino; default all cores). ``cpu_fallback``: with device="cuda", warn and run on the CPU when
        ONNX Runtime's CUDA provider did not load (default: BackendError naming the cause). Components load
        lazily on first use and are shared with other pipelines of the same engine and settings.
        """
        if not isinstance(backend, str) or backend not in BACKENDS:
            raise InvalidArgumentError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if not isinstance(device, str) or device not in DEVICES:
            raise InvalidArgumentError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
        if providers is not None and (not isinstance(providers, (list, tuple))
                                      or not all(isinstance(p, (str, tuple)) for p in providers)):
            raise InvalidArgumentError("providers must be a list of ONNX Runtime provider names (or (name, options))")
        check_precision(backend, precision, device)
        if threads is not None:
            threads = check_int("threads", threads, 1, 1024)
        if not isinstance(cpu_fallback, bool):
            raise InvalidArgumentError(f"cpu_fallback must be a bool, got {type(cpu_fallback).__name__}")
        manifest = load_manifest(resolve_engine_dir(engine_dir))
        check_variant(manifest, backend, precision)  # precision="int8": the engine's int8 variant, checked
        cls = pipeline_class(manifest)
        return cls(shared_components(manifest, backend, device, providers, session_options, precision, threads,
                                     cpu_fallback))

    def __init__(self, components: Components):
        if not isinstance(components, Components):
            raise InvalidArgumentError("pipelines are made by fastgen.Pipeline.load(engine_dir)")
        self._components: Components | None = components
        self.manifest = components.manifest
        self.backend, self.device, self.precision = components.backend, components.device, components.precision

    # ---------------------------------------------------------------- the protocol
    @abstractmethod
    def validate(self, *args, **kwargs) -> Any:
        """The call's arguments -> a validated request object (raises InvalidArgumentError)."""

    @abstractmethod
    def run(self, request: Any) -> Any:
        """Run a request made by ``validate``."""

    def refuse_unknown(self, given: dict, accepted=()) -> None:
        """Refuse the keywords in ``given`` (a validate's ``**kwargs``) that are not in ``accepted``,
        naming the closest valid keyword of this pipeline."""
        unknown = {k: v for k, v in given.items() if k not in accepted}
        if unknown:
            params = inspect.signature(self.validate).parameters.values()
            valid = {p.name for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD} | set(accepted)
            check_keywords(f"{type(self).__name__}", unknown, valid)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "validate" in cls.__dict__ and not getattr(cls.__dict__["validate"], "__isabstractmethod__", False):
            cls.validate = _shape_checked(cls.__dict__["validate"])

    def __call__(self, *args, **kwargs):
        return self.run(self.validate(*args, **kwargs))

    # ---------------------------------------------------------------- components
    @property
    def engine_dir(self) -> str:
        return self.manifest.root

    @property
    def components(self) -> Components:
        c = self._components
        if c is None:
            raise FastgenError(f"this pipeline ({self.manifest.root}) is closed")
        return c

    def session(self, name: str) -> Session:
        return self.components.session(name)

    def close(self) -> None:
        """Release this pipeline's hold on the engine's sessions (freed when no other pipeline holds them)."""
        self._components = None

    @property
    def closed(self) -> bool:
        return self._components is None

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = " closed" if self.closed else ""
        return f"<fastgen {type(self).__name__} {self.manifest.root} ({self.backend}, {self.device}){state}>"


def pipeline_class(manifest: Manifest) -> type[Pipeline]:
    try:
        modname, attr = PIPELINE_CLASSES[manifest.kind]
    except KeyError:
        raise ManifestError(f"no pipeline for engine kind {manifest.kind!r}") from None
    return getattr(importlib.import_module(modname), attr)(manifest)
