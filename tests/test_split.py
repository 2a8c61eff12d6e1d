"""split / convert_to_weight_refreshable_graphs: which tensors become variables, the three graphs (onnx.checker,
ORT), the bundle built from them against ORT on the original model before and after an update, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper
from oracle import assert_outputs_close, ort_run
from typer.testing import CliRunner

import bundle_pipeline as bp
from bundle_pipeline.cli import app
from bundle_pipeline.pipeline import build
from bundle_pipeline.runtime import load_bundle
from bundle_pipeline.spec import load_spec
from bundle_pipeline.split import DEFAULT_MIN_BYTES, SHAPE_INPUTS, shape_steering, write_split


def _f32(rng: np.random.Generator, *shape: int, scale: float = 0.3) -> np.ndarray:
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def _const(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], name=f"make_{name}", value=numpy_helper.from_array(value, name))


def mixed_model(batch: int | str = 1, cast_shape: bool = False, seed: int = 0) -> onnx.ModelProto:
    """x[B,2,4,4] -> Conv(conv.w init, conv.b Constant) -> Resize(scales) -> Mul(scalar) -> Reshape(shape)
    -> MatMul(fc.w init) -> Add(fc.b Constant value_floats) -> y[B,4].

    Weights: conv.w, conv.b, fc.w, fc.b. Constants: scales (Resize input 2), gain (a 4-byte scalar, below the
    default min_bytes), the Reshape target: an int64 Constant, or with ``cast_shape`` a float Constant
    ``shape_f`` cast to int64 (it steers shapes transitively; the compiler folds int constants only, so such a
    model is for the selection tests).
    """
    shape = ([_const("shape_f", np.array([-1, 192], np.float32)),
              helper.make_node("Cast", ["shape_f"], ["shape_i"], name="cast", to=TensorProto.INT64)]
             if cast_shape else [_const("shape_i", np.array([-1, 192], np.int64))])
    rng = np.random.default_rng(seed)
    nodes = [
        _const("conv.b", _f32(rng, 3)),
        helper.make_node("Conv", ["x", "conv.w", "conv.b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Resize", ["c", "", "scales"], ["r"], name="resize", mode="nearest"),
        helper.make_node("Mul", ["r", "gain"], ["g"], name="gain_mul"),
        *shape,
        helper.make_node("Reshape", ["g", "shape_i"], ["flat"], name="reshape"),
        helper.make_node("MatMul", ["flat", "fc.w"], ["m"], name="fc"),
        helper.make_node("Constant", [], ["fc.b"], name="make_fc.b", value_floats=[0.1, -0.2, 0.3, -0.4]),
        helper.make_node("Add", ["m", "fc.b"], ["y"], name="fc_add"),
    ]
    inits = [numpy_helper.from_array(_f32(rng, 3, 2, 3, 3), "conv.w"),
             numpy_helper.from_array(_f32(rng, 192, 4), "fc.w"),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
             numpy_helper.from_array(np.array(1.5, np.float32), "gain")]
    graph = helper.make_graph(nodes, "mixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def substitute(model: onnx.ModelProto, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The original model with the named initializers / Constant outputs holding new values."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    found = set()
    for t in out.graph.initializer:
        if t.name in weights:
            t.CopyFrom(numpy_helper.from_array(weights[t.name], t.name))
            found.add(t.name)
    _substitute_constants(out.graph, weights, found)
    assert found == set(weights), set(weights) - found
    return out


def _substitute_constants(graph: onnx.GraphProto, weights: dict[str, np.ndarray], found: set[str]) -> None:
    for node in graph.node:
        for attr in node.attribute:  # If/Loop/Scan bodies hold Constants too
            if attr.type == onnx.AttributeProto.GRAPH:
                _substitute_constants(attr.g, weights, found)
        if node.op_type == "Constant" and node.output[0] in weights:
            name = node.output[0]
            del node.attribute[:]
            node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(weights[name], name)))
            found.add(name)


def ort_session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def perturbed(values: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Scaled by 0.8..1.25 elementwise: signs kept, so variances stay positive."""
    return {k: (v * rng.uniform(0.8, 1.25, v.shape)).astype(v.dtype) for k, v in values.items()}


# ---------------------------------------------------------------- selection and the three graphs


