"""EulerDiscreteScheduler and EulerAncestralDiscreteScheduler against diffusers."""

import itertools

import numpy as np
import pytest
import torch

from fastgen import schedulers
from fastgen.errors import ConfigError, InvalidArgumentError, ScheduleError
from scheduler_ref import compare_trajectories, diffusers_scheduler, loop_vs_steps, rel_err, run_free

SD = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
EULER = dict(SD, _class_name="EulerDiscreteScheduler")
ANC = dict(SD, _class_name="EulerAncestralDiscreteScheduler")
ANC_NOISE = "diffusers.schedulers.scheduling_euler_ancestral_discrete"

CASES = list(itertools.product(
    ["linear", "scaled_linear", "squaredcos_cap_v2"],
    ["leading", "trailing", "linspace"],
    ["epsilon", "v_prediction", "sample"],
))


@pytest.mark.parametrize("beta_schedule,spacing,prediction", CASES)
def test_euler_matches_diffusers(beta_schedule, spacing, prediction):
    cfg = dict(EULER, beta_schedule=beta_schedule, timestep_spacing=spacing, prediction_type=prediction,
               steps_offset=1)
    compare_trajectories(cfg, 13)


@pytest.mark.parametrize("steps", [1, 2, 7, 50])
@pytest.mark.parametrize("sigmas", ["karras", "exponential", "beta", "log_linear", "plain"])
def test_euler_sigma_schedules(steps, sigmas):
    cfg = dict(EULER, timestep_spacing="leading", steps_offset=1)
    if sigmas == "log_linear":
        cfg["interpolation_type"] = "log_linear"
    elif sigmas != "plain":
        cfg[f"use_{sigmas}_sigmas"] = True
    compare_trajectories(cfg, steps, seed=steps)


