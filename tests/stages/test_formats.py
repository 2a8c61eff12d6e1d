"""formats: one storage format per variable (assign), then TransData where a kernel wants another (insert)."""

from __future__ import annotations

import onnx.parser

from bundle_pipeline.hashing import tensor_hash
from bundle_pipeline.ir.graph import Graph
from bundle_pipeline.stages import dedupe, formats, parse
from bundle_pipeline.targets import get_target


def structure(body: str, name: str = "g") -> dict:
    m = onnx.parser.parse_model(f'<ir_version: 8, opset_import: ["" : 17]>\n{body}')
    return parse.run(m.SerializeToString(), {"graph": name, "where": name}).structure


NPU = get_target("npu")  # MatMul takes and gives FRACTAL_NZ; elementwise ops take their operands' format
NZ = "FRACTAL_NZ"


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


# Multiples of 16, so FRACTAL_NZ adds no padding and the byte counts below compare like with like.
UPDATE = ("update", "agraph (float[32,48] w_new) => (float[32,48] w) { w = Identity(w_new) }")
MATMUL = ("infer", "agraph (float[16,32] x, float[32,48] w) => (float[16,48] y) { y = MatMul(x, w) }")
RELU = ("infer", "agraph (float[32,48] w) => (float[32,48] y) { y = Relu(w) }")


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


def test_a_variable_with_one_possible_format_is_not_measured(monkeypatch):
    """Every cpu variable, and a vector on the npu, can only be stored in its standard layout: format assignment
    gives it that layout without replaying any reader (a Sum reading thousands of them took most of a build)."""
    from bundle_pipeline.stages.format_pass import FormatPass

    structures, variables = bundle({
        "update": ("update", """
agraph (float[16] b_new, float[32,48] w_new) => (float[16] b, float[32,48] w) {
  b = Identity(b_new)
  w = Identity(w_new)
}"""),
        "infer": ("infer", """
agraph (float[16,16] x, float[16] b, float[32,48] w, float[16,32] a) => (float[16,16] y, float[16,48] z) {
  y = Add(x, b)
  z = MatMul(a, w)
}"""),
    })
    measured = []
    original = FormatPass.transdata_bytes
    monkeypatch.setattr(FormatPass, "transdata_bytes", lambda self, vf: measured.append(vf) or original(self, vf))
    cpu = get_target("cpu")
    assert formats.costs(FormatPass(structures["infer"], cpu), "infer", variables, cpu) == {}
    assert formats.assign(structures, variables, cpu) == {"b": "ND", "w": "ND"}
    assert measured == []
    table = formats.costs(FormatPass(structures["infer"], NPU), "infer", variables, NPU)
    assert sorted(table) == ["w"] and sorted(table["w"]["reads"]) == sorted(["ND", NZ])
    assert formats.assign(structures, variables, NPU) == {"b": "ND", "w": NZ}
    assert {v for vf in measured for v in vf} == {"w"}


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


# ---- the npu target: MatMul wants FRACTAL_NZ ----


def non_output(s: dict) -> list[dict]:
    """TransData nodes other than the ones converting graph outputs back to the standard layout."""
    return [n for n in transdatas(s) if n["outputs"][0] not in s["outputs"]]


def test_transdata_is_inserted_right_before_the_consumer():
    s = formats.insert(structure("""
agraph (float[2,3] x, float[3,4] w) => (float[2,4] y) {
  r = Relu(x)
  y = MatMul(r, w)
}"""), {}, NPU)
    nodes = [(n["op"], n["inputs"], n["outputs"]) for n in s["nodes"]]
    assert nodes == [("Relu", ["x"], ["r"]),
                     ("TransData", ["r"], [f"r@{NZ}"]),
                     ("TransData", ["w"], [f"w@{NZ}"]),
                     ("MatMul", [f"r@{NZ}", f"w@{NZ}"], ["y@pre"]),
                     ("TransData", ["y@pre"], ["y"])]
    assert [n["attrs"] for n in non_output(s)] == [{"src_format": "ND", "dst_format": NZ}] * 2
    graph = Graph.from_json(s)
    assert graph.format_of(f"r@{NZ}") == NZ and graph.format_of("r") == "ND" and graph.format_of("y") == "ND"
    assert graph.types[f"r@{NZ}"] == graph.types["r"]
    assert graph.native == ["MatMul_1"] or graph.native == [s["nodes"][3]["name"]]
    assert graph.lint() == []


