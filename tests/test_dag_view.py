"""`bundle-pipeline dag`: the task graph as json / dot / html with each task's status (from the rebuilder's plan)
and recorded duration; the html page is self-contained and renders in headless Chromium (screenshot kept)."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import networkx as nx
import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from bundle_pipeline.cli import app
from bundle_pipeline.pipeline.build import prepare
from bundle_pipeline.pipeline.dagview import STATUS_COLORS
from bundle_pipeline.spec import load_spec

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo"
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
                 if shutil.which(n)), None)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def invoke(*args: str):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def built_demo(tmp_path):
    dest = tmp_path / "demo"
    shutil.copytree(DEMO, dest, ignore=shutil.ignore_patterns("build", ".bundle-cache"))
    report = json.loads(invoke("run", str(dest / "bundle.yaml"), "--json").stdout)
    return dest / "bundle.yaml", report


def edit_weight(path: Path) -> None:
    model = onnx.load(path)
    t = model.graph.initializer[0]
    t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) + np.float32(1), t.name))
    onnx.save(model, path)


def graph_json(spec: Path) -> dict:
    return json.loads(invoke("dag", str(spec), "--format", "json").stdout)


def test_json_statuses_durations_and_edges(built_demo):
    spec, report = built_demo
    graph = graph_json(spec)
    recorded = {t["id"]: t["seconds"] for t in report["tasks"]}
    nodes = {n["id"]: n for n in graph["nodes"]}
    assert set(nodes) == set(recorded) and graph["bundles"] == ["demo"]
    for tid, n in nodes.items():
        assert n["status"] == "cached" and round(n["seconds"], 6) == recorded[tid]
        assert n["bundle"] == "demo" and tid.startswith(f"demo/{n['step']}") and n["stage"] == n["step"].split(".")[0]
    _, dag, _ = prepare([load_spec(spec)])
    assert {(e["source"], e["target"]) for e in graph["edges"]} == set(dag.edges())
    assert all(e["inputs"] for e in graph["edges"])
    generation = {t: i for i, gen in enumerate(nx.topological_generations(dag.nx)) for t in gen}
    assert all(n["generation"] == generation[t] for t, n in nodes.items())

    edit_weight(spec.parent / "infer.onnx")
    graph = graph_json(spec)
    status = json.loads(invoke("status", str(spec), "--json").stdout.strip().splitlines()[-1])
    by_status = {s: {n["id"] for n in graph["nodes"] if n["status"] == s} for s in ("cached", "stale", "maybe")}
    assert by_status["stale"] == {s["id"] for s in status["stale"]} == {"demo/parse:infer"}
    assert by_status["maybe"] == {s["id"] for s in status["maybe"]} == nx.descendants(dag.nx, "demo/parse:infer")
    assert by_status["cached"] == set(nodes) - by_status["stale"] - by_status["maybe"]
    stale = next(n for n in graph["nodes"] if n["id"] == "demo/parse:infer")
    assert stale["reason"].startswith("file changed") and "infer.onnx" in stale["reason"]
    assert all(round(n["seconds"], 6) == recorded[n["id"]] for n in graph["nodes"])  # last build's records
    assert graph["counts"] == {s: len(ids) for s, ids in by_status.items()}


def test_never_built_has_no_durations(tmp_path):
    dest = tmp_path / "demo"
    shutil.copytree(DEMO, dest, ignore=shutil.ignore_patterns("build", ".bundle-cache"))
    graph = graph_json(dest / "bundle.yaml")
    assert all(n["seconds"] is None for n in graph["nodes"])
    assert {n["reason"] for n in graph["nodes"] if n["status"] == "stale"} == {"never built"}
    assert {n["step"] for n in graph["nodes"] if n["status"] == "stale"} == {"parse"}


def test_dot(built_demo):
    spec, _ = built_demo
    edit_weight(spec.parent / "infer.onnx")
    text = invoke("dag", str(spec)).stdout  # dot is the default
    graph = graph_json(spec)
    assert text.startswith('digraph "bundle-pipeline" {') and text.rstrip().endswith("}")
    assert text.count("{") == text.count("}") and 'subgraph "cluster_demo"' in text
    for n in graph["nodes"]:
        line = next(line for line in text.splitlines() if line.strip().startswith(f'"{n["id"]}" ['))
        assert f'fillcolor="{STATUS_COLORS[n["status"]][0]}"' in line and n["status"] in line
    assert len(re.findall(r'^\s*"[^"]+" -> "[^"]+"', text, re.M)) == len(graph["edges"])
    if shutil.which("dot"):  # Graphviz is optional; when present it must accept the file
        subprocess.run(["dot", "-Tsvg", "-o", "/dev/null"], input=text, text=True, check=True)


def test_unknown_format_is_one_line(built_demo):
    spec, _ = built_demo
    result = CliRunner().invoke(app, ["dag", str(spec), "--format", "svg"])
    assert result.exit_code == 1 and "unknown format 'svg'" in result.output and "dot, json, html" in result.output


def png_rgb(data: bytes) -> np.ndarray:
    """Decode an 8-bit, non-interlaced RGB/RGBA PNG (what Chromium writes) to an (h, w, 3) array."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, b""
    while pos < len(data):
        length, kind = int.from_bytes(data[pos:pos + 4], "big"), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
    assert depth == 8 and interlace == 0 and color in (2, 6), (depth, color, interlace)
    bpp = 3 if color == 2 else 4
    stride = width * bpp
    raw = zlib.decompress(idat)
    out = np.zeros((height, stride), np.uint8)
    prev = np.zeros(stride, np.uint8)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], np.frombuffer(raw, np.uint8, stride, y * (stride + 1) + 1)
        if kind == 0:
            row = line.copy()
        elif kind == 1:  # Sub: running sum per channel
            row = (np.cumsum(line.reshape(width, bpp).astype(np.int64), axis=0) % 256).astype(np.uint8).ravel()
        elif kind == 2:
            row = line + prev
        else:  # Average / Paeth: sequential along the row
            row, a, up = bytearray(stride), line.tolist(), prev.tolist()
            for i in range(stride):
                left = row[i - bpp] if i >= bpp else 0
                upleft = up[i - bpp] if i >= bpp else 0
                if kind == 3:
                    row[i] = (a[i] + (left + up[i]) // 2) & 255
                else:
                    p = left + up[i] - upleft
                    pa, pb, pc = abs(p - left), abs(p - up[i]), abs(p - upleft)
                    pred = left if pa <= pb and pa <= pc else up[i] if pb <= pc else upleft
                    row[i] = (a[i] + pred) & 255
            row = np.frombuffer(bytes(row), np.uint8)
        out[y] = prev = row
    return out.reshape(height, width, bpp)[:, :, :3]


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get install chromium; "
                                             ".ci/run installs it), so the HTML page cannot be rendered here")
