"""Owned-weight ORT sessions: ONNX Runtime's own speed for infer graphs whose weights stay refreshable in place.

Why a second session: the bound session of ``ort_executor`` reads every weight as a graph input, so ORT cannot
prepack MatMul/Conv weights, move Conv to its NCHWc layout, fuse Conv+BN/Add or fold constants (measured 1.27x to
2.24x ORT on the original model). Weights given to ORT as initializers over the bundle's own arrays
(``add_external_initializers``) run at ORT's speed, but with ORT's default optimisations the session computes
from prepacked or folded copies: after an in-place write it mixes old and new values (seen on magika, rapidocr cls
and the bench transformer); with optimisations off it sees the writes but is no faster than the bound session.

So every infer graph also gets an *owned* session: ORT optimises initializers over an immutable copy of the
variables (one copy per store version, shared by every graph's owned session) and over the bundle constants
(immutable, shared), tagged with the store's ``version``. A run uses it only while that version is the store's;
after a refresh runs fall back to the bound session (always current) until this module's builder thread has
built the new owned sessions, then switch. The refresh itself only writes the store and wakes the builder.

Costs (README, bench/results/ort_executor.json): memory, one copy of the variables plus what ORT prepacks or folds
per session; after each refresh, one session build per infer graph in the background (about what ORT's own
new session costs, per graph), during which runs are at the bound session's speed and share the cores with it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from ..program import Program
from .executor import VariableStore

# ORT reads an initializer marked external from a file unless add_external_initializers overrides it; every
# owned-model initializer is overridden, so this file is never opened
PLACEHOLDER = "bundle-pipeline-owned-weight"


@dataclass(frozen=True)
class Owned:
    """An owned session, current while ``version`` is the store's (a graph reading no variable: always)."""

    version: int
    session: object
    binding: object
    keep_alive: tuple  # the OrtValues and arrays ORT's initializers point into


def owned_model(program: Program, bound, types: dict[str, tuple[list[int], str]]) -> bytes:
    """``bound`` (the bound session's ModelProto of the program) with every variable and bundle constant an
    external initializer instead of an input (no data: the values are supplied when a session is built)."""
    from onnx import ModelProto, TensorProto

    from .ort_model import onnx_dtype

    model = ModelProto()
    model.CopyFrom(bound)
    shared = [*program.reads, *program.weights]
    kept = [i for i in model.graph.input if i.name not in set(shared)]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    for name in shared:
        shape, dtype = types[name]
        tensor = TensorProto(name=name, data_type=onnx_dtype(dtype), dims=shape)
        tensor.data_location = TensorProto.EXTERNAL
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        for key, value in (("location", PLACEHOLDER), ("offset", "0"), ("length", str(nbytes))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        model.graph.initializer.append(tensor)
    return model.SerializeToString()


class OwnedBuilder:
    """Builds the owned sessions of a bundle's executors: at load (``schedule`` then ``wait``) and after every
    write of the store, in one background thread; a build of a version a newer write has replaced is dropped."""

    def __init__(self, variables: VariableStore):
        self.variables = variables
        self.executors: list = []  # OrtExecutors with an owned model
        self._state = threading.Condition()
        self._pending = False
        self._thread: threading.Thread | None = None

    def add(self, executor) -> None:
        self.executors.append(executor)

    def schedule(self) -> None:
        """Ask for owned sessions of the store's current values (called after each write; returns at once)."""
        if not self.executors:
            return
        with self._state:
            self._pending = True
            if self._thread is None:
                # not a daemon: the interpreter lets a build finish rather than tear ORT down under it
                self._thread = threading.Thread(target=self._work, name="bundle-owned-sessions")
                self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no build is pending (every owned session current or given up); False on timeout."""
        with self._state:
            return self._state.wait_for(lambda: self._thread is None, timeout)

    def _work(self) -> None:
        try:
            while True:
                with self._state:
                    if not self._pending:
                        return
                    self._pending = False
                self.build_current()
        finally:
            with self._state:
                self._thread = None
                self._state.notify_all()

    def build_current(self) -> None:
        """Build every owned session that is missing or older than the store (on the calling thread)."""
        names = sorted({n for ex in self.executors for n in ex.program.reads})
        taken = self.variables.snapshot(names)
        version, values = taken if taken is not None else (self.variables.version, {})
        for executor in self.executors:
            if executor.owned_model is None:
                continue  # ORT refused its owned model once: the bound session runs it
            if self.variables.version != version:
                return  # a newer write: the next round (its schedule) builds from it
            reads = executor.program.reads
            if taken is None and reads:
                continue  # a variable it reads is unset: nothing to build until a write sets it
            if executor.owned is None or (reads and executor.owned.version != version):
                executor.install_owned(version, {n: values[n] for n in reads})
