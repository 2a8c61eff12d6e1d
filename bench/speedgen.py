"""Inputs of bench/speed.py, deterministic and re-used once generated (under bench/data/speed/), but for the
one-file layout of bundle (a), saved again in every run (``one_file_layout``):

- real models from pinned PyPI wheels (PP-OCR det, magika, rapidocr cls, silero-vad), each split by our CLI
  (`bundle-pipeline split`) into init/update/infer, and a "combo" bundle of magika + cls + silero together
  (one merged init, three update and three infer graphs);
- ``graphs-N``: N distinct 40-layer infer graphs (40 x MatMul+Add+Relu, 120 nodes) + an init and an update graph;
- ``tensors-T``: T small tensors in one bundle (half constants, half variables written by an update graph).
"""

from __future__ import annotations

import hashlib
import mmap
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import generate
import numpy as np
import onnx
import yaml
from generate import _dense, _model, _values, _vi
from onnx import helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the pinned real-model fetcher

import conftest  # noqa: E402

SPEEDGEN_VERSION = "1"
LAYERS = 40  # per generated graph: 40 x (MatMul + Add + Relu) = 120 nodes
WIDTH_BASE, WIDTH_SPAN, WIDTH_STEP = 16, 41, 7  # layer widths 16..56; step 7 is coprime to 41: 41 distinct a graph
TENSOR_WIDTH, TENSORS_PER_SUM = 16, 50

PPOCR_DET = conftest.WheelModel(
    package="rapidocr-onnxruntime", version="1.4.4",
    member="rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
    sha256="d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9")


@dataclass(frozen=True)
class RealSource:
    wheel: conftest.WheelModel
    input_shape: dict[str, tuple[int, ...]]  # every graph input, static (what split and OpenVINO's reshape get)

    def option(self) -> str:
        """The CANN ``input_shape`` option: ``name:d0,d1;name2:`` (a scalar has no dims)."""
        return ";".join(f"{k}:{','.join(map(str, v))}" for k, v in self.input_shape.items())


REAL = {
    "det": RealSource(PPOCR_DET, {"x": (1, 3, 640, 640)}),
    "magika": RealSource(conftest.MAGIKA, {"bytes": (2, 2048)}),
    "cls": RealSource(conftest.RAPIDOCR_CLS, {"x": (1, 3, 48, 192)}),
    # as tests/test_silero_vad.py feeds it: one 16 kHz frame (64 context + 512 new samples), sr, LSTM state
    "silero": RealSource(conftest.SILERO_VAD["silero_vad"], {"input": (1, 576), "state": (2, 1, 128), "sr": ()}),
}
COMBO = ("magika", "cls", "silero")


def _file_digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()


def _fresh_dir(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)


def _reusable(directory: Path, key: dict) -> bool:
    found = generate.read_manifest(directory)
    return bool(found) and found.get("key") == key and not found.get("edited")


# ---------------------------------------------------------------- real models


def real_model(name: str, root: Path, env: dict) -> dict:
    """Fetch (pinned sha256) and split with our CLI; re-used when the model, the shapes and
    bundle_pipeline/split.py are unchanged. Returns the manifest (paths as strings)."""
    source = REAL[name]
    model = conftest.fetch_wheel_model(source.wheel, conftest.real_models_cache_dir())
    directory = root / "real" / name
    key = {"version": SPEEDGEN_VERSION, "model_sha256": source.wheel.sha256, "input_shape": source.option(),
           "split_py": _file_digest(ROOT / "bundle_pipeline" / "split.py")}
    if _reusable(directory, key):
        return generate.read_manifest(directory)
    _fresh_dir(directory)
    cmd = [sys.executable, "-m", "bundle_pipeline.cli", "split", str(model), str(directory / "split"),
           "--input-shape", source.option()]
    subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    manifest = {"key": key, "name": name, "model": str(model),
                "spec": str(directory / "split" / "bundle.yaml"), "input_shape": source.option(),
                "wheel": f"{source.wheel.package}=={source.wheel.version}:{source.wheel.member}",
                "model_bytes": model.stat().st_size}
    generate.write_manifest(directory, manifest)
    return manifest