def test_one_conversion_serves_two_consumers():
    s = formats.insert(structure("""
agraph (float[2,3] x, float[3,4] w) => (float[2,4] y, float[2,4] z) {
  y = MatMul(x, w)
  r = Relu(x)
  z = MatMul(r, w)
}"""), {}, NPU)
    converted = [n["inputs"][0] for n in non_output(s)]
    assert sorted(converted) == ["r", "w", "x"]  # w converted once for both MatMuls
    matmuls = [n["inputs"] for n in s["nodes"] if n["op"] == "MatMul"]
    assert matmuls == [[f"x@{NZ}", f"w@{NZ}"], [f"r@{NZ}", f"w@{NZ}"]]
    relu = next(n for n in s["nodes"] if n["op"] == "Relu")
    assert relu["inputs"] == ["x"]  # the standard-layout consumer reads the original
    assert Graph.from_json(s).lint() == []


def test_a_graph_output_a_standard_reader_also_reads_is_converted_once():
    s = formats.insert(structure("""
agraph (float[16,32] x, float[32,32] w) => (float[16,32] z, float[32,16] y) {
  z = MatMul(x, w)
  y = Transpose(z)
}"""), {}, NPU)
    from_z = [n for n in transdatas(s) if n["inputs"] == ["z@pre"]]
    assert [n["outputs"] for n in from_z] == [["z"]]  # the Transpose's conversion writes the output itself
    transpose = next(n for n in s["nodes"] if n["op"] == "Transpose")
    assert transpose["inputs"] == ["z"] and s["nodes"].index(from_z[0]) < s["nodes"].index(transpose)
    assert Graph.from_json(s).lint() == []


def test_a_weight_conversion_is_folded_into_the_stored_constant():
    s = formats.insert(structure("""
agraph (float[2,40] x) => (float[2,24] y) <float[40,24] w = {0.0}> {
  y = MatMul(x, w)
}""".replace("{0.0}", "{" + ", ".join(["0.5"] * 960) + "}")), {}, NPU)
    assert [n["inputs"][0] for n in non_output(s)] == ["x"]  # no TransData for w: stored as FRACTAL_NZ
    assert formats.weight_formats(s) == {"w": NZ}


def test_variable_format_minimises_transdata_bytes():
    # Two MatMul readers (want FRACTAL_NZ) against one Relu reader: stored NZ, w is read in place twice and the
    # Relu runs natively on NZ, converting only its 6 KiB result; stored ND, both MatMuls convert w (12 KiB).
    structures, variables = bundle({"update": UPDATE, "a": MATMUL, "b": MATMUL, "c": RELU})
    chosen = formats.assign(structures, variables, NPU)
    assert chosen == {"w": NZ}
    inserted = {name: formats.insert(s, chosen, NPU) for name, s in structures.items()}
    assert [n["inputs"][0] for n in non_output(inserted["a"])] == ["x"]  # w is read as stored
    assert [n["attrs"]["dst_format"] for n in transdatas(inserted["update"])] == [NZ]  # update writes stored bytes
    # One MatMul against two Relus: the standard layout wins.
    structures, variables = bundle({"update": UPDATE, "a": MATMUL, "b": RELU, "c": RELU})
    assert formats.assign(structures, variables, NPU) == {"w": "ND"}


