"""pack: programs + variable table + constant pool -> a zarr v3 bundle (directory or stored zip), atomically.

Constants of at most ``PACKED_MAX_BYTES`` share one uint8 array, ``constants/packed``, each at a 64-byte
aligned ``offset`` the manifest records (a bundle has hundreds to thousands of them: an array each would cost
a directory and two files apiece to write and to read); larger ones keep an array of their own, whose chunk
files the cache hard-links. The packed array's chunks are placed by content (``PlaceChunk``), so a re-pack
after an edit writes only the chunks whose bytes changed.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import math
import os
import re
import sys
import tempfile
import time
import uuid
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .. import zarr_plain
from ..dtypes import itemsize
from ..errors import BundleIOError
from ..guard import canonical, check_replaceable
from ..hashing import sha256_hex
from ..layouts import storage_shape
from ..program import FORMAT_VERSION
from . import pack_spare
from .stage import BUNDLE, OUTPUT_STAMP, TEXT, Input, Ref, Stage, StageContext

# 3: small constants share constants/packed (bundle format 2), compact root zarr.json; 4: UTF-8 manifest;
# 5: the manifest written by orjson (floats in options may be spelled differently: 1e-05 as 0.00001)
VERSION = "5"
PACKED_ARRAY = "constants/packed"
PACKED_MAX_BYTES = 256 << 10  # a constant up to this size lives in the packed array
PACKED_CHUNK_BYTES = 1 << 20
PACKED_ALIGN = 64
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def manifest(name: str, target: str, graphs: list[dict], variables: dict, var_formats: dict,
             storage: dict) -> dict:
    """The root attributes: everything the runtime needs except the tensor bytes."""

    return {
        "format_version": FORMAT_VERSION, "name": name, "target": target,
        "graphs": [{"name": g["name"], "role": g["role"], "options": g["options"], "program": g["program"],
                    "bindings": storage["bindings"].get(g["name"], {})} for g in graphs],
        "variables": [{"name": n, "shape": v["shape"], "dtype": v["dtype"], "format": var_formats[n],
                       "storage": list(storage_shape(var_formats[n], tuple(v["shape"]))),
                       "nbytes": math.prod(storage_shape(var_formats[n], tuple(v["shape"])))
                       * itemsize(v["dtype"]),
                       "readers": v["readers"], "writers": v["writers"], "source": v["source"],
                       "initial": storage["initial"].get(n)} for n, v in sorted(variables.items())],
        "constants": _manifest_constants(storage["constants"]),
    }


def _manifest_constants(constants: dict[str, dict] | zarr_plain.RawJSON) -> dict[str, dict] | zarr_plain.RawJSON:
    """The manifest's constants: as given when laid out already (``formats.weights`` lays them out to build the
    packed chunks and hands the table on as its stored JSON, which goes into the manifest undecoded), else laid
    out now."""
    return constants if isinstance(constants, zarr_plain.RawJSON) else constant_table(constants)


def constant_table(stored: dict[str, dict]) -> dict[str, dict]:
    """Where each constant lives: its own array, or (small ones) an ``offset`` into the packed array."""
    table, offset = {}, 0
    for cid, c in sorted(stored.items()):
        nbytes = math.prod(c.get("storage", c["shape"])) * itemsize(c["dtype"])
        if nbytes <= PACKED_MAX_BYTES:
            table[cid] = {**c, "array": PACKED_ARRAY, "offset": offset, "nbytes": nbytes}
            offset += -(-nbytes // PACKED_ALIGN) * PACKED_ALIGN
        else:
            table[cid] = {**c, "array": f"constants/{cid}"}
    return table


@dataclass(frozen=True)
class Piece:
    """``length`` bytes of tensor ``tensor`` (its stored little-endian bytes) from ``start``, placed at ``at``
    in one chunk of the packed array."""

    tensor: str
    start: int
    length: int
    at: int


@dataclass(frozen=True)
class Layout:
    """Where a table's constants live, as pack places them: each array of its own (array path -> tensor hash), and
    the bytes the packed array spans."""

    arrays: dict[str, str]
    packed_bytes: int

    @staticmethod
    def of(table: dict[str, dict]) -> Layout:
        """The layout of a ``constant_table``."""
        ends = (c["offset"] + c["nbytes"] for c in table.values() if c["array"] == PACKED_ARRAY)
        return Layout({c["array"]: c["hash"] for c in table.values() if c["array"] != PACKED_ARRAY},
                      -(-max(ends, default=0) // PACKED_ALIGN) * PACKED_ALIGN)

    def to_json(self) -> dict:
        return {"arrays": self.arrays, "packed_bytes": self.packed_bytes}


def packed_size(meta: dict) -> tuple[int, int]:
    """The packed array's chunk length and chunk count (0, 0: no packed array)."""
    return _chunking(Layout.of(meta["constants"]).packed_bytes)