@pytest.mark.parametrize("options", [
    {"use_karras_sigmas": True, "sigma_min": 0.1, "sigma_max": 10.0},
    {"final_sigmas_type": "sigma_min"},
    {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min", "timestep_spacing": "trailing"},
    {"timestep_type": "continuous", "prediction_type": "v_prediction"},
    {"timestep_type": "continuous", "prediction_type": "v_prediction", "use_karras_sigmas": True},
    {"timestep_type": "continuous", "prediction_type": "epsilon"},
    {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
    {"prediction_type": "original_sample"},
    {"interpolation_type": "log_linear", "prediction_type": "v_prediction", "timestep_type": "continuous"},
])
def test_euler_options(options):
    compare_trajectories(dict(EULER, **options), 12)


def test_euler_free_run_begin_index_and_loop():
    cfg = dict(EULER, timestep_spacing="trailing", use_karras_sigmas=True)
    xo, xr = run_free(cfg, 30)
    assert rel_err(xo, xr) < 1e-4
    compare_trajectories(cfg, 20, begin_index=6)
    a, b = loop_vs_steps(cfg, 9)
    np.testing.assert_array_equal(a, b)


def test_euler_timesteps_are_float32():
    s = schedulers.from_config(dict(EULER, use_karras_sigmas=True))
    s.set_timesteps(10)
    assert s.timesteps.dtype == np.float32 and not s.is_stochastic() and s.order == 1


@pytest.mark.parametrize("cfg", [EULER, ANC])
def test_euler_add_noise_matches(cfg):
    ref, ours = diffusers_scheduler(cfg), schedulers.from_config(cfg)
    ref.set_timesteps(20)
    ours.set_timesteps(20)
    x = np.random.RandomState(1).standard_normal((2, 4, 3, 3)).astype(np.float32)
    n = np.random.RandomState(2).standard_normal((2, 4, 3, 3)).astype(np.float32)
    t = ours.timesteps[5]
    a = ours.add_noise(x, n, t)
    b = ref.add_noise(torch.from_numpy(x), torch.from_numpy(n), torch.tensor([t])).numpy()
    assert rel_err(a, b) < 1e-6
    # img2img: with a begin index, diffusers uses the begin index's sigma
    ref.set_begin_index(3)
    ours.set_begin_index(3)
    a = ours.add_noise(x, n, ours.timesteps[3])
    b = ref.add_noise(torch.from_numpy(x), torch.from_numpy(n), torch.tensor([ours.timesteps[3]])).numpy()
    assert rel_err(a, b) < 1e-6
    with pytest.raises(ScheduleError):
        schedulers.from_config(cfg).add_noise(x, n, 500.0)  # no schedule yet


def test_euler_init_noise_sigma_rule():
    for spacing in ("leading", "trailing", "linspace"):
        for cfg in (EULER, ANC):
            c = dict(cfg, timestep_spacing=spacing)
            ref, ours = diffusers_scheduler(c), schedulers.from_config(c)
            assert abs(ours.init_noise_sigma - float(ref.init_noise_sigma)) <= 1e-6 * float(ref.init_noise_sigma)
            ref.set_timesteps(7)
            ours.set_timesteps(7)
            assert abs(ours.init_noise_sigma - float(ref.init_noise_sigma)) <= 1e-6 * float(ref.init_noise_sigma)


def test_euler_errors():
    for key, bad in [("interpolation_type", "cubic"), ("timestep_type", "weird"), ("final_sigmas_type", "one"),
                     ("prediction_type", "flow"), ("timestep_spacing", "karras"), ("sigma_min", -1.0)]:
        with pytest.raises(ConfigError, match=key):
            schedulers.from_config(dict(EULER, **{key: bad}))
    with pytest.raises(ConfigError, match="use_karras_sigmas"):
        schedulers.from_config(dict(EULER, use_karras_sigmas=True, use_exponential_sigmas=True))
    s = schedulers.from_config(dict(EULER, timestep_spacing="leading"))
    for bad in (0, 1001):
        with pytest.raises(InvalidArgumentError):
            s.set_timesteps(bad)
    x = np.zeros((1, 4, 2, 2), np.float32)
    with pytest.raises(ScheduleError):
        s.step(x, 999.0, x)
    s.set_timesteps(10)
    with pytest.raises(ScheduleError):
        s.step(x, 123.5, x)
    for t in s.timesteps:
        x = s.step(x, t, x)
    with pytest.raises(ScheduleError):
        s.step(x, s.timesteps[-1], x)  # past the end


# --- Euler ancestral -------------------------------------------------------------------------

ANC_CASES = list(itertools.product(
    ["linear", "scaled_linear", "squaredcos_cap_v2"],
    ["leading", "trailing", "linspace"],
    ["epsilon", "v_prediction"],
))


@pytest.mark.parametrize("beta_schedule,spacing,prediction", ANC_CASES)
def test_euler_ancestral_matches_diffusers(beta_schedule, spacing, prediction):
    cfg = dict(ANC, beta_schedule=beta_schedule, timestep_spacing=spacing, prediction_type=prediction, steps_offset=1)
    compare_trajectories(cfg, 13, noise_module=ANC_NOISE)


@pytest.mark.parametrize("steps", [1, 2, 7, 50])
def test_euler_ancestral_step_counts(steps):
    compare_trajectories(dict(ANC, timestep_spacing="trailing"), steps, seed=steps, noise_module=ANC_NOISE)


def test_euler_ancestral_zero_snr_free_run_and_begin_index():
    cfg = dict(ANC, rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction")
    compare_trajectories(cfg, 20, noise_module=ANC_NOISE)
    xo, xr = run_free(cfg, 25, noise_module=ANC_NOISE)
    assert rel_err(xo, xr) < 1e-4
    compare_trajectories(ANC, 20, noise_module=ANC_NOISE, begin_index=4)


def test_euler_ancestral_generator_noise():
    s = schedulers.from_config(ANC)
    assert s.is_stochastic()
    a, b = loop_vs_steps(ANC, 9)  # both draw from the same seeded generator
    np.testing.assert_array_equal(a, b)
    x = np.ones((1, 4, 2, 2), np.float32)
    s1, s2 = schedulers.from_config(ANC).manual_seed(1), schedulers.from_config(ANC).manual_seed(2)
    s1.set_timesteps(5)
    s2.set_timesteps(5)
    assert not np.array_equal(s1.step(x, s1.timesteps[0], x), s2.step(x, s2.timesteps[0], x))


def test_euler_ancestral_errors():
    with pytest.raises(ConfigError, match="prediction_type"):
        schedulers.from_config(dict(ANC, prediction_type="sample"))
    with pytest.raises(ConfigError, match="timestep_spacing"):
        schedulers.from_config(dict(ANC, timestep_spacing="karras"))
    s = schedulers.from_config(ANC)
    with pytest.raises(InvalidArgumentError):
        s.set_timesteps(0)
    with pytest.raises(InvalidArgumentError):
        s.set_timesteps(5, mu=0.5)
