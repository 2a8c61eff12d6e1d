"""Builders of small three-role (init / update / infer) ONNX bundles used as test inputs."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

DEFAULT_OPSET = 17
PRODUCER_NAME = "bundle-pipeline-tests"
INIT_SUFFIX = ".init"
NEW_SUFFIX = ".new"

_FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16})


@dataclass(frozen=True)
class InferGraph:
    """One infer graph of a built bundle."""

    name: str
    path: Path
    inputs: dict[str, tuple[int, ...]]
    outputs: tuple[str, ...]
    variables: tuple[str, ...]
    constants: tuple[str, ...]
    input_dtypes: dict[str, np.dtype] = field(default_factory=dict)


@dataclass(frozen=True)
class BuiltBundle:
    """Paths and metadata of a bundle written by one of the builders."""

    name: str
    directory: Path
    spec: Path
    init: Path
    update: Path
    infer: dict[str, InferGraph]
    variables: tuple[str, ...]
    variable_shapes: dict[str, tuple[int, ...]]
    positive_variables: frozenset[str] = frozenset()
    duplicate_constants: tuple[tuple[tuple[str, str], ...], ...] = ()

    @property
    def infer_names(self) -> list[str]:
        return list(self.infer)

    def graph(self, name: str | None = None) -> InferGraph:
        """The named infer graph, or the first one when `name` is None."""
        return self.infer[name] if name is not None else next(iter(self.infer.values()))

    def feeds(self, rng: np.random.Generator, graph: str | None = None) -> dict[str, np.ndarray]:
        """Random feeds for an infer graph (the first one by default)."""
        infer = self.graph(graph)
        return {
            name: rng.standard_normal(shape).astype(infer.input_dtypes.get(name, np.float32))
            for name, shape in infer.inputs.items()
        }

    def new_weights(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Random new values for every variable, keyed by variable name (positive where required)."""
        return {name: self._random_value(name, rng) for name in self.variables}

    def update_feeds(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Random feeds for the update graph: `<var>.new` -> new value."""
        return {name + NEW_SUFFIX: value for name, value in self.new_weights(rng).items()}

    def initial_weights(self) -> dict[str, np.ndarray]:
        """The values the init graph writes, read from its constants."""
        init = onnx.load(self.init)
        values = {t.name: numpy_helper.to_array(t) for t in init.graph.initializer}
        return {name: values[name + INIT_SUFFIX] for name in self.variables}

    def _random_value(self, name: str, rng: np.random.Generator) -> np.ndarray:
        shape = self.variable_shapes[name]
        if name in self.positive_variables:
            return rng.uniform(0.5, 1.5, shape).astype(np.float32)
        return (0.3 * rng.standard_normal(shape)).astype(np.float32)


# ---------------------------------------------------------------- three roles


def three_role(
    infer_model: onnx.ModelProto, var_names: Iterable[str] | None = None
) -> tuple[onnx.ModelProto, onnx.ModelProto, onnx.ModelProto]:
    """Split an infer model whose float initializers are the weights into (init, update, infer).

    `var_names` selects the variables (default: every float initializer); other initializers stay
    constants of the infer graph.
    """
    names = float_initializer_names(infer_model) if var_names is None else list(var_names)
    variables = initializer_values(infer_model, names)
    opsets = list(infer_model.opset_import)
    init = make_init_model(variables, opsets, infer_model.ir_version)
    update = make_update_model(variables, opsets, infer_model.ir_version)
    return init, update, copy.deepcopy(infer_model)


def float_initializer_names(model: onnx.ModelProto) -> list[str]:
    """Names of the model's floating-point initializers, in graph order."""
    return [t.name for t in model.graph.initializer if t.data_type in _FLOAT_TYPES]


def initializer_values(model: onnx.ModelProto, names: Iterable[str]) -> dict[str, np.ndarray]:
    """The values of the named initializers, in the given order; a missing name is an error."""
    by_name = {t.name: t for t in model.graph.initializer}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise KeyError(f"not initializers of graph {model.graph.name!r}: {missing}")
    return {n: numpy_helper.to_array(by_name[n]) for n in names}


def make_init_model(
    variables: Mapping[str, np.ndarray], opset_imports: Sequence[onnx.OperatorSetIdProto], ir_version: int
) -> onnx.ModelProto:
    """Init graph: no inputs; constant `<W>.init` -> Identity -> output `W` for each variable."""
    nodes = [helper.make_node("Identity", [n + INIT_SUFFIX], [n], name=f"init_{n}") for n in variables]
    initializers = [numpy_helper.from_array(v, n + INIT_SUFFIX) for n, v in variables.items()]
    outputs = [_value_info(n, v) for n, v in variables.items()]
    graph = helper.make_graph(nodes, "init", [], outputs, initializer=initializers)
    return _model(graph, opset_imports, ir_version)


def make_update_model(
    variables: Mapping[str, np.ndarray], opset_imports: Sequence[onnx.OperatorSetIdProto], ir_version: int
) -> onnx.ModelProto:
    """Update graph: input `<W>.new` -> Identity -> output `W` for each variable."""
    nodes = [helper.make_node("Identity", [n + NEW_SUFFIX], [n], name=f"update_{n}") for n in variables]
    inputs = [_value_info(n + NEW_SUFFIX, v) for n, v in variables.items()]
    outputs = [_value_info(n, v) for n, v in variables.items()]
    graph = helper.make_graph(nodes, "update", inputs, outputs)
    return _model(graph, opset_imports, ir_version)


# ---------------------------------------------------------------- builders


def mlp(directory: str | Path, *, layers: int = 3, seed: int = 0, opset: int = DEFAULT_OPSET,
        options: Mapping[str, str] | None = None) -> BuiltBundle:
    """MLP x[4,16] -> y[4,8]: layers alternate Gemm, MatMul+Add and Gemm(transB=1), Relu between."""
    if layers not in (2, 3):
        raise ValueError(f"mlp supports 2 or 3 layers, got {layers}")
    rng = np.random.default_rng(seed)
    widths = [16] + [32] * (layers - 1) + [8]
    nodes, inits, current = [], [], "x"
    for i in range(layers):
        current = _dense_layer(nodes, inits, rng, i, current, widths[i], widths[i + 1])
        if i < layers - 1:
            current = _node(nodes, "Relu", [current], f"relu{i + 1}")
    nodes[-1].output[0] = "y"
    graph = helper.make_graph(nodes, "mlp", [_input("x", (4, 16))], [_output("y", (4, 8))], initializer=inits)
    infer = _model(graph, [helper.make_opsetid("", opset)])
    return write_bundle(directory, "mlp", {"infer": infer}, options=options)


def wide(directory: str | Path, *, width: int = 512, seed: int = 0, opset: int = DEFAULT_OPSET) -> BuiltBundle:
    """x[4,W] -> MatMul(W x W) + bias -> Relu: a weight of W*W*4 bytes (1 MiB at 512), larger than the caches'
    packing threshold, so it is stored as a tensor entry of its own and a bundle array of its own."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((width, width)).astype(np.float32), "fc.weight")
    b = numpy_helper.from_array(rng.standard_normal(width).astype(np.float32), "fc.bias")
    nodes = [helper.make_node("MatMul", ["x", "fc.weight"], ["h"], name="fc"),
             helper.make_node("Add", ["h", "fc.bias"], ["z"], name="bias"),
             helper.make_node("Relu", ["z"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "wide", [_input("x", (4, width))], [_output("y", (4, width))],
                              initializer=[w, b])
    return write_bundle(directory, "wide", {"infer": _model(graph, [helper.make_opsetid("", opset)])})


def cnn(directory: str | Path, *, seed: int = 0, opset: int = DEFAULT_OPSET,
        options: Mapping[str, str] | None = None) -> BuiltBundle:
    """Small CNN x[2,3,16,16] -> y[2,2,5]: Conv/BN/Relu/MaxPool, depthwise and grouped Conv, GAP, Gemm."""
    rng = np.random.default_rng(seed)
    inits = [
        _weight(rng, "conv1.weight", (8, 3, 3, 3)), _weight(rng, "conv1.bias", (8,)),
        _weight(rng, "bn1.scale", (8,), around=1.0), _weight(rng, "bn1.bias", (8,)),
        _weight(rng, "bn1.mean", (8,)), _positive(rng, "bn1.var", (8,)),
        _weight(rng, "dw.weight", (8, 1, 3, 3)), _weight(rng, "dw.bias", (8,)),
        _weight(rng, "pw.weight", (16, 4, 1, 1)),
        _weight(rng, "fc.weight", (10, 16)), _weight(rng, "fc.bias", (10,)),
        numpy_helper.from_array(np.array([2, 2, 5], dtype=np.int64), "out_shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv1.weight", "conv1.bias"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn1.scale", "bn1.bias", "bn1.mean", "bn1.var"], ["b1"],
                         name="bn1", epsilon=1e-5),
        helper.make_node("Relu", ["b1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "dw.weight", "dw.bias"], ["d1"], name="dw", group=8, pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["d1"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "pw.weight"], ["g1"], name="pw", group=2),
        helper.make_node("Relu", ["g1"], ["r3"], name="relu3"),
        helper.make_node("GlobalAveragePool", ["r3"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1),
        helper.make_node("Reshape", ["logits", "out_shape"], ["y"], name="reshape"),
    ]
    graph = helper.make_graph(nodes, "cnn", [_input("x", (2, 3, 16, 16))], [_output("y", (2, 2, 5))],
                              initializer=inits)
    infer = _model(graph, [helper.make_opsetid("", opset)])
    return write_bundle(directory, "cnn", {"infer": infer}, positive={"bn1.var"}, options=options)


def attention(directory: str | Path, *, seed: int = 0, opset: int = DEFAULT_OPSET,
              options: Mapping[str, str] | None = None) -> BuiltBundle:
    """Pre-LN single-head attention block x[2,8,16] -> y[2,8,16]; Gelu op from opset 20, else Erf form."""
    if opset < 17:
        raise ValueError(f"attention needs opset >= 17 for LayerNormalization, got {opset}")
    rng = np.random.default_rng(seed)
    dim, hidden = 16, 32
    weights = [
        _weight(rng, "ln1.scale", (dim,), around=1.0), _weight(rng, "ln1.bias", (dim,)),
        _weight(rng, "attn.wq", (dim, dim)), _weight(rng, "attn.wk", (dim, dim)),
        _weight(rng, "attn.wv", (dim, dim)), _weight(rng, "attn.wo", (dim, dim)),
        _weight(rng, "ln2.scale", (dim,), around=1.0), _weight(rng, "ln2.bias", (dim,)),
        _weight(rng, "mlp.w1", (dim, hidden)), _weight(rng, "mlp.b1", (hidden,)),
        _weight(rng, "mlp.w2", (hidden, dim)), _weight(rng, "mlp.b2", (dim,)),
    ]
    constants = [_scalar("attn.scale", 1.0 / np.sqrt(dim))]
    nodes = _attention_nodes() + _gelu_nodes("h", "g", opset, constants) + _mlp_out_nodes()
    graph = helper.make_graph(nodes, "attention", [_input("x", (2, 8, dim))], [_output("y", (2, 8, dim))],
                              initializer=weights + constants)
    infer = _model(graph, [helper.make_opsetid("", opset)])
    var_names = [t.name for t in weights]
    return write_bundle(directory, "attention", {"infer": infer}, var_names=var_names, options=options)


def shared(directory: str | Path, *, seed: int = 0, opset: int = DEFAULT_OPSET,
           options: Mapping[str, str] | None = None) -> BuiltBundle:
    """Three infer graphs x[2,16] sharing a trunk by variable name.

    infer_a: trunk + head_a; infer_b: trunk + head_b (shares some variables with a);
    infer_c: trunk + head_a + a private constant `c.offset` (shares all of a's variables).
    Each graph scales x by its own constant (`a.scale`, `b.scale`, `c.scale`) holding identical bytes.
    """
    rng = np.random.default_rng(seed)
    trunk = [_weight(rng, "trunk.weight", (16, 32)), _weight(rng, "trunk.bias", (32,))]
    head_a = [_weight(rng, "head_a.weight", (32, 8)), _weight(rng, "head_a.bias", (8,))]
    head_b = [_weight(rng, "head_b.weight", (32, 4)), _weight(rng, "head_b.bias", (4,))]
    scale = rng.uniform(0.5, 1.5, (16,)).astype(np.float32)
    offset = numpy_helper.from_array(rng.standard_normal((8,)).astype(np.float32), "c.offset")
    infers = {
        "infer_a": _shared_graph("a", scale, trunk, head_a, 8, opset),
        "infer_b": _shared_graph("b", scale, trunk, head_b, 4, opset),
        "infer_c": _shared_graph("c", scale, trunk, head_a, 8, opset, offset=offset),
    }
    var_names = [t.name for t in trunk + head_a + head_b]
    duplicates = ((("infer_a", "a.scale"), ("infer_b", "b.scale"), ("infer_c", "c.scale")),)
    return write_bundle(directory, "shared", infers, var_names=var_names, duplicates=duplicates,
                        options=options)


# ---------------------------------------------------------------- bundle writing


def write_bundle(
    directory: str | Path,
    name: str,
    infers: Mapping[str, onnx.ModelProto],
    *,
    var_names: Sequence[str] | None = None,
    positive: Iterable[str] = (),
    duplicates: tuple[tuple[tuple[str, str], ...], ...] = (),
    options: Mapping[str, str] | None = None,
) -> BuiltBundle:
    """Write init/update/infer graphs and bundle.yaml for the given infer models into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    variables = _bundle_variables(infers, var_names)
    first = next(iter(infers.values()))
    opsets, ir_version = list(first.opset_import), first.ir_version
    models = {"init": make_init_model(variables, opsets, ir_version),
              "update": make_update_model(variables, opsets, ir_version), **infers}
    for graph_name, model in models.items():
        onnx.save(model, directory / f"{graph_name}.onnx")
    spec = directory / "bundle.yaml"
    spec.write_text(bundle_yaml(name, list(infers), options))
    return BuiltBundle(
        name=name, directory=directory, spec=spec,
        init=directory / "init.onnx", update=directory / "update.onnx",
        infer={g: _infer_graph(g, directory / f"{g}.onnx", m, variables) for g, m in infers.items()},
        variables=tuple(variables),
        variable_shapes={n: tuple(v.shape) for n, v in variables.items()},
        positive_variables=frozenset(positive),
        duplicate_constants=duplicates,
    )


def bundle_yaml(name: str, infer_names: Sequence[str], options: Mapping[str, str] | None = None) -> str:
    """bundle.yaml text: one init graph, one update graph, the named infer graphs."""
    graphs = [{"name": "init", "role": "init", "model": "init.onnx"},
              {"name": "update", "role": "update", "model": "update.onnx"}]
    for infer_name in infer_names:
        entry = {"name": infer_name, "role": "infer", "model": f"{infer_name}.onnx"}
        if options:
            entry["options"] = {k: str(v) for k, v in options.items()}
        graphs.append(entry)
    spec = {"name": name, "target": "cpu", "output": f"build/{name}.bundle", "graphs": graphs}
    return yaml.safe_dump(spec, sort_keys=False, default_flow_style=None)


def _bundle_variables(infers: Mapping[str, onnx.ModelProto], var_names: Sequence[str] | None
                      ) -> dict[str, np.ndarray]:
    """Union of the variables over all infer graphs; a name in several graphs must hold the same value."""
    variables: dict[str, np.ndarray] = {}
    for graph_name, model in infers.items():
        names = float_initializer_names(model)
        if var_names is not None:
            names = [n for n in names if n in set(var_names)]
        for n, value in initializer_values(model, names).items():
            if n in variables and not np.array_equal(variables[n], value):
                raise ValueError(f"variable {n!r} differs in graph {graph_name!r}")
            variables.setdefault(n, value)
    if var_names is not None:
        unused = sorted(set(var_names) - set(variables))
        if unused:
            raise KeyError(f"variables read by no infer graph: {unused}")
    return variables


def _infer_graph(name: str, path: Path, model: onnx.ModelProto, variables: Mapping[str, np.ndarray]
                 ) -> InferGraph:
    init_names = [t.name for t in model.graph.initializer]
    feeds = [i for i in model.graph.input if i.name not in set(init_names)]
    return InferGraph(
        name=name, path=path,
        inputs={i.name: _static_shape(i) for i in feeds},
        outputs=tuple(o.name for o in model.graph.output),
        variables=tuple(n for n in init_names if n in variables),
        constants=tuple(n for n in init_names if n not in variables),
        input_dtypes={i.name: helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type) for i in feeds},
    )


def _static_shape(value_info: onnx.ValueInfoProto) -> tuple[int, ...]:
    dims = value_info.type.tensor_type.shape.dim
    if not all(d.HasField("dim_value") for d in dims):
        raise ValueError(f"input {value_info.name!r} has no static shape")
    return tuple(d.dim_value for d in dims)


# ---------------------------------------------------------------- graph pieces


def _dense_layer(nodes: list, inits: list, rng: np.random.Generator, index: int, x: str, n_in: int,
                 n_out: int) -> str:
    """Append layer `fc<index+1>` (Gemm, MatMul+Add or Gemm transB by index) and return its output."""
    prefix = f"fc{index + 1}"
    kind = index % 3
    shape = (n_out, n_in) if kind == 2 else (n_in, n_out)
    inits += [_weight(rng, f"{prefix}.weight", shape), _weight(rng, f"{prefix}.bias", (n_out,))]
    if kind == 1:
        product = _node(nodes, "MatMul", [x, f"{prefix}.weight"], f"{prefix}_matmul")
        return _node(nodes, "Add", [product, f"{prefix}.bias"], f"{prefix}_add")
    return _node(nodes, "Gemm", [x, f"{prefix}.weight", f"{prefix}.bias"], prefix, transB=int(kind == 2))


def _attention_nodes() -> list[onnx.NodeProto]:
    """x -> LN -> single-head attention -> residual `r1` -> LN `n2` -> MatMul+Add `h`."""
    make = helper.make_node
    return [
        make("LayerNormalization", ["x", "ln1.scale", "ln1.bias"], ["n1"], name="ln1", axis=-1, epsilon=1e-5),
        make("MatMul", ["n1", "attn.wq"], ["q"], name="q_proj"),
        make("MatMul", ["n1", "attn.wk"], ["k"], name="k_proj"),
        make("MatMul", ["n1", "attn.wv"], ["v"], name="v_proj"),
        make("Transpose", ["k"], ["kt"], name="k_transpose", perm=[0, 2, 1]),
        make("MatMul", ["q", "kt"], ["scores"], name="scores"),
        make("Mul", ["scores", "attn.scale"], ["scaled"], name="scale"),
        make("Softmax", ["scaled"], ["probs"], name="softmax", axis=-1),
        make("MatMul", ["probs", "v"], ["context"], name="context"),
        make("MatMul", ["context", "attn.wo"], ["attn_out"], name="o_proj"),
        make("Add", ["x", "attn_out"], ["r1"], name="residual1"),
        make("LayerNormalization", ["r1", "ln2.scale", "ln2.bias"], ["n2"], name="ln2", axis=-1, epsilon=1e-5),
        make("MatMul", ["n2", "mlp.w1"], ["h0"], name="mlp_fc1"),
        make("Add", ["h0", "mlp.b1"], ["h"], name="mlp_bias1"),
    ]


def _gelu_nodes(x: str, y: str, opset: int, constants: list[TensorProto]) -> list[onnx.NodeProto]:
    """Gelu(x) as the opset-20 op, else 0.5 * x * (1 + erf(x / sqrt(2))) with constant initializers."""
    if opset >= 20:
        return [helper.make_node("Gelu", [x], [y], name="gelu")]
    constants += [_scalar("gelu.inv_sqrt2", 1.0 / np.sqrt(2.0)), _scalar("gelu.one", 1.0),
                  _scalar("gelu.half", 0.5)]
    make = helper.make_node
    return [
        make("Mul", [x, "gelu.inv_sqrt2"], ["gelu_scaled"], name="gelu_scale"),
        make("Erf", ["gelu_scaled"], ["gelu_erf"], name="gelu_erf"),
        make("Add", ["gelu_erf", "gelu.one"], ["gelu_plus1"], name="gelu_plus1"),
        make("Mul", [x, "gelu_plus1"], ["gelu_prod"], name="gelu_prod"),
        make("Mul", ["gelu_prod", "gelu.half"], [y], name="gelu_half"),
    ]


def _mlp_out_nodes() -> list[onnx.NodeProto]:
    make = helper.make_node
    return [
        make("MatMul", ["g", "mlp.w2"], ["m0"], name="mlp_fc2"),
        make("Add", ["m0", "mlp.b2"], ["m"], name="mlp_bias2"),
        make("Add", ["r1", "m"], ["y"], name="residual2"),
    ]


def _shared_graph(tag: str, scale: np.ndarray, trunk: list[TensorProto], head: list[TensorProto],
                  n_out: int, opset: int, offset: TensorProto | None = None) -> onnx.ModelProto:
    """x * <tag>.scale -> trunk (MatMul+Add, Relu) -> head (MatMul+Add) [+ offset] -> y."""
    make = helper.make_node
    head_w, head_b = head[0].name, head[1].name
    nodes = [
        make("Mul", ["x", f"{tag}.scale"], ["xs"], name="scale"),
        make("MatMul", ["xs", "trunk.weight"], ["t0"], name="trunk_matmul"),
        make("Add", ["t0", "trunk.bias"], ["t1"], name="trunk_add"),
        make("Relu", ["t1"], ["t"], name="trunk_relu"),
        make("MatMul", ["t", head_w], ["h0"], name="head_matmul"),
        make("Add", ["h0", head_b], ["y" if offset is None else "h"], name="head_add"),
    ]
    inits = [numpy_helper.from_array(scale, f"{tag}.scale"), *copy.deepcopy(trunk + head)]
    if offset is not None:
        nodes.append(make("Add", ["h", offset.name], ["y"], name="private_offset"))
        inits.append(offset)
    graph = helper.make_graph(nodes, f"infer_{tag}", [_input("x", (2, 16))], [_output("y", (2, n_out))],
                              initializer=inits)
    return _model(graph, [helper.make_opsetid("", opset)])


# ---------------------------------------------------------------- small helpers


def _model(graph: onnx.GraphProto, opset_imports: Sequence[onnx.OperatorSetIdProto],
           ir_version: int | None = None) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=list(opset_imports), producer_name=PRODUCER_NAME)
    model.ir_version = ir_version or helper.find_min_ir_version_for(list(opset_imports))
    return model


def _node(nodes: list[onnx.NodeProto], op: str, inputs: list[str], name: str, **attrs: int) -> str:
    nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
    return name


def _weight(rng: np.random.Generator, name: str, shape: tuple[int, ...], around: float = 0.0) -> TensorProto:
    spread = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    value = around + rng.standard_normal(shape) / np.sqrt(spread)
    return numpy_helper.from_array(value.astype(np.float32), name)


def _positive(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> TensorProto:
    return numpy_helper.from_array(rng.uniform(0.5, 1.5, shape).astype(np.float32), name)


def _scalar(name: str, value: float) -> TensorProto:
    return numpy_helper.from_array(np.array(value, dtype=np.float32), name)


def _value_info(name: str, value: np.ndarray) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape)


def _input(name: str, shape: tuple[int, ...]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _output(name: str, shape: tuple[int, ...]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)
