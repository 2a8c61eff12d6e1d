"""formats.assign: one storage format per variable for the bundle, from every graph's costs (``formats.choose``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import formats
from .stage import BUNDLE, Input, Stage, StageContext


def compute(inputs: Mapping[str, Any], params: Mapping[str, Any], ctx: StageContext) -> dict[str, Any]:
    return {"var_formats": formats.choose(inputs["costs"], inputs["variables"], ctx.target)}


STAGE = Stage("formats.assign", formats.VERSION, compute, outputs=("var_formats",),
              inputs=(Input("formats.cost", "costs"), Input("dedupe", "variables")),
              params=("graph names", "target"), scope=BUNDLE)
