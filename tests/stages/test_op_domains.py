"""Op domains end to end: ai.onnx.ml / ai.onnx.preview.training nodes keep their domain and opset through the IR,
codegen and the runtime; unknown domains are refused at parse; default-domain structures serialise as before."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest
from onnx.reference import ReferenceEvaluator

from bundle_pipeline.backend import BundleBackend
from bundle_pipeline.errors import BundleError
from bundle_pipeline.ir.graph import Graph, Node
from bundle_pipeline.kernels import KernelError, run_kernel, supports_op
from bundle_pipeline.runtime.validate import validate_manifest
from bundle_pipeline.stages import codegen, parse


def model(text: str, opsets: str = '"" : 17, "ai.onnx.ml" : 4') -> onnx.ModelProto:
    return onnx.parser.parse_model(f"<ir_version: 8, opset_import: [{opsets}]>\n{text}")


def structure(m: onnx.ModelProto) -> dict:
    return parse.run(m.SerializeToString(), {"graph": "g", "where": "g.onnx"}).structure


ML = model("""
agraph (float[2,3] x) => (float[2,3] y) {
  r = Relu(x)
  y = ai.onnx.ml.Binarizer<threshold = 0.5>(r)
}
""")


def test_an_ml_node_keeps_its_domain_and_opset_through_the_ir_json():
    s = structure(ML)
    relu, binarizer = s["nodes"]
    assert "domain" not in relu and binarizer["domain"] == "ai.onnx.ml"
    assert s["domain_opsets"] == {"ai.onnx.ml": 4} and s["opset"] == 17
    graph = Graph.from_json(json.loads(json.dumps(s)))
    assert graph.nodes[1].domain == "ai.onnx.ml" and graph.domain_opsets == {"ai.onnx.ml": 4}
    assert graph.to_json() == s
    program = codegen.run(s, {}, {}, "infer", {})
    assert program["opsets"] == {"ai.onnx.ml": 4}
    assert [st.get("domain") for st in program["steps"]] == [None, "ai.onnx.ml"]


def test_structures_without_domains_serialise_exactly_as_before():
    node = Node("n", "Relu", ["x"], ["y"])
    assert node.to_json() == {"name": "n", "op": "Relu", "inputs": ["x"], "outputs": ["y"], "attrs": {}}
    plain = model("agraph (float[2] x) => (float[2] y) { y = Relu(x) }")  # imports ai.onnx.ml but never uses it
    s = structure(plain)
    assert set(s) == {"ir_version", "name", "opset", "inputs", "outputs", "nodes", "types", "weights", "consts",
                      "formats", "native"}
    assert all("domain" not in n for n in s["nodes"])
    assert "opsets" not in codegen.run(s, {}, {}, "infer", {})


@pytest.mark.parametrize(("op", "domain", "named"), [
    ("com.acme.Frobnicate", "com.acme", "a domain the kernel library does not support"),
    ("ai.onnx.ml.Scaler", "ai.onnx.ml", "which the kernel library does not support in that domain"),
])
def test_an_unsupported_domain_op_is_a_one_line_error_naming_node_and_domain(op, domain, named):
    m = model(f"agraph (float[2] x) => (float[2] y) {{ y = {op}(x) }}",
              opsets='"" : 17, "ai.onnx.ml" : 4, "com.acme" : 1')
    m.graph.node[0].name = "odd_one"
    with pytest.raises(BundleError) as err:
        structure(m)
    assert err.value.status == "UNSUPPORTED_OP"
    message = str(err.value)
    assert "\n" not in message and "'odd_one' (" in message and repr(domain) in message and named in message


def test_ops_of_other_domains_are_not_folded():
    m = model("""
    agraph (int64[3] x) => (int64[3] y) {
      c = Constant<value = int64[3] {0, 1, 2}>()
      b = ai.onnx.ml.Binarizer<threshold = 0.5>(c)
      y = Add(x, b)
    }
    """)
    assert [n["op"] for n in structure(m)["nodes"]] == ["Binarizer", "Add"]


PIPELINE = model("""
agraph (float[3,4] x, string[3] s) => (float[3,2] t, int64[3] code, float[3,2] b, int64[3] code32) {
  idx = Constant<value = int64[2] {1, 3}>()
  f = ai.onnx.ml.ArrayFeatureExtractor(x, idx)
  b = ai.onnx.ml.Binarizer<threshold = 0.25>(f)
  code = ai.onnx.ml.LabelEncoder<keys_strings = ["a", "b", "c"], values_int64s = [10, 20, 30], default_int64 = 7>(s)
  code32 = ai.onnx.ml.LabelEncoder<keys_strings = ["c", "a"], values_tensor = int64[2] {5, 6},
                                   default_tensor = int64[1] {-9}>(s)
  t = ai.onnx.ml.TreeEnsemble<n_targets = 2, aggregate_function = 1, post_transform = 0, tree_roots = [0, 2],
      nodes_featureids = [0, 1, 2], nodes_modes = uint8[3] {0, 3, 6}, nodes_splits = float[3] {0.5, -0.2, 0.0},
      nodes_truenodeids = [0, 2, 1], nodes_trueleafs = [1, 1, 1], nodes_falsenodeids = [1, 3, 2],
      nodes_falseleafs = [0, 1, 1], membership_values = float[3] {1.0, 2.0, nan},
      leaf_targetids = [0, 1, 1, 0], leaf_weights = float[4] {1.5, -2.0, 0.25, 4.0}>(x)
}
""", opsets='"" : 17, "ai.onnx.ml" : 5')
X = np.array([[0.1, 0.9, 1.0, -1.0], [0.7, -0.5, 2.0, 0.3], [np.nan, 0.0, 5.0, 0.2]], np.float32)
S = np.array(["a", "z", "c"], dtype=object)


def ort_outputs(m: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def assert_same(got, want) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        g = np.asarray(g)
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("target", ["cpu", "npu"])
def test_an_ml_model_builds_runs_and_matches_onnxruntime(target):
    rep = BundleBackend.prepare(PIPELINE, target=target)
    assert_same(rep.run([X, S]), ort_outputs(PIPELINE, {"x": X, "s": S}))


def tree_model(aggregate: int, post: int) -> onnx.ModelProto:
    return model(f"""
    agraph (float[4,2] x) => (float[4,3] y) {{
      y = ai.onnx.ml.TreeEnsemble<n_targets = 3, aggregate_function = {aggregate}, post_transform = {post},
          tree_roots = [0, 1], nodes_featureids = [0, 1], nodes_modes = uint8[2] {{1, 2}},
          nodes_splits = float[2] {{0.0, 0.5}}, nodes_truenodeids = [0, 2], nodes_trueleafs = [1, 1],
          nodes_falsenodeids = [1, 3], nodes_falseleafs = [1, 1], nodes_missing_value_tracks_true = [1, 0],
          leaf_targetids = [0, 1, 0, 2], leaf_weights = float[4] {{0.3, 0.6, 0.2, 0.9}}>(x)
    }}""", opsets='"" : 17, "ai.onnx.ml" : 5')


TREE_X = np.array([[-1, 0.2], [1, 0.7], [np.nan, 0.5], [0.5, np.nan]], np.float32)


@pytest.mark.parametrize(("aggregate", "post"), [(0, 0), (1, 0), (2, 0), (3, 0), (1, 3), (0, 4)])
def test_tree_ensemble_aggregates_and_post_transforms_match_onnxruntime(aggregate, post):
    """MIN/MAX leave a target no leaf reached at 0, as onnxruntime; PROBIT: onnxruntime approximates erfinv."""
    m = tree_model(aggregate, post)
    got = BundleBackend.prepare(m, target="cpu").run([TREE_X])
    np.testing.assert_allclose(got[0], ort_outputs(m, {"x": TREE_X})[0], rtol=1e-3 if post == 4 else 1e-5)


@pytest.mark.parametrize("post", [1, 2])
def test_tree_ensemble_softmax_and_logistic_follow_the_spec(post):
    """The spec's codes are SOFTMAX = 1, LOGISTIC = 2; onnxruntime 1.32 applies them swapped (its internal enum
    order; see microsoft/onnxruntime#26596 on TreeEnsemble's post_transform), so the reference here is the
    spec's formula applied to onnxruntime's untransformed scores."""
    raw = ort_outputs(tree_model(1, 0), {"x": TREE_X})[0].astype(np.float64)
    e = np.exp(raw - raw.max(axis=1, keepdims=True))
    want = e / e.sum(axis=1, keepdims=True) if post == 1 else 1 / (1 + np.exp(-raw))
    got = BundleBackend.prepare(tree_model(1, post), target="cpu").run([TREE_X])[0]
    np.testing.assert_allclose(got, want.astype(np.float32), rtol=1e-6)


def test_the_domain_opset_reaches_the_kernel_label_encoder_v1_and_v2_differ():
    """ml opset 1 maps strings to their index in classes_strings; opset 2 maps keys to values."""
    v1 = model("""agraph (string[3] s) => (int64[3] y) {
      y = ai.onnx.ml.LabelEncoder<classes_strings = ["x", "a", "c"], default_int64 = -5>(s) }""",
               opsets='"" : 17, "ai.onnx.ml" : 1')
    v2 = model("""agraph (string[3] s) => (int64[3] y) {
      y = ai.onnx.ml.LabelEncoder<keys_strings = ["a", "c"], values_int64s = [40, 50]>(s) }""",
               opsets='"" : 17, "ai.onnx.ml" : 2')
    for m, want in ((v1, [1, -5, 2]), (v2, [40, -1, 50])):
        got = BundleBackend.prepare(m, target="cpu").run([S])[0]
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got, ort_outputs(m, {"s": S})[0])


def test_float_label_encoder_nan_keys_by_opset():
    """ml opset 4: any NaN key matches any NaN; opset 2: keys compare bit for bit."""
    x = np.array([1.5, np.nan, 2.0], np.float32)
    attrs = {"keys_floats": [1.5, float("nan")], "values_int64s": [3, 4]}
    np.testing.assert_array_equal(run_kernel("LabelEncoder", [x], attrs, 4, domain="ai.onnx.ml")[0], [3, 4, -1])
    other_nan = np.array([np.float32(np.nan)]).view(np.uint32) | np.uint32(1)
    np.testing.assert_array_equal(run_kernel("LabelEncoder", [other_nan.view(np.float32)], attrs, 2,
                                             domain="ai.onnx.ml")[0], [-1])


TRAINING = model("""
agraph (float r, int64 t, float[3] x1, float[2] x2, float[3] g1, float[2] g2, float[3] v1, float[2] v2,
        float[3] h1, float[2] h2) => (float[3] x1n, float[2] x2n, float[3] v1n, float[2] v2n, float[3] h1n,
        float[2] h2n) {
  x1n, x2n, v1n, v2n, h1n, h2n = ai.onnx.preview.training.Adam<alpha = 0.9, beta = 0.99, epsilon = 0.001,
      norm_coefficient = 0.01, norm_coefficient_post = 0.02>(r, t, x1, x2, g1, g2, v1, v2, h1, h2)
}
""", opsets='"" : 17, "ai.onnx.preview.training" : 1')


@pytest.mark.parametrize("target", ["cpu", "npu"])
@pytest.mark.parametrize("step", [0, 3])
def test_a_training_optimizer_builds_runs_and_matches_the_reference(target, step):
    rng = np.random.default_rng(step)
    feeds = {"r": np.float32(0.1), "t": np.int64(step)}
    for name, n in (("x1", 3), ("x2", 2), ("g1", 3), ("g2", 2), ("v1", 3), ("v2", 2), ("h1", 3), ("h2", 2)):
        feeds[name] = rng.random(n, dtype=np.float32)
    want = ReferenceEvaluator(TRAINING).run(None, feeds)
    got = BundleBackend.prepare(TRAINING, target=target).run([np.asarray(v) for v in feeds.values()])
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_kernels_are_registered_per_domain():
    assert supports_op("TreeEnsemble", "ai.onnx.ml") and not supports_op("TreeEnsemble")
    assert supports_op("Relu", "ai.onnx") and not supports_op("Relu", "ai.onnx.ml")
    with pytest.raises(KernelError, match=r"of domain 'ai\.onnx\.ml'"):
        run_kernel("Relu", [np.zeros(1)], {}, 4, domain="ai.onnx.ml")


def test_a_bundle_step_in_an_unknown_domain_is_corrupt():
    rep = BundleBackend.prepare(ML, target="cpu")
    manifest = json.loads(json.dumps(rep.bundle.manifest))
    program = manifest["graphs"][0]["program"]
    program["steps"][1]["domain"] = "com.acme"
    with pytest.raises(BundleError, match=r"domain 'com\.acme'"):
        validate_manifest(manifest, "b")
    del program["opsets"]
    program["steps"][1]["domain"] = "ai.onnx.ml"
    with pytest.raises(BundleError, match="no version"):
        validate_manifest(manifest, "b")
