"""Adapters (issue 18), LoRA part: the denoiser call with 0 / 1 / 3 LoRAs, fastgen vs diffusers, the cost of the
unused LoRA branch, and the LoRA switch time.

Model: the SD 1.5 UNet layout (3 CrossAttnDownBlock2D + DownBlock2D, 2 layers per block, cross-attention 768,
head dim 8) at ``--width-factor`` of its width (default 0.5: block_out_channels (160, 320, 640, 640), 215 M
parameters; the full 860 M model does not fit this 2-core, 23 GB box next to the other sessions), random
weights, batch 2 (classifier-free guidance) at 32x32 latents (256 px). The rank-0 branch adds the same nodes
at any width while the UNet's work shrinks 4x at half width, and a rank-r branch costs r (in + out) / (in out)
of its projection, 2x more at half width: both relative costs here are upper bounds of the full model's.

LoRAs (random, peft on diffusers' side, the same tensors on fastgen's): attention q / k / v / out, the
feed-forward layers and proj_in / proj_out; "1 LoRA" rank 16, "3 LoRAs" ranks 16 + 16 + 32 (summed rank 64).

Rows: diffusers (torch, peft adapters, ``set_adapters``), fastgen ONNX Runtime on the LoRA-free graph, on the
LoRA graph with rank-0 inputs (the unused branch) and with the LoRAs' summed low-rank inputs. The switch time
is reading, hashing and parsing a LoRA file of the full SD 1.5 UNet's shapes (rank 16, attention + ff +
proj: every module of that kind, 3.3 M parameters x 4 bytes) plus combining it into the graph's inputs.

    PYTHONPATH=python:export python benchmarks/adapters.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import timeit, write_json  # noqa: E402
from models import SD15_UNET  # noqa: E402

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out"]
SETS = {"1 LoRA": [16], "3 LoRAs": [16, 16, 32]}


def _unet_config(width_factor: float) -> dict:
    cfg = dict(SD15_UNET)
    cfg["block_out_channels"] = tuple(int(c * width_factor) for c in SD15_UNET["block_out_channels"])
    return cfg


def _lora_state(unet, rank: int, seed: int) -> dict:
    """A random peft LoRA of ``rank`` on ``unet``: {module: (down, up)} as numpy, and leaves the adapter on."""
    import torch
    from peft import LoraConfig

    name = f"l{seed}"
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS, init_lora_weights=False),
                     adapter_name=name)
    gen = torch.Generator().manual_seed(seed)
    out = {}
    with torch.no_grad():
        for pname, p in unet.named_parameters():
            if f"lora_A.{name}." in pname or f"lora_B.{name}." in pname:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
                mod = pname.split(".lora_")[0].replace(".base_layer", "")
                out.setdefault(mod, {})["A" if "lora_A" in pname else "B"] = p.detach().numpy().copy()
    return name, out


def _feeds(graph_inputs, states: list[dict]) -> dict:
    """The LoRA graph's side inputs for ``states`` (strength 1, alpha = rank), rank 0 elsewhere."""
    feeds = {}
    for inp in graph_inputs:
        if not inp.name.startswith("lora_down."):
            continue
        mod = inp.name[len("lora_down."):]
        up_shape = [d for d in next(i for i in graph_inputs if i.name == f"lora_up.{mod}").shape]
        downs = [s[mod]["A"] for s in states if mod in s]
        ups = [s[mod]["B"] for s in states if mod in s]
        d_shape = [0] + [int(x) for x in inp.shape[1:]]
        u_shape = [int(up_shape[0]), 0] + [int(x) for x in up_shape[2:]]
        d = np.concatenate([x.reshape(x.shape[0], *d_shape[1:]) for x in downs]) if downs else np.zeros(d_shape)
        u = np.concatenate([x.reshape(u_shape[0], x.shape[1], *u_shape[2:]) for x in ups], axis=1) if ups \
            else np.zeros(u_shape)
        feeds[inp.name], feeds[f"lora_up.{mod}"] = d.astype(np.float32), u.astype(np.float32)
    return feeds


