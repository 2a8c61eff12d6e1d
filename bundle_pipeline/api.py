"""The seed-style API, mirroring Ascend CANN's aclgrphBundleBuildModel / aclgrphBundleSaveModel."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import BundleIOError, ParamInvalid
from .spec import BundleSpec, GraphSpec, check_graph_set
from .split import DEFAULT_MIN_BYTES, WeightRefreshableGraphs
from .targets import get_target

if TYPE_CHECKING:  # onnx is imported lazily: a no-op CLI build must not pay for it
    import onnx


@dataclass
class GraphWithOptions:
    """One graph of a bundle: ``graph`` is an ``onnx.ModelProto`` or a path; role inferred when omitted.

    ``assign`` maps graph outputs to the variables they write (``{"W_next": "W"}``: read-modify-write, init and
    update graphs only); a graph with ``assign`` and no role is an update graph if it has feeds, else init.
    """

    graph: onnx.ModelProto | str | os.PathLike
    build_options: Mapping[str, str] = field(default_factory=dict)
    role: str | None = None
    name: str | None = None
    assign: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelBuffer:
    """A built bundle in memory (the zip form); ``length`` is ``len(data)``, as CANN's ModelBufferData."""

    data: bytes

    @property
    def length(self) -> int:
        return len(self.data)


def bundle_build_model(graphs: Sequence[GraphWithOptions], target: str = "cpu",
                       cache: str | os.PathLike | None = None) -> ModelBuffer:
    """Compile the graphs into one bundle; failures raise BundleError with a status.

    ``cache`` is a cache directory or fsspec URL shared across builds; None uses a throwaway one.
    """
    from .pipeline import build

    if not graphs:
        raise ParamInvalid("bundle_build_model needs at least one graph", "graphs")
    specs = _graph_specs(graphs)
    with tempfile.TemporaryDirectory(prefix="bundle-pipeline-") as tmp:
        out = Path(tmp) / "bundle.zip"
        spec = BundleSpec(name="bundle", target=target, output=str(out),
                          cache=str(cache) if cache is not None else str(Path(tmp) / "cache"), graphs=specs)
        check_graph_set(spec.graphs, "graphs")
        get_target(target)
        build(spec)
        return ModelBuffer(out.read_bytes())


def bundle_save_model(path: str | os.PathLike, model: ModelBuffer) -> None:
    """Write the bundle file atomically (temp + rename): a failure leaves any previous file untouched. Only a
    bundle or a path that does not exist may be replaced (``guard``): anything else is PARAM_INVALID."""
    from .guard import check_replaceable

    dest = Path(path)
    check_replaceable(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(model.data)
        os.replace(tmp, dest)
    except OSError as err:
        raise BundleIOError(f"cannot save bundle: {err}", str(dest)) from None


def convert_to_weight_refreshable_graphs(model: onnx.ModelProto | str | os.PathLike,
                                         const_names: Sequence[str] | None = None,
                                         min_bytes: int = DEFAULT_MIN_BYTES) -> WeightRefreshableGraphs:
    """CANN's aclgrphConvertToWeightRefreshableGraphs: (infer, var_init, var_update) with the named (or, when
    ``const_names`` is None, every float weight of at least ``min_bytes``) tensors as variables. See ``split``."""
    from .split import convert_to_weight_refreshable_graphs as convert

    return convert(model, const_names, min_bytes)


def _graph_specs(graphs: Sequence[GraphWithOptions]) -> tuple[GraphSpec, ...]:
    sources = [_source(g.graph) for g in graphs]
    roles = [g.role or _infer_role(i, graphs) for i, g in enumerate(graphs)]
    names = [g.name or _default_name(g.graph, roles[i], i) for i, g in enumerate(graphs)]
    return tuple(GraphSpec(name=n, role=r, model=s, options=dict(g.build_options), assign=_assign(g))
                 for n, r, s, g in zip(names, roles, sources, graphs, strict=True))


def _assign(g: GraphWithOptions) -> dict[str, str]:
    if not isinstance(g.assign, Mapping):
        raise ParamInvalid(f"assign must be a mapping {{output: variable}}, not {type(g.assign).__name__}", "graphs")
    return dict(g.assign)


def _source(graph: onnx.ModelProto | str | os.PathLike) -> str | bytes:
    import onnx

    if isinstance(graph, onnx.ModelProto):
        return graph.SerializeToString()
    if isinstance(graph, str | os.PathLike):
        return str(Path(graph).resolve())
    raise ParamInvalid(f"graph must be an onnx.ModelProto or a path, not {type(graph).__name__}", "graphs")


def _default_name(graph: object, role: str, index: int) -> str:
    return Path(graph).stem if isinstance(graph, str | os.PathLike) else f"{role}{index}"


def _infer_role(index: int, graphs: Sequence[GraphWithOptions]) -> str:
    """init: no feeds and every output read by another graph; update: feeds and the same; else infer.
    A graph with ``assign`` writes variables: update with feeds, else init."""
    io = [_io_names(g.graph) for g in graphs]
    feeds, outputs, _ = io[index]
    if graphs[index].assign:
        return "update" if feeds else "init"
    read_elsewhere = set().union(*(io[j][2] for j in range(len(graphs)) if j != index))
    if outputs and outputs <= read_elsewhere:
        return "update" if feeds else "init"
    return "infer"


def _io_names(graph: onnx.ModelProto | str | os.PathLike) -> tuple[set[str], set[str], set[str]]:
    """(feeds, outputs, everything the graph reads) by name, without loading weight data."""
    import onnx
    from google.protobuf.message import DecodeError

    if isinstance(graph, str | os.PathLike):
        from .files import read_regular
        from .ir.onnx_import import MAX_MODEL_BYTES

        try:  # a regular file only: a FIFO given as a graph must not block role inference
            graph = onnx.load_model_from_string(read_regular(graph, MAX_MODEL_BYTES))
        except (OSError, ValueError, RuntimeError, DecodeError):
            return set(), set(), set()  # parse reports the bad file properly
    if not isinstance(graph, onnx.ModelProto):
        return set(), set(), set()
    g = graph.graph
    inits = {t.name for t in g.initializer}
    feeds = {i.name for i in g.input} - inits
    return feeds, {o.name for o in g.output}, feeds | inits
