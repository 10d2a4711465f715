"""fastgen.json and scheduler_config.json validation at load: one case per bad field, each refused with a
ManifestError naming the field (see docs/engine-format.md, "Validation").

The engines here are the shipped demo engine's manifest, tokenizer and scheduler config with empty
placeholder ONNX files (load_manifest checks that component files exist, not what is in them), turned
into the other kinds / families by editing the manifest.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil

import numpy as np
import pytest

import fastgen
from fastgen import schedulers
from fastgen.errors import ConfigError, ManifestError
from fastgen.manifest import MAX_MANIFEST_BYTES, load_manifest, validate_manifest_data

DEMO = os.path.join(os.path.dirname(fastgen.__file__), "models", "demo")
with open(os.path.join(DEMO, "fastgen.json"), encoding="utf-8") as _f:
    DEMO_MANIFEST = json.load(_f)
with open(os.path.join(DEMO, "scheduler", "scheduler_config.json"), encoding="utf-8") as _f:
    DEMO_SCHEDULER = json.load(_f)

CAPTION_CONFIG = {
    "preprocess": {"do_resize": True, "size": {"height": 32, "width": 32}, "resample": 3, "do_rescale": True,
                   "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.48, 0.46, 0.41],
                   "image_std": [0.27, 0.26, 0.28], "do_convert_rgb": True},
    "generation": {"decoder_start_token_ids": [30522], "eos_token_ids": [102], "pad_token_id": 0,
                   "prompt": "bos_replaces_first_drop_last", "max_length": 20},
    "decoder": {"num_layers": 2, "num_heads": 4, "head_dim": 8, "vocab_size": 30524,
                "past_names": "past_key_values.{i}.key|value", "present_names": "present.{i}.key|value",
                "cross_names": "cross_key_values.{i}.key|value", "cross_attention_cache": "per_image"},
    "encoder_seq_len": 17, "encoder_hidden_size": 32,
}


def base(kind: str = "sd") -> dict:
    """A valid manifest of ``kind``: the demo's (text2img, sd), or it edited into another kind / family."""
    m = copy.deepcopy(DEMO_MANIFEST)
    c = m["config"]
    if kind == "sdxl":
        m["family"] = "sdxl"
        c.update(prompt_embeds="penultimate_hidden_state", force_zeros_for_empty_prompt=True,
                 addition_time_embed_dim=32, time_ids_size=6, requires_aesthetics_score=False)
    elif kind == "sd3":
        m["family"] = "sd3"
        c.update(prompt_embeds="penultimate_hidden_state", t5_present=False, t5_max_length=256,
                 t5_hidden_size=64, joint_attention_dim=64, pooled_projection_dim=128, prediction_type="flow")
    elif kind == "inpaint":
        m["kind"] = "inpaint"
        c["unet_in_channels"] = 9
    elif kind == "text2video":
        m["kind"] = "text2video"
        c.update(motion_max_seq_length=32, default_num_frames=16, frames_layout="BCFHW", per_frame_timestep=False)
    elif kind == "img2video":
        m["kind"], m["family"] = "img2video", "svd"
        for k in ("min_size", "max_size", "text_encoders", "prompt_embeds", "force_zeros_for_empty_prompt"):
            c.pop(k)
        c.update(default_num_frames=14, image_size=224, image_mean=[0.48, 0.46, 0.41],
                 image_std=[0.27, 0.26, 0.28], frames_layout="BFCHW")
    elif kind == "captioning":
        m["kind"], m["family"], m["scheduler"] = "captioning", "blip", {}
        m["config"] = copy.deepcopy(CAPTION_CONFIG)
    else:
        assert kind == "sd", kind
    return m


def write_engine(d, manifest, scheduler: dict | None = None, *, raw: str | bytes | None = None) -> str:
    """An engine directory at ``d``: the manifest (or ``raw`` text), the demo's tokenizer, a scheduler config,
    and an empty placeholder for each component path of the demo."""
    d = str(d)
    os.makedirs(d, exist_ok=True)
    for name, comp in DEMO_MANIFEST["components"].items():
        p = os.path.join(d, comp["path"])
        os.makedirs(os.path.dirname(p), exist_ok=True)
        open(p, "wb").close()
    os.makedirs(os.path.join(d, "tokenizer"), exist_ok=True)
    shutil.copy(os.path.join(DEMO, "tokenizer", "tokenizer.json"), os.path.join(d, "tokenizer", "tokenizer.json"))
    os.makedirs(os.path.join(d, "scheduler"), exist_ok=True)
    with open(os.path.join(d, "scheduler", "scheduler_config.json"), "w", encoding="utf-8") as f:
        json.dump(DEMO_SCHEDULER if scheduler is None else scheduler, f)
    if raw is None:
        raw = json.dumps(manifest)  # allow_nan: NaN / Infinity literals, as a hand-edited file may hold
    with open(os.path.join(d, "fastgen.json"), "wb") as f:
        f.write(raw.encode() if isinstance(raw, str) else raw)
    return d


