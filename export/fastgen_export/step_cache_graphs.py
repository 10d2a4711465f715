"""The torch modules that fastgen_export.step_cache exports as step-cache graphs: the DeepCache full / shallow
UNets (the helper's layer numbering) and SD3's First-Block Cache head / body / out. Defined once here (this module
imports torch; step_cache imports it only when it builds the graphs)."""

from __future__ import annotations

from typing import Any

import torch

from .wrappers import text_per_frame


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
