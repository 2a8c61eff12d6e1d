"""tiling: tile shapes that keep conv (im2col) and matmul workspaces within the target budget, same numbers."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx.parser
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bundle_pipeline.cache import Cache
from bundle_pipeline.ir.graph import Graph
from bundle_pipeline.kernels import run_kernel
from bundle_pipeline.stages import parse, tiling
from bundle_pipeline.stages.tiling_search import candidate_count
from bundle_pipeline.targets import get_target
from bundle_pipeline.tasks.kernel_cache import KernelCache

CPU = get_target("cpu")
NPU = get_target("npu")
BUDGET = CPU.buffers["workspace_bytes"]


def structure(body: str) -> dict:
    m = onnx.parser.parse_model(f'<ir_version: 8, opset_import: ["" : 17]>\n{body}')
    return parse.run(m.SerializeToString(), {"graph": "g", "where": "g"}).structure


def with_budget(budget: int):
    return dataclasses.replace(CPU, buffers={"workspace_bytes": budget}, fingerprint=f"cpu-{budget}")


def test_large_conv_is_tiled_within_the_cpu_budget():
    s = structure("""
agraph (float[1,64,128,128] x, float[64,64,3,3] w) => (float[1,64,126,126] y) { [conv] y = Conv(x, w) }""")
    plan = tiling.run(s, CPU)
    column = 64 * 3 * 3 * 4  # bytes of one im2col row
    assert 126 * 126 * column > BUDGET
    assert set(plan) == {"conv"}
    tile = plan["conv"]
    assert tile["workspace_bytes"] == tile["tile_hw"] * column <= BUDGET
    assert (tile["tile_hw"] + 1) * column > BUDGET  # the largest chunk that fits
    assert tile["tile_hw"] < 126 * 126


@pytest.mark.parametrize(("a", "b", "trans_b"), [("2048,1024", "1024,2048", 0), ("4,512,2048", "2048,512", 0),
                                                 ("2048,1024", "2048,1024", 1)])
def test_large_matmul_is_tiled_within_the_cpu_budget(a, b, trans_b):
    op = "Gemm<transB = 1>" if trans_b else "MatMul"
    s = structure(f"agraph (float[{a}] a, float[{b}] b) => (float[d0,d1] y) {{ [mm] y = {op}(a, b) }}")
    plan = tiling.run(s, CPU)
    assert set(plan) == {"mm"}
    tile = plan["mm"]
    m = int(a.split(",")[-2])
    n = int(b.split(",")[-2] if trans_b else b.split(",")[-1])
    k = int(a.split(",")[-1])
    assert tile["workspace_bytes"] == (tile["tile_m"] * k + k * tile["tile_n"] + tile["tile_m"] * tile["tile_n"]) * 4
    assert tile["workspace_bytes"] <= BUDGET
    assert 1 <= tile["tile_m"] <= m and 1 <= tile["tile_n"] <= n
    assert tile["tile_m"] < m or tile["tile_n"] < n


def test_small_kernels_are_not_tiled():
    s = structure("""
agraph (float[1,3,32,32] x, float[8,3,3,3] w, float[64,256] a, float[256,64] b) => (float[1,8,30,30] y,
                                                                                   float[64,64] z) {
  y = Conv(x, w)
  z = MatMul(a, b)
  r = Relu(z)
}""")
    assert tiling.run(s, CPU) == {}
    graph = Graph.from_json(s)
    for node in graph.nodes:
        types = [graph.types[i] for i in node.inputs]
        assert tiling.choose(node, types, graph.types[node.outputs[0]], BUDGET) is None


def test_tiling_is_a_function_of_the_kernel_signature():
    body = "agraph (float[512,512] a, float[512,512] b) => (float[512,512] y) {{ [{}] y = MatMul(a, b) }}"
    one = tiling.run(structure(body.format("first")), with_budget(1 << 16))
    two = tiling.run(structure(body.format("second")), with_budget(1 << 16))
    assert one["first"] == two["second"]
    assert tiling.run(structure(body.format("first")), with_budget(1 << 17))["first"] != one["first"]


@st.composite
def convs(draw):
    group = draw(st.integers(1, 2))
    c, m = group * draw(st.integers(1, 3)), group * draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride, pad = draw(st.integers(1, 2)), draw(st.integers(0, 1))
    h, w = draw(st.integers(kh, 9)), draw(st.integers(kw, 9))
    n = draw(st.integers(1, 2))
    column = c // group * kh * kw * 4
    budget = draw(st.integers(max(16, column // 2), column * 12))  # sometimes below one im2col row
    return n, c, h, w, m, kh, kw, stride, pad, group, budget


@settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(convs(), st.integers(0, 2**31 - 1))
def test_tiled_conv_gives_the_untiled_numbers(case, seed):
    n, c, h, w, m, kh, kw, stride, pad, group, budget = case
    s = structure(f"""