def combo(parts: dict[str, dict], root: Path) -> dict:
    """One bundle of several split models: their init graphs merged into one, each update and infer graph kept
    (renamed ``update_<model>``, ``infer_<model>``), the variables listed together. Names must not collide."""
    directory = root / "real" / "combo"
    key = {"version": SPEEDGEN_VERSION, "parts": {n: m["key"] for n, m in parts.items()}}
    if _reusable(directory, key):
        return generate.read_manifest(directory)
    _fresh_dir(directory)
    specs = {n: yaml.safe_load(Path(m["spec"]).read_text()) for n, m in parts.items()}
    variables: list[str] = []
    for n, spec in specs.items():
        clash = set(variables) & set(spec.get("variables", []))
        if clash:
            raise ValueError(f"combo: variable {sorted(clash)[0]!r} of {n} is also another model's")
        variables += spec.get("variables", [])
    inits = [onnx.load(str(Path(m["spec"]).parent / "init.onnx")) for m in parts.values()]
    onnx.save_model(merge_graphs(inits, "init"), str(directory / "init.onnx"))
    graphs = [{"name": "init", "role": "init", "model": "init.onnx"}]
    for n, spec in specs.items():
        for g in spec["graphs"]:
            if g["role"] == "init":
                continue
            shutil.copyfile(Path(parts[n]["spec"]).parent / g["model"], directory / f"{g['role']}_{n}.onnx")
            graphs.append({**g, "name": f"{g['role']}_{n}", "model": f"{g['role']}_{n}.onnx"})
    spec = {"name": "combo", "target": "cpu", "output": "build/combo.bundle", "variables": variables,
            "graphs": graphs}
    (directory / "bundle.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    manifest = {"key": key, "name": "combo", "spec": str(directory / "bundle.yaml"), "parts": list(parts),
                "graphs": len(graphs)}
    generate.write_manifest(directory, manifest)
    return manifest


def merge_graphs(models: Sequence[onnx.ModelProto], name: str) -> onnx.ModelProto:
    """Side-by-side union of graphs without shared names (the split init graphs: Identity of constants)."""
    opsets: dict[str, int] = {}
    for m in models:
        for o in m.opset_import:
            opsets[o.domain] = max(opsets.get(o.domain, 0), o.version)
    g = helper.make_graph([n for m in models for n in m.graph.node], name,
                          [i for m in models for i in m.graph.input], [o for m in models for o in m.graph.output],
                          initializer=[t for m in models for t in m.graph.initializer])
    merged = helper.make_model(g, opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
                               producer_name="bundle-pipeline-bench")
    merged.ir_version = max(m.ir_version for m in models)
    return merged


# ---------------------------------------------------------------- N distinct 40-layer graphs


def layer_widths(k: int) -> list[int]:
    """Widths of graph k's 41 activations: all distinct within the graph (so are its 40 layer shapes)."""
    return [WIDTH_BASE + (WIDTH_STEP * i + k) % WIDTH_SPAN for i in range(LAYERS + 1)]


def batch_of(k: int) -> int:
    """Rows of graph k's input: distinct per graph, so no two graphs share a kernel signature."""
    return 1 + k


def _names(k: int, layer: int) -> tuple[str, str]:
    return f"g{k:03d}.fc{layer:02d}.weight", f"g{k:03d}.fc{layer:02d}.bias"


