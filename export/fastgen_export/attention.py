"""How a component's attention is exported: ``"sdpa"`` (ONNX-standard MatMul / Softmax / MatMul, the
default) or ``"mha"`` (one ONNX Runtime ``com.microsoft.MultiHeadAttention`` contrib node per attention).

The fused node never materialises the [batch, heads, queries, keys] score tensor: on the SD 1.5-architecture
UNet (half width, batch 2) at 512 px ONNX Runtime's CPU call is 1.15-1.18x faster and its peak RSS 3.1-3.4x
lower. OpenVINO's ONNX frontend reads it too, without a clear gain (benchmarks/attention.py). TensorRT's ONNX
parser has no contrib ops, hence the option (``fastgen build-trt`` refuses such an engine).

:func:`fused_attention` routes, while a component is traced, every plain call of
``torch.nn.functional.scaled_dot_product_attention`` (4D [batch, heads, seq, head_dim]; no mask, no dropout,
not causal, default scale: what diffusers' attention processors do in UNets, SD3 transformers and VAEs) to
:class:`_MultiHeadAttention`, whose forward *is* the torch function (so tracing and parity see the same
numbers) and whose ONNX symbolic is the fused node. Any other call goes to the original function.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

__all__ = ["MHA_DOMAIN", "fused_attention", "count_fused", "graph_attention"]

MHA_DOMAIN = "com.microsoft"
_MHA_OP = "MultiHeadAttention"


#: the torch function fused_attention replaced (set while it is active)
_ORIGINAL: list = []


class _MultiHeadAttention(torch.autograd.Function):
    """q, k, v: [B, S, heads * D] -> [B, Sq, heads * D]; exported as one com.microsoft node."""

    @staticmethod
    def forward(ctx, q, k, v, num_heads: int):
        b, sq, _ = q.shape
        split = [t.reshape(b, t.shape[1], num_heads, -1).transpose(1, 2) for t in (q, k, v)]
        out = _ORIGINAL[0](*split)
        return out.transpose(1, 2).reshape(b, sq, -1)

    @staticmethod
    def symbolic(g, q, k, v, num_heads: int):
        return g.op(f"{MHA_DOMAIN}::{_MHA_OP}", q, k, v, num_heads_i=num_heads).setType(q.type())


def _merge_heads(t):
    # [B, heads, S, D] -> [B, S, heads * D]; dims stay symbolic in the traced graph
    return t.transpose(1, 2).flatten(2)


@contextlib.contextmanager
def fused_attention(enabled: bool = True) -> Iterator[None]:
    """While active, plain 4D ``scaled_dot_product_attention`` calls trace to MultiHeadAttention nodes."""
    if not enabled:
        yield
        return
    if _ORIGINAL:
        raise RuntimeError("fused_attention is not reentrant")
    original = F.scaled_dot_product_attention

    def routed(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
        plain = attn_mask is None and not dropout_p and not is_causal and scale is None and not kw
        if not (plain and query.dim() == key.dim() == value.dim() == 4 and query.shape[-1] == value.shape[-1]
                and query.shape[1] == key.shape[1] == value.shape[1]):
            return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                            scale=scale, **kw)
        b, heads, sq, d = query.shape
        out = _MultiHeadAttention.apply(_merge_heads(query), _merge_heads(key), _merge_heads(value), int(heads))
        return out.reshape(b, sq, heads, d).transpose(1, 2)

    _ORIGINAL.append(original)
    F.scaled_dot_product_attention = routed
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original
        _ORIGINAL.clear()


def count_fused(model) -> int:
    """Number of com.microsoft MultiHeadAttention nodes in an ``onnx.ModelProto`` (main graph)."""
    return sum(1 for n in model.graph.node if n.domain == MHA_DOMAIN and n.op_type == _MHA_OP)


def graph_attention(path: str) -> str:
    """"mha" if the ONNX graph at ``path`` holds MultiHeadAttention nodes, else "sdpa" (weights not loaded)."""
    import onnx

    return "mha" if count_fused(onnx.load(path, load_external_data=False)) else "sdpa"
