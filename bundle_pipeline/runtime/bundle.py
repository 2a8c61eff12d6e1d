"""Load a bundle (directory or zip), validate it, and run its graphs over one shared variable store.

State kept by a ``LoadedBundle``: the manifest, the constant pool (read once, hashes verified), the
``VariableStore`` and one ``Executor`` (with its arena) per graph. Loading never runs code from the bundle:
programs are data, validated against the kernel table before anything executes.

A bundle is untrusted input. ``storage.py`` first lists what it really holds (no link followed, no special
file opened, no zip size trusted, nothing compressed); ``validate.py`` checks every manifest field and bounds
what loading allocates by the bytes the manifest and its constants really occupy (``max_alloc_bytes`` or
``$BUNDLE_PIPELINE_MAX_ALLOC_BYTES`` raise the budget); a constant's zarr metadata must match the manifest
(shape, dtype, chunks no larger than the array, the plain ``bytes`` codec: no decompression, no object dtypes)
and its chunk files must have exactly the chunk size before its bytes are read, and its values must hash to
the recorded hash. Whatever slips through still surfaces as a ``BundleError``: numpy/zarr exceptions while
loading are ``BUNDLE_CORRUPT``, while running a graph ``RUNTIME_ERROR`` (``_guarded``).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .. import formats
from ..dtypes import dtype_from_name, storage_dtype
from ..errors import BundleCorrupt, BundleError, ParamInvalid, RuntimeFailure
from ..hashing import tensor_hash
from ..program import STANDARD, Output, Program
from . import ort_executor
from .executor import Executor, VariableStore
from .ort_executor import OrtExecutor, SessionSettings
from .ort_owned import OwnedBuilder
from .storage import Inventory, accounted_bytes, check_chunk_files, inventory, manifest_cap
from .validate import PACKED_ARRAY, validate_manifest


class LoadedBundle:
    def __init__(self, path: str, manifest: dict, constants: dict[str, np.ndarray], programs: dict[str, Program],
                 executor: str = "reference", threads: int | None = None, owned_weights: bool = True):
        """``programs``: each graph's program as ``validate_manifest`` decoded it."""
        self.path = path
        self.manifest = manifest
        self.roles = {g["name"]: g["role"] for g in manifest["graphs"]}
        self.variables = VariableStore(manifest["variables"])
        for var in manifest["variables"]:
            if var["initial"] is not None:
                self.variables.write(var["name"], constants[var["initial"]])
        self.executors: dict[str, Executor | OrtExecutor] = {}
        self.executor_reasons: dict[str, str] = {}  # graph -> why its executor runs it (inspect, load_bundle)
        self.owned = OwnedBuilder(self.variables)  # the owned-weight sessions of ORT infer graphs
        for g in manifest["graphs"]:
            bound = {w: constants[c] for w, c in g["bindings"].items()}
            self.executors[g["name"]], self.executor_reasons[g["name"]] = self._executor(
                g, programs[g["name"]], bound, executor, SessionSettings(threads, owned_weights))
            if getattr(self.executors[g["name"]], "owned_model", None) is not None:
                self.owned.add(self.executors[g["name"]])

    def _executor(self, graph: dict, program: Program, bound: dict[str, np.ndarray], executor: str,
                  settings: SessionSettings) -> tuple[Executor | OrtExecutor, str]:
        """ORT for a cpu graph it can run (``auto``/``onnxruntime``), else the reference interpreter."""
        ort, why = ort_executor.choose(program, self.manifest["target"], executor, bound, self.variables,
                                       settings, graph["role"])
        if ort is not None:
            return ort, why
        if executor == "onnxruntime":
            raise ParamInvalid(f"graph {graph['name']!r} cannot run on onnxruntime: {why}; load it with "
                               f"executor='auto' or 'reference'", self.path)
        return Executor(program, bound, self.variables), why

    def executor_of(self, graph: str) -> str:
        """``onnxruntime`` or ``reference``: what runs ``graph``."""
        return getattr(self.executors[graph], "kind", "reference")

    def wait_owned(self, timeout: float | None = None) -> bool:
        """Block until every owned-weight session holds the variables' current values (built in the background
        after a refresh; runs meanwhile use the bound sessions, which are always current). False on timeout."""
        done = self.owned.wait(timeout)
        for name, executor in self.executors.items():
            failure = getattr(executor, "owned_failure", None)
            if failure and ort_executor.OWNED in self.executor_reasons[name]:
                self.executor_reasons[name] = self.executor_reasons[name].replace(
                    ort_executor.OWNED, f"{ort_executor.BOUND_ONLY} (ORT refused the owned copy: {failure})")
        return done

    @property
    def graphs(self) -> list[str]:
        return list(self.roles)

    def init(self) -> None:
        """Run the init graph (if any): its outputs become the variables' values."""
        for name, role in self.roles.items():
            if role == "init":
                self._run_writing(name, {})

    def update(self, feeds: Mapping[str, np.ndarray], graph: str | None = None) -> dict[str, np.ndarray]:
        """Run an update graph; the variables it writes are refreshed in place."""
        updates = [n for n, r in self.roles.items() if r == "update"]
        if graph is None:
            if len(updates) != 1:
                raise ParamInvalid(f"the bundle has {len(updates)} update graphs ({', '.join(updates) or 'none'}); "
                                   f"name one with graph=", self.path)
            graph = updates[0]
        self._check_graph(graph, "update")
        return self._run_writing(graph, feeds)

    def run(self, graph: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run an infer graph: output name -> array."""
        self._check_graph(graph, "infer")
        with _guarded(RuntimeFailure, f"graph {graph}"):
            return self.executors[graph].run(feeds)

    def variable(self, name: str) -> np.ndarray:
        if name not in self.variables.table:
            raise ParamInvalid(f"no variable {name!r}; variables: {', '.join(self.variables.table)}", self.path)
        value = self.variables.read(name, "variable()")
        var = self.variables.table[name]
        return formats.from_format(value, var["format"], tuple(var["shape"])).copy()

    def _run_writing(self, graph: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run an init/update graph, then write every variable it writes at once: each read inside the run saw
        the old values (outputs are copies out of the arena, never the variables' own storage)."""
        executor = self.executors[graph]
        with _guarded(RuntimeFailure, f"graph {graph}"):
            outputs = executor.run(feeds)
            program = executor.program
            self.variables.write_all({out.target: self._stored(out, outputs[out.name], program)
                                      for out in program.outputs if out.variable})
            self.owned.schedule()  # owned sessions of the new values, built in the background
            return {name: self._standard(name, value, program) for name, value in outputs.items()}

    def _stored(self, out: Output, value: np.ndarray, program: Program) -> np.ndarray:
        """An output's value in the stored format of the variable it writes. Codegen ends a computed output in
        that format already; an input passed through unchanged is converted here."""
        var = self.variables.table[out.target]
        src = program.formats.get(out.name, "ND")
        if src == var["format"] or (src in STANDARD and var["format"] in STANDARD):
            return value
        return formats.transdata(value, src, var["format"], tuple(var["shape"]))

    @staticmethod
    def _standard(name: str, value: np.ndarray, program: Program) -> np.ndarray:
        """What a caller gets back: the standard layout, whatever format the output is stored in."""
        fmt = program.formats.get(name)
        if fmt is None or fmt in STANDARD or not isinstance(value, np.ndarray):
            return value
        shape = next(o.shape for o in program.outputs if o.name == name)
        return formats.from_format(value, fmt, shape)

    def _check_graph(self, graph: str, role: str) -> None:
        if graph not in self.roles:
            raise ParamInvalid(f"no graph {graph!r}; graphs: {', '.join(self.roles)}", self.path)
        if self.roles[graph] != role:
            raise ParamInvalid(f"graph {graph!r} is a {self.roles[graph]} graph, not {role}", self.path)


def load_bundle(path: str | os.PathLike, run_init: bool = True, max_alloc_bytes: int | None = None,
                executor: str = "auto", threads: int | None = None, owned_weights: bool = True) -> LoadedBundle:
    """Open a directory or zip bundle, verify it, allocate the variables once and run the init graph.

    ``max_alloc_bytes``: what loading may allocate (constants, variables, arenas); default
    ``$BUNDLE_PIPELINE_MAX_ALLOC_BYTES``, else ``validate.alloc_budget`` of the bundle's real size.
    ``executor``: ``auto`` (ONNX Runtime for every cpu-target graph it can run, the reference otherwise),
    ``onnxruntime`` (every graph, or a ``PARAM_INVALID`` naming the graph it cannot run) or ``reference`` (the
    NumPy interpreter). ``threads``: ORT's intra-op threads (default: ORT's, one per core). ``owned_weights``:
    an ORT infer graph also gets a session optimising its own copy of the weights (ORT's speed; one copy of the
    variables more; rebuilt in the background after each refresh, the bound session running meanwhile); False:
    bound sessions only (``runtime/ort_owned.py``). Loading waits for the owned sessions of the initial values."""
    path = str(path)
    check_executor_options(executor, threads)
    if not isinstance(owned_weights, bool):
        raise ParamInvalid(f"owned_weights must be True or False, not {owned_weights!r}", "owned_weights")
    inv = inventory(path, manifest_cap(max_alloc_bytes))
    group = open_group(path, inv)
    with _guarded(BundleCorrupt, path):
        manifest = dict(group.attrs)
    programs = validate_manifest(manifest, path, accounted_bytes(inv, manifest.get("constants")), max_alloc_bytes)
    packed = _read_packed(group, inv) if any(c["array"] == PACKED_ARRAY and c["nbytes"]
                                             for c in manifest["constants"].values()) else None
    constants = {cid: _packed_constant(packed, cid, c, inv.path) if c["array"] == PACKED_ARRAY
                 else _read_constant(group, cid, c, inv) for cid, c in manifest["constants"].items()}
    with _guarded(BundleCorrupt, path):
        bundle = LoadedBundle(path, manifest, constants, programs, executor, threads, owned_weights)
    if run_init:
        bundle.init()
    bundle.owned.schedule()
    bundle.wait_owned()
    return bundle


def check_executor_options(executor: str, threads: int | None) -> None:
    if executor not in ort_executor.EXECUTORS:
        raise ParamInvalid(f"unknown executor {executor!r}; choose one of {', '.join(ort_executor.EXECUTORS)}",
                           "executor")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ParamInvalid(f"threads must be a positive integer, not {threads!r}", "threads")


# What numpy, zarr and the kernels raise on data they cannot handle (zarr's errors are ValueErrors).
_DATA_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, ArithmeticError, MemoryError,
                RecursionError, NotImplementedError, zipfile.BadZipFile)


