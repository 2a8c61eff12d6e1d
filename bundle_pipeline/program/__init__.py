"""The program format a bundle stores: typed steps, one encoder, one decoder and validator, and the constants
the build side and the runtime must agree on (``FORMAT_VERSION``, ``APPROX_OPS``, the step kinds' fields).

Low layer: imports only the standard library, numpy (lazily, for inline tensors) and ``dtypes``, ``errors``,
``layouts``. ``stages/codegen.py`` builds a ``Program`` and ``encode``\\s it; the runtime ``decode_program``\\s
it once at load (``runtime/validate.py``) and the executor dispatches on the step's kind.
"""

from importlib import import_module

from ..layouts import STANDARD
from .constants import (
    APPROX_OPS,
    BODY_ATTRS,
    CONTROL_OPS,
    FORMAT_VERSION,
    FORMAT_VERSIONS,
    IMPLS,
    KERNEL_GRAPH_ATTRS,
    PRECISIONS,
    ROLES,
    TRANSDATA,
)
from .encoding import (
    CONTAINERS,
    UNKNOWN_DTYPE,
    container_dtype,
    decode_attr,
    decode_tensor,
    encode_tensor,
    split_container,
    tensor_dtype,
)

# The typed classes, the encoder and the decoder load on first use (PEP 562): creating the dataclasses costs
# ~10 ms, which a no-op build (it imports codegen's declaration, and ir.graph's helpers) should not pay.
_LAZY = {**dict.fromkeys(("Body", "ControlStep", "Feed", "KernelStep", "Layout", "Output", "Plan", "Program",
                          "Step", "TransDataStep", "Value", "encode"), "schema"),
         "ProgramError": "decode", "decode_program": "decode"}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["APPROX_OPS", "BODY_ATTRS", "CONTAINERS", "CONTROL_OPS", "FORMAT_VERSION", "FORMAT_VERSIONS", "IMPLS",
           "KERNEL_GRAPH_ATTRS", "PRECISIONS", "ROLES", "STANDARD", "TRANSDATA", "UNKNOWN_DTYPE", "Body",
           "ControlStep", "Feed", "KernelStep", "Layout", "Output", "Plan", "Program", "ProgramError", "Step",
           "TransDataStep", "Value", "container_dtype", "decode_attr", "decode_program", "decode_tensor", "encode",
           "encode_tensor", "split_container", "tensor_dtype"]
