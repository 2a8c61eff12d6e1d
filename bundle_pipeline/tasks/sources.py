"""Content digests of the user's files stages read (``Stage.reads``): the ONNX file, its external-data files."""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import lru_cache
from json.encoder import encode_basestring as _json_string  # json.dumps' own spelling of a str (ensure_ascii off)
from pathlib import Path

from ..cache import Cache
from ..errors import BundleIOError
from ..files import NotRegularFile, describe_error
from ..hashing import hash_bytes
from ..ir.external_ranges import fingerprint_ranges, hash_plain_ranges
from ..stages.stage import EXTERNAL_DATA, MODEL
from ..threads import map_values


def file_inputs(reads: str, context: dict, inputs: dict[str, str], cache: Cache) -> dict[str, str]:
    """The key inputs of a stage that reads the user's files (``Stage.reads``): the model's digest
    (``model``), or the digests of the external-data files its weight refs name (``file:<location>``)."""
    src, where = context["source"], context["where"]
    if reads == MODEL:
        return {"model": source_digest(src, cache, where)}
    if reads == EXTERNAL_DATA:
        return external_digests(cache.get_json(inputs["sources"]), Path(src.get("path", ".")).parent, cache, where)
    raise ValueError(f"unknown kind of user file {reads!r}")  # a declaration bug


def source_digest(src: dict, cache: Cache, where: str) -> str:
    """The ONNX file's content hash (through the cache's stat state: an unchanged file costs a stat).

    External-data files are not part of it: they are inputs of the ``parse.weights`` task, so an edit
    of one weight file leaves the structure parse cached.
    """
    if "bytes" in src:
        return hash_bytes(src["bytes"])
    return file_digest(cache, Path(src["path"]), where)


def external_digests(ranges: dict[str, list[str]], model_dir: str | Path, cache: Cache, where: str) -> dict[str, str]:
    """``file:<location>`` -> content digest for every external-data file of ``ranges`` (``ranges_by_file`` of the
    weight refs: location -> the sorted range keys taken from it).

    The digest is made of the tensor hashes of the ranges the refs take from the file (``range_digest``), which
    is all ``parse.weights`` reads of it: those hashes are the names the tensors are stored under, so a cold
    build hashes each weight byte once (blake3), not once for the file digest and again for the tensor. A file
    whose ranges cannot be taken as tensors (too short, an unknown dtype) gets its whole-content hash, and the
    stage reports the problem when it reads it."""
    base = os.fspath(model_dir)  # strings: a plan joins one path a weight file (168 in bench (a)), pathlib ~3 us each
    files = {f"file:{loc}": (os.path.join(base, loc), keys) for loc, keys in sorted(ranges.items())}
    digests, changed = {}, []
    for name, (path, keys) in files.items():
        remembered = _io(lambda p=path, k=keys: cache.remembered_ranges(p, k), path, f"{where}: external data")
        if remembered is None:
            changed.append(name)
        else:
            digests[name] = ranges_digest(remembered)
    with cache.deferred_file_hashes():  # one stat-state save for all of them, not a read-merge-write per file
        digests.update(map_values(lambda file: range_digest(cache, *file, f"{where}: external data"),
                                  {name: files[name] for name in changed}))  # blake3 and reads release the GIL
    return {name: digests[name] for name in files}


def ranges_digest(hashes: dict[str, str]) -> str:
    """A file's source digest from its range hashes (range key -> tensor hash)."""
    return _digest_of_ranges(tuple(sorted(hashes.items())))


@lru_cache(maxsize=256)  # a pure function of the hashes: the plan and the task's lookup ask for each file's
def _digest_of_ranges(items: tuple[tuple[str, str], ...]) -> str:
    """``hash_json({"external-ranges": dict(items)})`` (``items`` sorted by key), its canonical JSON written out:
    a plan asks for one a weight file (168 in bench (a), every no-op), and ``json.dumps`` took 6 of its 9 us."""
    body = ",".join(f"{_json_string(k)}:{_json_string(h)}" for k, h in items)
    return hash_bytes(f'{{"external-ranges":{{{body}}}}}'.encode())


class _Unhashable(Exception):
    """A range of an external-data file that is not a tensor this host hashes in place."""


def _hash_ranges(fd: int, keys: list[str], prints: dict[str, str] | None = None) -> dict[str, str]:
    hashes = hash_plain_ranges(fd, keys, prints)  # no numpy: the plain numeric types, hashed from the mapped file
    if hashes is None:
        from ..ir.external_map import hash_ranges  # numpy: bfloat16, float8, packed 4-bit types...

        hashes = hash_ranges(fd, keys, prints)
    if hashes is None:
        raise _Unhashable
    return hashes


def range_digest(cache: Cache, path: str | Path, keys: list[str], where: str) -> str:
    """hash_json of range key -> tensor hash for the ``keys`` ranges of an external-data file (remembered per stat
    signature), or the file's content hash when a range is not a tensor this host can hash in place."""
    try:
        return _io(lambda: ranges_digest(cache.range_hashes(path, keys, _hash_ranges, fingerprint_ranges)), path, where)
    except _Unhashable:
        return file_digest(cache, path, where)


def file_digest(cache: Cache, path: str | Path, where: str) -> str:
    return _io(lambda: cache.file_hash(path), path, where)


def _io(read: Callable[[], str], path: str | Path, where: str) -> str:
    """``read()`` of a user's file, its OSErrors as one BundleIOError naming the file."""
    try:
        return read()
    except NotRegularFile as err:
        raise BundleIOError(describe_error(err), where) from None
    except FileNotFoundError:
        raise BundleIOError(f"file not found: {path}", where) from None
    except IsADirectoryError:
        raise BundleIOError(f"expected a file, got a directory: {path}", where) from None
    except PermissionError:
        raise BundleIOError(f"permission denied: {path}", where) from None