def _set(doc: dict, path: str, value) -> None:
    keys = path.split(".")
    for k in keys[:-1]:
        doc = doc[k]
    if value is DELETE:
        del doc[keys[-1]]
    else:
        doc[keys[-1]] = value


DELETE = object()


def refused(tmp_path, doc, field: str, scheduler=None) -> str:
    d = write_engine(tmp_path / "engine", doc, scheduler)
    with pytest.raises(ManifestError) as ei:
        load_manifest(d)
    msg = str(ei.value)
    assert field in msg, f"{field!r} not named in: {msg}"
    return msg


# --------------------------------------------------------------------------------------- valid engines

@pytest.mark.parametrize("kind", ["sd", "sdxl", "sd3", "inpaint", "text2video", "img2video", "captioning"])
def test_valid_manifests_load(tmp_path, kind):
    m = load_manifest(write_engine(tmp_path / "engine", base(kind)))
    assert m.kind == base(kind)["kind"]
    assert m.config


def test_shipped_demo_engine_loads():
    m = load_manifest(DEMO)
    assert (m.kind, m.family) == ("text2img", "sd")
    pipe = fastgen.Pipeline.load(DEMO)
    assert pipe.vae_scale_factor == 4


def test_values_are_normalised(tmp_path):
    doc = base("img2video")
    doc["config"].update(scaling_factor=1, shift_factor=None, image_mean=[0, 1, 0])
    m = load_manifest(write_engine(tmp_path / "engine", doc))
    assert type(m.config["scaling_factor"]) is float and m.config["scaling_factor"] == 1.0
    assert m.config["shift_factor"] is None
    assert all(type(x) is float for x in m.config["image_mean"])
    assert type(m.config["vae_scale_factor"]) is int
    assert type(m.tokenizers["tokenizer"].pad_token_id) is int
    assert m.component("unet").dtype == "fp32"


def test_unknown_keys_are_kept(tmp_path):
    doc = base()
    doc["future_section"] = {"x": [1, 2]}
    doc["config"]["future_key"] = "anything"
    doc["components"]["unet"]["future"] = 3
    m = load_manifest(write_engine(tmp_path / "engine", doc))
    assert m.config["future_key"] == "anything" and m.data["future_section"] == {"x": [1, 2]}


def test_null_sections_read_as_empty(tmp_path):
    doc = base("captioning")
    doc["tokenizers"] = None
    doc["scheduler"] = None
    doc["components"]["unet"]["inputs"] = None
    doc["tensorrt"] = {"version": "10", "plans": None}
    m = load_manifest(write_engine(tmp_path / "engine", doc))
    assert m.tokenizers == {} and m.scheduler_config is None and m.component("unet").inputs == {}
    assert m.tensorrt["plans"] == {}


def test_validate_manifest_data_is_pure():
    assert validate_manifest_data(base("sdxl"))["family"] == "sdxl"
    with pytest.raises(ManifestError, match="config.scaling_factor"):
        validate_manifest_data({**base(), "config": {**base()["config"], "scaling_factor": 0}})


# --------------------------------------------------------------------------------------- the battery

NAN, INF = float("nan"), float("inf")

