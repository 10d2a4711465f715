"""Markdown tables from the JSON files run_all.py wrote: ``python benchmarks/report.py DIR``."""

from __future__ import annotations

import json
import os
import sys


def _load(d, name):
    p = os.path.join(d, f"{name}.json")
    if not os.path.isfile(p):
        return None
    with open(p) as f:
        return json.load(f)


def _x(v):
    return "—" if v is None else f"{v:.1f}x"


def _skip_or_err(r):
    if "status" in r:
        return f"| {r['model']} | {r['status']} |"
    if "error" in r:
        return f"| {r['model']} | error: {r['error'][:120]} |"
    return None


def header(d) -> str:
    e = (_load(d, "e2e") or _load(d, "gpu"))["environment"]
    g = _load(d, "gpu") or {}
    vers = ", ".join(f"{k} {e[k]}" for k in ("fastgen", "onnxruntime", "torch", "diffusers", "transformers", "numpy")
                     if k in e)
    return (f"Last run: {e['date']} on {e['processor']} ({e['cpu_count']} cores, shared with other work), "
            f"Python {e['python']}, {vers}. torch threads: {g.get('torch_threads', '?')}; ONNX Runtime default "
            f"threads. GPU: {g.get('status', '?')}.")


def loop_overhead(d) -> str:
    j = _load(d, "loop_overhead")
    out = ["| scheduler | latents | fastgen µs/step | diffusers µs/step | speed-up |", "|---|---|---:|---:|---:|"]
    for r in j["rows"]:
        out.append(f"| {r['scheduler']} | {r['shape']} | {r['fastgen_us_per_step']:.1f} | "
                   f"{r['diffusers_us_per_step']:.1f} | {r['speedup']:.1f}x |")
    return "\n".join(out)


def _model_table(models, header: str, align: str, rows) -> list[str]:
    """A markdown table: the header, then rows(r) (an iterable of lines) for each model record, or the
    record's skip / error line."""
    out = [header, align]
    for r in models:
        skipped = _skip_or_err(r)
        out += [skipped] if skipped else list(rows(r))
    return out


def e2e(d) -> str:
    def rows(r):
        for fw in ("diffusers", "fastgen"):
            m = r[fw]["min"]
            rest = m["loop_overhead"] + m.get("other", 0.0)
            sp = (f"{r['speedup_total']:.1f}x / {r['speedup_total_median']:.1f}x" if fw == "fastgen" else "")
            yield (f"| {r['model']} | {r['steps']} | {r['image_size']}px | {fw} | {m['total']:.3f} | "
                   f"{m['text_encode']:.3f} | {m['unet']:.3f} | {m['vae_decode']:.3f} | {rest:.4f} | {sp} |")
        sb = r["speedup_by_stage"]
        yield (f"| {r['model']} | | | *stage speed-up* | | {_x(sb['text_encode'])} | {_x(sb['unet'])} | "
               f"{_x(sb['vae_decode'])} | {_x(sb['loop_overhead'])} | |")

    return "\n".join(_model_table(
        _load(d, "e2e").get("models", []),
        "| model | steps | image | framework | total s/image | text encode | UNet | VAE decode | loop + rest | "
        "speed-up (min / median) |", "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|", rows))


def cold(d) -> str:
    j = _load(d, "cold_start")
    out = []
    imp = j.get("import") or {}
    if "rows" in imp:
        out += ["| import (new process) | fastgen | diffusers | ratio |", "|---|---:|---:|---:|"]
        f, g = imp["rows"]["fastgen"], imp["rows"]["diffusers"]
        out.append(f"| `import` alone, s (min / median) | {f['import_s']['min']:.2f} / {f['import_s']['median']:.2f} | "
                   f"{g['import_s']['min']:.2f} / {g['import_s']['median']:.2f} | {imp['speedup_import']:.1f}x |")
        out.append(f"| spawn to imported, s (min) | {f['spawn_to_imported_s']['min']:.2f} | "
                   f"{g['spawn_to_imported_s']['min']:.2f} | {imp['speedup_spawn_to_imported']:.1f}x |")
        out.append(f"| torch loaded | {f['torch_loaded']} | {g['torch_loaded']} | |")
        out.append("")
    elif imp:
        out.append(f"import: error {imp.get('error', '')[:200]}\n")

    def rows(r):
        for fw in ("diffusers", "fastgen"):
            x = r["rows"][fw]
            sp = f"{r['speedup_first_image']:.1f}x" if fw == "fastgen" else ""
            yield (f"| {r['model']} ({r['steps']} steps) | {fw} | {x['spawn_to_end_s']['min']:.2f} | "
                   f"{x['import_s']['min']:.2f} | {x['load_s']['min']:.2f} | {x['first_call_s']['min']:.2f} | {sp} |")

    out += _model_table(j.get("models", []),
                        "| model | framework | spawn → first image s | import s | load s | first call s | speed-up |",
                        "|---|---|---:|---:|---:|---:|---:|", rows)
    return "\n".join(out)


