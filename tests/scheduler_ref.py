"""Differential-test harness: run a fastgen scheduler and the diffusers one side by side.

Both get the same starting latents, the same fake denoiser (a smooth nonlinear function of the
sample and t, so errors in any coefficient show up) and, for stochastic steps, the same noise
(diffusers' randn_tensor is patched to return it). Every step's sample is compared.
"""

from __future__ import annotations

import importlib
from contextlib import contextmanager

import numpy as np
import torch

from fastgen import schedulers

SHAPE = (2, 4, 6, 5)


def fake_model(x: np.ndarray, t: float) -> np.ndarray:
    """A denoiser stand-in that depends on the input and the timestep (float32 numpy)."""
    tt = np.float32(t) / np.float32(1000.0)
    return (np.float32(0.6) * x * np.cos(np.float32(3.0) * tt) + np.float32(0.2) * np.sin(x + tt)
            - np.float32(0.05) * tt).astype(np.float32)


def diffusers_scheduler(config: dict):
    import diffusers

    cls = getattr(diffusers, config["_class_name"])
    return cls.from_config({k: v for k, v in config.items() if k != "_class_name"})


@contextmanager
def patched_noise(module_name: str, noises: list[np.ndarray]):
    """Make diffusers' randn_tensor in `module_name` return `noises` in order."""
    mod = importlib.import_module(module_name)
    orig = mod.randn_tensor
    it = iter(noises)

    def fake(shape, generator=None, device=None, dtype=None, layout=None):
        n = next(it)
        assert tuple(n.shape) == tuple(shape), (n.shape, shape)
        return torch.from_numpy(n.copy()).to(dtype or torch.float32)

    mod.randn_tensor = fake
    try:
        yield
    finally:
        mod.randn_tensor = orig


def _ref_init_noise_sigma(ref) -> float:
    """diffusers' init_noise_sigma (flow-matching schedulers have none: 1.0)."""
    return float(getattr(ref, "init_noise_sigma", 1.0))


def _ref_scale(ref, x, t):
    """diffusers' scale_model_input (flow-matching schedulers have none: identity)."""
    if not hasattr(ref, "scale_model_input"):
        return x
    return ref.scale_model_input(x, torch.tensor(t))


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))) / (np.max(np.abs(b)) + 1e-6))


def compare_trajectories(config: dict, steps: int, *, seed: int = 0, eta: float = 0.0, mu: float | None = None,
                         tol: float = 1e-4, noise_module: str | None = None, shape=SHAPE,
                         step_kwargs: dict | None = None, begin_index: int | None = None):
    """Run both schedulers over the whole schedule; assert timesteps equal and per-step rel err <= tol.

    Returns (fastgen_final, diffusers_final, max_rel_err).
    """
    rng = np.random.RandomState(seed)
    ref = diffusers_scheduler(config)
    ours = schedulers.from_config(config)
    kw = {} if mu is None else {"mu": mu}
    ref.set_timesteps(steps, **kw)
    ours.set_timesteps(steps, mu=mu)
    ref_ts = ref.timesteps.numpy()
    np.testing.assert_array_equal(ours.timesteps.dtype.kind, ref_ts.dtype.kind)
    np.testing.assert_allclose(ours.timesteps, ref_ts, rtol=1e-6, atol=1e-4)
    ref_sigma = float(_ref_init_noise_sigma(ref))
    assert ours.init_noise_sigma == np.float32(ref_sigma) or abs(
        ours.init_noise_sigma - ref_sigma) <= 1e-5 * ref_sigma
    if begin_index is not None:
        ref.set_begin_index(begin_index)
        ours.set_begin_index(begin_index)
    start = begin_index or 0
    x0 = (rng.standard_normal(shape).astype(np.float32) * np.float32(ours.init_noise_sigma)).astype(np.float32)
    noises = [rng.standard_normal(shape).astype(np.float32) for _ in ref_ts]
    x_ref = torch.from_numpy(x0.copy())
    x_ours = x0.copy()
    worst = 0.0
    step_kwargs = dict(step_kwargs or {})
    ctx = patched_noise(noise_module, noises[start:]) if noise_module else _null()
    with ctx:
        for i, t in enumerate(ref_ts[start:], start=start):
            # Both models see the reference sample, so a single step's error does not compound.
            inp_ref = _ref_scale(ref, x_ref, t).numpy()
            inp_ours = ours.scale_model_input(x_ref.numpy().copy(), t)
            np.testing.assert_allclose(inp_ours, inp_ref, rtol=tol, atol=tol * (np.abs(inp_ref).max() + 1e-6))
            out = fake_model(inp_ref, float(t))
            kw = dict(step_kwargs)
            if eta:
                kw["eta"] = eta
                kw["variance_noise"] = torch.from_numpy(noises[i].copy())
            ref_next = ref.step(torch.from_numpy(out), torch.tensor(t), x_ref, **kw).prev_sample
            ours_next = ours.step(out, t, x_ref.numpy().copy(), noise=noises[i] if (eta or noise_module) else None,
                                  eta=eta)
            err = rel_err(ours_next, ref_next.numpy())
            worst = max(worst, err)
            assert err <= tol, f"step {i} (t={t}): relative error {err:.3g} > {tol}"
            # also run our own trajectory independently, to check state handling
            x_ref = ref_next
    return ours_next, x_ref.numpy(), worst


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def run_free(config: dict, steps: int, *, seed: int = 0, mu: float | None = None, eta: float = 0.0,
             noise_module: str | None = None, shape=SHAPE):
    """Run each scheduler on its own trajectory (no resync) and return both finals."""
    rng = np.random.RandomState(seed)
    ref = diffusers_scheduler(config)
    ours = schedulers.from_config(config)
    kw = {} if mu is None else {"mu": mu}
    ref.set_timesteps(steps, **kw)
    ours.set_timesteps(steps, mu=mu)
    x0 = (rng.standard_normal(shape).astype(np.float32) * np.float32(ours.init_noise_sigma)).astype(np.float32)
    noises = [rng.standard_normal(shape).astype(np.float32) for _ in ref.timesteps]
    xr, xo = torch.from_numpy(x0.copy()), x0.copy()
    ctx = patched_noise(noise_module, noises) if noise_module else _null()
    with ctx:
        for i, t in enumerate(ref.timesteps.numpy()):
            out_r = fake_model(_ref_scale(ref, xr, t).numpy(), float(t))
            out_o = fake_model(ours.scale_model_input(xo, t), float(t))
            kw = {"eta": eta, "variance_noise": torch.from_numpy(noises[i].copy())} if eta else {}
            xr = ref.step(torch.from_numpy(out_r), torch.tensor(t), xr, **kw).prev_sample
            xo = ours.step(out_o, t, xo, noise=noises[i] if (eta or noise_module) else None, eta=eta)
    return xo, xr.numpy()


