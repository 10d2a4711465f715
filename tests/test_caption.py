"""Image captioning: C++ search vs transformers, export of tiny ViT-GPT2 / BLIP, runtime parity, errors, CLI.

Tiny random models are built from config classes with word-level tokenizers (no downloads); each is
saved, exported once per module, and the runtime's token ids and texts are compared with
``model.generate(pixel_values=..., do_sample=False)`` under the same settings.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")

import fastgen  # noqa: E402
from fastgen import _core  # noqa: E402
from fastgen.errors import FastgenError, InvalidArgumentError, UnsupportedError  # noqa: E402

MAX_NEW = 10


# ----------------------------------------------------------------------------------------- tiny models


def make_vit_gpt2(folder: str, seed: int = 0):
    from fastgen_export.testing import build_tiny_vit_gpt2

    return build_tiny_vit_gpt2(folder, seed=seed)


def make_blip(folder: str, seed: int = 0):
    from fastgen_export.testing import build_tiny_blip

    return build_tiny_blip(folder, seed=seed)


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """name -> (source folder, engine, model); ``*-legacy``: the older engine form (no cross_kv: the
    decoder takes encoder_hidden_states), which the runtime still runs."""
    from fastgen_export import export
    from fastgen_export.caption import export_captioner

    root = tmp_path_factory.mktemp("caption")
    out = {}
    for name, make in (("vit-gpt2", make_vit_gpt2), ("blip", make_blip)):
        src = str(root / f"{name}-src")
        model = make(src)
        eng = export(src, str(root / f"{name}-engine"), log=None)
        out[name] = (src, eng, model)
        legacy = export_captioner(src, str(root / f"{name}-legacy-engine"), cross_attention_cache=False)
        out[f"{name}-legacy"] = (src, legacy, model)
    return out


def _images(n=3):
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (40 + 7 * i, 50 - 3 * i, 3), dtype=np.uint8)) for i in range(n)]


# ----------------------------------------------------------------------------------------- C++ search


def test_search_matches_transformers_generate():
    """caption_search driven by a decoder-only GPT-2 (no cache: the callback keeps the token history and
    applies the reorder indices itself) gives transformers' generate() ids exactly."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    m = GPT2LMHeadModel(GPT2Config(vocab_size=12, n_positions=64, n_embd=16, n_layer=1, n_head=2, bos_token_id=1,
                                   eos_token_id=2, pad_token_id=0)).eval()
    prompt = np.random.default_rng(1).integers(3, 12, size=(2, 2)).astype(np.int64)
    settings = [dict(num_beams=1), dict(num_beams=1, repetition_penalty=1.3, no_repeat_ngram_size=2),
                dict(num_beams=3, length_penalty=0.5, no_repeat_ngram_size=2, num_return_sequences=2),
                dict(num_beams=3, early_stopping=True, length_penalty=2.0),
                dict(num_beams=2, early_stopping="never", repetition_penalty=1.5)]
    saw_eos = False
    for kw in settings:
        hist = {}

        def step(ids, reorder):
            if "h" not in hist:
                hist["h"] = ids.copy()
            else:
                h = hist["h"] if reorder is None else hist["h"][reorder]
                hist["h"] = np.concatenate([h, ids], 1)
            with torch.no_grad():
                return m(torch.from_numpy(hist["h"])).logits[:, -1].float().numpy()

        seq, scores, steps = _core.caption_search(prompt, step, max_new_tokens=8, eos_token_ids=[2], pad_token_id=0,
                                                  **kw)
        with torch.no_grad():
            ref = m.generate(torch.from_numpy(prompt), attention_mask=torch.ones(prompt.shape, dtype=torch.long),
                             do_sample=False, max_new_tokens=8, eos_token_id=2, pad_token_id=0, **kw).numpy()
        assert seq.shape == ref.shape and (seq == ref).all(), (kw, seq, ref)
        assert (scores is None) == (kw["num_beams"] == 1)
        saw_eos = saw_eos or bool((seq[:, 2:] == 2).any())
    assert saw_eos  # the eos / finished-hypothesis paths ran


def test_search_errors():
    def step(ids, reorder):
        return np.zeros((ids.shape[0], 8), np.float32)

    p = np.zeros((1, 1), np.int64)
    with pytest.raises(InvalidArgumentError):
        _core.caption_search(p, step, num_beams=0)
    with pytest.raises(InvalidArgumentError):
        _core.caption_search(p, step, max_new_tokens=0)
    with pytest.raises(InvalidArgumentError):
        _core.caption_search(p, step, num_beams=2, num_return_sequences=3)
    with pytest.raises(InvalidArgumentError):
        _core.caption_search(p, step, early_stopping="sometimes")
    with pytest.raises(fastgen.errors.ShapeError):
        _core.caption_search(p, lambda ids, r: np.zeros((5, 8), np.float32))
    with pytest.raises(fastgen.errors.ShapeError):
        _core.caption_search(np.zeros((0, 1), np.int64), step)
    with pytest.raises(ZeroDivisionError):  # callback exceptions propagate unchanged
        _core.caption_search(p, lambda ids, r: 1 / 0)


