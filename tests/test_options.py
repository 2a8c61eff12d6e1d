"""Build options of infer graphs: each accepted option changes the output as documented; CANN spellings are
aliases; unknown keys/values list the accepted ones; option edits re-run codegen + pack only; executor memory."""

from __future__ import annotations

import json
import math
import tracemalloc

import models
import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper
from oracle import assert_outputs_close, ort_run
from typer.testing import CliRunner

import bundle_pipeline as bp
from bundle_pipeline.cli import app
from bundle_pipeline.errors import BundleCorrupt
from bundle_pipeline.ir.graph import Graph, Node, TensorType
from bundle_pipeline.kernels import run_kernel
from bundle_pipeline.options import ALIASES, OPTIONS, options_for, validate_options
from bundle_pipeline.pipeline import build
from bundle_pipeline.runtime import approx, load_bundle
from bundle_pipeline.runtime.executor import Executor, VariableStore
from bundle_pipeline.spec import load_spec
from bundle_pipeline.stages import codegen


def ran(report) -> set[str]:
    return {t.id.split("/", 1)[1] for t in report.tasks if t.status == "ran"}


def build_infer(model: onnx.ModelProto, options: dict, tmp_path, tag: str):
    """A one-graph bundle (weights stay constants) built with these options, loaded."""
    buf = bp.bundle_build_model([bp.GraphWithOptions(model, options, role="infer", name="infer")],
                                cache=tmp_path / "cache")
    path = tmp_path / f"{tag}.zip"
    bp.bundle_save_model(path, buf)
    return load_bundle(path)


def program(bundle, graph: str = "infer") -> dict:
    return next(g for g in bundle.manifest["graphs"] if g["name"] == graph)["program"]


def model_of(built: models.BuiltBundle) -> onnx.ModelProto:
    return onnx.load(built.graph().path)


# ---------------------------------------------------------------- validation


def test_cann_spellings_are_aliases_of_the_snake_case_keys():
    given = {"ge.exec.disableReuseMemory": "1", "ge.exec.precision_mode": "force_fp16", "input_shape": "x:1,2",
             "input_format": "NHWC", "ge.outputNodeName": "y", "ge.opSelectImplmode": "high_performance"}
    assert validate_options(given, "g") == {
        "exec_disable_reused_memory": "1", "precision_mode": "force_fp16", "input_shape": "x:1,2",
        "input_format": "NHWC", "out_nodes": "y", "op_select_implmode": "high_performance"}
    assert set(ALIASES.values()) <= set(OPTIONS)
    with pytest.raises(bp.BundleError) as err:
        validate_options({"exec_disable_reused_memory": "1", "ge.exec.disableReuseMemory": "0"}, "g")
    assert err.value.status == "OPTION_INVALID" and "given twice" in str(err.value)


@pytest.mark.parametrize(("options", "text"), [
    ({"fast_math": "1"}, "accepted: exec_disable_reused_memory, input_format, input_shape, op_select_implmode, "
                         "out_nodes, precision_mode (CANN spellings ge.exec.disableReuseMemory"),
    ({"input_format": "NC1HWC0"}, "use one of: NCHW, NHWC, ND"),
    ({"op_select_implmode": "fast"}, "use one of: high_precision, high_performance"),
    ({"precision_mode": "allow_mix_precision"}, "use allow_fp32_to_fp16"),
    ({"ge.exec.precision_mode": "force_fp32"}, "must_keep_origin_dtype"),
    ({"input_shape": "x:1,a"}, "malformed"),
    ({"input_shape": "x:1;x:2"}, "twice"),
])
def test_unknown_keys_and_values_list_the_accepted_ones(options, text):
    with pytest.raises(bp.BundleError) as err:
        validate_options(options, "graph infer")
    assert err.value.status == "OPTION_INVALID" and text in str(err.value), str(err.value)


