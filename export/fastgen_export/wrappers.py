"""The torch modules an engine's graphs are traced from: each wraps a diffusers / transformers model and
gives its ``forward`` the engine format's fixed input / output names and a float32 boundary.

Defined once here (this module imports torch; the exporters import it only when they build a component).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["Boundary", "ClipText", "T5Text", "UNet", "UNetXL", "SD3", "VaeDecoder", "VaeEncoder", "MotionUNet",
           "MotionUNetPerFrame", "ImageEncoder", "SVDUNet", "SVDVaeEncoder", "TemporalVaeDecoder",
           "CaptionVisionEncoder", "CrossKV", "TextDecoder", "LegacyTextDecoder", "text_per_frame", "grouped_attention",
           "cross_attention_modules", "patch_cross_attention"]


class Boundary(torch.nn.Module):
    """Float32 at the graph boundary; the wrapped model may compute in another dtype (the image wrappers
    cast their float inputs with ``cast_in``; the video ones pass them through as exported so far)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def cast_in(self, x):
        dtype = next(self.model.parameters()).dtype
        return x.to(dtype) if x.is_floating_point() else x


# ------------------------------------------------------------------------------------------ image


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
    """The posterior's mean (= its mode) of an AutoencoderKL / AutoencoderKLTemporalDecoder."""

    def forward(self, sample):
        return self.model.encode(self.cast_in(sample)).latent_dist.mean.float()


# ------------------------------------------------------------------------------------------ video


def text_per_frame(encoder_hidden_states, frames):
    """(batch, tokens, dim) text states -> (batch * frames, tokens, dim), as the motion UNet's frames see them."""
    b, length, dim = encoder_hidden_states.shape
    return encoder_hidden_states[:, None].expand(b, frames, length, dim).reshape(b * frames, length, dim)


class MotionUNet(Boundary):
    """UNetMotionModel: sample [B, C, F, h, w], timestep [B], one prompt embedding per video [B, L, D]."""

    def forward(self, sample, timestep, encoder_hidden_states):
        ehs = text_per_frame(encoder_hidden_states, sample.shape[2])
        return self.model(sample, timestep, ehs, return_dict=False)[0].float()


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


class MotionUNetPerFrame(Boundary):
    """``unet_fifo``: the motion UNet with a per-frame timestep [B, F] (FIFO-Diffusion)."""

    def forward(self, sample, timestep, encoder_hidden_states):
        ehs = text_per_frame(encoder_hidden_states, sample.shape[2])
        return _per_frame_forward(self.model, sample, timestep, ehs).float()


class ImageEncoder(Boundary):
    """CLIPVisionModelWithProjection -> image_embeds (Stable Video Diffusion's image conditioning)."""

    def forward(self, pixel_values):
        return self.model(pixel_values).image_embeds.float()


class SVDUNet(Boundary):
    def forward(self, sample, timestep, encoder_hidden_states, added_time_ids):
        return self.model(sample, timestep, encoder_hidden_states, added_time_ids, return_dict=False)[0].float()


class SVDVaeEncoder(Boundary):
    def forward(self, sample):
        return self.model.encode(sample).latent_dist.mode().float()


class TemporalVaeDecoder(Boundary):
    """One video's frames as the batch: decode(z, num_frames=len(z)) (a decode_chunk_size chunk)."""

    def forward(self, latent):
        return self.model.decode(latent, num_frames=latent.shape[0], return_dict=False)[0].float()


# ------------------------------------------------------------------------------------- captioning


def cross_attention_modules(decoder, family: str) -> list:
    """Each decoder layer's cross-attention module (the one holding the key / value projections)."""
    if family == "blip":
        return [layer.crossattention.self for layer in decoder.bert.encoder.layer]
    return [block.crossattention for block in decoder.transformer.h]


def grouped_attention(q, k, v, scale):
    """softmax(scale(q k^T)) v where the rows of ``q`` [rows, h, s, d] come in groups of rows / images
    consecutive rows per image and ``k`` / ``v`` [images, h, enc, d] hold one image each: the beams of an
    image share one set of keys / values (one matmul per image and head instead of a copy per beam).
    The same operations as transformers' eager cross-attention on the beam-expanded keys / values."""
    rows, heads, s, d = q.shape
    images = k.shape[0]
    qg = q.reshape(images, -1, heads, s, d).permute(0, 2, 1, 3, 4).reshape(images, heads, -1, d)
    w = torch.nn.functional.softmax(scale(torch.matmul(qg, k.transpose(-1, -2))), dim=-1)
    o = torch.matmul(w.to(v.dtype), v)  # [images, h, beams * s, d]
    return o.reshape(images, heads, -1, s, d).permute(0, 2, 1, 3, 4).reshape(rows, heads, s, d)


def _gpt2_cross_forward(att, orig, slot: dict):
    def forward(hidden_states, *args, **kw):
        kv = slot.get(att.layer_idx)
        if kv is None:
            return orig(hidden_states, *args, **kw)
        q = att.q_attn(hidden_states)
        q = q.view(*q.shape[:-1], -1, att.head_dim).transpose(1, 2)
        o = grouped_attention(q, kv[0], kv[1], lambda w: w * att.scaling)
        o = o.transpose(1, 2)
        o = o.reshape(*o.shape[:-2], -1).contiguous()
        return att.resid_dropout(att.c_proj(o)), None
    return forward


