"""Three-role bundles built from generated graphs match ONNX Runtime after init and after an update."""

from __future__ import annotations

from pathlib import Path

import models
import numpy as np
import onnx
import pytest
from oracle import assert_outputs_close, ort_run

from bundle_pipeline.pipeline import build
from bundle_pipeline.runtime import load_bundle
from bundle_pipeline.spec import load_spec

BUILDERS = {"mlp": models.mlp, "cnn": models.cnn, "attention": models.attention, "shared": models.shared}


def build_spec(built: models.BuiltBundle, cache: Path, **overrides):
    spec = load_spec(built.spec, cache=str(cache), **overrides)
    return spec, build(spec)


@pytest.mark.parametrize("builder", sorted(BUILDERS))
def test_bundle_matches_ort_after_init_and_after_update(builder, tmp_path, tmp_cache):
    built = BUILDERS[builder](tmp_path / builder)
    spec, _ = build_spec(built, tmp_cache)
    bundle = load_bundle(spec.output)
    rng = np.random.default_rng(7)
    for name, graph in built.infer.items():
        feeds = built.feeds(rng, name)
        assert_outputs_close(bundle.run(name, feeds), ort_run(graph.path, feeds))
    new = built.new_weights(rng)
    bundle.update({f"{k}.new": v for k, v in new.items()})
    for name, graph in built.infer.items():
        feeds = built.feeds(rng, name)
        mine = {k: v for k, v in new.items() if k in graph.variables}
        assert_outputs_close(bundle.run(name, feeds), ort_run(graph.path, feeds, weights=mine))
    for var, value in new.items():
        np.testing.assert_array_equal(bundle.variable(var), value)


def test_second_run_executes_no_task(tmp_path, tmp_cache):
    built = models.mlp(tmp_path / "mlp")
    spec, first = build_spec(built, tmp_cache)
    assert {t.status for t in first.tasks} == {"ran"}
    second = build(spec)
    assert [t.status for t in second.tasks] == ["cached"] * len(first.tasks)
    assert second.digest == first.digest


def test_same_inputs_give_byte_identical_bundles(tmp_path):
    built = models.cnn(tmp_path / "cnn")
    digests = set()
    for i, out in enumerate(["a/x.bundle", "b/y.bundle", "c/z.zip"]):
        _spec, report = build_spec(built, tmp_path / f"cache{i}", output=str(tmp_path / out))
        digests.add(report.digest)
    assert len(digests) == 1
    files = [sorted(p.relative_to(tmp_path / d).as_posix() for p in (tmp_path / d).rglob("*") if p.is_file())
             for d in ("a/x.bundle", "b/y.bundle")]
    assert files[0] == files[1]
    for rel in files[0]:
        assert (tmp_path / "a/x.bundle" / rel).read_bytes() == (tmp_path / "b/y.bundle" / rel).read_bytes()


def test_zip_and_directory_bundles_run_the_same(tmp_path, tmp_cache):
    built = models.attention(tmp_path / "att")
    spec_dir, _ = build_spec(built, tmp_cache)
    spec_zip, _ = build_spec(built, tmp_cache, output=str(tmp_path / "att.zip"))
    feeds = built.feeds(np.random.default_rng(1))
    a = load_bundle(spec_dir.output).run("infer", feeds)
    b = load_bundle(spec_zip.output).run("infer", feeds)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def _weight_bytes(model: onnx.ModelProto) -> dict[str, bytes]:
    return {t.name: onnx.numpy_helper.to_array(t).tobytes() for t in model.graph.initializer}