def test_reorder_only_when_order_changes():
    """reorder is None on the first step and whenever the surviving beams keep their rows; otherwise it
    names, per row, the source row (within the same image) whose cache that row continues."""
    calls = []
    rng = np.random.default_rng(3)

    def step(ids, reorder):
        calls.append(None if reorder is None else reorder.tolist())
        return rng.standard_normal((ids.shape[0], 7)).astype(np.float32)

    _core.caption_search(np.zeros((2, 1), np.int64), step, num_beams=3, max_new_tokens=8)
    assert calls[0] is None and len(calls) == 8
    given = [c for c in calls[1:] if c is not None]
    assert given, "random logits should reorder beams at least once"
    for c in given:
        assert c != list(range(6))
        assert all(0 <= r < 3 for r in c[:3]) and all(3 <= r < 6 for r in c[3:])

    calls.clear()

    def steady(ids, reorder):  # every beam prefers the same tokens: beam j stays row j
        calls.append(None if reorder is None else reorder.tolist())
        logits = np.zeros((ids.shape[0], 7), np.float32)
        logits[:, 4], logits[:, 5] = 3.0, 2.0
        return logits

    _core.caption_search(np.zeros((1, 1), np.int64), steady, num_beams=2, max_new_tokens=4)
    assert calls[0] is None


# ----------------------------------------------------------------------------------------- export + runtime


def test_manifest(engines):
    for name, (src, eng, _) in engines.items():
        with open(os.path.join(eng, "fastgen.json")) as f:
            m = json.load(f)
        legacy = name.endswith("-legacy")
        assert m["kind"] == "captioning" and m["family"] == name.removesuffix("-legacy")
        dec_inputs = m["components"]["text_decoder"]["inputs"]
        if legacy:
            assert set(m["components"]) == {"vision_encoder", "text_decoder"}
            assert "encoder_hidden_states" in dec_inputs and "cross_names" not in m["config"]["decoder"]
        else:
            assert set(m["components"]) == {"vision_encoder", "cross_kv", "text_decoder"}
            assert "encoder_hidden_states" not in dec_inputs
            assert dec_inputs["cross_key_values.0.key"]["shape"][0] == "images"
            assert m["config"]["decoder"]["cross_attention_cache"] == "per_image"
        for comp in m["components"].values():
            assert comp["parity"]["passed"] is True
        assert m["config"]["preprocess"]["size"] == {"height": 32, "width": 32}
        assert m["tokenizers"]["tokenizer"]["path"] == "tokenizer/tokenizer.json"
        pipe = fastgen.Pipeline.load(eng)
        assert type(pipe).__name__ == "CaptioningPipeline"


def test_preprocess_equals_image_processor(engines):
    from transformers import AutoImageProcessor

    for src, eng, _ in engines.values():
        proc = AutoImageProcessor.from_pretrained(src, backend="pil")
        imgs = _images()
        want = proc(imgs, return_tensors="np")["pixel_values"]
        got = fastgen.Pipeline.load(eng).preprocess(imgs)
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


SETTINGS = [
    dict(num_beams=1),
    dict(num_beams=3),
    dict(num_beams=3, length_penalty=0.6, no_repeat_ngram_size=2, num_return_sequences=2),
    dict(num_beams=2, early_stopping=True, repetition_penalty=1.3),
    dict(num_beams=1, no_repeat_ngram_size=2, repetition_penalty=1.2),
]


@pytest.mark.parametrize("name,prompt", [("vit-gpt2", None), ("blip", None), ("blip", "a photo of"),
                                         ("vit-gpt2-legacy", None), ("blip-legacy", "a photo of")])
def test_runtime_matches_generate(engines, name, prompt):
    from transformers import AutoImageProcessor, AutoTokenizer

    src, eng, model = engines[name]
    tok = AutoTokenizer.from_pretrained(src)
    imgs = _images()
    pv = torch.from_numpy(AutoImageProcessor.from_pretrained(src, backend="pil")(imgs, return_tensors="np")
                          ["pixel_values"])
    pipe = fastgen.Pipeline.load(eng)
    for kw in SETTINGS:
        out = pipe(imgs, prompt=prompt, max_new_tokens=MAX_NEW, **kw)
        extra = {} if prompt is None else {"input_ids": torch.tensor([tok(prompt).input_ids] * len(imgs))}
        with torch.no_grad():
            ref = model.generate(pixel_values=pv, do_sample=False, max_new_tokens=MAX_NEW, **extra, **kw).tolist()
        assert out.token_ids == ref, kw
        assert out.texts == [s.strip() for s in tok.batch_decode(ref, skip_special_tokens=True)], kw
        assert len(out.texts) == len(imgs) * kw.get("num_return_sequences", 1)
    if prompt is not None:
        assert all(t.startswith(prompt) for t in out.texts)
    assert any(out.texts)


