"""Open the user's input files (specs, models, external data, feeds) safely: regular files only, never blocking.

``open(path)`` on a FIFO blocks until a writer appears, and reading ``/dev/zero`` never ends. Every input file is
therefore opened with ``O_NONBLOCK`` (a FIFO opens at once) and checked with ``fstat`` on the open descriptor
(no race between check and read): anything but a regular file is refused with ``NotRegularFile``, an ``OSError``
whose message says what the path is. Also what this tool trusts about files it placed itself (hard links to
cache entries): a file is the one recorded while its (size, mtime_ns, inode) are (``identity``). Only ``os`` and
``stat``: the CLI's import path stays light.
"""

from __future__ import annotations

import os
import stat

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link"))


class NotRegularFile(OSError):
    """The path exists but is a directory, FIFO, device or socket, not a regular file."""


class TooLarge(OSError):
    """A regular file larger than the caller allows."""


def kind(mode: int) -> str:
    """What a stat mode describes, for messages: "a regular file", "a FIFO (named pipe)", ..."""
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((name for test, name in _KINDS if test(mode)), "a special file")


def open_regular(path: str | os.PathLike[str], follow_symlinks: bool = True) -> int:
    """A read-only descriptor of the regular file at ``path``; ``NotRegularFile`` for anything else.

    ``follow_symlinks=False`` also refuses a symbolic link as the last path component (``O_NOFOLLOW``)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as err:
        if not follow_symlinks and os.path.islink(path):
            raise NotRegularFile(err.errno, f"{path} is a symbolic link", os.fspath(path)) from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise NotRegularFile(0, f"{path} is {kind(mode)}, not a regular file", os.fspath(path))
    return fd


def regular_opener(path: str, flags: int) -> int:
    """``open(path, mode, opener=regular_opener)``: the file object keeps its name; a FIFO or device is refused
    (``NotRegularFile``) without blocking."""
    fd = os.open(path, flags | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise NotRegularFile(0, f"{path} is {kind(mode)}, not a regular file", os.fspath(path))
    return fd


def read_regular(path: str | os.PathLike[str], max_bytes: int | None = None) -> bytes:
    """The bytes of a regular file, refused (``TooLarge``) when it holds more than ``max_bytes``."""
    fd = open_regular(path)
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(fd).st_size
        if max_bytes is not None and size > max_bytes:
            raise TooLarge(0, f"{path} holds {size} bytes, more than the {max_bytes} allowed", os.fspath(path))
        return f.read(size)  # what fstat saw, not a max_bytes-sized buffer (read(n) allocates n up front)


def describe_error(err: OSError) -> str:
    """An OSError as a short phrase (its strerror: ours say what the path is, the OS's what went wrong)."""
    return err.strerror or str(err)


def identity(path: str | os.PathLike[str]) -> list[int]:
    """[size, mtime_ns, inode] of a file: it is the file recorded with these while they match."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def tree_stamp(rows: list[list]) -> str:
    """The stat fingerprint of a tree from one ``[relative path, size, mtime_ns, inode]`` row a file (any order)."""
    from .hashing import hash_json

    return hash_json(sorted(rows))


def holds_exactly(directory: str | os.PathLike[str], recorded: dict[str, list]) -> bool:
    """Whether ``directory`` holds the files named in ``recorded`` and nothing else, each with the recorded
    ``identity`` (the first three items of its row); False when it cannot be read."""
    try:
        if sorted(os.listdir(directory)) != sorted(recorded):
            return False
        return all(identity(os.path.join(directory, name)) == list(row[:3]) for name, row in recorded.items())
    except (OSError, TypeError, ValueError):
        return False
