"""Diffusers pipeline folders: their plan, their exportable components, and the image exporter.

``DiffusersExporter.plan_folder(root, index)`` validates a ``save_pretrained`` folder (``model_index.json``, a
supported pipeline class, every component folder present, every entry's library allow-listed) without
loading weights. The ``build_*`` functions load one model and wrap it (:mod:`fastgen_export.wrappers`)
in a module whose ``forward`` has the engine format's fixed input / output names and a float32
boundary (fp16 models cast inside). :class:`ImageExporter` declares the text2img / inpaint engines of
SD 1.x / 2.x, SDXL and SD3; :mod:`fastgen_export.video` derives the video exporters from
:class:`DiffusersExporter` too.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from fastgen.errors import ExportError

from .base import Exporter
from .sources import check_entries, import_class, model_index_entry, read_json, read_model_index
from .step_cache import (FIRST_BLOCK_RECORD, deepcache_components, deepcache_record, first_block_components,
                         parse_export_cache)
from .spec import ComponentSpec, TensorSpec, TokenizerSpec

__all__ = ["SUPPORTED_PIPELINES", "PipelinePlan", "DiffusersExporter", "ImageExporter", "plan_pipeline",
           "build_text_encoder",
           "build_denoiser", "build_vae", "load_model", "pipeline_config", "prediction_type", "T5_MAX_LENGTH"]

#: diffusers pipeline class -> (family, engine kind). img2img classes share their text2img engine:
#: the engine always carries the VAE encoder.
SUPPORTED_PIPELINES: dict[str, tuple[str, str]] = {
    "StableDiffusionPipeline": ("sd", "text2img"),
    "StableDiffusionImg2ImgPipeline": ("sd", "text2img"),
    "StableDiffusionInpaintPipeline": ("sd", "inpaint"),
    "StableDiffusionXLPipeline": ("sdxl", "text2img"),
    "StableDiffusionXLImg2ImgPipeline": ("sdxl", "text2img"),
    "StableDiffusionXLInpaintPipeline": ("sdxl", "inpaint"),
    "StableDiffusion3Pipeline": ("sd3", "text2img"),
    "StableDiffusion3Img2ImgPipeline": ("sd3", "text2img"),
}

#: diffusers' ``max_sequence_length`` default for SD3's T5 prompt.
T5_MAX_LENGTH = 256

_CLIP_CLASSES = ("CLIPTextModel", "CLIPTextModelWithProjection")
#: text encoder -> its tokenizer
TOKENIZER_OF = {"text_encoder": "tokenizer", "text_encoder_2": "tokenizer_2", "text_encoder_3": "tokenizer_3"}
#: the base class a component's class must derive from, per library
_MODEL_BASES = {"diffusers": "ModelMixin", "transformers": "PreTrainedModel"}


@dataclass(frozen=True)
class PipelinePlan:
    root: str
    class_name: str
    family: str
    kind: str
    model_index: dict[str, Any]
    #: model_index entries present in the folder: name -> (library, class name)
    parts: dict[str, tuple[str, str]]

    def has(self, name: str) -> bool:
        return name in self.parts

    def path(self, name: str) -> str:
        return os.path.join(self.root, name)


def _has_accelerate() -> bool:
    return importlib.util.find_spec("accelerate") is not None


@contextlib.contextmanager
def _quiet_loading():
    """Silence transformers' per-model weight-loading progress bars (the exporter prints its own)."""
    from transformers.utils import logging as tlog

    enabled = tlog.is_progress_bar_enabled()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            tlog.enable_progress_bar()


