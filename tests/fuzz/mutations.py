"""Mutators for fuzzing the loader and the build: bundles (manifest, programs, stored arrays), ONNX files, specs.

Each mutator takes a ``random.Random`` (hypothesis's ``st.randoms()`` in tests, a seeded one in
``bench/cluster.py``) so the same cases run under both. Mutations aim at the checks that matter:
wrong types, missing keys, absurd and overflowing shapes, out-of-range offsets, unknown kernels and
dtypes, path traversal, truncated or flipped bytes.
"""

from __future__ import annotations

import base64
import copy
import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import yaml

from bundle_pipeline.program import Program

HUGE = [2**31, 2**40, 2**62, 2**63 - 1, 2**64 + 1, 10**30]
VALUES: list[Any] = [None, True, False, 0, -1, 1, 3, 2.5, float("-inf"), "", "x", "float32", "object", "<U8",
                     "V16", "../../etc/passwd", "/abs", [], {}, [1, 2], [-1], [2**40, 2**40], [0, 2**62],
                     {"a": 1}, *HUGE, [[[[[]]]]]]
OPS = ["NoSuchOp", "MatMul", "Conv", "Reshape", "Expand", "ConstantOfShape", "Range", "Tile", "TransData", ""]


def pick_path(obj: Any, rng: random.Random) -> list[Any]:
    """A random path (list of keys/indices) into a JSON value, biased towards deep nodes."""
    path: list[Any] = []
    while isinstance(obj, dict | list) and obj and rng.random() < 0.85:
        key = rng.choice(list(obj)) if isinstance(obj, dict) else rng.randrange(len(obj))
        path.append(key)
        obj = obj[key]
    return path


def get_at(obj: Any, path: list[Any]) -> Any:
    for key in path:
        obj = obj[key]
    return obj


def set_at(obj: Any, path: list[Any], value: Any) -> Any:
    if not path:
        return value
    get_at(obj, path[:-1])[path[-1]] = value
    return obj


def mutate_json(obj: Any, rng: random.Random) -> Any:
    """One random edit: replace a node, delete a key or item, duplicate or scale a number."""
    obj = copy.deepcopy(obj)
    path = pick_path(obj, rng)
    node = get_at(obj, path)
    choice = rng.random()
    if choice < 0.2 and path:
        parent = get_at(obj, path[:-1])
        del parent[path[-1]]
        return obj
    if choice < 0.4 and isinstance(node, int | float) and not isinstance(node, bool):
        return set_at(obj, path, rng.choice([node * 2**33, -node - 1, node + 1, node * 10**6, 0]))
    if choice < 0.5 and isinstance(node, list) and node:
        node.append(copy.deepcopy(rng.choice(node)))
        return obj
    return set_at(obj, path, copy.deepcopy(rng.choice(VALUES)))


def mutate_program(m: dict, rng: random.Random) -> dict:
    """Targeted edits of one graph's program: offsets, arena, shapes, ops, names, inline tensors."""
    m = copy.deepcopy(m)
    graphs = [g for g in m.get("graphs", []) if isinstance(g, dict) and isinstance(g.get("program"), dict)]
    if not graphs:
        return mutate_json(m, rng)
    p = rng.choice(graphs)["program"]
    values = p.get("values") or {}
    steps = p.get("steps") or []
    kind = rng.randrange(9)
    if kind == 0 and values:
        plan = values[rng.choice(list(values))]
        plan["offset"] = rng.choice([-8, p.get("arena_bytes", 0), 2**63, 2**40, plan.get("offset", 0) + 1, "0"])
    elif kind == 1:
        p["arena_bytes"] = rng.choice([0, -1, 2**40, 2**62, 10**20, "1024", 1.5e3])
    elif kind == 2 and values:
        plan = values[rng.choice(list(values))]
        plan["shape"] = rng.choice([[2**31, 2**31], [10**9], [-3], [1] * 40, [2**62, 4], []])
    elif kind == 3 and steps:
        rng.choice(steps)["op"] = rng.choice(OPS)
    elif kind == 4 and steps:
        step = rng.choice(steps)
        step["inputs"] = [*step.get("inputs", []), rng.choice(["nope", "", "x", 7])]
    elif kind == 5:
        p["consts"] = {"c": {"dtype": rng.choice(["float32", "object", "int64"]),
                             "shape": rng.choice([[2**40], [4], [3, 3]]),
                             "b64": base64.b64encode(b"\x00" * rng.choice([0, 16, 36])).decode()}}
    elif kind == 6 and steps:
        step = rng.choice(steps)
        step["attrs"] = {"shape": {"tensor": {"dtype": "int64", "shape": [2], "b64": "AAAA"}},
                         "axis": rng.choice([10**6, -(10**6), "x", None])}
    elif kind == 7:
        variables = [v for v in m.get("variables", []) if isinstance(v, dict)]
        if variables:
            var = rng.choice(variables)
            var[rng.choice(["shape", "storage", "dtype", "initial"])] = rng.choice(
                [[2**40], [10**9, 10**9], "object", "nope", [-1], None])
    else:
        feeds = p.get("feeds") or []
        if feeds:
            rng.choice(feeds)["shape"] = rng.choice([[2**31, 2**31], [-1], [10**12]])
    return m


def write_manifest(bundle: Path, manifest: Any) -> None:
    meta_path = bundle / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"] = manifest
    meta_path.write_text(json.dumps(meta, allow_nan=True))


def read_manifest(bundle: Path) -> dict:
    return json.loads((bundle / "zarr.json").read_text())["attributes"]