def test_default_selection_takes_data_weights_and_leaves_shape_steering_tensors():
    model = mixed_model(cast_shape=True)
    graphs = bp.convert_to_weight_refreshable_graphs(model)
    assert graphs.variables == ("conv.w", "fc.w", "conv.b", "fc.b")  # initializers, then Constant outputs
    steering = shape_steering(model.graph)
    assert "scales" in steering and "Resize" in steering["scales"]
    assert "shape_f" in steering and "Cast" in steering["shape_f"]  # reaches Reshape's shape through a Cast
    infer = graphs.infer.graph
    assert {i.name for i in infer.input} == {"x", "conv.w", "fc.w", "conv.b", "fc.b"}
    assert {t.name for t in infer.initializer} == {"scales", "gain"}  # the constants stay where they were
    assert [n.output[0] for n in infer.node if n.op_type == "Constant"] == ["shape_f"]
    assert [o.name for o in graphs.var_init.graph.output] == list(graphs.variables)
    assert [i.name for i in graphs.var_update.graph.input] == [f"{v}.new" for v in graphs.variables]
    assert [o.name for o in graphs.var_update.graph.output] == list(graphs.variables)
    for m in (graphs.infer, graphs.var_init, graphs.var_update):
        onnx.checker.check_model(m, full_check=True)
    assert model.graph.node[0].op_type == "Constant"  # the caller's model is not modified
    # min_bytes moves the scalar in or everything out
    assert "gain" in bp.convert_to_weight_refreshable_graphs(model, min_bytes=0).variables
    assert DEFAULT_MIN_BYTES == 8 and ("Reshape" in SHAPE_INPUTS and SHAPE_INPUTS["Slice"] == (1, 2, 3, 4))


def test_three_graphs_run_in_ort_and_reproduce_the_original():
    model = mixed_model()
    graphs = bp.convert_to_weight_refreshable_graphs(model)
    init_out = ort_session(graphs.var_init).run(None, {})
    values = dict(zip(graphs.variables, init_out, strict=True))
    np.testing.assert_array_equal(values["fc.b"], np.array([0.1, -0.2, 0.3, -0.4], np.float32))
    np.testing.assert_array_equal(values["conv.w"], numpy_helper.to_array(model.graph.initializer[0]))
    x = _f32(np.random.default_rng(5), 1, 2, 4, 4, scale=1.0)
    (y,) = ort_session(graphs.infer).run(None, {"x": x, **values})
    np.testing.assert_allclose(y, ort_run(model, {"x": x})["y"], rtol=1e-5, atol=1e-6)  # ORT folds constants
    new = perturbed(values, np.random.default_rng(1))
    updated = ort_session(graphs.var_update).run(None, {f"{k}.new": v for k, v in new.items()})
    for name, value in zip(graphs.variables, updated, strict=True):
        np.testing.assert_array_equal(value, new[name])


def test_const_names_pick_a_subset_by_tensor_or_constant_node_name():
    model = mixed_model()
    graphs = bp.convert_to_weight_refreshable_graphs(model, const_names=["fc.w", "make_conv.b"])
    assert graphs.variables == ("fc.w", "conv.b")  # the Constant node name resolves to its output
    assert {t.name for t in graphs.infer.graph.initializer} == {"conv.w", "scales", "gain"}
    assert bp.convert_to_weight_refreshable_graphs(model, const_names=["gain"]).variables == ("gain",)


def test_overridable_initializer_listed_as_input_becomes_a_plain_input(tmp_path):
    model = mixed_model()
    model.graph.input.append(helper.make_tensor_value_info("fc.w", TensorProto.FLOAT, [192, 4]))
    graphs = bp.convert_to_weight_refreshable_graphs(model, const_names=["fc.w"])
    assert [i.name for i in graphs.infer.graph.input].count("fc.w") == 1
    onnx.checker.check_model(graphs.infer, full_check=True)


# ---------------------------------------------------------------- end to end through the bundle


def _build(spec_path: Path, tmp_path: Path):
    spec = load_spec(spec_path, cache=str(tmp_path / "cache"))
    build(spec)
    return load_bundle(spec.output)