def load_model(plan: PipelinePlan, part: str):
    """Load one model of the pipeline in float32, eval mode."""
    import torch

    library, cls_name = plan.parts[part]
    cls = import_class(library, cls_name, entry=part, base=_MODEL_BASES.get(library))
    if library == "transformers":
        # Eager attention: the TorchScript exporter's SDPA symbolic mixes float32 into fp16 graphs
        # (invalid LayerNormalization types); eager matmul/softmax exports cleanly in both dtypes.
        kw = {"dtype": torch.float32, "attn_implementation": "eager"}
    else:  # explicit low_cpu_mem_usage: diffusers otherwise warns when accelerate is not installed
        kw = {"torch_dtype": torch.float32, "low_cpu_mem_usage": _has_accelerate()}
    try:
        with _quiet_loading():
            model = cls.from_pretrained(plan.path(part), **kw)
    except Exception as e:
        raise ExportError(f"cannot load {part!r} ({cls_name}) from {plan.path(part)}: {e}") from e
    return model.eval().requires_grad_(False)


def model_config(plan: PipelinePlan, part: str) -> dict[str, Any]:
    """``<part>/config.json`` of the source folder (read safely, see :func:`fastgen_export.sources.read_json`)."""
    return read_json(os.path.join(plan.path(part), "config.json"))


# ---------------------------------------------------------------------------------------- components


def _token_ids(dims, gen, *, length: int, vocab: int, bos: int | None, eos: int | None, pad: int | None):
    """Realistic token ids: [bos] words [eos] [pad...], with a random prompt length per row."""
    import torch

    b = dims["batch"]
    ids = torch.randint(0, vocab, (b, length), generator=gen, dtype=torch.int64)
    for row in range(b):
        n = int(torch.randint(1, max(2, length - 1), (1,), generator=gen))
        if bos is not None:
            ids[row, 0] = bos
        if eos is not None:
            ids[row, n] = eos
            if pad is not None:
                ids[row, n + 1:] = pad
    return ids


def _randn(gen, *shape):
    import torch

    return torch.randn(*shape, generator=gen, dtype=torch.float32)


def build_text_encoder(plan: PipelinePlan, name: str, max_length: int) -> ComponentSpec:
    from . import wrappers

    model = load_model(plan, name)
    cfg = model.config
    ids = TensorSpec("input_ids", "int64", ("batch", max_length))
    tok_ids = dict(length=max_length, vocab=cfg.vocab_size, bos=getattr(cfg, "bos_token_id", None),
                   eos=getattr(cfg, "eos_token_id", None), pad=getattr(cfg, "pad_token_id", None))
    if name == "text_encoder_3":
        d = cfg.d_model
        outputs = [TensorSpec("last_hidden_state", "float32", ("batch", max_length, d))]
        return ComponentSpec(name, wrappers.T5Text(model), [ids], outputs,
                             lambda dims, gen: (_token_ids(dims, gen, **{**tok_ids, "bos": None}),),
                             info={"hidden_size": d})
    d = cfg.hidden_size
    p = getattr(cfg, "projection_dim", d) if type(model).__name__ == "CLIPTextModelWithProjection" else d
    outputs = [TensorSpec("last_hidden_state", "float32", ("batch", max_length, d)),
               TensorSpec("penultimate_hidden_state", "float32", ("batch", max_length, d)),
               TensorSpec("pooled", "float32", ("batch", p))]
    return ComponentSpec(name, wrappers.ClipText(model), [ids], outputs,
                         lambda dims, gen: (_token_ids(dims, gen, **tok_ids),),
                         info={"hidden_size": d, "pooled_size": p})


def _timesteps(dims, gen):
    import torch

    return torch.rand(dims["batch"], generator=gen, dtype=torch.float32) * 999.0


