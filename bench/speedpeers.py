"""Peers and floors of bench/speed.py, each a whole process: OpenVINO read_model + reshape + compile_model("CPU"),
ONNX Runtime offline optimisation (ORT_ENABLE_ALL, saved with optimized_model_filepath), `python -c "import
numpy"`, and in the benchmark process the blake3 hashing and disk write+fsync rates of given files.

    python bench/speedpeers.py ov  --models '[{"path": "m.onnx", "shape": {"x": [1, 3, 640, 640]}}, ...]'
    python bench/speedpeers.py ort --models '[{"path": "m.onnx", "out": "m.ort.onnx"}, ...]'

A child compiles every model it is given in one process (one OpenVINO Core), as a bundle of them would be.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from measure import run_measured
from peers import _record

CHUNK = 8 << 20


# ---------------------------------------------------------------- in the child process


def ov_child(models: list[dict]) -> dict:
    """read_model, reshape to the static input shapes (when given), compile_model on CPU; per model seconds."""
    import openvino as ov

    core, steps = ov.Core(), []
    start = time.perf_counter()
    for m in models:
        t0 = time.perf_counter()
        model = core.read_model(m["path"])
        if m.get("shape"):
            model.reshape({name: ov.PartialShape(dims) for name, dims in m["shape"].items()})
        t1 = time.perf_counter()
        core.compile_model(model, "CPU")
        steps.append({"model": m["path"], "read_reshape_s": t1 - t0, "compile_s": time.perf_counter() - t1})
    return {"peer": "openvino", "version": ov.get_version(), "in_process_s": time.perf_counter() - start,
            "models": steps}


def ort_child(models: list[dict]) -> dict:
    """One InferenceSession per model at ORT_ENABLE_ALL with ``optimized_model_filepath``: the offline
    optimisation, the optimised model written to ``out``."""
    import onnxruntime as ort

    steps = []
    start = time.perf_counter()
    for m in models:
        out = Path(m["out"])
        out.unlink(missing_ok=True)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = str(out)
        t0 = time.perf_counter()
        ort.InferenceSession(m["path"], so, providers=["CPUExecutionProvider"])
        steps.append({"model": m["path"], "session_s": time.perf_counter() - t0, "optimized_bytes": out.stat().st_size})
    return {"peer": "onnxruntime", "version": ort.__version__, "in_process_s": time.perf_counter() - start,
            "models": steps}


# ---------------------------------------------------------------- from the benchmark process


def _run_child(kind: str, models: list[dict], timeout: float | None) -> dict:
    m = run_measured([sys.executable, str(Path(__file__).resolve()), kind, "--models", json.dumps(models)],
                     timeout=timeout)
    rec = _record(m, m.last_json())
    if m.timed_out:
        rec["error"] = f"timed out at {timeout:g} s"
    return rec


def ov_compile(models: list[tuple[Path, dict | None]], timeout: float | None = None) -> dict:
    """OpenVINO, whole process: (model path, {input: dims} or None) each."""
    return _run_child("ov", [{"path": str(p), "shape": s} for p, s in models], timeout)


def ort_optimise(models: list[Path], out_dir: Path, timeout: float | None = None) -> dict:
    """ONNX Runtime offline optimisation, whole process; optimised models go to ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = [{"path": str(p), "out": str(out_dir / f"{i}-{p.stem}.ort.onnx")} for i, p in enumerate(models)]
    return _run_child("ort", spec, timeout)


_IMPORT_NUMPY = ("import json, time; t = time.perf_counter(); import numpy; "
                 "print(json.dumps({'in_process_s': time.perf_counter() - t}))")


def import_numpy() -> dict:
    """``python -c "import numpy"``, whole process: the floor of any Python command that touches arrays; its
    ``in_process_s`` is the import alone (what a build that needs arrays pays inside its build seconds)."""
    m = run_measured([sys.executable, "-c", _IMPORT_NUMPY])
    return _record(m, m.last_json())


# One unit of CPU-bound work for parallel_ceiling: a Python loop (no I/O, no shared state), about 1 s
_SPIN = "import sys\nx = 0\nfor i in range(int(sys.argv[1])):\n    x += i\n"
SPIN_ITERATIONS = 15_000_000


def parallel_ceiling(rounds: int = 3, iterations: int = SPIN_ITERATIONS) -> dict:
    """The machine's own ceiling for figure 3's ratio: two CPU-bound Python processes one after the other, then
    both at once; serial wall / parallel wall (2.0 on two free cores; a shared VM's neighbours, and the clock
    a core runs at when both are busy, take their share). The median of ``rounds``."""
    argv = [sys.executable, "-c", _SPIN, str(iterations)]

    def timed(together: bool) -> float:
        start = time.perf_counter()
        if together:
            procs = [subprocess.Popen(argv) for _ in range(2)]
            codes = [p.wait() for p in procs]
        else:
            codes = [subprocess.run(argv, check=False).returncode for _ in range(2)]
        if any(codes):
            raise RuntimeError(f"the CPU probe failed: exit codes {codes}")
        return time.perf_counter() - start

    runs = [(timed(False), timed(True)) for _ in range(rounds)]
    ratios = [one / two for one, two in runs]
    return {"iterations": iterations, "serial_s": [a for a, _ in runs], "parallel_s": [b for _, b in runs],
            "ratios": ratios, "ratio": statistics.median(ratios)}


def blake3_rate(files: Sequence[Path]) -> dict:
    """blake3 of the files' bytes (read from the page cache, hashed on one thread): bytes / seconds."""
    import blake3

    total, start = 0, time.perf_counter()
    for f in files:
        h = blake3.blake3()
        with open(f, "rb") as fh:
            while chunk := fh.read(CHUNK):
                h.update(chunk)
                total += len(chunk)
        h.digest()
    seconds = time.perf_counter() - start
    return {"bytes": total, "seconds": seconds, "bytes_per_s": total / seconds if seconds else None}


def write_fsync_rate(files: Sequence[Path], scratch: Path) -> dict:
    """Copy the files' bytes to ``scratch`` (one file each), fsync each and the directory: bytes / seconds.
    The reads come from the page cache; the copies are removed afterwards."""
    scratch.mkdir(parents=True, exist_ok=True)
    total, start = 0, time.perf_counter()
    written = []
    for i, f in enumerate(files):
        target = scratch / f"{i:06d}.bin"
        with open(f, "rb") as src, open(target, "wb") as dst:
            while chunk := src.read(CHUNK):
                dst.write(chunk)
                total += len(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        written.append(target)
    fd = os.open(scratch, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    seconds = time.perf_counter() - start
    for target in written:
        target.unlink()
    return {"bytes": total, "seconds": seconds, "bytes_per_s": total / seconds if seconds else None}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("peer", choices=("ov", "ort"))
    parser.add_argument("--models", required=True, help="JSON list of {path, shape} (ov) or {path, out} (ort)")
    args = parser.parse_args(argv)
    models = json.loads(args.models)
    print(json.dumps(ov_child(models) if args.peer == "ov" else ort_child(models)))


if __name__ == "__main__":
    main()
