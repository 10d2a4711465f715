"""torch -> ONNX conversion, external data, offline graph optimisation and validation.

Exporter choice. torch 2.13's ``torch.onnx.export`` defaults to the dynamo exporter. For these models
it is measured here (2-core CPU, tiny SD components) as 10-20x slower than the TorchScript exporter
(UNet 18.6 s vs 1.2 s, CLIP 6.7 s vs 0.4 s), it names dynamic dims after its symbols
(``2*h2``) rather than ours, and it fails on transformers 5's T5 encoder with a batch-dynamic
shape (a ``view`` of a non-contiguous tensor). The TorchScript exporter (``dynamo=False``) with
``dynamic_axes`` produces graphs that match torch to ~1e-6 at batch sizes and (non-square) spatial
sizes other than the traced ones, for the UNet, the SD3 transformer, the VAE, CLIP and T5, and
every export is parity-checked at a different shape anyway. So this module uses it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence

from fastgen.errors import ExportError

__all__ = ["EXTERNAL_DATA_THRESHOLD", "export_module", "optimize_graph", "check_graph", "module_bytes",
           "external_data_path"]

#: Graphs whose weights exceed this many bytes are written with external data (protobuf's limit is 2 GiB;
#: the margin leaves room for the graph itself). Tests lower it to exercise the external-data path.
EXTERNAL_DATA_THRESHOLD = 2 * 1024**3 - 64 * 1024**2

_DATA_SUFFIX = ".data"


def module_bytes(module) -> int:
    """Bytes of a torch module's parameters and buffers (each shared tensor counted once)."""
    seen: set[int] = set()
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def external_data_path(model_path: str) -> str:
    """Where the external weights of ``model_path`` live (``model.onnx`` -> ``model.onnx.data``)."""
    return model_path + _DATA_SUFFIX


@contextlib.contextmanager
def _quiet_export():
    import torch

    with warnings.catch_warnings():
        # TracerWarnings about python-value conversions (checked by parity instead) and the
        # deprecation notice of the TorchScript exporter.
        warnings.simplefilter("ignore")
        with torch.no_grad(), torch.inference_mode(False):
            yield


def export_module(module, example_inputs: Sequence, path: str, *, input_names: Sequence[str],
                  output_names: Sequence[str], dynamic_axes: Mapping[str, Mapping[int, str]], opset: int) -> bool:
    """Export ``module`` to ``path``; returns True if the weights went to external data.

    Weights over :data:`EXTERNAL_DATA_THRESHOLD` are saved as one ``<path>.data`` file next to the graph.
    """
    import onnx
    import torch

    external = module_bytes(module) > EXTERNAL_DATA_THRESHOLD
    out_dir = os.path.dirname(path)
    kwargs = dict(input_names=list(input_names), output_names=list(output_names),
                  dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()}, opset_version=opset,
                  do_constant_folding=True, dynamo=False)
    try:
        with _quiet_export():
            if not external:
                torch.onnx.export(module, tuple(example_inputs), path, **kwargs)
            else:
                # The TorchScript exporter writes one file per tensor for > 2 GB models; export to
                # scratch space, then gather everything into a single model.onnx.data.
                with tempfile.TemporaryDirectory(dir=out_dir, prefix=".onnx-") as scratch:
                    raw = os.path.join(scratch, "model.onnx")
                    torch.onnx.export(module, tuple(example_inputs), raw, **kwargs)
                    model = onnx.load(raw, load_external_data=True)
                    _save_external(model, path)
    except ExportError:
        raise
    except Exception as e:  # torch raises many exception types here; name the component file
        raise ExportError(f"torch.onnx.export failed for {path}: {type(e).__name__}: {e}") from e
    return external


def _save_external(model, path: str) -> None:
    import onnx

    data = external_data_path(path)
    if os.path.exists(data):
        os.remove(data)
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=os.path.basename(data), size_threshold=1024, convert_attribute=False)


def optimize_graph(path: str, *, external: bool) -> None:
    """Apply ONNX Runtime's provider-independent (basic) graph optimisations offline, in place.

    Basic level only (constant folding, redundant node elimination): the result stays portable
    across execution providers, unlike the extended / layout levels.
    """
    import onnxruntime as ort

    out_dir = os.path.dirname(path)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".opt-") as scratch:
        opt = os.path.join(scratch, os.path.basename(path))
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = opt
        if external:
            so.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                        os.path.basename(external_data_path(path)))
            so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                        "1024")
        try:
            ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ExportError(f"ONNX Runtime could not optimise {path}: {e}") from e
        _try_onnxslim(opt, external)
        os.replace(opt, path)
        if external:
            os.replace(external_data_path(opt), external_data_path(path))


def _try_onnxslim(path: str, external: bool) -> None:
    """Run onnxslim on the graph if it is installed (optional dependency); otherwise do nothing."""
    try:
        import onnxslim
    except ImportError:
        return
    if external:
        return  # onnxslim rewrites into a single protobuf; keep > 2 GB graphs as ORT wrote them
    import onnx

    slim = onnxslim.slim(onnx.load(path))
    if slim is not None:
        onnx.save_model(slim, path)


def check_graph(path: str) -> None:
    """``onnx.checker.check_model`` with full checks; raises ExportError on an invalid graph."""
    import onnx

    try:
        onnx.checker.check_model(path, full_check=True)
    except Exception as e:
        raise ExportError(f"exported graph {path} is not valid ONNX: {e}") from e

