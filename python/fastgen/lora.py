"""LoRA files (diffusers / PEFT / kohya ``.safetensors``) and their per-request low-rank feeds.

An engine exported with LoRA branches (``fastgen export --lora-branches``) holds, next to each LoRA-free
text encoder / denoiser graph, a ``<component>_lora`` graph in which every Linear / Conv2d module adds
``up(down(x))`` with ``down`` / ``up`` fed per call (rank a dynamic axis). Any set of LoRAs with strengths is
one low-rank update of summed rank: downs stacked along the rank axis, each up scaled by
``strength * alpha / rank`` and stacked the same way. Modules no LoRA touches get rank 0. With no LoRA the
pipelines run the LoRA-free graphs, so their images are the LoRA-free engine's, bit for bit.

Files are read with the ``safetensors`` numpy API (never pickle) and cached by content hash (the file is
re-read only when its size / mtime / inode change). Key formats:

- diffusers / PEFT: ``unet.<module>.lora_A.weight`` / ``lora_B.weight`` (``transformer.`` for SD3,
  ``text_encoder.``, ``text_encoder_2.``, ``text_encoder_3.``; bare ``base_model.model.<module>`` means the
  denoiser), alphas from the ``lora_adapter_metadata`` header entry diffusers writes (``<component>.lora_alpha``,
  ``alpha_pattern``, ``use_rslora``) or per-module ``.alpha`` tensors; none: alpha = rank (diffusers' rule);
- older diffusers: ``<module>.lora.down.weight`` / ``.lora.up.weight`` and the attention-processor form
  ``attn1.processor.to_q_lora.down.weight``;
- kohya: ``lora_unet_<module_with_underscores>.lora_down.weight`` / ``lora_up.weight`` / ``.alpha``,
  ``lora_te_`` (``lora_te1_``, ``lora_te2_``, ``lora_te3_``) for the text encoders. UNet names must be the
  diffusers module names (as sd-scripts writes them for SD 1.x / 2.x); LDM / SGM block names
  (``input_blocks``, ``middle_block``, ``output_blocks``) are refused with a message.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import os
import re
import struct
import threading
from typing import Any

import numpy as np

from ._args import check_float
from .errors import InvalidArgumentError, ManifestError, UnsupportedError

__all__ = ["DEFAULT_MAX_RANK", "MAX_LORAS", "LoraFile", "EngineLoras", "load_lora", "check_loras", "parse_lora_arg"]

#: The most summed rank at any one module a request may feed (every LoRA of the request together). The
#: graphs take any rank (a dynamic axis); this bounds the per-call cost: at rank 128 the branch of an SD 1.5
#: 320-wide projection costs 2 x 128 / 320 = 0.8x the projection itself. Recorded per engine
#: (``lora.max_rank``).
DEFAULT_MAX_RANK = 128
MAX_LORAS = 16  # LoRA files per request
MAX_SCALE = 100.0
MAX_FILE_BYTES = 4 << 30
_CACHE_FILES = 32  # parsed files kept (by content hash)
_CACHE_FEEDS = 8  # combined feeds kept per engine (by the request's (hash, strength) list)

#: key prefix -> component ("denoiser": the engine's unet or transformer)
_DOTTED_PREFIXES = {"unet": "unet", "transformer": "transformer", "text_encoder": "text_encoder",
                    "text_encoder_2": "text_encoder_2", "text_encoder_3": "text_encoder_3",
                    "base_model.model": "denoiser"}
_KOHYA_PREFIXES = {"lora_unet_": "denoiser", "lora_transformer_": "denoiser", "lora_te_": "text_encoder",
                   "lora_te1_": "text_encoder", "lora_te2_": "text_encoder_2", "lora_te3_": "text_encoder_3"}
_SUFFIXES = {".lora_A.weight": "down", ".lora_B.weight": "up", ".lora_down.weight": "down",
             ".lora_up.weight": "up", ".lora.down.weight": "down", ".lora.up.weight": "up", ".alpha": "alpha"}
_DORA = (".lora_magnitude_vector", ".dora_scale")


class _Module:
    __slots__ = ("component", "path", "kohya", "down", "up", "alpha")

    def __init__(self, component: str, path: str, kohya: bool):
        self.component, self.path, self.kohya = component, path, kohya
        self.down = self.up = self.alpha = None


def _split_key(key: str) -> tuple[str, str, bool, str]:
    """(component, module path, kohya naming, role) of one tensor key; InvalidArgumentError if unknown."""
    for dora in _DORA:
        if dora in key:
            raise UnsupportedError(f"key {key!r} is a DoRA magnitude: DoRA LoRAs are not supported")
    role = next((r for s, r in _SUFFIXES.items() if key.endswith(s)), None)
    if role is None:
        raise InvalidArgumentError(f"key {key!r} is not a LoRA tensor (expected lora_A / lora_B, lora_down / "
                                   "lora_up, lora.down / lora.up weights or .alpha)")
    stem = key[:-len(next(s for s in _SUFFIXES if key.endswith(s)))]
    for prefix, comp in _KOHYA_PREFIXES.items():
        if stem.startswith(prefix):
            return comp, stem[len(prefix):], True, role
    for prefix in sorted(_DOTTED_PREFIXES, key=len, reverse=True):
        if stem.startswith(prefix + "."):
            path = stem[len(prefix) + 1:]
            m = re.fullmatch(r"(.*)\.processor\.(to_q|to_k|to_v|to_out)_lora", path)
            if m:  # diffusers' old attention-processor LoRA layout
                path = f"{m.group(1)}.{m.group(2)}" + (".0" if m.group(2) == "to_out" else "")
            return _DOTTED_PREFIXES[prefix], path, False, role
    raise InvalidArgumentError(f"key {key!r} names no model part (expected a unet. / transformer. / "
                               "text_encoder. prefix, or kohya's lora_unet_ / lora_te_)")


def _read_header_metadata(data: bytes) -> dict:
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    return header.get("__metadata__") or {}


class LoraFile:
    """One parsed LoRA file: its modules' down / up matrices and alphas, by component."""

    def __init__(self, name: str, sha256: str, tensors: dict[str, np.ndarray], metadata: dict):
        self.name, self.sha256 = name, sha256
        self._peft = self._peft_metadata(metadata)
        mods: dict[tuple[str, str, bool], _Module] = {}
        for key, arr in tensors.items():
            comp, path, kohya, role = _split_key(key)
            m = mods.setdefault((comp, path, kohya), _Module(comp, path, kohya))
            if not np.issubdtype(arr.dtype, np.floating):
                raise InvalidArgumentError(f"tensor {key!r} has dtype {arr.dtype}, expected floating point")
            if not np.isfinite(arr).all():
                raise InvalidArgumentError(f"tensor {key!r} holds NaN or infinite values (damaged file?)")
            if role == "alpha":
                if arr.size != 1:
                    raise InvalidArgumentError(f"tensor {key!r} must be a scalar alpha, got shape {list(arr.shape)}")
                m.alpha = float(arr.reshape(()))
            else:
                if arr.ndim not in (2, 4):
                    raise InvalidArgumentError(f"tensor {key!r} has shape {list(arr.shape)}; LoRA matrices are "
                                               "2-D (linear) or 4-D (conv)")
                setattr(m, role, arr if arr.dtype == np.float32 else arr.astype(np.float32))
        if not mods:
            raise InvalidArgumentError("the file holds no tensors")
        for m in mods.values():
            if m.down is None or m.up is None:
                raise InvalidArgumentError(f"module {m.path!r} ({m.component}) lacks its "
                                           f"{'up' if m.down is not None else 'down'} matrix")
            if m.down.shape[0] != m.up.shape[1]:
                raise InvalidArgumentError(f"module {m.path!r}: down has rank {m.down.shape[0]} but up has "
                                           f"{m.up.shape[1]}")
            if m.up.ndim == 4 and m.up.shape[2:] != (1, 1):
                raise UnsupportedError(f"module {m.path!r}: an up matrix with kernel {list(m.up.shape[2:])} "
                                       "(LyCORIS-style) is not supported; LoRA ups are 1x1")
        self.modules = list(mods.values())
        self.max_rank = max(m.down.shape[0] for m in self.modules)

    @staticmethod
    def _peft_metadata(metadata: dict) -> dict[str, dict]:
        raw = metadata.get("lora_adapter_metadata")
        if not raw:
            return {}
        try:
            flat = json.loads(raw)
        except ValueError as e:
            raise InvalidArgumentError(f"lora_adapter_metadata is not valid JSON ({e})") from None
        out: dict[str, dict] = {}
        for k, v in flat.items() if isinstance(flat, dict) else ():
            comp, _, field = k.partition(".")
            out.setdefault(comp, {})[field] = v
        return out

    def __repr__(self) -> str:
        return f"<LoraFile {self.name} sha256={self.sha256[:12]} modules={len(self.modules)}>"

    def components(self, denoiser: str) -> set[str]:
        return {denoiser if m.component == "denoiser" else m.component for m in self.modules}

    def _factor(self, m: _Module, component: str, rank: int) -> float:
        """alpha / rank (alpha / sqrt(rank) with rsLoRA) as diffusers applies it."""
        cfg = self._peft.get(component) or self._peft.get("unet" if component == "transformer" else component, {})
        if cfg.get("use_dora"):
            raise UnsupportedError("DoRA LoRAs are not supported")
        alpha = m.alpha
        if alpha is None and cfg:
            alpha = cfg.get("lora_alpha")
            for pattern, a in (cfg.get("alpha_pattern") or {}).items():
                if re.match(rf"(.*\.)?({pattern})$", m.path):
                    alpha = a
                    break
        if alpha is None:
            return 1.0
        return float(alpha) / (math.sqrt(rank) if cfg.get("use_rslora") else rank)

    def updates(self, component: str, targets: dict[str, dict], denoiser: str | None = None
                ) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
        """{module: (down, up, alpha-factor)} of this file for ``component`` (whose LoRA-able modules are
        ``targets``), shaped for the graph; InvalidArgumentError for a module that matches nothing or does not
        fit. ``denoiser``: the name the engine's denoiser has (``unet`` / ``transformer``)."""
        denoiser = denoiser or component
        kohya_names = {n.replace(".", "_"): n for n in targets}
        out = {}
        for m in self.modules:
            comp = denoiser if m.component == "denoiser" else m.component
            if comp != component:
                continue
            name = _find(m, targets, kohya_names)
            if name is None:
                hint = ""
                if m.kohya and re.match(r"(input_blocks|middle_block|output_blocks)_", m.path):
                    hint = " (LDM / SGM block names: convert the LoRA to diffusers names first)"
                raise InvalidArgumentError(f"module {m.path!r} matches nothing in this engine's {component}{hint}; "
                                           "is the LoRA made for another base model?")
            out[name] = (*_fit(m, targets[name], component), self._factor(m, component, m.down.shape[0]))
        return out


