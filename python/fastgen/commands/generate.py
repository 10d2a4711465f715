"""`fastgen generate [ENGINE_DIR] PROMPT -o out.png`: images from a prompt, with a progress bar."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

from ..errors import InvalidArgumentError
from .common import add_backend_arguments, load_options


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("args", nargs="+", metavar="[ENGINE_DIR] PROMPT",
                   help="engine directory (default: the built-in demo model) and the prompt")
    p.add_argument("-o", "--output", default="out.png", help="output PNG (with -n > 1: out-0.png, out-1.png, ...)")
    p.add_argument("--negative", "--negative-prompt", dest="negative", default=None)
    p.add_argument("--steps", type=int, default=None, help="denoising steps (engine default)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (engine default)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--scheduler", default=None, help="scheduler class or alias: ddim, pndm, euler, euler_a, dpm++, "
                                                     "dpm++-karras, unipc, lcm, ddpm, flow-euler")
    p.add_argument("--image", default=None, help="init image: image-to-image")
    p.add_argument("--mask", default=None, help="mask image (white = repaint): inpainting; needs --image")
    p.add_argument("--strength", type=float, default=None)
    p.add_argument("-n", "--num-images", type=int, default=1)
    p.add_argument("--cache", default=None, metavar="KIND[:key=value,...]",
                   help="step caching: deepcache[:interval=3,branch=0,uniform=true] (engines exported with "
                        "--cache deepcache), first_block[:threshold=0.05] (SD3, --cache first_block), taylorseer[:interval=5,warmup=3] (SD3); "
                        "default off")
    add_backend_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    # --- video engines (issue 9) ---
    p.add_argument("--num-frames", type=int, default=None, help="video engines: frames to generate (default 16)")
    p.add_argument("--context-length", type=int, default=None,
                   help="video engines: frames per context window (default: the motion module's length)")
    p.add_argument("--context-stride", type=int, default=4, help="video engines: frames between context windows")
    p.add_argument("--decode-chunk-size", type=int, default=8, help="video engines: frames decoded at once")
    p.add_argument("--fps", type=float, default=8.0, help="video engines: frames per second of the MP4 / GIF")
    p.add_argument("--long-video", choices=["context", "fifo"], default=None,
                   help="video engines: overlapping context windows (default) or FIFO-Diffusion diagonal denoising")
    # --- end video ---


def _progress_enabled(args: argparse.Namespace) -> bool:
    return not args.no_progress and (sys.stderr.isatty() or os.environ.get("FASTGEN_PROGRESS") == "1")


def _bar(total: int, enabled: bool, desc: str = "denoising", unit: str = "step"):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False)


def _step_callback(bar):
    if bar is None:
        return None

    def cb(i, t, latents):
        bar.update(1)
        return True

    return cb


def run(args: argparse.Namespace) -> int:
    from ..image import generation_info, png_info
    from ..pipelines import Pipeline
    from ..video_io import ensure_parent

    if len(args.args) == 1:
        engine, prompt = "demo", args.args[0]
    elif len(args.args) == 2:
        engine, prompt = args.args
    else:
        raise InvalidArgumentError("expected [ENGINE_DIR] PROMPT (quote the prompt)")
    if args.mask and not args.image:
        raise InvalidArgumentError("--mask needs --image")
    t0 = time.perf_counter()
    pipe = Pipeline.load(engine, **load_options(args))
    if pipe.kind == "captioning":
        raise InvalidArgumentError(f"{engine} is a captioning engine: use `fastgen caption`")
    if pipe.kind in ("text2video", "img2video"):
        return _run_video(args, pipe, prompt, t0)
    # the same request the API builds: every argument checked before any work
    req = pipe.validate(prompt, negative_prompt=args.negative, num_inference_steps=args.steps,
                        guidance_scale=args.guidance, height=args.height, width=args.width,
                        num_images_per_prompt=args.num_images, seed=args.seed, scheduler=args.scheduler,
                        image=args.image, mask_image=args.mask, strength=args.strength, cache=args.cache)
    root, ext = os.path.splitext(args.output)
    n = req.batch
    paths = [args.output] if n == 1 else [f"{root}-{i}{ext or '.png'}" for i in range(n)]
    for path in paths:
        ensure_parent(path)
    steps_run = pipe.denoising_steps(req)
    bar = _bar(steps_run, _progress_enabled(args))
    try:
        out = pipe.run(dataclasses.replace(req, callback=_step_callback(bar)))
    finally:
        if bar is not None:
            bar.close()
    meta = png_info(generation_info(pipe, req, out.seed))
    for im, path in zip(out.images, paths):
        try:
            im.save(path, pnginfo=meta)
        except OSError as e:
            raise InvalidArgumentError(f"cannot write {path!r}: {e.strerror or e}") from None
    total = time.perf_counter() - t0
    for path in paths:
        print(path)
    if out.cache_stats is not None:
        print(f"cache {out.cache_stats['setting']}: {out.cache_stats['full_calls']} of {out.cache_stats['steps']} "
              "steps in full", file=sys.stderr)
    print(f"seed {out.seed}, {steps_run} steps, {total:.2f}s total "
          f"({out.timings.get('total', 0):.2f}s generating)", file=sys.stderr)
    return 0


def _run_video(args: argparse.Namespace, pipe, prompt: str, t0: float) -> int:
    """Stream the frames of one video to an MP4 / GIF (suffix of -o; the default out.png becomes out.mp4)."""
    from ..video_io import check_writer, export_video

    output = check_writer("out.mp4" if args.output == "out.png" else args.output)  # before any denoising
    if pipe.kind == "img2video":  # Stable Video Diffusion: the PROMPT argument is unused, --image is the input
        if not args.image:
            raise InvalidArgumentError("image-to-video engines need --image")
        req = pipe.validate(args.image, num_frames=args.num_frames, num_inference_steps=args.steps,
                            height=args.height, width=args.width, seed=args.seed,
                            decode_chunk_size=args.decode_chunk_size)
        bar = _bar(req.num_inference_steps, _progress_enabled(args))
        try:
            out = pipe.run(dataclasses.replace(req, callback=_step_callback(bar)))
        finally:
            if bar is not None:
                bar.close()
        export_video(out.frames[0], output, fps=args.fps)
        print(output)
        print(f"seed {req.seed}, {out.frames.shape[1]} frames, {time.perf_counter() - t0:.2f}s total",
              file=sys.stderr)
        return 0
    if args.image or args.mask or args.strength is not None:
        raise InvalidArgumentError("--image / --mask / --strength do not apply to text-to-video engines")
    if args.num_images != 1:
        raise InvalidArgumentError("video engines write one video per call (-n 1)")
    kw = dict(num_frames=16 if args.num_frames is None else args.num_frames, num_inference_steps=args.steps,
              guidance_scale=args.guidance, height=args.height, width=args.width, seed=args.seed,
              context_length=args.context_length, context_stride=args.context_stride,
              decode_chunk_size=args.decode_chunk_size, negative_prompt=args.negative, scheduler=args.scheduler,
              long_video=args.long_video, cache=args.cache)
    req = pipe.validate(prompt, **kw)  # checked before the progress bar and the writer start
    frames, steps = req.num_frames, req.num_inference_steps
    windows = pipe.num_windows(frames, req.context_length, req.context_stride)
    if req.long_video == "fifo":  # one clip of `steps` frames, then one queue pass per frame
        part = -(-steps // min(steps, req.context_length))
        windows = 1
        steps = steps * pipe.num_windows(steps, req.context_length, req.context_stride) + frames * part
    bar = _bar(steps * windows, _progress_enabled(args), f"denoising ({windows} window{'s' * (windows > 1)})",
               "window")
    kw["seed"] = req.seed
    it = pipe.iter_frames(prompt, **kw, window_callback=(lambda start, t: bar.update(1)) if bar is not None else None)
    try:
        export_video(it, output, fps=args.fps)
    finally:
        if bar is not None:
            bar.close()
    print(output)
    print(f"seed {req.seed}, {frames} frames, {steps} steps x {windows} windows, "
          f"{time.perf_counter() - t0:.2f}s total", file=sys.stderr)
    return 0
