"""Tiny random-weight diffusers pipelines for tests, benchmarks and demos (no model hub needed).

``build_tiny_pipeline(kind, out_dir)`` builds a pipeline with the *real* diffusers / transformers
classes and layout, only with tiny configs and random weights, and saves it with
``save_pretrained``. The folder therefore loads with ``DiffusionPipeline.from_pretrained`` (for
reference outputs) and exports with ``fastgen_export.export`` exactly like a hub checkpoint.

Kinds:

``sd``      StableDiffusionPipeline, SD 1.x style: epsilon prediction, PNDM scheduler config of SD 1.5
            (scaled_linear, steps_offset=1, skip_prk_steps).
``sd2v``    StableDiffusionPipeline, SD 2.x style: v_prediction, DDIM scheduler (trailing-free, like SD 2.1).
``inpaint`` StableDiffusionInpaintPipeline: 9-channel UNet (latents + mask + masked-image latents).
``sdxl``    StableDiffusionXLPipeline: CLIPTextModel + CLIPTextModelWithProjection, text_time embedding.
``sd3``     StableDiffusion3Pipeline without T5 (``text_encoder_3`` / ``tokenizer_3`` saved as None).
``sd3_t5``  StableDiffusion3Pipeline with a tiny T5 encoder.

The VAE has ``log2(vae_scale_factor) + 1`` blocks, so the default factor is 4 (not SD's 8): code that
assumes 8 fails on these models. ``overrides`` patch component configs, e.g.
``unet={"sample_size": 16}``, ``vae={"scaling_factor": 0.13}``, ``text_encoder={"num_hidden_layers": 3}``,
``scheduler={"prediction_type": "v_prediction"}``, or ``pipeline={"force_zeros_for_empty_prompt": False}``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastgen.errors import InvalidArgumentError

from .tiny_tokenizer import make_clip_tokenizer

__all__ = ["KINDS", "VOCABULARY", "build_tiny_pipeline"]

KINDS = ("sd", "sd2v", "inpaint", "sdxl", "sd3", "sd3_t5")

#: Words the tiny tokenizers know as whole tokens (others fall back to byte / character pieces).
VOCABULARY = (
    "a an the of and with in on at photo picture painting drawing image portrait of cat dog bird horse "
    "car house tree flower mountain river sky sea city street red blue green yellow black white orange "
    "purple circle square triangle big small cute old new bright dark blurry sharp high quality low "
    "detailed style art oil watercolor sketch sunset night day forest beach snow astronaut riding "
    "man woman child face hat on top ugly bad"
).split()

_CLIP_HIDDEN = 32
_CLIP_PROJECTION = 32


def _clip_text_config(tokenizer, overrides: dict[str, Any], *, projection: bool):
    from transformers import CLIPTextConfig

    cfg = dict(
        vocab_size=len(tokenizer),
        hidden_size=_CLIP_HIDDEN,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
    )
    if projection:
        cfg["projection_dim"] = _CLIP_PROJECTION
    cfg.update(overrides)
    return CLIPTextConfig(**cfg)


def _clip_pair(root: str, suffix: str, overrides: dict, *, projection: bool, pad_token: str | None = None):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tok = make_clip_tokenizer(os.path.join(root, "_tok" + suffix), VOCABULARY, pad_token=pad_token)
    cfg = _clip_text_config(tok, overrides.get("text_encoder" + suffix, {}), projection=projection)
    model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval()
    return tok, model


def _t5_pair(overrides: dict):
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    # SentencePiece-style unigram vocabulary: specials, "▁", whole words, then single characters.
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + w, -3.0 - 0.01 * i) for i, w in enumerate(VOCABULARY)]
    pieces += [(c, -8.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-"]
    tok = T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)
    cfg = dict(vocab_size=len(tok), d_model=64, d_kv=16, d_ff=37, num_layers=2, num_heads=4,
               relative_attention_num_buckets=8, relative_attention_max_distance=32,
               feed_forward_proj="gated-gelu", dropout_rate=0.0, is_encoder_decoder=False,
               pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, decoder_start_token_id=0)
    cfg.update(overrides.get("text_encoder_3", {}))
    return tok, T5EncoderModel(T5Config(**cfg)).eval()


def _vae(vae_scale_factor: int, latent_channels: int, overrides: dict, **extra):
    from diffusers import AutoencoderKL

    n = int(round(math.log2(vae_scale_factor)))
    if n < 1 or 2 ** n != vae_scale_factor:
        raise InvalidArgumentError(f"vae_scale_factor must be a power of two >= 2, got {vae_scale_factor}")
    cfg = dict(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * (n + 1),
        up_block_types=["UpDecoderBlock2D"] * (n + 1),
        block_out_channels=[16] * n + [32],
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=8,
        sample_size=64,
    )
    cfg.update(extra)
    cfg.update(overrides.get("vae", {}))
    return AutoencoderKL(**cfg).eval()


def _unet(in_channels: int, cross_attention_dim: int, overrides: dict, **extra):
    from diffusers import UNet2DConditionModel

    cfg = dict(
        sample_size=16,
        in_channels=in_channels,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=(2, 4),
        norm_num_groups=16,
    )
    cfg.update(extra)
    cfg.update(overrides.get("unet", {}))
    return UNet2DConditionModel(**cfg).eval()


def _scheduler(name: str, overrides: dict, **cfg):
    import diffusers

    cfg.update(overrides.get("scheduler", {}))
    return getattr(diffusers, name).from_config(cfg)


_SD15_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                       steps_offset=1, set_alpha_to_one=False, skip_prk_steps=True, clip_sample=False,
                       prediction_type="epsilon")


def _build_sd(root: str, kind: str, vae_scale_factor: int, overrides: dict):
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline

    tok, te = _clip_pair(root, "", overrides, projection=False)
    if kind == "sd2v":
        sched = _scheduler("DDIMScheduler", overrides, **{**_SD15_SCHEDULER, "prediction_type": "v_prediction",
                                                          "skip_prk_steps": None})
    else:
        sched = _scheduler("PNDMScheduler", overrides, **_SD15_SCHEDULER)
    unet = _unet(9 if kind == "inpaint" else 4, _CLIP_HIDDEN, overrides,
                 **({"attention_head_dim": (2, 4), "use_linear_projection": True} if kind == "sd2v" else {}))
    vae = _vae(vae_scale_factor, 4, overrides, scaling_factor=0.18215)
    cls = StableDiffusionInpaintPipeline if kind == "inpaint" else StableDiffusionPipeline
    return cls(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched, safety_checker=None,
               feature_extractor=None, requires_safety_checker=False, **overrides.get("pipeline", {}))


def _build_sdxl(root: str, vae_scale_factor: int, overrides: dict):
    from diffusers import StableDiffusionXLPipeline

    tok, te = _clip_pair(root, "", overrides, projection=False)
    tok2, te2 = _clip_pair(root, "_2", overrides, projection=True, pad_token="!")
    time_dim = 8
    unet = _unet(4, _CLIP_HIDDEN * 2, overrides, addition_embed_type="text_time", addition_time_embed_dim=time_dim,
                 projection_class_embeddings_input_dim=6 * time_dim + _CLIP_PROJECTION,
                 transformer_layers_per_block=(1, 2), use_linear_projection=True)
    sched = _scheduler("EulerDiscreteScheduler", overrides, beta_start=0.00085, beta_end=0.012,
                       beta_schedule="scaled_linear", num_train_timesteps=1000, steps_offset=1,
                       timestep_spacing="leading", interpolation_type="linear", prediction_type="epsilon",
                       use_karras_sigmas=False)
    vae = _vae(vae_scale_factor, 4, overrides, scaling_factor=0.13025, force_upcast=True)
    kw = {"force_zeros_for_empty_prompt": True, "add_watermarker": False, **overrides.get("pipeline", {})}
    return StableDiffusionXLPipeline(vae=vae, text_encoder=te, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok2,
                                     unet=unet, scheduler=sched, image_encoder=None, feature_extractor=None, **kw)


def _build_sd3(root: str, with_t5: bool, vae_scale_factor: int, overrides: dict):
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    tok, te = _clip_pair(root, "", overrides, projection=True)
    tok2, te2 = _clip_pair(root, "_2", overrides, projection=True, pad_token="!")
    tok3 = te3 = None
    joint_dim = 64  # = T5 d_model; >= the concatenated CLIP width (2 x 32) that diffusers pads to it
    if with_t5:
        tok3, te3 = _t5_pair(overrides)
        joint_dim = te3.config.d_model
    latent_channels = 16
    cfg = dict(sample_size=16, patch_size=2, in_channels=latent_channels, out_channels=latent_channels,
               num_layers=2, attention_head_dim=8, num_attention_heads=4, joint_attention_dim=joint_dim,
               caption_projection_dim=32, pooled_projection_dim=2 * _CLIP_PROJECTION, pos_embed_max_size=64)
    cfg.update(overrides.get("transformer", {}))
    transformer = SD3Transformer2DModel(**cfg).eval()
    sched = _scheduler("FlowMatchEulerDiscreteScheduler", overrides, num_train_timesteps=1000, shift=3.0)
    vae = _vae(vae_scale_factor, latent_channels, overrides, scaling_factor=1.5305, shift_factor=0.0609,
               use_quant_conv=False, use_post_quant_conv=False)
    return StableDiffusion3Pipeline(transformer=transformer, scheduler=sched, vae=vae, text_encoder=te,
                                    tokenizer=tok, text_encoder_2=te2, tokenizer_2=tok2, text_encoder_3=te3,
                                    tokenizer_3=tok3, **overrides.get("pipeline", {}))


@contextmanager
def seeded_build(out_dir: str | os.PathLike, seed: int) -> Iterator[tuple[str, str]]:
    """Create ``out_dir`` and yield (out_dir, a scratch folder inside it) with torch seeded by ``seed``;
    afterwards torch's RNG state is restored and the scratch folder removed."""
    import shutil

    import torch

    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    scratch = os.path.join(out_dir, ".tiny-build")
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield out_dir, scratch
    finally:
        torch.random.set_rng_state(state)
        shutil.rmtree(scratch, ignore_errors=True)


