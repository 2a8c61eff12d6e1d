"""What a bundle really holds: its entries and their sizes, found without following a link, reading a special
file or trusting a size a zip header claims.

``inventory(path)`` is the first thing ``load_bundle`` and ``inspect`` do:

- a directory bundle is walked with ``lstat``: a symbolic link, FIFO, device or socket anywhere inside it is
  ``BUNDLE_CORRUPT`` (nothing is followed or opened); sizes are the files' own;
- a zip bundle must be a regular file; every entry must be stored (never compressed: nothing is ever
  decompressed), a regular file by its mode bits, unencrypted, unique, and lie inside the file with its claimed
  size; together the entries cannot claim more bytes than the file holds;
- the root ``zarr.json`` (the manifest) may hold at most ``manifest_cap`` bytes, every array's ``zarr.json`` at
  most ``ARRAY_META_MAX_BYTES``, before any of them is parsed.

A bundle holds what ``pack`` writes and nothing else: ``zarr.json`` and ``constants/``; any other entry is
refused. ``accounted_bytes`` is the size the allocation budget is computed from: the manifest and the files of
the constants it names; a file under ``constants/`` that no constant claims is refused (it could only inflate
the budget). ``check_chunk_files`` holds each constant's chunk files to the exact size its (validated) array
metadata implies before they are read.
"""

from __future__ import annotations

import hashlib
import math
import os
import stat
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import BundleCorrupt, BundleIOError
from ..files import describe_error, kind, open_regular

MANIFEST = "zarr.json"
PACKED_ARRAY = "constants/packed"  # bundle format 2: the small constants, each at an offset
MANIFEST_MAX_BYTES = 64 << 20  # the manifest is parsed whole (programs, inline small constants) before any check
ARRAY_META_MAX_BYTES = 1 << 20  # an array's zarr.json is a few hundred bytes
HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class Inventory:
    """A bundle's regular files (posix paths relative to its root) and their real sizes."""

    path: str
    zipped: bool
    files: dict[str, int]

    def constant_files(self, cid: str) -> dict[str, int]:
        """The chunk files of constant ``cid`` (its array directory, but not its zarr.json)."""
        prefix = f"constants/{cid}/"
        return {rel: n for rel, n in self.files.items() if rel.startswith(prefix) and rel != f"{prefix}{MANIFEST}"}


