"""Schedulers: run the stale part of a task DAG on dask (sync, threads, processes, a LocalCluster or a cluster).

Only small references travel between tasks: each task returns a ``TaskResult`` of content hashes,
and reads and writes data through the cache. Already-resolved upstream results are passed in as
literal values, so the scheduler never sees the up-to-date part of the DAG.

With an existing cluster (``tcp://HOST:PORT``, possibly other machines) the tasks that touch this
machine's files run here, in local threads (``Stage.on_client``): ``parse`` and ``parse.weights`` read the
ONNX and external-data files and store their contents in the cache, ``pack`` writes the bundle from the cache.
The cluster's workers run the rest (dedupe, formats, tiling, codegen) and read and write nothing but
the cache, so their cache root must be reachable from every worker (an ``s3://`` URL, or a path on a
shared filesystem). The stale tasks run in alternating batches (``_batches``): for one bundle that is
parse* -> cluster -> pack, which loses no parallelism since dedupe waits for every parse anyway.
A LocalCluster (``--workers N``) shares this machine's files and runs every task on its workers.

Observers (``on_event``) get ``Event("start", task_id)`` when a local scheduler hands a task to a worker
and ``Event("finish", task_id, result)`` when its result is back; with ``distributed`` only "finish"
(the result's ``extra`` says on which worker and when it ran, for every scheduler). Ctrl-C
(KeyboardInterrupt) stops handing out tasks, waits for the running ones (each writes atomically) and re-raises.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ..errors import BundleIOError, ParamInvalid
from ..stages import order
from ..tasks.runner import BuildContext, execute_task
from ..tasks.task import Task, TaskResult
from .dag import TaskGraph
from .events import Event, Observer

SCHEDULERS = ("sync", "threads", "processes", "tcp://HOST:PORT")
CONNECT_TIMEOUT_S = 20
# Our own LocalCluster's workers only build: distributed's statistical profiler samples every thread's stack
# every 10 ms and its GIL monitor every 1 ms, both on the cores the tasks need (tasks ran 1.3x slower in a
# worker than in-process); memory and system monitors poll less often. Connected clusters keep their config.
QUIET_WORKERS = {"distributed.worker.profile.enabled": False, "distributed.admin.system-monitor.gil.enabled": False,
                 "distributed.worker.memory.monitor-interval": "1s", "distributed.admin.system-monitor.interval": "2s"}




def check_scheduler(scheduler: str | None, workers: int | None) -> None:
    if scheduler not in (None, "sync", "threads", "processes") and not str(scheduler).startswith("tcp://"):
        raise ParamInvalid(f"unknown scheduler {scheduler!r}; use one of: {', '.join(SCHEDULERS)}", "--scheduler")
    if workers is not None and workers < 1:
        raise ParamInvalid("--workers must be at least 1", "--workers")
    if workers is not None and str(scheduler).startswith("tcp://"):
        raise ParamInvalid("--workers starts a local cluster; it cannot be combined with a tcp:// scheduler",
                           "--workers")


def run_stale(dag: TaskGraph, stale: list[str], resolved: dict[str, TaskResult], ctxs: dict[str, BuildContext],
              scheduler: str | None, workers: int | None, on_event: Observer | None = None,
              recorded: dict[str, dict[str, dict]] | None = None) -> tuple[dict[str, TaskResult], float]:
    """Execute the stale tasks; return their results by task id and the seconds spent setting up (loading
    the scheduler and the compilers the stale steps use, starting worker processes, connecting).
    ``recorded``: the plan's records of the last build by bundle and key, for the lookups made in this process."""
    notify = on_event or (lambda event: None)
    remote = scheduler is not None and scheduler.startswith("tcp://")
    done: dict[str, TaskResult] = {}
    setup = 0.0
    if _in_process(scheduler, workers):  # a chain of must-run tasks needs no scheduler (pipeline/serial.py)
        from .serial import run_serial_prefix  # loaded when tasks run, not by a no-op

        began = time.perf_counter()
        _load_steps({dag.tasks[t].step for t in stale})
        setup = time.perf_counter() - began
        done = run_serial_prefix(dag, stale, resolved, ctxs, notify, threads=scheduler != "sync",
                                 recorded=recorded)
        stale = [t for t in stale if t not in done]
        if not stale:
            return done, setup
    began = time.perf_counter()
    steps = {dag.tasks[t].step for t in stale}
    with _getter(scheduler, workers, notify, steps) as (get, load):
        if not remote:
            load(steps)
            setup += time.perf_counter() - began
            if workers is not None and scheduler is None:  # a LocalCluster: per-graph groups (fuse.py)
                done.update(_run_fused(get, dag, stale, {**resolved, **done}, ctxs))
            else:
                done.update(_run_batch(get, dag, stale, {**resolved, **done}, ctxs))
            return done, setup
        with _local_getter("threads", None, notify) as here:
            _load_steps({dag.tasks[t].step for t in stale if on_client(dag.tasks[t].step)})
            load({dag.tasks[t].step for t in stale if not on_client(dag.tasks[t].step)})
            setup += time.perf_counter() - began
            for client_side, ids in _batches(dag, stale):
                run = _run_batch if client_side else _run_fused
                done.update(run(here if client_side else get, dag, ids, {**resolved, **done}, ctxs))
    return done, setup


