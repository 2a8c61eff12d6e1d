"""An ONNX node's attributes as the values the kernels take (ints, floats, strings, lists, arrays, IR dtype
strings): what folding, shape checks and the IR all read."""

from __future__ import annotations

import sys

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import UnsupportedOp
from .subgraphs import type_string

_A = onnx.AttributeProto
# The common attribute types read straight from their field (what helper.get_attribute_value does, without its
# dispatch: a model has thousands of attributes); the others go through onnx's helper.
_PLAIN_ATTRS = {_A.INT: lambda a: a.i, _A.INTS: lambda a: list(a.ints), _A.FLOAT: lambda a: a.f,
                _A.FLOATS: lambda a: list(a.floats), _A.STRING: lambda a: a.s.decode()}


_T = onnx.TensorProto
# element types whose raw_data is exactly the little-endian bytes of a numpy array of that dtype
_RAW_DTYPES = {_T.FLOAT: np.dtype(np.float32), _T.DOUBLE: np.dtype(np.float64), _T.FLOAT16: np.dtype(np.float16),
               _T.INT8: np.dtype(np.int8), _T.INT16: np.dtype(np.int16), _T.INT32: np.dtype(np.int32),
               _T.INT64: np.dtype(np.int64), _T.UINT8: np.dtype(np.uint8), _T.UINT16: np.dtype(np.uint16),
               _T.UINT32: np.dtype(np.uint32), _T.UINT64: np.dtype(np.uint64), _T.BOOL: np.dtype(np.bool_)}
_LITTLE = sys.byteorder == "little"


def tensor_array(t: onnx.TensorProto) -> np.ndarray:
    """``numpy_helper.to_array(t)`` of an inline tensor: the common case (a numpy element type in ``raw_data``,
    read as numpy_helper reads it) without its per-call dispatch; anything else goes through numpy_helper."""
    dtype = _RAW_DTYPES.get(t.data_type)
    if (dtype is not None and _LITTLE and t.HasField("raw_data") and t.data_location != _T.EXTERNAL
            and not t.HasField("segment")):
        return np.frombuffer(t.raw_data, dtype=dtype).reshape(t.dims)
    return numpy_helper.to_array(t)


def node_attrs(node: onnx.NodeProto) -> dict:
    """The decoded attributes of ``node``; Split gets ``num_outputs`` from its output count before opset 18."""
    out = {}
    for attr in node.attribute:
        plain = _PLAIN_ATTRS.get(attr.type)
        if plain is not None:
            out[attr.name] = plain(attr)
            continue
        if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
            raise UnsupportedOp(f"node {node.name!r} ({node.op_type}) has a subgraph attribute {attr.name!r}; "
                                f"only If, Loop, Scan and SequenceMap bodies are supported")
        value = helper.get_attribute_value(attr)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode() for v in value]
        elif isinstance(value, onnx.TensorProto):
            value = numpy_helper.to_array(value)
        elif isinstance(value, onnx.TypeProto):  # Optional's type: an IR dtype string
            value = type_string(value, f"node {node.name!r}")
        elif isinstance(value, onnx.SparseTensorProto):
            raise UnsupportedOp(f"node {node.name!r}: sparse tensor attributes are not supported")
        out[attr.name] = value
    if node.op_type == "Split" and "num_outputs" not in out:
        out["num_outputs"] = len(node.output)  # before opset 18 the count lives only in the node's outputs
    return out

