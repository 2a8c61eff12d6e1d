"""Smoke test of bench/: tiny generators and the incremental benchmark end to end on (c); never asserts time."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import generate  # noqa: E402
import incremental  # noqa: E402

TINY = 0.002


def _initializer(path: Path, name: str) -> np.ndarray:
    model = onnx.load_model(str(path))
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


def test_generators_are_deterministic_and_shaped_as_specified(tmp_path):
    a = generate.generate("a", tmp_path / "one", TINY)
    again = generate.generate("a", tmp_path / "two", TINY)
    b = generate.generate("b", tmp_path / "one", TINY)
    assert a["weight_bytes"] == b["weight_bytes"] == again["weight_bytes"] > 0
    for g in ("init", "update", "infer"):  # every graph of (a) holds weights, one external file per tensor
        files = generate.external_files(tmp_path / "one" / "a" / f"{g}.onnx")
        assert files and len(set(files.values())) == len(files)
        assert not generate.external_files(tmp_path / "one" / "b" / f"{g}.onnx")
    edit = a["edit"]["tensor"]
    assert (tmp_path / "one" / "a" / a["edit"]["file"]).read_bytes() == (tmp_path / "two" / "a" / a["edit"]["file"]
                                                                          ).read_bytes()
    np.testing.assert_array_equal(_initializer(tmp_path / "one" / "a" / "infer.onnx", edit),
                                  _initializer(tmp_path / "one" / "b" / "infer.onnx", edit))
    c = generate.generate("c", tmp_path / "one", TINY)
    assert len(set(c["widths"])) == generate.C_GRAPHS


def test_weight_edits_change_values(tmp_path):
    for kind, edit in (("a", incremental.edit_external), ("b", incremental.edit_single_file)):
        manifest = generate.generate(kind, tmp_path, TINY)
        name, directory = manifest["edit"]["tensor"], tmp_path / kind
        before = _initializer(directory / "infer.onnx", name)
        edit(directory, manifest)
        after = _initializer(directory / "infer.onnx", name)
        assert after.shape == before.shape and not np.array_equal(after, before)
        np.testing.assert_array_equal(after, _initializer(directory / "original.onnx", name))


def test_repeats_report_the_median_run_and_the_largest_peak():
    runs = [{"wall_s": w, "ran": 0, "maxrss_kib": m, "tree_peak_kib": m, "loadavg_1m_before": 1.0, "tag": t}
            for w, m, t in ((3.0, 10, "slow"), (1.0, 30, "fast"), (2.0, 20, "mid"))]
    agg = incremental.aggregate(runs)
    assert agg["tag"] == "mid" and agg["wall_s"] == 2.0 and agg["wall_s_min"] == 1.0 and agg["repeats"] == 3
    assert agg["maxrss_kib"] == agg["tree_peak_kib"] == 30 and agg["wall_s_all"] == [3.0, 1.0, 2.0]
    assert "error" in incremental.aggregate([*runs, {"wall_s": 0.1, "error": "boom"}])
    assert len({generate.c_edit_graph(i) for i in range(generate.C_GRAPHS)}) == generate.C_GRAPHS


@pytest.mark.slow
def test_incremental_benchmark_on_c(tmp_path):
    results = tmp_path / "results" / "incremental.json"
    incremental.main(["--scale", str(TINY), "--skip-peers", "--only", "c", "--data", str(tmp_path / "data"),
                      "--results", str(results), "--repeat", "1"])
    payload = json.loads(results.read_text())
    assert {"benchmark", "scale", "machine", "bundles", "figures", "notes"} <= set(payload)
    assert {"cpu_count", "python", "packages"} <= set(payload["machine"])
    scenarios = payload["bundles"]["c"]["scenarios"]
    assert set(scenarios) == {"cold", "noop", "cold_workers1", "cold_workers2", "structure_edit"}
    for name, rec in scenarios.items():
        assert rec["returncode"] == 0 and "error" not in rec, (name, rec.get("error"))
        assert rec["maxrss_kib"] > 0 and rec["stages"] and rec["repeats"] == 1 and len(rec["wall_s_all"]) == 1
    total = scenarios["cold"]["ran"] + scenarios["cold"]["cached"]
    assert scenarios["cold"]["ran_all"] == [total]
    assert scenarios["noop"]["ran_all"] == [0] and scenarios["noop"]["cached"] == total
    edited = [t for t in scenarios["structure_edit"]["ran_tasks"] if t.startswith("c/parse:")]
    assert edited == [f"c/parse:{generate.c_edit_graph(0)}"]
    names = {f["name"] for f in payload["figures"]}
    assert "cold (c) speedup, --workers 2 vs 1" in names and "one-graph edit (c), % of cold" in names


def test_fresh_puts_caches_aside_and_the_run_deletes_them_at_its_end(tmp_path):
    """Deleting thousands of files right before a cold build slows it (ext4 without a journal skips inodes freed
    lately): fresh only renames; empty_trash deletes once the measurements are over."""
    cache, out = tmp_path / "caches" / "x", tmp_path / "bundles" / "x.bundle"
    (cache / "objects").mkdir(parents=True)
    (cache / "objects" / "o").write_bytes(b"1")
    out.parent.mkdir()
    out.write_bytes(b"zip")
    incremental.fresh(cache, out, tmp_path / "never-made")
    assert not cache.exists() and not out.exists()
    aside = sorted(p.name.split(".")[0] for t in (cache.parent, out.parent) for p in (t / incremental.TRASH).iterdir())
    assert aside == ["x", "x"]
    incremental.empty_trash()
    assert not (cache.parent / incremental.TRASH).exists() and not (out.parent / incremental.TRASH).exists()
