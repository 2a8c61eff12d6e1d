"""A stage declared once: what it is called, its VERSION, its function, what it reads and what it writes.

Every stage module under ``stages/`` ends with ``STAGE = Stage(...)`` next to its code, and ``stages/order.py``
lists them in order. Everything else derives from these declarations: the task factory (ids, dependencies,
params, contexts), the step glue (inputs loaded from the cache, outputs stored), task keys (name, version),
the progress display's stage order, the scheduler's client placement and the runner's file inputs and output
checks. Adding a stage is one module plus its place in ``order.ORDER``.

One calling convention: ``compute(inputs, params, ctx) -> outputs``.

- ``inputs``: input name -> the upstream output, decoded (``Input.form``). An input a bundle-level stage reads
  from a per-graph stage is a mapping graph name -> value, in spec order. Loaded on first access, so a stage
  that does not look at an input does not pay for reading it.
- ``params``: what the stage reads from the spec (``Stage.params``, words of ``PARAMS``); part of the key.
- ``ctx``: ``StageContext``: the graph, the user's files, the cache services a stage may use.
- outputs: output name -> a JSON value (stored in the cache; the key records its content hash), or a ``Ref``
  (an address made already, e.g. the digest of the bundle ``pack`` wrote).

Declarations import nothing heavy: a stage module loads numpy, onnx or the runtime inside the functions that
use them, so a no-op build (which reads every declaration to compute keys) stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..targets import Target

GRAPH, BUNDLE = "graph", "bundle"  # Stage.scope: one task per graph, or one for the bundle
JSON, TEXT = "json", "text"  # Input.form: the decoded object, or its canonical JSON as stored (UTF-8 bytes)
MODEL, EXTERNAL_DATA = "model", "external data"  # Stage.reads: the user's files a stage reads
OUTPUT_STAMP = "output_stamp"  # in ``StageContext.extra`` of a stage that writes the bundle: the tree's stat stamp

# The params a stage may declare (``Stage.params``): each word names what the task factory puts in the
# params (and so in the task key), under the key given here.
PARAMS: dict[str, str] = {
    "target": "target: the target's name",
    "role": "role: the graph's role (per-graph stages)",
    "bundle": "name: the bundle's name",
    "graph names": "graphs: every graph's name, in spec order",
    "graph roles": "graphs: every graph's name and role, in spec order",
    "graph options": "graphs: every graph's name, role and build options, in spec order",
    "variables": "variables: the spec's variable list, or None when variables are inferred",
    "assigns": "assign: graph name -> its assign mapping, for the graphs that have one",
    "assign": "assign: the graph's assign mapping; absent when it has none (keys stay as before assign)",
    "options": "options: the graph's build options this stage reads (options.OPTIONS names the stage)",
    "option values": "each build option this stage reads as a key of its own; their defaults for non-infer graphs",
}


@dataclass(frozen=True)
class Input:
    """Output ``output`` of stage ``stage``, read under ``name`` (default: the output's name).

    Which task it comes from follows from the two scopes: a per-graph stage reading a per-graph stage reads
    its own graph's task; a bundle-level stage reading a per-graph stage reads every graph's (task input
    names ``<name>:<graph>``); anything reading a bundle-level stage reads the one bundle task.
    """

    stage: str
    output: str
    name: str = ""
    form: str = JSON

    @property
    def key(self) -> str:
        return self.name or self.output


Compute = Callable[[Mapping[str, Any], Mapping[str, Any], "StageContext"], dict[str, Any]]


@dataclass(frozen=True)
class Stage:
    name: str  # the task step: ids are <bundle>/<name>:<graph> or <bundle>/<name>; part of every key
    version: str  # bump when the stage's output changes for the same inputs
    compute: Compute
    outputs: tuple[str, ...]
    inputs: tuple[Input, ...] = ()
    params: tuple[str, ...] = ()  # words of PARAMS
    scope: str = GRAPH
    reads: str | None = None  # MODEL / EXTERNAL_DATA: the user's files it reads (their digests are key inputs)
    writes_bundle: bool = False  # writes the user's output: a hit also needs the bundle on disk unchanged
    preload: tuple[str, ...] = ()  # heavy modules it uses: imported (and warm_up() run) as setup, not in its seconds

    @property
    def group(self) -> str:
        """The stage a progress display counts it under (``formats.cost`` under ``formats``)."""
        return self.name.split(".")[0]

    @property
    def on_client(self) -> bool:
        """It touches the user's files, so it runs where they are, never on a remote cluster's worker."""
        return self.reads is not None or self.writes_bundle

    @property
    def io_bound(self) -> bool:
        """Its time goes to file I/O and hashing, which let go of the GIL (reading external data, writing a
        bundle): two such tasks gain from running side by side on threads; Python-bound stages do not."""
        return self.reads == EXTERNAL_DATA or self.writes_bundle

    @property
    def reads_user_input(self) -> bool:
        """It decodes the user's files: an unexpected exception there is the model's fault (GRAPH_INVALID)."""
        return self.reads is not None


@dataclass(frozen=True)
class Ref:
    """An output that is an address already (not a JSON value for the glue to store)."""

    address: str


class Store(Protocol):
    """The cache operations a stage may call through ``ctx.cache`` (stages do not import the cache)."""

    def put_tensors(self, arrays: Mapping[str, Any]) -> dict[str, dict]: ...
    def get_tensor(self, h: str, pack: str | None = None) -> Any: ...
    def get_tensors(self, refs: Mapping[str, str | None]) -> dict[str, Any]: ...  # hash -> pack: each pack read once
    def has_tensor(self, h: str, pack: str | None = None) -> bool: ...
    def get_action(self, key: str) -> dict | None: ...
    def put_action(self, key: str, record: dict) -> None: ...
    def put_object(self, data: bytes, placed: bool = False) -> str: ...  # placed: bound for a bundle (pack links it)
    def has_object(self, h: str) -> bool: ...


Memo = Callable[[dict, Callable[[], Any]], Any]


class StageContext(Protocol):
    """What a stage gets besides its inputs and params (``tasks/steps.py`` makes it)."""

    graph: str | None
    cache: Store
    hashes: Mapping[str, str]  # the key's inputs: content hashes, ``model`` and ``file:<location>`` digests
    extra: dict[str, Any]  # reported with the task's result, not recorded (kernel-cache counts)

    @property
    def source(self) -> dict: ...  # the model: {"path": ...} or {"bytes": ...} (stages with ``reads``)

    @property
    def where(self) -> str: ...  # the graph and file, for error messages

    @property
    def out(self) -> str: ...  # the bundle path (stages that write the bundle)

    @property
    def target(self) -> Target: ...  # the target named by params["target"]

    def memo(self, kind: str, version: str) -> Memo: ...  # kernel-level decisions (tasks/kernel_cache.py)

    def store_tensors(self, loaders: Mapping[str, Any]) -> dict[str, dict]: ...  # objects with nbytes, load()

    def stored_ranges(self, location: str, path: Path, externals: Mapping[str, dict]  # large ones stored, and
                      ) -> tuple[dict[str, dict], dict[str, str]]: ...  # the key's range hashes (tasks/steps.py)

    def check_read(self, location: str, path: Path, externals: Mapping[str, dict],  # what was read is what was
                   read: Mapping[str, str]) -> None: ...  # keyed: else IO_ERROR (tasks/steps.py)

    def placer(self, packs: Mapping[str, str]) -> Any: ...  # pack's tensor bytes from the cache
