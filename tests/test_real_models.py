"""Real models no one here wrote (ONNX files shipped in PyPI wheels), built as one-infer-graph bundles, match ORT."""

from __future__ import annotations

import numpy as np
import pytest
from oracle import assert_outputs_close, ort_run

import bundle_pipeline as bp
from bundle_pipeline.runtime import load_bundle


def _input_shape_option(model) -> str:
    return ";".join(f"{name}:{','.join(map(str, shape))}" for name, shape in model.input_shapes.items())


@pytest.mark.parametrize("executor", ["auto", "reference"])
@pytest.mark.parametrize("name", ["magika", "rapidocr_cls"])
def test_real_model_bundle_matches_ort(name, executor, real_models, tmp_path, tmp_cache):
    model = real_models[name]
    options = {"input_shape": _input_shape_option(model)}
    buf = bp.bundle_build_model([bp.GraphWithOptions(str(model.path), options, role="infer", name="infer")],
                                cache=tmp_cache)
    bp.bundle_save_model(tmp_path / "model.bundle", buf)
    bundle = load_bundle(tmp_path / "model.bundle", executor=executor)
    assert bundle.executor_of("infer") == ("onnxruntime" if executor == "auto" else "reference")
    rng = np.random.default_rng(3)
    for _ in range(2):
        feeds = model.feeds(rng)
        assert_outputs_close(bundle.run("infer", feeds), ort_run(model.static_model(), feeds), rtol=1e-4, atol=1e-5)


def test_dynamic_batch_without_input_shape_names_the_input(real_models, tmp_cache):
    with pytest.raises(bp.BundleError) as err:
        bp.bundle_build_model([bp.GraphWithOptions(str(real_models["magika"].path), role="infer")], cache=tmp_cache)
    assert err.value.status == "GRAPH_INVALID"
    assert "input_shape" in str(err.value) and "bytes" in str(err.value)
