"""Sequences and optionals: imported as ``seq(...)`` / ``optional(...)`` values (dynamic, never stored), run by
the sequence kernels and SequenceMap, fed and returned as lists / None; compiled for both targets against
onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest

from bundle_pipeline.backend import BundleBackend
from bundle_pipeline.errors import BundleError
from bundle_pipeline.ir.graph import Graph, TensorType, split_container, tensor_dtype
from bundle_pipeline.runtime.validate import validate_manifest
from bundle_pipeline.stages import parse

TARGETS = ("cpu", "npu")


def model(text: str, opset: int = 18) -> onnx.ModelProto:
    return onnx.parser.parse_model(f'<ir_version: 8, opset_import: ["" : {opset}]>\n{text}')


def structure(m: onnx.ModelProto) -> Graph:
    return Graph.from_json(parse.run(m.SerializeToString(), {"graph": "g", "where": "g.onnx"}).structure)


def same(got: object, want: object) -> None:
    if isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            same(g, w)
        return
    assert isinstance(got, np.ndarray) and got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def check(m: onnx.ModelProto, feeds: dict, target: str, tmp_path) -> list:
    """Compile ``m`` for ``target``, run it, compare every output (tensor or list of tensors) with onnxruntime."""
    rep = BundleBackend.prepare(m, target=target, cache=str(tmp_path / "cache"))
    ours = rep.run([feeds[i.name] for i in m.graph.input])
    expected = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    for got, want in zip(ours, expected, strict=True):
        same(got, want)
    return list(ours)


# --- import ---------------------------------------------------------------------------------------------

TYPED = model("""
agraph (seq(float[N]) s, optional(seq(int64[2])) o, float[2,3] x) => (seq(float[N]) y, optional(float[2,3]) p,
                                                                   bool h) {
  y = SequenceMap(s) <body = b (float[N] e) => (float[N] f) { f = Neg(e) }>
  p = Optional(x)
  h = OptionalHasElement(o)
}
""")


def test_sequence_and_optional_values_import_as_dynamic_container_types():
    graph = structure(TYPED)
    assert graph.types["s"] == TensorType((-1,), "seq(float32)")
    assert graph.types["o"] == TensorType((-1,), "optional(seq(int64))")
    assert graph.types["p"] == TensorType((-1,), "optional(float32)")
    assert graph.types["x"] == TensorType((2, 3), "float32")  # tensors as before
    assert all(graph.types[v].dynamic and graph.types[v].container for v in ("s", "o", "y", "p"))
    assert split_container("optional(seq(int64))") == ("optional", "seq(int64)")
    assert tensor_dtype("optional(seq(int64))") == "int64" and split_container("float32") is None
    (smap,) = [n for n in graph.nodes if n.op_type == "SequenceMap"]
    assert smap.bodies()["body"].types["e"] == TensorType((-1,), "float32")  # the body sees one element
    assert graph.inputs == ["s", "o", "x"] and not graph.lint()
    assert Graph.from_json(graph.to_json()) == graph


def test_optional_type_attribute_becomes_a_dtype_string():
    graph = structure(model("""
agraph (bool c) => (bool h) {
  e = Optional<type = seq(float[5])>()
  h = OptionalHasElement(e)
}
"""))
    (opt,) = [n for n in graph.nodes if n.op_type == "Optional"]
    assert opt.attrs["type"] == "seq(float32)"
    assert graph.types["e"].dtype == "optional(seq(float32))"


def test_lint_refuses_a_stored_sequence():
    graph = structure(TYPED)
    graph.weights.append("s")
    graph.inputs.remove("s")
    assert any("'s' is a seq(float32)" in e for e in graph.lint())


def test_maps_are_refused_with_a_clear_error():
    m = model("""