def _in_process(scheduler: str | None, workers: int | None) -> bool:
    """sync or threads, with no dask callbacks of the caller's (a ``with ProgressBar():`` wants every task)."""
    import sys

    if scheduler not in (None, "sync", "threads") or workers is not None:
        return False
    callbacks = sys.modules.get("dask.callbacks")
    return callbacks is None or not callbacks.Callback.active


def _load_steps(steps: set[str]) -> None:
    """Import what the steps that run in this process use, once, before they run: imports are a cost of
    starting the tool (a build report counts them apart), and a task's seconds should be its own work. A
    preloaded module's ``warm_up()``, if it has one, runs too (what a library does on first use: onnx loads its
    operator schemas on the first check)."""
    from importlib import import_module

    for name in _modules_for(steps):
        module = import_module(name)
        if name.startswith("bundle_pipeline.") and callable(getattr(module, "warm_up", None)):
            module.warm_up()


def _modules_for(steps: set[str]) -> list[str]:
    """The modules the steps use: the cache glue, arrays, stage outputs' encoder, and each stage's ``preload``."""
    needed = ["bundle_pipeline.tasks.steps", "numpy", "orjson"]
    needed += [m for stage in order.ordered() if stage.name in steps for m in stage.preload]  # onnx, kernels...
    return list(dict.fromkeys(needed))


def on_client(step: str) -> bool:
    """The step reads this machine's input files or writes its output: never sent to a remote cluster."""
    return order.named(step).on_client


def _run_batch(get, dag: TaskGraph, ids: list[str], known: dict[str, TaskResult],
               ctxs: dict[str, BuildContext]) -> dict[str, TaskResult]:
    graph = {}
    for tid in ids:
        task = dag.tasks[tid]
        upstream = [known.get(p, p) for p in sorted(dag.predecessors(tid))]  # literal when already known
        graph[tid] = (execute_task, task, ctxs[task.bundle], *upstream)
    return dict(zip(ids, get(graph, ids), strict=True))


def _run_fused(get, dag: TaskGraph, ids: list[str], known: dict[str, TaskResult],
               ctxs: dict[str, BuildContext]) -> dict[str, TaskResult]:
    """Like ``_run_batch`` on a cluster, with each graph's consecutive tasks in one scheduler task."""
    from .fuse import group_graph
    graph, annotations = group_graph(dag, ids, known, ctxs, getattr(get, "workers", None))
    done: dict[str, TaskResult] = {}
    for results in get(graph, list(graph), annotations):
        done.update(results)
    return {tid: done[tid] for tid in ids}


def _batches(dag: TaskGraph, stale: list[str]) -> list[tuple[bool, list[str]]]:
    """Stale tasks (in topological order) as alternating batches (on_client, ids): client steps at even
    levels, cluster steps at odd ones, each task one level past any upstream task of the other side."""
    level: dict[str, int] = {}
    for tid in stale:
        here = on_client(dag.tasks[tid].step)
        lv = 0 if here else 1
        for p in dag.predecessors(tid):
            if p in level:
                same = on_client(dag.tasks[p].step) == here
                lv = max(lv, level[p] if same else level[p] + 1)
        level[tid] = lv
    return [(lv % 2 == 0, [t for t in stale if level[t] == lv]) for lv in sorted(set(level.values()))]


