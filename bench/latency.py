"""Runtime latency of compiled bundles on the cpu and npu targets beside ONNX Runtime (report only).

For each test model (generated mlp/cnn/attention, and the real magika, ppocr-cls, six silero-vad models and the
29 onnx-asr audio front-ends when they can be fetched) the infer graph is built as a one-infer-graph bundle for
each target, then run repeatedly; the table gives median milliseconds per run for cpu, npu (simulated:
formatted kernels in NumPy, so this measures the simulator, not a device) and ORT, and the max abs errors
against ORT.

A second table covers the real models as weight-refreshable bundles: each is split into init/update/infer
(`convert_to_weight_refreshable_graphs`), built per target, run once after init and once after an update of
every variable to its value times (1 + 5% noise); the errors are max abs against ORT on the original model and
on the model with the new weights substituted.

    python bench/latency.py [--repeat N] [--json] [--out FILE]   # default bench/results/latency.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test-model builders and the real-model fetcher

import models  # noqa: E402
import onnxruntime as ort  # noqa: E402

import bundle_pipeline as bp  # noqa: E402
from bundle_pipeline.runtime import load_bundle  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def generated(work: Path) -> list[tuple[str, onnx.ModelProto, dict, dict]]:
    """(name, infer model, feeds, build options) for the generated test models."""
    out = []
    rng = np.random.default_rng(0)
    for builder in (models.mlp, models.cnn, models.attention):
        built = builder(work / builder.__name__)
        out.append((builder.__name__, onnx.load(built.graph().path), built.feeds(rng), {}))
    return out


def _input_shape(feeds: dict) -> str:
    return ";".join(f"{k}:{','.join(map(str, v.shape))}" for k, v in feeds.items())


def real(work: Path) -> list[tuple[str, onnx.ModelProto, dict, dict]]:
    from conftest import (
        ONNX_ASR,
        ONNX_ASR_BATCH,
        REAL_MODEL_INPUTS,
        SILERO_VAD,
        ModelUnavailable,
        RealModel,
        fetch_wheel_model,
        fetch_wheel_models,
        onnx_asr_waveforms,
        real_models_cache_dir,
        silero_vad_audio,
        silero_vad_feeds,
    )

    out = []
    for name, (source, inputs) in REAL_MODEL_INPUTS.items():
        try:
            path = fetch_wheel_model(source, real_models_cache_dir())
        except ModelUnavailable as err:
            print(f"skipping {name}: {err}", file=sys.stderr)
            continue
        model = RealModel.of(name, path, source, inputs)
        shape = ";".join(f"{k}:{','.join(map(str, s))}" for k, s in model.input_shapes.items())
        out.append((name, model.static_model(), model.feeds(np.random.default_rng(0)), {"input_shape": shape}))
    try:
        paths = fetch_wheel_models(list(SILERO_VAD.values()), real_models_cache_dir())
    except ModelUnavailable as err:
        print(f"skipping silero-vad: {err}", file=sys.stderr)
        paths = []
    for name, path in zip(SILERO_VAD, paths, strict=False):
        rng = np.random.default_rng(0)
        model = onnx.load(path)
        frames = 3 if name == "silero_vad_16k_sequence" else 1
        feeds = silero_vad_feeds(model, silero_vad_audio(frames, 16000, rng), 16000, frames, rng)[0]
        out.append((name, model, feeds, {"input_shape": _input_shape(feeds)}))
    try:
        paths = fetch_wheel_models(list(ONNX_ASR.values()), real_models_cache_dir())
    except ModelUnavailable as err:
        print(f"skipping onnx-asr: {err}", file=sys.stderr)
        paths = []
    batch, samples = ONNX_ASR_BATCH
    for name, path in zip(ONNX_ASR, paths, strict=False):
        feeds = onnx_asr_waveforms(np.random.default_rng(0))
        out.append((f"onnx-asr {name}", onnx.load(path), feeds,
                    {"input_shape": f"waveforms:{batch},{samples};waveforms_lens:{batch}"}))
    return out


def split_accuracy(name: str, model: onnx.ModelProto, feeds: dict, options: dict, work: Path) -> dict:
    """Max abs err vs ORT of a split (init/update/infer) bundle per target, after init and after an update."""
    from conftest import substitute_weights

    graphs = bp.convert_to_weight_refreshable_graphs(model)
    row: dict = {"model": name, "variables": len(graphs.variables)}
    expected = run_ort(model, feeds)
    for target in ("cpu", "npu"):
        buf = bp.bundle_build_model([bp.GraphWithOptions(graphs.var_init, role="init", name="init"),
                                     bp.GraphWithOptions(graphs.var_update, role="update", name="update"),
                                     bp.GraphWithOptions(graphs.infer, options, role="infer", name="infer")],
                                    target=target, cache=work / "cache")
        path = work / f"{name}-{target}-split.bundle"
        bp.bundle_save_model(path, buf)
        bundle = load_bundle(path)
        row[f"{target}_err_init"] = max_abs_err(bundle.run("infer", feeds), expected)
        rng = np.random.default_rng(1)
        new = {}
        for v in graphs.variables:
            old = bundle.variable(v)
            new[v] = (old * (1 + 0.05 * rng.standard_normal(old.shape))).astype(old.dtype)
        bundle.update({f"{k}.new": v for k, v in new.items()})
        row[f"{target}_err_update"] = max_abs_err(bundle.run("infer", feeds),
                                                  run_ort(substitute_weights(model, new), feeds))
    return row


def run_ort(model: onnx.ModelProto, feeds: dict) -> dict:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))


def max_abs_err(actual: dict, expected: dict) -> float:
    return max(float(np.max(np.abs(actual[k] - expected[k]))) for k in expected)


def median_ms(fn, repeat: int) -> float:
    fn()  # warm-up: first-run allocations are not latency
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def measure(name: str, model: onnx.ModelProto, feeds: dict, options: dict, work: Path, repeat: int) -> dict:
    row: dict = {"model": name}
    expected = None
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    row["ort_ms"] = median_ms(lambda: session.run(None, feeds), repeat)
    expected = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))
    for target in ("cpu", "npu"):
        buf = bp.bundle_build_model([bp.GraphWithOptions(model, options, role="infer", name="infer")], target=target,
                                    cache=work / "cache")
        path = work / f"{name}-{target}.bundle"
        bp.bundle_save_model(path, buf)
        bundle = load_bundle(path)
        row[f"{target}_ms"] = median_ms(lambda b=bundle: b.run("infer", feeds), repeat)
        outs = bundle.run("infer", feeds)
        row[f"{target}_max_abs_err"] = max_abs_err(outs, expected)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20, help="timed runs per model and runtime (median)")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of the rows")
    parser.add_argument("--no-real", action="store_true", help="only the generated models")
    parser.add_argument("--out", type=Path, default=RESULTS / "latency.json", help="JSON results file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bp-latency-") as tmp:
        work = Path(tmp)
        real_cases = [] if args.no_real else real(work)
        cases = generated(work) + real_cases
        rows = [measure(*case, work, args.repeat) for case in cases]
        split_rows = [split_accuracy(*case, work) for case in real_cases]
    print(f"{'model':<32}{'cpu ms':>10}{'npu ms':>10}{'ORT ms':>10}{'cpu err':>12}{'npu err':>12}")
    for r in rows:
        print(f"{r['model']:<32}{r['cpu_ms']:>10.3f}{r['npu_ms']:>10.3f}{r['ort_ms']:>10.3f}"
              f"{r['cpu_max_abs_err']:>12.2e}{r['npu_max_abs_err']:>12.2e}")
    if split_rows:
        print(f"\n{'split model':<32}{'vars':>6}{'cpu init':>12}{'cpu update':>12}{'npu init':>12}{'npu update':>12}")
        for r in split_rows:
            print(f"{r['model']:<32}{r['variables']:>6}{r['cpu_err_init']:>12.2e}{r['cpu_err_update']:>12.2e}"
                  f"{r['npu_err_init']:>12.2e}{r['npu_err_update']:>12.2e}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"benchmark": "latency", "when": datetime.now(UTC).isoformat(timespec="seconds"),
              "python": platform.python_version(), "numpy": np.__version__, "onnx": onnx.__version__,
              "onnxruntime": ort.__version__, "load_average": list(os.getloadavg()),
              "repeat": args.repeat, "rows": rows, "split_rows": split_rows,
              "note": "npu is a NumPy simulation of formatted kernels: its times measure the simulator"}
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
