"""The bundle-pipeline command line (typer): run, status, explain, dag, exec, inspect, split, cache.

Errors print one line, no traceback."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from .errors import BundleError, BundleIOError, ParamInvalid

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Compile bundles of ONNX graphs that share weights into one offline model.")
cache_app = typer.Typer(no_args_is_help=True, help="Manage the build cache.")
app.add_typer(cache_app, name="cache")


def one_line_errors(fn):
    """A BundleError becomes one line on stderr and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BundleError as err:
            typer.echo(f"error: {err.one_line()}", err=True)
            raise typer.Exit(1) from None

    return wrapper


SpecsArg = Annotated[list[Path], typer.Argument(help="bundle.yaml files, or directories of them")]
TargetOpt = Annotated[str | None, typer.Option(help="cpu | npu (default: the spec's target, else cpu)")]
CacheOpt = Annotated[str | None, typer.Option(help="cache directory or fsspec URL")]


@app.command()
@one_line_errors
def run(
    specs: SpecsArg,
    target: TargetOpt = None,
    out: Annotated[str | None, typer.Option(help="bundle output path (a .zip suffix writes one file)")] = None,
    cache: CacheOpt = None,
    force: Annotated[bool, typer.Option(help="ignore cached results and re-run every task")] = False,
    scheduler: Annotated[str | None, typer.Option(help="sync | threads (default) | processes | tcp://HOST:PORT")]
    = None,
    workers: Annotated[int | None, typer.Option(help="worker count; alone, a LocalCluster of N processes")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON report line per bundle")] = False,
    profile: Annotated[Path | None, typer.Option(help="write a Chrome trace of the build here (open it in "
                                                      "ui.perfetto.dev or chrome://tracing)")] = None,
) -> None:
    """Build bundles in one DAG; a second run of an unchanged spec executes no task.

    On a terminal a live display shows each stage's progress, cache hits and the running tasks; in a pipe,
    one plain line per task that runs; with --json, nothing but the reports (errors alone go to stderr).
    Ctrl-C starts no new task and exits with 130; every write is atomic, so the bundle is the previous one
    (or the new one, complete, if pack was already running) and the tasks that finished are cached for the
    next run.
    """
    try:
        from .pipeline import build_many
        from .pipeline.gcpolicy import no_collections
        from .pipeline.progress import fan_out, show_progress

        loaded = _load_specs(specs, target, out, cache)
        recorder = None
        if profile is not None:
            _check_trace_path(profile, loaded)
            from .pipeline.profile import TraceRecorder

            recorder = TraceRecorder()
        with show_progress(as_json) as display, no_collections():
            reports = build_many(loaded, scheduler=scheduler, force=force, workers=workers,
                                 on_event=fan_out([display, recorder]))
        if recorder is not None:
            recorder.write(profile)
    except KeyboardInterrupt:
        typer.echo("interrupted: nothing was left half-written; finished tasks are cached for the next run",
                   err=True)
        raise typer.Exit(130) from None
    for report in reports:
        ran = sum(t.status == "ran" for t in report.tasks)
        if as_json:
            typer.echo(json.dumps(report.to_json()))
        else:
            typer.echo(f"built {report.bundle}  digest {report.digest[:16]}  {report.seconds:.2f}s  "
                       f"{ran} ran, {len(report.tasks) - ran} cached")


def _check_trace_path(path: Path, specs: list) -> None:
    """--profile may replace a trace it wrote before (a Trace Event JSON object), nothing else of the user's."""
    from .files import open_regular
    from .guard import check_new_file, protected_inputs

    try:
        with open(open_regular(path, follow_symlinks=False), "rb") as f:
            is_trace = f.read(16).lstrip().startswith(b'{"traceEvents"')
    except OSError:
        is_trace = False
    check_new_file(path, protected_inputs(specs), is_trace, "the trace",
                   hint="it is not a trace this tool wrote; choose another path")


@app.command()
@one_line_errors
def status(
    specs: SpecsArg,
    target: TargetOpt = None,
    cache: CacheOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help='last line: {"stale": [{"id", "reason"}], "maybe": [...]}')]
    = False,
) -> None:
    """List the tasks a run would execute and why (which file, tensor, option, version or target changed).

    "stale" tasks certainly run; "maybe" tasks sit downstream of one and run unless its new output
    equals the old (early cutoff), which only running it can tell.
    """
    from .pipeline import status as plan_status

    found = plan_status(_load_specs(specs, target, None, cache))
    stale = [{"id": s.id, "reason": s.reason} for s in found.definite()]
    maybe = [{"id": s.id, "reason": s.reason} for s in found.pending()]
    if not as_json:
        typer.echo(f"{len(stale)} stale, {len(maybe)} downstream (run unless cut off early), "
                   f"{len(found.resolved)} up to date")
        for item in stale + maybe:
            typer.echo(f"  {item['id']:<32} {item['reason']}")
        return
    typer.echo(json.dumps({"stale": stale, "maybe": maybe}))