@contextmanager
def _getter(scheduler: str | None, workers: int | None, notify: Observer, steps: set[str]) -> Iterator:
    """(get, load): ``get(graph, keys)`` runs tasks; ``load(steps)`` imports what those steps use wherever
    they will run (this process, or every worker of a cluster), so imports count as setup, not as task time.
    ``steps``: the steps that will run, which a LocalCluster's workers import before they start."""
    if scheduler is None and workers is not None:
        with _local_cluster(workers, steps) as client:
            from .gcpolicy import stop_collecting

            client.run(stop_collecting)  # our own worker processes: they only build (pipeline/gcpolicy.py)
            yield _distributed_getter(client, notify), _loader(client)
        return
    if scheduler is not None and scheduler.startswith("tcp://"):
        from distributed import Client

        try:
            client = Client(scheduler, set_as_default=False, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as err:
            raise BundleIOError(f"cannot connect to the dask scheduler at {scheduler}: {err}", "--scheduler") from None
        with client:
            yield _distributed_getter(client, notify), _loader(client)
        return
    with _local_getter(scheduler or "threads", workers, notify) as get:
        yield get, _load_steps


def _loader(client) -> Callable[[set[str]], None]:
    """``_load_steps`` on every worker of the cluster (workers that join later import on their first task)."""

    def load(steps: set[str]) -> None:
        client.run(_load_steps, steps)

    return load


@contextmanager
def _local_getter(scheduler: str, workers: int | None, notify: Observer) -> Iterator:
    """dask's local schedulers with callbacks; the thread pool is ours so Ctrl-C can wait for running tasks."""
    import dask
    from dask.callbacks import Callback, normalize_callback

    ours = Callback(pretask=lambda key, dsk, state: notify(Event("start", key)),
                    posttask=lambda key, result, dsk, state, worker_id: notify(Event("finish", key, result)))
    callbacks = [*Callback.active, normalize_callback(ours)]  # a caller's `with ProgressBar():` still works
    if scheduler == "sync":
        yield lambda graph, keys: dask.get(graph, keys, callbacks=callbacks)
        return
    if scheduler == "processes":
        import dask.multiprocessing

        yield lambda graph, keys: dask.multiprocessing.get(graph, keys, num_workers=workers, callbacks=callbacks)
        return
    from concurrent.futures import ThreadPoolExecutor

    import dask.threaded

    pool = ThreadPoolExecutor(workers or os.cpu_count() or 1, thread_name_prefix="bundle-pipeline")
    try:
        yield lambda graph, keys: dask.threaded.get(graph, keys, pool=pool, callbacks=callbacks)
    finally:  # on Ctrl-C too: no new task starts; the running ones finish their atomic writes
        pool.shutdown(wait=True, cancel_futures=True)


def _distributed_getter(client, notify: Observer):
    """``client.get`` that reports each task as its result arrives."""
    _name_cheaply()

    def get(graph: dict, keys: list[str], annotations: dict[str, dict] | None = None) -> list[TaskResult]:
        from distributed import as_completed
        from distributed.scheduler import KilledWorker

        futures = client.get(_annotated(graph, annotations) if annotations else graph, keys, sync=False)
        results: dict[str, TaskResult | dict[str, TaskResult]] = {}
        try:  # results arrive with their futures: one round trip each, and a task's exception is re-raised
            for future, result in as_completed(futures, with_results=True, loop=client.loop):
                results[future.key] = result
                for member in result.values() if isinstance(result, dict) else [result]:  # a group: each task
                    notify(Event("finish", member.id, member))
        except KilledWorker as err:  # dask retried the task on other workers, and they died too
            client.cancel(futures)
            raise BundleIOError(f"dask workers kept dying while running {err.task!r} (dask's retries used up); "
                                f"finished tasks are recorded, the previous bundle is unchanged",
                                "--scheduler") from None
        except BaseException:
            client.cancel(futures)
            raise
        return [results[k] for k in keys]

    get.workers = [(address, w.get("nthreads", 1))  # fuse.group_graph batches and spreads the groups over them
                   for address, w in sorted(client.scheduler_info()["workers"].items())]
    return get


def _annotated(graph: dict, annotations: dict[str, dict]):
    """``graph`` as a HighLevelGraph with one layer per distinct annotation (a priority), which
    the scheduler applies to every task of the layer."""
    from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

    layers: dict[str, tuple[dict, dict]] = {}
    for key, task in graph.items():
        note = annotations.get(key, {})
        name = "bundle-pipeline-" + "-".join(f"{k}={v}" for k, v in sorted(note.items()))
        layers.setdefault(name, ({}, note))[0][key] = task
    return HighLevelGraph({name: MaterializedLayer(tasks, annotations=note or None)
                           for name, (tasks, note) in layers.items()}, {name: set() for name in layers})


def _name_cheaply() -> None:
    """``client.get`` names a graph by a token of everything in it; dask's default walks each Task's params
    and context field by field (0.35 s for 128 graphs, in the client, while workers wait). A task is named
    by its id and version, a result by its id and key (a content hash), a context by its fields: as unique
    within a build as the objects, at a fraction of the cost. Registered with dask, so tasks stay dask-free."""
    from dask.tokenize import normalize_token

    from .fuse import Members

    normalize_token.register(Task)(lambda t: ("Task", t.id, t.step, t.version))
    normalize_token.register(TaskResult)(lambda r: ("TaskResult", r.id, r.key, r.status))
    normalize_token.register(BuildContext)(lambda c: ("BuildContext", c.cache_root, c.target, c.force))
    normalize_token.register(Members)(lambda m: ("Members", tuple(t.id for t in m.tasks), m.preds))


@contextmanager
def _local_cluster(workers: int, steps: set[str]) -> Iterator:
    """A distributed.LocalCluster of ``workers`` single-threaded worker processes, closed afterwards. Its
    workers fork from a warm server process (``_start_forkserver``) rather than each starting a fresh interpreter,
    where the platform has one (not on Windows: there they are spawned, as distributed does by default)."""
    import multiprocessing

    forked = "forkserver" in multiprocessing.get_all_start_methods()
    if forked:
        _start_forkserver(steps)  # first: it imports while this process imports distributed
    import dask
    import distributed.utils
    from distributed import Client, LocalCluster

    config = dict(QUIET_WORKERS)
    if forked:
        # distributed would import its optional packages here to preload them in a forkserver: ours already runs
        distributed.utils._forkserver_preload_set = True
        config["distributed.worker.multiprocessing-method"] = "forkserver"
    # env: the worker's environment is this process's now (a forked worker inherits the server's, from its start)
    with dask.config.set(config), LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=50,
            env=dict(os.environ)
    ) as cluster, Client(cluster, set_as_default=False) as client:
        yield client


