"""Owns ``state/stat.json`` and ``state/outputs.json``: this machine's input stat signatures and output records.

On-disk state
-------------
One JSON file kept on the *local* disk: ``<root>/state/stat.json`` when the cache root is local,
else ``<state_dir>/stat.json`` with state_dir defaulting to
``~/.cache/bundle-pipeline/state/<hash of root>/``, since the entries describe this machine's files::

    {"v": 1, "entries": {"/abs/path/model.onnx": [size, mtime_ns, inode, device, "<blake3 hex>"]}}

External-data files are hashed by the byte ranges the weights take from them (``range_hashes``: each range's
tensor hash, which is also the stored tensor's name, so a cold build hashes those bytes once), in an entry
named ``"ranges\0" + path``: ``[size, mtime_ns, inode, device, {range key: hash}]``, and for a file of several
ranges a sixth element, ``{range key: xxh3-128 of its bytes}``: when such a file is written again (one tensor
edited in place, or the whole model exported anew), the ranges that still print the same keep their hashes and
only the others are hashed (``range_hashes``).

A file whose current ``os.stat`` gives the same (size, mtime_ns, inode, device) as its entry is
not read again, as in make, git and Bazel; anything else is re-hashed, streaming 8 MiB reads
through one incremental blake3 hasher. Rewriting a file without changing its size, mtime and
inode (``os.utime`` to the old time) is therefore not noticed, by design.

Three rules keep a stale entry from ever being *recorded*:

- a file modified while it was read (signature before != after) is re-read, and never recorded;
- a file modified less than ``racy_window_ns`` (2 s) before the read started is hashed but not
  recorded: on filesystems with coarse timestamps (1-2 s on ext3/FAT/HFS+/some NFS, a clock
  tick on ext4) a second write in that window could keep the same mtime ("racy git" problem).
  While one build runs (``one_build``) the *range* hashes of such an external-data file are kept in this
  process's memory for that build only, so the planner's hashes of a weight file edited just before the run
  also serve the task's lookup. That task checks them: each tensor it reads and stores is hashed from its
  bytes, and a hash that differs from the range hash the key was made of ends the build (``parse.weights``),
  so a file rewritten within one timestamp tick cannot file new bytes under the old key. Whole files (the
  models) are hashed again by their task, as before: parse does not hash the bytes it reads.
- a range's hash is taken over from an older signature only when its fingerprint matches one *recorded* with
  that hash (``_unchanged``), never one kept in memory: a file rewritten within one tick while it was read
  could pair a fingerprint with the hash of other bytes there, and the pair must not reach the disk.

The file is rewritten atomically (temp + ``os.replace``) after each new entry, merged with what
is on disk at that moment, so concurrent processes can at worst lose each other's entries
(which only costs a re-hash). Inside ``deferred()`` (the planner, which hashes every new model of a cold
build) new entries are kept in memory and saved once when it ends: a read-merge-write per file would cost
O(files^2). An unreadable or corrupt state file is treated as empty.

Output state
------------
``outputs.json`` beside ``stat.json`` (``OutputState``) records, per output path of *this* machine,
which action wrote it and the output's stat fingerprint then::

    {"v": 1, "entries": {"/abs/path/demo.bundle": {"key": "<pack action key>", "stamp": "<hash>"}}}

It lives here, not in the (possibly shared) action record, because it describes this machine's file:
two machines, or two output paths, building the same bundle from one cache must not overwrite each
other's stamp and re-pack forever. Same write discipline as ``stat.json``.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import blake3

from bundle_pipeline.files import NotRegularFile, kind, regular_opener
from bundle_pipeline.hashing import canonical_json

if TYPE_CHECKING:
    from bundle_pipeline.cache.backend_local import LocalBackend

STATE_FORMAT = 1
READ_BYTES = 8 << 20
RACY_WINDOW_NS = 2_000_000_000
MMAP_MIN_BYTES = 16 << 20
_HASH_RE = re.compile(r"[0-9a-f]{64}")
_HEX_RE = re.compile(r"[0-9a-f]*")
RANGES = "ranges\0"  # key prefix of a file's range-hash entry (no absolute path starts with it)
_FILE_LOCKS: dict[str, threading.Lock] = {}
_FILE_LOCKS_GUARD = threading.Lock()
_PARSED: dict[str, tuple[tuple[int, ...], dict[str, list[Any]]]] = {}  # state file -> (its signature, entries)
_BUILD_GUARD = threading.Lock()
_builds = 0  # builds running in this process (``one_build``)
_recent: dict[str, list[Any]] = {}  # their hashes of files inside the racy window, entries as in stat.json


@contextlib.contextmanager
def one_build() -> Iterator[None]:
    """Within: the range hashes of recently modified external-data files are kept in memory (never on disk) while
    the file keeps its signature, until the last build running in this process ends; outside, such a file is
    hashed every time. What a task then reads is checked against them (``TaskContext.check_read``)."""
    global _builds
    with _BUILD_GUARD:
        _builds += 1
    try:
        yield
    finally:
        with _BUILD_GUARD:
            _builds -= 1
            if not _builds:
                _recent.clear()


def _keep_recent(key: str, value: list[Any]) -> None:
    with _BUILD_GUARD:
        if _builds:
            old = _recent.get(key)
            if old is not None and old[:4] == value[:4]:
                value = _merged(old, value)
            _recent[key] = value


def _merged(old: list[Any], new: list[Any]) -> list[Any]:
    """A range entry with the hashes (and fingerprints) of ``old`` and ``new``, both at one signature; a range
    ``new`` hashed keeps only the fingerprint taken with that hash (a fingerprint always goes with its hash)."""
    prints = {**{k: p for k, p in _prints(old).items() if k not in new[4]}, **_prints(new)}
    return [*new[:4], {**old[4], **new[4]}, *([prints] if prints else [])]


def _unchanged(earlier: list[Any] | None, prints: dict[str, str]) -> dict[str, str]:
    """key -> hash for each range of ``prints`` (key -> fingerprint of its bytes now) that ``earlier``, the file's
    entry at its previous signature, hashed when its bytes had that fingerprint.

    Why: a weight file written in place, or written again whole, changes its stat, and its ranges would all be
    hashed again (blake3: 49 ms for a 378 MB file here, on both cores) to find the one tensor that changed; xxh3
    reads it in 12 ms, bounded by memory. The fingerprint answers "the same bytes as when hashed", what the stat
    signature answers for an untouched file; like the signature it is no defence against someone forging their
    own file (a crafted xxh3 collision, as an ``os.utime`` back to the old time, goes unseen)."""
    if earlier is None:
        return {}
    recorded = _prints(earlier)
    return {k: earlier[4][k] for k, p in prints.items() if recorded.get(k) == p and k in earlier[4]}


def _prints(entry: list[Any] | None) -> dict[str, str]:
    """A range entry's fingerprints (range key -> xxh3-128 of its bytes), when it has them."""
    return entry[5] if entry is not None and len(entry) > 5 else {}


