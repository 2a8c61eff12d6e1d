"""formats: one storage format per variable (assign), then TransData where a kernel wants another (insert)."""

from __future__ import annotations

import onnx.parser

from bundle_pipeline.ir.graph import Graph
from bundle_pipeline.ir.hashing import tensor_hash
from bundle_pipeline.stages import dedupe, formats, parse
from bundle_pipeline.targets import KernelFormats, Target, get_target


def structure(body: str, name: str = "g") -> dict:
    m = onnx.parser.parse_model(f'<ir_version: 8, opset_import: ["" : 17]>\n{body}')
    return parse.run(m.SerializeToString(), {"graph": name, "where": name}).structure


def fake_target(matmul_output: str = "ND") -> Target:
    """MatMul takes only the made-up format FMT_B; every other kernel takes the standard layouts."""
    return Target(name="fake", formats=("ND", "NCHW", "FMT_B"), buffers={"workspace_bytes": 1 << 20},
                  kernels={"default": KernelFormats(("ND", "NCHW"), "ND"),
                           "MatMul": KernelFormats(("FMT_B",), matmul_output)},
                  fingerprint="fake")


FAKE = fake_target()


def transdatas(s: dict) -> list[dict]:
    return [n for n in s["nodes"] if n["op"] == "TransData"]


def transdata_bytes(s: dict) -> int:
    graph = Graph.from_json(s)
    return sum(graph.types[n["inputs"][0]].nbytes for n in transdatas(s))


def bundle(graphs: dict[str, tuple[str, str]], variables: list[str] | None = None):
    """name -> (role, onnx text): the structures and the dedupe variable table of a bundle."""
    structures, items = {}, []
    for name, (role, body) in graphs.items():
        m = onnx.parser.parse_model(f'<ir_version: 8, opset_import: ["" : 17]>\n{body}')
        out = parse.run(m.SerializeToString(), {"graph": name, "where": name})
        structures[name] = out.structure
        items.append({"name": name, "role": role, "structure": out.structure,
                      "weights": {k: tensor_hash(v) for k, v in out.weights.items()}})
    return structures, dedupe.run(items, {"variables": variables})[0]


UPDATE = ("update", "agraph (float[3,4] w_new) => (float[3,4] w) { w = Identity(w_new) }")
MATMUL = ("infer", "agraph (float[2,3] x, float[3,4] w) => (float[2,4] y) { y = MatMul(x, w) }")
RELU = ("infer", "agraph (float[3,4] w) => (float[3,4] y) { y = Relu(w) }")


# ---- cpu target ----

CNN = """
agraph (float[1,2,8,8] x, float[4,2,3,3] w, float[4] b, float[36,5] fc) => (float[1,4,6,6] c, float[1,5] z) {
  c = Conv(x, w, b)
  p = MaxPool<kernel_shape = [2, 2], strides = [2, 2]>(c)
  f = Flatten(p)
  z = MatMul(f, fc)
}
"""


def test_cpu_target_inserts_no_transdata_and_uses_standard_layouts():
    cpu = get_target("cpu")
    s = formats.insert(structure(CNN), {}, cpu)
    assert transdatas(s) == []
    assert [n["op"] for n in s["nodes"]] == ["Conv", "MaxPool", "Flatten", "MatMul"]
    graph = Graph.from_json(s)
    for value in ("x", "w", "c", "p"):
        assert graph.format_of(value) == "NCHW", value
    for value in ("b", "fc", "f", "z"):
        assert graph.format_of(value) == "ND", value
    assert s["outputs"] == ["c", "z"]


def test_cpu_target_keeps_natural_variable_formats():
    structures, variables = bundle({
        "update": ("update", """
agraph (float[4,2,3,3] k_new, float[3,4] w_new) => (float[4,2,3,3] k, float[3,4] w) {
  k = Identity(k_new)
  w = Identity(w_new)
}"""),
        "infer": ("infer", """
agraph (float[1,2,5,5] x, float[4,2,3,3] k, float[2,3] a, float[3,4] w) => (float[1,4,3,3] c, float[2,4] y) {
  c = Conv(x, k)
  y = MatMul(a, w)
}"""),
    })
    assert sorted(variables) == ["k", "w"]
    cpu = get_target("cpu")
    chosen = formats.assign(structures, variables, cpu)
    assert chosen == {"k": "NCHW", "w": "ND"}
    s = formats.insert(structures["infer"], chosen, cpu)
    assert transdatas(s) == []
    assert Graph.from_json(s).format_of("k") == "NCHW"
    assert Graph.from_json(s).format_of("w") == "ND"
    s = formats.insert(structures["update"], chosen, cpu)
    assert transdatas(s) == []


