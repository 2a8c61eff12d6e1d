"""The seed-style Python API: GraphWithOptions, bundle_build_model, bundle_save_model, runtime.load_bundle."""

from __future__ import annotations

import models
import numpy as np
import onnx
import pytest
from oracle import assert_outputs_close, ort_run

import bundle_pipeline as bp
from bundle_pipeline.runtime import load_bundle


def test_issue_example_flow(tmp_path):
    built = models.mlp(tmp_path / "mlp")
    buf = bp.bundle_build_model([bp.GraphWithOptions(str(built.init), role="init"),
                                 bp.GraphWithOptions(str(built.update), role="update"),
                                 bp.GraphWithOptions(str(built.graph().path), {"exec_disable_reused_memory": "1"})])
    assert buf.length == len(buf.data) > 0
    bp.bundle_save_model(tmp_path / "model.bundle", buf)
    b = load_bundle(tmp_path / "model.bundle")
    rng = np.random.default_rng(0)
    x = built.feeds(rng)
    assert_outputs_close(b.run("infer", x), ort_run(built.graph().path, x))
    new = built.new_weights(rng)
    b.update({f"{k}.new": v for k, v in new.items()})  # the only update graph: graph= may be omitted
    assert_outputs_close(b.run("infer", x), ort_run(built.graph().path, x, weights=new))


def test_roles_are_inferred_and_model_protos_accepted(tmp_path):
    built = models.mlp(tmp_path / "mlp")
    protos = [onnx.load(p) for p in (built.graph().path, built.update, built.init)]
    buf = bp.bundle_build_model([bp.GraphWithOptions(p, name=n) for p, n in zip(protos, ["infer", "update", "init"],
                                                                                   strict=True)])
    bp.bundle_save_model(tmp_path / "b.zip", buf)
    b = load_bundle(tmp_path / "b.zip")
    assert {g["name"]: g["role"] for g in b.manifest["graphs"]} == {"infer": "infer", "update": "update",
                                                                    "init": "init"}


def test_same_inputs_same_buffer(tmp_path):
    built = models.cnn(tmp_path / "cnn")
    graphs = [bp.GraphWithOptions(str(built.init), role="init"), bp.GraphWithOptions(str(built.update), role="update"),
              bp.GraphWithOptions(str(built.graph().path), role="infer")]
    assert bp.bundle_build_model(graphs).data == bp.bundle_build_model(graphs, cache=tmp_path / "c").data


def test_save_is_atomic_and_load_rejects_garbage(tmp_path):
    (tmp_path / "junk.bundle").write_bytes(b"not a bundle")
    with pytest.raises(bp.BundleError) as err:
        load_bundle(tmp_path / "junk.bundle")
    assert err.value.status == "BUNDLE_CORRUPT"
    with pytest.raises(bp.BundleError) as err:
        load_bundle(tmp_path / "missing.bundle")
    assert err.value.status == "IO_ERROR"
    with pytest.raises(bp.BundleError) as err:
        bp.bundle_build_model([])
    assert err.value.status == "PARAM_INVALID"


def test_update_graph_must_be_named_when_ambiguous(tmp_path):
    built = models.mlp(tmp_path / "mlp")
    g = [bp.GraphWithOptions(str(built.init), role="init"),
         bp.GraphWithOptions(str(built.update), role="update", name="u1"),
         bp.GraphWithOptions(str(built.update), role="update", name="u2"),
         bp.GraphWithOptions(str(built.graph().path), role="infer")]
    bp.bundle_save_model(tmp_path / "m.bundle", bp.bundle_build_model(g))
    b = load_bundle(tmp_path / "m.bundle")
    feeds = built.update_feeds(np.random.default_rng(0))
    with pytest.raises(bp.BundleError, match="name one with graph="):
        b.update(feeds)
    b.update(feeds, graph="u2")
    name = built.variables[0]
    np.testing.assert_array_equal(b.variable(name), feeds[f"{name}.new"])
