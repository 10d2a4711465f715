"""What a diffusers pipeline folder becomes: its plan, its exportable components and its constants.

``plan_pipeline(folder)`` validates a ``save_pretrained`` folder (``model_index.json``, a supported
pipeline class, every component folder present) without loading weights. ``build_component`` loads
one model and wraps it in a module whose ``forward`` has the engine format's fixed input / output
names and a float32 boundary (fp16 models cast inside). ``pipeline_config`` derives the manifest's
``config`` section from the component configs.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastgen.errors import ExportError

__all__ = ["SUPPORTED_PIPELINES", "PipelinePlan", "TensorSpec", "ComponentSpec", "plan_pipeline",
           "build_text_encoder", "build_denoiser", "build_vae", "pipeline_config",
           "scheduler_config", "read_json", "T5_MAX_LENGTH"]

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
# family -> (required model_index entries, optional ones)
_FAMILY_COMPONENTS = {
    "sd": (("text_encoder", "tokenizer", "unet", "vae", "scheduler"), ()),
    "sdxl": (("text_encoder_2", "tokenizer_2", "unet", "vae", "scheduler"), ("text_encoder", "tokenizer")),
    "sd3": (("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "transformer", "vae", "scheduler"),
            ("text_encoder_3", "tokenizer_3")),
}
_EXPECTED_CLASSES = {
    "text_encoder": _CLIP_CLASSES, "text_encoder_2": _CLIP_CLASSES, "text_encoder_3": ("T5EncoderModel",),
    "unet": ("UNet2DConditionModel",), "transformer": ("SD3Transformer2DModel",), "vae": ("AutoencoderKL",),
}


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


def read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ExportError(f"cannot read {path}: {e}") from e
    if not isinstance(data, dict):
        raise ExportError(f"{path} is not a JSON object")
    return data


def plan_pipeline(root: str) -> PipelinePlan:
    """Validate a diffusers pipeline folder and say what will be exported. Loads no weights."""
    index_path = os.path.join(root, "model_index.json")
    if not os.path.isfile(index_path):
        raise ExportError(f"{root} is not a diffusers pipeline folder (no model_index.json)")
    index = read_json(index_path)
    class_name = index.get("_class_name")
    if class_name not in SUPPORTED_PIPELINES:
        raise ExportError(f"unsupported pipeline class {class_name!r} in {index_path}; supported: "
                          + ", ".join(sorted(SUPPORTED_PIPELINES)))
    family, kind = SUPPORTED_PIPELINES[class_name]
    required, optional = _FAMILY_COMPONENTS[family]
    parts: dict[str, tuple[str, str]] = {}
    for name in required + optional:
        entry = index.get(name)
        if not (isinstance(entry, list) and len(entry) == 2 and entry[0] and entry[1]):
            if name in required:
                raise ExportError(f"{class_name} folder {root} has no {name!r} (model_index.json entry is {entry!r})")
            continue
        if not os.path.isdir(os.path.join(root, name)):
            raise ExportError(f"missing component folder {name!r} in {root} (listed in model_index.json)")
        library, cls = str(entry[0]), str(entry[1])
        expected = _EXPECTED_CLASSES.get(name)
        if expected and cls not in expected:
            raise ExportError(f"unsupported {name} class {cls!r} in {root}; expected one of {', '.join(expected)}")
        parts[name] = (library, cls)
    # A text encoder without its tokenizer (or the reverse) cannot be used.
    for te, tok in (("text_encoder", "tokenizer"), ("text_encoder_3", "tokenizer_3")):
        if (te in parts) != (tok in parts):
            raise ExportError(f"{root} has {te if te in parts else tok!r} without "
                              f"{tok if te in parts else te!r}")
    return PipelinePlan(root, class_name, family, kind, index, parts)


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
    try:
        cls = getattr(importlib.import_module(library), cls_name)
    except (ImportError, AttributeError) as e:
        raise ExportError(f"cannot import {library}.{cls_name} for {part!r}: {e}") from e
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


# ---------------------------------------------------------------------------------------- components


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # ONNX boundary dtype: "float32" | "int64"
    shape: tuple[int | str, ...]  # ints are fixed, strings are dynamic axes

    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}


#: dims -> generator -> inputs in the order of ``ComponentSpec.inputs``
InputMaker = Callable[[dict[str, int], Any], tuple]


@dataclass
class ComponentSpec:
    name: str
    module: Any  # torch.nn.Module with the fixed boundary
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    make_inputs: InputMaker
    info: dict[str, Any] = field(default_factory=dict)  # facts for pipeline_config

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        axes = {t.name: t.dynamic_axes() for t in self.inputs + self.outputs}
        return {k: v for k, v in axes.items() if v}


def _boundary_modules():
    import torch

    class Boundary(torch.nn.Module):
        """Float32 at the graph boundary; the wrapped model may compute in another dtype."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def cast_in(self, x):
            dtype = next(self.model.parameters()).dtype
            return x.to(dtype) if x.is_floating_point() else x

    class ClipText(Boundary):
        def forward(self, input_ids):
            out = self.model(input_ids=input_ids, output_hidden_states=True)
            pooled = out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output
            return out.last_hidden_state.float(), out.hidden_states[-2].float(), pooled.float()

    class T5Text(Boundary):
        def forward(self, input_ids):
            return self.model(input_ids=input_ids).last_hidden_state.float()

    class UNet(Boundary):
        def forward(self, sample, timestep, encoder_hidden_states):
            return self.model(self.cast_in(sample), timestep, self.cast_in(encoder_hidden_states),
                              return_dict=False)[0].float()

    class UNetXL(Boundary):
        def forward(self, sample, timestep, encoder_hidden_states, text_embeds, time_ids):
            cond = {"text_embeds": self.cast_in(text_embeds), "time_ids": self.cast_in(time_ids)}
            return self.model(self.cast_in(sample), timestep, self.cast_in(encoder_hidden_states),
                              added_cond_kwargs=cond, return_dict=False)[0].float()

    class SD3(Boundary):
        def forward(self, hidden_states, timestep, encoder_hidden_states, pooled_projections):
            return self.model(hidden_states=self.cast_in(hidden_states), timestep=timestep,
                              encoder_hidden_states=self.cast_in(encoder_hidden_states),
                              pooled_projections=self.cast_in(pooled_projections), return_dict=False)[0].float()

    class VaeDecoder(Boundary):
        def forward(self, latent):
            return self.model.decode(self.cast_in(latent), return_dict=False)[0].float()

    class VaeEncoder(Boundary):
        def forward(self, sample):
            return self.model.encode(self.cast_in(sample)).latent_dist.mean.float()

    return dict(ClipText=ClipText, T5Text=T5Text, UNet=UNet, UNetXL=UNetXL, SD3=SD3, VaeDecoder=VaeDecoder,
                VaeEncoder=VaeEncoder)


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
    model = load_model(plan, name)
    cfg = model.config
    mods = _boundary_modules()
    ids = TensorSpec("input_ids", "int64", ("batch", max_length))
    tok_ids = dict(length=max_length, vocab=cfg.vocab_size, bos=getattr(cfg, "bos_token_id", None),
                   eos=getattr(cfg, "eos_token_id", None), pad=getattr(cfg, "pad_token_id", None))
    if name == "text_encoder_3":
        d = cfg.d_model
        outputs = [TensorSpec("last_hidden_state", "float32", ("batch", max_length, d))]
        return ComponentSpec(name, mods["T5Text"](model), [ids], outputs,
                             lambda dims, gen: (_token_ids(dims, gen, **{**tok_ids, "bos": None}),),
                             info={"hidden_size": d})
    d = cfg.hidden_size
    p = getattr(cfg, "projection_dim", d) if type(model).__name__ == "CLIPTextModelWithProjection" else d
    outputs = [TensorSpec("last_hidden_state", "float32", ("batch", max_length, d)),
               TensorSpec("penultimate_hidden_state", "float32", ("batch", max_length, d)),
               TensorSpec("pooled", "float32", ("batch", p))]
    return ComponentSpec(name, mods["ClipText"](model), [ids], outputs,
                         lambda dims, gen: (_token_ids(dims, gen, **tok_ids),),
                         info={"hidden_size": d, "pooled_size": p})


