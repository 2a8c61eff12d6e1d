"""What a build may write over, checked before anything is written or any task runs.

A bundle may replace only a bundle (a directory or zip that this tool wrote, recognised by its manifest) or
a path that does not exist (an empty directory too: nothing is lost). Never:

- the spec's directory or any parent of it, a spec, an input model, the cache root, or anything that contains
  one of them (replacing a directory replaces everything under it);
- anything inside the cache (``cache verify`` would later delete it as a corrupt entry);
- a symbolic link, a FIFO, a device, an existing file or a non-empty directory that is not a bundle (external
  data files and feeds are files, never bundles, so they are covered);
- the same path as another spec of the same run.

Files the CLI writes (``dag -o``, ``exec -o DIR``'s ``NAME.npy``, ``split``'s graphs and spec, ``run --profile``)
follow ``check_new_file``: new, or with ``--force`` an existing regular file; never a protected input, a path
inside a bundle, a directory, a symbolic link or a special file; written with ``write_file_atomic``.

A refusal is one ``PARAM_INVALID`` line naming the path and why. The checks cost a few ``stat`` calls and, for an
existing output, a directory listing and the first and last 4 KiB of its manifest: they run before every build,
including a no-op one. Only ``os``, ``re`` and ``stat`` at import time (``zipfile`` when an output is a file).
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import ParamInvalid
from .files import kind, open_regular

MANIFEST = "zarr.json"
BUNDLE_TOP = frozenset({MANIFEST, "constants"})  # what pack writes at a bundle's top, nothing else
SIGNATURE_BYTES = 4096
# The root zarr.json of a bundle: zarr writes the attributes (our manifest, format_version first) first and
# node_type last. Reading its first and last 4 KiB tells a bundle from anything else without parsing it all.
_HEAD = re.compile(rb'\s*\{\s*"attributes"\s*:\s*\{\s*"format_version"\s*:\s*\d+\s*,\s*"name"\s*:')
_TAIL = re.compile(rb'"node_type"\s*:\s*"group"\s*\}\s*$')


@dataclass(frozen=True)
class Protected:
    """A path no bundle may replace, nor contain: ``what`` names it in the refusal."""

    path: str  # canonical (symlinks in it resolved)
    what: str
    no_inside: bool = False  # True for a cache root: no output may go inside it either


def canonical(path: str | os.PathLike[str]) -> str:
    """The absolute path with symlinks resolved in its parents, but not in its last component (a symlink
    there is refused, and replacing it would replace the link, not its target)."""
    path = os.path.abspath(os.fspath(path))
    head, name = os.path.split(path)
    if name in ("", ".", ".."):
        return os.path.realpath(path)
    return os.path.join(os.path.realpath(head), name)


def inside(path: str, root: str) -> bool:
    """``path`` is ``root`` or below it (both canonical)."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def protected_inputs(specs: Iterable) -> list[Protected]:
    """What the specs of one run read or keep: spec files and their directories, models, local cache roots."""
    out: list[Protected] = []
    real = _RealPaths()
    for spec in specs:
        if spec.spec_path:
            out.append(Protected(real(spec.spec_path), f"the spec {spec.spec_path}"))
            spec_dir = real(os.path.dirname(spec.spec_path))
            out.append(Protected(spec_dir, f"the spec's directory {spec_dir}"))
        out += [Protected(real(g.model), f"the model of graph {g.name} ({g.model})")
                for g in spec.graphs if isinstance(g.model, str)]
        if "://" not in spec.cache or spec.cache.startswith("file://"):
            root = real(spec.cache.removeprefix("file://"))
            out.append(Protected(root, f"the cache {root}", no_inside=True))
    return out


class _RealPaths:
    """``os.path.realpath`` of many paths in few directories: each directory is resolved once, then only a
    path's last component is looked at (``realpath`` walks every component of every path: 3,600 ``lstat`` calls
    for a 512-graph spec whose models share one directory)."""

    def __init__(self) -> None:
        self._dirs: dict[str, str] = {}

    def __call__(self, path: str | os.PathLike[str]) -> str:
        path = os.fspath(path)
        if ".." in path.split(os.sep):
            return os.path.realpath(path)  # ".." after a symlink is its target's parent: realpath's own walk
        head, name = os.path.split(os.path.abspath(path))
        if not name:
            return os.path.realpath(head)  # the root
        parent = self._dirs.get(head)
        if parent is None:
            parent = self._dirs[head] = os.path.realpath(head)
        full = os.path.join(parent, name)
        return os.path.realpath(full) if os.path.islink(full) else full


