"""Video export (issue 9): diffusers ``AnimateDiffPipeline`` -> a ``text2video`` engine.

``api.export`` routes a folder whose ``model_index.json`` names a class in :data:`VIDEO_PIPELINES`
here (``plan_video_pipeline`` + :class:`VideoExporter`). The engine holds:

* ``text_encoder`` (CLIP, as for SD), ``tokenizer``, ``scheduler``;
* ``unet``: the UNetMotionModel (UNet2D + MotionAdapter) with inputs ``sample`` [batch, C, frames, h, w]
  (diffusers' AnimateDiff layout), ``timestep`` float32 [batch], ``encoder_hidden_states``
  [batch, L, D] (one prompt embedding per video: the graph repeats it over the frames, as the
  diffusers pipeline's ``repeat_interleave(num_frames)`` does) -> ``noise_pred`` [batch, C, frames, h, w];
  ``frames`` is a dynamic axis, at most ``config.motion_max_seq_length``;
* ``vae_decoder``: the image VAE decoder (the runtime decodes frames as a batch).

``build_tiny_animatediff(out_dir)`` saves a tiny random-weight AnimateDiffPipeline for tests.
"""

from __future__ import annotations

import os
from typing import Any

from fastgen.errors import ExportError, InvalidArgumentError

from . import diffusion as dif

__all__ = ["VIDEO_PIPELINES", "is_video_pipeline", "plan_video_pipeline", "VideoExporter", "build_motion_unet",
           "build_tiny_animatediff", "build_motion_unet_per_frame",
           "build_svd_components", "build_tiny_svd"]

#: diffusers pipeline class -> (family, engine kind)
VIDEO_PIPELINES = {"AnimateDiffPipeline": ("sd", "text2video"), "StableVideoDiffusionPipeline": ("svd", "img2video")}
_REQUIRED_BY_FAMILY = {"sd": ("text_encoder", "tokenizer", "unet", "vae", "scheduler"),
                       "svd": ("image_encoder", "unet", "vae", "scheduler")}
_EXPECTED = {"text_encoder": ("CLIPTextModel", "CLIPTextModelWithProjection"),
             "unet": ("UNetMotionModel", "UNetSpatioTemporalConditionModel"),
             "vae": ("AutoencoderKL", "AutoencoderKLTemporalDecoder"),
             "image_encoder": ("CLIPVisionModelWithProjection",)}


def is_video_pipeline(root: str) -> bool:
    path = os.path.join(root, "model_index.json")
    if not os.path.isfile(path):
        return False
    try:
        return dif.read_json(path).get("_class_name") in VIDEO_PIPELINES
    except ExportError:
        return False


def plan_video_pipeline(root: str) -> dif.PipelinePlan:
    index = dif.read_json(os.path.join(root, "model_index.json"))
    class_name = index.get("_class_name")
    if class_name not in VIDEO_PIPELINES:
        raise ExportError(f"unsupported video pipeline class {class_name!r}")
    family, kind = VIDEO_PIPELINES[class_name]
    parts: dict[str, tuple[str, str]] = {}
    for name in _REQUIRED_BY_FAMILY[family]:
        entry = index.get(name)
        if not (isinstance(entry, list) and len(entry) == 2 and entry[0] and entry[1]):
            raise ExportError(f"{class_name} folder {root} has no {name!r} (model_index.json entry is {entry!r})")
        if not os.path.isdir(os.path.join(root, name)):
            raise ExportError(f"missing component folder {name!r} in {root} (listed in model_index.json)")
        library, cls = str(entry[0]), str(entry[1])
        if name in _EXPECTED and cls not in _EXPECTED[name]:
            raise ExportError(f"unsupported {name} class {cls!r} in {root}; expected one of {', '.join(_EXPECTED[name])}")
        parts[name] = (library, cls)
    return dif.PipelinePlan(root, class_name, family, kind, index, parts)


def _text_per_frame(encoder_hidden_states, frames):
    """(batch, tokens, dim) text states -> (batch * frames, tokens, dim), as the motion UNet's frames see them."""
    b, length, dim = encoder_hidden_states.shape
    return encoder_hidden_states[:, None].expand(b, frames, length, dim).reshape(b * frames, length, dim)


