"""Control flow through parse: bodies become closed IR graphs (explicit captures, hoisted weights),
If on a known condition is inlined, and values whose shape depends on data are marked dynamic."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest

from bundle_pipeline.errors import BundleError
from bundle_pipeline.ir.graph import Graph
from bundle_pipeline.stages import parse


def model(text: str, opset: int = 17) -> onnx.ModelProto:
    return onnx.parser.parse_model(f'<ir_version: 8, opset_import: ["" : {opset}]>\n{text}')


def structure(m: onnx.ModelProto, **params) -> tuple[Graph, dict]:
    out = parse.run(m.SerializeToString(), {"graph": "g", "where": "g.onnx", **params})
    return Graph.from_json(out.structure), out.weights


# An If on a fed condition: each branch reads an outer value (x) and holds a float weight of its own.
IF_ON_FEED = model("""
agraph (bool c, float[4] x) => (float[4] y) {
  y = If(c) <
    then_branch = then_g () => (float[4] t) {
      w_then = Constant<value = float[4] {1.0, 2.0, 3.0, 4.0}>()
      t = Mul(x, w_then)
    },
    else_branch = else_g () => (float[4] e) {
      w_else = Constant<value = float[4] {-1.0, -2.0, -3.0, -4.0}>()
      e = Add(x, w_else)
    }
  >
}
""")


def test_if_bodies_are_closed_with_captures_as_explicit_inputs():
    graph, _ = structure(IF_ON_FEED)
    (node,) = graph.nodes
    assert node.op_type == "If"
    assert node.inputs == ["c", "w_else", "w_then", "x"]  # cond, then every captured value, sorted
    assert node.attrs["captures"] == 3
    for attr in ("then_branch", "else_branch"):
        body = node.bodies()[attr]
        assert body.inputs == ["w_else", "w_then", "x"]
        assert body.weights == [] and body.lint() == []
    assert graph.lint() == []


def test_body_weights_are_hoisted_into_the_top_weight_table():
    graph, weights = structure(IF_ON_FEED)
    assert sorted(graph.weights) == ["w_else", "w_then"]
    np.testing.assert_array_equal(weights["w_then"], [1, 2, 3, 4])
    np.testing.assert_array_equal(weights["w_else"], [-1, -2, -3, -4])


def test_structure_with_bodies_round_trips_through_json():
    graph, _ = structure(IF_ON_FEED)
    again = Graph.from_json(graph.to_json())
    assert again.to_json() == graph.to_json()
    assert again.nodes[0].bodies()["then_branch"].nodes[0].op_type == "Mul"


def test_if_on_a_static_shape_condition_is_inlined():
    m = model("""
    agraph (float[2,3] x) => (float[6] y) {
      s = Shape(x)
      n = Size(s)
      two = Constant<value = int64 {2}>()
      c = Equal(n, two)
      y = If(c) <
        then_branch = then_g () => (float[6] t) {
          shp = Constant<value = int64[1] {6}>()
          t = Reshape(x, shp)
        },
        else_branch = else_g () => (float[6] e) {
          e = Identity(x)
        }
      >
    }
    """)
    graph, _ = structure(m)
    assert [n.op_type for n in graph.nodes] == ["Reshape", "Identity"]  # the then branch, then y = Identity(t)
    assert graph.types["y"].shape == (6,)


def test_loop_body_values_sized_per_iteration_are_dynamic():
    m = model("""
    agraph (int64 n, bool c, float[1] y) => (float[1] r, float[5,1] s) {
      r, s = Loop(n, c, y) <
        body = loop_body (int64 i, bool ci, float[1] yi) => (bool co, float[1] yo, float[1] so) {
          co = Identity(ci)
          x = Constant<value = float[5] {1.0, 2.0, 3.0, 4.0, 5.0}>()
          one = Constant<value = int64 {1}>()
          e = Add(i, one)
          a = Unsqueeze<axes = [0]>(i)
          b = Unsqueeze<axes = [0]>(e)
          sl = Slice(x, a, b)
          yo = Add(yi, sl)
          so = Identity(yo)
        }
      >
    }
    """, opset=11)
    graph, weights = structure(m)
    (loop,) = graph.nodes
    body = loop.bodies()["body"]
    assert loop.inputs == ["n", "c", "y", "x"] and body.inputs == ["i", "ci", "yi", "x"]
    assert body.types["sl"].dynamic and not body.types["yo"].dynamic
    assert "x" in weights


def test_a_data_dependent_output_is_dynamic_not_an_error():
    m = model("""
    agraph (float[6] x) => (int64[1,?] y) {
      y = NonZero(x)
    }
    """)
    graph, _ = structure(m)
    assert graph.types["y"].dynamic and graph.types["y"].dtype == "int64"


def test_a_dynamic_feed_still_asks_for_input_shape():
    m = model("""
    agraph (float[N] x) => (int64[1,?] y) {
      y = NonZero(x)
    }
    """)
    with pytest.raises(BundleError, match="input_shape"):
        structure(m)


def test_out_nodes_keeps_nodes_only_a_body_reads():
    m = model("""
    agraph (bool c, float[4] x) => (float[4] y, float[4] z) {
      h = Neg(x)
      z = Abs(x)
      y = If(c) <
        then_branch = then_g () => (float[4] t) { t = Relu(h) },
        else_branch = else_g () => (float[4] e) { e = Identity(x) }
      >
    }
    """)
    graph, _ = structure(m, out_nodes="y")
    assert [n.op_type for n in graph.nodes] == ["Neg", "If"]  # Neg feeds the then branch; Abs is dead
