"""Video (issue 9): AnimateDiff export, parity with diffusers, long videos over context windows,
the decoded-frame ring, MP4 / GIF writing, flat memory in the number of frames, bad input."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastgen
from fastgen import _core

MOTION_LEN = 8  # the tiny motion module's max sequence length: an "8-frame context model"
H, W = 48, 80  # non-square; the tiny video VAE has factor 8


@pytest.fixture(scope="module")
def animatediff(tmp_path_factory):
    from fastgen_export.api import export
    from fastgen_export.testing import build_tiny_animatediff

    root = tmp_path_factory.mktemp("animatediff")
    src = build_tiny_animatediff(str(root / "src"), motion_max_seq_length=MOTION_LEN)
    eng = export(src, str(root / "engine"), log=None)
    return src, eng


def max_diff(a, b):
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def test_export_manifest(animatediff):
    _, eng = animatediff
    m = json.load(open(os.path.join(eng, "fastgen.json")))
    assert m["kind"] == "text2video" and m["source"]["class"] == "AnimateDiffPipeline"
    assert m["config"]["motion_max_seq_length"] == MOTION_LEN
    unet = m["components"]["unet"]
    assert unet["inputs"]["sample"]["shape"] == ["batch", 4, "frames", "latent_height", "latent_width"]
    assert unet["inputs"]["timestep"]["shape"] == ["batch"]
    assert unet["outputs"]["noise_pred"]["shape"][2] == "frames"
    assert unet["parity"]["passed"] is True and unet["parity"]["inputs"]["sample"][2] != 4  # other frame count
    assert set(m["components"]) == {"text_encoder", "unet", "unet_fifo", "vae_decoder"}
    fifo = m["components"]["unet_fifo"]
    assert fifo["inputs"]["timestep"]["shape"] == ["batch", "frames"] and fifo["parity"]["passed"] is True
    assert m["config"]["per_frame_timestep"] is True


def test_matches_diffusers_animatediff(animatediff):
    import torch
    from diffusers import AnimateDiffPipeline

    src, eng = animatediff
    ref = AnimateDiffPipeline.from_pretrained(src)
    ref.set_progress_bar_config(disable=True)
    vid = fastgen.Pipeline.load(eng)
    assert type(vid).__name__ == "TextToVideoPipeline"
    frames = 6
    lat = fastgen.randn((2, 4, frames, H // 8, W // 8), seed=3)
    kw = dict(num_frames=frames, num_inference_steps=3, guidance_scale=6.0, height=H, width=W,
              negative_prompt=["blurry", "ugly"])
    want = ref(["a red cat", "a dog"], latents=torch.from_numpy(lat), output_type="np", **kw).frames
    got = vid(["a red cat", "a dog"], latents=lat, decode_chunk_size=4, **kw)
    assert got.frames.shape == np.asarray(want).shape == (2, frames, H, W, 3)
    assert max_diff(got.frames, want) < 2e-3
    pil = vid("a red cat", latents=lat[:1], output_type="pil", num_frames=frames, num_inference_steps=2,
              height=H, width=W).frames
    assert len(pil) == 1 and len(pil[0]) == frames and pil[0][0].size == (W, H)


def _reference_context_loop(vid, prompt, latents, steps, g, ctx, stride, weighting):
    """NumPy reference of context-window denoising: blend every window's guided prediction."""
    sched = vid.schedulers.make()
    sched.set_timesteps(steps)
    cond = vid.prompt_encoder([prompt], None, 1, g > 1, {}).arrays["encoder_hidden_states"]
    net = vid.session("unet")
    F = latents.shape[2]
    starts = list(range(0, F - ctx, stride)) + [F - ctx]
    w = np.ones(ctx, np.float32) if weighting == "flat" else \
        np.array([min(i + 1, ctx - i) for i in range(ctx)], np.float32)
    x = latents * np.float32(sched.init_noise_sigma)
    for t in sched.timesteps:
        xs = sched.scale_model_input(x, t)
        acc = np.zeros_like(x)
        wsum = np.zeros(F, np.float32)
        for s in starts:
            xin = xs[:, :, s:s + ctx]
            if g > 1:
                xin = np.concatenate([xin, xin])
            out = net.run({"sample": np.ascontiguousarray(xin), "timestep": np.full((xin.shape[0],), t, np.float32),
                           "encoder_hidden_states": cond}, ["noise_pred"])["noise_pred"]
            if g > 1:
                u, c = out[:1], out[1:]
                out = u + np.float32(g) * (c - u)
            acc[:, :, s:s + ctx] += w[None, None, :, None, None] * out
            wsum[s:s + ctx] += w
        x = sched.step(acc / wsum[None, None, :, None, None], t, x)
    return x


