"""Exception hierarchy. Every error fastgen raises on bad input is a FastgenError."""

from __future__ import annotations

__all__ = [
    "FastgenError",
    "ConfigError",
    "InvalidArgumentError",
    "ShapeError",
    "ScheduleError",
    "ManifestError",
    "ModelLoadError",
    "BackendError",
    "ExportError",
    "UnsupportedError",
    "CancelledError",
    "ResourceError",
    "ConcurrentUseError",
]


class FastgenError(Exception):
    """Base class of every error raised by fastgen."""


class ConfigError(FastgenError, ValueError):
    """A configuration (scheduler config, manifest config section, option) has a bad or unknown value."""


class InvalidArgumentError(FastgenError, ValueError):
    """A call argument is out of range, of the wrong type, or inconsistent with another."""


class ShapeError(InvalidArgumentError):
    """An array has the wrong shape or dtype."""


class ScheduleError(InvalidArgumentError):
    """A timestep is not part of the scheduler's current schedule, or set_timesteps was not called."""


class ManifestError(FastgenError):
    """The engine directory or its fastgen.json is missing, malformed or unsafe."""


class ModelLoadError(FastgenError):
    """A model file (ONNX graph, tokenizer, TensorRT plan) is missing, truncated or unreadable."""


class BackendError(FastgenError):
    """The inference backend (ONNX Runtime, TensorRT) failed while running a component."""


class ExportError(FastgenError):
    """Exporting a checkpoint failed (unsupported model, missing component, parity failure)."""


class UnsupportedError(FastgenError):
    """The requested feature is not available in this build or on this machine."""


class CancelledError(FastgenError):
    """The work was cancelled (callback returned False, or the request was cancelled)."""


class ResourceError(FastgenError, MemoryError):
    """The core ran out of memory (std::bad_alloc), or a buffer would be too large to allocate."""


class ConcurrentUseError(FastgenError, RuntimeError):
    """An object that is not thread-safe (a Scheduler, a FrameRing) is already in use by a running call.

    Raised instead of racing: ``clone()`` the scheduler (one per thread or generation) to use it concurrently.
    """
