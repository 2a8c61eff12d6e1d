"""CLI: run --json schema, exec with updates, inspect (--json) on the shipped example."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from oracle import ort_run
from typer.testing import CliRunner

from bundle_pipeline.cli import app

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo"


def demo_copy(tmp_path: Path) -> Path:
    dest = tmp_path / "demo"
    shutil.copytree(DEMO, dest, ignore=shutil.ignore_patterns("build", ".bundle-cache"))
    return dest


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bundle_pipeline.cli", *args], capture_output=True, text=True,
                          check=False)


def test_run_json_then_noop(tmp_path):
    demo = demo_copy(tmp_path)
    first = run_cli("run", str(demo / "bundle.yaml"), "--json")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout.strip().splitlines()[-1])
    assert {"bundle", "digest", "seconds", "tasks"} <= set(report)
    stages = {t["stage"] for t in report["tasks"]}
    assert stages == {"parse", "dedupe", "formats", "tiling", "codegen", "pack"}
    for t in report["tasks"]:
        assert set(t) == {"id", "stage", "graph", "status", "seconds"} and t["status"] == "ran"
        assert (t["graph"] is None) == (t["stage"] in ("dedupe", "pack") or t["id"].endswith(("formats.assign",
                                                                                               "formats.weights")))
    second = json.loads(run_cli("run", str(demo / "bundle.yaml"), "--json").stdout.strip().splitlines()[-1])
    assert {t["status"] for t in second["tasks"]} == {"cached"} and second["digest"] == report["digest"]


def test_exec_and_update_match_ort(tmp_path):
    demo = demo_copy(tmp_path)
    runner = CliRunner()
    assert runner.invoke(app, ["run", str(demo / "bundle.yaml")]).exit_code == 0
    bundle = demo / "build" / "demo.bundle"
    out = tmp_path / "out"
    result = runner.invoke(app, ["exec", str(bundle), "infer", "-i", f"x={demo / 'x.npy'}", "-o", str(out)])
    assert result.exit_code == 0, result.output
    x = np.load(demo / "x.npy")
    expected = ort_run(demo / "infer.onnx", {"x": x})
    np.testing.assert_allclose(np.load(out / "y.npy"), expected["y"], rtol=1e-4, atol=1e-5)
    ups = sorted((demo / "new_weights").glob("*.npy"))
    args = [a for p in ups for a in ("-u", f"{p.name[:-4]}={p}")]
    result = runner.invoke(app, ["exec", str(bundle), "infer", "-i", f"x={demo / 'x.npy'}", *args, "-o", str(out),
                                 "--force"])  # replaces the first run's y.npy
    assert result.exit_code == 0, result.output
    new = {p.name[: -len(".new.npy")]: np.load(p) for p in ups}
    expected = ort_run(demo / "infer.onnx", {"x": x}, weights=new)
    np.testing.assert_allclose(np.load(out / "y.npy"), expected["y"], rtol=1e-4, atol=1e-5)


def test_inspect_json_schema(tmp_path):
    demo = demo_copy(tmp_path)
    runner = CliRunner()
    runner.invoke(app, ["run", str(demo / "bundle.yaml"), "--out", str(tmp_path / "demo.zip")])
    result = runner.invoke(app, ["inspect", str(tmp_path / "demo.zip"), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert {"target", "graphs", "variables"} <= set(info) and info["target"] == "cpu"
    assert {g["name"] for g in info["graphs"]} == {"init", "update", "infer"}
    for g in info["graphs"]:
        assert {"name", "role", "transdata", "arena_bytes"} <= set(g) and g["transdata"] == 0
    for v in info["variables"]:
        assert {"name", "shape", "dtype", "format", "nbytes", "readers", "writers"} <= set(v)
        assert v["readers"] == ["infer"] and v["writers"] == ["init", "update"]
    human = runner.invoke(app, ["inspect", str(tmp_path / "demo.zip")])
    assert "fc1.weight" in human.output and "arena" in human.output


def test_exec_disable_reused_memory_grows_the_arena(tmp_path):
    demo = demo_copy(tmp_path)
    runner = CliRunner()
    arenas = {}
    for flag in ("0", "1"):
        text = (demo / "bundle.yaml").read_text().replace('exec_disable_reused_memory: "0"',
                                                          f'exec_disable_reused_memory: "{flag}"')
        (demo / "bundle.yaml").write_text(text)
        out = tmp_path / f"b{flag}.bundle"
        assert runner.invoke(app, ["run", str(demo / "bundle.yaml"), "--out", str(out)]).exit_code == 0
        info = json.loads(runner.invoke(app, ["inspect", str(out), "--json"]).stdout)
        arenas[flag] = next(g["arena_bytes"] for g in info["graphs"] if g["name"] == "infer")
    assert arenas["1"] > arenas["0"]


def test_inspect_tables_show_dedup_savings(tmp_path):
    """Three infer graphs sharing a trunk and holding identical scale constants: inspect reports the bytes saved."""
    import models

    built = models.shared(tmp_path / "shared")
    runner = CliRunner()
    assert runner.invoke(app, ["run", str(built.spec), "--cache", str(tmp_path / "cache")]).exit_code == 0
    out = str(built.directory / "build" / "shared.bundle")
    info = json.loads(runner.invoke(app, ["inspect", out, "--json"]).stdout)
    assert info["constants"]["references"] > info["constants"]["count"]
    assert info["constants"]["bytes_saved"] >= 2 * 16 * 4  # a.scale/b.scale/c.scale: float32[16] stored once
    human = runner.invoke(app, ["inspect", out], env={"COLUMNS": "200"}).output
    for title in ("graphs", "variables", "saved by deduplication", "trunk.weight"):
        assert title in human
