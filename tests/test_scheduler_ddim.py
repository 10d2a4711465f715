"""DDIMScheduler against diffusers, over whole trajectories."""

import itertools

import numpy as np
import pytest

from scheduler_ref import compare_trajectories, rel_err, run_free

BASE = {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000}

CASES = list(itertools.product(
    ["linear", "scaled_linear", "squaredcos_cap_v2"],
    ["leading", "trailing", "linspace"],
    ["epsilon", "v_prediction", "sample"],
))


@pytest.mark.parametrize("beta_schedule,spacing,prediction", CASES)
def test_ddim_matches_diffusers(beta_schedule, spacing, prediction):
    cfg = dict(BASE, beta_schedule=beta_schedule, timestep_spacing=spacing, prediction_type=prediction,
               beta_start=0.00085, beta_end=0.012, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    compare_trajectories(cfg, 13)


@pytest.mark.parametrize("steps", [1, 2, 7, 50])
@pytest.mark.parametrize("clip_sample,set_alpha_to_one", [(True, True), (False, True), (True, False)])
def test_ddim_clip_and_alpha(steps, clip_sample, set_alpha_to_one):
    cfg = dict(BASE, clip_sample=clip_sample, clip_sample_range=0.8, set_alpha_to_one=set_alpha_to_one)
    compare_trajectories(cfg, steps, seed=steps)


@pytest.mark.parametrize("eta", [0.3, 1.0])
def test_ddim_eta_with_shared_noise(eta):
    cfg = dict(BASE, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False)
    compare_trajectories(cfg, 20, eta=eta)
    xo, xr = run_free(cfg, 20, eta=eta)
    assert rel_err(xo, xr) < 1e-4


def test_ddim_zero_snr_trailing_vpred():
    cfg = dict(BASE, rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction",
               beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False)
    compare_trajectories(cfg, 25)


def test_ddim_dynamic_thresholding():
    cfg = dict(BASE, thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5, clip_sample=False,
               prediction_type="sample")
    compare_trajectories(cfg, 10)


def test_ddim_trained_betas_and_free_run():
    betas = np.linspace(1e-4, 0.02, 1000).tolist()
    cfg = dict(BASE, trained_betas=betas, clip_sample=False)
    xo, xr = run_free(cfg, 30)
    assert rel_err(xo, xr) < 1e-4


def test_ddim_add_noise_matches():
    import torch

    from scheduler_ref import diffusers_scheduler
    from fastgen import schedulers

    cfg = dict(BASE, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    ref, ours = diffusers_scheduler(cfg), schedulers.from_config(cfg)
    ref.set_timesteps(20)
    ours.set_timesteps(20)
    x = np.random.RandomState(1).standard_normal((2, 4, 3, 3)).astype(np.float32)
    n = np.random.RandomState(2).standard_normal((2, 4, 3, 3)).astype(np.float32)
    t = int(ours.timesteps[5])
    a = ours.add_noise(x, n, t)
    b = ref.add_noise(torch.from_numpy(x), torch.from_numpy(n), torch.tensor([t])).numpy()
    assert rel_err(a, b) < 1e-5
