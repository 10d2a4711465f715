"""Exporter tests: tiny random-weight diffusers pipelines -> engine directories, checked against diffusers.

Each tiny pipeline is built and exported once per module (module-scoped caches); the ONNX graphs are
then compared with the *diffusers pipeline's own* modules (not the exporter's wrappers) at shapes
other than the traced ones (batch 2, non-square), so a wrong io meaning or a baked shape fails here.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from fastgen.errors import ExportError, FastgenError, UnsupportedError  # noqa: E402
from fastgen_export import export  # noqa: E402
from fastgen_export import onnx_utils, trt  # noqa: E402
from fastgen_export.testing import KINDS, build_tiny_pipeline  # noqa: E402

KIND_FAMILY = {"sd": "sd", "sd2v": "sd", "inpaint": "sd", "sdxl": "sdxl", "sd3": "sd3", "sd3_t5": "sd3"}
# batch 2, 40x56 pixels (latent 10x14 with the tiny VAE's factor 4): not the traced shape (2 x 32x32)
# nor the export-time parity shape (1 x 48x80)
B, H, W = 2, 40, 56


# ----------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared CPU OpenMP spin-waiting makes
    them several times slower (measured 4 s vs 14 s for the SDXL export)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fastgen_export")


@pytest.fixture(scope="module")
def tiny(workdir):
    cache: dict[str, str] = {}

    def get(kind: str) -> str:
        if kind not in cache:
            cache[kind] = build_tiny_pipeline(kind, workdir / "src" / kind)
        return cache[kind]

    return get


@pytest.fixture(scope="module")
def engine(tiny, workdir):
    cache: dict[tuple, str] = {}

    def get(kind: str, dtype: str = "fp32") -> str:
        key = (kind, dtype)
        if key not in cache:
            # sd2v also goes through the offline ORT optimisation, end to end with parity
            cache[key] = export(tiny(kind), workdir / "engines" / f"{kind}-{dtype}", dtype=dtype,
                                optimize=(kind == "sd2v"), log=None)
        return cache[key]

    return get


@pytest.fixture(scope="module")
def pipes(tiny):
    cache = {}

    def get(kind: str):
        if kind not in cache:
            from diffusers import DiffusionPipeline

            extra = {"text_encoder_3": None, "tokenizer_3": None} if kind == "sd3" else {}
            cache[kind] = DiffusionPipeline.from_pretrained(tiny(kind), **extra)
        return cache[kind]

    return get


def manifest_of(engine_dir: str) -> dict:
    with open(os.path.join(engine_dir, "fastgen.json"), encoding="utf-8") as f:
        return json.load(f)


def session(engine_dir: str, component: str):
    path = manifest_of(engine_dir)["components"][component]["path"]
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(os.path.join(engine_dir, path), so, providers=["CPUExecutionProvider"])


def run(engine_dir: str, component: str, **feeds):
    sess = session(engine_dir, component)
    names = [o.name for o in sess.get_outputs()]
    outs = sess.run(None, {k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in feeds.items()})
    return dict(zip(names, outs))


def close(got, want, tol):
    want = want.detach().float().numpy() if hasattr(want, "detach") else want
    assert got.shape == want.shape
    err = float(np.abs(got - want).max())
    assert err <= tol, f"max abs diff {err} > {tol}"


# ----------------------------------------------------------------------------- tiny pipeline factory


def test_tiny_factory_kinds_and_vae_factor(tiny, workdir):
    for kind in ("sd", "sd3"):
        with open(os.path.join(tiny(kind), "vae", "config.json")) as f:
            assert len(json.load(f)["block_out_channels"]) == 3  # factor 4, not SD's 8
    d8 = build_tiny_pipeline("sd", workdir / "src" / "sd-f8", vae_scale_factor=8, unet={"sample_size": 8})
    with open(os.path.join(d8, "vae", "config.json")) as f:
        assert len(json.load(f)["block_out_channels"]) == 4
    with pytest.raises(FastgenError, match="unknown tiny pipeline kind"):
        build_tiny_pipeline("flux", workdir / "src" / "nope")
    assert set(KINDS) == set(KIND_FAMILY)


# ------------------------------------------------------------------------------ graphs and manifests


@pytest.mark.parametrize("kind", KINDS)
def test_export_manifest_and_graphs(kind, engine, tiny):
    out = engine(kind)
    m = manifest_of(out)
    fam = KIND_FAMILY[kind]
    assert m["format"] == "fastgen-engine" and m["format_version"] == 1
    assert m["family"] == fam
    assert m["kind"] == ("inpaint" if kind == "inpaint" else "text2img")
    import diffusers
    import transformers

    assert m["source"]["diffusers_version"] == diffusers.__version__
    assert m["source"]["transformers_version"] == transformers.__version__
    assert m["source"]["torch_version"] == torch.__version__
    assert m["exporter"]["opset"] == 18 and m["exporter"]["dtype"] == "fp32"

    cfg = m["config"]
    assert cfg["vae_scale_factor"] == 4
    assert cfg["latent_channels"] == (16 if fam == "sd3" else 4)
    assert cfg["unet_in_channels"] == (9 if kind == "inpaint" else cfg["latent_channels"])
    assert cfg["default_height"] == cfg["default_width"] == 16 * 4
    assert cfg["size_multiple"] == 8 and cfg["min_size"] % 8 == 0 and cfg["max_size"] % 8 == 0
    with open(os.path.join(tiny(kind), "vae", "config.json")) as f:
        vae_cfg = json.load(f)
    assert cfg["scaling_factor"] == pytest.approx(vae_cfg["scaling_factor"])
    assert cfg["shift_factor"] == pytest.approx(vae_cfg.get("shift_factor") or 0.0)

    den = "transformer" if fam == "sd3" else "unet"
    text_encoders = {"sd": ["text_encoder"], "sdxl": ["text_encoder", "text_encoder_2"],
                     "sd3": ["text_encoder", "text_encoder_2"]}[fam] + (["text_encoder_3"] if kind == "sd3_t5" else [])
    assert cfg["text_encoders"] == text_encoders
    assert set(m["components"]) == {*text_encoders, den, "vae_decoder", "vae_encoder"}

    expected_io = {
        "text_encoder": (["input_ids"], ["last_hidden_state", "penultimate_hidden_state", "pooled"]),
        "text_encoder_2": (["input_ids"], ["last_hidden_state", "penultimate_hidden_state", "pooled"]),
        "text_encoder_3": (["input_ids"], ["last_hidden_state"]),
        "unet": (["sample", "timestep", "encoder_hidden_states"] + (["text_embeds", "time_ids"] if fam == "sdxl" else []),
                 ["noise_pred"]),
        "transformer": (["hidden_states", "timestep", "encoder_hidden_states", "pooled_projections"], ["noise_pred"]),
        "vae_decoder": (["latent"], ["sample"]),
        "vae_encoder": (["sample"], ["latent_mean"]),
    }
    for name, comp in m["components"].items():
        rel = comp["path"]
        assert rel == f"{name}/model.onnx" and not os.path.isabs(rel)
        path = os.path.join(out, rel)
        onnx.checker.check_model(path, full_check=True)
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        ins, outs = expected_io[name]
        assert [i.name for i in sess.get_inputs()] == ins == list(comp["inputs"])
        assert [o.name for o in sess.get_outputs()] == outs == list(comp["outputs"])
        for i in sess.get_inputs():
            assert i.type == ("tensor(int64)" if i.name == "input_ids" else "tensor(float)")
            assert i.shape[0] == "batch"  # dynamic batch everywhere
        assert comp["parity"]["passed"] is True
        assert comp["parity"]["max_abs"] <= comp["parity"]["tolerance"]
        assert comp["dtype"] == "fp32"
    assert m["components"][den]["inputs"]["timestep"] == {"dtype": "float32", "shape": ["batch"]}
    assert m["components"]["vae_decoder"]["inputs"]["latent"]["shape"] == \
        ["batch", cfg["latent_channels"], "latent_height", "latent_width"]
    assert m["components"]["vae_encoder"]["inputs"]["sample"]["shape"] == ["batch", 3, "height", "width"]

    with open(os.path.join(out, m["scheduler"]["path"])) as f, \
            open(os.path.join(tiny(kind), "scheduler", "scheduler_config.json")) as g:
        assert json.load(f) == json.load(g)
    for tok in m["tokenizers"].values():
        assert not os.path.isabs(tok["path"]) and os.path.isfile(os.path.join(out, tok["path"]))
    assert not [p for p in os.listdir(os.path.dirname(out)) if ".partial-" in p]


def test_config_constants_per_family(engine):
    sd2 = manifest_of(engine("sd2v"))
    assert sd2["config"]["prediction_type"] == "v_prediction"
    assert sd2["exporter"]["optimize"] == "ort-basic"
    assert manifest_of(engine("sd"))["config"]["prediction_type"] == "epsilon"
    assert manifest_of(engine("sd"))["config"]["prompt_embeds"] == "last_hidden_state"

    xl = manifest_of(engine("sdxl"))["config"]
    assert xl["prompt_embeds"] == "penultimate_hidden_state"
    assert xl["addition_time_embed_dim"] == 8 and xl["time_ids_size"] == 6
    assert xl["force_zeros_for_empty_prompt"] is True and xl["requires_aesthetics_score"] is False
    assert manifest_of(engine("sdxl"))["tokenizers"]["tokenizer_2"]["pad_token"] == "!"

    no_t5 = manifest_of(engine("sd3"))
    assert no_t5["config"]["t5_present"] is False and "tokenizer_3" not in no_t5["tokenizers"]
    assert no_t5["config"]["t5_max_length"] == 256 and no_t5["config"]["joint_attention_dim"] == 64
    assert no_t5["config"]["prediction_type"] == "flow"
    assert no_t5["components"]["transformer"]["inputs"]["encoder_hidden_states"]["shape"] == ["batch", 77 + 256, 64]
    t5 = manifest_of(engine("sd3_t5"))
    assert t5["config"]["t5_present"] is True and t5["config"]["t5_hidden_size"] == 64
    assert t5["tokenizers"]["tokenizer_3"]["max_length"] == 256


# ------------------------------------------------------------------- numerical parity with diffusers


@pytest.mark.parametrize("kind", KINDS)
def test_graphs_match_diffusers_modules(kind, engine, pipes):
    out, pipe = engine(kind), pipes(kind)
    cfg = manifest_of(out)["config"]
    g = torch.Generator().manual_seed(1)
    h, w = H // 4, W // 4
    c = cfg["latent_channels"]
    with torch.no_grad():
        for name in cfg["text_encoders"]:
            model = getattr(pipe, name)
            length = 256 if name == "text_encoder_3" else 77
            ids = torch.randint(0, model.config.vocab_size, (B, length), generator=g)
            got = run(out, name, input_ids=ids)
            if name == "text_encoder_3":
                close(got["last_hidden_state"], model(ids)[0], 1e-4)
                continue
            ref = model(ids, output_hidden_states=True)
            close(got["last_hidden_state"], ref.last_hidden_state, 1e-4)
            close(got["penultimate_hidden_state"], ref.hidden_states[-2], 1e-4)
            close(got["pooled"], ref.text_embeds if hasattr(ref, "text_embeds") else ref.pooler_output, 1e-4)

        t = torch.tensor([999.0, 17.5])
        if KIND_FAMILY[kind] == "sd3":
            tr = pipe.transformer
            x = torch.randn(B, c, h, w, generator=g)
            ehs = torch.randn(B, 333, tr.config.joint_attention_dim, generator=g)
            pooled = torch.randn(B, tr.config.pooled_projection_dim, generator=g)
            got = run(out, "transformer", hidden_states=x, timestep=t, encoder_hidden_states=ehs,
                      pooled_projections=pooled)["noise_pred"]
            close(got, tr(hidden_states=x, timestep=t, encoder_hidden_states=ehs, pooled_projections=pooled).sample, 1e-4)
        else:
            unet = pipe.unet
            x = torch.randn(B, cfg["unet_in_channels"], h, w, generator=g)
            ehs = torch.randn(B, 77, unet.config.cross_attention_dim, generator=g)
            feeds = dict(sample=x, timestep=t, encoder_hidden_states=ehs)
            kwargs = {}
            if kind == "sdxl":
                te, ti = torch.randn(B, 32, generator=g), torch.tensor([[64.0, 64, 0, 0, 64, 64], [40, 56, 0, 0, 40, 56]])
                feeds.update(text_embeds=te, time_ids=ti)
                kwargs["added_cond_kwargs"] = {"text_embeds": te, "time_ids": ti}
            got = run(out, "unet", **feeds)["noise_pred"]
            close(got, unet(x, t, ehs, **kwargs).sample, 1e-4)

        z = torch.randn(B, c, h, w, generator=g)
        close(run(out, "vae_decoder", latent=z)["sample"], pipe.vae.decode(z).sample, 1e-4)
        img = torch.rand(B, 3, H, W, generator=g) * 2 - 1
        close(run(out, "vae_encoder", sample=img)["latent_mean"], pipe.vae.encode(img).latent_dist.mean, 1e-4)


def _encode(out, name, tok_name, prompts):
    from tokenizers import Tokenizer

    m = manifest_of(out)
    tok = Tokenizer.from_file(os.path.join(out, m["tokenizers"][tok_name]["path"]))
    ids = np.array([e.ids for e in tok.encode_batch(prompts)], dtype=np.int64)
    return run(out, name, input_ids=ids)


@pytest.mark.parametrize("kind", ["sd", "sdxl", "sd3", "sd3_t5"])
def test_prompt_embeddings_match_encode_prompt(kind, engine, pipes):
    """tokenizer.json + text encoder graphs reproduce diffusers' encode_prompt, as the manifest says."""
    out, pipe = engine(kind), pipes(kind)
    prompts = ["a photo of a red cat", "A BLUE dog, high quality! " * 12]  # the second one is truncated
    fam = KIND_FAMILY[kind]
    with torch.no_grad():
        if fam == "sd":
            ref, _ = pipe.encode_prompt(prompts, "cpu", 1, False)
            close(_encode(out, "text_encoder", "tokenizer", prompts)["last_hidden_state"], ref, 1e-4)
        elif fam == "sdxl":
            ref, _, pooled, _ = pipe.encode_prompt(prompts, device="cpu", do_classifier_free_guidance=False)
            a = _encode(out, "text_encoder", "tokenizer", prompts)
            b = _encode(out, "text_encoder_2", "tokenizer_2", prompts)
            close(np.concatenate([a["penultimate_hidden_state"], b["penultimate_hidden_state"]], -1), ref, 1e-4)
            close(b["pooled"], pooled, 1e-4)
        else:
            cfg = manifest_of(out)["config"]
            ref, _, pooled, _ = pipe.encode_prompt(prompts, prompts, prompts, device="cpu",
                                                   do_classifier_free_guidance=False)
            a = _encode(out, "text_encoder", "tokenizer", prompts)
            b = _encode(out, "text_encoder_2", "tokenizer_2", prompts)
            clip = np.concatenate([a["penultimate_hidden_state"], b["penultimate_hidden_state"]], -1)
            clip = np.pad(clip, ((0, 0), (0, 0), (0, cfg["joint_attention_dim"] - clip.shape[-1])))
            if cfg["t5_present"]:
                t5 = _encode(out, "text_encoder_3", "tokenizer_3", prompts)["last_hidden_state"]
            else:
                t5 = np.zeros((len(prompts), cfg["t5_max_length"], cfg["t5_hidden_size"]), np.float32)
            close(np.concatenate([clip, t5], 1), ref, 1e-4)
            close(np.concatenate([a["pooled"], b["pooled"]], -1), pooled, 1e-4)


