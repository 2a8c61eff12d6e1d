"""parse: ONNX model -> structure (IR graph without weight bytes) + weight arrays."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import GraphInvalid
from ..options import parse_input_shape
from .dedupe import interface
from .stage import GRAPH, MODEL, Stage, StageContext

if TYPE_CHECKING:
    import numpy as np

    from ..ir.external import ExternalRef

VERSION = "6"  # 2: onnx-checked shapes / outputs are writes / unknown opsets refused; 3, 4: merges of those;
# 5: the interface dedupe reads is an output of its own; 6: so are the external ranges parse.weights' key reads


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


def compute(inputs: Mapping[str, Any], params: Mapping[str, Any], ctx: StageContext) -> dict[str, Any]:
    """Structure + weight refs: inline weights are stored now (the small ones in one pack), external-data
    ones only located; the interface ``dedupe`` reads, and the external ranges ``parse.weights``' key reads."""
    from ..ir.external import ExternalRef
    from ..ir.external_ranges import ranges_by_file

    src = ctx.source
    result = run(src["bytes"] if "bytes" in src else src["path"], {**params, "graph": ctx.graph, "where": ctx.where})
    inline = {n: w for n, w in result.weights.items() if not isinstance(w, ExternalRef)}
    refs: dict[str, dict] = dict(ctx.cache.put_tensors(inline))
    model_dir = Path(src["path"]).parent if "path" in src else Path()
    refs.update({n: {"external": w.to_json(model_dir)} for n, w in result.weights.items() if n not in inline})
    return {"structure": result.structure, "refs": dict(sorted(refs.items())), "interface": interface(result.structure),
            "sources": ranges_by_file(refs)}


STAGE = Stage("parse", VERSION, compute, outputs=("structure", "refs", "interface", "sources"),
              params=("option values", "role"), scope=GRAPH, reads=MODEL,
              preload=("bundle_pipeline.ir.onnx_import", "bundle_pipeline.kernels"))  # onnx, folding's kernels
