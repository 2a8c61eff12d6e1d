"""npu storage formats: exact element positions, zero padding, exact round trips, TransData between any two."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bundle_pipeline.formats import (
    FORMATS,
    FormatError,
    accepts,
    from_format,
    pad_mask,
    storage_shape,
    to_format,
    transdata,
    zero_padding,
)

EDGE = st.sampled_from([1, 15, 16, 17, 33])  # around the 16-lane fractal edge
SMALL = st.integers(1, 4)
DTYPES = st.sampled_from([np.float32, np.float16, np.int32])


def _random(shape: tuple[int, ...], dtype: type, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "i":
        # Non-zero values, so a misplaced element can never hide in a zero padding lane.
        return rng.integers(1, 1000, size=shape).astype(dtype)
    return (rng.random(shape) + 0.5).astype(dtype)


def _physical_index(fmt: str, shape: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """The documented position of every logical element, from the layout formulas."""
    idx = np.indices(shape)
    if fmt == "NC1HWC0":
        n, c, h, w = idx
        return n, c // 16, h, w, c % 16
    if fmt == "FRACTAL_Z":
        o, i, kh, kw = idx
        _o, _i, kh_n, kw_n = shape
        return (i // 16) * kh_n * kw_n + kh * kw_n + kw, o // 16, o % 16, i % 16
    *batch, m, n = idx
    return (*batch, n // 16, m // 16, m % 16, n % 16)


SHAPES = {
    "NC1HWC0": st.tuples(SMALL, EDGE, SMALL, SMALL),
    "FRACTAL_Z": st.tuples(EDGE, EDGE, st.integers(1, 3), st.integers(1, 3)),
    "FRACTAL_NZ": st.lists(SMALL, max_size=2).flatmap(lambda b: st.tuples(*map(st.just, b), EDGE, EDGE)),
}


@pytest.mark.parametrize("fmt", sorted(SHAPES))
@settings(max_examples=40, deadline=None)
@given(data=st.data(), dtype=DTYPES, seed=st.integers(0, 2**16))
def test_layout_padding_round_trip(fmt: str, data: st.DataObject, dtype: type, seed: int) -> None:
    shape = data.draw(SHAPES[fmt])
    x = _random(shape, dtype, seed)
    y = to_format(x, fmt)
    assert y.shape == storage_shape(fmt, shape)
    assert y.dtype == x.dtype and y.flags.c_contiguous
    # Exact layout: every element where the formula says.
    np.testing.assert_array_equal(y[_physical_index(fmt, shape)], x)
    # Padding lanes: exactly the lanes no element maps to, and zero.
    mask = pad_mask(fmt, shape)
    assert mask.shape == y.shape and mask.sum() == y.size - x.size
    assert not np.any(y[mask])
    covered = np.zeros(y.shape, dtype=bool)
    covered[_physical_index(fmt, shape)] = True
    np.testing.assert_array_equal(covered, ~mask)
    back = from_format(y, fmt, shape)
    assert back.dtype == x.dtype
    np.testing.assert_array_equal(back, x)


def test_storage_shapes() -> None:
    assert storage_shape("NC1HWC0", (2, 17, 5, 7)) == (2, 2, 5, 7, 16)
    assert storage_shape("FRACTAL_Z", (33, 17, 3, 2)) == (2 * 3 * 2, 3, 16, 16)
    assert storage_shape("FRACTAL_NZ", (4, 33, 17)) == (4, 2, 3, 16, 16)
    assert storage_shape("FRACTAL_NZ", (1, 1)) == (1, 1, 16, 16)
    assert storage_shape("ND", (5,)) == (5,)
    assert storage_shape("NCHW", (1, 2, 3, 4)) == (1, 2, 3, 4)


def test_accepts_and_errors() -> None:
    assert accepts("ND", ()) and accepts("ND", (3,))
    assert accepts("FRACTAL_NZ", (3, 4)) and not accepts("FRACTAL_NZ", (3,))
    assert not accepts("NC1HWC0", (1, 2, 3)) and not accepts("FRACTAL_Z", (1, 2, 3))
    assert not accepts("NCHW", (2, 3)) and not accepts("NOPE", (1, 2, 3, 4))
    with pytest.raises(FormatError, match="FRACTAL_NZ"):
        to_format(np.zeros(7), "FRACTAL_NZ")
    with pytest.raises(FormatError, match="unknown format"):
        storage_shape("NHWC", (1, 2, 3, 4))
    with pytest.raises(FormatError, match="does not hold"):
        from_format(np.zeros((1, 1, 2, 2, 16)), "NC1HWC0", (1, 17, 2, 2))
    assert issubclass(FormatError, ValueError)


def test_nd_and_nchw_are_the_same_bytes() -> None:
    x = _random((2, 3, 4, 5), np.float32, 0)
    for src, dst in itertools.product(("ND", "NCHW"), repeat=2):
        np.testing.assert_array_equal(transdata(x, src, dst, x.shape), x)
    assert to_format(x, "NCHW").tobytes() == to_format(x, "ND").tobytes()


@settings(max_examples=15, deadline=None)
@given(n=SMALL, c=EDGE, h=st.integers(1, 3), w=st.integers(1, 3), dtype=DTYPES, seed=st.integers(0, 2**16))
def test_transdata_any_to_any(n: int, c: int, h: int, w: int, dtype: type, seed: int) -> None:
    shape = (n, c, h, w)
    x = _random(shape, dtype, seed)
    for src, dst in itertools.product([f for f in FORMATS if accepts(f, shape)], repeat=2):
        y = transdata(to_format(x, src), src, dst, shape)
        np.testing.assert_array_equal(y, to_format(x, dst), err_msg=f"{src} -> {dst}")


def test_empty_and_bool_tensors() -> None:
    for fmt, shape in [("NC1HWC0", (0, 3, 2, 2)), ("FRACTAL_NZ", (0, 5, 3)), ("FRACTAL_Z", (4, 3, 0, 1))]:
        x = np.zeros(shape, dtype=np.float32)
        assert to_format(x, fmt).shape == storage_shape(fmt, shape)
        np.testing.assert_array_equal(from_format(to_format(x, fmt), fmt, shape), x)
    b = np.ones((2, 17, 1, 1), dtype=bool)
    y = to_format(b, "NC1HWC0")
    assert y.dtype == bool and y.sum() == b.sum()


def test_zero_padding_and_mask_cache() -> None:
    shape = (1, 17, 2, 2)
    y = np.ones(storage_shape("NC1HWC0", shape), dtype=np.float32)
    z = zero_padding(y, "NC1HWC0", shape)
    assert z.sum() == math.prod(shape) and y.sum() == y.size  # a new array; the input is untouched
    mask = pad_mask("NC1HWC0", shape)
    assert mask is pad_mask("NC1HWC0", shape) and not mask.flags.writeable
    x = np.ones((3, 4))
    assert zero_padding(x, "ND", x.shape) is x


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.integers(0, 3), max_size=4).map(tuple), min_size=1, max_size=3))
def test_broadcast_is_numpys(shapes: list[tuple[int, ...]]) -> None:
    """The format pass's pure-Python broadcast answers as np.broadcast_shapes does (None where numpy raises)."""
    from bundle_pipeline.targets.npu import broadcast

    try:
        want = np.broadcast_shapes(*shapes)
    except ValueError:
        want = None
    assert broadcast(*shapes) == want


