"""The single-pass sampling loop equals the step-by-step one, bit for bit.

Without a callback, sample_loop fuses classifier-free guidance into the scheduler step and has the
step write the next model input in the same pass (StepIO). These tests run every scheduler family
(and the configurations that take other code paths: prediction types, thresholding, SDE solvers,
DDIM eta, solver orders) three ways and require identical float32 results:

- fused: sample_loop without a callback,
- unfused: sample_loop with a callback (the model input is prepared after the callback),
- reference: a Python loop of scale_model_input / concatenate / combine_guidance / step.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastgen
from fastgen import _core, schedulers
from scheduler_ref import fake_model

SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000,
      "steps_offset": 1, "clip_sample": False, "set_alpha_to_one": False}

CONFIGS = {
    "ddim": dict(SD, _class_name="DDIMScheduler"),
    "ddim-v": dict(SD, _class_name="DDIMScheduler", prediction_type="v_prediction"),
    "ddim-clip": dict(SD, _class_name="DDIMScheduler", clip_sample=True),
    "euler": dict(SD, _class_name="EulerDiscreteScheduler"),
    "euler-v": dict(SD, _class_name="EulerDiscreteScheduler", prediction_type="v_prediction"),
    "euler-sample": dict(SD, _class_name="EulerDiscreteScheduler", prediction_type="sample"),
    "euler-a": dict(SD, _class_name="EulerAncestralDiscreteScheduler"),
    "euler-a-v": dict(SD, _class_name="EulerAncestralDiscreteScheduler", prediction_type="v_prediction"),
    "dpm++2m": dict(SD, _class_name="DPMSolverMultistepScheduler"),
    "dpm++3m": dict(SD, _class_name="DPMSolverMultistepScheduler", solver_order=3),
    "dpm++2m-heun-v": dict(SD, _class_name="DPMSolverMultistepScheduler", solver_type="heun",
                           prediction_type="v_prediction"),
    "dpm-sample": dict(SD, _class_name="DPMSolverMultistepScheduler", algorithm_type="dpmsolver",
                       final_sigmas_type="sigma_min", prediction_type="sample"),
    "dpm++-threshold": dict(SD, _class_name="DPMSolverMultistepScheduler", thresholding=True),
    "dpm-threshold": dict(SD, _class_name="DPMSolverMultistepScheduler", algorithm_type="dpmsolver",
                          final_sigmas_type="sigma_min", thresholding=True),
    "sde-dpm++": dict(SD, _class_name="DPMSolverMultistepScheduler", algorithm_type="sde-dpmsolver++"),
    "sde-dpm": dict(SD, _class_name="DPMSolverMultistepScheduler", algorithm_type="sde-dpmsolver",
                    final_sigmas_type="sigma_min"),
    "dpm++-karras-1": dict(SD, _class_name="DPMSolverMultistepScheduler", solver_order=1, use_karras_sigmas=True),
    "unipc": dict(SD, _class_name="UniPCMultistepScheduler"),
    "pndm": dict(SD, _class_name="PNDMScheduler", skip_prk_steps=True),
    "pndm-prk": dict(SD, _class_name="PNDMScheduler"),
    "ddpm": dict(SD, _class_name="DDPMScheduler"),
    "lcm": dict(SD, _class_name="LCMScheduler"),
    "flow": {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0},
    "flow-sde": {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0, "stochastic_sampling": True},
}
SHAPE = (2, 4, 6, 5)


def fresh(name: str, steps: int = 9):
    s = schedulers.from_config(CONFIGS[name])
    s.set_timesteps(steps)
    s.manual_seed(7)
    return s


def start(s) -> np.ndarray:
    return fastgen.randn(SHAPE, seed=3) * np.float32(s.init_noise_sigma)


def reference_loop(s, x, g, rescale=0.0, eta=0.0):
    for t in s.timesteps:
        inp = s.scale_model_input(x, t)
        if g > 1:
            out = fake_model(np.concatenate([inp, inp]), float(t))
            u, c = np.split(out, 2)
            pred = _core.combine_guidance(u, c, g, rescale)
        else:
            pred = fake_model(inp, float(t))
        x = s.step(pred, t, x, eta=eta)
    return x


def model(x, t):
    return fake_model(np.asarray(x), float(t))


@pytest.mark.parametrize("g", [1.0, 6.5])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_fused_loop_equals_unfused_and_reference(name, g):
    eta = 0.6 if name.startswith("ddim") else 0.0
    s = fresh(name)
    fused = fastgen.sample_loop(s, start(s), model, guidance_scale=g, eta=eta)
    s = fresh(name)
    unfused = fastgen.sample_loop(s, start(s), model, guidance_scale=g, eta=eta, callback=lambda i, t, lat: None)
    s = fresh(name)
    ref = reference_loop(s, start(s), g, eta=eta)
    assert np.isfinite(ref).all()
    np.testing.assert_array_equal(fused, unfused)
    np.testing.assert_array_equal(fused, ref)


@pytest.mark.parametrize("name", ["ddim", "euler", "dpm++2m"])
def test_guidance_rescale_takes_the_buffered_path_and_still_matches(name):
    s = fresh(name)
    got = fastgen.sample_loop(s, start(s), model, guidance_scale=5.0, guidance_rescale=0.7)
    s = fresh(name)
    np.testing.assert_array_equal(got, reference_loop(s, start(s), 5.0, rescale=0.7))


@pytest.mark.parametrize("name", ["ddim", "euler", "dpm++3m", "flow"])
def test_denoise_returning_its_input_buffer(name):
    """The step reads the prediction while it writes the next model input: here they are one buffer."""
    s = fresh(name)
    got = fastgen.sample_loop(s, start(s), lambda x, t: x, guidance_scale=1.0)
    s = fresh(name)
    x = start(s)
    for t in s.timesteps:
        x = s.step(s.scale_model_input(x, t).copy(), t, x)
    np.testing.assert_array_equal(got, x)


@pytest.mark.parametrize("name", ["ddim", "euler", "dpm++2m"])
def test_callback_changes_to_latents_reach_the_next_model_input(name):
    """Inpainting blends the latents in the callback; the next model input must see that."""
    def blend(lat, i):
        lat[:, :, :3] = np.float32(0.25 * i)

    seen = []

    def denoise(x, t):
        seen.append(np.asarray(x).copy())
        return fake_model(np.asarray(x), float(t))

    s = fresh(name)
    got = fastgen.sample_loop(s, start(s), denoise, guidance_scale=3.0, callback=lambda i, t, lat: blend(lat, i))
    s = fresh(name)
    x, inputs = start(s), []
    for i, t in enumerate(s.timesteps):
        inp = s.scale_model_input(x, t)
        inputs.append(np.concatenate([inp, inp]))
        u, c = np.split(fake_model(inputs[-1], float(t)), 2)
        x = s.step(_core.combine_guidance(u, c, 3.0, 0.0), t, x)
        blend(x, i)
    np.testing.assert_array_equal(np.stack(seen), np.stack(inputs))
    np.testing.assert_array_equal(got, x)


@pytest.mark.parametrize("name", ["ddim", "euler"])
def test_latents_buffer_placement(name):
    """Identity input scaling (DDIM): the latents are the model input's first half (one stream less
    per step). Otherwise (Euler): their own buffer, 2 KiB from the input modulo 4 KiB, so the two
    streams do not 4K-alias."""
    kept = []
    s = fresh(name, 2)
    out = fastgen.sample_loop(s, np.ones((1, 4, 64, 64), np.float32),
                              lambda x, t: kept.append(x) or np.zeros_like(x), guidance_scale=7.5)
    assert out.flags["C_CONTIGUOUS"] and out.shape == (1, 4, 64, 64)
    x = kept[0]
    if name == "ddim":
        assert out.ctypes.data == x.ctypes.data and np.shares_memory(out, x)
        np.testing.assert_array_equal(out, x[:1])  # the last step wrote the latents in place
    else:
        assert not np.shares_memory(out, x)
        assert (out.ctypes.data - x.ctypes.data) % 4096 == 2048
