"""Kernels added for conformance, vs onnx.reference / onnxruntime on one-node models, in configurations the
ONNX node suite does not cover (other layouts, opsets, reductions, attributes, dtypes)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from kernel_oracle import one_node_model, reference

from bundle_pipeline.kernels import SUPPORTED_OPS, KernelError, run_kernel

RNG = np.random.default_rng(2024)


def f32(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def f16(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float16)


def i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def ints(lo: int, hi: int, *shape: int, dtype: type = np.int64) -> np.ndarray:
    return RNG.integers(lo, hi, shape).astype(dtype)


def check(op: str, inputs: list, attrs: dict, opset: int, n_out: int = 1, engine: str = "onnx",
          tol: tuple[float, float] = (1e-4, 1e-5)) -> None:
    """run_kernel == the reference engine on the first n_out outputs (dtype, shape, values); inputs untouched."""
    snapshot = [None if x is None else x.copy() for x in inputs]
    got = run_kernel(op, inputs, attrs, opset)[:n_out]
    for before, after in zip(snapshot, inputs, strict=True):
        if before is not None:
            np.testing.assert_array_equal(before, after)
    want = reference(one_node_model(op, inputs, attrs, opset, [g.dtype for g in got]), inputs, engine)
    for g, w in zip(got, want, strict=True):
        w = np.asarray(w)
        assert g.dtype == w.dtype, f"dtype {g.dtype} != {w.dtype}"
        assert g.shape == w.shape, f"shape {g.shape} != {w.shape}"
        if g.dtype.kind == "f":
            rtol, atol = (max(tol[0], 2e-3), max(tol[1], 2e-3)) if g.dtype == np.float16 else tol
            np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), rtol=rtol, atol=atol)
        else:
            np.testing.assert_array_equal(g, w)


def case(name: str, op: str, inputs: list, attrs: dict | None = None, opset: int = 21, n_out: int = 1,
         engine: str = "onnx", tol: tuple[float, float] = (1e-4, 1e-5)) -> object:
    return pytest.param(op, inputs, attrs or {}, opset, n_out, engine, tol, id=name)


# ------------------------------------------------------------------------------------ recurrent


def rnn_inputs(gates: int, dirs: int, seq: int = 5, batch: int = 3, inp: int = 4, hidden: int = 6,
               layout: int = 0, lens: bool = False) -> list:
    x = f32(seq, batch, inp) if layout == 0 else f32(batch, seq, inp)
    w, r, b = f32(dirs, gates * hidden, inp), f32(dirs, gates * hidden, hidden), f32(dirs, 2 * gates * hidden)
    seq_lens = np.array([seq, 2, 4][:batch], dtype=np.int32) if lens else None
    h0 = f32(dirs, batch, hidden) if layout == 0 else f32(batch, dirs, hidden)
    return [x, w, r, b, seq_lens, h0]


RECURRENT = [
    case("GRU-forward", "GRU", rnn_inputs(3, 1), {"hidden_size": 6}, opset=14, n_out=2, engine="ort"),
    case("GRU-bidirectional-lens", "GRU", rnn_inputs(3, 2, lens=True),
         {"hidden_size": 6, "direction": "bidirectional"}, opset=14, n_out=2, engine="ort"),
    case("GRU-reverse-linear-before-reset", "GRU", rnn_inputs(3, 1),
         {"hidden_size": 6, "direction": "reverse", "linear_before_reset": 1}, opset=14, n_out=2, engine="ort"),
    case("GRU-layout1", "GRU", rnn_inputs(3, 1, layout=1), {"hidden_size": 6, "layout": 1}, opset=14, n_out=2),
    case("GRU-clip-activations", "GRU", rnn_inputs(3, 1),
         {"hidden_size": 6, "clip": 0.5, "activations": ["HardSigmoid", "Softsign"], "activation_alpha": [0.3],
          "activation_beta": [0.4]}, opset=14, n_out=2, engine="ort"),
    case("RNN-forward", "RNN", rnn_inputs(1, 1), {"hidden_size": 6}, opset=14, n_out=2, engine="ort"),
    case("RNN-bidirectional-lens-relu", "RNN", rnn_inputs(1, 2, lens=True),
         {"hidden_size": 6, "direction": "bidirectional", "activations": ["Relu", "Tanh"]}, opset=14, n_out=2,
         engine="ort"),
    case("RNN-layout1", "RNN", rnn_inputs(1, 1, layout=1), {"hidden_size": 6, "layout": 1}, opset=14, n_out=2),
]

# ------------------------------------------------------------------------------------ scatter / gather

DATA = f32(4, 5, 6)
SCATTER = [
    case("ScatterND-rows", "ScatterND", [DATA, i64(2, 0).reshape(2, 1), f32(2, 5, 6)], opset=16),
    case("ScatterND-elements-add", "ScatterND", [DATA, i64(0, 1, 2, 0, 1, 2).reshape(2, 3), f32(2)],
         {"reduction": "add"}, opset=16),
    case("ScatterND-max-negative-index", "ScatterND", [DATA, i64(-1, 3, 1, 1).reshape(2, 2), f32(2, 6)],
         {"reduction": "max"}, opset=18),
    case("ScatterElements-axis1-negative", "ScatterElements", [DATA, ints(-5, 5, 4, 2, 6), f32(4, 2, 6)],
         {"axis": 1}, opset=13),
    case("ScatterElements-mul", "ScatterElements", [DATA, ints(0, 6, 4, 5, 3), f32(4, 5, 3)],
         {"axis": -1, "reduction": "mul"}, opset=16),
    case("ScatterElements-min", "ScatterElements", [DATA, ints(0, 4, 2, 5, 6), f32(2, 5, 6)],
         {"axis": 0, "reduction": "min"}, opset=18),
    case("GatherND-batch1", "GatherND", [DATA, ints(0, 5, 4, 3, 1)], {"batch_dims": 1}, opset=13),
    case("GatherND-full-index", "GatherND", [DATA, np.array([[0, 1, 2], [3, -1, -2]])], opset=13),
    case("GatherND-int", "GatherND", [ints(0, 9, 2, 3, 4), ints(0, 2, 5, 1)], opset=12),
    case("TensorScatter-linear", "TensorScatter", [f32(2, 3, 8, 4), f32(2, 3, 2, 4), i64(1, 5)], opset=24),
    case("TensorScatter-circular", "TensorScatter", [f32(2, 8, 4), f32(2, 3, 4), i64(6, 7)],
         {"mode": "circular", "axis": 1}, opset=24),
]

# ------------------------------------------------------------------------------------ tensor misc

TENSOR = [
    case("Trilu-lower-k", "Trilu", [f32(2, 4, 5), i64(-1)], {"upper": 0}, opset=14),
    case("Trilu-upper-k2", "Trilu", [ints(0, 9, 3, 6), i64(2)], opset=14),
    case("OneHot-axis0-float-depth", "OneHot", [ints(-3, 4, 2, 3), np.array(4.0, np.float32),
                                                np.array([2, 7], np.int32)], {"axis": 0}, opset=11),
    case("OneHot-out-of-range", "OneHot", [i64(0, 9, -9, 2), np.array(5), f32(2)], opset=11),
    case("EyeLike-k-dtype", "EyeLike", [f32(3, 5)], {"k": 2, "dtype": onnx.TensorProto.INT32}, opset=9),
    case("Compress-flat", "Compress", [f32(3, 4), np.array([1, 0, 1, 1, 0], bool)], opset=11),
    case("Compress-axis-short", "Compress", [f32(3, 4), np.array([0, 1], bool)], {"axis": -1}, opset=11),
    case("ReverseSequence-batch0", "ReverseSequence", [f32(3, 5, 2), i64(1, 5, 3)],
         {"batch_axis": 0, "time_axis": 1}, opset=10),
    case("CenterCropPad-mixed", "CenterCropPad", [f32(5, 4, 3), i64(3, 7)], {"axes": [0, -1]}, opset=18),
    case("Unique-axis-unsorted", "Unique", [np.array([[1, 2], [3, 4], [1, 2], [0, 9]], np.float32)],
         {"axis": 0, "sorted": 0}, opset=11, n_out=4),
    case("Unique-flat", "Unique", [ints(0, 5, 12)], opset=11, n_out=4),
    case("Hardmax-opset11", "Hardmax", [f32(2, 3, 4)], {"axis": 1}, opset=11, engine="ort"),
    case("Hardmax-ties", "Hardmax", [np.array([[1, 3, 3], [2, 2, 0]], np.float32)], opset=13),
    case("CumProd-exclusive-reverse", "CumProd", [f32(3, 4), np.array(1)], {"exclusive": 1, "reverse": 1}, opset=26),
    case("MaxUnpool-pads", "MaxUnpool", [f32(1, 2, 2, 2), np.array([[[[0, 3], [9, 15]], [[1, 2], [4, 8]]]])],
         {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [0, 0, 0, 0]}, opset=11),
]

# ------------------------------------------------------------------------------------ reductions

REDUCE = [case(f"{op}-{tag}", op, [x, axes], {"keepdims": k}, opset=18)
          for op in ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")
          for tag, x, axes, k in (("axes", np.abs(f32(3, 4, 5)) + 0.1, i64(0, 2), 1),
                                  ("neg-axis-drop", np.abs(f32(3, 4, 5)) + 0.1, i64(-1), 0),
                                  ("all", np.abs(f32(2, 3)) + 0.1, i64(), 1))] + [
    case("ReduceLogSumExp-large", "ReduceLogSumExp", [np.array([[1000.0, 1000.0], [-1000.0, 0.0]], np.float32),
                                                      i64(1)], opset=18),
    case("ReduceL2-opset13-attr", "ReduceL2", [f32(3, 4)], {"axes": [1]}, opset=13),
    case("ReduceSumSquare-int", "ReduceSumSquare", [ints(-5, 5, 3, 4), i64(0)], opset=18),
]

# ------------------------------------------------------------------------------------ normalisation / pooling

NORM = [
    case("GroupNorm-opset18-per-group", "GroupNormalization", [f32(2, 6, 3, 3), f32(3), f32(3)],
         {"num_groups": 3}, opset=18),
    case("GroupNorm-opset21-per-channel", "GroupNormalization", [f32(2, 6, 5), f32(6), f32(6)],
         {"num_groups": 2, "epsilon": 1e-3}, opset=21),
    case("RMSNorm-axis1", "RMSNormalization", [f32(2, 3, 4), f32(3, 4)], {"axis": 1}, opset=23),
    case("RMSNorm-fp16", "RMSNormalization", [f16(2, 8), f16(8)], opset=23),
    case("MVN-axes", "MeanVarianceNormalization", [f32(2, 3, 4, 5)], {"axes": [1, 3]}, opset=13),
    case("LpNorm-p1-axis0", "LpNormalization", [f32(4, 3)], {"p": 1, "axis": 0}, opset=1, engine="ort"),
    case("LpPool-pads-strides", "LpPool", [f32(1, 2, 6, 7)],
         {"kernel_shape": [3, 2], "pads": [1, 0, 1, 1], "strides": [2, 1], "p": 3}, opset=18, engine="ort"),
    case("LRN-size5", "LRN", [f32(2, 7, 3, 3)], {"size": 5, "alpha": 0.01, "beta": 0.6, "bias": 2.0},
         opset=13, engine="ort"),
    case("Col2Im-stride-dilation-pads", "Col2Im", [f32(2, 2 * 4, 15), i64(5, 6), i64(2, 2)],
         {"strides": [2, 1], "dilations": [1, 2], "pads": [1, 0, 0, 1]}, opset=18),
]

# ------------------------------------------------------------------------------------ attention family

ATTENTION = [
    case("Attention-gqa-float-mask", "Attention", [f32(2, 4, 3, 8), f32(2, 2, 5, 8), f32(2, 2, 5, 8),
                                                   f32(3, 5)], opset=23),
    case("Attention-3d-softcap-scale", "Attention", [f32(2, 3, 12), f32(2, 4, 12), f32(2, 4, 6)],
         {"q_num_heads": 3, "kv_num_heads": 3, "softcap": 2.0, "scale": 0.3}, opset=23),
    case("Attention-causal-past-bool-mask", "Attention",
         [f32(1, 2, 2, 4), f32(1, 2, 2, 4), f32(1, 2, 2, 4), ints(0, 2, 2, 5).astype(bool), f32(1, 2, 3, 4),
          f32(1, 2, 3, 4)], {"is_causal": 1, "qk_matmul_output_mode": 2}, opset=23, n_out=4),
    case("Attention-softmax-output", "Attention", [f32(1, 2, 3, 4), f32(1, 2, 3, 4), f32(1, 2, 3, 4)],
         {"qk_matmul_output_mode": 3}, opset=23, n_out=4),
    case("RotaryEmbedding-4d-partial", "RotaryEmbedding", [f32(2, 3, 4, 8), f32(2, 4, 2), f32(2, 4, 2)],
         {"rotary_embedding_dim": 4}, opset=23),
    case("RotaryEmbedding-3d-interleaved-ids", "RotaryEmbedding",
         [f32(2, 3, 8), f32(6, 2), f32(6, 2), ints(0, 6, 2, 3)], {"num_heads": 2, "interleaved": 1}, opset=23),
    case("LinearAttention-gated-delta-gqa", "LinearAttention",
         [f32(1, 3, 8), f32(1, 3, 4), f32(1, 3, 6), f32(1, 2, 2, 3), -np.abs(f32(1, 3, 2)),
          np.abs(f32(1, 3, 2))], {"q_num_heads": 4, "kv_num_heads": 2}, opset=27, n_out=2),
    case("CausalConvWithState-silu", "CausalConvWithState", [f32(2, 3, 5), f32(3, 1, 3), f32(3), f32(2, 3, 2)],
         {"activation": "silu"}, opset=27, n_out=2),
    case("SwiGLU-alpha", "SwiGLU", [f32(2, 5), f32(2, 5)], {"alpha": 1.7}, opset=28),
]

# ------------------------------------------------------------------------------------ losses

LOSS = [
    case("NLL-weight-ignore-mean", "NegativeLogLikelihoodLoss", [f32(4, 5, 3), ints(0, 5, 4, 3), f32(5)],
         {"ignore_index": 2}, opset=13),
    case("NLL-sum-4d", "NegativeLogLikelihoodLoss", [f32(2, 3, 2, 2), ints(0, 3, 2, 2, 2)],
         {"reduction": "sum"}, opset=13),
    case("SCE-none-log-prob", "SoftmaxCrossEntropyLoss", [f32(3, 4), ints(0, 4, 3)], {"reduction": "none"},
         opset=13, n_out=2),
    case("SCE-weight-ignore-negative", "SoftmaxCrossEntropyLoss", [f32(3, 4, 2), np.array(
        [[0, -1], [3, 1], [-1, 2]]), f32(4)], {"ignore_index": -1}, opset=13, n_out=2),
]

# ------------------------------------------------------------------------------------ quantization

X8 = f32(2, 3, 4) * 4
QUANT = [
    case("Quantize-per-axis-int8", "QuantizeLinear", [X8, np.array([0.1, 0.2, 0.05], np.float32),
                                                       np.array([0, -3, 5], np.int8)], {"axis": 1}, opset=13),
    case("Quantize-blocked-uint16", "QuantizeLinear", [X8, np.abs(f32(2, 3, 2)) + 0.01,
                                                        np.array(RNG.integers(0, 9, (2, 3, 2)), np.uint16)],
         {"axis": 2, "block_size": 2}, opset=21),
    case("Quantize-fp16-default-uint8", "QuantizeLinear", [f16(3, 4), np.array(0.02, np.float16)], opset=19),
    case("Dequantize-per-axis", "DequantizeLinear", [ints(-128, 127, 2, 3, dtype=np.int8),
                                                     np.array([0.5, 0.25], np.float32),
                                                     np.array([1, -2], np.int8)], {"axis": 0}, opset=13,
         engine="ort"),
    case("Dequantize-int32", "DequantizeLinear", [ints(-1000, 1000, 5, dtype=np.int32), np.array(0.01, np.float32)],
         opset=13, engine="ort"),
    case("DynamicQuantizeLinear-negative", "DynamicQuantizeLinear", [f32(3, 5) - 3], opset=11, n_out=3),
    case("MatMulInteger-row-zero-points", "MatMulInteger", [ints(0, 255, 3, 4, dtype=np.uint8),
                                                            ints(0, 255, 4, 2, dtype=np.uint8),
                                                            np.array(3, np.uint8), np.array([4, 5], np.uint8)],
         opset=10, engine="ort"),
    case("ConvInteger-pads", "ConvInteger", [ints(0, 255, 1, 2, 5, 5, dtype=np.uint8),
                                             ints(0, 255, 3, 2, 3, 3, dtype=np.uint8), np.array(7, np.uint8)],
         {"pads": [1, 1, 1, 1]}, opset=10, engine="ort"),
    case("QLinearMatMul-int8", "QLinearMatMul", [ints(-128, 127, 2, 3, dtype=np.int8), np.array(0.05, np.float32),
                                                 np.array(1, np.int8), ints(-128, 127, 3, 4, dtype=np.int8),
                                                 np.array(0.02, np.float32), np.array(-1, np.int8),
                                                 np.array(0.5, np.float32), np.array(3, np.int8)], opset=10,
         engine="ort"),
]

# ------------------------------------------------------------------------------------ signal / image / text

SIGNAL = [
    case("DFT-complex-axis1-length", "DFT", [f32(2, 6, 3, 2), np.array(8), np.array(1)], opset=20, tol=(1e-4, 1e-4)),
    case("DFT-real-onesided", "DFT", [f32(2, 7, 1), None, np.array(-2)], {"onesided": 1}, opset=20, tol=(1e-4, 1e-4)),
    case("DFT-inverse", "DFT", [f32(1, 5, 2)], {"inverse": 1, "axis": 1}, opset=17, tol=(1e-4, 1e-4)),
    case("STFT-window-twosided", "STFT", [f32(2, 32, 1), np.array(6), np.hanning(10).astype(np.float32)],
         {"onesided": 0}, opset=17, tol=(1e-4, 1e-4)),
    case("HannWindow-symmetric-double", "HannWindow", [np.array(9, np.int32)],
         {"periodic": 0, "output_datatype": onnx.TensorProto.DOUBLE}, opset=17),
    case("BlackmanWindow-periodic", "BlackmanWindow", [np.array(7, np.int64)], opset=17),
    case("MelWeightMatrix", "MelWeightMatrix", [np.array(6, np.int32), np.array(32, np.int32),
                                                np.array(8000, np.int32), np.array(50.0, np.float32),
                                                np.array(3500.0, np.float32)], opset=17),
]

GRID = f32(1, 5, 7, 2) * 1.3
IMAGE = [case(f"GridSample-{m}-{p}-{a}", "GridSample", [f32(2, 3, 4, 6), np.concatenate([GRID, GRID])],
              {"mode": m, "padding_mode": p, "align_corners": a}, opset=20)
         for m in ("nearest", "linear", "cubic") for p in ("zeros", "border", "reflection") for a in (0, 1)] + [
    case("GridSample-3d-linear", "GridSample", [f32(1, 2, 3, 4, 5), f32(1, 2, 3, 2, 3)], {"mode": "linear"},
         opset=20),
    case("AffineGrid-3d-align", "AffineGrid", [f32(2, 3, 4), i64(2, 1, 3, 4, 5)], {"align_corners": 1}, opset=20),
    case("RoiAlign-max-output-half-pixel", "RoiAlign",
         [f32(2, 3, 8, 8), np.array([[0, 0, 7, 7], [1.5, 2.0, 5.0, 6.5]], np.float32), i64(1, 0)],
         {"mode": "max", "output_height": 3, "output_width": 2, "sampling_ratio": 2,
          "coordinate_transformation_mode": "output_half_pixel"}, opset=16),
    case("RoiAlign-avg-adaptive-ratio", "RoiAlign",
         [f32(1, 2, 10, 10), np.array([[1, 1, 9, 6], [0, 0, 3, 3]], np.float32), i64(0, 0)],
         {"output_height": 2, "output_width": 3, "spatial_scale": 0.8}, opset=16),
    case("NonMaxSuppression-center-multiclass", "NonMaxSuppression",
         [np.abs(f32(2, 6, 4)) * 3, np.abs(f32(2, 2, 6)), i64(3), np.array([0.3], np.float32),
          np.array([0.2], np.float32)], {"center_point_box": 1}, opset=11),
    case("DeformConv-mask-groups", "DeformConv",
         [f32(1, 4, 5, 5), f32(4, 2, 2, 2), f32(1, 2 * 2 * 2 * 2, 4, 4), f32(4), f32(1, 2 * 4, 4, 4)],
         {"group": 2, "offset_group": 2}, opset=19),
]

TEXT = [
    case("TfIdf-IDF-weights-ints", "TfIdfVectorizer", [np.array([[1, 2, 3, 2, 3], [3, 1, 2, 1, 1]], np.int32)],
         {"mode": "IDF", "min_gram_length": 1, "max_gram_length": 2, "max_skip_count": 1,
          "ngram_counts": [0, 3], "ngram_indexes": [0, 1, 2, 3, 4], "pool_int64s": [1, 2, 3, 2, 3, 1, 2],
          "weights": [0.5, 1.0, 1.5, 2.0, 2.5]}, opset=9),
    case("TfIdf-TFIDF-no-weights-1d", "TfIdfVectorizer", [np.array([4, 5, 4, 5, 4], np.int64)],
         {"mode": "TFIDF", "min_gram_length": 2, "max_gram_length": 2, "max_skip_count": 0,
          "ngram_counts": [0, 0], "ngram_indexes": [1, 0], "pool_int64s": [4, 5, 5, 4]}, opset=9,
         engine="ort"),
    case("RegexFullMatch", "RegexFullMatch", [np.array(["ab12", "x", "ab"], dtype=object)],
         {"pattern": r"ab\d*"}, opset=20),
]

# ------------------------------------------------------------------------------------ elementwise

ELEMENTWISE = [
    case("BitShift-uint8-left", "BitShift", [ints(0, 255, 6, dtype=np.uint8), ints(0, 9, 6, dtype=np.uint8)],
         {"direction": "LEFT"}, opset=11),
    case("BitShift-uint64-right-bcast", "BitShift", [ints(0, 2**40, 3, 2, dtype=np.uint64),
                                                     np.array([3, 65], np.uint64)], {"direction": "RIGHT"}, opset=11),
    case("BitwiseAnd-int16", "BitwiseAnd", [ints(-99, 99, 4, dtype=np.int16), ints(-99, 99, 4, dtype=np.int16)],
         opset=18),
    case("BitwiseNot-uint32", "BitwiseNot", [ints(0, 2**31, 5, dtype=np.uint32)], opset=18),
    case("Round-halves", "Round", [np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 2.4], np.float32)], opset=11),
    case("IsInf-negative-only", "IsInf", [np.array([np.inf, -np.inf, 1, np.nan], np.float32)],
         {"detect_positive": 0}, opset=10),
    case("IsNaN-fp16", "IsNaN", [np.array([np.nan, 1, np.inf], np.float16)], opset=13),
    case("Celu-alpha", "Celu", [f32(3, 4)], {"alpha": 0.7}, opset=12),
    case("Shrink-bias", "Shrink", [f32(8)], {"lambd": 0.3, "bias": 0.2}, opset=9),
    case("ThresholdedRelu", "ThresholdedRelu", [f32(8)], {"alpha": 0.2}, opset=10),
    case("Swish-alpha", "Swish", [f32(8)], {"alpha": 0.5}, opset=24),
    case("Atanh", "Atanh", [np.tanh(f32(6))], opset=9),
    case("Acosh", "Acosh", [np.abs(f32(6)) + 1], opset=9),
    case("Det-batch", "Det", [f32(2, 3, 3)], opset=11),
    case("Einsum-batch-contract", "Einsum", [f32(2, 3, 4), f32(2, 4, 5), f32(5)], {"equation": "bij,bjk,k->bi"},
         opset=12),
    case("Einsum-trace-ellipsis", "Einsum", [f32(2, 3, 3)], {"equation": "...ii->..."}, opset=12),
]


ALL = RECURRENT + SCATTER + TENSOR + REDUCE + NORM + ATTENTION + LOSS + QUANT + SIGNAL + IMAGE + TEXT + ELEMENTWISE


@pytest.mark.parametrize(("op", "inputs", "attrs", "opset", "n_out", "engine", "tol"), ALL)
def test_kernel(op: str, inputs: list, attrs: dict, opset: int, n_out: int, engine: str, tol: tuple) -> None:
    check(op, inputs, attrs, opset, n_out, engine, tol)


def test_new_ops_are_registered() -> None:
    added = {"Attention", "BitShift", "Col2Im", "DFT", "DeformConv", "Einsum", "GRU", "GatherND", "GridSample",
             "GroupNormalization", "Hardmax", "LinearAttention", "NegativeLogLikelihoodLoss", "NonMaxSuppression",
             "OneHot", "QuantizeLinear", "RMSNormalization", "RNN", "ReduceLogSumExp", "RoiAlign",
             "RotaryEmbedding", "ScatterElements", "ScatterND", "SoftmaxCrossEntropyLoss", "TfIdfVectorizer",
             "Trilu", "Unique"}
    assert added <= SUPPORTED_OPS


@pytest.mark.parametrize(("op", "inputs", "attrs", "match"), [
    ("ScatterND", [f32(3, 4), i64(5).reshape(1, 1), f32(1, 4)], {}, "out of range"),
    ("GatherND", [f32(3, 4), i64(0, 1, 2).reshape(1, 3)], {}, "index depth"),
    ("OneHot", [i64(1), i64(0), f32(2)], {}, "depth"),
    ("BitShift", [f32(2), f32(2)], {"direction": "LEFT"}, "integer"),
    ("GroupNormalization", [f32(2, 6, 3), f32(6), f32(6)], {"num_groups": 4}, "num_groups"),
    ("QuantizeLinear", [f32(3), np.array(0.1, np.float32), np.array(0, np.int32)], {}, "quantized type"),
    ("Attention", [f32(1, 3, 4), f32(1, 3, 4), f32(1, 3, 4)], {}, "q_num_heads"),
    ("GRU", rnn_inputs(3, 1)[:3], {"hidden_size": 5}, "hidden_size"),
    ("Einsum", [f32(2, 3)], {"equation": "ij,jk->ik"}, "Einsum"),
])
def test_kernel_errors(op: str, inputs: list, attrs: dict, match: str) -> None:
    with pytest.raises(KernelError, match=match):
        run_kernel(op, inputs, attrs, 21)


def test_optional_kernels_take_tensors_sequences_and_both_empty_forms():
    seq = [np.ones(2, np.float32), np.zeros(3, np.float32)]
    assert run_kernel("OptionalHasElement", [seq], {}, 18)[0].item() is True
    assert run_kernel("OptionalGetElement", [seq], {}, 18)[0] is seq
    x = np.arange(3)
    assert run_kernel("OptionalHasElement", [x], {}, 18)[0].item() is True
    np.testing.assert_array_equal(run_kernel("OptionalGetElement", [x], {}, 18)[0], x)
    for empty in (None, np.asarray(None)):
        assert run_kernel("OptionalHasElement", [empty], {}, 18)[0].item() is False
        with pytest.raises(KernelError, match="empty optional"):
            run_kernel("OptionalGetElement", [empty], {}, 18)


def test_a_kernel_registered_twice_is_refused():
    from bundle_pipeline.kernels._registry import kernel

    with pytest.raises(RuntimeError, match="registered twice"):
        kernel("Relu")(lambda inputs, attrs, opset, tiling: [])
