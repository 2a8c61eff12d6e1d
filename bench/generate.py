"""Deterministic generators of the benchmark bundles: (a) external data, (b) single file, (c) 32 infer graphs."""

from __future__ import annotations

import argparse
import json
import math
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

GENERATOR_VERSION = "2"
OPSET = 17
IR_VERSION = 8
BATCH = 4
FULL_BYTES = 1 << 30  # (a)/(b) weight bytes at --scale 1.0
MAX_WIDTH = 1024  # hidden width of (a)/(b): its q weight is 1024x1024 float32 = 4 MiB
SEED = 20240601
EDIT_SEED = 7
BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_DATA = BENCH_DIR / "data"
KINDS = ("a", "b", "c")

# Where a block's weights take their initial value (one group per graph, so the bytes are spread over
# all three): "infer" = initializer of the infer graph; "init" = constant `<W>.init` of the init graph;
# "update" = unset until the update graph runs, which writes `<W>.base + <W>.delta` (base is its constant).
GROUPS = ("infer", "init", "update")


@dataclass(frozen=True)
class Layout:
    """Shape of the (a)/(b) transformer-ish stack: ``blocks`` blocks of hidden width ``d`` (ffn 4d)."""

    d: int
    blocks: int

    def block_tensors(self, i: int) -> dict[str, tuple[int, ...]]:
        d, p = self.d, f"blk{i:02d}"
        return {f"{p}.q.weight": (d, d), f"{p}.q.bias": (d,), f"{p}.up.weight": (d, 4 * d),
                f"{p}.up.bias": (4 * d,), f"{p}.down.weight": (4 * d, d), f"{p}.down.bias": (d,)}


def block_bytes(d: int) -> int:
    return 4 * (9 * d * d + 6 * d)


