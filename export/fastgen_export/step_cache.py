"""Graphs for step caching (``fastgen export ... --cache KIND``).

First-Block Cache (SD3): the transformer in three more graphs, as diffusers' apply_first_block_cache splits
it: ``transformer_fbc_head`` (embeddings and the first block; outputs its hidden / encoder states, the
time embedding and the first block's residual), ``transformer_fbc_body`` (the other blocks and the output
layers; also outputs the hidden-state residual of the blocks after the first) and ``transformer_fbc_out``
(the output layers alone, over the first block's output plus the cached residual: a cached step). The
plain ``transformer`` stays for calls without the cache.

DeepCache (UNets): the full UNet gets one extra output per exported branch, the deep feature its cached
steps reuse, and each branch gets a small "shallow" UNet taking that feature as an input. Branch ``b``
is the authors' ``cache_branch_id``: block ``b // 3``, layer ``b % 3``, counted from the outside in as
their ``DeepCacheSDHelper`` counts them. At a cached step their helper recomputes exactly the time
embedding, ``conv_in``, the down layers before the branch, the up layers from the branch outwards and
the output layers; every other layer returns its output of the last full step. So the shallow graph
computes those layers, and its input is the hidden state the first recomputed up layer read at the last
full step (which the full graph outputs as ``deep_feature_b{b}``).

The layers follow diffusers' blocks step for step (resnet, then attention, per layer; the downsampler
is a down block's last layer, the upsampler runs after an up block's layers); the full graph's
``noise_pred`` is checked against the UNet's own forward at export.
"""

from __future__ import annotations

from typing import Any

from fastgen.errors import ExportError

from .spec import ComponentSpec, TensorSpec

__all__ = ["parse_export_cache", "deepcache_components", "deepcache_record", "first_block_components",
           "FIRST_BLOCK_RECORD"]

DEEP_FEATURE_INPUT = "deep_feature"  # fastgen.pipelines.step_cache.DEEP_FEATURE_INPUT
EXPORT_KINDS = ("deepcache", "first_block")


def parse_export_cache(cache: Any, family: str) -> dict[str, list[int]]:
    """``--cache`` values ("deepcache", "deepcache:branch=3", "first_block") -> {kind: [branches]}."""
    from fastgen.cache import parse_cache
    from fastgen.errors import InvalidArgumentError

    if cache is None:
        return {}
    items = [cache] if isinstance(cache, str) else list(cache)
    out: dict[str, list[int]] = {}
    for item in items:
        try:
            spec = parse_cache(item)
        except InvalidArgumentError as e:
            raise ExportError(f"--cache {item!r}: {e}") from None
        if spec.kind not in EXPORT_KINDS:
            raise ExportError(f"--cache {spec.kind!r} needs no export option (every SD3 engine supports it); "
                              f"export options: {', '.join(EXPORT_KINDS)}")
        want = ("sd3",) if spec.kind == "first_block" else ("sd", "sdxl")
        if family not in want:
            raise ExportError(f"--cache {spec.kind} applies to {' / '.join(w.upper() for w in want)} engines, "
                              f"not {family!r}")
        branches = out.setdefault(spec.kind, [])
        if spec.kind == "deepcache" and spec["branch"] not in branches:
            branches.append(spec["branch"])
    return out


def _modules():
    from .step_cache_graphs import Full, Shallow

    return Full, Shallow