@pytest.mark.parametrize("weighting", ["pyramid", "flat"])
def test_context_windows_match_numpy_reference(animatediff, weighting):
    _, eng = animatediff
    vid = fastgen.Pipeline.load(eng)
    F = 14
    lat = fastgen.randn((1, 4, F, 4, 4), seed=11)
    got = vid("a cat", num_frames=F, num_inference_steps=2, guidance_scale=5.0, height=32, width=32, latents=lat,
              context_length=6, context_stride=3, context_weighting=weighting, output_type="latent").frames
    want = _reference_context_loop(vid, "a cat", lat, 2, 5.0, 6, 3, weighting)
    assert got.shape == (1, 4, F, 4, 4)
    assert max_diff(got, want) < 1e-5


def test_windows_and_weights():
    assert _core.context_windows(40, 8, 4) == list(range(0, 32, 4)) + [32]
    assert _core.context_windows(5, 8, 4) == [0]
    assert _core.context_windows(10, 8, 8) == [0, 2]
    assert _core.window_weights(6, "pyramid") == [1, 2, 3, 3, 2, 1]
    assert _core.window_weights(3, "flat") == [1, 1, 1]
    for bad in [(0, 8, 4), (10, 8, 0), (10, 8, 9)]:
        with pytest.raises(fastgen.InvalidArgumentError):
            _core.context_windows(*bad)


def test_frame_ring():
    ring = _core.FrameRing(3, 3, 2, 4)
    assert (ring.capacity, ring.channels, ring.height, ring.width) == (3, 3, 2, 4)
    x = np.linspace(-1.5, 1.5, 2 * 3 * 2 * 4, dtype=np.float32).reshape(2, 3, 2, 4)
    ring.push(x)
    assert len(ring) == 2
    with pytest.raises(fastgen.InvalidArgumentError, match="1 of 3 slots free"):
        ring.push(x)  # 2 more do not fit in 1 free slot
    assert len(ring) == 2  # nothing stored
    for i in range(2):
        np.testing.assert_array_equal(ring.pop(2, 4), np.clip(x[i] / 2 + 0.5, 0, 1).transpose(1, 2, 0))
    ring.push(x)  # wraps around
    assert len(ring) == 2
    with pytest.raises(fastgen.ShapeError):
        ring.push(np.zeros((1, 3, 4, 4), np.float32))
    # a non-contiguous view is read as its values (copied), not as raw memory
    view = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    assert not view.flags.c_contiguous
    ring2 = _core.FrameRing(2, 3, 2, 4)
    ring2.push(view[:1])
    np.testing.assert_array_equal(ring2.pop(2, 4), np.clip(x[0] / 2 + 0.5, 0, 1).transpose(1, 2, 0))


@pytest.mark.parametrize("frames", [
    np.zeros((1, 3, 4, 5), np.float32),     # wrong width
    np.zeros((1, 3, 5, 4), np.float32),     # wrong height
    np.zeros((1, 1, 4, 4), np.float32),     # wrong channels
    np.zeros((1, 3, 2, 8), np.float32),     # same number of values, wrong shape
    np.zeros((3, 4, 4), np.float32),        # no frame axis
    np.zeros((1, 1, 3, 4, 4), np.float32),  # one axis too many
    np.zeros((0, 3, 4, 4), np.float32),     # no frames
    np.zeros((1, 3, 4, 4), np.float64),     # wrong dtype
    np.zeros((1, 3, 4, 4), np.float16),
    [[[[0.0] * 4] * 4] * 3],                # not an array
])
def test_frame_ring_refuses_bad_pushes(frames):
    ring = _core.FrameRing(3, 3, 4, 4)
    with pytest.raises(fastgen.ShapeError):
        ring.push(frames)
    assert len(ring) == 0


