"""bench/latency.py runs end to end on the generated models and reports every runtime (no timing asserted)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_latency_bench_reports_cpu_npu_and_ort(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "latency.py"), "--repeat", "1", "--no-real", "--json",
                           "--out", str(tmp_path / "latency.json")],
                          capture_output=True, text=True, check=True, cwd=tmp_path)
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    assert json.loads((tmp_path / "latency.json").read_text())["rows"] == rows
    assert [r["model"] for r in rows] == ["mlp", "cnn", "attention"]
    for r in rows:
        assert r["cpu_ms"] > 0 and r["npu_ms"] > 0 and r["ort_ms"] > 0
        assert r["cpu_max_abs_err"] < 1e-4 and r["npu_max_abs_err"] < 1e-4
