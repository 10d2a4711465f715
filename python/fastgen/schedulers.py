"""Schedulers from the C++ core, configured from diffusers' scheduler_config.json.

    >>> from fastgen import schedulers
    >>> s = schedulers.from_config({"_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear", ...})
    >>> s.set_timesteps(25)
    >>> x = s.step(model_output, s.timesteps[0], x)

Arrays are numpy float32 in and out; the schedule math runs in float64 in C++ and reproduces
diffusers' numbers. Unknown classes or bad config values raise fastgen.ConfigError.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import _core
from . import _schema as S
from .errors import ConfigError, InvalidArgumentError

__all__ = ["Scheduler", "from_config", "load_config", "validate_config", "available", "resolve_name", "ALIASES",
           "CONFIG_SCHEMA"]

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


# ------------------------------------------------------------------------------ config validation
# The keys fastgen's schedulers read, with their types and ranges, checked before the C++ core sees a
# config (by load_config, so an engine's scheduler_config.json is refused at Pipeline.load, and by
# from_config). null means "the default", as in diffusers. Unknown keys pass (diffusers configs carry
# keys for other classes); the C++ core then applies its per-class rules (supported values of
# algorithm_type, solver_type, variance_type, final_sigmas_type, ...).

MAX_CONFIG_BYTES = 16 * 1024 * 1024
MAX_TRAIN_TIMESTEPS = 100_000
#: beta_start / beta_end defaults by class (the C++ core's), for the beta_start <= beta_end rule
_BETA_DEFAULTS = {"LCMScheduler": (0.00085, 0.012)}


def _n(**kw):
    return S.Num(nullable=True, **kw)


def _i(lo=None, hi=None, **kw):
    return S.Int(lo, hi, nullable=True, integral_float=True, **kw)


def _b():
    return S.Bool(nullable=True)


def _s(choices=None):
    return S.Str(choices, nullable=True, max_len=256)


def _beta_rule(c: dict, path: str) -> None:
    if c.get("trained_betas") is not None:
        return
    d0, d1 = _BETA_DEFAULTS.get(str(c.get("_class_name")), (0.0001, 0.02))
    start = d0 if c.get("beta_start") is None else c["beta_start"]
    end = d1 if c.get("beta_end") is None else c["beta_end"]
    if start > end:
        raise S.SchemaError("beta_start", f"beta_start ({start}) must be <= beta_end ({end})")


def _sigma_rule(c: dict, path: str) -> None:
    lo, hi = c.get("sigma_min"), c.get("sigma_max")
    if lo is not None and hi is not None and lo > hi:
        raise S.SchemaError("sigma_min", f"sigma_min ({lo}) must be <= sigma_max ({hi})")


def _shift_rule(c: dict, path: str) -> None:
    # pipelines derive mu = base_shift + (seq - base_seq) * (max_shift - base_shift) / (max_seq - base_seq)
    base = 256 if c.get("base_image_seq_len") is None else c["base_image_seq_len"]
    top = 4096 if c.get("max_image_seq_len") is None else c["max_image_seq_len"]
    if c.get("use_dynamic_shifting") and not base < top:
        raise S.SchemaError("max_image_seq_len", f"max_image_seq_len ({top}) must be > base_image_seq_len ({base}) "
                                                 "with use_dynamic_shifting")


def _fits_double(x: int) -> bool:
    try:
        float(x)
    except OverflowError:
        return False
    return True


def _core_representable(c: dict, path: str) -> None:
    """Every value reaches the C++ core (unknown keys too): ints must fit int64, list numbers a double."""
    for key, v in c.items():
        if isinstance(v, int) and not isinstance(v, bool) and not S.INT64_MIN <= v <= S.INT64_MAX:
            raise S.SchemaError(key, f"{key} must be an int in [-2**63, 2**63), got {S.show(v)}")
        if isinstance(v, (list, tuple)):
            for i, x in enumerate(v):
                if isinstance(x, int) and not isinstance(x, bool) and not _fits_double(x):
                    raise S.SchemaError(f"{key}[{i}]", f"{key}[{i}] must be a number a double can hold, "
                                                       f"got {S.show(x)}")


CONFIG_SCHEMA = S.Obj({
    "_class_name": _s(),
    "num_train_timesteps": _i(1, MAX_TRAIN_TIMESTEPS),
    "beta_start": _n(lo=0, hi=1, lo_open=True, hi_open=True),
    "beta_end": _n(lo=0, hi=1, lo_open=True, hi_open=True),
    "beta_schedule": _s(("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace")),
    "trained_betas": S.List(S.Num(0, 1, lo_open=True), min_len=1, max_len=MAX_TRAIN_TIMESTEPS, nullable=True),
    "prediction_type": _s(("epsilon", "v_prediction", "sample", "original_sample", "flow_prediction")),
    "timestep_spacing": _s(("leading", "trailing", "linspace")),
    "steps_offset": _i(0, MAX_TRAIN_TIMESTEPS),
    "rescale_betas_zero_snr": _b(),
    "clip_sample": _b(),
    "clip_sample_range": _n(lo=0, lo_open=True),
    "set_alpha_to_one": _b(),
    "skip_prk_steps": _b(),
    "thresholding": _b(),
    "dynamic_thresholding_ratio": _n(lo=0, hi=1),
    "sample_max_value": _n(lo=0, lo_open=True),
    "solver_order": _i(1, 3),
    "algorithm_type": _s(),
    "solver_type": _s(),
    "variance_type": _s(),
    "final_sigmas_type": _s(("zero", "sigma_min")),
    "lower_order_final": _b(),
    "euler_at_final": _b(),
    "predict_x0": _b(),
    "disable_corrector": S.List(S.Int(0, MAX_TRAIN_TIMESTEPS, integral_float=True), max_len=MAX_TRAIN_TIMESTEPS,
                                nullable=True),
    "use_karras_sigmas": _b(),
    "use_exponential_sigmas": _b(),
    "use_beta_sigmas": _b(),
    "use_lu_lambdas": _b(),
    "use_flow_sigmas": _b(),
    "interpolation_type": _s(("linear", "log_linear")),
    "timestep_type": _s(("discrete", "continuous")),
    "sigma_min": _n(lo=0, lo_open=True),
    "sigma_max": _n(lo=0, lo_open=True),
    "shift": _n(lo=0, lo_open=True),
    "use_dynamic_shifting": _b(),
    "base_shift": _n(),
    "max_shift": _n(),
    "base_image_seq_len": _i(1, S.INT32_MAX),
    "max_image_seq_len": _i(1, S.INT32_MAX),
    "invert_sigmas": _b(),
    "shift_terminal": _n(lo=0, hi=1, hi_open=True),
    "time_shift_type": _s(("exponential", "linear")),
    "stochastic_sampling": _b(),
    "original_inference_steps": _i(1, MAX_TRAIN_TIMESTEPS),
    "timestep_scaling": _n(lo=0, lo_open=True),
}, rules=(_core_representable, _beta_rule, _sigma_rule, _shift_rule))


def validate_config(config: Mapping[str, Any], where: str = "scheduler config") -> dict[str, Any]:
    """Check a scheduler config's known keys (types, ranges, beta_start <= beta_end, ...) and return it
    normalised (ints as int, numbers as float). Raises ConfigError naming the key."""
    if not isinstance(config, Mapping):
        raise ConfigError(f"{where} must be an object, got {S.show(config)}")
    bad = [k for k in config if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"{where}: keys must be strings, got {bad[0]!r}")
    try:
        return CONFIG_SCHEMA.check(dict(config), "")
    except S.SchemaError as e:
        raise ConfigError(f"{where}: {e}") from None


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a diffusers scheduler_config.json (at most 16 MiB, nesting bounded) and check it (validate_config)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError as e:
        raise ConfigError(f"scheduler config not found: {path}") from e
    except OSError as e:
        raise ConfigError(f"scheduler config {path} cannot be read: {e}") from e
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"scheduler config {path} is over {MAX_CONFIG_BYTES} bytes")
    try:
        cfg = S.load_json_bytes(raw)
    except ValueError as e:
        raise ConfigError(f"scheduler config {path} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"scheduler config {path} must hold a JSON object")
    return validate_config(cfg)


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
    cfg = validate_config(cfg)
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