def loop_vs_steps(config: dict, steps: int, *, seed: int = 0, mu: float | None = None, shape=SHAPE):
    """fastgen.sample_loop (C++ loop, stepping in place) against fastgen step() calls.

    Both schedulers start from the same seed, so stochastic ones draw the same generator noise.
    Returns (loop_final, steps_final).
    """
    from fastgen import sampling

    rng = np.random.RandomState(seed)
    a, b = schedulers.from_config(config), schedulers.from_config(config)
    a.set_timesteps(steps, mu=mu)
    b.set_timesteps(steps, mu=mu)
    x0 = (rng.standard_normal(shape).astype(np.float32) * np.float32(a.init_noise_sigma)).astype(np.float32)
    xa = sampling.sample_loop(a, x0.copy(), lambda x, t: fake_model(np.asarray(x), float(t)), guidance_scale=1.0)
    xb = x0.copy()
    for t in b.timesteps:
        xb = b.step(fake_model(b.scale_model_input(xb, t), float(t)), t, xb)
    return np.asarray(xa), xb


def check_degenerate_schedules(base: dict, cases: list[tuple[dict, bool]]) -> None:
    """Schedules that repeat timesteps (``cases``: (config overrides, every step zero-length?)): every step is
    finite, the C++ loop equals the step-by-step result bit for bit, the steps equal diffusers' wherever
    diffusers is finite (its own trajectory, no resync) and, on zero-length steps, diffusers' first-order
    solver on every step; a zero-length step is the identity."""
    import warnings

    from fastgen.sampling import sample_loop

    for over, zero_length in cases:
        cfg = dict(base, num_train_timesteps=50, **over)
        s = schedulers.from_config(cfg)
        s.set_timesteps(50)
        s.set_begin_index(0)
        assert len(set(s.timesteps.tolist())) < 50  # the schedule does repeat timesteps
        x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(1, 2, 2, 2)
        ours = [x]
        for t in s.timesteps:
            x = s.step(fake_model(x, float(t)), t, x)
            assert x.dtype == np.float32 and x.shape == (1, 2, 2, 2) and np.isfinite(x).all()
            ours.append(x)
        # the C++ loop takes the same (fused) path to the same result
        loop = schedulers.from_config(cfg)
        loop.set_timesteps(50)
        loop.set_begin_index(0)
        np.testing.assert_array_equal(
            sample_loop(loop, ours[0], lambda v, t: fake_model(np.asarray(v), float(t)), guidance_scale=1.0), ours[-1])
        # equal to diffusers on every step where diffusers is finite (its own trajectory, no resync)
        # (and, on zero-length steps, to diffusers' first-order solver on every step)
        for order in (cfg.get("solver_order", 2), 1) if zero_length else (cfg.get("solver_order", 2),):
            ref = diffusers_scheduler(dict(cfg, solver_order=order))
            ref.set_timesteps(50)
            ref.set_begin_index(0)
            xr = torch.from_numpy(ours[0].copy())
            compared = 0
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for i, t in enumerate(ref.timesteps):
                    try:
                        xr = ref.step(torch.from_numpy(fake_model(xr.numpy(), float(t))), t, xr).prev_sample
                    except Exception:  # noqa: BLE001  (diffusers fails on the degenerate step: nothing to compare)
                        break
                    if not np.isfinite(xr.numpy()).all():
                        break
                    assert rel_err(ours[i + 1], xr.numpy()) <= 1e-4, (over, order, i)
                    compared += 1
            if order == 1 or not zero_length:
                assert compared == 50, (over, order, compared)  # finite throughout: equal throughout
            else:
                assert 1 <= compared < 50, (over, compared)  # diffusers goes NaN where fastgen stays finite
        if zero_length:
            # every step but the last (to sigma 0) has zero length: the identity
            for i in range(49):
                np.testing.assert_array_equal(ours[i + 1], ours[i])
            assert not np.array_equal(ours[50], ours[49])
