"""Content digests of the user's files stages read (``Stage.reads``): the ONNX file, its external-data files."""

from __future__ import annotations

from pathlib import Path

from ..cache import Cache
from ..errors import BundleIOError
from ..files import NotRegularFile, describe_error
from ..hashing import hash_bytes
from ..stages.stage import EXTERNAL_DATA, MODEL


def file_inputs(reads: str, context: dict, inputs: dict[str, str], cache: Cache) -> dict[str, str]:
    """The key inputs of a stage that reads the user's files (``Stage.reads``): the model's digest
    (``model``), or the digests of the external-data files its weight refs name (``file:<location>``)."""
    src, where = context["source"], context["where"]
    if reads == MODEL:
        return {"model": source_digest(src, cache, where)}
    if reads == EXTERNAL_DATA:
        return external_digests(cache.get_json(inputs["refs"]), Path(src.get("path", ".")).parent, cache, where)
    raise ValueError(f"unknown kind of user file {reads!r}")  # a declaration bug


def source_digest(src: dict, cache: Cache, where: str) -> str:
    """The ONNX file's content hash (through the cache's stat state: an unchanged file costs a stat).

    External-data files are not part of it: they are inputs of the ``parse.weights`` task, so an edit
    of one weight file leaves the structure parse cached.
    """
    if "bytes" in src:
        return hash_bytes(src["bytes"])
    return file_digest(cache, Path(src["path"]), where)


def external_digests(refs: dict, model_dir: Path, cache: Cache, where: str) -> dict[str, str]:
    """``file:<location>`` -> content hash for every external-data file the weight refs name."""
    locations = sorted({r["external"]["location"] for r in refs.values() if "external" in r})
    return {f"file:{loc}": file_digest(cache, model_dir / loc, f"{where}: external data") for loc in locations}


def file_digest(cache: Cache, path: Path, where: str) -> str:
    try:
        return cache.file_hash(path)
    except NotRegularFile as err:
        raise BundleIOError(describe_error(err), where) from None
    except FileNotFoundError:
        raise BundleIOError(f"file not found: {path}", where) from None
    except IsADirectoryError:
        raise BundleIOError(f"expected a file, got a directory: {path}", where) from None
    except PermissionError:
        raise BundleIOError(f"permission denied: {path}", where) from None
