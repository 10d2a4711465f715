"""ControlNet at export time: ``controlnet_<i>`` graphs and the UNet with residual inputs (``unet_control``).

``fastgen export SRC OUT --controlnet DIR`` (repeatable; diffusers ``ControlNetModel`` folders, SD 1.x / 2.x and
SDXL) writes one ``controlnet_<i>/model.onnx`` per ControlNet: inputs ``sample``, ``timestep``,
``encoder_hidden_states``, ``controlnet_cond`` [B, 3, H, W] (the control image in [0, 1]) and, for SDXL,
``text_embeds`` / ``time_ids``; outputs ``down_block_res_samples.<k>`` and ``mid_block_res_sample`` at
conditioning scale 1 (the runtime scales them, as diffusers' ``conditioning_scale`` / ``guess_mode`` do, and
sums them over ControlNets as ``MultiControlNetModel`` does). ``unet_control`` is the UNet with the inputs
``down_block_additional_residuals.<k>`` and ``mid_block_additional_residual``; the LoRA-free, control-free
``unet`` stays and runs every request without a control image.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from fastgen.errors import ExportError

from .spec import ComponentSpec, TensorSpec
from .wrappers import Boundary

__all__ = ["load_controlnet", "controlnet_specs", "control_unet_spec", "ControlNetGraph", "UNetControl"]


def _added(model, text_embeds, time_ids):
    return {"text_embeds": text_embeds, "time_ids": time_ids} if text_embeds is not None else None


class ControlNetGraph(Boundary):
    """(sample, timestep, encoder_hidden_states, controlnet_cond[, text_embeds, time_ids]) -> residuals."""

    def forward(self, sample, timestep, encoder_hidden_states, controlnet_cond, text_embeds=None, time_ids=None):
        down, mid = self.model(sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale=1.0,
                               guess_mode=False, added_cond_kwargs=_added(self.model, text_embeds, time_ids),
                               return_dict=False)
        return (*[d.float() for d in down], mid.float())


class UNetControl(Boundary):
    """The UNet with ``n_down`` down-block residuals and the mid-block residual added (diffusers' inputs)."""

    def __init__(self, model, n_down: int, xl: bool):
        super().__init__(model)
        self.n_down, self.xl = n_down, xl

    def forward(self, sample, timestep, encoder_hidden_states, *rest):
        cond = None
        if self.xl:
            cond, rest = {"text_embeds": rest[0], "time_ids": rest[1]}, rest[2:]
        down, mid = list(rest[:self.n_down]), rest[self.n_down]
        return self.model(sample, timestep, encoder_hidden_states, added_cond_kwargs=cond,
                          down_block_additional_residuals=down, mid_block_additional_residual=mid,
                          return_dict=False)[0].float()


def load_controlnet(folder: str):
    from diffusers import ControlNetModel

    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise ExportError(f"--controlnet {folder}: not a diffusers ControlNetModel folder (no config.json)")
    try:
        model = ControlNetModel.from_pretrained(folder, torch_dtype=torch.float32)
    except Exception as e:
        raise ExportError(f"--controlnet {folder}: cannot load a ControlNetModel: {e}") from e
    return model.eval().requires_grad_(False)


def _residual_shapes(model, unet_spec: ComponentSpec, dims) -> list[tuple[int, int]]:
    """(channels, downsampling factor) of each residual, from one torch run at ``dims``."""
    gen = torch.Generator().manual_seed(0)
    base = unet_spec.make_inputs(dims, gen)
    f = dims["height"] // dims["latent_height"]
    cond = torch.rand(dims["batch"], 3, dims["latent_height"] * f, dims["latent_width"] * f, generator=gen)
    with torch.no_grad():
        outs = ControlNetGraph(model)(*base[:3], cond, *base[3:])
    return [(o.shape[1], dims["latent_height"] // o.shape[2]) for o in outs]


def controlnet_specs(folders: list[str], unet_spec: ComponentSpec, *, family: str, dims_export: dict,
                     dims_parity: dict) -> tuple[list[ComponentSpec], dict[str, Any]]:
    """The ``controlnet_<i>`` specs and the ``unet_control`` spec (built on ``unet_spec``'s fresh model), and
    the manifest's ``controlnet`` record."""
    if family not in ("sd", "sdxl"):
        raise ExportError(f"ControlNet export supports SD 1.x / 2.x and SDXL pipelines, not {family!r}")
    xl = family == "sdxl"
    unet = unet_spec.module.model
    base_inputs = list(unet_spec.inputs)
    specs, record = [], {"controlnets": []}
    shapes = None
    for i, folder in enumerate(folders):
        model = load_controlnet(folder)
        if model.config.cross_attention_dim != unet.config.cross_attention_dim or \
                list(model.config.block_out_channels) != list(unet.config.block_out_channels):
            raise ExportError(f"--controlnet {folder}: made for another base model (block_out_channels "
                              f"{list(model.config.block_out_channels)}, cross_attention_dim "
                              f"{model.config.cross_attention_dim}; the UNet has {list(unet.config.block_out_channels)}"
                              f", {unet.config.cross_attention_dim})")
        s = _residual_shapes(model, unet_spec, dims_export)
        if shapes is not None and s != shapes:
            raise ExportError(f"--controlnet {folder}: its residuals {s} differ from the first ControlNet's {shapes}")
        shapes = s
        cond = TensorSpec("controlnet_cond", "float32", ("batch", 3, "height", "width"))
        inputs = base_inputs[:3] + [cond] + base_inputs[3:]
        outputs = [TensorSpec(f"down_block_res_samples.{k}", "float32", ("batch", c, f"res_height_{k}",
                                                                         f"res_width_{k}"))
                   for k, (c, _) in enumerate(s[:-1])]
        outputs.append(TensorSpec("mid_block_res_sample", "float32", ("batch", s[-1][0], "res_height_mid",
                                                                       "res_width_mid")))
        make_base = unet_spec.make_inputs

        def make(dims, gen, make_base=make_base):
            b = make_base(dims, gen)
            f = dims["height"] // dims["latent_height"]
            c = torch.rand(dims["batch"], 3, dims["latent_height"] * f, dims["latent_width"] * f, generator=gen)
            return (*b[:3], c, *b[3:])

        name = f"controlnet_{i}"
        specs.append(ComponentSpec(name, ControlNetGraph(model), inputs, outputs, make,
                                   info={"folder": os.path.basename(os.path.normpath(folder))}))
        record["controlnets"].append({"component": name, "source": os.path.basename(os.path.normpath(folder)),
                                      "global_pool_conditions": bool(getattr(model.config, "global_pool_conditions",
                                                                             False))})
    record["unet"] = "unet_control"
    record["residuals"] = [{"channels": c, "factor": f} for c, f in shapes]
    return specs + [control_unet_spec(unet_spec, shapes, xl)], record


def control_unet_spec(unet_spec: ComponentSpec, shapes: list[tuple[int, int]], xl: bool) -> ComponentSpec:
    """``unet_control``: ``unet_spec``'s model taking residuals of ``shapes`` ((channels, factor) each)."""
    unet = unet_spec.module.model
    base_inputs = list(unet_spec.inputs)
    n_down = len(shapes) - 1
    res_inputs = [TensorSpec(f"down_block_additional_residuals.{k}", "float32",
                             ("batch", c, f"res_height_{k}", f"res_width_{k}")) for k, (c, _) in enumerate(shapes[:-1])]
    res_inputs.append(TensorSpec("mid_block_additional_residual", "float32",
                                 ("batch", shapes[-1][0], "res_height_mid", "res_width_mid")))
    make_base = unet_spec.make_inputs

    def make_unet(dims, gen):
        b = make_base(dims, gen)
        h, w = dims["latent_height"], dims["latent_width"]
        res = [torch.randn(dims["batch"], c, h // f, w // f, generator=gen) * 0.1 for c, f in shapes]
        return (*b, *res)

    return ComponentSpec("unet_control", UNetControl(unet, n_down, xl), base_inputs + res_inputs,
                         list(unet_spec.outputs), make_unet, info=dict(unet_spec.info))