@app.command()
@one_line_errors
def explain(
    spec: Annotated[Path, typer.Argument(help="bundle.yaml")],
    task: Annotated[str, typer.Argument(help="task id, e.g. demo/codegen:infer (the bundle prefix may be omitted)")],
    target: TargetOpt = None,
    cache: CacheOpt = None,
) -> None:
    """Show one task's key inputs, last build vs now, like `ninja -d explain`."""
    from .pipeline.explain import explain_task

    for line in explain_task(_load_specs([spec], target, None, cache)[0], task):
        typer.echo(line)


@app.command()
@one_line_errors
def dag(
    specs: SpecsArg,
    fmt: Annotated[str, typer.Option("--format", "-f", help="dot | json | html")] = "dot",
    out: Annotated[Path | None, typer.Option("-o", "--out", help="write to this file instead of stdout")] = None,
    target: TargetOpt = None,
    cache: CacheOpt = None,
    force: Annotated[bool, typer.Option(help="replace an existing -o file")] = False,
) -> None:
    """Draw the task graph: each task's stage, graph, status (cached / stale / maybe) and recorded duration.

    dot is Graphviz input; json is {"nodes", "edges", ...}; html is one self-contained page (inline SVG,
    no network) that draws the DAG in a browser. -o never replaces an existing file without --force, and
    never a spec, a model or anything of the cache.
    """
    from .guard import check_new_file, protected_inputs, write_file_atomic
    from .pipeline.dagview import FORMATS, render, task_graph

    if fmt not in FORMATS:
        raise ParamInvalid(f"unknown format {fmt!r}; use one of: {', '.join(FORMATS)}", "--format")
    loaded = _load_specs(specs, target, None, cache)
    if out is not None:
        check_new_file(out, protected_inputs(loaded), force, "the DAG")
    text = render(task_graph(loaded), fmt)
    if out is None:
        typer.echo(text, nl=not text.endswith("\n"))
        return
    try:
        write_file_atomic(out, text.encode())
    except OSError as err:
        raise BundleIOError(f"cannot write: {err.strerror or err}", str(out)) from None
    typer.echo(f"wrote {out}", err=True)


def _load_specs(paths: list[Path], target: str | None, out: str | None, cache: str | None) -> list:
    from .spec import load_spec

    files = [f for p in paths for f in (sorted(p.glob("*.yaml")) + sorted(p.glob("*.yml")) if p.is_dir() else [p])]
    if not files:
        raise ParamInvalid(f"no bundle specs (*.yaml) in {', '.join(map(str, paths))}", "specs")
    if out and len(files) > 1:
        raise ParamInvalid("--out applies to one spec; give one spec or set 'output' in each", "--out")
    return [load_spec(f, target=target, output=out, cache=cache) for f in files]


