"""One PNG per figure, from the JSON records run_all.py writes (matplotlib, Agg backend)."""

from __future__ import annotations

import os

import numpy as np

COLORS = {"diffusers": "#d9822b", "transformers": "#d9822b", "fastgen": "#2b7bd9"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def e2e(records: list[dict], path: str) -> str | None:
    """Stacked bars of the stages, seconds per image, per model and framework (min run)."""
    recs = [r for r in records if "fastgen" in r]
    if not recs:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(recs), figsize=(max(6.0, 4.2 * len(recs)), 4.2), squeeze=False)
    stages = ("text_encode", "unet", "vae_decode", "loop_overhead")
    shades = ("#7f7f7f", "#4c72b0", "#55a868", "#c44e52")
    for ax, r in zip(axes[0], recs):
        for i, fw in enumerate(("diffusers", "fastgen")):
            bottom = 0.0
            for s, c in zip(stages, shades):
                v = r[fw]["min"][s]
                ax.bar(i, v, 0.6, bottom=bottom, color=c, label=s if i == 0 else None)
                bottom += v
            ax.text(i, bottom, f"{r[fw]['min']['total']:.2f}s", ha="center", va="bottom", fontsize=8)
        ax.set_xticks([0, 1], ["diffusers\n(torch)", "fastgen\n(ORT)"])
        ax.set_title(f"{r['model']}: {r['steps']} steps, {r['image_size']}px\nx{r['speedup_total']:.1f} faster",
                     fontsize=9)
        ax.set_ylabel("seconds per image")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("End-to-end text-to-image, CPU, stage breakdown (min of repeats)", fontsize=10)
    return _save(fig, path)


def grouped(records: list[dict], path: str, *, xkey: str, ykey: str, ylabel: str, title: str, xlabel: str):
    recs = [r for r in records if r.get("rows")]
    if not recs:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(recs), figsize=(max(6.0, 4.2 * len(recs)), 4.0), squeeze=False)
    for ax, r in zip(axes[0], recs):
        xs = sorted({row[xkey] for row in r["rows"]})
        x = np.arange(len(xs))
        for j, fw in enumerate(("diffusers", "fastgen")):
            ys = [next(row[ykey] for row in r["rows"] if row[xkey] == v and row["framework"] == fw) for v in xs]
            ax.bar(x + (j - 0.5) * 0.4, ys, 0.4, color=COLORS[fw], label=fw)
        ax.set_xticks(x, [str(v) for v in xs])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{r['model']} ({r['steps']} steps, {r['image_size']}px)", fontsize=9)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def cold_memory(imports: dict | None, cold: list[dict], mem: list[dict], path: str) -> str | None:
    cold = [c for c in cold if c.get("rows")]
    mem = [m for m in mem if m.get("rows")]
    if not cold and not imports:
        return None
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    labels, vals = [], {"diffusers": [], "fastgen": []}
    if imports and imports.get("rows"):
        labels.append("import")
        for fw in vals:
            vals[fw].append(imports["rows"][fw]["import_s"]["min"])
    for c in cold:
        labels.append(f"first image\n{c['model']}")
        for fw in vals:
            vals[fw].append(c["rows"][fw]["spawn_to_end_s"]["min"])
    x = np.arange(len(labels))
    for j, fw in enumerate(vals):
        a1.bar(x + (j - 0.5) * 0.4, vals[fw], 0.4, color=COLORS[fw], label=fw)
    a1.set_xticks(x, labels, fontsize=8)
    a1.set_ylabel("seconds (new process)")
    a1.set_title("Cold start: import; spawn to first image", fontsize=9)
    a1.legend(fontsize=8)
    labels = [m["model"] for m in mem]
    x = np.arange(len(labels))
    for j, fw in enumerate(("diffusers", "fastgen")):
        a2.bar(x + (j - 0.5) * 0.4, [m["rows"][fw]["peak_rss_mb"]["min"] / 1024 for m in mem], 0.4,
               color=COLORS[fw], label=fw)
    a2.set_xticks(x, labels)
    a2.set_ylabel("peak RSS, GiB")
    a2.set_title("Peak resident memory of a generating process", fontsize=9)
    return _save(fig, path)


