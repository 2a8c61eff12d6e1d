"""The npu target end to end: Ascend-style formats chosen per variable, TransData, native kernels over tiles,
precision modes; every bundle matches ONNX Runtime after init and after an update with standard-layout feeds."""

from __future__ import annotations

import json

import models
import numpy as np
import onnx
import pytest
from oracle import assert_outputs_close, ort_run
from typer.testing import CliRunner

import bundle_pipeline as bp
from bundle_pipeline.cli import app
from bundle_pipeline.formats import pad_mask
from bundle_pipeline.pipeline import build
from bundle_pipeline.runtime import load_bundle
from bundle_pipeline.runtime.executor import Executor
from bundle_pipeline.spec import load_spec

BUILDERS = {"mlp": models.mlp, "cnn": models.cnn, "attention": models.attention, "shared": models.shared}


def npu_bundle(built: models.BuiltBundle, tmp_path):
    spec = load_spec(built.spec, target="npu", cache=str(tmp_path / "cache"))
    build(spec)
    return spec, load_bundle(spec.output)


@pytest.mark.parametrize("builder", sorted(BUILDERS))
def test_npu_bundle_matches_ort_after_init_and_update(builder, tmp_path):
    built = BUILDERS[builder](tmp_path / builder)
    _, bundle = npu_bundle(built, tmp_path)
    rng = np.random.default_rng(3)
    for name, graph in built.infer.items():
        feeds = built.feeds(rng, name)
        assert_outputs_close(bundle.run(name, feeds), ort_run(graph.path, feeds))
    new = built.new_weights(rng)
    bundle.update({f"{k}.new": v for k, v in new.items()})  # users feed standard layouts
    for name, graph in built.infer.items():
        feeds = built.feeds(rng, name)
        mine = {k: v for k, v in new.items() if k in graph.variables}
        assert_outputs_close(bundle.run(name, feeds), ort_run(graph.path, feeds, weights=mine))
    for var, value in new.items():
        np.testing.assert_array_equal(bundle.variable(var), value)  # read back in the standard layout


def test_matmul_and_conv_weights_are_stored_fractal(tmp_path):
    built = models.cnn(tmp_path / "cnn")
    _, bundle = npu_bundle(built, tmp_path)
    formats = {v["name"]: v["format"] for v in bundle.manifest["variables"]}
    assert formats["conv1.weight"] == "FRACTAL_Z" and formats["fc.weight"] == "FRACTAL_NZ"
    stored = bundle.variables.values["conv1.weight"]
    assert stored.shape == (1 * 3 * 3, 1, 16, 16)  # (C1*KH*KW, N1, 16, 16) for OIHW [8, 3, 3, 3]
    infer = next(g for g in bundle.manifest["graphs"] if g["name"] == "infer")["program"]
    transdata_inputs = {s["inputs"][0] for s in infer["steps"] if s["op"] == "TransData"}
    assert not transdata_inputs & {"conv1.weight", "fc.weight"}  # read in place, never converted per run
    update = next(g for g in bundle.manifest["graphs"] if g["name"] == "update")["program"]
    writes = {s["outputs"][0]: s["attrs"]["dst_format"] for s in update["steps"] if s["op"] == "TransData"}
    assert writes == {"conv1.weight": "FRACTAL_Z", "fc.weight": "FRACTAL_NZ"}  # the update writes stored bytes


class PaddingChecker(Executor):
    """Asserts after every kernel that the padding lanes of formatted results are zero."""

    checked = 0

    def store(self, step, name, value):
        view = super().store(step, name, value)
        plan = self.program["values"][name]
        if "format" in plan:
            assert not np.any(view[pad_mask(plan["format"], tuple(plan["shape"]))]), (step["node"], name)
            PaddingChecker.checked += 1
        return view


def test_padding_lanes_are_zero_after_every_kernel(tmp_path):
    built = models.cnn(tmp_path / "cnn")
    _, bundle = npu_bundle(built, tmp_path)
    infer = next(g for g in bundle.manifest["graphs"] if g["name"] == "infer")
    checker = PaddingChecker(infer["program"], bundle.executors["infer"].fixed, bundle.variables)
    feeds = built.feeds(np.random.default_rng(0))
    assert_outputs_close(checker.run(feeds), ort_run(built.graph().path, feeds))
    assert PaddingChecker.checked > 0