# (kind, dotted path, bad value, the field the message must name)
BAD = [
    # top level
    ("sd", "format_version", True, "format_version"),
    ("sd", "format_version", "1", "format_version"),
    ("sd", "format_version", 0, "format_version"),
    ("sd", "format_version", 1.0, "format_version"),
    ("sd", "kind", 5, "kind"),
    ("sd", "kind", ["text2img"], "kind"),
    ("sd", "family", ["sd"], "family"),
    ("sd", "family", {"name": "sd"}, "family"),
    ("sd", "family", 7, "family"),
    ("sd", "family", "flux", "family"),
    ("sd", "family", "svd", "family"),
    ("img2video", "family", DELETE, "family"),
    ("img2video", "family", None, "family"),
    ("captioning", "family", "sd", "family"),
    ("sd", "source", "demo", "source"),
    ("sd", "exporter", ["x"], "exporter"),
    ("sd", "exporter.opset", "18", "exporter.opset"),
    # components
    ("sd", "components", [], "components"),
    ("sd", "components", DELETE, "components"),
    ("sd", "components.unet", "unet/model.onnx", "components.unet"),
    ("sd", "components.unet.path", 5, "components.unet.path"),
    ("sd", "components.unet.path", DELETE, "components.unet.path"),
    ("sd", "components.unet.dtype", "fp8", "components.unet.dtype"),
    ("sd", "components.unet.dtype", 32, "components.unet.dtype"),
    ("sd", "components.unet.inputs", ["sample"], "components.unet.inputs"),
    ("sd", "components.unet.inputs.sample", "float32", "components.unet.inputs.sample"),
    ("sd", "components.unet.inputs.sample.dtype", "float128", "components.unet.inputs.sample.dtype"),
    ("sd", "components.unet.inputs.sample.shape", "batch,4", "components.unet.inputs.sample.shape"),
    ("sd", "components.unet.inputs.sample.shape", ["batch", -4], "components.unet.inputs.sample.shape[1]"),
    ("sd", "components.unet.inputs.sample.shape", ["batch", 4.5], "components.unet.inputs.sample.shape[1]"),
    ("sd", "components.unet.inputs.sample.shape", ["batch", True], "components.unet.inputs.sample.shape[1]"),
    ("sd", "components.unet.inputs.sample.shape", ["b"] * 9, "components.unet.inputs.sample.shape"),
    ("sd", "components.unet.outputs", 3, "components.unet.outputs"),
    ("sd", "components.unet.parity", [1], "components.unet.parity"),
    ("sd", "components.unet.external_data", 7, "components.unet.external_data"),
    # tokenizers
    ("sd", "tokenizers", ["tokenizer"], "tokenizers"),
    ("sd", "tokenizers.tokenizer", "tokenizer/tokenizer.json", "tokenizers.tokenizer"),
    ("sd", "tokenizers.tokenizer.path", None, "tokenizers.tokenizer.path"),
    ("sd", "tokenizers.tokenizer.pad_token_id", 10**30, "tokenizers.tokenizer.pad_token_id"),
    ("sd", "tokenizers.tokenizer.pad_token_id", 2**31, "tokenizers.tokenizer.pad_token_id"),
    ("sd", "tokenizers.tokenizer.pad_token_id", -1, "tokenizers.tokenizer.pad_token_id"),
    ("sd", "tokenizers.tokenizer.pad_token_id", True, "tokenizers.tokenizer.pad_token_id"),
    ("sd", "tokenizers.tokenizer.pad_token_id", "561", "tokenizers.tokenizer.pad_token_id"),
    ("sd", "tokenizers.tokenizer.pad_token_id", 561.0, "tokenizers.tokenizer.pad_token_id"),
    ("sd", "tokenizers.tokenizer.bos_token_id", 10**30, "tokenizers.tokenizer.bos_token_id"),
    ("sd", "tokenizers.tokenizer.eos_token_id", -5, "tokenizers.tokenizer.eos_token_id"),
    ("sd", "tokenizers.tokenizer.max_length", 0, "tokenizers.tokenizer.max_length"),
    ("sd", "tokenizers.tokenizer.max_length", 10**9, "tokenizers.tokenizer.max_length"),
    ("sd", "tokenizers.tokenizer.max_length", True, "tokenizers.tokenizer.max_length"),
    ("sd", "tokenizers.tokenizer.max_length", "16", "tokenizers.tokenizer.max_length"),
    ("sd", "tokenizers.tokenizer.padding_side", "middle", "tokenizers.tokenizer.padding_side"),
    ("sd", "tokenizers.tokenizer.truncation", "yes", "tokenizers.tokenizer.truncation"),
    ("sd", "tokenizers.tokenizer.special_token_ids", [1, -2], "tokenizers.tokenizer.special_token_ids[1]"),
    ("sd", "tokenizers.tokenizer.special_token_ids", 5, "tokenizers.tokenizer.special_token_ids"),
    # scheduler section
    ("sd", "scheduler", "scheduler/scheduler_config.json", "scheduler"),
    ("sd", "scheduler", DELETE, "scheduler"),
    ("sd", "scheduler.path", 3, "scheduler.path"),
    ("sd", "scheduler.class", ["DDIM"], "scheduler.class"),
    # tensorrt section
    ("sd", "tensorrt", "10.0", "tensorrt"),
    ("sd", "tensorrt", {"version": 10, "plans": {}}, "tensorrt.version"),
    ("sd", "tensorrt", {"version": "10", "plans": []}, "tensorrt.plans"),
    ("sd", "tensorrt", {"version": "10", "plans": {"unet": {"profile": {}}}}, "tensorrt.plans.unet.path"),
    ("sd", "tensorrt", {"version": "10", "plans": {"unet": {"path": "trt/unet.plan", "fp16": "yes"}}},
     "tensorrt.plans.unet.fp16"),
    ("sd", "tensorrt", {"version": "10", "plans": {"unet": {"path": "trt/unet.plan", "profile": {
        "sample": {"min": [1, 4, 8, 8], "opt": [1, 4, 16, 16], "max": [1, 4, 12, 12]}}}}},
     "tensorrt.plans.unet.profile.sample"),
    ("sd", "tensorrt", {"version": "10", "plans": {"unet": {"path": "trt/unet.plan", "profile": {
        "sample": {"min": [1, 4], "opt": [1, 4, 16], "max": [1, 4, 16]}}}}}, "tensorrt.plans.unet.profile.sample"),
    ("sd", "tensorrt", {"version": "10", "plans": {"unet": {"path": "trt/unet.plan", "profile": {
        "sample": {"min": [1, -4], "opt": [1, 4], "max": [1, 4]}}}}}, "tensorrt.plans.unet.profile.sample.min[1]"),
    # config: diffusion
    ("sd", "config", [], "config"),
    ("sd", "config", DELETE, "config.latent_channels"),
    ("sd", "config.scaling_factor", 0, "config.scaling_factor"),
    ("sd", "config.scaling_factor", -0.18, "config.scaling_factor"),
    ("sd", "config.scaling_factor", NAN, "config.scaling_factor"),
    ("sd", "config.scaling_factor", INF, "config.scaling_factor"),
    ("sd", "config.scaling_factor", True, "config.scaling_factor"),
    ("sd", "config.scaling_factor", "0.18215", "config.scaling_factor"),
    ("sd", "config.scaling_factor", None, "config.scaling_factor"),
    ("sd", "config.scaling_factor", 10**400, "config.scaling_factor"),
    ("sd", "config.scaling_factor", DELETE, "config.scaling_factor"),
    ("sd", "config.shift_factor", NAN, "config.shift_factor"),
    ("sd", "config.shift_factor", "0", "config.shift_factor"),
    ("sd", "config.vae_scale_factor", 0, "config.vae_scale_factor"),
    ("sd", "config.vae_scale_factor", -4, "config.vae_scale_factor"),
    ("sd", "config.vae_scale_factor", True, "config.vae_scale_factor"),
    ("sd", "config.vae_scale_factor", "8", "config.vae_scale_factor"),
    ("sd", "config.vae_scale_factor", 8.0, "config.vae_scale_factor"),
    ("sd", "config.vae_scale_factor", 10**12, "config.vae_scale_factor"),
    ("sd", "config.vae_scale_factor", DELETE, "config.vae_scale_factor"),
    ("sd", "config.latent_channels", 0, "config.latent_channels"),
    ("sd", "config.latent_channels", True, "config.latent_channels"),
    ("sd", "config.latent_channels", "4", "config.latent_channels"),
    ("sd", "config.unet_in_channels", 10**6, "config.unet_in_channels"),
    ("sd", "config.max_size", 10**12, "config.max_size"),
    ("sd", "config.max_size", 16384 + 16, "config.max_size"),
    ("sd", "config.max_size", 0, "config.max_size"),
    ("sd", "config.max_size", "256", "config.max_size"),
    ("sd", "config.min_size", 512, "config.min_size"),  # > max_size 256
    ("sd", "config.min_size", -16, "config.min_size"),
    ("sd", "config.max_pixels", 10**12, "config.max_pixels"),
    ("sd", "config.max_pixels", 100, "config.max_pixels"),  # < min_size**2
    ("sd", "config.max_pixels", True, "config.max_pixels"),
    ("sd", "config.default_height", 0, "config.default_height"),
    ("sd", "config.default_height", 72, "config.default_height"),   # not a multiple of size_multiple 16
    ("sd", "config.default_height", 512, "config.default_height"),  # > max_size 256
    ("sd", "config.default_height", "64", "config.default_height"),
    ("sd", "config.default_width", 8, "config.default_width"),      # < min_size 16
    ("sd", "config.default_width", 66, "config.default_width"),
    ("sd", "config.default_width", 10**12, "config.default_width"),
    ("sd", "config.size_multiple", 6, "config.size_multiple"),      # not a multiple of vae_scale_factor 4
    ("sd", "config.size_multiple", 0, "config.size_multiple"),
    ("sd", "config.text_encoders", "text_encoder", "config.text_encoders"),
    ("sd", "config.text_encoders", [1], "config.text_encoders[0]"),
    ("sd", "config.prompt_embeds", "pooled", "config.prompt_embeds"),
    ("sd", "config.force_zeros_for_empty_prompt", 0, "config.force_zeros_for_empty_prompt"),
    ("sd", "config.force_zeros_for_empty_prompt", "false", "config.force_zeros_for_empty_prompt"),
    ("sd", "config.prediction_type", "noise", "config.prediction_type"),
    ("sd", "config.default_steps", 0, "config.default_steps"),
    ("sd", "config.default_steps", True, "config.default_steps"),
    ("sd", "config.default_guidance_scale", -1, "config.default_guidance_scale"),
    ("sd", "config.default_guidance_scale", NAN, "config.default_guidance_scale"),
    ("inpaint", "config.unet_in_channels", "9", "config.unet_in_channels"),
    # sdxl / sd3
    ("sdxl", "config.time_ids_size", "6", "config.time_ids_size"),
    ("sdxl", "config.time_ids_size", 0, "config.time_ids_size"),
    ("sdxl", "config.addition_time_embed_dim", -256, "config.addition_time_embed_dim"),
    ("sdxl", "config.requires_aesthetics_score", 1, "config.requires_aesthetics_score"),
    ("sd3", "config.joint_attention_dim", DELETE, "config.joint_attention_dim"),
    ("sd3", "config.joint_attention_dim", 0, "config.joint_attention_dim"),
    ("sd3", "config.joint_attention_dim", True, "config.joint_attention_dim"),
    ("sd3", "config.t5_max_length", 10**9, "config.t5_max_length"),
    ("sd3", "config.t5_present", "no", "config.t5_present"),
    ("sd3", "config.pooled_projection_dim", 1.5, "config.pooled_projection_dim"),
    # video
    ("text2video", "config.motion_max_seq_length", DELETE, "config.motion_max_seq_length"),
    ("text2video", "config.motion_max_seq_length", 0, "config.motion_max_seq_length"),
    ("text2video", "config.motion_max_seq_length", "32", "config.motion_max_seq_length"),
    ("text2video", "config.default_num_frames", 0, "config.default_num_frames"),
    ("text2video", "config.default_num_frames", 10**12, "config.default_num_frames"),
    ("text2video", "config.frames_layout", "FCHW", "config.frames_layout"),
    ("text2video", "config.per_frame_timestep", "true", "config.per_frame_timestep"),
    ("img2video", "config.image_mean", DELETE, "config.image_mean"),
    ("img2video", "config.image_mean", [0.5, 0.5], "config.image_mean"),
    ("img2video", "config.image_mean", [0.5, 0.5, 0.5, 0.5], "config.image_mean"),
    ("img2video", "config.image_mean", ["0.5", 0.5, 0.5], "config.image_mean[0]"),
    ("img2video", "config.image_mean", 0.5, "config.image_mean"),
    ("img2video", "config.image_std", [0.3, 0, 0.3], "config.image_std[1]"),
    ("img2video", "config.image_std", [0.3, NAN, 0.3], "config.image_std[1]"),
    ("img2video", "config.image_size", 0, "config.image_size"),
    ("img2video", "config.vae_scale_factor", 0, "config.vae_scale_factor"),
    ("img2video", "config.default_height", 65, "config.default_height"),
    # captioning
    ("captioning", "config.preprocess", DELETE, "config.preprocess"),
    ("captioning", "config.preprocess", [], "config.preprocess"),
    ("captioning", "config.preprocess.size", 224, "config.preprocess.size"),
    ("captioning", "config.preprocess.size.height", 0, "config.preprocess.size.height"),
    ("captioning", "config.preprocess.size.height", "224", "config.preprocess.size.height"),
    ("captioning", "config.preprocess.size.width", 10**6, "config.preprocess.size.width"),
    ("captioning", "config.preprocess.image_mean", [0.5] * 4, "config.preprocess.image_mean"),
    ("captioning", "config.preprocess.image_mean", DELETE, "config.preprocess.image_mean"),
    ("captioning", "config.preprocess.image_std", [0.5, 0.5, 0.0], "config.preprocess.image_std[2]"),
    ("captioning", "config.preprocess.image_std", [0.5, 0.5, -1], "config.preprocess.image_std[2]"),
    ("captioning", "config.preprocess.resample", 9, "config.preprocess.resample"),
    ("captioning", "config.preprocess.resample", True, "config.preprocess.resample"),
    ("captioning", "config.preprocess.rescale_factor", 0, "config.preprocess.rescale_factor"),
    ("captioning", "config.preprocess.rescale_factor", NAN, "config.preprocess.rescale_factor"),
    ("captioning", "config.preprocess.do_resize", "yes", "config.preprocess.do_resize"),
    ("captioning", "config.preprocess.do_normalize", 1, "config.preprocess.do_normalize"),
    ("captioning", "config.generation", DELETE, "config.generation"),
    ("captioning", "config.generation.decoder_start_token_ids", [], "config.generation.decoder_start_token_ids"),
    ("captioning", "config.generation.decoder_start_token_ids", 30522, "config.generation.decoder_start_token_ids"),
    ("captioning", "config.generation.decoder_start_token_ids", [-1],
     "config.generation.decoder_start_token_ids[0]"),
    ("captioning", "config.generation.decoder_start_token_ids", [2**31],
     "config.generation.decoder_start_token_ids[0]"),
    ("captioning", "config.generation.decoder_start_token_ids", [True],
     "config.generation.decoder_start_token_ids[0]"),
    ("captioning", "config.generation.decoder_start_token_ids", [30524],  # = vocab_size
     "config.generation.decoder_start_token_ids[0]"),
    ("captioning", "config.generation.eos_token_ids", [1.5], "config.generation.eos_token_ids[0]"),
    ("captioning", "config.generation.eos_token_ids", [10**30], "config.generation.eos_token_ids[0]"),
    ("captioning", "config.generation.pad_token_id", 10**30, "config.generation.pad_token_id"),
    ("captioning", "config.generation.max_length", 0, "config.generation.max_length"),
    ("captioning", "config.generation.prompt", "prepend", "config.generation.prompt"),
    ("captioning", "config.decoder", DELETE, "config.decoder"),
    ("captioning", "config.decoder.num_layers", 0, "config.decoder.num_layers"),
    ("captioning", "config.decoder.num_layers", DELETE, "config.decoder.num_layers"),
    ("captioning", "config.decoder.num_layers", True, "config.decoder.num_layers"),
    ("captioning", "config.decoder.num_heads", "4", "config.decoder.num_heads"),
    ("captioning", "config.decoder.head_dim", -8, "config.decoder.head_dim"),
    ("captioning", "config.decoder.vocab_size", 0, "config.decoder.vocab_size"),
    ("captioning", "config.decoder.cross_attention_cache", "global", "config.decoder.cross_attention_cache"),
    ("captioning", "config.decoder.past_names", 5, "config.decoder.past_names"),
    ("captioning", "config.encoder_seq_len", 0, "config.encoder_seq_len"),
    ("captioning", "config.encoder_hidden_size", "32", "config.encoder_hidden_size"),
]


