"""split: one ONNX inference model -> weight-refreshable init / update / infer graphs.

The ONNX counterpart of CANN's ``aclgrphConvertToWeightRefreshableGraphs``. Each selected weight ``W``
(an initializer, or the output of a ``Constant`` node; the variable keeps that tensor name) becomes a
bundle variable (DESIGN.md section 2):

- infer graph: the original graph, with ``W`` read through a graph input named ``W`` (the initializer or
  ``Constant`` node is gone, so the weight bytes live in the init graph only);
- init graph: constant ``W.init`` (the original value) -> Identity -> output ``W``;
- update graph: input ``W.new`` (standard layout, the original shape and dtype) -> Identity -> output ``W``.

Default selection: floating-point tensors of at least ``min_bytes`` bytes that feed data inputs. Tensors
whose *values* steer shapes stay constants: the (op, input index) pairs of ``SHAPE_INPUTS`` (``ir/steering.py``), and,
transitively, every tensor that reaches one of them through other nodes (a weight cast to int64 and used
as a Reshape target steers a shape just the same). Only the inputs of ``TYPE_ONLY_INPUTS`` stop the
propagation, as those read a tensor's shape or dtype, never its values.

onnx is imported inside the functions: ``import bundle_pipeline`` must stay cheap.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import BundleIOError, GraphInvalid, OptionInvalid, ParamInvalid
from .ir.steering import SHAPE_INPUTS, TYPE_ONLY_INPUTS, steering_inputs  # noqa: F401 (SHAPE_INPUTS: re-exported)
from .options import parse_input_shape

if TYPE_CHECKING:
    import onnx

DEFAULT_MIN_BYTES = 8  # a float32 scalar (eps, clip bound, 0.5, ...) stays a constant; a 2-element bias does not
INIT_SUFFIX = ".init"
NEW_SUFFIX = ".new"
EXTERNAL_DATA_BYTES = 1 << 30  # init.onnx keeps its weights in init.onnx.data above this (protobuf caps at 2 GiB)

@dataclass(frozen=True)
class WeightRefreshableGraphs:
    """CANN's ``WeightRefreshableGraphs``: ``infer`` reads the variables, ``var_init`` writes their original
    values, ``var_update`` writes them from inputs ``<W>.new``. ``variables`` lists the variable names."""

    infer: onnx.ModelProto
    var_init: onnx.ModelProto
    var_update: onnx.ModelProto
    variables: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Tensor:
    """A weight candidate: an initializer or the output of a top-level Constant node."""

    name: str
    proto: onnx.TensorProto | None  # None: a Constant whose value is not a dense numeric tensor
    source: str  # "initializer" or "Constant node <name>"
    node_name: str = ""  # the Constant node's name, when it is one and has a name
    why_not: str = ""  # set when it cannot be a variable at all (string/sparse constant)

    @property
    def nbytes(self) -> int:
        import numpy as np
        from onnx import helper

        if self.proto is None:
            return 0
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(self.proto.data_type)).itemsize
        return int(np.prod(list(self.proto.dims), dtype=np.int64)) * itemsize


def convert_to_weight_refreshable_graphs(model: onnx.ModelProto | str | os.PathLike,
                                         const_names: Sequence[str] | None = None,
                                         min_bytes: int = DEFAULT_MIN_BYTES) -> WeightRefreshableGraphs:
    """Split ``model`` (a ModelProto or a path) into weight-refreshable graphs.

    ``const_names``: the tensors to make variables (initializer names, Constant output names, or
    Constant node names); None selects every floating-point tensor of at least ``min_bytes`` bytes that
    feeds data inputs. Errors are ``BundleError``s: PARAM_INVALID for a bad name list or a model with
    nothing to split, GRAPH_INVALID / IO_ERROR for a model that cannot be read.
    """
    import onnx

    where = str(model) if isinstance(model, str | os.PathLike) else f"model {model.graph.name or '(unnamed)'}"
    if isinstance(model, onnx.ModelProto):
        source = onnx.ModelProto()
        source.CopyFrom(model)
    else:
        source = load(model, where)
    if isinstance(min_bytes, bool) or not isinstance(min_bytes, int) or min_bytes < 0:
        raise ParamInvalid(f"min_bytes must be a non-negative integer, got {min_bytes!r}", where)
    tensors = weight_tensors(source.graph)
    steering = shape_steering(source.graph)
    from .ir.scopes import body_reads

    used = {i for node in source.graph.node for i in node.input} | {r for n in source.graph.node for r in body_reads(n)}
    outputs = {o.name for o in source.graph.output}
    if const_names is None:
        names = [t.name for t in tensors.values()
                 if _is_float(t) and t.nbytes >= min_bytes and t.name in used and t.name not in steering
                 and t.name not in outputs]
        if not names:
            raise ParamInvalid(_nothing_to_split(tensors, steering, min_bytes), where)
    else:
        names = _check_names(const_names, tensors, steering, used, outputs, source.graph, where)
    _check_name_clashes(names, source.graph, where)
    chosen = [tensors[n] for n in names]
    external = [t.name for t in chosen if t.proto.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise ParamInvalid(f"weight {external[0]!r} is external data that was not loaded; pass the model's path, or "
                           f"a ModelProto loaded with its external data (onnx.load(path))", where)
    infer = _infer_model(source, chosen)
    var_init = _init_model(source, chosen)
    var_update = _update_model(source, chosen)
    for role, m in (("infer", infer), ("init", var_init), ("update", var_update)):
        _check(m, f"{where}: {role} graph")
    return WeightRefreshableGraphs(infer, var_init, var_update, tuple(names))


def load(path: str | os.PathLike, where: str) -> onnx.ModelProto:
    """Read a model file with its external data (the init graph needs the bytes)."""
    from .ir.onnx_import import inline_external, load_model

    model, base = load_model(path, where)
    for t in _external_tensors(model):  # each location checked and read by us: inside the model's directory,
        inline_external(t, base, where)  # a regular file, exactly the tensor's bytes (no onnx ValidationError)
    return model


def _external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    import onnx

    found: list[onnx.TensorProto] = []
    graphs = [model.graph]
    while graphs:
        g = graphs.pop()
        tensors = list(g.initializer)
        for node in g.node:
            for attr in node.attribute:
                tensors += [attr.t, *attr.tensors] if attr.HasField("t") else list(attr.tensors)
                graphs += [attr.g, *attr.graphs] if attr.HasField("g") else list(attr.graphs)
        found += [t for t in tensors if t.data_location == onnx.TensorProto.EXTERNAL]
    return found


# ---------------------------------------------------------------- analysis


def weight_tensors(graph: onnx.GraphProto) -> dict[str, _Tensor]:
    """Initializers and Constant outputs, by tensor name, in graph order; those of If/Loop/Scan bodies too
    (a body reads the variable from the outer scope once its Constant is gone). A name that sibling scopes
    both define names two tensors: it cannot be one variable."""
    from .ir.scopes import bodies

    found: dict[str, _Tensor] = {t.name: _Tensor(t.name, t, "initializer") for t in graph.initializer}
    for index, node in enumerate(graph.node):
        for body in bodies(node):
            for name, tensor in weight_tensors(body).items():
                twice = name in found
                found[name] = _Tensor(name, None, tensor.source, tensor.node_name,
                                      "it is defined in more than one scope") if twice else tensor
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or not node.output:
            continue
        label = f"Constant node {node.name!r}" if node.name else f"Constant node #{index}"
        proto, why_not = _constant_proto(node)
        if proto is not None:
            proto.name = node.output[0]
        found[node.output[0]] = _Tensor(node.output[0], proto, label, node.name, why_not)
    return found


def _constant_proto(node: onnx.NodeProto) -> tuple[onnx.TensorProto | None, str]:
    """The Constant's value as a dense TensorProto (bytes copied as they are), or None and why not."""
    from onnx import TensorProto, helper

    for attr in node.attribute:
        if attr.name == "value":
            proto = TensorProto()
            proto.CopyFrom(attr.t)
            if proto.data_type in (TensorProto.STRING, TensorProto.UNDEFINED):
                return None, "it holds strings"
            return proto, ""
        if attr.name == "value_float":
            return helper.make_tensor("", TensorProto.FLOAT, [], [attr.f]), ""
        if attr.name == "value_floats":
            return helper.make_tensor("", TensorProto.FLOAT, [len(attr.floats)], list(attr.floats)), ""
        if attr.name == "value_int":
            return helper.make_tensor("", TensorProto.INT64, [], [attr.i]), ""
        if attr.name == "value_ints":
            return helper.make_tensor("", TensorProto.INT64, [len(attr.ints)], list(attr.ints)), ""
        if attr.name in ("value_string", "value_strings"):
            return None, "it holds strings"
        if attr.name == "sparse_value":
            return None, "it is a sparse tensor"
    return None, "it has no value attribute"


