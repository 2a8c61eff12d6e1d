"""An ``onnx.backend.base.Backend`` over the whole compiler: each model becomes a one-infer-graph bundle.

``prepare(model, target="cpu")`` compiles the model with the public API (``bundle_build_model``), writes
the bundle to a temp file, loads it with ``runtime.load_bundle`` and returns a ``BundleBackendRep``;
``rep.run(inputs)`` feeds positional inputs in graph-input order (initializers are constants, not feeds)
and returns the outputs in graph-output order; a sequence input or output is a list of arrays, an empty
optional None. Feeds of a bundle are static: a tensor input with symbolic dims that the ``input_shape``
option does not fix is bound from the inputs of the first ``run`` (the model is compiled then, with that
``input_shape``, and again for every new set of input shapes). This is how the ONNX backend node suite
measures us::

    from bundle_pipeline.backend import BundleBackend
    rep = BundleBackend.prepare(model, target="cpu")   # executor="auto" | "onnxruntime" | "reference"
    outputs = rep.run([x, y])

Builds in one process share one cache directory (a temp dir removed at exit), so identical kernels,
programs and weights compiled for one model are reused by the next.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep, Device, DeviceType, namedtupledict

from .api import GraphWithOptions, bundle_build_model, bundle_save_model
from .errors import ParamInvalid
from .options import parse_input_shape
from .runtime import LoadedBundle, load_bundle

GRAPH = "infer"
_cache_lock = threading.Lock()
_cache_dir: str | None = None


def shared_cache_dir() -> str:
    """The process-wide build cache of the backend (created on first use, removed at exit)."""
    global _cache_dir
    with _cache_lock:
        if _cache_dir is None:
            _cache_dir = tempfile.mkdtemp(prefix="bundle-pipeline-backend-")
            atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
        return _cache_dir


class BundleBackendRep(BackendRep):
    """A compiled, loaded bundle with one infer graph; ``run`` maps positional inputs to its feeds. With
    ``symbolic`` inputs, ``compile(input_shape)`` builds one bundle per distinct shapes of those inputs and
    ``bundle`` is the last one run (None before the first run)."""

    def __init__(self, bundle: LoadedBundle | None, feeds: Sequence[str], outputs: Sequence[str],
                 compile: Callable[[str], LoadedBundle] | None = None, symbolic: Sequence[str] = ()):
        self.bundle = bundle
        self.feeds = list(feeds)
        self.outputs = list(outputs)
        self.symbolic = list(symbolic)
        self._compile = compile
        self._by_shapes: dict[str, LoadedBundle] = {}

    def run(self, inputs: Any, **kwargs: Any) -> tuple[Any, ...]:
        if isinstance(inputs, Mapping):
            feeds = {name: _feed(value) for name, value in inputs.items()}
        else:
            if isinstance(inputs, np.ndarray):
                inputs = [inputs]
            inputs = list(inputs)
            if len(inputs) != len(self.feeds):
                raise ParamInvalid(f"the model takes {len(self.feeds)} inputs ({', '.join(self.feeds) or 'none'}), "
                                   f"got {len(inputs)}", f"graph {GRAPH}")
            feeds = {name: _feed(value) for name, value in zip(self.feeds, inputs, strict=True)}
        results = self._bundle_for(feeds).run(GRAPH, feeds)
        return namedtupledict("Outputs", self.outputs)(*[results[name] for name in self.outputs])


    def _bundle_for(self, feeds: Mapping[str, Any]) -> LoadedBundle:
        if not self.symbolic or self._compile is None:
            return self.bundle
        missing = [name for name in self.symbolic if name not in feeds]
        if missing:
            raise ParamInvalid(f"missing feed {missing[0]!r}", f"graph {GRAPH}")
        shapes = ";".join(f"{name}:{','.join(str(d) for d in np.shape(feeds[name]))}" for name in self.symbolic)
        if shapes not in self._by_shapes:
            self._by_shapes[shapes] = self._compile(shapes)
        self.bundle = self._by_shapes[shapes]
        return self.bundle


def _feed(value: Any) -> Any:
    """An array, or a sequence (list of arrays) / empty optional (None) as it is: the executor checks both."""
    return value if value is None or isinstance(value, list) else np.asarray(value)


class BundleBackend(Backend):
    """Compile with bundle-pipeline for ``target`` (kwarg, default ``"cpu"``) and run with its runtime."""

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", target: str = "cpu",
                build_options: Mapping[str, str] | None = None, cache: str | os.PathLike | None = None,
                executor: str = "auto", **kwargs: Any) -> BundleBackendRep:
        if not cls.supports_device(device):
            raise ParamInvalid(f"device {device!r} is not supported; use CPU", "device")
        graph = model.graph
        initializers = {t.name for t in graph.initializer}
        feeds = [i.name for i in graph.input if i.name not in initializers]
        outputs = [o.name for o in graph.output]
        options = dict(build_options or {})
        fixed = parse_input_shape(options.get("input_shape", "")) if "input_shape" in options else {}
        symbolic = [i.name for i in graph.input if i.name in feeds and i.name not in fixed
                    and i.type.WhichOneof("value") == "tensor_type" and not _static(i.type.tensor_type)]

        def build(input_shape: str = "") -> LoadedBundle:
            opts = {**options, "input_shape": ";".join(filter(None, [options.get("input_shape", ""), input_shape]))} \
                if input_shape else options
            buffer = bundle_build_model([GraphWithOptions(model, opts, role="infer", name=GRAPH)],
                                        target=target, cache=cache if cache is not None else shared_cache_dir())
            with tempfile.TemporaryDirectory(prefix="backend-") as tmp:  # a new path: saving replaces nothing
                path = os.path.join(tmp, "bundle.zip")
                bundle_save_model(path, buffer)
                # constants are read into memory: the file is not needed afterwards
                return load_bundle(path, executor=executor)

        if symbolic:  # compiled at the first run, when the inputs fix the dims
            return BundleBackendRep(None, feeds, outputs, build, symbolic)
        return BundleBackendRep(build(), feeds, outputs)

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU", **kwargs: Any) -> tuple[Any, ...]:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        try:
            return Device(device).type == DeviceType.CPU
        except AttributeError:
            return False


def _static(tt: onnx.TypeProto.Tensor) -> bool:
    return tt.HasField("shape") and all(d.HasField("dim_value") and d.dim_value >= 0 for d in tt.shape.dim)


prepare = BundleBackend.prepare
run_model = BundleBackend.run_model
supports_device = BundleBackend.supports_device