def layout_for(scale: float) -> Layout:
    """Width 1024 when the budget holds three blocks of it (one per graph), narrower for small scales."""
    budget = FULL_BYTES * scale
    d = min(MAX_WIDTH, max(16, int(math.sqrt(budget / (3 * 36))) // 16 * 16))
    return Layout(d, max(3, round(budget / block_bytes(d))))


def group_of(block: int) -> str:
    return GROUPS[block % len(GROUPS)]


def edit_tensor_name() -> str:
    """The tensor the weight edit changes: block 0's q weight (group infer, a d x d initializer)."""
    return "blk00.q.weight"


def _values(name: str, shape: tuple[int, ...], seed: int = SEED) -> np.ndarray:
    """Deterministic float32 values per tensor name (fan-in scaled normals; biases small)."""
    rng = np.random.default_rng([seed, *name.encode()])
    scale = 0.02 if len(shape) == 1 else 1.0 / math.sqrt(shape[0])
    return (rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)).astype(np.float32)


def edited_values(original: np.ndarray) -> np.ndarray:
    """The weight edit: new values everywhere (a real value change, same shape and dtype)."""
    rng = np.random.default_rng(EDIT_SEED)
    new = (original + rng.standard_normal(original.shape, dtype=np.float32) * np.float32(0.05)).astype(np.float32)
    assert not np.array_equal(new, original)
    return new


def edit_in_place(path: Path, offset: int, shape: Sequence[int]) -> None:
    """The weight edit of a float32 tensor at ``offset`` of external-data file ``path``, written over it in place
    (``edited_values`` of the bytes there; same size, so only the range changes)."""
    nbytes = math.prod(shape) * 4
    with open(path, "r+b") as f:
        f.seek(offset)
        old = np.frombuffer(f.read(nbytes), dtype="<f4").reshape(shape)
        f.seek(offset)
        f.write(edited_values(old).astype("<f4").tobytes())


# ---------------------------------------------------------------- graph pieces


def _vi(name: str, shape: Sequence[int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="bundle-pipeline-bench")
    model.ir_version = IR_VERSION
    return model


def _dense(nodes: list, x: str, w: str, b: str, out: str, relu: bool) -> str:
    nodes.append(helper.make_node("MatMul", [x, w], [f"{out}.mm"], name=f"{out}.matmul"))
    nodes.append(helper.make_node("Add", [f"{out}.mm", b], [f"{out}.lin" if relu else out], name=f"{out}.add"))
    if relu:
        nodes.append(helper.make_node("Relu", [f"{out}.lin"], [out], name=f"{out}.relu"))
    return out


def _block(nodes: list, i: int, x: str) -> str:
    """q (d x d) + Relu, up (d x 4d) + Relu, down (4d x d), residual Add."""
    p = f"blk{i:02d}"
    h = _dense(nodes, x, f"{p}.q.weight", f"{p}.q.bias", f"{p}.q", relu=True)
    h = _dense(nodes, h, f"{p}.up.weight", f"{p}.up.bias", f"{p}.up", relu=True)
    h = _dense(nodes, h, f"{p}.down.weight", f"{p}.down.bias", f"{p}.down", relu=False)
    nodes.append(helper.make_node("Add", [x, h], [f"{p}.out"], name=f"{p}.residual"))
    return f"{p}.out"


def _stack_nodes(layout: Layout) -> list[onnx.NodeProto]:
    nodes: list[onnx.NodeProto] = []
    x = "x"
    for i in range(layout.blocks):
        x = _block(nodes, i, x)
    nodes.append(helper.make_node("Identity", [x], ["y"], name="output"))
    return nodes


def all_tensors(layout: Layout) -> dict[str, tuple[int, ...]]:
    return {n: s for i in range(layout.blocks) for n, s in layout.block_tensors(i).items()}


def _group_tensors(layout: Layout, group: str) -> dict[str, tuple[int, ...]]:
    return {n: s for i in range(layout.blocks) if group_of(i) == group for n, s in layout.block_tensors(i).items()}


def big_infer(layout: Layout) -> onnx.ModelProto:
    """The stack; group-infer weights are initializers, the other variables are graph inputs."""
    inits = [numpy_helper.from_array(_values(n, s), n) for n, s in _group_tensors(layout, "infer").items()]
    fed = [_vi(n, s) for g in ("init", "update") for n, s in _group_tensors(layout, g).items()]
    graph = helper.make_graph(_stack_nodes(layout), "infer", [_vi("x", (BATCH, layout.d)), *fed],
                              [_vi("y", (BATCH, layout.d))], initializer=inits)
    return _model(graph)


def big_init(layout: Layout) -> onnx.ModelProto:
    """Writes the group-init variables from its constants ``<W>.init``."""
    tensors = _group_tensors(layout, "init")
    nodes = [helper.make_node("Identity", [f"{n}.init"], [n], name=f"init.{n}") for n in tensors]
    inits = [numpy_helper.from_array(_values(n, s), f"{n}.init") for n, s in tensors.items()]
    graph = helper.make_graph(nodes, "init", [], [_vi(n, s) for n, s in tensors.items()], initializer=inits)
    return _model(graph)


def big_update(layout: Layout) -> onnx.ModelProto:
    """Writes every variable: ``<W>.new`` as is, or ``<W>.base + <W>.delta`` for group update."""
    nodes, inputs, inits, outputs = [], [], [], []
    for n, s in all_tensors(layout).items():
        outputs.append(_vi(n, s))
        if n in _group_tensors(layout, "update"):
            inputs.append(_vi(f"{n}.delta", s))
            inits.append(numpy_helper.from_array(_values(n, s), f"{n}.base"))
            nodes.append(helper.make_node("Add", [f"{n}.base", f"{n}.delta"], [n], name=f"update.{n}"))
        else:
            inputs.append(_vi(f"{n}.new", s))
            nodes.append(helper.make_node("Identity", [f"{n}.new"], [n], name=f"update.{n}"))
    return _model(helper.make_graph(nodes, "update", inputs, outputs, initializer=inits))


def big_original(layout: Layout) -> onnx.ModelProto:
    """The network the bundle was split from, every weight an initializer: what the peers compile."""
    inits = [numpy_helper.from_array(_values(n, s), n) for n, s in all_tensors(layout).items()]
    graph = helper.make_graph(_stack_nodes(layout), "original", [_vi("x", (BATCH, layout.d))],
                              [_vi("y", (BATCH, layout.d))], initializer=inits)
    return _model(graph)


def _external_original(layout: Layout, files: dict[str, str]) -> onnx.ModelProto:
    """The original model of (a) pointing at the bundle's own external files (no second copy on disk)."""
    inits = []
    for n, s in all_tensors(layout).items():
        t = TensorProto(name=n, data_type=TensorProto.FLOAT, dims=list(s), data_location=TensorProto.EXTERNAL)
        nbytes = 4 * math.prod(s)
        for key, value in (("location", files[n]), ("offset", "0"), ("length", str(nbytes))):
            t.external_data.add(key=key, value=value)
        inits.append(t)
    graph = helper.make_graph(_stack_nodes(layout), "original", [_vi("x", (BATCH, layout.d))],
                              [_vi("y", (BATCH, layout.d))], initializer=inits)
    return _model(graph)


# ---------------------------------------------------------------- (c): 32 small infer graphs

C_GRAPHS = 32
C_LAYERS = 3


def c_edit_graph(index: int) -> str:
    """The graph the ``index``-th structure edit changes: g07, g12, g17, ... (distinct for 32 edits)."""
    return f"g{(7 + 5 * index) % C_GRAPHS:02d}"


def c_widths(scale: float) -> list[int]:
    """Distinct widths: 16, 22, ..., 202 at scale >= 1; a smaller step (at least 1) for smoke runs."""
    step = max(1, round(6 * math.sqrt(min(1.0, scale))))
    return [16 + step * k for k in range(C_GRAPHS)]


def _c_names(k: int, layer: int) -> tuple[str, str]:
    return f"g{k:02d}.fc{layer}.weight", f"g{k:02d}.fc{layer}.bias"


def c_infer(k: int, w: int, extra_relu: bool = False) -> onnx.ModelProto:
    """x[4,w] -> 3 x (MatMul + Add, Relu between); fc1 is fed by the init graph, fc2/fc3 are initializers."""
    nodes: list[onnx.NodeProto] = []
    inits, fed, x = [], [], "x"
    for layer in range(1, C_LAYERS + 1):
        wn, bn = _c_names(k, layer)
        last = layer == C_LAYERS
        x = _dense(nodes, x, wn, bn, "y.pre" if last and extra_relu else ("y" if last else f"h{layer}"), not last)
        if layer == 1:
            fed += [_vi(wn, (w, w)), _vi(bn, (w,))]
        else:
            inits += [numpy_helper.from_array(_values(wn, (w, w)), wn), numpy_helper.from_array(_values(bn, (w,)), bn)]
    if extra_relu:
        nodes.append(helper.make_node("Relu", ["y.pre"], ["y"], name="edit.relu"))
    graph = helper.make_graph(nodes, f"g{k:02d}", [_vi("x", (BATCH, w)), *fed], [_vi("y", (BATCH, w))],
                              initializer=inits)
    return _model(graph)


def _c_variables(widths: Sequence[int]) -> dict[str, tuple[int, ...]]:
    out = {}
    for k, w in enumerate(widths):
        for layer in range(1, C_LAYERS + 1):
            wn, bn = _c_names(k, layer)
            out[wn], out[bn] = (w, w), (w,)
    return out


def c_init(widths: Sequence[int]) -> onnx.ModelProto:
    tensors = {n: s for n, s in _c_variables(widths).items() if ".fc1." in n}
    nodes = [helper.make_node("Identity", [f"{n}.init"], [n], name=f"init.{n}") for n in tensors]
    inits = [numpy_helper.from_array(_values(n, s), f"{n}.init") for n, s in tensors.items()]
    return _model(helper.make_graph(nodes, "init", [], [_vi(n, s) for n, s in tensors.items()], initializer=inits))


def c_update(widths: Sequence[int]) -> onnx.ModelProto:
    tensors = _c_variables(widths)
    nodes = [helper.make_node("Identity", [f"{n}.new"], [n], name=f"update.{n}") for n in tensors]
    graph = helper.make_graph(nodes, "update", [_vi(f"{n}.new", s) for n, s in tensors.items()],
                              [_vi(n, s) for n, s in tensors.items()])
    return _model(graph)


# ---------------------------------------------------------------- writing


def spec_text(name: str, infer_names: Iterable[str]) -> str:
    graphs = [{"name": "init", "role": "init", "model": "init.onnx"},
              {"name": "update", "role": "update", "model": "update.onnx"}]
    graphs += [{"name": g, "role": "infer", "model": f"{g}.onnx"} for g in infer_names]
    spec = {"name": name, "target": "cpu", "output": f"build/{name}.bundle", "graphs": graphs}
    return yaml.safe_dump(spec, sort_keys=False, default_flow_style=None)


def save(model: onnx.ModelProto, path: Path, external: bool) -> None:
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=False,
                        size_threshold=0)
    else:
        onnx.save_model(model, str(path))


def external_files(path: Path) -> dict[str, str]:
    """Tensor name -> external-data file (relative to the model) of a saved model."""
    model = onnx.load_model(str(path), load_external_data=False)
    return {t.name: e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}


def tensor_bytes(models: Iterable[onnx.ModelProto | Path]) -> int:
    """Total initializer bytes of the given models (what a build must ingest)."""
    total = 0
    for m in models:
        proto = onnx.load_model(str(m), load_external_data=False) if isinstance(m, Path) else m
        total += sum(math.prod(t.dims) * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
                     for t in proto.graph.initializer)
    return total


def _write_big(kind: str, directory: Path, scale: float) -> dict:
    layout = layout_for(scale)
    external = kind == "a"
    graphs = {"init": big_init, "update": big_update, "infer": big_infer}
    for name, make in graphs.items():
        save(make(layout), directory / f"{name}.onnx", external)  # one graph in memory at a time
    (directory / "bundle.yaml").write_text(spec_text(kind, ["infer"]))
    edit = edit_tensor_name()
    shape = layout.block_tensors(0)[edit]
    info = {"layout": {"d": layout.d, "blocks": layout.blocks},
            "edit": {"tensor": edit, "graph": "infer", "shape": list(shape), "nbytes": 4 * math.prod(shape)}}
    if external:
        files = {**external_files(directory / "infer.onnx")}
        for g in ("init", "update"):
            files.update({k.removesuffix(".init").removesuffix(".base"): v
                          for k, v in external_files(directory / f"{g}.onnx").items()})
        info["edit"]["file"] = files[edit]
        onnx.save_model(_external_original(layout, files), str(directory / "original.onnx"))
    else:
        save(big_original(layout), directory / "original.onnx", external=False)
    info["weight_bytes"] = tensor_bytes(directory / f"{g}.onnx" for g in graphs)
    info["tensors"] = sum(len(onnx.load_model(str(directory / f"{g}.onnx"), load_external_data=False)
                              .graph.initializer) for g in graphs)
    info["graph_files_bytes"] = {g: _disk_bytes(directory, g, external) for g in graphs}
    return info


def _disk_bytes(directory: Path, graph: str, external: bool) -> int:
    path = directory / f"{graph}.onnx"
    if not external:
        return path.stat().st_size
    return path.stat().st_size + sum((directory / f).stat().st_size for f in set(external_files(path).values()))


def _write_c(directory: Path, scale: float) -> dict:
    widths = c_widths(scale)
    names = [f"g{k:02d}" for k in range(C_GRAPHS)]
    save(c_init(widths), directory / "init.onnx", external=False)
    save(c_update(widths), directory / "update.onnx", external=False)
    for k, w in enumerate(widths):
        save(c_infer(k, w), directory / f"{names[k]}.onnx", external=False)
    (directory / "bundle.yaml").write_text(spec_text("c", names))
    files = [directory / f"{g}.onnx" for g in ("init", "update", *names)]
    tensors = sum(len(onnx.load(str(f)).graph.initializer) for f in files)
    return {"widths": widths, "edit": {"graphs": "g07, g12, g17, ... (one per repeat)",
                                        "change": "append a Relu after the last layer"},
            "weight_bytes": tensor_bytes(files), "tensors": tensors}


def generate(kind: str, root: Path = DEFAULT_DATA, scale: float = 1.0) -> dict:
    """(Re)write bundle ``kind`` under ``root/kind`` from scratch; returns and saves its manifest."""
    if kind not in KINDS:
        raise ValueError(f"unknown bundle kind {kind!r}; use one of {KINDS}")
    directory = root / kind
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    info = _write_c(directory, scale) if kind == "c" else _write_big(kind, directory, scale)
    manifest = {"kind": kind, "scale": scale, "generator_version": GENERATOR_VERSION, "edited": False,
                "spec": str(directory / "bundle.yaml"), **info}
    write_manifest(directory, manifest)
    return manifest


def write_manifest(directory: Path, manifest: dict) -> None:
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=1))


def read_manifest(directory: Path) -> dict | None:
    try:
        return json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def ensure(kind: str, root: Path = DEFAULT_DATA, scale: float = 1.0) -> dict:
    """The bundle as generated: reuse an unedited one of the same scale and version, else generate it."""
    found = read_manifest(root / kind)
    if (found and not found.get("edited") and found.get("scale") == scale
            and found.get("generator_version") == GENERATOR_VERSION):
        return found
    return generate(kind, root, scale)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0, help="weight bytes of (a)/(b) = scale x 1 GiB")
    parser.add_argument("--only", default="a,b,c", help="comma-separated subset of a,b,c")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="where bundles are written")
    args = parser.parse_args(argv)
    for kind in args.only.split(","):
        m = generate(kind.strip(), args.data, args.scale)
        print(f"{kind}: {m['weight_bytes'] / 2**20:.1f} MiB of weights in {m['tensors']} tensors -> {m['spec']}")


if __name__ == "__main__":
    main()
