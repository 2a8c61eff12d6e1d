"""Build-speed benchmark (issue 14): our CLI and the peers as whole processes, in the same run, on the same inputs.

Figures (goals from issue 14):
  1 noop         no-op `run` of built bundles (<= 0.30 s), beside `python -c "import numpy"` and ORT's compile of det
  2 real         cold `run` of split real models (PP-OCR det, magika, rapidocr cls, silero-vad, and a bundle of the
                 last three) on cpu and npu, vs OpenVINO read+reshape+compile_model and ORT optimise+save (<= 1.5x OV)
  3 graphs       cold build of 32 and 128 distinct 40-layer graphs (npu) with sync, threads, --workers 1 and 2
                 (32 graphs <= 1.5 s build seconds; --workers 2 vs 1 on 128 graphs >= 1.7x)
  4 weight-edit  one-tensor weight edit of the 1 GiB bundle (a) of bench/generate.py (<= 0.03 of cold; <= 0.5 s),
                 and of (a) saved in onnx's default one-file external-data layout
  5 graph-edit   one-graph edit of the 32-graph bundle of figure 3 (<= 0.10 of cold)
  6 throughput   cold weight bytes / build seconds of (a) (>= 500 MiB/s), beside blake3 and disk write+fsync
  7 scaling      build seconds for 8..512 graphs and 100..10,000 tensors; least-squares slopes

    python bench/speed.py [--quick] [--only noop,real,...] [--repeat N] [--scale S] [--graphs 32,128]
                          [--budget SECONDS] [--skip-peers] [--data DIR] [--results FILE]

Prints the table and writes bench/results/speed.json (--results). "build seconds" = the `seconds` field of
`run --json`; "whole process" = the wall time of the command. The CLI runs as `python -m bundle_pipeline.cli` with
this checkout first on PYTHONPATH, so it measures the code beside this file.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import generate
import incremental
import peers
import speedfigs
import speedgen
from incremental import render, write_json
from speedrun import ROOT, Ctx, Row

DEFAULT_RESULTS = Path(__file__).resolve().parent / "results" / "speed.json"
QUICK_SCALE = 0.01
HEADER = ["fig", "figure", "measured", "peer / floor (same run)", "ours/peer", "goal", "met", "note"]
NOTES = [
    "Every figure is a whole process unless it says 'build seconds' (the `seconds` field of `run --json`: the "
    "build from spec to bundle, without interpreter start-up and imports).",
    "Each cold build uses a fresh --cache and --out, after waiting until its inputs are past the stat state's 2 s "
    "racy window; edits and no-ops reuse the cold build's cache. No-ops follow one unmeasured settling run. "
    "From run AD (2026-12-04) on, the previous cache and output are renamed aside and deleted when the run ends: "
    "deleted right before, they slowed the build (this VM's ext4 has no journal and skips inodes freed lately).",
    "From run AI on, every series of runs (cold builds, rebuilds, a peer's runs) starts after os.sync(): what the "
    "runs before it wrote through the page cache reaches the disk then, not during it (ORT's optimised 1 GiB model "
    "was still being written back during the first weight edits after it: 51-62 ms against 25-33 ms).",
    "--repeat N: every measurement N times (no-ops and edits at least 5), the median run (by wall time) stands, and "
    "for build seconds the median of the runs' build seconds; a build whose first run takes "
    "longer than the repeat cutoff runs once. A build or peer still running after --budget seconds is killed "
    "(its process group) and recorded as timed out.",
    "Peers get the original model file. OpenVINO: read_model + reshape to the same static input shapes we build "
    "with + compile_model('CPU'), no CACHE_DIR. ORT: InferenceSession at ORT_ENABLE_ALL with "
    "optimized_model_filepath (the model as shipped: ORT takes no input shapes). For a bundle of several models "
    "one peer process compiles them all. Bundle (a): bench/peers.py's cold runs on its original.onnx.",
    "The machine is shared: loadavg_1m_before of each run and the load averages at start and end say how busy.",
    "Figure 3's floor for --workers 2 vs 1 is the machine's own: two CPU-bound Python processes (a loop) run one "
    "after the other, then both at once, right after the builds (serial wall / parallel wall; 2.0 on two free "
    "cores). ours/peer near 1.0 means the build scales as far as the machine lets any two processes scale. For the "
    "largest bundle the note adds two --scheduler sync builds of it run side by side (fresh caches; serial / at "
    "once): this workload's own ceiling, with no scheduler between the copies. The whole-process note says how far "
    "start-up and close (what wall time adds to build seconds, paid alike by 1 and 2 workers) let the ratio go if "
    "the build scaled as those two copies did.",
    "A run's peak RSS is sampled every 20 ms from /proc, reading only the processes of its tree (psutil read every "
    "process on the machine: 5 % of a core, which --workers 2 paid on its own cores).",
]
EXTRA_VERSIONS = ("ml_dtypes", "pyyaml", "rich")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"small scales, one repeat (1-4 graphs, 10-100 tensors, scale {QUICK_SCALE}, cls only)")
    parser.add_argument("--only", default=",".join(speedfigs.FIGURES), help="comma-separated figures")
    parser.add_argument("--repeat", type=int, help="runs per measurement, median (default 3; --quick: 1)")
    parser.add_argument("--repeat-cutoff", type=float, default=20.0,
                        help="a build whose first run takes longer than this (s) runs once")
    parser.add_argument("--scale", type=float, help=f"weight bytes of bundle (a) = scale x 1 GiB (--quick: "
                                                    f"{QUICK_SCALE})")
    parser.add_argument("--graphs", help="figure 3's graph counts, comma-separated; figure 5 edits the first "
                                         "(default 32,128; --quick: 2,4)")
    parser.add_argument("--budget", type=float, default=180.0, help="seconds a build or peer may take")
    parser.add_argument("--data", type=Path, default=generate.DEFAULT_DATA, help="generated inputs and caches")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="JSON output")
    parser.add_argument("--skip-peers", action="store_true", help="do not run OpenVINO / ONNX Runtime")
    args = parser.parse_args(argv)
    args.only = [f.strip() for f in args.only.split(",") if f.strip()]
    unknown = sorted(set(args.only) - set(speedfigs.FIGURES))
    if unknown:
        parser.error(f"unknown figure {unknown[0]!r}; use a subset of {','.join(speedfigs.FIGURES)}")
    args.repeat = args.repeat or (1 if args.quick else 3)
    args.scale = args.scale or (QUICK_SCALE if args.quick else 1.0)
    try:
        args.graphs = tuple(int(n) for n in (args.graphs or ("2,4" if args.quick else "32,128")).split(","))
    except ValueError:
        parser.error(f"--graphs takes comma-separated counts, got {args.graphs!r}")
    if args.repeat < 1 or args.scale <= 0 or args.budget <= 0 or min(args.graphs) < 1:
        parser.error("--repeat, --scale, --budget and --graphs must be positive")
    return args


def machine() -> dict:
    """incremental.machine_info() (git HEAD, versions, cpu) + a few versions + the last commit of the product code."""
    info = incremental.machine_info()
    info["bundle_pipeline_commit"] = incremental._git("log", "-1", "--format=%H", "--", "../bundle_pipeline") or None
    for name in EXTRA_VERSIONS:
        try:
            info["packages"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info["packages"][name] = None
    return info


def run(args: argparse.Namespace) -> dict:
    """Run the chosen figures (in an order that lets later ones reuse builds), print the table, write the JSON."""
    started, t0, load_start = datetime.now(UTC).isoformat(timespec="seconds"), time.perf_counter(), os.getloadavg()
    ctx = Ctx(args.data, quick=args.quick, graphs=args.graphs, repeat=args.repeat, scale=args.scale,
              budget_s=args.budget, repeat_cutoff_s=args.repeat_cutoff,
              peers={} if args.skip_peers else peers.available())
    figures: dict[str, dict] = {}
    rows: dict[str, list[Row]] = {}
    for name in speedfigs.ORDER:
        if name in args.only:
            print(f"[{name}]", flush=True)
            fig_start = time.perf_counter()
            try:
                figures[name], rows[name] = speedfigs.FIGURES[name](ctx)
            except (speedgen.conftest.ModelUnavailable, subprocess.CalledProcessError) as err:  # fetch or split
                detail = getattr(err, "stderr", None) or str(err)
                figures[name], rows[name] = {"error": detail}, [Row(name, "figure failed", None, "",
                                                                    note=detail.strip().splitlines()[-1][:200])]
            figures[name]["figure_seconds"] = time.perf_counter() - fig_start
    table = [r for name in speedfigs.FIGURES for r in rows.get(name, [])]
    payload = {"benchmark": "speed", "issue": 14, "started": started,
               "finished": datetime.now(UTC).isoformat(timespec="seconds"),
               "duration_s": time.perf_counter() - t0, "command": [sys.executable, *sys.argv],
               "quick": args.quick, "graphs": args.graphs, "only": args.only, "repeat": args.repeat,
               "repeat_cutoff_s": args.repeat_cutoff,
               "scale": args.scale, "budget_s": args.budget, "measured_checkout": str(ROOT), "machine": machine(),
               "loadavg_start": list(load_start), "loadavg_end": list(os.getloadavg()), "peers": ctx.peers,
               "notes": NOTES, "rows": [asdict(r) for r in table], "figures": figures}
    write_json(args.results, payload)
    print()
    print(render([r.cells() for r in table], HEADER))
    missed = [r for r in table if r.met is False]
    print(f"\n{len(missed)} of {sum(r.met is not None for r in table)} goals missed; load average "
          f"{load_start[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end; {payload['duration_s']:.0f} s")
    for r in missed:  # what each miss measured against its goal; why: the README's "Why the misses"
        against_ov = "OV" in r.goal and r.ratio is not None
        measured = f"{r.ratio:.2f}x {r.peer}" if against_ov else r.cells()[2]
        beside = f"; same run: {r.peer} (ours/that {r.ratio:.2f}x)" if r.peer and r.ratio and not against_ov else ""
        print(f"  missed: {r.figure}: {r.name}: {measured}, goal {r.goal}{beside}")
    if missed:
        print("  (README, Benchmarks > Build speed: why each figure misses on the development machine)")
    print(f"wrote {args.results}")
    return payload


def main(argv: Sequence[str] | None = None) -> dict:
    try:
        return run(parse_args(argv))
    finally:  # after every measurement: deleting is what slows the next cold build (``incremental.fresh``)
        incremental.empty_trash()


if __name__ == "__main__":
    main()
