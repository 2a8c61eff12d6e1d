"""What bench/speed.py's figures share: the run context, one whole-process CLI build, cold builds with a fresh
cache, repeats (median), a time budget per build, table rows, and the least-squares slope of the scaling points."""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import incremental
from incremental import build_record, fresh, wait_out_racy_window
from measure import run_measured

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Built:
    """A bundle built cold in this run whose cache the no-op and edit figures reuse."""

    spec: Path
    cache: Path
    out: Path
    extra: tuple[str, ...] = ()


@dataclass
class Ctx:
    data: Path  # bench/data: bundle (a) of bench/generate.py here, speed.py's own inputs under data/speed
    quick: bool = False
    graphs: tuple[int, ...] = (32, 128)  # figure 3's bundle sizes; figure 5 edits the first
    repeat: int = 1
    scale: float = 1.0
    budget_s: float = 180.0  # a build or peer still running after this is killed and recorded as timed out
    repeat_cutoff_s: float = 20.0  # a build slower than this runs once: its noise is small beside it
    peers: dict[str, str] = field(default_factory=dict)
    built: dict[str, Built] = field(default_factory=dict)
    shared: dict[str, dict] = field(default_factory=dict)  # results one figure hands another (same builds)

    @property
    def speed(self) -> Path:
        return self.data / "speed"

    def cache(self, label: str) -> Path:
        return self.speed / "caches" / label.replace(" ", "-")

    def out(self, label: str) -> Path:
        return self.speed / "bundles" / f"{label.replace(' ', '-')}.bundle"


def cli_env() -> dict[str, str]:
    """The environment of every CLI process: this checkout's bundle_pipeline first on the path."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else "")}


def cli_run(label: str, spec: Path, cache: Path, out: Path, extra: Sequence[str] = (),
            timeout: float | None = None) -> dict:
    """``python -m bundle_pipeline.cli run SPEC --json`` as a whole process: wall time, peak RSS, the report's
    build seconds (``in_process_s``), tasks ran/cached; ``error`` when it failed or ran out of ``timeout``."""
    argv = [sys.executable, "-m", "bundle_pipeline.cli", "run", str(spec), "--json", "--cache", str(cache),
            "--out", str(out), *extra]
    load = os.getloadavg()[0]
    m = run_measured(argv, env=cli_env(), timeout=timeout)
    rec = {**compact(build_record(m)), "loadavg_1m_before": load, "timed_out": m.timed_out}
    if m.timed_out:
        rec["error"] = f"timed out at {timeout:g} s"
    status = rec.get("error", "").splitlines()[-1:] or [f"{rec['ran']} ran, {rec['cached']} cached"]
    build = "" if rec["in_process_s"] is None else f", build {rec['in_process_s']:.2f} s"
    print(f"    {label}: {rec['wall_s']:.2f} s{build}, {rec['tree_peak_kib'] / 1024:.0f} MiB, {status[0][:160]}",
          flush=True)
    return rec


KEEP_TASKS = 40


def compact(rec: dict) -> dict:
    """A build record without per-task lists of big builds: seconds per stage (tasks that ran) and the
    KEEP_TASKS slowest tasks instead of every task's seconds; the ids of the tasks that ran when there are few."""
    seconds = rec.pop("ran_seconds", {})
    stages: dict[str, float] = {}
    for tid, s in seconds.items():
        stage = tid.split("/", 1)[-1].split(":", 1)[0]
        stages[stage] = stages.get(stage, 0.0) + s
    rec["ran_stage_seconds"] = {k: round(v, 4) for k, v in sorted(stages.items(), key=lambda kv: -kv[1])}
    rec["slowest_tasks"] = dict(sorted(seconds.items(), key=lambda kv: -kv[1])[:KEEP_TASKS])
    if len(rec.get("ran_tasks", [])) > KEEP_TASKS:
        rec.pop("ran_tasks")
    return rec


def repeated(n: int, once: Callable[[int], dict], cutoff_s: float | None = None) -> dict:
    """``once(i)`` for i < n, stopping at the first failure or timeout, or after a first run slower than
    ``cutoff_s``; the median run by wall time stands for them (incremental.aggregate)."""
    runs = []
    for i in range(n):
        runs.append(once(i))
        if "error" in runs[-1] or (cutoff_s is not None and runs[0]["wall_s"] > cutoff_s):
            break
    rec = incremental.aggregate(runs)
    if "error" not in rec:
        rec["in_process_s_all"] = [r["in_process_s"] for r in runs]
    return rec


