"""Reading and validating an engine directory's fastgen.json (see docs/engine-format.md)."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import Any

from . import _schema as S
from .errors import ManifestError, ModelLoadError

MANIFEST_NAME = "fastgen.json"
FORMAT = "fastgen-engine"
SUPPORTED_FORMAT_VERSION = 1
KINDS = ("text2img", "inpaint", "captioning", "text2video", "img2video")


def safe_path(root: str, rel: Any, what: str) -> str:
    """Resolve a manifest path, refusing anything that is not a plain relative path inside ``root``."""
    if not isinstance(rel, str) or not rel:
        raise ManifestError(f"{what}: path must be a non-empty string, got {rel!r}")
    if "\x00" in rel or "\\" in rel:
        raise ManifestError(f"{what}: path {rel!r} contains a forbidden character")
    if os.path.isabs(rel) or rel.startswith("/") or (len(rel) > 1 and rel[1] == ":"):
        raise ManifestError(f"{what}: absolute path {rel!r} is not allowed; manifest paths are relative")
    parts = rel.split("/")
    if any(p in ("..", "") for p in parts):
        raise ManifestError(f"{what}: path {rel!r} escapes or is not normalised; '..' and empty parts are refused")
    root_real = os.path.realpath(root)
    full = os.path.realpath(os.path.join(root_real, *parts))
    if os.path.commonpath([root_real, full]) != root_real:
        raise ManifestError(f"{what}: path {rel!r} resolves outside the engine directory (symlink?)")
    return full


@dataclass
class ComponentSpec:
    name: str
    path: str  # absolute, validated
    rel_path: str
    inputs: dict[str, dict] = field(default_factory=dict)
    outputs: dict[str, dict] = field(default_factory=dict)
    dtype: str = "fp32"
    raw: dict = field(default_factory=dict)


@dataclass
class TokenizerSpec:
    name: str
    path: str
    max_length: int
    pad_token_id: int | None
    raw: dict = field(default_factory=dict)


@dataclass
class Manifest:
    root: str
    data: dict
    kind: str
    family: str | None
    components: dict[str, ComponentSpec]
    tokenizers: dict[str, TokenizerSpec]
    scheduler_config: dict | None
    config: dict
    identity: tuple = ()  # (st_dev, st_ino, st_size, st_mtime_ns) of the fastgen.json that was read

    def component(self, name: str) -> ComponentSpec:
        try:
            return self.components[name]
        except KeyError:
            raise ManifestError(f"engine {self.root} has no component {name!r} "
                                f"(it has: {', '.join(self.components) or 'none'})") from None

    def has(self, name: str) -> bool:
        return name in self.components

    def cfg(self, key: str, default: Any = None) -> Any:
        return self.config.get(key, default)

    @property
    def tensorrt(self) -> dict:
        return self.data.get("tensorrt") or {}


# ----------------------------------------------------------------------------------------- the schema
# One table per section; load_manifest checks a document against it in one place (validate_manifest_data).
# Known keys must have the declared type and range; unknown keys are kept unchecked (forward compatibility).

MAX_MANIFEST_BYTES = 16 * 1024 * 1024   # a larger fastgen.json is refused (read no further)
MAX_SIZE = 16384                        # config.max_size / min_size / default_* (pixels per side)
MAX_PIXELS = MAX_SIZE * MAX_SIZE        # config.max_pixels
MAX_VAE_SCALE_FACTOR = 128
MAX_CHANNELS = 4096
MAX_DIM = 1 << 20                       # hidden sizes, sequence lengths
MAX_TEXT_LENGTH = 65536                 # tokenizer / generation max_length
MAX_PREPROCESS_SIZE = 4096              # captioning preprocess size.height / width
MAX_NUM_FRAMES = 100_000

COMPONENT_DTYPES = ("fp32", "fp16", "bf16", "int8")
TENSOR_DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow", "flow_prediction", "original_sample")
FAMILIES: dict[str, tuple[str, ...]] = {
    "text2img": ("sd", "sdxl", "sd3"),
    "inpaint": ("sd", "sdxl", "sd3"),
    "text2video": ("sd",),
    "img2video": ("svd",),
    "captioning": ("vit-gpt2", "blip"),
}
#: kinds whose pipelines accept a missing / null family (text2img, inpaint, text2video: "sd")
FAMILY_OPTIONAL = ("text2img", "inpaint", "text2video", "captioning")
DIFFUSION_KINDS = ("text2img", "inpaint", "text2video", "img2video")
#: how a component's attention is written: "sdpa" = ONNX-standard MatMul / Softmax (the default, also when the
#: field is absent), "mha" = ONNX Runtime's com.microsoft.MultiHeadAttention contrib op (no TensorRT)
ATTENTIONS = ("sdpa", "mha")
DEFAULT_ATTENTION = "sdpa"

TOKEN_ID = S.Int(0, S.INT32_MAX)  # token ids: ints in [0, 2**31)


def _opt_str(**kw) -> S.Str:
    return S.Str(nullable=True, **kw)


_TENSOR = S.Obj({
    "dtype": S.Str(TENSOR_DTYPES),
    "shape": S.List(S.OneOf(S.Int(0, S.INT32_MAX), S.Str(max_len=64)), max_len=8),
})
_TENSORS = S.Map(_TENSOR, max_items=8192, nullable=True)

COMPONENT = S.Obj({
    "path": S.Str(required=True),
    "dtype": S.Str(COMPONENT_DTYPES),
    "inputs": _TENSORS,
    "outputs": _TENSORS,
    "external_data": _opt_str(),
    "parity": S.Obj(nullable=True),
    "attention": S.Str(ATTENTIONS, nullable=True),
})

TOKENIZER = S.Obj({
    "path": S.Str(required=True),
    "text_encoder": _opt_str(max_len=256),
    "class": _opt_str(max_len=256),
    "max_length": S.Int(1, MAX_TEXT_LENGTH),
    "pad_token_id": S.Int(0, S.INT32_MAX, nullable=True),
    "pad_token": _opt_str(),
    "bos_token_id": S.Int(0, S.INT32_MAX, nullable=True),
    "eos_token_id": S.Int(0, S.INT32_MAX, nullable=True),
    "padding": _opt_str(max_len=64),
    "truncation": S.Bool(),
    "padding_side": S.Str(("left", "right")),
    "truncation_side": S.Str(("left", "right")),
    "checked_prompts": S.Int(0, S.INT32_MAX),
    "special_token_ids": S.List(TOKEN_ID, max_len=MAX_TEXT_LENGTH),
    "decode_matches_transformers": S.Bool(),
})

SCHEDULER = S.Obj({"path": S.Str(required=True), "class": _opt_str(max_len=256)})


def _profile_rule(p: dict, path: str) -> None:
    mn, opt, mx = p["min"], p["opt"], p["max"]
    if not len(mn) == len(opt) == len(mx):
        raise S.SchemaError(path, f"{path}: min, opt and max must have the same length, got "
                                  f"{len(mn)}, {len(opt)}, {len(mx)}")
    if any(not a <= b <= c for a, b, c in zip(mn, opt, mx)):
        raise S.SchemaError(path, f"{path} must have min <= opt <= max in every dimension, got {mn}, {opt}, {mx}")


_DIMS = S.List(S.Int(0, S.INT32_MAX), max_len=8, required=True)
TENSORRT = S.Obj({
    "version": _opt_str(max_len=64),
    "plans": S.Map(S.Obj({
        "path": S.Str(required=True),
        "profile": S.Map(S.Obj({"min": _DIMS, "opt": _DIMS, "max": _DIMS}, rules=(_profile_rule,)),
                         nullable=True),
        "fp16": S.Bool(),
        "precision": S.Str(("fp32", "fp16", "bf16"), nullable=True),  # what the plan computes in
        "strongly_typed": S.Bool(nullable=True),  # TensorRT 11 (precision from the ONNX) vs 10's FP16 flag
        "built": _opt_str(max_len=64),
        "device": _opt_str(max_len=256),
    }), max_items=64, nullable=True),
}, nullable=True)

SOURCE = S.Obj({k: _opt_str() for k in ("id", "class", "diffusers_version", "transformers_version",
                                         "torch_version")}, nullable=True)
EXPORTER = S.Obj({**{k: _opt_str() for k in ("name", "version", "dtype", "torch_exporter", "optimize",
                                              "onnx_version", "onnxruntime_version", "created")},
                  "opset": S.Int(1, 1000, nullable=True)}, nullable=True)


# ---- config: diffusion kinds

def _size_rule(c: dict, path: str) -> None:
    """Sizes consistent with each other (with the pipelines' defaults for absent keys)."""
    f = c["vae_scale_factor"]
    m = c.get("size_multiple", f)
    if m % f:
        raise S.SchemaError(f"{path}.size_multiple", f"{path}.size_multiple must be a multiple of "
                                                     f"{path}.vae_scale_factor ({f}), got {m}")
    lo, hi = c.get("min_size", f), c.get("max_size", 4096)
    if lo > hi:
        raise S.SchemaError(f"{path}.min_size", f"{path}.min_size must be <= {path}.max_size ({hi}), got {lo}")
    for key in ("default_height", "default_width"):
        if key in c:
            v = c[key]
            if not lo <= v <= hi or v % m:
                raise S.SchemaError(f"{path}.{key}", f"{path}.{key} must be a multiple of {m} in [min_size, "
                                                     f"max_size] = [{lo}, {hi}], got {v}")
    if "max_pixels" in c and c["max_pixels"] < lo * lo:
        raise S.SchemaError(f"{path}.max_pixels", f"{path}.max_pixels must be >= min_size**2 ({lo * lo}), "
                                                  f"got {c['max_pixels']}")


DIFFUSION = {
    "latent_channels": S.Int(1, MAX_CHANNELS, required=True),
    "unet_in_channels": S.Int(1, MAX_CHANNELS),
    "vae_scale_factor": S.Int(1, MAX_VAE_SCALE_FACTOR, required=True),
    "scaling_factor": S.Num(0, lo_open=True, required=True),
    "shift_factor": S.Num(nullable=True),
    "default_height": S.Int(1, MAX_SIZE),
    "default_width": S.Int(1, MAX_SIZE),
    "size_multiple": S.Int(1, MAX_SIZE),
    "min_size": S.Int(1, MAX_SIZE),
    "max_size": S.Int(1, MAX_SIZE),
    "max_pixels": S.Int(1, MAX_PIXELS),
    "text_encoders": S.List(S.Str(max_len=256), max_len=8),
    "prompt_embeds": S.Str(("last_hidden_state", "penultimate_hidden_state")),
    "force_zeros_for_empty_prompt": S.Bool(),
    "prediction_type": S.Str(PREDICTION_TYPES),
    "default_steps": S.Int(1, 1000),
    "default_guidance_scale": S.Num(0),
    "vae_sample_size": S.Int(1, MAX_SIZE),  # the VAE's config.sample_size: its tile size for vae_tiling
    # step-cache kinds the export added graphs for (fastgen export --cache); absent: none
    "step_cache": S.Obj({
        "deepcache": S.Obj({"branches": S.Map(S.Obj({"component": S.Str(max_len=256, required=True),
                                                     "feature": S.Str(max_len=256, required=True)}),
                                              max_items=64, required=True)}),
        "first_block": S.Obj({"head": S.Str(max_len=256, required=True), "body": S.Str(max_len=256, required=True),
                              "out": S.Str(max_len=256, required=True)}),
    }),
}
SDXL = {
    "addition_time_embed_dim": S.Int(1, MAX_DIM),
    "time_ids_size": S.Int(1, 64),
    "requires_aesthetics_score": S.Bool(),
}
SD3 = {
    "t5_present": S.Bool(),
    "t5_max_length": S.Int(1, MAX_TEXT_LENGTH),
    "t5_hidden_size": S.Int(1, MAX_DIM),
    "joint_attention_dim": S.Int(1, MAX_DIM, required=True),
    "pooled_projection_dim": S.Int(1, MAX_DIM),
}
_VIDEO = {
    "default_num_frames": S.Int(1, MAX_NUM_FRAMES),
    "frames_layout": S.Str(("BCFHW", "BFCHW")),
}
TEXT2VIDEO = {
    **_VIDEO,
    "motion_max_seq_length": S.Int(1, MAX_NUM_FRAMES, required=True),
    "per_frame_timestep": S.Bool(),
}
IMG2VIDEO = {
    **_VIDEO,
    "image_size": S.Int(1, MAX_PREPROCESS_SIZE),
    "image_mean": S.List(S.Num(), length=3, required=True),
    "image_std": S.List(S.Num(0, lo_open=True), length=3, required=True),
}


# ---- config: captioning

def _token_ids_rule(c: dict, path: str) -> None:
    """Generation token ids inside the decoder's vocabulary."""
    vocab = c["decoder"].get("vocab_size")
    if vocab is None:
        return
    g = c["generation"]
    for key in ("decoder_start_token_ids", "eos_token_ids"):
        for i, t in enumerate(g.get(key) or ()):
            if t >= vocab:
                raise S.SchemaError(f"{path}.generation.{key}[{i}]", f"{path}.generation.{key}[{i}] must be < "
                                                                     f"{path}.decoder.vocab_size ({vocab}), got {t}")


CAPTIONING = {
    "preprocess": S.Obj({
        "do_resize": S.Bool(),
        "size": S.Obj({"height": S.Int(1, MAX_PREPROCESS_SIZE, required=True),
                       "width": S.Int(1, MAX_PREPROCESS_SIZE, required=True)}, required=True),
        "resample": S.Int(0, 5),  # PIL.Image.Resampling
        "do_rescale": S.Bool(),
        "rescale_factor": S.Num(0, lo_open=True),
        "do_normalize": S.Bool(),
        "image_mean": S.List(S.Num(), length=3, required=True),
        "image_std": S.List(S.Num(0, lo_open=True), length=3, required=True),
        "do_convert_rgb": S.Bool(),
    }, required=True),
    "generation": S.Obj({
        "decoder_start_token_ids": S.List(TOKEN_ID, min_len=1, max_len=1024, required=True),
        "eos_token_ids": S.List(TOKEN_ID, max_len=1024, nullable=True),
        "pad_token_id": S.Int(0, S.INT32_MAX, nullable=True),
        "max_length": S.Int(1, MAX_TEXT_LENGTH),
        "prompt": S.Str(("bos_replaces_first_drop_last",), nullable=True),
    }, required=True),
    "decoder": S.Obj({
        "num_layers": S.Int(1, 1024, required=True),
        "num_heads": S.Int(1, 1024, required=True),
        "head_dim": S.Int(1, MAX_DIM, required=True),
        "vocab_size": S.Int(1, S.INT32_MAX + 1),
        "past_names": S.Str(max_len=256),
        "present_names": S.Str(max_len=256),
        "cross_names": S.Str(max_len=256),
        "cross_attention_cache": S.Str(("per_image",)),
    }, required=True),
    "encoder_seq_len": S.Int(1, MAX_DIM),
    "encoder_hidden_size": S.Int(1, MAX_DIM),
}


def _config_schema(kind: str, family: str | None) -> S.Obj:
    if kind == "captioning":
        return S.Obj(CAPTIONING, rules=(_token_ids_rule,))
    fields = dict(DIFFUSION)
    if family == "sdxl":
        fields.update(SDXL)
    elif family == "sd3":
        fields.update(SD3)
    if kind == "text2video":
        fields.update(TEXT2VIDEO)
    elif kind == "img2video":
        fields.update(IMG2VIDEO)
    return S.Obj(fields, rules=(_size_rule,))


#: the top level; "config" is checked against _config_schema(kind, family)
TOP = S.Obj({
    "format": S.Str((FORMAT,), required=True),
    "format_version": S.Int(1, required=True),
    "kind": S.Str(KINDS, required=True),
    "family": S.Any(nullable=True),  # checked against the kind's families below
    "source": SOURCE,
    "exporter": EXPORTER,
    "components": S.Map(COMPONENT, max_items=64, required=True),
    "tokenizers": S.Map(TOKENIZER, max_items=16, nullable=True),
    "scheduler": S.Obj(nullable=True),  # {} or null: none; else checked against SCHEDULER
    "tensorrt": TENSORRT,
    # precision variants written by `fastgen optimize`: each record is checked in full (types, safe paths,
    # files, backend) by fastgen.backends.variants when it is loaded, so a damaged variant never blocks fp32
    "variants": S.Map(S.Obj(), max_items=16, nullable=True),
})


def validate_manifest_data(data: Any) -> dict:
    """Check a parsed fastgen.json against the schema; return it normalised (known int fields ``int``,
    number fields ``float``, null tokenizers / inputs / outputs / tensorrt plans as {}). Raises
    ManifestError naming the field. No file access: the exporter can call it on what it is about to write."""
    where = MANIFEST_NAME
    if not isinstance(data, dict):
        raise ManifestError(f"{where} must hold a JSON object, got {S.show(data)}")
    if data.get("format") != FORMAT:
        raise ManifestError(f"{where}: 'format' must be {FORMAT!r}, got {S.show(data.get('format'))}")
    version = data.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > SUPPORTED_FORMAT_VERSION:
        raise ManifestError(f"{where}: format_version {version} is not supported by this fastgen "
                            f"(supports up to {SUPPORTED_FORMAT_VERSION}); upgrade fastgen or re-export")
    try:
        out = TOP.check(data, "")
        kind, family = out["kind"], out.get("family")
        allowed = FAMILIES[kind]
        if family is None and kind not in FAMILY_OPTIONAL:
            raise S.SchemaError("family", f"family is required for kind {kind!r} (one of "
                                          f"{', '.join(map(repr, allowed))})")
        if family is not None and (not isinstance(family, str) or family not in allowed):
            raise S.SchemaError("family", f"family must be one of {', '.join(map(repr, allowed))} for kind "
                                          f"{kind!r}, got {S.show(family)}")
        for c in out["components"].values():
            c["inputs"] = c.get("inputs") or {}
            c["outputs"] = c.get("outputs") or {}
        out["tokenizers"] = out.get("tokenizers") or {}
        if out.get("tensorrt") is not None:
            out["tensorrt"]["plans"] = out["tensorrt"].get("plans") or {}
        if out.get("scheduler"):  # {} and null: no scheduler
            out["scheduler"] = SCHEDULER.check(out["scheduler"], "scheduler")
        elif kind in DIFFUSION_KINDS:
            raise S.SchemaError("scheduler", f"scheduler is required for kind {kind!r} but missing")
        cfg = out.get("config")
        out["config"] = _config_schema(kind, family).check({} if cfg is None else cfg, "config")
    except S.SchemaError as e:
        raise ManifestError(f"{where}: {e}") from None
    return out


# ----------------------------------------------------------------------------------------- reading

def _read_manifest_bytes(root: str) -> tuple[bytes, tuple]:
    """fastgen.json's bytes: a regular file inside ``root`` (a symlink is followed only when its target
    stays inside the engine directory), at most MAX_MANIFEST_BYTES; and the identity of the file read
    (device, inode, size, mtime from fstat of the open file, so a manifest replaced meanwhile is not mistaken
    for the one read)."""
    mpath = os.path.join(root, MANIFEST_NAME)
    if not os.path.lexists(mpath):
        raise ManifestError(f"{root} is not a fastgen engine directory: no {MANIFEST_NAME} "
                            "(create one with `fastgen export`)")
    full = safe_path(root, MANIFEST_NAME, MANIFEST_NAME)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(full, flags)
    except FileNotFoundError:
        raise ManifestError(f"{root} is not a fastgen engine directory: no {MANIFEST_NAME} "
                            "(create one with `fastgen export`)") from None
    except OSError as e:
        raise ManifestError(f"{mpath} cannot be read: {e}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ManifestError(f"{mpath} must be a regular file")
        identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with os.fdopen(fd, "rb") as f:
            fd = -1
            raw = f.read(MAX_MANIFEST_BYTES + 1)  # never more, even if the file grows meanwhile
    except OSError as e:
        raise ManifestError(f"{mpath} cannot be read: {e}") from e
    finally:
        if fd >= 0:
            os.close(fd)
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{mpath} is over {MAX_MANIFEST_BYTES} bytes, the most a manifest may have")
    return raw, identity


def load_manifest(engine_dir: str | os.PathLike) -> Manifest:
    """Load and validate ``engine_dir/fastgen.json`` (every field against the schema above), check its
    paths and that the referenced files exist, and read and check the scheduler config."""
    root = os.fspath(engine_dir)
    if not os.path.isdir(root):
        raise ManifestError(f"engine directory not found: {root}")
    mpath = os.path.join(root, MANIFEST_NAME)
    raw, identity = _read_manifest_bytes(root)
    try:
        doc = S.load_json_bytes(raw)
    except ValueError as e:
        raise ManifestError(f"{mpath} is not valid JSON: {e}") from None
    data = validate_manifest_data(doc)
    where = MANIFEST_NAME
    components: dict[str, ComponentSpec] = {}
    for name, spec in data["components"].items():
        w = f"{where}: component {name!r}"
        rel = spec["path"]
        path = safe_path(root, rel, w)
        if not os.path.isfile(path):
            raise ModelLoadError(f"component {name!r}: model file {rel} is missing from {root}")
        if spec.get("external_data") is not None:
            safe_path(root, spec["external_data"], f"{w} external_data")
        components[name] = ComponentSpec(name, path, rel, spec["inputs"], spec["outputs"],
                                         spec.get("dtype", "fp32"), spec)
    toks: dict[str, TokenizerSpec] = {}
    for name, spec in data["tokenizers"].items():
        w = f"{where}: tokenizer {name!r}"
        rel = spec["path"]
        path = safe_path(root, rel, w)
        if not os.path.isfile(path):
            raise ModelLoadError(f"tokenizer {name!r}: {rel} is missing from {root}")
        toks[name] = TokenizerSpec(name, path, spec.get("max_length", 77), spec.get("pad_token_id"), spec)
    for name, plan in ((data.get("tensorrt") or {}).get("plans") or {}).items():
        safe_path(root, plan["path"], f"{where}: tensorrt plan {name!r}")
    sched = None
    if data.get("scheduler"):
        rel = data["scheduler"]["path"]
        spath = safe_path(root, rel, f"{where}: scheduler")
        from .errors import ConfigError
        from .schedulers import load_config

        try:
            sched = load_config(spath)
        except ConfigError as e:
            raise ManifestError(f"{rel}: {e}") from e
    return Manifest(root=os.path.realpath(root), data=data, kind=data["kind"], family=data.get("family"),
                    components=components, tokenizers=toks, scheduler_config=sched, config=data["config"],
                    identity=identity)
