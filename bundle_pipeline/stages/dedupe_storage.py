"""dedupe.storage: the bundle's constant pool (same bytes once) and each graph's weight bindings and initial values."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import dedupe
from .stage import BUNDLE, Input, Stage, StageContext


def compute(inputs: Mapping[str, Any], params: Mapping[str, Any], ctx: StageContext) -> dict[str, Any]:
    """``dedupe.storage`` over every graph's interface and weight table; the storage also names the tensors and
    packs that hold the pool's constants (what ``cache gc`` keeps for it)."""
    tables = inputs["weights"]
    graphs = [{"name": g["name"], "role": g["role"], "interface": inputs["interface"][g["name"]],
               "weights": tables[g["name"]]["tensors"]} for g in params["graphs"]]
    pooled = dedupe.storage(graphs, inputs["variables"])
    packs = {h: p for t in tables.values() for h, p in t.get("packs", {}).items()}
    tensors = {c["hash"]: c["hash"] for c in pooled["constants"].values()}
    return {"storage": {**pooled, "tensors": tensors, "packs": {h: packs[h] for h in sorted(tensors) if h in packs}}}


STAGE = Stage("dedupe.storage", dedupe.VERSION, compute, outputs=("storage",),
              inputs=(Input("parse", "interface"), Input("parse.weights", "weights"), Input("dedupe", "variables")),
              params=("graph roles",), scope=BUNDLE)