def _case_id(case):
    kind, path, value, _ = case
    v = "DELETE" if value is DELETE else repr(value)
    return f"{kind}:{path}={v[:24]}"


@pytest.mark.parametrize("kind,path,value,field", BAD, ids=[_case_id(c) for c in BAD])
def test_bad_field_refused(tmp_path, kind, path, value, field):
    doc = base(kind)
    _set(doc, path, value)
    msg = refused(tmp_path, doc, field)
    assert msg.startswith("fastgen.json")


def test_message_format(tmp_path):
    doc = base()
    doc["config"]["scaling_factor"] = 0
    assert refused(tmp_path, doc, "scaling_factor") == \
        "fastgen.json: config.scaling_factor must be a finite number > 0, got 0"


def test_format_version_too_new_says_upgrade(tmp_path):
    doc = base()
    doc["format_version"] = 2
    assert "upgrade" in refused(tmp_path, doc, "format_version")


def test_pipeline_load_refuses(tmp_path):
    """Pipeline.load goes through load_manifest: the crashes the issue lists become ManifestError."""
    for key, value in (("vae_scale_factor", 0), ("vae_scale_factor", "8"), ("scaling_factor", float("nan"))):
        doc = base()
        doc["config"][key] = value
        d = write_engine(tmp_path / f"{key}-{value}", doc)
        with pytest.raises(ManifestError, match=f"config.{key}"):
            fastgen.Pipeline.load(d)
    doc = base()
    doc["family"] = ["sd"]
    with pytest.raises(ManifestError, match="family"):
        fastgen.Pipeline.load(write_engine(tmp_path / "family", doc))


