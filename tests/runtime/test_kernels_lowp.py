"""Cast / CastLike / QuantizeLinear / DequantizeLinear on the ml_dtypes element types, against onnx's reference."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from kernel_oracle import one_node_model, reference
from onnx import TensorProto, numpy_helper

from bundle_pipeline.kernels import KernelError, run_kernel

FLOAT8 = {TensorProto.FLOAT8E4M3FN: ml_dtypes.float8_e4m3fn, TensorProto.FLOAT8E4M3FNUZ: ml_dtypes.float8_e4m3fnuz,
          TensorProto.FLOAT8E5M2: ml_dtypes.float8_e5m2, TensorProto.FLOAT8E5M2FNUZ: ml_dtypes.float8_e5m2fnuz}
# values around each float8 type's range, its infinities and NaN
X = np.array([0.0, -0.0, 0.3, -1.7, 239.9, 241.0, 448.0, 500.0, -1e5, 57344.0, 1e9, np.inf, -np.inf, np.nan,
              1e-9, -3e-3], dtype=np.float32)


def same_bits(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.tobytes() == want.tobytes(), f"{got} != {want}"


@pytest.mark.parametrize("to", sorted(FLOAT8))
@pytest.mark.parametrize("saturate", [0, 1])
def test_cast_to_float8_saturates_like_the_reference(to, saturate):
    attrs = {"to": to, "saturate": saturate}
    got = run_kernel("Cast", [X], attrs, 21)[0]
    want = reference(one_node_model("Cast", [X], attrs, 21, [np.dtype(FLOAT8[to])]), [X], "reference")[0]
    same_bits(got, want)


@pytest.mark.parametrize("round_mode", ["up", "nearest", "down"])
@pytest.mark.parametrize("saturate", [0, 1])
def test_cast_to_e8m0_rounds_like_onnx(round_mode, saturate):
    rng = np.random.default_rng(0)
    x = np.concatenate([X, rng.standard_normal(200).astype(np.float32) * 10.0 ** rng.integers(-30, 30, 200),
                        np.array([1.5, 3.0, 2.0 ** 127 * 1.5, 2.0 ** -127, 2.0 ** -140, 0.0], np.float32)])
    got = run_kernel("Cast", [x], {"to": TensorProto.FLOAT8E8M0, "saturate": saturate, "round_mode": round_mode},
                     25)[0]
    same_bits(got, numpy_helper.to_float8e8m0(x, bool(saturate), round_mode))


def test_cast_refuses_an_unknown_round_mode():
    with pytest.raises(KernelError):
        run_kernel("Cast", [X], {"to": TensorProto.FLOAT8E8M0, "round_mode": "sideways"}, 25)


@pytest.mark.parametrize("to", [TensorProto.INT4, TensorProto.UINT4, TensorProto.INT2, TensorProto.UINT2,
                                TensorProto.BFLOAT16, TensorProto.FLOAT4E2M1])
def test_cast_to_packed_and_bfloat16_types(to):
    x = np.arange(-9, 16, dtype=np.float32) * 0.75
    got = run_kernel("Cast", [x], {"to": to}, 21)[0]
    want = reference(one_node_model("Cast", [x], {"to": to}, 21, [got.dtype]), [x], "reference")[0]
    same_bits(got, want)


def test_castlike_saturates_by_default_and_casts_between_ml_dtypes():
    like = np.zeros(1, ml_dtypes.float8_e4m3fn)
    assert float(run_kernel("CastLike", [np.array([1e6], np.float32), like], {}, 21)[0][0]) == 448.0
    x = np.array([-8, -1, 0, 7], dtype=ml_dtypes.int4)  # int4 -> uint4 has no direct ml_dtypes cast
    got = run_kernel("CastLike", [x, np.zeros(1, ml_dtypes.uint4)], {}, 21)[0]
    assert got.dtype == ml_dtypes.uint4 and got.astype(np.int64).tolist() == [8, 15, 0, 7]


@pytest.mark.parametrize("zero_point", [
    np.array(3, ml_dtypes.uint4), np.array(-2, ml_dtypes.int4), np.array(1, ml_dtypes.uint2),
    np.array(0, ml_dtypes.float8_e4m3fn), np.array(0, ml_dtypes.float8_e5m2), np.array(0.5, ml_dtypes.float4_e2m1fn),
])
def test_quantize_dequantize_round_trip_like_the_reference(zero_point):
    x = np.linspace(-40, 40, 24, dtype=np.float32).reshape(2, 12)
    scale = np.array(2.5, np.float32)
    q = run_kernel("QuantizeLinear", [x, scale, zero_point], {}, 21)[0]
    model = one_node_model("QuantizeLinear", [x, scale, zero_point], {}, 21, [zero_point.dtype])
    same_bits(q, reference(model, [x, scale, zero_point], "reference")[0])
    dq = run_kernel("DequantizeLinear", [q, scale, zero_point], {}, 21)[0]
    model = one_node_model("DequantizeLinear", [q, scale, zero_point], {}, 21, [np.dtype(np.float32)])
    same_bits(dq, reference(model, [q, scale, zero_point], "reference")[0])


def test_blocked_int4_quantization_with_output_dtype():
    x = np.linspace(-3, 3, 32, dtype=np.float32).reshape(4, 8)
    scale = np.array([[0.5, 0.25], [1.0, 0.5], [0.25, 0.5], [0.5, 1.0]], np.float32)
    attrs = {"axis": 1, "block_size": 4, "output_dtype": TensorProto.INT4}
    got = run_kernel("QuantizeLinear", [x, scale], attrs, 21)[0]
    want = reference(one_node_model("QuantizeLinear", [x, scale], attrs, 21, [np.dtype(ml_dtypes.int4)]), [x, scale],
                     "reference")[0]
    same_bits(got, want)


def test_dequantize_refuses_a_nonzero_float8_zero_point():
    x = np.array([1, 2], ml_dtypes.float8_e4m3fn)
    with pytest.raises(KernelError):
        run_kernel("DequantizeLinear", [x, np.array(1, np.float32), np.array(1, ml_dtypes.float8_e4m3fn)], {}, 21)
