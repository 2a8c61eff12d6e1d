"""Owns ``actions/<key[:2]>/<key>``: task records, checksummed so a torn or edited record reads as a miss.

An action file is the canonical JSON ``{"checksum": hash_json(record), "record": record, "v": 1}``; a file
that does not decode to that, with a matching checksum, is no record (a miss, never an error).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from bundle_pipeline.cache.layout import action_rel, check_key
from bundle_pipeline.hashing import canonical_json, hash_bytes, hash_json

if TYPE_CHECKING:
    from bundle_pipeline.cache.backends import Backend

ACTION_FORMAT = 1


def put_action(backend: Backend, key: str, record: dict[str, Any]) -> None:
    """Store (or replace) the record of task ``key``, checksummed so truncation is detected."""
    if not isinstance(record, dict):
        raise TypeError(f"an action record must be a dict, got {type(record).__name__}")
    body = canonical_json(record)  # encoded once: the payload is canonical_json of {checksum, record, v}
    payload = b'{"checksum":"%s","record":%s,"v":%d}' % (hash_bytes(body).encode(), body, ACTION_FORMAT)
    backend.write_atomic(action_rel(check_key(key)), payload)


def get_action(backend: Backend, key: str) -> dict[str, Any] | None:
    """The record of task ``key``, or None when missing or corrupt; never raises on bad data."""
    try:
        data = backend.read(action_rel(check_key(key)))
    except FileNotFoundError:
        return None
    return decode_action(data)


def remove_action(backend: Backend, key: str) -> None:
    """Forget the record of ``key`` (its task runs again next time); a no-op when absent."""
    backend.remove(action_rel(check_key(key)))


_HEAD, _MID, _TAIL = b'{"checksum":"', b'","record":', b',"v":%d}' % ACTION_FORMAT
_BODY = len(_HEAD) + 64 + len(_MID)


def decode_action(data: bytes) -> dict[str, Any] | None:
    """The record inside an action file, or None when the file is not an intact action.

    A file as ``put_action`` writes it is checked by hashing the record's bytes where they lie (no re-encoding:
    planning reads one record a task); anything else is decoded whole and its record re-encoded."""
    if data.startswith(_HEAD) and data.endswith(_TAIL) and data[_BODY - len(_MID):_BODY] == _MID:
        body = data[_BODY:-len(_TAIL)]
        if hash_bytes(body).encode() == data[len(_HEAD):len(_HEAD) + 64]:
            try:
                record = json.loads(body, parse_constant=_refuse)
            except (ValueError, RecursionError):
                return None
            return record if isinstance(record, dict) else None
    try:
        payload = json.loads(data)
    except (ValueError, RecursionError):  # includes UnicodeDecodeError from truncated UTF-8
        return None
    if not isinstance(payload, dict) or payload.get("v") != ACTION_FORMAT:
        return None
    record = payload.get("record")
    if not isinstance(record, dict):
        return None
    try:
        ok = payload.get("checksum") == hash_json(record)
    except (ValueError, RecursionError):  # a NaN smuggled in by hand (canonical_json refuses it), or a record
        return None  # nested deeper than the encoder goes (it takes a few more frames a level than the decoder)
    return record if ok else None


def _refuse(constant: str) -> None:
    raise ValueError(f"{constant} is not canonical JSON")