def _recent_entry(key: str, sig: Signature) -> list[Any] | None:
    with _BUILD_GUARD:
        entry = _recent.get(key)
    return entry if entry is not None and tuple(entry[:4]) == sig else None


def _file_lock(path: str) -> threading.Lock:
    """One lock per state file in this process: two bundles of one build share a cache root through two
    ``Cache`` objects, and their read-merge-write of one file must not lose each other's entries."""
    with _FILE_LOCKS_GUARD:
        return _FILE_LOCKS.setdefault(os.path.abspath(path), threading.Lock())

Signature = tuple[int, int, int, int]
RangeHash = Callable[[int, list[str], "dict[str, str] | None"], dict[str, str]]  # (fd, keys, prints to fill)


def signature(st: os.stat_result) -> Signature:
    """The part of a stat that changes whenever the content can have changed."""
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)


def hash_stream(f: Any) -> str:
    """blake3 of a binary file object read to the end (equals ``hash_bytes``): a large file is mapped and hashed
    by every core at once (no copy), a small one read in 8 MiB pieces."""
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    size = os.fstat(f.fileno()).st_size
    if size >= MMAP_MIN_BYTES:
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            hasher.update(mapped)
        return hasher.hexdigest()
    buf = bytearray(min(READ_BYTES, size + 1))  # sized to the file: 8 MiB of new memory faults in for ~7 ms here
    view = memoryview(buf)
    while n := f.readinto(buf):
        hasher.update(view[:n])
    return hasher.hexdigest()


def _valid_entries(data: bytes) -> dict[str, list[Any]]:
    try:
        payload = json.loads(data)
    except (ValueError, RecursionError):  # truncated, garbled or nested past the parser's depth: start over
        return {}
    if not isinstance(payload, dict) or payload.get("v") != STATE_FORMAT:
        return {}
    entries = payload.get("entries")
    if not isinstance(entries, dict):
        return {}
    return {k: v for k, v in entries.items() if isinstance(k, str) and _valid_entry(k, v)}