def cold(ctx: Ctx, label: str, spec: Path, extra: Sequence[str] = (), budget: bool = True) -> dict:
    """Cold builds (fresh cache and output each time, inputs older than the stat state's racy window);
    the bundle and its cache are kept for the figures that reuse them (``ctx.built[label]``)."""
    cache, out = ctx.cache(label), ctx.out(label)

    def once(_: int) -> dict:
        fresh(cache, out)
        waited = wait_out_racy_window(spec.parent)
        return {**cli_run(f"{label} cold", spec, cache, out, extra, ctx.budget_s if budget else None),
                "racy_wait_s": waited}

    rec = flushed_first(lambda: repeated(ctx.repeat, once, ctx.repeat_cutoff_s))
    if "error" not in rec:
        ctx.built[label] = Built(spec, cache, out, tuple(extra))
    return rec


def cold_rounds(ctx: Ctx, builds: dict[str, tuple[Path, Sequence[str]]]) -> dict[str, dict]:
    """``cold`` of several labels (label -> spec, extra args) in rounds, one build of each per round: the machine
    drifts slower over minutes (up to 30 % across three 128-graph builds), and run back to back the later label's
    builds took the drift, which skewed the ratios between labels. Per label the median run, as ``cold``."""
    runs: dict[str, list[dict]] = {label: [] for label in builds}
    flushed = flush_writes()
    for _ in range(ctx.repeat):
        for label, (spec, extra) in builds.items():
            done = runs[label]
            if done and ("error" in done[-1] or (ctx.repeat_cutoff_s is not None
                                                 and done[0]["wall_s"] > ctx.repeat_cutoff_s)):
                continue
            cache, out = ctx.cache(label), ctx.out(label)
            fresh(cache, out)
            waited = wait_out_racy_window(spec.parent)
            done.append({**cli_run(f"{label} cold", spec, cache, out, extra, ctx.budget_s), "racy_wait_s": waited})
    recs = {}
    for label, done in runs.items():
        rec = recs[label] = {**incremental.aggregate(done), "flush_writes_s": flushed}
        if "error" not in rec:
            rec["in_process_s_all"] = [r["in_process_s"] for r in done]
            ctx.built[label] = Built(builds[label][0], ctx.cache(label), ctx.out(label), tuple(builds[label][1]))
    return recs


def side_by_side(ctx: Ctx, label: str, spec: Path, extra: Sequence[str]) -> dict:
    """How far this machine lets two copies of one build scale: two cold builds of ``spec`` (fresh caches and
    outputs) one after the other, then both at once, ``ctx.repeat`` rounds. No scheduler sits between them, so
    the ratios are what the cores give this workload (its memory traffic and page faults included), the ceiling
    for ``--workers 2`` vs 1 on the same builds. Serial: sums of the two; at once: the later of the two."""
    from concurrent.futures import ThreadPoolExecutor

    labels = (f"{label} side A", f"{label} side B")

    def once(pair: bool) -> list[dict]:
        for one in labels:
            fresh(ctx.cache(one), ctx.out(one))
        wait_out_racy_window(spec.parent)

        def run(one: str) -> dict:
            return cli_run(one, spec, ctx.cache(one), ctx.out(one), extra, ctx.budget_s)

        if not pair:
            return [run(one) for one in labels]
        with ThreadPoolExecutor(2) as pool:  # each thread waits for its process: both start together
            return list(pool.map(run, labels))

    rounds, flushed = [], flush_writes()
    for _ in range(ctx.repeat):
        serial, together = once(False), once(True)
        if not all(ok(r) and r.get("in_process_s") for r in serial + together):
            return {"error": next((r["error"] for r in serial + together if "error" in r), "no build seconds")}
        rounds.append({"serial_wall_s": sum(r["wall_s"] for r in serial),
                       "together_wall_s": max(r["wall_s"] for r in together),
                       "serial_build_s": sum(r["in_process_s"] for r in serial),
                       "together_build_s": max(r["in_process_s"] for r in together)})
    out: dict = {"rounds": rounds, "flush_writes_s": flushed}
    for what in ("wall", "build"):
        out[f"{what}_ratio"] = statistics.median(r[f"serial_{what}_s"] / r[f"together_{what}_s"] for r in rounds)
    return out


