"""The quality gate: the same prompts and seeds through two configurations, B measured against A.

```python
from fastgen import evaluate

report = evaluate.compare("demo", ("demo", {"backend": "openvino", "precision": "bf16"}),
                          prompts=None, seeds=[0], num_inference_steps=25)   # None: the engine's default prompts
print(report.format_table())
report.save("eval-out")                     # eval-out/eval.json and eval-out/grid.png
```

A side of the comparison is a loaded pipeline, an engine directory (onnxruntime fp32: the exact path), a
``(engine_dir or pipeline, options)`` pair or a :class:`Config`. Options are the load settings ``backend``,
``precision``, ``device`` and ``threads``, and any request option the pipeline's ``validate`` accepts
(``scheduler``, ``num_inference_steps``, ``guidance_scale``, ...), except the ones the comparison sets
itself (prompt, seed, size, output type, latents, callback, images per prompt).

Per item (one prompt and one seed, one image per call) it reports, on the float images in [0, 1] before
8-bit quantisation:

- PSNR in dB (``inf`` for identical images; ``null`` in the JSON);
- SSIM as Wang et al. 2004: 11x11 Gaussian window with sigma 1.5 (truncated at 3.5 sigma), K1 = 0.01,
  K2 = 0.03, data range 1, population covariance, computed per RGB channel and averaged over the
  channels and the window positions that lie inside the image (scikit-image's
  ``structural_similarity(..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
  data_range=1, channel_axis=-1)``);
- for prompts of the demo model's grammar, which colors and shape the classifier of
  :mod:`fastgen.demo_eval` sees in A's and B's image;
- the seconds each call took. A configuration's first call is reported apart (``first_call_s``: it
  compiles and opens sessions); ``mean_s`` is the mean of the others.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._args import MAX_SEED, check_float, check_int, check_text
from .demo_eval import all_prompts, classify, is_demo_prompt, score
from .errors import InvalidArgumentError, ShapeError, UnsupportedError

__all__ = ["Config", "EvalReport", "compare", "psnr", "ssim", "parse_options", "load_prompts", "default_prompts",
           "GENERIC_PROMPTS"]

# ---------------------------------------------------------------- metrics

SSIM_SIGMA, SSIM_TRUNCATE, SSIM_K1, SSIM_K2 = 1.5, 3.5, 0.01, 0.03
SSIM_METHOD = ("Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, data range 1, "
               "population covariance; per RGB channel, averaged over channels and the window positions inside "
               "the image (= skimage structural_similarity(gaussian_weights=True, sigma=1.5, "
               "use_sample_covariance=False, data_range=1, channel_axis=-1))")


def _as_pair(a, b, what: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(a), np.asarray(b)
    if x.shape != y.shape:
        raise ShapeError(f"{what}: the images differ in shape: {x.shape} vs {y.shape}")
    for name, v in (("first", x), ("second", y)):
        if not (np.issubdtype(v.dtype, np.floating) or np.issubdtype(v.dtype, np.integer)) or v.dtype == bool:
            raise ShapeError(f"{what}: the {name} image must be a numeric array, got {v.dtype}")
    x, y = x.astype(np.float64), y.astype(np.float64)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ShapeError(f"{what}: the images must hold finite values")
    return x, y


def psnr(a, b, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio of ``b`` against ``a`` in dB; ``inf`` when they are identical."""
    data_range = check_float("data_range", data_range, 0.0, open_lo=True)
    x, y = _as_pair(a, b, "psnr")
    if x.size == 0:
        raise ShapeError("psnr: the images are empty")
    mse = float(np.mean((x - y) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(data_range ** 2 / mse)


def _gaussian_taps(sigma: float = SSIM_SIGMA, truncate: float = SSIM_TRUNCATE) -> np.ndarray:
    radius = int(truncate * sigma + 0.5)  # as scipy.ndimage: radius 5, 11 taps for sigma 1.5
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def _filter_valid(x: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable Gaussian filter of ``[H, W, C]``, only where the window lies inside the image."""
    k = len(taps)
    h, w = x.shape[0] - k + 1, x.shape[1] - k + 1
    rows = sum(t * x[i:i + h] for i, t in enumerate(taps))
    return sum(t * rows[:, i:i + w] for i, t in enumerate(taps))


def ssim(a, b, data_range: float = 1.0) -> float:
    """Mean structural similarity of two ``[H, W]`` or ``[H, W, C]`` images (see the module docstring)."""
    data_range = check_float("data_range", data_range, 0.0, open_lo=True)
    x, y = _as_pair(a, b, "ssim")
    if x.ndim == 2:
        x, y = x[..., None], y[..., None]
    taps = _gaussian_taps()
    if x.ndim != 3 or min(x.shape[:2]) < len(taps) or x.shape[2] == 0:
        raise ShapeError(f"ssim needs [H, W] or [H, W, C] images of at least {len(taps)}x{len(taps)} pixels, "
                         f"got shape {x.shape}")
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    ux, uy = _filter_valid(x, taps), _filter_valid(y, taps)
    vx = _filter_valid(x * x, taps) - ux * ux
    vy = _filter_valid(y * y, taps) - uy * uy
    vxy = _filter_valid(x * y, taps) - ux * uy
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return float(s.mean())


# ---------------------------------------------------------------- configurations

LOAD_KEYS = ("backend", "precision", "device", "threads")
# request options the comparison sets itself
RESERVED = {
    "prompt": "the prompts are the comparison's (prompts= / --prompts)",
    "seed": "the seeds are the comparison's (seeds= / --seeds)",
    "height": "the size is the same for A and B (height= / --size)",
    "width": "the size is the same for A and B (width= / --size)",
    "num_images_per_prompt": "the comparison makes one image per call",
    "output_type": "the comparison reads float images",
    "latents": "the latents come from the seeds",
    "callback": "the comparison times whole calls",
}
IMAGE_KINDS = ("text2img", "inpaint")


@dataclass(frozen=True)
class Config:
    """One side of a comparison: an engine directory, how to load it, and request options."""

    engine: str = "demo"
    backend: str = "onnxruntime"
    precision: str = "fp32"
    device: str = "cpu"
    threads: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)  # request options for validate(...)

    @classmethod
    def from_options(cls, engine, options: Mapping[str, Any] | None = None) -> "Config":
        """Split ``options`` into load settings and request options. Without ``backend``, a precision that
        only another backend runs picks that backend (``precision="bf16"`` -> openvino)."""
        from .backends import PRECISIONS

        options = dict(options or {})
        for k in options:
            if not isinstance(k, str):
                raise InvalidArgumentError(f"option names must be strings, got {k!r}")
        load = {k: options.pop(k) for k in LOAD_KEYS if k in options}
        if "backend" not in load and "precision" in load and load["precision"] not in PRECISIONS["onnxruntime"]:
            load["backend"] = next((b for b, p in PRECISIONS.items() if load["precision"] in p), "onnxruntime")
        for k, why in RESERVED.items():
            if k in options:
                raise InvalidArgumentError(f"option {k!r} cannot be set per configuration: {why}")
        return cls(engine=_engine_str(engine), options=options, **load)

    def load(self):
        from .pipelines import Pipeline

        return Pipeline.load(self.engine, backend=self.backend, precision=self.precision, device=self.device,
                             threads=self.threads)

    def describe(self) -> str:
        parts = [self.backend, self.precision]
        if self.device != "cpu":
            parts.append(self.device)
        if self.threads is not None:
            parts.append(f"threads={self.threads}")
        parts += [f"{k}={v}" for k, v in self.options.items()]
        return " ".join(parts)

    def to_json(self) -> dict:
        return {"engine": self.engine, "backend": self.backend, "precision": self.precision, "device": self.device,
                "threads": self.threads, "options": {k: _jsonable(v) for k, v in self.options.items()}}


def _path(v, what: str) -> str:
    if isinstance(v, (str, os.PathLike)) and not isinstance(v, bytes):
        path = os.fspath(v)
        if isinstance(path, str) and path and "\x00" not in path:
            return path
    raise InvalidArgumentError(f"{what} must be a path (str or os.PathLike), got {v!r}")


def _engine_str(engine) -> str:
    return _path(engine, "an engine (a directory or 'demo')")


def _parse_value(text: str) -> Any:
    low = text.lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        f = float(text)
    except ValueError:
        return text
    return f if math.isfinite(f) else text


def parse_options(specs: str | Sequence[str] | None, what: str = "options") -> dict[str, Any]:
    """``"backend=openvino,precision=bf16"`` (or a list of such strings) -> ``{"backend": "openvino", ...}``.

    Values are typed: ints, floats, ``true`` / ``false``, ``none``; anything else stays a string. A value
    cannot hold a comma. The keys themselves are checked against the pipeline by :func:`compare`.
    """
    if specs is None:
        return {}
    if isinstance(specs, str):
        specs = [specs]
    out: dict[str, Any] = {}
    for spec in specs:
        if not isinstance(spec, str):
            raise InvalidArgumentError(f"{what} must be KEY=VALUE[,KEY=VALUE...] strings, got {spec!r}")
        for item in spec.split(","):
            item = item.strip()
            if not item:
                continue
            key, sep, value = item.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or not key.isidentifier():
                raise InvalidArgumentError(f"{what}: {item!r} is not KEY=VALUE (e.g. backend=openvino,precision=bf16)")
            if key in out:
                raise InvalidArgumentError(f"{what}: {key!r} is given twice")
            out[key] = _parse_value(value)
    return out


# ---------------------------------------------------------------- prompts

GENERIC_PROMPTS = (
    "a photo of a cat sitting on a windowsill",
    "a red sports car on a mountain road at golden hour",
    "a bowl of fruit on a wooden table, still life",
    "a lighthouse on a rocky coast at sunset",
    "an astronaut riding a horse on the moon",
    "a cozy living room with a fireplace, interior design",
    "a watercolor painting of a forest in autumn",
    "a portrait of an old man with a beard, studio lighting",
)
MAX_PROMPTS = 1000
MAX_PROMPT_FILE_BYTES = 16 << 20


def is_demo_engine(manifest) -> bool:
    """The demo model shipped in the package (or a re-trained one: its manifest's source names it)."""
    from .pipelines.base import _demo_dir

    source = manifest.data.get("source") if isinstance(manifest.data, dict) else None
    sid = source.get("id") if isinstance(source, dict) else None
    if isinstance(sid, str) and sid.startswith("fastgen demo"):
        return True
    try:
        return os.path.samefile(manifest.root, _demo_dir())
    except OSError:
        return False


def default_prompts(engine, n: int = 8, seed: int = 0) -> list[str]:
    """``n`` prompts for ``engine`` (a pipeline, a manifest or an engine directory): for the demo model, random
    captions of its grammar (seeded; distinct up to its 90), else the first ``n`` of :data:`GENERIC_PROMPTS`."""
    from .manifest import Manifest, load_manifest
    from .pipelines.base import Pipeline, resolve_engine_dir

    n = check_int("num_prompts", n, 1, MAX_PROMPTS)
    if isinstance(engine, Pipeline):
        manifest = engine.manifest
    elif isinstance(engine, Manifest):
        manifest = engine
    else:
        manifest = load_manifest(resolve_engine_dir(engine))
    if is_demo_engine(manifest):
        pool = all_prompts()
        rng = np.random.default_rng(seed)
        order = np.concatenate([rng.permutation(len(pool)) for _ in range(-(-n // len(pool)))])
        return [pool[i] for i in order[:n]]
    if n > len(GENERIC_PROMPTS):
        raise InvalidArgumentError(f"the built-in prompt list has {len(GENERIC_PROMPTS)} prompts, {n} were asked "
                                   "for; give a prompt file (--prompts FILE, one prompt per line)")
    return list(GENERIC_PROMPTS[:n])


def load_prompts(path) -> list[str]:
    """The prompts of a UTF-8 text file, one per line (blank lines skipped; 1 to 1000 prompts)."""
    path = _path(path, "the prompt file")
    if not os.path.isfile(path):
        raise InvalidArgumentError(f"prompt file {path!r} does not exist or is not a file")
    size = os.path.getsize(path)
    if size > MAX_PROMPT_FILE_BYTES:
        raise InvalidArgumentError(f"prompt file {path!r} is {size} bytes; the limit is {MAX_PROMPT_FILE_BYTES}")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise InvalidArgumentError(f"cannot read prompt file {path!r}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise InvalidArgumentError(f"prompt file {path!r} is not UTF-8 text: byte {e.start} (line {line}) "
                                   f"is {raw[e.start:e.start + 1]!r}") from None
    prompts = []
    for i, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if "\x00" in line:
            raise InvalidArgumentError(f"prompt file {path!r} line {i} holds a NUL character")
        prompts.append(check_text(f"prompt file {path!r} line {i}", line))
    if not prompts:
        raise InvalidArgumentError(f"prompt file {path!r} holds no prompts (one per line)")
    if len(prompts) > MAX_PROMPTS:
        raise InvalidArgumentError(f"prompt file {path!r} holds {len(prompts)} prompts; the limit is {MAX_PROMPTS}")
    return prompts


# ---------------------------------------------------------------- the report

GRID_MAX_ROWS = 64
GRID_GAP = 2  # grey pixels between the cells of grid.png


@dataclass
class EvalReport:
    """What :func:`compare` measured. ``items`` has one dict per (prompt, seed); ``grid_a`` / ``grid_b`` are the
    float images of the first :data:`GRID_MAX_ROWS` items."""

    a: dict
    b: dict
    call: dict
    items: list[dict]
    times_a: list[float]
    times_b: list[float]
    accuracy: dict | None
    grid_a: np.ndarray = field(repr=False)
    grid_b: np.ndarray = field(repr=False)
    versions: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    # ----- summaries
    @property
    def psnr_values(self) -> list[float]:
        return [it["psnr"] for it in self.items]

    @property
    def identical(self) -> int:
        """How many items gave bit-identical images."""
        return sum(math.isinf(p) for p in self.psnr_values)

    @property
    def psnr_mean(self) -> float:
        """Mean PSNR over the items whose images differ (``inf`` when every pair is identical)."""
        finite = [p for p in self.psnr_values if math.isfinite(p)]
        return float(np.mean(finite)) if finite else math.inf

    @property
    def psnr_min(self) -> float:
        return min(self.psnr_values)

    @property
    def ssim_mean(self) -> float:
        return float(np.mean([it["ssim"] for it in self.items]))

    @property
    def ssim_min(self) -> float:
        return min(it["ssim"] for it in self.items)

    @property
    def accuracy_drop(self) -> float | None:
        """A's minus B's accuracy (all three parts right) in percentage points; None outside the demo grammar."""
        if self.accuracy is None:
            return None
        return 100.0 * (self.accuracy["a"]["all"] - self.accuracy["b"]["all"])

    def timings(self) -> dict:
        def side(t):
            rest = t[1:]
            return {"first_call_s": t[0] if t else None, "mean_s": float(np.mean(rest)) if rest else None,
                    "n": len(rest)}

        a, b = side(self.times_a), side(self.times_b)
        speed = a["mean_s"] / b["mean_s"] if a["mean_s"] and b["mean_s"] else None
        return {"a": a, "b": b, "speedup_b_vs_a": speed}

    def summary(self) -> dict:
        s = {"items": len(self.items), "identical": self.identical,
             "psnr": {"mean": self.psnr_mean, "min": self.psnr_min},
             "ssim": {"mean": self.ssim_mean, "min": self.ssim_min},
             "accuracy": None, "timings": self.timings()}
        if self.accuracy is not None:
            drop = {k: 100.0 * (self.accuracy["a"][k] - self.accuracy["b"][k]) for k in self.accuracy["a"]}
            s["accuracy"] = {**self.accuracy, "drop_points": drop}
        return s

    # ----- the gate
    def check(self, min_psnr: float | None = None, min_ssim: float | None = None,
              max_accuracy_drop: float | None = None) -> list[dict]:
        """The gate: one ``{"metric", "value", "threshold", "passed"}`` per threshold given. PSNR and SSIM are
        the means over the items (PSNR over those that differ); the accuracy drop is in percentage points."""
        checks = []
        if min_psnr is not None:
            min_psnr = check_float("min_psnr", min_psnr)
            checks.append({"metric": "psnr_mean", "value": self.psnr_mean, "threshold": min_psnr,
                           "passed": self.psnr_mean >= min_psnr})
        if min_ssim is not None:
            min_ssim = check_float("min_ssim", min_ssim, -1.0, 1.0)
            checks.append({"metric": "ssim_mean", "value": self.ssim_mean, "threshold": min_ssim,
                           "passed": self.ssim_mean >= min_ssim})
        if max_accuracy_drop is not None:
            max_accuracy_drop = check_float("max_accuracy_drop", max_accuracy_drop, 0.0, 100.0)
            if self.accuracy is None:
                raise InvalidArgumentError("max_accuracy_drop needs prompts of the demo grammar "
                                           "('a red circle on a blue background')")
            drop = self.accuracy_drop
            checks.append({"metric": "accuracy_drop_points", "value": drop, "threshold": max_accuracy_drop,
                           "passed": drop <= max_accuracy_drop + 1e-9})
        return checks

    # ----- outputs
    def to_json(self, gate: list[dict] | None = None) -> dict:
        d = {"format": "fastgen-eval", "format_version": 1, "versions": self.versions,
             "configurations": {"a": self.a, "b": self.b}, "call": self.call,
             "metrics": {"psnr": "dB on float images in [0, 1]; null when identical", "ssim": SSIM_METHOD,
                         "psnr_mean": "mean over the items whose images differ",
                         "accuracy": "demo classifier (fastgen.demo_eval): background, color, shape, all three",
                         "timings": "seconds per call (one image); first_call_s apart, mean_s over the rest; "
                                    "speedup_b_vs_a = A mean_s / B mean_s"},
             "summary": self.summary(), "items": self.items, "notes": self.notes}
        if gate is not None:
            d["gate"] = {"passed": all(c["passed"] for c in gate), "checks": gate}
        return _jsonable(d)

    def grid(self, diff_gain: float = 10.0):
        """A PIL image: one row per item (the first :data:`GRID_MAX_ROWS`), columns A | B | |A-B| x diff_gain,
        2 grey pixels apart. Images under 128 pixels a side are enlarged by an integer factor (nearest
        neighbour, 64 -> 128), images over 256 shrunk to 256."""
        from PIL import Image

        diff_gain = check_float("diff_gain", diff_gain, 0.0, open_lo=True)
        a, b = self.grid_a, self.grid_b
        if a.shape[-1] == 1:
            a, b = np.repeat(a, 3, -1), np.repeat(b, 3, -1)
        a, b = np.clip(a, 0, 1), np.clip(b, 0, 1)
        diff = np.clip(np.abs(a - b) * diff_gain, 0, 1)
        n, h, w, _ = a.shape
        side = max(h, w)
        k = max(1, 128 // side)
        scale = min(1.0, 256 / side)
        ch, cw = max(1, round(h * k * scale)), max(1, round(w * k * scale))
        out = Image.new("RGB", (3 * cw + 2 * GRID_GAP, n * ch + (n - 1) * GRID_GAP), (128, 128, 128))
        for r in range(n):
            for c, im in enumerate((a[r], b[r], diff[r])):
                u8 = (im * 255).round().astype(np.uint8)
                if k > 1:
                    u8 = np.repeat(np.repeat(u8, k, 0), k, 1)
                cell = Image.fromarray(u8, "RGB")
                if cell.size != (cw, ch):
                    cell = cell.resize((cw, ch), Image.BOX)
                out.paste(cell, (c * (cw + GRID_GAP), r * (ch + GRID_GAP)))
        return out

    def save(self, out_dir, gate: list[dict] | None = None, diff_gain: float = 10.0) -> tuple[str, str]:
        """Write ``out_dir/eval.json`` and ``out_dir/grid.png``; returns their paths."""
        out_dir = _path(out_dir, "the output folder")
        if os.path.exists(out_dir) and not os.path.isdir(out_dir):
            raise InvalidArgumentError(f"output folder {out_dir!r} exists and is not a folder")
        try:
            os.makedirs(out_dir, exist_ok=True)
            grid = self.grid(diff_gain)
            grid_path = os.path.join(out_dir, "grid.png")
            grid.save(grid_path)
            d = self.to_json(gate)
            d["grid"] = {"path": "grid.png", "rows": len(self.grid_a), "columns": ["A", "B", f"|A-B| x{diff_gain:g}"],
                         "size": [grid.width, grid.height]}
            json_path = os.path.join(out_dir, "eval.json")
            with open(json_path, "w", encoding="utf-8") as f:
                json.dump(d, f, indent=2, allow_nan=False)
                f.write("\n")
        except OSError as e:
            raise InvalidArgumentError(f"cannot write to {out_dir!r}: {e.strerror or e}") from None
        return json_path, grid_path

    def format_table(self, max_rows: int = 20) -> str:
        """A short text report: per-item rows (the lowest PSNR first when there are more than ``max_rows``),
        then the summary."""
        acc = self.accuracy is not None
        steps = f"{self.call['num_inference_steps']} steps, guidance {self.call['guidance_scale']:g}"
        if "b" in self.call:  # the sides' options differ: name each side's
            b = self.call["b"]
            steps = f"A {steps}; B {b['num_inference_steps']} steps, guidance {b['guidance_scale']:g}"
        lines = [f"A  {self.a['engine']}: {self.a['describe']}", f"B  {self.b['engine']}: {self.b['describe']}",
                 f"{len(self.items)} images ({_n(self.call['prompts'], 'prompt')} x {_n(len(self.call['seeds']), 'seed')}), "
                 f"{steps}, {self.call['width']}x{self.call['height']}", ""]
        rows = list(range(len(self.items)))
        head = ""
        if len(rows) > max_rows:
            rows = sorted(rows, key=lambda i: self.items[i]["psnr"])[:max_rows // 2]
            head = f" ({len(rows)} lowest PSNR of {len(self.items)}; all in eval.json)"
        lines.append(f"{'#':>4}  {'seed':>6}  {'PSNR dB':>9}  {'SSIM':>8}" + ("  A  B" if acc else "") + "  prompt" + head)
        for i in rows:
            it = self.items[i]
            p = "identical" if math.isinf(it["psnr"]) else f"{it['psnr']:.2f}"
            ok = ""
            if acc:
                ok = "  " + " ".join("ok" if it[s]["correct"]["all"] else "--" for s in ("a", "b"))
            prompt = it["prompt"] if len(it["prompt"]) <= 48 else it["prompt"][:45] + "..."
            lines.append(f"{i:>4}  {it['seed']:>6}  {p:>9}  {it['ssim']:8.5f}{ok}  {prompt}")
        lines.append("")
        pm = "identical" if math.isinf(self.psnr_mean) else f"{self.psnr_mean:.2f} dB"
        pmin = "identical" if math.isinf(self.psnr_min) else f"{self.psnr_min:.2f} dB"
        lines.append(f"PSNR      mean {pm}, min {pmin}" + (f" ({self.identical} of {len(self.items)} identical)"
                                                            if self.identical else ""))
        lines.append(f"SSIM      mean {self.ssim_mean:.5f}, min {self.ssim_min:.5f}")
        if acc:
            a, b = self.accuracy["a"], self.accuracy["b"]
            parts = ", ".join(f"{k} {100 * a[k]:.1f}% -> {100 * b[k]:.1f}%" for k in ("background", "color", "shape"))
            lines.append(f"accuracy  all three A {100 * a['all']:.1f}% B {100 * b['all']:.1f}% "
                         f"(drop {self.accuracy_drop:+.1f} points); {parts}")
        t = self.timings()

        def fmt(s):
            mean = f"{s['mean_s']:.3f} s/image" if s["mean_s"] is not None else "n/a"
            return f"{mean} (first call {s['first_call_s']:.2f} s)"

        speed = f"; B is {t['speedup_b_vs_a']:.2f}x as fast as A" if t["speedup_b_vs_a"] else ""
        lines.append(f"time      A {fmt(t['a'])}, B {fmt(t['b'])}{speed}")
        return "\n".join(lines)


def _n(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def _jsonable(v):
    if isinstance(v, float) or isinstance(v, np.floating):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.bool_,)):
        return bool(v)
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if v is None or isinstance(v, (str, int, bool)):
        return v
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return _jsonable(dataclasses.asdict(v))
    return repr(v)


# ---------------------------------------------------------------- compare


@dataclass
class _Side:
    label: str
    config: Config
    pipe: Any
    owned: bool


def _side(x, label: str) -> _Side:
    from .pipelines.base import Pipeline

    options: Mapping[str, Any] = {}
    if isinstance(x, tuple):
        if len(x) != 2 or not isinstance(x[1], Mapping):
            raise InvalidArgumentError(f"configuration {label} must be a pipeline, an engine directory, "
                                       f"(engine_dir or pipeline, options dict) or a Config, got {x!r}")
        x, options = x
    if isinstance(x, Pipeline):
        if x.closed:
            raise InvalidArgumentError(f"configuration {label}: the pipeline is closed")
        load = [k for k in options if k in LOAD_KEYS]
        if load:
            raise InvalidArgumentError(f"configuration {label}: {', '.join(load)} cannot change an already "
                                       "loaded pipeline; give (engine_dir, options) instead")
        cfg = Config(engine=x.engine_dir, backend=x.backend, precision=x.precision, device=x.device,
                     threads=x.components.threads, options={})
        cfg = dataclasses.replace(cfg, options=Config.from_options(x.engine_dir, options).options)
        return _Side(label, cfg, x, owned=False)
    if isinstance(x, Config):
        if options:
            raise InvalidArgumentError(f"configuration {label}: a Config carries its own options")
        cfg = x
    else:
        cfg = Config.from_options(x, options)
    try:
        pipe = cfg.load()
    except InvalidArgumentError as e:
        raise type(e)(f"configuration {label}: {e}") from None
    return _Side(label, cfg, pipe, owned=True)


def _request_keywords(pipe) -> list[str]:
    params = inspect.signature(pipe.validate).parameters.values()
    names = {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    encoder = getattr(pipe, "prompt_encoder", None)
    names |= set(getattr(encoder, "keywords", ()) or ())
    return sorted(names - set(RESERVED))


def _check_options(side: _Side, options: Mapping[str, Any], what: str, extra=()) -> None:
    """Refuse the options that are neither load settings nor request options of the pipeline."""
    valid = _request_keywords(side.pipe) + list(extra)
    unknown = [k for k in options if k not in valid]
    if unknown:
        parts = []
        for k in unknown:
            close = difflib.get_close_matches(k, [*LOAD_KEYS, *valid], n=1, cutoff=0.6)
            parts.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise InvalidArgumentError(f"{what}: unknown option{'s' * (len(unknown) > 1)} {', '.join(parts)}; valid: "
                                   f"{', '.join(LOAD_KEYS)} (loading) and {', '.join(valid)} (request options)")


def _versions(sides) -> dict:
    from . import __version__

    v = {"fastgen": __version__, "python": platform.python_version(), "numpy": np.__version__,
         "platform": platform.platform(), "cpus": os.cpu_count()}
    for mod in ("onnxruntime", "openvino", "tensorrt"):
        m = sys.modules.get(mod)
        if m is not None:
            v[mod] = getattr(m, "__version__", None) or getattr(getattr(m, "runtime", None), "get_version",
                                                                lambda: None)()
    return v


def compare(a, b, prompts: Sequence[str] | None = None, seeds: Sequence[int] = (0,), *, num_prompts: int = 8,
            progress: Callable[[], Any] | None = None, **call_kwargs) -> EvalReport:
    """Run every (prompt, seed) through configuration ``a`` and ``b`` (one image per call, interleaved) and
    measure B against A.

    ``a`` / ``b``: a loaded pipeline (left open), an engine directory, ``(engine_dir or pipeline, options)``
    or a :class:`Config` (loaded here and closed at the end). ``prompts=None`` takes ``num_prompts`` of
    :func:`default_prompts` for A's engine. ``call_kwargs`` (``num_inference_steps``, ``guidance_scale``,
    ``height``, ``width``, ``scheduler``, ...) go to both; a configuration's own options win over them.
    ``progress()`` is called after each image. Every argument is checked before the first image.
    """
    for k in call_kwargs:
        if k in RESERVED and k not in ("height", "width"):
            raise InvalidArgumentError(f"compare() does not take {k!r}: {RESERVED[k]}")
    if progress is not None and not callable(progress):
        raise InvalidArgumentError("progress must be callable (called with no arguments after each image)")
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        seeds = [seeds]
    if not isinstance(seeds, (list, tuple)) or not seeds:
        raise InvalidArgumentError(f"seeds must be a non-empty list of ints, got {seeds!r}")
    seeds = [check_int(f"seeds[{i}]", s, 0, MAX_SEED - 1) for i, s in enumerate(seeds)]
    if len(set(seeds)) != len(seeds):
        raise InvalidArgumentError(f"seeds has duplicates: {seeds}")

    sides: list[_Side] = []
    try:
        for x, label in ((a, "A"), (b, "B")):
            sides.append(_side(x, label))
        sa, sb = sides
        for s in sides:
            if s.pipe.kind not in IMAGE_KINDS:
                raise UnsupportedError(f"configuration {s.label}: {s.config.engine} is a {s.pipe.kind} engine; "
                                       f"fastgen eval compares image engines ({', '.join(IMAGE_KINDS)})")
        _check_options(sa, call_kwargs, "compare()", extra=("height", "width"))
        for s in sides:
            _check_options(s, s.config.options, f"configuration {s.label}")

        if prompts is None:
            prompts = default_prompts(sa.pipe, num_prompts)
        elif isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, (list, tuple)) or not prompts:
            raise InvalidArgumentError(f"prompts must be a non-empty list of strings, got {prompts!r}")
        if len(prompts) > MAX_PROMPTS:
            raise InvalidArgumentError(f"{len(prompts)} prompts; the limit is {MAX_PROMPTS}")
        prompts = [check_text(f"prompts[{i}]", p) for i, p in enumerate(prompts)]
        demo = all(is_demo_prompt(p) for p in prompts)

        # every request made (so checked) before the first image
        items = [(p, s) for p in prompts for s in seeds]
        reqs: dict[str, list] = {}
        for side in sides:
            kw = {**call_kwargs, **side.config.options}
            try:
                reqs[side.label] = [side.pipe.validate(p, seed=s, output_type="np", **kw) for p, s in items]
            except InvalidArgumentError as e:
                raise type(e)(f"configuration {side.label}: {e}") from None
        ra, rb = reqs["A"][0], reqs["B"][0]
        if (ra.height, ra.width) != (rb.height, rb.width):
            raise InvalidArgumentError(f"A makes {ra.width}x{ra.height} images and B {rb.width}x{rb.height}; "
                                       "give one size for both (height= / width=, --size)")

        results, times = [], {"A": [], "B": []}
        grid = {"A": [], "B": []}
        for i, (prompt, seed) in enumerate(items):
            imgs = {}
            for side in sides:
                t0 = time.perf_counter()
                out = side.pipe.run(reqs[side.label][i])
                times[side.label].append(time.perf_counter() - t0)
                imgs[side.label] = np.asarray(out.images[0], dtype=np.float32)
                if progress is not None:
                    progress()
            ia, ib = imgs["A"], imgs["B"]
            item = {"prompt": prompt, "seed": seed, "psnr": psnr(ia, ib), "ssim": ssim(ia, ib),
                    "max_abs_diff": float(np.max(np.abs(ia.astype(np.float64) - ib))),
                    "time_a_s": times["A"][-1], "time_b_s": times["B"][-1]}
            if demo:
                for key, img in (("a", ia), ("b", ib)):
                    pred = classify(img)
                    item[key] = {"prediction": dataclasses.asdict(pred), "correct": score(pred, prompt)}
            results.append(item)
            if i < GRID_MAX_ROWS:
                grid["A"].append(ia)
                grid["B"].append(ib)

        accuracy = None
        if demo:
            accuracy = {key: {k: float(np.mean([it[key]["correct"][k] for it in results]))
                              for k in ("background", "color", "shape", "all")} for key in ("a", "b")}
        notes = []
        if not demo and is_demo_engine(sa.pipe.manifest):
            notes.append("accuracy left out: not every prompt is of the demo grammar")
        call = {"prompts": len(prompts), "seeds": seeds, "num_inference_steps": ra.num_inference_steps,
                "guidance_scale": ra.guidance_scale, "height": ra.height, "width": ra.width,
                "options": {k: _jsonable(v) for k, v in call_kwargs.items()}}
        if rb.num_inference_steps != ra.num_inference_steps or rb.guidance_scale != ra.guidance_scale:
            call["b"] = {"num_inference_steps": rb.num_inference_steps, "guidance_scale": rb.guidance_scale}

        def conf(s: _Side) -> dict:
            m = s.pipe.manifest
            exp = m.data.get("exporter") if isinstance(m.data.get("exporter"), dict) else {}
            return {**s.config.to_json(), "engine_dir": s.pipe.engine_dir, "describe": s.config.describe(),
                    "kind": m.kind, "family": m.family, "demo": is_demo_engine(m),
                    "exporter": {k: exp.get(k) for k in ("name", "version", "dtype", "optimize")}}

        return EvalReport(a=conf(sa), b=conf(sb), call=call, items=results, times_a=times["A"], times_b=times["B"],
                          accuracy=accuracy, grid_a=np.stack(grid["A"]), grid_b=np.stack(grid["B"]),
                          versions=_versions(sides), notes=notes)
    finally:
        for s in sides:
            if s.owned:
                s.pipe.close()

