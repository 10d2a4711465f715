"""LoRA at export time: graphs with low-rank side inputs (``<component>_lora``), and permanent fusion.

Branch graphs. ``branch_spec(spec)`` wraps an exported component (a text encoder, the UNet or the SD3
transformer) so that every ``nn.Linear`` and ``nn.Conv2d`` of the model (attention q / k / v / out, the
feed-forward layers, the resnet / sampler / projection convolutions kohya LoRAs touch, the time embedding)
computes ``base(x) + up(down(x))``, where ``down`` [R, in(, kh, kw)] and ``up`` [out, R(, 1, 1)] are graph
inputs (``lora_down.<module>`` / ``lora_up.<module>``) whose rank R is a dynamic axis of its own per module.
The runtime feeds the sum of any set of LoRAs, each up matrix pre-multiplied by its strength and alpha / rank,
stacked along R; modules no LoRA touches get R = 0 (zero-size inputs: no work). The LoRA-free graph is kept
next to it, so an engine without LoRA runs exactly as before (see docs/engine-format.md, "lora").

Fusion. ``fuse(model, component, loras)`` adds ``scale * alpha / r * up @ down`` to the weights of a loaded
torch model, for ``fastgen export --lora FILE:SCALE``; the LoRA files are read with the runtime's parser
(:mod:`fastgen.lora`), so both paths accept the same files and name the same problems.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from fastgen import lora as rt_lora
from fastgen.errors import ExportError, FastgenError

from .spec import ComponentSpec, TensorSpec

__all__ = ["targets", "branch_spec", "branch_specs", "component_specs", "fuse", "record", "DEFAULT_MAX_RANK", "EXAMPLE_RANK", "PARITY_RANK",
           "LoraBranches"]

DEFAULT_MAX_RANK = rt_lora.DEFAULT_MAX_RANK
EXAMPLE_RANK = 2  # the rank the graph is traced with (any rank runs: the axis is dynamic)
PARITY_RANK = 3  # checked against torch at this rank and at rank 0 (zero-size inputs)


def targets(model) -> list[dict[str, Any]]:
    """Every LoRA-able module of ``model``: Linear, and Conv2d with zero padding mode and one group."""
    out = []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            out.append({"name": name, "type": "linear", "in": m.in_features, "out": m.out_features})
        elif isinstance(m, torch.nn.Conv2d) and m.groups == 1 and m.padding_mode == "zeros" \
                and not isinstance(m.padding, str):
            out.append({"name": name, "type": "conv", "in": m.in_channels, "out": m.out_channels,
                        "kernel": list(m.kernel_size)})
    return out


def _branch_forward(m, slot: dict, name: str):
    conv = isinstance(m, torch.nn.Conv2d)

    def forward(x):
        y = m._conv_forward(x, m.weight, m.bias) if conv else torch.nn.functional.linear(x, m.weight, m.bias)
        down, up = slot[name]
        if down.shape[0] == 0 and not torch.jit.is_tracing():  # torch refuses zero-channel convs; ONNX Runtime
            return y  # runs them (the rank-0 parity case checks it): here the branch adds exactly nothing
        down, up = down.to(m.weight.dtype), up.to(m.weight.dtype)
        if conv:
            h = torch.nn.functional.conv2d(x, down, None, m.stride, m.padding, m.dilation)
            return y + torch.nn.functional.conv2d(h, up)
        return y + torch.nn.functional.linear(torch.nn.functional.linear(x, down), up)
    return forward


class LoraBranches(torch.nn.Module):
    """``forward(*base_inputs, down_0, up_0, down_1, up_1, ...)``: the wrapped component with its targets'
    low-rank side inputs (the order of ``targets``)."""

    def __init__(self, wrapper, model, tlist: list[dict[str, Any]], n_base: int):
        super().__init__()
        self.wrapper, self.n_base = wrapper, n_base
        self.names = [t["name"] for t in tlist]
        self.slot: dict[str, tuple] = {}
        modules = dict(model.named_modules())
        self._patched = [modules[name] for name in self.names]
        for name, m in zip(self.names, self._patched):
            m.forward = _branch_forward(m, self.slot, name)

    def remove(self) -> None:
        """Give the model's modules their own forward back (the model is then usable on its own again)."""
        for m in self._patched:
            m.__dict__.pop("forward", None)

    def forward(self, *args):
        base, side = args[:self.n_base], args[self.n_base:]
        for i, name in enumerate(self.names):
            self.slot[name] = (side[2 * i], side[2 * i + 1])
        try:
            return self.wrapper(*base)
        finally:
            self.slot.clear()


def _side_shapes(t: dict[str, Any], rank: int | str) -> tuple[tuple, tuple]:
    if t["type"] == "conv":
        kh, kw = t["kernel"]
        return (rank, t["in"], kh, kw), (t["out"], rank, 1, 1)
    return (rank, t["in"]), (t["out"], rank)


