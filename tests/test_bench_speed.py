"""bench/speed.py: its generated inputs are deterministic and distinct where they must be, its timeout kills what it
started, and a --quick run builds every figure's bundles and reports every figure (never asserts a time)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest
from conftest import RAPIDOCR_CLS, ModelUnavailable, _in_ci, fetch_wheel_model, real_models_cache_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import measure  # noqa: E402
import speedgen  # noqa: E402


def _kernel_shapes(path: Path) -> set[tuple]:
    """(op, input shapes) of every node of a generated graph: what a kernel signature is made of."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    graph = model.graph
    shapes = {v.name: tuple(d.dim_value for d in v.type.tensor_type.shape.dim)
              for v in [*graph.input, *graph.value_info, *graph.output]}
    shapes.update({t.name: tuple(t.dims) for t in graph.initializer})
    return {(n.op_type, *(shapes[i] for i in n.input)) for n in graph.node}


def test_generated_graphs_are_deterministic_and_share_no_kernel(tmp_path):
    one = speedgen.graphs_bundle(3, tmp_path / "one")
    speedgen.graphs_bundle(3, tmp_path / "two")
    assert one["tensors"] == 3 * 2 * speedgen.LAYERS
    directory, again = Path(one["spec"]).parent, tmp_path / "two" / "graphs-3"
    for name in ("init", "update", "g000", "g001", "g002"):
        assert (directory / f"{name}.onnx").read_bytes() == (again / f"{name}.onnx").read_bytes()
    kernels = [_kernel_shapes(directory / f"g{k:03d}.onnx") for k in range(3)]
    for k, mine in enumerate(kernels):
        assert len(onnx.load(str(directory / f"g{k:03d}.onnx")).graph.node) == 3 * speedgen.LAYERS
        assert len(mine) == 3 * speedgen.LAYERS  # no two nodes of one graph have one signature
        assert not any(mine & other for j, other in enumerate(kernels) if j != k)
    stamps = {p: p.stat().st_mtime_ns for p in directory.iterdir()}
    assert speedgen.graphs_bundle(3, tmp_path / "one") == one  # re-used, not regenerated
    assert {p: p.stat().st_mtime_ns for p in directory.iterdir()} == stamps


def test_graph_edit_is_undone_byte_for_byte(tmp_path):
    manifest = speedgen.graphs_bundle(2, tmp_path)
    directory = Path(manifest["spec"]).parent
    before = {p.name: p.read_bytes() for p in directory.glob("*.onnx")}
    name = speedgen.edit_graph(directory, manifest, 0)
    assert (directory / f"{name}.onnx").read_bytes() != before[f"{name}.onnx"]
    assert speedgen.generate.read_manifest(directory)["edited"]
    speedgen.restore_graphs(directory, manifest, [name])
    assert {p.name: p.read_bytes() for p in directory.glob("*.onnx")} == before
    assert speedgen.graphs_bundle(2, tmp_path) == manifest


def test_tensor_bundle_holds_distinct_tensors(tmp_path):
    manifest = speedgen.tensors_bundle(120, tmp_path)
    infer = onnx.load(str(Path(manifest["spec"]).parent / "infer.onnx"))
    assert len(infer.graph.initializer) == 120 == len({t.raw_data for t in infer.graph.initializer})
    assert manifest["variables"] == 60 and manifest["sum_nodes"] == 3


SMAPS = """\
55d0c2a4e000-55d0c2a6f000 rw-p 00000000 00:00 0                          [heap]
Size:                132 kB
FilePmdMapped:         0 kB
7f3711400000-7f3727c3c000 r--s 00000000 fe:00 5447686                    /data/two  spaces.data
Size:             368880 kB
Rss:              368880 kB
FilePmdMapped:    309248 kB
VmFlags: rd mr me ms
7f3727c3c000-7f3727f3c000 rw-p 00000000 00:00 0
Size:               3072 kB
FilePmdMapped:         0 kB
7f3727f3c000-7f3727f3d000 r--p 00000000 fe:00 5447687                    /data/gone.data (deleted)
Size:                  4 kB
"""


def test_smaps_entry_is_the_mapping_at_the_address_only():
    """Found by address: a path with spaces, [heap], an anonymous mapping after it and VmFlags do not confuse it."""
    assert speedgen._smaps_entry(SMAPS, 0x7f3711400000) == {"Size": 368880, "Rss": 368880, "FilePmdMapped": 309248}
    assert speedgen._smaps_entry(SMAPS, 0x7f3727f3c000) == {"Size": 4}
    assert speedgen._smaps_entry(SMAPS, 0x7f0000000000) is None


def test_huge_mapped_share_reads_this_process_mapping(tmp_path):
    path = tmp_path / "two  spaces.data"
    path.write_bytes(os.urandom(3 << 20))
    share = speedgen.huge_mapped_share(path)
    if Path("/proc/self/smaps").exists():  # Linux: the mapping is found (a lookup that misses would say None)
        assert share is not None and 0.0 <= share <= 1.0
    else:
        assert share is None


