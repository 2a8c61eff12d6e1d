"""Builds stay bounded and every bad input ends in one `error: STATUS: ...` line.

Constant folding never materialises what a node's input values claim (ConstantOfShape / Expand / Tile of
[100000, 100000]): the node is left to run time, the bundle builds in bounded memory, and loading it says how
much memory it needs (not "corrupt"). YAML alias bombs and recursive aliases are refused before expansion; FIFOs
and devices as specs, models, external data and feeds are refused without blocking; external data outside the
model's directory, absolute or through a symlink, is one GRAPH_INVALID line; .npy feeds are checked against
their real size and anything else is named; opsets the kernels do not know are refused; a dtype conflict
between graphs is VARIABLE_CONFLICT naming both.
"""

from __future__ import annotations

import os
import pickle
import re
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from hostile import demo_project, limited_cli, one_error, snapshot
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from bundle_pipeline.cli import app
from bundle_pipeline.errors import BundleError
from bundle_pipeline.pipeline import build
from bundle_pipeline.runtime import load_bundle
from bundle_pipeline.spec import load_spec

BUILD_PEAK_LIMIT = 256 << 20  # traced allocations of one build of these tiny models; the bombs claim 37+ GiB


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def model(nodes: list, inits: list, x_shape: list | None = None, y_shape: list | None = None,
          opsets: dict[str, int] | None = None) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape or [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape or [1])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid(d, v) for d, v in (opsets or {"": 17}).items()])


def project(tmp_path: Path, m: onnx.ModelProto, spec_extra: str = "") -> Path:
    save(m, tmp_path / "m.onnx")
    spec = tmp_path / "bundle.yaml"
    spec.write_text(f"name: b\n{spec_extra}graphs:\n  - {{name: infer, model: m.onnx}}\n")
    return spec


