"""Run a cpu program with ONNX Runtime, over the bundle's own variable and constant arrays.

One ``InferenceSession`` per graph, created at load from ``ort_model.program_model`` (built from the validated
program). Variables and bundle constants are graph inputs bound once through IOBinding to ``OrtValue``s over
the bundle's numpy arrays (``OrtValue.ortvalue_from_numpy`` shares the memory of a C-contiguous cpu array): no
session holds a copy of a weight, and every session reads the one ``VariableStore``. An update graph's outputs
are written into that store after its run (``LoadedBundle._run_writing``, the ``assign`` semantics: every read
of a run sees the old values, the writes land together after it), in place, so the next run of any graph sees
them with no session re-created and nothing re-bound.

An infer graph also gets an *owned* session (``ort_owned.py``): ORT optimises its own copy of the weights, so it
runs at ORT's speed; it is used while it matches the store's version, rebuilt in the background after each
refresh, and until then the bound session runs (always current). ``SessionSettings.owned_weights=False`` keeps
only the bound sessions (no copy of the weights, no rebuild, the bound session's speed).

``onnxruntime`` is imported here only, when a bundle is loaded with it (no-op imports stay light).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import RuntimeFailure
from ..program import Program, decode_program
from .executor import Executor, VariableStore
from .ort_model import Unsupported, program_model
from .ort_owned import Owned, owned_model

EXECUTORS = ("auto", "onnxruntime", "reference")


@dataclass(frozen=True)
class SessionSettings:
    """What a session is created with: ``threads`` (intra-op threads; None: ORT's default, one per core);
    ``owned_weights``: infer graphs also get an owned-weight session (``ort_owned.py``)."""

    threads: int | None = None
    owned_weights: bool = True


BOUND_ONLY = "weights bound as inputs to the shared arrays"
OWNED = ("weights bound as inputs; an ORT-owned, optimised copy runs once built (rebuilt in the background "
         "after each refresh)")


def ort_errors() -> tuple[type[Exception], ...]:
    """The exceptions ORT raises for a model or a run it refuses (pybind classes deriving from Exception)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return tuple(getattr(state, n) for n in ("Fail", "InvalidArgument", "NoSuchFile", "NoModel", "EngineError",
                                             "RuntimeException", "InvalidProtobuf", "ModelLoaded",
                                             "NotImplemented", "InvalidGraph", "EPFail") if hasattr(state, n))


def planned_executor(graph: dict, manifest: dict, executor: str = "auto") -> tuple[str, str]:
    """(executor, why) ``load_bundle(executor=...)`` would pick for a manifest's graph, from the manifest alone
    (``inspect``: no constant is read; the session is created without data, as every weight is an input)."""
    variables = {v["name"]: v for v in manifest["variables"]}
    program = decode_program(graph["program"], graph["name"])
    types = {n: (list(variables[n].get("storage", variables[n]["shape"])), variables[n]["dtype"])
             for n in program.reads}
    for weight, cid in graph.get("bindings", {}).items():
        const = manifest["constants"][cid]
        types[weight] = (list(const.get("storage", const["shape"])), const["dtype"])
    session, _, why = _session(program, manifest["target"], executor, types, SessionSettings(threads=1))
    if session is None:
        return "reference", why
    return "onnxruntime", f"{why}; {OWNED if wants_owned(program, graph['role'], SessionSettings()) else BOUND_ONLY}"


def wants_owned(program: Program, role: str, settings: SessionSettings) -> bool:
    """Whether a graph gets an owned-weight session: an infer graph (it writes no variable, so runs often
    between refreshes) that reads a weight, unless the settings say no."""
    return settings.owned_weights and role == "infer" and bool(program.reads or program.weights)


def _session(program: Program, target: str, executor: str, types: Mapping[str, tuple[list[int], str]],
             settings: SessionSettings) -> tuple[object | None, object | None, str]:
    """(bound session, its ModelProto, why), or (None, None, why the reference runs the program)."""
    if executor == "reference":
        return None, None, "reference executor requested"
    if target != "cpu":
        return None, None, f"target {target}: the reference executor simulates its formats and kernels"
    try:
        model = program_model(program, types)
        return create_session(program, model, settings), model, f"cpu target: onnxruntime ({executor})"
    except Unsupported as why:
        return None, None, str(why)


def input_types(program: Program, constants: Mapping[str, np.ndarray], variables: VariableStore) -> dict:
    """Shape and dtype of every graph input besides the feeds: the variables read and the bundle constants."""
    types = {n: (list(variables.values[n].shape), variables.values[n].dtype.name) for n in program.reads}
    types.update({n: (list(constants[n].shape), _dtype_name(constants[n])) for n in program.weights})
    return types


def _dtype_name(arr: np.ndarray) -> str:
    return "object" if arr.dtype == object else arr.dtype.name


def create_session(program: Program, model, settings: SessionSettings):
    """The session of ``model`` (``program_model`` of ``program``), or ``Unsupported`` with ORT's reason when it
    refuses it."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(model.SerializeToString(), session_options(program, settings),
                                    providers=["CPUExecutionProvider"])
    except ort_errors() as err:
        raise Unsupported(f"onnxruntime refuses it: {_first_line(err)}") from None


def session_options(program: Program, settings: SessionSettings):
    """ORT's options for a session of ``program`` (bound or owned)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    # ORT's own log lines are not the user's business: a refusal comes back as the reason this module records
    options.log_severity_level = 4
    if settings.threads is not None:
        options.intra_op_num_threads = settings.threads
    options.inter_op_num_threads = 1
    if not program.reuse_memory:  # exec_disable_reused_memory=1: no planned reuse, no arena
        options.enable_mem_pattern = False
        options.enable_cpu_mem_arena = False
    return options


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    line = text[0] if text else type(err).__name__
    return line if len(line) <= 300 else line[:297] + "..."


class OrtExecutor:
    """The ``Executor`` interface (``program``, ``name``, ``run``) on an ORT session."""

    kind = "onnxruntime"
    check_feeds = Executor.check_feeds  # the same feed checks and messages as the reference
    _container_feed = Executor._container_feed
    _element = Executor._element

    def __init__(self, program: Program, session, constants: Mapping[str, np.ndarray], variables: VariableStore,
                 settings: SessionSettings = SessionSettings(), owned_model: bytes | None = None):
        from onnxruntime import OrtValue

        self.program = program
        self.name = program.graph
        self.variables = variables
        self.session = session
        self.settings = settings
        self.binding = session.io_binding()
        # OrtValues over the bundle's arrays: the same memory, never a copy (kept alive with the executor)
        self.bound = {name: OrtValue.ortvalue_from_numpy(_shareable(variables.values[name], name))
                      for name in program.reads}
        self.bound.update({name: OrtValue.ortvalue_from_numpy(_shareable(constants[name], name))
                           for name in program.weights})
        for name, value in self.bound.items():
            self.binding.bind_ortvalue_input(name, value)
        self.output_names = [o.name for o in program.outputs]
        self.owned_model = owned_model  # None: this graph runs on the bound session only
        self.owned: Owned | None = None
        self.owned_failure: str | None = None  # why ORT refused the owned model (the bound session runs)
        self.last_session = "bound"  # which session the last run used: "bound" or "owned"

    def install_owned(self, version: int, values: Mapping[str, np.ndarray]) -> None:
        """Build the owned session over ``values`` (a copy of the variables at ``version``) and the constants;
        ORT refusing it leaves the bound session to run this graph, with the reason in ``owned_failure``."""
        import onnxruntime as ort

        keep = {name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v)) for name, v in values.items()}
        keep.update({name: self.bound[name] for name in self.program.weights})
        options = session_options(self.program, self.settings)
        try:
            options.add_external_initializers(list(keep), list(keep.values()))
            session = ort.InferenceSession(self.owned_model, options, providers=["CPUExecutionProvider"])
        except (*ort_errors(), RuntimeError, ValueError, TypeError) as err:
            self.owned_model, self.owned_failure = None, _first_line(err)
            return
        self.owned = Owned(version, session, session.io_binding(), (keep, values))

    def _current(self) -> tuple[object, object]:
        """(session, binding) for a run: the owned one while it holds the store's values, else the bound one."""
        owned = self.owned
        if owned is not None and (not self.program.reads or owned.version == self.variables.version):
            self.last_session = "owned"
            return owned.session, owned.binding
        self.last_session = "bound"
        return self.session, self.binding

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        bound = self.check_feeds(feeds)
        session, binding = self._current()
        if self.last_session == "bound":  # an owned session was built from variables that were all set
            for name in self.program.reads:
                self.variables.read(name, self.name)  # an unset variable is the reference's clear error
        for name, value in bound.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in self.output_names:
            binding.bind_output(name, "cpu")
        try:
            session.run_with_iobinding(binding)
        except (*ort_errors(), RuntimeError) as err:  # a failed run is a plain RuntimeError from the binding
            binding.clear_binding_outputs()
            raise RuntimeFailure(_run_error(str(err)), f"graph {self.name}") from None
        # copies out of ORT's buffers: an output never aliases a variable or the next run's memory
        outputs = dict(zip(self.output_names, binding.copy_outputs_to_cpu(), strict=True))
        binding.clear_binding_outputs()
        return outputs


