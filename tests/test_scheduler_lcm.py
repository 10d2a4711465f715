"""LCMScheduler against diffusers, with shared noise between steps."""

import itertools

import numpy as np
import pytest
import torch

from fastgen import schedulers
from fastgen.errors import ConfigError, InvalidArgumentError, ScheduleError
from scheduler_ref import compare_trajectories, diffusers_scheduler, loop_vs_steps, rel_err, run_free

BASE = {"_class_name": "LCMScheduler", "num_train_timesteps": 1000}
NOISE = "diffusers.schedulers.scheduling_lcm"

CASES = list(itertools.product(
    ["linear", "scaled_linear", "squaredcos_cap_v2"],
    ["epsilon", "v_prediction", "sample"],
    [1, 2, 4, 7],
))


@pytest.mark.parametrize("beta_schedule,prediction,steps", CASES)
def test_lcm_matches_diffusers(beta_schedule, prediction, steps):
    cfg = dict(BASE, beta_schedule=beta_schedule, prediction_type=prediction, beta_start=0.00085, beta_end=0.012)
    compare_trajectories(cfg, steps, noise_module=NOISE, seed=steps)


@pytest.mark.parametrize("original_steps,steps", [(50, 50), (50, 3), (100, 8), (1, 1), (1000, 13), (33, 5)])
def test_lcm_schedules(original_steps, steps):
    cfg = dict(BASE, original_inference_steps=original_steps)
    compare_trajectories(cfg, steps, noise_module=NOISE)


@pytest.mark.parametrize("options", [
    {"timestep_scaling": 1.0},
    {"set_alpha_to_one": False},
    {"clip_sample": True, "clip_sample_range": 0.7, "prediction_type": "sample"},
    {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5, "prediction_type": "sample"},
    {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction"},
    {"timestep_spacing": "trailing", "steps_offset": 1},  # ignored by LCM, as in diffusers
])
def test_lcm_options(options):
    compare_trajectories(dict(BASE, **options), 6, noise_module=NOISE)


def test_lcm_free_run_begin_index_and_loop():
    xo, xr = run_free(BASE, 8, noise_module=NOISE)
    assert rel_err(xo, xr) < 1e-4
    compare_trajectories(BASE, 8, noise_module=NOISE, begin_index=3)
    a, b = loop_vs_steps(BASE, 6)
    np.testing.assert_array_equal(a, b)
    assert schedulers.from_config(BASE).is_stochastic()


def test_lcm_add_noise_matches():
    ref, ours = diffusers_scheduler(BASE), schedulers.from_config(BASE)
    x = np.random.RandomState(1).standard_normal((2, 4, 3, 3)).astype(np.float32)
    n = np.random.RandomState(2).standard_normal((2, 4, 3, 3)).astype(np.float32)
    for t in (19, 499, 999):
        a = ours.add_noise(x, n, t)
        b = ref.add_noise(torch.from_numpy(x), torch.from_numpy(n), torch.tensor([t])).numpy()
        assert rel_err(a, b) < 1e-6


def test_lcm_errors():
    for bad in (0, -3, 1001):
        with pytest.raises(ConfigError, match="original_inference_steps"):
            schedulers.from_config(dict(BASE, original_inference_steps=bad))
    with pytest.raises(ConfigError, match="prediction_type"):
        schedulers.from_config(dict(BASE, prediction_type="flow"))
    with pytest.raises(ConfigError, match="timestep_scaling"):
        schedulers.from_config(dict(BASE, timestep_scaling="big"))
    s = schedulers.from_config(BASE)
    for bad in (0, 51, 1001):  # more steps than original_inference_steps: diffusers raises too
        with pytest.raises(InvalidArgumentError):
            s.set_timesteps(bad)
    x = np.zeros((1, 4, 2, 2), np.float32)
    with pytest.raises(ScheduleError):
        s.step(x, 999, x)
    s.set_timesteps(4)
    with pytest.raises(ScheduleError):
        s.step(x, 998, x)
    assert s.timesteps.dtype == np.int64 and s.init_noise_sigma == 1.0