def manifest_cap(max_alloc_bytes: int | None = None) -> int:
    """Largest manifest loading parses: ``MANIFEST_MAX_BYTES``, or 1/16 of a larger budget the caller allows."""
    return max(MANIFEST_MAX_BYTES, (max_alloc_bytes or 0) // 16)


def inventory(path: str, max_manifest_bytes: int = MANIFEST_MAX_BYTES) -> Inventory:
    """The bundle's entries, checked as the module docstring says; BUNDLE_CORRUPT or IO_ERROR otherwise."""
    try:
        st = os.stat(path)  # the path itself may be a link the user chose; nothing inside it is followed
    except FileNotFoundError:
        raise BundleIOError("bundle not found", path) from None
    except OSError as err:
        raise BundleIOError(f"cannot read the bundle: {describe_error(err)}", path) from None
    if stat.S_ISDIR(st.st_mode):
        inv = Inventory(path, False, _walk(path))
    elif stat.S_ISREG(st.st_mode):
        inv = Inventory(path, True, _zip_entries(path))
    else:
        raise BundleCorrupt(f"not a bundle: it is {kind(st.st_mode)} (a bundle is a directory or a zip file)", path)
    _check_metadata_sizes(inv, max_manifest_bytes)
    return inv


def _walk(root: str) -> dict[str, int]:
    files: dict[str, int] = {}
    pending = [("", root)]
    while pending:
        rel, folder = pending.pop()
        try:
            with os.scandir(folder) as it:
                found = list(it)
        except OSError as err:
            raise BundleIOError(f"cannot list {rel or '.'}: {describe_error(err)}", root) from None
        for entry in found:
            name = f"{rel}{entry.name}"
            mode = entry.stat(follow_symlinks=False).st_mode
            if stat.S_ISDIR(mode):
                pending.append((f"{name}/", entry.path))
            elif stat.S_ISREG(mode):
                files[name] = entry.stat(follow_symlinks=False).st_size
            else:
                raise BundleCorrupt(f"entry {name!r} is {kind(mode)}; a bundle holds only regular files and "
                                    f"directories (nothing inside it is followed or opened)", root)
    return files


def _zip_entries(path: str) -> dict[str, int]:
    try:
        with os.fdopen(open_regular(path), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            infos = zipfile.ZipFile(f).infolist()
    except (zipfile.BadZipFile, ValueError, EOFError, NotImplementedError):
        raise BundleCorrupt("not a bundle: neither a bundle directory nor a zip file", path) from None
    except OSError as err:
        raise BundleIOError(f"cannot read the bundle: {describe_error(err)}", path) from None
    files: dict[str, int] = {}
    for info in infos:
        _check_zip_entry(info, size, files, path)
        if not info.is_dir():
            files[info.filename] = info.file_size
    total = sum(files.values())
    if total > size:
        raise BundleCorrupt(f"its entries claim {total} bytes but the zip file holds {size}", path)
    return files


def _check_zip_entry(info: zipfile.ZipInfo, size: int, seen: dict[str, int], path: str) -> None:
    name = info.filename
    mode = info.external_attr >> 16
    what = f"zip entry {name!r}"
    if name in seen:
        raise BundleCorrupt(f"{what} appears twice", path)
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):  # 0: no file type recorded (our own zips)
        raise BundleCorrupt(f"{what} is {kind(mode)}; a bundle holds only regular files", path)
    if info.flag_bits & 0x1:
        raise BundleCorrupt(f"{what} is encrypted", path)
    if info.compress_type != zipfile.ZIP_STORED:
        raise BundleCorrupt(f"{what} is compressed (method {info.compress_type}); bundles store entries "
                            f"uncompressed and compressed entries are never expanded", path)
    if info.compress_size != info.file_size or info.header_offset + info.file_size > size:
        raise BundleCorrupt(f"{what} claims {info.file_size} bytes at offset {info.header_offset}, which the "
                            f"{size}-byte file does not hold", path)


def _check_metadata_sizes(inv: Inventory, max_manifest_bytes: int) -> None:
    if MANIFEST not in inv.files:
        raise BundleCorrupt("not a bundle: it has no zarr.json manifest", inv.path)
    stray = next((rel for rel in sorted(inv.files) if rel != MANIFEST and not rel.startswith("constants/")), None)
    if stray is not None:
        raise BundleCorrupt(f"unexpected entry {stray!r}: a bundle holds zarr.json and constants/ only", inv.path)
    if inv.files[MANIFEST] > max_manifest_bytes:
        raise BundleCorrupt(f"its manifest (zarr.json) holds {inv.files[MANIFEST]} bytes, more than the "
                            f"{max_manifest_bytes} loading parses (allow more memory with max_alloc_bytes / "
                            f"--max-memory)", inv.path)
    for rel, size in inv.files.items():
        if rel.startswith("constants/") and rel.endswith(f"/{MANIFEST}") and size > ARRAY_META_MAX_BYTES:
            raise BundleCorrupt(f"array metadata {rel!r} holds {size} bytes (at most {ARRAY_META_MAX_BYTES})",
                                inv.path)


def accounted_bytes(inv: Inventory, constants: object) -> int:
    """Bytes of the manifest and of the constants' files; a file under constants/ no constant claims is refused.
    A constant claims its own array's directory, or the packed array's (format 2) when it lies there."""
    ids = {c for c in constants if isinstance(c, str)} if isinstance(constants, dict) else set()
    if isinstance(constants, dict) and any(isinstance(c, dict) and c.get("array") == PACKED_ARRAY
                                           for c in constants.values()):
        ids.add(PACKED_ARRAY.split("/", 1)[1])
    total = 0
    for rel, size in inv.files.items():
        if rel in (MANIFEST, f"constants/{MANIFEST}"):
            total += size
        elif rel.startswith("constants/"):
            parts = rel.split("/")[1:]
            if not any("/".join(parts[:k]) in ids for k in range(1, len(parts))):
                raise BundleCorrupt(f"entry {rel!r} belongs to no constant of the manifest", inv.path)
            total += size
    return total


def check_chunk_files(inv: Inventory, cid: str, shape: tuple[int, ...], chunks: tuple[int, ...], itemsize: int) -> None:
    """Each chunk file of constant ``cid`` holds exactly one chunk's bytes, and there are no more than chunks."""
    chunk_bytes = math.prod(chunks) * itemsize
    count = math.prod(-(-n // max(c, 1)) for n, c in zip(shape, chunks, strict=True))
    files = inv.constant_files(cid)
    wrong = next(((rel, n) for rel, n in files.items() if n != chunk_bytes), None)
    if wrong is not None:
        raise BundleCorrupt(f"constant {cid!r}: {wrong[0]} holds {wrong[1]} bytes, a chunk of its array "
                            f"{chunk_bytes}", inv.path)
    if len(files) > count:
        raise BundleCorrupt(f"constant {cid!r}: {len(files)} chunk files for an array of {count} chunks", inv.path)


def digest(inv: Inventory) -> str:
    """The bundle digest (``stages.pack.bundle_digest``: sha256 of the sorted listing of path and sha256 of each
    entry), streamed: memory stays constant whatever the files hold."""
    listing = hashlib.sha256()
    try:
        for rel, entry_digest in _entry_digests(inv):
            listing.update(f"{rel}\t{entry_digest}\n".encode())
    except (zipfile.BadZipFile, ValueError, EOFError) as err:
        raise BundleCorrupt(f"an entry cannot be read: {err}", inv.path) from None
    except OSError as err:
        raise BundleIOError(f"an entry cannot be read: {describe_error(err)}", inv.path) from None
    return listing.hexdigest()


def _entry_digests(inv: Inventory) -> Iterator[tuple[str, str]]:
    names = sorted(inv.files)
    if inv.zipped:
        with os.fdopen(open_regular(inv.path), "rb") as f, zipfile.ZipFile(f) as zf:
            for rel in names:
                with zf.open(rel) as entry:
                    yield rel, _stream_sha256(entry)
        return
    for rel in names:
        with os.fdopen(open_regular(os.path.join(inv.path, *rel.split("/")), follow_symlinks=False), "rb") as f:
            yield rel, _stream_sha256(f)


def _stream_sha256(f) -> str:
    h = hashlib.sha256()
    while block := f.read(HASH_CHUNK):
        h.update(block)
    return h.hexdigest()