# What distributed's Nanny sets before it spawns a worker (distributed.nanny.pre-spawn-environ, and the hash seed
# it fixes so that every worker hashes strings alike): set for the forkserver, whose children are the workers.
# A variable the user set keeps the user's value. Not its MALLOC_TRIM_THRESHOLD_=65536, which hands freed heap
# back to the kernel for long-lived workers: ours build once and close, and with it a one-worker cold build of
# 128 graphs took 98k page faults instead of 65k (0.05-0.1 s more system time), as a sync build does with it set.
WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "PYTHONHASHSEED": "6640"}


def _start_forkserver(steps: set[str]) -> None:
    """Start multiprocessing's fork server, which imports distributed and what ``steps`` use once, in the
    background, while this process goes on; each worker is then a fork of it (a spawned worker imported all of
    it again, on the cores the build needs: 0.4-0.6 s of a LocalCluster's start, and its close took longer too).
    One server per process: a later cluster reuses it, importing what else its steps use on its first task."""
    import multiprocessing
    from multiprocessing import forkserver

    modules = ["distributed", "distributed.nanny", "distributed.worker", *_modules_for(steps)]
    multiprocessing.get_context("forkserver").set_forkserver_preload(modules)
    saved = {k: os.environ.get(k) for k in WORKER_ENV}
    os.environ.update({k: v for k, v in WORKER_ENV.items() if saved[k] in (None, "") or
                       (k == "PYTHONHASHSEED" and saved[k] == "0")})
    try:
        forkserver.ensure_running()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
