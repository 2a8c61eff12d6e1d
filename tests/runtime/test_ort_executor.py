"""The ONNX Runtime executor of cpu bundles: one weight storage shared by every session, updates seen without
re-creating a session, options kept, the same results as the reference executor, and a reason for every graph
that stays on the reference."""

from __future__ import annotations

import json

import models
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from oracle import assert_outputs_close, ort_run
from typer.testing import CliRunner

import bundle_pipeline as bp
from bundle_pipeline.cli import app
from bundle_pipeline.inspect import describe
from bundle_pipeline.pipeline import build
from bundle_pipeline.runtime import load_bundle
from bundle_pipeline.spec import load_spec


def _save(tmp_path, graphs: list[bp.GraphWithOptions], tag: str, target: str = "cpu"):
    path = tmp_path / f"{tag}.zip"
    bp.bundle_save_model(path, bp.bundle_build_model(graphs, target=target, cache=tmp_path / "cache"))
    return path


def _infer_bundle(tmp_path, model: onnx.ModelProto, options: dict, tag: str):
    return _save(tmp_path, [bp.GraphWithOptions(model, options, role="infer", name="infer")], tag)


@pytest.fixture
def shared(tmp_path):
    """models.shared: init, update and three infer graphs reading the same variables."""
    built = models.shared(tmp_path / "shared")
    spec = load_spec(built.spec, cache=str(tmp_path / "cache"))
    build(spec)
    return built, spec.output


def test_every_session_binds_the_one_variable_storage(shared):
    built, path = shared
    bundle = load_bundle(path)
    assert {bundle.executor_of(g) for g in bundle.graphs} == {"onnxruntime"}
    for graph in built.infer:
        executor = bundle.executors[graph]
        for name in executor.program.reads:
            # the OrtValue bound to the session is the store's own array, not a copy
            assert executor.bound[name].data_ptr() == bundle.variables.values[name].ctypes.data


def test_an_update_is_seen_by_every_session_without_re_creating_it(shared):
    built, path = shared
    bundle = load_bundle(path)
    sessions = {g: bundle.executors[g].session for g in bundle.graphs}
    rng = np.random.default_rng(11)
    for _ in range(2):  # twice: the second update overwrites the first in place
        new = built.new_weights(rng)
        bundle.update({f"{k}.new": v for k, v in new.items()})
        for name, graph in built.infer.items():
            feeds = built.feeds(rng, name)
            mine = {k: v for k, v in new.items() if k in graph.variables}
            assert_outputs_close(bundle.run(name, feeds), ort_run(graph.path, feeds, weights=mine))
    assert {g: bundle.executors[g].session for g in bundle.graphs} == sessions


def test_executors_agree_after_init_and_after_an_update(shared):
    built, path = shared
    ort_bundle, ref_bundle = load_bundle(path, executor="onnxruntime"), load_bundle(path, executor="reference")
    rng = np.random.default_rng(12)
    updates = {f"{k}.new": v for k, v in built.new_weights(rng).items()}
    for step in ("init", "update"):
        if step == "update":
            ort_bundle.update(updates)
            ref_bundle.update(updates)
        for name in built.infer:
            feeds = built.feeds(rng, name)
            assert_outputs_close(ort_bundle.run(name, feeds), ref_bundle.run(name, feeds), rtol=1e-5, atol=1e-6)
    for var in built.variables:
        np.testing.assert_array_equal(ort_bundle.variable(var), ref_bundle.variable(var))