def mutate_files(bundle: Path, rng: random.Random) -> None:
    """Damage the stored arrays: flip or truncate a chunk, rewrite a constant's zarr.json, garble the root."""
    files = sorted(p for p in bundle.rglob("*") if p.is_file())
    kind = rng.randrange(5)
    if kind == 0:
        f = rng.choice([p for p in files if p.name != "zarr.json"] or files)
        data = bytearray(f.read_bytes())
        if data:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        f.write_bytes(bytes(data))
    elif kind == 1:
        f = rng.choice(files)
        data = f.read_bytes()
        f.write_bytes(data[: rng.randrange(len(data) + 1)])
    elif kind == 2:
        metas = [p for p in files if p.name == "zarr.json" and p.parent != bundle]
        f = rng.choice(metas or files)
        try:
            meta = json.loads(f.read_text())
        except ValueError:
            return
        edit = rng.randrange(5)
        if edit == 0:
            meta["shape"] = rng.choice([[2**40], [10**9, 10**9], [-1]])
        elif edit == 1:
            meta.setdefault("chunk_grid", {}).setdefault("configuration", {})["chunk_shape"] = [2**40]
        elif edit == 2:
            meta["codecs"] = [{"name": "bytes", "configuration": {"endian": "little"}},
                              {"name": rng.choice(["gzip", "zstd", "blosc", "pickle"]), "configuration": {}}]
        elif edit == 3:
            meta["data_type"] = rng.choice(["object", "string", "float64", "<U4", "bytes"])
        else:
            meta = mutate_json(meta, rng)
        f.write_text(json.dumps(meta))
    elif kind == 3:
        f = bundle / "zarr.json"
        data = f.read_bytes()
        cut = rng.randrange(len(data))
        f.write_bytes(data[:cut] + bytes([rng.randrange(256)]) + data[cut + 1 :])
    else:
        victim = rng.choice(files)
        victim.unlink()


def mutate_bundle(src: Path, dst: Path, rng: random.Random) -> str:
    """Copy bundle ``src`` to ``dst`` and damage it one way; return what was done (for failure messages)."""
    shutil.copytree(src, dst)
    kind = rng.choice(["json", "program", "files"])
    if kind == "files":
        mutate_files(dst, rng)
        return kind
    manifest = read_manifest(dst)
    mutated = mutate_json(manifest, rng) if kind == "json" else mutate_program(manifest, rng)
    write_manifest(dst, mutated)
    return kind


def feeds_for(program: Program, rng: np.random.Generator, limit_bytes: int = 1 << 24) -> dict[str, np.ndarray] | None:
    """Feeds matching a (loaded) program's declared feeds, or None when they are malformed or too big to make."""
    try:
        feeds = {}
        total = 0
        for f in program.feeds:
            dtype = np.dtype(f.dtype)
            total += int(np.prod(f.shape, dtype=object)) * dtype.itemsize
            if total > limit_bytes:
                return None
            feeds[f.name] = rng.standard_normal(f.shape).astype(dtype)
        return feeds
    except (KeyError, TypeError, ValueError):
        return None


def mutate_onnx(model: onnx.ModelProto, rng: random.Random) -> bytes:
    """Serialized bytes of ``model`` damaged one way: a field edit, or raw byte flips/truncation."""
    m = copy.deepcopy(model)
    g = m.graph
    kind = rng.randrange(10)
    if kind == 0 and g.node:
        rng.choice(g.node).op_type = rng.choice(OPS)
    elif kind == 1 and g.initializer:
        t = rng.choice(g.initializer)
        t.dims[:] = rng.choice([[2**40], [10**9, 10**9], [0], [3, -1], [*t.dims, 2]])
    elif kind == 2 and g.initializer:
        t = rng.choice(g.initializer)
        if t.raw_data:
            t.raw_data = t.raw_data[: rng.randrange(len(t.raw_data))]
        else:
            t.data_type = rng.choice([0, 8, 16, 17, 23, 99])
    elif kind == 3 and g.input:
        dims = rng.choice(g.input).type.tensor_type.shape.dim
        if dims:
            rng.choice(dims).dim_value = rng.choice([2**40, 10**12, 0])
    elif kind == 4 and g.node:
        node = rng.choice(g.node)
        node.attribute.append(onnx.helper.make_attribute(rng.choice(["axis", "perm", "shape", "pads", "kernel_shape"]),
                                                         rng.choice([10**9, [2**40, 1], -(10**6), [0, 0, 0]])))
    elif kind == 5 and g.node:
        node = rng.choice(g.node)
        if node.input:
            dangling = rng.choice(["", "ghost", node.output[0] if node.output else "y"])
            node.input[rng.randrange(len(node.input))] = dangling
    elif kind == 6:
        m.opset_import[0].version = rng.choice([1, 5, 99, 10**6])
    elif kind == 7 and g.output:
        g.output[0].type.tensor_type.elem_type = rng.choice([0, 8, 16, 99])
    data = m.SerializeToString()
    if kind >= 8:
        data = bytearray(data)
        for _ in range(rng.randrange(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if kind == 9:
            data = data[: rng.randrange(1, len(data))]
        data = bytes(data)
    return data


def mutate_spec(spec: dict, rng: random.Random) -> str:
    """A bundle.yaml text damaged one way: a JSON-level edit of the spec, or garbled YAML."""
    if rng.random() < 0.15:
        text = yaml.safe_dump(spec)
        cut = rng.randrange(len(text))
        junk = rng.choice([":", "- [", "{", "\t", "\x00", "&a *a", "!!python/object:os.system"])
        return text[:cut] + junk + text[cut:]
    mutated = mutate_json(spec, rng)
    if rng.random() < 0.3 and isinstance(mutated, dict):
        mutated[rng.choice(["graphs", "variables", "output", "cache", "target", "name", "bogus"])] = \
            copy.deepcopy(rng.choice(VALUES))
    return yaml.safe_dump(mutated, allow_unicode=True)
