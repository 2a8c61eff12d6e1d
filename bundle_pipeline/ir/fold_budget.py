"""How many elements a node folded at build time would produce, known before its kernel runs.

Constant folding runs kernels on small constants (shape arithmetic). Some ops make outputs whose size comes from
their input *values*, not their sizes: ``ConstantOfShape([100000, 100000])`` is a 16-byte input and a 37 GiB
output. ``fold_output_bound`` gives an upper bound of the largest output's element count, from the values for
those ops, from shape inference's static output shapes for the rest, and failing both from the inputs' sizes;
``None`` when it cannot tell. The importer folds a node only when the bound is known and within its budget
(a folded result is kept only when it is that small anyway); any other node is left to run time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# Ops whose output size follows from input values; those without a formula here need inferred output shapes.
VALUE_SIZED = frozenset({"ConstantOfShape", "Expand", "Tile", "Range", "OneHot", "Resize", "Upsample", "Pad",
                         "CenterCropPad", "Col2Im", "MaxUnpool", "AffineGrid", "HannWindow", "HammingWindow",
                         "BlackmanWindow", "MelWeightMatrix", "DFT", "STFT", "TfIdfVectorizer"})
# Ops whose output holds as many elements as their first input (or fewer).
SIZE_PRESERVING = frozenset({"Identity", "Cast", "CastLike", "Reshape", "Flatten", "Squeeze", "Unsqueeze",
                             "Transpose", "Neg", "Abs", "Not", "Sign", "Floor", "Ceil", "Round", "Relu", "CumSum",
                             "Slice", "Gather", "GatherElements", "Compress", "Trilu", "ReduceSum", "ReduceProd",
                             "ReduceMax", "ReduceMin", "ReduceMean", "ArgMax", "ArgMin", "TopK", "Split", "Unique",
                             "ScatterND", "ScatterElements", "EyeLike"})
RANK_SIZED = frozenset({"Shape", "Size"})  # their first input is only a shape (a zero-stride view)


def fold_output_bound(op: str, values: Sequence[np.ndarray | None],
                      out_shapes: Sequence[tuple[int, ...] | None]) -> int | None:
    """Upper bound of the element count of the largest output; None when unknown (do not fold)."""
    if op == "Constant":
        return 0  # its value is already in the model, and only small integer ones are folded
    try:
        if op in RANK_SIZED:
            return max(1, np.ndim(values[0]))
        if op in _FORMULAS:
            return _FORMULAS[op](values)
    except (TypeError, ValueError, IndexError, OverflowError, ZeroDivisionError):
        return 0  # values the kernel rejects at once (a zero step, a missing input): let it say so, at build time
    if out_shapes and all(s is not None and all(d >= 0 for d in s) for s in out_shapes):
        return max(math.prod(s) for s in out_shapes)  # type: ignore[arg-type]
    if op in VALUE_SIZED:
        return None
    sizes = [1 if v is None else int(np.size(v)) for v in values]
    if op in SIZE_PRESERVING and sizes:
        return sizes[0] if op != "Gather" else math.prod(sizes[:2])
    return max(sum(sizes), math.prod(sizes)) if sizes else None


def _ints(v: np.ndarray | None) -> list[int]:
    return [int(x) for x in np.asarray(v).reshape(-1)]


def _constant_of_shape(values: Sequence) -> int:
    return math.prod(_ints(values[0])) if values and values[0] is not None else 1


def _broadcast_dims(a: Sequence[int], b: Sequence[int]) -> list[int]:
    n = max(len(a), len(b))
    a, b = [1] * (n - len(a)) + list(a), [1] * (n - len(b)) + list(b)
    return [max(x, y) for x, y in zip(a, b, strict=True)]


def _expand(values: Sequence) -> int:
    return math.prod(_broadcast_dims(np.shape(values[0]), _ints(values[1])))


def _tile(values: Sequence) -> int:
    shape, repeats = np.shape(values[0]), _ints(values[1])
    if len(repeats) != len(shape):
        return math.prod(shape) * math.prod(repeats)
    return math.prod(s * r for s, r in zip(shape, repeats, strict=True))


def _range(values: Sequence) -> int:
    start, limit, delta = (float(np.asarray(v).reshape(-1)[0]) for v in values[:3])
    if delta == 0 or not all(map(math.isfinite, (start, limit, delta))):
        raise ValueError("a Range that never ends")
    return max(math.ceil((limit - start) / delta), 0)


def _one_hot(values: Sequence) -> int:
    return int(np.size(values[0])) * max(_ints(values[1])[0], 0)


_FORMULAS = {"ConstantOfShape": _constant_of_shape, "Expand": _expand, "Tile": _tile, "Range": _range,
             "OneHot": _one_hot}