# -------------------------------------------------------------------------------------------- fp16


def test_fp16_export(engine, pipes):
    out = engine("sd", "fp16")
    m = manifest_of(out)
    assert m["exporter"]["dtype"] == "fp16"
    assert m["components"]["unet"]["dtype"] == "fp16" and m["components"]["text_encoder"]["dtype"] == "fp16"
    assert m["components"]["vae_decoder"]["dtype"] == "fp32" and m["components"]["vae_encoder"]["dtype"] == "fp32"
    for name in ("unet", "text_encoder"):
        parity = m["components"][name]["parity"]
        assert parity["passed"] is True or (parity.get("skipped") and parity["reason"])
        graph = onnx.load(os.path.join(out, m["components"][name]["path"]))
        assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.graph.initializer)
        assert all(t.type.tensor_type.elem_type != onnx.TensorProto.FLOAT16 for t in [*graph.graph.input, *graph.graph.output])
    pipe = pipes("sd")
    g = torch.Generator().manual_seed(2)
    x, t, ehs = torch.randn(B, 4, 10, 14, generator=g), torch.tensor([500.0, 3.0]), torch.randn(B, 77, 32, generator=g)
    got = run(out, "unet", sample=x, timestep=t, encoder_hidden_states=ehs)["noise_pred"]
    assert got.dtype == np.float32
    with torch.no_grad():
        close(got, pipe.unet(x, t, ehs).sample, 5e-2)
    ids = torch.randint(0, 700, (B, 77), generator=g)
    with torch.no_grad():
        close(run(out, "text_encoder", input_ids=ids)["last_hidden_state"], pipe.text_encoder(ids)[0], 5e-2)


