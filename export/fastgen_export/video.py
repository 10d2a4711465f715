"""Video exporters (issue 9): diffusers ``AnimateDiffPipeline`` -> ``text2video``, ``StableVideoDiffusionPipeline``
-> ``img2video``.

:class:`AnimateDiffExporter` writes:

* ``text_encoder`` (CLIP, as for SD), ``tokenizer``, ``scheduler``;
* ``unet``: the UNetMotionModel (UNet2D + MotionAdapter) with inputs ``sample`` [batch, C, frames, h, w]
  (diffusers' AnimateDiff layout), ``timestep`` float32 [batch], ``encoder_hidden_states``
  [batch, L, D] (one prompt embedding per video: the graph repeats it over the frames, as the
  diffusers pipeline's ``repeat_interleave(num_frames)`` does) -> ``noise_pred`` [batch, C, frames, h, w];
  ``frames`` is a dynamic axis, at most ``config.motion_max_seq_length``;
* ``unet_fifo`` (unless ``fifo_unet=False``): the same UNet with a per-frame timestep [batch, frames];
* ``vae_decoder``: the image VAE decoder (the runtime decodes frames as a batch).

:class:`SVDExporter` writes the CLIP image encoder, the spatio-temporal UNet, the VAE encoder and the
temporal VAE decoder (frames of one video as its batch).

The tiny random-weight pipelines for tests live in :mod:`fastgen_export.testing`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from fastgen.errors import ExportError

from .diffusion import (DiffusersExporter, PipelinePlan, build_text_encoder, build_vae, load_model,
                        pipeline_config, prediction_type)
from .sources import read_json
from .step_cache import deepcache_components, deepcache_record, parse_export_cache
from .spec import ComponentSpec, TensorSpec

__all__ = ["VIDEO_PIPELINES", "AnimateDiffExporter", "SVDExporter", "build_motion_unet",
           "build_motion_unet_per_frame", "build_svd_components"]

#: diffusers pipeline class -> (family, engine kind)
VIDEO_PIPELINES = {"AnimateDiffPipeline": ("sd", "text2video"), "StableVideoDiffusionPipeline": ("svd", "img2video")}

_CLIP_IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]


def build_motion_unet(plan: PipelinePlan, *, text_length: int) -> ComponentSpec:
    """The UNetMotionModel with the engine boundary (see the module docstring)."""
    import torch

    from . import wrappers

    model = load_model(plan, "unet")
    cfg = model.config
    c_in, c_out, d = cfg.in_channels, cfg.out_channels, cfg.cross_attention_dim
    if isinstance(d, (list, tuple)):
        d = d[0]
    if getattr(cfg, "addition_embed_type", None) is not None or getattr(cfg, "time_cond_proj_dim", None):
        raise ExportError("AnimateDiff UNets with additional conditioning (SDXL, LCM cond) are not supported")
    max_frames = int(cfg.motion_max_seq_length)

    inputs = [TensorSpec("sample", "float32", ("batch", c_in, "frames", "latent_height", "latent_width")),
              TensorSpec("timestep", "float32", ("batch",)),
              TensorSpec("encoder_hidden_states", "float32", ("batch", text_length, d))]
    outputs = [TensorSpec("noise_pred", "float32", ("batch", c_out, "frames", "latent_height", "latent_width"))]

    def make(dims, gen):
        b, f, h, w = dims["batch"], dims["frames"], dims["latent_height"], dims["latent_width"]
        t = torch.rand(b, generator=gen, dtype=torch.float32) * 999.0
        return (torch.randn(b, c_in, f, h, w, generator=gen), t, torch.randn(b, text_length, d, generator=gen))

    info = {"in_channels": c_in, "latent_multiple": 2 ** (len(cfg.block_out_channels) - 1),
            "sample_size": cfg.sample_size, "cross_attention_dim": d, "motion_max_seq_length": max_frames}
    return ComponentSpec("unet", wrappers.MotionUNet(model), inputs, outputs, make, info=info, fuse_attention=True)


def build_motion_unet_per_frame(plan: PipelinePlan, *, text_length: int) -> ComponentSpec:
    """``unet_fifo``: the motion UNet with a per-frame timestep [batch, frames] (FIFO-Diffusion)."""
    import torch

    from . import wrappers

    base = build_motion_unet(plan, text_length=text_length)
    wrapper = wrappers.MotionUNetPerFrame(base.module.model)
    inputs = list(base.inputs)
    inputs[1] = TensorSpec("timestep", "float32", ("batch", "frames"))
    c_in = inputs[0].shape[1]

    def make(dims, gen):
        b, f, h, w = dims["batch"], dims["frames"], dims["latent_height"], dims["latent_width"]
        t = torch.rand(b, f, generator=gen, dtype=torch.float32) * 999.0
        return (torch.randn(b, c_in, f, h, w, generator=gen), t,
                torch.randn(b, text_length, inputs[2].shape[2], generator=gen))

    # the per-frame path must be the model's own computation when all frames share a timestep
    gen = torch.Generator().manual_seed(1)
    x, t, e = make({"batch": 1, "frames": 3, "latent_height": 4, "latent_width": 4}, gen)
    with torch.no_grad():
        same = wrapper(x, t[:, :1].expand(1, 3).contiguous(), e)
        ref = base.module(x, t[:, 0], e)
    if not torch.allclose(same, ref, atol=1e-5, rtol=1e-4):
        raise ExportError(f"per-frame UNet differs from UNetMotionModel.forward by {float((same - ref).abs().max())}")
    return ComponentSpec("unet_fifo", wrapper, inputs, list(base.outputs), make, info=dict(base.info),
                         fuse_attention=True)


def build_svd_components(plan: PipelinePlan) -> Iterator[ComponentSpec]:
    """image_encoder, unet, vae_encoder, vae_decoder of a StableVideoDiffusionPipeline folder, each model
    loaded when its spec is asked for."""
    import torch

    from . import wrappers

    T = TensorSpec
    enc = load_model(plan, "image_encoder")
    ecfg = enc.config
    size, proj = int(ecfg.image_size), int(ecfg.projection_dim)
    fe: dict[str, Any] = {}
    fe_path = os.path.join(plan.root, "feature_extractor", "preprocessor_config.json")
    if os.path.isfile(fe_path):
        fe = read_json(fe_path)
    yield ComponentSpec(
        "image_encoder", wrappers.ImageEncoder(enc), [T("pixel_values", "float32", ("batch", 3, size, size))],
        [T("image_embeds", "float32", ("batch", proj))],
        lambda dims, gen: (torch.randn(dims["batch"], 3, size, size, generator=gen),),
        info={"image_size": size, "projection_dim": proj,
              "image_mean": fe.get("image_mean", _CLIP_IMAGE_MEAN), "image_std": fe.get("image_std", _CLIP_IMAGE_STD)})
    del enc

    unet = load_model(plan, "unet")
    ucfg = unet.config
    c_in, c_out = ucfg.in_channels, ucfg.out_channels
    d = ucfg.cross_attention_dim if isinstance(ucfg.cross_attention_dim, int) else ucfg.cross_attention_dim[0]
    n_ids = ucfg.projection_class_embeddings_input_dim // ucfg.addition_time_embed_dim

    def make_unet(dims, gen):
        b, f, h, w = dims["batch"], dims["frames"], dims["latent_height"], dims["latent_width"]
        ids = torch.tensor([[6.0, 127.0, 0.02]], dtype=torch.float32).repeat(b, 1)[:, :n_ids]
        return (torch.randn(b, f, c_in, h, w, generator=gen), torch.rand(b, generator=gen) * 2.0,
                torch.randn(b, 1, d, generator=gen), ids)

    yield ComponentSpec(
        "unet", wrappers.SVDUNet(unet),
        [T("sample", "float32", ("batch", "frames", c_in, "latent_height", "latent_width")),
         T("timestep", "float32", ("batch",)), T("encoder_hidden_states", "float32", ("batch", 1, d)),
         T("added_time_ids", "float32", ("batch", n_ids))],
        [T("noise_pred", "float32", ("batch", "frames", c_out, "latent_height", "latent_width"))], make_unet,
        info={"in_channels": c_in, "latent_multiple": 2 ** (len(ucfg.block_out_channels) - 1),
              "sample_size": ucfg.sample_size, "num_frames": int(ucfg.num_frames), "added_time_ids": n_ids},
        fuse_attention=True)
    del unet

    vae = load_model(plan, "vae")
    vcfg = vae.config
    c = vcfg.latent_channels
    vinfo = {"latent_channels": c, "scaling_factor": float(vcfg.scaling_factor)}
    yield ComponentSpec(
        "vae_encoder", wrappers.SVDVaeEncoder(vae), [T("sample", "float32", ("batch", 3, "height", "width"))],
        [T("latent_mean", "float32", ("batch", c, "latent_height", "latent_width"))],
        lambda dims, gen: (torch.rand(dims["batch"], 3, dims["height"], dims["width"], generator=gen) * 2 - 1,),
        info=vinfo, dtype="fp32")
    yield ComponentSpec(
        "vae_decoder", wrappers.TemporalVaeDecoder(vae),
        [T("latent", "float32", ("frames", c, "latent_height", "latent_width"))],
        [T("sample", "float32", ("frames", 3, "height", "width"))],
        lambda dims, gen: (torch.randn(dims["frames"], c, dims["latent_height"], dims["latent_width"], generator=gen),),
        info=vinfo, dtype="fp32")


class AnimateDiffExporter(DiffusersExporter):
    """AnimateDiff: CLIP text encoder, motion UNet with a frames axis (and its per-frame-timestep variant),
    image VAE decoder."""

    PIPELINES = {"AnimateDiffPipeline": VIDEO_PIPELINES["AnimateDiffPipeline"]}
    FAMILY_COMPONENTS = {"sd": (("text_encoder", "tokenizer", "unet", "vae", "scheduler"), ())}
    EXPECTED_CLASSES = {"text_encoder": ("CLIPTextModel", "CLIPTextModelWithProjection"),
                        "unet": ("UNetMotionModel",), "vae": ("AutoencoderKL",)}
    EXTRA_OPTIONS = ("fifo_unet", "cache")

    def __init__(self, plan: PipelinePlan, *, source_id: str, fifo_unet: bool = True, cache: Any = None,
                 **options: Any):
        super().__init__(plan, source_id=source_id, **options)
        if not isinstance(fifo_unet, bool):
            raise ExportError(f"fifo_unet must be True or False, got {fifo_unet!r}")
        #: also export ``unet_fifo`` (per-frame timesteps, for long_video="fifo"): export(fifo_unet=...)
        self.per_frame_timestep = fifo_unet
        #: DeepCache graphs for the motion UNet (export(cache="deepcache[:branch=N]"))
        self.cache = parse_export_cache(cache, plan.family)
        if self.cache and self.dtype != "fp32":
            raise ExportError("--cache graphs are exported in fp32 only for now (drop --dtype fp16)")

    def prepare(self) -> None:
        super().prepare()
        max_frames = int(self.den_cfg.get("motion_max_seq_length") or 32)
        # traced with 4 frames (batch 2), checked with another count (batch 1), both within the motion length
        export_f = min(4, max_frames)
        parity_f = min(6, max_frames) if max_frames != export_f else max(1, max_frames - 1)
        self.export_dims["frames"] = export_f
        self.parity_dims["frames"] = parity_f

    def components(self) -> Iterator[ComponentSpec]:
        length = self.max_length("tokenizer")
        yield build_text_encoder(self.plan, "text_encoder", length)
        unet = build_motion_unet(self.plan, text_length=length)
        if "deepcache" in self.cache:
            yield from deepcache_components(unet, unet.module.model, self.cache["deepcache"], self.parity_dims)
        else:
            yield unet
        if self.per_frame_timestep:
            yield build_motion_unet_per_frame(self.plan, text_length=length)
        dec, _enc = build_vae(self.plan)
        del _enc
        yield dec

    def config(self) -> dict[str, Any]:
        assert self.scheduler is not None
        cfg = pipeline_config(self.plan, self.info, self.manifest["tokenizers"], self.scheduler)
        cfg["motion_max_seq_length"] = self.info["unet"]["motion_max_seq_length"]
        cfg["default_num_frames"] = min(16, cfg["motion_max_seq_length"])
        cfg["frames_layout"] = "BCFHW"
        cfg["per_frame_timestep"] = "unet_fifo" in self.info
        if "deepcache" in self.cache:
            cfg["step_cache"] = {"deepcache": deepcache_record(self.cache["deepcache"])}
        return cfg


class SVDExporter(DiffusersExporter):
    """Stable Video Diffusion: CLIP image encoder, spatio-temporal UNet, VAE encoder and the temporal VAE
    decoder; fastgen.pipelines.video.ImageToVideoPipeline runs it."""

    PIPELINES = {"StableVideoDiffusionPipeline": VIDEO_PIPELINES["StableVideoDiffusionPipeline"]}
    FAMILY_COMPONENTS = {"svd": (("image_encoder", "unet", "vae", "scheduler"), ())}
    EXPECTED_CLASSES = {"unet": ("UNetSpatioTemporalConditionModel",), "vae": ("AutoencoderKLTemporalDecoder",),
                        "image_encoder": ("CLIPVisionModelWithProjection",)}

    def prepare(self) -> None:
        super().prepare()
        self.export_dims["frames"] = 4
        self.parity_dims["frames"] = 3

    def components(self) -> Iterator[ComponentSpec]:
        return build_svd_components(self.plan)

    def config(self) -> dict[str, Any]:
        assert self.scheduler is not None
        info, f = self.info, self.vae_factor
        unet = info["unet"]
        return {
            "latent_channels": info["vae_decoder"]["latent_channels"],
            "unet_in_channels": unet["in_channels"],
            "vae_scale_factor": f,
            "scaling_factor": info["vae_decoder"]["scaling_factor"],
            "shift_factor": 0.0,
            "default_height": unet["sample_size"] * f if unet["sample_size"] else 576,
            "default_width": unet["sample_size"] * f if unet["sample_size"] else 1024,
            "size_multiple": f * unet["latent_multiple"],
            "default_num_frames": unet["num_frames"],
            "image_size": info["image_encoder"]["image_size"],
            "image_mean": info["image_encoder"]["image_mean"], "image_std": info["image_encoder"]["image_std"],
            "prediction_type": prediction_type(self.scheduler),
            "frames_layout": "BFCHW",
        }
