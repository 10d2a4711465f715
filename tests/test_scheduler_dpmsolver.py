"""DPMSolverMultistepScheduler against diffusers 0.42.1, over whole trajectories."""

import itertools

import numpy as np
import pytest
import torch

from fastgen import schedulers
from fastgen.errors import ConfigError, InvalidArgumentError, ScheduleError, ShapeError
from scheduler_ref import (SHAPE, check_degenerate_schedules, compare_trajectories, diffusers_scheduler, fake_model,
                           rel_err, run_free)

# diffusers deprecates algorithm_type dpmsolver, and calls np.array on tensors the numpy-2 way it warns about
pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"), pytest.mark.filterwarnings("ignore::DeprecationWarning")]

BASE = {"_class_name": "DPMSolverMultistepScheduler", "num_train_timesteps": 1000, "beta_schedule": "scaled_linear",
        "beta_start": 0.00085, "beta_end": 0.012}
NOISE_MODULE = "diffusers.schedulers.scheduling_dpmsolver_multistep"


def cfg_for(algo, **kw):
    # dpmsolver / sde-dpmsolver reject final_sigmas_type "zero" (diffusers too)
    fst = "zero" if algo.endswith("++") else "sigma_min"
    return dict(BASE, algorithm_type=algo, final_sigmas_type=fst, **kw)


def tol_for(cfg, steps):
    # squaredcos_cap_v2 ends at alpha ~ 5e-5 (sigma ~ 2e4): a first step from there cancels terms ~1e4 times
    # the result (x_t = (alpha_t/alpha_s) x - ... in the epsilon-space algorithms, x0 = (x - sigma eps)/alpha
    # in the data-space ones). diffusers' float32 result is then dominated by its own rounding (torch's float32
    # exp / sqrt are not even correctly rounded), up to ~1e-3 relative; every other case is held to 1e-4.
    if cfg.get("beta_schedule") == "squaredcos_cap_v2" and steps < 10:
        return 2e-3
    return 1e-4


CORE = list(itertools.product(["dpmsolver++", "dpmsolver"], [1, 2, 3], ["midpoint", "heun"], [False, True],
                              [1, 2, 3, 8, 25]))


@pytest.mark.parametrize("algo,order,solver_type,karras,steps", CORE)
def test_dpmsolver_core_grid(algo, order, solver_type, karras, steps):
    cfg = cfg_for(algo, solver_order=order, solver_type=solver_type, use_karras_sigmas=karras)
    if karras and not algo.endswith("++") and steps >= 15 and (order == 3 or solver_type == "heun"):
        pytest.skip("diffusers gives NaN on the zero-length final step here; see test_zero_length_final_step")
    compare_trajectories(cfg, steps, seed=steps)


SCHED = list(itertools.product(["linear", "scaled_linear", "squaredcos_cap_v2"], ["linspace", "leading", "trailing"],
                               ["epsilon", "v_prediction", "sample"], ["dpmsolver++", "dpmsolver"]))


@pytest.mark.parametrize("beta_schedule,spacing,prediction,algo", SCHED)
def test_dpmsolver_schedules_and_predictions(beta_schedule, spacing, prediction, algo):
    cfg = cfg_for(algo, beta_schedule=beta_schedule, timestep_spacing=spacing, prediction_type=prediction,
                  steps_offset=1, solver_order=3)
    compare_trajectories(cfg, 9, tol=tol_for(cfg, 9))


@pytest.mark.parametrize("steps", [7, 20])
@pytest.mark.parametrize("lower_order_final,euler_at_final,final", [
    (False, False, "sigma_min"), (True, True, "sigma_min"), (False, True, "sigma_min"), (False, False, "zero")])
@pytest.mark.parametrize("order", [2, 3])
def test_dpmsolver_final_step_options(steps, lower_order_final, euler_at_final, final, order):
    cfg = dict(BASE, solver_order=order, lower_order_final=lower_order_final, euler_at_final=euler_at_final,
               final_sigmas_type=final)
    compare_trajectories(cfg, steps)


@pytest.mark.parametrize("cfg_over", [
    {"solver_order": 3, "use_karras_sigmas": True, "solver_type": "heun"},
    {"solver_order": 2, "prediction_type": "v_prediction", "timestep_spacing": "trailing"},
    {"solver_order": 3, "algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"},
])
def test_dpmsolver_50_steps_and_free_run(cfg_over):
    cfg = dict(BASE, **cfg_over)
    compare_trajectories(cfg, 50)
    xo, xr = run_free(cfg, 50)
    assert rel_err(xo, xr) < 1e-4


@pytest.mark.parametrize("order,solver_type", [(1, "midpoint"), (2, "midpoint"), (2, "heun"), (3, "midpoint")])
@pytest.mark.parametrize("karras", [False, True])
def test_sde_dpmsolver_pp_with_shared_noise(order, solver_type, karras):
    cfg = cfg_for("sde-dpmsolver++", solver_order=order, solver_type=solver_type, use_karras_sigmas=karras)
    assert schedulers.from_config(cfg).is_stochastic()
    compare_trajectories(cfg, 12, noise_module=NOISE_MODULE)
    xo, xr = run_free(cfg, 12, noise_module=NOISE_MODULE)
    assert rel_err(xo, xr) < 1e-4


