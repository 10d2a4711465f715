"""The exporter package's shape: no import cycle, no test helpers in production code, no class built per
call, and a light ``fastgen_export`` / ``fastgen_export.cli`` import (the runtime CLI imports the latter)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

PKG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "export", "fastgen_export")
#: tiny-model builders and the demo scripts: not part of the exporter proper
NOT_PRODUCTION = {"testing", "tiny_tokenizer", "train_demo", "ship_demo", "demo_data", "demo_eval"}
#: modules the production exporters must never reach
TEST_HELPERS = {"testing", "tiny_tokenizer"}


def _modules() -> dict[str, ast.Module]:
    return {f[:-3]: ast.parse(open(os.path.join(PKG, f), encoding="utf-8").read(), f)
            for f in sorted(os.listdir(PKG)) if f.endswith(".py")}


def _imports(tree: ast.Module) -> set[str]:
    """Package modules a module imports, at module level or inside functions (lazy imports count)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:  # from .x import y
                found.add(node.module.split(".")[0])
            elif node.level == 1:  # from . import x, y
                found.update(a.name for a in node.names)
            elif node.level == 0 and node.module and node.module.startswith("fastgen_export."):
                found.add(node.module.split(".")[1])
            elif node.level == 0 and node.module == "fastgen_export":
                found.add("__init__")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("fastgen_export."):
                    found.add(a.name.split(".")[1])
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: {m for m in _imports(tree) if m in mods and m != name} for name, tree in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return cycles


def test_no_import_cycle():
    graph = _graph()
    assert "api" in graph and "base" in graph and "video" in graph
    assert _cycles(graph) == []


def test_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_production_code_imports_no_test_helpers():
    graph = _graph()
    for start in sorted(set(graph) - NOT_PRODUCTION):
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            if node not in seen:
                seen.add(node)
                todo += graph[node]
        assert not seen & TEST_HELPERS, f"{start} reaches {sorted(seen & TEST_HELPERS)}"


def test_no_class_built_per_call():
    for name, tree in _modules().items():
        if name in NOT_PRODUCTION:
            continue
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                for node in ast.walk(fn):
                    assert not isinstance(node, ast.ClassDef), f"{name}.py: class {node.name} defined inside a function"
                    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "type":
                        assert len(node.args) != 3, f"{name}.py: type(name, bases, dict) inside a function"


def _loaded_after(statement: str) -> list[str]:
    code = (f"import sys\n{statement}\n"
            "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('fastgen_export', 'torch', 'diffusers', 'transformers', 'onnx', 'onnxruntime', 'fastgen'))))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(PKG), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_cli_import_is_light():
    """The runtime CLI imports fastgen_export.cli for `export` / `build-trt`: that loads no other exporter
    module and nothing heavy, and keeps the four names the runtime uses."""
    assert _loaded_after("import fastgen_export.cli as m; "
                         "assert all(callable(getattr(m, n)) for n in ('add_export_arguments', 'run_export', "
                         "'add_build_trt_arguments', 'run_build_trt'))") == ["fastgen_export", "fastgen_export.cli"]
    assert _loaded_after("import fastgen_export") == ["fastgen_export"]


def test_lazy_package_attributes():
    loaded = _loaded_after("import fastgen_export; fastgen_export.__version__")
    assert loaded == ["fastgen_export", "fastgen_export._version"]
    pytest.importorskip("torch")
    import fastgen_export
    from fastgen_export.api import export

    assert fastgen_export.export is export and "export" in dir(fastgen_export)
    with pytest.raises(AttributeError):
        fastgen_export.nope  # noqa: B018