@contextmanager
def _guarded(error: type[BundleError], where: str) -> Iterator[None]:
    """Turn an exception from malformed bundle data into one BundleError line (BundleErrors pass)."""
    try:
        yield
    except BundleError:
        raise
    except _DATA_ERRORS as err:
        raise error(f"{type(err).__name__}: {err}", where) from None


def open_group(path: str, inv: Inventory | None = None):
    """The bundle's root zarr group, read-only, once ``inventory`` has vetted what it holds."""
    import zarr
    from zarr.errors import GroupNotFoundError, NodeTypeValidationError

    inv = inv or inventory(path)
    try:
        if inv.zipped:
            store = zarr.storage.ZipStore(inv.path, mode="r")
        else:
            store = zarr.storage.LocalStore(Path(inv.path), read_only=True)
        return zarr.open_group(store, mode="r")
    except (GroupNotFoundError, NodeTypeValidationError, OSError, *_DATA_ERRORS) as err:
        raise BundleCorrupt(f"not a bundle: {type(err).__name__}: {err}", path) from None


def _read_packed(group, inv: Inventory) -> np.ndarray:
    """The packed array of small constants (format 2), read whole (``open_packed`` vetted it)."""
    arr = open_packed(group, inv)
    try:
        return np.asarray(arr[...])
    except (OSError, KeyError, *_DATA_ERRORS) as err:
        raise BundleCorrupt(f"{PACKED_ARRAY} cannot be read: {type(err).__name__}: {err}", inv.path) from None


