"""The C++ core outside the schedulers: Philox noise, the sampling loop, guidance, errors."""

import os
import sys
import threading
import time

import numpy as np
import pytest
import torch

import fastgen
from fastgen import schedulers

SD_DDIM = {"_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
           "beta_end": 0.012, "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}


def model(x, t):
    return (0.5 * x * np.cos(t / 400.0) + 0.1 * np.sin(x)).astype(np.float32)


# ---------------------------------------------------------------------------------------- Philox

def test_philox_known_answers():
    # Random123 known-answer vectors for Philox-4x32-10.
    assert fastgen._core.philox4x32_10([0, 0, 0, 0], [0, 0]) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert fastgen._core.philox4x32_10([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2) == [
        0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    assert fastgen._core.philox4x32_10([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344],
                                       [0xA4093822, 0x299F31D0]) == [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


def test_randn_deterministic_and_prefix_stable():
    a = fastgen.randn((2, 4, 8, 8), seed=42)
    b = fastgen.randn((2, 4, 8, 8), seed=42)
    c = fastgen.randn((2, 4, 8, 8), seed=43)
    assert a.dtype == np.float32 and a.shape == (2, 4, 8, 8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    big = fastgen.randn(1000, seed=42)
    np.testing.assert_array_equal(big[:512], a.reshape(-1))
    # the offset continues the stream block-wise (4 values per block)
    np.testing.assert_array_equal(fastgen.randn(8, seed=42, offset=2), big[8:16])


def test_randn_statistics():
    x = fastgen.randn(400_000, seed=7).astype(np.float64)
    assert abs(x.mean()) < 0.01 and abs(x.std() - 1) < 0.01
    # tails: P(|x| > 3) = 0.0027
    assert 0.0020 < np.mean(np.abs(x) > 3) < 0.0034
    assert np.isfinite(x).all()


def test_randn_bad_args():
    with pytest.raises(fastgen.InvalidArgumentError):
        fastgen.randn((2, -1), seed=0)
    with pytest.raises(fastgen.InvalidArgumentError):
        fastgen.randn((2, 2), seed=-1)
    with pytest.raises(fastgen.InvalidArgumentError):
        fastgen.randn((2, 2), seed="1")


# ---------------------------------------------------------------------------------- sample loop

def python_loop(s, latents, guidance_scale, guidance_rescale=0.0):
    x = latents.copy()
    for t in s.timesteps:
        inp = s.scale_model_input(x, t)
        if guidance_scale > 1:
            out = model(np.concatenate([inp, inp]), float(t))
            u, c = np.split(out, 2)
            pred = fastgen._core.combine_guidance(u, c, guidance_scale, guidance_rescale)
        else:
            pred = model(inp, float(t))
        x = s.step(pred, t, x)
    return x


@pytest.mark.parametrize("g", [1.0, 7.5])
def test_loop_equals_python_loop(g):
    s = schedulers.from_config(SD_DDIM)
    s.set_timesteps(12)
    lat = fastgen.randn((2, 4, 8, 6), seed=1)
    got = fastgen.sample_loop(s, lat, model, guidance_scale=g)
    s2 = schedulers.from_config(SD_DDIM)
    s2.set_timesteps(12)
    np.testing.assert_array_equal(got, python_loop(s2, lat, g))


def test_loop_matches_diffusers_cfg_with_rescale():
    """The diffusers text-to-image inner loop, with CFG and guidance_rescale, on a fake UNet."""
    from diffusers import DDIMScheduler
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

    ref = DDIMScheduler.from_config({k: v for k, v in SD_DDIM.items() if k != "_class_name"})
    ref.set_timesteps(15)
    lat = fastgen.randn((2, 4, 8, 8), seed=3)
    x = torch.from_numpy(lat.copy())
    for t in ref.timesteps:
        inp = ref.scale_model_input(torch.cat([x] * 2), t)
        out = torch.from_numpy(model(inp.numpy(), float(t)))
        u, c = out.chunk(2)
        pred = u + 6.0 * (c - u)
        pred = rescale_noise_cfg(pred, c, guidance_rescale=0.7)
        x = ref.step(pred, t, x).prev_sample
    s = schedulers.from_config(SD_DDIM)
    s.set_timesteps(15)
    got = fastgen.sample_loop(s, lat, model, guidance_scale=6.0, guidance_rescale=0.7)
    err = np.abs(got - x.numpy()).max() / np.abs(x.numpy()).max()
    assert err < 1e-5


def test_loop_callback_sees_every_step_and_can_stop():
    s = schedulers.from_config(SD_DDIM)
    s.set_timesteps(10)
    seen = []

    def cb(i, t, lat):
        seen.append((i, t, lat.copy()))
        return i < 3

    lat = fastgen.randn((1, 4, 4, 4), seed=0)
    out = fastgen.sample_loop(s, lat, model, guidance_scale=1.0, callback=cb)
    assert [i for i, _, _ in seen] == [0, 1, 2, 3]
    assert [t for _, t, _ in seen] == [float(t) for t in s.timesteps[:4]]
    np.testing.assert_array_equal(out, seen[-1][2])


def test_loop_begin_index_runs_remaining_steps():
    s = schedulers.from_config(SD_DDIM)
    s.set_timesteps(10)
    s.set_begin_index(4)
    ts = []
    fastgen.sample_loop(s, fastgen.randn((1, 4, 4, 4), seed=0), lambda x, t: ts.append(t) or model(x, t),
                        guidance_scale=1.0)
    assert ts == [float(t) for t in s.timesteps[4:]]


def test_loop_does_not_modify_input_and_denoise_arrays_stay_valid():
    s = schedulers.from_config(SD_DDIM)
    s.set_timesteps(3)
    lat = fastgen.randn((1, 4, 4, 4), seed=0)
    before = lat.copy()
    kept = []
    fastgen.sample_loop(s, lat, lambda x, t: kept.append(x) or model(x, t), guidance_scale=2.0)
    np.testing.assert_array_equal(lat, before)
    assert kept[0].shape == (2, 4, 4, 4)
    assert np.isfinite(kept[0]).all()  # still readable after the loop returned


def test_loop_releases_gil_and_is_reentrant_across_threads():
    # A second Python thread must make progress while the loop is inside its C++ steps. The switch
    # interval is raised far above the loop's run time, so a thread holding the GIL is never forced
    # to give it up: if the loop kept the GIL during its steps, the counter could not advance between
    # two denoise() calls (which do no work that releases the GIL: they return a ready array).
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(30.0)
    try:
        counter = [0]
        started, done = threading.Event(), threading.Event()

        def spin():
            started.set()
            while not done.is_set():
                counter[0] += 1
                time.sleep(0.0002)  # releases the GIL; taking it back needs a free GIL

        s = schedulers.from_config(SD_DDIM)
        s.set_timesteps(20)
        lat = fastgen.randn((2, 4, 512, 512), seed=0)  # about 2 ms per C++ step
        pred = np.zeros((4, 4, 512, 512), np.float32)
        seen = []

        def denoise(x, t):
            seen.append(counter[0])
            return pred

        spinner = threading.Thread(target=spin)
        spinner.start()
        started.wait()
        try:
            fastgen.sample_loop(s, lat, denoise, guidance_scale=3.0)
        finally:
            done.set()
            spinner.join()
    finally:
        sys.setswitchinterval(old_interval)
    progress = [b - a for a, b in zip(seen, seen[1:])]
    assert sum(progress) > 0, f"no progress of the other thread during the C++ steps: {progress}"

    results = {}

    def run(k):
        s = schedulers.from_config(SD_DDIM)
        s.set_timesteps(20)
        results[k] = fastgen.sample_loop(s, fastgen.randn((1, 4, 16, 16), seed=k), model, guidance_scale=3.0)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for k in range(4):
        s = schedulers.from_config(SD_DDIM)
        s.set_timesteps(20)
        np.testing.assert_array_equal(results[k], fastgen.sample_loop(
            s, fastgen.randn((1, 4, 16, 16), seed=k), model, guidance_scale=3.0))


# ------------------------------------------------------------------- a scheduler used concurrently

def _reference(steps, lat, g=3.0):
    s = schedulers.from_config(SD_DDIM)
    s.set_timesteps(steps)
    return fastgen.sample_loop(s, lat, model, guidance_scale=g)


def _attempts(s, x):
    """Every call that a running loop must refuse, by name."""
    t = float(s.timesteps[0])
    return {
        "set_timesteps": lambda: s.set_timesteps(7),
        "set_begin_index": lambda: s.set_begin_index(1),
        "manual_seed": lambda: s.manual_seed(3),
        "step": lambda: s.step(x, t, x),
        "sample_loop": lambda: fastgen.sample_loop(s, x, model),
        "video_sample_loop": lambda: fastgen._core.video_sample_loop(
            s.impl, x[:, :, None], lambda v, t, start: v, 16, 4, "pyramid", 1.0),
    }


def test_scheduler_refuses_a_second_user_from_its_loops_callbacks():
    s = schedulers.from_config(SD_DDIM)
    s.set_timesteps(6)
    lat = fastgen.randn((1, 4, 8, 8), seed=2)
    refused, reads = {}, []

    def denoise(x, t):
        if not refused:
            for name, call in _attempts(s, lat).items():
                with pytest.raises(fastgen.ConcurrentUseError, match="clone") as e:
                    call()
                refused[name] = str(e.value)
            # reads are allowed from the loop's own thread (the loop waits for this callback)
            reads.append((s.step_index, s.add_noise(lat, lat, t).shape, s.scale_model_input(lat, t).shape,
                          list(s.timesteps), s.begin_index, s.clone().class_name))
        return model(x, t)

    def callback(i, t, latents):
        with pytest.raises(fastgen.ConcurrentUseError):
            s.set_timesteps(3)
        reads.append(s.step_index)

    got = fastgen.sample_loop(s, lat, denoise, guidance_scale=3.0, callback=callback)
    assert sorted(refused) == sorted(_attempts(s, lat))
    assert "DDIMScheduler.set_timesteps(): this scheduler is in use by a running sample_loop" in refused["set_timesteps"]
    assert reads[0][0] is None and reads[1:] == [1, 2, 3, 4, 5, 6]
    # the refused calls changed nothing: the loop's result is the undisturbed one
    np.testing.assert_array_equal(got, _reference(6, lat))
    # once the loop is over the scheduler is free again
    s.set_timesteps(4)
    assert len(s.timesteps) == 4 and s.step_index is None


def test_video_loop_refuses_a_second_user():
    s = schedulers.from_config(SD_DDIM)
    s.set_timesteps(3)
    lat = fastgen.randn((1, 4, 10, 2, 2), seed=0)
    calls = []

    def denoise(x, t, start):
        with pytest.raises(fastgen.ConcurrentUseError, match="video_sample_loop"):
            s.set_timesteps(5)
        with pytest.raises(fastgen.ConcurrentUseError):
            fastgen._core.video_sample_loop(s.impl, lat, lambda *a: a[0], 8, 4, "pyramid", 1.0)
        calls.append(start)
        return x

    fastgen._core.video_sample_loop(s.impl, lat, denoise, 8, 4, "pyramid", 1.0)
    assert calls == [0, 2] * 3
    s.set_timesteps(5)


def test_scheduler_shared_by_two_threads():
    """Thread A runs a loop (the GIL released in its steps); thread B may not touch A's scheduler, only a clone."""
    steps = 12
    s = schedulers.from_config(SD_DDIM)
    s.set_timesteps(steps)
    lat = fastgen.randn((2, 4, 64, 64), seed=5)
    want = _reference(steps, lat)
    inside, go = threading.Event(), threading.Event()
    out = {}

    def denoise(x, t):
        if not inside.is_set():
            inside.set()
            assert go.wait(60)
        return model(x, t)

    def run_a():
        try:
            out["a"] = fastgen.sample_loop(s, lat, denoise, guidance_scale=3.0)
        except BaseException as e:  # noqa: BLE001  (reported below)
            out["a"] = e

    a = threading.Thread(target=run_a)
    a.start()
    assert inside.wait(60)
    # A waits inside its loop: every other use of its scheduler from this thread is refused ...
    for name, call in _attempts(s, lat).items():
        with pytest.raises(fastgen.ConcurrentUseError, match="another thread.*clone"):
            call()
    for read in (lambda: s.step_index, lambda: s.add_noise(lat, lat, 1), lambda: s.scale_model_input(lat, 1)):
        with pytest.raises(fastgen.ConcurrentUseError, match="another thread"):
            read()
    # ... while a clone runs concurrently, and reads of the schedule stay allowed
    c = s.clone()
    c.set_timesteps(steps)
    np.testing.assert_array_equal(fastgen.sample_loop(c, lat, model, guidance_scale=3.0), want)
    assert list(s.timesteps) == list(c.timesteps) and s.num_inference_steps == steps
    # now let A run its GIL-released steps while this thread keeps trying to step its scheduler
    go.set()
    while a.is_alive():
        try:
            s.step(lat, 1, lat)
        except fastgen.ConcurrentUseError:
            pass
        except fastgen.ScheduleError:
            pass  # A is done: the schedule has no timestep 1
    a.join()
    assert not isinstance(out["a"], BaseException), out["a"]
    np.testing.assert_array_equal(out["a"], want)  # A was never disturbed


def test_scheduler_step_is_guarded_across_threads():
    """While one thread's step() runs (GIL released), another thread's use of the scheduler is refused; the
    stepping thread is never disturbed (without the guard, set_timesteps freed the buffers a step reads)."""
    # dynamic thresholding sorts every sample in each step: a step takes tens of milliseconds
    cfg = dict(SD_DDIM, _class_name="DPMSolverMultistepScheduler", thresholding=True)
    s, ref = schedulers.from_config(cfg), schedulers.from_config(cfg)
    s.set_timesteps(6)
    ref.set_timesteps(6)
    x0 = fastgen.randn((2, 4, 256, 256), seed=1)
    out = {}

    def stepper():
        x = x0
        for t in s.timesteps:
            x = s.step(model(x, float(t)), t, x)
        out["x"] = x

    a = threading.Thread(target=stepper)
    a.start()
    refused = 0
    while a.is_alive():
        if s.impl.in_use:  # A is inside a step, which runs without the GIL
            try:
                s.step_index  # a read, harmless when A has just finished its step
            except fastgen.ConcurrentUseError as e:
                assert "another thread" in str(e) and "clone" in str(e)
                refused += 1
    a.join()
    x = x0
    for t in ref.timesteps:
        x = ref.step(model(x, float(t)), t, x)
    np.testing.assert_array_equal(out["x"], x)
    assert refused >= 1
    assert not s.impl.in_use


def test_guard_released_after_errors():
    s = _ready()

    def boom(x, t):
        raise KeyError("network failed")

    with pytest.raises(KeyError):
        fastgen.sample_loop(s, np.zeros((1, 4, 4, 4), np.float32), boom)
    with pytest.raises(fastgen.ShapeError):
        fastgen.sample_loop(s, np.zeros((1, 4, 4, 4), np.float32), lambda x, t: x[:1])
    assert not s.impl.in_use
    s.set_timesteps(5)
    fastgen.sample_loop(s, np.zeros((1, 4, 4, 4), np.float32), model)


# ------------------------------------------------------------------------------- step callbacks

@pytest.mark.parametrize("ret", ["yes", 3, 1, 0, 1.0, [], {"latents": None}, object()])
def test_step_callback_must_return_a_bool(ret):
    name = type(ret).__name__

    def my_callback(i, t, latents):
        return ret

    with pytest.raises(fastgen.InvalidArgumentError, match=rf"my_callback.*returned {name}$"):
        fastgen.sample_loop(_ready(), np.zeros((1, 4, 4, 4), np.float32), model, callback=my_callback)
    s = _ready()
    with pytest.raises(fastgen.InvalidArgumentError, match=rf"my_callback.*returned {name}$"):
        fastgen._core.video_sample_loop(s.impl, np.zeros((1, 4, 3, 2, 2), np.float32), lambda x, t, start: x, 8, 4,
                                        "pyramid", 1.0, 0.0, 0.0, my_callback)
    assert not s.impl.in_use


@pytest.mark.parametrize("ret,steps", [(None, 5), (True, 5), (np.True_, 5), (False, 1), (np.False_, 1)])
def test_step_callback_none_or_bool(ret, steps):
    seen = []

    def cb(i, t, latents):
        seen.append(i)
        return ret

    fastgen.sample_loop(_ready(), np.zeros((1, 4, 4, 4), np.float32), model, callback=cb)
    assert len(seen) == steps
    seen.clear()
    fastgen._core.video_sample_loop(_ready().impl, np.zeros((1, 4, 3, 2, 2), np.float32), lambda x, t, start: x,
                                    8, 4, "pyramid", 1.0, 0.0, 0.0, cb)
    assert len(seen) == steps


def test_callback_exceptions_propagate_unchanged():
    class MyError(Exception):
        pass

    def cb(i, t, latents):
        raise MyError("stop here")

    for call in (lambda: fastgen.sample_loop(_ready(), np.zeros((1, 4, 4, 4), np.float32), model, callback=cb),
                 lambda: fastgen._core.video_sample_loop(_ready().impl, np.zeros((1, 4, 3, 2, 2), np.float32),
                                                         lambda x, t, start: x, 8, 4, "pyramid", 1.0, 0.0, 0.0, cb)):
        with pytest.raises(MyError, match="stop here") as e:
            call()
        assert type(e.value) is MyError


# ------------------------------------------------------------------------------ C++ exceptions

@pytest.mark.parametrize("kind,err,match", [
    ("bad_alloc", fastgen.ResourceError, "out of memory"),
    ("length_error", fastgen.ResourceError, "too large"),
    ("logic_error", fastgen.FastgenError, "internal error: a broken invariant"),
    ("out_of_range", fastgen.FastgenError, "internal error: map::at"),
    ("runtime_error", fastgen.FastgenError, "internal error: something failed"),
    ("int", fastgen.FastgenError, "unknown C\\+\\+ exception"),
    ("concurrent", fastgen.ConcurrentUseError, "busy"),
    ("cast_error", fastgen.InvalidArgumentError, "wrong argument type"),
])
def test_every_cpp_exception_is_a_fastgen_error(kind, err, match):
    with pytest.raises(err, match=match) as e:
        fastgen._core._throw_for_tests(kind)
    assert isinstance(e.value, fastgen.FastgenError)
    if err is fastgen.ResourceError:
        assert isinstance(e.value, MemoryError)


@pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                    reason="AddressSanitizer aborts on a failed operator new instead of throwing std::bad_alloc")
def test_out_of_memory_is_a_resource_error():
    with pytest.raises(fastgen.ResourceError) as e:
        fastgen._core.FrameRing(2**40, 3, 64, 64)  # 54 PB
    assert isinstance(e.value, MemoryError)
    assert fastgen.ResourceError is fastgen.errors.ResourceError


# ------------------------------------------------------------------------------------ bad input

def _ready():
    s = schedulers.from_config(SD_DDIM)
    s.set_timesteps(5)
    return s


@pytest.mark.parametrize("kwargs,err", [
    ({"guidance_scale": float("nan")}, fastgen.InvalidArgumentError),
    ({"guidance_scale": -1.0}, fastgen.InvalidArgumentError),
    ({"guidance_rescale": 1.5}, fastgen.InvalidArgumentError),
    ({"eta": -0.1}, fastgen.InvalidArgumentError),
])
def test_loop_bad_options(kwargs, err):
    with pytest.raises(err):
        fastgen.sample_loop(_ready(), fastgen.randn((1, 4, 4, 4), seed=0), model, **kwargs)


def test_loop_bad_latents_and_outputs():
    s = _ready()
    with pytest.raises(fastgen.ShapeError, match="float32"):
        fastgen.sample_loop(s, np.zeros((1, 4, 4, 4)), model)
    with pytest.raises(fastgen.ShapeError):
        fastgen.sample_loop(s, np.zeros((4,), np.float32), model)
    with pytest.raises(fastgen.ShapeError, match="denoise"):
        fastgen.sample_loop(_ready(), np.zeros((1, 4, 4, 4), np.float32), lambda x, t: x[:1])
    with pytest.raises(fastgen.ShapeError, match="float32"):
        fastgen.sample_loop(_ready(), np.zeros((1, 4, 4, 4), np.float32), lambda x, t: x.astype(np.float64))
    with pytest.raises(fastgen.ShapeError):
        fastgen.sample_loop(_ready(), np.zeros((1, 4, 4, 4), np.float32), lambda x, t: None)


def test_loop_propagates_denoise_exceptions():
    def boom(x, t):
        raise RuntimeError("network failed")

    with pytest.raises(RuntimeError, match="network failed") as e:
        fastgen.sample_loop(_ready(), np.zeros((1, 4, 4, 4), np.float32), boom)
    assert type(e.value) is RuntimeError  # the user's exception, not a translated one


def test_loop_requires_timesteps():
    with pytest.raises(fastgen.ScheduleError):
        fastgen.sample_loop(schedulers.from_config(SD_DDIM), np.zeros((1, 4, 4, 4), np.float32), model)


def test_scheduler_errors():
    with pytest.raises(fastgen.ConfigError, match="unknown scheduler"):
        schedulers.from_config({"_class_name": "NoSuchScheduler"})
    with pytest.raises(fastgen.ConfigError, match="beta_schedule"):
        schedulers.from_config(dict(SD_DDIM, beta_schedule="cubic"))
    with pytest.raises(fastgen.ConfigError, match="prediction_type"):
        schedulers.from_config(dict(SD_DDIM, prediction_type="x"))
    with pytest.raises(fastgen.ConfigError, match="num_train_timesteps"):
        schedulers.from_config(dict(SD_DDIM, num_train_timesteps="many"))
    with pytest.raises(fastgen.ConfigError):
        schedulers.from_config({"beta_schedule": "linear"})  # no class
    s = schedulers.from_config(SD_DDIM)
    with pytest.raises(fastgen.InvalidArgumentError):
        s.set_timesteps(0)
    with pytest.raises(fastgen.InvalidArgumentError):
        s.set_timesteps(1001)
    with pytest.raises(fastgen.ScheduleError):
        s.step(np.zeros((1, 4), np.float32), 10, np.zeros((1, 4), np.float32))  # no set_timesteps
    s.set_timesteps(10)
    with pytest.raises(fastgen.ScheduleError, match="not in"):
        s.step(np.zeros((1, 4), np.float32), 17, np.zeros((1, 4), np.float32))
    with pytest.raises(fastgen.ShapeError):
        s.step(np.zeros((1, 4), np.float32), int(s.timesteps[0]), np.zeros((1, 5), np.float32))
    with pytest.raises(fastgen.InvalidArgumentError):
        s.step(np.zeros((1, 4), np.float32), float("nan"), np.zeros((1, 4), np.float32))


def test_scheduler_config_from_file_and_alias(tmp_path):
    import json

    p = tmp_path / "scheduler_config.json"
    p.write_text(json.dumps(SD_DDIM))
    s = schedulers.from_config(str(p))
    assert s.class_name == "DDIMScheduler"
    s2 = schedulers.from_config(str(p), class_name="ddim")
    s2.set_timesteps(4)
    assert list(s2.timesteps) == [751, 501, 251, 1]
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(fastgen.ConfigError, match="JSON"):
        schedulers.from_config(str(tmp_path / "bad.json"))
    with pytest.raises(fastgen.ConfigError, match="not found"):
        schedulers.from_config(str(tmp_path / "missing.json"))


def test_randn_is_box_muller_of_the_philox_stream():
    """Element 4b..4b+3 are the Box-Muller pairs of Philox block b (reference in float64)."""
    seed = 123456789
    n_blocks = 300
    x = fastgen.randn(4 * n_blocks, seed=seed).astype(np.float64)
    ref = []
    for b in range(n_blocks):
        r = fastgen._core.philox4x32_10([b & 0xFFFFFFFF, b >> 32, 0, 0], [seed & 0xFFFFFFFF, seed >> 32])
        for p in range(2):
            u1 = ((r[2 * p] >> 8) + 1) / 16777216.0
            u2 = (r[2 * p + 1] >> 8) / 16777216.0
            rad = np.sqrt(-2 * np.log(u1))
            ref += [rad * np.cos(2 * np.pi * u2), rad * np.sin(2 * np.pi * u2)]
    np.testing.assert_allclose(x, np.array(ref), rtol=2e-6, atol=2e-6)