@app.command("exec")
@one_line_errors
def exec_(
    bundle: Annotated[Path, typer.Argument(help="bundle directory or file")],
    graph: Annotated[str, typer.Argument(help="infer graph to run")],
    inputs: Annotated[list[str] | None, typer.Option("-i", "--input", help="NAME=FILE.npy feed")] = None,
    updates: Annotated[list[str] | None, typer.Option("-u", "--update", help="NAME=FILE.npy update feed")] = None,
    update_graph: Annotated[str | None, typer.Option(help="update graph for -u (default: the only one)")] = None,
    out_dir: Annotated[Path | None, typer.Option("-o", "--out", help="write outputs as NAME.npy here")] = None,
    force: Annotated[bool, typer.Option(help="replace existing NAME.npy files in -o DIR")] = False,
    max_memory: Annotated[str | None, typer.Option(help="memory loading may plan (variables, arenas, inline "
                                                        "constants), e.g. 8G [default: max(1 GiB, 64 x the "
                                                        "bundle's size)]")] = None,
    executor: Annotated[str, typer.Option(help="auto (ONNX Runtime for the cpu graphs it runs, else the "
                                               "reference) | onnxruntime | reference")] = "auto",
    threads: Annotated[int | None, typer.Option(help="ONNX Runtime intra-op threads [default: one per "
                                                     "core]")] = None,
) -> None:
    """Load a bundle (runs init), apply -u updates, run GRAPH on -i feeds.

    -o DIR never replaces an existing file without --force, and never a feed or anything inside the bundle.
    """
    import numpy as np

    from .runtime import load_bundle

    budget = None if max_memory is None else _parse_bytes(max_memory, "--max-memory")
    update_feeds, infer_feeds = _read_feeds(updates or []), _read_feeds(inputs or [])  # bad feeds fail first
    loaded = load_bundle(bundle, max_alloc_bytes=budget, executor=executor, threads=threads)
    files = _output_files(loaded, graph, bundle, out_dir, [*(updates or []), *(inputs or [])], force) \
        if out_dir else {}
    if updates:
        loaded.update(update_feeds, graph=update_graph)
    outputs = loaded.run(graph, infer_feeds)
    for name, value in outputs.items():
        if name in files:
            _save_npy(files[name], value)
        typer.echo(f"{name}: {value.dtype}{list(value.shape)}  mean {float(np.mean(value)) if value.size else 0:.6g}")


def _output_files(loaded, graph: str, bundle: Path, out_dir: Path, feeds: list[str], force: bool) -> dict[str, Path]:
    """Output name -> the NAME.npy it goes to, checked before anything runs: new files (or --force), two
    outputs never share a file, never a feed of this command or a path inside the bundle."""
    import os

    from .guard import Protected, check_new_file

    loaded._check_graph(graph, "infer")
    guarded = [Protected(os.path.realpath(bundle), f"the bundle {bundle}", no_inside=True)]
    guarded += [Protected(os.path.realpath(item.partition("=")[2]), f"feed {item.partition('=')[0]}")
                for item in feeds]
    if out_dir.exists() and not out_dir.is_dir():
        raise ParamInvalid("-o takes a directory (outputs are written as NAME.npy in it), and this is not one",
                           str(out_dir))
    files: dict[str, Path] = {}
    for out in loaded.executors[graph].program.outputs:
        path = out_dir / f"{_file_safe(out.name)}.npy"
        clash = next((n for n, p in files.items() if p == path), None)
        if clash is not None:
            raise ParamInvalid(f"outputs {clash!r} and {out.name!r} would both be written to {path.name}", "-o")
        check_new_file(path, guarded, force, f"output {out.name!r}")
        files[out.name] = path
    return files


def _save_npy(path: Path, value) -> None:
    import io

    import numpy as np

    from .guard import write_file_atomic

    buf = io.BytesIO()
    np.save(buf, value, allow_pickle=False)
    try:
        write_file_atomic(path, buf.getvalue())
    except OSError as err:
        raise BundleIOError(f"cannot write: {err.strerror or err}", str(path)) from None