@pytest.mark.parametrize("options", [{"precision_mode": "force_fp16"}, {"precision_mode": "allow_fp32_to_fp16"},
                                     {"input_format": "NHWC"}, {"exec_disable_reused_memory": "1"}, {}],
                         ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults")
def test_options_give_the_same_results_on_both_executors(options, tmp_path):
    """The precision marks become Casts that round as the reference does; NHWC's Transpose is in the program."""
    path = _infer_bundle(tmp_path, onnx.load(models.cnn(tmp_path / "cnn").graph().path), options, "cnn")
    fast, ref = load_bundle(path, executor="auto"), load_bundle(path, executor="reference")
    assert fast.executor_of("infer") == "onnxruntime"
    x = (np.random.default_rng(1).standard_normal((2, 3, 16, 16)) + 1 / 3).astype(np.float32)
    feeds = {"x": np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if options.get("input_format") == "NHWC" else x}
    assert_outputs_close(fast.run("infer", feeds), ref.run("infer", feeds), rtol=1e-5, atol=1e-6)
    session_options = fast.executors["infer"].session.get_session_options()
    reuse = options.get("exec_disable_reused_memory") != "1"
    assert session_options.enable_mem_pattern == reuse and session_options.enable_cpu_mem_arena == reuse


def test_force_fp16_rounds_on_onnxruntime_too(tmp_path):
    """Not a vacuous agreement: the rounded bundle differs from the exact model on both executors."""
    model = onnx.load(models.cnn(tmp_path / "cnn").graph().path)
    path = _infer_bundle(tmp_path, model, {"precision_mode": "force_fp16"}, "half")
    x = (np.random.default_rng(1).standard_normal((2, 3, 16, 16)) + 1 / 3).astype(np.float32)
    exact = ort_run(model, {"x": x})["y"]
    got = load_bundle(path, executor="onnxruntime").run("infer", {"x": x})["y"]
    assert not np.allclose(got, exact, rtol=1e-6, atol=0)
    np.testing.assert_allclose(got, exact, rtol=2e-2, atol=2e-2)


def test_threads_are_the_sessions_intra_op_threads(shared):
    _, path = shared
    bundle = load_bundle(path, threads=1)
    assert {bundle.executors[g].session.get_session_options().intra_op_num_threads for g in bundle.graphs} == {1}


@pytest.mark.parametrize(("kwargs", "text"), [({"executor": "fast"}, "unknown executor 'fast'"),
                                              ({"threads": 0}, "threads must be a positive integer"),
                                              ({"threads": "2"}, "threads must be a positive integer")])
def test_bad_executor_options_are_param_errors(shared, kwargs, text):
    with pytest.raises(bp.BundleError) as err:
        load_bundle(shared[1], **kwargs)
    assert err.value.status == "PARAM_INVALID" and text in str(err.value)


def _string_model() -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("StringConcat", ["a", "b"], ["y"])], "strings",
                              [helper.make_tensor_value_info(n, TensorProto.STRING, [2]) for n in ("a", "b")],
                              [helper.make_tensor_value_info("y", TensorProto.STRING, [2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def _implmode_model() -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("Tanh", ["x"], ["y"])], "tanh",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(("case", "reason"), [("strings", "ORT does not bind from numpy"),
                                              ("implmode", "op_select_implmode=high_performance"),
                                              ("npu", "target npu")])
def test_graphs_onnxruntime_cannot_run_stay_on_the_reference_and_say_why(case, reason, tmp_path):
    graphs = {"strings": ([bp.GraphWithOptions(_string_model(), role="infer", name="infer")], "cpu"),
              "implmode": ([bp.GraphWithOptions(_implmode_model(), {"op_select_implmode": "high_performance"},
                                                role="infer", name="infer")], "cpu"),
              "npu": ([bp.GraphWithOptions(_implmode_model(), role="infer", name="infer")], "npu")}[case]
    path = _save(tmp_path, *graphs[:1], case, target=graphs[1])
    bundle = load_bundle(path)
    assert bundle.executor_of("infer") == "reference" and reason in bundle.executor_reasons["infer"]
    info = describe(str(path))["graphs"][0]
    assert info["executor"] == "reference" and reason in info["executor_reason"]
    with pytest.raises(bp.BundleError) as err:
        load_bundle(path, executor="onnxruntime")
    assert err.value.status == "PARAM_INVALID" and "graph 'infer' cannot run on onnxruntime" in str(err.value)
    assert reason in str(err.value)


def test_an_unset_variable_is_the_same_error_on_onnxruntime(shared):
    built, path = shared
    bundle = load_bundle(path, run_init=False)
    graph = next(iter(built.infer))
    assert bundle.executor_of(graph) == "onnxruntime"
    with pytest.raises(bp.BundleError) as err:
        bundle.run(graph, built.feeds(np.random.default_rng(0), graph))
    assert err.value.status == "RUNTIME_ERROR" and "is unset" in str(err.value)


def test_feed_errors_are_the_reference_messages(shared):
    built, path = shared
    graph = next(iter(built.infer))
    feeds = {k: v.astype(np.float64) for k, v in built.feeds(np.random.default_rng(0), graph).items()}
    messages = []
    for executor in ("onnxruntime", "reference"):
        with pytest.raises(bp.BundleError) as err:
            load_bundle(path, executor=executor).run(graph, feeds)
        messages.append((err.value.status, str(err.value)))
    assert messages[0] == messages[1] and messages[0][0] == "PARAM_INVALID"


def test_inspect_and_exec_name_the_executor(shared, tmp_path):
    built, path = shared
    info = json.loads(CliRunner().invoke(app, ["inspect", str(path), "--json"]).stdout)
    assert {g["executor"] for g in info["graphs"]} == {"onnxruntime"}
    human = CliRunner().invoke(app, ["inspect", str(path)], env={"COLUMNS": "200"})
    assert "executor (load_bundle auto)" in human.output
    graph = next(iter(built.infer))
    feeds = built.feeds(np.random.default_rng(0), graph)
    args = []
    for name, value in feeds.items():
        np.save(tmp_path / f"{name}.npy", value)
        args += ["-i", f"{name}={tmp_path / f'{name}.npy'}"]
    outs = {}
    for executor in ("onnxruntime", "reference"):
        result = CliRunner().invoke(app, ["exec", str(path), graph, *args, "--executor", executor, "--threads", "1",
                                          "-o", str(tmp_path / executor)])
        assert result.exit_code == 0, result.output
        outs[executor] = {p.stem: np.load(p) for p in (tmp_path / executor).iterdir()}
    assert outs["onnxruntime"].keys() == outs["reference"].keys() and outs["reference"]
    assert_outputs_close(outs["onnxruntime"], outs["reference"], rtol=1e-5, atol=1e-6)
    bad = CliRunner().invoke(app, ["exec", str(path), graph, *args, "--executor", "gpu"])
    assert bad.exit_code == 1 and "error:" in bad.output and "unknown executor 'gpu'" in bad.output


def _branchy() -> onnx.ModelProto:
    """y = If(flag, then: x @ W, else: x @ W + b): the branches read the weights W and b from the outer graph."""
    rng = np.random.default_rng(3)
    w = onnx.numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "W")
    b = onnx.numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    out = helper.make_tensor_value_info("r", TensorProto.FLOAT, [3, 4])
    then = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["r"])], "then", [], [out])
    other = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["m"]),
                               helper.make_node("Add", ["m", "b"], ["r"])], "else", [], [out])
    graph = helper.make_graph([helper.make_node("If", ["flag"], ["y"], then_branch=then, else_branch=other)], "branchy",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 8]),
                               helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])], [w, b])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_if_bodies_run_on_onnxruntime_and_read_updated_variables(tmp_path):
    model = _branchy()
    graphs = bp.convert_to_weight_refreshable_graphs(model)
    path = _save(tmp_path, [bp.GraphWithOptions(graphs.var_init, role="init", name="init"),
                            bp.GraphWithOptions(graphs.var_update, role="update", name="update"),
                            bp.GraphWithOptions(graphs.infer, role="infer", name="infer")], "branchy")
    fast, ref = load_bundle(path), load_bundle(path, executor="reference")
    assert fast.executor_of("infer") == "onnxruntime", fast.executor_reasons["infer"]
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 8)).astype(np.float32)
    new = {"W": rng.standard_normal((8, 4)).astype(np.float32), "b": rng.standard_normal(4).astype(np.float32)}
    for step in ("init", "update"):
        if step == "update":
            for bundle in (fast, ref):
                bundle.update({f"{k}.new": v for k, v in new.items()})
        for flag in (True, False):
            feeds = {"x": x, "flag": np.array(flag)}
            weights = new if step == "update" else None
            assert_outputs_close(fast.run("infer", feeds), ort_run(model, feeds, weights=weights))
            assert_outputs_close(fast.run("infer", feeds), ref.run("infer", feeds), rtol=1e-6, atol=1e-6)