@pytest.mark.parametrize("order,solver_type", [(1, "midpoint"), (2, "midpoint"), (2, "heun")])
def test_sde_dpmsolver_with_shared_noise(order, solver_type):
    cfg = cfg_for("sde-dpmsolver", solver_order=order, solver_type=solver_type)
    compare_trajectories(cfg, 10, noise_module=NOISE_MODULE)


def test_sde_generator_noise_is_seeded():
    cfg = cfg_for("sde-dpmsolver++")
    outs = []
    for _ in range(2):
        s = schedulers.from_config(cfg).manual_seed(5)
        s.set_timesteps(4)
        x = np.ones(SHAPE, np.float32)
        for t in s.timesteps:
            x = s.step(fake_model(x, float(t)), t, x)
        outs.append(x)
    np.testing.assert_array_equal(outs[0], outs[1])
    assert np.isfinite(outs[0]).all()


@pytest.mark.parametrize("over", [
    {"use_lu_lambdas": True},
    {"use_lu_lambdas": True, "beta_schedule": "squaredcos_cap_v2"},
    {"use_exponential_sigmas": True},
    {"use_exponential_sigmas": True, "beta_schedule": "squaredcos_cap_v2"},
    {"use_karras_sigmas": True, "sigma_min": 0.1, "sigma_max": 10.0},
    {"use_exponential_sigmas": True, "sigma_min": 0.05},
    {"lambda_min_clipped": -5.1, "beta_schedule": "squaredcos_cap_v2"},
    {"lambda_min_clipped": -5.1, "beta_schedule": "squaredcos_cap_v2", "timestep_spacing": "trailing"},
    {"lambda_min_clipped": -3.0, "timestep_spacing": "leading", "steps_offset": 1},
    {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction", "timestep_spacing": "trailing"},
    {"thresholding": True, "prediction_type": "sample", "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5},
    {"thresholding": True, "algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min", "sample_max_value": 1.2},
    {"trained_betas": np.linspace(1e-4, 0.02, 1000).tolist()},
    # diffusers maps these names to dpmsolver++ / midpoint (and checks final_sigmas_type against "deis")
    {"algorithm_type": "deis", "solver_type": "bh2", "final_sigmas_type": "sigma_min"},
])
@pytest.mark.parametrize("steps", [6, 25])
def test_dpmsolver_sigma_options(over, steps):
    cfg = dict(BASE, **over)
    tol = tol_for(cfg, steps)
    if cfg["beta_schedule"] == "squaredcos_cap_v2" and over.get("use_exponential_sigmas"):
        tol = 1e-3  # exponential sigmas put many steps at sigma ~ 1e3-2e4, where float32 cancels (see tol_for)
    ref = diffusers_scheduler(cfg)
    ref.set_timesteps(steps)
    ts = ref.timesteps.numpy()
    # a repeated first timestep: compare with diffusers after set_begin_index(0) (see the Karras test below)
    compare_trajectories(cfg, steps, tol=tol, begin_index=0 if ts[0] == ts[1] else None)


@pytest.mark.parametrize("steps", [7, 25])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_squaredcos_karras_repeated_timesteps(steps, order):
    # Karras sigmas on squaredcos_cap_v2 repeat the first timestep (998, 998, ...). diffusers' "second match"
    # rule then starts one step late and fails on the last step; fastgen starts at index 0, which is
    # diffusers with set_begin_index(0).
    cfg = dict(BASE, beta_schedule="squaredcos_cap_v2", use_karras_sigmas=True, solver_order=order)
    ref = diffusers_scheduler(cfg)
    ref.set_timesteps(steps)
    ts = ref.timesteps.numpy()
    assert ts[0] == ts[1]
    compare_trajectories(cfg, steps, begin_index=0)
    ours = schedulers.from_config(cfg)
    ours.set_timesteps(steps)
    np.testing.assert_array_equal(ours.timesteps, ts)
    ref.set_begin_index(0)
    x = np.random.RandomState(0).standard_normal(SHAPE).astype(np.float32)
    xr = torch.from_numpy(x.copy())
    for t in ts:
        x = ours.step(fake_model(x, float(t)), t, x)
        xr = ref.step(torch.from_numpy(fake_model(xr.numpy(), float(t))), torch.tensor(t), xr).prev_sample
    assert rel_err(x, xr.numpy()) < 1e-4


@pytest.mark.parametrize("order,solver_type", [(2, "heun"), (3, "midpoint"), (2, "midpoint")])
@pytest.mark.parametrize("algo", ["dpmsolver", "dpmsolver++"])
def test_zero_length_final_step(order, solver_type, algo):
    # Karras + final_sigmas_type sigma_min ends on sigma_min twice: the last step has h = 0. diffusers' heun and
    # third-order ratios are 0/0 there (NaN); the step is the identity, which fastgen returns.
    cfg = dict(BASE, algorithm_type=algo, solver_order=order, solver_type=solver_type, use_karras_sigmas=True,
               final_sigmas_type="sigma_min")
    s = schedulers.from_config(cfg)
    s.set_timesteps(20)
    x = np.random.RandomState(3).standard_normal(SHAPE).astype(np.float32)
    for t in s.timesteps[:-1]:
        x = s.step(fake_model(x, float(t)), t, x)
    last = s.step(fake_model(x, float(s.timesteps[-1])), s.timesteps[-1], x)
    np.testing.assert_allclose(last, x, rtol=1e-6, atol=1e-6)
    if order == 2 and solver_type == "midpoint":  # diffusers is finite here: same numbers
        compare_trajectories(cfg, 20)


@pytest.mark.parametrize("begin", [0, 5, 12])
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


def test_add_noise_unknown_timestep_raises():
    s = schedulers.from_config(BASE)
    s.set_timesteps(10)
    x = np.zeros((1, 4), np.float32)
    with pytest.raises(ScheduleError):
        s.add_noise(x, x, 3)


def test_in_place_loop_matches_free_run():
    from fastgen.sampling import sample_loop

    for over in ({"solver_order": 3}, {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}):
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
    for t in s.timesteps[:4]:
        x = s.step(fake_model(x, float(t)), t, x)
        first.append(x)
    c = s.clone()
    assert c.step_index is None and c.num_inference_steps is None
    # set_timesteps resets the multistep history: a rerun gives the same numbers
    s.set_timesteps(10)
    x = np.random.RandomState(0).standard_normal(SHAPE).astype(np.float32)
    for i, t in enumerate(s.timesteps[:4]):
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
        s.step(x, 5, x)  # not in the schedule
    ts = s.timesteps
    s.step(x, ts[0], x)
    with pytest.raises(ShapeError):
        s.step(np.zeros((1, 4), np.float32), ts[1], np.zeros((1, 4), np.float32))
    s.set_timesteps(2)
    for t in s.timesteps:
        s.step(x, t, x)
    with pytest.raises(ScheduleError):
        s.step(x, s.timesteps[-1], x)  # past the end


@pytest.mark.parametrize("over,key", [
    ({"algorithm_type": "dpm-fast"}, "algorithm_type"),
    ({"solver_type": "rk4"}, "solver_type"),
    ({"solver_order": 0}, "solver_order"),
    ({"solver_order": 4}, "solver_order"),
    ({"solver_order": "2"}, "solver_order"),
    ({"algorithm_type": "dpmsolver"}, "final_sigmas_type"),
    ({"algorithm_type": "deis"}, "final_sigmas_type"),
    ({"algorithm_type": "sde-dpmsolver", "final_sigmas_type": "sigma_min", "solver_order": 3}, "solver_order"),
    ({"final_sigmas_type": "one"}, "final_sigmas_type"),
    ({"use_beta_sigmas": True}, "use_beta_sigmas"),
    ({"use_karras_sigmas": True, "use_exponential_sigmas": True}, "use_karras_sigmas"),
    ({"use_flow_sigmas": True}, "use_flow_sigmas"),
    ({"use_dynamic_shifting": True}, "use_dynamic_shifting"),
    ({"variance_type": "learned_range"}, "variance_type"),
    ({"prediction_type": "flow_prediction"}, "prediction_type"),
    ({"timestep_spacing": "uniform"}, "timestep_spacing"),
    ({"beta_schedule": "cosine"}, "beta_schedule"),
    ({"dynamic_thresholding_ratio": 1.5}, "dynamic_thresholding_ratio"),
    ({"lambda_min_clipped": float("nan")}, "lambda_min_clipped"),
    ({"sigma_min": -1.0, "use_karras_sigmas": True}, "sigma_min"),
    ({"use_karras_sigmas": "yes"}, "use_karras_sigmas"),
])
def test_config_errors(over, key):
    with pytest.raises(ConfigError, match=key):
        schedulers.from_config(dict(BASE, **over))


def test_lambda_min_clipped_everything():
    s = schedulers.from_config(dict(BASE, lambda_min_clipped=100.0))
    with pytest.raises(ConfigError, match="lambda_min_clipped"):
        s.set_timesteps(10)
    # -inf (the diffusers default) is accepted as a value
    s = schedulers.from_config(dict(BASE, lambda_min_clipped=-float("inf")))
    s.set_timesteps(10)


def test_degenerate_schedules_do_not_crash():
    # Leading spacing with num_inference_steps == num_train_timesteps repeats timesteps (every timestep is 0:
    # zero-length steps, h = 0); Karras sigmas on a 50-step training schedule round to repeated timesteps.
    # diffusers' higher-order updates are 0/0 there (NaN from the second step on); fastgen's documented
    # behaviour (dpmsolver.cpp): a zero-length step is the identity, as the first-order update computes.
    cases = [({"timestep_spacing": "leading", "solver_order": 3}, True), ({"use_karras_sigmas": True}, False)]
    check_degenerate_schedules(BASE, cases)
