"""parse: ONNX text/bytes/paths -> structure (IR graph without weight bytes) + weight arrays."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx.parser
import pytest
from onnx import numpy_helper

from bundle_pipeline.errors import BundleError
from bundle_pipeline.ir.graph import Graph, Node, TensorType
from bundle_pipeline.stages import parse


def run(m: onnx.ModelProto | str, **params) -> parse.ParseOutput:
    """parse.run on a model (serialised to bytes) or a path."""
    source = m if isinstance(m, str) else m.SerializeToString()
    return parse.run(source, {"graph": "g", "where": "g.onnx", **params})


def model(text: str, opset: int = 17) -> onnx.ModelProto:
    return onnx.parser.parse_model(f'<ir_version: 8, opset_import: ["" : {opset}]>\n{text}')


def ops(structure: dict) -> list[str]:
    return [n["op"] for n in structure["nodes"]]


def const(structure: dict, name: str) -> np.ndarray:
    return Graph.from_json(structure).consts[name]


SHAPE_CHAIN = model("""
agraph (float[2,3,4] x) => (float[6,4] y) {
  s = Shape(x)
  i0 = Constant<value = int64[1] {0}>()
  i1 = Constant<value = int64[1] {1}>()
  d0 = Gather<axis=0>(s, i0)
  d1 = Gather<axis=0>(s, i1)
  p = Mul(d0, d1)
  t = Constant<value = int64[1] {-1}>()
  shp = Concat<axis=0>(p, t)
  y = Reshape(x, shp)
}
""")


def test_shape_arithmetic_folds_into_an_inlined_reshape_shape():
    out = run(SHAPE_CHAIN)
    s = out.structure
    assert ops(s) == ["Reshape"]
    (reshape,) = s["nodes"]
    assert reshape["inputs"][0] == "x"
    target = reshape["inputs"][1]
    assert target in s["consts"]
    np.testing.assert_array_equal(const(s, target), [6, -1])
    assert s["types"]["y"] == {"shape": [6, 4], "dtype": "float32"}
    assert s["inputs"] == ["x"] and s["weights"] == [] and out.weights == {}


def test_weights_come_from_initializers_and_float_constants_small_ints_become_consts():
    m = model("""
agraph (float[2,3] x) => (float[3,2] y) <float[3] b = {1.0, 2.0, 3.0}> {
  k = Constant<value = float[2,3] {0.5, 1.5, 2.5, 3.5, 4.5, 5.5}>()
  perm = Constant<value = int64[2] {1, 0}>()
  h = Add(x, b)
  z = Mul(h, k)
  shp = Constant<value = int64[2] {3, 2}>()
  y = Reshape(z, shp)
}
""")
    out = run(m)
    s = out.structure
    assert sorted(out.weights) == ["b", "k"] == s["weights"]
    np.testing.assert_array_equal(out.weights["b"], np.array([1, 2, 3], np.float32))
    np.testing.assert_array_equal(out.weights["k"], np.arange(0.5, 6, 1, dtype=np.float32).reshape(2, 3))
    assert out.weights["k"].dtype == np.float32
    assert "Constant" not in ops(s)
    assert "shp" in s["consts"] and not {"b", "k"} & set(s["consts"])
    assert "perm" not in s["consts"]  # no node reads it: unused tensors are not stored
    np.testing.assert_array_equal(const(s, "shp"), [3, 2])
    assert const(s, "shp").dtype == np.int64
    assert s["types"]["k"] == {"shape": [2, 3], "dtype": "float32"}
    assert s["inputs"] == ["x"]  # weights and consts are not feeds


def test_external_data_weights_equal_the_originals(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 16)).astype(np.float32)
    bias = rng.standard_normal(16).astype(np.float32)
    shape = np.array([4, 32], np.int64)
    m = model("""
