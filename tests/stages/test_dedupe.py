"""dedupe: the bundle's variable table (fusion by name, conflicts) and its constant pool (same bytes once)."""

from __future__ import annotations

import onnx.parser
import pytest

from bundle_pipeline.errors import BundleError
from bundle_pipeline.hashing import tensor_hash
from bundle_pipeline.stages import dedupe, parse

W34 = "{" + ", ".join(str(float(i)) for i in range(12)) + "}"


def graph(name: str, role: str, body: str) -> dict:
    """A dedupe input graph parsed from ONNX text; weights map to their content hashes."""
    m = onnx.parser.parse_model(f'<ir_version: 8, opset_import: ["" : 17]>\n{body}')
    out = parse.run(m.SerializeToString(), {"graph": name, "where": name})
    return {"name": name, "role": role, "structure": out.structure,
            "weights": {k: tensor_hash(v) for k, v in out.weights.items()}}


INIT = graph("init", "init", f"agraph () => (float[3,4] w) <float[3,4] w_init = {W34}> {{ w = Identity(w_init) }}")
UPDATE = graph("update", "update", "agraph (float[3,4] w_new) => (float[3,4] w) { w = Identity(w_new) }")
INFER = graph("infer", "infer", "agraph (float[2,3] x, float[3,4] w) => (float[2,4] y) { y = MatMul(x, w) }")
# The same model, but with w as an initializer (ONNX's usual form of a weight).
INFER_INIT = graph("infer", "infer", f"""
agraph (float[2,3] x) => (float[2,4] y) <float[3,4] w = {W34}, float[4] b = {{1.0, 2.0, 3.0, 4.0}}> {{
  h = MatMul(x, w)
  y = Add(h, b)
}}""")


def errors_of(graphs, **params) -> BundleError:
    with pytest.raises(BundleError) as info:
        dedupe.run(graphs, params)
    return info.value


def test_variable_is_inferred_from_a_write_in_init_or_update_and_a_read_elsewhere():
    variables, storage = dedupe.run([INIT, UPDATE, INFER], {})
    assert variables == {"w": {"shape": [3, 4], "dtype": "float32", "readers": ["infer"],
                               "writers": ["init", "update"], "source": "init"}}
    # init's own weight is a plain constant bound to init; the variable has no initial value besides init
    assert storage["initial"] == {}
    assert list(storage["bindings"]) == ["init"]
    (cid,) = storage["constants"]
    assert storage["bindings"]["init"] == {"w_init": cid}
    assert storage["constants"][cid] == {"hash": INIT["weights"]["w_init"], "shape": [3, 4], "dtype": "float32"}


def test_write_without_a_reader_elsewhere_is_not_a_variable():
    variables, _ = dedupe.run([INIT, graph("other", "infer", "agraph (float[2] x) => (float[2] y) { y = Neg(x) }")],
                              {})
    assert variables == {}


def test_explicit_variables_list_makes_an_infer_initializer_a_variable():
    variables, storage = dedupe.run([INFER_INIT], {"variables": ["b"]})
    assert variables == {"b": {"shape": [4], "dtype": "float32", "readers": ["infer"], "writers": [],
                               "source": "initializer"}}
    cid = storage["initial"]["b"]
    assert storage["constants"][cid]["hash"] == INFER_INIT["weights"]["b"]
    assert set(storage["bindings"]["infer"]) == {"w"}  # a variable is not bound as a constant


def test_source_is_initializer_when_no_init_graph_writes_it():
    variables, storage = dedupe.run([UPDATE, INFER_INIT], {})
    assert variables["w"]["source"] == "initializer"
    assert variables["w"]["readers"] == ["infer"] and variables["w"]["writers"] == ["update"]
    assert storage["constants"][storage["initial"]["w"]]["hash"] == INFER_INIT["weights"]["w"]
    assert set(storage["bindings"]["infer"]) == {"b"}


def test_source_is_none_when_only_an_update_writes_it():
    variables, storage = dedupe.run([UPDATE, INFER], {})
    assert variables["w"]["source"] == "none"
    assert storage == {"constants": {}, "bindings": {}, "initial": {}}


def test_init_value_wins_over_an_infer_initializer():
    variables, storage = dedupe.run([INIT, UPDATE, INFER_INIT], {})
    assert variables["w"]["source"] == "init"
    assert storage["initial"] == {}
    assert set(storage["bindings"]["infer"]) == {"b"}


def test_reader_and_writer_lists_follow_spec_order():
    infer2 = graph("infer2", "infer", "agraph (float[3,4] w) => (float[3,4] y) { y = Relu(w) }")
    reader_update = graph("refresh", "update", """
agraph (float[3,4] w, float[3,4] delta) => (float[3,4] w2) { w2 = Add(w, delta) }""")
    variables, _ = dedupe.run([infer2, UPDATE, reader_update, INIT, INFER], {})
    assert variables["w"]["readers"] == ["infer2", "refresh", "infer"]
    assert variables["w"]["writers"] == ["update", "init"]


def test_identical_constants_across_graphs_are_pooled_once():
    a = graph("a", "infer", "agraph (float[3] x) => (float[3] y) <float[3] b = {1.0, 2.0, 3.0}> { y = Add(x, b) }")
    b = graph("b", "infer", """
agraph (float[3] x) => (float[3] y) <float[3] c = {1.0, 2.0, 3.0}, float[3] d = {1.0, 2.0, 4.0}> {
  h = Mul(x, c)
  y = Sub(h, d)
}""")
    assert a["weights"]["b"] == b["weights"]["c"] != b["weights"]["d"]
    variables, storage = dedupe.run([a, b], {})
    assert variables == {}
    assert len(storage["constants"]) == 2
    shared = storage["bindings"]["a"]["b"]
    assert storage["bindings"]["b"]["c"] == shared
    assert storage["bindings"]["b"]["d"] != shared
    assert storage["constants"][shared]["hash"] == a["weights"]["b"]
    assert {c["hash"] for c in storage["constants"].values()} == {a["weights"]["b"], b["weights"]["d"]}