def _check_bundle(bundle, original: onnx.ModelProto, variables, feeds_for, rng, rtol=1e-4, atol=1e-5):
    for _ in range(2):
        feeds = feeds_for(rng)
        assert_outputs_close(bundle.run("infer", feeds), ort_run(original, feeds), rtol=rtol, atol=atol)
    new = perturbed({v: bundle.variable(v) for v in variables}, rng)
    bundle.update({f"{k}.new": v for k, v in new.items()})
    changed = substitute(original, new)
    feeds = feeds_for(rng)
    before = ort_run(original, feeds)
    after = ort_run(changed, feeds)
    assert any(not np.allclose(before[k], after[k], rtol=1e-3) for k in after)  # the update matters
    assert_outputs_close(bundle.run("infer", feeds), after, rtol=rtol, atol=atol)
    for name, value in new.items():
        np.testing.assert_array_equal(bundle.variable(name), value)


def test_split_cli_then_run_matches_ort_before_and_after_update(tmp_path):
    model = mixed_model(batch="N")
    onnx.save(model, tmp_path / "mixed.onnx")
    runner = CliRunner()
    result = runner.invoke(app, ["split", str(tmp_path / "mixed.onnx"), str(tmp_path / "out"),
                                 "--input-shape", "x:2,2,4,4"])
    assert result.exit_code == 0, result.output
    assert "4 variables" in result.output
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["bundle.yaml", "infer.onnx", "init.onnx", "update.onnx"]
    spec = yaml.safe_load((out / "bundle.yaml").read_text())
    assert spec["variables"] == ["conv.w", "fc.w", "conv.b", "fc.b"]
    assert [(g["name"], g["role"]) for g in spec["graphs"]] == [("init", "init"), ("update", "update"),
                                                               ("infer", "infer")]
    assert spec["graphs"][2]["options"] == {"input_shape": "x:2,2,4,4"}
    run = runner.invoke(app, ["run", str(out / "bundle.yaml"), "--cache", str(tmp_path / "cache"), "--json"])
    assert run.exit_code == 0, run.output
    report = json.loads(run.stdout.strip().splitlines()[-1])
    bundle = load_bundle(report["bundle"])
    static = mixed_model(batch=2)
    _check_bundle(bundle, static, spec["variables"],
                  lambda r: {"x": r.standard_normal((2, 2, 4, 4)).astype(np.float32)}, np.random.default_rng(2))
    # the weights are stored once: in the init graph's constants, not again for the infer graph
    assert {v["name"] for v in bundle.manifest["variables"]} == set(spec["variables"])
    assert all(not any(w in spec["variables"] for w in g["bindings"]) for g in bundle.manifest["graphs"])