def open_packed(group, inv: Inventory):
    """The packed array of small constants (format 2), once it is plain uint8 bytes with every chunk file present
    and exactly a chunk long: it holds no more bytes than the bundle really stores (nothing of it is read yet)."""
    import zarr
    from zarr.codecs import BytesCodec

    try:
        arr = group[PACKED_ARRAY]
        meta = getattr(arr, "metadata", None)
        if not (isinstance(arr, zarr.Array) and arr.ndim == 1 and arr.dtype == np.uint8
                and getattr(meta, "zarr_format", None) == 3 and len(meta.codecs) == 1
                and isinstance(meta.codecs[0], BytesCodec) and not meta.storage_transformers
                and 0 < arr.chunks[0] <= arr.shape[0]):
            raise BundleCorrupt(f"{PACKED_ARRAY} is not a plain uint8 array", inv.path)
        name = PACKED_ARRAY.split("/", 1)[1]
        check_chunk_files(inv, name, tuple(arr.shape), tuple(arr.chunks), 1)
        if len(inv.constant_files(name)) != -(-arr.shape[0] // arr.chunks[0]):
            raise BundleCorrupt(f"{PACKED_ARRAY} lacks chunk files (every chunk of it is stored)", inv.path)
        return arr
    except BundleCorrupt:
        raise
    except (OSError, KeyError, *_DATA_ERRORS) as err:
        raise BundleCorrupt(f"{PACKED_ARRAY} cannot be read: {type(err).__name__}: {err}", inv.path) from None


def _packed_constant(packed: np.ndarray | None, cid: str, const: dict, path: str) -> np.ndarray:
    """A small constant: its bytes in the packed array, viewed as its type and verified against its hash."""
    start, nbytes = const["offset"], const["nbytes"]
    if packed is None and nbytes == 0:  # only empty constants packed: no array was written
        packed = np.zeros(0, np.uint8)
    if packed is None or start + nbytes > packed.size:
        raise BundleCorrupt(f"constant {cid!r} lies outside {PACKED_ARRAY}", path)
    stored = storage_dtype(const["dtype"])
    shape = tuple(const.get("storage", const["shape"]))
    raw = packed[start : start + nbytes].view(stored.newbyteorder("<"))
    value = raw.astype(stored, copy=False).view(dtype_from_name(const["dtype"])).reshape(shape)
    if tensor_hash(value) != const["hash"]:
        raise BundleCorrupt(f"constant {cid!r} does not match its recorded hash", path)
    return value


def _read_constant(group, cid: str, const: dict, inv: Inventory) -> np.ndarray:
    try:
        value = np.asarray(open_constant(group, cid, const, inv)[...]).view(dtype_from_name(const["dtype"]))
    except BundleCorrupt:
        raise
    except (OSError, *_DATA_ERRORS) as err:
        raise BundleCorrupt(f"constant {cid!r} cannot be read: {type(err).__name__}: {err}", inv.path) from None
    if tensor_hash(value) != const["hash"]:
        raise BundleCorrupt(f"constant {cid!r} does not match its recorded hash", inv.path)
    return value


def open_constant(group, cid: str, const: dict, inv: Inventory):
    """A constant's zarr array, once its metadata matches the manifest and its chunk files have exactly the
    chunk size (nothing of its data is read yet)."""
    import zarr
    from zarr.codecs import BytesCodec

    path = inv.path
    try:
        arr = group[const["array"]]
        if not isinstance(arr, zarr.Array):
            raise BundleCorrupt(f"constant {cid!r} is not an array", path)
        meta = arr.metadata
        plain = (getattr(meta, "zarr_format", None) == 3 and len(meta.codecs) == 1
                 and isinstance(meta.codecs[0], BytesCodec) and not meta.storage_transformers)
        stored = tuple(const.get("storage", const["shape"]))  # a constant kept in a target format
        # ml_dtypes constants (bfloat16, float8, int4, ...) are stored as their unsigned bit patterns
        if not (plain and arr.shape == stored and arr.dtype == storage_dtype(const["dtype"])
                and all(c <= max(n, 1) for c, n in zip(arr.chunks, arr.shape, strict=True))):
            raise BundleCorrupt(f"constant {cid!r}: its array ({arr.dtype}{list(arr.shape)}, chunks "
                                f"{list(arr.chunks)}) is not the plain {const['dtype']}{list(stored)} "
                                f"array the manifest records", path)
        check_chunk_files(inv, cid, tuple(arr.shape), tuple(arr.chunks), np.dtype(arr.dtype).itemsize)
    except BundleCorrupt:
        raise
    except (OSError, *_DATA_ERRORS) as err:
        raise BundleCorrupt(f"constant {cid!r} cannot be read: {type(err).__name__}: {err}", path) from None
    return arr