def build_tiny_pipeline(kind: str, out_dir: str | os.PathLike, *, seed: int = 0, vae_scale_factor: int = 4,
                        **overrides: dict[str, Any]) -> str:
    """Build a tiny random-weight pipeline of ``kind`` (see :data:`KINDS`), save it to ``out_dir``, return it.

    Weights are drawn from ``torch.manual_seed(seed)``, so the same arguments give the same folder.
    """
    if kind not in KINDS:
        raise InvalidArgumentError(f"unknown tiny pipeline kind {kind!r}; expected one of {', '.join(KINDS)}")
    with seeded_build(out_dir, seed) as (out_dir, scratch):
        if kind in ("sd", "sd2v", "inpaint"):
            pipe = _build_sd(scratch, kind, vae_scale_factor, overrides)
        elif kind == "sdxl":
            pipe = _build_sdxl(scratch, vae_scale_factor, overrides)
        else:
            pipe = _build_sd3(scratch, kind == "sd3_t5", vae_scale_factor, overrides)
        pipe.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    """``python -m fastgen_export.testing KIND OUT_DIR``: save a tiny random-weight pipeline."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m fastgen_export.testing", description=main.__doc__)
    ap.add_argument("kind", choices=list(KINDS))
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print(build_tiny_pipeline(args.kind, args.out_dir, seed=args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
