"""How values are spelled inside a program: container dtype strings and inline tensors as JSON.

Shared by the IR (whose canonical JSON uses the same spellings) and the runtime. numpy is imported by the
functions that handle arrays only: planning a build handles no arrays and must not pay for it.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..dtypes import dtype_from_name

if TYPE_CHECKING:
    import numpy as np

UNKNOWN_DTYPE = "unknown"  # a body value inference could not type (a branch that cannot run on these shapes)
CONTAINERS = ("seq", "optional")  # dtype "seq(<elem>)" / "optional(<elem>)": sequences and optionals


def container_dtype(kind: str, elem: str) -> str:
    """The dtype string of a sequence (``kind="seq"``) or optional of ``elem`` (itself maybe a container)."""
    if kind not in CONTAINERS:
        raise ValueError(f"unknown container kind {kind!r}")
    return f"{kind}({elem})"


def split_container(dtype: str) -> tuple[str, str] | None:
    """``("seq", "float32")`` for ``"seq(float32)"``; None for a tensor dtype."""
    head, paren, rest = dtype.partition("(")
    if not paren or head not in CONTAINERS or not rest.endswith(")"):
        return None
    return head, rest[:-1]


def tensor_dtype(dtype: str) -> str:
    """The innermost tensor element type: ``float32`` for ``optional(seq(float32))``."""
    while (parts := split_container(dtype)) is not None:
        dtype = parts[1]
    return dtype


def encode_tensor(arr: np.ndarray) -> dict:
    """Small tensors as JSON: dtype, shape and base64 of the little-endian bytes; a string tensor (an attribute
    such as LabelEncoder's keys_tensor) as its list of strings."""
    import numpy as np

    arr = np.asarray(arr, order="C")  # not ascontiguousarray: it turns 0-d into shape (1,)
    if arr.dtype == object:
        return {"dtype": "object", "shape": list(arr.shape), "strings": [str(s) for s in arr.reshape(-1).tolist()]}
    data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
    return {"dtype": arr.dtype.name, "shape": list(arr.shape), "b64": base64.b64encode(data).decode()}


def decode_tensor(d: dict) -> np.ndarray:
    import numpy as np

    if "strings" in d:
        strings = np.empty(len(d["strings"]), dtype=object)  # filled, not np.array(list): never a 2-D char array
        strings[:] = d["strings"]
        return strings.reshape(d["shape"])
    dtype = dtype_from_name(d["dtype"]).newbyteorder("<")
    arr = np.frombuffer(base64.b64decode(d["b64"]), dtype=dtype).reshape(d["shape"])
    return arr.astype(arr.dtype.newbyteorder("="))


def decode_attr(value: Any, decode_graph: Callable[[dict], Any] | None = None) -> Any:
    """An attribute value as JSON -> its value: ``{"tensor": ...}`` an array. ``{"graph": ...}`` (an IR body;
    a program keeps bodies as steps' ``bodies``, never in attributes) needs ``decode_graph``, the IR's."""
    if isinstance(value, dict) and "tensor" in value:
        return decode_tensor(value["tensor"])
    if isinstance(value, dict) and "graph" in value and decode_graph is not None:
        return decode_graph(value["graph"])
    return value