agraph (map(int64, float) m, float[2] x) => (float[2] y) {
  y = Identity(x)
}
""")
    with pytest.raises(BundleError, match="'m' is a map, not a tensor, sequence or optional"):
        structure(m)


# --- build and run --------------------------------------------------------------------------------------

# SplitToSequence, Insert/At/Erase/Length, ConcatFromSequence, a Loop that grows a sequence, SequenceMap over
# it, and a MatMul (native on npu) feeding and reading sequences. Values around SequenceConstruct are short
# lived, so the arena reuses their bytes: sequence elements must not alias them.
PIPELINE = model("""
agraph (float[4,6] x, float[6,6] w, int64 n) => (seq(float[4,2]) parts, float[4,6] cat, int64 len,
                                                float[4,6] y, seq(float[4,?]) grown, seq(float[?]) sums,
                                                seq(float[4,6]) pair) {
  xw = MatMul(x, w)
  two = Constant<value = int64 {2}>()
  parts0 = SplitToSequence<axis = 1>(xw, two)
  zero = Constant<value = int64 {0}>()
  first = SequenceAt(parts0, zero)
  doubled = Add(first, first)
  parts1 = SequenceInsert(parts0, doubled, zero)
  parts = SequenceErase(parts1)
  len = SequenceLength(parts)
  cat = ConcatFromSequence<axis = 1>(parts)
  a = Relu(xw)
  b = Sigmoid(x)
  pair = SequenceConstruct(a, b)
  c = Mul(x, x)
  d = Add(c, x)
  y = MatMul(d, w)
  empty = SequenceEmpty<dtype = 1>()
  t = Constant<value = bool {1}>()
  grown = Loop(n, t, empty) <body = lb (int64 i, bool ci, seq(float[4,?]) si) => (bool co, seq(float[4,?]) so) {
    co = Identity(ci)
    one = Constant<value = int64 {1}>()
    i1 = Add(i, one)
    ax = Constant<value = int64[1] {0}>()
    z0 = Constant<value = int64[1] {0}>()
    end = Unsqueeze(i1, ax)
    one1 = Constant<value = int64[1] {1}>()
    piece = Slice(x, z0, end, one1)
    so = SequenceInsert(si, piece)
  }>
  sums = SequenceMap(grown) <body = sb (float[4,?] g) => (float[?] r) {
    ones = Constant<value = int64[1] {1}>()
    r = ReduceSum<keepdims = 0>(g, ones)
  }>
}
""")


@pytest.mark.parametrize("target", TARGETS)
def test_sequence_model_matches_onnxruntime(target, tmp_path):
    rs = np.random.RandomState(0)
    feeds = {"x": rs.randn(4, 6).astype(np.float32), "w": rs.randn(6, 6).astype(np.float32),
             "n": np.array(3, dtype=np.int64)}
    parts, cat, length, _, grown, sums, pair = check(PIPELINE, feeds, target, tmp_path)
    assert int(length) == 3 and len(parts) == 3 and cat.shape == (4, 6)
    assert [g.shape for g in grown] == [(4, 1), (4, 2), (4, 3)] and len(sums) == 3
    np.testing.assert_allclose(pair[1], 1 / (1 + np.exp(-feeds["x"])), rtol=1e-5)


SEQ_FEEDS = model("""
agraph (seq(float[?]) s, float[3] x) => (float[?] total, seq(float[?]) out, int64 len) {
  len = SequenceLength(s)
  zero = Constant<value = int64 {0}>()
  out = SequenceInsert(s, x, zero)
  total = ConcatFromSequence<axis = 0>(out)
}
""")


@pytest.mark.parametrize("target", TARGETS)
def test_a_sequence_feed_is_a_list_of_arrays_of_any_shapes(target, tmp_path):
    s = [np.arange(n, dtype=np.float32) for n in (1, 4, 2)]
    feeds = {"s": s, "x": np.array([7, 8, 9], dtype=np.float32)}
    total, out, length = check(SEQ_FEEDS, feeds, target, tmp_path)
    assert total.shape == (10,) and len(out) == 4 and int(length) == 3
    same(s, [np.arange(n, dtype=np.float32) for n in (1, 4, 2)])  # the caller's list is not modified


def test_sequence_feeds_are_checked(tmp_path):
    rep = BundleBackend.prepare(SEQ_FEEDS, cache=str(tmp_path / "cache"))
    x = np.zeros(3, dtype=np.float32)
    with pytest.raises(BundleError, match="holds a int64 tensor, expected a seq\\(float32\\)"):
        rep.run([[np.arange(2)], x])
    with pytest.raises(BundleError, match="expected a seq\\(float32\\): a list of arrays"):
        rep.run([np.zeros(2, dtype=np.float32), x])


OPTIONALS = model("""
agraph (optional(float[2]) o, bool c) => (bool has, float[2] v, optional(seq(float[2])) p) {
  has = OptionalHasElement(o)
  v = If(has) <
    then_branch = tb () => (float[2] a) { a = OptionalGetElement(o) },
    else_branch = eb () => (float[2] b) { b = Constant<value = float[2] {-1.0, -1.0}>() }
  >
  p = If(c) <
    then_branch = tp () => (optional(seq(float[2])) q) { sq = SequenceConstruct(v, v)
                                                           q = Optional(sq) },
    else_branch = ep () => (optional(seq(float[2])) r) { r = Optional<type = seq(float[2])>() }
  >
}
""")


@pytest.mark.parametrize("target", TARGETS)
def test_optional_feeds_and_outputs_are_none_when_empty(target, tmp_path):
    rep = BundleBackend.prepare(OPTIONALS, target=target, cache=str(tmp_path / "cache"))
    x = np.array([1.5, 2.5], dtype=np.float32)
    has, v, p = rep.run([x, np.array(True)])
    assert bool(has) and np.array_equal(v, x) and len(p) == 2 and np.array_equal(p[1], x)
    has, v, p = rep.run([None, np.array(False)])
    assert not bool(has) and np.array_equal(v, [-1, -1]) and p is None


def test_manifest_accepts_container_feeds_and_refuses_bad_ones(tmp_path):
    rep = BundleBackend.prepare(SEQ_FEEDS, cache=str(tmp_path / "cache"))
    manifest = rep.bundle.manifest
    validate_manifest(manifest, "b")
    feeds = manifest["graphs"][0]["program"]["feeds"]
    (seq_feed,) = [f for f in feeds if f["name"] == "s"]
    assert seq_feed["dtype"] == "seq(float32)" and seq_feed["shape"] == [-1]
    for bad in ("seq(pickle)", "seq(float32", "list(float32)"):
        seq_feed["dtype"] = bad
        with pytest.raises(BundleError, match=r"unsupported dtype|bad shape"):
            validate_manifest(manifest, "b")
    seq_feed["dtype"], seq_feed["shape"] = "seq(float32)", [3]
    with pytest.raises(BundleError, match="bad shape"):
        validate_manifest(manifest, "b")


SYMBOLIC = model("""
agraph (seq(float[N]) s, float[N] t) => (seq(float[N]) y) {
  y = SequenceMap(s, t) <body = b (float[N] e, float[N] u) => (float[N] f) { f = Add(e, u) }>
}
""", opset=17)


@pytest.mark.parametrize("target", TARGETS)
def test_backend_binds_symbolic_tensor_dims_at_the_first_run(target, tmp_path):
    """Feeds are static: the backend compiles a model with a symbolic tensor input once per input shapes."""
    rep = BundleBackend.prepare(SYMBOLIC, target=target, cache=str(tmp_path / "cache"))
    assert rep.bundle is None and rep.symbolic == ["t"]
    for n in (3, 5, 3):
        feeds = {"s": [np.full(n, k, dtype=np.float32) for k in range(4)], "t": np.arange(n, dtype=np.float32)}
        (y,) = check(SYMBOLIC, feeds, target, tmp_path)
        assert len(y) == 4 and y[0].shape == (n,)
        (again,) = rep.run([feeds["s"], feeds["t"]])
        same(again, y)
        assert rep.bundle.manifest["graphs"][0]["program"]["feeds"][1]["shape"] == [n]
    assert len(rep._by_shapes) == 2
