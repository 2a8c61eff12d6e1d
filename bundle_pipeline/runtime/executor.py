"""Interpreter of one compiled program: binds feeds, variables and constants, runs kernels into a planned arena.

State kept per ``Executor``: the typed program (``program.Program``, decoded and validated at load), the
arena (allocated once, ``arena_bytes`` long, reused by every run), and references to the bundle's constant
and variable storage. ``call_kernel`` dispatches on the step's kind (control flow, TransData, kernel). Override
points, as in ``torch.fx.Interpreter``: ``bind`` (inputs of a run), ``run_step`` (one kernel call),
``call_kernel`` (the kernel itself), ``store`` (where an output goes), ``collect`` (what a run returns).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

import numpy as np

from .. import formats
from ..dtypes import dtype_from_name
from ..errors import ParamInvalid, RuntimeFailure
from ..kernels import KernelError, run_kernel
from ..program import (
    STANDARD,
    UNKNOWN_DTYPE,
    Body,
    ControlStep,
    KernelStep,
    Plan,
    Program,
    Step,
    TransDataStep,
    decode_attr,
    decode_program,
    decode_tensor,
    split_container,
)
from . import approx, inplace
from .control import graph_callables, run_control
from .npu import run_npu_kernel


class Executor:
    # Elementwise float steps write straight into their planned arena view (runtime/inplace.py); False makes
    # every step go through the kernel library and a copy-in (bench/memory.py compares the two).
    write_in_place = True

    def __init__(self, program: Program | Body | dict, constants: Mapping[str, np.ndarray],
                 variables: VariableStore):
        if isinstance(program, dict):  # a program as a bundle stores it (tests, tools): decoded and checked here
            program = decode_program(program, str(program.get("graph")))
        self.program = program
        self.name = program.graph
        self.variables = variables
        self.arena = np.zeros(program.arena_bytes, dtype=np.uint8)
        self.fixed: dict[str, np.ndarray] = {k: decode_tensor(v) for k, v in program.consts.items()}
        self.fixed.update(constants)
        self.attrs = [{k: decode_attr(v) for k, v in step.attrs.items()} for step in program.steps]
        # control-flow steps (and kernels with graph attributes) run compiled bodies, each an executor of its
        # own with its own arena
        self.bodies = {step.node: {attr: BodyExecutor(body, variables) for attr, body in step.bodies.items()}
                       for step in program.steps if isinstance(step, ControlStep | KernelStep) and step.bodies}
        formats = getattr(program, "formats", {})
        self.plain = [self._plain(step, formats) for step in program.steps]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        env = self.bind(feeds)
        for index, (step, attrs) in enumerate(zip(self.program.steps, self.attrs, strict=True)):
            self.run_step(step, attrs, env, index)
        return self.collect(env)

    def bind(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        env = dict(self.fixed)
        env.update(self.check_feeds(feeds))
        for name in self.program.reads:
            env[name] = self.variables.read(name, self.name)
        return env

    def check_feeds(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        expected = {f.name: f for f in self.program.feeds}
        unknown = sorted(set(feeds) - set(expected))
        if unknown:
            raise ParamInvalid(f"unknown feed {unknown[0]!r}; graph {self.name} takes: {', '.join(expected) or 'none'}",
                               f"graph {self.name}")
        bound = {}
        for name, spec in expected.items():
            if name not in feeds:
                raise ParamInvalid(f"missing feed {name!r} ({spec.dtype}{list(spec.shape)})", f"graph {self.name}")
            if split_container(spec.dtype):
                bound[name] = self._container_feed(name, feeds[name], spec.dtype)
                continue
            value = np.asarray(feeds[name])
            if value.dtype != np.dtype(spec.dtype) or value.shape != spec.shape:
                raise ParamInvalid(f"feed {name!r} is {value.dtype}{list(value.shape)}, expected "
                                   f"{spec.dtype}{list(spec.shape)}", f"graph {self.name}")
            bound[name] = value
        return bound

    def _container_feed(self, name: str, value: object, dtype: str) -> object:
        """A sequence feed is a list of arrays, an optional one None or its element; elements keep their
        shapes (each may differ) but must have the declared element type."""
        kind, elem = split_container(dtype)
        if kind == "optional":
            if value is None or split_container(elem):
                return None if value is None else self._container_feed(name, value, elem)
            return self._element(name, value, elem, dtype)
        if not isinstance(value, list | tuple):
            raise ParamInvalid(f"feed {name!r} is {type(value).__name__}, expected a {dtype}: a list of arrays",
                               f"graph {self.name}")
        return [self._element(name, v, elem, dtype) for v in value]

    def _element(self, name: str, value: object, elem: str, dtype: str) -> np.ndarray:
        arr = np.asarray(value)
        if elem != UNKNOWN_DTYPE and arr.dtype != dtype_from_name(elem):
            raise ParamInvalid(f"feed {name!r} holds a {arr.dtype} tensor, expected a {dtype}", f"graph {self.name}")
        return arr

    def run_step(self, step: Step, attrs: dict, env: dict[str, np.ndarray], index: int | None = None) -> None:
        args = [env[name] if name else None for name in step.inputs]
        plain = self.plain[index] if index is not None else self._plain(step, getattr(self.program, "formats", {}))
        if self.write_in_place and plain:
            view = arena_view(self.arena, self.program.values[step.outputs[0]])
            if inplace.run_into(step.op, args, view):
                env[step.outputs[0]] = view
                return
        try:
            outs = self.call_kernel(step, attrs, args)
        except KernelError as err:
            raise RuntimeFailure(f"while executing node {step.node} ({step.op}): {err}",
                                 f"graph {self.name}") from None
        except (ValueError, TypeError, IndexError) as err:  # numpy refusing the inputs a kernel was given
            raise RuntimeFailure(f"while executing node {step.node} ({step.op}): {type(err).__name__}: {err}",
                                 f"graph {self.name}") from None
        for name, value in zip(step.outputs, outs, strict=False):
            if name:
                env[name] = self.store(step, name, value)

    def _plain(self, step: Step, formats: Mapping[str, str]) -> bool:
        """A portable kernel, exact implementation and precision, of the default domain, one planned output,
        every value in the standard layout: inplace may take it."""
        return (type(step) is KernelStep and not step.native and step.impl is None and step.precision is None
                and not step.domain and not step.bodies and len(step.outputs) == 1
                and step.outputs[0] in self.program.values
                and not any(v in formats for v in [*step.inputs, *step.outputs]))

    def call_kernel(self, step: Step, attrs: dict, args: list[np.ndarray | None]) -> list[np.ndarray]:
        """Dispatch on the kind of step; its modes were validated when the bundle was loaded."""
        if isinstance(step, ControlStep):
            return run_control(step.op, self.bodies[step.node], args, attrs, self.program.opset)
        if isinstance(step, TransDataStep):
            return [transdata(args[0], step.src_format, step.dst_format, step.layout.out_shape)]
        return self.call_kernel_step(step, attrs, args)  # type: ignore[arg-type]

    def call_kernel_step(self, step: KernelStep, attrs: dict, args: list[np.ndarray | None]) -> list[np.ndarray]:
        """A kernel call with its implementation and precision modes."""
        if step.bodies:  # graph attributes (FlexAttention's score_mod): they become callables
            args, attrs = graph_callables(self.bodies[step.node], args, attrs)
        if step.impl == "high_performance":  # op_select_implmode: the approximate kernel (before any precision)
            return self._approximate(step, args, attrs)
        if step.precision == "fp16":
            # cube inputs rounded to fp16, products accumulated in fp32 as on the device
            args = [_fp16(a) if i < 2 else a for i, a in enumerate(args)]
        elif step.precision == "fp16_round":  # force_fp16 on a vector op: fp16 in, fp16 out (kept as float32)
            return [_fp16(out) for out in self._dispatch(step, attrs, [_fp16(a) for a in args])]
        return self._dispatch(step, attrs, args)

    @staticmethod
    def _approximate(step: KernelStep, args: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
        """The approximate elementwise kernel; on a formatted (native) value it maps the zero padding lanes to
        f(0) (0.5 for Sigmoid, 1 for Exp), which later native kernels (a reduction over C) would read: the
        padding is zeroed again."""
        out = approx.run(step.op, args, attrs)[0]
        if step.native and step.layout is not None and step.layout.out_format not in STANDARD:
            out[formats.pad_mask(step.layout.out_format, step.layout.out_shape)] = 0
        return [out]

    def _dispatch(self, step: KernelStep, attrs: dict, args: list[np.ndarray | None]) -> list[np.ndarray]:
        """The target's native kernel on formatted data, or the portable kernel on standard layouts."""
        if step.domain:  # an op of another domain (ai.onnx.ml, ...): its kernel at the model's version of it
            return run_kernel(step.op, args, attrs, self.program.opsets[step.domain], domain=step.domain)
        if step.native and step.layout is not None:
            layout = step.layout
            return [run_npu_kernel(step.op, args, attrs, self.program.opset, list(layout.in_formats),
                                   layout.out_format, list(layout.in_shapes), layout.out_shape, step.tiling)]
        return run_kernel(step.op, args, attrs, self.program.opset, step.tiling)

    def store(self, step: Step, name: str, value: np.ndarray) -> np.ndarray:
        """Copy a kernel result into its planned arena view; shape and dtype must match the plan. A value
        without a plan is sized at run time (data-dependent shape): it keeps the kernel's array."""
        plan = self.program.values.get(name)
        if value is None or isinstance(value, list):  # an empty optional, a sequence: never planned
            return value
        value = np.asarray(value)
        if plan is None:
            return value
        if value.shape != plan.stored or value.dtype != np.dtype(plan.dtype):
            raise RuntimeFailure(f"while executing node {step.node} ({step.op}): output {name!r} is "
                                 f"{value.dtype}{list(value.shape)}, the plan says {plan.dtype}{list(plan.stored)}",
                                 f"graph {self.name}")
        view = arena_view(self.arena, plan)
        np.copyto(view, value)
        return view

    def collect(self, env: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs are copied out of the arena, which the next run overwrites; a sequence is returned as a
        list of arrays, an empty optional as None."""
        return {out.name: _copy(env[out.name]) for out in self.program.outputs}


class BodyExecutor(Executor):
    """A control-flow body: formal inputs bound per call, steps run into the body's own arena."""

    program: Body

    def __init__(self, program: Body, variables: VariableStore):
        super().__init__(program, {}, variables)
        self.output_types = [(list(o.shape), o.dtype) for o in program.outputs]

    def call(self, args: list[np.ndarray | None]) -> list[np.ndarray]:
        env = dict(self.fixed)
        env.update(zip((i.name for i in self.program.inputs), args, strict=True))
        for index, (step, attrs) in enumerate(zip(self.program.steps, self.attrs, strict=True)):
            self.run_step(step, attrs, env, index)
        return [env[o.name] for o in self.program.outputs]


def _copy(value: np.ndarray | list | None) -> np.ndarray | list | None:
    if value is None:
        return None
    if isinstance(value, list):
        return [np.array(v, copy=True) for v in value]
    return np.array(value, copy=True)


def arena_view(arena: np.ndarray, plan: Plan) -> np.ndarray:
    """The planned bytes of one value, as its stored (physical) shape."""
    dtype = dtype_from_name(plan.dtype)
    count = int(np.prod(plan.stored, dtype=np.int64))
    return arena[plan.offset:plan.offset + count * dtype.itemsize].view(dtype).reshape(plan.stored)


def transdata(x: np.ndarray, src: str, dst: str, shape: tuple[int, ...] | None) -> np.ndarray:
    """Convert between storage formats; ``shape`` is the logical shape (padding is dropped/zeroed). The
    standard layouts share one physical layout (row-major): TransData between them moves no bytes."""
    if src in STANDARD and dst in STANDARD:
        return x
    try:
        return formats.transdata(x, src, dst, tuple(shape if shape is not None else x.shape))
    except formats.FormatError as err:
        raise KernelError(f"TransData {src} -> {dst}: {err}") from None


def _fp16(a: np.ndarray | None) -> np.ndarray | None:
    if a is None or a.dtype != np.float32:
        return a
    return a.astype(np.float16).astype(np.float32)


class VariableStore:
    """The bundle's variables: allocated once at load, shared by every graph, written in place.

    ``version`` counts the writes (a session built over a copy of the values is current while it matches);
    ``lock`` orders a write against ``snapshot`` taken by another thread (``ort_owned``'s builder)."""

    def __init__(self, table: list[dict]):
        self.table = {v["name"]: v for v in table}
        # stored bytes: the variable's format (e.g. FRACTAL_NZ) as its physical shape
        self.values = {name: np.zeros(v.get("storage", v["shape"]), dtype=dtype_from_name(v["dtype"]))
                       for name, v in self.table.items()}
        self.is_set = dict.fromkeys(self.table, False)
        self.version = 0
        self.lock = threading.RLock()

    def read(self, name: str, graph: str) -> np.ndarray:
        if not self.is_set[name]:
            writers = ", ".join(self.table[name]["writers"]) or "none"
            raise RuntimeFailure(f"variable {name!r} is unset; run the init graph or an update first "
                                 f"(writers: {writers})", f"graph {graph}")
        return self.values[name]

    def write(self, name: str, value: np.ndarray) -> None:
        self.write_all({name: value})

    def write_all(self, values: Mapping[str, np.ndarray]) -> None:
        """Write several variables together: every value is checked before any is written, so a bad one
        leaves all of them as they were. The values must not be views of this store (outputs are copies)."""
        for name, value in values.items():
            stored = self.values[name]
            if value.shape != stored.shape or value.dtype != stored.dtype:
                raise RuntimeFailure(f"variable {name!r} is {stored.dtype}{list(stored.shape)} but the graph "
                                     f"wrote {value.dtype}{list(value.shape)}", f"variable {name}")
        with self.lock:
            for name, value in values.items():
                np.copyto(self.values[name], value)
                self.is_set[name] = True
            self.version += 1

    def snapshot(self, names: list[str]) -> tuple[int, dict[str, np.ndarray]] | None:
        """(version, a copy of each named variable) taken under the lock, or None while one of them is unset."""
        with self.lock:
            if not all(self.is_set[n] for n in names):
                return None
            return self.version, {n: self.values[n].copy() for n in names}
