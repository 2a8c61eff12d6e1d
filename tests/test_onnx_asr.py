"""onnx-asr (PyPI wheel): every audio front-end it ships (29 preprocessors: mel/fbank extractors on STFT, the
same with the STFT as a Conv, DFT in a Scan, sinc resamplers). Each is split into init/update/infer, built for cpu
and npu at `waveforms: [2, 16000]`, run on a batch of two speech-like clips of different lengths (the shorter one
zero-padded, `waveforms_lens` telling the model) and compared with ONNX Runtime on the original model, before and
after an update of every variable to its value times (1 + 5% noise).

onnx's own shape inference fails on 14 of them (wrong STFT bin count, float constants propagated as shapes); the
build sizes them itself (bundle_pipeline/ir/shapes.py). Marked slow: about 40 s on the 2-core development machine.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import ONNX_ASR, ONNX_ASR_BATCH, onnx_asr_waveforms, substitute_weights
from oracle import assert_outputs_close, ort_run

import bundle_pipeline as bp
from bundle_pipeline.runtime import load_bundle

pytestmark = pytest.mark.slow

TARGETS = ["cpu", "npu"]
# STFT frames of 400 (gigaam v2, whisper) or 320 (gigaam v3) samples: onnxruntime computes those DFTs naively with
# float32 twiddles that are off by up to 2e-4 (tests/test_shapes.py measures it), the log-mel of quiet bins
# magnifies that; the kernels here compute the exact DFT. Power-of-two frames and the Conv variants agree closer.
NAIVE_DFT_IN_ORT = frozenset({"gigaam_v2", "gigaam_v3", "whisper80", "whisper128"})


def tolerance(name: str) -> tuple[float, float]:
    """(rtol, atol) against onnxruntime for one preprocessor."""
    if name.startswith("resample"):
        return 1e-5, 1e-6
    if name in NAIVE_DFT_IN_ORT:
        return 1e-3, 2e-3
    return 1e-4, 5e-4


def build(graphs: bp.WeightRefreshableGraphs, target: str, tmp_path, cache):
    batch, samples = ONNX_ASR_BATCH
    options = {"input_shape": f"waveforms:{batch},{samples};waveforms_lens:{batch}"}
    buf = bp.bundle_build_model([bp.GraphWithOptions(graphs.var_init, role="init", name="init"),
                                 bp.GraphWithOptions(graphs.var_update, role="update", name="update"),
                                 bp.GraphWithOptions(graphs.infer, options, role="infer", name="infer")],
                                target=target, cache=cache)
    path = tmp_path / f"{target}.bundle.zip"
    bp.bundle_save_model(path, buf)
    return load_bundle(path)


def max_abs(actual: dict, expected: dict) -> float:
    return max(float(np.max(np.abs(actual[k].astype(np.float64) - expected[k]))) for k in expected)


def perturbed(bundle, variables, rng) -> dict[str, np.ndarray]:
    """Every variable's current value times (1 + 5% noise), in its own dtype."""
    return {name: (v * (1 + 0.05 * rng.standard_normal(v.shape))).astype(v.dtype)
            for name in variables for v in [bundle.variable(name)]}


def check_preprocessor(model: onnx.ModelProto, name: str, target: str, tmp_path, cache) -> tuple[float, float, int]:
    """Split, build, run, update, run; (max abs err after init, after update, number of variables)."""
    rng = np.random.default_rng(0)
    rtol, atol = tolerance(name)
    graphs = bp.convert_to_weight_refreshable_graphs(model)
    assert graphs.variables
    bundle = build(graphs, target, tmp_path, cache)
    feeds = onnx_asr_waveforms(rng)
    expected = ort_run(model, feeds)
    ours = bundle.run("infer", feeds)
    assert_outputs_close(ours, expected, rtol=rtol, atol=atol)
    new = perturbed(bundle, graphs.variables, rng)
    bundle.update({f"{k}.new": v for k, v in new.items()})
    updated = ort_run(substitute_weights(model, new), feeds)
    assert max_abs(updated, expected) > 1e-3  # the update changes the outputs: not a vacuous check
    ours_updated = bundle.run("infer", feeds)
    assert_outputs_close(ours_updated, updated, rtol=rtol, atol=atol)
    return max_abs(ours, expected), max_abs(ours_updated, updated), len(graphs.variables)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", sorted(ONNX_ASR))
def test_split_build_update_matches_ort(name, target, onnx_asr_models, tmp_path, tmp_cache):
    model = onnx.load(onnx_asr_models[name])
    err_init, err_update, variables = check_preprocessor(model, name, target, tmp_path, tmp_cache)
    print(f"\nonnx-asr {name} {target}: {variables} variables, max abs err vs ORT after init {err_init:.2e}, "
          f"after update {err_update:.2e}")


def test_lengths_are_honoured(onnx_asr_models, tmp_path, tmp_cache):
    """The per-item lengths steer the outputs: the shorter clip's feature lengths and its masked frames differ
    from the full-length clip's, in the bundle as in onnxruntime (so the batch is not just two copies)."""
    model = onnx.load(onnx_asr_models["nemo80"])
    bundle = build(bp.convert_to_weight_refreshable_graphs(model), "cpu", tmp_path, tmp_cache)
    feeds = onnx_asr_waveforms(np.random.default_rng(1))
    ours = bundle.run("infer", feeds)
    lens = ours["features_lens"]
    np.testing.assert_array_equal(lens, ort_run(model, feeds)["features_lens"])
    assert lens[1] < lens[0]
    assert np.all(ours["features"][1, :, lens[1]:] == 0)  # nemo zeroes the frames past each clip's length
