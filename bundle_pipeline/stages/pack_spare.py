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

Nothing here is trusted: a slot that is missing, on another file system (EXDEV) or taken by another build
means a fresh stage; a slot already filled when parking means the tree is removed, as before. ``cache gc``
empties the slots (their files are links to entries, which they would keep on disk).
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path


def claim(spare: Path | None, out: Path) -> Path | None:
    """Rename the slot ``spare`` to a fresh stage name beside ``out``; None when there is nothing to claim."""
    if spare is None:
        return None
    for _ in range(4):
        stage = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}")  # a name like mkdtemp's (pack._stage_names)
        if os.path.lexists(stage):
            continue
        try:
            os.rename(spare, stage)
        except OSError:  # no slot, another build took it, another file system: a fresh stage
            return None
        if stage.is_dir() and not stage.is_symlink():
            return stage
        _remove(stage)  # not a tree (nothing of ours puts a file there): not reused
        return None
    return None


def prune(root: Path, arrays: set[str], packed: str) -> set[str]:
    """Leave in the claimed stage ``root`` only array directories named in ``arrays`` (paths relative to the
    root, ``constants/<name>``), without the root's files or the ``packed`` array; return those left."""
    kept: set[str] = set()
    for top in _entries(root):
        if top.name != "constants" or not top.is_dir() or top.is_symlink():
            _remove(top)
            continue
        for entry in _entries(top):
            rel = f"constants/{entry.name}"
            if rel in arrays and rel != packed and entry.is_dir() and not entry.is_symlink():
                kept.add(rel)
            else:
                _remove(entry)
    return kept


def park(previous: Path, spare: Path | None) -> None:
    """Move the tree a swap put at ``previous`` (the replaced bundle) to the slot; removed when it cannot go."""
    if spare is None or not previous.is_dir() or previous.is_symlink():
        return
    try:
        spare.parent.mkdir(parents=True, exist_ok=True)
        os.rename(previous, spare)
    except OSError:  # a slot already filled (another build), another file system: the caller removes it
        return


def _entries(directory: Path) -> list[os.DirEntry]:
    with os.scandir(directory) as it:
        return list(it)


def _remove(entry: os.DirEntry | Path) -> None:
    path = Path(entry)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
