"""silero-vad (PyPI wheel, six ONNX variants): control flow (nested If on `sr` and on shapes, weights in Constant
nodes inside the branches), LSTM state fed back frame to frame. Each variant is split into init/update/infer,
built for cpu and npu, run as a VAD over consecutive frames and compared with ONNX Runtime on the original
model, before and after an update of every weight (ORT then runs the model with the new weights substituted).
Marked slow: about 20 s in all on the 2-core development machine."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from conftest import (
    SILERO_VAD,
    SILERO_VAD_STATES,
    fetch_wheel_models,
    real_models_cache_dir,
    silero_vad_audio,
    silero_vad_feeds,
    substitute_weights,
)
from oracle import assert_outputs_close, ort_run

import bundle_pipeline as bp
from bundle_pipeline.errors import RuntimeFailure
from bundle_pipeline.runtime import load_bundle

pytestmark = pytest.mark.slow

# "cpu+reference": the cpu bundle loaded with the reference executor ("cpu" loads with auto: ORT where it runs)
TARGETS = ["cpu", "cpu+reference", "npu"]
RTOL, ATOL = 1e-4, 1e-5
RUNS = 4  # consecutive runs per stream, state fed back
SEQUENCE_FRAMES = 3  # frames per run of silero_vad_16k_sequence (input [N, 576])


def _build(graphs: bp.WeightRefreshableGraphs, feeds: dict[str, np.ndarray], target: str, tmp_path, cache):
    target, _, executor = target.partition("+")
    shape = ";".join(f"{k}:{','.join(map(str, v.shape))}" for k, v in feeds.items())
    buf = bp.bundle_build_model([bp.GraphWithOptions(graphs.var_init, role="init", name="init"),
                                 bp.GraphWithOptions(graphs.var_update, role="update", name="update"),
                                 bp.GraphWithOptions(graphs.infer, {"input_shape": shape}, role="infer", name="infer")],
                                target=target, cache=cache)
    path = tmp_path / f"{target}.bundle.zip"
    bp.bundle_save_model(path, buf)
    return load_bundle(path, executor=executor or "auto")


def _stream(run, runs: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Outputs of each run, feeding each run's recurrent outputs back as the next run's state inputs."""
    outputs, state = [], {}
    for feeds in runs:
        out = run({**feeds, **state})
        outputs.append(out)
        state = {SILERO_VAD_STATES[k]: v for k, v in out.items() if k in SILERO_VAD_STATES}
    return outputs


def _compare(actual: list[dict], expected: list[dict]) -> float:
    """Assert every run's outputs (state included) are close; the largest abs error over all of them."""
    assert len(actual) == len(expected) == RUNS
    for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
        try:
            assert_outputs_close(a, e, rtol=RTOL, atol=ATOL)
        except AssertionError as err:
            raise AssertionError(f"run {i}: {err}") from None
    return max(float(np.max(np.abs(a[k] - e[k]))) for a, e in zip(actual, expected, strict=True) for k in e)


def _max_change(a: list[dict], b: list[dict]) -> float:
    return max(float(np.max(np.abs(x[k] - y[k]))) for x, y in zip(a, b, strict=True) for k in x)


def _perturbed(bundle, variables, rng) -> dict[str, np.ndarray]:
    """Every variable's current value times (1 + 5% noise), in its own dtype."""
    new = {}
    for name in variables:
        old = bundle.variable(name)
        new[name] = (old * (1 + 0.05 * rng.standard_normal(old.shape))).astype(old.dtype)
    return new