def build_denoiser(plan: PipelinePlan, *, text_length: int, pooled_size: int | None) -> ComponentSpec:
    """The UNet (SD, SDXL) or SD3 transformer. ``text_length`` is the fixed prompt-embedding length."""
    from . import wrappers

    if plan.family == "sd3":
        model = load_model(plan, "transformer")
        cfg = model.config
        c_in, c_out = cfg.in_channels, cfg.out_channels or cfg.in_channels
        d, p = cfg.joint_attention_dim, cfg.pooled_projection_dim
        inputs = [TensorSpec("hidden_states", "float32", ("batch", c_in, "latent_height", "latent_width")),
                  TensorSpec("timestep", "float32", ("batch",)),
                  TensorSpec("encoder_hidden_states", "float32", ("batch", text_length, d)),
                  TensorSpec("pooled_projections", "float32", ("batch", p))]

        def make(dims, gen):
            b, h, w = dims["batch"], dims["latent_height"], dims["latent_width"]
            return (_randn(gen, b, c_in, h, w), _timesteps(dims, gen), _randn(gen, b, text_length, d),
                    _randn(gen, b, p))

        info = {"in_channels": c_in, "latent_multiple": cfg.patch_size, "sample_size": cfg.sample_size,
                "joint_attention_dim": d, "pooled_projection_dim": p,
                "max_latent_size": cfg.pos_embed_max_size * cfg.patch_size if cfg.pos_embed_max_size else None}
        outputs = [TensorSpec("noise_pred", "float32", ("batch", c_out, "latent_height", "latent_width"))]
        return ComponentSpec("transformer", wrappers.SD3(model), inputs, outputs, make, info=info,
                             fuse_attention=True)

    model = load_model(plan, "unet")
    cfg = model.config
    c_in, c_out, d = cfg.in_channels, cfg.out_channels, cfg.cross_attention_dim
    if isinstance(d, (list, tuple)):
        d = d[0]
    inputs = [TensorSpec("sample", "float32", ("batch", c_in, "latent_height", "latent_width")),
              TensorSpec("timestep", "float32", ("batch",)),
              TensorSpec("encoder_hidden_states", "float32", ("batch", text_length, d))]
    info = {"in_channels": c_in, "latent_multiple": 2 ** (len(cfg.block_out_channels) - 1),
            "sample_size": cfg.sample_size, "cross_attention_dim": d}
    if cfg.addition_embed_type == "text_time":
        if pooled_size is None:
            raise ExportError("SDXL UNet needs text_encoder_2's pooled output size")
        time_dim = cfg.addition_time_embed_dim
        n_time, rem = divmod(cfg.projection_class_embeddings_input_dim - pooled_size, time_dim)
        if rem or n_time not in (5, 6):
            raise ExportError(f"UNet projection_class_embeddings_input_dim {cfg.projection_class_embeddings_input_dim} "
                              f"does not match text_embeds {pooled_size} + 5 or 6 time ids x {time_dim}")
        inputs += [TensorSpec("text_embeds", "float32", ("batch", pooled_size)),
                   TensorSpec("time_ids", "float32", ("batch", n_time))]
        info.update(addition_time_embed_dim=time_dim, time_ids_size=n_time)
        wrapper = wrappers.UNetXL(model)

        def make(dims, gen):
            import torch

            b, h, w = dims["batch"], dims["latent_height"], dims["latent_width"]
            time_ids = torch.rand(b, n_time, generator=gen) * 1024.0
            return (_randn(gen, b, c_in, h, w), _timesteps(dims, gen), _randn(gen, b, text_length, d),
                    _randn(gen, b, pooled_size), time_ids)
    elif cfg.addition_embed_type is None and cfg.class_embed_type is None:
        wrapper = wrappers.UNet(model)

        def make(dims, gen):
            b, h, w = dims["batch"], dims["latent_height"], dims["latent_width"]
            return _randn(gen, b, c_in, h, w), _timesteps(dims, gen), _randn(gen, b, text_length, d)
    else:
        raise ExportError(f"unsupported UNet conditioning (addition_embed_type={cfg.addition_embed_type!r}, "
                          f"class_embed_type={cfg.class_embed_type!r})")
    outputs = [TensorSpec("noise_pred", "float32", ("batch", c_out, "latent_height", "latent_width"))]
    return ComponentSpec("unet", wrapper, inputs, outputs, make, info=info, fuse_attention=True)


