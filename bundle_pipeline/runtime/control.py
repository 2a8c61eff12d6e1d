"""Control-flow kernels (If, Loop, Scan, SequenceMap): ONNX semantics over compiled bodies.

A body is anything with ``call(args) -> outputs`` and ``output_types`` (the executor's ``BodyExecutor``):
its formal inputs are the ONNX body inputs followed by the values the node captures (``attrs["captures"]``
of them, the node's last inputs; see ``ir/graph.py``). Results are fresh arrays: a body's outputs live in
its arena, which its next call overwrites. Values may be sequences (lists) and empty optionals (None), as
loop-carried values, branch results and SequenceMap's inputs and outputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from ..dtypes import dtype_from_name
from ..ir.graph import CONTROL_OPS
from ..kernels import KernelError

__all__ = ["BODY_ATTRS", "CONTROL_OPS", "KERNEL_GRAPH_ATTRS", "graph_callables", "run_control"]
BODY_ATTRS = {"If": ("else_branch", "then_branch"), "Loop": ("body",), "Scan": ("body",), "SequenceMap": ("body",)}
# kernels of other domains whose graph attributes (each optional) they call as tensor -> tensor functions
KERNEL_GRAPH_ATTRS = {("ai.onnx.preview", "FlexAttention"): ("prob_mod", "score_mod")}


class Body(Protocol):
    output_types: list[tuple[list[int], str]]  # (shape with -1 for run-time dims, dtype) per output

    def call(self, args: Sequence[np.ndarray | None]) -> list[np.ndarray]: ...


def run_control(op: str, bodies: Mapping[str, Body], args: list[np.ndarray | None], attrs: dict,
                opset: int) -> list[np.ndarray]:
    explicit, captured = split_captures(args, attrs)
    if op == "If":
        return _copies(bodies["then_branch" if _truth(explicit[0]) else "else_branch"].call(captured))
    if op == "Loop":
        return _loop(bodies["body"], explicit, captured)
    if op == "SequenceMap":
        return _sequence_map(bodies["body"], explicit, captured)
    if op != "Scan":
        raise KernelError(f"{op} is not a control-flow op")
    if opset < 9:
        return _scan8(bodies["body"], explicit, captured, attrs)
    return _scan(bodies["body"], explicit, captured, attrs)


def _loop(body: Body, explicit: list, captured: list) -> list[np.ndarray]:
    """Loop: run while ``i < M`` (M omitted: unbounded) and the condition holds (omitted: true)."""
    trip, cond = explicit[0], explicit[1]
    limit = None if trip is None else int(np.asarray(trip).reshape(-1)[0])
    going = True if cond is None else _truth(cond)
    carried = _copies(explicit[2:])
    n_scan = len(body.output_types) - 1 - len(carried)
    scanned: list[list[np.ndarray]] = [[] for _ in range(n_scan)]
    i = 0
    while going and (limit is None or i < limit):
        outs = body.call([np.array(i, dtype=np.int64), np.array(going), *carried, *captured])
        going = _truth(outs[0])
        carried = _copies(outs[1:1 + len(carried)])
        for store, value in zip(scanned, outs[1 + len(carried):], strict=True):
            store.append(np.array(value, copy=True))
        i += 1
    return carried + [_stack(values, body.output_types[1 + len(carried) + j], 0, False)
                      for j, values in enumerate(scanned)]


def _sequence_map(body: Body, explicit: list, captured: list) -> list[list[np.ndarray]]:
    """SequenceMap: call the body on the i-th element of every sequence input (tensor inputs are passed
    whole to every call); each output is the sequence of the body's results."""
    sequences = [len(x) for x in explicit if isinstance(x, list)]
    if not isinstance(explicit[0], list):
        raise KernelError("SequenceMap: input_sequence must be a sequence")
    if len(set(sequences)) != 1:
        raise KernelError(f"SequenceMap: input sequences have different lengths {sequences}")
    results: list[list[np.ndarray]] = [[] for _ in body.output_types]
    for i in range(sequences[0]):
        outs = body.call([x[i] if isinstance(x, list) else x for x in explicit] + captured)
        for store, value in zip(results, outs, strict=True):
            store.append(np.array(value, copy=True))
    return results


