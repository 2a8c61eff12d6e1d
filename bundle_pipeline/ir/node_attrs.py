"""An ONNX node's attributes as the values the kernels take (ints, floats, strings, lists, arrays, IR dtype
strings): what folding, shape checks and the IR all read."""

from __future__ import annotations

import onnx
from onnx import helper, numpy_helper

from ..errors import UnsupportedOp
from .subgraphs import type_string

_A = onnx.AttributeProto
# The common attribute types read straight from their field (what helper.get_attribute_value does, without its
# dispatch: a model has thousands of attributes); the others go through onnx's helper.
_PLAIN_ATTRS = {_A.INT: lambda a: a.i, _A.INTS: lambda a: list(a.ints), _A.FLOAT: lambda a: a.f,
                _A.FLOATS: lambda a: list(a.floats), _A.STRING: lambda a: a.s.decode()}


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

