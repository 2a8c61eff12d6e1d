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


@pytest.mark.slow
@pytest.mark.parametrize("name", ["magika", "rapidocr_cls"])
def test_a_refresh_is_seen_by_every_graph_before_and_after_the_owned_sessions_are_rebuilt(
        name, real_models, tmp_path, tmp_cache):
    """Split into init/update/two infer graphs on cpu: after a refresh of every variable, the bound sessions (the
    builder held off by the store's lock) and then the rebuilt owned sessions (ORT prepacks and fuses, e.g.
    rapidocr's Conv+BatchNorm, a copy of the new weights) match ORT on the model with the new weights."""
    from conftest import substitute_weights

    model = real_models[name]
    static = model.static_model()
    graphs = bp.convert_to_weight_refreshable_graphs(static)
    options = {"input_shape": _input_shape_option(model)}
    infers = [bp.GraphWithOptions(graphs.infer, options, role="infer", name=n) for n in ("a", "b")]
    buf = bp.bundle_build_model([bp.GraphWithOptions(graphs.var_init, role="init", name="init"),
                                 bp.GraphWithOptions(graphs.var_update, role="update", name="update"), *infers],
                                target="cpu", cache=tmp_cache)
    bp.bundle_save_model(tmp_path / "model.bundle", buf)
    bundle = load_bundle(tmp_path / "model.bundle")
    rng = np.random.default_rng(5)
    new = {v: (bundle.variable(v) * (1 + 0.05 * rng.standard_normal(bundle.variable(v).shape))).astype(
        bundle.variable(v).dtype) for v in graphs.variables}
    feeds = model.feeds(rng)
    expected = ort_run(substitute_weights(static, new), feeds)
    assert not np.allclose(next(iter(bundle.run("a", feeds).values())), next(iter(expected.values())))
    with bundle.variables.lock:
        bundle.update({f"{k}.new": v for k, v in new.items()})
        for graph in ("a", "b"):
            assert_outputs_close(bundle.run(graph, feeds), expected, rtol=1e-4, atol=1e-5)
            assert bundle.executors[graph].last_session == "bound"
    assert bundle.wait_owned(timeout=120)
    for graph in ("a", "b"):
        assert_outputs_close(bundle.run(graph, feeds), expected, rtol=1e-4, atol=1e-5)
        assert bundle.executors[graph].last_session == "owned"