REBUILD_REPEAT = 5  # no-ops and edits take well under a second: at least this many runs, for a steadier median


def rebuild(ctx: Ctx, label: str, name: str, before: Callable[[int], object] | None = None) -> dict:
    """Builds reusing ``ctx.built[label]``'s cache (a no-op, or an edit made by ``before(i)`` each time), at least
    ``REBUILD_REPEAT`` times unless the run repeats nothing (``--repeat 1``, ``--quick``). They start once what
    the runs before them wrote has reached the disk (``flush_writes``)."""
    b = ctx.built[label]

    def once(i: int) -> dict:
        made = before(i) if before else None
        rec = cli_run(f"{label} {name}", b.spec, b.cache, b.out, b.extra, ctx.budget_s)
        return rec if made is None else {**rec, "edit": made}

    return flushed_first(lambda: repeated(max(ctx.repeat, REBUILD_REPEAT) if ctx.repeat > 1 else 1, once,
                                          ctx.repeat_cutoff_s))


def flushed_first(series: Callable[[], dict]) -> dict:
    """``series()`` (a measured series of runs) started once what ran before it has reached the disk
    (``flush_writes``); its record notes the flush's seconds."""
    flushed = flush_writes()
    return {**series(), "flush_writes_s": flushed}


def flush_writes() -> float:
    """``os.sync()``; its seconds. A run leaves its buffered writes for the kernel to write back later (within 30 s
    here): ORT's optimised 1 GiB model, written just before the weight edits, was still being written back during
    the first of them, and their O_DIRECT writes waited behind it (55 and 62 ms against 27-33 ms in run AH)."""
    start = time.perf_counter()
    os.sync()
    return time.perf_counter() - start


def settle(ctx: Ctx, label: str) -> dict:
    """One unmeasured build once every input is past the racy window, so the stat state records them all."""
    b = ctx.built[label]
    waited = wait_out_racy_window(b.spec.parent)
    return {**cli_run(f"{label} settle", b.spec, b.cache, b.out, b.extra, ctx.budget_s), "racy_wait_s": waited}


def ok(rec: dict | None) -> bool:
    return rec is not None and "error" not in rec


def wall(rec: dict | None) -> float | None:
    return rec["wall_s"] if ok(rec) else None


def build_s(rec: dict | None) -> float | None:
    """The median of the runs' build seconds (the run with the median wall time may not have the median build)."""
    if not ok(rec):
        return None
    runs = [s for s in rec.get("in_process_s_all") or [rec.get("in_process_s")] if s is not None]
    return statistics.median(runs) if runs else None


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def fit(points: dict[int, float]) -> dict | None:
    """Least-squares line through (size, seconds): slope (seconds per unit) and intercept; None under 2 points."""
    if len(points) < 2:
        return None
    xs, ys = list(points), list(points.values())
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return {"slope_s": slope, "intercept_s": my - slope * mx, "points": {str(k): v for k, v in points.items()}}


@dataclass
class Row:
    """One line of the table: what we measured, the peer or floor beside it (same run), ours/peer, the goal."""

    figure: str
    name: str
    value: float | None
    unit: str
    goal: str = "-"
    met: bool | None = None
    peer: str = ""
    ratio: float | None = None
    note: str = ""

    def cells(self) -> list[str]:
        value = "n/a" if self.value is None else f"{_num(self.value)} {self.unit}".strip()
        met = "-" if self.met is None else ("yes" if self.met else "NO")
        return [self.figure, self.name, value, self.peer or "-", "-" if self.ratio is None else f"{self.ratio:.2f}x",
                self.goal, met, self.note]


def _num(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"


def at_most(value: float | None, limit: float) -> bool | None:
    return None if value is None else value <= limit


def at_least(value: float | None, limit: float) -> bool | None:
    return None if value is None else value >= limit


def secs(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3g} s"


def failure(rec: dict | None) -> str:
    """Why a record has no figure: its error's last line."""
    if rec is None:
        return "not run"
    lines = str(rec.get("error", "")).strip().splitlines()
    return (lines[-1] if lines else "failed")[:200]
