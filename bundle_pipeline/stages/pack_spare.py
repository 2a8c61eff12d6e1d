"""The tree a re-pack swapped out, kept as the next pack's stage: unchanged arrays need no new directory.

Why: on the development VM a directory costs ~45 us to make and ~105 us to remove, so re-packing an
84-array bundle after a one-tensor edit spent ~30 ms making and removing directories that held the same
links as before. A pack that replaced a directory bundle ``out`` moves the previous tree (at its stage name
after the swap) to the cache's spare slot for ``out`` (``Cache.spare_tree``: this machine's state
directory, one slot an output path) instead of removing it. The next pack of ``out`` renames the slot to its
own fresh stage name (an atomic claim: of two builds, one gets it) and brings it to the new bundle: the
root's files and the packed array are removed and written again, arrays the new bundle lacks are removed,
and each array it keeps is checked file by file by the placer (``Placer.placed``: every file still the
cache's own, by size, mtime and inode, and nothing else there) or else removed and placed anew. What ends
in the stage is what a fresh stage would hold, byte for byte, and it is swapped in the same way.

Each pack also records the tree it swapped in (``<slot>.out.json``: the root's inode, and each array's tensor
hash and files with their size, mtime, inode and sha256); parking moves that record along with the tree
(``<slot>.json``), so the next pack checks a kept array with one ``listdir`` and a ``stat`` a file, not one
cache record an array. A record that does not match (another root, another layout, a file changed) only
means the placer's own check (or a fresh placement) for that array.

Nothing here is trusted: a slot that is missing, on another file system (EXDEV) or taken by another build
means a fresh stage; a slot already filled when parking means the tree is removed, as before. ``cache gc``
empties the slots (their files are links to entries, which they would keep on disk).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..files import holds_exactly, identity, tree_stamp

RECORD_VERSION = 1


@dataclass
class Kept:
    """A claimed tree: the array directories left in it and what its record says they hold."""

    arrays: set[str] = field(default_factory=set)
    record: dict[str, Any] = field(default_factory=dict)  # array path -> {"hash", "files": {name: stat + sha}}
    live: Path | None = None  # the bundle being replaced, and its record: arrays to link from (``link``)
    live_record: dict[str, Any] = field(default_factory=dict)
    checked: dict[str, dict[str, Any]] = field(default_factory=dict)  # arrays found as recorded: their entries

    def placed(self, rel: str, h: str, dest: Path) -> dict[str, str] | None:
        """The sha256 of each file of array ``rel`` when the record says it holds tensor ``h`` and every file
        is still the one recorded (and nothing else is there); else None."""
        known = self.record.get(rel)
        try:
            if known is None or known["hash"] != h or not holds_exactly(dest, known["files"]):
                return None
            self.checked[rel] = known
            return {name: row[3] for name, row in known["files"].items()}
        except (KeyError, TypeError, IndexError):  # a record of another shape
            return None


    def link(self, rel: str, h: str, dest: Path) -> dict[str, str] | None:
        """Make array ``rel`` at ``dest`` (absent) from the bundle being replaced, when its record says it holds
        tensor ``h``: its recorded files hard-linked, each checked to be the file recorded; else None (nothing
        left at ``dest``). A re-pack's first stage, with no kept tree, then reads no cache record an array."""
        known = self.live_record.get(rel)
        if self.live is None or known is None or known.get("hash") != h:
            return None
        src, dst = os.path.join(self.live, rel), os.fspath(dest)  # strings: pathlib costs more than the syscalls
        try:
            os.mkdir(dst)
        except OSError:  # there already (not ours), or no parent: the placer's way
            return None
        try:
            for name, (size, mtime_ns, ino, _) in known["files"].items():
                if "/" in name or name in (".", ".."):
                    raise ValueError(name)
                target = os.path.join(dst, name)
                os.link(os.path.join(src, name), target)
                if identity(target) != [size, mtime_ns, ino]:
                    raise FileExistsError(name)  # not the recorded file (replaced, or a concurrent swap)
            self.checked[rel] = known
            return {name: row[3] for name, row in known["files"].items()}
        except (OSError, KeyError, TypeError, ValueError):
            shutil.rmtree(dest, ignore_errors=True)  # made by this call
            return None


def claim(spare: Path | None, out: Path, arrays: set[str], packed: str, layout: str) -> tuple[Path | None, Kept]:
    """Rename the slot ``spare`` to a fresh stage name beside ``out`` and prune it to the array directories
    named in ``arrays``; (None, nothing kept) when there is no tree to claim. Either way the record of the
    bundle at ``out`` (the one being replaced) comes along, to link arrays from."""
    if spare is None:
        return None, Kept()
    live = _read_record(_out_record(spare), out, layout)
    stage, kept = _claim_slot(spare, out, arrays, packed, layout)
    return stage, Kept(kept.arrays, kept.record, out if live else None, live)


def _claim_slot(spare: Path, out: Path, arrays: set[str], packed: str, layout: str) -> tuple[Path | None, Kept]:
    for _ in range(4):
        stage = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}")  # a name like mkdtemp's (pack._stage_names)
        if os.path.lexists(stage):
            continue
        try:
            os.rename(spare, stage)
        except OSError:  # no slot, another build took it, another file system: a fresh stage
            return None, Kept()
        if stage.is_dir() and not stage.is_symlink():
            return stage, Kept(prune(stage, arrays, packed), _read_record(_record(spare), stage, layout))
        remove(stage)  # not a tree (nothing of ours puts a file there): not reused
        return None, Kept()
    return None, Kept()


