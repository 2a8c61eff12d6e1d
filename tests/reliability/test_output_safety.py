"""A build, exec -o, dag -o, run --profile and bundle_save_model never replace what the user owns.

A bundle may replace only a bundle or a path that does not exist (an empty directory too); everything else is
one PARAM_INVALID line naming the path and why, given before any task runs (no cache is even created), and the
project is byte-for-byte what it was.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from hostile import demo_project, snapshot
from onnx import numpy_helper
from typer.testing import CliRunner

import bundle_pipeline as bp
from bundle_pipeline.cli import app
from bundle_pipeline.errors import ParamInvalid


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def refused(result, path_fragment: str, why: str) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert lines[0].startswith("error: PARAM_INVALID: ") and path_fragment in lines[0] and why in lines[0], lines[0]
    return lines[0]


def add_external_data_model(project: Path) -> None:
    """ext.onnx adds x to a weight kept in ext.onnx.data (ONNX external data)."""
    m = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Add", ["x", "w"], ["y"])], "ext",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2000])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2000])],
        [numpy_helper.from_array(np.ones(2000, np.float32), "w")]), opset_imports=[onnx.helper.make_opsetid("", 17)])
    onnx.save(m, project / "ext.onnx", save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    (project / "ext.yaml").write_text("graphs:\n  - {name: infer, model: ext.onnx}\n")


# output (relative to the project, or a marker) -> what the refusal says
HOSTILE_OUTPUTS = {
    ".": "contains the spec",
    "..": "contains the spec",
    "bundle.yaml": "is the spec",
    "infer.onnx": "is the model of graph infer",
    "x.npy": "existing file that is not a bundle",
    "ext.onnx.data": "existing file that is not a bundle",
    "new_weights": "non-empty directory that is not a bundle",
    ".bundle-cache": "is the cache",
    ".bundle-cache/objects/ab/out.bundle": "inside the cache",
    "infer.onnx/out.bundle": "infer.onnx is not a directory",
    "@fifo": "FIFO",
    "@link-to-bundle": "symbolic link",
}


@pytest.mark.parametrize("output", sorted(HOSTILE_OUTPUTS))
def test_a_hostile_output_is_refused_before_anything_runs(tmp_path, output):
    project = demo_project(tmp_path)
    add_external_data_model(project)
    why = HOSTILE_OUTPUTS[output]
    if output == "@fifo":
        os.mkfifo(project / "pipe")
        output = "pipe"
    elif output == "@link-to-bundle":
        assert invoke("run", str(project / "bundle.yaml"), "--out", str(tmp_path / "real.bundle")).exit_code == 0
        (project / "link").symlink_to(tmp_path / "real.bundle")
        output = "link"
    before = snapshot(tmp_path)
    result = invoke("run", str(project / "bundle.yaml"), "--out", str(project / output))
    refused(result, str(project / output).rstrip("/."), why)
    assert snapshot(tmp_path) == before  # nothing written: no cache created, no task ran, nothing replaced


def test_an_output_in_the_spec_file_is_refused_the_same_way(tmp_path):
    project = demo_project(tmp_path)
    spec = project / "bundle.yaml"
    spec.write_text(spec.read_text().replace("output: build/demo.bundle", "output: ."))
    before = snapshot(tmp_path)
    refused(invoke("run", str(spec)), str(project), "contains the spec")
    assert snapshot(tmp_path) == before


def test_a_bundle_name_cannot_place_the_default_output_outside_the_spec_directory(tmp_path):
    project = demo_project(tmp_path)
    spec = project / "bundle.yaml"
    spec.write_text(spec.read_text().replace("name: demo", "name: ../../escaped").replace(
        "output: build/demo.bundle", ""))
    before = snapshot(tmp_path)
    refused(invoke("run", str(spec)), "bundle.yaml", "must be a plain name")
    assert snapshot(tmp_path) == before


def test_two_specs_writing_one_output_are_refused(tmp_path):
    project = demo_project(tmp_path)
    text = (project / "bundle.yaml").read_text()
    (project / "other.yaml").write_text(text.replace("name: demo", "name: other"))
    refused(invoke("run", str(project)), "demo.bundle", "both write this output")


def test_what_a_bundle_may_replace_new_paths_empty_directories_and_bundles(tmp_path):
    project = demo_project(tmp_path)
    spec = str(project / "bundle.yaml")
    (project / "empty").mkdir()
    for out in ("build/demo.bundle", "empty", "build/demo.bundle", "demo.zip", "demo.zip"):  # twice: a bundle
        result = invoke("run", spec, "--out", str(project / out))
        assert result.exit_code == 0, result.output
    from bundle_pipeline.runtime import load_bundle

    for out in ("build/demo.bundle", "empty", "demo.zip"):
        y = load_bundle(project / out).run("infer", {"x": np.load(project / "x.npy")})["y"]
        assert y.shape == (2, 4)


def test_a_cache_directory_that_is_not_a_cache_is_refused(tmp_path):
    project = demo_project(tmp_path)
    before = snapshot(tmp_path)
    refused(invoke("run", str(project / "bundle.yaml"), "--cache", str(project / "new_weights")), "new_weights",
            "not a bundle-pipeline cache")
    assert snapshot(tmp_path) == before


def test_exec_out_never_replaces_a_file_without_force_and_never_a_feed(tmp_path):
    project = demo_project(tmp_path)
    assert invoke("run", str(project / "bundle.yaml")).exit_code == 0
    bundle, x = str(project / "build" / "demo.bundle"), f"x={project / 'x.npy'}"
    refused(invoke("exec", bundle, "infer", "-i", x, "-o", str(project / "x.npy")), "x.npy", "takes a directory")
    out = tmp_path / "out"
    out.mkdir()
    (out / "y.npy").write_bytes(b"the user's own y")
    before = snapshot(tmp_path)
    refused(invoke("exec", bundle, "infer", "-i", x, "-o", str(out)), "y.npy", "pass --force")
    refused(invoke("exec", bundle, "infer", "-i", x, "-o", bundle), "demo.bundle", "inside the bundle")
    assert snapshot(tmp_path) == before
    np.save(out / "x.npy", np.load(project / "x.npy"))
    (out / "y.npy").unlink()
    os.link(out / "x.npy", out / "y.npy")  # the feed itself, under the output's name
    refused(invoke("exec", bundle, "infer", "-i", f"x={out / 'y.npy'}", "-o", str(out), "--force"), "y.npy",
            "it is feed x")
    (out / "y.npy").unlink()
    (out / "y.npy").write_bytes(b"replace me")
    assert invoke("exec", bundle, "infer", "-i", x, "-o", str(out), "--force").exit_code == 0
    assert np.load(out / "y.npy").shape == (2, 4)


def test_dag_out_and_profile_never_replace_what_they_did_not_write(tmp_path):
    project = demo_project(tmp_path)
    spec = str(project / "bundle.yaml")
    refused(invoke("dag", spec, "-o", spec, "--force"), "bundle.yaml", "is the spec")
    page = tmp_path / "dag.dot"
    page.write_text("mine")
    refused(invoke("dag", spec, "-o", str(page)), "dag.dot", "pass --force")
    assert page.read_text() == "mine"
    assert invoke("dag", spec, "-o", str(page), "--force").exit_code == 0 and "digraph" in page.read_text()
    link = tmp_path / "stdout-like"
    link.symlink_to(page)  # as /dev/stdout is: --force must not replace the link, nor write through it
    refused(invoke("dag", spec, "-o", str(link), "--force"), "stdout-like", "symbolic link")
    assert link.is_symlink() and "digraph" in page.read_text()
    assert invoke("run", spec).exit_code == 0
    refused(invoke("dag", spec, "-o", str(project / "build" / "demo.bundle" / "dag.dot")), "dag.dot",
            "inside the bundle")
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": 1}')
    refused(invoke("run", spec, "--profile", str(notes)), "notes.json", "not a trace this tool wrote")
    assert notes.read_text() == '{"mine": 1}'
    trace = tmp_path / "trace.json"
    for _ in range(2):  # a trace it wrote may be replaced by the next one
        assert invoke("run", spec, "--profile", str(trace), "--force").exit_code == 0
        assert "traceEvents" in json.loads(trace.read_text())


def test_bundle_save_model_replaces_only_bundles(tmp_path):
    project = demo_project(tmp_path)
    buf = bp.bundle_build_model([bp.GraphWithOptions(str(project / "infer.onnx"), role="infer")],
                                cache=tmp_path / "cache")
    precious = tmp_path / "notes.txt"
    precious.write_text("mine")
    with pytest.raises(ParamInvalid, match="existing file that is not a bundle"):
        bp.bundle_save_model(precious, buf)
    assert precious.read_text() == "mine"
    bp.bundle_save_model(tmp_path / "m.zip", buf)
    bp.bundle_save_model(tmp_path / "m.zip", buf)  # a bundle: replaced


def test_pack_removes_only_its_own_stale_stages(tmp_path):
    project = demo_project(tmp_path)
    build = project / "build"
    mine = build / ".demo.bundle.backup01"  # the stage naming pattern, but someone's data
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    stale = build / ".demo.bundle.k2j4h5g6"  # a stage a killed build left: bundle entries only
    (stale / "constants").mkdir(parents=True)
    (stale / "zarr.json").write_text("{}")
    day_ago = time.time() - 2 * 86400
    for p in (mine, mine / "notes.txt", stale):
        os.utime(p, (day_ago, day_ago))
    assert invoke("run", str(project / "bundle.yaml")).exit_code == 0
    assert (mine / "notes.txt").read_text() == "mine" and not stale.exists()
