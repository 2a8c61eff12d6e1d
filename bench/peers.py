"""Peer compilers on the same models: ONNX Runtime offline optimization and OpenVINO compile_model (+CACHE_DIR)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

from measure import Measured, run_measured

PEERS = ("onnxruntime", "openvino")
OUTPUT_CHECK_VALUES = 8
RTOL = 1e-3


def available() -> dict[str, str]:
    """Installed peers -> version (checked without importing them)."""
    found = {}
    for name in PEERS:
        if importlib.util.find_spec(name) is not None:
            try:
                found[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                found[name] = "unknown"
    return found


# ---------------------------------------------------------------- in the child process


def _feed(width: int):
    import numpy as np

    return np.random.default_rng(0).standard_normal((4, width)).astype(np.float32)


def _output_check(y) -> dict:
    import numpy as np

    flat = np.asarray(y, dtype=np.float64).ravel()
    return {"sum": float(flat.sum()), "abs_sum": float(np.abs(flat).sum()), "head": flat[:OUTPUT_CHECK_VALUES].tolist()}


def ort_child(model: Path, out: Path, external: bool) -> dict:
    """Offline optimization: session creation with ``optimized_model_filepath`` at ORT_ENABLE_ALL."""
    import onnxruntime as ort

    for stale in (out, out.with_name(out.name + ".data")):
        stale.unlink(missing_ok=True)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(out)
    if external:
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name", out.name + ".data")
    start = time.perf_counter()
    session = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    create_s = time.perf_counter() - start
    x = session.get_inputs()[0]
    y = session.run(None, {x.name: _feed(int(x.shape[1]))})[0]
    return {"peer": "onnxruntime", "version": ort.__version__, "in_process_s": create_s,
            "optimized_bytes": _size_with_data(out), "output": _output_check(y)}


def ov_child(model: Path, cache_dir: Path | None) -> dict:
    """``core.compile_model(path, "CPU")``, with ``CACHE_DIR`` when given; reports cache entries before/after."""
    import openvino as ov

    core = ov.Core()
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        core.set_property({"CACHE_DIR": str(cache_dir)})
    before = _listing(cache_dir)
    start = time.perf_counter()
    compiled = core.compile_model(str(model), "CPU")
    compile_s = time.perf_counter() - start
    after = _listing(cache_dir)
    x = compiled.input(0)
    y = compiled({x.get_any_name(): _feed(int(x.get_shape()[1]))})[compiled.output(0)]
    return {"peer": "openvino", "version": ov.get_version(), "in_process_s": compile_s,
            "cache_entries_before": len(before), "cache_entries_written": len(after - before),
            "precision_hint": str(compiled.get_property("INFERENCE_PRECISION_HINT")),
            "cache_hit": None if cache_dir is None else (bool(before) and not (after - before)),
            "output": _output_check(y)}


def _listing(directory: Path | None) -> set[tuple[str, int, int]]:
    """(path, size, mtime_ns) of every cache file: a blob rewritten under its old name counts as new."""
    if directory is None or not directory.exists():
        return set()
    return {(str(p.relative_to(directory)), p.stat().st_size, p.stat().st_mtime_ns)
            for p in directory.rglob("*") if p.is_file()}


def _size_with_data(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return (path.stat().st_size if path.exists() else 0) + (data.stat().st_size if data.exists() else 0)


# ---------------------------------------------------------------- from the benchmark process


def _child(args: list[str]) -> tuple[Measured, dict | None]:
    m = run_measured([sys.executable, str(Path(__file__).resolve()), *args])
    return m, m.last_json()


def _record(m: Measured, result: dict | None) -> dict:
    rec = {"wall_s": m.wall_s, "maxrss_kib": m.maxrss_kib, "tree_peak_kib": m.tree_peak_kib,
           "returncode": m.returncode}
    if result is None:
        rec["error"] = (m.stderr or m.stdout)[-1500:]
    else:
        rec.update(result)
    return rec


def ort_run(model: Path, work: Path, external: bool) -> dict:
    args = ["ort", "--model", str(model), "--out", str(work / "ort-optimized.onnx")]
    return _record(*_child([*args, "--external"] if external else args))


def ov_run(model: Path, cache_dir: Path | None) -> dict:
    args = ["ov", "--model", str(model)]
    return _record(*_child([*args, "--cache-dir", str(cache_dir)] if cache_dir else args))


def median_of(n: int, once: Callable[[], dict]) -> dict:
    """Run a peer ``n`` times; the median run by wall time stands for it (all times kept)."""
    runs = [once() for _ in range(n)]
    good = sorted((r for r in runs if "error" not in r), key=lambda r: r["wall_s"])
    if len(good) < len(runs):
        return next(r for r in runs if "error" in r)
    return {**good[(len(good) - 1) // 2], "repeats": n, "wall_s_all": [r["wall_s"] for r in runs],
            "in_process_s_all": [r["in_process_s"] for r in runs]}


def before_edit(model: Path, work: Path, external: bool, peers: dict[str, str], repeat: int = 1) -> dict:
    """ORT cold; OpenVINO cold (no cache), first compile with a fresh CACHE_DIR, then warm from it."""
    work.mkdir(parents=True, exist_ok=True)
    out: dict[str, dict] = {}
    if "onnxruntime" in peers:
        out["ort_cold"] = median_of(repeat, lambda: ort_run(model, work, external))
    if "openvino" in peers:
        cache = work / "ov-cache"

        def fill() -> dict:
            shutil.rmtree(cache, ignore_errors=True)
            return ov_run(model, cache)

        out["ov_cold"] = median_of(repeat, lambda: ov_run(model, None))
        out["ov_cache_fill"] = median_of(repeat, fill)
        out["ov_warm"] = median_of(repeat, lambda: ov_run(model, cache))
    return out


def after_edit(model: Path, work: Path, external: bool, peers: dict[str, str], before: dict,
               repeat: int = 1) -> dict:
    """After the weight edit: ORT (a full rebuild each time); OpenVINO's first compile with the warm CACHE_DIR
    (once: a second run would hit what the first wrote), checked against a compile without the cache."""
    out: dict[str, dict] = {}
    if "onnxruntime" in peers:
        out["ort_after_edit"] = median_of(repeat, lambda: ort_run(model, work, external))
        out["ort_after_edit"]["output_changed"] = not same_output(out["ort_after_edit"], before.get("ort_cold", {}))
    if "openvino" in peers:
        out["ov_after_edit_cached"] = ov_run(model, work / "ov-cache")
        out["ov_after_edit_nocache"] = ov_run(model, None)
        out["ov_after_edit_cached"]["output_current"] = same_output(out["ov_after_edit_cached"],
                                                                    out["ov_after_edit_nocache"])
    return out


def same_output(a: dict, b: dict) -> bool | None:
    """Do two runs agree on the output (sum, abs sum, first values) within RTOL? None if one has no output."""
    if "output" not in a or "output" not in b:
        return None
    x, y = a["output"], b["output"]
    mag = max(abs(y["abs_sum"]), 1e-12)
    if abs(x["sum"] - y["sum"]) > RTOL * mag or abs(x["abs_sum"] - y["abs_sum"]) > RTOL * mag:
        return False
    head_mag = max([abs(v) for v in y["head"]] + [1e-12])
    return all(abs(p - q) <= RTOL * head_mag for p, q in zip(x["head"], y["head"], strict=True))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("peer", choices=("ort", "ov"))
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--out", type=Path, help="ort: optimized model path")
    parser.add_argument("--external", action="store_true", help="ort: write initializers to <out>.data")
    parser.add_argument("--cache-dir", type=Path, help="ov: CACHE_DIR")
    args = parser.parse_args(argv)
    if args.peer == "ort":
        result = ort_child(args.model, args.out or args.model.with_name("ort-optimized.onnx"), args.external)
    else:
        result = ov_child(args.model, args.cache_dir)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