def deep_infer(k: int, extra_relu: bool = False) -> onnx.ModelProto:
    """x[1+k, w0] -> 40 x (MatMul + Add + Relu); layer 0 is fed (a variable), the others are initializers.
    ``extra_relu`` appends one more Relu (the one-graph structure edit)."""
    w, rows = layer_widths(k), batch_of(k)
    nodes: list[onnx.NodeProto] = []
    inits, fed, x = [], [], "x"
    for layer in range(LAYERS):
        wn, bn = _names(k, layer)
        last = layer == LAYERS - 1
        x = _dense(nodes, x, wn, bn, "y.pre" if last and extra_relu else ("y" if last else f"h{layer}"), True)
        shape = (w[layer], w[layer + 1])
        if layer == 0:
            fed += [_vi(wn, shape), _vi(bn, shape[1:])]
        else:
            inits += [numpy_helper.from_array(_values(wn, shape), wn),
                      numpy_helper.from_array(_values(bn, shape[1:]), bn)]
    if extra_relu:
        nodes.append(helper.make_node("Relu", ["y.pre"], ["y"], name="edit.relu"))
    graph = helper.make_graph(nodes, f"g{k:03d}", [_vi("x", (rows, w[0])), *fed], [_vi("y", (rows, w[-1]))],
                              initializer=inits)
    return _model(graph)


def _deep_variables(n: int) -> dict[str, tuple[int, ...]]:
    out = {}
    for k in range(n):
        wn, bn = _names(k, 0)
        w = layer_widths(k)
        out[wn], out[bn] = (w[0], w[1]), (w[1],)
    return out


def _init_and_update(variables: dict[str, tuple[int, ...]], with_init: bool) -> dict[str, onnx.ModelProto]:
    """init: each variable = its constant ``<v>.init``; update: each variable = input ``<v>.new``."""
    out = {}
    if with_init:
        nodes = [helper.make_node("Identity", [f"{v}.init"], [v], name=f"init.{v}") for v in variables]
        inits = [numpy_helper.from_array(_values(v, s), f"{v}.init") for v, s in variables.items()]
        out["init"] = _model(helper.make_graph(nodes, "init", [], [_vi(v, s) for v, s in variables.items()],
                                               initializer=inits))
    nodes = [helper.make_node("Identity", [f"{v}.new"], [v], name=f"update.{v}") for v in variables]
    out["update"] = _model(helper.make_graph(nodes, "update", [_vi(f"{v}.new", s) for v, s in variables.items()],
                                             [_vi(v, s) for v, s in variables.items()]))
    return out


def _write_spec(directory: Path, name: str, roles: dict[str, str], target: str) -> None:
    graphs = [{"name": g, "role": r, "model": f"{g}.onnx"} for g, r in roles.items()]
    spec = {"name": name, "target": target, "output": f"build/{name}.bundle", "graphs": graphs}
    (directory / "bundle.yaml").write_text(yaml.safe_dump(spec, sort_keys=False, default_flow_style=None))


def graphs_bundle(n: int, root: Path) -> dict:
    """``graphs-N``: N distinct 40-layer infer graphs g000.. + init + update (npu); re-used once generated."""
    directory = root / f"graphs-{n}"
    key = {"version": SPEEDGEN_VERSION, "graphs": n, "layers": LAYERS}
    if _reusable(directory, key):
        return generate.read_manifest(directory)
    _fresh_dir(directory)
    names = [f"g{k:03d}" for k in range(n)]
    for g, model in _init_and_update(_deep_variables(n), with_init=True).items():
        generate.save(model, directory / f"{g}.onnx", external=False)
    for k, g in enumerate(names):
        generate.save(deep_infer(k), directory / f"{g}.onnx", external=False)
    _write_spec(directory, f"graphs{n}", {"init": "init", "update": "update", **dict.fromkeys(names, "infer")}, "npu")
    files = [directory / f"{g}.onnx" for g in ("init", "update", *names)]
    manifest = {"key": key, "graphs": n, "infer_nodes": 3 * LAYERS, "spec": str(directory / "bundle.yaml"),
                "weight_bytes": generate.tensor_bytes(files), "tensors": 2 * LAYERS * n, "edited": False}
    generate.write_manifest(directory, manifest)
    return manifest


