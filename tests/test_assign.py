"""Read-modify-write through ``assign: {OUTPUT: VARIABLE}``: SGD, Adam (ai.onnx.preview.training) and a LoRA
adapter swap checked against numpy / onnx.reference on both targets; every write of a run lands after it."""

from __future__ import annotations

import numpy as np
import pytest
import writes_models as wm
import yaml
from onnx import helper
from onnx.reference import ReferenceEvaluator
from typer.testing import CliRunner

import bundle_pipeline as bp
from bundle_pipeline.cli import app
from bundle_pipeline.formats import from_format, storage_shape
from bundle_pipeline.runtime import load_bundle

SHAPE = (24, 40)
X_ROWS = 5


def sgd_graphs(w0: np.ndarray, **assign: str) -> list[bp.GraphWithOptions]:
    return [bp.GraphWithOptions(wm.init_graph({"W": w0}, {"W": "A"}), name="init"),
            bp.GraphWithOptions(wm.sgd_update(w0.shape), name="sgd", assign=assign or {"W_next": "W"}),
            bp.GraphWithOptions(wm.matmul_infer((X_ROWS, w0.shape[0]), {"W": w0}), name="infer")]


@pytest.mark.parametrize("target", wm.TARGETS)
def test_sgd_applied_several_times_matches_numpy(tmp_path, target):
    rng = np.random.default_rng(1)
    w = wm.random(rng, *SHAPE)
    bundle = wm.build(tmp_path, sgd_graphs(w), target)
    assert bundle.roles["sgd"] == "update"  # inferred: assign writes variables, and the graph has feeds
    x = wm.random(rng, X_ROWS, SHAPE[0])
    for _ in range(4):
        g, lr = wm.random(rng, *SHAPE), np.array(0.05, np.float32)
        out = bundle.update({"g": g, "lr": lr})
        w = w - lr * g
        np.testing.assert_array_equal(out["W_next"], w)
        np.testing.assert_array_equal(bundle.variable("W"), w)
        np.testing.assert_allclose(bundle.run("infer", {"x": x})["y"], x @ w, rtol=1e-5, atol=1e-5)
    (var,) = bundle.manifest["variables"]
    assert (var["readers"], var["writers"]) == (["sgd", "infer"], ["init", "sgd"])


