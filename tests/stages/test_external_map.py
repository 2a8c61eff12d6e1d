"""external_map: large external-data weights viewed in a map of their file equal what ExternalRef.load reads."""

from __future__ import annotations

import numpy as np
import pytest

from bundle_pipeline.errors import BundleIOError
from bundle_pipeline.ir.external import ExternalRef
from bundle_pipeline.ir.external_map import MAP_MIN_BYTES, MappedExternal, mapped_array


@pytest.mark.parametrize("offset", [0, 4096, 12345])  # a page-aligned start and one inside a page
def test_a_mapped_tensor_equals_the_read_one_and_is_read_only(tmp_path, offset):
    arr = np.random.default_rng(0).standard_normal((600, 700)).astype(np.float32)
    assert arr.nbytes >= MAP_MIN_BYTES
    path = tmp_path / "w.bin"
    path.write_bytes(b"\x07" * offset + arr.tobytes() + b"\x09" * 100)
    ref = ExternalRef(str(path), offset, arr.nbytes, "float32", arr.shape)
    got = MappedExternal(ref).load()
    assert not got.flags.writeable and got.dtype == arr.dtype and got.shape == arr.shape
    assert got.tobytes() == arr.tobytes() == ref.load().tobytes()


def test_small_and_packed_tensors_are_read_as_before(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(bytes(range(256)) * (MAP_MIN_BYTES // 128))
    small = ExternalRef(str(path), 0, 64, "float32", (16,))
    packed = ExternalRef(str(path), 0, MAP_MIN_BYTES + 1, "int4", ((MAP_MIN_BYTES + 1) * 2,))
    for ref in (small, packed):
        got = MappedExternal(ref).load()
        assert got.flags.writeable and got.tobytes() == ref.load().tobytes()


def test_a_short_file_is_one_bundle_io_error(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(bytes(MAP_MIN_BYTES))
    with pytest.raises(BundleIOError, match="shorter than the tensor needs"):
        mapped_array(ExternalRef(str(path), 8, MAP_MIN_BYTES, "uint8", (MAP_MIN_BYTES,)))
    with pytest.raises(BundleIOError, match="cannot read external data"):
        mapped_array(ExternalRef(str(tmp_path / "gone.bin"), 0, MAP_MIN_BYTES, "uint8", (MAP_MIN_BYTES,)))
