"""parse: ONNX model -> structure (IR graph without weight bytes) + weight arrays."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import GraphInvalid
from ..options import parse_input_shape

if TYPE_CHECKING:
    import numpy as np

    from ..ir.external import ExternalRef

NAME = "parse"
VERSION = "5"  # 2: onnx-checked shapes / outputs are writes / unknown opsets refused; 3, 4: merges of those;
# 5: the interface dedupe reads is an output of its own


@dataclass
class ParseOutput:
    structure: dict  # Graph.to_json()
    weights: dict[str, np.ndarray | ExternalRef]  # external-data weights stay on disk until needed


def run(source: str | bytes | os.PathLike, params: dict) -> ParseOutput:
    """params: graph (name), where (file or graph label for errors), input_shape, out_nodes, role (init and
    update graphs write their outputs: an output that is an initializer or Constant is not a read)."""
    from ..ir.onnx_import import import_model  # onnx is heavy: only a parse that runs pays for it

    where = params["where"]
    shapes = parse_input_shape(params.get("input_shape", ""), where) if params.get("input_shape") else {}
    graph, weights = import_model(source, params["graph"], shapes, params.get("out_nodes", ""), where,
                                  outputs_write=params.get("role") in ("init", "update"))
    problems = graph.lint()
    if problems:
        raise GraphInvalid(f"graph {graph.name}: {problems[0]}", where)
    return ParseOutput(graph.to_json(), weights)
