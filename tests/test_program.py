"""The program schema (bundle_pipeline/program/): every step kind round-trips through the one encoder and
decoder exactly as codegen wrote it, the decoder refuses what is malformed or unknown as one BUNDLE_CORRUPT
line naming graph and step, and the constants both sides share are defined once."""

from __future__ import annotations

import ast
import copy
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest

import bundle_pipeline
from bundle_pipeline import layouts, program
from bundle_pipeline.api import GraphWithOptions, bundle_build_model, bundle_save_model
from bundle_pipeline.errors import BundleCorrupt
from bundle_pipeline.program import ControlStep, KernelStep, TransDataStep, decode_program, encode
from bundle_pipeline.runtime import approx, load_bundle
from bundle_pipeline.runtime.executor import Executor, VariableStore
from bundle_pipeline.runtime.validate import validate_manifest
from bundle_pipeline.stages import pack

_W = ", ".join(f"{v:.3f}" for v in np.random.RandomState(0).randn(32 * 32) * 0.1)
# every step kind: kernels (a cube MatMul, an approximable Tanh, a Relu), If / Loop / Scan with bodies, and on
# npu native kernels and TransData steps
EVERY_KIND = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
agraph (bool c, int64 n, float[16,32] x, float[4,3] s) => (float[16,32] y, float[16,32] z, float[3] r,
                                                           float[?,3] q, float[3] acc, float[4,3] sq) {
  w = Constant<value = float[32,32] {W}>()
  m = MatMul(x, w)
  t = Tanh(m)
  y = Relu(t)
  z = If(c) <
    then_branch = then_g () => (float[16,32] a) { a = MatMul(y, w) },
    else_branch = else_g () => (float[16,32] b) { b = Sigmoid(m) }
  >
  k = Constant<value = float[3] {0.5, -1.0, 2.0}>()
  one = Constant<value = bool {1}>()
  r, q = Loop(n, one, k) <
    body = loop_body (int64 i, bool ci, float[3] yi) => (bool co, float[3] yo, float[3] so) {
      co = Identity(ci)
      yo = Add(yi, k)
      so = Exp(yo)
    }
  >
  zero = Constant<value = float[3] {0.0, 0.0, 0.0}>()
  acc, sq = Scan(zero, s) <num_scan_inputs = 1,
    body = scan_body (float[3] a_in, float[3] e) => (float[3] a_out, float[3] e2) {
      a_out = Add(a_in, e)
      e2 = Mul(e, e)
    }
  >
}""".replace("{W}", "{" + _W + "}"))
MODES = {"precision_mode": "force_fp16", "op_select_implmode": "high_performance"}


def _build(tmp_path: Path, target: str, options: dict[str, str]):
    buffer = bundle_build_model([GraphWithOptions(EVERY_KIND, options, role="infer", name="g")], target=target,
                                cache=str(tmp_path / "cache"))
    path = tmp_path / f"{target}-{len(options)}.bundle.zip"
    bundle_save_model(str(path), buffer)
    return load_bundle(str(path))


def _feeds() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {"c": np.array(False), "n": np.array(3, np.int64), "x": rng.standard_normal((16, 32)).astype(np.float32),
            "s": rng.standard_normal((4, 3)).astype(np.float32)}


def _walk(steps):
    for step in steps:
        yield step
        for body in getattr(step, "bodies", {}).values():
            yield from _walk(body.steps)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("program")
    return {target: _build(tmp, target, MODES) for target in ("cpu", "npu")}


@pytest.mark.parametrize("target", ["cpu", "npu"])
def test_every_step_kind_round_trips_exactly(built, target):
    bundle = built[target]
    stored = bundle.manifest["graphs"][0]["program"]
    typed = decode_program(stored, "g")
    assert encode(typed) == stored  # the one encoder writes exactly what the bundle holds
    assert typed == bundle.executors["g"].program  # and the loader decoded the same program once
    steps = list(_walk(typed.steps))
    kinds = {type(s) for s in steps}
    assert {KernelStep, ControlStep} <= kinds and (TransDataStep in kinds) == (target == "npu")
    assert {s.op for s in steps if isinstance(s, ControlStep)} == {"If", "Loop", "Scan"}
    kernels = [s for s in steps if isinstance(s, KernelStep)]
    assert {"fp16", "fp16_round"} <= {s.precision for s in kernels}
    assert {s.op for s in kernels if s.impl == "high_performance"} == {"Tanh", "Sigmoid", "Exp"}
    assert any(s.native for s in kernels) == (target == "npu")
    body_step = next(s for s in steps if s.op == "Sigmoid")  # inside else_branch of the If
    assert body_step not in typed.steps


@pytest.mark.parametrize("target", ["cpu", "npu"])
def test_the_program_runs_like_onnxruntime(target, tmp_path):
    feeds = _feeds()
    got = _build(tmp_path, target, {}).run("g", feeds)
    want = ort.InferenceSession(EVERY_KIND.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    for out, expected in zip(EVERY_KIND.graph.output, want, strict=True):
        np.testing.assert_allclose(got[out.name], expected, rtol=1e-5, atol=1e-5)


def _manifest(built) -> dict:
    return copy.deepcopy(built["cpu"].manifest)


def _step(p: dict, op: str) -> dict:
    return next(s for s in p["steps"] if s["op"] == op)


def _relu(p: dict) -> dict:
    return _step(p, "Relu")


def _then(p: dict) -> dict:
    return _step(p, "If")["bodies"]["then_branch"]["steps"][0]


# (what, mutation of the program, the step the message must name, what it must say); the model's nodes are
# unnamed, so import names them op_index
REFUSED = [
    ("unknown precision", lambda p: _relu(p).update(precision="fp8"), "Relu_3", "precision 'fp8'"),
    ("unknown precision on a control step", lambda p: _step(p, "If").update(precision="bf16"), "If_4", "precision"),
    ("unknown impl", lambda p: _relu(p).update(impl="fast"), "Relu_3", "implementation 'fast'"),
    ("impl of an op with no approximation", lambda p: _relu(p).update(impl="high_performance"), "Relu_3",
     "no Relu kernel"),
    ("unknown field", lambda p: _relu(p).update(precison="fp16"), "Relu_3", "unknown field 'precison'"),
    ("unknown kind: bodies on a kernel", lambda p: _relu(p).update(bodies={}), "Relu_3", "only If, Loop"),
    ("unknown kind: a layout without a native kernel",
     lambda p: _relu(p).update(layout={"in_formats": ["ND"], "in_shapes": [[16, 32]], "out_format": "ND",
                                       "out_shape": [16, 32]}), "Relu_3", "layout without a native kernel"),
    ("native kernel without a layout", lambda p: _relu(p).update(native=True), "Relu_3", "no layout"),
    ("control step without its bodies", lambda p: _step(p, "If")["bodies"].pop("else_branch"), "If_4",
     "needs bodies else_branch, then_branch"),
    ("missing inputs", lambda p: _relu(p).pop("inputs"), "Relu_3", "input list"),
    ("missing attrs", lambda p: _relu(p).pop("attrs"), "Relu_3", "'attrs'"),
    ("missing node name", lambda p: _relu(p).pop("node"), "step 2", "no node name"),
    ("missing op", lambda p: _relu(p).pop("op"), "Relu_3", "has no op"),
    ("inputs not a list of names", lambda p: _relu(p).update(inputs="t"), "Relu_3", "input list"),
    ("tiling of the wrong type", lambda p: _relu(p).update(tiling=[1]), "Relu_3", "bad tiling"),
    ("native of the wrong type", lambda p: _relu(p).update(native="yes"), "Relu_3", "'native'"),
    ("domain of the wrong type", lambda p: _relu(p).update(domain=7), "Relu_3", "domain"),
    ("a bad step in a body", lambda p: _then(p).update(precision="fp64"), "then_branch of node 'If_4'",
     "precision 'fp64'"),
]


@pytest.mark.parametrize("what, corrupt, node, says", REFUSED, ids=[r[0] for r in REFUSED])
def test_the_decoder_refuses_with_one_line_naming_graph_and_step(built, what, corrupt, node, says):
    manifest = _manifest(built)
    corrupt(manifest["graphs"][0]["program"])
    for attempt in (lambda: validate_manifest(manifest, "b.bundle"),
                    lambda: decode_program(manifest["graphs"][0]["program"], "g", "b.bundle"),
                    lambda: Executor(manifest["graphs"][0]["program"], {}, VariableStore([]))):
        with pytest.raises(BundleCorrupt) as err:
            attempt()
        line = err.value.one_line()
        assert err.value.status == "BUNDLE_CORRUPT" and "\n" not in line
        assert "graph 'g'" in line and node in line and says in line, line


@pytest.mark.parametrize("field, value, says", [
    ("arena_bytes", "12", "arena_bytes"), ("opset", True, "opset"), ("reuse_memory", 1, "reuse_memory"),
    ("role", "train", "role"), ("steps", {}, "'steps'"), ("feeds", None, "'feeds'"),
])
def test_program_fields_of_the_wrong_type_are_refused(built, field, value, says):
    manifest = _manifest(built)
    manifest["graphs"][0]["program"][field] = value
    with pytest.raises(BundleCorrupt, match=f"graph 'g': .*{says}"):
        validate_manifest(manifest, "b.bundle")


def test_an_unknown_op_is_refused_by_the_kernel_table(built):
    manifest = _manifest(built)
    _relu(manifest["graphs"][0]["program"]).update(op="NoSuchOp")
    with pytest.raises(BundleCorrupt, match="graph 'g': node 'Relu_3' uses op 'NoSuchOp'"):
        validate_manifest(manifest, "b.bundle")


def test_an_unknown_precision_in_a_loaded_bundle_is_refused_not_run_in_fp32(tmp_path):
    """Before the schema, an unknown precision ran silently in fp32 while an unknown impl was refused."""
    buffer = bundle_build_model([GraphWithOptions(EVERY_KIND, MODES, role="infer", name="g")],
                                cache=str(tmp_path / "cache"))
    path = tmp_path / "b.bundle"
    with zipfile.ZipFile(io.BytesIO(buffer.data)) as zipped:
        zipped.extractall(path)  # a directory bundle: its manifest is zarr.json's attributes
    meta = json.loads((path / "zarr.json").read_text())
    _relu(meta["attributes"]["graphs"][0]["program"])["precision"] = "int8"
    (path / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(BundleCorrupt) as err:
        load_bundle(str(path))
    assert err.value.one_line() == (f"BUNDLE_CORRUPT: {path}: malformed bundle: graph 'g': node 'Relu_3' (Relu): "
                                    f"precision 'int8' is not one the runtime has (fp16, fp16_round)")


def _assigned(name: str) -> list[str]:
    """Modules of the package that assign ``name`` at module level."""
    root = Path(bundle_pipeline.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
                if isinstance(node, ast.AnnAssign) else []
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                found.append(str(path.relative_to(root)))
    return found


@pytest.mark.parametrize("name, home", [
    ("FORMAT_VERSION", "program/constants.py"), ("FORMAT_VERSIONS", "program/constants.py"),
    ("APPROX_OPS", "program/constants.py"), ("STANDARD", "layouts.py"), ("CONTROL_OPS", "program/constants.py"),
    ("BODY_ATTRS", "program/constants.py"), ("UNKNOWN_DTYPE", "program/encoding.py"),
])
def test_shared_constants_are_defined_once(name, home):
    assert _assigned(name) == [home]


def test_the_shared_constants_agree_with_their_users(built):
    assert set(approx.APPROX) == program.APPROX_OPS == set(approx.BOUNDS)  # a fast kernel and a bound each
    assert pack.FORMAT_VERSION is program.FORMAT_VERSION and max(program.FORMAT_VERSIONS) == program.FORMAT_VERSION
    assert built["cpu"].manifest["format_version"] == program.FORMAT_VERSION
    assert program.STANDARD is layouts.STANDARD
    manifest = _manifest(built)
    manifest["format_version"] = program.FORMAT_VERSION + 1
    with pytest.raises(BundleCorrupt, match="format_version"):
        validate_manifest(manifest, "b.bundle")


def test_a_program_of_an_older_codegen_without_arena_bytes_by_reuse_still_loads(built):
    """Format-1 bundles from before 2026-11-26 lack it; only inspect reads it."""
    manifest = _manifest(built)
    del manifest["graphs"][0]["program"]["arena_bytes_by_reuse"]
    programs = validate_manifest(manifest, "b.bundle")
    assert programs["g"].arena_bytes_by_reuse is None
    assert encode(programs["g"]) == manifest["graphs"][0]["program"]
