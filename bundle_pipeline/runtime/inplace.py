"""Elementwise steps computed straight into their planned arena view (numpy ``out=``), no temporary result.

The kernel library returns fresh arrays that the executor then copies into the arena; for the common
elementwise ops on floats the executor calls the same numpy ufunc here with ``out=`` the planned view, so the
run allocates nothing for them. The numbers are the library's: the same ufunc on the same dtypes (the kernels
compute ``ufunc(a, b)`` in the inputs' dtype and return it as is when every dtype matches, which is the only case
taken here). Anything else returns False and goes through the kernel library.

A planned output never shares bytes with a value that is live at its step (codegen's plan), and numpy
buffers overlapping operands anyway, so writing into the view cannot clobber an input.
"""

from __future__ import annotations

import numpy as np

BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}
UNARY = {"Neg": np.negative, "Abs": np.abs, "Sqrt": np.sqrt, "Exp": np.exp, "Tanh": np.tanh, "Log": np.log,
         "Floor": np.floor, "Ceil": np.ceil, "Sin": np.sin, "Cos": np.cos, "Reciprocal": np.reciprocal}


def run_into(op: str, args: list[np.ndarray | None], out: np.ndarray) -> bool:
    """Compute ``op(args)`` into ``out`` when it is a float elementwise op whose dtypes all equal ``out``'s."""
    if out.dtype.kind != "f" or any(a is None for a in args):
        return False
    if op in BINARY and len(args) == 2:
        a, b = args
        if a.dtype != out.dtype or b.dtype != out.dtype or np.broadcast_shapes(a.shape, b.shape) != out.shape:
            return False
        with np.errstate(all="ignore"):
            BINARY[op](a, b, out=out)
        return True
    if (op in UNARY or op == "Relu") and len(args) == 1:
        (x,) = args
        if x.dtype != out.dtype or x.shape != out.shape:
            return False
        with np.errstate(all="ignore"):
            if op == "Relu":
                np.maximum(x, np.zeros((), x.dtype), out=out)
            else:
                UNARY[op](x, out=out)
        return True
    return False
