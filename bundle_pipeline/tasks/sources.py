"""Content digests of a parse task's sources: the ONNX file plus every external-data file it names."""

from __future__ import annotations

from pathlib import Path

from ..cache import Cache
from ..errors import BundleIOError
from ..ir.hashing import hash_bytes, hash_json


def source_digest(src: dict, cache: Cache, where: str) -> str:
    """The model's content hash; files are hashed through the cache's stat state, so unchanged files cost a stat."""
    if "bytes" in src:
        return hash_bytes(src["bytes"])
    path = Path(src["path"])
    main = _file_hash(cache, path, where)
    external = {loc: _file_hash(cache, path.parent / loc, f"{where}: external data") for loc in
                external_locations(path, main, cache)}
    return hash_json({"model": main, "external": external}) if external else main


def external_locations(path: Path, digest: str, cache: Cache) -> list[str]:
    """Relative external-data paths named by the model; remembered per model hash to avoid re-parsing."""
    key = hash_json({"external-data-of": digest})
    record = cache.get_action(key)
    if record is not None:
        return list(record["files"])
    files = _scan_external(path)
    cache.put_action(key, {"files": files})
    return files


def _scan_external(path: Path) -> list[str]:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError):
        return []  # parse reports the bad file with a proper error
    tensors = list(model.graph.initializer) + [a.t for n in model.graph.node for a in n.attribute if a.HasField("t")]
    locations = {e.value for t in tensors if t.data_location == onnx.TensorProto.EXTERNAL
                 for e in t.external_data if e.key == "location"}
    return sorted(locations)


def _file_hash(cache: Cache, path: Path, where: str) -> str:
    try:
        return cache.file_hash(path)
    except FileNotFoundError:
        raise BundleIOError(f"file not found: {path}", where) from None
    except IsADirectoryError:
        raise BundleIOError(f"expected a file, got a directory: {path}", where) from None
    except PermissionError:
        raise BundleIOError(f"permission denied: {path}", where) from None