def build_vae(plan: PipelinePlan) -> tuple[ComponentSpec, ComponentSpec]:
    """(vae_decoder, vae_encoder) sharing one loaded AutoencoderKL; both kept in fp32 (the SD / SDXL VAEs
    overflow in fp16)."""
    import torch

    from . import wrappers

    vae = load_model(plan, "vae")
    cfg = vae.config
    c = cfg.latent_channels
    info = {"latent_channels": c, "vae_scale_factor": 2 ** (len(cfg.block_out_channels) - 1),
            "scaling_factor": float(cfg.scaling_factor),
            "shift_factor": float(cfg.shift_factor) if getattr(cfg, "shift_factor", None) is not None else 0.0,
            "sample_size": cfg.sample_size if isinstance(cfg.sample_size, int) else int(cfg.sample_size[0])}
    latent = ("batch", c, "latent_height", "latent_width")
    image = ("batch", cfg.in_channels, "height", "width")
    dec = ComponentSpec("vae_decoder", wrappers.VaeDecoder(vae), [TensorSpec("latent", "float32", latent)],
                        [TensorSpec("sample", "float32", ("batch", cfg.out_channels, "height", "width"))],
                        lambda dims, gen: (_randn(gen, dims["batch"], c, dims["latent_height"], dims["latent_width"]),),
                        info=info, dtype="fp32", fuse_attention=True)

    def make_image(dims, gen):
        shape = (dims["batch"], cfg.in_channels, dims["height"], dims["width"])
        return (torch.rand(*shape, generator=gen) * 2.0 - 1.0,)

    enc = ComponentSpec("vae_encoder", wrappers.VaeEncoder(vae), [TensorSpec("sample", "float32", image)],
                        [TensorSpec("latent_mean", "float32", latent)], make_image, info=info, dtype="fp32",
                        fuse_attention=True)
    return dec, enc


# ------------------------------------------------------------------------------------------- config


def prediction_type(sched: dict[str, Any]) -> str:
    if "FlowMatch" in str(sched.get("_class_name", "")):
        return "flow"
    return str(sched.get("prediction_type") or "epsilon")


def pipeline_config(plan: PipelinePlan, info: dict[str, dict[str, Any]], tokenizers: dict[str, dict[str, Any]],
                    sched: dict[str, Any]) -> dict[str, Any]:
    """The manifest ``config`` section. ``info`` maps component name -> ComponentSpec.info."""
    vae = info["vae_decoder"]
    den = info["transformer" if plan.family == "sd3" else "unet"]
    f = vae["vae_scale_factor"]
    sample = den["sample_size"]
    sample_h, sample_w = (sample, sample) if isinstance(sample, int) else tuple(sample)
    multiple = f * den["latent_multiple"]
    max_latent = den.get("max_latent_size")
    max_size = max_latent * f if max_latent else 4 * max(sample_h, sample_w) * f
    text_encoders = [n for n in ("text_encoder", "text_encoder_2", "text_encoder_3") if n in info]
    cfg: dict[str, Any] = {
        "latent_channels": vae["latent_channels"],
        "unet_in_channels": den["in_channels"],
        "vae_scale_factor": f,
        "scaling_factor": vae["scaling_factor"],
        "shift_factor": vae["shift_factor"],
        "vae_sample_size": vae["sample_size"],
        "default_height": sample_h * f,
        "default_width": sample_w * f,
        "size_multiple": multiple,
        "min_size": multiple,
        "max_size": max_size - max_size % multiple,
        "text_encoders": text_encoders,
        "prompt_embeds": "last_hidden_state" if plan.family == "sd" else "penultimate_hidden_state",
        "force_zeros_for_empty_prompt": bool(plan.model_index.get("force_zeros_for_empty_prompt", True))
        if plan.family == "sdxl" else False,
        "prediction_type": prediction_type(sched),
    }
    if plan.family == "sdxl":
        cfg.update(addition_time_embed_dim=den["addition_time_embed_dim"], time_ids_size=den["time_ids_size"],
                   requires_aesthetics_score=bool(plan.model_index.get("requires_aesthetics_score", False)))
    if plan.family == "sd3":
        present = "text_encoder_3" in info
        cfg.update(t5_present=present,
                   t5_max_length=tokenizers["tokenizer_3"]["max_length"] if present else T5_MAX_LENGTH,
                   t5_hidden_size=info["text_encoder_3"]["hidden_size"] if present else den["joint_attention_dim"],
                   joint_attention_dim=den["joint_attention_dim"],
                   pooled_projection_dim=den["pooled_projection_dim"])
    return cfg