def branchy_model() -> onnx.ModelProto:
    """An If on a fed flag; each branch holds its own float weights and a Reshape target (which steers)."""
    rng = np.random.default_rng(5)

    def branch(tag: str, scale: float) -> onnx.GraphProto:
        nodes = [_const(f"{tag}.w", _f32(rng, 8, 4, scale=scale)), _const(f"{tag}.b", _f32(rng, 4)),
                 _const(f"{tag}.shape", np.array([2, 4], np.int64)),
                 helper.make_node("MatMul", ["x", f"{tag}.w"], [f"{tag}.mm"]),
                 helper.make_node("Add", [f"{tag}.mm", f"{tag}.b"], [f"{tag}.add"]),
                 helper.make_node("Reshape", [f"{tag}.add", f"{tag}.shape"], [f"{tag}.out"])]
        return helper.make_graph(nodes, tag, [], [helper.make_tensor_value_info(f"{tag}.out", TensorProto.FLOAT,
                                                                                 [2, 4])])

    node = helper.make_node("If", ["flag"], ["y"], then_branch=branch("then", 0.3), else_branch=branch("else", 1.0))
    graph = helper.make_graph([node], "branchy", [helper.make_tensor_value_info("flag", TensorProto.BOOL, []),
                                                  helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_constants_inside_if_branches_become_variables_and_update_in_place(tmp_path):
    model = branchy_model()
    graphs = bp.convert_to_weight_refreshable_graphs(model)
    assert sorted(graphs.variables) == ["else.b", "else.w", "then.b", "then.w"]  # the Reshape targets stay
    onnx.save(model, tmp_path / "branchy.onnx")
    result = CliRunner().invoke(app, ["split", str(tmp_path / "branchy.onnx"), str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    path = _build(tmp_path / "out" / "bundle.yaml", tmp_path).path
    for flag in (True, False):
        bundle = load_bundle(path)  # the init graph's values again: _check_bundle starts from the originals
        _check_bundle(bundle, model, graphs.variables,
                      lambda r, flag=flag: {"flag": np.array(flag), "x": _f32(r, 2, 8)}, np.random.default_rng(3))


@pytest.mark.parametrize("name", ["magika", "rapidocr_cls"])
def test_real_model_split_build_update_matches_ort(name, real_models, tmp_path):
    """magika: weights are initializers; ppocr cls: all 308 weights are Constant nodes."""
    real = real_models[name]
    shape = ";".join(f"{k}:{','.join(map(str, v))}" for k, v in real.input_shapes.items())
    graphs = bp.convert_to_weight_refreshable_graphs(real.path)
    original = onnx.load(real.path)
    constant_outputs = {n.output[0] for n in original.graph.node if n.op_type == "Constant"}
    if name == "rapidocr_cls":
        assert len(original.graph.initializer) == 0 and set(graphs.variables) <= constant_outputs
        assert len(graphs.variables) > 200
    else:
        assert len(graphs.variables) >= 8 and not set(graphs.variables) & constant_outputs
    for m in (graphs.infer, graphs.var_init, graphs.var_update):
        onnx.checker.check_model(m, full_check=True)
    spec_path = write_split(graphs, tmp_path / name, real.path.stem, shape)
    bundle = _build(spec_path, tmp_path)
    _check_bundle(bundle, real.static_model(), graphs.variables, real.feeds, np.random.default_rng(3))


# ---------------------------------------------------------------- bad input


def _int_only_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])], "ints",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 2])],
        [numpy_helper.from_array(np.array([3, 2], np.int64), "shape")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


BAD = {
    "missing tensor": (dict(const_names=["conv.weight"]), "PARAM_INVALID", "'conv.weight' is no initializer"),
    "shape-steering (Resize scales)": (dict(const_names=["scales"]), "PARAM_INVALID", "input 2 of Resize"),
    "shape-steering through a Cast": (dict(const_names=["shape_f"]), "PARAM_INVALID", "steers shapes"),
    "named twice": (dict(const_names=["fc.w", "fc.w"]), "PARAM_INVALID", "named twice"),
    "empty list": (dict(const_names=[]), "PARAM_INVALID", "const_names is empty"),
    "one string": (dict(const_names="fc.w"), "PARAM_INVALID", "not one string"),
    "negative min_bytes": (dict(min_bytes=-1), "PARAM_INVALID", "min_bytes"),
    "nothing above min_bytes": (dict(min_bytes=1 << 20), "PARAM_INVALID", "no weights to split"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_arguments_are_clear_errors(case):
    kwargs, status, text = BAD[case]
    with pytest.raises(bp.BundleError) as err:
        bp.convert_to_weight_refreshable_graphs(mixed_model(cast_shape=True), **kwargs)
    assert err.value.status == status and text in str(err.value), str(err.value)


def test_model_without_weights_is_a_clear_error():
    with pytest.raises(bp.BundleError) as err:
        bp.convert_to_weight_refreshable_graphs(_int_only_model())
    assert err.value.status == "PARAM_INVALID" and "no weights to split" in str(err.value)


CLI_BAD = {
    "malformed input shape": (["--input-shape", "x:1,a"], "OPTION_INVALID", "malformed"),
    "input shape without dims": (["--input-shape", "x"], "OPTION_INVALID", "malformed"),
    "dynamic dim in input shape": (["--input-shape", "x:-1,2,4,4"], "OPTION_INVALID", "static"),
    "input shape of an unknown input": (["--input-shape", "images:1,2,4,4"], "OPTION_INVALID", "'images'"),
    "input shape of the wrong rank": (["--input-shape", "x:1,2"], "OPTION_INVALID", "rank 4"),
    "input shape naming a variable": (["--input-shape", "fc.w:192,4"], "OPTION_INVALID", "not an input"),
    "steering const name": (["--const-names", "fc.w,scales"], "PARAM_INVALID", "steers shapes"),
    "empty const names": (["--const-names", ","], "PARAM_INVALID", "names no tensor"),
}


@pytest.mark.parametrize("case", sorted(CLI_BAD))
def test_cli_bad_input_is_one_line_and_writes_nothing(case, tmp_path):
    args, status, text = CLI_BAD[case]
    onnx.save(mixed_model(batch="N"), tmp_path / "m.onnx")
    result = CliRunner().invoke(app, ["split", str(tmp_path / "m.onnx"), str(tmp_path / "out"), *args])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {status}") and text in lines[0], result.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_cli_unreadable_models(tmp_path):
    runner = CliRunner()
    missing = runner.invoke(app, ["split", str(tmp_path / "nope.onnx"), str(tmp_path / "out")])
    assert missing.exit_code == 1 and missing.output.startswith("error: IO_ERROR")
    (tmp_path / "junk.onnx").write_bytes(b"\x00not onnx at all\xff" * 10)
    junk = runner.invoke(app, ["split", str(tmp_path / "junk.onnx"), str(tmp_path / "out")])
    assert junk.exit_code == 1 and junk.output.startswith("error: GRAPH_INVALID"), junk.output
    onnx.save(_int_only_model(), tmp_path / "ints.onnx")
    empty = runner.invoke(app, ["split", str(tmp_path / "ints.onnx"), str(tmp_path / "out")])
    assert empty.exit_code == 1 and "no weights to split" in empty.output
    assert len(empty.output.strip().splitlines()) == 1


def test_external_data_models_split_from_their_path(tmp_path):
    model = mixed_model()
    fc_w = numpy_helper.to_array(model.graph.initializer[1])
    onnx.save(model, tmp_path / "ext.onnx", save_as_external_data=True, location="ext.data", size_threshold=0)
    graphs = bp.convert_to_weight_refreshable_graphs(tmp_path / "ext.onnx")
    values = dict(zip(graphs.variables, ort_session(graphs.var_init).run(None, {}), strict=True))
    np.testing.assert_array_equal(values["fc.w"], fc_w)
    with pytest.raises(bp.BundleError) as err:
        bp.convert_to_weight_refreshable_graphs(onnx.load(tmp_path / "ext.onnx", load_external_data=False))
    assert err.value.status == "PARAM_INVALID" and "external data" in str(err.value)


def test_split_never_overwrites_without_force_and_never_the_input_model(tmp_path):
    onnx.save(mixed_model(batch="N"), tmp_path / "m.onnx")
    out = tmp_path / "out"
    out.mkdir()
    (out / "bundle.yaml").write_text("the user's spec")
    (out / "init.onnx").write_bytes(b"the user's model")
    runner = CliRunner()
    args = ["split", str(tmp_path / "m.onnx"), str(out), "--input-shape", "x:1,2,4,4"]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 1 and refused.output.startswith("error: PARAM_INVALID") and "--force" in refused.output
    assert len(refused.output.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["bundle.yaml", "init.onnx"]
    assert (out / "bundle.yaml").read_text() == "the user's spec"
    assert (out / "init.onnx").read_bytes() == b"the user's model"
    assert runner.invoke(app, [*args, "--force"]).exit_code == 0
    assert yaml.safe_load((out / "bundle.yaml").read_text())["graphs"][0]["model"] == "init.onnx"
    original = (out / "infer.onnx").read_bytes()
    again = runner.invoke(app, ["split", str(out / "infer.onnx"), str(out), "--force"])  # its own infer.onnx
    assert again.exit_code == 1 and "is the input model" in again.output
    assert (out / "infer.onnx").read_bytes() == original


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/hostname", "link.bin"])
def test_split_external_data_outside_the_model_directory_is_one_line(tmp_path, location):
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    np.ones(64, np.float32).tofile(tmp_path / "secret.bin")
    (models_dir / "link.bin").symlink_to(tmp_path / "secret.bin")
    model = mixed_model()
    onnx.save(model, models_dir / "ext.onnx", save_as_external_data=True, location="ext.data", size_threshold=0)
    m = onnx.load(models_dir / "ext.onnx", load_external_data=False)
    for t in m.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = location
    (models_dir / "ext.onnx").write_bytes(m.SerializeToString())
    result = CliRunner().invoke(app, ["split", str(models_dir / "ext.onnx"), str(tmp_path / "out")])
    assert result.exit_code == 1 and result.output.startswith("error: GRAPH_INVALID") and location in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
