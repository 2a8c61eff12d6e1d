"""The import's shortcuts give exactly what the long way gives: one shape inference for a graph folding leaves
unchanged, interned IR types, and inline tensors read without numpy_helper's dispatch."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest
from onnx import helper, numpy_helper

from bundle_pipeline.ir import onnx_import, shapes
from bundle_pipeline.ir.fold import fold_constants
from bundle_pipeline.ir.graph import Graph, TensorType
from bundle_pipeline.ir.node_attrs import tensor_array


def model(text: str) -> onnx.ModelProto:
    return onnx.parser.parse_model(f'<ir_version: 8, opset_import: ["" : 17]>\n{text}')


FLAT = model("""
agraph (float[2,8] x) => (float[2,4] y) {
  h = MatMul(x, w)
  a = Add(h, b)
  y = Relu(a)
}
""")
FLAT.graph.initializer.extend([numpy_helper.from_array(np.arange(32, dtype=np.float32).reshape(8, 4), "w"),
                               numpy_helper.from_array(np.ones(4, np.float32), "b")])
FOLDS = model("""
agraph (float[2,3,4] x) => (float[6,4] y) {
  s = Shape(x)
  i0 = Constant<value = int64[1] {0}>()
  i1 = Constant<value = int64[1] {1}>()
  d0 = Gather(s, i0)
  d1 = Gather(s, i1)
  rows = Mul(d0, d1)
  last = Constant<value = int64[1] {-1}>()
  shape = Concat<axis = 0>(rows, last)
  y = Reshape(x, shape)
}
""")
LOOP = model("""
agraph (int64 n, float[3] x) => (float[3] y) {
  cond = Constant<value = bool {1}>()
  y = Loop(n, cond, x) <body = loop_body (int64 i, bool c, float[3] v) => (bool c_out, float[3] v_out) {
      c_out = Identity(c)
      v_out = Relu(v)
  }>
}
""")


def import_the_long_way(m: onnx.ModelProto) -> Graph:
    """The import as it was before the shortcuts: every fold pass followed by a fresh shape inference."""
    m, base = onnx_import.load_model(m.SerializeToString(), "g")
    detached = onnx_import.detach_weights(m, base, "g")
    onnx_import.check_model(m, "g")
    onnx_import.uniquify_body_names(m)
    onnx_import._clear_inferred(m)
    m = shapes.infer(m, "g")
    for _ in range(onnx_import.MAX_FOLD_PASSES):
        m, folded = fold_constants(m, onnx_import.default_opset(m), "g")
        onnx_import._clear_inferred(m)
        m = shapes.infer(m, "g")
        if not folded.inlined:
            break
    return onnx_import.to_ir(m, "g", detached, "g")[0]


@pytest.mark.parametrize(("m", "inferences"), [(FLAT, 1), (FOLDS, 2), (LOOP, 2)], ids=["flat", "folds", "loop"])
def test_import_infers_again_only_when_folding_changed_the_graph_and_matches_the_long_way(m, inferences,
                                                                                          monkeypatch):
    calls = []
    real = shapes.infer_strict
    monkeypatch.setattr(shapes, "infer_strict", lambda *a: calls.append(1) or real(*a))
    graph, _ = onnx_import.import_model(m.SerializeToString(), "g", {}, "", "g")
    assert len(calls) == inferences  # a graph with bodies is re-inferred: onnx types a Loop body's values then
    monkeypatch.setattr(shapes, "infer_strict", real)
    assert graph.to_json() == import_the_long_way(m).to_json()


def test_fold_reports_whether_it_changed_the_graph():
    flat = onnx.ModelProto.FromString(FLAT.SerializeToString())
    _, folded = fold_constants(onnx_import.infer_shapes(flat, "g"), 17, "g")
    assert (folded.changed, folded.inlined) == (False, False)
    folds = onnx_import.infer_shapes(onnx.ModelProto.FromString(FOLDS.SerializeToString()), "g")
    out, folded = fold_constants(folds, 17, "g")
    assert (folded.changed, folded.inlined) == (True, False)
    assert [n.op_type for n in out.graph.node] == ["Reshape"]


def test_tensor_types_are_interned_and_derive_their_properties_once():
    a = TensorType.from_json({"shape": [2, 3], "dtype": "float32"})
    assert a is TensorType.from_json({"shape": [2, 3], "dtype": "float32"}) is TensorType.of((2, 3), "float32")
    assert a == TensorType((2, 3), "float32") and hash(a) == hash(TensorType((2, 3), "float32"))
    assert (a.dynamic, a.container, a.nbytes, a.itemsize) == (False, False, 24, 4)
    assert vars(a)["dynamic"] is False  # computed once, kept on the instance
    assert TensorType.of((-1, 3), "float32").dynamic and TensorType.of((-1,), "seq(float32)").container
    assert TensorType.of((2,), "object").dynamic


TENSORS = [np.arange(12, dtype=np.float32).reshape(3, 4), np.array([True, False, True]),
           np.arange(6, dtype=np.float16).reshape(2, 3), np.array(7, dtype=np.int64), np.zeros((0, 2), np.int32),
           np.arange(4, dtype=np.uint64), np.array([1.5, -2.0])]


@pytest.mark.parametrize("arr", TENSORS, ids=lambda a: f"{a.dtype}{list(a.shape)}")
def test_tensor_array_equals_numpy_helper_for_raw_and_typed_fields(arr):
    raw = numpy_helper.from_array(arr, "t")
    typed = helper.make_tensor("t", helper.np_dtype_to_tensor_dtype(arr.dtype), arr.shape, arr.reshape(-1).tolist())
    for t in (raw, typed):
        got, want = tensor_array(t), numpy_helper.to_array(t)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_tensor_array_leaves_strings_to_numpy_helper():
    t = helper.make_tensor("s", onnx.TensorProto.STRING, [2], [b"ab", b"c"])
    assert tensor_array(t).tolist() == ["ab", "c"]