def switch_time(repeat: int) -> dict:
    """Seconds to take a new LoRA file (read, hash, parse) and combine it into the full SD 1.5 UNet's inputs."""
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.numpy import save_file

    from fastgen import lora as rt
    from fastgen_export.lora import targets

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET)
    tlist = targets(unet)
    rng = np.random.default_rng(0)
    tensors = {}
    for t in tlist:
        if t["name"].split(".")[-1] in ("to_q", "to_k", "to_v", "proj_in", "proj_out", "2") or \
                t["name"].endswith(("to_out.0", "ff.net.0.proj")):
            tensors[f"unet.{t['name']}.lora_A.weight"] = rng.standard_normal((16, t["in"]), np.float32) * 0.02
            tensors[f"unet.{t['name']}.lora_B.weight"] = rng.standard_normal((t["out"], 16), np.float32) * 0.02

    class Manifest:
        family = "sd"
        data = {"lora": {"max_rank": 128, "components": {"unet": {"graph": "unet_lora", "targets": tlist}}}}

        def has(self, name):
            return True

    engine = rt.EngineLoras(Manifest(), "unet")
    cold, warm = [], []
    with tempfile.TemporaryDirectory() as d:
        for i in range(repeat):
            path = os.path.join(d, f"l{i}.safetensors")
            tensors[next(iter(tensors))][0, 0] = float(i)  # new content: nothing cached
            save_file(tensors, path)
            t0 = time.perf_counter()
            engine.feeds(rt.check_loras({path: 0.8}))
            t1 = time.perf_counter()
            engine.feeds(rt.check_loras({path: 0.5 + i}))  # a known file at a new strength: a new set
            t2 = time.perf_counter()
            cold.append(t1 - t0)
            warm.append(t2 - t1)
        size = os.path.getsize(path)
    return {"median_s": float(np.median(cold)), "min_s": float(min(cold)), "known_file_new_set_median_s":
            float(np.median(warm)), "file_bytes": size, "modules": len(tensors) // 2, "graph_modules": len(tlist)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--width-factor", type=float, default=0.5)
    ap.add_argument("--latent", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--switch-only", action="store_true",
                    help="measure only the switch time and update it in an existing adapters.json")
    args = ap.parse_args(argv)
    if args.switch_only:
        import json

        path = os.path.join(args.out, "adapters.json")
        with open(path) as f:
            payload = json.load(f)
        payload["switch"] = switch_time(args.repeat)
        payload["switch"]["load_average"] = os.getloadavg()
        with open(path, "w") as f:
            json.dump(payload, f, indent=2)
        print(payload["switch"])
        return 0

    import onnxruntime as ort
    import torch
    from diffusers import UNet2DConditionModel

    from fastgen_export import onnx_utils
    from fastgen_export.lora import branch_spec
    from fastgen_export.spec import ComponentSpec, TensorSpec
    from fastgen_export.wrappers import UNet

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    cfg = _unet_config(args.width_factor)
    unet = UNet2DConditionModel(**cfg).eval().requires_grad_(False)
    params = sum(p.numel() for p in unet.parameters())
    b, h = 2, args.latent
    x = torch.randn(b, 4, h, h)
    t = torch.full((b,), 500.0)
    ehs = torch.randn(b, 77, 768)
    inputs = [TensorSpec("sample", "float32", ("batch", 4, "latent_height", "latent_width")),
              TensorSpec("timestep", "float32", ("batch",)),
              TensorSpec("encoder_hidden_states", "float32", ("batch", 77, 768))]
    outputs = [TensorSpec("noise_pred", "float32", ("batch", 4, "latent_height", "latent_width"))]
    rows = {}
    with tempfile.TemporaryDirectory() as d:
        spec = ComponentSpec("unet", UNet(unet), inputs, outputs, lambda dims, gen: (x, t, ehs))
        free = os.path.join(d, "free", "model.onnx")
        os.makedirs(os.path.dirname(free))
        onnx_utils.export_module(spec.module, (x, t, ehs), free, input_names=spec.input_names,
                                 output_names=spec.output_names, dynamic_axes=spec.dynamic_axes(), opset=18)
        lspec = branch_spec(spec, unet, {"batch": b, "latent_height": h, "latent_width": h})
        lpath = os.path.join(d, "lora", "model.onnx")
        os.makedirs(os.path.dirname(lpath))
        ex = lspec.make_inputs({"batch": b}, torch.Generator().manual_seed(0))
        onnx_utils.export_module(lspec.module, ex, lpath, input_names=lspec.input_names,
                                 output_names=lspec.output_names, dynamic_axes=lspec.dynamic_axes(), opset=18)
        lspec.module.remove()
        so = ort.SessionOptions()
        s_free = ort.InferenceSession(free, so, providers=["CPUExecutionProvider"])
        s_lora = ort.InferenceSession(lpath, so, providers=["CPUExecutionProvider"])
        base = {"sample": x.numpy(), "timestep": t.numpy(), "encoder_hidden_states": ehs.numpy()}
        lin = s_lora.get_inputs()

        def torch_call():
            with torch.no_grad():
                unet(x, t, ehs, return_dict=False)

        rows["diffusers, no LoRA"] = timeit(torch_call, repeat=args.repeat)
        states = []
        names = []
        for i, r in enumerate([16, 16, 32]):
            n, st = _lora_state(unet, r, i + 1)
            names.append(n)
            states.append(st)
        rows["fastgen, LoRA-free graph"] = timeit(lambda: s_free.run(None, base), repeat=args.repeat)
        zero = {**base, **_feeds(lin, [])}
        rows["fastgen, LoRA graph, rank 0 (unused branch)"] = timeit(lambda: s_lora.run(None, zero),
                                                                      repeat=args.repeat)
        rows["fastgen, LoRA-free graph (again)"] = timeit(lambda: s_free.run(None, base), repeat=args.repeat)
        for label, ranks in SETS.items():
            k = len(ranks)
            unet.set_adapters(names[:k], [1.0] * k)
            rows[f"diffusers, {label}"] = timeit(torch_call, repeat=args.repeat)
            feeds = {**base, **_feeds(lin, states[:k])}
            rows[f"fastgen, {label} (summed rank {sum(ranks)})"] = timeit(lambda: s_lora.run(None, feeds),
                                                                          repeat=args.repeat)
        with torch.no_grad():
            want = unet(x, t, ehs, return_dict=False)[0].numpy()
        got = s_lora.run(None, feeds)[0]
        parity = float(np.abs(got - want).max())
        # the unused branch's cost from interleaved pairs (free, rank 0): robust to the load drifting on shared cores
        ratios = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            s_free.run(None, base)
            t1 = time.perf_counter()
            s_lora.run(None, zero)
            ratios.append((time.perf_counter() - t1) / (t1 - t0))
    unused = float(np.median(ratios)) - 1.0
    switch = switch_time(args.repeat)
    payload = {"model": {"layout": "SD 1.5 UNet", "width_factor": args.width_factor,
                         "block_out_channels": list(cfg["block_out_channels"]), "parameters": params,
                         "batch": b, "latent": h},
               "loras": {"targets": TARGETS, "sets": SETS}, "unet_call_s": rows,
               "unused_branch_overhead": unused, "unused_branch_ratios": ratios, "parity_3_loras_max_abs": parity, "switch": switch,
               "load_average": os.getloadavg()}
    path = write_json(args.out, "adapters", payload)
    print(f"{path}\n  unused branch: {unused * 100:+.1f}%  switch {switch['median_s'] * 1e3:.1f} ms  "
          f"parity {parity:.2e}")
    for k, v in rows.items():
        print(f"  {k:48s} {v['median'] * 1e3:9.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