def prune(root: Path, arrays: set[str], packed: str) -> set[str]:
    """Leave in the claimed stage ``root`` only array directories named in ``arrays`` (paths relative to the
    root, ``constants/<name>``), without the root's files or the ``packed`` array; return those left."""
    kept: set[str] = set()
    for top in _entries(root):
        if top.name != "constants" or not top.is_dir() or top.is_symlink():
            remove(top)
            continue
        for entry in _entries(top):
            rel = f"constants/{entry.name}"
            if rel in arrays and rel != packed and entry.is_dir() and not entry.is_symlink():
                kept.add(rel)
            else:
                remove(entry)
    return kept


def park(previous: Path, spare: Path | None) -> None:
    """Move the tree a swap put at ``previous`` (the replaced bundle) to the slot, with the record of it; the
    caller removes the tree when it cannot go."""
    if spare is None or not previous.is_dir() or previous.is_symlink():
        return
    try:
        spare.parent.mkdir(parents=True, exist_ok=True)
        os.rename(previous, spare)
    except OSError:  # a slot already filled (another build), another file system: the caller removes it
        return
    with contextlib.suppress(OSError):  # no record (a first pack, or one by an older version): checks by the placer
        os.replace(_out_record(spare), _record(spare))


def describe(stage: Path, arrays: dict[str, str], listing: dict[str, str], layout: str,
             checked: dict[str, dict[str, Any]] | None = None) -> dict[str, Any] | None:
    """The record of the tree at ``stage``, taken before it is swapped in (it is ours alone until then; the
    swap keeps its inodes): each array (path -> tensor hash) with its files' stats and sha256 (from
    ``listing``, the bundle's). ``checked``: arrays this pack found file by file as a record said
    (``Kept.checked``), whose entries are taken as they are, not stat'ed again. None when a file cannot be
    stat'ed (then the next pack checks the slow way)."""
    checked = checked or {}  # each entry was checked against the hash this pack placed there
    files: dict[str, dict[str, str]] = {rel: {} for rel in arrays if rel not in checked}
    for path, sha in listing.items():
        rel, _, name = path.rpartition("/")
        if rel in files:
            files[rel][name] = sha
    try:
        described = {rel: checked[rel] if rel not in files else
                     {"hash": h, "files": _stats(os.path.join(stage, rel), files[rel])} for rel, h in arrays.items()}
        return {"v": RECORD_VERSION, "layout": layout, "root": os.stat(stage).st_ino, "arrays": described}
    except OSError:
        return None


def stamp(stage: Path, listing: dict[str, str], record: dict[str, Any] | None) -> str | None:
    """``tasks.runner.output_stamp`` of the tree at ``stage`` from ``describe``'s record (its arrays' files) and
    a stat of each other file in ``listing`` (the root's and the packed array's): the tree holds exactly the
    listed files (``write_directory``). None without a record, or where paths do not join with "/"."""
    if record is None or os.sep != "/":
        return None
    rows = [[f"{rel}/{name}", *row[:3]] for rel, entry in record["arrays"].items()
            for name, row in entry["files"].items()]
    others = [path for path in listing if path.rpartition("/")[0] not in record["arrays"]]
    if len(rows) + len(others) != len(listing):
        return None  # the record and the listing disagree: leave it to the walk
    try:
        return tree_stamp(rows + [[path, *identity(os.path.join(stage, path))] for path in others])
    except OSError:
        return None


def remember(spare: Path | None, record: dict[str, Any] | None) -> None:
    """Keep ``describe``'s record of the tree just swapped in, for when it is parked. Best effort."""
    if spare is None or record is None:
        return
    tmp = spare.with_name(f"{spare.name}.{uuid.uuid4().hex}.tmp")
    try:
        spare.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(_orjson().dumps(record))
        os.replace(tmp, _out_record(spare))
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _orjson():
    import orjson  # what pack writes the manifest with; a no-op declares this module but never loads it

    return orjson


def _stats(directory: str, shas: dict[str, str]) -> dict[str, list]:
    return {name: [*identity(os.path.join(directory, name)), sha] for name, sha in shas.items()}


def _record(spare: Path) -> Path:
    return spare.with_name(spare.name + ".json")


def _out_record(spare: Path) -> Path:
    return spare.with_name(spare.name + ".out.json")


def _read_record(path: Path, stage: Path, layout: str) -> dict[str, Any]:
    """The arrays the record at ``path`` describes, when it describes the tree at ``stage`` (root inode) as placed
    with ``layout``; else {}."""
    try:
        record = _orjson().loads(path.read_bytes())
        if (record["v"], record["layout"], record["root"]) != (RECORD_VERSION, layout, os.stat(stage).st_ino):
            return {}
        arrays = record["arrays"]
        return arrays if isinstance(arrays, dict) else {}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _entries(directory: Path) -> list[os.DirEntry]:
    with os.scandir(directory) as it:
        return list(it)


def remove(entry: os.DirEntry | Path) -> None:
    """Remove a tree or a file of ours (a stage, or part of one); a link is removed, never followed."""
    path = Path(entry)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
