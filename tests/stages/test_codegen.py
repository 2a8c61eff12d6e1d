"""codegen: the program as data (kernel calls + tiling + a liveness-based buffer plan) and how it executes."""

from __future__ import annotations

import numpy as np
import onnx.parser
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bundle_pipeline.ir.graph import Graph, Node, TensorType
from bundle_pipeline.kernels import run_kernel
from bundle_pipeline.runtime.executor import Executor, VariableStore
from bundle_pipeline.stages import codegen, parse

REUSE = {"exec_disable_reused_memory": "0"}
NO_REUSE = {"exec_disable_reused_memory": "1"}


def structure(body: str, name: str = "g") -> dict:
    m = onnx.parser.parse_model(f'<ir_version: 8, opset_import: ["" : 17]>\n{body}')
    return parse.run(m.SerializeToString(), {"graph": name, "where": name}).structure


# ---- random chain / diamond graphs over 1-D float tensors ----

UNARY = ("Neg", "Relu", "Sigmoid", "Abs")


@st.composite
def graphs(draw) -> Graph:
    """Each node reads the newest value (chain) or any earlier ones (diamonds); sizes change via Concat/ReduceMax."""
    sizes = {"x": draw(st.integers(1, 48))}
    nodes: list[Node] = []
    diamond = draw(st.booleans())
    for i in range(draw(st.integers(1, 14))):
        values = list(sizes)
        first = draw(st.sampled_from(values)) if diamond else values[-1]
        op = draw(st.sampled_from([*UNARY, "Concat", "ReduceMax"]))
        out = f"v{i}"
        if op == "Concat":
            second = draw(st.sampled_from(values))
            nodes.append(Node(f"n{i}", op, [first, second], [out], {"axis": 0}))
            sizes[out] = sizes[first] + sizes[second]
        elif op == "ReduceMax":
            nodes.append(Node(f"n{i}", op, [first], [out], {"keepdims": 1}))
            sizes[out] = 1
        else:
            nodes.append(Node(f"n{i}", op, [first], [out]))
            sizes[out] = sizes[first]
    produced = [n.outputs[0] for n in nodes]
    extra = draw(st.lists(st.sampled_from(produced), max_size=3, unique=True))
    outputs = [produced[-1], *(o for o in extra if o != produced[-1])]
    types = {v: TensorType((n,), "float32") for v, n in sizes.items()}
    return Graph(name="g", opset=17, inputs=["x"], outputs=outputs, nodes=nodes, types=types)


def lifetimes(graph: Graph) -> dict[str, tuple[int, int]]:
    """[defining step, last reading step], graph outputs to the end: computed here independently of codegen."""
    life = {}
    for index, node in enumerate(graph.nodes):
        for name in node.inputs:
            if name in life:
                life[name] = (life[name][0], index)
        for name in node.outputs:
            life[name] = (index, index)
    for name in graph.outputs:
        life[name] = (life[name][0], len(graph.nodes))
    return life


def byte_ranges(program: dict) -> dict[str, tuple[int, int]]:
    out = {}
    for name, plan in program["values"].items():
        nbytes = int(np.prod(plan["shape"], dtype=np.int64)) * np.dtype(plan["dtype"]).itemsize
        out[name] = (plan["offset"], plan["offset"] + nbytes)
    return out


