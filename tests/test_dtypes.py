"""bundle_pipeline.dtypes: dtype names <-> numpy dtypes for the ml_dtypes element types, and what relies on it
(IR tensor encoding, tensor hashes, manifest validation, packed external data)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from onnx import helper, numpy_helper

from bundle_pipeline.dtypes import (
    EXTENDED,
    PACKED_BITS,
    dtype_from_name,
    hash_key,
    is_extended,
    storage_dtype,
    unpack_sub_byte,
)
from bundle_pipeline.hashing import canonical_json, tensor_hash
from bundle_pipeline.ir.external import ExternalRef
from bundle_pipeline.ir.graph import TensorType, decode_tensor, encode_tensor
from bundle_pipeline.runtime.validate import DTYPES

# every ONNX element type ml_dtypes provides (FLOAT6 aside), by TensorProto code
ONNX_CODES = range(16, 27)


def sample(name: str, shape: tuple[int, ...] = (3, 4)) -> np.ndarray:
    """Small values every extended type holds exactly (e8m0: powers of two; int2: -2..1)."""
    values = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape) % 4 - 2
    if name == "float8_e8m0fnu":
        values = 2.0 ** values
    elif name == "uint2" or name == "uint4":
        values = np.abs(values)
    elif name == "int2":
        values = np.clip(values, -2, 1)
    return values.astype(EXTENDED[name])


@pytest.mark.parametrize("code", ONNX_CODES)
def test_every_onnx_ml_dtype_is_known_by_name(code):
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(code))
    assert is_extended(dtype) and is_extended(dtype.name)
    assert dtype_from_name(dtype.name) == dtype
    assert dtype.name in DTYPES  # the manifest allow-list takes it


def test_plain_names_are_numpy_and_never_extended():
    for name in ("float32", "int64", "bool", "float16", "uint8"):
        assert dtype_from_name(name) == np.dtype(name)
        assert not is_extended(name) and storage_dtype(name) == np.dtype(name)
    assert "object" not in DTYPES
    with pytest.raises(TypeError):
        dtype_from_name("no_such_type")


@pytest.mark.parametrize("name", sorted(EXTENDED))
def test_storage_dtype_is_same_size_unsigned(name):
    store = storage_dtype(name)
    assert store.kind == "u" and store.itemsize == EXTENDED[name].itemsize
    arr = sample(name)
    assert np.array_equal(arr.view(store).view(EXTENDED[name]).view(store), arr.view(store))


@pytest.mark.parametrize("name", sorted(EXTENDED))
def test_encoded_tensor_round_trips(name):
    arr = sample(name)
    back = decode_tensor(encode_tensor(arr))
    assert back.dtype == arr.dtype and back.shape == arr.shape and back.tobytes() == arr.tobytes()
    assert TensorType(arr.shape, name).nbytes == arr.nbytes


def test_same_bytes_of_different_1_byte_types_hash_apart():
    # dtype.str is '<V1' for every 1-byte ml_dtypes type: the hash must use the name
    names = [n for n, d in EXTENDED.items() if d.itemsize == 1]
    raw = np.arange(6, dtype=np.uint8)
    hashes = {tensor_hash(raw.view(EXTENDED[n])) for n in names} | {tensor_hash(raw)}
    assert len(hashes) == len(names) + 1


def test_plain_tensor_hashes_are_unchanged():
    """Existing caches and bundle digests stay valid: plain dtypes still hash by numpy's dtype.str."""
    import blake3

    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    old = blake3.blake3(canonical_json({"dtype": "<f4", "shape": [3, 4], "v": "1"}))
    old.update(arr.tobytes())
    assert tensor_hash(arr) == old.hexdigest()
    assert hash_key(np.dtype(np.float32)) == "<f4" and hash_key(EXTENDED["bfloat16"]) == "bfloat16"


@pytest.mark.parametrize("name", sorted(PACKED_BITS))
@pytest.mark.parametrize("count", [1, 5, 8])
def test_unpack_sub_byte_matches_onnx(name, count):
    arr = sample(name, (count,))
    proto = numpy_helper.from_array(arr, "t")  # onnx packs these types into raw_data
    raw = np.frombuffer(proto.raw_data, dtype=np.uint8)
    assert raw.size == -(-count * PACKED_BITS[name] // 8)
    got = unpack_sub_byte(raw, name, count)
    assert got.dtype == arr.dtype and got.tobytes() == numpy_helper.to_array(proto).tobytes()


def test_external_ref_loads_packed_int4(tmp_path):
    arr = np.array([-8, -1, 0, 3, 7], dtype=ml_dtypes.int4)
    raw = numpy_helper.from_array(arr, "t").raw_data
    path = tmp_path / "w.bin"
    path.write_bytes(b"\0" * 16 + raw)
    ref = ExternalRef(str(path), 16, len(raw), "int4", (5,))
    got = ref.load()
    assert got.dtype == arr.dtype and got.tobytes() == arr.tobytes()


def test_external_ref_loads_bfloat16(tmp_path):
    arr = np.array([[1.5, -2.0], [0.25, 3.0]], dtype=ml_dtypes.bfloat16)
    path = tmp_path / "w.bin"
    path.write_bytes(arr.tobytes())
    got = ExternalRef(str(path), 0, arr.nbytes, "bfloat16", (2, 2)).load()
    assert got.dtype == arr.dtype and np.array_equal(got, arr)