def _infer_with(built, tmp_path, name, options):
    buf = bp.bundle_build_model([bp.GraphWithOptions(str(built.init), role="init"),
                                 bp.GraphWithOptions(str(built.update), role="update"),
                                 bp.GraphWithOptions(str(built.graph().path), options, role="infer", name="infer")],
                                target="npu", cache=tmp_path / "cache")
    bp.bundle_save_model(tmp_path / f"{name}.bundle", buf)
    return load_bundle(tmp_path / f"{name}.bundle")


def test_precision_modes_have_documented_tolerances(tmp_path):
    """must_keep_origin_dtype: rtol 1e-4 vs ORT fp32. allow_fp32_to_fp16 (cube inputs fp16, fp32 accumulation):
    within 1e-2 relative to the output scale. force_fp16 (every float op rounded to fp16): within 2e-2."""
    built = models.attention(tmp_path / "att")
    feeds = built.feeds(np.random.default_rng(1))
    expected = ort_run(built.graph().path, feeds)["y"]
    outs = {mode: _infer_with(built, tmp_path, mode, {"precision_mode": mode}).run("infer", feeds)["y"]
            for mode in ("must_keep_origin_dtype", "allow_fp32_to_fp16", "force_fp16")}
    np.testing.assert_allclose(outs["must_keep_origin_dtype"], expected, rtol=1e-4, atol=1e-5)
    scale = np.abs(expected).max()
    errors = {mode: np.abs(out - expected).max() / scale for mode, out in outs.items()}
    assert 1e-6 < errors["allow_fp32_to_fp16"] <= 1e-2, errors
    assert 1e-6 < errors["force_fp16"] <= 2e-2, errors
    assert not np.array_equal(outs["allow_fp32_to_fp16"], outs["force_fp16"])


@pytest.mark.parametrize("name", ["magika", "rapidocr_cls"])
def test_real_models_on_npu_match_ort(name, real_models, tmp_path):
    model = real_models[name]
    shape = ";".join(f"{k}:{','.join(map(str, v))}" for k, v in model.input_shapes.items())
    buf = bp.bundle_build_model([bp.GraphWithOptions(str(model.path), {"input_shape": shape}, role="infer",
                                                     name="infer")], target="npu", cache=tmp_path / "cache")
    bp.bundle_save_model(tmp_path / "m.bundle", buf)
    bundle = load_bundle(tmp_path / "m.bundle")
    feeds = model.feeds(np.random.default_rng(5))
    assert_outputs_close(bundle.run("infer", feeds), ort_run(model.static_model(), feeds), rtol=1e-4, atol=1e-5)
    assert sum(bool(s.get("native")) for s in bundle.manifest["graphs"][0]["program"]["steps"]) > 0


def test_inspect_shows_formats_transdata_and_tiling(tmp_path):
    built = models.cnn(tmp_path / "cnn")
    spec, _ = npu_bundle(built, tmp_path)
    info = json.loads(CliRunner().invoke(app, ["inspect", spec.output, "--json"]).stdout)
    assert info["target"] == "npu"
    infer = next(g for g in info["graphs"] if g["name"] == "infer")
    assert {"name", "role", "transdata", "arena_bytes"} <= set(infer)
    assert infer["transdata"] > 0 and infer["transdata_bytes"] > 0
    tiled = {k["op"]: k for k in infer["kernels"] if k["native"]}
    assert {"Conv", "Gemm"} <= set(tiled)
    assert all(v % 16 == 0 for v in tiled["Conv"]["tiling"].values())
    assert {v["name"]: v["format"] for v in info["variables"]}["fc.weight"] == "FRACTAL_NZ"


def test_a_constant_read_in_a_target_format_is_converted_once_at_build(tmp_path):
    rng = np.random.default_rng(0)
    w = onnx.numpy_helper.from_array(rng.standard_normal((40, 24)).astype(np.float32), "w")
    graph = onnx.helper.make_graph([onnx.helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                                   [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [5, 40])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [5, 24])], [w])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    buf = bp.bundle_build_model([bp.GraphWithOptions(model, role="infer", name="infer")], target="npu",
                                cache=tmp_path / "cache")
    bp.bundle_save_model(tmp_path / "c.bundle", buf)
    bundle = load_bundle(tmp_path / "c.bundle")
    (const,) = bundle.manifest["constants"].values()
    assert const["format"] == "FRACTAL_NZ" and const["storage"] == [2, 3, 16, 16]
    x = rng.standard_normal((5, 40)).astype(np.float32)
    assert_outputs_close(bundle.run("infer", {"x": x}), ort_run(model, {"x": x}))