def test_shared_variables_are_stored_once(tmp_path, tmp_cache):
    """Three graphs (init, update, infer) sharing all weights: the bundle is <= 1.05x the unique weight bytes."""
    rng = np.random.default_rng(0)
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4, 512])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4, 512])
    weights = [onnx.numpy_helper.from_array(rng.standard_normal((512, 512)).astype(np.float32), f"w{i}")
               for i in range(3)]
    nodes = [onnx.helper.make_node("MatMul", ["x", "w0"], ["h0"]), onnx.helper.make_node("Relu", ["h0"], ["r0"]),
             onnx.helper.make_node("MatMul", ["r0", "w1"], ["h1"]), onnx.helper.make_node("Relu", ["h1"], ["r1"]),
             onnx.helper.make_node("MatMul", ["r1", "w2"], ["y"])]
    infer = onnx.helper.make_model(onnx.helper.make_graph(nodes, "infer", [x], [y], weights),
                                   opset_imports=[onnx.helper.make_opsetid("", 17)])
    built = models.write_bundle(tmp_path / "big", "big", {"infer": infer})
    spec, _ = build_spec(built, tmp_cache)
    unique = sum(len(b) for b in set(_weight_bytes(infer).values()))
    on_disk = sum(p.stat().st_size for p in Path(spec.output).rglob("*") if p.is_file())
    assert on_disk <= 1.05 * unique, (on_disk, unique)


def test_large_conv_and_matmul_are_tiled_and_match_ort(tmp_path, tmp_cache):
    """im2col of this conv (4096 positions x 576) and this matmul exceed the cpu workspace budget."""
    rng = np.random.default_rng(5)
    w = onnx.numpy_helper.from_array(rng.standard_normal((64, 64, 3, 3)).astype(np.float32) * 0.05, "conv.w")
    m = onnx.numpy_helper.from_array(rng.standard_normal((64, 1024)).astype(np.float32) * 0.05, "fc.w")
    nodes = [onnx.helper.make_node("Conv", ["x", "conv.w"], ["c"], pads=[1, 1, 1, 1]),
             onnx.helper.make_node("Reshape", ["c", "shape"], ["r"]),
             onnx.helper.make_node("Transpose", ["r"], ["t"], perm=[1, 0]),
             onnx.helper.make_node("MatMul", ["t", "fc.w"], ["y"])]
    shape = onnx.numpy_helper.from_array(np.array([64, 4096], np.int64), "shape")
    graph = onnx.helper.make_graph(
        nodes, "big", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 64, 64, 64])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4096, 1024])], [w, m, shape])
    infer = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    built = models.write_bundle(tmp_path / "tiled", "tiled", {"infer": infer})
    spec, _ = build_spec(built, tmp_cache)
    bundle = load_bundle(spec.output)
    steps = {s["op"]: s for s in bundle.manifest["graphs"][-1]["program"]["steps"]}
    assert steps["Conv"]["tiling"]["workspace_bytes"] <= 4 << 20 and steps["Conv"]["tiling"]["tile_hw"] < 4096
    assert steps["MatMul"]["tiling"]["workspace_bytes"] <= 4 << 20
    feeds = built.feeds(rng)
    assert_outputs_close(bundle.run("infer", feeds), ort_run(built.graph().path, feeds))


def test_lstm_with_omitted_output_and_update(tmp_path, tmp_cache):
    """An LSTM whose Y output is omitted (only Y_h used), its weights refreshed by the update graph."""
    rng = np.random.default_rng(11)
    hidden, inp, seq, batch = 8, 5, 6, 2
    tensors = {"W": (1, 4 * hidden, inp), "R": (1, 4 * hidden, hidden), "B": (1, 8 * hidden)}
    inits = [onnx.numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) * 0.3, n)
             for n, s in tensors.items()]
    nodes = [onnx.helper.make_node("LSTM", ["x", "W", "R", "B"], ["", "h"], hidden_size=hidden),
             onnx.helper.make_node("Squeeze", ["h", "axes"], ["y"])]
    inits.append(onnx.numpy_helper.from_array(np.array([0], np.int64), "axes"))
    graph = onnx.helper.make_graph(
        nodes, "lstm", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [seq, batch, inp])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [batch, hidden])], inits)
    infer = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 14)])
    built = models.write_bundle(tmp_path / "lstm", "lstm", {"infer": infer}, var_names=list(tensors))
    spec, _ = build_spec(built, tmp_cache)
    bundle = load_bundle(spec.output)
    feeds = built.feeds(rng)
    assert_outputs_close(bundle.run("infer", feeds), ort_run(built.graph().path, feeds))
    new = built.new_weights(rng)
    bundle.update({f"{k}.new": v for k, v in new.items()})
    assert_outputs_close(bundle.run("infer", feeds), ort_run(built.graph().path, feeds, weights=new))