def _side_tensors(tlist, rank: int, gen) -> list:
    """Random down / up matrices of ``rank`` for every target (small, as trained LoRAs are)."""
    out = []
    for t in tlist:
        d, u = _side_shapes(t, rank)
        fan_in = max(1, d[1] * (d[2] * d[3] if len(d) == 4 else 1))
        out += [torch.randn(*d, generator=gen) / fan_in ** 0.5, torch.randn(*u, generator=gen) * 0.1]
    return out


def branch_spec(spec: ComponentSpec, model, parity_dims: dict[str, int]) -> ComponentSpec:
    """``spec`` (a freshly built text encoder / denoiser whose torch model is ``model``) -> ``<name>_lora``,
    parity-checked at ``parity_dims`` with rank-3 and rank-0 side inputs."""
    tlist = targets(model)
    if not tlist:
        raise ExportError(f"{spec.name}: no Linear / Conv2d module to put a LoRA branch on")
    module = LoraBranches(spec.module, model, tlist, len(spec.inputs))
    inputs = list(spec.inputs)
    for i, t in enumerate(tlist):
        d, u = _side_shapes(t, f"lora_rank_{i}")
        inputs += [TensorSpec(f"lora_down.{t['name']}", "float32", d), TensorSpec(f"lora_up.{t['name']}", "float32", u)]
    base_make = spec.make_inputs

    def make(dims, gen):
        return tuple(base_make(dims, gen)) + tuple(_side_tensors(tlist, EXAMPLE_RANK, gen))

    def parity_cases(gen):
        base = tuple(base_make(parity_dims, gen))
        cases = []
        for rank in (PARITY_RANK, 0):
            inputs_ = base + tuple(_side_tensors(tlist, rank, gen))
            with torch.no_grad():
                ref = module(*inputs_)
            cases.append((f"LoRA rank {rank}", inputs_, ref if isinstance(ref, tuple) else (ref,)))
        return cases

    info = dict(spec.info, lora_targets=tlist)
    out = ComponentSpec(f"{spec.name}_lora", module, inputs, list(spec.outputs), make, info=info, dtype=spec.dtype,
                        parity_cases=parity_cases)
    out.info["lora_base"] = spec.name
    return out


def component_specs(build: Callable[[], ComponentSpec], *, fused: list, branches: bool,
                    parity_dims: dict[str, int], record: dict) -> Iterator[ComponentSpec]:
    """The component ``build()`` makes (its wrapper's ``.model`` is the torch model), with ``fused`` LoRAs ((LoraFile, scale)) fused
    into its weights, then, with ``branches``, its ``<name>_lora`` graph (built again from the source: the
    first model is freed once exported). Records the branch graph in ``record`` (the manifest's
    ``lora.components``)."""
    spec = build()
    fuse(spec.module.model, spec.name, fused)
    yield spec
    if branches:
        yield from branch_specs(build, fused=fused, parity_dims=parity_dims, record=record)


def branch_specs(build: Callable[[], ComponentSpec], *, fused: list, parity_dims: dict[str, int],
                 record: dict) -> Iterator[ComponentSpec]:
    """The ``<name>_lora`` graph of the component ``build()`` makes (a fresh model, ``fused`` LoRAs fused in),
    recorded in ``record``."""
    spec = build()
    fuse(spec.module.model, spec.name, fused)
    lspec = branch_spec(spec, spec.module.model, parity_dims)
    record[spec.name] = {"graph": lspec.name, "targets": lspec.info["lora_targets"]}
    yield lspec


def fuse(model, component: str, loras: list) -> None:
    """Add the LoRAs ((fastgen.lora.LoraFile, scale)) meant for ``component`` to ``model``'s weights."""
    if not loras:
        return
    tlist = {t["name"]: t for t in targets(model)}
    modules = dict(model.named_modules())
    for lf, scale in loras:
        try:
            updates = lf.updates(component, tlist, component if component in ("unet", "transformer") else "denoiser")
        except FastgenError as e:
            raise ExportError(f"--lora {lf.name}: {e}") from e
        with torch.no_grad():
            for name, (down, up, factor) in updates.items():
                w = modules[name].weight
                d = torch.from_numpy(down.reshape(down.shape[0], -1)).to(torch.float64)
                u = torch.from_numpy(up.reshape(up.shape[0], -1)).to(torch.float64)
                delta = (u @ d) * (float(scale) * factor)
                w += delta.reshape(w.shape).to(w.dtype)


def record(manifest: dict, branches: dict, fused: list, exported: list[str]) -> None:
    """Write the manifest's ``lora`` section (the branch graphs and their modules) and ``lora_fused`` (the files
    fused into the weights); refuse a fused LoRA that touches a component the engine does not have."""
    denoiser = "transformer" if "transformer" in exported else "unet"
    for lf, scale in fused:
        missing = lf.components(denoiser) - set(exported)
        if missing:
            raise ExportError(f"--lora {lf.name}: it is for {', '.join(sorted(missing))}, which this pipeline "
                              f"does not have (it has {', '.join(exported)}); is it made for another base model?")
    if branches:
        manifest["lora"] = {"max_rank": DEFAULT_MAX_RANK, "components": branches}
    if fused:
        manifest["lora_fused"] = [{"file": lf.name, "sha256": lf.sha256, "scale": scale} for lf, scale in fused]