def _chunking(total: int) -> tuple[int, int]:
    if not total:
        return 0, 0
    size = min(PACKED_CHUNK_BYTES, total)
    return size, -(-total // size)


def packed_chunks(meta: dict) -> tuple[int, list[list[Piece]]]:
    """The packed array's chunk length and, per chunk, the pieces of constants it holds (zero elsewhere)."""
    size, count = packed_size(meta)
    packed = [c for c in meta["constants"].values() if c["array"] == PACKED_ARRAY]
    chunks: list[list[Piece]] = [[] for _ in range(count)]
    for c in sorted(packed, key=lambda c: c["offset"]):
        pos, end = c["offset"], c["offset"] + c["nbytes"]
        while pos < end:
            i, at = divmod(pos, size)
            n = min(end - pos, size - at)
            chunks[i].append(Piece(c["hash"], pos - c["offset"], n, at))
            pos += n
    return size, chunks


class Placer(Protocol):
    """Where tensor bytes come from (the cache, ``tasks/steps.py``): pack itself writes only metadata."""

    def tensor(self, h: str, dest: Path) -> dict[str, str]:
        """Put tensor ``h``'s zarr array at directory ``dest``; the sha256 of every file it put there, by relative
        path (all of them: the bundle digest is taken from these listings, nothing is walked)."""

    def chunk(self, pieces: list[Piece], size: int, dest: Path) -> str:
        """Put one chunk of the packed array (``size`` bytes: ``pieces``, zeros elsewhere) at file ``dest``;
        its sha256."""

    def placed(self, h: str, dest: Path) -> dict[str, str] | None:
        """What ``tensor`` returns when ``dest`` already holds tensor ``h`` exactly as it would place it."""

    def spare(self, out: Path) -> Path | None:
        """Where the tree a re-pack of ``out`` replaces may wait for the next pack (``pack_spare``)."""

    @property
    def layout(self) -> str:
        """What decides the files ``tensor`` places for a hash (chunking, format version): a kept tree's
        record holds only for the same layout."""

    def object(self, h: str, dest: Path) -> str:
        """Put the cache object ``h`` (a chunk ``formats.weights`` built) at file ``dest``; its sha256."""


def run(meta: dict, placer: Placer, out_path: str, chunks: list[str] | None = None) -> str:
    """``run_stamped``'s digest alone."""
    return run_stamped(meta, placer, out_path, chunks)[0]


def run_stamped(meta: dict, placer: Placer, out_path: str, chunks: list[str] | None = None,
                layout: Layout | None = None) -> tuple[str, str | None]:
    """Write the bundle described by ``meta`` (from ``manifest``) to ``out_path``; return its digest, and its stat
    fingerprint (``tasks.runner.output_stamp``) when the record of the tree (``pack_spare.describe``) gives it.

    ``placer`` puts each stored tensor's zarr array and each chunk of the packed array; the cache
    hard-links what it already holds, so re-packing a directory bundle writes metadata and the chunks an
    edit changed; ``chunks``, when given, are the packed array's chunks as cache objects already (built by
    ``formats.weights``, ``weight_chunks``), linked in order; ``layout``, the constants' ``Layout`` when
    ``meta["constants"]`` is their stored JSON (``RawJSON``), else taken from the table. The bundle is staged
    beside the destination and renamed into place, so a failure leaves the previous bundle untouched. A ``.zip``
    destination gets the stored-zip form of the same entries, read from the staged (linked) chunk files: no tensor
    is recomputed.
    """
    out = Path(canonical(out_path))  # "constants/.." would stage inside the directory it replaces
    check_replaceable(out)  # the build checked it before any task ran; something may have appeared since
    spare = None if out.suffix == ".zip" else placer.spare(out)
    layout = layout or Layout.of(meta["constants"])
    arrays = layout.arrays
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_stages(out)
        stage_dir, kept = pack_spare.claim(spare, out, set(arrays), PACKED_ARRAY, placer.layout)
        stage_dir = stage_dir or Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as err:
        raise BundleIOError(f"cannot write bundle: {err}", str(out)) from None
    staged_zip = stage_dir.with_name(stage_dir.name + ".zip.tmp")  # unique per build, like stage_dir
    try:
        listing = write_directory(stage_dir, meta, placer, layout, chunks, kept)
        stamp = None
        if out.suffix == ".zip":
            write_zip(stage_dir, staged_zip)
            _swap_into_place(staged_zip, out)
        else:
            record = None if spare is None else pack_spare.describe(stage_dir, arrays, listing, placer.layout,
                                                                    kept.checked)
            stamp = pack_spare.stamp(stage_dir, listing, record)  # the swap keeps every file's inode and mtime
            _swap_into_place(stage_dir, out)
            pack_spare.park(stage_dir, spare)  # the replaced bundle, if any: the next pack's stage
            pack_spare.remember(spare, record)
        return listing_digest(listing), stamp
    except OSError as err:
        raise BundleIOError(f"cannot write bundle: {err}", str(out)) from None
    finally:
        for leftover in (stage_dir, staged_zip):  # after a swap: the previous bundle, file or directory
            pack_spare.remove(leftover)


def write_directory(root: Path, meta: dict, placer: Placer, layout: Layout, chunks: list[str] | None = None,
                    kept: pack_spare.Kept | None = None) -> dict[str, str]:
    """Write the bundle's metadata and place its arrays (the packed array's ``chunks``: cache objects, when
    given); return the sha256 of every file written, by relative path (the listing ``listing_digest`` hashes:
    nothing is read back or walked). ``layout``: where the constants live (``Layout``); ``kept``: array
    directories a reused stage already holds (``pack_spare``), each used when its record or the placer finds it as
    placed, else replaced."""
    (root / "constants").mkdir(parents=True, exist_ok=True)
    known: dict[str, str] = {}
    _write_pieces(root, "zarr.json", zarr_plain.group_pieces(meta), known)
    _write_file(root, "constants/zarr.json", zarr_plain.dumps(zarr_plain.group_meta({})), known)
    for array, h in layout.arrays.items():
        placed = _placed_tensor(placer, h, root, array, kept)
        known.update({f"{array}/{rel}": digest for rel, digest in placed.items()})
    size, count = _chunking(layout.packed_bytes)
    if chunks is not None and len(chunks) != count:
        raise ValueError(f"{len(chunks)} chunks given for a packed array of {count}")  # a stage bug
    if count:
        array = root / PACKED_ARRAY
        array.mkdir()
        _write_file(root, f"{PACKED_ARRAY}/zarr.json",
                    zarr_plain.dumps(zarr_plain.array_meta((size * count,), "uint8", 1, (size,), {})), known)
        if chunks is None and isinstance(meta["constants"], zarr_plain.RawJSON):
            raise ValueError("a stored constant table comes with its packed chunks")  # a stage bug
        pieces = packed_chunks(meta)[1] if chunks is None else None  # chunks given: their layout is not needed
        for i in range(count):
            dest = array / f"c.{i}"
            known[f"{PACKED_ARRAY}/c.{i}"] = (placer.chunk(pieces[i], size, dest) if pieces is not None
                                              else placer.object(chunks[i], dest))
    return known


def _placed_tensor(placer: Placer, h: str, root: Path, rel: str, kept: pack_spare.Kept | None) -> dict[str, str]:
    dest = root / rel
    if kept is None:
        return placer.tensor(h, dest)
    if rel in kept.arrays:
        # a tree's record answers for the arrays it lists (a changed one is replaced unasked); else the placer
        found = kept.placed(rel, h, dest) if rel in kept.record else placer.placed(h, dest)
        if found is not None:
            return found
        pack_spare.remove(dest)
    return kept.link(rel, h, dest) or placer.tensor(h, dest)


def _write_pieces(root: Path, rel: str, pieces: list[bytes], known: dict[str, str]) -> None:
    digest = hashlib.sha256()
    with open(root / rel, "wb") as f:
        for piece in pieces:
            f.write(piece)
            digest.update(piece)
    known[rel] = digest.hexdigest()


def _write_file(root: Path, rel: str, data: bytes, known: dict[str, str]) -> None:
    (root / rel).write_bytes(data)
    known[rel] = sha256_hex(data)


STALE_STAGE_S = 86400  # a stage directory a day old is a killed build's leftover, not a running build's


def _swap_into_place(staged: Path, out: Path) -> None:
    """Put ``staged`` (a directory or a file) at ``out`` so that ``out`` is always the previous bundle
    or the new one, whole, even with concurrent builds of one output or a crash in between.

    Linux: ``renameat2(RENAME_EXCHANGE)`` swaps the two atomically (``staged`` then holds the previous
    bundle, which the caller removes). Elsewhere, or on a filesystem without it: under a lock file,
    the previous bundle is renamed aside, the new one renamed in, and the previous one put back if that
    fails.
    """
    for _ in range(8):  # concurrent builds may create/swap ``out`` between our attempts
        if not os.path.lexists(out):
            try:
                os.replace(staged, out)
                return
            except OSError as err:
                if err.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR):
                    raise
                continue  # another build put its bundle there first: swap with it
        swapped = _exchange(staged, out)
        if swapped is None:
            break  # no RENAME_EXCHANGE here
        if swapped:
            return
    with _lock(out):
        if not os.path.lexists(out):
            os.replace(staged, out)
            return
        aside = out.with_name(f".{out.name}.old-{uuid.uuid4().hex}")
        os.replace(out, aside)
        try:
            os.replace(staged, out)
        except OSError:
            os.replace(aside, out)
            raise
        pack_spare.remove(aside)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool | None:
    """Atomically swap paths ``a`` and ``b``; False when ``b`` vanished, None when unsupported."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return None
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    import ctypes

    code = ctypes.get_errno()
    if code == errno.ENOENT and os.path.lexists(a):
        return False
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return None
    raise OSError(code, os.strerror(code), str(b))


@functools.cache
def _renameat2():
    if sys.platform != "linux":
        return None
    import ctypes  # loaded by the first pack, not by every command (3 ms)

    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # glibc < 2.28, or no libc symbol table
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


@contextlib.contextmanager
def _lock(out: Path):
    """An exclusive lock beside ``out`` (POSIX flock), serialising the rename-aside fallback."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; renames there fail loudly instead of racing silently
        yield
        return
    with open(out.with_name(f".{out.name}.lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _stage_names(out: Path) -> re.Pattern[str]:
    """Names ``run`` gives its stages beside ``out``: mkdtemp's 8 random characters (+ ``.zip.tmp``) and the
    rename-aside ``.old-<uuid>``. Nothing else beside the output is ever removed."""
    name = re.escape(out.name)
    return re.compile(rf"\.{name}\.(?:[a-z0-9_]{{8}}(?:\.zip\.tmp)?|old-[0-9a-f]{{32}})")


def _remove_stale_stages(out: Path) -> None:
    """Remove stage directories and zips of builds killed while packing ``out`` (a day old)."""
    now = time.time()
    ours = _stage_names(out)
    with os.scandir(out.parent) as entries:  # names only: pathlib's glob cost ~0.5 ms a pack
        names = [e.name for e in entries if ours.fullmatch(e.name)]
    for leftover in (out.parent / name for name in names):
        if not _looks_staged(leftover):
            continue
        with contextlib.suppress(OSError):
            if now - leftover.lstat().st_mtime > STALE_STAGE_S:
                pack_spare.remove(leftover)


def _looks_staged(path: Path) -> bool:
    """A stage is a (partial) bundle directory or a zip being written: a directory holding more than a bundle's
    top-level entries is someone's data, whatever its name."""
    if path.is_symlink():
        return False
    if path.is_dir():
        return {p.name for p in path.iterdir()} <= {"zarr.json", "constants"}
    return path.is_file()


def entries(root: Path) -> list[str]:
    """Sorted relative paths (posix) of every file under a bundle directory."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def write_zip(root: Path, dest: Path) -> None:
    """Byte-reproducible zip: sorted entries, fixed timestamps, stored (chunks are already compressed)."""
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_STORED) as zf:
        for rel in entries(root):
            info = zipfile.ZipInfo(rel, date_time=ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            zf.writestr(info, (root / rel).read_bytes())


def bundle_digest(path: str | os.PathLike) -> str:
    """sha256 of the sorted listing (relative path, sha256 of bytes); equal for directory and zip forms. Reads
    every file: pack itself takes the digest from what it wrote (``listing_digest``)."""
    path = Path(path)
    if path.is_dir():
        return _sorted_listing_digest((rel, sha256_hex((path / rel).read_bytes())) for rel in entries(path))
    zf = zipfile.ZipFile(path)  # a name listed twice is hashed twice: a duplicate never hides
    return _sorted_listing_digest((name, sha256_hex(zf.read(name))) for name in sorted(zf.namelist())
                                  if not name.endswith("/"))


def listing_digest(listing: dict[str, str]) -> str:
    """``bundle_digest`` of the directory ``write_directory`` wrote, from its complete listing (relative path ->
    sha256 of the file's bytes): nothing walked or read."""
    return _sorted_listing_digest((rel, listing[rel]) for rel in sorted(listing))


def _sorted_listing_digest(items: Iterable[tuple[str, str]]) -> str:
    import hashlib  # a no-op imports this module's declaration, not hashlib

    digest = hashlib.sha256()
    for rel, sha in items:
        digest.update(f"{rel}\t{sha}\n".encode())
    return digest.hexdigest()


def compute(inputs: Mapping[str, Any], params: Mapping[str, Any], ctx: StageContext) -> dict[str, Any]:
    """The programs and the constant table go into the manifest as the canonical JSON the cache holds, never
    decoded (``RawJSON``)."""
    graphs = [{**g, "program": zarr_plain.RawJSON(inputs["program"][g["name"]])} for g in params["graphs"]]
    storage = {**inputs["stored"], "constants": zarr_plain.RawJSON(inputs["constants"])}  # thousands: not decoded
    meta = manifest(params["name"], params["target"], graphs, inputs["variables"], inputs["var_formats"], storage)
    layout = Layout(**storage["layout"])
    digest, stamp = run_stamped(meta, ctx.placer(storage.get("packs", {})), ctx.out, storage.get("chunks"), layout)
    if stamp is not None:
        ctx.extra[OUTPUT_STAMP] = stamp  # the runner records it for the no-op's check, instead of walking the tree
    return {"digest": Ref(digest)}


STAGE = Stage("pack", VERSION, compute, outputs=("digest",),
              inputs=(Input("codegen", "program", form=TEXT), Input("dedupe", "variables"),
                      Input("formats.assign", "var_formats"), Input("formats.weights", "stored"),
                      Input("formats.weights", "constants", form=TEXT)),
              params=("bundle", "target", "graph options"), scope=BUNDLE, writes_bundle=True,
              preload=("bundle_pipeline.cache.tensors",))  # placing arrays: the tensor store's array side