def test_parse_reads_shape_options_codegen_reads_the_rest():
    full = validate_options({}, "g")
    assert set(options_for("parse", full)) == {"input_shape", "out_nodes"}
    assert set(options_for("codegen", full)) == {"exec_disable_reused_memory", "precision_mode", "input_format",
                                                 "op_select_implmode"}


def test_codegen_option_edits_rerun_codegen_and_pack_only_and_aliases_change_nothing(tmp_path):
    built = models.cnn(tmp_path / "cnn")
    spec = load_spec(built.spec, cache=str(tmp_path / "cache"))
    first = build(spec)

    def rebuild(options: dict):
        text = yaml.safe_load(built.spec.read_text())
        next(g for g in text["graphs"] if g["name"] == "infer")["options"] = options
        built.spec.write_text(yaml.safe_dump(text))
        return build(load_spec(built.spec, cache=spec.cache))

    assert ran(rebuild({"op_select_implmode": "high_performance"})) == {"codegen:infer", "pack"}
    assert ran(rebuild({"input_format": "NHWC"})) == {"codegen:infer", "pack"}
    assert ran(rebuild({"exec_disable_reused_memory": "1"})) == {"codegen:infer", "pack"}
    same = rebuild({"ge.exec.disableReuseMemory": "1"})  # the CANN spelling of the same option: all cached
    assert ran(same) == set()
    back = rebuild({"input_format": "NCHW"})  # the default, spelled out: the first build's digest again
    assert back.digest == first.digest


# ---------------------------------------------------------------- each option changes the output


def test_exec_disable_reused_memory_grows_the_arena_and_keeps_the_numbers(tmp_path):
    infer = model_of(models.cnn(tmp_path / "cnn"))
    reuse = build_infer(infer, {"exec_disable_reused_memory": "0"}, tmp_path, "reuse")
    separate = build_infer(infer, {"ge.exec.disableReuseMemory": "1"}, tmp_path, "separate")
    on, off = program(reuse), program(separate)
    assert on["reuse_memory"] and not off["reuse_memory"]
    assert on["arena_bytes"] < off["arena_bytes"]
    assert on["arena_bytes_by_reuse"] == off["arena_bytes_by_reuse"] == {"on": on["arena_bytes"],
                                                                           "off": off["arena_bytes"]}
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)}
    a, b = reuse.run("infer", feeds), separate.run("infer", feeds)
    np.testing.assert_array_equal(a["y"], b["y"])
    human = CliRunner().invoke(app, ["inspect", str(tmp_path / "reuse.zip")], env={"COLUMNS": "200"})
    assert "arena (reuse on)" in human.output and "arena (reuse off)" in human.output
    for nbytes in (on["arena_bytes"], off["arena_bytes"]):
        assert f"{nbytes / 1024:.1f} KiB" in human.output
    info = json.loads(CliRunner().invoke(app, ["inspect", str(tmp_path / "separate.zip"), "--json"]).stdout)
    assert info["graphs"][0]["arena_bytes_by_reuse"]["on"] == on["arena_bytes"]


def test_precision_mode_force_fp16_rounds_cube_inputs(tmp_path):
    infer = model_of(models.cnn(tmp_path / "cnn"))
    feeds = {"x": (np.random.default_rng(1).standard_normal((2, 3, 16, 16)) + 1 / 3).astype(np.float32)}
    exact = build_infer(infer, {}, tmp_path, "exact").run("infer", feeds)
    half = build_infer(infer, {"ge.exec.precision_mode": "force_fp16"}, tmp_path, "half")
    assert {s["op"] for s in program(half)["steps"] if s.get("precision") == "fp16"} == {"Conv", "Gemm"}
    got = half.run("infer", feeds)
    reference = ort_run(infer, feeds)
    assert_outputs_close(exact, reference)
    assert not np.allclose(got["y"], reference["y"], rtol=1e-6, atol=0)  # fp16 rounding shows
    assert_outputs_close(got, reference, rtol=2e-2, atol=2e-2)


