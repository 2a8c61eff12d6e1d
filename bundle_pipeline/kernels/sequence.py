"""Sequence and optional ops: a sequence is a Python list of arrays, an empty optional is None
(or np.asarray(None) from a caller).

Tensors that enter a sequence or an optional are copied: the executor never plans containers in its arena,
so they must not hold views of arena buffers that a later step overwrites. SequenceMap has a body and is a
control op (``runtime/control.py``). Identity passes containers through (``tensor.py``).
"""

from __future__ import annotations

import itertools

import numpy as np

from ._registry import Attrs, Inputs, KernelError, Tiling, arg, int_list, kernel, norm_axis, onnx_dtype, scalar

Sequence = list[np.ndarray]


def _seq(inputs: Inputs, i: int, name: str) -> Sequence:
    value = arg(inputs, i)
    if not isinstance(value, list):
        got = "nothing" if value is None else f"a tensor of shape {list(np.shape(value))}"
        raise KernelError(f"input {name!r} (#{i}) must be a sequence, got {got}")
    return value


def _tensor(inputs: Inputs, i: int, name: str) -> np.ndarray:
    value = arg(inputs, i)
    if value is None or isinstance(value, list):
        raise KernelError(f"input {name!r} (#{i}) must be a tensor, got {'nothing' if value is None else 'a sequence'}")
    return np.asarray(value)


def _owned(value: object) -> object:
    """A copy the container owns: arrays copied, lists element by element, None kept."""
    if value is None:
        return None
    if isinstance(value, list):
        return [np.array(v, copy=True) for v in value]
    return np.array(value, copy=True)


def _position(inputs: Inputs, i: int, length: int, default: int, inclusive: bool) -> int:
    """ONNX position: in [-n, n-1] (or [-n, n] when inserting), negative counts from the back."""
    raw = arg(inputs, i)
    if raw is None:
        return default
    pos = int(scalar(raw))
    hi = length if inclusive else length - 1
    if not -length <= pos <= hi:
        raise KernelError(f"position {pos} is out of range for a sequence of length {length}")
    return pos + length if pos < 0 else pos


def _same_dtype(seq: Sequence, tensor: np.ndarray, op: str) -> None:
    if seq and np.asarray(seq[0]).dtype != tensor.dtype:
        raise KernelError(f"{op}: tensor is {tensor.dtype}, the sequence holds {np.asarray(seq[0]).dtype}")


@kernel("SequenceEmpty")
def _sequence_empty(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list:
    onnx_dtype(attrs.get("dtype", 1), "dtype")  # validated; an empty list carries no element type
    return [[]]


@kernel("SequenceConstruct")
def _sequence_construct(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list:
    tensors = [_tensor(inputs, i, f"inputs[{i}]") for i in range(len(inputs))]
    if not tensors:
        raise KernelError("SequenceConstruct needs at least one tensor")
    if len({t.dtype for t in tensors}) != 1:
        raise KernelError(f"SequenceConstruct: tensors of different types {sorted({t.dtype.name for t in tensors})}")
    return [_owned(tensors)]


@kernel("SequenceInsert")
def _sequence_insert(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list:
    seq, tensor = _seq(inputs, 0, "input_sequence"), _tensor(inputs, 1, "tensor")
    _same_dtype(seq, tensor, "SequenceInsert")
    pos = _position(inputs, 2, len(seq), len(seq), inclusive=True)
    return [[*seq[:pos], np.array(tensor, copy=True), *seq[pos:]]]


@kernel("SequenceAt")
def _sequence_at(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list:
    seq = _seq(inputs, 0, "input_sequence")
    if arg(inputs, 1) is None:
        raise KernelError("SequenceAt needs a position")
    return [seq[_position(inputs, 1, len(seq), 0, inclusive=False)]]


@kernel("SequenceErase")
def _sequence_erase(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list:
    seq = _seq(inputs, 0, "input_sequence")
    if not seq:
        raise KernelError("SequenceErase on an empty sequence")
    pos = _position(inputs, 1, len(seq), len(seq) - 1, inclusive=False)
    return [[*seq[:pos], *seq[pos + 1:]]]


@kernel("SequenceLength")
def _sequence_length(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list:
    return [np.array(len(_seq(inputs, 0, "input_sequence")), dtype=np.int64)]


@kernel("SplitToSequence")
def _split_to_sequence(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list:
    x = _tensor(inputs, 0, "input")
    axis = norm_axis(int(attrs.get("axis", 0)), x.ndim)
    dim = x.shape[axis]
    split = arg(inputs, 1)
    if split is None:  # one slice per index, squeezed unless keepdims
        parts = [np.take(x, [i], axis=axis) for i in range(dim)]
        if not int(attrs.get("keepdims", 1)):
            parts = [np.squeeze(p, axis=axis) for p in parts]
        return [_owned(parts)]
    split = np.asarray(split)
    if split.ndim == 0:
        size = int(split)
        if size <= 0:
            raise KernelError(f"SplitToSequence: split={size} must be positive")
        sizes = [min(size, dim - lo) for lo in range(0, dim, size)]
    else:
        sizes = int_list(split)
        if sum(sizes) != dim or (sizes and min(sizes) < 0):
            raise KernelError(f"SplitToSequence: split={sizes} does not sum to dimension {dim}")
    offsets = np.cumsum([0, *sizes])
    parts = [x[(slice(None),) * axis + (slice(int(lo), int(hi)),)] for lo, hi in itertools.pairwise(offsets)]
    return [_owned(parts)]


@kernel("ConcatFromSequence")
def _concat_from_sequence(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list:
    seq = _seq(inputs, 0, "input_sequence")
    if not seq:
        raise KernelError("ConcatFromSequence on an empty sequence")
    if "axis" not in attrs:
        raise KernelError("ConcatFromSequence needs attribute axis")
    rank = np.ndim(seq[0])
    if int(attrs.get("new_axis", 0)):
        return [np.stack(seq, axis=norm_axis(int(attrs["axis"]), rank + 1))]
    return [np.concatenate(seq, axis=norm_axis(int(attrs["axis"]), rank))]


@kernel("Optional")
def _optional(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list:
    value = arg(inputs, 0)
    if value is None and "type" not in attrs:
        raise KernelError("Optional without an input needs attribute type")
    return [_owned(value)]


def _optional_value(inputs: Inputs) -> object:
    """Input 0 as an optional's content, None when empty: a caller may hand an empty optional over as None or
    as ``np.asarray(None)`` (a 0-d object array); a sequence (list) or a tensor is a present value."""
    value = arg(inputs, 0)
    if isinstance(value, np.ndarray) and value.dtype == object and value.shape == () and value.item() is None:
        return None
    return value


@kernel("OptionalHasElement")
def _optional_has_element(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list:
    return [np.array(_optional_value(inputs) is not None)]


@kernel("OptionalGetElement")
def _optional_get_element(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list:
    value = _optional_value(inputs)
    if value is None:
        raise KernelError("OptionalGetElement of an empty optional")
    return [value]
