"""Tensors as entries (``tensors.py``) or packs (``packs.py``), placed into bundles; owns the chunk-digest memos.

Local tensor entries also get an action memo of their chunk files' sha256 by file stat (``entry_memo_key``),
so a bundle that hard-links them hashes nothing when nothing changed. ``tensors.py`` (numpy, zarr) is imported
on first use: planning a build on a local cache reads JSON records only.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import struct
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bundle_pipeline.cache.actions import get_action, put_action
from bundle_pipeline.cache.backend_local import link_or_copy
from bundle_pipeline.cache.layout import CacheMiss, check_hash, object_rel, temp_name
from bundle_pipeline.cache.objects import get_object, has_object, put_object, stamp
from bundle_pipeline.cache.packs import DECODED, SMALL_TENSOR_BYTES, decode, encode
from bundle_pipeline.files import holds_exactly, identity
from bundle_pipeline.hashing import hash_json, sha256_hex, tensor_hash
from bundle_pipeline.threads import map_values

if TYPE_CHECKING:
    import numpy as np

    from bundle_pipeline.cache.backends import Backend

# Tensor entries are content-addressed whole (an edited tensor is a new entry), so chunks bound memory and
# files, not rewrites: 16 MiB keeps a 1 GiB model to a few hundred files (each costs a create, 0.1-0.5 ms).
DEFAULT_CHUNK_BYTES = 16 << 20


def _tensors():
    import bundle_pipeline.cache.tensors as tensors  # numpy: loaded on first use

    return tensors


def entry_memo_key(h: str) -> str:
    """The action key of the memo of a tensor entry's file digests (see ``entry_sha256``)."""
    return hash_json({"entry-sha256": h})


def put_tensor(backend: Backend, arr: np.ndarray, chunk_bytes: int, known_hash: str | None = None,
               likely_new: bool = False) -> str:
    """Store an array as a zarr array under its ``tensor_hash`` (``known_hash`` when the caller has it) and return
    the hash; idempotent.

    A local entry written here has its files' sha256 recorded at once (``entry_sha256``'s memo), so the
    first bundle that links it hashes nothing: the bytes were just written from memory.
    """
    h, digests = _tensors().put_tensor(backend, arr, chunk_bytes, temp_name(),
                                       None if known_hash is None else check_hash(known_hash), likely_new)
    if digests is not None and backend.is_local:
        files = _file_stats(backend.path(_tensors().tensor_rel(h)), skip=("zarr.json",))
        if set(files) == set(digests):  # else someone else's copy won the race to publish: verify later
            put_action(backend, entry_memo_key(h), {"stats": {rel: st for rel, (st, _) in files.items()},
                                                    "sha256": digests})
    return h


def get_tensor(backend: Backend, h: str, verify: bool = True, pack: str | None = None) -> np.ndarray:
    """The array stored under ``h`` (verified unless ``verify=False``), from its own entry or, given
    ``pack``, from that pack (verified whole; the array is then a read-only view). CacheMiss when missing
    or corrupt (the missing hash is the pack's when the pack is)."""
    if pack is not None:
        found = read_pack(backend, pack).get(check_hash(h))
        if found is None:
            raise CacheMiss(h)
        return found
    arr = _tensors().get_tensor(backend, check_hash(h), verify=verify)
    if arr is None:
        raise CacheMiss(h)
    return arr


def get_tensors(backend: Backend, refs: Mapping[str, str | None]) -> dict[str, np.ndarray]:
    """``get_tensor`` of many: tensor hash -> its pack (or None) in, tensor hash -> array out; each pack is
    read (or found decoded, one stat) once, not once a tensor."""
    out: dict[str, np.ndarray] = {}
    by_pack: dict[str, list[str]] = {}
    for h, pack in refs.items():
        if pack is None:
            out[h] = get_tensor(backend, h)
        else:
            by_pack.setdefault(pack, []).append(h)
    for pack, hashes in by_pack.items():
        tensors = read_pack(backend, pack)
        for h in hashes:
            found = tensors.get(check_hash(h))
            if found is None:
                raise CacheMiss(h)
            out[h] = found
    return out


