"""Running a denoiser with step caching: which graphs a step runs, as the core's policy decides.

``make_runner(spec, manifest, session, denoiser, steps)`` returns a callable ``runner(inputs) ->
noise_pred`` that the pipelines' ``denoise`` uses instead of one ``session.run``; it is called once per
step, in order, and ``runner.stats()`` is the output's ``cache_stats``. Without a cache the pipelines
keep their plain call.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _core
from ..cache import CacheSpec, engine_cache_kinds
from ..errors import ManifestError

__all__ = ["make_runner", "DEEP_FEATURE_INPUT"]

#: the shallow UNet's input holding the deep feature of the last full step
DEEP_FEATURE_INPUT = "deep_feature"


def _f32(a: np.ndarray) -> np.ndarray:
    return a if a.dtype == np.float32 else a.astype(np.float32)


class _Runner:
    """Per-step bookkeeping shared by the kinds: which steps ran the whole network."""

    def __init__(self, spec: CacheSpec):
        self.spec = spec
        self.full: list[bool] = []

    def stats(self) -> dict[str, Any]:
        full = [i for i, f in enumerate(self.full) if f]
        return {"kind": self.spec.kind, "setting": self.spec.describe(), "steps": len(self.full),
                "full_steps": full, "cached_steps": [i for i, f in enumerate(self.full) if not f],
                "full_calls": len(full)}


class DeepCacheRunner(_Runner):
    """Full UNet (noise_pred and the deep feature) on the policy's full steps, the shallow UNet on the others."""

    def __init__(self, spec, record: dict, session, denoiser: str, steps: int):
        super().__init__(spec)
        branch = record.get("branches", {}).get(str(spec["branch"]))
        if not isinstance(branch, dict) or "component" not in branch or "feature" not in branch:
            raise ManifestError(f"fastgen.json config.step_cache.deepcache has no usable branch {spec['branch']}")
        self.full_net, self.shallow = session(denoiser), session(branch["component"])
        self.feature_name = branch["feature"]
        self.shallow_inputs = set(self.shallow.input_names)  # a shallow graph may not need the text
        self.schedule = set(_core.deepcache_full_steps(steps, spec["interval"], spec["uniform"], spec["pow"],
                                                       spec["center"]))
        self.feature: np.ndarray | None = None

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        i = len(self.full)
        full = i in self.schedule or self.feature is None
        self.full.append(full)
        if full:
            out = self.full_net.run(inputs, ["noise_pred", self.feature_name])
            self.feature = out[self.feature_name]
            return _f32(out["noise_pred"])
        feeds = {k: v for k, v in inputs.items() if k in self.shallow_inputs}
        feeds[DEEP_FEATURE_INPUT] = self.feature
        return _f32(self.shallow.run(feeds, ["noise_pred"])["noise_pred"])


class FirstBlockRunner(_Runner):
    """SD3 in three graphs: the first block (always), the other blocks (when the policy says so), and the
    output layers over the cached residual otherwise (diffusers' FirstBlockCache)."""

    def __init__(self, spec, record: dict, session, denoiser: str, steps: int):
        super().__init__(spec)
        try:
            self.head, self.body, self.out = (session(record[k]) for k in ("head", "body", "out"))
        except KeyError as e:
            raise ManifestError(f"fastgen.json config.step_cache.first_block lacks {e}") from None
        self.policy = _core.FirstBlockCache(spec["threshold"])
        self.tail_residual: np.ndarray | None = None

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        h = self.head.run(inputs, ["head_hidden", "head_encoder", "temb", "head_residual"])
        full = self.policy.should_compute(_f32(h["head_residual"])) or self.tail_residual is None
        self.full.append(full)
        if full:
            b = self.body.run({"head_hidden": h["head_hidden"], "head_encoder": h["head_encoder"], "temb": h["temb"],
                               "hidden_states": inputs["hidden_states"]}, ["noise_pred", "tail_residual"])
            self.tail_residual = b["tail_residual"]
            return _f32(b["noise_pred"])
        hidden = self.tail_residual + h["head_hidden"]
        return _f32(self.out.run({"hidden": hidden, "temb": h["temb"], "hidden_states": inputs["hidden_states"]},
                                 ["noise_pred"])["noise_pred"])


class TaylorSeerRunner(_Runner):
    """The whole network on the policy's full steps; elsewhere the Taylor extrapolation of its output
    (diffusers' TaylorSeer lite mode extrapolates proj_out, whose output the final reshape only permutes)."""

    def __init__(self, spec, record: dict, session, denoiser: str, steps: int):
        super().__init__(spec)
        self.net = session(denoiser)
        until = spec["until"]
        self.policy = _core.TaylorSeer(spec["interval"], spec["warmup"], -1 if until is None else until, spec["order"])
        self.like: np.ndarray | None = None

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        full = self.policy.next_step()
        self.full.append(full)
        if full:
            out = _f32(self.net.run(inputs, ["noise_pred"])["noise_pred"])
            self.policy.update(out)
            self.like = out
            return out
        return self.policy.predict(self.like)


RUNNERS = {"deepcache": DeepCacheRunner, "first_block": FirstBlockRunner, "taylorseer": TaylorSeerRunner}


def make_runner(spec: CacheSpec, manifest, session, denoiser: str, steps: int) -> _Runner:
    """The runner of a validated spec (``fastgen.cache.check_cache``) for ``steps`` network calls."""
    record = engine_cache_kinds(manifest)[spec.kind]
    return RUNNERS[spec.kind](spec, record, session, denoiser, steps)