def overlap(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Half-open byte ranges share a byte."""
    return a[0] < b[1] and b[0] < a[1]


def live_together(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Closed step intervals meet: a value read at step i and one written at step i are both live there."""
    return a[0] <= b[1] and b[0] <= a[1]


def execute(program: dict, feeds: dict) -> dict[str, np.ndarray]:
    return Executor(program, {}, VariableStore([])).run(feeds)


def reference(graph: Graph, feeds: dict) -> dict[str, np.ndarray]:
    env = dict(feeds)
    for node in graph.nodes:
        outs = run_kernel(node.op_type, [env[i] for i in node.inputs], node.attrs, graph.opset)
        env.update(zip(node.outputs, outs, strict=False))
    return {o: env[o] for o in graph.outputs}


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs(), st.integers(0, 2**31 - 1))
def test_buffer_plan_never_shares_bytes_between_live_values(graph, seed):
    assert graph.lint() == []
    s = graph.to_json()
    reused = codegen.run(s, {}, {}, "infer", REUSE)
    separate = codegen.run(s, {}, {}, "infer", NO_REUSE)
    assert reused["reuse_memory"] is True and separate["reuse_memory"] is False
    life = lifetimes(graph)
    for program in (reused, separate):
        ranges = byte_ranges(program)
        assert set(ranges) == {n.outputs[0] for n in graph.nodes}
        for name, (start, end) in ranges.items():
            assert start % codegen.ALIGN == 0
            assert end <= program["arena_bytes"]
            assert program["values"][name]["shape"] == list(graph.types[name].shape)
        names = sorted(ranges)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                if program is separate or live_together(life[a], life[b]):
                    assert not overlap(ranges[a], ranges[b]), (a, b, life[a], life[b], ranges[a], ranges[b])
    assert reused["arena_bytes"] <= separate["arena_bytes"]
    assert separate["arena_bytes"] == sum(-(-graph.types[n].nbytes // 64) * 64 for n in byte_ranges(separate))
    # and the planned arena computes the same numbers as a plain evaluation
    feeds = {"x": np.random.default_rng(seed).standard_normal(graph.types["x"].shape).astype(np.float32)}
    expected = reference(graph, feeds)
    for program in (reused, separate):
        got = execute(program, feeds)
        assert list(got) == graph.outputs
        for name in graph.outputs:
            np.testing.assert_array_equal(got[name], expected[name])


def chain(length: int, size: int) -> Graph:
    t = TensorType((size,), "float32")
    names = ["x", *(f"v{i}" for i in range(length))]
    nodes = [Node(f"n{i}", "Neg", [names[i]], [names[i + 1]]) for i in range(length)]
    return Graph(name="chain", opset=17, inputs=["x"], outputs=[names[-1]], nodes=nodes, types=dict.fromkeys(names, t))


def test_reuse_shrinks_the_arena_of_a_long_chain():
    s = chain(12, 256).to_json()
    reused = codegen.run(s, {}, {}, "infer", REUSE)
    separate = codegen.run(s, {}, {}, "infer", NO_REUSE)
    assert separate["arena_bytes"] == 12 * 1024
    assert reused["arena_bytes"] == 2 * 1024  # ping-pong between two buffers
    assert reused["arena_bytes"] < separate["arena_bytes"]
    x = np.arange(256, dtype=np.float32)
    np.testing.assert_array_equal(execute(reused, {"x": x})["v11"], x)


def test_both_arenas_inspect_shows_come_from_the_plans_of_either_setting():
    graph = chain(12, 1)
    graph.types = dict.fromkeys(graph.types, TensorType((3, 20), "float32"))  # 240 bytes, 256 aligned
    graph.formats = {"v3": "FRACTAL_NZ"}  # stored as (2, 1, 16, 16): 2048 bytes
    on, off = codegen.plan_buffers(graph, reuse=True)[1], codegen.plan_buffers(graph, reuse=False)[1]
    assert off == codegen.unshared_arena(graph) == 11 * 256 + 2048 and on < off
    assert codegen.plan_buffers(graph, reuse=True)[0]["v3"].storage == (2, 1, 16, 16)
    for options in (REUSE, NO_REUSE):
        program = codegen.run(graph.to_json(), {}, {}, "infer", options)
        assert program["arena_bytes_by_reuse"] == {"on": on, "off": off}
        assert program["arena_bytes"] == (on if options is REUSE else off)


def test_offsets_are_aligned_for_odd_sizes():
    graph = chain(5, 3)  # 12-byte values
    buffers, arena = codegen.plan_buffers(graph, reuse=False)
    assert [b.offset for b in buffers.values()] == [0, 64, 128, 192, 256]
    assert arena == 320
    buffers, arena = codegen.plan_buffers(graph, reuse=True)
    assert all(b.offset % 64 == 0 for b in buffers.values()) and arena == 128


CUBES = """
agraph (float[1,2,5,5] x, float[3,2,3,3] k, float[4,6] a, float[6,5] b, float[5,6] bt, int32[2,3] i, int32[3,2] j)
    => (float[1,3,3,3] c, float[4,5] m, float[4,5] g, float[4,5] r, int32[2,2] n) {
  c = Conv(x, k)
  m = MatMul(a, b)
  g = Gemm<transB = 1>(a, bt)
  r = Relu(m)
  n = MatMul(i, j)
}
"""


def test_allow_fp32_to_fp16_marks_cube_steps_only_and_force_fp16_also_rounds_vector_ops():
    s = structure(CUBES)
    plain = codegen.run(s, {}, {}, "infer", {"precision_mode": "must_keep_origin_dtype"})
    assert all("precision" not in step for step in plain["steps"])
    allowed = codegen.run(s, {}, {}, "infer", {"precision_mode": "allow_fp32_to_fp16"})
    marked = {step["op"]: step.get("precision") for step in allowed["steps"]}
    assert marked == {"Conv": "fp16", "MatMul": None, "Gemm": "fp16", "Relu": None}
    by_node = {tuple(step["outputs"]): step.get("precision") for step in allowed["steps"]}
    assert by_node[("m",)] == "fp16" and by_node[("n",)] is None  # an int32 MatMul stays exact
    forced = codegen.run(s, {}, {}, "infer", {"precision_mode": "force_fp16"})
    marked = {step["op"]: step.get("precision") for step in forced["steps"]}
    assert marked == {"Conv": "fp16", "MatMul": None, "Gemm": "fp16", "Relu": "fp16_round"}
    assert [st_["op"] for st_ in forced["steps"]] == [st_["op"] for st_ in plain["steps"]]


def test_force_fp16_rounds_cube_inputs_when_executed():
    s = structure("agraph (float[4,6] a, float[6,5] b) => (float[4,5] m) { m = MatMul(a, b) }")
    rng = np.random.default_rng(3)
    a, b = (rng.standard_normal(shape).astype(np.float32) + 1 / 3 for shape in ((4, 6), (6, 5)))
    exact = execute(codegen.run(s, {}, {}, "infer", {}), {"a": a, "b": b})["m"]
    half = execute(codegen.run(s, {}, {}, "infer", {"precision_mode": "force_fp16"}), {"a": a, "b": b})["m"]
    np.testing.assert_allclose(exact, a @ b, rtol=1e-6)
    rounded = a.astype(np.float16).astype(np.float32) @ b.astype(np.float16).astype(np.float32)
    np.testing.assert_allclose(half, rounded, rtol=1e-6)
    assert not np.array_equal(half, exact)


def test_feeds_exclude_variables_and_reads_list_them():
    s = structure("""
agraph (float[2,3] x, float[3,4] w) => (float[2,4] y) <float[4] b = {1.0, 2.0, 3.0, 4.0}, float[4] c = {0.5, 0.5, 0.5,
                                                                                                       0.5}> {
  h = MatMul(x, w)
  hb = Add(h, b)
  y = Mul(hb, c)
}""")
    variables = {"w": {"shape": [3, 4], "dtype": "float32"}, "b": {"shape": [4], "dtype": "float32"}}
    program = codegen.run(s, {}, variables, "infer", {})
    assert program["feeds"] == [{"name": "x", "shape": [2, 3], "dtype": "float32"}]
    assert program["reads"] == ["b", "w"]
    assert program["weights"] == ["c"]
    assert program["outputs"] == [{"name": "y", "shape": [2, 4], "dtype": "float32", "variable": False}]
    assert set(program["values"]) == {"h", "hb", "y"}  # feeds, variables and weights live outside the arena
    assert program["role"] == "infer" and program["opset"] == 17


def test_update_outputs_that_are_variables_are_flagged():
    s = structure("""
agraph (float[3,4] w_new, float[3,4] delta) => (float[3,4] w, float[3,4] seen) {
  w = Add(w_new, delta)
  seen = Identity(w)
}""", name="update")
    variables = {"w": {"shape": [3, 4], "dtype": "float32"}}
    program = codegen.run(s, {}, variables, "update", {})
    assert [(o["name"], o["variable"]) for o in program["outputs"]] == [("w", True), ("seen", False)]
    assert [f["name"] for f in program["feeds"]] == ["w_new", "delta"] and program["reads"] == []


def test_steps_carry_the_tiling_and_attrs():
    s = structure("""
agraph (float[1,2,6,6] x, float[3,2,3,3] k) => (float[1,3,4,4] y) { [conv] y = Conv<strides = [1, 1]>(x, k) }""")
    program = codegen.run(s, {"conv": {"tile_hw": 5, "workspace_bytes": 360}}, {}, "infer", {})
    (step,) = program["steps"]
    assert step["tiling"] == {"tile_hw": 5, "workspace_bytes": 360}
    assert step["attrs"] == {"strides": [1, 1]}
    assert program["formats"] == {}  # only non-ND formats are listed, and parse assigns none
    rng = np.random.default_rng(0)
    x, k = rng.standard_normal((1, 2, 6, 6)).astype(np.float32), rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    np.testing.assert_allclose(execute(program, {"x": x, "k": k})["y"], run_kernel("Conv", [x, k], {}, 17)[0],
                               rtol=1e-5, atol=1e-6)