def test_unsafe_paths_refused(tmp_path):
    for path, value in (("components.unet.external_data", "../unet.onnx.data"),
                        ("tensorrt", {"version": "10", "plans": {"unet": {"path": "/etc/passwd"}}})):
        doc = base()
        _set(doc, path, value)
        d = write_engine(tmp_path / path, doc)
        with pytest.raises(ManifestError, match="external_data|tensorrt plan"):
            load_manifest(d)


# --------------------------------------------------------------------------------------- the file itself

def test_deep_nesting_refused(tmp_path):
    d = write_engine(tmp_path / "deep", None, raw="[" * 100_000)
    with pytest.raises(ManifestError, match="nesting"):
        load_manifest(d)
    # parseable, but deeper than the schema's limit, in a key nobody reads
    doc = base()
    doc["config"]["extra"] = json.loads("[" * 100 + "]" * 100)
    d = write_engine(tmp_path / "deep2", doc)
    with pytest.raises(ManifestError, match="nesting"):
        load_manifest(d)
    d = write_engine(tmp_path / "deep3", None, raw='{"a":' * 100_000 + "1" + "}" * 100_000)
    with pytest.raises(ManifestError, match="nesting"):
        load_manifest(d)


def test_oversized_file_refused(tmp_path):
    text = json.dumps(base())
    text += " " * (MAX_MANIFEST_BYTES + 1 - len(text))
    d = write_engine(tmp_path / "big", None, raw=text)
    with pytest.raises(ManifestError, match="bytes"):
        load_manifest(d)