def test_cpu_target_update_writing_a_4d_variable_needs_no_transdata():
    structures, variables = bundle({
        "update": ("update", "agraph (float[4,2,3,3] k_new) => (float[4,2,3,3] k) { k = Identity(k_new) }"),
        "infer": ("infer", "agraph (float[1,2,5,5] x, float[4,2,3,3] k) => (float[1,4,3,3] c) { c = Conv(x, k) }"),
    })
    cpu = get_target("cpu")
    s = formats.insert(structures["update"], formats.assign(structures, variables, cpu), cpu)
    assert transdatas(s) == []
    assert [n["outputs"] for n in s["nodes"]] == [["k"]]


def test_cpu_target_elementwise_4d_output_needs_no_transdata():
    s = formats.insert(structure("""
agraph (float[1,2,5,5] x, float[3,2,3,3] w) => (float[1,3,3,3] y) {
  c = Conv(x, w)
  y = Relu(c)
}"""), {}, get_target("cpu"))
    assert transdatas(s) == []
    assert Graph.from_json(s).format_of("y") == "NCHW"


# ---- a target whose MatMul wants another format ----


def test_transdata_is_inserted_right_before_the_consumer():
    s = formats.insert(structure("""
agraph (float[2,3] x, float[3,4] w) => (float[2,4] y) {
  r = Relu(x)
  y = MatMul(r, w)
}"""), {}, FAKE)
    nodes = [(n["op"], n["inputs"], n["outputs"]) for n in s["nodes"]]
    assert nodes == [("Relu", ["x"], ["r"]),
                     ("TransData", ["r"], ["r@FMT_B"]),
                     ("TransData", ["w"], ["w@FMT_B"]),
                     ("MatMul", ["r@FMT_B", "w@FMT_B"], ["y"])]
    assert [n["attrs"] for n in transdatas(s)] == [{"src_format": "ND", "dst_format": "FMT_B"}] * 2
    graph = Graph.from_json(s)
    assert graph.format_of("r@FMT_B") == "FMT_B" and graph.format_of("r") == "ND"
    assert graph.types["r@FMT_B"] == graph.types["r"]
    assert graph.lint() == []


def test_one_conversion_serves_two_consumers():
    s = formats.insert(structure("""
agraph (float[2,3] x, float[3,4] w) => (float[2,4] y, float[2,4] z) {
  y = MatMul(x, w)
  r = Relu(x)
  z = MatMul(r, w)
}"""), {}, FAKE)
    converted = [n["inputs"][0] for n in transdatas(s)]
    assert sorted(converted) == ["r", "w", "x"]  # w converted once for both MatMuls
    matmuls = [n["inputs"] for n in s["nodes"] if n["op"] == "MatMul"]
    assert matmuls == [["x@FMT_B", "w@FMT_B"], ["r@FMT_B", "w@FMT_B"]]
    relu = next(n for n in s["nodes"] if n["op"] == "Relu")
    assert relu["inputs"] == ["x"]  # the standard-layout consumer reads the original
    assert Graph.from_json(s).lint() == []


def test_variable_format_minimises_transdata_bytes():
    # Two MatMul readers (want FMT_B) against one Relu reader (wants ND): FMT_B costs one conversion, ND two.
    structures, variables = bundle({"update": UPDATE, "a": MATMUL, "b": MATMUL, "c": RELU})
    chosen = formats.assign(structures, variables, FAKE)
    assert chosen == {"w": "FMT_B"}
    inserted = {name: formats.insert(s, chosen, FAKE) for name, s in structures.items()}
    assert [n["inputs"][0] for n in transdatas(inserted["a"])] == ["x"]  # w is read as stored
    assert [(n["inputs"], n["attrs"]["dst_format"]) for n in transdatas(inserted["c"])] == [(["w"], "ND")]
    # One Relu against two: the standard layout wins.
    structures, variables = bundle({"update": UPDATE, "a": MATMUL, "b": RELU, "c": RELU})
    assert formats.assign(structures, variables, FAKE) == {"w": "ND"}


