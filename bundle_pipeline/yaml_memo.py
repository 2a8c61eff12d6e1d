"""YAML values remembered per text in the user's cache dir, so a command that reads unchanged YAML (a spec, a
target description) neither imports PyYAML (20 ms of regex compiles) nor parses it again.

State kept: ``$XDG_CACHE_HOME`` (or ``~/.cache``) ``/bundle-pipeline/yaml/<hash of kind, version, text>.json``, where
the cache's remote stat state also lives: ``{"raw": value, "sum": hash of its canonical JSON}``. Named by the text's
hash, a memo never goes stale; a damaged one fails its checksum and the text is parsed again. Values JSON cannot
give back unchanged (dates, binary, sets, NaN, non-string keys) are not remembered. Without a home directory, or
with an unwritable one, nothing is remembered.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .files import read_regular
from .guard import write_file_atomic
from .hashing import hash_bytes

VERSION = "1"  # bump when a parse gives other values for the same text (spec_yaml.py, targets)
MAX_MEMO_BYTES = 64 << 20


def remembered(kind: str, text: str, parse: Callable[[str], Any]) -> Any:
    """``parse(text)``, or the value remembered for this ``kind`` of text."""
    memo = _memo_path(kind, text)
    found = _read(memo) if memo is not None else None
    if found is not None:
        return found[0]
    value = parse(text)
    if memo is not None:
        _write(memo, value)
    return value


def _memo_path(kind: str, text: str) -> Path | None:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    if not os.path.isabs(base):
        return None
    key = hash_bytes("\0".join((kind, VERSION, text)).encode())
    return Path(base, "bundle-pipeline", "yaml", f"{key}.json")


def _read(memo: Path) -> tuple[Any] | None:
    """(value,) when the memo is there and intact, else None."""
    try:
        payload = json.loads(read_regular(memo, MAX_MEMO_BYTES))
        value, checksum = payload["raw"], payload["sum"]
    except (OSError, ValueError, TypeError, KeyError, RecursionError):
        return None
    return (value,) if checksum == hash_bytes(_dumps(value)) else None


def _write(memo: Path, value: Any) -> None:
    try:
        data = _dumps(value)
        if json.loads(data) != value:
            return
        memo.parent.mkdir(parents=True, exist_ok=True)
        write_file_atomic(memo, json.dumps({"raw": value, "sum": hash_bytes(data)}).encode())
    except (OSError, TypeError, ValueError):  # unwritable home, or a value JSON cannot hold: parse next time
        return


def _dumps(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, allow_nan=False).encode()
