"""The ONNX backend node suite run through ``bundle_pipeline.backend``: case loading, exclusion lookup, one-case runner.

Shared by ``tests/conformance/test_node_suite.py`` and ``bench/conformance.py``. A case passes when every
data set's outputs match the expected ones as onnx's own runner checks them: same dtype, same shape, and
``assert_allclose(rtol=case.rtol, atol=case.atol)`` (NaNs equal; exact equality for integers and bools).
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from functools import cache

import numpy as np
import onnx
from exclusions import EXCLUSIONS
from onnx import numpy_helper
from onnx.backend.test.loader import load_model_tests

from bundle_pipeline.backend import GRAPH, BundleBackend


@cache
def node_cases() -> dict[str, object]:
    """name -> onnx TestCase (model, data_sets, rtol, atol) for every node case, built in memory."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {case.name: case for case in load_model_tests(kind="node")}


@cache
def _compiled_exclusions() -> list[tuple[re.Pattern, str]]:
    return [(re.compile(pattern), reason) for pattern, reason in EXCLUSIONS.items()]


def exclusion(name: str) -> str | None:
    """The reason a case is excluded (first matching pattern, matched on the whole name), else None."""
    return next((why for pattern, why in _compiled_exclusions() if pattern.fullmatch(name)), None)


def op_type(name: str) -> str:
    """The operator a case tests: its node's op for single-node models; ``*_expanded`` cases count for the
    op of the case they expand; other multi-node models for their most frequent op."""
    cases = node_cases()
    nodes = cases[name].model.graph.node
    if len(nodes) == 1:
        return nodes[0].op_type
    base = re.sub(r"_expanded(_ver\d+)?$", "", name)
    if base != name and base in cases and len(cases[base].model.graph.node) == 1:
        return cases[base].model.graph.node[0].op_type
    return Counter(n.op_type for n in nodes).most_common(1)[0][0]


def as_array(value: object) -> object:
    """Data-set entries are arrays, numpy scalars, TensorProtos, lists (sequences) or None (optional)."""
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, list | type(None)):
        return value
    return np.asarray(value)


def run_case(case, target: str = "cpu", executor: str = "auto") -> str:
    """Compile the case's model for ``target``, run every data set, compare; AssertionError on a mismatch.
    Returns the executor that ran the (last) bundle: ``onnxruntime`` or ``reference``."""
    rep = BundleBackend.prepare(case.model, target=target, executor=executor)
    for inputs, expected in case.data_sets:
        outputs = rep.run([as_array(x) for x in inputs])
        assert len(outputs) == len(expected), f"{len(outputs)} outputs, expected {len(expected)}"
        for name, got, want in zip(rep.outputs, outputs, expected, strict=True):
            assert_same(name, got, as_array(want), case.rtol, case.atol)
    return rep.bundle.executor_of(GRAPH) if rep.bundle is not None else "reference"


def assert_same(name: str, got: object, want: object, rtol: float, atol: float) -> None:
    """Tensors as onnx's runner compares them; a sequence (list) element by element; an empty optional (None)
    must be None."""
    if want is None:
        assert got is None, f"output {name}: expected an empty optional, got {type(got).__name__}"
        return
    if isinstance(want, list):
        assert isinstance(got, list), f"output {name}: expected a sequence, got {type(got).__name__}"
        assert len(got) == len(want), f"output {name}: sequence of {len(got)}, expected {len(want)}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same(f"{name}[{i}]", g, as_array(w), rtol, atol)
        return
    assert isinstance(want, np.ndarray), f"output {name}: expected value is {type(want).__name__}"
    assert isinstance(got, np.ndarray), f"output {name}: got {type(got).__name__}, expected a tensor"
    got = np.asarray(got)
    assert got.dtype == want.dtype, f"output {name}: dtype {got.dtype} != expected {want.dtype}"
    assert got.shape == want.shape, f"output {name}: shape {got.shape} != expected {want.shape}"
    if want.dtype == object or want.dtype.kind in "biuUS":
        np.testing.assert_array_equal(got, want, err_msg=f"output {name}")
    else:
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, equal_nan=True, err_msg=f"output {name}")
