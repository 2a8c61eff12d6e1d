"""npu kernel library: kernels that compute on Ascend-style formatted data, tile by tile.

Contract (``run_npu_kernel``): inputs are physical arrays in ``in_formats`` (see ``formats``) holding logical
tensors of ``in_shapes``; the result is the physical array in ``out_format`` for the logical ``out_shape``.
Numbers equal the cpu kernel (``kernels.run_kernel``) on the standard layouts up to float summation order.
Which calls run natively (formats per input, conditions such as Conv's group == 1) is ``targets.npu``'s
table and ``supports`` predicate, shared with the build side; this package holds the kernels themselves
(``cube``: MatMul, Gemm, Conv; ``vector``: pooling, BatchNormalization, reductions, Softmax, elementwise).

- **Padding invariant**: padding lanes are zero after every kernel. Inputs are assumed to satisfy it
  (kernels compute on whole fractals, and zero lanes contribute nothing to sums and products), and
  every result is re-zeroed before it is returned, because some ops map 0 to non-zero (Sigmoid(0) =
  0.5, Exp, Div 0/0) or see padding through reductions over padded rows (Softmax).
- **Cube ops** (MatMul, Gemm, Conv) are a blocked GEMM over the tiling with accumulation in an L0C-like
  buffer (``cube``'s docstring); any valid tiling gives the same numbers up to summation order.
- **Reductions over a padded axis** ignore the padding (``vector``'s docstring).
- ``run_npu_kernel`` raises ``KernelError`` for a call it does not support (``targets.npu.check_call``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ...formats import c_contiguous, storage_shape, zero_padding
from ...kernels._registry import KernelError
from ...targets.npu import ELEMENTWISE_OPS, Call, check_call
from .cube import run_conv, run_matmul
from .vector import run_batch_norm, run_elementwise, run_global, run_pool, run_reduce, run_softmax

__all__ = ["NATIVE_KERNELS", "KernelError", "run_npu_kernel"]

# The kernel of every op ``targets.npu.NPU_FORMAT_OPS`` declares native (a test keeps the two key sets equal).
NATIVE_KERNELS: dict[str, Callable[[Call], np.ndarray]] = {
    "MatMul": run_matmul,
    "Gemm": run_matmul,
    "Conv": run_conv,
    "MaxPool": run_pool,
    "AveragePool": run_pool,
    "GlobalAveragePool": run_global,
    "GlobalMaxPool": run_global,
    "BatchNormalization": run_batch_norm,
    "ReduceSum": run_reduce,
    "ReduceMean": run_reduce,
    "ReduceMax": run_reduce,
    "Softmax": run_softmax,
    "LogSoftmax": run_softmax,
    **dict.fromkeys(ELEMENTWISE_OPS, run_elementwise),
}


def run_npu_kernel(op_type: str, inputs: list[np.ndarray | None], attrs: dict, opset: int,
                   in_formats: list[str | None], out_format: str, in_shapes: list[tuple | None],
                   out_shape: tuple, tiling: dict | None) -> np.ndarray:
    """Run one op natively on formatted data; return the physical result in ``out_format``.

    inputs: physical arrays (None for omitted optional inputs), each in ``in_formats[i]`` holding the
        logical ``in_shapes[i]``; in_formats/in_shapes have one entry per input position.
    tiling: ``{"tile_m", "tile_n", "tile_k"}`` for MatMul/Gemm, ``{"tile_hw", "tile_n", "tile_k"}`` for
        Conv (elements, multiples of 16; absent keys mean the whole axis); other keys are ignored.
    Raises KernelError when the call has no native implementation (see ``targets.npu.supports``) or is invalid.
    """
    count = max(len(inputs), len(in_formats), len(in_shapes))  # trailing omitted inputs may be left out
    arrays = [None if x is None else np.asarray(x) for x in inputs] + [None] * (count - len(inputs))
    shapes = [None if s is None else tuple(int(d) for d in s) for s in in_shapes] + [None] * (count - len(in_shapes))
    formats = list(in_formats) + [None] * (count - len(in_formats))
    call = Call(op_type, arrays, dict(attrs), int(opset), formats, out_format, shapes,
                tuple(int(d) for d in out_shape), tiling)
    check_call(call)
    for i, (x, fmt, shape) in enumerate(zip(arrays, formats, shapes, strict=True)):
        if x is not None and (shape is None or x.shape != storage_shape(fmt, shape)):
            raise KernelError(f"{op_type}: input {i} has physical shape {x.shape}, not that of {shape} in {fmt}")
    y = NATIVE_KERNELS[op_type](call)
    # The invariant every consumer relies on: padding lanes are zero after every kernel.
    return zero_padding(c_contiguous(y), out_format, call.out_shape)
