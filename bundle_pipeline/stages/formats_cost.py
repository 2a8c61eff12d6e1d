"""formats.cost: per graph, what each variable it reads would cost it in each format (``formats.costs``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import formats
from .format_pass import FormatPass
from .stage import GRAPH, Input, Stage, StageContext


def compute(inputs: Mapping[str, Any], params: Mapping[str, Any], ctx: StageContext) -> dict[str, Any]:
    """A graph that reads no variable with a choice of formats (none on the cpu target) is not even parsed."""
    variables = inputs["variables"]
    if not any(ctx.graph in v["readers"] and formats.alternatives(tuple(v["shape"]), ctx.target)
               for v in variables.values()):
        return {"costs": {}}
    fp = FormatPass.shared(ctx.hashes["structure"], inputs["structure"], ctx.target)
    return {"costs": formats.costs(fp, ctx.graph, variables, ctx.target)}


STAGE = Stage("formats.cost", formats.VERSION, compute, outputs=("costs",),
              inputs=(Input("parse", "structure"), Input("dedupe", "variables")), params=("target",), scope=GRAPH)