def test_same_bytes_with_another_shape_are_not_pooled():
    a = graph("a", "infer", "agraph (float[4] x) => (float[4] y) <float[4] b = {1.0, 2.0, 3.0, 4.0}> "
                            "{ y = Add(x, b) }")
    b = graph("b", "infer", "agraph (float[2,2] x) => (float[2,2] y) <float[2,2] b = {1.0, 2.0, 3.0, 4.0}> "
                            "{ y = Add(x, b) }")
    _, storage = dedupe.run([a, b], {})
    assert len(storage["constants"]) == 2
    assert sorted(c["shape"] for c in storage["constants"].values()) == [[2, 2], [4]]


def test_variable_initial_value_sharing_bytes_with_a_constant_is_stored_once():
    infer = graph("infer", "infer", f"""
agraph (float[2,3] x) => (float[2,4] y) <float[3,4] w = {W34}, float[3,4] k = {W34}> {{
  h = MatMul(x, w)
  g = MatMul(x, k)
  y = Add(h, g)
}}""")
    variables, storage = dedupe.run([UPDATE, infer], {})
    assert variables["w"]["source"] == "initializer"
    assert len(storage["constants"]) == 1
    assert storage["initial"]["w"] == storage["bindings"]["infer"]["k"]


def test_shape_conflict_names_both_graphs():
    infer = graph("infer", "infer", "agraph (float[2,4] x, float[4,4] w) => (float[2,4] y) { y = MatMul(x, w) }")
    err = errors_of([UPDATE, infer])
    assert err.status == "VARIABLE_CONFLICT"
    assert "'w'" in err.message
    assert "float32[3,4] in graph update" in err.message and "float32[4,4] in graph infer" in err.message


def test_dtype_conflict_names_both_graphs():
    infer = graph("infer", "infer", "agraph (double[3,4] w) => (double[3,4] y) { y = Neg(w) }")
    err = errors_of([UPDATE, infer])
    assert err.status == "VARIABLE_CONFLICT"
    assert "float32[3,4] in graph update" in err.message and "float64[3,4] in graph infer" in err.message


def test_conflict_between_two_readers_of_a_declared_variable():
    a = graph("a", "infer", "agraph (float[3] x) => (float[3] y) <float[3] v = {1.0, 2.0, 3.0}> { y = Add(x, v) }")
    b = graph("b", "infer", "agraph (float[2] x) => (float[2] y) <float[2] v = {1.0, 2.0}> { y = Add(x, v) }")
    err = errors_of([a, b], variables=["v"])
    assert err.status == "VARIABLE_CONFLICT"
    assert "graph a" in err.message and "graph b" in err.message


def test_infer_graph_writing_a_variable_is_an_error():
    infer = graph("infer", "infer", "agraph (float[3,4] v) => (float[3,4] w) { w = Relu(v) }")
    err = errors_of([UPDATE, infer, INFER], variables=["w"])
    assert err.status == "GRAPH_INVALID"
    assert "infer graph infer writes variable 'w'" in err.message


def test_declared_variable_no_graph_uses_is_param_invalid():
    err = errors_of([INFER], variables=["w", "ghost"])
    assert err.status == "PARAM_INVALID" and "'ghost'" in err.message


def test_declared_variable_without_a_value_is_graph_invalid():
    err = errors_of([INFER], variables=["w"])
    assert err.status == "GRAPH_INVALID"
    assert "never written" in err.message and "infer" in err.message


def test_shape_steering_const_cannot_be_a_variable():
    infer = graph("infer", "infer", """
agraph (float[2,3] x) => (float[3,2] y) <int64[2] shp = {3, 2}> { y = Reshape(x, shp) }""")
    err = errors_of([infer], variables=["shp"])
    assert err.status == "GRAPH_INVALID" and "'shp'" in err.message


def test_a_variable_is_checked_against_the_graphs_that_use_it_not_every_graph(monkeypatch):
    """Many graphs, each reading its own variable: the per-variable checks look at that variable's graphs only
    (a look at every graph for every variable made dedupe quadratic in the bundle)."""
    n = 12
    outs = ", ".join(f"float[3] v{i}" for i in range(n))
    init = graph("init", "init", f"agraph (float[3] s) => ({outs}) {{ "
                 + " ".join(f"v{i} = Identity(s)" for i in range(n)) + " }")
    infers = [graph(f"g{i}", "infer", f"agraph (float[3] x, float[3] v{i}) => (float[3] y) {{ y = Add(x, v{i}) }}")
              for i in range(n)]
    looked = []
    real = dedupe._typed
    monkeypatch.setattr(dedupe, "_typed", lambda name, graphs, writes: (looked.append(len(graphs)),
                                                                       real(name, graphs, writes))[1])
    variables, _ = dedupe.run([init, *infers], {})
    assert sorted(variables) == sorted(f"v{i}" for i in range(n))
    assert all(variables[f"v{i}"]["readers"] == [f"g{i}"] and variables[f"v{i}"]["writers"] == ["init"]
               for i in range(n))
    assert len(looked) == 2 * n and set(looked) == {2}  # init and the one reader, twice a variable
