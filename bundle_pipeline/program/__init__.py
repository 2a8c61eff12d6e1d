"""The program format a bundle stores: typed steps, one encoder, one decoder and validator, and the constants
the build side and the runtime must agree on (``FORMAT_VERSION``, ``APPROX_OPS``, the step kinds' fields).

Low layer: imports only the standard library, numpy (lazily, for inline tensors) and ``dtypes``, ``errors``,
``layouts``. ``stages/codegen.py`` builds a ``Program`` and ``encode``\\s it; the runtime ``decode_program``\\s
it once at load (``runtime/validate.py``) and the executor dispatches on the step's kind.
"""

from ..layouts import STANDARD
from .decode import ProgramError, decode_program
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
from .schema import (
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
    Body,
    ControlStep,
    Feed,
    KernelStep,
    Layout,
    Output,
    Plan,
    Program,
    Step,
    TransDataStep,
    Value,
    encode,
)

__all__ = ["APPROX_OPS", "BODY_ATTRS", "CONTAINERS", "CONTROL_OPS", "FORMAT_VERSION", "FORMAT_VERSIONS", "IMPLS",
           "KERNEL_GRAPH_ATTRS", "PRECISIONS", "ROLES", "STANDARD", "TRANSDATA", "UNKNOWN_DTYPE", "Body",
           "ControlStep", "Feed", "KernelStep", "Layout", "Output", "Plan", "Program", "ProgramError", "Step",
           "TransDataStep", "Value", "container_dtype", "decode_attr", "decode_program", "decode_tensor", "encode",
           "encode_tensor", "split_container", "tensor_dtype"]
