"""UniPCMultistepScheduler against diffusers 0.42.1, over whole trajectories."""

import itertools

import numpy as np
import pytest
import torch

from fastgen import schedulers
from fastgen.errors import ConfigError, InvalidArgumentError, ScheduleError, ShapeError
from scheduler_ref import (SHAPE, check_degenerate_schedules, compare_trajectories, diffusers_scheduler, fake_model,
                           rel_err, run_free)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers' np.array(tensor) on numpy 2

BASE = {"_class_name": "UniPCMultistepScheduler", "num_train_timesteps": 1000, "beta_schedule": "scaled_linear",
        "beta_start": 0.00085, "beta_end": 0.012}


def tol_for(cfg, steps):
    # predict_x0=False updates x_t = (alpha_t/alpha_s) x - sigma_t (e^h - 1) eps, which cancels terms up to ~1e4
    # times the result on squaredcos_cap_v2's high-noise steps: diffusers' float32 result is dominated by its own
    # rounding there (torch's float32 exp / sqrt are not even correctly rounded). Everything else: 1e-4.
    if not cfg.get("predict_x0", True) and cfg.get("beta_schedule") == "squaredcos_cap_v2":
        return 2e-3
    return 1e-4


def variant(solver_type, predict_x0):
    # final_sigmas_type "zero" makes diffusers' bh1 and predict_x0=False final step NaN; fastgen refuses those.
    fst = "zero" if solver_type == "bh2" and predict_x0 else "sigma_min"
    return dict(BASE, solver_type=solver_type, predict_x0=predict_x0, final_sigmas_type=fst)


CORE = list(itertools.product([1, 2, 3], ["bh1", "bh2"], [True, False], [False, True], [1, 2, 3, 8, 25]))


@pytest.mark.parametrize("order,solver_type,predict_x0,karras,steps", CORE)
def test_unipc_core_grid(order, solver_type, predict_x0, karras, steps):
    cfg = dict(variant(solver_type, predict_x0), solver_order=order, use_karras_sigmas=karras)
    compare_trajectories(cfg, steps, seed=steps)


SCHED = list(itertools.product(["linear", "scaled_linear", "squaredcos_cap_v2"], ["linspace", "leading", "trailing"],
                               ["epsilon", "v_prediction", "sample"], [True, False]))


@pytest.mark.parametrize("beta_schedule,spacing,prediction,predict_x0", SCHED)
def test_unipc_schedules_and_predictions(beta_schedule, spacing, prediction, predict_x0):
    cfg = dict(variant("bh2", predict_x0), beta_schedule=beta_schedule, timestep_spacing=spacing,
               prediction_type=prediction, steps_offset=1, solver_order=3)
    compare_trajectories(cfg, 9, tol=tol_for(cfg, 9))


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("steps", [7, 20])
@pytest.mark.parametrize("solver_type", ["bh1", "bh2"])
def test_unipc_lower_order_final_off(order, steps, solver_type):
    cfg = dict(variant(solver_type, True), solver_order=order, lower_order_final=False,
               final_sigmas_type="sigma_min")
    compare_trajectories(cfg, steps)


@pytest.mark.parametrize("disable", [[0], [1, 2], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [5.0]])
@pytest.mark.parametrize("order", [1, 3])
def test_unipc_disable_corrector(disable, order):
    cfg = dict(BASE, solver_order=order, disable_corrector=disable)
    compare_trajectories(cfg, 10)


@pytest.mark.parametrize("cfg_over", [
    {"solver_order": 3},
    {"solver_order": 2, "use_karras_sigmas": True, "prediction_type": "v_prediction", "timestep_spacing": "trailing"},
    {"solver_order": 3, "solver_type": "bh1", "final_sigmas_type": "sigma_min", "predict_x0": False},
])
def test_unipc_50_steps_and_free_run(cfg_over):
    cfg = dict(BASE, **cfg_over)
    compare_trajectories(cfg, 50)
    xo, xr = run_free(cfg, 50)
    assert rel_err(xo, xr) < 1e-4


