"""ExternalRef: a weight left in its ONNX external-data file, read only when its bytes are needed."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..dtypes import PACKED_BITS, dtype_from_name, unpack_sub_byte
from ..errors import BundleIOError


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
        """Bytes of the loaded array (a sub-byte type unpacks to one byte an element)."""
        return math.prod(self.shape) * dtype_from_name(self.dtype).itemsize

    def load(self) -> np.ndarray:
        count = int(np.prod(self.shape, dtype=np.int64))
        if self.dtype in PACKED_BITS:
            return self._load_packed(count)
        dtype = dtype_from_name(self.dtype)
        data = np.fromfile(self.path, dtype=dtype.newbyteorder("<"), count=count, offset=self.offset)
        if data.size != count:
            raise self._short()
        return data.astype(dtype, copy=False).reshape(self.shape)

    def _load_packed(self, count: int) -> np.ndarray:
        """int4/uint4/float4/int2/uint2 are stored packed (several elements a byte), lowest bits first."""
        nbytes = -(-count * PACKED_BITS[self.dtype] // 8)
        raw = np.fromfile(self.path, dtype=np.uint8, count=nbytes, offset=self.offset)
        if raw.size != nbytes:
            raise self._short()
        return unpack_sub_byte(raw, self.dtype, count).reshape(self.shape)

    def _short(self) -> BundleIOError:
        return BundleIOError(f"external data file is shorter than the tensor needs ({self.length} bytes at "
                             f"offset {self.offset})", self.path)