def deepcache_components(unet_spec: ComponentSpec, model, branches: list[int],
                         parity_dims: dict[str, int]) -> list[ComponentSpec]:
    """The UNet spec with the deep-feature outputs (its parity held to the UNet's own forward), and one
    shallow UNet per branch."""
    import torch

    Full, Shallow = _modules()
    n = len(model.up_blocks)
    for b in branches:
        if not 0 <= b < 3 * n:
            raise ExportError(f"--cache deepcache:branch={b}: this UNet has {n} blocks, so branch must be in "
                              f"[0, {3 * n - 1}]")
    variant = ("motion" if hasattr(model.down_blocks[0], "motion_modules")
               else "xl" if model.config.addition_embed_type == "text_time" else "sd")
    original, make = unet_spec.module, unet_spec.make_inputs
    full = Full(model, variant, branches)
    # batch x frames rows for video
    lat = ("feature_batch", "feature_channels", "feature_height", "feature_width")
    feature_specs = [TensorSpec(f"deep_feature_b{b}", "float32", tuple(f"{d}_b{b}" for d in lat)) for b in branches]

    def full_cases(gen):
        inputs = make(parity_dims, gen)
        with torch.no_grad():
            ref = original(*inputs)  # the UNet's own forward (diffusers)
            feats = full(*inputs)[1:]
        return [("", inputs, (ref,) + tuple(feats))]

    specs = [ComponentSpec(unet_spec.name, full, unet_spec.inputs, unet_spec.outputs + feature_specs, make,
                           info=unet_spec.info, parity_cases=full_cases,
                           fuse_attention=unet_spec.fuse_attention)]
    for idx, b in enumerate(branches):
        shallow = Shallow(model, variant, b)
        # graphs keep only the inputs they use: without attention among its layers, no text input
        keep = [i for i, t in enumerate(unet_spec.inputs) if shallow.uses_text or t.name != "encoder_hidden_states"]

        def make_shallow(dims, gen, idx=idx, keep=keep):
            base = make(dims, gen)
            with torch.no_grad():
                feature = full(*base)[1 + idx]
            return tuple(base[i] for i in keep) + (feature,)

        inputs = [unet_spec.inputs[i] for i in keep] + [TensorSpec(DEEP_FEATURE_INPUT, "float32",
                                                                     feature_specs[idx].shape)]
        specs.append(ComponentSpec(f"unet_deepcache_b{b}", shallow, inputs, unet_spec.outputs, make_shallow,
                                   info={"deepcache_branch": b}, fuse_attention=unet_spec.fuse_attention))
    return specs


def deepcache_record(branches: list[int]) -> dict[str, Any]:
    """config.step_cache.deepcache of the manifest."""
    return {"branches": {str(b): {"component": f"unet_deepcache_b{b}", "feature": f"deep_feature_b{b}"}
                         for b in branches}}


# ------------------------------------------------------------------------------------------ First-Block Cache

FIRST_BLOCK_RECORD = {"head": "transformer_fbc_head", "body": "transformer_fbc_body", "out": "transformer_fbc_out"}


def _sd3_modules():
    from .step_cache_graphs import Body, Head, Out

    return Head, Body, Out


def first_block_components(spec: ComponentSpec, model) -> list[ComponentSpec]:
    """The three First-Block Cache graphs of an SD3 transformer ``spec`` (its inputs and example maker)."""
    import torch

    if len(model.transformer_blocks) < 2:
        raise ExportError("--cache first_block needs a transformer with at least 2 blocks")
    Head, Body, Out = _sd3_modules()
    head, body, out = Head(model), Body(model), Out(model)
    make, noise = spec.make_inputs, spec.outputs[0]
    tokens = ("batch", "image_tokens", "inner_dim")
    t_hidden = TensorSpec("head_hidden", "float32", tokens)
    t_enc = TensorSpec("head_encoder", "float32", ("batch", "text_tokens", "caption_dim"))
    t_temb = TensorSpec("temb", "float32", ("batch", "inner_dim"))
    latent = spec.inputs[0]  # hidden_states: the body and out graphs read only its height and width

    def head_outputs(dims, gen):
        base = make(dims, gen)
        with torch.no_grad():
            return base, head(*base)

    def make_body(dims, gen):
        base, (h, e, temb, _) = head_outputs(dims, gen)
        return h, e, temb, base[0]

    def make_out(dims, gen):
        base, (h, _, temb, _) = head_outputs(dims, gen)
        return h + 0.1 * torch.randn(h.shape, generator=gen), temb, base[0]

    return [
        ComponentSpec(FIRST_BLOCK_RECORD["head"], head, spec.inputs,
                      [t_hidden, t_enc, t_temb, TensorSpec("head_residual", "float32", tokens)], make,
                      fuse_attention=spec.fuse_attention),
        ComponentSpec(FIRST_BLOCK_RECORD["body"], body, [t_hidden, t_enc, t_temb, latent],
                      [noise, TensorSpec("tail_residual", "float32", tokens)], make_body,
                      fuse_attention=spec.fuse_attention),
        ComponentSpec(FIRST_BLOCK_RECORD["out"], out, [TensorSpec("hidden", "float32", tokens), t_temb, latent],
                      [noise], make_out, fuse_attention=spec.fuse_attention),
    ]