def shape_steering(graph: onnx.GraphProto) -> dict[str, str]:
    """Tensor name -> why its values steer shapes: a SHAPE_INPUTS input, or an input of a node whose output does.

    Nodes are in topological order (ONNX requires it), so one reverse pass sees every consumer first.
    """
    steering: dict[str, str] = {}
    _mark_steering(graph, steering)
    return steering


def _mark_steering(graph: onnx.GraphProto, steering: dict[str, str]) -> None:
    """One reverse pass over ``graph``; a control node's bodies are its consumers' side, so they are
    marked first (a body output that steers makes its body's inputs to it steer, outer names included)."""
    from .ir.scopes import bodies

    for index in range(len(graph.node) - 1, -1, -1):
        node = graph.node[index]
        label = f"{node.op_type} node {node.name!r}" if node.name else f"{node.op_type} node #{index}"
        for body in bodies(node):
            for out, body_out in zip(node.output, body.output, strict=False):
                if out in steering:
                    steering.setdefault(body_out.name, f"it is returned as {out!r}, which steers shapes")
            _mark_steering(body, steering)
        for i, name in steering_inputs(node.op_type, list(node.input)):
            steering.setdefault(name, f"it is input {i} of {label}, which steers the output shape")
        reached = next((o for o in node.output if o in steering), None)
        if reached is None:
            continue
        for i, name in enumerate(node.input):
            if name and (node.op_type, i) not in TYPE_ONLY_INPUTS:
                steering.setdefault(name, f"it feeds {label}, whose output {reached!r} steers shapes")