# --------------------------------------------------------------------------------- bad input / safety


def test_hub_id_goes_through_diffusers_download(tiny, tmp_path, monkeypatch):
    import diffusers

    asked = []

    def fake_download(name, **kwargs):  # stands in for the hub: no network in tests
        asked.append(name)
        return tiny("sd")

    monkeypatch.setattr(diffusers.DiffusionPipeline, "download", staticmethod(fake_download))
    out = export("someorg/tiny-sd", tmp_path / "engine", parity=False, log=None)
    assert asked == ["someorg/tiny-sd"] and manifest_of(out)["source"]["id"] == "someorg/tiny-sd"

    def no_network(name, **kwargs):
        raise OSError("no route to host")

    monkeypatch.setattr(diffusers.DiffusionPipeline, "download", staticmethod(no_network))
    with pytest.raises(ExportError, match="cannot download 'someorg/other'.*no route to host"):
        export("someorg/other", tmp_path / "engine2", log=None)


def test_not_a_pipeline_folder(tmp_path):
    with pytest.raises(ExportError, match="not a diffusers pipeline folder .no model_index.json"):
        export(tmp_path, tmp_path.parent / "out-a", log=None)


def test_missing_source(tmp_path):
    with pytest.raises(ExportError, match="does not exist"):
        export(tmp_path / "nope" / "deeper", tmp_path / "out", log=None)


