"""Which inputs of an op steer output shapes through their *values*: one table for split, import and dedupe.

A tensor whose value steers a shape (a Reshape target, an STFT frame step, a Range limit, ...) must be known
when a graph is compiled: ``split`` keeps such tensors constants, import reads them to size values
(``ir/shapes.py``), and a bundle that makes one a variable is refused (``stages/dedupe.py``). Steering is
transitive: a tensor that reaches a steering input through other nodes steers too, except through the
inputs of ``TYPE_ONLY_INPUTS``, which read a tensor's shape or dtype, never its values.

Plain data, no onnx import: ``split`` imports it at ``import bundle_pipeline`` time.
"""

from __future__ import annotations

from collections.abc import Mapping

# (op type) -> input indices whose *values* steer output shapes (or output counts, or which values exist).
SHAPE_INPUTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,),                      # shape
    "Slice": (1, 2, 3, 4),                # starts, ends, axes, steps
    "Resize": (1, 2, 3),                  # roi, scales, sizes
    "Upsample": (1,),                     # scales
    "Expand": (1,),                       # shape
    "Tile": (1,),                         # repeats
    "ConstantOfShape": (0,),              # shape
    "Pad": (1, 3),                        # pads, axes (2, constant_value, is data)
    "CenterCropPad": (1, 2),              # shape, axes
    "TopK": (1,),                         # k
    "Split": (1,),                        # split sizes
    "SplitToSequence": (1,),              # split sizes: the sequence's length and element shapes
    "Squeeze": (1,),                      # axes
    "Unsqueeze": (1,),                    # axes
    "ReduceSum": (1,), "ReduceMean": (1,), "ReduceMax": (1,), "ReduceMin": (1,), "ReduceProd": (1,),
    "ReduceL1": (1,), "ReduceL2": (1,), "ReduceLogSum": (1,), "ReduceLogSumExp": (1,),
    "ReduceSumSquare": (1,),              # axes
    "Range": (0, 1, 2),                   # start, limit, delta: the output length
    "OneHot": (1,),                       # depth
    "CumSum": (1,),                       # axis
    "Trilu": (1,),                        # k (which elements survive; kept static as CANN keeps it const)
    "Compress": (1,),                     # condition: the output length
    "NonZero": (0,),                      # output length depends on the values
    "Unique": (0,),
    "StringSplit": (0,),                  # the number of substrings
    "ImageDecoder": (0,),                 # the encoded image's size
    "NonMaxSuppression": (2, 3, 4),       # max boxes, iou and score thresholds: the output length
    "MaxUnpool": (2,),                    # output_shape
    "Col2Im": (1, 2),                     # image_shape, block_shape
    "AffineGrid": (1,),                   # size
    "DFT": (1, 2),                        # dft_length, axis
    "STFT": (1, 3),                       # frame_step, frame_length (the window steers by its shape only)
    "HannWindow": (0,), "HammingWindow": (0,), "BlackmanWindow": (0,),  # size
    "MelWeightMatrix": (0, 1),            # num_mel_bins, dft_length
    "If": (0,),                           # cond: which branch runs, so which shapes come out
    "Loop": (0, 1),                       # trip count, condition: the scan outputs' length
}
# (op type, input index) that read only a tensor's shape or dtype: a shape-steering output does not make them steer.
TYPE_ONLY_INPUTS = frozenset({("Shape", 0), ("Size", 0), ("EyeLike", 0), ("RandomNormalLike", 0),
                              ("RandomUniformLike", 0), ("CastLike", 1)})


def steering_inputs(op_type: str, inputs: list[str]) -> list[tuple[int, str]]:
    """(index, name) of the inputs of one node whose values steer its output shapes (omitted ones skipped)."""
    return [(i, inputs[i]) for i in SHAPE_INPUTS.get(op_type, ()) if i < len(inputs) and inputs[i]]


def ir_steering(graph: Mapping) -> dict[str, str]:
    """Value name -> why its value steers shapes, over an IR graph in JSON form (``Graph.to_json()``),
    bodies included. IR bodies are closed (``ir/graph.py``): a body's captures are inputs of its control
    node under the same names, so one name space covers every level."""
    steering: dict[str, str] = {}
    _mark_ir(graph, steering)
    return steering


def _mark_ir(graph: Mapping, steering: dict[str, str]) -> None:
    for node in reversed(graph["nodes"]):
        label = f"{node['op']} node {node['name']!r}"
        inputs = node["inputs"]
        for value in node["attrs"].values():
            if isinstance(value, dict) and "graph" in value:
                _mark_body(node, value["graph"], steering)
        for i, name in steering_inputs(node["op"], inputs):
            steering.setdefault(name, f"it is input {i} of {label}, which steers the output shape")
        reached = next((o for o in node["outputs"] if o in steering), None)
        if reached is None:
            continue
        for i, name in enumerate(inputs):
            if name and (node["op"], i) not in TYPE_ONLY_INPUTS:
                steering.setdefault(name, f"it feeds {label}, whose output {reached!r} steers shapes")


def _mark_body(node: Mapping, body: Mapping, steering: dict[str, str]) -> None:
    """A body's outputs steer where the node's outputs do (Loop's body also returns the condition first,
    which steers the trip count); what steers inside maps back to the node's inputs by position (If has no
    formal inputs; Loop and Scan line up with the node's inputs) and, for captures, by name."""
    outputs, node_outputs = body["outputs"], node["outputs"]
    if node["op"] == "Loop":
        if outputs:
            steering.setdefault(outputs[0], f"it is the loop condition of Loop node {node['name']!r}")
        outputs = outputs[1:]
    for out, body_out in zip(node_outputs, outputs, strict=False):
        if out in steering:
            steering.setdefault(body_out, f"it is returned as {out!r}, which steers shapes")
    _mark_ir(body, steering)
    explicit = len(node["inputs"]) - int(node["attrs"].get("captures", 0))
    if node["op"] == "If":
        return
    for formal, outer in zip(body["inputs"][:explicit], node["inputs"][:explicit], strict=False):
        if formal in steering and outer:
            steering.setdefault(outer, f"it feeds body input {formal!r} of {node['op']} node {node['name']!r}, "
                                       f"which steers shapes")