def _is_float(t: _Tensor) -> bool:
    from onnx import TensorProto

    return t.proto is not None and t.proto.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE,
                                                         TensorProto.BFLOAT16)


def _nothing_to_split(tensors: Mapping[str, _Tensor], steering: Mapping[str, str], min_bytes: int) -> str:
    floats = [t for t in tensors.values() if _is_float(t)]
    small = sum(t.nbytes < min_bytes for t in floats)
    steer = sum(t.name in steering for t in floats)
    return (f"no weights to split: the model has {len(tensors)} initializers/Constant tensors, {len(floats)} of "
            f"them floating point ({small} below min_bytes={min_bytes}, {steer} steering shapes); lower "
            f"--min-bytes or name the tensors with const_names")


def _check_names(const_names: Sequence[str], tensors: Mapping[str, _Tensor], steering: Mapping[str, str],
                 used: set[str], outputs: set[str], graph: onnx.GraphProto, where: str) -> list[str]:
    if isinstance(const_names, str):
        raise ParamInvalid("const_names must be a list of tensor names, not one string", where)
    names = [str(n).strip() for n in const_names]
    if not names:
        raise ParamInvalid("const_names is empty; name at least one tensor, or pass None for the default "
                           "selection", where)
    by_node = {t.node_name: t.name for t in tensors.values() if t.node_name}
    resolved: list[str] = []
    for name in names:
        tensor = name if name in tensors else by_node.get(name)
        if tensor is None:
            close = sorted(t for t in tensors if name.lower() in t.lower())[:5]
            hint = f"; similar: {', '.join(close)}" if close else f"; the model has {len(tensors)} candidates"
            raise ParamInvalid(f"const_names: {name!r} is no initializer or Constant output of the model{hint}", where)
        t = tensors[tensor]
        if tensor in resolved:
            raise ParamInvalid(f"const_names: {name!r} is named twice", where)
        if t.proto is None:
            raise ParamInvalid(f"const_names: {name!r} ({t.source}) cannot be a variable: {t.why_not}", where)
        if tensor in steering:
            raise ParamInvalid(f"const_names: {name!r} steers shapes and stays a constant: {steering[tensor]}", where)
        if tensor not in used:
            raise ParamInvalid(f"const_names: {name!r} is read by no node", where)
        if tensor in outputs:
            raise ParamInvalid(f"const_names: {name!r} is a graph output; an infer graph cannot write a variable",
                               where)
        resolved.append(tensor)
    return resolved