def build_motion_unet(plan: dif.PipelinePlan, *, text_length: int) -> dif.ComponentSpec:
    """The UNetMotionModel with the engine boundary (see the module docstring)."""
    import torch

    model = dif.load_model(plan, "unet")
    cfg = model.config
    c_in, c_out, d = cfg.in_channels, cfg.out_channels, cfg.cross_attention_dim
    if isinstance(d, (list, tuple)):
        d = d[0]
    if getattr(cfg, "addition_embed_type", None) is not None or getattr(cfg, "time_cond_proj_dim", None):
        raise ExportError("AnimateDiff UNets with additional conditioning (SDXL, LCM cond) are not supported")
    max_frames = int(cfg.motion_max_seq_length)

    class MotionUNet(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.model = m

        def forward(self, sample, timestep, encoder_hidden_states):
            ehs = _text_per_frame(encoder_hidden_states, sample.shape[2])
            return self.model(sample, timestep, ehs, return_dict=False)[0].float()

    inputs = [dif.TensorSpec("sample", "float32", ("batch", c_in, "frames", "latent_height", "latent_width")),
              dif.TensorSpec("timestep", "float32", ("batch",)),
              dif.TensorSpec("encoder_hidden_states", "float32", ("batch", text_length, d))]
    outputs = [dif.TensorSpec("noise_pred", "float32", ("batch", c_out, "frames", "latent_height", "latent_width"))]

    def make(dims, gen):
        b, f, h, w = dims["batch"], dims["frames"], dims["latent_height"], dims["latent_width"]
        t = torch.rand(b, generator=gen, dtype=torch.float32) * 999.0
        return (torch.randn(b, c_in, f, h, w, generator=gen), t, torch.randn(b, text_length, d, generator=gen))

    info = {"in_channels": c_in, "latent_multiple": 2 ** (len(cfg.block_out_channels) - 1),
            "sample_size": cfg.sample_size, "cross_attention_dim": d, "motion_max_seq_length": max_frames}
    return dif.ComponentSpec("unet", MotionUNet(model), inputs, outputs, make, info=info)


def _per_frame_forward(model, sample, timestep, ehs):
    """UNetMotionModel.forward with one timestep per frame: timestep [B, F] -> time embedding [B*F, D].

    Follows diffusers' forward for UNets without added conditioning; with equal timesteps over the
    frames it is the same computation (the export checks that against the model's own forward)."""
    b, c, f, h, w = sample.shape
    up = 2 ** model.num_upsamplers
    forward_upsample_size = any(int(s) % up != 0 for s in sample.shape[-2:])
    upsample_size = None
    t_emb = model.time_proj(timestep.reshape(-1)).to(dtype=model.dtype)
    emb = model.time_embedding(t_emb, None)  # [B*F, D], frame-major within each video
    x = sample.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
    x = model.conv_in(x)
    res = (x,)
    for block in model.down_blocks:
        if getattr(block, "has_cross_attention", False):
            x, r = block(hidden_states=x, temb=emb, encoder_hidden_states=ehs, num_frames=f)
        else:
            x, r = block(hidden_states=x, temb=emb, num_frames=f)
        res += r
    if model.mid_block is not None:
        if hasattr(model.mid_block, "motion_modules"):
            x = model.mid_block(x, emb, encoder_hidden_states=ehs, num_frames=f)
        else:
            x = model.mid_block(x, emb, encoder_hidden_states=ehs)
    for i, block in enumerate(model.up_blocks):
        is_final = i == len(model.up_blocks) - 1
        r = res[-len(block.resnets):]
        res = res[:-len(block.resnets)]
        if not is_final and forward_upsample_size:
            upsample_size = res[-1].shape[2:]
        if getattr(block, "has_cross_attention", False):
            x = block(hidden_states=x, temb=emb, res_hidden_states_tuple=r, encoder_hidden_states=ehs,
                      upsample_size=upsample_size, num_frames=f)
        else:
            x = block(hidden_states=x, temb=emb, res_hidden_states_tuple=r, upsample_size=upsample_size, num_frames=f)
    if model.conv_norm_out:
        x = model.conv_act(model.conv_norm_out(x))
    x = model.conv_out(x)
    return x[None, :].reshape((-1, f) + x.shape[1:]).permute(0, 2, 1, 3, 4)


def build_motion_unet_per_frame(plan: dif.PipelinePlan, *, text_length: int) -> dif.ComponentSpec:
    """``unet_fifo``: the motion UNet with a per-frame timestep [batch, frames] (FIFO-Diffusion)."""
    import torch

    base = build_motion_unet(plan, text_length=text_length)
    model = base.module.model

    class PerFrame(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.model = m

        def forward(self, sample, timestep, encoder_hidden_states):
            ehs = _text_per_frame(encoder_hidden_states, sample.shape[2])
            return _per_frame_forward(self.model, sample, timestep, ehs).float()

    inputs = list(base.inputs)
    inputs[1] = dif.TensorSpec("timestep", "float32", ("batch", "frames"))
    c_in = inputs[0].shape[1]

    def make(dims, gen):
        b, f, h, w = dims["batch"], dims["frames"], dims["latent_height"], dims["latent_width"]
        t = torch.rand(b, f, generator=gen, dtype=torch.float32) * 999.0
        return (torch.randn(b, c_in, f, h, w, generator=gen), t,
                torch.randn(b, text_length, inputs[2].shape[2], generator=gen))

    wrapper = PerFrame(model)
    # the per-frame path must be the model's own computation when all frames share a timestep
    gen = torch.Generator().manual_seed(1)
    x, t, e = make({"batch": 1, "frames": 3, "latent_height": 4, "latent_width": 4}, gen)
    with torch.no_grad():
        same = wrapper(x, t[:, :1].expand(1, 3).contiguous(), e)
        ref = base.module(x, t[:, 0], e)
    if not torch.allclose(same, ref, atol=1e-5, rtol=1e-4):
        raise ExportError(f"per-frame UNet differs from UNetMotionModel.forward by {float((same - ref).abs().max())}")
    return dif.ComponentSpec("unet_fifo", wrapper, inputs, list(base.outputs), make, info=dict(base.info))


def _exporter_base():
    from .api import _Exporter

    return _Exporter


def _make_video_exporter():
    base = _exporter_base()

    class VideoExporter(base):
        """api._Exporter for AnimateDiff: motion UNet with a frames axis, image VAE decoder only."""

        def __init__(self, *args, fifo_unet: bool = True, **kwargs):
            super().__init__(*args, **kwargs)
            #: also export ``unet_fifo`` (per-frame timesteps, for long_video="fifo"): export(fifo_unet=...)
            self.per_frame_timestep = bool(fifo_unet)

        def run(self) -> None:
            if self.plan.family == "svd":
                return self._run_svd()
            plan, m = self.plan, self.manifest
            den_cfg = dif.read_json(os.path.join(plan.path("unet"), "config.json"))
            vae_cfg = dif.read_json(os.path.join(plan.path("vae"), "config.json"))
            f = 2 ** (len(vae_cfg["block_out_channels"]) - 1)
            export_hw, parity_hw = self._latent_dims(den_cfg)
            max_frames = int(den_cfg.get("motion_max_seq_length") or 32)
            # traced with 4 frames (batch 2), checked with another count (batch 1), both within the motion length
            export_f = min(4, max_frames)
            parity_f = min(6, max_frames) if max_frames != export_f else max(1, max_frames - 1)
            self.export_dims = {**self._dims(2, export_hw, f), "frames": export_f}
            self.parity_dims = {**self._dims(1, parity_hw, f), "frames": parity_f}

            self._tokenizers()
            sched = self._scheduler()
            length = m["tokenizers"]["tokenizer"]["max_length"]
            self._component(lambda: dif.build_text_encoder(plan, "text_encoder", length))
            self._component(lambda: build_motion_unet(plan, text_length=length))
            if self.per_frame_timestep:
                self._component(lambda: build_motion_unet_per_frame(plan, text_length=length))
            dec, _enc = dif.build_vae(plan)
            del _enc
            self._component(lambda: dec)
            cfg = dif.pipeline_config(plan, self.info, m["tokenizers"], sched)
            cfg["motion_max_seq_length"] = self.info["unet"]["motion_max_seq_length"]
            cfg["default_num_frames"] = min(16, cfg["motion_max_seq_length"])
            cfg["frames_layout"] = "BCFHW"
            cfg["per_frame_timestep"] = "unet_fifo" in self.info
            m["config"] = cfg
            from . import manifest as mf

            mf.write_manifest(self.work, m)

        def _run_svd(self) -> None:
            """StableVideoDiffusion: CLIP image encoder, spatio-temporal UNet, VAE encoder and the
            temporal VAE decoder (frames of one video as its batch); fastgen.pipelines.video.ImageToVideoPipeline
            runs it."""
            plan, m = self.plan, self.manifest
            den_cfg = dif.read_json(os.path.join(plan.path("unet"), "config.json"))
            vae_cfg = dif.read_json(os.path.join(plan.path("vae"), "config.json"))
            f = 2 ** (len(vae_cfg["block_out_channels"]) - 1)
            export_hw, parity_hw = self._latent_dims(den_cfg)
            self.export_dims = {**self._dims(2, export_hw, f), "frames": 4}
            self.parity_dims = {**self._dims(1, parity_hw, f), "frames": 3}
            sched = self._scheduler()
            specs = build_svd_components(plan)
            for spec in specs:
                self._component(lambda spec=spec: spec)
            info = self.info
            unet = info["unet"]
            m["config"] = {
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
                "prediction_type": dif.prediction_type(sched),
                "frames_layout": "BFCHW",
            }
            from . import manifest as mf

            mf.write_manifest(self.work, m)

    return VideoExporter


def build_svd_components(plan: dif.PipelinePlan) -> list[dif.ComponentSpec]:
    """(image_encoder, unet, vae_encoder, vae_decoder) of a StableVideoDiffusionPipeline folder."""
    import torch

    T = dif.TensorSpec
    enc = dif.load_model(plan, "image_encoder")
    ecfg = enc.config
    size, proj = int(ecfg.image_size), int(ecfg.projection_dim)
    fe = {}
    fe_path = os.path.join(plan.root, "feature_extractor", "preprocessor_config.json")
    if os.path.isfile(fe_path):
        fe = dif.read_json(fe_path)

    class ImageEncoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.model = m

        def forward(self, pixel_values):
            return self.model(pixel_values).image_embeds.float()

    image_encoder = dif.ComponentSpec(
        "image_encoder", ImageEncoder(enc), [T("pixel_values", "float32", ("batch", 3, size, size))],
        [T("image_embeds", "float32", ("batch", proj))],
        lambda dims, gen: (torch.randn(dims["batch"], 3, size, size, generator=gen),),
        info={"image_size": size, "projection_dim": proj,
              "image_mean": fe.get("image_mean", [0.48145466, 0.4578275, 0.40821073]),
              "image_std": fe.get("image_std", [0.26862954, 0.26130258, 0.27577711])})

    unet = dif.load_model(plan, "unet")
    ucfg = unet.config
    c_in, c_out = ucfg.in_channels, ucfg.out_channels
    d = ucfg.cross_attention_dim if isinstance(ucfg.cross_attention_dim, int) else ucfg.cross_attention_dim[0]
    n_ids = ucfg.projection_class_embeddings_input_dim // ucfg.addition_time_embed_dim

    class SVDUNet(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.model = m

        def forward(self, sample, timestep, encoder_hidden_states, added_time_ids):
            return self.model(sample, timestep, encoder_hidden_states, added_time_ids, return_dict=False)[0].float()

    def make_unet(dims, gen):
        b, f, h, w = dims["batch"], dims["frames"], dims["latent_height"], dims["latent_width"]
        ids = torch.tensor([[6.0, 127.0, 0.02]], dtype=torch.float32).repeat(b, 1)[:, :n_ids]
        return (torch.randn(b, f, c_in, h, w, generator=gen), torch.rand(b, generator=gen) * 2.0,
                torch.randn(b, 1, d, generator=gen), ids)

    unet_spec = dif.ComponentSpec(
        "unet", SVDUNet(unet),
        [T("sample", "float32", ("batch", "frames", c_in, "latent_height", "latent_width")),
         T("timestep", "float32", ("batch",)), T("encoder_hidden_states", "float32", ("batch", 1, d)),
         T("added_time_ids", "float32", ("batch", n_ids))],
        [T("noise_pred", "float32", ("batch", "frames", c_out, "latent_height", "latent_width"))], make_unet,
        info={"in_channels": c_in, "latent_multiple": 2 ** (len(ucfg.block_out_channels) - 1),
              "sample_size": ucfg.sample_size, "num_frames": int(ucfg.num_frames), "added_time_ids": n_ids})

    vae = dif.load_model(plan, "vae")
    vcfg = vae.config
    c = vcfg.latent_channels
    vinfo = {"latent_channels": c, "scaling_factor": float(vcfg.scaling_factor)}

    class VaeEncoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.model = m

        def forward(self, sample):
            return self.model.encode(sample).latent_dist.mode().float()

    class TemporalDecoder(torch.nn.Module):
        """One video's frames as the batch: decode(z, num_frames=len(z)) (a decode_chunk_size chunk)."""

        def __init__(self, m):
            super().__init__()
            self.model = m

        def forward(self, latent):
            return self.model.decode(latent, num_frames=latent.shape[0], return_dict=False)[0].float()

    vae_encoder = dif.ComponentSpec(
        "vae_encoder", VaeEncoder(vae), [T("sample", "float32", ("batch", 3, "height", "width"))],
        [T("latent_mean", "float32", ("batch", c, "latent_height", "latent_width"))],
        lambda dims, gen: (torch.rand(dims["batch"], 3, dims["height"], dims["width"], generator=gen) * 2 - 1,),
        info=vinfo)
    vae_decoder = dif.ComponentSpec(
        "vae_decoder", TemporalDecoder(vae), [T("latent", "float32", ("frames", c, "latent_height", "latent_width"))],
        [T("sample", "float32", ("frames", 3, "height", "width"))],
        lambda dims, gen: (torch.randn(dims["frames"], c, dims["latent_height"], dims["latent_width"], generator=gen),),
        info=vinfo)
    return [image_encoder, unet_spec, vae_encoder, vae_decoder]


def build_tiny_svd(out_dir: str | os.PathLike, *, seed: int = 0, num_frames: int = 6) -> str:
    """Save a tiny random-weight ``StableVideoDiffusionPipeline`` to ``out_dir``."""
    import torch
    from diffusers import (AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, StableVideoDiffusionPipeline,
                           UNetSpatioTemporalConditionModel)
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
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
        pipe = StableVideoDiffusionPipeline(vae=vae, image_encoder=enc, unet=unet, scheduler=sched, feature_extractor=fe)
        pipe.save_pretrained(out_dir, safe_serialization=True)
    finally:
        torch.random.set_rng_state(state)
    return out_dir


def VideoExporter(*args, **kwargs):  # noqa: N802  (a factory: the base class lives in api, imported lazily)
    return _make_video_exporter()(*args, **kwargs)


# ------------------------------------------------------------------------------------ tiny pipeline


def build_tiny_animatediff(out_dir: str | os.PathLike, *, seed: int = 0, motion_max_seq_length: int = 8,
                           vae_scale_factor: int = 8, **overrides: dict[str, Any]) -> str:
    """Save a tiny random-weight ``AnimateDiffPipeline`` (UNet2D + MotionAdapter) to ``out_dir``.

    ``overrides``: ``unet=``, ``motion_adapter=``, ``vae=``, ``text_encoder=``, ``scheduler=`` config patches.
    """
    import torch
    from diffusers import AnimateDiffPipeline, MotionAdapter

    from .testing import _CLIP_HIDDEN, _clip_pair, _scheduler, _unet, _vae, seeded_build

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