def _find(m: _Module, targets: dict, kohya_names: dict) -> str | None:
    """The target a module's path names; CLIP paths may carry ``text_model.`` (transformers 4's module tree;
    transformers 5's CLIPTextModel has no such level)."""
    sep = "_" if m.kohya else "."
    for path in (m.path, m.path[len("text_model" + sep):] if m.path.startswith("text_model" + sep) else None):
        name = kohya_names.get(path) if m.kohya else path
        if name is not None and name in targets:
            return name
    return None


def _fit(m: _Module, t: dict, component: str) -> tuple[np.ndarray, np.ndarray]:
    """down / up reshaped to the target's graph inputs ([r, in(, kh, kw)], [out, r(, 1, 1)])."""
    down, up = m.down, m.up
    r = down.shape[0]
    conv = t["type"] == "conv"
    kh, kw = t["kernel"] if conv else (1, 1)
    if down.ndim == 4 and (not conv) and down.shape[2:] == (1, 1):
        down = down.reshape(r, -1)
    if up.ndim == 4:
        up = up.reshape(up.shape[0], r)
    if conv and down.ndim == 2 and (kh, kw) == (1, 1):
        down = down.reshape(r, -1, 1, 1)
    want_down = (r, t["in"], kh, kw) if conv else (r, t["in"])
    if tuple(down.shape) != want_down or up.shape[0] != t["out"]:
        raise InvalidArgumentError(
            f"module {m.path!r} does not fit this engine's {component}: the LoRA has down {list(m.down.shape)} / "
            f"up {list(m.up.shape)}, the module takes {t['in']} -> {t['out']}"
            f"{f' with a {kh}x{kw} kernel' if conv else ''}; is the LoRA made for another base model?")
    if conv:
        up = up.reshape(t["out"], r, 1, 1)
    return np.ascontiguousarray(down), np.ascontiguousarray(up)