def has_tensor(backend: Backend, h: str, pack: str | None = None) -> bool:
    """Whether a published entry, or the pack said to hold it, exists (unverified)."""
    if pack is not None:
        return has_object(backend, pack)
    return backend.exists(f"{_tensors().tensor_rel(check_hash(h))}/zarr.json")


def entry_intact(backend: Backend, h: str) -> bool:
    """Whether tensor entry ``h`` is there and hashes to its name (``cache verify``)."""
    return _tensors().get_tensor(backend, h, verify=True, missing_is_corrupt=True) is not None


def put_tensors(backend: Backend, arrays: Mapping[str, Any], chunk_bytes: int) -> dict[str, dict[str, str]]:
    """Store many tensors at once: the small ones (``packs.SMALL_TENSOR_BYTES``) in one pack, each larger
    one as its own entry (in threads). Returns name -> ``{"tensor": hash}``, plus ``"pack": pack hash``
    for a packed one: the reference ``get_tensor``/``has_tensor`` take (see ``packs.py``)."""
    normal = {name: _tensors().normalise(a) for name, a in arrays.items()}
    small = {name: a for name, a in normal.items() if a.nbytes <= SMALL_TENSOR_BYTES}
    refs: dict[str, dict[str, str]] = {}
    if small:
        hashes = {name: tensor_hash(a) for name, a in small.items()}
        blob = encode({hashes[name]: a for name, a in small.items()})
        pack = put_object(backend, blob)
        # kept decoded (views into the bytes just written), as ``read_pack`` keeps what it reads: the next stage of
        # this process that reads the pack (formats.weights) neither reads nor re-hashes it
        DECODED.put(pack, len(blob), (stamp(backend, pack), decode(blob)))
        refs.update({name: {"tensor": h, "pack": pack} for name, h in hashes.items()})
    big = map_values(lambda a: put_tensor(backend, a, chunk_bytes), {n: a for n, a in normal.items() if n not in small})
    refs.update({name: {"tensor": h} for name, h in big.items()})
    return refs


def read_pack(backend: Backend, pack: str) -> dict[str, np.ndarray]:
    """A pack's tensors, verified; this process keeps recently read packs decoded (``packs.DECODED``)."""
    found = DECODED.get(check_hash(pack))
    if found is not None and found[0] is not None and found[0] == stamp(backend, pack):
        return found[1]  # this cache's entry, untouched since this process verified it
    blob = get_object(backend, pack)
    try:
        tensors = decode(blob)
    except (ValueError, TypeError, KeyError, struct.error) as err:  # verified bytes, bad layout: not ours
        backend.remove(object_rel(pack))
        raise CacheMiss(pack) from err
    DECODED.put(pack, len(blob), (stamp(backend, pack), tensors))
    return tensors


