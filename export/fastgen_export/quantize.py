"""int8 quantization of one engine graph: NNCF (OpenVINO IR) or ONNX Runtime static QDQ.

Used by :mod:`fastgen_export.optimize`; every function takes a graph and the calibration samples (a list of
feed dicts, the denoiser's inputs recorded from real pipeline runs) and writes or returns the int8 graph.

- :func:`hybrid_quantize` (OpenVINO, the default): the approach optimum-intel takes for diffusion models.
  MatMuls with a constant operand (the linear layers) and embedding Gathers get int8 weights only
  (``nncf.compress_weights``, INT8_ASYM, data-free); everything else is post-training quantized with
  calibrated int8 activations (``nncf.quantize``, model type TRANSFORMER, SmoothQuant off): convolutions
  (int8 weights and activations) and the activation-by-activation MatMuls of attention. The layer that
  reads the noisy latent (``conv_in``; SD3's patch embedding) stays float.
- :func:`compress_weights` (OpenVINO): int8 weights only, for the text encoders and the VAE.
- :func:`qdq_quantize` (ONNX Runtime): ``quantize_static`` in QDQ format, per-channel int8 weights, uint8
  activations (MinMax over the same samples), for ``--int8-format ort-qdq``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence

import numpy as np

from fastgen.errors import ExportError, UnsupportedError

Samples = Sequence[dict[str, np.ndarray]]

# Ops a constant weight may pass through on its way to a MatMul (a decompression or reshaping chain).
_WEIGHT_PASS_THROUGH = ("Convert", "Reshape", "Transpose", "FakeQuantize")


def import_nncf():
    try:
        import nncf
    except ImportError as e:
        raise UnsupportedError('fastgen optimize --int8 needs NNCF: pip install "fastgen[quantize]" '
                               f"(nncf), got: {e}") from e
    import logging

    nncf.set_log_level(logging.WARNING)  # its INFO lists every op it leaves alone
    return nncf


def import_openvino():
    try:
        import openvino
    except ImportError as e:
        raise UnsupportedError('fastgen optimize --int8 needs OpenVINO: pip install "fastgen[quantize]"') from e
    return openvino


def _constant_behind(node, max_depth: int = 6):
    """The Constant that ``node`` is, or that reaches it through a chain of pass-through ops (following their
    data input only, so ``x * constant`` is not mistaken for a weight), or None."""
    for _ in range(max_depth + 1):
        kind = node.get_type_name()
        if kind == "Constant":
            return node
        if kind not in _WEIGHT_PASS_THROUGH or node.get_input_size() == 0:
            return None
        node = node.input_value(0).get_node()
    return None


def weight_ops(model) -> list[str]:
    """Friendly names of the ops that hold weights and get weight-only int8: MatMuls with a constant
    operand and Gathers reading from a float constant table (embeddings)."""
    names = []
    for op in model.get_ops():
        kind = op.get_type_name()
        if kind == "MatMul":
            if any(_constant_behind(op.input_value(i).get_node()) is not None for i in range(2)):
                names.append(op.get_friendly_name())
        elif kind == "Gather":
            table = op.input_value(0)
            if table.get_element_type().is_real() and _constant_behind(table.get_node()) is not None:
                names.append(op.get_friendly_name())
    return names


# ops a latent input may pass through before it reaches its first layer
_INPUT_PASS_THROUGH = ("Convert", "Reshape", "Transpose", "Pad", "Concat", "Multiply", "Add", "Subtract", "Divide")


def input_layers(model, inputs: Sequence[str], max_depth: int = 8) -> list[str]:
    """Friendly names of the first Convolution / MatMul layers that read one of the graph ``inputs``
    (through element-wise and reshaping ops only): the denoiser's layer that reads the noisy latent."""
    found: list[str] = []
    for param in model.get_parameters():
        if not (set(param.output(0).get_names()) | {param.get_friendly_name()}) & set(inputs):
            continue
        frontier = [(param, 0)]
        while frontier:
            node, depth = frontier.pop()
            for out in node.outputs():
                for target in out.get_target_inputs():
                    nxt = target.get_node()
                    kind = nxt.get_type_name()
                    if kind in ("Convolution", "MatMul"):
                        if nxt.get_friendly_name() not in found:
                            found.append(nxt.get_friendly_name())
                    elif kind in _INPUT_PASS_THROUGH and depth < max_depth:
                        frontier.append((nxt, depth + 1))
    return found


def compress_weights(model):
    """int8 weights (asymmetric, per output channel) for every op with weights; activations stay float."""
    nncf = import_nncf()
    return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)