# ----------------------------------------------------------------------------------------- exporters


def _round(x: float, m: int) -> int:
    return max(m, int(round(x / m)) * m)


class DiffusersExporter(Exporter):
    """A diffusers pipeline folder -> an engine. Subclasses declare which pipeline classes they take
    (``PIPELINES``), the model_index entries each family needs (``FAMILY_COMPONENTS``: required, optional),
    the classes allowed per entry (``EXPECTED_CLASSES``), and the components."""

    PIPELINES: dict[str, tuple[str, str]] = {}
    FAMILY_COMPONENTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
    EXPECTED_CLASSES: dict[str, tuple[str, ...]] = {}
    #: (text encoder, tokenizer) pairs that must be both present or both absent
    PAIRED: tuple[tuple[str, str], ...] = ()
    #: keyword options of ``export()`` beyond the common ones that this exporter takes
    EXTRA_OPTIONS: tuple[str, ...] = ()

    def __init__(self, plan: PipelinePlan, *, source_id: str, **options: Any):
        super().__init__(kind=plan.kind, family=plan.family, **options)
        self.plan, self.source_id = plan, source_id

    @classmethod
    def plan_folder(cls, root: str, index: dict[str, Any]) -> PipelinePlan:
        """Validate the folder ``root`` (whose checked model_index.json is ``index``). Loads no weights."""
        index_path = os.path.join(root, "model_index.json")
        check_entries(index, index_path)
        class_name = index["_class_name"]
        family, kind = cls.PIPELINES[class_name]
        required, optional = cls.FAMILY_COMPONENTS[family]
        parts: dict[str, tuple[str, str]] = {}
        for name in required + optional:
            entry = model_index_entry(index, name, index_path)
            if entry is None:
                if name in required:
                    raise ExportError(f"{class_name} folder {root} has no {name!r} "
                                      f"(model_index.json entry is {index.get(name)!r})")
                continue
            if not os.path.isdir(os.path.join(root, name)):
                raise ExportError(f"missing component folder {name!r} in {root} (listed in model_index.json)")
            expected = cls.EXPECTED_CLASSES.get(name)
            if expected and entry[1] not in expected:
                raise ExportError(f"unsupported {name} class {entry[1]!r} in {root}; expected one of "
                                  f"{', '.join(expected)}")
            parts[name] = entry
        # A text encoder without its tokenizer (or the reverse) cannot be used.
        for te, tok in cls.PAIRED:
            if (te in parts) != (tok in parts):
                raise ExportError(f"{root} has {te if te in parts else tok!r} without "
                                  f"{tok if te in parts else te!r}")
        return PipelinePlan(root, class_name, family, kind, index, parts)

    # -- declarations shared by every diffusers engine
    def source_info(self) -> dict[str, Any]:
        import diffusers
        import torch
        import transformers

        return {"id": self.source_id, "class": self.plan.class_name, "diffusers_version": diffusers.__version__,
                "transformers_version": transformers.__version__, "torch_version": torch.__version__}

    def scheduler_path(self) -> str | None:
        return os.path.join(self.plan.path("scheduler"), "scheduler_config.json")

    def tokenizer_specs(self) -> Iterable[TokenizerSpec]:
        for te, tok in TOKENIZER_OF.items():
            if self.plan.has(tok):
                yield TokenizerSpec(tok, self.plan.path(tok), self.plan.parts[tok], text_encoder=te,
                                    max_length=T5_MAX_LENGTH if tok == "tokenizer_3" else None)

    def prepare(self) -> None:
        den_cfg = model_config(self.plan, self.denoiser_name)
        vae_cfg = model_config(self.plan, "vae")
        try:
            f = 2 ** (len(vae_cfg["block_out_channels"]) - 1)
        except (KeyError, TypeError) as e:
            raise ExportError(f"{self.plan.path('vae')}/config.json has no usable block_out_channels") from e
        try:
            export_hw, parity_hw = self.latent_dims(den_cfg)
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise ExportError(f"{self.plan.path(self.denoiser_name)}/config.json: unusable sample size / block "
                              f"configuration ({type(e).__name__}: {e})") from e
        self.den_cfg, self.vae_factor = den_cfg, f
        self.export_dims = self.dims(2, export_hw, f)
        self.parity_dims = self.dims(1, parity_hw, f)

    @property
    def denoiser_name(self) -> str:
        return "transformer" if self.plan.family == "sd3" else "unet"

    def max_length(self, tokenizer: str) -> int:
        return self.manifest["tokenizers"][tokenizer]["max_length"]

    # -- shapes
    def latent_dims(self, cfg: dict[str, Any]) -> tuple[tuple[int, int], tuple[int, int]]:
        """(traced latent height/width, parity latent height/width) from the denoiser config.

        The trace uses half the model's sample size (cheaper; the graph is shape-generic), parity a
        non-square 3/4 x 5/4 of it, so a size baked into the graph cannot go unnoticed."""
        s = cfg.get("sample_size") or 64
        sh, sw = (s, s) if isinstance(s, int) else (int(s[0]), int(s[1]))
        if self.plan.family == "sd3":
            m = int(cfg.get("patch_size") or 1)
            max_side = (cfg.get("pos_embed_max_size") or 0) * m or None
        else:
            m = 2 ** (len(cfg["block_out_channels"]) - 1)
            max_side = None
        export_hw = (_round(sh / 2, m), _round(sw / 2, m))
        parity_hw = (_round(sh * 3 / 4, m), _round(sw * 5 / 4, m))
        if max_side:
            parity_hw = (min(parity_hw[0], max_side), min(parity_hw[1], max_side))
        if parity_hw == export_hw:
            parity_hw = (parity_hw[0] + m, parity_hw[1] + 2 * m)
        return export_hw, parity_hw

    @staticmethod
    def dims(batch: int, hw: tuple[int, int], f: int) -> dict[str, int]:
        return {"batch": batch, "latent_height": hw[0], "latent_width": hw[1], "height": hw[0] * f,
                "width": hw[1] * f}