def _dynamic_mlp() -> onnx.ModelProto:
    rng = np.random.default_rng(2)
    w = numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
                              "dyn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_input_shape_fixes_dynamic_dims(tmp_path):
    model = _dynamic_mlp()
    with pytest.raises(bp.BundleError) as err:
        build_infer(model, {}, tmp_path, "none")
    assert err.value.status == "GRAPH_INVALID" and "input_shape" in str(err.value)
    for batch in (3, 5):
        bundle = build_infer(model, {"input_shape": f"x:{batch},16"}, tmp_path, f"b{batch}")
        assert program(bundle)["feeds"][0]["shape"] == [batch, 16]
        x = np.random.default_rng(batch).standard_normal((batch, 16)).astype(np.float32)
        assert_outputs_close(bundle.run("infer", {"x": x}), ort_run(model, {"x": x}))


def test_input_format_nhwc_takes_channels_last_feeds(tmp_path):
    infer = model_of(models.cnn(tmp_path / "cnn"))
    nhwc = build_infer(infer, {"input_format": "NHWC"}, tmp_path, "nhwc")
    p = program(nhwc)
    assert p["feeds"] == [{"name": "x", "shape": [2, 16, 16, 3], "dtype": "float32", "layout": "NHWC"}]
    first = p["steps"][0]
    assert first["op"] == "Transpose" and first["inputs"] == ["x"] and first["attrs"]["perm"] == [0, 3, 1, 2]
    assert all("x" not in s["inputs"] for s in p["steps"][1:])  # the graph reads the transposed value
    x = np.random.default_rng(4).standard_normal((2, 3, 16, 16)).astype(np.float32)
    expected = ort_run(infer, {"x": x})
    assert_outputs_close(nhwc.run("infer", {"x": np.ascontiguousarray(x.transpose(0, 2, 3, 1))}), expected)
    with pytest.raises(bp.BundleError) as err:
        nhwc.run("infer", {"x": x})  # an NCHW feed no longer fits
    assert "expected float32[2, 16, 16, 3]" in str(err.value)
    for standard in ("NCHW", "ND"):
        same = build_infer(infer, {"input_format": standard}, tmp_path, standard)
        assert program(same)["feeds"][0]["shape"] == [2, 3, 16, 16]
        assert_outputs_close(same.run("infer", {"x": x}), expected)


def test_input_format_nhwc_without_a_4d_input_is_an_option_error(tmp_path):
    with pytest.raises(bp.BundleError) as err:
        build_infer(model_of(models.mlp(tmp_path / "mlp")), {"input_format": "NHWC"}, tmp_path, "mlp")
    assert err.value.status == "OPTION_INVALID" and "x[4, 16]" in str(err.value)


