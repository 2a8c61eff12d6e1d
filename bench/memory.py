"""Memory of a bundle run against its plan (issue 5), with and without buffer reuse, in place and copy-in.

For each model (the test models of tests/models.py and the real models of tests/conftest.py, split with
``convert_to_weight_refreshable_graphs``) the infer graph is built twice, ``exec_disable_reused_memory`` 0
and 1. The executor allocates the planned arena once, at load; a run should allocate little beyond it.
Measured per run (after one warm-up run, with tracemalloc, which sees numpy's allocations):

- ``arena_bytes``: the plan (allocated at load, reused by every run);
- ``run_peak_bytes``: the peak of what a run allocates on top of the arena (kernel temporaries and results
  before their copy into the arena, the copied-out outputs), with elementwise steps written in place
  (``Executor.write_in_place``, the default) and with every result copied in (``copy_in``);
- ``total_peak_bytes`` = arena + run peak, and its ratio to the arena;
- ``peak_step``: the step allocating the most beyond the arena (a per-step tracemalloc pass).

Prints a table and writes ``bench/results/memory.json``. ``--only NAME`` limits the models.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import yaml

from bundle_pipeline.program import encode

BENCH_DIR = Path(__file__).resolve().parent
TESTS_DIR = BENCH_DIR.parent / "tests"
DEFAULT_RESULTS = BENCH_DIR / "results" / "memory.json"
sys.path.insert(0, str(TESTS_DIR))  # the test models and the real-model fetcher live with the tests

Feeds = Callable[[np.random.Generator], dict[str, np.ndarray]]


def test_models(root: Path, only: set[str] | None = None) -> dict[str, tuple[Path, Feeds]]:
    import models

    out = {}
    for name, builder in (("mlp", models.mlp), ("cnn", models.cnn), ("attention", models.attention)):
        if only and name not in only:
            continue
        built = builder(root / name)
        out[name] = (built.spec, lambda rng, b=built: b.feeds(rng))
    return out


def real_models(root: Path, only: set[str] | None = None) -> dict[str, tuple[Path, Feeds]]:
    """magika and ppocr cls, split into init/update/infer; empty when they cannot be fetched (offline)."""
    from conftest import REAL_MODEL_INPUTS, ModelUnavailable, fetch_wheel_model, real_models_cache_dir

    from bundle_pipeline.split import convert_to_weight_refreshable_graphs, write_split

    out = {}
    for name, (source, inputs) in REAL_MODEL_INPUTS.items():
        if only and name not in only:
            continue
        try:
            path = fetch_wheel_model(source, real_models_cache_dir())
        except ModelUnavailable as err:
            print(f"skipping {name}: {err}", file=sys.stderr)
            continue
        shape = ";".join(f"{k}:{','.join(map(str, s))}" for k, (s, _, _) in inputs.items())
        spec = write_split(convert_to_weight_refreshable_graphs(path), root / name, name, shape)

        def feeds(rng: np.random.Generator, inputs=inputs) -> dict[str, np.ndarray]:
            return {k: (rng.integers(int(lo), int(hi), s, endpoint=True) if np.dtype(d).kind in "iu"
                        else rng.uniform(lo, hi, s)).astype(d) for k, (s, d, (lo, hi)) in inputs.items()}

        out[name] = (spec, feeds)
    return out


def with_reuse(spec_path: Path, reuse: bool, out: Path, cache: Path):
    """Build the spec with exec_disable_reused_memory set on its infer graphs; return the loaded bundle."""
    from bundle_pipeline.pipeline import build
    from bundle_pipeline.runtime import load_bundle
    from bundle_pipeline.spec import load_spec

    text = yaml.safe_load(spec_path.read_text())
    for g in text["graphs"]:
        if g.get("role", "infer") == "infer":
            g["options"] = {**(g.get("options") or {}), "exec_disable_reused_memory": "0" if reuse else "1"}
    variant = spec_path.with_name(f"bundle.reuse{int(reuse)}.yaml")
    variant.write_text(yaml.safe_dump(text, sort_keys=False))
    spec = load_spec(variant, output=str(out), cache=str(cache))
    build(spec)
    return load_bundle(spec.output, executor="reference")  # the reference interpreter's arena is what is measured


def run_peak(executor, feeds: dict[str, np.ndarray], in_place: bool) -> tuple[int, int]:
    """(peak bytes a run allocates beyond the arena, bytes of the returned outputs)."""
    executor.write_in_place = in_place
    executor.run(feeds)  # warm up: lazy imports, caches
    tracemalloc.start()
    try:
        outputs = executor.run(feeds)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        del executor.write_in_place  # back to the class default
    return peak, sum(v.nbytes for v in outputs.values())


def peak_step(executor, feeds: dict[str, np.ndarray]) -> dict:
    """The step whose kernel allocates the most beyond the arena (its temporaries and result), by tracemalloc."""
    env = executor.bind(feeds)
    worst = {"bytes": 0, "node": None, "op": None}
    tracemalloc.start()
    try:
        for index, (step, attrs) in enumerate(zip(executor.program.steps, executor.attrs, strict=True)):
            base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            executor.run_step(step, attrs, env, index)
            used = tracemalloc.get_traced_memory()[1] - base
            if used > worst["bytes"]:
                worst = {"bytes": used, "node": step.node, "op": step.op}
    finally:
        tracemalloc.stop()
    return worst


def measure(name: str, spec: Path, feeds_of: Feeds, work: Path) -> list[dict]:
    rows = []
    for reuse in (True, False):
        bundle = with_reuse(spec, reuse, work / f"{name}.reuse{int(reuse)}.bundle", work / "cache")
        for graph, role in bundle.roles.items():
            if role != "infer":
                continue
            executor = bundle.executors[graph]
            program = encode(executor.program)  # the program as the bundle stores it
            assert executor.arena.nbytes == program["arena_bytes"]
            feeds = feeds_of(np.random.default_rng(0))
            peak_in_place, out_bytes = run_peak(executor, feeds, True)
            peak_copy_in, _ = run_peak(executor, feeds, False)
            worst = peak_step(executor, feeds)
            arena = int(program["arena_bytes"])
            largest = max((int(np.prod(v["shape"], dtype=np.int64)) * np.dtype(v["dtype"]).itemsize
                           for v in program["values"].values()), default=0)
            rows.append({
                "model": name, "graph": graph, "reuse": reuse, "steps": len(program["steps"]),
                "arena_bytes": arena, "arena_bytes_other": program["arena_bytes_by_reuse"]["off" if reuse else "on"],
                "largest_value_bytes": largest, "output_bytes": out_bytes,
                "run_peak_bytes": peak_in_place, "run_peak_bytes_copy_in": peak_copy_in,
                "peak_step": worst, "total_peak_bytes": arena + peak_in_place,
                "total_over_arena": round((arena + peak_in_place) / max(arena, 1), 3),
            })
    return rows


def table(rows: list[dict]) -> str:
    head = (f"{'model':<12} {'reuse':<5} {'arena (plan)':>13} {'other way':>11} {'largest':>9} "
            f"{'run peak':>10} {'copy-in':>10} {'total/arena':>11}  peak step")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['model']:<12} {'on' if r['reuse'] else 'off':<5} {_kib(r['arena_bytes']):>13} "
                     f"{_kib(r['arena_bytes_other']):>11} {_kib(r['largest_value_bytes']):>9} "
                     f"{_kib(r['run_peak_bytes']):>10} {_kib(r['run_peak_bytes_copy_in']):>10} "
                     f"{r['total_over_arena']:>11.3f}  {r['peak_step']['op']} {_kib(r['peak_step']['bytes'])}")
    return "\n".join(lines)


def _kib(n: int) -> str:
    return f"{n / 1024:.1f} KiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", help="model name (repeatable)")
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS, help="JSON results file")
    args = parser.parse_args(argv)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        work = Path(tmp)
        only = set(args.only or [])
        cases = {**test_models(work / "models", only), **real_models(work / "real", only)}
        for name, (spec, feeds) in cases.items():
            rows += measure(name, spec, feeds, work / "build")
    print(table(rows))
    result = {"benchmark": "memory", "when": datetime.now(UTC).isoformat(timespec="seconds"),
              "python": platform.python_version(), "numpy": np.__version__, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(result, indent=1) + "\n")
    tmp_out.replace(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
