"""ONNX graphs that write variables the ways users write them: every init form, SGD, Adam, a LoRA swap."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

import bundle_pipeline as bp
from bundle_pipeline.runtime import LoadedBundle, load_bundle

OPSET = 17
TRAINING = "ai.onnx.preview.training"
TARGETS = ("cpu", "npu")
INIT_FORMS = ("A", "B", "C")  # initializer as output, Constant node as output, W.init -> Identity -> W


def model(nodes: Sequence[onnx.NodeProto], inputs: Mapping[str, np.ndarray | tuple], outputs: Mapping[str, tuple],
          initializers: Mapping[str, np.ndarray] | None = None, name: str = "g") -> onnx.ModelProto:
    """A checked model. ``inputs``/``outputs``: name -> (shape, dtype) or an example array."""
    graph = helper.make_graph(list(nodes), name, [_info(n, t) for n, t in inputs.items()],
                              [_info(n, t) for n, t in outputs.items()],
                              [numpy_helper.from_array(np.asarray(v), n) for n, v in (initializers or {}).items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(TRAINING, 1)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def _info(name: str, t: np.ndarray | tuple) -> onnx.ValueInfoProto:
    shape, dtype = (t.shape, t.dtype) if isinstance(t, np.ndarray) else (t[0], np.dtype(t[1]))
    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), list(shape))


def init_graph(values: Mapping[str, np.ndarray], forms: Mapping[str, str]) -> onnx.ModelProto:
    """An init graph writing each variable in its form: A (an initializer that is the graph output), B (a
    Constant node whose output is the variable) or C (``W.init`` -> Identity -> ``W``)."""
    nodes, inits = [], {}
    for name, value in values.items():
        form = forms[name]
        if form == "A":
            inits[name] = value
        elif form == "B":
            nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, "value")))
        else:
            inits[f"{name}.init"] = value
            nodes.append(helper.make_node("Identity", [f"{name}.init"], [name]))
    return model(nodes, {}, dict(values), inits, name="init")


def matmul_infer(x_shape: tuple[int, ...], variables: Mapping[str, np.ndarray],
                 initializers: Mapping[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """y = x @ W0 + x @ W1 + ... over every variable (read through graph inputs) and every initializer."""
    read = {**variables, **(initializers or {})}
    nodes = [helper.make_node("MatMul", ["x", w], [f"y.{w}"]) for w in read]
    nodes.append(helper.make_node("Sum", [f"y.{w}" for w in read], ["y"]))
    out = (x_shape[0], next(iter(read.values())).shape[1])
    return model(nodes, {"x": (x_shape, "float32"), **variables}, {"y": (out, "float32")}, initializers,
                 name="infer")


def sgd_update(shape: tuple[int, ...]) -> onnx.ModelProto:
    """W_next = W - lr * g, to be built with ``assign: {W_next: W}``; lr and g are fed."""
    nodes = [helper.make_node("Mul", ["lr", "g"], ["step"]), helper.make_node("Sub", ["W", "step"], ["W_next"])]
    return model(nodes, {"W": (shape, "float32"), "g": (shape, "float32"), "lr": ((), "float32")},
                 {"W_next": (shape, "float32")}, name="sgd")


def adam_update(shape: tuple[int, ...], lr: float) -> onnx.ModelProto:
    """One step of ai.onnx.preview.training Adam on W with gradient G (fed). The moments V and H are read
    through graph inputs whose initializers (zeros) are their initial values; the step count T is a variable
    the init graph writes. Built with ``assign: {W_new: W, V_new: V, H_new: H, T_next: T}``."""
    zeros = np.zeros(shape, np.float32)
    nodes = [helper.make_node("Adam", ["R", "T", "W", "G", "V", "H"], ["W_new", "V_new", "H_new"], domain=TRAINING,
                              alpha=0.9, beta=0.999, epsilon=1e-6),
             helper.make_node("Add", ["T", "one"], ["T_next"])]
    f32 = (shape, "float32")
    return model(nodes, {"W": f32, "G": f32, "T": ((), "int64"), "V": f32, "H": f32},
                 {"W_new": f32, "V_new": f32, "H_new": f32, "T_next": ((), "int64")},
                 {"R": np.array(lr, np.float32), "one": np.array(1, np.int64), "V": zeros, "H": zeros}, name="adam")


def lora_graphs(base: np.ndarray, rank: int, x_rows: int) -> dict[str, onnx.ModelProto]:
    """init writes W_base and W (= W_base); the update ``swap`` writes W = W_base + B @ A from fed B, A (it
    reads W_base, never W, so swaps never accumulate); infer reads W."""
    d, k = base.shape
    init = model([helper.make_node("Identity", ["W_base"], ["W"])], {}, {"W_base": base, "W": base},
                 {"W_base": base}, name="init")
    swap = model([helper.make_node("MatMul", ["B", "A"], ["BA"]), helper.make_node("Add", ["W_base", "BA"], ["W"])],
                 {"W_base": base, "B": ((d, rank), "float32"), "A": ((rank, k), "float32")}, {"W": base}, name="swap")
    infer = model([helper.make_node("MatMul", ["x", "W"], ["y"])], {"x": ((x_rows, d), "float32"), "W": base},
                  {"y": ((x_rows, k), "float32")}, name="infer")
    return {"init": init, "swap": swap, "infer": infer}


def build(tmp: Path, graphs: Sequence[bp.GraphWithOptions], target: str, run_init: bool = True) -> LoadedBundle:
    """Build through the Python API, save, load (running the init graph unless told not to)."""
    path = tmp / f"bundle-{target}.zip"
    bp.bundle_save_model(path, bp.bundle_build_model(list(graphs), target=target, cache=tmp / "cache"))
    return load_bundle(path, run_init=run_init)


def random(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def save(directory: Path, models: Mapping[str, onnx.ModelProto]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, m in models.items():
        onnx.save(m, directory / f"{name}.onnx")
