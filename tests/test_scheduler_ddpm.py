"""DDPMScheduler against diffusers, with shared noise (diffusers' randn_tensor is patched)."""

import itertools

import numpy as np
import pytest
import torch

from fastgen import schedulers
from fastgen.errors import ConfigError, InvalidArgumentError, ScheduleError
from scheduler_ref import (compare_trajectories, diffusers_scheduler, fake_model, loop_vs_steps, patched_noise,
                           rel_err, run_free)

BASE = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000}
NOISE = "diffusers.schedulers.scheduling_ddpm"

CASES = list(itertools.product(
    ["linear", "scaled_linear", "squaredcos_cap_v2"],
    ["leading", "trailing", "linspace"],
    ["epsilon", "v_prediction", "sample"],
))


@pytest.mark.parametrize("beta_schedule,spacing,prediction", CASES)
def test_ddpm_matches_diffusers(beta_schedule, spacing, prediction):
    cfg = dict(BASE, beta_schedule=beta_schedule, timestep_spacing=spacing, prediction_type=prediction,
               beta_start=0.00085, beta_end=0.012, clip_sample=False, steps_offset=1)
    compare_trajectories(cfg, 13, noise_module=NOISE)


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_small_log", "fixed_large"])
@pytest.mark.parametrize("steps", [1, 2, 7, 50])
def test_ddpm_variance_types(variance_type, steps):
    cfg = dict(BASE, variance_type=variance_type, timestep_spacing="trailing")
    compare_trajectories(cfg, steps, seed=steps, noise_module=NOISE)


@pytest.mark.parametrize("clip_sample,clip_range", [(True, 1.0), (True, 0.5), (False, 1.0)])
def test_ddpm_clip_sample(clip_sample, clip_range):
    cfg = dict(BASE, clip_sample=clip_sample, clip_sample_range=clip_range, prediction_type="sample")
    compare_trajectories(cfg, 10, noise_module=NOISE)


def test_ddpm_dynamic_thresholding():
    cfg = dict(BASE, thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5, clip_sample=False,
               prediction_type="sample")
    compare_trajectories(cfg, 10, noise_module=NOISE)


@pytest.mark.parametrize("beta_schedule", ["sigmoid", "laplace"])
def test_ddpm_extra_beta_schedules(beta_schedule):
    compare_trajectories(dict(BASE, beta_schedule=beta_schedule, clip_sample=False), 10, noise_module=NOISE)


def test_ddpm_zero_snr_and_full_schedule():
    cfg = dict(BASE, rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction",
               beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False)
    compare_trajectories(cfg, 25, noise_module=NOISE)
    compare_trajectories(dict(BASE, timestep_spacing="linspace"), 1000, noise_module=NOISE, shape=(1, 2, 2, 2))


def test_ddpm_free_run_and_begin_index():
    cfg = dict(BASE, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False)
    xo, xr = run_free(cfg, 30, noise_module=NOISE)
    assert rel_err(xo, xr) < 1e-4
    # diffusers' DDPM has no begin index (it finds each t's successor): img2img steps timesteps[start:].
    start = 5
    ref, ours = diffusers_scheduler(cfg), schedulers.from_config(cfg)
    ref.set_timesteps(20)
    ours.set_timesteps(20)
    ours.set_begin_index(start)
    rng = np.random.RandomState(3)
    x = rng.standard_normal((1, 4, 3, 3)).astype(np.float32)
    for t in ref.timesteps.numpy()[start:]:
        out = fake_model(x, float(t))
        noise = rng.standard_normal(x.shape).astype(np.float32)
        with patched_noise(NOISE, [noise]):
            xr = ref.step(torch.from_numpy(out), torch.tensor(t), torch.from_numpy(x)).prev_sample.numpy()
        xo = ours.step(out, t, x, noise=noise)
        assert rel_err(xo, xr) < 1e-5
        x = xr


def test_ddpm_in_place_loop_uses_generator():
    a, b = loop_vs_steps(dict(BASE, clip_sample=False), 9)
    np.testing.assert_array_equal(a, b)
    s = schedulers.from_config(BASE)
    assert s.is_stochastic()


def test_ddpm_add_noise_matches():
    cfg = dict(BASE, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    ref, ours = diffusers_scheduler(cfg), schedulers.from_config(cfg)
    x = np.random.RandomState(1).standard_normal((2, 4, 3, 3)).astype(np.float32)
    n = np.random.RandomState(2).standard_normal((2, 4, 3, 3)).astype(np.float32)
    for t in (0, 321, 999):
        a = ours.add_noise(x, n, t)
        b = ref.add_noise(torch.from_numpy(x), torch.from_numpy(n), torch.tensor([t])).numpy()
        assert rel_err(a, b) < 1e-6
    with pytest.raises(ScheduleError):
        ours.add_noise(x, n, -1)


def test_ddpm_errors():
    for vt in ("learned", "learned_range", "fixed_large_log", "bogus"):
        with pytest.raises(ConfigError, match="variance_type"):
            schedulers.from_config(dict(BASE, variance_type=vt))
    with pytest.raises(ConfigError, match="prediction_type"):
        schedulers.from_config(dict(BASE, prediction_type="flow"))
    with pytest.raises(ConfigError, match="beta_schedule"):
        schedulers.from_config(dict(BASE, beta_schedule="cubic"))
    with pytest.raises(ConfigError, match="clip_sample"):
        schedulers.from_config(dict(BASE, clip_sample="yes"))
    s = schedulers.from_config(BASE)
    for bad in (0, 1001):
        with pytest.raises(InvalidArgumentError):
            s.set_timesteps(bad)
    with pytest.raises(InvalidArgumentError):
        s.set_timesteps(10, mu=1.0)
    x = np.zeros((1, 4, 2, 2), np.float32)
    with pytest.raises(ScheduleError):
        s.step(x, 999, x)
    s.set_timesteps(10)
    with pytest.raises(ScheduleError):
        s.step(x, 5, x)
    assert s.timesteps.dtype == np.int64 and s.order == 1 and s.init_noise_sigma == 1.0
    # leading spacing with steps_offset can run past the schedule: an error, not a crash
    s = schedulers.from_config(dict(BASE, steps_offset=1))
    s.set_timesteps(1000)
    with pytest.raises(ScheduleError):
        s.step(x, s.timesteps[0], x)
