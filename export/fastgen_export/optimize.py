"""``fastgen optimize ENGINE --int8``: an int8 variant of an engine, written into the engine directory.

1. **Calibration data from real runs.** The engine's own fp32 pipeline (the fastgen runtime on ONNX
   Runtime) generates images for the calibration prompts, and a session wrapper records the denoiser's
   inputs at every step (the classifier-free-guidance batch as the network sees it). Default prompts: the
   demo grammar (:func:`fastgen_export.demo_data.all_prompts`) for the demo engine, :data:`GENERAL_PROMPTS`
   for any other; ``--calibration-prompts FILE`` (one prompt a line) replaces them.
2. **Quantization** (:mod:`fastgen_export.quantize`). ``--int8-format openvino`` (the default): NNCF hybrid
   quantization of the denoiser (int8 weights for the linear layers, calibrated int8 activations and
   weights for the rest), int8 weights only for the text encoders and the VAE; OpenVINO IR files
   ``int8/<component>/model.xml`` + ``.bin``. ``--int8-format ort-qdq``: ONNX Runtime static QDQ
   quantization of the denoiser, ``int8-ort/<component>/model.onnx``; the other components stay fp32.
3. **Atomic install.** Everything is written into a temporary folder inside the engine directory first.
   Only when every graph is written: the manifest drops the old record (if any), the folder is swapped in
   by rename, and the manifest records the new variant (``fastgen.json`` itself is replaced atomically).
   An exception or interruption before that leaves the engine exactly as it was; a crash during the three
   renames leaves it without the variant, loading at fp32 as before.

The manifest record (``fastgen.json`` ``"variants"``, see docs/engine-format.md)::

    "variants": {"int8": {"backend": "openvino", "method": "nncf-hybrid",
                          "components": {"unet": {"path": "int8/unet/model.xml", "method": "hybrid"},
                                         "text_encoder": {"path": "int8/text_encoder/model.xml",
                                                          "method": "weights"}, ...},
                          "calibration": {...}, "created": "...", "nncf_version": "...",
                          "openvino_version": "..."}}

``Pipeline.load(ENGINE, backend="openvino", precision="int8")`` runs it (``backend="onnxruntime"`` runs
the ``"int8-ort"`` variant); components without an int8 graph run at fp32.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fastgen.errors import ExportError, FastgenError, InvalidArgumentError, UnsupportedError
from fastgen.pipelines.base import Components

from .manifest import read_manifest, utc_now, write_manifest

__all__ = ["optimize", "FORMATS", "GENERAL_PROMPTS", "capture_denoiser_inputs", "calibration_prompts"]

# --int8-format -> (variant name in fastgen.json, folder in the engine directory, backend, method)
FORMATS = {
    "openvino": ("int8", "int8", "openvino", "nncf-hybrid"),
    "ort-qdq": ("int8-ort", "int8-ort", "onnxruntime", "ort-qdq"),
}
DEFAULT_FORMAT = "openvino"
DEFAULT_NUM_PROMPTS = 8
MAX_CALIBRATION_STEPS = 25  # default steps: the engine's default, at most this
IMAGE_KINDS = ("text2img", "inpaint")
_TMP_PREFIX = ".fastgen-optimize-"

# Calibration prompts for general engines: varied subjects, styles, lighting and compositions, so the
# denoiser's activation ranges are seen on more than one kind of image.
GENERAL_PROMPTS = [
    "a photo of a cat sitting on a windowsill, soft morning light",
    "a portrait of an old fisherman with a grey beard, dramatic lighting, 85mm",
    "a snowy mountain range at sunrise, wide angle landscape photograph",
    "a bowl of ramen with egg and green onions, food photography, top view",
    "an astronaut riding a horse on mars, digital art",
    "a watercolor painting of a lighthouse on a cliff during a storm",
    "a futuristic city skyline at night with neon lights, cyberpunk",
    "a red sports car parked on a wet street, reflections, cinematic",
    "a cozy living room with a fireplace and bookshelves, interior design",
    "a close-up of a hummingbird drinking from a flower, macro photography",
    "an oil painting of a field of sunflowers in the style of van gogh",
    "a medieval castle on a hill surrounded by fog, fantasy illustration",
    "a group of friends laughing at a picnic in a park, summer, candid photo",
    "a pencil sketch of a human hand holding a pen",
    "a tropical beach with palm trees and turquoise water, aerial view",
    "a steaming cup of coffee on a wooden table next to a laptop",
    "a cute robot watering plants in a greenhouse, 3d render",
    "an underwater coral reef with colorful fish, national geographic",
    "a black and white street photograph of a rainy city crossing",
    "a bowl of fruit, still life, dutch golden age painting",
    "a dragon flying over a burning village, epic fantasy art",
    "a minimalist logo of a fox, flat vector, white background",
    "a woman in a yellow raincoat walking a dog, autumn leaves",
    "the interior of a gothic cathedral with stained glass windows",
    "a plate of sushi on a black slate, studio lighting",
    "a child building a sandcastle on the beach at sunset",
    "an abstract painting with bold geometric shapes and primary colors",
    "a vintage steam locomotive crossing a stone bridge, 1920s photograph",
    "a fluffy white dog running through a meadow of wildflowers",
    "a bustling night market in asia with lanterns and food stalls",
    "a desert with sand dunes under a starry night sky, milky way",
    "a pixel art scene of a knight fighting a slime monster",
]


def _log_to(log: Callable[[str], None] | None) -> Callable[[str], None]:
    return log if log is not None else (lambda msg: None)


# ---------------------------------------------------------------- calibration data
def is_demo_engine(manifest) -> bool:
    src = manifest.data.get("source") or {}
    return isinstance(src, dict) and str(src.get("id", "")).startswith("fastgen demo")


def calibration_prompts(manifest, prompts_file: str | os.PathLike | None = None,
                        num_prompts: int | None = None, *, seed: int = 0) -> tuple[list[str], str]:
    """(prompts, where they came from). A file: one prompt a line, blank lines skipped, used in order.
    The built-in lists: ``num_prompts`` drawn from them without replacement (seeded)."""
    if num_prompts is not None and (isinstance(num_prompts, bool) or not isinstance(num_prompts, int)
                                    or num_prompts < 1):
        raise InvalidArgumentError(f"num_calibration_prompts must be a positive int, got {num_prompts!r}")
    if prompts_file is not None:
        path = os.fspath(prompts_file)
        try:
            with open(path, encoding="utf-8") as f:
                prompts = [line.strip() for line in f]
        except (OSError, UnicodeDecodeError) as e:
            raise InvalidArgumentError(f"cannot read the calibration prompts file {path!r}: {e}") from None
        prompts = [p for p in prompts if p]
        if not prompts:
            raise InvalidArgumentError(f"the calibration prompts file {path!r} has no prompts (one a line)")
        return prompts[:num_prompts] if num_prompts else prompts, f"file {os.path.basename(path)}"
    if is_demo_engine(manifest):
        from .demo_data import all_prompts

        pool, source = all_prompts(), "demo grammar"
    else:
        pool, source = list(GENERAL_PROMPTS), "built-in"
    n = min(num_prompts or DEFAULT_NUM_PROMPTS, len(pool))
    idx = np.random.default_rng(seed).choice(len(pool), size=n, replace=False)
    return [pool[int(i)] for i in idx], source


class _Recorder:
    """A session wrapper that records a copy of every feed it is run with (the same array object fed at
    several steps, e.g. the prompt embeddings, is copied once and shared)."""

    def __init__(self, session, samples: list):
        self._session, self.samples = session, samples
        self._copies: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.name = session.name

    def __getattr__(self, item):
        return getattr(self._session, item)

    def run(self, feeds, outputs=None):
        rec = {}
        for k, v in feeds.items():
            hit = self._copies.get(id(v))
            if hit is None or hit[0] is not v:
                hit = self._copies[id(v)] = (v, np.array(v, copy=True))
            rec[k] = hit[1]
        self.samples.append(rec)
        return self._session.run(feeds, outputs)

    def forget(self) -> None:
        self._copies.clear()


class _RecordingComponents(Components):
    """A calibration run's own sessions on ONNX Runtime fp32 (never shared with other pipelines); the
    sessions of the ``recorded`` components are wrapped in a :class:`_Recorder` appending to ``samples``."""

    def __init__(self, manifest, recorded: Sequence[str], samples: list):
        super().__init__(manifest, "onnxruntime", "cpu", None, None)
        self.recorders: dict[str, _Recorder | None] = {name: None for name in recorded}
        self.samples = samples

    def session(self, name):
        s = super().session(name)
        if name not in self.recorders:
            return s
        if self.recorders[name] is None:
            self.recorders[name] = _Recorder(s, self.samples)
        return self.recorders[name]


def _calibration_inputs(pipe, h: int, w: int) -> dict[str, Any]:
    """Extra call arguments an engine needs (an inpainting UNet needs an image and a mask): a synthetic
    image of 4x4 coloured blocks and a centred rectangle."""
    if pipe.unet_in_channels == pipe.latent_channels:
        return {}
    rng = np.random.default_rng(0)
    small = rng.random((4, 4, 3))
    img = np.kron(small, np.ones((-(-h // 4), -(-w // 4), 1)))[:h, :w]
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4:3 * h // 4, w // 4:3 * w // 4] = 255
    return {"image": (img * 255).astype(np.uint8), "mask_image": mask}


def capture_denoiser_inputs(engine_dir: str, prompts: Sequence[str], *, steps: int, guidance_scale: float | None = None,
                            height: int | None = None, width: int | None = None, seed: int = 0,
                            log: Callable[[str], None] | None = None) -> tuple[list[dict], dict]:
    """Run the engine's fp32 pipeline (ONNX Runtime) on each prompt and record the denoiser's inputs at
    every step. Returns (samples, the settings used)."""
    import fastgen
    from fastgen.manifest import load_manifest
    from fastgen.pipelines.base import pipeline_class
    from fastgen.pipelines.image import FAMILIES

    log = _log_to(log)
    manifest = load_manifest(engine_dir)
    denoiser = FAMILIES[manifest.family or "sd"].denoiser
    samples: list[dict] = []
    comps = _RecordingComponents(manifest, [denoiser], samples)
    pipe = pipeline_class(manifest)(comps)
    h = pipe.geometry.default_height if height is None else height
    w = pipe.geometry.default_width if width is None else width
    kw: dict[str, Any] = dict(num_inference_steps=steps, output_type="latent", height=h, width=w,
                              **_calibration_inputs(pipe, h, w))
    if guidance_scale is not None:
        kw["guidance_scale"] = guidance_scale
    kw["guidance_scale"] = pipe.validate(prompts[0], seed=seed, **kw).guidance_scale  # checks the settings
    t0 = time.perf_counter()
    for i, prompt in enumerate(prompts):
        pipe(prompt, seed=seed + i, **kw)
        for r in comps.recorders.values():
            if r is not None:
                r.forget()
        log(f"  calibration run {i + 1}/{len(prompts)}: {len(samples)} {denoiser} inputs recorded "
            f"({time.perf_counter() - t0:.1f} s)")
    pipe.close()
    settings = {"steps": steps, "guidance_scale": float(kw["guidance_scale"]), "height": int(h), "width": int(w),
                "seed": seed, "runtime": f"fastgen {fastgen.__version__} onnxruntime fp32"}
    if "mask_image" in kw:
        settings["inpaint"] = "synthetic 4x4-block image, centred rectangular mask"
    return samples, settings


# ---------------------------------------------------------------- install
def _dir_writable(engine_dir: str) -> None:
    if not os.access(engine_dir, os.W_OK):
        raise ExportError(f"cannot write the int8 variant into {engine_dir}: the directory is not writable")


def _install(engine_dir: str, name: str, folder: str, built: str, record: dict) -> None:
    """Swap ``built`` in as ``engine_dir/folder`` and record the variant, in an order that leaves a loadable
    engine at every point: drop the old record, swap the folders, write the new record."""
    data = read_manifest(engine_dir)
    variants = data.get("variants")
    if not isinstance(variants, dict):
        variants = {}
    if name in variants:
        variants.pop(name)
        data["variants"] = variants
        write_manifest(engine_dir, data)
    dest = os.path.join(engine_dir, folder)
    trash = None
    if os.path.lexists(dest):
        trash = tempfile.mkdtemp(prefix=_TMP_PREFIX + "old-", dir=engine_dir)
        os.rename(dest, os.path.join(trash, folder))
    os.rename(built, dest)
    variants[name] = record
    data["variants"] = variants
    write_manifest(engine_dir, data)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


# ---------------------------------------------------------------- optimize
def _versions(fmt: str) -> dict[str, str]:
    out = {}
    if fmt == "openvino":
        from .quantize import import_nncf, import_openvino

        out["nncf_version"] = import_nncf().__version__
        out["openvino_version"] = import_openvino().__version__
    else:
        import onnxruntime

        out["onnxruntime_version"] = onnxruntime.__version__
    return out


def optimize(engine_dir: str | os.PathLike, *, int8: bool = True, int8_format: str = DEFAULT_FORMAT,
             calibration_prompts_file: str | os.PathLike | None = None, calibration_steps: int | None = None,
             num_calibration_prompts: int | None = None, guidance_scale: float | None = None,
             height: int | None = None, width: int | None = None, seed: int = 0,
             weights_only: Sequence[str] | None = None, log: Callable[[str], None] | None = None,
             _fail_after: str | None = None) -> dict:
    """Write an int8 variant of the engine into ``engine_dir`` and record it in its fastgen.json.
    Returns the variant record. ``weights_only``: the components that get int8 weights only (default: the
    text encoders and the VAE; openvino format). ``_fail_after`` (tests): raise after that stage."""
    from fastgen.manifest import load_manifest

    log = _log_to(log)
    if not int8:
        raise InvalidArgumentError("nothing to do: fastgen optimize needs --int8 (the only optimisation so far)")
    if int8_format not in FORMATS:
        raise InvalidArgumentError(f"int8_format must be one of {', '.join(FORMATS)}, got {int8_format!r}")
    if calibration_steps is not None and (isinstance(calibration_steps, bool) or not isinstance(calibration_steps, int)
                                          or not 1 <= calibration_steps <= 1000):
        raise InvalidArgumentError(f"calibration_steps must be an int in [1, 1000], got {calibration_steps!r}")
    for label, v in (("height", height), ("width", width)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 16384):
            raise InvalidArgumentError(f"{label} must be an int in [1, 16384] or None, got {v!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**62:
        raise InvalidArgumentError(f"seed must be a non-negative int, got {seed!r}")
    engine_dir = os.fspath(engine_dir)
    if engine_dir == "demo" and not os.path.isdir(engine_dir):
        raise InvalidArgumentError("the packaged demo engine is read-only: copy it (`fastgen info demo` prints "
                                   "where it is) and optimize the copy")
    manifest = load_manifest(engine_dir)
    engine_dir = manifest.root
    if manifest.kind not in IMAGE_KINDS:
        raise UnsupportedError(f"fastgen optimize --int8 supports image engines ({', '.join(IMAGE_KINDS)}), "
                               f"not kind {manifest.kind!r}")
    _dir_writable(engine_dir)
    from fastgen.pipelines.image import FAMILIES

    family = FAMILIES.get(manifest.family or "sd")
    if family is None:
        raise UnsupportedError(f"fastgen optimize --int8: unknown diffusion family {manifest.family!r}")
    denoiser, sample_input = family.denoiser, family.sample_input
    manifest.component(denoiser)
    if weights_only is None:
        weights_only = [c for c in manifest.config.get("text_encoders", []) if manifest.has(c)]
        weights_only += [c for c in ("vae_decoder", "vae_encoder") if manifest.has(c)]
    for c in weights_only:
        manifest.component(c)  # names an unknown component
    name, folder, backend, method = FORMATS[int8_format]
    versions = _versions(int8_format)  # fails early when NNCF / OpenVINO are missing

    prompts, source = calibration_prompts(manifest, calibration_prompts_file, num_calibration_prompts, seed=seed)
    default_steps = manifest.config.get("default_steps")
    if not isinstance(default_steps, int) or isinstance(default_steps, bool) or default_steps < 1:
        default_steps = MAX_CALIBRATION_STEPS
    steps = calibration_steps or min(default_steps, MAX_CALIBRATION_STEPS)
    log(f"calibrating on {len(prompts)} prompts ({source}) x {steps} steps")
    samples, settings = capture_denoiser_inputs(engine_dir, prompts, steps=steps, guidance_scale=guidance_scale,
                                                height=height, width=width, seed=seed, log=log)
    if _fail_after == "calibration":
        raise ExportError("test failure after calibration")

    tmp = tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=engine_dir)
    try:
        built = os.path.join(tmp, folder)
        components: dict[str, dict] = {}
        t0 = time.perf_counter()
        if int8_format == "openvino":
            from . import quantize as q

            rel = f"{folder}/{denoiser}/model.xml"
            log(f"{denoiser}: NNCF hybrid quantization")
            model = q.hybrid_quantize(q.read_onnx(manifest.component(denoiser).path), samples,
                                      float_inputs=(sample_input,), log=log)
            q.save_ir(model, os.path.join(tmp, rel))
            del model
            components[denoiser] = {"path": rel, "method": "hybrid"}
            if _fail_after == "denoiser":
                raise ExportError("test failure after the denoiser")
            for c in weights_only:
                rel = f"{folder}/{c}/model.xml"
                log(f"{c}: int8 weights")
                q.save_ir(q.compress_weights(q.read_onnx(manifest.component(c).path)), os.path.join(tmp, rel))
                components[c] = {"path": rel, "method": "weights"}
        else:
            from .quantize import qdq_quantize

            rel = f"{folder}/{denoiser}/model.onnx"
            spec = manifest.component(denoiser)
            log(f"{denoiser}: ONNX Runtime static QDQ quantization")
            qdq_quantize(spec.path, os.path.join(tmp, rel), samples, float_inputs=(sample_input,), log=log,
                         external_data=os.path.exists(spec.path + ".data"), work_dir=tmp)
            components[denoiser] = {"path": rel, "method": "qdq"}
            if _fail_after == "denoiser":
                raise ExportError("test failure after the denoiser")
        n_samples = len(samples)
        del samples
        record = {
            "backend": backend,
            "method": method,
            "components": components,
            "calibration": {"prompts": len(prompts), "source": source,
                            "samples": n_samples, **settings},
            "created": utc_now(),
            **versions,
        }
        log(f"quantized in {time.perf_counter() - t0:.1f} s")
        _install(engine_dir, name, folder, built, record)
    except FastgenError:
        raise
    except Exception as e:  # NNCF / OpenVINO / ONNX Runtime errors
        raise ExportError(f"int8 optimization of {engine_dir} failed: {type(e).__name__}: {e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return record
