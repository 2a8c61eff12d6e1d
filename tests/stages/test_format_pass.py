"""format_pass: the what-if cost (replaying only what changes) equals the bytes of the full pass, and format
assignment runs the full pass once per reading graph whatever the number of variables and candidates."""

from __future__ import annotations

import models
import numpy as np
import onnx
import onnx.parser
import pytest
from onnx import numpy_helper

from bundle_pipeline.layouts import FORMATS, accepts
from bundle_pipeline.stages import format_pass, formats, parse
from bundle_pipeline.targets import get_target

NPU = get_target("npu")


def structure(body: str, weights: tuple[str, ...] = ()) -> dict:
    """The parsed structure of ``body``; the graph inputs named in ``weights`` become initializers (weights)."""
    m = onnx.parser.parse_model(f'<ir_version: 8, opset_import: ["" : 17]>\n{body}')
    for name in weights:
        info = next(i for i in m.graph.input if i.name == name)
        shape = [d.dim_value for d in info.type.tensor_type.shape.dim]
        m.graph.initializer.append(numpy_helper.from_array(np.ones(shape, np.float32), name))
        m.graph.input.remove(info)
    return parse.run(m.SerializeToString(), {"graph": "g", "where": "g"}).structure


# A variable w read by MatMul (wants FRACTAL_NZ) and by an elementwise chain that carries its format onward; a
# constant c read first by an elementwise node next to w (which may fold it into w's format) and later by a
# MatMul; graph outputs whose conversion may reuse a reader's TransData.
TANGLED = """
agraph (float[32,48] w, float[16,32] x, float[48,32] v, float[32,48] c) => (float[16,48] y, float[32,48] e,
                                                                          float[32,48] w2) {
  m = MatMul(x, w)
  e = Add(w, c)
  r = Relu(e)
  s = Sigmoid(r)
  w2 = Mul(s, w)
  k = MatMul(x, c)
  y = Add(m, k)
  z = MatMul(w2, v)
}
"""
OMITTED = """
agraph (float[32,48] w, float[16,32] x, float hi) => (float[16,48] y) {
  m = MatMul(x, w)
  y = Clip(m, , hi)
}
"""
WEIGHTS = {"tangled": ("c", "v"), "conv": ("w", "b"), "omitted": ()}
CONV = """
agraph (float[1,16,8,8] x, float[32,16,3,3] w, float[32] b) => (float[1,32,6,6] y, float[1,32,6,6] r) {
  c = Conv(x, w, b)
  r = Relu(c)
  y = Add(r, c)
}
"""


def sources_and_formats(s: dict) -> list[tuple[str, str]]:
    types = s["types"]
    names = [*s["inputs"], *s["weights"]]
    return [(v, f) for v in names for f in FORMATS if accepts(f, tuple(types[v]["shape"]))]


@pytest.mark.parametrize(("body", "weights"), [(TANGLED, WEIGHTS["tangled"]), (CONV, WEIGHTS["conv"]),
                                               (OMITTED, WEIGHTS["omitted"])], ids=["tangled", "conv", "omitted"])
def test_what_if_bytes_equal_the_full_pass(body, weights):
    s = structure(body, weights)
    for v, fmt in sources_and_formats(s):
        fp = format_pass.FormatPass(s, NPU)
        full = formats.transdata_bytes(fp.build({v: fmt}).to_json())
        assert fp.transdata_bytes({v: fmt}) == full, (v, fmt)


def test_what_if_bytes_on_generated_models(tmp_path):
    built = [models.mlp(tmp_path / "mlp"), models.cnn(tmp_path / "cnn"), models.attention(tmp_path / "att")]
    for bundle in built:
        for graph in bundle.infer.values():
            s = parse.run(str(graph.path), {"graph": graph.name, "where": graph.name,
                                             "input_shape": ""}).structure
            fp = format_pass.FormatPass(s, NPU)
            for v, fmt in sources_and_formats(s):
                assert fp.transdata_bytes({v: fmt}) == formats.transdata_bytes(fp.build({v: fmt}).to_json()), v


