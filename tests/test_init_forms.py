"""Every way users write an init graph works on both targets, through the CLI, the Python API and the runtime:
(A) an initializer that is the graph output, (B) a Constant node whose output is the variable, (C) W.init ->
Identity -> W, (D) mixtures, and init graphs that write only some variables. A graph output is a write, never
a read (DESIGN section 2); update graphs may write constants too."""

from __future__ import annotations

import json

import numpy as np
import pytest
import writes_models as wm
import yaml
from onnx import helper, numpy_helper
from typer.testing import CliRunner

import bundle_pipeline as bp
from bundle_pipeline.cli import app
from bundle_pipeline.inspect import describe
from bundle_pipeline.runtime import load_bundle

X_ROWS = 5
SHAPE = (24, 40)  # on npu the variables are stored FRACTAL_NZ (MatMul reads them natively)


def values(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {name: wm.random(rng, *SHAPE) for name in ("W1", "W2", "W3")}


def expected(x: np.ndarray, weights: dict[str, np.ndarray]) -> np.ndarray:
    return sum(x @ w for w in weights.values())


@pytest.mark.parametrize("target", wm.TARGETS)
@pytest.mark.parametrize("forms", ["AAA", "BBB", "CCC", "ABC", "BCA"])
def test_init_form_builds_loads_and_matches_numpy(tmp_path, target, forms):
    rng = np.random.default_rng(len(forms) + ord(forms[0]))
    weights = values(rng)
    init = wm.init_graph(weights, dict(zip(weights, forms, strict=True)))
    infer = wm.matmul_infer((X_ROWS, SHAPE[0]), weights)
    bundle = wm.build(tmp_path, [bp.GraphWithOptions(init, name="init"), bp.GraphWithOptions(infer, name="infer")],
                      target)
    assert bundle.roles == {"init": "init", "infer": "infer"}  # roles inferred: a write is not a read
    x = wm.random(rng, X_ROWS, SHAPE[0])
    np.testing.assert_allclose(bundle.run("infer", {"x": x})["y"], expected(x, weights), rtol=1e-5, atol=1e-5)
    for name, value in weights.items():
        np.testing.assert_array_equal(bundle.variable(name), value)
    for var in bundle.manifest["variables"]:  # the init graph writes, it does not read
        assert var["readers"] == ["infer"] and var["writers"] == ["init"] and var["source"] == "init"
        assert var["format"] == ("FRACTAL_NZ" if target == "npu" else "ND")


@pytest.mark.parametrize("target", wm.TARGETS)
def test_large_initializer_output_is_a_write(tmp_path, target):
    """A weight above the inline limit is detached at parse (it becomes a typed graph input): still a write."""
    rng = np.random.default_rng(3)
    weights = {"W": wm.random(rng, 48, 64)}
    bundle = wm.build(tmp_path, [bp.GraphWithOptions(wm.init_graph(weights, {"W": "A"}), name="init"),
                                 bp.GraphWithOptions(wm.matmul_infer((2, 48), weights), name="infer")], target)
    x = wm.random(rng, 2, 48)
    np.testing.assert_allclose(bundle.run("infer", {"x": x})["y"], x @ weights["W"], rtol=1e-5, atol=1e-5)


def test_an_output_the_graph_also_computes_with_is_written_and_read_from_its_constant(tmp_path):
    """An init graph may write W (an initializer) and also compute another variable from it."""
    rng = np.random.default_rng(4)
    w = wm.random(rng, *SHAPE)
    init = wm.model([helper.make_node("Neg", ["W"], ["V"])], {}, {"W": w, "V": w}, {"W": w}, name="init")
    infer = wm.matmul_infer((X_ROWS, SHAPE[0]), {"W": w, "V": w})
    graphs = [bp.GraphWithOptions(init, name="init"), bp.GraphWithOptions(infer, name="infer")]
    bundle = wm.build(tmp_path, graphs, "npu")
    np.testing.assert_array_equal(bundle.variable("V"), -w)
    x = wm.random(rng, X_ROWS, SHAPE[0])
    np.testing.assert_allclose(bundle.run("infer", {"x": x})["y"], np.zeros((X_ROWS, SHAPE[1])), atol=1e-5)


@pytest.mark.parametrize("target", wm.TARGETS)
def test_init_writing_a_subset_leaves_the_rest_to_initializers_or_unset(tmp_path, target):
    """W1 from init; W2 keeps the infer graph's initializer; W3 is unset until the update writes it."""
    rng = np.random.default_rng(5)
    w1, w2, w3 = (wm.random(rng, *SHAPE) for _ in range(3))
    init = wm.init_graph({"W1": w1}, {"W1": "B"})
    update = wm.model([helper.make_node("Identity", ["n2"], ["W2"]), helper.make_node("Identity", ["n3"], ["W3"])],
                      {"n2": w2, "n3": w3}, {"W2": w2, "W3": w3}, name="update")
    infer = wm.matmul_infer((X_ROWS, SHAPE[0]), {"W1": w1, "W3": w3}, initializers={"W2": w2})
    bundle = wm.build(tmp_path, [bp.GraphWithOptions(init, name="init"), bp.GraphWithOptions(update, name="update"),
                                 bp.GraphWithOptions(infer, name="infer")], target)
    sources = {v["name"]: v["source"] for v in bundle.manifest["variables"]}
    assert sources == {"W1": "init", "W2": "initializer", "W3": "none"}
    np.testing.assert_array_equal(bundle.variable("W2"), w2)
    x = wm.random(rng, X_ROWS, SHAPE[0])
    with pytest.raises(bp.BundleError) as err:
        bundle.run("infer", {"x": x})
    assert err.value.status == "RUNTIME_ERROR" and "variable 'W3' is unset" in str(err.value)
    new2, new3 = wm.random(rng, *SHAPE), wm.random(rng, *SHAPE)
    bundle.update({"n2": new2, "n3": new3})
    np.testing.assert_allclose(bundle.run("infer", {"x": x})["y"], x @ w1 + x @ new2 + x @ new3, rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("target", wm.TARGETS)
def test_update_graph_may_write_constants(tmp_path, target):
    """An update graph that resets W to a constant (form A) and a counter to 0 (form B, an int64 Constant
    folded at parse), beside one that counts with assign."""
    rng = np.random.default_rng(6)
    w0, reset = wm.random(rng, *SHAPE), wm.random(rng, *SHAPE)
    init = wm.model([helper.make_node("Constant", [], ["n"], value=numpy_helper.from_array(np.array(5, np.int64)))],
                    {}, {"W": w0, "n": ((), "int64")}, {"W": w0}, name="init")
    zero = wm.model([helper.make_node("Constant", [], ["n"], value=numpy_helper.from_array(np.array(0, np.int64)))],
                    {}, {"W": w0, "n": ((), "int64")}, {"W": reset}, name="reset")
    count = wm.model([helper.make_node("Add", ["n", "one"], ["n_next"])], {"n": ((), "int64")},
                     {"n_next": ((), "int64")}, {"one": np.array(1, np.int64)}, name="count")
    infer = wm.model([helper.make_node("MatMul", ["x", "W"], ["y"]), helper.make_node("Identity", ["n"], ["seen"])],
                     {"x": ((X_ROWS, SHAPE[0]), "float32"), "W": w0, "n": ((), "int64")},
                     {"y": ((X_ROWS, SHAPE[1]), "float32"), "seen": ((), "int64")}, name="infer")
    bundle = wm.build(tmp_path, [bp.GraphWithOptions(init, name="init"),
                                 bp.GraphWithOptions(zero, name="reset", role="update"),
                                 bp.GraphWithOptions(count, name="count", role="update", assign={"n_next": "n"}),
                                 bp.GraphWithOptions(infer, name="infer")], target)
    x = wm.random(rng, X_ROWS, SHAPE[0])
    assert int(bundle.run("infer", {"x": x})["seen"]) == 5
    bundle.update({}, graph="count")
    bundle.update({}, graph="count")
    assert int(bundle.run("infer", {"x": x})["seen"]) == 7
    bundle.update({}, graph="reset")
    out = bundle.run("infer", {"x": x})
    assert int(out["seen"]) == 0
    np.testing.assert_allclose(out["y"], x @ reset, rtol=1e-5, atol=1e-5)


def test_inspect_lists_the_init_graph_as_a_writer_only(tmp_path):
    rng = np.random.default_rng(7)
    weights = values(rng)
    init = wm.init_graph(weights, {"W1": "A", "W2": "B", "W3": "C"})
    wm.build(tmp_path, [bp.GraphWithOptions(init, name="init"),
                        bp.GraphWithOptions(wm.matmul_infer((X_ROWS, SHAPE[0]), weights), name="infer")], "cpu")
    info = describe(str(tmp_path / "bundle-cpu.zip"))
    assert {v["name"]: (v["readers"], v["writers"]) for v in info["variables"]} == {
        name: (["infer"], ["init"]) for name in weights}
    graphs = {g["name"]: g for g in info["graphs"]}
    assert graphs["init"]["writes"] == {name: name for name in weights}
    assert graphs["init"]["steps"] == 3  # one Identity per write, nothing read
    assert graphs["infer"]["writes"] == {}


@pytest.mark.parametrize("target", wm.TARGETS)
def test_forms_through_the_cli(tmp_path, target):
    """bundle.yaml + `bundle-pipeline run`, `exec` and `inspect --json`; then load_bundle matches numpy."""
    rng = np.random.default_rng(8)
    weights = values(rng)
    wm.save(tmp_path, {"init": wm.init_graph(weights, {"W1": "A", "W2": "B", "W3": "C"}),
                       "infer": wm.matmul_infer((X_ROWS, SHAPE[0]), weights)})
    spec = {"name": "forms", "target": target, "output": "build/forms.bundle",
            "graphs": [{"name": "init", "role": "init", "model": "init.onnx"},
                       {"name": "infer", "model": "infer.onnx"}]}
    (tmp_path / "bundle.yaml").write_text(yaml.safe_dump(spec))
    runner = CliRunner()
    result = runner.invoke(app, ["run", str(tmp_path / "bundle.yaml")])
    assert result.exit_code == 0, result.output
    bundle_path = tmp_path / "build" / "forms.bundle"
    x = wm.random(rng, X_ROWS, SHAPE[0])
    np.save(tmp_path / "x.npy", x)
    result = runner.invoke(app, ["exec", str(bundle_path), "infer", "-i", f"x={tmp_path / 'x.npy'}",
                                 "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(np.load(tmp_path / "out" / "y.npy"), expected(x, weights), rtol=1e-5, atol=1e-5)
    info = json.loads(runner.invoke(app, ["inspect", str(bundle_path), "--json"]).output)
    assert all(v["readers"] == ["infer"] and v["writers"] == ["init"] for v in info["variables"])
    np.testing.assert_allclose(load_bundle(bundle_path).run("infer", {"x": x})["y"], expected(x, weights),
                               rtol=1e-5, atol=1e-5)


def test_weight_edit_of_an_initializer_output_is_weight_only(tmp_path):
    """Editing the value of a form-A init graph re-runs the weight path only: the structure is unchanged."""
    rng = np.random.default_rng(9)
    weights = {"W": wm.random(rng, *SHAPE)}
    wm.save(tmp_path, {"init": wm.init_graph(weights, {"W": "A"}), "infer": wm.matmul_infer((2, SHAPE[0]), weights)})
    spec = {"name": "edit", "target": "npu", "graphs": [{"name": "init", "role": "init", "model": "init.onnx"},
                                                        {"name": "infer", "model": "infer.onnx"}]}
    (tmp_path / "bundle.yaml").write_text(yaml.safe_dump(spec))
    runner = CliRunner()
    assert runner.invoke(app, ["run", str(tmp_path / "bundle.yaml")]).exit_code == 0
    edited = {"W": weights["W"] * 2}
    wm.save(tmp_path, {"init": wm.init_graph(edited, {"W": "A"})})
    result = runner.invoke(app, ["run", str(tmp_path / "bundle.yaml"), "--json"])
    ran = {t["id"].split("/")[1] for t in json.loads(result.output.strip().splitlines()[-1])["tasks"]
           if t["status"] == "ran"}
    assert ran == {"parse:init", "parse.weights:init", "dedupe.storage", "formats.weights", "pack"}
    bundle = load_bundle(tmp_path / "build" / "edit.bundle")
    np.testing.assert_array_equal(bundle.variable("W"), edited["W"])
