"""Names across scopes and bodies: sibling bodies reusing value names, colliding node labels, body arity in
the validator, body initializers in split. Each was a defect found in review; these keep it fixed."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest

from bundle_pipeline.backend import BundleBackend
from bundle_pipeline.errors import BundleError
from bundle_pipeline.runtime.validate import validate_manifest


def _model(text: str, opset: int = 17) -> onnx.ModelProto:
    return onnx.parser.parse_model(f'<ir_version: 8, opset_import: ["" : {opset}]>\n{text}')


def _ours(m: onnx.ModelProto, feeds: dict, tmp_path) -> list:
    rep = BundleBackend.prepare(m, target="cpu", cache=str(tmp_path / "cache"))
    return list(rep.run([feeds[i.name] for i in m.graph.input]))


def _ort(m: onnx.ModelProto, feeds: dict) -> list:
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


# Sibling bodies (then/else, or two different nodes' bodies) may reuse a value name: ONNX only forbids
# shadowing an *outer* name. The checker and onnxruntime accept these models.
SIBLING_NAMES = _model("""
agraph (bool c, float[2] a, float[3] b) => (int64[1] y) {
  y = If(c) <
    then_branch = g1 () => (int64[1] s) { t = Identity(a)  s = Shape(t) },
    else_branch = g2 () => (int64[1] s2) { t = Identity(b)  s2 = Shape(t) }
  >
}
""")


def test_shape_folding_in_a_branch_uses_its_own_values_type_not_a_siblings(tmp_path):
    onnx.checker.check_model(SIBLING_NAMES, full_check=True)
    feeds = {"c": np.array(True), "a": np.ones(2, np.float32), "b": np.ones(3, np.float32)}
    want = _ort(SIBLING_NAMES, feeds)
    got = _ours(SIBLING_NAMES, feeds, tmp_path)
    np.testing.assert_array_equal(got[0], want[0])  # was [3]: the sibling's t folded into Shape


TWO_STATIC_IFS = _model("""
agraph (float[2] a) => (float[2] y, float[2] z) {
  one = Constant<value = int64 {1}>()
  c = Equal(one, one)
  y = If(c) <
    then_branch = g1 () => (float[2] s) { t = Add(a, a)  s = Identity(t) },
    else_branch = g2 () => (float[2] s2) { s2 = Identity(a) }
  >
  z = If(c) <
    then_branch = g3 () => (float[2] s3) { t = Mul(a, a)  s3 = Identity(t) },
    else_branch = g4 () => (float[2] s4) { s4 = Identity(a) }
  >
}
""")


def test_inlining_two_known_ifs_whose_branches_reuse_a_value_name(tmp_path):
    onnx.checker.check_model(TWO_STATIC_IFS, full_check=True)
    feeds = {"a": np.array([3, 4], np.float32)}
    want = _ort(TWO_STATIC_IFS, feeds)
    got = _ours(TWO_STATIC_IFS, feeds, tmp_path)  # was GraphInvalid: t defined twice
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_control_steps_whose_labels_collide_run_their_own_bodies(tmp_path):
    """An unnamed If at index 0 is labelled "If_0"; a second If really named "If_0" is a different node
    (onnxruntime accepts the model): each must run its own bodies."""
    m = _model("""
    agraph (bool c, float[2] a) => (float[2] y, float[2] z) {
      y = If(c) <
        then_branch = g1 () => (float[2] s) { s = Add(a, a) },
        else_branch = g2 () => (float[2] s2) { s2 = Identity(a) }
      >
      z = If(c) <
        then_branch = g3 () => (float[2] s3) { s3 = Mul(a, a) },
        else_branch = g4 () => (float[2] s4) { s4 = Neg(a) }
      >
    }
    """)
    m.graph.node[0].name = ""
    m.graph.node[1].name = "If_0"
    feeds = {"c": np.array(True), "a": np.array([3, 4], np.float32)}
    want = _ort(m, feeds)
    got = _ours(m, feeds, tmp_path)  # was [9, 16]: the other If's bodies
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_validator_refuses_a_branch_that_returns_fewer_values_than_the_if_step(tmp_path):
    from bundle_pipeline.api import GraphWithOptions, bundle_build_model, bundle_save_model
    from bundle_pipeline.runtime import load_bundle

    m = _model("""
    agraph (bool c, float[2] a) => (float[2] y) {
      y = If(c) <
        then_branch = g1 () => (float[2] s) { s = Add(a, a) },
        else_branch = g2 () => (float[2] s2) { s2 = Neg(a) }
      >
    }
    """)
    buffer = bundle_build_model([GraphWithOptions(m, {}, role="infer", name="g")], target="cpu",
                                cache=str(tmp_path / "cache"))
    bundle_save_model(str(tmp_path / "b.bundle.zip"), buffer)
    manifest = copy.deepcopy(load_bundle(str(tmp_path / "b.bundle.zip")).manifest)
    step = next(s for s in manifest["graphs"][0]["program"]["steps"] if s["op"] == "If")
    step["bodies"]["then_branch"]["outputs"] = []  # the If step still promises 'y': nothing will produce it
    with pytest.raises(BundleError, match="then_branch takes 1 inputs and returns 0 outputs"):
        validate_manifest(manifest, "b.bundle")


def test_split_makes_a_body_initializer_a_variable_the_body_actually_reads():
    """A body initializer made a variable leaves the body: else it would shadow the infer graph's input and
    the refreshed variable would never be read."""
    from bundle_pipeline import convert_to_weight_refreshable_graphs

    m = _model("""
    agraph (bool c, float[2] a) => (float[2] y) {
      y = If(c) <
        then_branch = g1 () => (float[2] s) <float[2] w = {1.0, 2.0}> { s = Add(a, w) },
        else_branch = g2 () => (float[2] s2) { s2 = Identity(a) }
      >
    }
    """)
    infer = convert_to_weight_refreshable_graphs(m, ["w"]).infer
    assert "w" in [i.name for i in infer.graph.input]
    feeds = {"c": np.array(True), "a": np.zeros(2, np.float32), "w": np.array([10, 20], np.float32)}
    got = _ort(infer, feeds)[0]  # was [1, 2]: the body's own initializer
    np.testing.assert_array_equal(got, [10, 20])


def test_a_name_two_sibling_bodies_define_cannot_be_one_variable():
    from bundle_pipeline import convert_to_weight_refreshable_graphs

    m = _model("""
    agraph (bool c, float[2] a) => (float[2] y) {
      y = If(c) <
        then_branch = g1 () => (float[2] s) { w = Constant<value = float[2] {1.0, 2.0}>()  s = Add(a, w) },
        else_branch = g2 () => (float[2] s2) { w = Constant<value = float[2] {5.0, 6.0}>()  s2 = Mul(a, w) }
      >
    }
    """)
    with pytest.raises(BundleError, match="defined in more than one scope"):
        convert_to_weight_refreshable_graphs(m, ["w"])
    feeds = {"c": np.array(False), "a": np.ones(2, np.float32)}
    np.testing.assert_array_equal(_ort(m, feeds)[0], [5, 6])


def test_sibling_bodies_with_same_named_weights_build_and_keep_both(tmp_path):
    m = _model("""
    agraph (bool c, float[2] a) => (float[2] y) {
      y = If(c) <
        then_branch = g1 () => (float[2] s) { w = Constant<value = float[2] {1.0, 2.0}>()  s = Add(a, w) },
        else_branch = g2 () => (float[2] s2) { w = Constant<value = float[2] {5.0, 6.0}>()  s2 = Mul(a, w) }
      >
    }
    """)
    for cond in (True, False):
        feeds = {"c": np.array(cond), "a": np.array([3, 4], np.float32)}
        np.testing.assert_array_equal(_ours(m, feeds, tmp_path)[0], _ort(m, feeds)[0])