class ImageExporter(DiffusersExporter):
    """SD 1.x / 2.x, SDXL, SD3 (text2img, img2img, inpainting): text encoders, UNet or SD3 transformer, VAE
    decoder and encoder."""

    PIPELINES = SUPPORTED_PIPELINES
    FAMILY_COMPONENTS = {
        "sd": (("text_encoder", "tokenizer", "unet", "vae", "scheduler"), ()),
        "sdxl": (("text_encoder_2", "tokenizer_2", "unet", "vae", "scheduler"), ("text_encoder", "tokenizer")),
        "sd3": (("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "transformer", "vae", "scheduler"),
                ("text_encoder_3", "tokenizer_3")),
    }
    EXPECTED_CLASSES = {
        "text_encoder": _CLIP_CLASSES, "text_encoder_2": _CLIP_CLASSES, "text_encoder_3": ("T5EncoderModel",),
        "unet": ("UNet2DConditionModel",), "transformer": ("SD3Transformer2DModel",), "vae": ("AutoencoderKL",),
    }
    PAIRED = (("text_encoder", "tokenizer"), ("text_encoder_3", "tokenizer_3"))
    EXTRA_OPTIONS = ("cache", "lora_branches", "lora_fuse", "controlnets")

    def __init__(self, plan: PipelinePlan, *, source_id: str, cache: Any = None, lora_branches: bool = False,
                 lora_fuse=(), controlnets=(), **options: Any):
        super().__init__(plan, source_id=source_id, **options)
        #: step-cache kinds to export graphs for: {kind: [deepcache branches]} (export(cache=...))
        self.cache = parse_export_cache(cache, plan.family)
        if self.cache and self.dtype != "fp32":
            raise ExportError("--cache graphs are exported in fp32 only for now (drop --dtype fp16)")
        self.lora_branches, self.lora_fuse = lora_branches, list(lora_fuse)
        self.controlnets = list(controlnets)

    def components(self) -> Iterator[ComponentSpec]:
        from . import lora

        plan = self.plan
        record: dict[str, Any] = {}
        with_lora = dict(fused=self.lora_fuse, branches=self.lora_branches, record=record)
        for te, tok in TOKENIZER_OF.items():
            if plan.has(te):
                yield from lora.component_specs(lambda: build_text_encoder(plan, te, self.max_length(tok)),
                                                parity_dims={"batch": 1}, **with_lora)
        if plan.family == "sd3":
            t5_len = self.max_length("tokenizer_3") if plan.has("tokenizer_3") else T5_MAX_LENGTH
            text_length = self.max_length("tokenizer") + t5_len
        else:
            text_length = self.max_length("tokenizer" if plan.has("tokenizer") else "tokenizer_2")
        pooled = self.info.get("text_encoder_2", {}).get("pooled_size")
        def build_den():
            return build_denoiser(plan, text_length=text_length, pooled_size=pooled)

        den = build_den()
        lora.fuse(den.module.model, den.name, self.lora_fuse)
        if "deepcache" in self.cache:
            yield from deepcache_components(den, den.module.model, self.cache["deepcache"], self.parity_dims)
        else:
            model = den.module.model
            yield den
            if "first_block" in self.cache:
                yield from first_block_components(den, model)
        if self.lora_branches:
            yield from lora.branch_specs(build_den, fused=self.lora_fuse, parity_dims=self.parity_dims, record=record)
        lora.record(self.manifest, record, self.lora_fuse, [n for n in self.info if not n.endswith("_lora")])
        if self.controlnets:
            from .controlnet import controlnet_specs

            den = build_den()
            lora.fuse(den.module.model, den.name, self.lora_fuse)
            specs, cn_record = controlnet_specs(self.controlnets, den, family=plan.family,
                                                dims_export=self.export_dims, dims_parity=self.parity_dims)
            yield from specs
            if self.lora_branches:  # the UNet with ControlNet residuals and LoRA branches
                from .controlnet import control_unet_spec

                den = build_den()
                lora.fuse(den.module.model, den.name, self.lora_fuse)
                shapes = [(r["channels"], r["factor"]) for r in cn_record["residuals"]]
                yield lora.branch_spec(control_unet_spec(den, shapes, plan.family == "sdxl"), den.module.model,
                                       self.parity_dims)
                cn_record["unet_lora"] = "unet_control_lora"
            self.manifest["controlnet"] = cn_record
        dec, enc = build_vae(plan)
        yield dec
        yield enc

    def config(self) -> dict[str, Any]:
        assert self.scheduler is not None
        cfg = pipeline_config(self.plan, self.info, self.manifest["tokenizers"], self.scheduler)
        if "deepcache" in self.cache:
            cfg["step_cache"] = {"deepcache": deepcache_record(self.cache["deepcache"])}
        if "first_block" in self.cache:
            cfg["step_cache"] = {"first_block": dict(FIRST_BLOCK_RECORD)}
        return cfg


def plan_pipeline(root: str) -> PipelinePlan:
    """The plan of an image pipeline folder (what :class:`ImageExporter` would export). Loads no weights."""
    index_path = os.path.join(root, "model_index.json")
    if not os.path.isfile(index_path):
        raise ExportError(f"{root} is not a diffusers pipeline folder (no model_index.json)")
    index = read_model_index(root)
    if index["_class_name"] not in SUPPORTED_PIPELINES:
        raise ExportError(f"unsupported pipeline class {index['_class_name']!r} in {index_path}; supported: "
                          + ", ".join(sorted(SUPPORTED_PIPELINES)))
    return ImageExporter.plan_folder(root, index)