@pytest.mark.parametrize("over", [
    {"use_exponential_sigmas": True},
    {"use_exponential_sigmas": True, "final_sigmas_type": "sigma_min"},
    {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min"},
    {"use_karras_sigmas": True, "sigma_min": 0.1, "sigma_max": 10.0},
    {"use_exponential_sigmas": True, "sigma_min": 0.05},
    {"use_karras_sigmas": True, "beta_schedule": "squaredcos_cap_v2"},
    {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction", "timestep_spacing": "trailing"},
    {"thresholding": True, "prediction_type": "sample", "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5},
    {"trained_betas": np.linspace(1e-4, 0.02, 1000).tolist()},
    {"solver_type": "midpoint"},  # diffusers maps DPM-Solver solver types to bh2
])
@pytest.mark.parametrize("steps", [6, 25])
def test_unipc_sigma_options(over, steps):
    cfg = dict(BASE, solver_order=3, **over)
    ref = diffusers_scheduler(cfg)
    ref.set_timesteps(steps)
    ts = ref.timesteps.numpy()
    # A repeated first timestep: diffusers' "second match" rule starts one step late (and fails at the end);
    # fastgen starts at index 0, which is diffusers after set_begin_index(0).
    compare_trajectories(cfg, steps, begin_index=0 if len(ts) > 1 and ts[0] == ts[1] else None)


def test_unipc_zero_length_final_step_is_identity():
    # Karras + sigma_min ends on sigma_min twice (h = 0). With lower_order_final off, diffusers' order-3
    # predictor is 0/0 there (NaN); the step is the identity, which fastgen returns.
    cfg = dict(BASE, solver_order=3, lower_order_final=False, use_karras_sigmas=True, final_sigmas_type="sigma_min")
    s = schedulers.from_config(cfg)
    s.set_timesteps(12)
    x = np.random.RandomState(3).standard_normal(SHAPE).astype(np.float32)
    for t in s.timesteps[:-1]:
        x = s.step(fake_model(x, float(t)), t, x)
    last = s.step(fake_model(x, float(s.timesteps[-1])), s.timesteps[-1], x)
    assert np.isfinite(last).all()


@pytest.mark.parametrize("begin", [0, 4, 11])
def test_img2img_begin_index_and_add_noise(begin):
    cfg = dict(BASE, solver_order=2, use_karras_sigmas=True)
    compare_trajectories(cfg, 20, begin_index=begin)
    ref, ours = diffusers_scheduler(cfg), schedulers.from_config(cfg)
    ref.set_timesteps(20)
    ours.set_timesteps(20)
    x = np.random.RandomState(1).standard_normal((2, 4, 3, 3)).astype(np.float32)
    n = np.random.RandomState(2).standard_normal((2, 4, 3, 3)).astype(np.float32)
    t = int(ours.timesteps[begin])
    a = ours.add_noise(x, n, t)
    b = ref.add_noise(torch.from_numpy(x), torch.from_numpy(n), torch.tensor([t])).numpy()
    assert rel_err(a, b) < 1e-6
    ref.set_begin_index(begin)
    ours.set_begin_index(begin)
    a = ours.add_noise(x, n, t)
    b = ref.add_noise(torch.from_numpy(x), torch.from_numpy(n), torch.tensor([t])).numpy()
    assert rel_err(a, b) < 1e-6


def test_in_place_loop_matches_free_run():
    # The C++ loop steps in place (out aliases sample): the corrector must still see the previous sample.
    from fastgen.sampling import sample_loop

    for over in ({"solver_order": 3}, {"solver_order": 2, "solver_type": "bh1", "final_sigmas_type": "sigma_min"}):
        cfg = dict(BASE, **over)
        xo, xr = run_free(cfg, 15)
        s = schedulers.from_config(cfg)
        s.set_timesteps(15)
        x0 = np.random.RandomState(0).standard_normal(SHAPE).astype(np.float32)
        out = sample_loop(s, x0, lambda x, t: fake_model(x, float(t)), guidance_scale=1.0)
        assert rel_err(out, xr) < 1e-4


def test_properties_clone_and_reset():
    s = schedulers.from_config(dict(BASE, solver_order=3))
    assert s.order == 1 and s.init_noise_sigma == 1.0 and not s.is_stochastic()
    s.set_timesteps(10)
    x = np.random.RandomState(0).standard_normal(SHAPE).astype(np.float32)
    first = []
    for t in s.timesteps[:5]:
        x = s.step(fake_model(x, float(t)), t, x)
        first.append(x)
    c = s.clone()
    assert c.step_index is None and c.num_inference_steps is None
    s.set_timesteps(10)  # resets history and the corrector's last sample
    x = np.random.RandomState(0).standard_normal(SHAPE).astype(np.float32)
    for i, t in enumerate(s.timesteps[:5]):
        x = s.step(fake_model(x, float(t)), t, x)
        np.testing.assert_array_equal(x, first[i])


def test_step_errors():
    s = schedulers.from_config(BASE)
    x = np.zeros(SHAPE, np.float32)
    with pytest.raises(ScheduleError):
        s.step(x, 999, x)
    for bad in (0, 1001):
        with pytest.raises(InvalidArgumentError):
            s.set_timesteps(bad)
    with pytest.raises(InvalidArgumentError):
        s.set_timesteps(10, mu=0.5)
    s.set_timesteps(3)
    with pytest.raises(ScheduleError):
        s.step(x, 5, x)
    with pytest.raises(ScheduleError):
        s.add_noise(x, x, 5)
    ts = s.timesteps
    s.step(x, ts[0], x)
    with pytest.raises(ShapeError):
        s.step(np.zeros((1, 4), np.float32), ts[1], np.zeros((1, 4), np.float32))
    s.set_timesteps(2)
    for t in s.timesteps:
        s.step(x, t, x)
    with pytest.raises(ScheduleError):
        s.step(x, s.timesteps[-1], x)


@pytest.mark.parametrize("over,key", [
    ({"solver_type": "rk4"}, "solver_type"),
    ({"solver_order": 0}, "solver_order"),
    ({"solver_order": 4}, "solver_order"),
    ({"predict_x0": False}, "final_sigmas_type"),
    ({"solver_type": "bh1"}, "final_sigmas_type"),
    ({"lower_order_final": False}, "final_sigmas_type"),
    ({"final_sigmas_type": "one"}, "final_sigmas_type"),
    ({"use_beta_sigmas": True}, "use_beta_sigmas"),
    ({"use_karras_sigmas": True, "use_exponential_sigmas": True}, "use_karras_sigmas"),
    ({"use_flow_sigmas": True}, "use_flow_sigmas"),
    ({"use_dynamic_shifting": True}, "use_dynamic_shifting"),
    ({"shift_terminal": 0.1}, "shift_terminal"),
    ({"prediction_type": "flow_prediction"}, "prediction_type"),
    ({"timestep_spacing": "uniform"}, "timestep_spacing"),
    ({"disable_corrector": "all"}, "disable_corrector"),
    ({"dynamic_thresholding_ratio": -0.1}, "dynamic_thresholding_ratio"),
    ({"sigma_max": -2.0}, "sigma_max"),
    ({"predict_x0": 1}, "predict_x0"),
])
def test_config_errors(over, key):
    with pytest.raises(ConfigError, match=key):
        schedulers.from_config(dict(BASE, **over))


def test_degenerate_schedules_do_not_crash():
    # Repeated timesteps: leading spacing with num_inference_steps == num_train_timesteps makes every timestep 0
    # (zero-length steps, h = 0); Karras sigmas on a 50-step training schedule round to repeated timesteps.
    # diffusers' higher-order terms are 0/0 there (NaN from the second step on, or a singular solve); fastgen's
    # documented behaviour (unipc.cpp): a zero-length step is the identity, as the first-order update computes.
    cases = [({"timestep_spacing": "leading", "solver_order": 3}, True),
             ({"use_karras_sigmas": True, "solver_order": 3}, False)]
    check_degenerate_schedules(BASE, cases)