def _expected(built, new: dict, name: str, feeds: dict) -> dict:
    graph = built.infer[name]
    return ort_run(graph.path, feeds, weights={k: v for k, v in new.items() if k in graph.variables})


def test_owned_sessions_run_at_load_and_a_refresh_is_seen_before_and_after_their_rebuild(shared):
    """Right after a refresh the bound sessions run (the builder is held off by the store's lock), then the
    rebuilt owned sessions; both agree with ORT on the new weights and with the reference executor, every graph,
    two refreshes in a row (the second replaces the first before any rebuild)."""
    built, path = shared
    bundle, ref = load_bundle(path), load_bundle(path, executor="reference")
    rng = np.random.default_rng(21)
    first = built.feeds(rng, next(iter(built.infer)))
    bundle.run(next(iter(built.infer)), first)
    assert bundle.executors[next(iter(built.infer))].last_session == "owned"
    with bundle.variables.lock:  # the builder cannot copy the variables: every run must take the bound session
        for _ in range(2):
            new = built.new_weights(rng)
            bundle.update({f"{k}.new": v for k, v in new.items()})
            ref.update({f"{k}.new": v for k, v in new.items()})
        feeds = {name: built.feeds(rng, name) for name in built.infer}
        for name in built.infer:
            got = bundle.run(name, feeds[name])
            assert bundle.executors[name].last_session == "bound"
            assert_outputs_close(got, _expected(built, new, name, feeds[name]))
            assert_outputs_close(got, ref.run(name, feeds[name]), rtol=1e-5, atol=1e-6)
    assert bundle.wait_owned(timeout=60)
    for name in built.infer:
        got = bundle.run(name, feeds[name])
        assert bundle.executors[name].last_session == "owned"
        assert bundle.executors[name].owned.version == bundle.variables.version
        assert_outputs_close(got, _expected(built, new, name, feeds[name]))
        assert_outputs_close(got, ref.run(name, feeds[name]), rtol=1e-5, atol=1e-6)


