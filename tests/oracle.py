"""ONNX Runtime oracle: run an infer graph with substituted weights and compare outputs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper


def ort_run(
    model_or_path: onnx.ModelProto | str | Path,
    feeds: Mapping[str, np.ndarray],
    weights: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Run the model on ONNX Runtime (CPU), with the named initializers replaced by `weights`."""
    model = _load(model_or_path)
    if weights:
        model = substitute_initializers(model, weights)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(feeds)), strict=True))


def substitute_initializers(model: onnx.ModelProto, weights: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of `model` whose named initializers hold the given values (same shape, same dtype)."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    by_name = {t.name: t for t in result.graph.initializer}
    unknown = sorted(set(weights) - set(by_name))
    if unknown:
        raise KeyError(f"not initializers of graph {model.graph.name!r}: {unknown}; "
                       f"initializers are {sorted(by_name)}")
    for name, value in weights.items():
        by_name[name].CopyFrom(_replacement(by_name[name], np.asarray(value)))
    return result


def assert_outputs_close(
    actual: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray], rtol: float = 1e-4, atol: float = 1e-5
) -> None:
    """Assert every expected output is present and close; the message names the output and its errors."""
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    if missing or extra:
        raise AssertionError(f"output names differ: missing {missing}, unexpected {extra}")
    problems = [p for name in expected if (p := _mismatch(name, actual[name], expected[name], rtol, atol))]
    if problems:
        raise AssertionError("\n".join(problems))


def _mismatch(name: str, actual: np.ndarray, expected: np.ndarray, rtol: float, atol: float) -> str | None:
    """A description of how `actual` differs from `expected`, or None when they are close."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape:
        return f"output {name!r}: shape {actual.shape} != expected {expected.shape}"
    if actual.size == 0 or np.allclose(actual, expected, rtol=rtol, atol=atol):
        return None
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    abs_err = np.abs(a - e)
    rel_err = abs_err / np.maximum(np.abs(e), np.finfo(np.float64).tiny)
    bad = ~np.isclose(a, e, rtol=rtol, atol=atol)
    score = np.where(bad, np.nan_to_num(abs_err, nan=np.inf), -1.0)
    worst = np.unravel_index(int(np.argmax(score)), a.shape)
    return (
        f"output {name!r}: {int(bad.sum())}/{a.size} elements differ (rtol={rtol}, atol={atol}); "
        f"max abs err {np.nanmax(abs_err):.3g}, max rel err {np.nanmax(rel_err):.3g}; "
        f"worst at {tuple(int(i) for i in worst)}: actual {a[worst]!r} expected {e[worst]!r}"
    )


def _replacement(original: onnx.TensorProto, value: np.ndarray) -> onnx.TensorProto:
    expected_dtype = onnx.helper.tensor_dtype_to_np_dtype(original.data_type)
    expected_shape = tuple(original.dims)
    if value.shape != expected_shape:
        raise ValueError(f"weight {original.name!r}: shape {value.shape} != initializer shape {expected_shape}")
    if value.dtype != expected_dtype:
        raise ValueError(f"weight {original.name!r}: dtype {value.dtype} != initializer dtype {expected_dtype}")
    return numpy_helper.from_array(value, original.name)


def _load(model_or_path: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path
    return onnx.load(str(model_or_path))