def captioning(records: list[dict], path: str) -> str | None:
    recs = [r for r in records if r.get("rows")]
    if not recs:
        return None
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    labels = [f"{r['model']}\nbeams={row['num_beams']}" for r in recs for row in r["rows"]]
    rows = [row for r in recs for row in r["rows"]]
    x = np.arange(len(rows))
    for j, (fw, key) in enumerate((("transformers", "transformers"), ("fastgen", "fastgen"))):
        a1.bar(x + (j - 0.5) * 0.4, [row[f"{key}_captions_per_s"] for row in rows], 0.4, color=COLORS[fw], label=fw)
        a2.bar(x + (j - 0.5) * 0.4, [row[f"{key}_ms_per_token"] for row in rows], 0.4, color=COLORS[fw], label=fw)
    for a, yl in ((a1, "captions / s"), (a2, "ms per generated token (batch)")):
        a.set_xticks(x, labels, fontsize=7)
        a.set_ylabel(yl)
        a.set_yscale("log")
    a1.legend(fontsize=8)
    a1.set_title("Captioning throughput", fontsize=9)
    a2.set_title("Per-token latency", fontsize=9)
    return _save(fig, path)


def video(records: list[dict], path: str) -> str | None:
    """Seconds per frame and peak RSS per video length, fastgen vs diffusers (one panel each)."""
    recs = [r for r in records if r.get("rows")]
    if not recs:
        return None
    r = recs[0]
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    xs = sorted({row["num_frames"] for row in r["rows"]})
    x = np.arange(len(xs))
    labels = [f"{n} frames" + ("\n(windows / FreeNoise)" if r["by_frames"][str(n)]["long_video"] else "")
              for n in xs]
    for ax, key, ylabel in ((a1, "s_per_frame", "seconds per frame"),
                            (a2, "peak_rss_mb", "peak RSS, MiB (fresh process)")):
        for j, fw in enumerate(("diffusers", "fastgen")):
            ys = [next(row[key] for row in r["rows"] if row["num_frames"] == n and row["framework"] == fw) for n in xs]
            bars = ax.bar(x + (j - 0.5) * 0.4, ys, 0.4, color=COLORS[fw], label=fw)
            ax.bar_label(bars, fmt="%.3g", fontsize=7)
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_ylabel(ylabel)
    a1.legend(fontsize=8)
    a1.set_title("Time per frame (fastest warm call / frames)", fontsize=9)
    a2.set_title("Peak resident memory of the generating process", fontsize=9)
    fig.suptitle(f"Text-to-video, {r['model']} ({r['motion_max_seq_length']}-frame motion module), "
                 f"{r['height']}x{r['width']}, {r['steps']} steps, CFG {r['guidance_scale']}", fontsize=10)
    return _save(fig, path)


CPU_SHADES = {"diffusers": ("#d9822b", "#f0b27a"), "optimum": ("#8e44ad", "#c39bd3"), "fastgen": ("#2b7bd9", "#85b6ee")}


