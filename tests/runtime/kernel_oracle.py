"""One-node ONNX models and the reference runtimes (onnx.reference, onnxruntime) the kernel tests compare with."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator


def one_node_model(op: str, inputs: list, attrs: dict, opset: int, out_dtypes: list) -> onnx.ModelProto:
    in_names = ["" if x is None else f"in{i}" for i, x in enumerate(inputs)]
    while in_names and in_names[-1] == "":
        in_names.pop()
    out_names = [f"out{i}" for i in range(len(out_dtypes))]
    node_attrs = {k: numpy_helper.from_array(v) if isinstance(v, np.ndarray) else v for k, v in attrs.items()}
    node = helper.make_node(op, in_names, out_names, **node_attrs)
    g_in = [
        helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(x.dtype), x.shape)
        for n, x in zip(in_names, inputs, strict=False)
        if n
    ]
    g_out = [
        helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(d), None)
        for n, d in zip(out_names, out_dtypes, strict=True)
    ]
    graph = helper.make_graph([node], "g", g_in, g_out)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def reference(model: onnx.ModelProto, inputs: list, engine: str) -> list[np.ndarray]:
    feeds = {f"in{i}": x for i, x in enumerate(inputs) if x is not None}
    if engine == "ort":
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return sess.run(None, feeds)
    return ReferenceEvaluator(model).run(None, feeds)