def ints(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def reduce_to_y(big: str) -> list:
    return [helper.make_node("ReduceSum", [big], ["r"], keepdims=0), helper.make_node("Add", ["x", "r"], ["y"])]


FOLD_BOMBS = {  # each would be a [100000, 100000] float32 tensor (37 GiB) if folded at build time
    "ConstantOfShape": ([helper.make_node("ConstantOfShape", ["s"], ["big"])], [ints("s", [100000, 100000])]),
    "Expand": ([helper.make_node("Expand", ["one", "s"], ["big"])],
               [numpy_helper.from_array(np.ones(1, np.int64), "one"), ints("s", [100000, 100000])]),
    "Tile": ([helper.make_node("Tile", ["one", "s"], ["big"])],
             [numpy_helper.from_array(np.ones((1, 1), np.int64), "one"), ints("s", [100000, 100000])]),
}


@pytest.mark.parametrize("op", sorted(FOLD_BOMBS))
def test_folding_never_materialises_a_huge_constant(tmp_path, op):
    nodes, inits = FOLD_BOMBS[op]
    if op != "ConstantOfShape":
        nodes = [*nodes, helper.make_node("Cast", ["big"], ["bigf"], to=TensorProto.FLOAT)]
    spec = project(tmp_path, model([*nodes, *reduce_to_y("big" if op == "ConstantOfShape" else "bigf")], inits))
    tracemalloc.start()
    try:
        report = build(load_spec(spec, cache=str(tmp_path / "cache")), scheduler="sync")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < BUILD_PEAK_LIMIT, f"the build allocated {peak} bytes"
    with pytest.raises(BundleError) as err:  # the node runs at load/run time, which says what it needs
        load_bundle(report.bundle)
    needs = re.search(r"needs ([\d.]+) GiB of memory", str(err.value))
    assert err.value.status == "RUNTIME_ERROR" and needs and float(needs[1]) >= 37.2, err.value


def test_folding_under_an_address_space_limit(tmp_path):
    nodes, inits = FOLD_BOMBS["ConstantOfShape"]
    spec = project(tmp_path, model([*nodes, *reduce_to_y("big")], inits))
    proc = limited_cli("run", str(spec), "--scheduler", "sync")
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = one_error(limited_cli("exec", str(tmp_path / "build" / "b.bundle"), "infer"))
    assert line.startswith("error: RUNTIME_ERROR: ") and "--max-memory" in line and "corrupt" not in line


def test_a_huge_declared_input_is_not_called_corrupt(tmp_path):
    """A valid bundle whose input is [100000, 100000]: inspect describes it, loading says what it needs."""
    m = model([helper.make_node("Relu", ["x"], ["y"])], [], ["n", 100000], ["n", 100000])
    spec = project(tmp_path, m)
    option = 'options: {input_shape: "x:100000,100000"}'
    spec.write_text(spec.read_text().replace("model: m.onnx}", f"model: m.onnx, {option}}}"))
    assert CliRunner().invoke(app, ["run", str(spec)]).exit_code == 0
    bundle = str(tmp_path / "build" / "b.bundle")
    assert CliRunner().invoke(app, ["inspect", bundle, "--json"]).exit_code == 0
    result = CliRunner().invoke(app, ["exec", bundle, "infer"])
    assert result.exit_code == 1 and "RUNTIME_ERROR" in result.stderr and "needs" in result.stderr
    assert "BUNDLE_CORRUPT" not in result.stderr and "malformed" not in result.stderr


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """A 'billion laughs' YAML value: ``width ** levels`` leaves from a few hundred bytes."""
    lines = ["&l0 [" + ", ".join(["1"] * width) + "]"]
    lines += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "[" + ", ".join(lines) + "]"


SPEC_BOMBS = {
    "alias bomb in an option value": f"name: b\ngraphs:\n  - {{name: infer, model: m.onnx, options: "
                                     f"{{input_shape: {alias_bomb()}}}}}\n",
    "alias bomb under variables": f"name: b\nvariables: {alias_bomb()}\ngraphs:\n  - {{model: m.onnx}}\n",
    "alias bomb as a key's value": f"name: b\ntarget: {alias_bomb()}\ngraphs:\n  - {{model: m.onnx}}\n",
    "recursive alias": "name: b\ngraphs: &g [*g]\n",
    "nesting too deep": "name: b\ngraphs: " + "[" * 50000 + "]" * 50000 + "\n",
}


@pytest.mark.parametrize("case", sorted(SPEC_BOMBS))
def test_yaml_bombs_are_refused_before_expansion(tmp_path, case):
    save(model([helper.make_node("Relu", ["x"], ["y"])], []), tmp_path / "m.onnx")
    (tmp_path / "bundle.yaml").write_text(SPEC_BOMBS[case])
    tracemalloc.start()
    try:
        result = CliRunner().invoke(app, ["status", str(tmp_path / "bundle.yaml")])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.exit_code == 1 and result.stderr.startswith("error: PARAM_INVALID: "), result.output
    assert len(result.stderr.strip().splitlines()) == 1 and len(result.stderr) < 3000
    assert peak < 128 << 20, f"parsing the spec allocated {peak} bytes"


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


@pytest.mark.slow  # CLI processes (a FIFO read would block: a subprocess with a timeout fails instead of hanging)
def test_special_files_as_specs_models_and_external_data_never_block(tmp_path):
    save(model([helper.make_node("Relu", ["x"], ["y"])], []), tmp_path / "m.onnx")
    line = one_error(limited_cli("run", str(fifo(tmp_path / "spec.yaml"))))
    assert line.startswith("error: IO_ERROR: ") and "FIFO" in line
    for name, target in (("fifo-model", fifo(tmp_path / "pipe.onnx")), ("device-model", Path("/dev/zero"))):
        spec = tmp_path / f"{name}.yaml"
        spec.write_text(f"graphs:\n  - {{name: infer, model: {target}}}\n")
        line = one_error(limited_cli("run", str(spec)))
        assert line.startswith("error: IO_ERROR: ") and ("FIFO" in line or "character device" in line), line
    ext = external_model(tmp_path, "weights.bin")
    (tmp_path / "weights.bin").unlink()
    fifo(tmp_path / "weights.bin")
    line = one_error(limited_cli("run", str(ext)))
    assert line.startswith("error: IO_ERROR: ") and "FIFO" in line, line


def external_model(tmp_path: Path, location: str, n: int = 2000) -> Path:
    """ext.onnx adds x to a weight stored as external data at ``location``; its spec path."""
    m = model([helper.make_node("Add", ["x", "w"], ["y"])], [numpy_helper.from_array(np.ones(n, np.float32), "w")],
              [n], [n])
    onnx.save(m, tmp_path / "ext.onnx", save_as_external_data=True, location="weights.bin", size_threshold=0)
    m = onnx.load(tmp_path / "ext.onnx", load_external_data=False)
    for entry in m.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    save(m, tmp_path / "ext.onnx")
    (tmp_path / "ext.yaml").write_text("name: ext\ngraphs:\n  - {name: infer, model: ext.onnx}\n")
    return tmp_path / "ext.yaml"


@pytest.mark.parametrize("n", [4, 2000], ids=["small tensor (inlined)", "large tensor (kept external)"])
@pytest.mark.parametrize("where", ["outside", "absolute", "symlink"])
def test_external_data_outside_the_model_directory_is_one_line(tmp_path, where, n):
    models = tmp_path / "models"
    models.mkdir()
    secret = tmp_path / "secret.bin"
    np.ones(n, np.float32).tofile(secret)
    (models / "link.bin").symlink_to(secret)
    location = {"outside": "../secret.bin", "absolute": str(secret), "symlink": "link.bin"}[where]
    spec = external_model(models, location, n)
    before = snapshot(tmp_path, skip=(models / ".bundle-cache",))
    result = CliRunner().invoke(app, ["run", str(spec)])
    assert result.exit_code == 1 and result.stderr.startswith("error: GRAPH_INVALID: "), result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "ValidationError" not in result.output
    assert {"outside": "points outside", "absolute": "absolute path", "symlink": "symbolic link"}[where] \
        in result.stderr
    assert snapshot(tmp_path, skip=(models / ".bundle-cache",)) == before


def npy_with_header(path: Path, shape: tuple[int, ...], data: bytes = b"\0" * 16) -> Path:
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})
        f.write(data)
    return path