def memory(d) -> str:
    def rows(r):
        for fw in ("diffusers", "fastgen"):
            x = r["rows"][fw]
            sp = f"{r['ratio_peak_rss']:.1f}x less" if fw == "fastgen" else ""
            yield (f"| {r['model']} ({r['calls']} calls) | {fw} | {x['peak_rss_after_load_mb']['min']:.0f} | "
                   f"{x['peak_rss_first_image_mb']['min']:.0f} | {x['peak_rss_mb']['min']:.0f} | {sp} |")

    return "\n".join(_model_table(
        _load(d, "memory").get("models", []),
        "| model | framework | peak RSS after load MiB | after first image MiB | after all calls MiB | ratio |",
        "|---|---|---:|---:|---:|---:|", rows))


def _by_setting(r, key: str, value: str, speedups: str, fmt: str):
    """Rows of a fastgen-vs-diffusers sweep over one setting (callers, images per prompt)."""
    by = {(x["framework"], x[key]): x[value] for x in r["rows"]}
    for c in sorted({x[key] for x in r["rows"]}):
        yield (f"| {r['model']} ({r['steps']} steps) | {c} | {by[('diffusers', c)]:{fmt}} | "
               f"{by[('fastgen', c)]:{fmt}} | {r[speedups][str(c)]:.1f}x |")


def throughput(d) -> str:
    return "\n".join(_model_table(
        _load(d, "throughput").get("models", []),
        "| model | callers | diffusers images/s | fastgen images/s | speed-up |", "|---|---:|---:|---:|---:|",
        lambda r: _by_setting(r, "callers", "images_per_s", "speedup_by_callers", ".2f")))


def batch(d) -> str:
    return "\n".join(_model_table(
        _load(d, "batch_scaling").get("models", []),
        "| model | images / prompt | diffusers s/image | fastgen s/image | speed-up |", "|---|---:|---:|---:|---:|",
        lambda r: _by_setting(r, "num_images_per_prompt", "s_per_image", "speedup_by_batch", ".3f")))


def captioning(d) -> str:
    def rows(r):
        for x in r["rows"]:
            yield (f"| {r['model']} | {x['num_beams']} | {x['transformers_captions_per_s']:.2f} | "
                   f"{x['fastgen_captions_per_s']:.2f} | {x['transformers_ms_per_token']:.1f} | "
                   f"{x['fastgen_ms_per_token']:.1f} | {x['speedup']:.1f}x | {x['same_token_ids']} |")

    return "\n".join(_model_table(
        _load(d, "captioning").get("models", []),
        "| model | beams | transformers captions/s | fastgen captions/s | transformers ms/token | "
        "fastgen ms/token | speed-up | same ids |", "|---|---:|---:|---:|---:|---:|---:|---|", rows))


def video(d) -> str:
    def rows(r):
        for x in sorted(r["rows"], key=lambda x: (x["num_frames"], x["framework"] == "fastgen")):
            b, ran, fg = r["by_frames"][str(x["num_frames"])], x["ran"], x["framework"] == "fastgen"
            if not b["long_video"]:
                how = "one window"
            elif fg:
                how = f"context windows {ran['context_length']}/{ran['context_stride']} ({len(ran['windows'])})"
            else:
                fn = ran["free_noise"]
                how = f"FreeNoise {fn['context_length']}/{fn['context_stride']} ({len(fn['windows'])})"
            ratios = (f"{_x(b['speedup_s_per_frame'])} | {_x(b['ratio_peak_rss'])} less | {b['max_abs_diff']:.1e}"
                      if fg else " | | ")
            yield (f"| {r['model']} ({r['height']}px, {r['steps']} steps) | {x['num_frames']} | {x['framework']} | "
                   f"{how} | {x['s_per_frame']:.4f} | {x['s_per_video']:.2f} | {x['first_call_s']:.2f} | "
                   f"{x['peak_rss_mb']:.0f} | {ratios} |")

    return "\n".join(_model_table(
        _load(d, "video").get("models", []),
        "| model | frames | framework | long video | s/frame | s/video | first call s | peak RSS MiB | "
        "speed-up | RSS ratio | max abs diff |", "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|", rows))