def _blip_cross_forward(att, orig, slot: dict):
    def forward(hidden_states, *args, **kw):
        kv = slot.get(att.layer_idx)
        if kv is None:
            return orig(hidden_states, *args, **kw)
        shape = (*hidden_states.shape[:-1], -1, att.attention_head_size)
        q = att.query(hidden_states).view(shape).transpose(1, 2)
        o = grouped_attention(q, kv[0], kv[1], lambda w: w / math.sqrt(att.attention_head_size))
        o = o.permute(0, 2, 1, 3).contiguous()
        return o.view(*o.size()[:-2], att.all_head_size), None
    return forward


def patch_cross_attention(decoder, family: str, slot: dict) -> Callable[[], None]:
    """Let the decoder's cross-attention read its keys / values from ``slot[layer]`` (when set) instead of
    projecting ``encoder_hidden_states``; returns the function that undoes the patch.

    The patched forwards repeat transformers' eager cross-attention (GPT-2: ``q_attn``, q k^T * scaling,
    softmax, @ v, ``c_proj``; BLIP: ``query``, q k^T / sqrt(d), softmax, @ v) with the keys / values of
    each row's image; with ``slot`` empty they call the original forward.
    """
    mods = cross_attention_modules(decoder, family)
    make = _blip_cross_forward if family == "blip" else _gpt2_cross_forward
    for m in mods:
        m.forward = make(m, m.forward, slot)

    def undo():
        for m in mods:
            m.__dict__.pop("forward", None)
    return undo


class CaptionVisionEncoder(torch.nn.Module):
    """pixel_values -> encoder_hidden_states (ViT-GPT2: with the encoder-to-decoder projection if any)."""

    def __init__(self, model, family: str):
        super().__init__()
        self.m, self.family = model, family

    def forward(self, pixel_values):
        if self.family == "blip":
            return self.m.vision_model(pixel_values=pixel_values)[0]
        h = self.m.encoder(pixel_values=pixel_values)[0]
        dec_cfg = self.m.decoder.config
        if (self.m.encoder.config.hidden_size != dec_cfg.hidden_size
                and getattr(dec_cfg, "cross_attention_hidden_size", None) is None):
            h = self.m.enc_to_dec_proj(h)
        return h


class CrossKV(torch.nn.Module):
    """encoder_hidden_states -> every layer's cross-attention (key, value), as transformers projects them
    on the first decoder step."""

    def __init__(self, decoder, family: str):
        super().__init__()
        self.mods = torch.nn.ModuleList(cross_attention_modules(decoder, family))
        self.family = family

    def forward(self, encoder_hidden_states):
        outs = []
        for att in self.mods:
            if self.family == "blip":
                kv_shape = (*encoder_hidden_states.shape[:-1], -1, att.attention_head_size)
                k = att.key(encoder_hidden_states).view(kv_shape).transpose(1, 2)
                v = att.value(encoder_hidden_states).view(kv_shape).transpose(1, 2)
            else:
                k, v = att.c_attn(encoder_hidden_states).split(att.split_size, dim=2)
                kv_shape = (*k.shape[:-1], -1, att.head_dim)
                k = k.view(kv_shape).transpose(1, 2)
                v = v.view(kv_shape).transpose(1, 2)
            outs += [k, v]
        return tuple(outs)


def _decoder_step(d, n_layers: int, input_ids, encoder_hidden_states, past, blip_mask: bool):
    from transformers import DynamicCache

    cache = DynamicCache(config=d.config)
    for i in range(n_layers):
        cache.update(past[2 * i], past[2 * i + 1], i)
    kw: dict[str, Any] = dict(input_ids=input_ids, encoder_hidden_states=encoder_hidden_states,
                              past_key_values=cache, use_cache=True, return_dict=True)
    if blip_mask:
        kw["encoder_attention_mask"] = torch.ones(encoder_hidden_states.shape[:2], dtype=torch.long)
    out = d(**kw)
    pkv = out.past_key_values
    self_cache = getattr(pkv, "self_attention_cache", pkv)
    presents = []
    for i in range(n_layers):
        layer = self_cache.layers[i]
        presents += [layer.keys, layer.values]
    return (out.logits[:, -1, :].float(), *presents)


class TextDecoder(torch.nn.Module):
    """input_ids, cross K/V (2 per layer, one row per image), past K/V (2 per layer) -> logits, presents.

    Needs the decoder patched with :func:`patch_cross_attention` on the same ``slot``."""

    def __init__(self, decoder, n_layers: int, slot: dict):
        super().__init__()
        self.d, self.n_layers, self.slot = decoder, n_layers, slot

    def forward(self, input_ids, *kv):
        n = self.n_layers
        cross, past = kv[:2 * n], kv[2 * n:]
        for i in range(n):
            self.slot[i] = (cross[2 * i], cross[2 * i + 1])
        try:
            # encoder_hidden_states only switches the layers' cross-attention on: the patched modules
            # read their keys / values from `slot`; no mask (BLIP's all-ones image mask adds 0)
            return _decoder_step(self.d, n, input_ids, cross[0][:, 0], past, blip_mask=False)
        finally:
            self.slot.clear()


class LegacyTextDecoder(torch.nn.Module):
    """transformers' own decoder forward with ``encoder_hidden_states`` (cross K/V projected every call): the
    reference the cached decoder is checked against, and the decoder of old-form engines."""

    def __init__(self, decoder, n_layers: int, family: str):
        super().__init__()
        self.d, self.n_layers, self.family = decoder, n_layers, family

    def forward(self, input_ids, encoder_hidden_states, *past):
        return _decoder_step(self.d, self.n_layers, input_ids, encoder_hidden_states, past,
                             blip_mask=self.family == "blip")