def _check_model(model: onnx.ModelProto, rate: int, frames_per_run: int, target: str, tmp_path, cache):
    """Split, build, stream, update, stream again; (max abs err after init, after update)."""
    rng = np.random.default_rng(0)
    graphs = bp.convert_to_weight_refreshable_graphs(model)
    assert graphs.variables
    runs = silero_vad_feeds(model, silero_vad_audio(RUNS * frames_per_run, rate, rng), rate, frames_per_run, rng)
    assert len(runs) == RUNS
    bundle = _build(graphs, runs[0], target, tmp_path, cache)

    ours = _stream(lambda f: bundle.run("infer", f), runs)
    reference = _stream(lambda f: ort_run(model, f), runs)
    err_init = _compare(ours, reference)

    new = _perturbed(bundle, graphs.variables, rng)
    bundle.update({f"{k}.new": v for k, v in new.items()})
    for name, value in new.items():
        np.testing.assert_array_equal(bundle.variable(name), value, err_msg=name)
    substituted = substitute_weights(model, new)
    updated_reference = _stream(lambda f: ort_run(substituted, f), runs)
    assert _max_change(updated_reference, reference) > 1e-3  # the update changes the outputs: not a vacuous check
    err_update = _compare(_stream(lambda f: bundle.run("infer", f), runs), updated_reference)
    return err_init, err_update


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", sorted(SILERO_VAD))
def test_split_build_update_matches_ort(name, target, silero_vad_models, tmp_path, tmp_cache):
    model = onnx.load(silero_vad_models[name])
    frames = SEQUENCE_FRAMES if name == "silero_vad_16k_sequence" else 1
    err_init, err_update = _check_model(model, 16000, frames, target, tmp_path, tmp_cache)
    print(f"\nsilero-vad {name} {target} 16 kHz: max abs err vs ORT after init {err_init:.2e}, "
          f"after update {err_update:.2e}")


@pytest.mark.parametrize("target", TARGETS)
def test_8khz_branch_matches_ort(target, silero_vad_models, tmp_path, tmp_cache):
    """silero_vad.onnx built for 8 kHz frames ([1, 32 + 256]) runs the sr == 8000 branch, weights updated too."""
    model = onnx.load(silero_vad_models["silero_vad"])
    err_init, err_update = _check_model(model, 8000, 1, target, tmp_path, tmp_cache)
    print(f"\nsilero-vad silero_vad {target} 8 kHz: max abs err vs ORT after init {err_init:.2e}, "
          f"after update {err_update:.2e}")


def _node_names(graph: onnx.GraphProto) -> set[str]:
    names = set()
    for node in graph.node:
        names.add(node.name)
        for attr in node.attribute:
            for body in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                names |= _node_names(body)
    return names - {""}


@pytest.mark.parametrize("target", TARGETS)
def test_8khz_rate_on_a_16khz_frame_is_an_error_naming_the_node(target, silero_vad_models, tmp_path, tmp_cache):
    """The 8 kHz branch cannot run on a 576-sample frame: ORT fails inside it (LSTM input of rank 5); the bundle
    must fail too, with a runtime error that names the node, not return numbers."""
    model = onnx.load(silero_vad_models["silero_vad"])
    graphs = bp.convert_to_weight_refreshable_graphs(model)
    rng = np.random.default_rng(0)
    feeds = silero_vad_feeds(model, silero_vad_audio(1, 16000, rng), 16000, rng=rng)[0]
    bundle = _build(graphs, feeds, target, tmp_path, tmp_cache)
    assert set(bundle.run("infer", feeds)) == {"output", "stateN"}  # the 16 kHz rate runs
    wrong = {**feeds, "sr": np.array(8000, np.int64)}
    with pytest.raises(Exception, match="LSTM"):
        ort_run(model, wrong)
    with pytest.raises(RuntimeFailure) as err:
        bundle.run("infer", wrong)
    message = str(err.value)
    assert err.value.status == "RUNTIME_ERROR"
    # a node inside a body may be named by its path: If_0/else_branch/<node name>
    named = re.findall(r"node '?([^\s'(]+)", message)
    nodes = _node_names(model.graph) | _node_names(graphs.infer.graph)
    assert any(n in nodes or any(n.endswith("/" + node) for node in nodes) for n in named), (
        f"the error names no node of the model: {message}")


def test_silero_vad_models_are_cached(silero_vad_models, monkeypatch):
    import conftest

    def no_network(*args, **kwargs):
        raise AssertionError("the cache should have been hit")

    monkeypatch.setattr(conftest.subprocess, "run", no_network)
    assert fetch_wheel_models(list(SILERO_VAD.values()), real_models_cache_dir()) == list(silero_vad_models.values())
    for name, path in silero_vad_models.items():
        assert path.name == f"{name}.onnx"
        onnx.checker.check_model(str(path))
