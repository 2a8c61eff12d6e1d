"""The glue between the cache and every stage: load its inputs, call ``Stage.compute``, store its outputs.

``run_stage(stage, task, cache, hashes) -> (outputs, extra)``: inputs and outputs are content hashes by name,
so only hashes leave a task and a scheduler moves references, never arrays. What a stage may ask of the cache
besides (``StageContext``) is implemented here: kernel-level memos, storing loaded tensors, placing a bundle's
tensor bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .. import dtypes
from ..cache import Cache, CacheMiss
from ..cache.packs import SMALL_TENSOR_BYTES
from ..cache.tensor_store import EXPORT_VERSION
from ..errors import BundleIOError
from ..hashing import hash_json
from ..ir.external_ranges import ref_range_key
from ..stages import pack
from ..stages.stage import TEXT, Input, Ref, Stage
from ..targets import Target, get_target
from ..threads import map_values
from .kernel_cache import KernelCache
from .sources import ranges_digest
from .task import Task


def run_stage(stage: Stage, task: Task, cache: Cache, hashes: dict[str, str]) -> tuple[dict[str, str], dict]:
    """Run ``stage`` for ``task`` on the inputs whose content hashes are ``hashes``; its outputs stored."""
    ctx = TaskContext(task, cache, hashes)
    produced = stage.compute(Inputs(stage, task, cache, hashes), task.params, ctx)
    outputs = {name: value.address if isinstance(value, Ref) else cache.put_json(value)
               for name, value in produced.items()}
    return outputs, ctx.stats()


class Inputs(Mapping):
    """A stage's inputs, each read from the cache and decoded the first time the stage looks at it."""

    def __init__(self, stage: Stage, task: Task, cache: Cache, hashes: dict[str, str]):
        self.cache, self.hashes = cache, hashes
        self.declared = {inp.key: inp for inp in stage.inputs}
        self.names = {inp.key: [d.name for d in task.deps if d.name == inp.key or d.name.startswith(f"{inp.key}:")]
                      for inp in stage.inputs}
        self.loaded: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self.loaded:
            inp, names = self.declared[name], self.names[name]
            if names == [name]:
                self.loaded[name] = self._load(inp, self.hashes[name])
            else:  # one per graph, in spec order
                self.loaded[name] = {n.split(":", 1)[1]: self._load(inp, self.hashes[n]) for n in names}
        return self.loaded[name]

    def _load(self, inp: Input, h: str) -> Any:
        return self.cache.get_object(h) if inp.form == TEXT else self.cache.get_json(h)  # TEXT: the stored bytes

    def __iter__(self) -> Iterator[str]:
        return iter(self.declared)

    def __len__(self) -> int:
        return len(self.declared)


class TaskContext:
    """``StageContext`` for one task (see ``stages/stage.py``)."""

    def __init__(self, task: Task, cache: Cache, hashes: dict[str, str]):
        self.task, self.cache, self.hashes = task, cache, hashes
        self.graph = task.graph
        self.extra: dict[str, Any] = {}
        self.memos: list[KernelCache] = []

    @property
    def source(self) -> dict:
        return self.task.context["source"]

    @property
    def where(self) -> str:
        return self.task.context["where"]

    @property
    def out(self) -> str:
        return self.task.context["out"]

    @property
    def target(self) -> Target:
        return get_target(self.task.params["target"])

    def memo(self, kind: str, version: str) -> Callable[[dict, Callable[[], Any]], Any]:
        kernels = KernelCache(self.cache, kind, version, self.target.fingerprint)
        self.memos.append(kernels)
        return kernels.get

    def stats(self) -> dict:
        """``extra`` plus the kernel-cache counts of the memos the stage used."""
        counts: dict[str, int] = {}
        for kernels in self.memos:
            for name, n in kernels.stats().items():
                counts[name] = counts.get(name, 0) + n
        return {**self.extra, **counts}

    def store_tensors(self, loaders: Mapping[str, Any]) -> dict[str, dict]:
        """Load and store tensors (objects with ``nbytes`` and ``load()``) the caller found no entry for: the small
        ones in one pack, the big ones each its own entry, one in memory a thread, hashed while written."""
        small = {n: r for n, r in loaders.items() if r.nbytes <= SMALL_TENSOR_BYTES}
        stored = self.cache.put_tensors({n: r.load() for n, r in small.items()})
        stored.update(map_values(lambda r: {"tensor": self.cache.put_tensor(*_load_hashed(r), likely_new=True)},
                                 {n: r for n, r in loaders.items() if n not in small}))
        return stored

    def stored_ranges(self, location: str, path: Path, externals: Mapping[str, dict]
                      ) -> tuple[dict[str, dict], dict[str, str]]:
        """For the external tensors of file ``path`` (``location``), when the stat state remembers for its current
        stat the range hashes the key's ``file:<location>`` digest was made of: name -> ``{"tensor": h}`` for the
        large ones the cache holds (each an entry of its own, as ``store_tensors`` keeps them), and name -> range
        hash for all of them; else nothing. One stat for the file, however many tensors it holds; the caller's
        memos find the small ones."""
        hashes = self._keyed_ranges(location, path, externals)
        if hashes is None:
            return {}, {}  # changed since the key was made: what is read is checked (``check_read``), not named
        return ({name: {"tensor": h} for name, h in hashes.items()
                 if _large(externals[name]) and self.cache.has_tensor(h)}, hashes)

    def check_read(self, location: str, path: Path, externals: Mapping[str, dict], read: Mapping[str, str]) -> None:
        """IO_ERROR when a tensor read from external-data file ``path`` does not hash as its range did when the key's
        ``file:<location>`` digest was made. ``externals``: every weight ref into the file (name -> ``external``),
        ``read``: name -> the hash of the bytes stored. Such a file was rewritten while this build ran, within one
        timestamp tick (its stat unchanged), and what was read must not be recorded under that key. Unchecked when
        the stat state no longer holds the ranges the digest was made of (the file's stat changed since: the next
        build sees that)."""
        hashes = self._keyed_ranges(location, path, externals)
        if hashes is None:
            return
        changed = sorted(n for n, h in read.items() if hashes[n] != h)
        if changed:
            raise BundleIOError(f"{location} changed while this build read it (weight {changed[0]!r} no longer holds "
                                f"the bytes the build was planned with); run the build again", self.where)

    def _keyed_ranges(self, location: str, path: Path, externals: Mapping[str, dict]) -> dict[str, str] | None:
        """name -> range hash of each weight of ``externals`` in file ``path``, when the stat state remembers, for the
        file's current stat, the range hashes the key's ``file:<location>`` digest was made of; else None (the file
        changed since, or is gone)."""
        keys = {name: ref_range_key(e) for name, e in externals.items()}
        try:
            known = self.cache.remembered_ranges(path, sorted(set(keys.values())))
        except OSError:  # gone: the memo's way (or the next build's), which reports it
            return None
        if known is None or ranges_digest(known) != self.hashes.get(f"file:{location}"):
            return None
        return {name: known[key] for name, key in keys.items()}

    def placer(self, packs: Mapping[str, str]) -> CachePlacer:
        return CachePlacer(self.cache, dict(packs))