def edit_graph(directory: Path, manifest: dict, index: int) -> str:
    """Append a Relu to one infer graph (a different one per ``index``); marks the bundle edited first, so the
    next run regenerates it. Returns the graph's name."""
    generate.write_manifest(directory, {**manifest, "edited": True})
    k = (7 + 5 * index) % manifest["graphs"]
    generate.save(deep_infer(k, extra_relu=True), directory / f"g{k:03d}.onnx", external=False)
    return f"g{k:03d}"


# ---------------------------------------------------------------- T small tensors


def tensors_bundle(t: int, root: Path) -> dict:
    """``tensors-T``: one infer graph summing x[1,16] with T distinct [16] tensors (Sum nodes of 50), every
    tensor an initializer; the odd ones are variables, written by an update graph. cpu target."""
    directory = root / f"tensors-{t}"
    key = {"version": SPEEDGEN_VERSION, "tensors": t}
    if _reusable(directory, key):
        return generate.read_manifest(directory)
    _fresh_dir(directory)
    names = [f"t{i:05d}" for i in range(t)]
    inits = [numpy_helper.from_array(_values(n, (TENSOR_WIDTH,)), n) for n in names]
    nodes, x = [], "x"
    for start in range(0, t, TENSORS_PER_SUM):
        out = "y" if start + TENSORS_PER_SUM >= t else f"s{start}"
        nodes.append(helper.make_node("Sum", [x, *names[start:start + TENSORS_PER_SUM]], [out], name=f"sum{start}"))
        x = out
    infer = helper.make_graph(nodes, "infer", [_vi("x", (1, TENSOR_WIDTH))], [_vi("y", (1, TENSOR_WIDTH))],
                              initializer=inits)
    generate.save(_model(infer), directory / "infer.onnx", external=False)
    variables = {n: (TENSOR_WIDTH,) for n in names[1::2]}
    generate.save(_init_and_update(variables, with_init=False)["update"], directory / "update.onnx", False)
    _write_spec(directory, f"tensors{t}", {"update": "update", "infer": "infer"}, "cpu")
    manifest = {"key": key, "tensors": t, "variables": len(variables), "sum_nodes": len(nodes),
                "spec": str(directory / "bundle.yaml"), "edited": False}
    generate.write_manifest(directory, manifest)
    return manifest


def restore_graphs(directory: Path, manifest: dict, names: Sequence[str]) -> None:
    """Undo ``edit_graph``: the named graphs as generated (same bytes), the bundle marked unedited."""
    for name in names:
        generate.save(deep_infer(int(name[1:])), directory / f"{name}.onnx", external=False)
    generate.write_manifest(directory, {**manifest, "edited": False})


# ---------------------------------------------------------------- bundle (a) in onnx's one-file layout


def one_file_layout(a: dict, root: Path) -> dict:
    """Bundle (a) with each graph's weights in one external-data file, as ``onnx.save_model`` writes them by default
    (``all_tensors_to_one_file``): ``<graph>.data`` beside ``<graph>.onnx``. The manifest's ``edit`` names the byte
    range of (a)'s edited tensor in its graph's file.

    Saved again in every run, as the user who builds and then edits the model has just saved it: what reading a
    whole file costs depends on the page cache's state, which a file kept from an earlier run does not control
    (``huge_mapped_share``, ``rewrite``)."""
    source = Path(a["spec"]).parent
    directory = root / "a-one-file"
    _fresh_dir(directory)
    for graph in a["graph_files_bytes"]:
        model = onnx.load_model(str(source / f"{graph}.onnx"), load_external_data=True)
        onnx.save_model(model, str(directory / f"{graph}.onnx"), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=f"{graph}.data", size_threshold=0)
    shutil.copyfile(source / "bundle.yaml", directory / "bundle.yaml")
    edit = a["edit"]
    infer = onnx.load_model(str(directory / f"{edit['graph']}.onnx"), load_external_data=False)
    where = next({e.key: e.value for e in t.external_data} for t in infer.graph.initializer if t.name == edit["tensor"])
    manifest = {"spec": str(directory / "bundle.yaml"), "weight_bytes": a["weight_bytes"],
                "tensors": a["tensors"], "edit": {**edit, "file": where["location"], "offset": int(where["offset"])},
                "data_files": sorted({f for graph in a["graph_files_bytes"]
                                      for f in generate.external_files(directory / f"{graph}.onnx").values()})}
    generate.write_manifest(directory, manifest)
    return manifest


