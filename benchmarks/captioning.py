"""Captioning: fastgen's CaptioningPipeline vs transformers ``model.generate`` on the same model and images.

Both sides include image preprocessing (fastgen's numpy/Pillow vs the model's PIL image processor) and
the vision encoder; greedy (num_beams=1) and beam search (num_beams=3), ``max_new_tokens`` the same.
Reports captions/s (images per second of one batched call) and per-token latency (call time / decoder
steps, the generated length). The generated ids are compared too (they should be identical).
"""

from __future__ import annotations

import gc
import statistics
import time

import numpy as np


def _images(n: int, size: int = 64):
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def _time(fn, repeat: int, warmup: int = 1):
    for _ in range(warmup):
        fn()
    ts, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return {"min": min(ts), "median": statistics.median(ts), "repeat": repeat}, out


def bench_captioner(model: dict, images: int, max_new_tokens: int, repeat: int, beams=(1, 3),
                    device: str = "cpu") -> dict:
    import fastgen
    import torch
    import transformers
    from transformers import AutoImageProcessor

    imgs = _images(images)
    pipe = fastgen.Pipeline.load(model["engine"], device=device)
    cls = getattr(transformers, {"vit-gpt2": "VisionEncoderDecoderModel",
                                 "blip": "BlipForConditionalGeneration"}[model["family"]])
    tmodel = cls.from_pretrained(model["src"]).eval().to(device)
    proc = AutoImageProcessor.from_pretrained(model["src"], backend="pil")
    rows = []
    for nb in beams:
        def run_fastgen():
            return pipe(imgs, max_new_tokens=max_new_tokens, num_beams=nb)

        def run_tf():
            pv = torch.from_numpy(proc(imgs, return_tensors="np")["pixel_values"]).to(device)
            with torch.inference_mode():
                return tmodel.generate(pixel_values=pv, do_sample=False, num_beams=nb,
                                       max_new_tokens=max_new_tokens)

        f, fout = _time(run_fastgen, repeat)
        t, tout = _time(run_tf, repeat)
        f_steps = int(fout.timings.get("decoder_steps") or max(len(x) for x in fout.token_ids))
        t_ids = tout.tolist()
        t_steps = max(len(x) for x in t_ids) - 1  # the ids start with the decoder start token
        row = {"num_beams": nb, "images": images, "max_new_tokens": max_new_tokens,
               "fastgen_s": f["min"], "fastgen_s_median": f["median"],
               "transformers_s": t["min"], "transformers_s_median": t["median"],
               "fastgen_captions_per_s": images / f["min"], "transformers_captions_per_s": images / t["min"],
               "decoder_steps": f_steps, "transformers_decoder_steps": t_steps,
               "fastgen_ms_per_token": f["min"] / max(f_steps, 1) * 1e3,
               "transformers_ms_per_token": t["min"] / max(t_steps, 1) * 1e3,
               "same_token_ids": fout.token_ids == t_ids, "repeat": repeat,
               "fastgen_stage_s": {k: v for k, v in fout.timings.items() if k != "decoder_steps"}}
        row["speedup"] = t["min"] / f["min"]
        rows.append(row)
    del tmodel, pipe
    gc.collect()
    return {"model": model["name"], "description": model["description"], "rows": rows}
