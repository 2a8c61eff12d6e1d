"""bundle-pipeline: compile bundles of ONNX graphs that share weights into one offline model.

Seed-style API (see DESIGN.md section 1)::

    buf = bundle_build_model([GraphWithOptions("init.onnx", role="init"), ...])
    bundle_save_model("model.bundle", buf)
    runtime.load_bundle("model.bundle").run("infer", {"x": x})
"""

from .api import (
    GraphWithOptions,
    ModelBuffer,
    WeightRefreshableGraphs,
    bundle_build_model,
    bundle_save_model,
    convert_to_weight_refreshable_graphs,
)
from .errors import BundleError

__all__ = ["BundleError", "GraphWithOptions", "ModelBuffer", "WeightRefreshableGraphs", "bundle_build_model",
           "bundle_save_model", "convert_to_weight_refreshable_graphs"]
__version__ = "0.1.0"