# ORT's status of a failed node, innermost last: "... running Reshape node. Name:'If_0/then_branch/Reshape_0' ..."
_FAILED_NODE = re.compile(r"running (\w+) node\. Name:'([^']*)' Status Message: ")


def _run_error(text: str) -> str:
    """ORT's error as the reference words it: the innermost failing node (inside a body: its own name), its op,
    and ORT's message for it."""
    failed = list(_FAILED_NODE.finditer(text))
    if not failed:
        return f"onnxruntime: {_first_line(Exception(text))}"
    last = failed[-1]
    detail = _first_line(Exception(text[last.end():]))
    return f"while executing node {last.group(2)} ({last.group(1)}): onnxruntime: {detail}"


def _shareable(arr: np.ndarray, name: str) -> np.ndarray:
    """``arr`` itself when ORT can read it in place (C-contiguous, aligned); a variable must be (it is written in
    place after updates), a constant is copied once if not."""
    if arr.flags.c_contiguous and arr.flags.aligned:
        return arr
    return np.require(arr, requirements=["C", "A"])


def choose(program: Program, target: str, executor: str, constants: Mapping[str, np.ndarray],
           variables: VariableStore, settings: SessionSettings, role: str = "infer") -> tuple[OrtExecutor | None, str]:
    """(executor or None, why): the ORT executor of ``program``, or None and why the reference runs it."""
    types = input_types(program, constants, variables)
    session, bound, why = _session(program, target, executor, types, settings)
    if session is None:
        return None, why
    model = owned_model(program, bound, types) if wants_owned(program, role, settings) else None
    try:
        ort = OrtExecutor(program, session, constants, variables, settings, model)
    except (*ort_errors(), RuntimeError, TypeError, ValueError) as err:  # an array ORT cannot wrap
        return None, f"onnxruntime cannot bind the arrays: {_first_line(err)}"
    return ort, f"{why}; {OWNED if model is not None else BOUND_ONLY}"