def hybrid_quantize(model, samples: Samples, *, float_inputs: Sequence[str] = (),
                    log: Callable[[str], None] | None = None):
    """NNCF hybrid quantization of a denoiser (OpenVINO model in, OpenVINO model out). The layers reading
    ``float_inputs`` (the noisy latent) stay float: quantizing the latent itself to 8 bits per
    tensor at every step cost the demo engine 30 points of shape accuracy (98% -> 68%); with its input
    convolution in float the int8 UNet matches fp32 (see docs/int8.md)."""
    nncf = import_nncf()
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    if not samples:
        raise ExportError("hybrid quantization needs calibration samples; none were recorded")
    names = weight_ops(model)
    keep_float = [n for n in input_layers(model, float_inputs) if n not in names]
    has_conv = any(op.get_type_name() == "Convolution" for op in model.get_ops())
    if log:
        log(f"  {len(names)} weight ops get int8 weights; the rest int8 activations "
            f"({len(samples)} calibration samples); float: {', '.join(keep_float) or 'none'}")
    # 1. int8 weights for the linear layers and embeddings (convolutions are left to step 2)
    model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM,
                                  ignored_scope=nncf.IgnoredScope(types=["Convolution"]) if has_conv else None)
    # 2. calibrated int8 activations for everything else (the weight ops are ignored: already compressed)
    return nncf.quantize(
        model, nncf.Dataset(list(samples)), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(samples),
        ignored_scope=nncf.IgnoredScope(names=names + keep_float),
        advanced_parameters=AdvancedQuantizationParameters(
            smooth_quant_alphas=AdvancedSmoothQuantParameters(convolution=-1, matmul=-1)))


def save_ir(model, path: str) -> None:
    """Write an OpenVINO IR pair (``model.xml`` + ``model.bin``); float constants stay fp32."""
    ov = import_openvino()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ov.save_model(model, path, compress_to_fp16=False)


def read_onnx(path: str):
    ov = import_openvino()
    try:
        return ov.Core().read_model(path)
    except Exception as e:  # noqa: BLE001 - OpenVINO raises its own RuntimeError subclasses
        raise ExportError(f"OpenVINO could not read {path}: {e}") from e


class _Reader:
    """A calibration data reader for onnxruntime.quantization (duck-typed: it only calls get_next)."""

    def __init__(self, samples: Samples):
        self._samples = list(samples)
        self._it = iter(self._samples)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):
        self._it = iter(self._samples)


_ONNX_PASS_THROUGH = ("Cast", "Reshape", "Transpose", "Pad", "Concat", "Mul", "Add", "Sub", "Div", "Identity")
QDQ_OP_TYPES = ("Conv", "MatMul", "Gemm")


def onnx_input_layers(model, inputs: Sequence[str], max_depth: int = 8) -> list[str]:
    """Names of the first Conv / MatMul / Gemm nodes of an ONNX graph reading one of ``inputs`` (through
    element-wise and reshaping nodes only)."""
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found: list[str] = []
    frontier = [(name, 0) for name in inputs]
    while frontier:
        tensor, depth = frontier.pop()
        for node in consumers.get(tensor, []):
            if node.op_type in QDQ_OP_TYPES:
                if node.name not in found:
                    found.append(node.name)
            elif node.op_type in _ONNX_PASS_THROUGH and depth < max_depth:
                frontier.extend((o, depth + 1) for o in node.output)
    return found


def qdq_quantize(onnx_in: str, onnx_out: str, samples: Samples, *, float_inputs: Sequence[str] = (),
                 log: Callable[[str], None] | None = None, external_data: bool = False,
                 work_dir: str | None = None) -> None:
    """ONNX Runtime static quantization, QDQ format: per-channel int8 weights, uint8 activations (MinMax),
    for the Conv / MatMul / Gemm nodes except those reading ``float_inputs`` (the noisy latent)."""
    try:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
        from onnxruntime.quantization import quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as e:
        raise UnsupportedError(f"--int8-format ort-qdq needs onnxruntime's quantization tools (and onnx): {e}") from e
    if not samples:
        raise ExportError("static quantization needs calibration samples; none were recorded")

    os.makedirs(os.path.dirname(onnx_out), exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="qdq-pre-", dir=work_dir)  # the pre-processed graph and its weights
    pre = os.path.join(scratch, "model.onnx")
    try:
        quant_pre_process(onnx_in, pre, skip_symbolic_shape=True, save_as_external_data=external_data,
                          all_tensors_to_one_file=True, external_data_location="model.onnx.data")
        import onnx

        exclude = onnx_input_layers(onnx.load(pre, load_external_data=False), float_inputs)
        if log:
            log(f"  ONNX Runtime QDQ calibration over {len(samples)} samples; float: {', '.join(exclude) or 'none'}")
        quantize_static(pre, onnx_out, _Reader(samples), quant_format=QuantFormat.QDQ, per_channel=True,
                        op_types_to_quantize=list(QDQ_OP_TYPES), nodes_to_exclude=exclude,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, use_external_data_format=external_data)
        # (MinMax records only each tensor's min / max per sample. Not CalibMaxIntermediateOutputs: in
        # onnxruntime 1.31 it drops the collected ranges instead of merging them.)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
