"""ai.onnx.preview ops (opset 1): FlexAttention, whose score_mod / prob_mod graph attributes arrive as callables.

The executor compiles those graphs like any body and passes each as ``attrs[name](tensor) -> tensor``
(``runtime/executor.py``); the kernel applies them where the spec does: to the scaled scores before the
softmax, and to the probabilities after it.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from ._registry import Attrs, Inputs, KernelError, Tiling, kernel, need

DOMAIN = "ai.onnx.preview"
# softmax_precision: an ONNX element type (FLOAT, FLOAT16, DOUBLE, BFLOAT16)
SOFTMAX_DTYPES = {1: np.dtype(np.float32), 10: np.dtype(np.float16), 11: np.dtype(np.float64),
                  16: np.dtype(ml_dtypes.bfloat16)}


@kernel("FlexAttention", domain=DOMAIN)
def _flex_attention(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    q, k, v = need(inputs, 0, "Q"), need(inputs, 1, "K"), need(inputs, 2, "V")
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise KernelError(f"FlexAttention takes rank-4 Q, K, V, got {list(q.shape)}, {list(k.shape)}, {list(v.shape)}")
    heads, kv_heads, embed = q.shape[1], k.shape[1], q.shape[3]
    if k.shape[3] != embed or v.shape[1] != kv_heads or v.shape[2] != k.shape[2]:
        raise KernelError(f"FlexAttention: Q {list(q.shape)}, K {list(k.shape)} and V {list(v.shape)} do not fit")
    if heads != kv_heads:  # grouped-query attention: each key/value head serves heads / kv_heads query heads
        if heads % kv_heads:
            raise KernelError(f"FlexAttention: {heads} query heads are not a multiple of {kv_heads} kv heads")
        k, v = np.repeat(k, heads // kv_heads, axis=1), np.repeat(v, heads // kv_heads, axis=1)
    scale = attrs.get("scale")
    scale = 1.0 / np.sqrt(embed) if scale is None else float(scale)
    root = np.array(np.sqrt(np.float32(scale)), dtype=q.dtype)  # Q and K each scaled by sqrt(scale)
    compute = _softmax_dtype(q.dtype, attrs.get("softmax_precision"))
    scores = np.matmul(q * root, np.swapaxes(k * root, -1, -2)).astype(compute)
    if attrs.get("score_mod") is not None:
        scores = np.asarray(attrs["score_mod"](scores), dtype=compute)
    exp = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs = exp / exp.sum(axis=-1, keepdims=True)
    if attrs.get("prob_mod") is not None:
        probs = np.asarray(attrs["prob_mod"](probs), dtype=compute)
    return [np.matmul(probs, v.astype(compute)).astype(v.dtype)]


def _softmax_dtype(dtype: np.dtype, precision: int | None) -> np.dtype:
    """softmax_precision when given; else float32 for 16-bit inputs, the input type otherwise."""
    if precision is not None:
        if int(precision) not in SOFTMAX_DTYPES:
            raise KernelError(f"FlexAttention: softmax_precision {precision} is not a float type")
        return SOFTMAX_DTYPES[int(precision)]
    return np.dtype(np.float32) if np.dtype(dtype).itemsize < 4 else np.dtype(dtype)