def test_variable_format_tie_goes_to_the_natural_layout():
    structures, variables = bundle({"update": UPDATE, "a": MATMUL, "c": RELU})
    assert formats.assign(structures, variables, FAKE) == {"w": "ND"}


def reader_transdata_bytes(structures: dict, variables: dict, fmt: str) -> int:
    """TransData bytes insert actually adds on the readers of every variable when all are stored as ``fmt``."""
    total = 0
    for name, s in structures.items():
        out = formats.insert(s, dict.fromkeys(variables, fmt), FAKE)
        total += sum(Graph.from_json(out).types[n["inputs"][0]].nbytes for n in transdatas(out)
                     if n["inputs"][0] in variables and name not in variables[n["inputs"][0]]["writers"])
    return total


def test_chosen_format_matches_the_cheapest_measured_insertion():
    structures, variables = bundle({"update": UPDATE, "a": MATMUL, "b": MATMUL, "c": RELU})
    measured = {f: reader_transdata_bytes(structures, variables, f) for f in ("ND", "FMT_B")}
    assert measured == {"ND": 96, "FMT_B": 48}
    assert formats.assign(structures, variables, FAKE)["w"] == min(measured, key=measured.get)


def test_chosen_format_is_cheapest_when_one_graph_has_many_consumers():
    many = ("infer", """
agraph (float[2,3] x, float[3,4] w) => (float[2,4] y) {
  a = MatMul(x, w)
  b = MatMul(x, w)
  c = MatMul(x, w)
  s = Sum(a, b, c)
  y = Relu(s)
}""")
    structures, variables = bundle({"update": UPDATE, "m": many, "r1": RELU, "r2": RELU})
    measured = {f: reader_transdata_bytes(structures, variables, f) for f in ("ND", "FMT_B")}
    assert measured == {"ND": 48, "FMT_B": 96}
    assert formats.assign(structures, variables, FAKE)["w"] == "ND"


def test_update_output_is_written_in_the_variable_stored_format():
    s = formats.insert(structure("""
agraph (float[3,4] w_new) => (float[3,4] w, float[3,4] echo) {
  w = Identity(w_new)
  echo = Neg(w)
}"""), {"w": "FMT_B"}, FAKE)
    assert s["outputs"] == ["w", "echo"]
    nodes = [(n["op"], n["inputs"], n["outputs"]) for n in s["nodes"]]
    assert nodes == [("Identity", ["w_new"], ["w@pre"]),
                     ("Neg", ["w@pre"], ["echo"]),
                     ("TransData", ["w@pre"], ["w"])]
    assert transdatas(s)[0]["attrs"] == {"src_format": "ND", "dst_format": "FMT_B"}
    graph = Graph.from_json(s)
    assert graph.format_of("w") == "FMT_B" and graph.format_of("echo") == "ND" and graph.format_of("w@pre") == "ND"
    assert graph.types["w@pre"] == graph.types["w"]
    assert graph.lint() == []


def test_infer_reads_a_variable_in_its_stored_format():
    s = formats.insert(structure("""
agraph (float[2,3] x, float[3,4] w) => (float[2,4] y, float[3,4] r) {
  y = MatMul(x, w)
  r = Relu(w)
}"""), {"w": "FMT_B"}, FAKE)
    graph = Graph.from_json(s)
    assert graph.format_of("w") == "FMT_B"
    assert [(n["inputs"], n["outputs"], n["attrs"]) for n in transdatas(s)] == [
        (["x"], ["x@FMT_B"], {"src_format": "ND", "dst_format": "FMT_B"}),
        (["w"], ["w@ND"], {"src_format": "FMT_B", "dst_format": "ND"})]
    assert next(n for n in s["nodes"] if n["op"] == "MatMul")["inputs"] == ["x@FMT_B", "w"]
    assert graph.format_of("r") == "ND"


def test_kernel_output_in_another_format_is_converted_back_for_users():
    s = formats.insert(structure("agraph (float[2,3] x, float[3,4] w) => (float[2,4] y) { y = MatMul(x, w) }"),
                       {}, fake_target(matmul_output="FMT_B"))
    graph = Graph.from_json(s)
    assert s["outputs"] == ["y"]
    assert graph.format_of("y") == "ND"
    last = s["nodes"][-1]
    assert last["op"] == "TransData" and last["outputs"] == ["y"]
    assert last["attrs"] == {"src_format": "FMT_B", "dst_format": "ND"}