def test_html_is_self_contained_and_renders_in_headless_chromium(built_demo, tmp_path):
    spec, _ = built_demo
    edit_weight(spec.parent / "infer.onnx")  # cached, stale and maybe tasks all appear
    page = tmp_path / "dag.html"
    invoke("dag", str(spec), "--format", "html", "-o", str(page))
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and "<svg" in text
    assert re.findall(r"https?://[^\s\"')]+", text) == ["http://www.w3.org/2000/svg"]  # the SVG namespace only
    assert not re.search(r"<(link|img|iframe)\b|\bsrc=|@import", text)  # nothing loaded from anywhere
    ids = [n["id"] for n in graph_json(spec)["nodes"]]

    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    for tid in ids:
        assert f'data-task="{tid}"' in dom, tid
    screenshot = tmp_path / "dag.png"  # the test artifact: kept in pytest's tmp dir
    subprocess.run([CHROMIUM, *flags, "--window-size=1280,640", f"--screenshot={screenshot}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    pixels = png_rgb(screenshot.read_bytes())
    assert pixels.shape == (640, 1280, 3)
    not_white = (pixels < 250).any(axis=2).mean()
    assert not_white > 0.03, f"screenshot {screenshot} is blank ({not_white:.2%} non-white pixels)"
    colours = {tuple(c) for c in np.unique(pixels.reshape(-1, 3), axis=0)}
    for status, (fill, _) in STATUS_COLORS.items():  # a box of every status was drawn
        rgb = tuple(int(fill[i:i + 2], 16) for i in (1, 3, 5))
        assert rgb in colours, (status, fill, screenshot)