@pytest.mark.parametrize(("op", "formats", "shapes", "out_format", "out_shape"), [
    ("MatMul", ["FRACTAL_NZ", "FRACTAL_NZ"], [(4, 23), (23, 30)], "FRACTAL_NZ", (4, 30)),
    ("MatMul", ["FRACTAL_NZ", "FRACTAL_NZ"], [(2, 4, 23), (3, 23, 30)], "FRACTAL_NZ", (2, 4, 30)),
    ("Add", ["FRACTAL_NZ", "FRACTAL_NZ"], [(4, 30), (30,)], "FRACTAL_NZ", (4, 30)),
    ("Add", ["FRACTAL_NZ", "ND"], [(4, 30), (1,)], "FRACTAL_NZ", (4, 30)),
    ("Add", ["FRACTAL_NZ"], [(4, 30), (1,)], "FRACTAL_NZ", (4, 30)),
    ("Conv", ["NC1HWC0", "ND"], [(1, 3, 8, 8), (4, 3, 3, 3)], "NC1HWC0", (1, 4, 6, 6)),
    ("Relu", ["NC1HWC0"], [(1, 3, 8, 8)], "FRACTAL_Z", (1, 3, 8, 8)),
    ("Resize", ["ND"], [(1, 3)], "ND", (1, 3)),
])
def test_supports_agrees_with_check_call(op, formats, shapes, out_format, out_shape) -> None:
    """``supports`` rejects a misfit format before building a call; its answer stays check_call's."""
    from bundle_pipeline.layouts import FormatError
    from bundle_pipeline.targets.npu import Call, KernelError, check_call, supports

    call = Call(op, [None] * len(shapes), {}, 17, formats, out_format, shapes, out_shape, None)
    try:
        check_call(call)
        native = True
    except (KernelError, FormatError) as err:
        native = False
        assert op in str(err)
    assert supports(op, {}, 17, formats, shapes, out_format, out_shape) == native
