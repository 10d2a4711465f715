"""Exporter bad input (issue 14): unreadable configs, untrusted model_index.json entries, bad OUT paths, a
scheduler the runtime cannot load, degenerate tokenizers, and a crash-safe ``--overwrite``.

Every case must end in an ExportError naming what is wrong (never a raw traceback, never a silently bad
engine), and the overwrite tests kill the commit between each of its steps and check that a complete
engine is at OUT, or is put back there by the next export.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from fastgen.errors import ExportError

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("onnx")

from fastgen_export import diffusion, export, output  # noqa: E402
from fastgen_export.testing import build_tiny_pipeline, build_tiny_vit_gpt2  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return build_tiny_pipeline("sd", tmp_path_factory.mktemp("safety") / "sd")


@pytest.fixture
def sd_copy(tiny_sd, tmp_path):
    """A private copy of the tiny SD folder a test may break."""
    return shutil.copytree(tiny_sd, tmp_path / "src")


def _index(src) -> dict:
    with open(os.path.join(src, "model_index.json"), encoding="utf-8") as f:
        return json.load(f)


def _write_index(src, index: dict) -> None:
    with open(os.path.join(src, "model_index.json"), "w", encoding="utf-8") as f:
        json.dump(index, f)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _fake_engine(path, tag: str) -> None:
    os.makedirs(path)
    with open(os.path.join(path, "weights.bin"), "w") as f:
        f.write(tag * 100)
    with open(os.path.join(path, "fastgen.json"), "w") as f:
        json.dump({"format": "fastgen-engine", "tag": tag}, f)


def _tag(path) -> str | None:
    """The tag of the complete fake engine at ``path`` (None: no complete engine there)."""
    if not output.is_engine_dir(str(path)):
        return None
    with open(os.path.join(path, "fastgen.json")) as f:
        tag = json.load(f)["tag"]
    with open(os.path.join(path, "weights.bin")) as f:
        assert f.read() == tag * 100
    return tag


# ------------------------------------------------------------------------------ model_index.json reading


@pytest.mark.parametrize("content, message", [
    (b'\xff\xfe{"_class_name": "StableDiffusionPipeline"}', "not UTF-8"),
    (b"[" * 100_000, "nested too deeply"),
    (b'{"_class_name": "StableDiffusionPipeline",', "not valid JSON"),
    (b'["StableDiffusionPipeline"]', "must hold a JSON object"),
    (b'{"_class_name": ["StableDiffusionPipeline"]}', "no '_class_name' string"),
], ids=["non-utf8", "deeply-nested", "invalid-json", "not-an-object", "class-not-a-string"])
def test_unreadable_model_index(sd_copy, tmp_path, content, message):
    (sd_copy / "model_index.json").write_bytes(content)
    with pytest.raises(ExportError, match=f"model_index.json.*{message}|{message}.*model_index.json") as e:
        export(sd_copy, tmp_path / "engine", log=None)
    assert "model_index.json" in str(e.value)
    assert sorted(os.listdir(tmp_path)) == ["src"]


def test_unreadable_component_config(sd_copy, tmp_path):
    (sd_copy / "unet" / "config.json").write_bytes(b"{" * 50_000)
    with pytest.raises(ExportError, match=r"unet.config\.json"):
        export(sd_copy, tmp_path / "engine", log=None)
    assert sorted(os.listdir(tmp_path)) == ["src"]


def test_unreadable_captioner_config(tmp_path):
    src = tmp_path / "captioner"
    src.mkdir()
    (src / "config.json").write_bytes(b'\x80{"architectures": ["BlipForConditionalGeneration"]}')
    with pytest.raises(ExportError, match=r"config\.json.*not UTF-8"):
        export(src, tmp_path / "engine", log=None)


# ----------------------------------------------------------------------- model_index.json libraries


@pytest.mark.parametrize("entry, message", [
    (["os", "system"], r"'tokenizer' names library 'os'"),
    (["subprocess", "Popen"], r"'tokenizer' names library 'subprocess'"),
    (["transformers", "pipeline"], r"'tokenizer'.*transformers.pipeline is not a class"),
    (["transformers", "PreTrainedModel"], r"'tokenizer'.*not a PreTrainedTokenizerBase"),
    (["transformers", "__builtins__"], r"'tokenizer'.*not a class name"),
    (["stable_diffusion", "StableDiffusionSafetyChecker"], r"'tokenizer'.*stable_diffusion.*not one the exporter"),
])
def test_tokenizer_library_is_allow_listed(sd_copy, tmp_path, monkeypatch, entry, message):
    index = _index(sd_copy)
    index["tokenizer"] = entry
    _write_index(sd_copy, index)
    imported = []
    real = importlib.import_module
    monkeypatch.setattr(importlib, "import_module", lambda name, *a, **k: imported.append(name) or real(name, *a, **k))
    with pytest.raises(ExportError, match=message):
        export(sd_copy, tmp_path / "engine", log=None)
    assert entry[0] in ("transformers", "stable_diffusion") or entry[0] not in imported, imported
    assert "stable_diffusion" not in imported
    assert not (tmp_path / "engine").exists()


def test_any_entry_library_is_allow_listed(sd_copy, tmp_path):
    index = _index(sd_copy)
    index["feature_extractor"] = ["evil_lib", "CLIPImageProcessor"]  # an entry the exporter does not even use
    _write_index(sd_copy, index)
    with pytest.raises(ExportError, match=r"'feature_extractor' names library 'evil_lib'.*diffusers, transformers"):
        export(sd_copy, tmp_path / "engine", log=None)
    # what real SD 1.x checkpoints list is accepted (and never imported)
    index["feature_extractor"] = ["transformers", "CLIPImageProcessor"]
    index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]
    _write_index(sd_copy, index)
    plan = diffusion.plan_pipeline(str(sd_copy))
    assert "safety_checker" not in plan.parts and plan.parts["tokenizer"] == ("transformers", "CLIPTokenizer")


def test_unsupported_class_is_named_before_its_entries(tmp_path):
    src = tmp_path / "kandinsky"
    src.mkdir()
    _write_index(src, {"_class_name": "KandinskyPipeline", "text_encoder": ["kandinsky", "MultilingualCLIP"]})
    with pytest.raises(ExportError, match="unsupported pipeline class 'KandinskyPipeline'"):
        export(src, tmp_path / "engine", log=None)


# --------------------------------------------------------------------------------------------- OUT


def test_out_in_proc_refused_before_any_work(tmp_path):
    # the source does not even exist: OUT is checked first
    with pytest.raises(ExportError, match=r"/proc/x.*virtual filesystem"):
        export(tmp_path / "no-such-source", "/proc/x", log=None)
    with pytest.raises(ExportError, match=r"/sys/fastgen/engine"):
        export(tmp_path / "no-such-source", "/sys/fastgen/engine", log=None)


@pytest.mark.parametrize("below", ["engine", "a/b/engine"])
def test_out_below_a_file_refused(tmp_path, below):
    (tmp_path / "some_file").write_text("not a folder")
    out = tmp_path / "some_file" / below
    with pytest.raises(ExportError, match=r"some_file is not a directory"):
        export(tmp_path / "no-such-source", out, log=None)
    assert (tmp_path / "some_file").read_text() == "not a folder"


def test_out_parent_not_writable(tmp_path, monkeypatch):
    parent = tmp_path / "read-only"
    parent.mkdir()
    real_mkdir = os.mkdir

    def mkdir(path, *a, **k):  # what a read-only folder does (the tests may run as root, where chmod is moot)
        if os.path.dirname(os.fspath(path)) == str(parent):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_mkdir(path, *a, **k)

    monkeypatch.setattr(os, "mkdir", mkdir)
    with pytest.raises(ExportError, match=r"read-only/engine.*read-only is not writable: Permission denied"):
        export(tmp_path / "no-such-source", parent / "engine", log=None)


def test_out_parent_cannot_be_created(tmp_path, monkeypatch):
    def makedirs(path, *a, **k):
        raise PermissionError(13, "Permission denied", os.fspath(path))

    monkeypatch.setattr(os, "makedirs", makedirs)
    with pytest.raises(ExportError, match=r"cannot create its parent folder .*new/deeper"):
        export(tmp_path / "no-such-source", tmp_path / "new" / "deeper" / "engine", log=None)


def test_out_must_name_a_folder():
    with pytest.raises(ExportError, match="must name a directory"):
        output.check_output("/", False)


def test_cli_reports_bad_out_without_traceback(tmp_path, capsys):
    from fastgen_export.cli import main

    assert main([str(tmp_path / "src"), "/proc/x", "-q"]) == 2
    err = capsys.readouterr().err
    assert "fastgen export: error: output /proc/x" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------- scheduler


@pytest.mark.parametrize("patch, field", [
    ({"num_train_timesteps": 0}, "num_train_timesteps"),
    ({"beta_schedule": "cubic"}, "beta_schedule"),
    ({"_class_name": "NoSuchScheduler"}, "NoSuchScheduler"),
])
def test_scheduler_the_runtime_cannot_load_is_refused(sd_copy, tmp_path, monkeypatch, patch, field):
    from fastgen_export import onnx_utils

    path = sd_copy / "scheduler" / "scheduler_config.json"
    cfg = json.loads(path.read_text())
    cfg.update(patch)
    path.write_text(json.dumps(cfg))

    def export_module(*a, **k):
        raise AssertionError("a graph was exported: the scheduler config was not refused first")

    monkeypatch.setattr(onnx_utils, "export_module", export_module)
    with pytest.raises(ExportError, match=rf"scheduler_config\.json.*{field}"):
        export(sd_copy, tmp_path / "engine", log=None)
    assert sorted(os.listdir(tmp_path)) == ["src"]


# ---------------------------------------------------------------------------------------- tokenizers


def _word_level_tokenizer(folder, vocab: dict[str, int], **specials) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    shutil.rmtree(folder)
    tok = Tokenizer(models.WordLevel(vocab, unk_token=specials["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=77, **specials).save_pretrained(folder)


@pytest.mark.parametrize("vocab, message", [
    ({"<unk>": 0}, r"1 token\(s\) in its vocabulary"),
    ({"<unk>": 0, "<pad>": 1, "zebra": 2}, r"encodes 'a photo of a cat' to \[0, 0, 0, 0, 0\]"),
])
def test_degenerate_prompt_tokenizer_refused(sd_copy, tmp_path, vocab, message):
    pad = "<pad>" if "<pad>" in vocab else "<unk>"
    _word_level_tokenizer(sd_copy / "tokenizer", vocab, unk_token="<unk>", pad_token=pad)
    index = _index(sd_copy)
    index["tokenizer"] = ["transformers", "PreTrainedTokenizerFast"]
    _write_index(sd_copy, index)
    with pytest.raises(ExportError, match=rf"tokenizer in .*{message}"):
        export(sd_copy, tmp_path / "engine", parity=False, log=None)
    assert sorted(os.listdir(tmp_path)) == ["src"]


def test_degenerate_captioner_tokenizer_refused(tmp_path):
    src = tmp_path / "vit-gpt2"
    build_tiny_vit_gpt2(src)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        os.remove(src / name)
    tmp_tok = tmp_path / "tok"
    tmp_tok.mkdir()
    _word_level_tokenizer(tmp_tok, {"<|endoftext|>": 0}, unk_token="<|endoftext|>")
    for name in os.listdir(tmp_tok):
        shutil.copy(tmp_tok / name, src / name)
    with pytest.raises(ExportError, match=r"1 token\(s\)"):
        export(src, tmp_path / "engine", log=None)


# ---------------------------------------------------------------------------- crash-safe --overwrite


class Killed(BaseException):
    """The process dies here: nothing after it runs, no cleanup, no rollback."""


def _kill_at(monkeypatch, k: int) -> dict:
    """Make the k-th filesystem-changing call from now on (os.rename, os.replace, shutil.rmtree) kill the
    'process': that call and every later one raise Killed without doing anything."""
    state = {"calls": 0, "dead": False}

    def wrap(fn):
        def call(*a, **kw):
            if not state["dead"] and state["calls"] == k:
                state["dead"] = True
            state["calls"] += 1
            if state["dead"]:
                raise Killed
            return fn(*a, **kw)
        return call

    for mod, name in ((os, "rename"), (os, "replace"), (shutil, "rmtree")):
        monkeypatch.setattr(mod, name, wrap(getattr(mod, name)))
    return state


# the commit of an overwrite makes 3 such calls: rename OUT -> .old, rename .partial -> OUT, rmtree .old
@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_overwrite_killed_between_steps(tmp_path, monkeypatch, k):
    out = str(tmp_path / "engine")
    _fake_engine(out, "old")
    dead = _dead_pid()
    with monkeypatch.context() as m:
        m.setattr(os, "getpid", lambda: dead)  # the folders this 'process' makes carry the pid it dies with
        stage = output.Stage(out, True)
        work = stage.__enter__().work
        os.rmdir(work)
        _fake_engine(work, "new")
        state = _kill_at(m, k)
        try:
            stage.commit()
            stage.__exit__(None, None, None)
        except Killed:
            pass
    assert state["dead"] or k == 3
    # at the instant of the kill: a complete engine at OUT, or the old one complete under .old-*
    at_out = _tag(out)
    olds = [n for n in os.listdir(tmp_path) if ".old-" in n]
    assert at_out in ("old", "new") or (at_out is None and [_tag(tmp_path / n) for n in olds] == ["old"])
    # the next export (a new process) repairs it before looking at OUT
    output.check_output(out, True)
    assert _tag(out) == {0: "old", 1: "old"}.get(k, "new")
    assert os.listdir(tmp_path) == ["engine"]  # no .old-* / .partial-* left


@pytest.mark.parametrize("k", [0, 1])
def test_overwrite_failure_rolls_back(tmp_path, monkeypatch, k):
    """An exception (not a kill) during the swap puts the old engine back at once."""
    out = str(tmp_path / "engine")
    _fake_engine(out, "old")
    real_rename = os.rename
    calls = []

    def rename(a, b):
        calls.append((a, b))
        if len(calls) == k + 1:
            raise OSError(28, "No space left on device")
        return real_rename(a, b)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises((OSError, ExportError)):
        with output.Stage(out, True) as stage:
            os.rmdir(stage.work)
            _fake_engine(stage.work, "new")
            stage.commit()
    assert _tag(out) == "old" and os.listdir(tmp_path) == ["engine"]


def test_export_killed_mid_swap_is_restored_by_next_export(tiny_sd, tmp_path, monkeypatch):
    out = tmp_path / "engine"
    export(tiny_sd, out, parity=False, log=None)
    created = json.loads((out / "fastgen.json").read_text())["exporter"]["created"]
    dead = _dead_pid()
    real_rename = os.rename

    def rename(a, b):  # dies right after moving the old engine aside
        real_rename(a, b)
        if ".old-" in os.fspath(b):
            raise Killed

    with monkeypatch.context() as m:
        m.setattr(os, "getpid", lambda: dead)
        m.setattr(os, "rename", rename)
        m.setattr(shutil, "rmtree", lambda *a, **k: None)  # a dead process cleans nothing up
        with pytest.raises(Killed):
            export(tiny_sd, out, parity=False, overwrite=True, log=None)
    assert not out.exists()  # the kill left OUT missing: the previous engine is under .old-*
    names = sorted(os.listdir(tmp_path))
    assert [n.split("-")[0] for n in names] == [".engine.old", ".engine.partial"]
    logged = []
    with pytest.raises(ExportError, match="already exists"):
        export(tiny_sd, out, parity=False, log=logged.append)
    assert json.loads((out / "fastgen.json").read_text())["exporter"]["created"] == created
    assert any("restored" in msg for msg in logged) and os.listdir(tmp_path) == ["engine"]


def test_killed_manifest_write_leaves_old_engine(tiny_sd, tmp_path, monkeypatch):
    out = tmp_path / "engine"
    export(tiny_sd, out, parity=False, log=None)
    before = (out / "fastgen.json").read_bytes()
    dead = _dead_pid()
    real_replace = os.replace

    def replace(a, b):  # dies on the last step of writing the new engine: fastgen.json's atomic rename
        if os.fspath(b).endswith("fastgen.json"):
            raise Killed
        return real_replace(a, b)

    with monkeypatch.context() as m:
        m.setattr(os, "getpid", lambda: dead)
        m.setattr(os, "replace", replace)
        m.setattr(shutil, "rmtree", lambda *a, **k: None)
        with pytest.raises(Killed):
            export(tiny_sd, out, parity=False, overwrite=True, log=None)
    assert (out / "fastgen.json").read_bytes() == before
    assert any(".partial-" in n for n in os.listdir(tmp_path))
    output.check_output(str(out), True)
    assert os.listdir(tmp_path) == ["engine"]


# ------------------------------------------------------------------------------ stale staging folders


def test_stale_partials_cleaned_safely(tmp_path):
    out = tmp_path / "engine"
    _fake_engine(out, "current")
    dead, live = _dead_pid(), os.getppid()
    stale = tmp_path / f".engine.partial-{dead}-0123abcd"
    running = tmp_path / f".engine.partial-{live}-0123abcd"  # another export of OUT, still running
    other_out = tmp_path / f".engine2.partial-{dead}-0123abcd"  # another OUT's
    not_ours = [tmp_path / f".engine.partial-{dead}-xyz", tmp_path / f"engine.partial-{dead}-0123abcd",
                tmp_path / f".engine.partial-{dead}-0123abcd.keep"]
    for d in (stale, running, other_out, *not_ours):
        d.mkdir()
        (d / "f").write_text("x")
    target = tmp_path / "precious"
    target.mkdir()
    (target / "f").write_text("keep")
    link = tmp_path / f".engine.partial-{dead}-deadbeef"
    link.symlink_to(target)
    file_named_like_it = tmp_path / f".engine.old-{dead}-feedf00d"
    file_named_like_it.write_text("a file")
    stale_old = tmp_path / f".engine.old-{dead}-0123abcd"
    _fake_engine(stale_old, "older")  # a kill after the swap: OUT holds the newer engine

    output.check_output(str(out), True)
    assert not stale.exists() and not stale_old.exists()
    assert running.exists() and other_out.exists() and all(d.exists() for d in not_ours)
    assert link.is_symlink() and (target / "f").read_text() == "keep" and file_named_like_it.is_file()
    assert _tag(out) == "current"
