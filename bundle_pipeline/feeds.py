"""Read the CLI's ``NAME=FILE.npy`` feeds: plain .npy arrays only, checked against the file's real size first.

``np.load`` trusts the header: a 100-byte file whose header claims 37 GiB makes it allocate 37 GiB before it
notices the data is missing. Here the header is parsed, the dtype must be plain (numeric, bool, fixed-width
strings: never an object array, which would be a pickle), and the bytes the header implies must be exactly the
bytes the file holds after it; only then is the array read. Anything that is not a .npy file gets a message
saying what it looks like and what is expected. Nothing is ever unpickled.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

from .errors import ParamInvalid
from .files import describe_error, open_regular

if TYPE_CHECKING:
    import numpy as np

NPY_MAGIC = b"\x93NUMPY"
EXPECTED = "feeds are .npy files of one plain array (numpy.save(path, array))"
# leading bytes -> what the file is, for the message
_SIGNATURES = ((b"PK\x03\x04", "a zip archive (an .npz? save each array with numpy.save)"),
               (b"\x89HDF", "an HDF5 file"), (b"\x80", "a Python pickle (never loaded)"),
               (b"\x08", "a protobuf message (an ONNX model?)"))


def read_npy(path: str, name: str) -> np.ndarray:
    """The array in the .npy file at ``path``, fed as ``name``; PARAM_INVALID (one line) for anything else."""
    import numpy as np

    where = f"feed {name}"
    try:
        fd = open_regular(path)
    except OSError as err:
        raise ParamInvalid(f"cannot read {path}: {describe_error(err)}", where) from None
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(fd).st_size
        head = f.read(len(NPY_MAGIC))
        if head != NPY_MAGIC:
            raise ParamInvalid(f"{path} is {_what(head + f.read(256), size)}, not a .npy array; {EXPECTED}", where)
        f.seek(0)
        shape, fortran, dtype = _header(f, path, where)
        count = math.prod(shape)
        expected, held = count * dtype.itemsize, size - f.tell()
        if held != expected:
            raise ParamInvalid(f"{path}: its header declares {dtype}{list(shape)} ({expected} bytes of data) but "
                               f"the file holds {held}; {EXPECTED}", where)
        data = np.fromfile(f, dtype=dtype, count=count)
    return data.reshape(shape, order="F" if fortran else "C")


def _header(f, path: str, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    from numpy.lib import format as npy

    try:
        version = npy.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = npy.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = npy.read_array_header_2_0(f)
        else:
            raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported (1.0 and 2.0 are)")
    except (ValueError, SyntaxError, EOFError) as err:
        raise ParamInvalid(f"{path}: malformed .npy header: {err}; {EXPECTED}", where) from None
    if dtype.hasobject:
        raise ParamInvalid(f"{path} holds an object array (a pickle, never loaded); {EXPECTED} of numbers, "
                           f"booleans or fixed-width strings", where)
    if dtype.kind == "V" or dtype.fields is not None or dtype.subdtype is not None:
        raise ParamInvalid(f"{path} holds a structured array ({dtype}); {EXPECTED} with one plain dtype", where)
    return shape, fortran, dtype


def _what(head: bytes, size: int) -> str:
    if not head:
        return "an empty file"
    for magic, what in _SIGNATURES:
        if head.startswith(magic):
            return what
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"a binary file of {size} bytes without the .npy header"
    return "a text file" if all(c.isprintable() or c in "\r\n\t" for c in text) else f"a file of {size} bytes"
