"""bundle-pipeline: compile bundles of ONNX graphs that share weights into one offline model.

Seed-style API (see DESIGN.md section 1)::

    buf = bundle_build_model([GraphWithOptions("init.onnx", role="init"), ...])
    bundle_save_model("model.bundle", buf)
    runtime.load_bundle("model.bundle").run("infer", {"x": x})

The names below load on first use (PEP 562), so the command line starts without importing the API's
dependencies.
"""

from .errors import BundleError

_API = ("GraphWithOptions", "ModelBuffer", "WeightRefreshableGraphs", "bundle_build_model", "bundle_save_model",
        "convert_to_weight_refreshable_graphs")
__all__ = ["BundleError", *_API]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
