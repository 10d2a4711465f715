"""The models the benchmarks run: built from config classes with random weights, saved, exported, cached.

Each model is a pair (diffusers / transformers source folder, fastgen engine dir). Both live under a
cache directory (``--cache``, default ``~/.cache/fastgen-bench``) keyed by a hash of the config, so a
rerun reuses them; an interrupted build leaves no valid-looking folder (a ``.done`` marker is written last).

Diffusion models:

``tiny``  fastgen_export.testing's tiny "sd" pipeline (CLIP 2x32, UNet (32, 64), VAE factor 4).
``sd15``  The SD 1.5 architecture at full width with random weights: UNet2DConditionModel with SD 1.5's
          config (block_out_channels (320, 640, 1280, 1280), layers_per_block 2, cross_attention_dim 768,
          attention_head_dim 8, 3 CrossAttnDownBlock2D + DownBlock2D, ...: 860 M parameters), a CLIP
          ViT-L/14 text encoder config (hidden 768, 12 layers, 12 heads, MLP 3072, quick_gelu, 77
          positions, vocab 49408: 123 M parameters), and SD's AutoencoderKL (block_out_channels
          (128, 256, 512, 512), 2 layers per block, factor 8). The tokenizer is fastgen's tiny BPE
          (whole-word vocabulary; its ids are a subset of the 49408 embeddings) since no download is
          possible here; token count per prompt is what matters for cost and it always pads to 77.
``demo``  the shipped demo engine (``Pipeline.load("demo")``) with its diffusers folder (``--demo-src``).

Video models (``video_model``):

``animatediff-tiny``  fastgen_export.testing.build_tiny_animatediff (as tests/test_video.py builds it): the
                      tiny "sd" UNet (32, 64) + a MotionAdapter with a 16-frame motion module
                      (motion_max_seq_length 16), CLIP 2x32, VAE factor 8, DDIM; exported without
                      ``unet_fifo`` (the benchmark runs context windows, not FIFO).

Captioners (fastgen_export.testing.build_tiny_vit_gpt2 / build_tiny_blip, as tests/test_caption.py builds
them, word-level tokenizers):

``vit-gpt2-tiny`` / ``blip-tiny``  hidden 32, 2 layers, 32x32 images.
``vit-gpt2-base``  ViT-B/16 encoder at 224x224 (768, 12 layers) + GPT-2 base decoder (768, 12 layers,
                   12 heads, vocab 50257: the tokenizer is padded to GPT-2's vocabulary size so the LM
                   head has its real cost) with cross-attention: nlpconnect/vit-gpt2-image-captioning's shape.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time

DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "fastgen-bench")

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=768, attention_head_dim=8,
)
CLIP_VIT_L_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                       num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu")
SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
              block_out_channels=[128, 256, 512, 512], sample_size=512,
              down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)

DIFFUSION_MODELS = {
    "tiny": {"kind": "sd", "vae_scale_factor": 4, "overrides": {}, "latent": 16,
             "description": "fastgen_export.testing tiny 'sd' (CLIP 2x32, UNet (32, 64), VAE factor 4)"},
    "sd15": {"kind": "sd", "vae_scale_factor": 8,
             "overrides": {"unet": SD15_UNET, "text_encoder": CLIP_VIT_L_TEXT, "vae": SD_VAE}, "latent": 32,
             "description": "SD 1.5 architecture, random weights: SD 1.5 UNet config (860M params), "
                            "CLIP ViT-L/14 text config (12 layers, 768), SD VAE (factor 8)"},
    # the SD 1.5 UNet's layout (4 blocks, 2 layers each, attention in the first 3, 8 heads) at 0.3 of its
    # width, with DeepCache's graphs: the step-caching benchmark (benchmarks/step_cache.py)
    "sd15-small": {"kind": "sd", "vae_scale_factor": 8, "latent": 32, "export": {"cache": ["deepcache"]},
                   "overrides": {"unet": {**SD15_UNET, "block_out_channels": (96, 192, 384, 384),
                                          "cross_attention_dim": 192},
                                 "text_encoder": {**CLIP_VIT_L_TEXT, "hidden_size": 192, "intermediate_size": 768,
                                                  "num_hidden_layers": 4, "num_attention_heads": 4},
                                 "vae": {**SD_VAE, "block_out_channels": [32, 64, 128, 128], "norm_num_groups": 32}},
                   "description": "SD 1.5 UNet layout at 0.3 width (96, 192, 384, 384), 4-layer CLIP 192, "
                                  "SD VAE layout at 1/4 width; exported with --cache deepcache"},
}


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _key(spec) -> str:
    return hashlib.sha1(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _done(path: str) -> bool:
    return os.path.isfile(os.path.join(path, ".bench-done"))


def _mark(path: str) -> None:
    with open(os.path.join(path, ".bench-done"), "w") as f:
        f.write(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def _locate(name: str, spec: dict, cache: str) -> tuple[str, str, str]:
    """(root, source folder, engine dir) of a cached model, keyed by its spec."""
    root = os.path.join(cache, f"{name}-{_key(spec)}")
    return root, os.path.join(root, "src"), os.path.join(root, "engine")


def _start_build(root: str) -> bool:
    """False when ``root`` holds a finished build; otherwise empty it for a new one and return True."""
    if _done(root):
        return False
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    return True


def diffusion_model(name: str, cache: str = DEFAULT_CACHE, *, demo_src: str | None = None) -> dict:
    """{'name', 'src', 'engine', 'latent', 'vae_scale_factor', 'description'} or {'skipped': reason}."""
    if name == "demo":
        return demo_model(demo_src)
    spec = DIFFUSION_MODELS[name]
    root, src, eng = _locate(name, spec, cache)
    info = {"name": name, "src": src, "engine": eng, "latent": spec["latent"],
            "vae_scale_factor": spec["vae_scale_factor"], "description": spec["description"]}
    if not _start_build(root):
        return info
    from fastgen_export.api import export
    from fastgen_export.testing import build_tiny_pipeline

    t0 = time.perf_counter()
    log(f"building {name} ({spec['description']}) in {root}")
    build_tiny_pipeline(spec["kind"], src, vae_scale_factor=spec["vae_scale_factor"], **spec["overrides"])
    t1 = time.perf_counter()
    log(f"exporting {name} (built in {t1 - t0:.0f}s)")
    export(src, eng, log=None if name == "tiny" else log, **spec.get("export", {}))
    info["build_s"], info["export_s"] = t1 - t0, time.perf_counter() - t1
    with open(os.path.join(root, "build.json"), "w") as f:
        json.dump({k: info[k] for k in ("build_s", "export_s")}, f)
    _mark(root)
    return info


def demo_model(demo_src: str | None) -> dict:
    """The shipped demo engine and its diffusers folder, or a 'skipped' record saying what is missing."""
    from fastgen.pipelines.base import _demo_dir

    eng = _demo_dir()
    if not os.path.isfile(os.path.join(eng, "fastgen.json")):
        return {"name": "demo", "skipped": f"not run: the demo engine is not installed ({eng} missing)"}
    if demo_src is None and os.path.isfile("/work/demo_train/model_index.json"):
        demo_src = "/work/demo_train"
    if not demo_src or not os.path.isfile(os.path.join(demo_src, "model_index.json")):
        return {"name": "demo", "skipped": "not run: no diffusers source folder for the demo model (--demo-src DIR)"}
    with open(os.path.join(eng, "fastgen.json")) as f:
        man = json.load(f)
    cfg = man.get("config", {})
    f = int(cfg.get("vae_scale_factor", 8))
    h = int(cfg.get("default_height", 64 * f))
    return {"name": "demo", "src": os.path.abspath(demo_src), "engine": eng, "latent": h // f,
            "vae_scale_factor": f, "description": f"shipped demo engine ({eng}), source {demo_src}"}


# ------------------------------------------------------------------------------------ video

# the description is part of the cache key: it keeps the builder's old home (fastgen_export.video, now
# fastgen_export.testing) so that cached models stay valid
VIDEO_MODELS = {
    "animatediff-tiny": {"motion_max_seq_length": 16, "vae_scale_factor": 8, "overrides": {},
                         "description": "fastgen_export.video.build_tiny_animatediff: tiny 'sd' UNet (32, 64) + "
                                        "MotionAdapter (16-frame motion module), CLIP 2x32, VAE factor 8, DDIM"},
}


def video_model(name: str, cache: str = DEFAULT_CACHE) -> dict:
    """{'name', 'src', 'engine', 'motion_max_seq_length', 'vae_scale_factor', 'description'}: an
    AnimateDiffPipeline folder and its text2video engine, built and exported once into ``cache``."""
    spec = VIDEO_MODELS[name]
    root, src, eng = _locate(name, spec, cache)
    info = {"name": name, "src": src, "engine": eng, "motion_max_seq_length": spec["motion_max_seq_length"],
            "vae_scale_factor": spec["vae_scale_factor"], "description": spec["description"]}
    if not _start_build(root):
        return info
    from fastgen_export.api import export
    from fastgen_export.testing import build_tiny_animatediff

    log(f"building {name} ({spec['description']}) in {root}")
    build_tiny_animatediff(src, motion_max_seq_length=spec["motion_max_seq_length"],
                           vae_scale_factor=spec["vae_scale_factor"], **spec["overrides"])
    export(src, eng, fifo_unet=False, log=None)
    _mark(root)
    return info


# ------------------------------------------------------------------------------------ captioners

CAPTION_ENGINE_FORM = "cross-kv"  # fastgen_export.caption: cross-attention K/V computed once per image
CAPTIONERS = {
    "vit-gpt2-tiny": {"family": "vit-gpt2", "enc": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                         intermediate_size=37, image_size=32, patch_size=8),
                      "dec": dict(n_positions=64, n_embd=24, n_layer=2, n_head=2), "vocab": None,
                      "description": "ViT 2x32 @32px + GPT-2 2x24, word-level vocab of 23"},
    "blip-tiny": {"family": "blip", "text": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                  intermediate_size=37, max_position_embeddings=64),
                  "vision": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                                 image_size=32, patch_size=8), "vocab": None,
                  "description": "BLIP vision 2x32 @32px + text decoder 2x32"},
    "vit-gpt2-base": {"family": "vit-gpt2", "enc": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                                         intermediate_size=3072, image_size=224, patch_size=16),
                      "dec": dict(n_positions=1024, n_embd=768, n_layer=12, n_head=12), "vocab": 50257,
                      "description": "ViT-B/16 @224px + GPT-2 base (12x768, vocab 50257), random weights "
                                     "(nlpconnect/vit-gpt2-image-captioning's shape)"},
}


def _build_vit_gpt2(folder, spec):
    from fastgen_export.testing import build_tiny_vit_gpt2

    build_tiny_vit_gpt2(folder, encoder=spec["enc"], decoder=spec["dec"], vocab_size=spec["vocab"])


def _build_blip(folder, spec):
    from fastgen_export.testing import build_tiny_blip

    build_tiny_blip(folder, text=spec["text"], vision=spec["vision"], vocab_size=spec["vocab"])


def captioner(name: str, cache: str = DEFAULT_CACHE) -> dict:
    spec = CAPTIONERS[name]
    # the engine form is part of the key: engines cached before the cross-attention K/V cache are rebuilt
    root = os.path.join(cache, f"cap-{name}-{_key({**spec, 'engine_form': CAPTION_ENGINE_FORM})}")
    src, eng = os.path.join(root, "src"), os.path.join(root, "engine")
    info = {"name": name, "family": spec["family"], "src": src, "engine": eng, "description": spec["description"]}
    if _done(root):
        return info
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(src)
    from fastgen_export.api import export

    log(f"building captioner {name} in {root}")
    (_build_vit_gpt2 if spec["family"] == "vit-gpt2" else _build_blip)(src, spec)
    export(src, eng, log=None if "tiny" in name else log)
    _mark(root)
    return info