def _scan(body: Body, states: list, captured: list, attrs: dict) -> list[np.ndarray]:
    """Scan (opset 9+): slice each scan input along its axis, thread the states, stack the scan outputs."""
    m = int(attrs["num_scan_inputs"])
    states, scans = list(states[:len(states) - m]), list(states[len(states) - m:])
    in_axes = [_axis(a, x.ndim) for a, x in zip(attrs.get("scan_input_axes", [0] * m), scans, strict=True)]
    in_dirs = attrs.get("scan_input_directions", [0] * m)
    lengths = {x.shape[a] for x, a in zip(scans, in_axes, strict=True)}
    if len(lengths) != 1:
        raise KernelError(f"Scan inputs have different sequence lengths {sorted(lengths)}")
    steps = lengths.pop()
    k = len(body.output_types) - len(states)
    scanned: list[list[np.ndarray]] = [[] for _ in range(k)]
    for t in range(steps):
        slices = [np.take(x, steps - 1 - t if d else t, axis=a) for x, a, d in zip(scans, in_axes, in_dirs,
                                                                                  strict=True)]
        outs = body.call([*states, *slices, *captured])
        states = _copies(outs[:len(states)])
        for store, value in zip(scanned, outs[len(states):], strict=True):
            store.append(np.array(value, copy=True))
    out_axes = attrs.get("scan_output_axes", [0] * k)
    out_dirs = attrs.get("scan_output_directions", [0] * k)
    results = []
    for j, values in enumerate(scanned):
        shape, _ = body.output_types[len(states) + j]
        results.append(_stack(values, body.output_types[len(states) + j], _axis(out_axes[j], len(shape) + 1),
                              bool(out_dirs[j])))
    return states + results


def _scan8(body: Body, explicit: list, captured: list, attrs: dict) -> list[np.ndarray]:
    """Scan-8: inputs carry a leading batch axis and an optional ``sequence_lens``; each batch item is one
    opset-9 scan along axis 0 (directions per scan input)."""
    seq_lens, rest = explicit[0], explicit[1:]
    m = int(attrs["num_scan_inputs"])
    batch = rest[0].shape[0]
    steps = rest[-1].shape[1]
    if seq_lens is not None and np.any(np.asarray(seq_lens) != steps):
        raise KernelError("Scan-8 with sequence_lens shorter than the scan inputs is not supported")
    per_item = {"num_scan_inputs": m, "scan_input_directions": attrs.get("directions", [0] * m)}
    items = [_scan(body, [x[b] for x in rest], captured, per_item) for b in range(batch)]
    if not items:  # an empty batch: states as they came, scan outputs [0, steps, ...]
        states = rest[:len(rest) - m]
        scans = [np.zeros((0, steps, *(max(d, 0) for d in shape)), dtype=dtype_from_name(dtype))
                 for shape, dtype in body.output_types[len(states):]]
        return _copies(states) + scans
    return [np.stack([item[j] for item in items]) for j in range(len(items[0]))]


def _stack(values: list[np.ndarray], out_type: tuple[list[int], str], axis: int, reverse: bool) -> np.ndarray:
    if not values:  # no iteration: an empty sequence of the body's output shape
        shape, dtype = out_type
        return np.zeros((0, *(max(d, 0) for d in shape)), dtype=dtype_from_name(dtype))
    return np.stack(values[::-1] if reverse else values, axis=axis)


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _truth(value: np.ndarray) -> bool:
    arr = np.asarray(value)
    if arr.size != 1:
        raise KernelError(f"a condition must hold one element, got shape {list(arr.shape)}")
    return bool(arr.reshape(-1)[0])


def _copies(values: Sequence[np.ndarray | list | None]) -> list:
    """Fresh copies; a sequence element by element, an empty optional (None) as itself."""
    return [None if v is None else [np.array(e, copy=True) for e in v] if isinstance(v, list)
            else np.array(v, copy=True) for v in values]


def graph_callables(bodies: Mapping[str, Body], args: list, attrs: dict) -> tuple[list, dict]:
    """A kernel's graph attributes as functions ``tensor -> tensor`` (the body's first input, then what it
    captured); returns the kernel's own inputs (captures removed) and its attributes with the functions."""
    explicit, captured = split_captures(args, attrs)
    calls = {name: (lambda x, body=body: np.array(body.call([x, *captured])[0], copy=True))
             for name, body in bodies.items()}
    return explicit, {**{k: v for k, v in attrs.items() if k != "captures"}, **calls}


def split_captures(args: list, attrs: dict) -> tuple[list, list]:
    """A step's own inputs, then the ``attrs["captures"]`` outer values its bodies read (its last inputs)."""
    captures = int(attrs.get("captures", 0))
    return args[:len(args) - captures], args[len(args) - captures:]
