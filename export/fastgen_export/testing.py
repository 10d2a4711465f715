"""Tiny random-weight models for tests, benchmarks and demos (no model hub needed): the one home of
every tiny-model builder. The exporters never import this module.

``build_tiny_pipeline(kind, out_dir)`` builds a pipeline with the *real* diffusers / transformers
classes and layout, only with tiny configs and random weights, and saves it with
``save_pretrained``. The folder therefore loads with ``DiffusionPipeline.from_pretrained`` (for
reference outputs) and exports with ``fastgen_export.export`` exactly like a hub checkpoint.
``build_tiny_animatediff`` / ``build_tiny_svd`` do the same for the video pipelines, and
``build_tiny_vit_gpt2`` / ``build_tiny_blip`` save tiny transformers captioners (word-level tokenizers).

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

__all__ = ["KINDS", "VOCABULARY", "CAPTION_WORDS", "build_tiny_pipeline", "build_tiny_animatediff", "build_tiny_svd",
           "build_tiny_vit_gpt2", "build_tiny_blip", "seeded_build", "build_tiny_lora", "load_tiny_pipeline", "build_tiny_controlnet", "LORA_TARGETS"]

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


# ------------------------------------------------------------------------------------------ video


def build_tiny_animatediff(out_dir: str | os.PathLike, *, seed: int = 0, motion_max_seq_length: int = 8,
                           vae_scale_factor: int = 8, **overrides: dict[str, Any]) -> str:
    """Save a tiny random-weight ``AnimateDiffPipeline`` (UNet2D + MotionAdapter) to ``out_dir``.

    ``overrides``: ``unet=``, ``motion_adapter=``, ``vae=``, ``text_encoder=``, ``scheduler=`` config patches.
    """
    import torch
    from diffusers import AnimateDiffPipeline, MotionAdapter

    if not isinstance(motion_max_seq_length, int) or motion_max_seq_length < 1:
        raise InvalidArgumentError(f"motion_max_seq_length must be an int >= 1, got {motion_max_seq_length!r}")
    with seeded_build(out_dir, seed) as (out_dir, scratch):
        tok, te = _clip_pair(scratch, "", overrides, projection=False)
        unet = _unet(4, _CLIP_HIDDEN, overrides)
        acfg = dict(block_out_channels=tuple(unet.config.block_out_channels), motion_layers_per_block=1,
                    motion_num_attention_heads=2, motion_norm_num_groups=16,
                    motion_max_seq_length=motion_max_seq_length, use_motion_mid_block=True)
        acfg.update(overrides.get("motion_adapter", {}))
        adapter = MotionAdapter(**acfg).eval()
        # the motion modules' output projections are zero-initialised: give them weights so the
        # temporal layers matter in parity tests
        with torch.no_grad():
            for name, p in adapter.named_parameters():
                if "proj_out" in name and float(p.abs().max()) == 0.0:
                    p.normal_(0.0, 0.05)
        sched = _scheduler("DDIMScheduler", overrides, beta_start=0.00085, beta_end=0.012, beta_schedule="linear",
                           num_train_timesteps=1000, steps_offset=1, clip_sample=False, set_alpha_to_one=False,
                           timestep_spacing="linspace", prediction_type="epsilon")
        vae = _vae(vae_scale_factor, 4, overrides, scaling_factor=0.18215)
        pipe = AnimateDiffPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, motion_adapter=adapter,
                                   scheduler=sched)
        pipe.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def build_tiny_svd(out_dir: str | os.PathLike, *, seed: int = 0, num_frames: int = 6) -> str:
    """Save a tiny random-weight ``StableVideoDiffusionPipeline`` to ``out_dir``."""
    from diffusers import (AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, StableVideoDiffusionPipeline,
                           UNetSpatioTemporalConditionModel)
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    with seeded_build(out_dir, seed) as (out_dir, _scratch):
        unet = UNetSpatioTemporalConditionModel(
            sample_size=8, in_channels=8, out_channels=4, block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
            up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
            addition_time_embed_dim=8, projection_class_embeddings_input_dim=24, layers_per_block=1,
            cross_attention_dim=32, num_attention_heads=(2, 4), num_frames=num_frames).eval()
        vae = AutoencoderKLTemporalDecoder(in_channels=3, out_channels=3, block_out_channels=[32, 64],
                                           down_block_types=["DownEncoderBlock2D"] * 2, layers_per_block=1,
                                           latent_channels=4).eval()
        enc = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=32, projection_dim=32, num_hidden_layers=2, num_attention_heads=4, image_size=224,
            intermediate_size=37, patch_size=32)).eval()
        fe = CLIPImageProcessor(crop_size=224, size=224)
        sched = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                       prediction_type="v_prediction", interpolation_type="linear",
                                       use_karras_sigmas=True, timestep_type="continuous", sigma_max=700.0,
                                       sigma_min=0.002, steps_offset=1, timestep_spacing="leading")
        pipe = StableVideoDiffusionPipeline(vae=vae, image_encoder=enc, unet=unet, scheduler=sched,
                                            feature_extractor=fe)
        pipe.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


# ------------------------------------------------------------------------------------------ LoRA

#: PEFT target modules of the tiny LoRAs: attention, feed-forward and the convolutions kohya LoRAs touch
LORA_TARGETS = {
    "unet": ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out", "conv1",
             "conv2", "time_emb_proj"],
    "transformer": ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
                    "ff.net.0.proj", "ff.net.2"],
    "text_encoder": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
}


def load_tiny_pipeline(pipeline_dir: str | os.PathLike, **kwargs):
    """``DiffusionPipeline.from_pretrained`` of a tiny pipeline folder, its absent parts (saved as null, e.g.
    SD3 without T5) passed as None."""
    import json

    import diffusers

    with open(os.path.join(os.fspath(pipeline_dir), "model_index.json"), encoding="utf-8") as f:
        index = json.load(f)
    absent = {k: None for k, v in index.items() if isinstance(v, list) and v[0] is None}
    return diffusers.DiffusionPipeline.from_pretrained(os.fspath(pipeline_dir), **{**absent, **kwargs})


def build_tiny_lora(pipeline_dir: str | os.PathLike, out_file: str | os.PathLike, *, seed: int = 0, rank: int = 4,
                    alpha: float | None = None, text_encoders: bool = True, kohya: bool = False,
                    denoiser_targets: list[str] | None = None) -> str:
    """Save a random LoRA for the tiny pipeline at ``pipeline_dir`` to ``out_file`` (a .safetensors), made with
    peft on the pipeline's own models and saved with the pipeline class's ``save_lora_weights`` (with the
    LoraConfig as adapter metadata), so diffusers' ``load_lora_weights`` reads it. ``alpha`` (default: rank)
    makes the scale alpha / rank. Both matrices are random (a trained LoRA's up matrix is not zero).
    ``kohya``: the same tensors under kohya names (``lora_unet_..`` / ``lora_te{,1,2}_text_model_..``,
    ``.lora_down`` / ``.lora_up`` / ``.alpha``) instead."""
    import torch
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    out_file = os.fspath(out_file)
    pipe = load_tiny_pipeline(pipeline_dir)
    denoiser = "transformer" if hasattr(pipe, "transformer") and pipe.transformer is not None else "unet"
    parts = [denoiser] + ([n for n in ("text_encoder", "text_encoder_2") if getattr(pipe, n, None) is not None]
                          if text_encoders else [])
    alpha = float(rank if alpha is None else alpha)
    layers, metadata = {}, {}
    gen = torch.Generator().manual_seed(seed)
    for name in parts:
        model = getattr(pipe, name)
        targets = (denoiser_targets or LORA_TARGETS[denoiser]) if name == denoiser else LORA_TARGETS["text_encoder"]
        cfg = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=False)
        model.add_adapter(cfg)
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if "lora_A" in pname:
                    p.copy_(torch.randn(p.shape, generator=gen) / (p[0].numel() ** 0.5))
                elif "lora_B" in pname:
                    p.copy_(torch.randn(p.shape, generator=gen) * (0.3 / rank ** 0.5))
        layers[name] = get_peft_model_state_dict(model)
        metadata[name] = cfg.to_dict()
    os.makedirs(os.path.dirname(os.path.abspath(out_file)), exist_ok=True)
    if kohya:
        prefix = {denoiser: "lora_unet_", "text_encoder": "lora_te1_" if "text_encoder_2" in parts else "lora_te_",
                  "text_encoder_2": "lora_te2_"}
        sd = {}
        for name, tensors in layers.items():
            for key, t in tensors.items():
                module, _, role = key.rpartition(".lora_")
                module = ("text_model." + module) if name.startswith("text_encoder") else module
                stem = prefix[name] + module.replace(".", "_")
                sd[f"{stem}.lora_{'down' if role.startswith('A') else 'up'}.weight"] = t.contiguous()
                sd[f"{stem}.alpha"] = torch.tensor(alpha)
        save_file(sd, out_file)
        return out_file
    kw = {f"{n}_lora_layers": v for n, v in layers.items()}
    kw.update({f"{n}_lora_adapter_metadata": v for n, v in metadata.items()})
    type(pipe).save_lora_weights(os.path.dirname(os.path.abspath(out_file)), weight_name=os.path.basename(out_file),
                                 **kw)
    return out_file


def build_tiny_controlnet(pipeline_dir: str | os.PathLike, out_dir: str | os.PathLike, *, seed: int = 0) -> str:
    """Save a ControlNetModel for the tiny SD / SDXL pipeline at ``pipeline_dir`` (``ControlNetModel.from_unet``,
    its conditioning embedding downsampling by the pipeline's VAE factor) to ``out_dir``; the zero-initialised
    convolutions get random weights, so the residuals matter in parity tests."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(os.path.join(os.fspath(pipeline_dir), "unet"))
    with open(os.path.join(os.fspath(pipeline_dir), "vae", "config.json"), encoding="utf-8") as f:
        import json

        factor = 2 ** (len(json.load(f)["block_out_channels"]) - 1)
    levels = int(round(math.log2(factor))) + 1
    with seeded_build(out_dir, seed) as (out_dir, _scratch):
        cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=tuple(8 * 2 ** i for i in range(levels)))
        with torch.no_grad():
            for name, p in cn.named_parameters():
                if name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out")):
                    p.normal_(0.0, 0.1)
        cn.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


# ------------------------------------------------------------------------------------- captioners

#: the words of the tiny captioners' word-level vocabularies (after their special tokens)
CAPTION_WORDS = tuple(
    "a photo of cat dog on the grass two sitting red blue car street man woman with table and in".split())


def _wordlevel(specials: list[str], vocab_size: int | None):
    """A whitespace word-level tokenizer: specials, CAPTION_WORDS, then filler words up to ``vocab_size``."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = list(CAPTION_WORDS)
    if vocab_size:
        words += [f"w{i}" for i in range(vocab_size - len(specials) - len(words))]
    vocab = {t: i for i, t in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=specials[1]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok, vocab


def build_tiny_vit_gpt2(out_dir: str | os.PathLike, *, seed: int = 0, encoder: dict[str, Any] | None = None,
                        decoder: dict[str, Any] | None = None, vocab_size: int | None = None):
    """Save a tiny random-weight ``VisionEncoderDecoderModel`` (ViT encoder + GPT-2 decoder with
    cross-attention) with its tokenizer and image processor to ``out_dir``; returns the model.

    Defaults: ViT 2 x 32 at 32x32 pixels, GPT-2 2 x 24 (decoder width != encoder width: exercises the
    enc_to_dec projection), a word-level vocabulary of 23. ``encoder`` / ``decoder`` patch the configs;
    ``vocab_size`` pads the vocabulary with filler words (so the LM head has a real model's cost).
    """
    from transformers import (GPT2Config, PreTrainedTokenizerFast, ViTConfig, ViTImageProcessorPil,
                              VisionEncoderDecoderConfig, VisionEncoderDecoderModel)

    enc_cfg = {**dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                      image_size=32, patch_size=8), **(encoder or {})}
    dec_cfg = {**dict(n_positions=64, n_embd=24, n_layer=2, n_head=2), **(decoder or {})}
    with seeded_build(out_dir, seed) as (out_dir, _scratch):
        tok, vocab = _wordlevel(["<|endoftext|>", "<unk>", "<pad>"], vocab_size)
        enc = ViTConfig(**enc_cfg)
        dec = GPT2Config(vocab_size=len(vocab), add_cross_attention=True, is_decoder=True, bos_token_id=0,
                         eos_token_id=0, pad_token_id=2, **dec_cfg)
        cfg = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
        cfg.decoder_start_token_id, cfg.eos_token_id, cfg.pad_token_id = 0, 0, 2
        model = VisionEncoderDecoderModel(config=cfg).eval()
        g = model.generation_config
        g.decoder_start_token_id, g.eos_token_id, g.pad_token_id = 0, 0, 2
        model.save_pretrained(out_dir)
        PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                unk_token="<unk>", pad_token="<pad>").save_pretrained(out_dir)
        size = enc_cfg["image_size"]
        ViTImageProcessorPil(size={"height": size, "width": size}).save_pretrained(out_dir)
    return model


def build_tiny_blip(out_dir: str | os.PathLike, *, seed: int = 0, text: dict[str, Any] | None = None,
                    vision: dict[str, Any] | None = None, vocab_size: int | None = None):
    """Save a tiny random-weight ``BlipForConditionalGeneration`` with its tokenizer and image processor to
    ``out_dir``; returns the model. Defaults: text decoder and vision model 2 x 32, 32x32 pixels."""
    from transformers import (BertTokenizerFast, BlipConfig, BlipForConditionalGeneration, BlipImageProcessorPil,
                              BlipTextConfig, BlipVisionConfig)

    text_cfg = {**dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                       max_position_embeddings=64), **(text or {})}
    vision_cfg = {**dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                         image_size=32, patch_size=8), **(vision or {})}
    with seeded_build(out_dir, seed) as (out_dir, _scratch):
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
        _, vocab = _wordlevel(specials, vocab_size)
        tc = BlipTextConfig(vocab_size=len(vocab), bos_token_id=5, sep_token_id=3, pad_token_id=0, eos_token_id=3,
                            **text_cfg)
        vc = BlipVisionConfig(**vision_cfg)
        model = BlipForConditionalGeneration(BlipConfig(text_config=tc.to_dict(), vision_config=vc.to_dict())).eval()
        model.save_pretrained(out_dir)
        BertTokenizerFast(vocab=vocab, bos_token="[DEC]").save_pretrained(out_dir)
        size = vision_cfg["image_size"]
        BlipImageProcessorPil(size={"height": size, "width": size}).save_pretrained(out_dir)
    return model


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
