"""ONNX backend node suite conformance: passed / failed / excluded per op type and in total, for one target.

    python bench/conformance.py --target cpu [--executor auto|onnxruntime|reference] [--json] [--jobs N]
                                [--failures] [--check-exclusions] [-k REGEX] [--out PATH]

Every node case is compiled through ``bundle_pipeline.backend`` (one-infer-graph bundle), loaded and run;
a case passes when its outputs match as onnx's own runner checks them. Excluded cases (with their reasons)
come from ``tests/conformance/exclusions.py``, the list the pytest suite skips. ``--check-exclusions`` also
runs the excluded cases and lists those that pass (stale entries). With ``--json`` the last line is
``{"target", "executor", "passed", "failed", "excluded", "total", "passed_by_executor"}`` (how many passed
cases ran on ONNX Runtime and how many on the reference executor). A full run (no ``-k``) also writes the per-op table,
every failure and every exclusion to ``bench/results/conformance_<target>.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "conformance"))

from node_suite import exclusion, node_cases, op_type, run_case

from bundle_pipeline.targets import KNOWN_TARGETS

RESULTS = Path(__file__).resolve().parent / "results"


def _run_one(job: tuple[str, str, bool, str]) -> tuple[str, str, str, float, str]:
    """(name, status, detail, seconds, executor); status is passed | failed | excluded | stale (excluded but
    passes); executor: what ran the case's graph (onnxruntime | reference; "" when it did not run to the end)."""
    name, target, check_excluded, executor = job
    why = exclusion(name)
    if why and not check_excluded:
        return name, "excluded", why, 0.0, ""
    start = time.perf_counter()
    ran = ""
    try:
        ran = run_case(node_cases()[name], target=target, executor=executor)
        status, detail = ("stale" if why else "passed"), (why or "")
    except Exception as err:  # noqa: BLE001 - any failure of a case is a result to report, not a crash
        status = "excluded" if why else "failed"
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        detail = why or f"{type(err).__name__}: {first}"[:300]
    return name, status, detail, time.perf_counter() - start, ran


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="cpu", help=f"compile target ({' | '.join(KNOWN_TARGETS)})")
    parser.add_argument("--executor", default="auto", choices=["auto", "onnxruntime", "reference"],
                        help="runtime executor the bundles are loaded with (default auto)")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of totals")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    parser.add_argument("--failures", action="store_true", help="list every failed case with its error")
    parser.add_argument("--check-exclusions", action="store_true",
                        help="also run excluded cases and list those that pass")
    parser.add_argument("-k", dest="pattern", default=None, help="only cases whose name matches this regex")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON results file (default for a full run: bench/results/conformance_<target>.json)")
    args = parser.parse_args(argv)
    if args.target not in KNOWN_TARGETS:
        print(f"error: unknown target {args.target!r}; available: {', '.join(KNOWN_TARGETS)}", file=sys.stderr)
        return 2

    names = sorted(node_cases())
    if args.pattern:
        names = [n for n in names if re.search(args.pattern, n)]
    jobs = [(n, args.target, args.check_exclusions, args.executor) for n in names]
    start = time.perf_counter()
    if args.jobs > 1:
        with mp.get_context("fork").Pool(args.jobs) as pool:
            results = list(pool.imap_unordered(_run_one, jobs, chunksize=4))
    else:
        results = [_run_one(j) for j in jobs]
    seconds = time.perf_counter() - start
    results.sort()

    per_op: dict[str, Counter] = defaultdict(Counter)
    totals: Counter = Counter()
    ran_by = Counter(ran for _, status, _, _, ran in results if status == "passed")
    for name, status, _, _, _ in results:
        counted = "excluded" if status == "stale" else status
        per_op[op_type(name)][counted] += 1
        totals[counted] += 1

    print(f"{'op':<34}{'passed':>8}{'failed':>8}{'excluded':>10}{'total':>8}")
    for op in sorted(per_op):
        c = per_op[op]
        print(f"{op:<34}{c['passed']:>8}{c['failed']:>8}{c['excluded']:>10}{sum(c.values()):>8}")
    total = sum(totals.values())
    print(f"{'TOTAL':<34}{totals['passed']:>8}{totals['failed']:>8}{totals['excluded']:>10}{total:>8}")
    print(f"target {args.target}: {totals['passed']} passed, {totals['failed']} failed, {totals['excluded']} "
          f"excluded of {total} node cases in {seconds:.1f} s ({args.jobs} jobs); passed cases ran on: "
          f"{', '.join(f'{k} {v}' for k, v in sorted(ran_by.items()))}")
    if args.failures:
        for name, status, detail, _, _ in results:
            if status == "failed":
                print(f"FAILED {name}: {detail}")
    if args.check_exclusions:
        stale = [(n, d) for n, s, d, _, _ in results if s == "stale"]
        print(f"{len(stale)} excluded cases pass (stale exclusions)")
        for name, why in stale:
            print(f"STALE {name}: {why}")
    summary = {"target": args.target, "executor": args.executor, "passed": totals["passed"],
               "failed": totals["failed"], "excluded": totals["excluded"], "total": total,
               "passed_by_executor": dict(sorted(ran_by.items()))}
    out = args.out or (None if args.pattern else RESULTS / f"conformance_{args.target}.json")
    if out is not None:
        _write_results(out, {**summary, "seconds": round(seconds, 1), "per_op": {op: dict(c) for op, c in
                                                                                 sorted(per_op.items())},
                             "failed_cases": {n: d for n, s, d, _, _ in results if s == "failed"},
                             "excluded_cases": {n: d for n, s, d, _, _ in results
                                                if s in ("excluded", "stale")}})
    if args.json:
        print(json.dumps(summary))
    return 0


def _write_results(path: Path, data: dict) -> None:
    """Atomic write (temp + rename), so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
