"""``assign`` errors are one line naming the graph and the names; status, explain and task keys carry ``assign``;
the loader rejects a program whose outputs write what they must not."""

from __future__ import annotations

import json

import numpy as np
import pytest
import writes_models as wm
import yaml
from onnx import helper
from typer.testing import CliRunner

import bundle_pipeline as bp
from bundle_pipeline.cli import app
from bundle_pipeline.runtime.bundle import open_group
from bundle_pipeline.runtime.validate import validate_manifest
from bundle_pipeline.spec import load_spec
from bundle_pipeline.tasks.factory import bundle_tasks

SHAPE = (4, 6)
W = np.arange(24, dtype=np.float32).reshape(SHAPE)


def graphs(update, role: str = "update", **assign: str) -> list[bp.GraphWithOptions]:
    return [bp.GraphWithOptions(wm.init_graph({"W": W}, {"W": "A"}), name="init"),
            bp.GraphWithOptions(update, name="step", role=role, assign=assign),
            bp.GraphWithOptions(wm.matmul_infer((2, SHAPE[0]), {"W": W}), name="infer")]


def error(tmp_path, graph_list) -> bp.BundleError:
    with pytest.raises(bp.BundleError) as info:
        bp.bundle_build_model(graph_list, cache=tmp_path / "cache")
    assert "\n" not in str(info.value)
    return info.value


def test_assign_names_a_missing_output(tmp_path):
    err = error(tmp_path, graphs(wm.sgd_update(SHAPE), W_nxt="W"))
    assert err.status == "GRAPH_INVALID" and err.where == "graph step"
    assert "output 'W_nxt'" in err.message and "outputs: W_next" in err.message


def test_two_outputs_assigned_to_one_variable(tmp_path):
    two = wm.model([helper.make_node("Neg", ["W"], ["a"]), helper.make_node("Abs", ["W"], ["b"])], {"W": W},
                   {"a": W, "b": W}, name="two")
    err = error(tmp_path, graphs(two, a="W", b="W"))
    assert err.status == "VARIABLE_CONFLICT" and err.where == "graph step"
    assert "'a' and 'b' both write variable 'W'" in err.message


def test_an_assigned_output_and_an_output_of_the_variables_name_conflict(tmp_path):
    both = wm.model([helper.make_node("Neg", ["x"], ["W"]), helper.make_node("Abs", ["x"], ["W2"])], {"x": W},
                    {"W": W, "W2": W}, name="both")
    err = error(tmp_path, graphs(both, W2="W"))
    assert err.status == "VARIABLE_CONFLICT" and "'W' and 'W2' both write variable 'W'" in err.message


@pytest.mark.parametrize(("shape", "dtype", "shown"), [((6, 4), "float32", "float32[6,4]"),
                                                       (SHAPE, "float64", "float64[4,6]")])
def test_assigned_output_of_another_type(tmp_path, shape, dtype, shown):
    other = wm.model([helper.make_node("Identity", ["v"], ["out"])], {"v": (shape, dtype)}, {"out": (shape, dtype)},
                     name="other")
    err = error(tmp_path, graphs(other, out="W"))
    assert err.status == "VARIABLE_CONFLICT"
    assert f"{shown} in graph step (output 'out')" in err.message and "variable 'W'" in err.message


def test_assign_to_a_variable_no_graph_reads(tmp_path):
    err = error(tmp_path, graphs(wm.sgd_update(SHAPE), W_next="W_ghost"))
    assert err.status == "GRAPH_INVALID" and err.where == "graph step"
    assert "'W_next' to 'W_ghost', which no graph reads" in err.message and "'variables'" in err.message


def test_assign_on_an_infer_graph(tmp_path):
    listed = [*graphs(wm.sgd_update(SHAPE), W_next="W")[:2],
              bp.GraphWithOptions(wm.matmul_infer((2, SHAPE[0]), {"W": W}), name="infer", role="infer",
                                  assign={"y": "W"})]
    err = error(tmp_path, listed)
    assert err.status == "PARAM_INVALID" and "graph infer" in err.message and "only on init and update" in err.message


@pytest.mark.parametrize(("entry", "fragment"), [
    ("assign: {W_next: W}", "graph infer: 'assign' is accepted only on init and update graphs"),
    ("assign: [W_next, W]", "'assign' must be a mapping"),
    ("assign: {W_next: 3}", "'assign' must map output names to variable names"),
])
def test_spec_assign_errors_name_the_graph_and_line(tmp_path, entry, fragment):
    (tmp_path / "bundle.yaml").write_text(f"name: b\ngraphs:\n  - name: infer\n    model: infer.onnx\n    {entry}\n")
    with pytest.raises(bp.BundleError) as info:
        load_spec(tmp_path / "bundle.yaml")
    assert info.value.status == "PARAM_INVALID" and fragment in str(info.value)
    assert str(tmp_path / "bundle.yaml") + ":3" in str(info.value)