def _check_name_clashes(names: Sequence[str], graph: onnx.GraphProto, where: str) -> None:
    """The update graph's inputs are named ``<W>.new``: none may be a variable name itself."""
    chosen = set(names)
    for name in names:
        if name + NEW_SUFFIX in chosen:
            raise ParamInvalid(f"variables {name!r} and {name + NEW_SUFFIX!r} clash: the update graph's input for "
                               f"{name!r} is named {name + NEW_SUFFIX!r}; leave one of them constant", where)


# ---------------------------------------------------------------- the three graphs


def _value_info(name: str, proto: onnx.TensorProto) -> onnx.ValueInfoProto:
    from onnx import helper

    return helper.make_tensor_value_info(name, proto.data_type, list(proto.dims))


def _infer_model(source: onnx.ModelProto, chosen: Sequence[_Tensor]) -> onnx.ModelProto:
    """The original graph reading each variable through a graph input of its name."""
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(source)
    graph = model.graph
    names = {t.name for t in chosen}
    _drop_weights(graph, names)
    kept_info = [v for v in graph.value_info if v.name not in names]
    del graph.value_info[:]
    graph.value_info.extend(kept_info)
    inputs = [i for i in graph.input if i.name not in names]  # an overridable initializer's input is re-added
    del graph.input[:]
    graph.input.extend(inputs + [_value_info(t.name, t.proto) for t in chosen])
    return model


def _drop_weights(graph: onnx.GraphProto, names: set[str]) -> None:
    """Remove the Constant nodes and initializers (bodies included) that became variables: a body then reads
    the infer graph's input of that name from the outer scope."""
    from .ir.scopes import bodies

    kept = [n for n in graph.node if not (n.op_type == "Constant" and n.output and n.output[0] in names)]
    del graph.node[:]
    graph.node.extend(kept)
    inits = [t for t in graph.initializer if t.name not in names]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    for node in graph.node:
        for body in bodies(node):
            _drop_weights(body, names)


def _init_name(name: str, taken: set[str]) -> str:
    candidate, n = name + INIT_SUFFIX, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}{INIT_SUFFIX}{n}"
    taken.add(candidate)
    return candidate


def _init_model(source: onnx.ModelProto, chosen: Sequence[_Tensor]) -> onnx.ModelProto:
    """No inputs; constant ``<W>.init`` (the original bytes) -> Identity -> output ``W``."""
    from onnx import TensorProto, helper

    taken = {t.name for t in chosen}
    nodes, inits, outputs = [], [], []
    for t in chosen:
        const = TensorProto()
        const.CopyFrom(t.proto)
        const.name = _init_name(t.name, taken)
        inits.append(const)
        nodes.append(helper.make_node("Identity", [const.name], [t.name], name=f"init/{t.name}"))
        outputs.append(_value_info(t.name, t.proto))
    graph = helper.make_graph(nodes, f"{source.graph.name or 'model'}_init", [], outputs, initializer=inits)
    return _model_like(source, graph)


def _update_model(source: onnx.ModelProto, chosen: Sequence[_Tensor]) -> onnx.ModelProto:
    """Input ``<W>.new`` in the standard layout -> Identity -> output ``W``."""
    from onnx import helper

    nodes = [helper.make_node("Identity", [t.name + NEW_SUFFIX], [t.name], name=f"update/{t.name}") for t in chosen]
    inputs = [_value_info(t.name + NEW_SUFFIX, t.proto) for t in chosen]
    outputs = [_value_info(t.name, t.proto) for t in chosen]
    graph = helper.make_graph(nodes, f"{source.graph.name or 'model'}_update", inputs, outputs)
    return _model_like(source, graph)


def _model_like(source: onnx.ModelProto, graph: onnx.GraphProto) -> onnx.ModelProto:
    from onnx import helper

    opsets = [o for o in source.opset_import if o.domain in ("", "ai.onnx")] or [helper.make_opsetid("", 17)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="bundle-pipeline split")
    model.ir_version = source.ir_version
    return model


def _check(model: onnx.ModelProto, where: str) -> None:
    import onnx

    try:
        if model.ByteSize() < EXTERNAL_DATA_BYTES:
            onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        first = str(err).strip().splitlines()[0]
        raise GraphInvalid(f"the split graph does not pass onnx.checker: {first}", where) from None


