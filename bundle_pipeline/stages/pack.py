"""pack: programs + variable table + constant pool -> a zarr v3 bundle (directory or stored zip), atomically."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import BundleIOError
from ..runtime.formats import storage_shape

NAME = "pack"
VERSION = "1"
FORMAT_VERSION = 1
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
                       "nbytes": int(np.prod(storage_shape(var_formats[n], tuple(v["shape"])), dtype=np.int64))
                       * np.dtype(v["dtype"]).itemsize,
                       "readers": v["readers"], "writers": v["writers"], "source": v["source"],
                       "initial": storage["initial"].get(n)} for n, v in sorted(variables.items())],
        "constants": {cid: {**c, "array": f"constants/{cid}"} for cid, c in sorted(storage["constants"].items())},
    }


# (tensor hash, array directory to create) -> sha256 of each file placed, by path relative to that directory
PlaceTensor = Callable[[str, Path], "dict[str, str] | None"]


def run(meta: dict, place_tensor: PlaceTensor, out_path: str) -> str:
    """Write the bundle described by ``meta`` (from ``manifest``) to ``out_path``; return its digest.

    ``place_tensor(hash, dir)`` puts a stored tensor's zarr array at ``dir``; the cache hard-links its
    chunk files, so re-packing a directory bundle writes metadata only, whatever changed. The bundle
    is staged beside the destination and renamed into place, so a failure leaves the previous bundle
    untouched. A ``.zip`` destination gets the stored-zip form of the same entries, read from the
    staged (linked) chunk files: no tensor is recomputed.
    """
    out = Path(out_path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        stage_dir = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as err:
        raise BundleIOError(f"cannot write bundle: {err}", str(out)) from None
    try:
        known = write_directory(stage_dir, meta, place_tensor)
        digest = bundle_digest(stage_dir, known)
        if out.suffix == ".zip":
            staged_zip = stage_dir.with_suffix(".zip.tmp")
            write_zip(stage_dir, staged_zip)
            os.replace(staged_zip, out)
        else:
            _replace_dir(stage_dir, out)
        return digest
    except OSError as err:
        raise BundleIOError(f"cannot write bundle: {err}", str(out)) from None
    finally:
        shutil.rmtree(stage_dir, ignore_errors=True)
        stage_dir.with_suffix(".zip.tmp").unlink(missing_ok=True)


def write_directory(root: Path, meta: dict, place_tensor: PlaceTensor) -> dict[str, str]:
    """Write the bundle's metadata and place its arrays; return the sha256 the placer already knows."""
    import zarr

    group = zarr.open_group(zarr.storage.LocalStore(root), mode="w", attributes=meta)
    group.create_group("constants")
    known: dict[str, str] = {}
    for const in meta["constants"].values():
        placed = place_tensor(const["hash"], root / const["array"]) or {}
        known.update({f"{const['array']}/{rel}": digest for rel, digest in placed.items()})
    return known


def _replace_dir(staged: Path, out: Path) -> None:
    if out.is_file():
        out.unlink()
    if not out.exists():
        os.replace(staged, out)
        return
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(out, old)
    os.replace(staged, out)
    shutil.rmtree(old, ignore_errors=True)


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


def bundle_digest(path: str | os.PathLike, known: dict[str, str] | None = None) -> str:
    """sha256 of the sorted listing (relative path, sha256 of bytes); equal for directory and zip forms.

    ``known`` gives entries whose sha256 is already established (the cache's verified tensor files),
    so packing a large bundle hashes only its metadata.
    """
    path, known = Path(path), known or {}
    listing = hashlib.sha256()
    if path.is_dir():
        items = ((rel, known.get(rel) or _sha256((path / rel).read_bytes())) for rel in entries(path))
    else:
        zf = zipfile.ZipFile(path)
        items = ((name, _sha256(zf.read(name))) for name in sorted(zf.namelist()) if not name.endswith("/"))
    for rel, digest in items:
        listing.update(f"{rel}\t{digest}\n".encode())
    return listing.hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