agraph (float[{n},{c},{h},{w}] x, float[{m},{c // group},{kh},{kw}] w, float[{m}] b) => (float[d0,d1,d2,d3] y) {{
  [conv] y = Conv<strides = [{stride}, {stride}], pads = [{pad}, {pad}, {pad}, {pad}], group = {group}>(x, w, b)
}}""")
    out_shape = s["types"]["y"]["shape"]
    positions = out_shape[2] * out_shape[3]
    column = c // group * kh * kw * 4
    plan = tiling.run(s, with_budget(budget))
    if n * group * positions * column <= budget:  # untiled im2col covers every image and group at once
        assert plan == {}
        return
    tile = plan["conv"]
    assert 1 <= tile["tile_hw"] <= positions
    assert tile["workspace_bytes"] == tile["tile_hw"] * column
    assert tile["workspace_bytes"] <= budget or tile["tile_hw"] == 1  # one row is the smallest chunk there is
    rng = np.random.default_rng(seed)
    inputs = [rng.standard_normal(shape).astype(np.float32) for shape in
              ((n, c, h, w), (m, c // group, kh, kw), (m,))]
    attrs = Graph.from_json(s).nodes[0].attrs
    (untiled,) = run_kernel("Conv", inputs, attrs, 17)
    (tiled,) = run_kernel("Conv", inputs, attrs, 17, tile)
    assert list(tiled.shape) == out_shape and tiled.dtype == np.float32
    np.testing.assert_allclose(tiled, untiled, rtol=1e-5, atol=1e-5)


@st.composite
def matmuls(draw):
    op = draw(st.sampled_from(["MatMul", "Gemm"]))
    m, k, n = draw(st.integers(1, 24)), draw(st.integers(1, 24)), draw(st.integers(1, 24))
    batch = draw(st.sampled_from([(), (2,), (2, 3)])) if op == "MatMul" else ()
    trans_a = draw(st.integers(0, 1)) if op == "Gemm" else 0
    trans_b = draw(st.integers(0, 1)) if op == "Gemm" else 0
    budget = draw(st.integers(4 * (2 * k + 1), 4 * (m * k + k * n + m * n) + 64))
    return op, batch, m, k, n, trans_a, trans_b, budget


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(matmuls(), st.integers(0, 2**31 - 1))
def test_tiled_matmul_gives_the_untiled_numbers(case, seed):
    op, batch, m, k, n, trans_a, trans_b, budget = case
    a_shape = (*batch, k, m) if trans_a else (*batch, m, k)
    b_shape = (n, k) if trans_b else (k, n)
    dims = ",".join
    out = dims(f"d{i}" for i in range(len(batch) + 2))
    if op == "Gemm":
        call = f"Gemm<transA = {trans_a}, transB = {trans_b}, alpha = 0.5>(a, b, c)"
        extra = f", float[{n}] c"
    else:
        call, extra = "MatMul(a, b)", ""
    s = structure(f"""
agraph (float[{dims(map(str, a_shape))}] a, float[{dims(map(str, b_shape))}] b{extra}) => (float[{out}] y) {{
  [mm] y = {call}
}}""")
    plan = tiling.run(s, with_budget(budget))
    if (m * k + k * n + m * n) * 4 <= budget:
        assert plan == {}
        return
    tile = plan["mm"]
    assert tile["workspace_bytes"] == (tile["tile_m"] * k + k * tile["tile_n"] + tile["tile_m"] * tile["tile_n"]) * 4
    assert tile["workspace_bytes"] <= budget  # the budget always fits 1x1 blocks here
    assert tile["tile_m"] < m or tile["tile_n"] < n
    rng = np.random.default_rng(seed)
    inputs = [rng.standard_normal(a_shape).astype(np.float32), rng.standard_normal(b_shape).astype(np.float32)]
    if op == "Gemm":
        inputs.append(rng.standard_normal(n).astype(np.float32))
    attrs = Graph.from_json(s).nodes[0].attrs
    (untiled,) = run_kernel(op, inputs, attrs, 17)
    (tiled,) = run_kernel(op, inputs, attrs, 17, tile)
    assert list(tiled.shape) == s["types"]["y"]["shape"]
    np.testing.assert_allclose(tiled, untiled, rtol=1e-5, atol=1e-5)


def test_node_with_omitted_first_output_is_not_a_crash():
    s = structure("""
agraph (float[5,1,3] x, float[1,16,3] w, float[1,16,4] r) => (float[1,1,4] h) { , h = LSTM<hidden_size = 4>(x, w, r) }
""")
    assert tiling.run(s, CPU) == {}


# ---- npu: native cube kernels searched all at once, big ones through the kernel cache ----

CUBE_KERNELS = """
agraph (float16[17,40] x, float16[40,56] w1, float16[56,24] w2, float16[24,56] w3, float16[1,8,10,10] img,
        float16[16,8,3,3] k, bool c, float16[24,17] xt, float16[512,512] big) => (float16[17,56] y,
                                                                                   float16[1,16,8,8] z,
                                                                                   float16[17,24] v,
                                                                                   float16[512,512] u) {
  [mm1] h = MatMul(x, w1)
  [mm2] g = MatMul(h, w2)
  [mm3] y = Gemm<transB = 1>(g, w3)
  [mm4] twin = MatMul(x, w1)
  [conv] z = Conv(img, k)
  [gemm_t] v = Gemm<transA = 1>(xt, w2)
  [big] u = MatMul(big, big)
  [cond] b = If(c) <
    then_branch = then_g () => (float16[17,56] t) { [in_then] t = MatMul(x, w1) },
    else_branch = else_g () => (float16[17,56] e) { [in_else] e = Gemm<transB = 1>(g, w3) }
  >
}"""


def native_structure(body: str, native: set[str]) -> dict:
    """The parsed graph with ``native`` (node names, bodies too) marked as the npu's native kernels."""
    graph = Graph.from_json(structure(body))
    for owner, node in graph.walk():
        if node.name in native:
            owner.native.append(node.name)
    return graph.to_json()


def one_by_one(s: dict, target) -> dict[str, dict]:
    """The plan as the stage made it before batching: Graph.walk, one search_native or choose per kernel."""
    graph, budget, plan = Graph.from_json(s), int(target.buffers["workspace_bytes"]), {}
    for owner, node in graph.walk():
        if node.op_type not in tiling.TILED_OPS:
            continue
        types = [owner.types[i] if i else None for i in node.inputs]
        output = owner.types[node.outputs[0]]
        if node.name in owner.native:
            plan[node.name] = tiling.search_native(node, types, output, target)
        elif (tile := tiling.choose(node, types, output, budget)) is not None:
            plan[node.name] = tile
    return plan


def test_native_kernels_batched_equal_one_by_one_searches():
    then, other = "cond/then_branch/in_then", "cond/else_branch/in_else"  # parse prefixes body node names
    native = {"mm1", "mm2", "mm3", "mm4", "conv", "gemm_t", "big", then, other}
    s = native_structure(CUBE_KERNELS, native)
    plan = tiling.run(s, NPU)
    assert list(plan) == list(one_by_one(s, NPU))  # walk order, bodies after their node
    assert plan == one_by_one(s, NPU)
    assert set(plan) == native and plan["mm4"] == plan["mm1"] == plan[then] and plan[other] == plan["mm3"]
    assert plan["conv"].keys() == {"tile_hw", "tile_n", "tile_k", "k_l1", "cost"}
    # not native: the standard-layout split of the workspace budget (untiled here: it fits)
    assert tiling.run(native_structure(CUBE_KERNELS, native - {"mm1", other}), NPU) == {
        name: t for name, t in plan.items() if name not in ("mm1", other)}


def test_only_big_searches_go_through_the_kernel_cache(tmp_path):
    s = native_structure(CUBE_KERNELS, {"mm1", "mm2", "conv", "big", "in_then"})
    graph = Graph.from_json(s)
    sizes = {node.name: candidate_count(tiling.native_problem(node.op_type, node.attrs,
                                                              [graph.types[i] for i in node.inputs],
                                                              graph.types[node.outputs[0]]))
             for node in graph.nodes if node.name in graph.native}
    assert sizes["big"] >= tiling.MEMO_MIN_CANDIDATES > max(sizes["mm1"], sizes["mm2"], sizes["conv"])
    cache = Cache(str(tmp_path / "cache"))
    first = KernelCache(cache, "tiling", tiling.VERSION, NPU.fingerprint)
    plan = tiling.run(s, NPU, first.get)
    assert first.stats() == {"kernel_hits": 0, "kernel_misses": 1}  # the big search, recorded
    again = KernelCache(cache, "tiling", tiling.VERSION, NPU.fingerprint)  # another task, graph or bundle
    assert tiling.run(s, NPU, again.get) == plan == tiling.run(s, NPU)
    assert again.stats() == {"kernel_hits": 1, "kernel_misses": 0}