agraph (float[2,4,8] x) => (float[4,32] y) {
  h = MatMul(x, w)
  a = Add(h, bias)
  y = Reshape(a, shp)
}
""")
    m.graph.initializer.extend([numpy_helper.from_array(w, "w"), numpy_helper.from_array(bias, "bias"),
                                numpy_helper.from_array(shape, "shp")])
    path = tmp_path / "sub" / "m.onnx"
    path.parent.mkdir()
    onnx.save_model(m, str(path), save_as_external_data=True, all_tensors_to_one_file=False, size_threshold=0)
    saved = onnx.load_model(str(path), load_external_data=False)
    assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in saved.graph.initializer)
    assert {"w", "bias", "shp"} <= {p.name for p in path.parent.iterdir()}

    out = run(str(path))
    assert sorted(out.weights) == ["bias", "w"]
    np.testing.assert_array_equal(out.weights["w"], w)
    np.testing.assert_array_equal(out.weights["bias"], bias)
    np.testing.assert_array_equal(const(out.structure, "shp"), shape)
    assert out.structure["types"]["y"] == {"shape": [4, 32], "dtype": "float32"}


DYNAMIC = model("""
agraph (float[N,3] x) => (float[N,3] y) <float[3] b = {1.0, 2.0, 3.0}> {
  h = Add(x, b)
  y = Relu(h)
}
""")


def test_input_shape_fixes_a_dynamic_dim():
    s = run(DYNAMIC, input_shape="x:5,3").structure
    assert s["types"]["x"] == {"shape": [5, 3], "dtype": "float32"}
    assert s["types"]["h"]["shape"] == [5, 3]
    assert s["types"]["y"]["shape"] == [5, 3]


def test_dynamic_input_without_input_shape_is_graph_invalid_and_suggests_the_option():
    with pytest.raises(BundleError) as info:
        run(DYNAMIC)
    err = info.value
    assert err.status == "GRAPH_INVALID"
    assert "'x'" in err.message and "[N,3]" in err.message
    assert 'input_shape: "x:1,3"' in err.message
    assert err.where == "g.onnx"


@pytest.mark.parametrize("text", ["x", "x:2,a", "x:2;;y", ":2,3", "x:2,-1", "x:2 3"])
def test_malformed_input_shape_is_option_invalid(text):
    with pytest.raises(BundleError) as info:
        run(DYNAMIC, input_shape=text)
    assert info.value.status == "OPTION_INVALID"


@pytest.mark.parametrize("text", ["x:2,3,4", "nope:2,3"])
def test_input_shape_of_wrong_rank_or_unknown_input_is_option_invalid(text):
    with pytest.raises(BundleError) as info:
        run(DYNAMIC, input_shape=text)
    assert info.value.status == "OPTION_INVALID"


BRANCHES = model("""
agraph (float[2,6] x) => (float[2,6] b, float[2,6] e) {
  [relu_a] a = Relu(x)
  [neg_b] b = Neg(a)
  [exp_e] e = Exp(x)
  k = Constant<value = int64[1] {2}>()
  [topk] v, i = TopK<axis=1>(e, k)
}
""")


def test_out_nodes_by_tensor_name_prunes_unused_nodes():
    s = run(BRANCHES, out_nodes="b").structure
    assert s["outputs"] == ["b"]
    assert [n["name"] for n in s["nodes"]] == ["relu_a", "neg_b"]
    assert s["types"]["b"] == {"shape": [2, 6], "dtype": "float32"}


def test_out_nodes_by_node_and_index_prunes_unused_nodes():
    s = run(BRANCHES, out_nodes="topk:1;neg_b:0").structure
    assert s["outputs"] == ["i", "b"]
    assert [n["name"] for n in s["nodes"]] == ["relu_a", "neg_b", "exp_e", "topk"]
    assert s["types"]["i"] == {"shape": [2, 2], "dtype": "int64"}
    s = run(BRANCHES, out_nodes="topk:0").structure
    assert [n["name"] for n in s["nodes"]] == ["exp_e", "topk"]


@pytest.mark.parametrize("text", ["nothing", "topk:2", "relu_a:7"])
def test_out_nodes_naming_no_output_is_option_invalid(text):
    with pytest.raises(BundleError) as info:
        run(BRANCHES, out_nodes=text)
    assert info.value.status == "OPTION_INVALID"


ATTRS = model("""
agraph (float[1,4,6,6] x) => (float[1,2,6,6] y, float[64,64] f) {
  shp = Constant<value = int64[2] {64, 64}>()
  f = ConstantOfShape<value = float[1] {0.25}>(shp)
  c = Conv<kernel_shape = [3, 3], pads = [1, 1, 1, 1], strides = [1, 1]>(x, w)
  l = LeakyRelu<alpha = 0.125>(c)
  t = Transpose<perm = [0, 1, 3, 2]>(l)
  d = DepthToSpace<blocksize = 2, mode = "CRD">(t)
  r = Reshape(d, back)
  y = Relu(r)
}
""")


def test_structure_round_trips_through_graph_json():
    m = onnx.ModelProto()
    m.CopyFrom(ATTRS)
    rng = np.random.default_rng(1)
    m.graph.initializer.extend([
        numpy_helper.from_array(rng.standard_normal((8, 4, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array([1, 2, 6, 6], np.int64), "back"),
    ])
    s = run(m).structure
    node = {n["op"]: n for n in s["nodes"]}
    assert node["Conv"]["attrs"]["pads"] == [1, 1, 1, 1]
    assert node["LeakyRelu"]["attrs"]["alpha"] == 0.125
    assert node["DepthToSpace"]["attrs"]["mode"] == "CRD"
    assert "tensor" in node["ConstantOfShape"]["attrs"]["value"]  # 4096 elements: too big to fold, kept
    graph = Graph.from_json(s)
    assert graph.lint() == []
    assert isinstance(graph.nodes[0].attrs["value"], np.ndarray)
    assert graph.to_json() == s
    text = json.dumps(s, sort_keys=True)
    assert json.dumps(Graph.from_json(json.loads(text)).to_json(), sort_keys=True) == text


def test_lint_reports_read_before_define_with_a_hint():
    t = TensorType((2,), "float32")
    graph = Graph(name="g", opset=17, inputs=["x"], outputs=["b"],
                  nodes=[Node("neg", "Neg", ["a"], ["b"]), Node("relu", "Relu", ["x"], ["a"])],
                  types={"x": t, "a": t, "b": t})
    problems = graph.lint()
    assert len(problems) == 1
    assert "'neg'" in problems[0] and "reads 'a' before it is defined" in problems[0]
    assert "order nodes topologically" in problems[0]
    graph.nodes.reverse()
    assert graph.lint() == []


def test_lint_reports_missing_output_and_missing_type():
    t = TensorType((2,), "float32")
    graph = Graph(name="g", opset=17, inputs=["x"], outputs=["y", "nowhere"],
                  nodes=[Node("relu", "Relu", ["x"], ["y"])], types={"x": t})
    problems = graph.lint()
    assert any("'nowhere' is never defined" in p for p in problems)
    assert any("'y' has no type" in p and "input_shape" in p for p in problems)


# ---- regressions: bugs found while writing these tests ----


def test_structure_is_named_after_the_graph_param():
    out = run(DYNAMIC, input_shape="x:2,3")  # has a weight 'b'
    assert out.structure["name"] == "g"


def test_scalar_int_constant_keeps_its_rank():
    m = model("""
agraph (float[2,3] x) => (float[3] y) {
  i = Constant<value = int64 {1}>()
  y = Gather<axis=0>(x, i)
}
""")
    s = run(m).structure
    assert s["types"]["i"]["shape"] == []
    assert const(s, "i").shape == ()


def test_two_nodes_with_omitted_optional_outputs_pass_lint():
    m = model("""
agraph (float[5,1,3] x, float[1,16,3] w, float[1,16,4] r, float[1,16,4] r2) => (float[1,1,4] h, float[1,1,4] h2) {
  , h = LSTM<hidden_size = 4>(x, w, r)
  , h2 = LSTM<hidden_size = 4>(x, w, r2)
}
""")
    onnx.checker.check_model(m)
    s = run(m).structure
    assert [n["outputs"] for n in s["nodes"]] == [["", "h"], ["", "h2"]]