def test_frame_ring_refuses_bad_sizes():
    ring = _core.FrameRing(3, 3, 4, 4)
    with pytest.raises(fastgen.InvalidArgumentError, match="empty"):
        ring.pop(4, 4)
    ring.push(np.zeros((1, 3, 4, 4), np.float32))
    # pop(5, 5) used to read past the buffer, pop(0, 4) to divide by zero
    for h, w in [(5, 5), (0, 4), (4, 0), (0, 0), (-1, 4), (4, -16), (2, 8), (8, 2), (16, 1), (4, 5), (2**40, 4)]:
        with pytest.raises(fastgen.ShapeError, match="4x4"):
            ring.pop(h, w)
    assert len(ring) == 1  # nothing dropped
    assert ring.pop(4, 4).shape == (4, 4, 3)
    with pytest.raises(fastgen.InvalidArgumentError, match="empty"):
        ring.pop(4, 4)
    # overflow: more frames than free slots, in one push or over several
    with pytest.raises(fastgen.InvalidArgumentError, match="3 of 3 slots free"):
        ring.push(np.zeros((4, 3, 4, 4), np.float32))
    ring.push(np.zeros((3, 3, 4, 4), np.float32))
    with pytest.raises(fastgen.InvalidArgumentError, match="0 of 3 slots free"):
        ring.push(np.zeros((1, 3, 4, 4), np.float32))
    assert len(ring) == 3
    # zero or negative dimensions, and a ring too large to address
    for dims in [(0, 3, 4, 4), (3, 0, 4, 4), (3, 3, 0, 4), (3, 3, 4, 0), (-1, 3, 4, 4), (3, 3, -4, 4)]:
        with pytest.raises(fastgen.InvalidArgumentError, match=">= 1"):
            _core.FrameRing(*dims)
    with pytest.raises(fastgen.InvalidArgumentError, match="too large"):
        _core.FrameRing(2**62, 3, 2**20, 2**20)


def test_long_video_40_frames_mp4_and_gif(animatediff, tmp_path):
    import av

    _, eng = animatediff
    vid = fastgen.Pipeline.load(eng)
    windows = []
    out = vid("a red cat", num_frames=40, num_inference_steps=2, guidance_scale=1.0, height=32, width=32,
              context_length=8, context_stride=4, decode_chunk_size=8, seed=1,
              window_callback=lambda s, t: windows.append(s))
    assert out.frames.shape == (1, 40, 32, 32, 3)
    assert np.isfinite(out.frames).all() and 0 <= out.frames.min() and out.frames.max() <= 1
    assert windows == _core.context_windows(40, 8, 4) * 2 and vid.num_windows(40, 8, 4) == 9
    mp4 = fastgen.export_video(out.frames[0], tmp_path / "cat.mp4", fps=8)
    with av.open(str(mp4)) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(decoded) == 40 and decoded[0].shape == (32, 32, 3)
    gif = fastgen.export_video(list(out.frames[0][:5]), tmp_path / "cat.gif", fps=4)
    from PIL import Image

    with Image.open(gif) as im:
        assert im.n_frames == 5
    # the streamed path gives the same frames as the collected one
    streamed = list(vid.iter_frames("a red cat", num_frames=40, num_inference_steps=2, guidance_scale=1.0,
                                    height=32, width=32, context_length=8, decode_chunk_size=8, seed=1))
    assert len(streamed) == 40 and max_diff(np.stack(streamed), out.frames[0]) == 0.0