def _timesteps(dims, gen):
    import torch

    return torch.rand(dims["batch"], generator=gen, dtype=torch.float32) * 999.0


def build_denoiser(plan: PipelinePlan, *, text_length: int, pooled_size: int | None) -> ComponentSpec:
    """The UNet (SD, SDXL) or SD3 transformer. ``text_length`` is the fixed prompt-embedding length."""
    mods = _boundary_modules()
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
        return ComponentSpec("transformer", mods["SD3"](model), inputs, outputs, make, info=info)

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
        wrapper = mods["UNetXL"](model)

        def make(dims, gen):
            import torch

            b, h, w = dims["batch"], dims["latent_height"], dims["latent_width"]
            time_ids = torch.rand(b, n_time, generator=gen) * 1024.0
            return (_randn(gen, b, c_in, h, w), _timesteps(dims, gen), _randn(gen, b, text_length, d),
                    _randn(gen, b, pooled_size), time_ids)
    elif cfg.addition_embed_type is None and cfg.class_embed_type is None:
        wrapper = mods["UNet"](model)

        def make(dims, gen):
            b, h, w = dims["batch"], dims["latent_height"], dims["latent_width"]
            return _randn(gen, b, c_in, h, w), _timesteps(dims, gen), _randn(gen, b, text_length, d)
    else:
        raise ExportError(f"unsupported UNet conditioning (addition_embed_type={cfg.addition_embed_type!r}, "
                          f"class_embed_type={cfg.class_embed_type!r})")
    outputs = [TensorSpec("noise_pred", "float32", ("batch", c_out, "latent_height", "latent_width"))]
    return ComponentSpec("unet", wrapper, inputs, outputs, make, info=info)


