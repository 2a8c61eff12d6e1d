"""cpu bundles on the ONNX Runtime executor beside ORT on the original model: run, refresh, memory (issue 16).

Models: magika and rapidocr cls (pinned PyPI wheels, tests/conftest.py), silero-vad 16 kHz (its wheel) and a
generated 4-layer transformer encoder (``transformer`` below: LayerNormalization, 4-head attention, Gelu MLP).
Each is split into init/update/infer (``convert_to_weight_refreshable_graphs``: every float initializer a
variable) and built for cpu with three infer graphs (``infer_a/b/c``, the same model) sharing the variables.
Measured side by side in one process, median of ``--repeat`` runs after a warm-up:

- run: ``bundle.run("infer_a")`` with ``executor="auto"`` (its owned-weight session, ``runtime/ort_owned.py``),
  the same with ``owned_weights=False`` (the bound session: weights are inputs over the shared arrays, what runs
  right after a refresh until the owned session is rebuilt) and ``"reference"`` (NumPy) vs
  ``InferenceSession.run`` on the original model (every ORT side at ORT's default threads), and ORT on the
  original model with its float initializers fed as inputs (``weights_as_inputs``); the ORT sides are timed in
  turn within each round (a load spike on a shared machine hits all of them);
- refresh: ``bundle.update`` writing every variable (the call: it returns once the store is written), the time
  from that call until the owned sessions of the 3 infer graphs are rebuilt (``wait_owned``), the update of a
  bound-only bundle, vs ORT's way, a new ``InferenceSession`` from the model bytes with the new initializers
  (the substitution and serialisation are not timed); timed one after another, none overlapping another;
- after the refresh, the max abs error against ORT on the model with the new weights: right after the call
  (every graph; the bound session runs), after the rebuild (owned) and on the bound-only bundle;
- resident memory (in fresh child processes, RSS after one run of each graph minus RSS after the imports):
  the bundle with its 3 infer graphs (auto, and bound-only) vs 3 ORT sessions of the original model.

    python bench/ort_executor.py [--repeat N] [--only NAME] [--out FILE]   # default bench/results/ort_executor.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the real-model fetcher and the weight substitution

RESULTS = ROOT / "bench" / "results"
DEFAULT_RESULTS = RESULTS / "ort_executor.json"
INFERS = ("infer_a", "infer_b", "infer_c")


def transformer(layers: int = 4, d: int = 256, heads: int = 4, seq: int = 64, seed: int = 0) -> onnx.ModelProto:
    """A post-LN transformer encoder as a PyTorch export writes one (opset 17): x [1, seq, d] -> y [1, seq, d]."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def weight(name: str, shape: tuple[int, ...], scale: float) -> str:
        inits.append(numpy_helper.from_array((scale * rng.standard_normal(shape)).astype(np.float32), name))
        return name

    def const(name: str, values: list) -> str:
        inits.append(numpy_helper.from_array(np.array(values, dtype=np.int64 if isinstance(values[0], int)
                                                      else np.float32), name))
        return name

    def node(op: str, inputs: list[str], out: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    heads_shape = const("heads_shape", [1, seq, heads, d // heads])
    merged_shape = const("merged_shape", [1, seq, d])
    scale, half, one, root2 = (const(n, [v]) for n, v in (("scale", 1 / np.sqrt(d // heads)), ("half", 0.5),
                                                           ("one", 1.0), ("root2", float(np.sqrt(2.0)))))
    x = "x"
    for i in range(layers):
        p = f"l{i}"

        def proj(name: str, src: str, n_in: int, n_out: int, p=p) -> str:
            w = weight(f"{p}.{name}.weight", (n_in, n_out), 1 / np.sqrt(n_in))
            b = weight(f"{p}.{name}.bias", (n_out,), 0.02)
            return node("Add", [node("MatMul", [src, w], f"{p}.{name}.mm"), b], f"{p}.{name}")

        def split_heads(src: str, perm: list[int], p=p) -> str:
            return node("Transpose", [node("Reshape", [src, heads_shape], f"{src}.r")], f"{src}.t", perm=perm)

        q = split_heads(proj("q", x, d, d), [0, 2, 1, 3])
        k = split_heads(proj("k", x, d, d), [0, 2, 3, 1])
        v = split_heads(proj("v", x, d, d), [0, 2, 1, 3])
        scores = node("Mul", [node("MatMul", [q, k], f"{p}.qk"), scale], f"{p}.scores")
        ctx = node("MatMul", [node("Softmax", [scores], f"{p}.probs", axis=-1), v], f"{p}.ctx")
        merged = node("Reshape", [node("Transpose", [ctx], f"{p}.ctx.t", perm=[0, 2, 1, 3]), merged_shape],
                      f"{p}.merged")
        attn = node("Add", [x, proj("o", merged, d, d)], f"{p}.res1")
        ln1 = node("LayerNormalization", [attn, weight(f"{p}.ln1.weight", (d,), 0.1),
                                          weight(f"{p}.ln1.bias", (d,), 0.02)], f"{p}.ln1", axis=-1)
        up = proj("up", ln1, d, 4 * d)
        erf = node("Erf", [node("Div", [up, root2], f"{p}.up.s")], f"{p}.erf")
        gelu = node("Mul", [node("Mul", [up, node("Add", [erf, one], f"{p}.erf1")], f"{p}.g0"), half], f"{p}.gelu")
        res2 = node("Add", [ln1, proj("down", gelu, 4 * d, d)], f"{p}.res2")
        x = node("LayerNormalization", [res2, weight(f"{p}.ln2.weight", (d,), 0.1),
                                        weight(f"{p}.ln2.bias", (d,), 0.02)], f"{p}.ln2", axis=-1)
    nodes.append(helper.make_node("Identity", [x], ["y"], name="y"))
    graph = helper.make_graph(nodes, "transformer", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                   [1, seq, d])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, seq, d])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def cases(only: str | None) -> list[tuple[str, onnx.ModelProto, dict, str]]:
    """(name, original model, feeds, input_shape option) for each model that can be had."""
    from conftest import (
        REAL_MODEL_INPUTS,
        SILERO_VAD,
        ModelUnavailable,
        RealModel,
        fetch_wheel_model,
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
        out.append((name, model.static_model(), model.feeds(np.random.default_rng(0))))
    try:
        silero = onnx.load(fetch_wheel_model(SILERO_VAD["silero_vad"], real_models_cache_dir()))
        rng = np.random.default_rng(0)
        out.append(("silero_vad", silero, silero_vad_feeds(silero, silero_vad_audio(1, 16000, rng), 16000, 1, rng)[0]))
    except ModelUnavailable as err:
        print(f"skipping silero_vad: {err}", file=sys.stderr)
    x = np.random.default_rng(0).standard_normal((1, 64, 256)).astype(np.float32)
    out.append(("transformer", transformer(), {"x": x}))
    shaped = [(n, m, f, ";".join(f"{k}:{','.join(map(str, v.shape))}" for k, v in f.items())) for n, m, f in out]
    return [c for c in shaped if only is None or c[0] == only]


def build_bundle(model: onnx.ModelProto, input_shape: str, work: Path) -> tuple[Path, list[str]]:
    """init + update + three infer graphs sharing every variable, built for cpu; (path, variable names)."""
    import bundle_pipeline as bp

    graphs = bp.convert_to_weight_refreshable_graphs(model)
    infers = [bp.GraphWithOptions(graphs.infer, {"input_shape": input_shape}, role="infer", name=n) for n in INFERS]
    buf = bp.bundle_build_model([bp.GraphWithOptions(graphs.var_init, role="init", name="init"),
                                 bp.GraphWithOptions(graphs.var_update, role="update", name="update"), *infers],
                                target="cpu", cache=work / "cache")
    path = work / "model.bundle"
    bp.bundle_save_model(path, buf)
    return path, list(graphs.variables)


def interleaved_ms(fns: dict, repeat: int) -> dict[str, float]:
    """Median ms of each function, timed in turn within every round: on a shared machine a load spike hits
    all of them, not one side's whole series."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[key].append((time.perf_counter() - start) * 1000)
    # the minimum too: on a loaded shared machine it is what the code costs, the median what the load left
    return {**{k: statistics.median(v) for k, v in times.items()},
            **{k.replace("_ms", "_min_ms"): min(v) for k, v in times.items()}}


def weights_as_inputs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The original model with its float initializers turned into graph inputs (and their values): what ORT
    runs when weights are bound rather than baked in, the price of sharing and refreshing them in place (ORT
    cannot prepack or fold a weight it does not own), top-level Constant nodes of floats included."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    values = {}
    for tensor in list(copy.graph.initializer):
        if tensor.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16) and len(tensor.dims):
            values[tensor.name] = numpy_helper.to_array(tensor)
            copy.graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
            copy.graph.initializer.remove(tensor)
    for node in list(copy.graph.node):  # weights in Constant nodes (rapidocr, silero-vad) too
        value = next((a.t for a in node.attribute if a.name == "value"), None) if node.op_type == "Constant" else None
        if value is not None and value.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16) and len(value.dims):
            values[node.output[0]] = numpy_helper.to_array(value)
            copy.graph.input.append(helper.make_tensor_value_info(node.output[0], value.data_type, list(value.dims)))
            copy.graph.node.remove(node)
    return copy, values


def median_ms(fn, repeat: int) -> float:
    fn()  # warm-up: first-run allocations are not latency
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def ort_session(model_bytes: bytes):
    import onnxruntime as ort

    return ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])


def max_abs_err(actual: dict, expected: dict) -> float:
    return max(float(np.max(np.abs(actual[k].astype(np.float64) - expected[k]))) for k in expected)


def measure(name: str, model: onnx.ModelProto, feeds: dict, input_shape: str, work: Path, repeat: int) -> dict:
    from conftest import substitute_weights

    from bundle_pipeline.runtime import load_bundle

    path, variables = build_bundle(model, input_shape, work)
    fast, ref = load_bundle(path, executor="auto"), load_bundle(path, executor="reference")
    bound = load_bundle(path, executor="auto", owned_weights=False)
    session = ort_session(model.SerializeToString())
    outputs = [o.name for o in session.get_outputs()]
    row = {"model": name, "variables": len(variables),
           "variable_bytes": int(sum(fast.variables.values[v].nbytes for v in variables)),
           "executor": fast.executor_of("infer_a"), "executor_reason": fast.executor_reasons["infer_a"]}
    as_inputs, weights = weights_as_inputs(model)
    inputs_session = ort_session(as_inputs.SerializeToString())
    row.update(interleaved_ms({"ort_run_ms": lambda: session.run(None, feeds),
                               "ours_ort_run_ms": lambda: fast.run("infer_a", feeds),
                               "ours_bound_run_ms": lambda: bound.run("infer_a", feeds),
                               "ort_weights_as_inputs_run_ms": lambda: inputs_session.run(None, {**feeds, **weights})},
                              repeat))
    row["ours_session"] = getattr(fast.executors["infer_a"], "last_session", "reference")
    row["ours_reference_run_ms"] = median_ms(lambda: ref.run("infer_a", feeds), max(3, repeat // 4))
    row["run_ratio"] = row["ours_ort_run_ms"] / row["ort_run_ms"]
    row["bound_run_ratio"] = row["ours_bound_run_ms"] / row["ort_run_ms"]
    row["run_ratio_of_minima"] = row["ours_ort_run_min_ms"] / row["ort_run_min_ms"]
    expected = dict(zip(outputs, session.run(None, feeds), strict=True))
    row["err_init"] = max_abs_err(fast.run("infer_a", feeds), expected)
    rng = np.random.default_rng(1)
    new = {v: (fast.variable(v) * (1 + 0.05 * rng.standard_normal(fast.variable(v).shape))).astype(
        fast.variable(v).dtype) for v in variables}
    updates = {f"{k}.new": v for k, v in new.items()}
    new_bytes = substitute_weights(model, new).SerializeToString()
    row.update(refresh_ms(fast, bound, updates, new_bytes, max(3, repeat // 4)))
    row["refresh_ratio"] = row["ours_refresh_ms"] / row["ort_new_session_ms"]
    refreshed = ort_session(new_bytes)
    expected = dict(zip(outputs, refreshed.run(None, feeds), strict=True))
    fast.update(updates)  # a run right after the refresh (the owned sessions are being rebuilt meanwhile)
    row["err_after_refresh"] = max(max_abs_err(fast.run(g, feeds), expected) for g in INFERS[:1])
    row["session_after_refresh"] = getattr(fast.executors["infer_a"], "last_session", "reference")
    row["err_after_refresh_other_graphs"] = max(max_abs_err(fast.run(g, feeds), expected) for g in INFERS[1:])
    fast.wait_owned()
    row["err_after_rebuild"] = max(max_abs_err(fast.run(g, feeds), expected) for g in INFERS)
    row["session_after_rebuild"] = getattr(fast.executors["infer_a"], "last_session", "reference")
    bound.update(updates)
    row["err_after_refresh_bound"] = max(max_abs_err(bound.run(g, feeds), expected) for g in INFERS)
    model_path = work / "model.onnx"
    onnx.save(model, model_path)
    feeds_path = work / "feeds.npz"
    np.savez(feeds_path, **feeds)
    row["ours_rss_mib"] = child_rss("bundle", path, feeds_path)
    row["ours_bound_rss_mib"] = child_rss("bundle_bound", path, feeds_path)
    row["ort_3_sessions_rss_mib"] = child_rss("ort", model_path, feeds_path)
    return row


def refresh_ms(fast, bound, updates: dict, new_bytes: bytes, repeat: int) -> dict[str, float]:
    """Median ms, in turn within each round: ``bundle.update`` writing every variable (owned mode: the call
    returns once the store is written), the time until its owned sessions are rebuilt (from the call, so it
    includes it), the update of a bound-only bundle, and ORT's new session; nothing overlaps another's timing."""
    times: dict[str, list[float]] = {k: [] for k in ("ours_refresh_ms", "ours_owned_ready_ms", "ours_bound_refresh_ms",
                                                    "ort_new_session_ms")}
    for i in range(repeat + 1):  # the first round is a warm-up
        start = time.perf_counter()
        fast.update(updates)
        returned = time.perf_counter()
        fast.wait_owned()
        ready = time.perf_counter()
        bound.update(updates)
        bound_done = time.perf_counter()
        ort_session(new_bytes)
        ort_done = time.perf_counter()
        if i:
            spans = {"ours_refresh_ms": returned - start, "ours_owned_ready_ms": ready - start,
                     "ours_bound_refresh_ms": bound_done - ready, "ort_new_session_ms": ort_done - bound_done}
            for key, value in spans.items():
                times[key].append(value * 1000)
    return {k: statistics.median(v) for k, v in times.items()}


def child_rss(kind: str, path: Path, feeds: Path) -> float:
    """MiB resident after loading and running every infer graph once, over the RSS after the imports, measured
    in a fresh process so nothing else this one holds counts."""
    proc = subprocess.run([sys.executable, __file__, "--child", kind, str(path), str(feeds)], capture_output=True,
                          text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return float(proc.stdout.strip().splitlines()[-1])


def _rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def child(kind: str, path: str, feeds_path: str) -> None:
    import onnxruntime  # noqa: F401  (both sides pay the same imports before the baseline: libraries are not
    import zarr  # noqa: F401             the model's memory)

    import bundle_pipeline.runtime.bundle  # noqa: F401

    feeds = dict(np.load(feeds_path))
    base = _rss_mib()
    if kind.startswith("bundle"):
        from bundle_pipeline.runtime import load_bundle

        bundle = load_bundle(path, owned_weights=kind == "bundle")
        held = [bundle.run(g, feeds) for g in INFERS]
    else:
        data = Path(path).read_bytes()
        sessions = [ort_session(data) for _ in INFERS]
        del data
        held = [s.run(None, feeds) for s in sessions]
    print(f"{_rss_mib() - base:.1f}")
    del held


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30, help="timed runs per measurement (median)")
    parser.add_argument("--only", default=None, help="one model: magika | rapidocr_cls | silero_vad | transformer")
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS, help="JSON results file")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "PATH", "FEEDS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    import onnxruntime as ort

    rows = []
    for name, model, feeds, shape in cases(args.only):
        with tempfile.TemporaryDirectory(prefix="bp-ort-") as tmp:
            rows.append(measure(name, model, feeds, shape, Path(tmp), args.repeat))
    print(f"{'model':<13}{'ORT ms':>8}{'ours ms':>8}{'x ORT':>6}{'x min':>6}{'bound':>7}{'x ORT':>6}{'w in':>7}"
          f"{'ref ms':>8}"
          f"{'refresh':>8}{'ready':>7}{'bnd ref':>8}{'new ses':>8}{'err new':>9}{'RSS':>7}{'RSS bnd':>8}{'3xORT':>7}")
    for r in rows:
        print(f"{r['model']:<13}{r['ort_run_ms']:>8.2f}{r['ours_ort_run_ms']:>8.2f}{r['run_ratio']:>6.2f}"
              f"{r['run_ratio_of_minima']:>6.2f}{r['ours_bound_run_ms']:>7.2f}{r['bound_run_ratio']:>6.2f}{r['ort_weights_as_inputs_run_ms']:>7.2f}"
              f"{r['ours_reference_run_ms']:>8.1f}{r['ours_refresh_ms']:>8.2f}{r['ours_owned_ready_ms']:>7.1f}"
              f"{r['ours_bound_refresh_ms']:>8.2f}{r['ort_new_session_ms']:>8.1f}"
              f"{max(r['err_after_refresh'], r['err_after_rebuild'], r['err_after_refresh_bound']):>9.1e}"
              f"{r['ours_rss_mib']:>7.1f}{r['ours_bound_rss_mib']:>8.1f}{r['ort_3_sessions_rss_mib']:>7.1f}")
    report = {"benchmark": "ort_executor", "when": datetime.now(UTC).isoformat(timespec="seconds"),
              "python": platform.python_version(), "numpy": np.__version__, "onnx": onnx.__version__,
              "onnxruntime": ort.__version__, "cpus": os.cpu_count(), "load_average": list(os.getloadavg()),
              "repeat": args.repeat, "rows": rows}
    if args.only is None or args.out != DEFAULT_RESULTS:  # one model never replaces the published results
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