def export_tensor(backend: Backend, h: str, dest: str | os.PathLike[str], chunk_bytes: int,
                  pack: str | None = None) -> dict[str, str]:
    """Place tensor ``h`` (held by ``pack``, if given) as a plain zarr array at local directory ``dest``;
    return the sha256 of each placed file by its path relative to ``dest`` (posix separators).

    A local entry's chunk files are hard-linked, so a bundle re-pack writes no tensor bytes (the entry
    must not be modified through ``dest``: it is the cache's own file; readers verify hashes, so such
    damage would read as a miss, never as a wrong value). A remote entry is read (verified) and its
    chunks written. ``zarr.json`` is always written from the entry's metadata, so the placed bytes do
    not depend on how or when the cache entry was written.
    """
    tensors = _tensors()
    dest = os.fspath(dest)
    if pack is not None:
        arr = get_tensor(backend, h, pack=pack)
        chunks = tensors.chunk_shape(arr.shape, arr.dtype.itemsize, chunk_bytes)
        digests = tensors.write_chunks(arr, chunks, dest)
        doc = tensors.entry_document(h, arr.dtype, arr.shape, chunks, digests)
        with open(os.path.join(dest, "zarr.json"), "wb") as f:
            f.write(doc)
        return {**digests, "zarr.json": sha256_hex(doc)}
    remembered = _export_remembered(backend, check_hash(h), dest, chunk_bytes)
    if remembered is not None:
        return remembered
    meta = tensors.entry_meta(backend, h)
    if meta is None:
        raise CacheMiss(h)
    canonical = tensors.chunk_shape(meta.shape, meta.dtype.itemsize, chunk_bytes) if meta.plain else None
    linked = backend.is_local and meta.plain and meta.chunks == canonical
    if linked:
        backend.export_tree(tensors.tensor_rel(h), dest, skip=("zarr.json",))
        digests = entry_sha256(backend, h, dest, meta)
        dtype = meta.logical if meta.logical is not None else meta.dtype
    else:  # a remote entry, or one written with other chunks: the bundle gets this version's chunks
        arr = get_tensor(backend, h)
        chunks = tensors.chunk_shape(arr.shape, arr.dtype.itemsize, chunk_bytes)
        digests, dtype = tensors.write_chunks(arr, chunks, dest), arr.dtype
        meta = dataclasses.replace(meta, chunks=chunks)
    doc = tensors.entry_document(h, dtype, meta.shape, meta.chunks, digests)
    placed = {**digests, "zarr.json": sha256_hex(doc)}
    if not linked:
        with open(os.path.join(dest, "zarr.json"), "wb") as f:
            f.write(doc)
        return placed
    # The document is a cache object too, hard-linked like the chunks: a re-pack then creates no file, only
    # links (a new inode costs 0.5-1 ms on some filesystems, a link 20 us; a bundle holds hundreds of arrays)
    doc_object = put_object(backend, doc)
    doc_path = os.path.join(dest, "zarr.json")
    link_or_copy(backend.path(object_rel(doc_object)), doc_path)  # copied across filesystems, like the chunks
    stats = {rel: st for rel, (st, _) in _file_stats(dest, skip=("zarr.json",)).items()}
    put_action(backend, export_memo_key(h, chunk_bytes),
               {"stats": stats, "sha256": placed, "doc": doc.decode(), "doc_object": doc_object,
                "doc_stat": identity(doc_path)})
    return placed


# Bump when what export_tensor places for an entry changes (entry_document's zarr.json, the chunk files).
EXPORT_VERSION = "1"


def export_memo_key(h: str, chunk_bytes: int) -> str:
    """The action key of what exporting local entry ``h`` placed: its files' stats and digests, its zarr.json."""
    return hash_json({"entry-export": h, "chunk_bytes": chunk_bytes, "version": EXPORT_VERSION})


def _export_remembered(backend: Backend, h: str, dest: str, chunk_bytes: int) -> dict[str, str] | None:
    """A re-pack's fast path: hard-link the chunk files an earlier export of entry ``h`` recorded and write the
    zarr.json it recorded, when each linked file still has the recorded (size, mtime_ns, inode), as in
    ``entry_sha256``; else None (nothing left at ``dest``) and the caller exports from the entry's metadata."""
    if not backend.is_local:
        return None
    record = get_action(backend, export_memo_key(h, chunk_bytes))
    if record is None:
        return None
    src = backend.path(_tensors().tensor_rel(h))
    try:
        os.mkdir(dest)  # its parent is the bundle's constants/ directory
    except OSError:  # already there (not ours to fill or remove), or no parent: the caller's way
        return None
    try:
        for rel, expected in record["stats"].items():
            target = os.path.join(dest, rel)
            if "/" in rel:
                os.makedirs(os.path.dirname(target), exist_ok=True)
            os.link(os.path.join(src, rel), target)
            if identity(target) != expected:
                raise FileExistsError(target)  # changed since recorded: verify the slow way
        _place_document(backend, record, os.path.join(dest, "zarr.json"))
    except (OSError, KeyError, TypeError, AttributeError, ValueError):  # gone, other filesystem, record of other shape
        shutil.rmtree(dest, ignore_errors=True)  # made by this call: it did not exist
        return None
    return dict(record["sha256"])