def test_unsupported_pipeline_class(tmp_path):
    src = tmp_path / "flux"
    src.mkdir()
    (src / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ExportError, match="unsupported pipeline class 'FluxPipeline'.*StableDiffusionPipeline"):
        export(src, tmp_path / "out", log=None)


def test_missing_component_folder(tiny, tmp_path):
    src = tmp_path / "broken"
    shutil.copytree(tiny("sd"), src)
    shutil.rmtree(src / "unet")
    with pytest.raises(ExportError, match="missing component folder 'unet'"):
        export(src, tmp_path / "out", log=None)


def test_bad_options(tiny, tmp_path):
    with pytest.raises(ExportError, match="dtype"):
        export(tiny("sd"), tmp_path / "o", dtype="int8", log=None)
    with pytest.raises(ExportError, match="opset"):
        export(tiny("sd"), tmp_path / "o", opset=13, log=None)
    with pytest.raises(ExportError, match="must not be the source folder"):
        export(tiny("sd"), os.path.join(tiny("sd"), "engine"), log=None)


def test_existing_output_refused_unless_overwrite(tiny, tmp_path):
    out = tmp_path / "engine"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(ExportError, match="already exists"):
        export(tiny("sd"), out, log=None)
    with pytest.raises(ExportError, match="not a fastgen engine"):  # never deletes a non-engine folder
        export(tiny("sd"), out, overwrite=True, log=None)
    assert (out / "keep.txt").read_text() == "user data"

    engine_dir = tmp_path / "engine2"
    export(tiny("sd"), engine_dir, parity=False, log=None)
    first = manifest_of(engine_dir)
    assert first["components"]["unet"]["parity"]["skipped"] is True
    with pytest.raises(ExportError, match="already exists"):
        export(tiny("sd"), engine_dir, parity=False, log=None)
    export(tiny("sd"), engine_dir, parity=False, overwrite=True, dtype="fp16", log=None)
    assert manifest_of(engine_dir)["exporter"]["dtype"] == "fp16"
    assert sorted(os.listdir(tmp_path)) == ["engine", "engine2"]  # no temp / old dirs left


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_interrupted_export_leaves_nothing(tiny, tmp_path, monkeypatch, exc):
    calls = []

    def failing_check(path):
        calls.append(path)
        if "unet" in path:
            raise exc

    monkeypatch.setattr(onnx_utils, "check_graph", failing_check)
    with pytest.raises(type(exc)):
        export(tiny("sd"), tmp_path / "engine", parity=False, log=None)
    assert any("text_encoder" in p for p in calls)  # it failed mid-export, after a finished component
    assert os.listdir(tmp_path) == []


