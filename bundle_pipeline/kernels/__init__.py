"""NumPy kernel library: executes ONNX default-domain ops (opsets 11-21, and the ops added up to opset 28:
Attention, RotaryEmbedding, RMSNormalization, TensorScatter, Swish, CumProd, BitCast, LinearAttention, ...)
given as data, and the ops of other domains in their own modules (``ml``: ai.onnx.ml, ``training``:
ai.onnx.preview.training), registered per (domain, op). Element types are numpy's: no bfloat16, float8,
float4, int4 or int2."""

from __future__ import annotations

import numpy as np

from . import (
    attention,
    conv,
    elementwise,
    image,
    indexing,
    linalg,
    loss,
    ml,
    norm,
    pool,
    preview,
    quant,
    reduce,
    resize,
    rnn,
    sequence,
    signal,
    tensor,
    text,
    training,
)
from ._registry import DEFAULT_DOMAINS, DOMAIN_KERNELS, KERNELS, Attrs, KernelError, Tiling

__all__ = ["DOMAIN_OPS", "KNOWN_OPSETS", "SUPPORTED_OPS", "KernelError", "run_kernel", "supports_op"]

# imported for their registrations
_MODULES = (attention, conv, elementwise, image, indexing, linalg, loss, ml, norm, pool, preview, quant, reduce,
            resize, rnn, sequence, signal, tensor, text, training)

SUPPORTED_OPS: frozenset[str] = frozenset(KERNELS)  # the default domain's
# Opset versions whose semantics the kernels follow, per domain ("" is ai.onnx). A model or program importing
# another version is refused: its ops may mean something else, and running them as a known version is a guess.
KNOWN_OPSETS: dict[str, tuple[int, int]] = {"": (1, 28), "ai.onnx.ml": (1, 5), "ai.onnx.preview": (1, 1),
                                            "ai.onnx.preview.training": (1, 1)}
DOMAIN_OPS: dict[str, frozenset[str]] = {d: frozenset(ops) for d, ops in sorted(DOMAIN_KERNELS.items())}


def supports_op(op_type: str, domain: str = "") -> bool:
    """The library has a kernel for ``op_type`` of ``domain`` ("" or "ai.onnx": the default domain)."""
    if domain in DEFAULT_DOMAINS:
        return op_type in SUPPORTED_OPS
    return op_type in DOMAIN_OPS.get(domain, ())


def run_kernel(
    op_type: str,
    inputs: list[np.ndarray | None],
    attrs: Attrs,
    opset: int,
    tiling: Tiling = None,
    domain: str = "",
) -> list[np.ndarray]:
    """Run one ONNX node of ``domain`` (default: the default ONNX domain) and return its outputs in ONNX order.

    inputs: positional ONNX inputs; an omitted optional input is None, and trailing omitted ones may
        be left out of the list. A sequence is a list of arrays, an empty optional is None (kernels/sequence.py).
    attrs: decoded attribute values (int, float, str, lists, np.ndarray for tensors); absent
        attributes take their ONNX defaults. Split without a 'split' input/attribute needs the node's
        output count: from opset 18 that is the ``num_outputs`` attribute, and for older opsets the
        caller passes the same key (``attrs["num_outputs"] = len(node.output)``).
    opset: the model's opset of the node's domain (default domain: 11..28; ai.onnx.ml: 1..5; ...); semantics
        follow that opset's definition.
    tiling: optional compiler tiling data that bounds workspace and never changes the numbers
        (beyond float summation order): Conv ``{"tile_hw": n}`` = output spatial positions (of one image
        and group) per
        im2col chunk (chunk workspace n * C/group * prod(kernel_shape) elements);
        MatMul/Gemm ``{"tile_m": m, "tile_n": n}`` = output blocks over the last two dims.
        Other ops, ConvTranspose included, ignore it.

    Returns at least the required outputs and as many optional outputs as the op defines (e.g.
    MaxPool's Indices, Dropout's mask, LSTM's Y_h/Y_c, LayerNormalization's Mean/InvStdDev);
    callers use the first N they need. Output dtypes are exactly ONNX's. Outputs may be views of
    inputs (Identity, Reshape, Expand, Slice, ...) and may be read-only: callers copy them into
    their own buffers before writing. Inputs are never modified.

    Raises KernelError (a ValueError) for an unsupported op, an invalid attribute value or an
    input combination the op does not accept.
    """
    if domain in DEFAULT_DOMAINS:
        fn = KERNELS.get(op_type)
        if fn is None:
            raise KernelError(f"no kernel for op {op_type}")
    else:
        fn = DOMAIN_KERNELS.get(domain, {}).get(op_type)
        if fn is None:
            raise KernelError(f"no kernel for op {op_type} of domain {domain!r}")
    arrays = [x if x is None or isinstance(x, list) else np.asarray(x) for x in inputs]  # list: a sequence
    return fn(arrays, dict(attrs), int(opset), tiling)
