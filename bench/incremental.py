"""Incremental-build benchmark of the bundle-pipeline CLI (issue 3): cold, no-op, edits, workers; peers alongside."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import generate
import onnx
import peers
from measure import Measured, run_measured
from onnx import numpy_helper

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_RESULTS = BENCH_DIR / "results" / "incremental.json"
RACY_WAIT_S = 2.2  # the stat state records no file modified < 2 s before it was read ("racy git")
VERSIONS_OF = ("bundle-pipeline", "numpy", "onnx", "onnxruntime", "openvino", "dask", "distributed", "zarr",
               "blake3", "networkx", "typer", "psutil")


def cli_path() -> str:
    """The console script beside this interpreter (skips a version manager's shell shim), else PATH's."""
    beside = Path(sys.executable).parent / "bundle-pipeline"
    return str(beside) if beside.is_file() else (shutil.which("bundle-pipeline") or "bundle-pipeline")


CLI = cli_path()


# ---------------------------------------------------------------- one CLI build


def stage_counts(report: dict | None) -> dict[str, dict[str, int]]:
    """``{stage: {"ran": n, "cached": m}}`` from a ``--json`` build report."""
    counts: dict[str, dict[str, int]] = {}
    for task in (report or {}).get("tasks", []):
        entry = counts.setdefault(task["stage"], {"ran": 0, "cached": 0})
        entry["ran" if task["status"] == "ran" else "cached"] += 1
    return counts


def ran_ids(report: dict | None) -> list[str]:
    return [t["id"] for t in (report or {}).get("tasks", []) if t["status"] == "ran"]


def ran_seconds(report: dict | None) -> dict[str, float]:
    """In-process seconds of each task that ran (where the time of an edit goes)."""
    return {t["id"]: t["seconds"] for t in (report or {}).get("tasks", []) if t["status"] == "ran"}


def build_record(m: Measured) -> dict:
    """What a scenario keeps of one CLI run (the report's task list is reduced to counts and ran ids)."""
    report = m.last_json()
    counts = stage_counts(report)
    rec = {"argv": m.argv, "returncode": m.returncode, "wall_s": m.wall_s, "maxrss_kib": m.maxrss_kib,
           "tree_peak_kib": m.tree_peak_kib, "in_process_s": (report or {}).get("seconds"),
           "setup_s": (report or {}).get("setup_seconds"),  # imports, scheduler start: not in the build seconds
           "ran": sum(c["ran"] for c in counts.values()), "cached": sum(c["cached"] for c in counts.values()),
           "stages": counts, "ran_tasks": ran_ids(report), "ran_seconds": ran_seconds(report),
           "digest": (report or {}).get("digest")}
    if m.returncode != 0 or report is None:
        rec["error"] = (m.stderr or m.stdout)[-2000:]
    return rec


def cli_build(label: str, spec: Path, cache: Path, out: Path, extra: Sequence[str] = ()) -> dict:
    argv = [CLI, "run", str(spec), "--json", "--cache", str(cache), "--out", str(out), *extra]
    load = os.getloadavg()[0]
    rec = {**build_record(run_measured(argv)), "loadavg_1m_before": load}
    status = f"{rec['ran']} ran, {rec['cached']} cached" if "error" not in rec else "FAILED"
    print(f"    {label}: {rec['wall_s']:.2f} s, "
          f"{rec['maxrss_kib'] / 1024:.0f} MiB, {status}", flush=True)
    return rec


TRASH = ".bench-trash"  # beside what ``fresh`` clears: a rename there frees no inode
_TRASHES: set[Path] = set()


def fresh(*paths: Path) -> None:
    """Clear a cache dir / bundle output (always under the benchmark's data dir) for a cold build: renamed into a
    trash directory beside it, deleted by ``empty_trash`` when the run ends. Deleted here, its thousands of files
    slowed the next builds: ext4 without a journal (this VM's) skips every inode freed in the last minute or more
    at each file it creates. A 128-graph build 2 s after deleting its previous cache took 6 % longer, and serial
    pairs of them in one figure grew from 4.9 s to 10.1 s over three rounds."""
    for p in paths:
        if p.exists() or p.is_symlink():
            trash = p.parent / TRASH
            trash.mkdir(exist_ok=True)
            _TRASHES.add(trash)
            p.rename(trash / f"{p.name}.{uuid.uuid4().hex}")


def empty_trash() -> None:
    """Delete what ``fresh`` put aside in this process (and what a killed run left in the same trash dirs)."""
    while _TRASHES:
        shutil.rmtree(_TRASHES.pop(), ignore_errors=True)


def wait_out_racy_window(directory: Path) -> float:
    """Sleep until every input file is older than the stat state's racy window; return the seconds slept."""
    newest = max((p.stat().st_mtime for p in directory.iterdir() if p.is_file()), default=0.0)
    wait = max(0.0, newest + RACY_WAIT_S - time.time())
    time.sleep(wait)
    return wait


# ---------------------------------------------------------------- edits


def mark_edited(directory: Path, manifest: dict) -> None:
    """Set before editing, so the next run regenerates even if this one dies half-way."""
    generate.write_manifest(directory, {**manifest, "edited": True})


def edit_external(directory: Path, manifest: dict) -> dict:
    """(a): rewrite the one external-data file of the edited tensor in place (same size, new values)."""
    path = directory / manifest["edit"]["file"]
    generate.edit_in_place(path, 0, manifest["edit"]["shape"])
    return {"rewritten": [path.name], "bytes_rewritten": path.stat().st_size}


def _edit_initializer(path: Path, name: str) -> int:
    model = onnx.load_model(str(path))
    tensor = next(t for t in model.graph.initializer if t.name == name)
    new = numpy_helper.from_array(generate.edited_values(numpy_helper.to_array(tensor)), name)
    tensor.CopyFrom(new)
    onnx.save_model(model, str(path))
    return path.stat().st_size


def edit_single_file(directory: Path, manifest: dict) -> dict:
    """(b): rewrite infer.onnx (and the peers' original.onnx) with one initializer changed."""
    name = manifest["edit"]["tensor"]
    sizes = {p: _edit_initializer(directory / p, name) for p in ("infer.onnx", "original.onnx")}
    return {"rewritten": list(sizes), "bytes_rewritten": sizes["infer.onnx"]}


def edit_structure(directory: Path, manifest: dict, index: int = 0) -> dict:
    """(c): one infer graph (a different one for each ``index``) gets a Relu after its last layer."""
    graph = generate.c_edit_graph(index)
    k = int(graph[1:])
    generate.save(generate.c_infer(k, manifest["widths"][k], extra_relu=True), directory / f"{graph}.onnx", False)
    return {"rewritten": [f"{graph}.onnx"], "bytes_rewritten": (directory / f"{graph}.onnx").stat().st_size}


# ---------------------------------------------------------------- scenarios


@dataclass
class Ctx:
    data: Path
    scale: float
    peers: dict[str, str]
    repeat: int = 3


def aggregate(runs: list[dict]) -> dict:
    """Repeats of one scenario: the median run (by wall time) stands for it; peaks are the max of all runs."""
    failed = [r for r in runs if "error" in r]
    if failed:
        return {**failed[0], "runs": len(runs)}
    ordered = sorted(runs, key=lambda r: r["wall_s"])
    median = ordered[(len(ordered) - 1) // 2]
    return {**median, "repeats": len(runs), "wall_s_min": ordered[0]["wall_s"],
            "wall_s_all": [r["wall_s"] for r in runs], "ran_all": [r["ran"] for r in runs],
            "maxrss_kib": max(r["maxrss_kib"] for r in runs), "tree_peak_kib": max(r["tree_peak_kib"] for r in runs),
            "loadavg_1m_before_all": [r["loadavg_1m_before"] for r in runs]}


def repeated(n: int, label: str, once: Callable[[int], dict]) -> dict:
    """Run ``once(i)`` for i < n (each a full CLI build, set up by ``once``) and aggregate."""
    return aggregate([once(i) for i in range(n)]) | {"label": label}


def cold_builds(ctx: Ctx, label: str, spec: Path, cache: Path, out: Path, extra: Sequence[str] = ()) -> dict:
    def once(_: int) -> dict:
        fresh(cache, out)
        return cli_build(label, spec, cache, out, extra)

    return repeated(ctx.repeat, label, once)


def run_big(kind: str, ctx: Ctx) -> dict:
    """(a) or (b): cold, no-op, weight edit of one tensor; peers on the original model before and after it."""
    print(f"[{kind}] generating / checking data (scale {ctx.scale})", flush=True)
    manifest = generate.ensure(kind, ctx.data, ctx.scale)
    directory = ctx.data / kind
    spec, cache, out = directory / "bundle.yaml", directory / "cache", directory / "build" / f"{kind}.bundle"
    result: dict = {"manifest": manifest, "racy_wait_s": wait_out_racy_window(directory), "scenarios": {}}
    scen = result["scenarios"]
    scen["cold"] = cold_builds(ctx, "cold", spec, cache, out)
    scen["noop"] = repeated(ctx.repeat, "noop", lambda _: cli_build("noop", spec, cache, out))
    peer_work, model = ctx.data / "peers" / kind, directory / "original.onnx"
    before = peers.before_edit(model, peer_work, kind == "a", ctx.peers, ctx.repeat) if ctx.peers else {}
    mark_edited(directory, manifest)
    edit = edit_external if kind == "a" else edit_single_file
    edits: list[dict] = []

    def once(_: int) -> dict:
        edits.append(edit(directory, manifest))  # each edit gives the tensor new values again
        return cli_build("weight_edit", spec, cache, out)

    scen["weight_edit"] = repeated(ctx.repeat, "weight_edit", once)
    result["edit"] = edits[0]
    after = peers.after_edit(model, peer_work, kind == "a", ctx.peers, before, ctx.repeat) if ctx.peers else {}
    result["peers"] = {**before, **after}
    return result


def run_many(ctx: Ctx) -> dict:
    """(c): cold (default scheduler), no-op, cold with --workers 1 and 2, then structure edits of one graph."""
    print(f"[c] generating / checking data (scale {ctx.scale})", flush=True)
    manifest = generate.ensure("c", ctx.data, ctx.scale)
    directory = ctx.data / "c"
    spec = directory / "bundle.yaml"
    result: dict = {"manifest": manifest, "racy_wait_s": wait_out_racy_window(directory), "scenarios": {}}
    scen = result["scenarios"]
    cache, out = directory / "cache", directory / "build" / "c.bundle"
    scen["cold"] = cold_builds(ctx, "cold", spec, cache, out)
    scen["noop"] = repeated(ctx.repeat, "noop", lambda _: cli_build("noop", spec, cache, out))
    for n in (1, 2):
        wcache, wout = directory / f"cache-workers{n}", directory / "build" / f"c-workers{n}.bundle"
        scen[f"cold_workers{n}"] = cold_builds(ctx, f"cold_workers{n}", spec, wcache, wout, ["--workers", str(n)])
    mark_edited(directory, manifest)
    edits: list[dict] = []

    def once(i: int) -> dict:
        edits.append(edit_structure(directory, manifest, i))  # a different graph each time
        return cli_build("structure_edit", spec, cache, out)

    scen["structure_edit"] = repeated(ctx.repeat, "structure_edit", once)
    result["edits"] = edits
    return result


# ---------------------------------------------------------------- figures


@dataclass
class Figure:
    name: str
    value: float | None
    unit: str
    target: str = "-"
    ok: bool | None = None
    note: str = ""

    def row(self) -> list[str]:
        value = "n/a" if self.value is None else f"{self.value:.3g} {self.unit}".strip()
        ok = "-" if self.ok is None else ("yes" if self.ok else "NO")
        return [self.name, value, self.target, ok, self.note]


def _rec(bundles: dict, kind: str, scenario: str) -> dict | None:
    rec = bundles.get(kind, {}).get("scenarios", {}).get(scenario)
    return None if rec is None or "error" in rec else rec


def _wall(bundles: dict, kind: str, scenario: str) -> float | None:
    rec = _rec(bundles, kind, scenario)
    return None if rec is None else rec["wall_s"]


def _ratio(a: float | None, b: float | None, factor: float = 1.0) -> float | None:
    return None if a is None or b is None or b == 0 else factor * a / b


def _check(value: float | None, limit: float, at_most: bool) -> bool | None:
    if value is None:
        return None
    return value <= limit if at_most else value >= limit


def _s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g} s"


def _noop_figures(bundles: dict) -> list[Figure]:
    figs = []
    for kind in ("a", "b", "c"):
        rec = _rec(bundles, kind, "noop")
        if kind in bundles:
            v = None if rec is None else rec["wall_s"]
            note = "" if rec is None else f"in-process {_s(rec['in_process_s'])}, {rec['ran']} tasks ran"
            figs.append(Figure(f"no-op rebuild ({kind}), whole CLI process", v, "s", "<= 0.6 s",
                               _check(v, 0.6, True), note))
    return figs


def _edit_figures(bundles: dict) -> list[Figure]:
    figs = []
    for kind, scen, label, limit in (("a", "weight_edit", "weight edit, external data (a)", 3.0),
                                     ("b", "weight_edit", "weight edit, single file (b)", 30.0),
                                     ("c", "structure_edit", "one-graph edit (c)", 10.0)):
        if kind in bundles:
            edit, cold = _wall(bundles, kind, scen), _wall(bundles, kind, "cold")
            v = _ratio(edit, cold, 100.0)
            figs.append(Figure(f"{label}, % of cold", v, "%", f"<= {limit:g} %", _check(v, limit, True),
                               f"{_s(edit)} / cold {_s(cold)}"))
    return figs


def target_figures(bundles: dict) -> list[Figure]:
    figs = _noop_figures(bundles) + _edit_figures(bundles)
    if "c" in bundles:
        one, two = _wall(bundles, "c", "cold_workers1"), _wall(bundles, "c", "cold_workers2")
        v = _ratio(one, two)
        figs.append(Figure("cold (c) speedup, --workers 2 vs 1", v, "x", ">= 1.7 x", _check(v, 1.7, False),
                           f"{_s(one)} / {_s(two)}"))
    if "a" in bundles:
        cold, nbytes = _wall(bundles, "a", "cold"), bundles["a"]["manifest"]["weight_bytes"]
        v = _ratio(nbytes / 1e6, cold)
        figs.append(Figure("cold (a) weight throughput", v, "MB/s", ">= 300 MB/s", _check(v, 300, False),
                           f"{nbytes / 1e6:.0f} MB / {_s(cold)}"))
        rec = _rec(bundles, "a", "cold")
        v = None if rec is None else rec["tree_peak_kib"] / 1024
        figs.append(Figure("cold (a) peak RSS", v, "MiB", "<= 2048 MiB", _check(v, 2048, True)))
    return figs


def scenario_figures(bundles: dict) -> list[Figure]:
    figs = []
    for kind, result in bundles.items():
        for scen, rec in result["scenarios"].items():
            if "error" not in rec:
                figs.append(Figure(f"({kind}) {scen.replace('_', ' ')} wall", rec["wall_s"], "s",
                                   note=f"peak RSS {rec['tree_peak_kib'] / 1024:.0f} MiB"))
    return figs


PEER_RUNS = (("ort_cold", "ORT optimize, cold"), ("ort_after_edit", "ORT optimize, after weight edit"),
             ("ov_cold", "OpenVINO compile, cold"), ("ov_cache_fill", "OpenVINO compile, CACHE_DIR first"),
             ("ov_warm", "OpenVINO compile, CACHE_DIR warm"),
             ("ov_after_edit_cached", "OpenVINO compile, CACHE_DIR, after weight edit"))


def peer_figures(bundles: dict) -> list[Figure]:
    figs = []
    for kind in ("a", "b"):
        runs = bundles.get(kind, {}).get("peers", {})
        for key, label in PEER_RUNS:
            rec = runs.get(key)
            if rec and "error" not in rec:
                cold = runs.get("ort_cold" if key.startswith("ort") else "ov_cold", {}).get("wall_s")
                share = "" if key.endswith("cold") else f", {_ratio(rec['wall_s'], cold, 100.0) or 0:.0f} % of cold"
                figs.append(Figure(f"peer ({kind}) {label}", rec["wall_s"], "s",
                                   note=f"in-process {_s(rec['in_process_s'])}{share}, peak RSS "
                                        f"{rec['tree_peak_kib'] / 1024:.0f} MiB{_peer_note(rec)}"))
    return figs


def _peer_note(rec: dict) -> str:
    notes = []
    if rec.get("cache_hit") is not None:
        notes.append("cache hit" if rec["cache_hit"] else "cache miss")
    if rec.get("output_current") is False:
        notes.append("STALE output (old weights)")
    elif rec.get("output_current") is True:
        notes.append("output current")
    if rec.get("output_changed") is False:
        notes.append("output unchanged by edit")
    return f"; {', '.join(notes)}" if notes else ""


def render(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def scenario_table(bundles: dict) -> str:
    rows = []
    for kind, result in bundles.items():
        for scen, rec in result["scenarios"].items():
            ran = ", ".join(f"{s} {c['ran']}" for s, c in rec.get("stages", {}).items() if c["ran"]) or "-"
            rows.append([f"({kind}) {scen}", f"{rec['wall_s']:.3f}",
                         "n/a" if rec.get("in_process_s") is None else f"{rec['in_process_s']:.3f}",
                         f"{rec['maxrss_kib'] / 1024:.0f}", f"{rec['tree_peak_kib'] / 1024:.0f}",
                         "FAILED" if "error" in rec else f"{rec['ran']}/{rec['ran'] + rec['cached']}", ran])
    return render(rows, ["scenario", "wall s", "in-process s", "maxrss MiB", "tree peak MiB", "ran/total",
                         "ran per stage"])


# ---------------------------------------------------------------- environment and output


def machine_info() -> dict:
    versions = {}
    for name in VERSIONS_OF:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    cpu = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")), platform.processor())
    mem = next((line.split()[1] for line in _read("/proc/meminfo").splitlines() if line.startswith("MemTotal")), None)
    return {"cpu_count": os.cpu_count(), "cpu_model": cpu, "mem_total_kib": int(mem) if mem else None,
            "python": sys.version.split()[0], "platform": platform.platform(), "packages": versions,
            "git_head": _git_head(), "git_dirty_product_files": _git_dirty(),
            "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE")}


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _git(*args: str) -> str:
    proc = subprocess.run(["git", "-C", str(BENCH_DIR), *args], capture_output=True, text=True, check=False)
    return proc.stdout.strip()


def _git_head() -> str | None:
    return _git("rev-parse", "HEAD") or None


def _git_dirty() -> list[str]:
    """Uncommitted product files at the start: the editable install measures the working tree, not HEAD."""
    return _git("status", "--porcelain", "--", "../bundle_pipeline").splitlines()


def cli_workers_help() -> str:
    """The CLI's own words for --scheduler/--workers (the LocalCluster contract may not be wired in yet)."""
    proc = subprocess.run([CLI, "run", "--help"], capture_output=True, text=True, check=False,
                          env={**os.environ, "COLUMNS": "200", "TERM": "dumb"})
    lines = [line.strip(" │") for line in proc.stdout.splitlines()]
    return "\n".join(line for line in lines if "--workers" in line or "--scheduler" in line)


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    os.replace(tmp, path)


NOTES = [
    "cold = fresh --cache dir and no previous bundle (the previous ones renamed aside, deleted when the run ends); "
    "the inputs are in the OS page cache (just generated).",
    "Before each cold build the benchmark waits until the inputs are > 2 s old, so the stat state records them "
    "(files younger than that are hashed but not recorded, by design).",
    "Each CLI scenario runs --repeat times (cold: fresh cache each time; edits: a new edit each time, (c) on a "
    "different graph each time); the figures use the median run, peaks the max over runs. Peers too, except "
    "OpenVINO's first compile after the edit (once: a second run would hit what the first wrote).",
    "no-op / edits reuse the cold build's cache; (a)(b)(c) cold, no-op and edit builds use the CLI's default "
    "scheduler; workers runs pass only --workers N (contract: a distributed.LocalCluster of N worker processes).",
    "The CLI is run as the console script beside the interpreter (cli in the JSON), not through a pyenv shim.",
    "The machine is shared: loadavg_1m_before of each run says how busy it was.",
    "maxrss = ru_maxrss from wait4 (largest single process); tree peak = sampled sum over the process tree.",
    "Peers compile original.onnx: the network the bundle was split from, every weight an initializer; (a) points "
    "at the bundle's own external files, so the weight edit reaches both with one rewrite.",
]

SCENARIOS: dict[str, Callable[[Ctx], dict]] = {"a": lambda c: run_big("a", c), "b": lambda c: run_big("b", c),
                                               "c": run_many}


def run(scale: float = 1.0, only: Sequence[str] = generate.KINDS, skip_peers: bool = False,
        data: Path = generate.DEFAULT_DATA, results: Path = DEFAULT_RESULTS, repeat: int = 3) -> dict:
    """Run the chosen bundles' scenarios, print the tables, write the JSON; return the payload."""
    started = datetime.now(UTC).isoformat(timespec="seconds")
    ctx = Ctx(data, scale, {} if skip_peers else peers.available(), repeat)
    bundles = {kind: SCENARIOS[kind](ctx) for kind in only}
    targets, per_scenario, peer = target_figures(bundles), scenario_figures(bundles), peer_figures(bundles)
    payload = {"benchmark": "incremental", "started": started, "scale": scale, "only": list(only), "repeat": repeat,
               "command": [sys.executable, *sys.argv], "machine": machine_info(),
               "cli": CLI, "cli_workers_help": cli_workers_help(),
               "peers": ctx.peers, "notes": NOTES, "bundles": bundles,
               "figures": [f.__dict__ for f in targets + per_scenario + peer]}
    write_json(results, payload)
    print()
    print(render([f.row() for f in targets + peer], ["figure", "measured", "target", "ok?", "note"]))
    print()
    print(scenario_table(bundles))
    print(f"\nwrote {results}")
    return payload


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0, help="weight bytes of (a)/(b) = scale x 1 GiB")
    parser.add_argument("--only", default="a,b,c", help="comma-separated subset of a,b,c")
    parser.add_argument("--skip-peers", action="store_true", help="do not run ONNX Runtime / OpenVINO")
    parser.add_argument("--data", type=Path, default=generate.DEFAULT_DATA, help="generated bundles and caches")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="JSON output")
    parser.add_argument("--repeat", type=int, default=3, help="runs per CLI scenario; figures use the median")
    args = parser.parse_args(argv)
    only = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = sorted(set(only) - set(generate.KINDS))
    if unknown:
        parser.error(f"unknown bundle {unknown[0]!r}; use a subset of a,b,c")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    try:
        return run(args.scale, only, args.skip_peers, args.data, args.results, args.repeat)
    finally:  # after every measurement: deleting is what slows the next cold build (``fresh``)
        empty_trash()


if __name__ == "__main__":
    main()
