"""If / Loop / Scan and run-time-sized values, compiled and run on both targets, against onnxruntime."""

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

TARGETS = ("cpu", "npu")


def model(text: str, opset: int = 17) -> onnx.ModelProto:
    return onnx.parser.parse_model(f'<ir_version: 8, opset_import: ["" : {opset}]>\n{text}')


def check(m: onnx.ModelProto, feeds: dict[str, np.ndarray], target: str, tmp_path) -> list[np.ndarray]:
    """Compile ``m`` for ``target``, run it, and compare every output with onnxruntime."""
    rep = BundleBackend.prepare(m, target=target, cache=str(tmp_path / "cache"))
    ours = rep.run([feeds[i.name] for i in m.graph.input])
    expected = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    for got, want in zip(ours, expected, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    return ours


# A weight read both by a MatMul outside (native FRACTAL_NZ on npu) and inside a branch (standard layout).
_W = ", ".join(f"{v:.4f}" for v in np.random.RandomState(0).randn(32 * 32) * 0.1)
IF_SHARED_WEIGHT = model("""
agraph (bool c, float[16,32] x) => (float[16,32] y, float[16,32] z) {
  w = Constant<value = float[32,32] {W}>()
  z = MatMul(x, w)
  y = If(c) <
    then_branch = then_g () => (float[16,32] t) {
      t = MatMul(z, w)
    },
    else_branch = else_g () => (float[16,32] e) {
      e = Sub(z, x)
    }
  >
}
""".replace("{W}", "{" + _W + "}"))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("cond", [True, False])
def test_if_on_a_fed_condition_runs_the_taken_branch(target, cond, tmp_path):
    x = np.random.RandomState(1).randn(16, 32).astype(np.float32)
    check(IF_SHARED_WEIGHT, {"c": np.array(cond), "x": x}, target, tmp_path)


LOOP_WITH_SCAN = model("""
agraph (int64 n, bool c, float[3] y) => (float[3] r, float[?,3] s) {
  k = Constant<value = float[3] {0.5, -1.0, 2.0}>()
  r, s = Loop(n, c, y) <
    body = loop_body (int64 i, bool ci, float[3] yi) => (bool co, float[3] yo, float[3] so) {
      f = Cast<to = 1>(i)
      step = Mul(k, f)
      yo = Add(yi, step)
      lim = Constant<value = int64 {3}>()
      co = Less(i, lim)
      so = Mul(yo, yo)
    }
  >
}
""", opset=13)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("trips", [0, 2, 10])
def test_loop_carries_values_stops_on_its_condition_and_stacks_scan_outputs(target, trips, tmp_path):
    y = np.array([1.0, 2.0, 3.0], np.float32)
    _, s = check(LOOP_WITH_SCAN, {"n": np.array(trips, np.int64), "c": np.array(True), "y": y}, target, tmp_path)
    assert s.shape == (min(trips, 4), 3)  # the body's condition stops it after i == 3


SCAN_REVERSED = model("""
agraph (float[2] h, float[4,2] x, float[2,4] u) => (float[2] hn, float[2,4] ys, float[4,2] zs) {
  hn, ys, zs = Scan(h, x, u) <
    num_scan_inputs = 2, scan_input_axes = [0, 1], scan_input_directions = [1, 0],
    scan_output_axes = [1, 0], scan_output_directions = [0, 1],
    body = scan_body (float[2] hi, float[2] xi, float[2] ui) => (float[2] ho, float[2] yo, float[2] zo) {
      ho = Add(hi, xi)
      yo = Mul(ho, ui)
      zo = Sub(ho, ui)
    }
  >
}
""", opset=16)


@pytest.mark.parametrize("target", TARGETS)
def test_scan_honours_axes_and_directions(target, tmp_path):
    rng = np.random.RandomState(2)
    feeds = {"h": rng.randn(2).astype(np.float32), "x": rng.randn(4, 2).astype(np.float32),
             "u": rng.randn(2, 4).astype(np.float32)}
    check(SCAN_REVERSED, feeds, target, tmp_path)


NESTED = model("""
agraph (int64 n, float[2] y, bool c) => (float[2] r) {
  r = Loop(n, , y) <
    body = loop_body (int64 i, bool ci, float[2] yi) => (bool co, float[2] yo) {
      co = Identity(ci)
      yo = If(c) <
        then_branch = then_g () => (float[2] t) { t = Add(yi, y) },
        else_branch = else_g () => (float[2] e) { e = Mul(yi, y) }
      >
    }
  >
}
""", opset=13)


@pytest.mark.parametrize("cond", [True, False])
def test_an_if_nested_in_a_loop_reads_values_from_two_scopes_out(cond, tmp_path):
    feeds = {"n": np.array(3, np.int64), "y": np.array([1.5, -0.5], np.float32), "c": np.array(cond)}
    check(NESTED, feeds, "cpu", tmp_path)


DATA_DEPENDENT = model("""
agraph (float[3,4] x) => (float[?] y, int64[?,2] idx) {
  nz = NonZero(x)
  idx = Transpose(nz)
  y = GatherND(x, idx)
}
""")


@pytest.mark.parametrize("target", TARGETS)
def test_values_sized_at_run_time_change_size_between_runs(target, tmp_path):
    rep = BundleBackend.prepare(DATA_DEPENDENT, target=target, cache=str(tmp_path / "cache"))
    session = ort.InferenceSession(DATA_DEPENDENT.SerializeToString(), providers=["CPUExecutionProvider"])
    for density in (0.2, 0.9):
        rng = np.random.RandomState(int(density * 10))
        x = (rng.rand(3, 4) < density).astype(np.float32) * rng.randn(3, 4).astype(np.float32)
        ours, want = rep.run([x]), session.run(None, {"x": x})
        for got, exp in zip(ours, want, strict=True):
            np.testing.assert_array_equal(got, exp)


def test_an_error_inside_a_body_names_the_body_node(tmp_path):
    m = model("""
    agraph (bool c, float[4] x, int64[1] s) => (float[?] y) {
      y = If(c) <
        then_branch = then_g () => (float[?] t) { t = Reshape(x, s) },
        else_branch = else_g () => (float[?] e) { e = Identity(x) }
      >
    }
    """)
    rep = BundleBackend.prepare(m, target="cpu", cache=str(tmp_path / "cache"))
    np.testing.assert_array_equal(rep.run([np.array(False), np.ones(4, np.float32), np.array([3])])[0], np.ones(4))
    with pytest.raises(BundleError, match=r"while executing node .*then_branch.*\(Reshape\)"):
        rep.run([np.array(True), np.ones(4, np.float32), np.array([3])])


def _if_program(tmp_path) -> dict:
    """The manifest of a real build with one If step."""
    from bundle_pipeline.api import GraphWithOptions, bundle_build_model, bundle_save_model
    from bundle_pipeline.runtime import load_bundle

    buffer = bundle_build_model([GraphWithOptions(IF_SHARED_WEIGHT, {}, role="infer", name="g")], target="cpu",
                                cache=str(tmp_path / "cache"))
    bundle_save_model(str(tmp_path / "b.bundle.zip"), buffer)
    return load_bundle(str(tmp_path / "b.bundle.zip")).manifest


@pytest.mark.parametrize("corrupt, message", [
    (lambda step: step["bodies"].pop("else_branch"), "needs bodies else_branch, then_branch"),
    (lambda step: step["bodies"]["then_branch"]["steps"][0].update(op="Exec"), "uses op 'Exec'"),
    (lambda step: step["bodies"]["then_branch"]["steps"][0].update(inputs=["nowhere", "w"]), "undefined value"),
    (lambda step: step["bodies"]["then_branch"].update(arena_bytes=-1), "bad arena_bytes"),
])
def test_a_malformed_body_is_bundle_corrupt(corrupt, message, tmp_path):
    manifest = copy.deepcopy(_if_program(tmp_path))
    step = next(s for s in manifest["graphs"][0]["program"]["steps"] if s["op"] == "If")
    corrupt(step)
    with pytest.raises(BundleError, match=message):
        validate_manifest(manifest, "b.bundle")


FLEX_WITH_CAPTURE = onnx.parser.parse_model("""<ir_version: 10, opset_import: ["" : 23, "ai.onnx.preview" : 1]>
agraph (float[1,2,3,4] q, float[1,2,5,4] k, float[1,2,5,4] v, float[5] bias) => (float[1,2,3,4] y) {
  y = ai.onnx.preview.FlexAttention(q, k, v) <
    score_mod = smod (float[1,2,3,5] s) => (float[1,2,3,5] so) { so = Add(s, bias) },
    prob_mod = pmod (float[1,2,3,5] p) => (float[1,2,3,5] po) {
      two = Constant<value = float {2.0}>()
      po = Mul(p, two)
    }
  >
}
""")


@pytest.mark.parametrize("target", TARGETS)
def test_a_kernels_graph_attributes_run_as_bodies_reading_outer_values(target, tmp_path):
    """FlexAttention's score_mod reads the graph input ``bias`` from the outer scope: it becomes a captured input."""
    rng = np.random.RandomState(5)
    feeds = {"q": rng.randn(1, 2, 3, 4).astype(np.float32), "k": rng.randn(1, 2, 5, 4).astype(np.float32),
             "v": rng.randn(1, 2, 5, 4).astype(np.float32), "bias": rng.randn(5).astype(np.float32)}
    rep = BundleBackend.prepare(FLEX_WITH_CAPTURE, target=target, cache=str(tmp_path / "cache"))
    (node,) = [s for s in rep.bundle.manifest["graphs"][0]["program"]["steps"] if s["op"] == "FlexAttention"]
    # q, k, v, then the captures: the outer input, and prob_mod's own constant hoisted to the weight table
    assert sorted(node["bodies"]) == ["prob_mod", "score_mod"] and node["inputs"][3:] == ["bias", "two"]
    got = rep.run([feeds[k] for k in ("q", "k", "v", "bias")])[0]
    # onnx's reference evaluator cannot give a graph attribute outer values; the spec's formula by hand:
    scores = feeds["q"] @ np.swapaxes(feeds["k"], -1, -2) / np.sqrt(4.0) + feeds["bias"]
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs = 2.0 * probs / probs.sum(-1, keepdims=True)
    np.testing.assert_allclose(got, probs @ feeds["v"], rtol=1e-5, atol=1e-6)
