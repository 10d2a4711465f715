"""Schedulers from the C++ core, configured from diffusers' scheduler_config.json.

    >>> from fastgen import schedulers
    >>> s = schedulers.from_config({"_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear", ...})
    >>> s.set_timesteps(25)
    >>> x = s.step(model_output, s.timesteps[0], x)

Arrays are numpy float32 in and out; the schedule math runs in float64 in C++ and reproduces
diffusers' numbers. Unknown classes or bad config values raise fastgen.ConfigError.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import _core
from .errors import ConfigError, InvalidArgumentError

__all__ = ["Scheduler", "from_config", "load_config", "available", "resolve_name", "ALIASES"]

# Short names accepted wherever a scheduler class is named (CLI --scheduler, pipe(scheduler=...)).
# Each maps to a diffusers class name plus config overrides.
ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "euler-ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpm++-karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    "dpm": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver"}),
    "lcm": ("LCMScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "flow-euler": ("FlowMatchEulerDiscreteScheduler", {}),
}


def available() -> list[str]:
    """diffusers class names the core implements."""
    return list(_core.scheduler_names())


def resolve_name(name: str) -> tuple[str, dict[str, Any]]:
    """A class name or alias -> (class name, config overrides)."""
    if not isinstance(name, str):
        raise InvalidArgumentError(f"scheduler must be a class name, an alias or a config dict, got {type(name).__name__}")
    key = name.strip()
    if key.lower() in ALIASES:
        cls, over = ALIASES[key.lower()]
        return cls, dict(over)
    if key in available():
        return key, {}
    raise ConfigError(
        f"unknown scheduler {name!r}; use one of {sorted(ALIASES)} or a class name: {', '.join(available())}")


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a diffusers scheduler_config.json."""
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except FileNotFoundError as e:
        raise ConfigError(f"scheduler config not found: {path}") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"scheduler config {path} is not valid JSON: {e}") from e
    if not isinstance(cfg, dict):
        raise ConfigError(f"scheduler config {path} must hold a JSON object")
    return cfg


def from_config(config: Mapping[str, Any] | str | os.PathLike, *, class_name: str | None = None,
                **overrides: Any) -> "Scheduler":
    """Build a scheduler from a diffusers config dict (with ``_class_name``) or a path to one.

    ``class_name`` (a diffusers class name or an alias such as ``"dpm++"``) swaps the sampler while
    keeping the model's schedule (betas, prediction type), like diffusers'
    ``OtherScheduler.from_config(pipe.scheduler.config)``. ``overrides`` replace config keys.
    """
    if isinstance(config, (str, os.PathLike)):
        config = load_config(config)
    if not isinstance(config, Mapping):
        raise ConfigError(f"scheduler config must be a dict or a path, got {type(config).__name__}")
    cfg = dict(config)
    alias_over: dict[str, Any] = {}
    if class_name is not None:
        cls, alias_over = resolve_name(class_name)
    else:
        cls = cfg.get("_class_name")
        if not isinstance(cls, str):
            raise ConfigError("scheduler config has no '_class_name'; pass class_name=")
        cls, alias_over = resolve_name(cls)
    cfg.update(alias_over)
    cfg.update(overrides)
    cfg["_class_name"] = cls
    return Scheduler(_core.make_scheduler(cls, cfg), cfg)


def _timestep(t: Any) -> float:
    if isinstance(t, np.ndarray):
        if t.size != 1:
            raise InvalidArgumentError(f"timestep must be a scalar, got an array of shape {t.shape}")
        t = t.reshape(())[()]
    try:
        v = float(t)
    except (TypeError, ValueError) as e:
        raise InvalidArgumentError(f"timestep must be a number, got {type(t).__name__}") from e
    if not math.isfinite(v):
        raise InvalidArgumentError(f"timestep must be finite, got {v}")
    return v


class Scheduler:
    """A configured scheduler. Not thread-safe: use ``clone()`` per concurrent generation."""

    __slots__ = ("_impl", "_config")

    def __init__(self, impl: Any, config: dict[str, Any]):
        self._impl = impl
        self._config = config

    @property
    def impl(self):
        """The C++ object (what fastgen.sample_loop drives)."""
        return self._impl

    @property
    def class_name(self) -> str:
        return self._impl.class_name

    @property
    def config(self) -> dict[str, Any]:
        return dict(self._config)

    def clone(self) -> "Scheduler":
        return Scheduler(self._impl.clone(), self._config)

    def set_timesteps(self, num_inference_steps: int, *, mu: float | None = None) -> None:
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
            raise InvalidArgumentError(f"num_inference_steps must be an int, got {type(num_inference_steps).__name__}")
        self._impl.set_timesteps(int(num_inference_steps), None if mu is None else float(mu))

    @property
    def timesteps(self) -> np.ndarray:
        ts = self._impl.timesteps_f64
        return ts.astype(np.int64) if self._impl.integer_timesteps else ts.astype(np.float32)

    @property
    def init_noise_sigma(self) -> float:
        return float(self._impl.init_noise_sigma)

    @property
    def order(self) -> int:
        return int(self._impl.order)

    @property
    def num_inference_steps(self) -> int | None:
        n = self._impl.num_inference_steps
        return n or None

    @property
    def step_index(self) -> int | None:
        return self._impl.step_index

    @property
    def begin_index(self) -> int | None:
        return self._impl.begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        self._impl.set_begin_index(int(begin_index))

    def manual_seed(self, seed: int) -> "Scheduler":
        """Seed the generator stochastic steps draw from when no ``noise`` is given."""
        self._impl.manual_seed(int(seed) & 0xFFFFFFFFFFFFFFFF)
        return self

    def is_stochastic(self, eta: float = 0.0) -> bool:
        return bool(self._impl.is_stochastic(float(eta)))

    def scale_model_input(self, sample: np.ndarray, timestep: Any) -> np.ndarray:
        return self._impl.scale_model_input(sample, _timestep(timestep))

    def step(self, model_output: np.ndarray, timestep: Any, sample: np.ndarray, noise: np.ndarray | None = None,
             eta: float = 0.0) -> np.ndarray:
        """One denoising step; returns the previous sample (a new array)."""
        return self._impl.step(model_output, _timestep(timestep), sample, noise, float(eta))

    def add_noise(self, original_samples: np.ndarray, noise: np.ndarray, timestep: Any) -> np.ndarray:
        """Noise clean samples to ``timestep`` (flow matching: diffusers' scale_noise)."""
        return self._impl.add_noise(original_samples, noise, _timestep(timestep))

    def __repr__(self) -> str:
        return f"<fastgen Scheduler {self.class_name} steps={self.num_inference_steps}>"