def test_gif_streams_frames(tmp_path):
    """GIF output is written frame by frame as an iterator yields (the file grows while frames are still
    coming) and reads back in Pillow and PyAV with the frame count, size, per-frame palette colours and
    delays of the fps (12/13 centiseconds alternating at 8 fps: n / fps in total)."""
    import av
    from PIL import Image

    path = tmp_path / "s.gif"
    rs = np.random.RandomState(0)
    frames = [rs.uniform(0, 1, (24, 40, 3)).astype(np.float32) for _ in range(9)]
    frames[3][:] = [1.0, 0.0, 0.0]  # one flat red frame: a palette of its own
    sizes = []

    def gen():
        for f in frames:
            sizes.append(path.stat().st_size if path.exists() else 0)
            yield f

    fastgen.export_video(gen(), path, fps=8)
    assert sizes[1] > 0 and all(b > a for a, b in zip(sizes[1:], sizes[2:])), sizes
    with Image.open(path) as im:
        assert im.n_frames == 9 and im.size == (40, 24) and im.info["loop"] == 0
        durations = []
        for i in range(9):
            im.seek(i)
            durations.append(im.info["duration"])
            got = np.asarray(im.convert("RGB"), np.float64)
            want = np.round(frames[i] * 255)
            assert np.abs(got - want).mean() < (1 if i == 3 else 25), i  # 256-colour quantisation of noise
    assert set(durations) == {120, 130} and sum(durations) == 1120  # 9 / 8 s to the centisecond
    with av.open(str(path)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 9
    with pytest.raises(fastgen.InvalidArgumentError, match="shape"):
        fastgen.export_video([frames[0], frames[1][:8]], tmp_path / "mixed.gif")


_MEM_SCRIPT = textwrap.dedent("""
    import sys, tracemalloc
    import fastgen

    def status_kib(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])

    eng, frames, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    vid = fastgen.Pipeline.load(eng)
    # warm up with the measured shapes (8-frame windows, 4-frame decode chunks): ONNX Runtime's arenas are sized
    list(vid.iter_frames("warm up", num_frames=8, num_inference_steps=1, guidance_scale=1.0, height=128, width=128,
                         decode_chunk_size=4))
    try:  # reset the process's peak RSS (VmHWM) to its current RSS, so the peak below is this export's
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = status_kib("VmRSS")
    except (OSError, TypeError):
        base = None
    tracemalloc.start()
    it = vid.iter_frames("a cat", num_frames=frames, num_inference_steps=1, guidance_scale=1.0, height=128,
                         width=128, context_length=8, context_stride=8, decode_chunk_size=4)
    fastgen.export_video(it, path, fps=8)
    rss = None if base is None else (status_kib("VmHWM") - base) * 1024
    print(tracemalloc.get_traced_memory()[1], rss)
""")


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_peak_memory_flat_in_frames(animatediff, tmp_path, suffix):
    """Streaming iter_frames -> export_video: peak memory does not grow with the frame count.

    tracemalloc sees NumPy's buffers (decoded frames, latents); Pillow's and the encoders' C buffers
    are outside it, so for GIF the peak RSS growth of the export is checked too (the old Pillow
    save_all path kept every frame: +7 MB for the 80 extra 128x128 frames). MP4's RSS is not checked
    against frames: libx264's lookahead buffers a bounded ~60 frames, more than the 40-frame run fills."""
    _, eng = animatediff
    env = dict(os.environ)
    peaks, rss = {}, {}
    for n in (40, 120):
        path = tmp_path / f"v{n}{suffix}"
        r = subprocess.run([sys.executable, "-c", _MEM_SCRIPT, eng, str(n), str(path)],
                           capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        traced, grown = r.stdout.strip().splitlines()[-1].split()
        peaks[n], rss[n] = int(traced), (None if grown == "None" else int(grown))
    frame_bytes = 128 * 128 * 3 * 4
    # holding the 80 extra decoded frames would add 80 * frame_bytes (15.7 MB); only latents grow (~0.3 MB)
    assert peaks[120] - peaks[40] < 0.2 * 80 * frame_bytes, peaks
    if suffix == ".gif":
        from PIL import Image

        with Image.open(tmp_path / "v120.gif") as im:
            assert im.n_frames == 120 and im.size == (128, 128)
        if rss[40] is not None:
            # the 80 extra frames as uint8 RGB alone are 3.9 MB; a streaming writer holds one (measured here:
            # growth within +-0.5 MB of noise; the old path +7 MB)
            assert rss[120] - rss[40] < 0.5 * 80 * 128 * 128 * 3, rss


def test_bad_input(animatediff, tmp_path):
    _, eng = animatediff
    vid = fastgen.Pipeline.load(eng)
    kw = dict(num_inference_steps=1, height=32, width=32)
    bad = [dict(num_frames=0), dict(num_frames=16, context_length=MOTION_LEN + 1),
           dict(num_frames=16, context_length=8, context_stride=0),
           dict(num_frames=16, context_length=8, context_stride=9), dict(num_frames=4, context_length=4, context_stride=5),
           dict(num_frames=4, context_stride=MOTION_LEN + 1), dict(num_frames=4, output_type="mp4"),
           dict(num_frames=4, decode_chunk_size=0), dict(num_frames=4, context_weighting="gauss")]
    for b in bad:
        with pytest.raises(fastgen.InvalidArgumentError):
            vid("a cat", **{**kw, **b})
    with pytest.raises(fastgen.ShapeError):
        vid("a cat", num_frames=4, latents=np.zeros((1, 4, 3, 4, 4), np.float32), **kw)
    for path in ("x.avi", "x", "x.png"):
        with pytest.raises(fastgen.InvalidArgumentError):
            fastgen.export_video(np.zeros((2, 8, 8, 3), np.float32), tmp_path / path)
    with pytest.raises(fastgen.InvalidArgumentError):
        fastgen.export_video([], tmp_path / "empty.mp4")


def test_cli_generate_video(animatediff, tmp_path, capsys):
    from fastgen import cli

    _, eng = animatediff
    out = tmp_path / "clip.gif"
    rc = cli.main(["generate", eng, "a red cat", "--num-frames", "12", "--context-length", "8", "--steps", "2",
                   "--height", "32", "--width", "32", "--seed", "3", "-o", str(out), "--fps", "4"])
    assert rc == 0 and out.is_file()
    from PIL import Image

    with Image.open(out) as im:
        assert im.n_frames == 12
    assert "2 steps x 2 windows" in capsys.readouterr().err
    fifo = tmp_path / "fifo.mp4"
    assert cli.main(["generate", eng, "a cat", "--num-frames", "9", "--long-video", "fifo", "--steps", "4",
                     "--context-length", "4", "--height", "32", "--width", "32", "-o", str(fifo)]) == 0
    assert fifo.is_file()
    assert cli.main(["generate", eng, "a cat", "--num-frames", "4", "-o", str(tmp_path / "x.avi")]) == 2
    assert cli.main(["generate", eng, "a cat", "--num-frames", "0", "-o", str(tmp_path / "x.mp4")]) == 2


def _fifo_reference(vid, prompt, frames, steps, g, ctx, seed, h, w):
    """Straightforward NumPy FIFO-Diffusion: same queue, partitions, per-frame timesteps and DDIM update."""
    from fastgen.sampling import randn

    sched = vid.schedulers.make()
    sched.set_timesteps(steps)
    cfg = sched.config
    n = cfg["num_train_timesteps"]
    betas = np.linspace(cfg["beta_start"], cfg["beta_end"], n, dtype=np.float32)
    assert cfg["beta_schedule"] == "linear"
    ac = np.cumprod(1.0 - betas.astype(np.float64)).astype(np.float32)
    final = np.float32(1.0) if cfg.get("set_alpha_to_one", True) else ac[0]
    ts = np.asarray(sched.timesteps)[::-1].astype(np.int64)  # slot j -> ts[j], ascending
    L = len(ts)
    lh, lw = h // 8, w // 8
    clip = vid(prompt, num_frames=L, num_inference_steps=steps, guidance_scale=g, height=h, width=w, seed=seed,
            context_length=ctx, context_stride=min(4, ctx), output_type="latent").frames
    noise = randn((1, 4, L, lh, lw), seed ^ 0xD1A6)
    queue = [np.sqrt(ac[ts[j]]) * clip[:, :, j] + np.sqrt(np.float32(1) - ac[ts[j]]) * noise[:, :, j]
             for j in range(L)]
    cond = vid.prompt_encoder([prompt], None, 1, g > 1, {}).arrays["encoder_hidden_states"]
    net = vid.session("unet_fifo")
    starts = list(range(0, L - ctx, ctx)) + [L - ctx] if L > ctx else [0]
    c = min(ctx, L)
    out = []
    for i in range(frames):
        q = np.stack(queue, axis=2)
        eps = np.zeros_like(q)
        cnt = np.zeros(L, np.float32)
        for s in starts:
            x = q[:, :, s:s + c]
            rows = 2 if g > 1 else 1
            x = np.concatenate([x] * rows)
            t = np.tile(ts[s:s + c].astype(np.float32), (rows, 1))
            e = net.run({"sample": np.ascontiguousarray(x), "timestep": t, "encoder_hidden_states": cond},
                        ["noise_pred"])["noise_pred"]
            if g > 1:
                e = e[:1] + np.float32(g) * (e[1:] - e[:1])
            eps[:, :, s:s + c] += e
            cnt[s:s + c] += 1
        new = []
        for j in range(L):
            a = ac[ts[j]]
            ap = final if j == 0 else ac[ts[j - 1]]
            e = eps[:, :, j] / cnt[j]
            x0 = (q[:, :, j] - np.sqrt(np.float32(1) - a) * e) / np.sqrt(a)
            new.append(np.sqrt(ap) * x0 + np.sqrt(np.float32(1) - ap) * e)
        out.append(new[0])
        queue = new[1:] + [randn((1, 4, lh, lw), seed ^ 0xF1F0, offset=i * 4 * lh * lw)]
    return np.stack(out, axis=2)


@pytest.mark.parametrize("steps,ctx,g", [(4, 4, 1.0), (6, 4, 5.0)])
def test_fifo_matches_numpy_reference(animatediff, steps, ctx, g):
    _, eng = animatediff
    vid = fastgen.Pipeline.load(eng)
    frames = 10
    got = vid("a cat", num_frames=frames, num_inference_steps=steps, guidance_scale=g, height=32, width=32, seed=4,
              context_length=ctx, long_video="fifo", output_type="latent").frames
    want = _fifo_reference(vid, "a cat", frames, steps, g, ctx, 4, 32, 32)
    assert got.shape == (1, 4, frames, 4, 4)
    assert max_diff(got, want) < 1e-4
    video = vid("a cat", num_frames=frames, num_inference_steps=steps, guidance_scale=g, height=32, width=32, seed=4,
                context_length=ctx, long_video="fifo").frames
    assert video.shape == (1, frames, 32, 32, 3) and np.isfinite(video).all()
    with pytest.raises(fastgen.InvalidArgumentError):
        vid("a cat", num_frames=4, long_video="diagonal", num_inference_steps=2, height=32, width=32)


def test_export_stable_video_diffusion(tmp_path):
    """SVD exports (CLIP image encoder, spatio-temporal UNet, VAE encoder, temporal VAE decoder), each
    parity-checked at another frame count; the runtime's ImageToVideoPipeline equals diffusers'."""
    from fastgen_export.api import export
    from fastgen_export.testing import build_tiny_svd

    src = build_tiny_svd(str(tmp_path / "svd-src"))
    eng = export(src, str(tmp_path / "svd-engine"), log=None)
    m = json.load(open(os.path.join(eng, "fastgen.json")))
    assert m["kind"] == "img2video" and m["family"] == "svd"
    comps = m["components"]
    assert set(comps) == {"image_encoder", "unet", "vae_encoder", "vae_decoder"}
    assert all(c["parity"]["passed"] for c in comps.values())
    assert comps["unet"]["inputs"]["sample"]["shape"] == ["batch", "frames", 8, "latent_height", "latent_width"]
    assert comps["vae_decoder"]["inputs"]["latent"]["shape"][0] == "frames"

    # runtime: equal to diffusers' StableVideoDiffusionPipeline given the same image, noise and latents
    import torch
    from diffusers import StableVideoDiffusionPipeline
    from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import _resize_with_antialiasing
    from PIL import Image

    from fastgen.pipelines.svd import resize_with_antialiasing

    for shape in [(1, 3, 37, 53), (2, 3, 300, 410)]:
        x = np.random.RandomState(0).uniform(-1, 1, shape).astype(np.float32)
        want = _resize_with_antialiasing(torch.from_numpy(x), (224, 224)).numpy()
        assert max_diff(resize_with_antialiasing(x, (224, 224)), want) < 1e-5
    ref = StableVideoDiffusionPipeline.from_pretrained(src)
    ref.set_progress_bar_config(disable=True)
    vid = fastgen.Pipeline.load(eng)
    assert type(vid).__name__ == "ImageToVideoPipeline"
    h, w, f = 32, 48, 5
    img = Image.fromarray(np.random.RandomState(1).uniform(0, 255, (40, 56, 3)).astype(np.uint8))
    lat = fastgen.randn((1, f, 4, h // 2, w // 2), seed=3)
    gen = torch.Generator().manual_seed(0)
    image_noise = torch.randn((1, 3, h, w), generator=torch.Generator().manual_seed(0)).numpy()
    kw = dict(height=h, width=w, num_frames=f, num_inference_steps=3, decode_chunk_size=2, min_guidance_scale=1.0,
              max_guidance_scale=2.5, fps=6, motion_bucket_id=100, noise_aug_strength=0.05)
    want = ref(img, latents=torch.from_numpy(lat), generator=gen, output_type="np", **kw).frames
    got = vid(img, latents=lat, image_noise=image_noise, **kw).frames
    assert got.shape == np.asarray(want).shape == (1, f, h, w, 3)
    assert max_diff(got, want) < 2e-3

    from fastgen import cli

    img.save(tmp_path / "in.png")
    out = tmp_path / "svd.gif"
    assert cli.main(["generate", eng, "", "--image", str(tmp_path / "in.png"), "--num-frames", "3", "--steps", "2",
                     "--height", "16", "--width", "16", "-o", str(out)]) == 0
    with Image.open(out) as im:
        assert im.n_frames == 3
    assert cli.main(["generate", eng, "", "--num-frames", "3", "-o", str(out)]) == 2  # no --image


def test_export_without_fifo_unet(animatediff, tmp_path):
    """`fastgen export --no-fifo-unet` (export(fifo_unet=False)) leaves unet_fifo out; long_video="fifo"
    on that engine is a clear UnsupportedError, context windows still work. The default (and
    --fifo-unet) exports it: see test_export_manifest."""
    import argparse

    from fastgen import cli
    from fastgen_export.cli import add_export_arguments

    p = argparse.ArgumentParser()
    add_export_arguments(p)
    assert p.parse_args(["s", "o"]).fifo_unet is True
    assert p.parse_args(["s", "o", "--fifo-unet"]).fifo_unet is True
    assert p.parse_args(["s", "o", "--no-fifo-unet"]).fifo_unet is False

    src, _ = animatediff
    eng = tmp_path / "no-fifo"
    assert cli.main(["export", src, str(eng), "--no-fifo-unet", "--no-parity", "-q"]) == 0
    m = json.load(open(eng / "fastgen.json"))
    assert set(m["components"]) == {"text_encoder", "unet", "vae_decoder"}
    assert m["config"]["per_frame_timestep"] is False
    assert not any("fifo" in f for f in os.listdir(eng))
    vid = fastgen.Pipeline.load(str(eng))
    kw = dict(num_frames=6, num_inference_steps=2, height=32, width=32, context_length=4, seed=1)
    with pytest.raises(fastgen.UnsupportedError, match="--fifo-unet") as e:
        vid("a cat", long_video="fifo", **kw)
    assert isinstance(e.value, fastgen.FastgenError)
    assert vid("a cat", **kw).frames.shape == (1, 6, 32, 32, 3)
    from fastgen_export.api import export

    with pytest.raises(fastgen.ExportError, match="fifo_unet"):
        export(src, str(tmp_path / "bad"), fifo_unet="no", log=None)
