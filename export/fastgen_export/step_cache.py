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


def _down_layers(block) -> list:
    """A down block's layers in the helper's numbering: (kind, resnet, attention or None, motion module or
    None) per layer, then the downsampler as layer len(resnets)."""
    attns = list(getattr(block, "attentions", None) or [])
    motions = list(getattr(block, "motion_modules", None) or [])
    layers: list = [("res", r, attns[j] if attns else None, motions[j] if motions else None)
                    for j, r in enumerate(block.resnets)]
    if block.downsamplers is not None:
        layers.append(("down", block.downsamplers, None, None))
    return layers


def _modules():
    import torch

    from .wrappers import text_per_frame

    class _Base(torch.nn.Module):
        """``variant``: "sd" (UNet2DConditionModel), "xl" (with text_embeds / time_ids) or "motion"
        (UNetMotionModel: sample [B, C, F, h, w], the layers see B * F images)."""

        def __init__(self, unet, variant: str):
            super().__init__()
            self.unet, self.variant = unet, variant

        def cast_in(self, x):
            dtype = next(self.unet.parameters()).dtype
            return x.to(dtype) if x is not None and x.is_floating_point() else x

        def prepare(self, inputs):
            """Graph inputs -> (conv_in input [N, C, h, w], time embedding [N, D], text states or None,
            frames or None, the remaining inputs)."""
            u = self.unet
            n_cond = 5 if self.variant == "xl" else 3
            sample, timestep, ehs = (self.cast_in(x) for x in inputs[:3])
            rest = inputs[n_cond:]
            if self.variant == "motion":
                b, c, f = sample.shape[:3]
                emb = u.time_embedding(u.time_proj(timestep.expand(b)).to(dtype=u.dtype), None)
                emb = emb.repeat_interleave(f, dim=0)
                x = sample.permute(0, 2, 1, 3, 4).reshape((b * f, c) + sample.shape[3:])
                return x, emb, None if ehs is None else text_per_frame(ehs, f), f, rest
            cond = {}
            if self.variant == "xl":
                cond = {"text_embeds": self.cast_in(inputs[3]), "time_ids": self.cast_in(inputs[4])}
            emb = u.time_embedding(u.get_time_embed(sample=sample, timestep=timestep), None)
            aug = u.get_aug_embed(emb=emb, encoder_hidden_states=ehs, added_cond_kwargs=cond)
            emb = emb + aug if aug is not None else emb
            if u.time_embed_act is not None:
                emb = u.time_embed_act(emb)
            ehs = u.process_encoder_hidden_states(encoder_hidden_states=ehs, added_cond_kwargs=cond)
            return sample, emb, ehs, None, rest

        @staticmethod
        def _layer(h, resnet, attn, motion, emb, ehs, f):
            h = resnet(h, emb)
            if attn is not None:
                h = attn(h, encoder_hidden_states=ehs, return_dict=False)[0]
            if motion is not None:
                h = motion(h, num_frames=f)
            return h

        def run_down_layer(self, layer, h, emb, ehs, f):
            kind, mod, attn, motion = layer
            if kind == "down":
                for d in mod:
                    h = d(h)
                return h
            return self._layer(h, mod, attn, motion, emb, ehs, f)

        def run_up_layer(self, block, j, h, res, emb, ehs, f):
            attns = getattr(block, "attentions", None)
            motions = getattr(block, "motion_modules", None)
            return self._layer(torch.cat([h, res], dim=1), block.resnets[j], attns[j] if attns else None,
                               motions[j] if motions else None, emb, ehs, f)

        def run_mid(self, h, emb, ehs, f):
            mid = self.unet.mid_block
            if mid is None:
                return h
            if hasattr(mid, "motion_modules"):
                return mid(h, emb, encoder_hidden_states=ehs, num_frames=f)
            if getattr(mid, "has_cross_attention", False):
                return mid(h, emb, encoder_hidden_states=ehs)
            return mid(h, emb)

        def first_up_layer(self, block, layer_id: int) -> int:
            """Index of the first resnet the helper recomputes in the branch's up block."""
            return max(0, len(block.resnets) - 1 - layer_id)

        def finish(self, h, f):
            u = self.unet
            if u.conv_norm_out:
                h = u.conv_act(u.conv_norm_out(h))
            h = u.conv_out(h)
            if f is not None:  # [B * F, C, h, w] -> [B, C, F, h, w]
                h = h[None, :].reshape((-1, f) + h.shape[1:]).permute(0, 2, 1, 3, 4)
            return h.float()

    class Full(_Base):
        """The UNet's forward, also returning the deep feature of each branch."""

        def __init__(self, unet, variant, branches):
            super().__init__(unet, variant)
            self.branches = list(branches)

        def forward(self, *inputs):
            u = self.unet
            x, emb, ehs, f, _ = self.prepare(inputs)
            h = u.conv_in(x)
            res = [h]
            for block in u.down_blocks:
                for layer in _down_layers(block):
                    h = self.run_down_layer(layer, h, emb, ehs, f)
                    res.append(h)
            h = self.run_mid(h, emb, ehs, f)
            n = len(u.up_blocks)
            feats: dict[int, Any] = {}
            for i, block in enumerate(u.up_blocks):
                k = n - 1 - i
                for j in range(len(block.resnets)):
                    for b in self.branches:
                        if b // 3 == k and j == self.first_up_layer(block, b % 3):
                            feats[b] = h
                    h = self.run_up_layer(block, j, h, res.pop(), emb, ehs, f)
                if block.upsamplers is not None:
                    for up in block.upsamplers:
                        h = up(h, None)
            return (self.finish(h, f),) + tuple(feats[b].float() for b in self.branches)

    class Shallow(_Base):
        """A cached step of DeepCacheSDHelper: the layers around the branch over the given deep feature."""

        def __init__(self, unet, variant, branch):
            super().__init__(unet, variant)
            self.block_id, self.layer_id = branch // 3, branch % 3
            k, n = self.block_id, len(unet.up_blocks)
            down = [layer[2] is not None for bi, block in enumerate(unet.down_blocks)
                    for li, layer in enumerate(_down_layers(block)) if bi < k or (bi == k and li < self.layer_id)]
            up = [bool(getattr(block, "attentions", None)) for i, block in enumerate(unet.up_blocks) if n - 1 - i <= k]
            #: whether the recomputed layers attend to the text (else encoder_hidden_states is no input)
            self.uses_text = any(down) or any(up)

        def forward(self, *inputs):
            u = self.unet
            if not self.uses_text:
                inputs = inputs[:2] + (None,) + inputs[2:]
            x, emb, ehs, f, (feature,) = self.prepare(inputs)
            h = u.conv_in(x)
            res: list = [h]
            for bi, block in enumerate(u.down_blocks):
                for li, layer in enumerate(_down_layers(block)):
                    # the helper skips down layers from (block_id, layer_id) on; their outputs feed only
                    # skipped up layers, so they stay None here
                    fresh = bi < self.block_id or (bi == self.block_id and li < self.layer_id)
                    h = self.run_down_layer(layer, h, emb, ehs, f) if fresh else None
                    res.append(h)
            h = self.cast_in(feature)
            n = len(u.up_blocks)
            for i, block in enumerate(u.up_blocks):
                k = n - 1 - i
                first = self.first_up_layer(block, self.layer_id) if k == self.block_id else 0
                for j in range(len(block.resnets)):
                    r = res.pop()
                    if k > self.block_id or j < first:
                        continue
                    h = self.run_up_layer(block, j, h, r, emb, ehs, f)
                if k <= self.block_id and block.upsamplers is not None:
                    for up in block.upsamplers:
                        h = up(h, None)
            return self.finish(h, f)

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
    import torch

    class _SD3Part(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def output(self, hidden, temb, like):
            """norm_out, proj_out and the unpatchify of SD3Transformer2DModel.forward (sizes from ``like``)."""
            m = self.model
            height, width = like.shape[-2:]
            h = m.proj_out(m.norm_out(hidden, temb))
            p = m.config.patch_size
            h = h.reshape(h.shape[0], height // p, width // p, p, p, m.out_channels)
            h = torch.einsum("nhwpqc->nchpwq", h)
            return h.reshape(h.shape[0], m.out_channels, (height // p) * p, (width // p) * p).float()

    class Head(_SD3Part):
        def forward(self, hidden_states, timestep, encoder_hidden_states, pooled_projections):
            m = self.model
            h = m.pos_embed(hidden_states).contiguous()
            temb = m.time_text_embed(timestep, pooled_projections)
            e = m.context_embedder(encoder_hidden_states)
            e1, h1 = m.transformer_blocks[0](hidden_states=h, encoder_hidden_states=e, temb=temb)
            return h1, e1, temb, h1 - h

    class Body(_SD3Part):
        def forward(self, head_hidden, head_encoder, temb, hidden_states):
            h, e = head_hidden, head_encoder
            for block in self.model.transformer_blocks[1:]:
                e, h = block(hidden_states=h, encoder_hidden_states=e, temb=temb)
            return self.output(h, temb, hidden_states), h - head_hidden

    class Out(_SD3Part):
        def forward(self, hidden, temb, hidden_states):
            return self.output(hidden, temb, hidden_states)

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
