"""The C++ denoising loop and Philox noise, as Python functions."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from . import _core
from ._args import check_float
from .errors import InvalidArgumentError
from .schedulers import Scheduler

__all__ = ["sample_loop", "randn"]


def sample_loop(scheduler: Scheduler, latents: np.ndarray, denoise: Callable[[np.ndarray, float], np.ndarray], *,
                guidance_scale: float = 7.5, guidance_rescale: float = 0.0, eta: float = 0.0,
                callback: Callable[[int, float, np.ndarray], bool | None] | None = None) -> np.ndarray:
    """Run every (remaining) step of ``scheduler`` in C++ and return the final latents.

    ``latents`` (batch, ...) float32 are the loop's starting point (already multiplied by
    ``init_noise_sigma``). With ``guidance_scale > 1`` the model input is the classifier-free-guidance
    batch of 2 * batch rows, unconditional half first, and ``denoise(x, t)`` must return predictions
    for all of them; guidance (and ``guidance_rescale``) are applied in C++. ``callback(step, t,
    latents)`` runs after each step (it may change ``latents`` in place, e.g. to blend an inpainting
    mask); returning False stops early. The GIL is released except inside ``denoise`` and ``callback``.

    ``denoise`` must treat ``x`` as read-only: the loop reuses that buffer every step and, for
    schedulers without input scaling, keeps the latents in its first half. Each step is one pass
    over memory: guidance, the scheduler update and the next step's model input are computed
    together (results are identical to the step-by-step loop).
    """
    if not isinstance(scheduler, Scheduler):
        raise InvalidArgumentError(f"scheduler must be a fastgen Scheduler, got {type(scheduler).__name__}")
    if not callable(denoise):
        raise InvalidArgumentError("denoise must be callable: denoise(x, t) -> prediction")
    if callback is not None and not callable(callback):
        raise InvalidArgumentError("callback must be callable or None")
    g = check_float("guidance_scale", guidance_scale, 0.0)
    r = check_float("guidance_rescale", guidance_rescale, 0.0, 1.0)
    e = check_float("eta", eta, 0.0)
    return _core.sample_loop(scheduler.impl, latents, denoise, g, r, e, callback)


def randn(shape: Sequence[int] | int, seed: int, *, offset: int = 0) -> np.ndarray:
    """Standard normal float32 noise from the core's counter-based Philox generator.

    The same (shape, seed) gives the same values on every machine and backend; element i of the
    flattened array depends only on (seed, offset, i), so a larger draw extends a smaller one.
    """
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape),)
    try:
        dims = tuple(int(d) for d in shape)
    except (TypeError, ValueError) as e:
        raise InvalidArgumentError(f"shape must be a sequence of ints, got {shape!r}") from e
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InvalidArgumentError(f"seed must be an int, got {type(seed).__name__}")
    if not (0 <= int(seed) < 2**64) or not (0 <= int(offset) < 2**64):
        raise InvalidArgumentError(f"seed and offset must be in [0, 2**64), got {seed}, {offset}")
    return _core.randn(dims, int(seed), int(offset))