@pytest.mark.parametrize("target", wm.TARGETS)
def test_sgd_through_cli_run_and_load_bundle(tmp_path, target):
    rng = np.random.default_rng(2)
    w = wm.random(rng, *SHAPE)
    wm.save(tmp_path, {"init": wm.init_graph({"W": w}, {"W": "B"}), "sgd": wm.sgd_update(SHAPE),
                       "infer": wm.matmul_infer((X_ROWS, SHAPE[0]), {"W": w})})
    spec = {"name": "sgd", "target": target, "graphs": [
        {"name": "init", "role": "init", "model": "init.onnx"},
        {"name": "sgd", "role": "update", "model": "sgd.onnx", "assign": {"W_next": "W"}},
        {"name": "infer", "role": "infer", "model": "infer.onnx"}]}
    (tmp_path / "bundle.yaml").write_text(yaml.safe_dump(spec))
    result = CliRunner().invoke(app, ["run", str(tmp_path / "bundle.yaml")])
    assert result.exit_code == 0, result.output
    bundle = load_bundle(tmp_path / "build" / "sgd.bundle")
    x = wm.random(rng, X_ROWS, SHAPE[0])
    for _ in range(2):
        g, lr = wm.random(rng, *SHAPE), np.array(0.1, np.float32)
        bundle.update({"g": g, "lr": lr})
        w = w - lr * g
    np.testing.assert_allclose(bundle.run("infer", {"x": x})["y"], x @ w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("target", wm.TARGETS)
def test_adam_with_moments_as_variables_matches_onnx_reference(tmp_path, target):
    """The moments V and H are variables only the update graph reads and writes; T counts the steps."""
    rng = np.random.default_rng(3)
    w = wm.random(rng, *SHAPE)
    adam = wm.adam_update(SHAPE, lr=0.01)
    init = wm.init_graph({"W": w}, {"W": "A"})
    counter = helper.make_node("Constant", [], ["T"], value=helper.make_tensor("t", 7, [], [1]))  # int64 1
    init.graph.node.append(counter)
    init.graph.output.append(helper.make_tensor_value_info("T", 7, []))
    assign = {"W_new": "W", "V_new": "V", "H_new": "H", "T_next": "T"}
    bundle = wm.build(tmp_path, [bp.GraphWithOptions(init, name="init"),
                                 bp.GraphWithOptions(adam, name="adam", assign=assign),
                                 bp.GraphWithOptions(wm.matmul_infer((X_ROWS, SHAPE[0]), {"W": w}), name="infer")],
                      target)
    table = {v["name"]: v for v in bundle.manifest["variables"]}
    assert {n: (v["readers"], v["writers"], v["source"]) for n, v in table.items() if n in "VH"} == {
        "V": (["adam"], ["adam"], "initializer"), "H": (["adam"], ["adam"], "initializer")}
    reference = ReferenceEvaluator(adam)
    state = {"W": w, "V": np.zeros(SHAPE, np.float32), "H": np.zeros(SHAPE, np.float32), "T": np.array(1, np.int64)}
    x = wm.random(rng, X_ROWS, SHAPE[0])
    for _ in range(3):
        grad = wm.random(rng, *SHAPE)
        state = dict(zip("WVHT", reference.run(None, {"G": grad, **state}), strict=True))
        bundle.update({"G": grad})
        for name, value in state.items():
            np.testing.assert_allclose(bundle.variable(name), value, rtol=1e-5, atol=1e-6)
    assert int(bundle.variable("T")) == 4
    np.testing.assert_allclose(bundle.run("infer", {"x": x})["y"], x @ state["W"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("target", wm.TARGETS)
def test_lora_swap_twice_never_accumulates(tmp_path, target):
    rng = np.random.default_rng(4)
    base, rank = wm.random(rng, *SHAPE), 4
    graphs = wm.lora_graphs(base, rank, X_ROWS)
    bundle = wm.build(tmp_path, [bp.GraphWithOptions(m, name=n) for n, m in graphs.items()], target)
    assert bundle.roles == {"init": "init", "swap": "update", "infer": "infer"}
    x = wm.random(rng, X_ROWS, SHAPE[0])
    np.testing.assert_allclose(bundle.run("infer", {"x": x})["y"], x @ base, rtol=1e-5, atol=1e-5)
    for _ in range(2):
        b, a = wm.random(rng, SHAPE[0], rank), wm.random(rng, rank, SHAPE[1])
        bundle.update({"B": b, "A": a})
        np.testing.assert_allclose(bundle.run("infer", {"x": x})["y"], x @ (base + b @ a), rtol=1e-4, atol=1e-4)
    var = next(v for v in bundle.manifest["variables"] if v["name"] == "W")
    if target == "npu":  # the update writes the stored format: W lives as FRACTAL_NZ, read natively by MatMul
        assert var["format"] == "FRACTAL_NZ"
        stored = bundle.variables.values["W"]
        assert stored.shape == storage_shape("FRACTAL_NZ", SHAPE)
        np.testing.assert_allclose(from_format(stored, "FRACTAL_NZ", SHAPE), base + b @ a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("target", wm.TARGETS)
def test_writes_land_together_after_the_run(tmp_path, target):
    """A' = 2 B and B' = A + A' read the old A and B, whichever output the program computes first; a swap of
    two variables with different stored formats (passed through, converted at write) and a fed value written
    through ``assign`` work too."""
    rng = np.random.default_rng(5)
    a0, b0 = wm.random(rng, *SHAPE), wm.random(rng, *SHAPE)
    init = wm.init_graph({"A": a0, "B": b0}, {"A": "A", "B": "B"})
    mix = wm.model([helper.make_node("Add", ["B", "B"], ["A_next"]),
                    helper.make_node("Add", ["A", "A_next"], ["B_next"])],
                   {"A": a0, "B": b0}, {"B_next": b0, "A_next": a0}, name="mix")
    swap = wm.model([], {"A": a0, "B": b0}, {"A": a0, "B": b0}, name="swap")
    put = wm.model([], {"A.new": a0}, {"A.new": a0}, name="put")
    infer = wm.model([helper.make_node("MatMul", ["x", "A"], ["y"]), helper.make_node("Neg", ["B"], ["z"])],
                     {"x": ((X_ROWS, SHAPE[0]), "float32"), "A": a0, "B": b0},
                     {"y": ((X_ROWS, SHAPE[1]), "float32"), "z": b0}, name="infer")
    bundle = wm.build(tmp_path, [bp.GraphWithOptions(init, name="init"),
                                 bp.GraphWithOptions(mix, name="mix", assign={"A_next": "A", "B_next": "B"}),
                                 bp.GraphWithOptions(swap, name="swap", role="update", assign={"A": "B", "B": "A"}),
                                 bp.GraphWithOptions(put, name="put", role="update", assign={"A.new": "A"}),
                                 # three graphs reading A through MatMul: on npu A is stored FRACTAL_NZ
                                 *(bp.GraphWithOptions(infer, name=f"infer{i}") for i in range(3))], target)
    formats = {v["name"]: v["format"] for v in bundle.manifest["variables"]}
    assert formats == ({"A": "FRACTAL_NZ", "B": "ND"} if target == "npu" else {"A": "ND", "B": "ND"})
    bundle.update({}, graph="mix")
    a1, b1 = 2 * b0, a0 + 2 * b0
    np.testing.assert_allclose(bundle.variable("A"), a1, rtol=1e-6)
    np.testing.assert_allclose(bundle.variable("B"), b1, rtol=1e-6)
    bundle.update({}, graph="swap")
    np.testing.assert_allclose(bundle.variable("A"), b1, rtol=1e-6)
    np.testing.assert_allclose(bundle.variable("B"), a1, rtol=1e-6)
    fed = wm.random(rng, *SHAPE)
    bundle.update({"A.new": fed}, graph="put")
    x = wm.random(rng, X_ROWS, SHAPE[0])
    out = bundle.run("infer0", {"x": x})
    np.testing.assert_allclose(out["y"], x @ fed, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["z"], -a1, rtol=1e-6)


def test_a_variable_only_assign_writes_is_kept_when_listed_in_variables(tmp_path):
    """An EMA of W that no graph reads: an error naming it, unless the spec lists it under ``variables``."""
    rng = np.random.default_rng(6)
    w = wm.random(rng, *SHAPE)
    ema = wm.model([helper.make_node("Identity", ["W"], ["avg"])], {"W": w}, {"avg": w}, name="ema")
    wm.save(tmp_path, {"init": wm.init_graph({"W": w}, {"W": "A"}), "ema": ema,
                       "infer": wm.matmul_infer((X_ROWS, SHAPE[0]), {"W": w})})
    spec = {"name": "ema", "graphs": [{"name": "init", "role": "init", "model": "init.onnx"},
                                      {"name": "ema", "role": "update", "model": "ema.onnx",
                                       "assign": {"avg": "W_avg"}},
                                      {"name": "infer", "model": "infer.onnx"}]}
    (tmp_path / "bundle.yaml").write_text(yaml.safe_dump(spec))
    result = CliRunner().invoke(app, ["run", str(tmp_path / "bundle.yaml")])
    assert result.exit_code == 1
    line = result.output.strip().splitlines()[-1]  # progress lines go to stdout, the error to stderr
    assert line.startswith("error: GRAPH_INVALID: graph ema: ") and "'W_avg'" in line
    (tmp_path / "bundle.yaml").write_text(yaml.safe_dump({**spec, "variables": ["W", "W_avg"]}))
    result = CliRunner().invoke(app, ["run", str(tmp_path / "bundle.yaml")])
    assert result.exit_code == 0, result.output
    bundle = load_bundle(tmp_path / "build" / "ema.bundle")
    bundle.update({}, graph="ema")
    np.testing.assert_array_equal(bundle.variable("W_avg"), w)
