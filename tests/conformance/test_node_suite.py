"""The ONNX backend node suite, cpu and npu targets, through the whole compiler (``bundle_pipeline.backend``).

Every node case of onnx's own backend suite is compiled as a one-infer-graph bundle, loaded and run; the
outputs must match as onnx's runner checks them. Cases that cannot pass yet are skipped with the reason
given in ``exclusions.py`` (shared with ``bench/conformance.py``), so this list is the documented gap.
No case is marked slow: the slowest takes about half a second (the whole module ~35 s of CPU per target).
The npu target runs natively what its kernel table covers (Conv, MatMul/Gemm, pools, elementwise...) on
Ascend formats, with TransData around, and the rest on standard layouts: same cases, same tolerances.
The cpu target runs twice: with ``executor="auto"`` (ONNX Runtime for what it runs to the spec, the reference
otherwise) and with the reference NumPy executor alone.
"""

from __future__ import annotations

import pytest
from node_suite import exclusion, node_cases, run_case

NAMES = sorted(node_cases())


@pytest.mark.parametrize(("target", "executor"), [("cpu", "auto"), ("cpu", "reference"), ("npu", "auto")])
@pytest.mark.parametrize("name", NAMES)
def test_node_case(name: str, target: str, executor: str) -> None:
    why = exclusion(name)
    if why:
        pytest.skip(why)
    run_case(node_cases()[name], target=target, executor=executor)


def test_suite_size_and_gap() -> None:
    """The suite is onnx 1.23's (1,884 node cases) and the exclusion list stays a minority of it."""
    excluded = [n for n in NAMES if exclusion(n)]
    assert len(NAMES) >= 1800
    assert len(NAMES) - len(excluded) >= 1300, f"only {len(NAMES) - len(excluded)} cases are run"
