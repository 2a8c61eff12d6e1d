"""dvc.yaml: the project's reproducible pipeline. Every stage's cmd runs without DVC (heavy benchmarks with their
smoke flags, writing into a temp dir); deps exist; outs are where the commands write them."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def argv(stage: str, *smoke: str) -> list[str]:
    """The stage's cmd as an argv for this interpreter (python -> sys.executable), plus smoke flags."""
    words = shlex.split(STAGES[stage]["cmd"])
    if words[0] == "python":
        words[0] = sys.executable
    elif words[0] == "bundle-pipeline" and shutil.which("bundle-pipeline") is None:
        words[:1] = [sys.executable, "-m", "bundle_pipeline.cli"]
    return [*words, *smoke]


def outs(stage: str) -> list[str]:
    return [next(iter(o)) if isinstance(o, dict) else o for o in STAGES[stage].get("outs", [])]


def test_stages_declare_existing_deps_and_the_published_results():
    assert (ROOT / ".dvc" / "config").is_file()  # `dvc repro` needs the repository initialised for DVC
    assert set(STAGES) == {"example", "incremental", "speed", "memory", "ort-executor", "conformance-cpu",
                           "conformance-npu"}
    for name, stage in STAGES.items():
        for dep in stage["deps"]:
            assert (ROOT / dep).exists(), (name, dep)
        for out in stage["outs"]:  # results live in git, so DVC must not move them into its cache
            assert isinstance(out, dict) and next(iter(out.values())) == {"cache": False}, (name, out)
        words = shlex.split(stage["cmd"])
        if words[0] == "python":
            assert words[1] in stage["deps"] and (ROOT / words[1]).is_file()
    assert outs("example") == ["examples/demo/build/demo.bundle"]
    benches = ("incremental", "speed", "memory", "ort-executor", "conformance-cpu", "conformance-npu")
    assert {o for s in benches for o in outs(s)} == {
        "bench/results/incremental.json", "bench/results/speed.json", "bench/results/memory.json",
        "bench/results/ort_executor.json", "bench/results/conformance_cpu.json", "bench/results/conformance_npu.json"}
    sys.path.insert(0, str(ROOT / "bench"))
    import incremental
    import memory
    import speed

    declared = {name: ROOT / outs(name)[0] for name in ("incremental", "speed", "memory")}
    assert declared == {"incremental": incremental.DEFAULT_RESULTS, "speed": speed.DEFAULT_RESULTS,
                        "memory": memory.DEFAULT_RESULTS}  # the scripts' defaults
    spec = yaml.safe_load((ROOT / "examples" / "demo" / "bundle.yaml").read_text())
    assert (ROOT / "examples" / "demo" / spec["output"]).resolve() == (ROOT / outs("example")[0]).resolve()


def test_example_stage_runs_for_real(tmp_path):
    shutil.copytree(ROOT / "examples" / "demo", tmp_path / "examples" / "demo",
                    ignore=shutil.ignore_patterns("build", ".bundle-cache"))
    proc = subprocess.run(argv("example"), cwd=tmp_path, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert Path(report["bundle"]) == (tmp_path / outs("example")[0]).resolve()
    assert (tmp_path / outs("example")[0] / "zarr.json").is_file()


def test_memory_stage_smoke(tmp_path):
    out = tmp_path / "memory.json"
    proc = subprocess.run(argv("memory", "--only", "mlp", "--out", str(out)), cwd=ROOT, capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert {r["model"] for r in rows} == {"mlp"} and {r["reuse"] for r in rows} == {True, False}


@pytest.mark.parametrize("target", ["cpu", "npu"])
def test_conformance_stage_smoke(tmp_path, target):
    out = tmp_path / "conformance.json"
    proc = subprocess.run(argv(f"conformance-{target}", "-k", "^test_relu$", "--jobs", "1", "--out", str(out)),
                          cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {
        "target": target, "executor": "auto", "passed": 1, "failed": 0, "excluded": 0, "total": 1,
        "passed_by_executor": {"onnxruntime" if target == "cpu" else "reference": 1}}


@pytest.mark.slow
def test_ort_executor_stage_smoke(tmp_path):
    """The generated transformer only (no download): ORT runs its infer graphs, a refresh matches ORT."""
    out = tmp_path / "ort_executor.json"
    proc = subprocess.run(argv("ort-executor", "--only", "transformer", "--repeat", "2", "--out", str(out)), cwd=ROOT,
                          capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["model"] == "transformer" and row["executor"] == "onnxruntime"
    assert row["err_after_refresh"] < 1e-4 and row["err_after_refresh_other_graphs"] < 1e-4


@pytest.mark.slow
def test_incremental_stage_smoke(tmp_path):
    results = tmp_path / "incremental.json"
    proc = subprocess.run(argv("incremental", "--scale", "0.002", "--skip-peers", "--only", "c", "--repeat", "1",
                               "--data", str(tmp_path / "data"), "--results", str(results)),
                          cwd=ROOT, capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads(results.read_text())
    assert payload["only"] == ["c"] and payload["figures"]
    assert all(rec["returncode"] == 0 for rec in payload["bundles"]["c"]["scenarios"].values())


@pytest.mark.slow
def test_speed_stage_smoke(tmp_path):
    results = tmp_path / "speed.json"
    proc = subprocess.run(argv("speed", "--quick", "--only", "graph-edit", "--graphs", "1", "--skip-peers",
                               "--data", str(tmp_path / "data"), "--results", str(results)),
                          cwd=ROOT, capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads(results.read_text())
    assert payload["only"] == ["graph-edit"] and [r["figure"] for r in payload["rows"]] == ["5 graph edit"]
    assert payload["figures"]["graph-edit"]["edit"]["returncode"] == 0