# ------------------------------------------------------------------------------------------ loading

_FILES: "collections.OrderedDict[str, LoraFile]" = collections.OrderedDict()
_HASHES: dict[tuple, str] = {}
_LOCK = threading.Lock()


def load_lora(path: Any) -> LoraFile:
    """Read and parse a ``.safetensors`` LoRA (cached by content hash); InvalidArgumentError naming the problem."""
    if not isinstance(path, (str, os.PathLike)) or isinstance(path, bytes):
        raise InvalidArgumentError(f"a LoRA must be a .safetensors path, got {type(path).__name__}")
    path = os.fspath(path)
    name = os.path.basename(path) or path
    if not path.endswith(".safetensors"):
        raise InvalidArgumentError(f"LoRA {path!r}: only .safetensors files are read (never pickle)")
    try:
        st = os.stat(path)
    except OSError as e:
        raise InvalidArgumentError(f"LoRA {path!r}: cannot read it ({e.strerror})") from None
    if not os.path.isfile(path):
        raise InvalidArgumentError(f"LoRA {path!r} is not a regular file")
    if st.st_size > MAX_FILE_BYTES:
        raise InvalidArgumentError(f"LoRA {path!r} is {st.st_size} bytes; the limit is {MAX_FILE_BYTES}")
    ident = (os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    with _LOCK:
        sha = _HASHES.get(ident)
        if sha is not None and sha in _FILES:
            _FILES.move_to_end(sha)
            return _FILES[sha]
    with open(path, "rb") as f:
        data = f.read()
    sha = hashlib.sha256(data).hexdigest()
    with _LOCK:
        cached = _FILES.get(sha)
    if cached is None:
        cached = _parse(name, sha, data)
    with _LOCK:
        _HASHES[ident] = sha
        _FILES[sha] = cached
        _FILES.move_to_end(sha)
        while len(_FILES) > _CACHE_FILES:
            _FILES.popitem(last=False)
    return cached


def _parse(name: str, sha: str, data: bytes) -> LoraFile:
    from safetensors.numpy import load

    try:
        tensors = load(data)
        metadata = _read_header_metadata(data)
    except Exception as e:  # safetensors raises its own SafetensorError (and others) on a damaged file
        raise InvalidArgumentError(f"LoRA {name!r} is not a valid safetensors file (damaged or truncated?): "
                                   f"{str(e).splitlines()[0][:200]}") from None
    try:
        return LoraFile(name, sha, tensors, metadata)
    except InvalidArgumentError as e:
        raise type(e)(f"LoRA {name!r}: {e}") from None
    except UnsupportedError as e:
        raise UnsupportedError(f"LoRA {name!r}: {e}") from None


def check_loras(loras: Any) -> tuple[tuple[LoraFile, float], ...]:
    """A request's ``loras=``: {path: strength} (or a list of paths / (path, strength) pairs) -> parsed files
    with finite strengths. None / {} -> ()."""
    if loras is None:
        return ()
    if isinstance(loras, dict):
        items = list(loras.items())
    elif isinstance(loras, (list, tuple)):
        items = [(x, 1.0) if isinstance(x, (str, os.PathLike)) else x for x in loras]
        if not all(isinstance(x, (list, tuple)) and len(x) == 2 for x in items):
            raise InvalidArgumentError("loras must be {path: strength}, or a list of paths or (path, strength) pairs")
    else:
        raise InvalidArgumentError(f"loras must be {{path: strength}}, got {type(loras).__name__}")
    if len(items) > MAX_LORAS:
        raise InvalidArgumentError(f"at most {MAX_LORAS} LoRAs per request, got {len(items)}")
    out = []
    for path, scale in items:
        s = check_float(f"loras[{path!r}] (strength)", scale, -MAX_SCALE, MAX_SCALE)
        out.append((load_lora(path), s))
    return tuple(out)


def parse_lora_arg(value: str) -> tuple[str, float]:
    """The CLI's ``FILE[:SCALE]`` -> (FILE, SCALE); SCALE defaults to 1. The part after the last ':' is the
    scale when it parses as a number (``nan`` does, and is refused by the strength check)."""
    path, sep, scale = value.rpartition(":")
    if sep and path:
        try:
            return path, float(scale)
        except ValueError:
            pass
    return value, 1.0


# ------------------------------------------------------------------------------------------ engines

class EngineLoras:
    """An engine's LoRA branches (the manifest's ``lora`` section): checks a request's LoRAs against the
    engine and makes each component's feeds."""

    def __init__(self, manifest, denoiser: str):
        self.manifest, self.denoiser = manifest, denoiser
        section = manifest.data.get("lora")
        self.available = isinstance(section, dict)
        self.max_rank = DEFAULT_MAX_RANK
        self.graphs: dict[str, str] = {}
        self.targets: dict[str, dict[str, dict]] = {}
        if not self.available:
            return
        try:
            self.max_rank = int(section.get("max_rank", DEFAULT_MAX_RANK))
            for comp, rec in section["components"].items():
                graph = rec["graph"]
                if not manifest.has(graph):
                    raise ManifestError(f"fastgen.json: lora.components.{comp}.graph {graph!r} is not a component")
                self.graphs[comp] = graph
                self.targets[comp] = {t["name"]: t for t in rec["targets"]}
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ManifestError(f"fastgen.json: malformed lora section ({type(e).__name__}: {e})") from None
        self._feeds: "collections.OrderedDict[tuple, dict]" = collections.OrderedDict()
        self._lock = threading.Lock()

    def check(self, loras: tuple[tuple[LoraFile, float], ...]) -> None:
        """Every module of every file must match a module of this engine, and the summed rank at each module
        stay within ``max_rank``; else InvalidArgumentError naming the file and module."""
        if not loras:
            return
        if not self.available:
            raise UnsupportedError("this engine has no LoRA branches: re-export it with `fastgen export "
                                   "--lora-branches` (or fuse a LoRA permanently with `fastgen export --lora FILE:SCALE`)")
        self.feeds(loras)

    def feeds(self, loras: tuple[tuple[LoraFile, float], ...]) -> dict[str, tuple[str, dict[str, np.ndarray]]]:
        """{component: (its LoRA graph, the graph's side inputs)} for the components the LoRAs touch (the
        others run their LoRA-free graph)."""
        if not loras:
            return {}
        key = tuple((lf.sha256, s) for lf, s in loras)
        with self._lock:
            hit = self._feeds.get(key)
            if hit is not None:
                self._feeds.move_to_end(key)
                return hit
        out = self._combine(loras)
        with self._lock:
            self._feeds[key] = out
            while len(self._feeds) > _CACHE_FEEDS:
                self._feeds.popitem(last=False)
        return out

    def _combine(self, loras) -> dict[str, tuple[str, dict[str, np.ndarray]]]:
        per_comp: dict[str, dict[str, list]] = {}
        for lf, scale in loras:
            touched = lf.components(self.denoiser)
            unknown = touched - set(self.targets)
            if unknown:
                raise InvalidArgumentError(
                    f"LoRA {lf.name!r} is for {', '.join(sorted(unknown))}, which this engine "
                    f"({self.manifest.family or 'sd'}) has no LoRA branch for "
                    f"(it has: {', '.join(self.targets)}); is it made for another base model?")
            for comp in touched:
                try:
                    ups = lf.updates(comp, self.targets[comp], self.denoiser)
                except InvalidArgumentError as e:
                    raise type(e)(f"LoRA {lf.name!r}: {e}") from None
                for name, (down, up, factor) in ups.items():
                    if down.shape[0] > self.max_rank:
                        raise InvalidArgumentError(f"LoRA {lf.name!r}: module {name!r} has rank {down.shape[0]}, "
                                                   f"above this engine's maximum {self.max_rank}")
                    if scale == 0.0:  # checked, but adds nothing: strength 0 everywhere runs the LoRA-free graphs
                        continue
                    per_comp.setdefault(comp, {}).setdefault(name, []).append(
                        (down, (up * np.float32(scale * factor)).astype(np.float32)))
        out = {}
        for comp, mods in per_comp.items():
            feeds = {}
            for name, t in self.targets[comp].items():
                parts = mods.get(name)
                if parts is None:
                    feeds[f"lora_down.{name}"], feeds[f"lora_up.{name}"] = _empty(t)
                    continue
                rank = sum(d.shape[0] for d, _ in parts)
                if rank > self.max_rank:
                    raise InvalidArgumentError(f"the LoRAs' summed rank at {comp} module {name!r} is {rank}, above "
                                               f"this engine's maximum {self.max_rank}")
                feeds[f"lora_down.{name}"] = np.ascontiguousarray(np.concatenate([d for d, _ in parts], axis=0))
                feeds[f"lora_up.{name}"] = np.ascontiguousarray(np.concatenate([u for _, u in parts], axis=1))
            out[comp] = (self.graphs[comp], feeds)
        return out


def _empty(t: dict) -> tuple[np.ndarray, np.ndarray]:
    if t["type"] == "conv":
        kh, kw = t["kernel"]
        return np.zeros((0, t["in"], kh, kw), np.float32), np.zeros((t["out"], 0, 1, 1), np.float32)
    return np.zeros((0, t["in"]), np.float32), np.zeros((t["out"], 0), np.float32)
