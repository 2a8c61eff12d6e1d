"""Each step's stage VERSION: part of every task key, so the planner needs it on every run, a no-op included.

Stage modules import nothing heavy at module level (numpy, onnx, zarr and the runtime load inside the
functions that use them), so reading their VERSIONs here costs next to nothing.
"""

from __future__ import annotations

from ..stages import codegen, dedupe, formats, pack, parse, tiling

VERSIONS = {"parse": parse.VERSION, "parse.weights": parse.VERSION, "dedupe": dedupe.VERSION,
            "formats.cost": formats.VERSION, "formats.assign": formats.VERSION,
            "formats.weights": formats.VERSION, "formats": formats.VERSION,
            "tiling": tiling.VERSION, "codegen": codegen.VERSION, "pack": pack.VERSION}
