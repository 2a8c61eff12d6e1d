"""ONNX backend node test cases run straight through run_kernel, for every supported op."""

from __future__ import annotations

import re
import warnings

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from onnx.backend.test.loader import load_model_tests

from bundle_pipeline.kernels import SUPPORTED_OPS, KernelError, run_kernel

# Cases that cannot pass by design, each with the reason. Matched as regular expressions on the name.
EXCLUDED: dict[str, str] = {
    # Dropout in training mode draws random masks; only the reference's RNG reproduces them
    r"test_training_dropout(_default|_mask|_default_mask)?$": "random training-mode dropout",
}


def _decode(attr: onnx.AttributeProto) -> object:
    value = helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode() for v in value]
    return value


def _array(value: object) -> object:
    # A few cases (Cast/CastLike) store their data as TensorProto; sequences are lists, empty optionals None.
    if value is None or isinstance(value, list):
        return value
    return numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else np.asarray(value)


def _supported_cases() -> tuple[list, list]:
    """(single-node cases, multi-node cases) whose nodes are all supported default-domain ops."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = load_model_tests(kind="node")
    single, multi = [], []
    for case in cases:
        nodes = case.model.graph.node
        if all(n.domain in ("", "ai.onnx") and n.op_type in SUPPORTED_OPS for n in nodes):
            (single if len(nodes) == 1 else multi).append(case)
    return single, multi


CASES, GRAPH_CASES = _supported_cases()


def _excluded(name: str) -> str | None:
    return next((why for pat, why in EXCLUDED.items() if re.fullmatch(pat, name)), None)


def _assert_same(name: str, got: object, want: object, rtol: float, atol: float) -> None:
    if want is None or isinstance(want, list):  # an empty optional, a sequence (element by element)
        assert (got is None) == (want is None) and isinstance(got, list | type(None)), f"{name}: got {got!r}"
        assert want is None or len(got) == len(want), f"{name}: sequence of {len(got)}, expected {len(want)}"
        for i, (g, w) in enumerate(zip(got or [], want or [], strict=True)):
            _assert_same(f"{name}[{i}]", g, np.asarray(w), rtol, atol)
        return
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype} != {want.dtype}"
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    if want.dtype == object or want.dtype.kind in "biu":
        np.testing.assert_array_equal(got, want, err_msg=name)
    else:
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, equal_nan=True, err_msg=name)


def run_case(case) -> None:
    """Run a backend case node by node through run_kernel; compare every graph output of every data set."""
    graph = case.model.graph
    opset = next(o.version for o in case.model.opset_import if o.domain in ("", "ai.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    in_names = [i.name for i in graph.input if i.name not in inits]
    out_names = [o.name for o in graph.output]
    for raw_feeds, raw_expected in case.data_sets:
        feeds, expected = [_array(f) for f in raw_feeds], [_array(e) for e in raw_expected]
        values = dict(zip(in_names, feeds, strict=False)) | inits
        for node in graph.node:  # backend graphs are stored in topological order
            attrs = {a.name: _decode(a) for a in node.attribute}
            if node.op_type == "Split" and "split" not in attrs and "num_outputs" not in attrs:
                attrs["num_outputs"] = len(node.output)  # the executor passes the node's output count
            inputs = [values[n] if n else None for n in node.input]
            outs = run_kernel(node.op_type, inputs, attrs, opset)
            values |= {name: _array(outs[pos]) for pos, name in enumerate(node.output) if name}
        for name, want in zip(out_names, expected, strict=True):
            got = values[name]
            # A chain of float16 ops may round a few ulps differently (we accumulate in float32).
            half = getattr(got, "dtype", None) == np.float16
            rtol = max(case.rtol, 4e-3) if half and len(graph.node) > 1 else case.rtol
            _assert_same(f"{case.name}:{name}", got, want, rtol, case.atol)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_node_case(case) -> None:
    why = _excluded(case.name)
    if why:
        pytest.skip(why)
    run_case(case)


@pytest.mark.parametrize("case", GRAPH_CASES, ids=[c.name for c in GRAPH_CASES])
def test_node_case_graph(case) -> None:
    """Multi-node backend cases (mostly function expansions) built only from supported ops."""
    why = _excluded(case.name)
    if why:
        pytest.skip(why)
    run_case(case)


def test_node_suite_coverage() -> None:
    """Most supported ops have backend cases and nearly all cases are run (not excluded)."""
    excluded = [c.name for c in CASES if _excluded(c.name)]
    assert len(CASES) > 700 and len(GRAPH_CASES) > 300
    assert len(excluded) < len(CASES) // 4


def test_unsupported_op_raises() -> None:
    with pytest.raises(KernelError, match="no kernel for op NoSuchOp"):
        run_kernel("NoSuchOp", [np.zeros(1)], {}, 17)