def test_huge_integer_literal_refused(tmp_path):
    text = json.dumps(base()).replace('"vae_scale_factor": 4', '"vae_scale_factor": ' + "9" * 5000)
    d = write_engine(tmp_path / "bigint", None, raw=text)
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(d)


@pytest.mark.parametrize("raw", [b"\xff\xfe{}", b"[]", b"null", b'"fastgen"', b"{oops"])
def test_not_an_object_refused(tmp_path, raw):
    d = write_engine(tmp_path / "e", None, raw=raw)
    with pytest.raises(ManifestError):
        load_manifest(d)


def test_symlink_to_outside_refused(tmp_path):
    outside = tmp_path / "elsewhere.json"
    outside.write_text(json.dumps(base()))
    d = write_engine(tmp_path / "engine", base())
    os.remove(os.path.join(d, "fastgen.json"))
    os.symlink(outside, os.path.join(d, "fastgen.json"))
    with pytest.raises(ManifestError, match="outside"):
        load_manifest(d)


def test_symlink_inside_allowed(tmp_path):
    d = write_engine(tmp_path / "engine", base())
    os.rename(os.path.join(d, "fastgen.json"), os.path.join(d, "real.json"))
    os.symlink("real.json", os.path.join(d, "fastgen.json"))
    assert load_manifest(d).kind == "text2img"