def rewrite(paths: Sequence[Path], piece: int | None = None) -> dict:
    """Write each file again, same bytes, as a new file put in its place: in one write (``piece`` None), as a save
    does, or in ``piece``-byte writes, as a program that streams its output through a small buffer does. The page
    cache then holds the file in folios as large as the writes allow (2 MiB ones for most of a large write, none
    larger than ``piece`` otherwise): a state this run sets rather than one left by an earlier run and the time
    since (``huge_mapped_share``). A failed write leaves the file as it was."""
    start = time.perf_counter()
    for path in paths:
        tmp = path.with_name(path.name + ".rewrite")
        try:
            with open(path, "rb") as src, open(tmp, "wb", buffering=0) as dst:
                while chunk := src.read(piece or -1):  # -1: the whole file, then b"" at its end
                    _write_all(dst, chunk)
            if tmp.stat().st_size != path.stat().st_size:
                raise OSError(f"{tmp}: wrote {tmp.stat().st_size} of {path.stat().st_size} bytes")
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return {"piece_bytes": piece, "rewrite_s": time.perf_counter() - start}


def _write_all(raw, data: bytes) -> None:
    """All of ``data`` to an unbuffered file: one ``write`` may take less (Linux writes at most 2 GiB a call)."""
    view = memoryview(data)
    while view:
        view = view[raw.write(view):]


def huge_mapped_share(path: Path) -> float | None:
    """The share of ``path``'s bytes a fresh read-only mapping of it maps with 2 MiB page-table entries, when its
    pages are in the page cache (Linux ``/proc/self/smaps``; None elsewhere). Mapping a 360 MiB file's pages a
    4 KiB entry each took a fresh process ~30 ms of a whole-file pass and unmapping them 15 more; in 2 MiB entries,
    almost nothing (the pass 12-14 ms, at memory speed). The kernel (ext4 with large folios, Linux 6.16+) keeps a
    file in 2 MiB folios where ``write`` left them, and maps those so."""
    smaps = Path("/proc/self/smaps")
    size = path.stat().st_size
    if not smaps.exists() or size == 0:
        return None
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        pages = np.frombuffer(mapped, dtype=np.uint8)
        try:
            start = pages.ctypes.data  # the mapping's address: its smaps header starts with it
            int(pages[::mmap.PAGESIZE].sum())  # faults every page in (one byte each)
        finally:
            del pages  # before the mapping closes, whatever happened
        entry = _smaps_entry(smaps.read_text(), start)
    return None if entry is None or "FilePmdMapped" not in entry else entry["FilePmdMapped"] * 1024 / size


def _smaps_entry(text: str, start: int) -> dict[str, int] | None:
    """The kB fields of the mapping at address ``start`` in a ``/proc/self/smaps`` text: found by its address, as
    its path may be printed otherwise than ``Path`` spells it (escaped, or with spaces)."""
    found: dict[str, int] | None = None
    for line in text.splitlines():
        first = line.split(maxsplit=1)[0] if line.strip() else ""
        if "-" in first and not first.endswith(":"):  # a mapping's header: "start-end perms offset dev inode [path]"
            if found is not None:
                return found
            found = {} if first.split("-")[0] == f"{start:x}" else None
        elif found is not None:
            fields = line.split()
            if len(fields) == 3 and fields[2] == "kB":
                found[fields[0].rstrip(":")] = int(fields[1])
    return found


def edit_one_file(directory: Path, manifest: dict) -> dict:
    """Rewrite the edited tensor's range of its graph's one external-data file in place (new values, same size)."""
    edit = manifest["edit"]
    generate.edit_in_place(directory / edit["file"], edit["offset"], edit["shape"])
    return {"rewritten": [edit["file"]], "bytes_rewritten": edit["nbytes"]}