def test_bound_only_bundles_see_a_refresh_on_every_graph(shared):
    built, path = shared
    bundle = load_bundle(path, owned_weights=False)
    assert not bundle.owned.executors
    assert all("owned" not in why for why in bundle.executor_reasons.values())
    rng = np.random.default_rng(22)
    new = built.new_weights(rng)
    bundle.update({f"{k}.new": v for k, v in new.items()})
    for name in built.infer:
        feeds = built.feeds(rng, name)
        assert_outputs_close(bundle.run(name, feeds), _expected(built, new, name, feeds))
        assert bundle.executors[name].last_session == "bound" and bundle.executors[name].owned is None


def test_owned_sessions_share_one_copy_of_the_variables_and_only_infer_graphs_have_one(shared):
    built, path = shared
    bundle = load_bundle(path)
    copies: dict[str, set[int]] = {}
    for name in built.infer:
        executor = bundle.executors[name]
        assert "ORT-owned" in bundle.executor_reasons[name]
        values = executor.owned.keep_alive[1]
        for var in executor.program.reads:
            assert values[var].ctypes.data != bundle.variables.values[var].ctypes.data  # a copy, never the store
            copies.setdefault(var, set()).add(values[var].ctypes.data)
    assert copies and all(len(ptrs) == 1 for ptrs in copies.values())  # one copy per variable, for all graphs
    for name, role in bundle.roles.items():
        if role != "infer":
            assert bundle.executors[name].owned is None and "ORT-owned" not in bundle.executor_reasons[name]
    info = json.loads(CliRunner().invoke(app, ["inspect", str(path), "--json"]).stdout)
    assert {g["name"] for g in info["graphs"] if "ORT-owned" in g["executor_reason"]} == set(built.infer)


def test_owned_weights_must_be_a_bool(shared):
    with pytest.raises(bp.BundleError) as err:
        load_bundle(shared[1], owned_weights="yes")
    assert err.value.status == "PARAM_INVALID" and "owned_weights" in str(err.value)