def test_api_infers_roles_of_graphs_with_assign(tmp_path):
    fed = bp.GraphWithOptions(wm.sgd_update(SHAPE), name="sgd", assign={"W_next": "W"})
    reset = wm.model([helper.make_node("Identity", ["zeros"], ["zero"])], {}, {"zero": W},
                     {"zeros": np.zeros_like(W)}, name="reset")  # no feeds: with assign, an init graph
    infer = bp.GraphWithOptions(wm.matmul_infer((2, SHAPE[0]), {"W": W}), name="infer")
    bp.bundle_save_model(tmp_path / "b.zip", bp.bundle_build_model(
        [bp.GraphWithOptions(reset, name="reset", assign={"zero": "W"}), fed, infer], cache=tmp_path / "cache"))
    from bundle_pipeline.runtime import load_bundle

    bundle = load_bundle(tmp_path / "b.zip")
    assert bundle.roles == {"reset": "init", "sgd": "update", "infer": "infer"}
    np.testing.assert_array_equal(bundle.variable("W"), np.zeros_like(W))


def write_spec(tmp_path, assign: dict) -> None:
    wm.save(tmp_path, {"init": wm.init_graph({"W": W, "V": W}, {"W": "A", "V": "B"}), "sgd": wm.sgd_update(SHAPE),
                       "infer": wm.matmul_infer((2, SHAPE[0]), {"W": W, "V": W})})
    spec = {"name": "keys", "graphs": [{"name": "init", "role": "init", "model": "init.onnx"},
                                       {"name": "sgd", "role": "update", "model": "sgd.onnx", "assign": assign},
                                       {"name": "infer", "model": "infer.onnx"}]}
    (tmp_path / "bundle.yaml").write_text(yaml.safe_dump(spec))


def test_task_keys_status_and_explain_carry_assign(tmp_path):
    write_spec(tmp_path, {"W_next": "W"})
    tasks = {t.id: t for t in bundle_tasks(load_spec(tmp_path / "bundle.yaml"))}
    assert tasks["keys/dedupe"].params["assign"] == {"sgd": {"W_next": "W"}}
    assert tasks["keys/codegen:sgd"].params["assign"] == tasks["keys/formats:sgd"].params["assign"] == {"W_next": "W"}
    assert "assign" not in tasks["keys/codegen:infer"].params  # graphs without assign keep their keys
    runner = CliRunner()
    assert runner.invoke(app, ["run", str(tmp_path / "bundle.yaml")]).exit_code == 0
    write_spec(tmp_path, {"W_next": "V"})  # the same step now writes V: a different program
    status = json.loads(runner.invoke(app, ["status", str(tmp_path / "bundle.yaml"), "--json"]).output.splitlines()[-1])
    reasons = {s["id"]: s["reason"] for s in status["stale"]}
    assert set(reasons) == {"keys/dedupe"}  # the tasks after it wait for it ("maybe")
    assert "option changed: assign" in reasons["keys/dedupe"] and "'V'" in reasons["keys/dedupe"]
    assert {"keys/formats:sgd", "keys/codegen:sgd"} <= {s["id"] for s in status["maybe"]}
    explained = runner.invoke(app, ["explain", str(tmp_path / "bundle.yaml"), "dedupe"])
    assert explained.exit_code == 0 and "changed  param assign" in explained.output
    result = runner.invoke(app, ["run", str(tmp_path / "bundle.yaml"), "--json"])
    ran = {t["id"] for t in json.loads(result.output.splitlines()[-1])["tasks"] if t["status"] == "ran"}
    assert {"keys/dedupe", "keys/formats:sgd", "keys/codegen:sgd", "keys/pack"} <= ran
    from bundle_pipeline.runtime import load_bundle

    bundle = load_bundle(tmp_path / "build" / "keys.bundle")
    g = np.ones(SHAPE, np.float32)
    bundle.update({"g": g, "lr": np.array(0.5, np.float32)})
    np.testing.assert_array_equal(bundle.variable("V"), W - 0.5)
    np.testing.assert_array_equal(bundle.variable("W"), W)


@pytest.mark.parametrize(("edit", "fragment"), [
    (lambda out, var: out.update(writes="nope"), "writes an unknown variable 'nope'"),
    (lambda out, var: out.update(shape=[6, 4]), "but writes variable 'W'"),
    (lambda out, var: out.update(name="nothing"), "is not produced"),
])
def test_loader_rejects_bad_writes(tmp_path, edit, fragment):
    bp.bundle_save_model(tmp_path / "b.zip", bp.bundle_build_model(graphs(wm.sgd_update(SHAPE), W_next="W"),
                                                                   cache=tmp_path / "cache"))
    manifest = dict(open_group(str(tmp_path / "b.zip")).attrs)
    step = next(g for g in manifest["graphs"] if g["name"] == "step")
    (out,) = step["program"]["outputs"]
    assert out["writes"] == "W" and out["variable"]
    edit(out, manifest["variables"][0])
    with pytest.raises(bp.BundleError) as info:
        validate_manifest(manifest, "b.zip")
    assert info.value.status == "BUNDLE_CORRUPT" and fragment in str(info.value)


def test_loader_rejects_a_write_from_an_infer_graph(tmp_path):
    bp.bundle_save_model(tmp_path / "b.zip", bp.bundle_build_model(graphs(wm.sgd_update(SHAPE), W_next="W"),
                                                                   cache=tmp_path / "cache"))
    manifest = dict(open_group(str(tmp_path / "b.zip")).attrs)
    infer = next(g for g in manifest["graphs"] if g["name"] == "infer")
    infer["program"]["outputs"][0].update(variable=True, writes="W", shape=list(SHAPE))
    with pytest.raises(bp.BundleError) as info:
        validate_manifest(manifest, "b.zip")
    assert "from an infer graph" in str(info.value)