def check_outputs(specs: list) -> None:
    """Refuse, before a build, any spec whose output would replace or land in something of the user's."""
    guarded = protected_inputs(specs)
    claimed: dict[str, str] = {}
    for spec in specs:
        out = canonical(spec.output)
        if out in claimed:
            raise ParamInvalid(f"refusing to build: specs {claimed[out]} and {spec.name} both write this output",
                               spec.output)
        claimed[out] = spec.name
        check_output(spec.output, guarded)


def check_output(path: str | os.PathLike[str], guarded: Iterable[Protected] = (), what: str = "a bundle") -> None:
    """Refuse ``path`` as the place to write ``what`` unless it is new, an empty directory or a bundle."""
    _check_path_walks(path, what)
    out = canonical(path)
    _check_guarded(path, out, guarded, what)
    _check_not_in_a_bundle(path, out, what)
    check_replaceable(out, what)


def check_new_file(path: str | os.PathLike[str], guarded: Iterable[Protected] = (), force: bool = False,
                   what: str = "this file", hint: str = "pass --force to replace it") -> None:
    """A file the CLI writes (``dag -o``, ``exec -o DIR``'s NAME.npy, ``split``'s files) must be new; with
    ``force`` it may replace an existing regular file. Never a protected input (whatever ``force`` says), a
    path inside a bundle, a directory, a symbolic link (``-o /dev/stdout`` must not replace the link) or a
    special file."""
    _check_path_walks(path, what, rule="")
    out = canonical(path)
    _check_guarded(path, out, guarded, what, rule="")
    _check_not_in_a_bundle(path, out, what, rule="")
    try:
        st = os.lstat(out)
    except FileNotFoundError:
        _check_parents(out, what, rule="")
        return
    except NotADirectoryError:
        _refuse(path, what, "a parent of it is a file, not a directory", rule="")
    if not stat.S_ISREG(st.st_mode):
        _refuse(path, what, f"it is {kind(st.st_mode)}", rule="")
    if not force:
        _refuse(path, what, f"it exists; {hint}", rule="")


def write_file_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path`` and rename it there: a reader (or a crash) sees the old
    file or the new one, never half of it."""
    import uuid

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)  # umask applies
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _check_guarded(path: str | os.PathLike[str], out: str, guarded: Iterable[Protected], what: str,
                   rule: str | None = None) -> None:
    for p in guarded:
        if inside(p.path, out):
            _refuse(path, what, f"it {'is' if p.path == out else 'contains'} {p.what}", rule)
        if p.no_inside and inside(out, p.path):
            _refuse(path, what, f"it is inside {p.what}", rule)


def check_replaceable(path: str | os.PathLike[str], what: str = "a bundle") -> None:
    """The existing-path half of ``check_output``: nothing, an empty directory or a bundle may be replaced."""
    path = os.fspath(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        _check_parents(path, what)
        return
    except NotADirectoryError:
        _refuse(path, what, "a parent of it is a file, not a directory")
    if stat.S_ISLNK(st.st_mode):
        _refuse(path, what, "it is a symbolic link (this tool never writes through links)")
    if stat.S_ISDIR(st.st_mode):
        if not _is_empty_dir(path) and not _is_bundle_dir(path):
            _refuse(path, what, "it is a non-empty directory that is not a bundle")
    elif stat.S_ISREG(st.st_mode):
        if not is_bundle_zip(path):
            _refuse(path, what, "it is an existing file that is not a bundle")
    else:
        _refuse(path, what, f"it is {kind(st.st_mode)}")


def is_bundle(path: str | os.PathLike[str]) -> bool:
    """A directory or zip bundle this tool wrote, recognised by its layout and manifest (never a symlink)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if stat.S_ISDIR(st.st_mode):
        return _is_bundle_dir(os.fspath(path))
    return stat.S_ISREG(st.st_mode) and is_bundle_zip(path)


