"""Shapes the project vouches for (bundle_pipeline/ir/shapes.py): each case where onnx's shape inference fails or
disagrees with running the graph is pinned here on a small model shaped like the real one it came from, built for
both targets and checked against onnxruntime. Also: a value whose value steers shapes cannot be a variable, and the
STFT kernel's numerics."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper, shape_inference
from oracle import assert_outputs_close, ort_run

import bundle_pipeline as bp
from bundle_pipeline.errors import GraphInvalid
from bundle_pipeline.ir import shapes
from bundle_pipeline.ir.onnx_import import import_model
from bundle_pipeline.kernels import run_kernel
from bundle_pipeline.runtime import load_bundle
from bundle_pipeline.split import convert_to_weight_refreshable_graphs, shape_steering

TARGETS = ["cpu", "npu"]
F = TensorProto.FLOAT


def model(nodes, inputs, outputs, inits, name="g", opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
                              [helper.make_tensor_value_info(o, t, [None] * rank) for o, t, rank in outputs],
                              initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def strict_onnx(m: onnx.ModelProto) -> onnx.ModelProto:
    return shape_inference.infer_shapes(m, check_type=True, strict_mode=True, data_prop=True)


def run_bundle(m: onnx.ModelProto, feeds: dict, target: str, tmp_path) -> dict:
    shape = ";".join(f"{k}:{','.join(map(str, v.shape))}" for k, v in feeds.items())
    buf = bp.bundle_build_model([bp.GraphWithOptions(m, {"input_shape": shape}, role="infer", name="infer")],
                                target=target, cache=tmp_path / "cache")
    bp.bundle_save_model(tmp_path / f"{target}.bundle", buf)
    return load_bundle(tmp_path / f"{target}.bundle").run("infer", feeds)


def stft_model() -> onnx.ModelProto:
    """A mel front-end's first steps (gigaam, nemo, kaldi, whisper in onnx-asr): STFT with no `onesided`
    attribute on a [batch, samples] signal, then the power spectrum."""
    return model([helper.make_node("STFT", ["x", "step", "window"], ["spec"], name="stft"),
                  helper.make_node("ReduceSumSquare", ["spec"], ["power"], axes=[-1], keepdims=0)],
                 [("x", F, [2, 1600])], [("power", F, 3)],
                 {"step": np.array(160, np.int64), "window": np.hanning(257)[:-1].astype(np.float32)})


def test_stft_default_onesided_is_settled_by_running_it():
    """onnx reads an absent `onesided` as 0 ([.., 256, 2]); the spec, onnxruntime and the kernel as 1 (129 bins)."""
    m = stft_model()
    graph, _ = import_model(m.SerializeToString(), "g", {}, "", "g")
    assert graph.types["spec"].shape == (2, 9, 129, 2) and graph.types["power"].shape == (2, 9, 129)
    onnx_dims = [d.dim_value for d in strict_onnx(m).graph.output[0].type.tensor_type.shape.dim]
    if onnx_dims != [2, 9, 129]:  # onnx 1.23 still has the bug: the disagreement is detected by running the node
        assert "node 'stft' (STFT)" in shapes.disagreement(strict_onnx(m))


@pytest.mark.parametrize("target", TARGETS)
def test_stft_model_matches_ort(target, tmp_path):
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 1600)).astype(np.float32)}
    m = stft_model()
    assert_outputs_close(run_bundle(m, feeds, target, tmp_path), ort_run(m, feeds), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("target", TARGETS)
def test_stft_inside_a_branch_gets_the_spec_default(target, tmp_path):
    """A body cannot run on its own: the STFT default onnx misreads is written out there before inference."""
    inner = stft_model().graph
    branch = helper.make_graph(list(inner.node), "branch", [], [helper.make_tensor_value_info("power", F, [2, 9, 129])],
                               initializer=list(inner.initializer))
    other = helper.make_graph([helper.make_node("Constant", [], ["zeros"], value=numpy_helper.from_array(
        np.zeros((2, 9, 129), np.float32)))], "other", [], [helper.make_tensor_value_info("zeros", F, [2, 9, 129])])
    m = model([helper.make_node("If", ["flag"], ["y"], then_branch=branch, else_branch=other)],
              [("x", F, [2, 1600]), ("flag", TensorProto.BOOL, [])], [("y", F, 3)], {})
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 1600)).astype(np.float32), "flag": np.array(True)}
    assert_outputs_close(run_bundle(m, feeds, target, tmp_path), ort_run(m, feeds), rtol=1e-4, atol=1e-4)


def resample_like() -> onnx.ModelProto:
    """onnx-asr's resamplers build their sinc kernel from float constants: onnx propagates the [5] and [3]
    vectors as if they were shapes and fails to broadcast them ("Invalid rank for Add broadcasting")."""
    return model([helper.make_node("Div", ["a", "s"], ["d"]), helper.make_node("Div", ["b", "s"], ["e"]),
                  helper.make_node("Unsqueeze", ["e", "axis"], ["u"]), helper.make_node("Add", ["d", "u"], ["t"]),
                  helper.make_node("Mul", ["x", "t"], ["y"])],
                 [("x", F, [3, 5])], [("y", F, 2)],
                 {"a": np.arange(5, dtype=np.float32), "b": np.arange(3, dtype=np.float32),
                  "s": np.array(2, np.float32), "axis": np.array([1], np.int64)})


def kaldi_like() -> onnx.ModelProto:
    """onnx-asr's kaldi front-end indexes with per-item lengths: onnx propagates `lens` [2] as a shape and fails
    on [2, 1] - [6] ("Invalid rank for Sub broadcasting")."""
    return model([helper.make_node("Unsqueeze", ["lens", "axis"], ["l2"]), helper.make_node("Sub", ["l2", "r"], ["i"]),
                  helper.make_node("Cast", ["i"], ["f"], to=F), helper.make_node("Add", ["x", "f"], ["y"])],
                 [("x", F, [2, 6]), ("lens", TensorProto.INT64, [2])], [("y", F, 2)],
                 {"r": np.arange(6, dtype=np.int64), "axis": np.array([1], np.int64)})


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize(("build", "feeds"), [
    (resample_like, {"x": np.arange(15, dtype=np.float32).reshape(3, 5)}),
    (kaldi_like, {"x": np.ones((2, 6), np.float32), "lens": np.array([7, 3], np.int64)}),
])
def test_where_onnx_inference_fails_the_graph_still_builds(build, feeds, target, tmp_path):
    m = build()
    with pytest.raises(shapes.INFERENCE_ERRORS):  # the onnx bug this pins (onnx 1.23)
        strict_onnx(m)
    assert_outputs_close(run_bundle(m, feeds, target, tmp_path), ort_run(m, feeds))


@pytest.mark.parametrize("target", TARGETS)
def test_a_shape_known_only_at_run_time_stays_dynamic(target, tmp_path):
    """With onnx failing elsewhere in the graph, a Range whose limit is a feed keeps a run-time dim."""
    m = resample_like()
    m.graph.node.append(helper.make_node("Range", ["zero", "n", "one"], ["steps"]))
    m.graph.input.append(helper.make_tensor_value_info("n", TensorProto.INT64, []))
    m.graph.initializer.extend([numpy_helper.from_array(np.array(0, np.int64), "zero"),
                                numpy_helper.from_array(np.array(1, np.int64), "one")])
    m.graph.output.append(helper.make_tensor_value_info("steps", TensorProto.INT64, [None]))
    graph, _ = import_model(m.SerializeToString(), "g", {}, "", "g")
    assert graph.types["steps"].shape == (-1,)
    for n in (4, 9):
        feeds = {"x": np.ones((3, 5), np.float32), "n": np.array(n, np.int64)}
        ours = run_bundle(m, feeds, target, tmp_path / str(n))
        assert_outputs_close(ours, ort_run(m, feeds))
        assert ours["steps"].shape == (n,)


def test_a_value_no_rule_can_size_names_the_node_and_the_value():
    m = model([helper.make_node("Add", ["x", "b"], ["bad"], name="broken_add"),
               helper.make_node("Relu", ["bad"], ["y"])], [("x", F, [3])], [("y", F, 1)],
              {"b": np.ones(4, np.float32)})
    with pytest.raises(GraphInvalid) as err:
        import_model(m.SerializeToString(), "g", {}, "", "model.onnx")
    message = str(err.value)
    assert "'broken_add'" in message and "'bad'" in message and "model.onnx" in message


def test_onnx_result_stands_when_it_agrees(monkeypatch):
    """Parse speed: a graph onnx sizes right (the verified STFT included) never runs the propagation."""
    def no_fallback(*args, **kwargs):
        raise AssertionError("propagate ran although onnx's inference succeeded and agreed")

    monkeypatch.setattr(shapes, "propagate", no_fallback)
    m = stft_model()
    next(n for n in m.graph.node if n.op_type == "STFT").attribute.append(helper.make_attribute("onesided", 1))
    graph, _ = import_model(m.SerializeToString(), "g", {}, "", "g")
    assert graph.types["power"].shape == (2, 9, 129)


def variable_steering_bundle() -> list[bp.GraphWithOptions]:
    """An update graph writes `step`; the infer graph reads it as an STFT frame step."""
    update = model([helper.make_node("Identity", ["step.new"], ["step"])], [("step.new", TensorProto.INT64, [])],
                   [("step", TensorProto.INT64, 0)], {})
    infer = stft_model()
    del infer.graph.initializer[0]  # `step` becomes a graph input: the variable
    infer.graph.input.append(helper.make_tensor_value_info("step", TensorProto.INT64, []))
    return [bp.GraphWithOptions(update, role="update", name="update"),
            bp.GraphWithOptions(infer, {"input_shape": "x:2,1600"}, role="infer", name="infer")]


def test_a_variable_that_steers_shapes_is_refused(tmp_path):
    with pytest.raises(GraphInvalid) as err:
        bp.bundle_build_model(variable_steering_bundle(), cache=tmp_path / "cache")
    message = str(err.value)
    assert "variable 'step' steers shapes in graph infer: it is input 1 of STFT node 'stft'" in message
    assert "keep it a constant" in message


def test_a_variable_reaching_a_range_limit_through_a_cast_is_refused(tmp_path):
    init = model([helper.make_node("Identity", ["n0"], ["n"])], [], [], {"n0": np.array([6.0, 2.0], np.float32)})
    init.graph.output.append(helper.make_tensor_value_info("n", F, [2]))
    infer = model([helper.make_node("ReduceMax", ["n"], ["m"], keepdims=0),
                   helper.make_node("Cast", ["m"], ["limit"], to=TensorProto.INT64),
                   helper.make_node("Range", ["zero", "limit", "one"], ["r"], name="range"),
                   helper.make_node("Cast", ["r"], ["y"], to=F)],
                  [("n", F, [2])], [("y", F, 1)], {"zero": np.array(0, np.int64), "one": np.array(1, np.int64)})
    graphs = [bp.GraphWithOptions(init, role="init", name="init"), bp.GraphWithOptions(infer, role="infer")]
    with pytest.raises(GraphInvalid, match=r"variable 'n' steers shapes in graph .*: it feeds ReduceMax node"):
        bp.bundle_build_model(graphs, cache=tmp_path / "cache")


def test_split_keeps_an_if_condition_constant():
    """A weight that decides which branch runs decides which shapes come out: it stays a constant."""
    branch = helper.make_graph([helper.make_node("Identity", ["x"], ["out"])], "b", [],
                               [helper.make_tensor_value_info("out", F, [2])])
    m = model([helper.make_node("ReduceSum", ["threshold"], ["total"], keepdims=0),
               helper.make_node("Greater", ["total", "zero"], ["cond"]),
               helper.make_node("If", ["cond"], ["z"], then_branch=branch, else_branch=branch),
               helper.make_node("Mul", ["z", "w"], ["y"])],
              [("x", F, [2])], [("y", F, 1)],
              {"threshold": np.ones(2, np.float32), "zero": np.array(0, np.float32), "w": np.ones(2, np.float32)})
    steering = shape_steering(m.graph)
    assert "If node" in steering["cond"] and "threshold" in steering
    assert convert_to_weight_refreshable_graphs(m).variables == ("w",)


def test_stft_kernel_reads_a_two_dimensional_signal_as_real():
    rng = np.random.default_rng(0)
    x, step, window = rng.standard_normal((2, 1000)).astype(np.float32), np.array(100), np.hanning(400)
    two_d = run_kernel("STFT", [x, step, window.astype(np.float32)], {}, 17)[0]
    three_d = run_kernel("STFT", [x[..., None], step, window.astype(np.float32)], {}, 17)[0]
    np.testing.assert_array_equal(two_d, three_d)
    assert two_d.shape == (2, 7, 201, 2)


def test_stft_kernel_is_the_exact_dft_for_any_frame_length():
    """Frames of 400 samples (not a power of two): the kernel stays within float32 rounding of the float64 DFT.
    (onnxruntime 1.32 computes these naively with float32 twiddles and is off by ~5e-4 here: the reason the
    onnx-asr tests allow more error for the models with such frames.)"""
    rng = np.random.default_rng(0)
    x = (0.3 * rng.standard_normal((2, 16400))).astype(np.float32)
    window = np.hanning(401)[:-1].astype(np.float32)
    ours = run_kernel("STFT", [x, np.array(160), window], {}, 17)[0]
    frames = x[:, np.arange(101)[:, None] * 160 + np.arange(400)].astype(np.float64) * window
    exact = np.fft.rfft(frames, axis=-1)
    assert np.max(np.abs(ours[..., 0] + 1j * ours[..., 1] - exact)) < 2e-5 * np.max(np.abs(exact))


def test_a_type_error_is_still_the_models_error():
    """The fallback is for onnx's shape bugs, not for invalid models: an int64 added to a float32 stays an error."""
    m = model([helper.make_node("Add", ["x", "b"], ["y"])], [("x", F, [3])], [("y", F, 1)],
              {"b": np.ones(3, np.int64)})
    with pytest.raises(GraphInvalid, match=r"shape inference failed: .*inconsistent type"):
        import_model(m.SerializeToString(), "g", {}, "", "g")