def cpu_backends(rec: dict, path: str) -> str | None:
    """CPU backends (cpu_backends.py): stacked stage bars (s/image) per configuration, and peak RSS."""
    from report import cpu_row_order

    rows = sorted(rec.get("rows") or [], key=cpu_row_order)
    if not rows:
        return None
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(14, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    x = np.arange(len(rows))
    stages = ("text_encode", "unet", "vae_decode")
    shades = ("#7f7f7f", "#4c72b0", "#55a868")
    for i, r in enumerate(rows):
        bottom = 0.0
        for s, c in zip(stages, shades):
            v = r["min"][s]
            a1.bar(i, v, 0.65, bottom=bottom, color=c, label=s if i == 0 else None)
            bottom += v
        rest = max(0.0, r["min"]["total"] - bottom)
        a1.bar(i, rest, 0.65, bottom=bottom, color="#c44e52", label="rest" if i == 0 else None)
        a1.text(i, r["min"]["total"], f"{r['min']['total']:.1f}", ha="center", va="bottom", fontsize=7)
    labels = [r["config"].replace("-", "\n", 1) for r in rows]
    a1.set_xticks(x, labels, fontsize=7)
    a1.set_ylabel("seconds per image (fastest timed call)")
    a1.legend(fontsize=7)
    a1.set_title(f"{rec['model']}: {rec['image_size']}px, {rec['steps']} DDIM steps, CFG {rec['guidance_scale']}",
                 fontsize=9)
    for i, r in enumerate(rows):
        a2.bar(i, r["peak_rss_mb"] / 1024, 0.65, color=CPU_SHADES.get(r["framework"], ("#999", "#ccc"))[
            0 if r["precision"] == "fp32" else 1])
    a2.set_xticks(x, labels, fontsize=6, rotation=45)
    a2.set_ylabel("peak RSS, GiB (fresh process)")
    a2.set_title("Peak resident memory of the generating process", fontsize=9)
    t = rec.get("targets", {}).get("e2e_best_fastgen_vs_diffusers_fp32", {})
    sub = f"best fastgen vs diffusers fp32: {t['value']:.1f}x" if t.get("value") else ""
    load = f"1-min load {rec.get('load_avg_1m_start', 0):.1f} -> {rec.get('load_avg_1m_end', 0):.1f} (2 cores)"
    fig.suptitle(f"CPU backends: diffusers (torch) vs optimum-intel (OpenVINO) vs fastgen (ORT / OpenVINO). {sub}. "
                 f"{load}", fontsize=10)
    return _save(fig, path)


def all_figures(out: str, results: dict) -> list[str]:
    made = []
    made.append(e2e(results.get("e2e", {}).get("models", []), os.path.join(out, "e2e.png")))
    made.append(grouped(results.get("throughput", {}).get("models", []), os.path.join(out, "throughput.png"),
                        xkey="callers", ykey="images_per_s", ylabel="images / s", xlabel="concurrent callers",
                        title="Service throughput: concurrent callers on one pipeline"))
    made.append(grouped(results.get("batch_scaling", {}).get("models", []), os.path.join(out, "batch_scaling.png"),
                        xkey="num_images_per_prompt", ykey="s_per_image", ylabel="seconds per image",
                        xlabel="num_images_per_prompt", title="Batch scaling"))
    made.append(cold_memory(results.get("import_time"), results.get("cold_start", {}).get("models", []),
                            results.get("memory", {}).get("models", []), os.path.join(out, "cold_start_memory.png")))
    made.append(captioning(results.get("captioning", {}).get("models", []), os.path.join(out, "captioning.png")))
    made.append(video(results.get("video", {}).get("models", []), os.path.join(out, "video.png")))
    if results.get("cpu_backends", {}).get("rows"):
        made.append(cpu_backends(results["cpu_backends"], os.path.join(out, "cpu_backends.png")))
    return [m for m in made if m]


def replot(out: str) -> list[str]:
    """Redraw every figure from the JSON files in ``out`` (``python benchmarks/plots.py DIR``)."""
    import json

    results = {}
    for name in ("e2e", "throughput", "batch_scaling", "cold_start", "memory", "captioning", "video", "cpu_backends"):
        p = os.path.join(out, f"{name}.json")
        if os.path.isfile(p):
            with open(p) as f:
                results[name] = json.load(f)
    results["import_time"] = results.get("cold_start", {}).get("import")
    return all_figures(out, results)


if __name__ == "__main__":
    import sys

    print("\n".join(replot(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results")))