def test_not_a_regular_file_refused(tmp_path):
    d = write_engine(tmp_path / "dir", base())
    os.remove(os.path.join(d, "fastgen.json"))
    os.mkdir(os.path.join(d, "fastgen.json"))
    with pytest.raises(ManifestError, match="regular file"):
        load_manifest(d)
    if hasattr(os, "mkfifo"):
        d = write_engine(tmp_path / "fifo", base())
        os.remove(os.path.join(d, "fastgen.json"))
        os.mkfifo(os.path.join(d, "fastgen.json"))
        with pytest.raises(ManifestError, match="regular file"):
            load_manifest(d)  # must not block waiting for a writer


# --------------------------------------------------------------------------------------- scheduler config

# (key, bad value, the key the message must name); applied to the demo's DDIM config
BAD_SCHEDULER = [
    ("beta_start", 0.03, "beta_start"),  # > beta_end 0.02: inverted betas
    ("beta_start", 0, "beta_start"),
    ("beta_start", -0.1, "beta_start"),
    ("beta_start", NAN, "beta_start"),
    ("beta_start", INF, "beta_start"),
    ("beta_start", "0.0001", "beta_start"),
    ("beta_start", True, "beta_start"),
    ("beta_end", 1.5, "beta_end"),
    ("beta_end", 0.00001, "beta_start"),  # < beta_start
    ("num_train_timesteps", 0, "num_train_timesteps"),
    ("num_train_timesteps", 10**30, "num_train_timesteps"),
    ("num_train_timesteps", 10**9, "num_train_timesteps"),
    ("num_train_timesteps", True, "num_train_timesteps"),
    ("num_train_timesteps", "1000", "num_train_timesteps"),
    ("num_train_timesteps", 999.5, "num_train_timesteps"),
    ("beta_schedule", "cosine", "beta_schedule"),
    ("beta_schedule", 1, "beta_schedule"),
    ("prediction_type", "noise", "prediction_type"),
    ("timestep_spacing", "middle", "timestep_spacing"),
    ("steps_offset", -1, "steps_offset"),
    ("clip_sample", "no", "clip_sample"),
    ("clip_sample_range", 0, "clip_sample_range"),
    ("set_alpha_to_one", 1, "set_alpha_to_one"),
    ("dynamic_thresholding_ratio", 2.0, "dynamic_thresholding_ratio"),
    ("sample_max_value", NAN, "sample_max_value"),
    ("trained_betas", [0.1, "x"], "trained_betas[1]"),
    ("trained_betas", [0.1, 0.0], "trained_betas[1]"),
    ("trained_betas", "0.1", "trained_betas"),
    ("solver_order", 4, "solver_order"),
    ("shift", 0, "shift"),
    ("sigma_min", -1.0, "sigma_min"),
    ("timestep_scaling", INF, "timestep_scaling"),
    ("original_inference_steps", 0, "original_inference_steps"),
    ("some_future_key", 10**30, "some_future_key"),  # every int reaches the C++ core as int64
    ("some_future_list", [1.0, 10**400], "some_future_list[1]"),  # and list numbers as doubles
]