def build_vae(plan: PipelinePlan) -> tuple[ComponentSpec, ComponentSpec]:
    """(vae_decoder, vae_encoder) sharing one loaded AutoencoderKL."""
    import torch

    mods = _boundary_modules()
    vae = load_model(plan, "vae")
    cfg = vae.config
    c = cfg.latent_channels
    info = {"latent_channels": c, "vae_scale_factor": 2 ** (len(cfg.block_out_channels) - 1),
            "scaling_factor": float(cfg.scaling_factor),
            "shift_factor": float(cfg.shift_factor) if getattr(cfg, "shift_factor", None) is not None else 0.0}
    latent = ("batch", c, "latent_height", "latent_width")
    image = ("batch", cfg.in_channels, "height", "width")
    dec = ComponentSpec("vae_decoder", mods["VaeDecoder"](vae), [TensorSpec("latent", "float32", latent)],
                        [TensorSpec("sample", "float32", ("batch", cfg.out_channels, "height", "width"))],
                        lambda dims, gen: (_randn(gen, dims["batch"], c, dims["latent_height"], dims["latent_width"]),),
                        info=info)

    def make_image(dims, gen):
        shape = (dims["batch"], cfg.in_channels, dims["height"], dims["width"])
        return (torch.rand(*shape, generator=gen) * 2.0 - 1.0,)

    enc = ComponentSpec("vae_encoder", mods["VaeEncoder"](vae), [TensorSpec("sample", "float32", image)],
                        [TensorSpec("latent_mean", "float32", latent)], make_image, info=info)
    return dec, enc


# ------------------------------------------------------------------------------------------- config


def scheduler_config(plan: PipelinePlan) -> dict[str, Any]:
    path = os.path.join(plan.path("scheduler"), "scheduler_config.json")
    if not os.path.isfile(path):
        raise ExportError(f"missing scheduler config {path}")
    return read_json(path)


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