@pytest.mark.parametrize("piece", [None, 4096, 3 << 20])
def test_rewrite_keeps_the_bytes_in_a_new_file(tmp_path, piece):
    path = tmp_path / "w.data"
    data = os.urandom((5 << 20) + 123)
    path.write_bytes(data)
    before = path.stat().st_ino
    speedgen.rewrite([path], piece)
    assert path.read_bytes() == data and path.stat().st_ino != before
    assert [p.name for p in tmp_path.iterdir()] == ["w.data"]


def test_rewrite_that_fails_leaves_the_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "w.data"
    data = os.urandom(1 << 20)
    path.write_bytes(data)

    def short(raw, chunk):  # the disk fills up after the first piece
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(speedgen, "_write_all", short)
    with pytest.raises(OSError):
        speedgen.rewrite([path], 4096)
    assert path.read_bytes() == data and [p.name for p in tmp_path.iterdir()] == ["w.data"]


def test_run_measured_timeout_kills_the_command(tmp_path):
    marker = tmp_path / "still-running"
    script = f"import time, pathlib; time.sleep(30); pathlib.Path({str(marker)!r}).write_text('x')"
    m = measure.run_measured([sys.executable, "-c", script], timeout=0.5)
    assert m.timed_out and m.returncode != 0
    done = measure.run_measured([sys.executable, "-c", "print('{}')"], timeout=30)
    assert not done.timed_out and done.returncode == 0 and done.last_json() == {}
    assert not marker.exists()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_proc_tree_sampler_sums_the_same_descendants_as_psutil():
    # a child holding 40 MiB and a grandchild holding 20 MiB, both touched, then waiting on stdin
    child, grandchild = (f"import sys; b = bytearray({mib} << 20); sys.stdin.read()" for mib in (40, 20))
    script = (f"import subprocess, sys; c = subprocess.Popen([sys.executable, '-c', {grandchild!r}], "
              f"stdin=subprocess.PIPE); print('up', flush=True); exec({child!r}); c.stdin.close(); c.wait()")
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "up"
        tree = measure._ProcTree(os.getpid())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until the grandchild has touched its bytes: equal and over 60 MiB
            ours, theirs = tree.rss_kib(), measure._tree_rss_kib(os.getpid())
            if ours == theirs and ours > 60 << 10:
                break
            time.sleep(0.05)
        assert ours == theirs and ours > 60 << 10
        assert measure._ProcTree(proc.pid).rss_kib() < ours  # the child itself is not its own descendant
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_quick_speed_run_reports_every_figure(tmp_path):
    try:  # cls (figure 2) and det (the ORT floor of figure 1) come from one wheel
        fetch_wheel_model(RAPIDOCR_CLS, real_models_cache_dir())
        fetch_wheel_model(speedgen.PPOCR_DET, real_models_cache_dir())
    except ModelUnavailable as error:
        if _in_ci():
            pytest.fail(str(error), pytrace=False)
        pytest.skip(str(error))
    results = tmp_path / "speed.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "speed.py"), "--quick", "--graphs", "1",
                    "--data", str(tmp_path / "data"), "--results", str(results)],
                   check=True, capture_output=True, text=True, cwd=tmp_path)
    payload = json.loads(results.read_text())
    assert {"started", "machine", "loadavg_start", "rows", "figures"} <= set(payload)
    assert payload["machine"]["git_head"] and payload["machine"]["packages"]["numpy"]
    figures = payload["figures"]
    assert set(figures) == set(speedgen_figures())
    for name, fig in figures.items():
        assert "error" not in fig, (name, fig.get("error"))
    failed = [r for r in payload["rows"] if r["value"] is None]
    assert not failed, failed
    noops = [v["noop"] for k, v in figures["noop"].items() if isinstance(v, dict) and "noop" in v]
    assert noops and all(r["ran"] == 0 and r["cached"] > 0 for r in noops)
    edit, cold = figures["graph-edit"]["edit"], figures["graph-edit"]["cold"]
    assert 0 < edit["ran"] < cold["ran"] and [t for t in edit["ran_tasks"] if "/parse:g" in t] == [
        f"graphs1/parse:{edit['edit']}"]
    weight = figures["weight-edit"]
    assert 0 < weight["edit"]["ran"] < weight["cold"]["ran"]
    for state in ("saved", "pieces"):  # the same edit in onnx's one-file layout: the same tasks re-run
        one_file = weight["one_file"][state]
        assert one_file["edit"]["ran_tasks"] == weight["edit"]["ran_tasks"]
        assert one_file["cold"]["ran"] == weight["cold"]["ran"]
    assert figures["scaling"]["fit_graphs"] and figures["scaling"]["fit_tensors"]
    for target in ("cpu", "npu"):
        assert figures["real"]["cls"][target]["ran"] > 0


def speedgen_figures() -> list[str]:
    import speedfigs

    return list(speedfigs.FIGURES)