def test_assign_runs_one_full_pass_per_reading_graph(monkeypatch):
    runs = []
    original = format_pass.FormatPass._run

    def counted(self, var_formats):
        runs.append(self.graph.name)
        return original(self, var_formats)

    monkeypatch.setattr(format_pass.FormatPass, "_run", counted)
    s = structure(TANGLED, WEIGHTS["tangled"])
    variables = {v: {"shape": s["types"][v]["shape"], "dtype": "float32", "readers": ["a", "b"], "writers": []}
                 for v in ("w", "v", "x")}
    chosen = formats.assign({"a": s, "b": s}, variables, NPU)
    assert sorted(runs) == ["g", "g"]  # one baseline pass per reader, however many candidates were weighed
    for v, fmt in chosen.items():
        measured = {f: 2 * format_pass.FormatPass(s, NPU).transdata_bytes({v: f}) for f in FORMATS
                    if accepts(f, tuple(variables[v]["shape"]))}
        assert measured[fmt] == min(measured.values())


def test_an_omitted_input_stays_omitted():
    built = format_pass.FormatPass(structure(OMITTED), NPU).build({})
    assert [n.inputs for n in built.nodes if n.op_type == "Clip"] == [["m", "", "hi"]]


def test_a_what_if_touches_only_what_the_variable_reaches(monkeypatch):
    """Costing one variable must not visit every other variable: with many small independent variables a
    per-variable sweep over all sources made formats.cost quadratic (10,000 tensors: 43 s)."""
    n = 60
    body = "\n".join(f"y{i} = MatMul(x, w{i})" for i in range(n))
    outputs = ", ".join(f"float[2,16] y{i}" for i in range(n))
    weights = ", ".join(f"float[16,16] w{i}" for i in range(n))
    fp = format_pass.FormatPass(structure(f"g (float[2,16] x, {weights}) => ({outputs})\n{{\n{body}\n}}",
                                          tuple(f"w{i}" for i in range(n))), NPU)
    assert len(fp.base) == n  # the baseline, once
    stepped = []
    original = format_pass.FormatPass.step

    def counted(self, i, state):
        stepped.append(i)
        return original(self, i, state)

    monkeypatch.setattr(format_pass.FormatPass, "step", counted)
    monkeypatch.setattr(format_pass.FormatPass, "initial", lambda self, vf: pytest.fail("swept every source"))
    for i in range(n):
        fp.transdata_bytes({f"w{i}": "FRACTAL_NZ"})
    assert len(stepped) == n  # each what-if replays the one MatMul reading its variable


@pytest.mark.parametrize(("body", "weights"), [(TANGLED, WEIGHTS["tangled"]), (CONV, WEIGHTS["conv"]),
                                               (OMITTED, WEIGHTS["omitted"])], ids=["tangled", "conv", "omitted"])
def test_the_formats_stage_replays_from_the_baseline_exactly(body, weights, monkeypatch):
    """Once format assignment ran the baseline, building a graph replays only the nodes the variable formats
    change: the result is the full pass's, for every source in every format it fits, and with an assign."""
    s = structure(body, weights)
    replaying = format_pass.FormatPass(s, NPU)
    assert len(replaying.base) == len(s["nodes"])  # format assignment ran the baseline
    for v, fmt in sources_and_formats(s):
        for assign in ({}, {s["outputs"][0]: v}):
            full = format_pass.FormatPass(s, NPU)  # no baseline: one full pass
            assert full.build_json({v: fmt}, assign) == replaying.build_json({v: fmt}, assign), (v, fmt, assign)
            assert full.full_passes == 1
    assert replaying.full_passes == 1  # the baseline only


def test_build_json_is_the_decoded_graph_encoded_again():
    """The formats stage copies nodes from the parsed JSON instead of decoding and encoding the graph: the same
    structure as encoding the built graph (attributes, consts and types included)."""
    s = structure(CONV, WEIGHTS["conv"])
    fp = format_pass.FormatPass(s, NPU)
    for v, fmt in sources_and_formats(s):
        built = fp.build_json({v: fmt})
        assert format_pass.FormatPass(s, NPU).build({v: fmt}).to_json() == built
        assert format_pass.Graph.from_json(built).to_json() == built