@pytest.fixture(scope="module")
def demo_bundle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("feeds")
    proj = demo_project(root)
    return Path(build(load_spec(proj / "bundle.yaml", cache=str(root / "cache")), scheduler="sync").bundle)


def feed_cases(tmp: Path) -> dict[str, tuple[Path, str]]:
    np.savez(tmp / "arrays.npz", x=np.ones((2, 4), np.float32))
    with open(tmp / "objects.npy", "wb") as f:
        np.save(f, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp / "data.pkl").write_bytes(pickle.dumps(np.ones(3)))
    (tmp / "notes.txt").write_text("1 2 3\n")
    np.save(tmp / "short.npy", np.ones((2, 4), np.float32))
    (tmp / "short.npy").write_bytes((tmp / "short.npy").read_bytes()[:-4])
    np.save(tmp / "fields.npy", np.zeros(2, dtype=[("a", "<f4"), ("b", "<i4")]))
    return {
        "a header claiming 37 GiB": (npy_with_header(tmp / "big.npy", (100000, 100000)), "declares float32"),
        "an npz archive": (tmp / "arrays.npz", "a zip archive"),
        "a pickled object array": (tmp / "objects.npy", "object array"),
        "a pickle": (tmp / "data.pkl", "a Python pickle"),
        "a text file": (tmp / "notes.txt", "a text file"),
        "a truncated array": (tmp / "short.npy", "holds 28"),
        "a structured array": (tmp / "fields.npy", "structured array"),
        "a FIFO": (fifo(tmp / "pipe.npy"), "FIFO"),
        "an empty file": (tmp / "empty.npy", "an empty file"),
    }


def test_feeds_are_checked_before_they_are_read(demo_bundle, tmp_path):
    (tmp_path / "empty.npy").write_bytes(b"")
    for case, (path, what) in feed_cases(tmp_path).items():
        tracemalloc.start()
        try:
            result = CliRunner().invoke(app, ["exec", str(demo_bundle), "infer", "-i", f"x={path}"])
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 1 and len(lines) == 1, (case, result.output)
        assert lines[0].startswith("error: PARAM_INVALID: feed x: ") and what in lines[0], (case, lines[0])
        assert peak < 64 << 20, (case, peak)  # the 37 GiB header is read, its array never allocated


@pytest.mark.parametrize("opsets", [{"": 99}, {"": 17, "ai.onnx.ml": 99}, {"": 0}], ids=["ai.onnx 99", "ml 99", "0"])
def test_opsets_the_kernels_do_not_know_are_refused(tmp_path, opsets):
    spec = project(tmp_path, model([helper.make_node("Relu", ["x"], ["y"])], [], opsets=opsets))
    result = CliRunner().invoke(app, ["run", str(spec)])
    assert result.exit_code == 1 and result.stderr.startswith("error: UNSUPPORTED_OP: "), result.output
    assert f"opset {next(v for v in opsets.values() if v in (0, 99))}" in result.stderr


def test_a_dtype_conflict_between_graphs_is_variable_conflict_naming_both(tmp_path):
    init = helper.make_graph([helper.make_node("Constant", [], ["W"], value=ints("v", [0, 1, 2, 3]))], "init", [],
                             [helper.make_tensor_value_info("W", TensorProto.INT64, [4])])
    save(helper.make_model(init, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "init.onnx")
    save(model([helper.make_node("Add", ["x", "W"], ["y"])], [numpy_helper.from_array(np.ones(4, np.float32), "W")],
               [4], [4]), tmp_path / "infer.onnx")
    (tmp_path / "bundle.yaml").write_text("graphs:\n  - {name: init, role: init, model: init.onnx}\n"
                                          "  - {name: infer, model: infer.onnx}\n")
    result = CliRunner().invoke(app, ["run", str(tmp_path / "bundle.yaml")])
    assert result.exit_code == 1, result.output
    assert result.stderr.strip() == ("error: VARIABLE_CONFLICT: variable W: variable 'W' is int64[4] in graph init "
                                     "but float32[4] in graph infer")


def test_a_huge_spec_file_is_refused_unread(tmp_path):
    spec = tmp_path / "bundle.yaml"
    with open(spec, "wb") as f:
        f.truncate(1 << 30)
    result = CliRunner().invoke(app, ["status", str(spec)])
    assert result.exit_code == 1 and "PARAM_INVALID" in result.stderr and "more than the" in result.stderr


def test_a_zip_is_not_taken_for_a_feed_or_a_spec(tmp_path):
    with zipfile.ZipFile(tmp_path / "bundle.yaml", "w") as zf:
        zf.writestr("x", "y")
    result = CliRunner().invoke(app, ["status", str(tmp_path / "bundle.yaml")])
    assert result.exit_code == 1 and result.stderr.startswith("error: PARAM_INVALID: "), result.output
