"""external_ranges.hash_plain_ranges: the planner's numpy-free range hashes equal tensor_hash of the loaded tensors."""

from __future__ import annotations

import os

import numpy as np
import pytest

from bundle_pipeline.dtypes import dtype_from_name
from bundle_pipeline.hashing import tensor_hash
from bundle_pipeline.ir.external_map import hash_ranges
from bundle_pipeline.ir.external_ranges import PLAIN_TYPES, hash_plain_ranges, range_key


def _ranges_file(tmp_path, tensors: list[np.ndarray]) -> tuple[str, list[str]]:
    path, keys, blob = tmp_path / "w.bin", [], b"\x05" * 3  # an odd first offset: ranges need no alignment
    for arr in tensors:
        keys.append(range_key(len(blob), arr.dtype.name, arr.shape))
        blob += np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()
    path.write_bytes(blob + b"\x09" * 7)
    return str(path), keys


@pytest.mark.parametrize("dtype", sorted(PLAIN_TYPES))
def test_each_plain_type_hashes_as_tensor_hash_does(tmp_path, dtype):
    rng = np.random.default_rng(1)
    shapes = [(3, 5), (), (0, 4), (70000,)]
    tensors = [(rng.standard_normal(shape) * 50).astype(dtype_from_name(dtype)) for shape in shapes]
    path, keys = _ranges_file(tmp_path, tensors)
    fd = os.open(path, os.O_RDONLY)
    try:
        plain = hash_plain_ranges(fd, keys)
        assert plain == hash_ranges(fd, keys)  # the numpy reader
    finally:
        os.close(fd)
    assert plain == {k: tensor_hash(a) for k, a in zip(keys, tensors, strict=True)}
    assert PLAIN_TYPES[dtype][0] == np.dtype(dtype).str


def test_other_types_and_ranges_past_the_end_are_left_to_the_numpy_reader(tmp_path):
    path, keys = _ranges_file(tmp_path, [np.arange(6, dtype=np.float32)])
    fd = os.open(path, os.O_RDONLY)
    try:
        assert hash_plain_ranges(fd, [*keys, range_key(0, "bfloat16", [2])]) is None
        assert hash_plain_ranges(fd, [range_key(8, "float32", [100])]) is None
        assert hash_plain_ranges(fd, [range_key(-1, "float32", [1])]) is None
        assert hash_plain_ranges(fd, []) == {}
    finally:
        os.close(fd)