def _large(external: dict) -> bool:
    """Whether an external tensor is stored as an entry of its own (``store_tensors``); False when its size is not
    shape x itemsize (sub-byte types) or its dtype is unknown here (the memo's way)."""
    if dtypes.is_extended(external["dtype"]):
        return False
    try:
        return dtypes.itemsize(external["dtype"]) * math.prod(external["shape"]) > SMALL_TENSOR_BYTES
    except TypeError:
        return False


def _load_hashed(loader: Any) -> tuple[Any, str | None]:
    """A loader's array and, when it knows it (``ir.external_map.MappedExternal``), the array's tensor hash."""
    load_hashed = getattr(loader, "load_hashed", None)
    return load_hashed() if load_hashed is not None else (loader.load(), None)


class CachePlacer:
    """pack's tensor bytes from the cache: entries' chunk files hard-linked, the packed array's chunks
    remembered by what they hold (tensor hashes and byte ranges), so after an edit only the chunks that
    changed are built."""

    def __init__(self, cache: Cache, packs: dict[str, str]):
        self.cache, self.packs = cache, packs  # packs: tensor hash -> the cache pack holding it

    def tensor(self, h: str, dest: Path) -> dict[str, str]:
        return self.cache.export_tensor(h, dest, pack=self.packs.get(h))

    def placed(self, h: str, dest: Path) -> dict[str, str] | None:
        return None if h in self.packs else self.cache.placed_tensor(h, dest)  # a packed one is written, not linked

    @property
    def layout(self) -> str:
        return f"export {EXPORT_VERSION}, chunk bytes {self.cache.chunk_bytes}"

    def spare(self, out: Path) -> Path | None:
        slot = self.cache.spare_tree(out)
        return None if slot is None else Path(slot)

    def object(self, h: str, dest: Path) -> str:
        return self.cache.place_object(h, dest)

    def chunk(self, pieces: list[pack.Piece], size: int, dest: Path) -> str:
        key = hash_json({"packed-chunk": [[p.tensor, p.start, p.length, p.at] for p in pieces], "size": size})
        record = self.cache.get_action(key)
        if record is not None:
            try:
                return self.cache.place_object(record["object"], dest)
            except CacheMiss:
                pass  # gone since (gc): build it again
        buf = bytearray(size)
        arrays = self.cache.get_tensors({p.tensor: self.packs.get(p.tensor) for p in pieces})
        for p in pieces:
            raw = dtypes.stored_bytes(arrays[p.tensor])
            buf[p.at : p.at + p.length] = raw[p.start : p.start + p.length]
        data = bytes(buf)
        obj = self.cache.put_object(data)
        self.cache.put_action(key, {"object": obj})
        return self.cache.place_object(obj, dest, data)