@pytest.mark.parametrize("name", ["vit-gpt2", "blip"])
def test_cross_kv_equals_transformers_cache(engines, name):
    """cross_kv gives, per image, the cross-attention keys / values transformers caches in the
    cross-attention half of its EncoderDecoderCache on the first decoder step."""
    from transformers import AutoImageProcessor, DynamicCache, EncoderDecoderCache

    src, eng, model = engines[name]
    pipe = fastgen.Pipeline.load(eng)
    pv = AutoImageProcessor.from_pretrained(src, backend="pil")(_images(2), return_tensors="np")["pixel_values"]
    ehs = pipe.session("vision_encoder").run({"pixel_values": pv})["encoder_hidden_states"]
    got = pipe.session("cross_kv").run({"encoder_hidden_states": ehs})
    decoder = model.text_decoder if name == "blip" else model.decoder
    cache = EncoderDecoderCache(DynamicCache(config=decoder.config), DynamicCache(config=decoder.config))
    kw = {"encoder_attention_mask": torch.ones(ehs.shape[:2], dtype=torch.long)} if name == "blip" else {}
    with torch.no_grad():
        decoder(input_ids=torch.zeros((2, 1), dtype=torch.long), encoder_hidden_states=torch.from_numpy(ehs),
                past_key_values=cache, use_cache=True, **kw)
    layers = cache.cross_attention_cache.layers
    assert len(got) == 2 * len(layers)
    for i, layer in enumerate(layers):
        np.testing.assert_allclose(got[f"cross_key_values.{i}.key"], layer.keys.numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got[f"cross_key_values.{i}.value"], layer.values.numpy(), rtol=1e-5, atol=1e-5)


def test_decoder_form_mismatch(engines, tmp_path):
    """An engine whose decoder takes cross K/V but that lacks the cross_kv graph is refused at load."""
    import shutil

    eng = str(tmp_path / "broken")
    shutil.copytree(engines["vit-gpt2"][1], eng)
    with open(os.path.join(eng, "fastgen.json")) as f:
        m = json.load(f)
    del m["components"]["cross_kv"]
    with open(os.path.join(eng, "fastgen.json"), "w") as f:
        json.dump(m, f)
    with pytest.raises(fastgen.errors.ManifestError, match="cross_kv"):
        fastgen.Pipeline.load(eng)


def test_bad_inputs(engines, tmp_path):
    pipe = fastgen.Pipeline.load(engines["vit-gpt2"][1])
    img = _images(1)
    bad = tmp_path / "not-an-image.png"
    bad.write_bytes(b"garbage")
    with pytest.raises(InvalidArgumentError):
        pipe([])
    with pytest.raises(InvalidArgumentError):
        pipe([str(bad)])
    with pytest.raises(InvalidArgumentError):
        pipe([str(tmp_path / "missing.png")])
    with pytest.raises(InvalidArgumentError):
        pipe(img, num_beams=0)
    with pytest.raises(InvalidArgumentError):
        pipe(img, max_new_tokens=0)
    with pytest.raises(InvalidArgumentError):
        pipe(img, num_beams=2, num_return_sequences=3)
    with pytest.raises(InvalidArgumentError):
        pipe(img, early_stopping="maybe")
    with pytest.raises(InvalidArgumentError):
        pipe(img, repetition_penalty=0)
    with pytest.raises(UnsupportedError):
        pipe(img, prompt="a photo of")
    with pytest.raises(FastgenError):
        fastgen.Pipeline.load(engines["blip"][1])(img * 2, prompt=["a photo of"])


def test_cli(engines, tmp_path, capsys):
    from fastgen.cli import main

    paths = []
    for i, im in enumerate(_images(2)):
        p = tmp_path / f"img{i}.png"
        im.save(p)
        paths.append(str(p))
    eng = engines["vit-gpt2"][1]
    assert main(["caption", eng, *paths, "--beams", "3", "--max-new-tokens", "6", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    want = fastgen.Pipeline.load(eng)(paths, num_beams=3, max_new_tokens=6)
    assert [d["caption"] for d in data] == want.texts
    assert [d["image"] for d in data] == paths
    assert main(["caption", eng, str(tmp_path / "missing.png")]) == 2
