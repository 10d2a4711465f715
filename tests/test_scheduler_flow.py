"""FlowMatchEulerDiscreteScheduler (SD3 / Flux) against diffusers."""

import numpy as np
import pytest
import torch

from fastgen import schedulers
from fastgen.errors import ConfigError, InvalidArgumentError, ScheduleError
from scheduler_ref import compare_trajectories, diffusers_scheduler, loop_vs_steps, rel_err, run_free

BASE = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000}
SD3 = dict(BASE, shift=3.0)
FLUX = dict(BASE, shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
            max_image_seq_len=4096)
NOISE = "diffusers.schedulers.scheduling_flow_match_euler_discrete"


@pytest.mark.parametrize("steps", [1, 2, 7, 28, 50])
@pytest.mark.parametrize("shift", [1.0, 3.0, 1.15])
def test_flow_static_shift(steps, shift):
    compare_trajectories(dict(BASE, shift=shift), steps, seed=steps)


@pytest.mark.parametrize("mu", [-0.5, 0.0, 0.8, 1.15, 3.0])
@pytest.mark.parametrize("time_shift_type", ["exponential", "linear"])
def test_flow_dynamic_shift(mu, time_shift_type):
    if time_shift_type == "linear" and mu <= 0:
        with pytest.raises(InvalidArgumentError):
            schedulers.from_config(dict(FLUX, time_shift_type="linear")).set_timesteps(10, mu=mu)
        return
    compare_trajectories(dict(FLUX, time_shift_type=time_shift_type), 13, mu=mu)


@pytest.mark.parametrize("options", [
    {"shift_terminal": 0.02},
    {"shift_terminal": 0.1, "use_dynamic_shifting": True},
    {"invert_sigmas": True},
    {"use_karras_sigmas": True},
    {"use_exponential_sigmas": True},
    {"use_beta_sigmas": True},
    {"use_karras_sigmas": True, "shift": 1.0},
])
@pytest.mark.parametrize("steps", [1, 9])
def test_flow_options(options, steps):
    cfg = dict(SD3, **options)
    mu = 0.7 if cfg.get("use_dynamic_shifting") else None
    if "shift_terminal" in options and steps == 1:
        # one step: diffusers stretches by 0 / 0 and its schedule is NaN; we refuse instead
        ref = diffusers_scheduler(cfg)
        ref.set_timesteps(1, **({} if mu is None else {"mu": mu}))
        assert torch.isnan(ref.sigmas[0])
        with pytest.raises(InvalidArgumentError):
            schedulers.from_config(cfg).set_timesteps(1, mu=mu)
        return
    compare_trajectories(cfg, steps, mu=mu)


def test_flow_stochastic_sampling():
    cfg = dict(SD3, stochastic_sampling=True)
    compare_trajectories(cfg, 10, noise_module=NOISE)
    xo, xr = run_free(cfg, 10, noise_module=NOISE)
    assert rel_err(xo, xr) < 1e-4
    assert schedulers.from_config(cfg).is_stochastic()
    assert not schedulers.from_config(SD3).is_stochastic()


def test_flow_free_run_begin_index_and_loop():
    xo, xr = run_free(SD3, 28)
    assert rel_err(xo, xr) < 1e-4
    xo, xr = run_free(FLUX, 20, mu=1.1)
    assert rel_err(xo, xr) < 1e-4
    compare_trajectories(SD3, 20, begin_index=7)
    a, b = loop_vs_steps(FLUX, 9, mu=0.9)
    np.testing.assert_array_equal(a, b)


def test_flow_timesteps_and_sigma():
    s = schedulers.from_config(SD3)
    s.set_timesteps(28, mu=2.0)  # mu is ignored without dynamic shifting, as in diffusers
    ref = diffusers_scheduler(SD3)
    ref.set_timesteps(28)
    assert s.timesteps.dtype == np.float32
    np.testing.assert_array_equal(s.timesteps, ref.timesteps.numpy())
    assert s.init_noise_sigma == 1.0 and s.order == 1


def test_flow_add_noise_is_scale_noise():
    ref, ours = diffusers_scheduler(SD3), schedulers.from_config(SD3)
    ref.set_timesteps(20)
    ours.set_timesteps(20)
    x = np.random.RandomState(1).standard_normal((2, 16, 3, 3)).astype(np.float32)
    n = np.random.RandomState(2).standard_normal((2, 16, 3, 3)).astype(np.float32)
    t = ours.timesteps[6]
    a = ours.add_noise(x, n, t)
    b = ref.scale_noise(torch.from_numpy(x), torch.tensor([t]), torch.from_numpy(n)).numpy()
    np.testing.assert_array_equal(a, b)
    ref.set_begin_index(4)
    ours.set_begin_index(4)
    a = ours.add_noise(x, n, ours.timesteps[4])
    b = ref.scale_noise(torch.from_numpy(x), torch.tensor([ours.timesteps[4]]), torch.from_numpy(n)).numpy()
    np.testing.assert_array_equal(a, b)


def test_flow_errors():
    for key, bad in [("shift", 0.0), ("shift", -1.0), ("shift_terminal", 1.0), ("time_shift_type", "cubic"),
                     ("use_dynamic_shifting", "yes"), ("num_train_timesteps", 0)]:
        with pytest.raises(ConfigError, match=key):
            schedulers.from_config(dict(BASE, **{key: bad}))
    with pytest.raises(ConfigError, match="use_karras_sigmas"):
        schedulers.from_config(dict(BASE, use_karras_sigmas=True, use_beta_sigmas=True))
    s = schedulers.from_config(FLUX)
    with pytest.raises(InvalidArgumentError, match="mu"):
        s.set_timesteps(10)
    with pytest.raises(InvalidArgumentError):
        s.set_timesteps(10, mu=float("nan"))
    with pytest.raises(InvalidArgumentError):
        s.set_timesteps(10, mu=-1000.0)  # exp(mu) underflows: the schedule would be NaN
    with pytest.raises(InvalidArgumentError):
        s.set_timesteps(0, mu=1.0)
    x = np.zeros((1, 16, 2, 2), np.float32)
    with pytest.raises(ScheduleError):
        s.step(x, 1000.0, x)
    s.set_timesteps(4, mu=1.0)
    with pytest.raises(ScheduleError):
        s.step(x, 3.0, x)