def _two_outputs() -> onnx.ModelProto:
    nodes = [helper.make_node("Relu", ["x"], ["h"], name="relu"),
             helper.make_node("Neg", ["h"], ["y1"], name="neg"),
             helper.make_node("Exp", ["x"], ["y2"], name="exp")]
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [3, 4]) for n in ("y1", "y2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_out_nodes_prunes_to_the_named_outputs(tmp_path):
    model = _two_outputs()
    x = np.random.default_rng(5).standard_normal((3, 4)).astype(np.float32)
    full = build_infer(model, {}, tmp_path, "full").run("infer", {"x": x})
    assert set(full) == {"y1", "y2"}
    by_tensor = build_infer(model, {"out_nodes": "y2"}, tmp_path, "y2")
    assert [o["name"] for o in program(by_tensor)["outputs"]] == ["y2"]
    assert [s["op"] for s in program(by_tensor)["steps"]] == ["Exp"]  # Relu and Neg pruned
    np.testing.assert_array_equal(by_tensor.run("infer", {"x": x})["y2"], full["y2"])
    by_node = build_infer(model, {"ge.outputNodeName": "relu:0;neg:0"}, tmp_path, "relu")
    got = by_node.run("infer", {"x": x})
    assert set(got) == {"h", "y1"}
    np.testing.assert_array_equal(got["h"], np.maximum(x, 0))
    with pytest.raises(bp.BundleError) as err:
        build_infer(model, {"out_nodes": "nothing:0"}, tmp_path, "bad")
    assert err.value.status == "OPTION_INVALID" and "nothing:0" in str(err.value)


# ---------------------------------------------------------------- op_select_implmode


def _exact(op: str, x: np.ndarray) -> np.ndarray:
    xd = x.astype(np.float64)
    erf = np.vectorize(math.erf)
    return {"Exp": lambda: np.exp(xd), "Tanh": lambda: np.tanh(xd), "Sigmoid": lambda: 1 / (1 + np.exp(-xd)),
            "Erf": lambda: erf(xd), "Gelu": lambda: 0.5 * xd * (1 + erf(xd / math.sqrt(2)))}[op]()


@pytest.mark.parametrize("op", sorted(approx.BOUNDS))
def test_high_performance_kernels_stay_within_their_documented_bound(op):
    grid = np.linspace(-30, 30, 120_001 if op in ("Erf", "Gelu") else 600_001)
    ends = np.linspace(-103, 88.7, 20_001) if op == "Exp" else np.array([])
    x = np.concatenate([grid, ends, [0.0, -0.0, 1e-30, -1e-30]]).astype(np.float32)
    got = approx.run(op, [x], {})[0]
    assert got.dtype == np.float32
    exact = _exact(op, x)
    kind, bound = approx.BOUNDS[op]
    err = np.abs(got.astype(np.float64) - exact)
    if kind == "relative":
        err = err / np.maximum(exact, np.finfo(np.float32).tiny)
        err = err[(exact > np.finfo(np.float32).tiny) & (exact < np.finfo(np.float32).max)]
    assert err.max() <= bound, (op, err.max())
    assert err.max() > bound / 1000  # an approximation, not the exact kernel under another name
    library = run_kernel(op, [x], {}, 20)[0].astype(np.float64)
    assert not np.array_equal(library, got)


def test_high_performance_edge_values():
    special = np.array([np.inf, -np.inf, np.nan, 100.0, -200.0], np.float32)
    np.testing.assert_array_equal(approx.exp(special), [np.inf, 0, np.nan, np.inf, 0])
    np.testing.assert_array_equal(approx.tanh(special), [1, -1, np.nan, 1, -1])
    np.testing.assert_array_equal(approx.sigmoid(special[[0, 1, 3, 4]]), [1, 0, 1, 0])
    np.testing.assert_array_equal(approx.erf(special[[0, 1]]), [1, -1])
    tanh_form = np.linspace(-8, 8, 10_001).astype(np.float32)
    reference = run_kernel("Gelu", [tanh_form], {"approximate": "tanh"}, 20)[0].astype(np.float64)
    assert np.abs(approx.run("Gelu", [tanh_form], {"approximate": "tanh"})[0] - reference).max() \
        <= approx.GELU_TANH_FORM_BOUND
    half = approx.run("Exp", [np.array([1.0, 2.0], np.float16)], {})[0]
    assert half.dtype == np.float16 and np.allclose(half, np.exp([1.0, 2.0]), rtol=1e-3)


@pytest.mark.parametrize("opset", [17, 20])
def test_op_select_implmode_high_performance_changes_the_attention_block(opset, tmp_path):
    """opset 17 writes Gelu with Erf, opset 20 uses the Gelu op: both get the approximate kernel."""
    infer = model_of(models.attention(tmp_path / "att", opset=opset))
    x = np.random.default_rng(6).standard_normal((2, 8, 16)).astype(np.float32)
    exact = build_infer(infer, {"op_select_implmode": "high_precision"}, tmp_path, "exact")
    fast = build_infer(infer, {"ge.opSelectImplmode": "high_performance"}, tmp_path, "fast")
    marked = {s["op"] for s in program(fast)["steps"] if s.get("impl") == "high_performance"}
    assert marked == ({"Gelu"} if opset >= 20 else {"Erf"})
    assert not any("impl" in s for s in program(exact)["steps"])
    reference = ort_run(infer, {"x": x})
    assert_outputs_close(exact.run("infer", {"x": x}), reference)
    got = fast.run("infer", {"x": x})
    assert not np.allclose(got["y"], reference["y"], rtol=1e-6, atol=1e-7)
    # the Gelu error (<= 5e-4 absolute) passes through one 32x16 MatMul of weights ~N(0, 1/32)
    assert_outputs_close(got, reference, rtol=0, atol=5e-3)


def test_unknown_impl_in_a_program_is_rejected_at_load():
    graph = Graph("g", 17, ["x"], ["y"], [Node("n", "Relu", ["x"], ["y"])],
                  {"x": TensorType((4,), "float32"), "y": TensorType((4,), "float32")})
    p = codegen.run(graph.to_json(), {}, {}, "infer", {})
    p["steps"][0]["impl"] = "high_performance"  # Relu has no approximate kernel
    with pytest.raises(BundleCorrupt):
        Executor(p, {}, VariableStore([]))


# ---------------------------------------------------------------- runtime memory


def _elementwise_chain(n: int) -> Graph:
    t = TensorType((n,), "float32")
    nodes = [Node("a", "Mul", ["x", "x"], ["v0"]), Node("b", "Add", ["v0", "x"], ["v1"]),
             Node("c", "Relu", ["v1"], ["v2"]), Node("d", "Sub", ["v2", "x"], ["v3"]),
             Node("e", "Div", ["v3", "s"], ["v4"]), Node("f", "Exp", ["v4"], ["v5"]),
             Node("g", "ReduceMax", ["v5"], ["y"], {"keepdims": 1})]
    types = {name: t for name in ("x", "v0", "v1", "v2", "v3", "v4", "v5")}
    types["s"] = types["y"] = TensorType((1,), "float32")
    return Graph("chain", 17, ["x", "s"], ["y"], nodes, types)


def _peak(executor: Executor, feeds: dict) -> tuple[dict, int]:
    executor.run(feeds)  # warm up
    tracemalloc.start()
    try:
        out = executor.run(feeds)
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_elementwise_steps_write_into_the_arena_without_temporaries(monkeypatch):
    n = 1 << 18  # 1 MiB per float32 value
    p = codegen.run(_elementwise_chain(n).to_json(), {}, {}, "infer", {})
    feeds = {"x": np.random.default_rng(7).standard_normal(n).astype(np.float32), "s": np.array([3.0], np.float32)}
    in_place, peak_in_place = _peak(Executor(p, {}, VariableStore([])), feeds)
    monkeypatch.setattr(Executor, "write_in_place", False)
    copied, peak_copied = _peak(Executor(p, {}, VariableStore([])), feeds)
    np.testing.assert_array_equal(in_place["y"], copied["y"])
    # copy-in: each step's 1 MiB result is a temporary before it lands in the arena; in place: none
    assert peak_in_place < 0.1 * 4 * n and peak_copied >= 4 * n, (peak_in_place, peak_copied)


def test_memory_benchmark_reports_the_plan_and_the_run(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import memory

    out = tmp_path / "memory.json"
    assert memory.main(["--only", "cnn", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    on, off = (next(r for r in rows if r["reuse"] is flag) for flag in (True, False))
    assert on["arena_bytes"] < off["arena_bytes"] == on["arena_bytes_other"]
    assert on["run_peak_bytes"] > 0 and on["peak_step"]["op"] == "Conv"  # im2col dominates the cnn
    assert on["total_peak_bytes"] == on["arena_bytes"] + on["run_peak_bytes"]