def _valid_entry(key: str, value: Any) -> bool:
    if not (isinstance(value, list) and len(value) in (5, 6)
            and all(isinstance(x, int) and not isinstance(x, bool) for x in value[:4])):
        return False
    if key.startswith(RANGES):
        return all(isinstance(part, dict) and _all_hex(part, width)
                   for part, width in zip(value[4:], (64, 32), strict=False))
    return len(value) == 5 and _is_hash(value[4])


def _all_hex(part: dict, width: int) -> bool:
    """Whether every key of ``part`` is a string and every value ``width`` lowercase hex digits: one scan of them all
    (a range entry holds one a tensor of the file: thousands, read by every no-op; a match each took twice as long)."""
    values = part.values()
    return (all(type(k) is str for k in part) and all(type(v) is str and len(v) == width for v in values)
            and _HEX_RE.fullmatch("".join(values)) is not None)


def _is_hash(value: Any) -> bool:
    return isinstance(value, str) and _HASH_RE.fullmatch(value) is not None


def _key_path(key: str) -> str:
    return key.removeprefix(RANGES)


class StatState:
    """Path -> (stat signature, content hash) cache backed by one JSON file; thread-safe."""

    racy_window_ns = RACY_WINDOW_NS

    def __init__(self, backend: LocalBackend, rel: str):
        self._backend = backend
        self._rel = rel
        self._lock = _file_lock(backend.path(rel))
        self._entries: dict[str, list[Any]] | None = None  # loaded on first use
        self._pending: dict[str, list[Any]] | None = None  # entries not saved yet, inside ``deferred()``

    @property
    def path(self) -> str:
        return self._backend.path(self._rel)

    def file_hash(self, path: str | os.PathLike[str]) -> str:
        """Content hash of a local file; FileNotFoundError when it does not exist."""
        abspath = os.path.abspath(os.fspath(path))
        st = os.stat(abspath)
        if not stat.S_ISREG(st.st_mode):  # a FIFO would block the read, a device never end it
            raise NotRegularFile(0, f"{abspath} is {kind(st.st_mode)}, not a regular file", abspath)
        sig = signature(st)
        with self._lock:
            entry = self._loaded().get(abspath)
        if entry is not None and tuple(entry[:4]) == sig:
            return entry[4]
        h, read_sig, trusted = self._hash_file(abspath)
        if trusted:
            self._record(abspath, read_sig, h)
        return h

    def _hash_file(self, path: str) -> tuple[str, Signature, bool]:
        """Hash a file; also return the signature it had while read and whether to record it."""
        for _ in range(3):
            start_ns = time.time_ns()
            with open(path, "rb", opener=regular_opener) as f:  # swapped for a FIFO since the stat: refused
                before = signature(os.fstat(f.fileno()))
                h = hash_stream(f)
                after = signature(os.fstat(f.fileno()))
            if before == after:
                return h, after, after[1] < start_ns - self.racy_window_ns
        return h, after, False  # still being written: use what we read, remember nothing

    def range_hashes(self, path: str | os.PathLike[str], keys: list[str], hash_ranges: RangeHash,
                     fingerprint: Callable[[int, list[str]], dict[str, str]] | None = None) -> dict[str, str]:
        """Hashes of named byte ranges of a local file, key -> hash; ``hash_ranges(fd, keys, prints)`` computes those
        not remembered for the file's current stat signature (FileNotFoundError, NotRegularFile as ``file_hash``).

        The same rules as ``file_hash``: a file modified while read is read again and nothing recorded, a file
        modified within the racy window is hashed but not recorded. ``fingerprint(fd, keys)``: for a file of
        several ranges, each range's xxh3-128, recorded beside its hash; a range whose fingerprint is the one
        recorded at the file's previous signature keeps its hash unhashed (``_unchanged``). With nothing recorded
        to compare with, ``hash_ranges`` takes the fingerprints with the hashes, into its ``prints`` dict (one
        pass over the file; None: none wanted)."""
        abspath = os.path.abspath(os.fspath(path))
        for _ in range(3):
            start_ns = time.time_ns()
            with open(abspath, "rb", opener=regular_opener) as f:  # a FIFO or device: refused, never read
                before = signature(os.fstat(f.fileno()))
                known = self._known(abspath, before)
                missing = [k for k in keys if k not in known]
                got, prints = self._hash_missing(f.fileno(), abspath, before, missing, hash_ranges,
                                                 fingerprint if len(keys) > 1 else None)
                after = signature(os.fstat(f.fileno()))
            if before == after:
                break
        hashes = {**known, **got}
        if got and before == after:
            entry = [*after, got, *([prints] if prints else [])]
            if after[1] < start_ns - self.racy_window_ns:
                self._record_ranges(abspath, entry)
            else:
                _keep_recent(RANGES + abspath, entry)
        return {k: hashes[k] for k in keys}

    def _hash_missing(self, fd: int, abspath: str, sig: Signature, missing: list[str], hash_ranges: RangeHash,
                      fingerprint: Callable[[int, list[str]], dict[str, str]] | None
                      ) -> tuple[dict[str, str], dict[str, str]]:
        """The hashes of the ``missing`` ranges of file ``fd`` (at signature ``sig``) and the fingerprints to record
        with them: those whose fingerprint matches the one recorded at the file's previous signature keep their
        recorded hash, the rest are hashed; with no fingerprints recorded, ``hash_ranges`` takes them while it
        hashes. ``fingerprint`` None: no fingerprints (a file of one range)."""
        if not missing:
            return {}, {}
        earlier = self._printed_before(abspath, sig) if fingerprint is not None else None
        prints = fingerprint(fd, missing) if fingerprint is not None and earlier is not None else {}
        same = _unchanged(earlier, prints)
        rest = [k for k in missing if k not in same]
        taken: dict[str, str] | None = {} if fingerprint is not None and earlier is None else None
        got = {**same, **(hash_ranges(fd, rest, taken) if rest else {})}
        return got, {**prints, **(taken or {})}

    def _printed_before(self, abspath: str, sig: Signature) -> list[Any] | None:
        """The file's recorded range entry when it is at another signature than ``sig`` and has fingerprints.
        Recorded entries only: one kept in memory (``_recent``) may pair a fingerprint and a hash of different
        bytes (a file rewritten within one tick while it was read)."""
        with self._lock:
            entry = self._loaded().get(RANGES + abspath)
        return entry if entry is not None and tuple(entry[:4]) != sig and _prints(entry) else None

    def remembered_ranges(self, path: str | os.PathLike[str], keys: list[str]) -> dict[str, str] | None:
        """``range_hashes`` when every range is remembered for the file's current stat (as ``file_hash``: the stat
        answers, the file is not opened), else None; FileNotFoundError when it does not exist."""
        abspath = os.path.abspath(os.fspath(path))
        st = os.stat(abspath)
        if not stat.S_ISREG(st.st_mode):
            return None  # range_hashes refuses it when it opens it
        known = self._known(abspath, signature(st))
        return {k: known[k] for k in keys} if all(k in known for k in keys) else None

    def known_ranges(self, path: str | os.PathLike[str]) -> tuple[Signature, dict[str, str]] | None:
        """The range hashes remembered for a file and the stat signature they hold for (the caller compares it
        with the file it opened), or None; nothing is read or hashed. Never a recent file's (``one_build``): what
        stores a tensor under its hash without hashing its bytes (``parse.weights``) trusts only recorded ones."""
        with self._lock:
            entry = self._loaded().get(RANGES + os.path.abspath(os.fspath(path)))
        return None if entry is None else (tuple(entry[:4]), dict(entry[4]))

    def _known(self, abspath: str, sig: Signature) -> Mapping[str, str]:
        """Range hashes remembered for the file at signature ``sig``: on disk, or by this build (``one_build``)."""
        with self._lock:
            entry = self._loaded().get(RANGES + abspath)
        known = entry[4] if entry is not None and tuple(entry[:4]) == sig else {}  # read-only: no copy
        recent = _recent_entry(RANGES + abspath, sig)
        return known if recent is None else {**known, **recent[4]}

    def _record_ranges(self, abspath: str, new: list[Any]) -> None:
        """Record range entry ``new`` (``[*signature, hashes, prints?]``), merged with the one at that signature."""
        key = RANGES + abspath
        with self._lock:
            entry = (self._loaded() if self._pending is not None else self._read_disk()).get(key)
            self._put(key, _merged(entry, new) if entry is not None and entry[:4] == new[:4] else new)

    def _loaded(self) -> dict[str, list[Any]]:
        if self._entries is None:
            self._entries = self._read_disk()
        return self._entries

    def _read_disk(self) -> dict[str, list[Any]]:
        """The entries on disk; parsed once per version of the file in this process (every task's ``Cache`` has
        a StatState of its own). An older version than the latest only lacks entries: each is a fact about a
        file at a signature, true whenever it was written, so a stale read costs re-hashing, nothing else."""
        path = self.path
        try:
            with open(path, "rb") as f:
                version = tuple(signature(os.fstat(f.fileno())))
                parsed = _PARSED.get(path)
                if parsed is not None and parsed[0] == version:
                    return dict(parsed[1])
                data = f.read()
        except FileNotFoundError:
            return {}
        entries = _valid_entries(data)
        _PARSED[path] = (version, entries)
        return dict(entries)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Within: new entries are recorded in memory only; at the end they are saved in one read-merge-write."""
        with self._lock:
            outer = self._pending is not None
            if not outer:
                self._pending = {}
        try:
            yield
        finally:
            if not outer:
                with self._lock:
                    pending, self._pending = self._pending or {}, None
                    if pending:
                        self._save(pending)

    def _record(self, path: str, sig: Signature, h: str) -> None:
        with self._lock:
            self._put(path, [*sig, h])

    def _put(self, key: str, value: list[Any]) -> None:
        """Record one entry (the caller holds the lock): kept in memory inside ``deferred()``, else saved now."""
        if self._pending is not None:
            self._pending[key] = self._loaded()[key] = value
        else:
            self._save({key: value})

    def _save(self, new: dict[str, list[Any]]) -> None:
        """Merge ``new`` into what is on disk (other processes may have saved entries since we loaded) and write."""
        merged = self._read_disk()
        merged.update(new)
        self._entries = merged
        self._write(merged)

    def _write(self, entries: dict[str, list[Any]]) -> None:
        data = canonical_json({"v": STATE_FORMAT, "entries": entries})
        # Losing the state only costs re-hashing later, so a read-only or full disk is not an error
        with contextlib.suppress(OSError):
            self._backend.write_atomic(self._rel, data)

    def prune_missing(self) -> int:
        """Drop entries whose file is gone or changed; return how many were dropped."""
        with self._lock:
            entries = self._read_disk()
            keep = {}
            for path, entry in entries.items():
                try:
                    if signature(os.stat(_key_path(path))) == tuple(entry[:4]):
                        keep[path] = entry
                except OSError:
                    pass  # deleted or unreadable: the entry can never hit again
            dropped = len(entries) - len(keep)
            if dropped:
                self._write(keep)
            self._entries = keep
            return dropped

    def remove_temps(self, prefix: str, older_than_s: float = 0) -> int:
        """Remove leftover temp files (named ``prefix...``) of interrupted saves; return how many."""
        folder = os.path.dirname(self.path)
        try:
            names = [n for n in os.listdir(folder) if n.startswith(prefix)]
        except FileNotFoundError:
            return 0
        removed = 0
        now = time.time()
        for name in names:
            full = os.path.join(folder, name)
            with contextlib.suppress(FileNotFoundError):
                if older_than_s <= 0 or now - os.stat(full).st_mtime >= older_than_s:
                    os.unlink(full)
                    removed += 1
        return removed


class OutputState:
    """Output path -> record of the build that wrote it (``{"key", "stamp"}``), in one local JSON file."""

    def __init__(self, backend: LocalBackend, rel: str):
        self._backend = backend
        self._rel = rel
        self._lock = _file_lock(backend.path(rel))

    def get(self, path: str | os.PathLike[str]) -> dict[str, Any] | None:
        with self._lock:
            return self._read_disk().get(os.path.abspath(os.fspath(path)))

    def put(self, path: str | os.PathLike[str], record: dict[str, Any]) -> None:
        """Record (merged with what other processes saved meanwhile); a failed write only costs a re-pack."""
        with self._lock:
            entries = self._read_disk()
            entries[os.path.abspath(os.fspath(path))] = record
            with contextlib.suppress(OSError):
                self._backend.write_atomic(self._rel, canonical_json({"v": STATE_FORMAT, "entries": entries}))

    def prune_missing(self) -> int:
        """Drop the records of outputs that no longer exist; return how many."""
        with self._lock:
            entries = self._read_disk()
            keep = {p: r for p, r in entries.items() if os.path.lexists(p)}
            if len(keep) != len(entries):
                with contextlib.suppress(OSError):
                    self._backend.write_atomic(self._rel, canonical_json({"v": STATE_FORMAT, "entries": keep}))
            return len(entries) - len(keep)

    def _read_disk(self) -> dict[str, dict[str, Any]]:
        try:
            payload = json.loads(self._backend.read(self._rel))
        except (FileNotFoundError, ValueError, RecursionError):
            return {}
        entries = payload.get("entries") if isinstance(payload, dict) and payload.get("v") == STATE_FORMAT else None
        if not isinstance(entries, dict):
            return {}
        return {k: v for k, v in entries.items() if isinstance(k, str) and isinstance(v, dict)}