def test_parity_failure_is_an_error(tiny, tmp_path):
    with pytest.raises(ExportError, match="differs from torch"):
        export(tiny("sd"), tmp_path / "engine", tolerance=1e-12, log=None)
    assert os.listdir(tmp_path) == []


def test_external_data(tiny, tmp_path, monkeypatch):
    from fastgen_export import diffusion as dif

    monkeypatch.setattr(onnx_utils, "EXTERNAL_DATA_THRESHOLD", 0)
    plan = dif.plan_pipeline(tiny("sd"))
    spec = dif.build_text_encoder(plan, "text_encoder", 77)
    path = str(tmp_path / "te" / "model.onnx")
    os.makedirs(os.path.dirname(path))
    g = torch.Generator().manual_seed(0)
    assert onnx_utils.export_module(spec.module, spec.make_inputs({"batch": 2}, g), path, opset=18,
                                    input_names=spec.input_names, output_names=spec.output_names,
                                    dynamic_axes=spec.dynamic_axes())
    assert sorted(os.listdir(tmp_path / "te")) == ["model.onnx", "model.onnx.data"]
    assert os.path.getsize(path) < os.path.getsize(path + ".data")
    onnx_utils.optimize_graph(path, external=True)
    onnx_utils.check_graph(path)
    assert sorted(os.listdir(tmp_path / "te")) == ["model.onnx", "model.onnx.data"]
    ids = spec.make_inputs({"batch": 3}, g)
    with torch.no_grad():
        want = spec.module(*ids)
    got = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input_ids": ids[0].numpy()})
    for a, b in zip(got, want):
        close(a, b, 1e-4)