@pytest.mark.parametrize("key,value,field", BAD_SCHEDULER, ids=[f"{k}={v!r:.20}" for k, v, _ in BAD_SCHEDULER])
def test_bad_scheduler_config_refused(tmp_path, key, value, field):
    sched = {**DEMO_SCHEDULER, key: value}
    msg = refused(tmp_path, base(), field, scheduler=sched)
    assert "scheduler" in msg


@pytest.mark.parametrize("extra,field", [
    ({"sigma_min": 10.0, "sigma_max": 1.0}, "sigma_min"),
    ({"use_dynamic_shifting": True, "base_image_seq_len": 4096, "max_image_seq_len": 4096}, "max_image_seq_len"),
    ({"use_dynamic_shifting": True, "base_image_seq_len": 5000}, "max_image_seq_len"),
])
def test_scheduler_cross_field_rules(tmp_path, extra, field):
    refused(tmp_path, base(), field, scheduler={**DEMO_SCHEDULER, **extra})


def test_scheduler_config_nesting_refused(tmp_path):
    d = write_engine(tmp_path / "engine", base())
    with open(os.path.join(d, "scheduler", "scheduler_config.json"), "w") as f:
        f.write('{"x": ' + "[" * 100_000 + "}")
    with pytest.raises(ManifestError, match="nesting"):
        load_manifest(d)


def test_scheduler_config_size_capped(tmp_path):
    d = write_engine(tmp_path / "engine", base())
    text = json.dumps(DEMO_SCHEDULER)
    with open(os.path.join(d, "scheduler", "scheduler_config.json"), "w") as f:
        f.write(text + " " * (schedulers.MAX_CONFIG_BYTES + 1 - len(text)))
    with pytest.raises(ManifestError, match="bytes"):
        load_manifest(d)


def test_scheduler_defaults_follow_the_class():
    # LCM's own defaults (0.00085, 0.012) make beta_start 0.01 alone fine; DDIM's (0.0001, 0.02) do not
    # allow 0.03
    schedulers.validate_config({"_class_name": "LCMScheduler", "beta_start": 0.01})
    with pytest.raises(ConfigError, match="beta_start"):
        schedulers.validate_config({"_class_name": "LCMScheduler", "beta_start": 0.02})
    with pytest.raises(ConfigError, match="beta_start"):
        schedulers.validate_config({"_class_name": "DDIMScheduler", "beta_start": 0.03})
    # null is "the default", as in diffusers
    schedulers.validate_config({"_class_name": "DDIMScheduler", "beta_start": None, "trained_betas": None})


def test_from_config_validates():
    with pytest.raises(ConfigError, match="beta_start"):
        schedulers.from_config(DEMO_SCHEDULER, beta_start="0.1")
    with pytest.raises(ConfigError, match="beta_start"):
        schedulers.from_config({**DEMO_SCHEDULER, "beta_start": 0.05, "beta_end": 0.01})
    # numpy scalars (API overrides) are numbers: accepted and passed on as Python numbers
    s = schedulers.from_config(DEMO_SCHEDULER, beta_end=np.float32(0.012), num_train_timesteps=np.int64(1000))
    assert type(s.config["beta_end"]) is float and type(s.config["num_train_timesteps"]) is int
    assert math.isclose(s.config["beta_end"], 0.012, rel_tol=1e-6)
    # integral floats are ints to the C++ core, so they are accepted for int keys
    schedulers.from_config({**DEMO_SCHEDULER, "num_train_timesteps": 1000.0})


def test_inverted_betas_refused_by_pipeline(tmp_path):
    d = write_engine(tmp_path / "engine", base(), {**DEMO_SCHEDULER, "beta_start": 0.02, "beta_end": 0.0001})
    with pytest.raises(ManifestError, match="beta_start"):
        fastgen.Pipeline.load(d)
