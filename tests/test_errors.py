"""Bad input: a BundleError with the right status, one line from the CLI, exit non-zero, previous bundle untouched."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import models
import numpy as np
import onnx
import pytest
import yaml
from onnx import helper, numpy_helper
from typer.testing import CliRunner

from bundle_pipeline import BundleError
from bundle_pipeline.cli import app
from bundle_pipeline.pipeline import build
from bundle_pipeline.runtime import load_bundle
from bundle_pipeline.spec import load_spec
from bundle_pipeline.stages.pack import bundle_digest


def _edit_spec(built: models.BuiltBundle, fn: Callable[[dict], None]) -> None:
    spec = yaml.safe_load(built.spec.read_text())
    fn(spec)
    built.spec.write_text(yaml.safe_dump(spec))


def _graph(spec: dict, name: str) -> dict:
    return next(g for g in spec["graphs"] if g["name"] == name)


def _edit_model(path: Path, fn: Callable[[onnx.ModelProto], None]) -> None:
    model = onnx.load(path)
    fn(model)
    onnx.save(model, path)


def missing_file(b):
    _edit_spec(b, lambda s: _graph(s, "infer").update(model="nope.onnx"))


def not_onnx(b):
    (b.directory / "infer.onnx").write_text("this is not a model\n" * 10)


def truncated(b):
    data = (b.directory / "infer.onnx").read_bytes()
    (b.directory / "infer.onnx").write_bytes(data[: len(data) // 2])


def checker_failure(b):
    _edit_model(b.directory / "infer.onnx", lambda m: m.graph.node[0].input.append("undefined_tensor"))


def duplicate_names(b):
    _edit_spec(b, lambda s: _graph(s, "update").update(name="init"))


def two_inits(b):
    _edit_spec(b, lambda s: _graph(s, "update").update(role="init"))


def infer_writes_variable(b):
    """The infer graph exposes a variable as a graph output: that is a write, which only init/update may do."""
    var = b.variables[0]

    def expose(m: onnx.ModelProto) -> None:
        t = next(t for t in m.graph.initializer if t.name == var)
        m.graph.output.append(helper.make_tensor_value_info(var, t.data_type, list(t.dims)))
    _edit_model(b.directory / "infer.onnx", expose)


def options_on_update(b):
    _edit_spec(b, lambda s: _graph(s, "update").update(options={"exec_disable_reused_memory": "1"}))


def unknown_option_key(b):
    _edit_spec(b, lambda s: _graph(s, "infer").update(options={"fast_math": "1"}))


def unknown_option_value(b):
    _edit_spec(b, lambda s: _graph(s, "infer").update(options={"exec_disable_reused_memory": "yes"}))


def variable_shape_conflict(b):
    var = b.variables[0]

    def reshape(m: onnx.ModelProto) -> None:
        t = next(t for t in m.graph.initializer if t.name == var + ".init")
        arr = numpy_helper.to_array(t)
        t.CopyFrom(numpy_helper.from_array(np.zeros((arr.size + 1,), arr.dtype), t.name))
        out = next(o for o in m.graph.output if o.name == var)
        out.CopyFrom(helper.make_tensor_value_info(var, t.data_type, [arr.size + 1]))
    _edit_model(b.init, reshape)


def variable_dtype_conflict(b):
    var = b.variables[0]

    def retype(m: onnx.ModelProto) -> None:
        t = next(t for t in m.graph.initializer if t.name == var + ".init")
        arr = numpy_helper.to_array(t)
        t.CopyFrom(numpy_helper.from_array(arr.astype(np.float64), t.name))
        out = next(o for o in m.graph.output if o.name == var)
        out.type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
    _edit_model(b.init, retype)


def variable_never_written(b):
    def add_input(m: onnx.ModelProto) -> None:
        m.graph.input.append(helper.make_tensor_value_info("ghost", onnx.TensorProto.FLOAT, [1]))
    _edit_model(b.directory / "infer.onnx", add_input)
    _edit_spec(b, lambda s: s.update(variables=["ghost"]))


def unsupported_op(b):
    """An op from a domain we have no kernels for (a custom op a exporter left in the graph)."""
    def add_custom(m: onnx.ModelProto) -> None:
        m.opset_import.append(helper.make_opsetid("com.example", 1))
        m.graph.node.append(helper.make_node("FancyOp", ["sq"], ["fancy"], name="my_fancy", domain="com.example"))
        m.graph.input.append(helper.make_tensor_value_info("sq", onnx.TensorProto.FLOAT, [3, 3]))
        m.graph.output.append(helper.make_tensor_value_info("fancy", onnx.TensorProto.FLOAT, [3, 3]))
    _edit_model(b.directory / "infer.onnx", add_custom)


def dynamic_shape(b):
    def make_dynamic(m: onnx.ModelProto) -> None:
        m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    _edit_model(b.directory / "infer.onnx", make_dynamic)


CASES = {
    "missing_file": (missing_file, "IO_ERROR", "nope.onnx"),
    "not_onnx": (not_onnx, "GRAPH_INVALID", "infer.onnx"),
    "truncated": (truncated, "GRAPH_INVALID", "infer.onnx"),
    "checker_failure": (checker_failure, "GRAPH_INVALID", "infer.onnx"),
    "duplicate_names": (duplicate_names, "PARAM_INVALID", "duplicate graph name 'init'"),
    "two_inits": (two_inits, "PARAM_INVALID", "at most one init graph"),
    "infer_writes_variable": (infer_writes_variable, "GRAPH_INVALID", "infer graph infer writes variable"),
    "options_on_update": (options_on_update, "OPTION_INVALID", "graph update"),
    "unknown_option_key": (unknown_option_key, "OPTION_INVALID", "fast_math"),
    "unknown_option_value": (unknown_option_value, "OPTION_INVALID", "exec_disable_reused_memory"),
    "variable_shape_conflict": (variable_shape_conflict, "VARIABLE_CONFLICT", "in graph init"),
    "variable_dtype_conflict": (variable_dtype_conflict, "VARIABLE_CONFLICT", "float64"),
    "variable_never_written": (variable_never_written, "GRAPH_INVALID", "'ghost'"),
    "unsupported_op": (unsupported_op, "UNSUPPORTED_OP", "'my_fancy' (FancyOp)"),
    "dynamic_shape": (dynamic_shape, "GRAPH_INVALID", "input_shape"),
}


@pytest.fixture
def good_bundle(tmp_path):
    built = models.mlp(tmp_path / "mlp")
    spec = load_spec(built.spec, cache=str(tmp_path / "cache"))
    report = build(spec)
    return built, spec, report.digest


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_leaves_the_bundle(case, good_bundle):
    built, spec, digest = good_bundle
    breaker, status, fragment = CASES[case]
    breaker(built)
    with pytest.raises(BundleError) as err:
        build(load_spec(built.spec, cache=spec.cache))
    assert err.value.status == status, str(err.value)
    assert fragment in str(err.value)
    result = CliRunner().invoke(app, ["run", str(built.spec), "--cache", spec.cache])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {status}: "), result.stderr
    assert "Traceback" not in result.output + result.stderr
    assert bundle_digest(spec.output) == digest
    assert sorted(p.name for p in Path(spec.output).parent.iterdir()) == [Path(spec.output).name]


def test_cli_process_prints_no_traceback(good_bundle):
    built, spec, _ = good_bundle
    not_onnx(built)
    proc = subprocess.run([sys.executable, "-m", "bundle_pipeline.cli", "run", str(built.spec), "--cache", spec.cache],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: GRAPH_INVALID: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr


def _bad_feeds(built: models.BuiltBundle) -> dict[str, tuple[dict, str]]:
    good = built.feeds(np.random.default_rng(0))
    name, value = next(iter(good.items()))
    return {
        "unknown name": ({**good, "bogus": value}, "unknown feed 'bogus'"),
        "missing": ({}, f"missing feed {name!r}"),
        "wrong shape": ({name: value[:1]}, f"feed {name!r} is float32"),
        "wrong dtype": ({name: value.astype(np.float64)}, f"feed {name!r} is float64"),
    }


def test_wrong_feeds_at_run_time(good_bundle):
    built, spec, _ = good_bundle
    bundle = load_bundle(spec.output)
    for label, (feeds, fragment) in _bad_feeds(built).items():
        with pytest.raises(BundleError) as err:
            bundle.run("infer", feeds)
        assert err.value.status == "PARAM_INVALID", label
        assert fragment in str(err.value), (label, str(err.value))


def test_cli_exec_wrong_feed_is_one_line(good_bundle, tmp_path):
    _built, spec, _ = good_bundle
    np.save(tmp_path / "x.npy", np.zeros((1, 1), np.float32))
    result = CliRunner().invoke(app, ["exec", spec.output, "infer", "-i", f"x={tmp_path / 'x.npy'}"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: PARAM_INVALID: ") and result.stderr.count("\n") == 1


def test_unset_variable_is_a_clear_runtime_error(tmp_path):
    built = models.mlp(tmp_path / "mlp")
    spec_text = yaml.safe_load(built.spec.read_text())
    spec_text["graphs"] = [g for g in spec_text["graphs"] if g["role"] != "init"]
    # without init the infer initializers give initial values; drop them to leave the variables unset
    model = onnx.load(built.directory / "infer.onnx")
    for t in [t for t in model.graph.initializer if t.name in built.variables]:
        model.graph.initializer.remove(t)
        model.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    onnx.save(model, built.directory / "infer.onnx")
    built.spec.write_text(yaml.safe_dump(spec_text))
    spec = load_spec(built.spec, cache=str(tmp_path / "cache"))
    build(spec)
    bundle = load_bundle(spec.output)
    with pytest.raises(BundleError) as err:
        bundle.run("infer", built.feeds(np.random.default_rng(0)))
    assert err.value.status == "RUNTIME_ERROR" and "is unset" in str(err.value)
    bundle.update(built.update_feeds(np.random.default_rng(1)))
    assert bundle.run("infer", built.feeds(np.random.default_rng(0)))