def _refuse(path: str | os.PathLike[str], what: str, why: str, rule: str | None = None) -> None:
    if rule is None:
        rule = f"; {what} may only replace a bundle or a path that does not exist"
    raise ParamInvalid(f"refusing to write {what} here: {why}{rule}", os.fspath(path))


def _check_path_walks(path: str | os.PathLike[str], what: str, rule: str | None = None) -> None:
    """Every existing component before the last must be a directory, as the kernel needs to walk it
    (``x.npy/../out.bundle`` fails at write time, though ``realpath`` would make it ``out.bundle``)."""
    given = os.fspath(path)
    full = given if os.path.isabs(given) else os.path.join(os.getcwd(), given)  # not abspath: it drops ".."
    prefix = os.sep
    for part in full.split(os.sep)[1:-1]:
        prefix = os.path.join(prefix, part)
        if part not in ("", ".", "..") and os.path.lexists(prefix) and not os.path.isdir(prefix):
            _refuse(path, what, f"{prefix} is not a directory", rule)


def _check_not_in_a_bundle(path: str | os.PathLike[str], out: str, what: str, rule: str | None = None) -> None:
    """Writing inside another bundle's directory would add an entry it must not have (one lstat per parent)."""
    parent = os.path.dirname(out)
    while parent and parent != os.path.dirname(parent):
        if os.path.lexists(os.path.join(parent, MANIFEST)) and _is_bundle_dir(parent):
            _refuse(path, what, f"it is inside the bundle {parent}", rule)
        parent = os.path.dirname(parent)


def _check_parents(path: str, what: str, rule: str | None = None) -> None:
    """The nearest existing parent must be a directory (a file there would fail the write late, after the build)."""
    parent = os.path.dirname(path)
    while parent and not os.path.lexists(parent):
        parent = os.path.dirname(parent) if os.path.dirname(parent) != parent else ""
    if parent and not os.path.isdir(parent):
        _refuse(path, what, f"its parent {parent} is not a directory", rule)


def _is_empty_dir(path: str) -> bool:
    with os.scandir(path) as it:
        return next(it, None) is None


def _is_bundle_dir(path: str) -> bool:
    try:
        with os.scandir(path) as it:
            top = {e.name: e for e in it}
        if MANIFEST not in top or not set(top) <= BUNDLE_TOP:
            return False
        if "constants" in top and not top["constants"].is_dir(follow_symlinks=False):
            return False
        fd = open_regular(os.path.join(path, MANIFEST), follow_symlinks=False)
        with os.fdopen(fd, "rb") as f:
            return _manifest_signature(f, os.fstat(fd).st_size)
    except OSError:
        return False


def is_bundle_zip(path: str | os.PathLike[str]) -> bool:
    """A zip whose entries are a bundle's (zarr.json and constants/...) and whose zarr.json is a manifest."""
    import zipfile

    try:
        with os.fdopen(open_regular(path, follow_symlinks=False), "rb") as f, zipfile.ZipFile(f) as zf:
            names = zf.namelist()
            if MANIFEST not in names or any(n != MANIFEST and not n.startswith("constants/") for n in names):
                return False
            info = zf.getinfo(MANIFEST)
            if info.compress_type != zipfile.ZIP_STORED:
                return False
            with zf.open(info) as entry:
                return _manifest_signature(entry, info.file_size)
    except (OSError, zipfile.BadZipFile, ValueError, EOFError, NotImplementedError):
        return False


def _manifest_signature(f, size: int) -> bool:
    head = f.read(SIGNATURE_BYTES)
    f.seek(max(0, size - SIGNATURE_BYTES))
    tail = f.read(SIGNATURE_BYTES)
    return bool(_HEAD.match(head) and _TAIL.search(tail))


def check_cache_url(url: str, where: str) -> None:
    """An fsspec URL's protocol must be one fsspec knows (imported only for URLs: remote caches need it anyway)."""
    if "://" not in url or url.startswith("file://"):
        return
    from fsspec.registry import known_implementations, registry

    protocol = url.split("://", 1)[0]
    if protocol not in registry and protocol not in known_implementations:
        examples = ", ".join(p for p in ("s3", "gcs", "abfs", "memory", "file") if p in known_implementations)
        raise ParamInvalid(f"cache URL {url!r}: fsspec knows no protocol {protocol!r} (e.g. {examples})", where)
