"""`run --profile FILE`: a Chrome trace with one complete span per task (stage, graph, cache hit/miss, worker),
for the threaded scheduler and a LocalCluster; cached tasks are hits."""

from __future__ import annotations

import json
import shutil
from itertools import pairwise
from pathlib import Path

import onnx
from typer.testing import CliRunner

from bundle_pipeline.cli import app

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo"
SPAN_KEYS = {"name", "cat", "ph", "ts", "dur", "pid", "tid", "args"}
ARG_KEYS = {"bundle", "stage", "step", "graph", "cache", "worker", "key"}


def demo_copy(tmp_path: Path) -> Path:
    dest = tmp_path / "demo"
    shutil.copytree(DEMO, dest, ignore=shutil.ignore_patterns("build", ".bundle-cache"))
    return dest


def profiled_run(spec: Path, trace: Path, *extra: str) -> tuple[dict, dict]:
    result = CliRunner().invoke(app, ["run", str(spec), "--json", "--profile", str(trace), *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1]), json.loads(trace.read_text())


def check_schema(trace: dict, report: dict) -> dict[str, dict]:
    """The Trace Event Format's JSON object form; returns the task spans by task id."""
    assert set(trace) >= {"traceEvents", "displayTimeUnit"} and isinstance(trace["traceEvents"], list)
    spans, names = {}, {}
    for e in trace["traceEvents"]:
        assert e["ph"] in ("X", "M") and isinstance(e["pid"], int) and isinstance(e["tid"], int)
        if e["ph"] == "M":
            assert e["name"] in ("process_name", "thread_name") and isinstance(e["args"]["name"], str)
            names[e["name"], e["pid"], e["tid"] if e["name"] == "thread_name" else 0] = e["args"]["name"]
            continue
        assert set(e) == SPAN_KEYS and isinstance(e["ts"], float | int) and isinstance(e["dur"], float | int)
        assert e["ts"] >= 0 and e["dur"] >= 0
        if e["name"] == "plan":
            continue
        assert set(e["args"]) >= ARG_KEYS and e["cat"] == e["args"]["stage"] and e["args"]["cache"] in ("hit", "miss")
        assert e["name"] not in spans, f"two spans for {e['name']}"
        spans[e["name"]] = e
    for e in spans.values():  # every row is named
        assert ("process_name", e["pid"], 0) in names and ("thread_name", e["pid"], e["tid"]) in names
    tasks = {t["id"]: t for t in report["tasks"]}
    assert set(spans) == set(tasks)  # one span per task, nothing else
    for tid, t in tasks.items():
        assert spans[tid]["args"]["stage"] == t["stage"] and spans[tid]["args"]["graph"] == t["graph"]
        assert spans[tid]["args"]["cache"] == ("miss" if t["status"] == "ran" else "hit")
    return spans


def assert_threads_run_one_task_at_a_time(spans: dict[str, dict]) -> None:
    rows: dict[tuple[int, int], list[tuple[float, float]]] = {}
    for e in spans.values():
        if e["args"]["cache"] == "miss":
            rows.setdefault((e["pid"], e["tid"]), []).append((e["ts"], e["ts"] + e["dur"]))
    for row in rows.values():
        row.sort()
        assert all(a[1] <= b[0] + 1 for a, b in pairwise(row)), row  # 1 us of rounding


def test_threads_profile_misses_then_hits(tmp_path):
    spec = demo_copy(tmp_path) / "bundle.yaml"
    report, trace = profiled_run(spec, tmp_path / "cold.json", "--scheduler", "threads")
    spans = check_schema(trace, report)
    assert {e["args"]["cache"] for e in spans.values()} == {"miss"}
    assert all(e["dur"] > 0 for e in spans.values())
    assert_threads_run_one_task_at_a_time(spans)
    assert spans["demo/pack"]["ts"] >= max(spans[f"demo/codegen:{g}"]["ts"] + spans[f"demo/codegen:{g}"]["dur"]
                                           for g in ("init", "update", "infer")) - 1  # pack waits for codegen
    total = report["seconds"] + report["setup_seconds"]  # planning, loading the scheduler, running tasks
    assert max(e["ts"] + e["dur"] for e in spans.values()) <= total * 1e6 + 1e3

    report, trace = profiled_run(spec, tmp_path / "noop.json")  # nothing runs: every task a planner hit
    spans = check_schema(trace, report)
    assert {e["args"]["cache"] for e in spans.values()} == {"hit"}
    assert {e["args"]["resolved_by"] for e in spans.values()} == {"planner"} and all(
        e["dur"] == 0 and e["args"]["recorded_seconds"] > 0 for e in spans.values())

    model = onnx.load(spec.parent / "infer.onnx")  # same graph, new bytes: parse re-runs, its output does not change
    model.doc_string = "re-exported"
    onnx.save(model, spec.parent / "infer.onnx")
    report, trace = profiled_run(spec, tmp_path / "cutoff.json")
    spans = check_schema(trace, report)
    assert {t for t, e in spans.items() if e["args"]["cache"] == "miss"} == {"demo/parse:infer"}
    cutoff = {t for t, e in spans.items() if e["args"].get("resolved_by") == "worker (early cutoff)"}
    assert "demo/parse.weights:infer" in cutoff and all(spans[t]["dur"] > 0 for t in cutoff)


def test_local_cluster_profile_names_the_workers(tmp_path):
    spec = demo_copy(tmp_path) / "bundle.yaml"
    report, trace = profiled_run(spec, tmp_path / "cluster.json", "--workers", "2")
    spans = check_schema(trace, report)
    assert {e["args"]["cache"] for e in spans.values()} == {"miss"}
    workers = {e["args"]["worker"] for e in spans.values()}
    assert workers and all(w.startswith("tcp://") for w in workers)
    processes = {e["pid"]: e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "process_name"}
    assert {processes[e["pid"]] for e in spans.values()} == {f"worker {w}" for w in workers}
    planner = next(e for e in trace["traceEvents"] if e["name"] == "plan")
    assert planner["pid"] not in {e["pid"] for e in spans.values()}
    assert_threads_run_one_task_at_a_time(spans)


def test_a_cache_repair_round_is_a_second_plan_and_each_task_keeps_one_span(tmp_path):
    spec = demo_copy(tmp_path) / "bundle.yaml"
    assert CliRunner().invoke(app, ["run", str(spec)]).exit_code == 0
    for entry in (spec.parent / ".bundle-cache" / "objects").rglob("*"):  # tensor data: packs, packed chunks
        if entry.is_file() and not entry.read_bytes().startswith(b"{"):
            entry.unlink()
    shutil.rmtree(spec.parent / ".bundle-cache" / "tensors", ignore_errors=True)  # pack must re-run: tensors gone
    shutil.rmtree(spec.parent / "build")
    report, trace = profiled_run(spec, tmp_path / "repair.json")
    assert report["cache_repairs"]
    spans = check_schema(trace, report)
    plans = [e for e in trace["traceEvents"] if e["name"] == "plan"]
    # pack finds its chunks gone: formats.weights (which built them) runs again, finds the parsed weights gone:
    # parse.weights runs again; a plan a round
    assert len(plans) == 1 + len(report["cache_repairs"]) == 3
    assert all(later["ts"] >= earlier["ts"] + earlier["dur"] for earlier, later in pairwise(plans))
    assert spans["demo/pack"]["args"]["cache"] == "miss" and "status" not in spans["demo/pack"]["args"]
    assert spans["demo/pack"]["ts"] >= plans[-1]["ts"]  # its last execution, after the repairs