def placed_tensor(backend: Backend, h: str, dest: str | os.PathLike[str], chunk_bytes: int) -> dict[str, str] | None:
    """``export_tensor``'s answer for local entry ``h`` when directory ``dest`` already holds what an export placed
    (a re-pack reusing the tree it replaced, ``stages/pack_spare.py``): the recorded files and nothing else,
    each with the recorded (size, mtime_ns, inode), as ``_export_remembered`` checks the links it makes; else
    None (``dest`` is left as it is)."""
    if not backend.is_local:
        return None
    record = get_action(backend, export_memo_key(check_hash(h), chunk_bytes))
    if record is None or "doc_object" not in record:
        return None
    try:
        expected = {**record["stats"], "zarr.json": record["doc_stat"]}
        return dict(record["sha256"]) if holds_exactly(dest, expected) else None
    except (KeyError, TypeError, AttributeError, ValueError):  # a record of another shape
        return None


def _place_document(backend: Backend, record: dict[str, Any], doc_path: str) -> None:
    """The array's zarr.json: a link to the object the export stored, while it keeps the recorded stat (else it
    was changed through a link: removed, and the caller verifies the slow way); written from the record when
    the record names no object (an older export)."""
    doc_object = record.get("doc_object")
    if doc_object is None:
        with open(doc_path, "wb") as f:
            f.write(record["doc"].encode())
        return
    os.link(backend.path(object_rel(check_hash(doc_object))), doc_path)
    if identity(doc_path) != record["doc_stat"]:
        backend.remove(object_rel(doc_object))
        raise FileExistsError(doc_path)


def entry_sha256(backend: Backend, h: str, exported: str, meta: Any) -> dict[str, str]:
    """sha256 of each chunk file of tensor entry ``h`` (bundle digests list them), remembered per file stat.

    Entries are immutable, so a file whose (size, mtime_ns, inode) is unchanged still has the
    remembered digest (ctime is no use: every new hard link changes it); ``put_tensor`` remembers the
    files it writes. A changed stat (an entry written elsewhere, or a write through a hard link) makes
    us hash the files again and check them against the entry's recorded chunk sha256 (entries written
    before those were recorded: against ``h``), CacheMiss when damaged.
    """
    memo_key = entry_memo_key(h)
    files = _file_stats(exported)
    stats = {rel: st for rel, (st, _) in files.items()}
    record = get_action(backend, memo_key)
    if record is not None and record.get("stats") == stats:
        return dict(record["sha256"])
    digests = {rel: _sha256_file(path) for rel, (_, path) in files.items()}
    names = [name for name, _ in _tensors().chunk_grid(meta.shape, meta.chunks)]
    intact = ([digests.get(n) for n in names] == meta.chunk_sha256 and len(digests) == len(names)
              if meta.chunk_sha256 is not None else _verified(backend, h))
    if not intact:
        backend.remove_tree(_tensors().tensor_rel(h))
        raise CacheMiss(h)
    put_action(backend, memo_key, {"stats": stats, "sha256": digests})
    return digests


def _verified(backend: Backend, h: str) -> bool:
    try:
        get_tensor(backend, h, verify=True)
    except CacheMiss:
        return False
    return True


def tensor_chunks(backend: Backend, h: str) -> list[str]:
    """The sha256 of each stored chunk file, in chunk (C) order; CacheMiss when missing or damaged."""
    hashes = _tensors().chunk_sha256(backend, check_hash(h))
    if hashes is None:
        raise CacheMiss(h)
    return hashes


def _file_stats(root: str, skip: tuple[str, ...] = ()) -> dict[str, tuple[list[int], str]]:
    """rel path -> ([size, mtime_ns, inode], absolute path) for every file under ``root`` (but ``skip``)."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            if name in skip:
                continue
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, root).replace(os.sep, "/")] = (identity(path), path)
    return out


def _sha256_file(path: str) -> str:
    with open(path, "rb") as f:
        import hashlib

        return hashlib.file_digest(f, "sha256").hexdigest()
