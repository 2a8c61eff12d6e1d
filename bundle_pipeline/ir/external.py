"""ExternalRef: a weight left in its ONNX external-data file, read only when its bytes are needed.

``external_path`` decides which file a tensor's ``location`` may name, as ONNX itself requires: a relative path
to a regular file inside the model's directory, reached through no symbolic link. Anything else is a one-line
``BundleError`` before a byte is read. Reads take exactly the tensor's bytes, after checking the file holds
them: a location pointing at a huge file, a FIFO or a device costs nothing.
"""

from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..dtypes import PACKED_BITS, dtype_from_name, itemsize, packed_nbytes, unpack_sub_byte
from ..errors import BundleIOError, GraphInvalid
from ..files import describe_error, kind, open_regular


def external_path(base: Path, location: str, tensor: str, where: str) -> Path:
    """The file ``location`` names for ``tensor``, refused unless it is a regular file inside ``base`` (the model's
    directory) reached through no symbolic link."""
    what = f"tensor {tensor!r}: external data location {location!r}"
    if not location:
        raise GraphInvalid(f"tensor {tensor!r} is stored as external data but names no location", where)
    if os.path.isabs(location) or location.startswith(("/", "\\")) or os.path.splitdrive(location)[0]:
        raise GraphInvalid(f"{what} is an absolute path; ONNX external data must be a file in the model's "
                           f"directory", where)
    parts = Path(os.path.normpath(location)).parts
    if not parts or parts[0] == ".." or parts == (".",):
        raise GraphInvalid(f"{what} points outside the model's directory {base}", where)
    path = base
    for i, part in enumerate(parts):
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            raise BundleIOError(f"{what}: file not found", where) from None
        except OSError as err:
            raise BundleIOError(f"{what}: {describe_error(err)}", where) from None
        if stat.S_ISLNK(mode):
            raise GraphInvalid(f"{what} goes through a symbolic link ({path}); ONNX external data must be a file "
                               f"in the model's directory", where)
        if i == len(parts) - 1 and not stat.S_ISREG(mode):
            raise BundleIOError(f"{what} is {kind(mode)}, not a regular file", where)
    return path


@dataclass(frozen=True)
class ExternalRef:
    """A weight whose bytes stay in an external-data file until someone needs them."""

    path: str
    offset: int
    length: int
    dtype: str
    shape: tuple[int, ...]

    def to_json(self, model_dir: Path) -> dict:
        """Location relative to the model's directory, so moving a project keeps the structure's hash."""
        return {"location": Path(os.path.relpath(self.path, model_dir)).as_posix(), "offset": self.offset,
                "length": self.length, "dtype": self.dtype, "shape": list(self.shape)}

    @staticmethod
    def from_json(d: dict, model_dir: Path) -> ExternalRef:
        return ExternalRef(str(model_dir / d["location"]), int(d["offset"]), int(d["length"]), d["dtype"],
                           tuple(d["shape"]))

    @property
    def nbytes(self) -> int:
        """Bytes the tensor occupies in the file (int4/uint4/float4/int2/uint2 packed, lowest bits first)."""
        count = math.prod(self.shape)
        if self.dtype in PACKED_BITS:
            return packed_nbytes(self.dtype, count)
        return count * itemsize(self.dtype)

    def read_raw(self) -> bytearray:
        """Exactly the tensor's bytes, once the file is known to hold them (a regular file, never a FIFO)."""
        try:
            fd = open_regular(self.path)
        except OSError as err:
            raise BundleIOError(f"cannot read external data: {describe_error(err)}", self.path) from None
        with os.fdopen(fd, "rb") as f:
            if self.offset < 0 or os.fstat(fd).st_size < self.offset + self.nbytes:
                raise self._short()
            f.seek(self.offset)
            data = bytearray(self.nbytes)  # writable: the arrays made over it are too
            got = f.readinto(data)
        if got != self.nbytes:
            raise self._short()
        return data

    def load(self) -> np.ndarray:
        count = math.prod(self.shape)
        raw = self.read_raw()
        if self.dtype in PACKED_BITS:
            return unpack_sub_byte(np.frombuffer(raw, dtype=np.uint8), self.dtype, count).reshape(self.shape)
        dtype = dtype_from_name(self.dtype)
        data = np.frombuffer(raw, dtype=dtype.newbyteorder("<"), count=count)
        return data.astype(dtype, copy=False).reshape(self.shape)

    def _short(self) -> BundleIOError:
        return BundleIOError(f"external data file is shorter than the tensor needs ({self.nbytes} bytes at "
                             f"offset {self.offset})", self.path)