# ---------------------------------------------------------------------------------------- tokenizers


def test_tokenizer_json_pads_and_truncates_like_diffusers(engine, pipes):
    from tokenizers import Tokenizer

    out, pipe = engine("sd3_t5"), pipes("sd3_t5")
    m = manifest_of(out)
    prompts = ["", "a photo of a cat", "Zebra-like QUOKKA!! \u00e9\u00e8 " * 30]
    for name, ref_tok in (("tokenizer", pipe.tokenizer), ("tokenizer_2", pipe.tokenizer_2), ("tokenizer_3", pipe.tokenizer_3)):
        entry = m["tokenizers"][name]
        tok = Tokenizer.from_file(os.path.join(out, entry["path"]))
        assert entry["pad_token_id"] == ref_tok.pad_token_id
        for p in prompts:
            want = ref_tok(p, padding="max_length", max_length=entry["max_length"], truncation=True).input_ids
            assert tok.encode(p).ids == want
            assert len(want) == entry["max_length"]


# ------------------------------------------------------------------------------------------------ CLI


def test_cli(tiny, tmp_path, capsys):
    from fastgen.cli import main as fastgen_main
    from fastgen_export.cli import main as module_main

    out = tmp_path / "engine"
    assert fastgen_main(["export", tiny("sd3"), str(out), "--no-parity", "--opset", "17"]) == 0
    captured = capsys.readouterr()
    assert str(out) in captured.out and "transformer:" in captured.err
    assert manifest_of(out)["exporter"]["opset"] == 17
    assert module_main([tiny("sd3"), str(out), "-q", "--no-parity"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert fastgen_main(["build-trt", str(out), "--min", "1x7x7"]) == 2
    assert "multiples of 8" in capsys.readouterr().err


# -------------------------------------------------------------------------------------------- TensorRT


def test_trt_profiles(engine):
    m = manifest_of(engine("sdxl"))
    assert trt.parse_bhw("2x512x768") == (2, 512, 768)
    with pytest.raises(ExportError):
        trt.parse_bhw("512x512")
    lo, opt, hi = (1, 32, 48), (2, 64, 64), (4, 96, 128)
    unet = trt.profile_for(m, "unet", lo, opt, hi)
    assert unet["sample"] == {"min": [1, 4, 8, 12], "opt": [4, 4, 16, 16], "max": [8, 4, 24, 32]}
    assert unet["encoder_hidden_states"]["max"] == [8, 77, 64]
    assert unet["time_ids"]["opt"] == [4, 6]
    no_cfg = trt.profile_for(m, "unet", lo, opt, hi, cfg=False)
    assert no_cfg["sample"]["max"] == [4, 4, 24, 32]
    assert trt.profile_for(m, "text_encoder_2", lo, opt, hi)["input_ids"] == \
        {"min": [1, 77], "opt": [4, 77], "max": [8, 77]}
    assert trt.profile_for(m, "vae_decoder", lo, opt, hi)["latent"]["max"] == [4, 4, 24, 32]
    assert trt.profile_for(m, "vae_encoder", lo, opt, hi)["sample"]["min"] == [1, 3, 32, 48]
    with pytest.raises(ExportError, match="min <= opt <= max"):
        trt.profile_for(m, "unet", opt, lo, hi)
    with pytest.raises(ExportError, match="multiples of 8"):
        trt.profile_for(m, "unet", (1, 30, 32), opt, hi)
    with pytest.raises(ExportError, match="no component"):
        trt.profile_for(m, "transformer", lo, opt, hi)
    d_lo, d_opt, d_hi = trt.default_profile(m["config"])
    assert d_opt == (1, 64, 64) and d_lo == (1, 32, 32) and d_hi == (4, 96, 96)
    for profile in (d_lo, d_opt, d_hi):
        trt.profile_for(m, "unet", d_lo, d_opt, d_hi)  # defaults are always valid
        assert profile[1] % m["config"]["size_multiple"] == 0


def test_trt_manifest_record(engine):
    m = manifest_of(engine("sd"))
    profile = trt.profile_for(m, "unet", (1, 32, 32), (1, 64, 64), (2, 64, 64))
    rec = trt.record_plan(m, "unet", path="trt/unet.plan", profile=profile, fp16=True, version="10.7.0",
                          device="NVIDIA H100", built="2026-01-01T00:00:00Z")
    assert m["tensorrt"] == {"version": "10.7.0", "plans": {"unet": rec}}
    assert rec == {"path": "trt/unet.plan", "profile": profile, "fp16": True, "built": "2026-01-01T00:00:00Z",
                   "device": "NVIDIA H100"}
    trt.record_plan(m, "vae_decoder", path="trt/vae_decoder.plan", profile={}, fp16=False, version="10.7.0", device="x")
    assert set(m["tensorrt"]["plans"]) == {"unet", "vae_decoder"}
    trt.record_plan(m, "unet", path="trt/unet.plan", profile=profile, fp16=True, version="10.8.0", device="x")
    assert set(m["tensorrt"]["plans"]) == {"unet"}  # plans of another TensorRT version are dropped
    with pytest.raises(ExportError):
        trt.record_plan(m, "unet", path="/abs/unet.plan", profile=profile, fp16=True, version="10.8.0", device="x")


def test_build_trt_without_tensorrt(engine, monkeypatch, tmp_path):
    out = tmp_path / "engine"
    shutil.copytree(engine("sd"), out)
    monkeypatch.setitem(__import__("sys").modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(UnsupportedError, match="tensorrt"):
        trt.build_trt(out, ["unet"], min_shapes="1x32x32", opt_shapes="1x64x64", max_shapes="2x64x64")
    assert "tensorrt" not in manifest_of(out) and not (out / "trt").exists()