@app.command()
@one_line_errors
def inspect(
    bundle: Annotated[Path, typer.Argument(help="bundle directory or file")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Show a bundle's graphs, variables (format, size, readers, writers) and constants."""
    from .inspect import describe

    info = describe(str(bundle))
    if as_json:
        typer.echo(json.dumps(info))
        return
    from .inspect import render

    render(info, str(bundle))


CacheRoot = Annotated[str, typer.Argument(help="cache directory or fsspec URL (s3://bucket/prefix, ...)")]


def _with_cache(root: str, action: str, fn):
    """Run ``fn(Cache(root))`` on a cache only (its marker, or a cache made before markers: ``Cache.require``);
    anything else is one PARAM_INVALID line and is not touched. An OSError (missing bucket, permissions,
    network) is one IO_ERROR line."""
    from .cache import Cache
    from .cache.store import NotACache
    from .guard import check_cache_url

    check_cache_url(root, "cache root")
    try:
        cache = Cache(root)
        cache.require()
        return fn(cache)
    except NotACache as err:
        raise ParamInvalid(f"cache {action}: {err}", root) from None
    except OSError as err:
        raise BundleIOError(f"cache {action} failed: {err.strerror or err}", str(err.filename or root)) from None


@cache_app.command("info")
@one_line_errors
def cache_info(root: CacheRoot = ".bundle-cache") -> None:
    """Entry counts and bytes per area (objects, tensors, actions), temp leftovers, total bytes."""
    typer.echo(json.dumps(_with_cache(root, "info", lambda c: c.info())))


@cache_app.command("verify")
@one_line_errors
def cache_verify(root: CacheRoot = ".bundle-cache") -> None:
    """Re-hash every entry; corrupt entries are deleted (they become misses) and listed."""
    typer.echo(json.dumps(_with_cache(root, "verify", lambda c: c.verify())))


GC_TEMP_GRACE_S = 3600  # a younger temp file may be a running build's write in progress


@cache_app.command("gc")
@one_line_errors
def cache_gc(
    root: CacheRoot = ".bundle-cache",
    max_bytes: Annotated[str | None, typer.Option(help="size budget, e.g. 500000000, 500M, 20G: evict only while "
                                                       "the cache is larger, least recently used first")] = None,
    older_than: Annotated[float, typer.Option(help="only remove entries last used at least this many days ago")]
    = 0,
) -> None:
    """Keep what the newest build of each spec needs; remove the rest.

    The roots are the last-build records the pipeline writes for every spec (its task records and the
    objects and tensors they reach). Without --max-bytes everything else goes: older task records,
    kernel-level decisions, memos. With --max-bytes entries go only while the cache is over budget:
    unreachable ones first, then the newest builds' own, least recently used first (those builds
    re-run what they lose). Temp files of interrupted writes go once an hour old. Safe beside a
    running build: what it loses is rebuilt (see `run --json` cache_repairs).
    """
    budget = None if max_bytes is None else _parse_bytes(max_bytes, "--max-bytes")
    if older_than < 0:
        raise ParamInvalid("--older-than must be a number of days >= 0", "--older-than")

    def gc(c):
        roots = c.newest_builds()
        out = c.gc(keep_actions=roots, older_than_s=older_than * 86400, max_bytes=budget,
                   temp_older_than_s=max(GC_TEMP_GRACE_S, older_than * 86400))
        return {**out, "roots": len(roots), "total_bytes": c.info()["total_bytes"]}

    typer.echo(json.dumps(_with_cache(root, "gc", gc)))


def _parse_bytes(text: str, option: str) -> int:
    """500, 500K, 20M, 1.5G, 2T (powers of 1024; a trailing B or iB is allowed)."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, flags=re.IGNORECASE)
    if not m:
        raise ParamInvalid(f"{text!r} is not a size (e.g. 500000000, 500M, 20G)", option)
    return int(float(m[1]) * 1024 ** "_KMGT".index(m[2].upper() or "_"))


@app.command()
@one_line_errors
def split(
    model: Annotated[Path, typer.Argument(help="ONNX inference model")],
    outdir: Annotated[Path, typer.Argument(help="directory for init.onnx, update.onnx, infer.onnx, bundle.yaml")],
    const_names: Annotated[str | None, typer.Option(help="comma-separated tensors to make variables "
                                                         "(default: float weights of at least --min-bytes)")] = None,
    min_bytes: Annotated[int | None, typer.Option(help="smallest weight the default selection takes, in bytes "
                                                       "[default: 8, a float32 scalar stays constant]")] = None,
    input_shape: Annotated[str | None, typer.Option(help="infer graph option, CANN syntax name:d0,d1;name2:...")]
    = None,
    force: Annotated[bool, typer.Option(help="replace existing init.onnx, update.onnx, infer.onnx, bundle.yaml "
                                             "(never the input model)")] = False,
) -> None:
    """Split one model into weight-refreshable init / update / infer graphs (aclgrphConvertToWeightRefreshableGraphs)
    and write a bundle.yaml that builds them. Existing files in OUTDIR are refused unless --force."""
    from .split import DEFAULT_MIN_BYTES, split_model_file

    names = None if const_names is None else [n for n in const_names.split(",") if n.strip()]
    if names is not None and not names:
        raise ParamInvalid("--const-names names no tensor", "--const-names")
    graphs, spec = split_model_file(model, outdir, names, DEFAULT_MIN_BYTES if min_bytes is None else min_bytes,
                                    input_shape or "", force=force)
    nbytes = sum(t.ByteSize() for t in graphs.var_init.graph.initializer)
    typer.echo(f"split {model} -> {spec}: {len(graphs.variables)} variables ({nbytes} B); "
               f"build with: bundle-pipeline run {spec}")


def _read_feeds(items: list[str]) -> dict:
    from .feeds import read_npy

    feeds = {}
    for item in items:
        name, sep, file = item.partition("=")
        if not sep or not name or not file:
            raise ParamInvalid(f"feed {item!r} must look like NAME=FILE.npy", "-i/-u")
        feeds[name] = read_npy(file, name)
    return feeds


def _file_safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def main() -> None:
    """The command line, for a caller that goes on afterwards (it exits by ``SystemExit``, as typer does)."""
    # Start-up is a product figure (a no-op rebuild is mostly imports), and compiling this package's ~60 modules
    # from source on every command costs ~0.1 s more than loading them. pip byte-compiles a normal install, but
    # not an editable one, and PYTHONDONTWRITEBYTECODE stops the interpreter from caching them itself: the
    # command keeps the compiled modules it loads (in __pycache__ beside them, as Python does by default). The
    # library, imported by someone else's process, leaves that setting alone.
    sys.dont_write_bytecode = False
    app()


def entry() -> None:
    """The ``bundle-pipeline`` command: ``main`` in a process of its own, which ends without freeing its objects."""
    try:
        main()
        code = 0
    except SystemExit as stop:
        code = stop.code
    exit_now(code)


def exit_now(code: int | str | None) -> None:
    """End the process as the interpreter would (exit handlers, flushed output, the same exit status), minus
    freeing every object one by one: after a build of 128 graphs in threads that took 1.4 s of the whole command
    (the objects its caches and reports hold). mypy ends the same way. With a thread of someone else's still
    running, the interpreter's own exit waits for it."""
    import atexit
    import os
    import threading

    if not isinstance(code, int):  # None: success; a message: printed, status 1 (what sys.exit does)
        if code is not None:
            print(code, file=sys.stderr)
        code = 0 if code is None else 1
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    atexit._run_exitfuncs()  # logging's flush, multiprocessing's and distributed's clean-ups
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:  # a closed pipe (`| head`): the interpreter's status for output it could not flush
        code = code or 120
    os._exit(code)


if __name__ == "__main__":
    entry()
