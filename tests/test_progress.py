"""Progress of `run`: rich live display on a terminal, plain lines in a pipe, nothing with --json; Ctrl-C exits 130
leaving the previous bundle and a consistent cache, and the next build is byte-identical to a clean one."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from bundle_pipeline.cache import Cache
from bundle_pipeline.pipeline import build
from bundle_pipeline.pipeline.dag import TaskGraph
from bundle_pipeline.pipeline.events import Event
from bundle_pipeline.pipeline.progress import Counts, choose
from bundle_pipeline.pipeline.rebuild import Plan
from bundle_pipeline.spec import load_spec
from bundle_pipeline.stages.pack import bundle_digest, entries
from bundle_pipeline.tasks.task import Task, TaskResult

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "demo"
sys.path.insert(0, str(ROOT / "bench"))

import generate  # noqa: E402


def demo_copy(tmp_path: Path) -> Path:
    dest = tmp_path / "demo"
    shutil.copytree(DEMO, dest, ignore=shutil.ignore_patterns("build", ".bundle-cache"))
    return dest


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "bundle_pipeline.cli", *args]


def test_plain_lines_in_a_pipe_then_nothing_for_a_noop(tmp_path):
    spec = demo_copy(tmp_path) / "bundle.yaml"
    first = subprocess.run(cli("run", str(spec)), capture_output=True, text=True, check=False)
    assert first.returncode == 0, first.stderr
    assert first.stderr == "" and "\x1b" not in first.stdout  # a build log on stdout, no ANSI escapes in a pipe
    tasks = [t.id for t in build(load_spec(spec)).tasks]  # a no-op now: lists every task
    n = len(tasks)
    lines = first.stdout.strip().splitlines()
    assert lines[0] == f"{n} tasks: 0 up to date, {n} to run"
    ran, last = lines[1:-1], lines[-1]
    assert [line.split("]")[0].strip("[ ") for line in ran] == [f"{i}/{n}" for i in range(1, n + 1)]
    assert all(" ran    " in line and "elapsed)" in line for line in ran)
    assert sorted(line.split("ran    ")[1].split()[0] for line in ran) == sorted(tasks)
    assert ran[-1].split("ran    ")[1].startswith("demo/pack ")
    assert last.startswith("built ") and f"{n} ran, 0 cached" in last
    again = subprocess.run(cli("run", str(spec)), capture_output=True, text=True, check=False)
    assert again.returncode == 0 and again.stderr == ""
    assert again.stdout.startswith("built ") and again.stdout.count("\n") == 1  # nothing ran: nothing to report


def test_a_failing_run_prints_one_error_line_on_stderr(tmp_path):
    spec = demo_copy(tmp_path) / "bundle.yaml"
    (spec.parent / "update.onnx").write_bytes(b"not onnx")  # parse:update fails mid-build
    proc = subprocess.run(cli("run", str(spec)), capture_output=True, text=True, check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("error: GRAPH_INVALID: ") and proc.stderr.count("\n") == 1
    assert proc.stdout.startswith(f"{len(build_tasks(spec))} tasks: 0 up to date")


def build_tasks(spec: Path) -> list:
    from bundle_pipeline.tasks.factory import bundle_tasks

    return bundle_tasks(load_spec(spec))


def test_json_prints_reports_only(tmp_path):
    spec = demo_copy(tmp_path) / "bundle.yaml"
    proc = subprocess.run(cli("run", str(spec), "--json"), capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and proc.stderr == ""
    report = json.loads(proc.stdout)
    assert {t["status"] for t in report["tasks"]} == {"ran"}


def read_pty(argv: list[str], cwd: Path) -> tuple[int, str]:
    """Run argv with stdin/stdout/stderr on a pseudo-terminal; return its exit code and everything it wrote."""
    master, slave = os.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env, close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError as err:  # EIO: the child closed the terminal
            if err.errno != errno.EIO:
                raise
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=120), b"".join(chunks).decode(errors="replace")


def test_rich_display_on_a_terminal(tmp_path):
    spec = demo_copy(tmp_path) / "bundle.yaml"
    code, text = read_pty(cli("run", str(spec)), tmp_path)
    assert code == 0, text
    assert "\x1b[" in text  # a live display redraws with escape sequences
    for word in ("stage", "cache hits", "parse", "dedupe", "formats", "tiling", "codegen", "pack", "elapsed"):
        assert word in text, word
    final = text[text.rindex("stage"):]  # the last frame: every stage complete
    tasks = build(load_spec(spec)).tasks  # a no-op now: lists every task
    per_stage = {s: sum(t.stage == s for t in tasks) for s in {t.stage for t in tasks}}
    for stage, n in per_stage.items():
        assert f"{n}/{n}" in final, (stage, final)
    assert f"{len(tasks)}/{len(tasks)} tasks" in final and "built " in final


def test_counts_per_stage_with_planned_and_cutoff_hits():
    def task(tid: str, stage: str) -> Task:
        return Task(tid, "b", stage, stage, "1", None)

    def result(tid: str, stage: str, status: str) -> TaskResult:
        return TaskResult(tid, stage, None, "k", {}, status, 0.1)

    dag = TaskGraph([task(tid, stage) for tid, stage in (("b/parse:x", "parse"), ("b/parse:y", "parse"),
                                                          ("b/dedupe", "dedupe"), ("b/pack", "pack"))])
    found = Plan(resolved={"b/parse:x": result("b/parse:x", "parse", "cached")})
    found.stale = {t: None for t in ("b/parse:y", "b/dedupe", "b/pack")}
    counts = Counts()
    counts.update(Event("plan", data={"dag": dag, "plan": found, "started": 0.0, "finished": 0.0}))
    assert counts.total == {"parse": 2, "dedupe": 1, "pack": 1} and counts.hits["parse"] == 1 and counts.to_run == 3
    counts.update(Event("start", "b/parse:y"))
    assert list(counts.running) == ["b/parse:y"]
    counts.update(Event("finish", "b/parse:y", result("b/parse:y", "parse", "ran")))
    counts.update(Event("finish", "b/dedupe", result("b/dedupe", "dedupe", "cached")))  # early cutoff
    assert counts.done == {"parse": 2, "dedupe": 1, "pack": 0} and counts.hits == {"parse": 1, "dedupe": 1, "pack": 0}
    assert counts.running == {} and counts.finished == 2 and counts.stages() == ["parse", "dedupe", "pack"]


def test_mode_choice():
    class Tty:
        def isatty(self):
            return True

    assert choose(True, Tty()) == "none" and choose(False, Tty()) == "rich"
    assert choose(False, open(os.devnull, "w")) == "plain"  # noqa: SIM115


def temp_leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob(".tmp-*"))


def test_ctrl_c_stops_cleanly_and_the_next_build_is_byte_identical(tmp_path):
    spec = Path(generate.generate("c", tmp_path / "data", 0.002)["spec"])  # 32 infer graphs, ~170 tasks
    cache = tmp_path / "cache"
    first = build(load_spec(spec, cache=str(cache)))
    out = Path(first.bundle)
    before = {rel: (out / rel).read_bytes() for rel in entries(out)}
    text = yaml.safe_load(spec.read_text())  # an edit that changes the bundle: one graph without memory reuse
    edited = next(g for g in text["graphs"] if g["role"] == "infer")
    edited["options"] = {**(edited.get("options") or {}), "exec_disable_reused_memory": "1"}
    spec.write_text(yaml.safe_dump(text, sort_keys=False))

    inherited = signal.getsignal(signal.SIGINT)
    # SIGINT at its default in the child, whatever this test process inherited or was left with: a child started
    # with SIGINT ignored (as some runners start workers) keeps ignoring it, and the build runs to its end
    proc = subprocess.Popen(cli("run", str(spec), "--cache", str(cache), "--force"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # The whole build takes about a second: on a loaded machine this test could read the first task's line after
    # the build had finished. With a one-page pipe the build blocks on its progress lines until they are read.
    fcntl.fcntl(proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, 4096)
    seen = []
    for line in proc.stdout:  # plain progress lines: interrupt once the first task has finished
        seen.append(line)
        if line.startswith("["):
            proc.send_signal(signal.SIGINT)
            break
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, f"SIGINT here: {inherited}\n" + "".join(seen) + stdout + stderr
    assert stderr.startswith("interrupted: ") and stderr.count("\n") == 1 and "Traceback" not in stderr
    assert stdout.splitlines()[-1].startswith("interrupted at ") and "built " not in stdout
    assert bundle_digest(out) == first.digest
    assert {rel: (out / rel).read_bytes() for rel in entries(out)} == before  # previous bundle intact
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no staged bundle left beside it
    assert temp_leftovers(cache) == [] and Cache(str(cache)).verify()["corrupt"] == []

    resumed = subprocess.run(cli("run", str(spec), "--cache", str(cache), "--json"), capture_output=True, text=True,
                             check=False)
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    assert report["digest"] != first.digest
    ran = {t["id"] for t in report["tasks"] if t["status"] == "ran"}
    assert ran <= {f"c/codegen:{edited['name']}", "c/pack"} and "c/pack" in ran
    clean = build(load_spec(spec, cache=str(tmp_path / "clean-cache"), output=str(tmp_path / "clean.bundle")))
    assert clean.digest == report["digest"]
    clean_out = Path(clean.bundle)
    assert entries(out) == entries(clean_out)
    assert all((out / rel).read_bytes() == (clean_out / rel).read_bytes() for rel in entries(out))