def test_variable_format_tie_goes_to_the_natural_layout():
    # NZ saves the MatMul's conversion of w but the Relu then converts its output: a tie on reads, and storing
    # NZ would cost the update a conversion, so ND stays.
    structures, variables = bundle({"update": UPDATE, "a": MATMUL, "c": RELU})
    assert formats.assign(structures, variables, NPU) == {"w": "ND"}


def reader_transdata_bytes(structures: dict, variables: dict, fmt: str) -> int:
    """TransData bytes insert adds on the graphs that read the variables when all are stored as ``fmt``."""
    readers = {g for v in variables.values() for g in v["readers"]}
    return sum(formats.transdata_bytes(formats.insert(structures[g], dict.fromkeys(variables, fmt), NPU))
               for g in readers)


def test_chosen_format_is_the_cheapest_measured_insertion():
    many = ("infer", """
agraph (float[16,32] x, float[32,48] w) => (float[16,48] y) {
  a = MatMul(x, w)
  b = MatMul(x, w)
  c = MatMul(x, w)
  s = Sum(a, b, c)
  y = Relu(s)
}""")
    for graphs in ({"update": UPDATE, "a": MATMUL, "b": MATMUL, "c": RELU},
                   {"update": UPDATE, "m": many, "r1": RELU, "r2": RELU}):
        structures, variables = bundle(graphs)
        measured = {f: reader_transdata_bytes(structures, variables, f) for f in ("ND", NZ)}
        chosen = formats.assign(structures, variables, NPU)["w"]
        assert measured[chosen] == min(measured.values()), (measured, chosen)


def test_update_output_is_written_in_the_variable_stored_format():
    s = formats.insert(structure("""
agraph (float[3,4] w_new) => (float[3,4] w, float[3,4] echo) {
  w = Identity(w_new)
  echo = Neg(w)
}"""), {"w": NZ}, NPU)
    assert s["outputs"] == ["w", "echo"]
    nodes = [(n["op"], n["inputs"], n["outputs"]) for n in s["nodes"]]
    assert nodes == [("Identity", ["w_new"], ["w@pre"]),
                     ("Neg", ["w@pre"], ["echo"]),
                     ("TransData", ["w@pre"], ["w"])]
    assert transdatas(s)[0]["attrs"] == {"src_format": "ND", "dst_format": NZ}
    graph = Graph.from_json(s)
    assert graph.format_of("w") == NZ and graph.format_of("echo") == "ND" and graph.format_of("w@pre") == "ND"
    assert graph.types["w@pre"] == graph.types["w"]
    assert graph.lint() == []


def test_infer_reads_a_variable_in_its_stored_format():
    s = formats.insert(structure("""
agraph (float[2,3] x, float[3,4] w) => (float[2,4] y, float[3,4] r) {
  y = MatMul(x, w)
  r = Transpose<perm = [0, 1]>(w)
}"""), {"w": NZ}, NPU)
    graph = Graph.from_json(s)
    assert graph.format_of("w") == NZ
    assert [(n["inputs"], n["outputs"], n["attrs"]) for n in non_output(s)] == [
        (["x"], [f"x@{NZ}"], {"src_format": "ND", "dst_format": NZ}),
        (["w"], ["w@ND"], {"src_format": NZ, "dst_format": "ND"})]  # Transpose has no native kernel
    assert next(n for n in s["nodes"] if n["op"] == "MatMul")["inputs"] == [f"x@{NZ}", "w"]
    assert graph.format_of("r") == "ND"


def test_kernel_output_in_another_format_is_converted_back_for_users():
    s = formats.insert(structure("agraph (float[2,3] x, float[3,4] w) => (float[2,4] y) { y = MatMul(x, w) }"),
                       {}, NPU)
    graph = Graph.from_json(s)
    assert s["outputs"] == ["y"]
    assert graph.format_of("y") == "ND"
    last = s["nodes"][-1]
    assert last["op"] == "TransData" and last["outputs"] == ["y"]
    assert last["attrs"] == {"src_format": NZ, "dst_format": "ND"}