# ---------------------------------------------------------------- files


def check_input_shape(graphs: WeightRefreshableGraphs, input_shape: str, where: str = "--input-shape") -> None:
    """``input_shape`` (CANN syntax) must parse and name feeds of the infer graph with their rank."""
    shapes = parse_input_shape(input_shape, where)
    if not shapes and input_shape.strip():
        raise OptionInvalid(f"input_shape {input_shape!r} names no input; expected name:d0,d1;name2:...", where)
    feeds = {i.name: i for i in graphs.infer.graph.input if i.name not in set(graphs.variables)}
    for name, dims in shapes.items():
        if name not in feeds:
            raise OptionInvalid(f"input_shape names {name!r}, which is not an input of the model "
                                f"(inputs: {', '.join(feeds) or 'none'})", where)
        tensor_type = feeds[name].type.tensor_type
        if tensor_type.HasField("shape") and len(tensor_type.shape.dim) != len(dims):
            raise OptionInvalid(f"input_shape for {name!r} has {len(dims)} dims, the input has rank "
                                f"{len(tensor_type.shape.dim)}", where)


def write_split(graphs: WeightRefreshableGraphs, outdir: str | os.PathLike, name: str,
                input_shape: str = "") -> Path:
    """Write init.onnx, update.onnx, infer.onnx and a bundle.yaml that builds them; returns the spec path.

    Every file goes to a temporary name first and is renamed, so a failure leaves no partial file.
    """
    import onnx
    import yaml

    out = Path(outdir)
    if input_shape:
        check_input_shape(graphs, input_shape)
    infer_entry: dict = {"name": "infer", "role": "infer", "model": "infer.onnx"}
    if input_shape:
        infer_entry["options"] = {"input_shape": input_shape}
    spec = {"name": _bundle_name(name), "target": "cpu", "output": f"build/{_bundle_name(name)}.bundle",
            "variables": list(graphs.variables),
            "graphs": [{"name": "init", "role": "init", "model": "init.onnx"},
                       {"name": "update", "role": "update", "model": "update.onnx"}, infer_entry]}
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".split-", dir=out) as tmp:
            staged = Path(tmp)
            for file, model in (("infer.onnx", graphs.infer), ("update.onnx", graphs.var_update),
                                ("init.onnx", graphs.var_init)):
                large = model.ByteSize() >= EXTERNAL_DATA_BYTES
                if large:  # saving as external data rewrites the proto: keep the caller's intact
                    model = _copy(model)
                onnx.save_model(model, staged / file, save_as_external_data=large, all_tensors_to_one_file=True,
                                location=f"{file}.data")
            (staged / "bundle.yaml").write_text(yaml.safe_dump(spec, sort_keys=False, width=1000))
            for f in sorted(staged.iterdir()):
                os.replace(f, out / f.name)
    except OSError as err:
        raise BundleIOError(f"cannot write the split graphs: {err}", str(out)) from None
    return out / "bundle.yaml"


SPLIT_FILES = ("infer.onnx", "update.onnx", "init.onnx", "bundle.yaml")


def split_model_file(model: str | os.PathLike, outdir: str | os.PathLike, const_names: Iterable[str] | None = None,
                     min_bytes: int = DEFAULT_MIN_BYTES, input_shape: str = "",
                     force: bool = False) -> tuple[WeightRefreshableGraphs, Path]:
    """``bundle-pipeline split``: convert and write; the input shape is checked before anything is written.
    Existing files it would write are refused unless ``force`` (and the input model always is)."""
    _check_split_outputs(Path(model), Path(outdir), force)
    graphs = convert_to_weight_refreshable_graphs(model, None if const_names is None else list(const_names),
                                                  min_bytes)
    return graphs, write_split(graphs, outdir, Path(model).stem, input_shape)


def _check_split_outputs(model: Path, outdir: Path, force: bool) -> None:
    from .guard import Protected, check_new_file

    if outdir.exists() and not outdir.is_dir():
        raise ParamInvalid("OUTDIR is not a directory", str(outdir))
    guarded = [Protected(os.path.realpath(model), f"the input model {model}")]
    for name in (*SPLIT_FILES, *(f"{f}.data" for f in SPLIT_FILES[:3])):
        check_new_file(outdir / name, guarded, force, name)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _bundle_name(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem).strip("._") or "model"