def _db(v):
    return "∞" if v is None else f"{v:.1f}"


def cpu_row_order(r) -> tuple:
    """Sort key of a cpu_backends row: diffusers, optimum, fastgen; onnxruntime first; fp32, bf16, int8."""
    return ({"diffusers": 0, "optimum": 1, "fastgen": 2}.get(r["framework"], 3), r["backend"] != "onnxruntime",
            {"fp32": 0, "bf16": 1, "int8": 2}.get(r["precision"], 3))


def cpu_backends(d) -> str:
    """The CPU backends table (cpu_backends.py): stages, peak RSS and PSNR per configuration, the skipped
    configurations with their reason, then the issue's targets and the demo model's accuracy."""
    j = _load(d, "cpu_backends")
    if "status" in j:
        return j["status"]
    acc = j.get("accuracy", {})
    rows = sorted(j.get("rows", []), key=cpu_row_order)
    out = [f"{j['model']}, {j['image_size']}px, {j['steps']} DDIM steps, CFG {j['guidance_scale']} (UNet batch 2), "
           f"one image; fastest timed call of {j.get('rounds', 1)} fresh process(es) per configuration. 1-minute load "
           f"{j['load_avg_1m_start']:.1f} at the start, {j['load_avg_1m_end']:.1f} at the end (2 cores).", "",
           "| configuration | total s/image | text encode s | UNet s | s / UNet call | VAE decode s | peak RSS MiB | "
           "PSNR vs fp32 dB | vs diffusers fp32 |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    base = next((r["min"]["total"] for r in rows if r["config"] == "diffusers-fp32"), None)
    for r in rows:
        m, a = r["min"], acc.get(r["config"])
        ps = f"{_db(a['psnr_db'])} (vs {a['reference']})" if a else ""
        out.append(f"| {r['config']} | {m['total']:.2f} | {m['text_encode']:.3f} | {m['unet']:.2f} | "
                   f"{r['unet_s_per_call']:.3f} | {m['vae_decode']:.2f} | {r['peak_rss_mb']:.0f} | {ps} | "
                   f"{_x(base / m['total'] if base else None)} |")
    for name, why in j.get("skipped", {}).items():
        out.append(f"| {name} | {why[:160]} | | | | | | | |")
    out += ["", "| target | measured | target | met |", "|---|---:|---:|---|"]
    for k, t in j.get("targets", {}).items():
        v = t["value"]
        vs = "—" if v is None else (f"{v:.1e}" if k.endswith("max_abs") else f"{v:.2f}x")
        tg = f"≤ {t['target']:.0e}" if k.endswith("max_abs") else f"≥ {t['target']}x"
        met = {True: "met", False: "**missed**", None: "not measured"}[t["met"]]
        out.append(f"| {k} ({t['note']}) | {vs} | {tg} | {met} |")
    demo = j.get("demo") or {}
    if demo.get("rows"):
        out += ["", f"Demo model, {demo['prompts']} prompts, {demo['steps']} steps (tests/test_demo.py's prompts, "
                    f"seed {demo['seed']}): fraction right. {demo.get('int8', '')}", "",
                "| backend | precision | background | colour | shape | all | PSNR vs ORT fp32 dB | s / batch |",
                "|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in demo["rows"]:
            ps = _db(r["psnr_vs_ort_fp32_db"]) if "psnr_vs_ort_fp32_db" in r else ""
            out.append(f"| {r['backend']} | {r['precision']} | {r['background']:.2f} | {r['color']:.2f} | "
                       f"{r['shape']:.2f} | {r['all']:.2f} | {ps} | {r['s_per_batch']:.2f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    d = (argv or sys.argv[1:] or ["benchmarks/results"])[0]
    print(header(d) + "\n")
    for title, fn in (("loop overhead", loop_overhead), ("e2e", e2e), ("cold start", cold), ("memory", memory),
                      ("throughput", throughput), ("batch scaling", batch), ("captioning", captioning),
                      ("video", video), ("CPU backends", cpu_backends)):
        try:
            print(f"### {title}\n\n{fn(d)}\n")
        except Exception as e:  # noqa: BLE001
            print(f"### {title}\n\n(missing: {e!r})\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
