"""Run a command as a child process and measure its wall time and peak RSS (own and whole process tree)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

SAMPLE_S = 0.02


@dataclass
class Measured:
    """One child run: ``maxrss_kib`` from ``wait4`` (largest single process of the child and the
    descendants it waited for); ``tree_peak_kib`` = the largest sampled sum of RSS over the child's
    process tree (matters when it starts worker processes), sampled every 20 ms, at least ``maxrss_kib``."""

    argv: list[str]
    returncode: int
    wall_s: float
    maxrss_kib: int
    tree_peak_kib: int
    stdout: str
    stderr: str
    timed_out: bool = False

    def last_json(self) -> dict | None:
        """The JSON object printed as the last stdout line, if any."""
        for line in reversed(self.stdout.strip().splitlines()):
            if line.startswith("{"):
                try:
                    return json.loads(line)
                except ValueError:
                    return None
        return None

    def summary(self) -> dict:
        out = asdict(self)
        out["stdout"] = self.stdout[-2000:]
        out["stderr"] = self.stderr[-2000:]
        return out


def _tree_rss_kib(pid: int) -> int:
    """Sum of RSS over the descendants of ``pid`` (the launcher itself excluded), with psutil (any platform)."""
    import psutil

    try:
        procs = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            continue
    return total // 1024


class _ProcTree:
    """The RSS of ``pid``'s descendants from ``/proc``, remembering each process's parent once it is read.

    psutil's ``children(recursive=True)`` reads the parent of every process on the machine at every sample:
    1.1 ms of CPU each 20 ms here, 5 % of a core taken from the command measured. That falls on a free core
    when the command keeps one busy, and on the command itself when it keeps both busy (``--workers 2``), which
    biased the parallel figures. Here a sample lists ``/proc`` and reads the ``stat`` of processes not seen
    before and the ``statm`` of the descendants: about a tenth of that."""

    PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024 if hasattr(os, "sysconf") else 4

    def __init__(self, pid: int):
        self.pid = pid
        self.parent: dict[int, int] = {}  # pid -> parent pid, for every process seen (0: gone before it was read)

    def rss_kib(self) -> int:
        alive = {int(n) for n in os.listdir("/proc") if n.isdigit()}
        self.parent = {p: pp for p, pp in self.parent.items() if p in alive}  # a reused pid is read again
        for p in alive - self.parent.keys():
            self.parent[p] = _parent_of(p)
        inside, total = {self.pid}, 0
        for p in alive:  # any order: _descends walks up to the root pid (pids are not ordered after a wrap)
            if self._descends(p, inside):
                total += _statm_rss_pages(p) * self.PAGE_KIB
        return total

    def _descends(self, p: int, inside: set[int]) -> bool:
        chain = []
        while p not in inside:
            chain.append(p)
            p = self.parent.get(p, 0)
            if p <= 1 or len(chain) > 64:
                return False
        inside.update(chain)
        return bool(chain)


def _parent_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return 0
    return int(stat[stat.rindex(b")") + 2:].split(maxsplit=2)[1])  # after "pid (comm) state": the parent


def _statm_rss_pages(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return 0


class _TreeSampler(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak_kib = pid, 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        sample = _ProcTree(self.pid).rss_kib if os.path.isdir("/proc/self") else lambda: _tree_rss_kib(self.pid)
        while not self._stop_event.is_set():
            self.peak_kib = max(self.peak_kib, sample())
            self._stop_event.wait(SAMPLE_S)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def run_measured(argv: Sequence[str], cwd: str | Path | None = None, env: dict | None = None,
                 timeout: float | None = None) -> Measured:
    """Run ``argv`` under the launcher; stdout/stderr go through temp files, the launcher's report through one.

    With ``timeout`` the launcher runs in its own process group, which is killed (the command and any workers
    it started with it) once ``timeout`` seconds have passed: the result then has ``timed_out`` set,
    ``wall_s`` = the time waited and returncode -9.

    Linux charges a process's ``ru_maxrss`` with the memory image it had before ``exec``, so a child
    forked straight from a big benchmark process would report the parent's size. The launcher (this
    file as a script) is small: it times the command and reaps it with ``wait4``.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile(suffix=".json") as report:
        launcher = [sys.executable, str(Path(__file__).resolve()), "--report", report.name, "--", *argv]
        start = time.perf_counter()
        proc = subprocess.Popen(launcher, cwd=cwd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                start_new_session=timeout is not None)
        sampler = _TreeSampler(proc.pid)
        sampler.start()
        timed_out = _wait(proc, timeout)
        waited = time.perf_counter() - start
        sampler.stop()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
        try:
            got = json.loads(Path(report.name).read_text())
        except ValueError:
            got = {"returncode": proc.returncode, "wall_s": waited if timed_out else float("nan"), "maxrss_kib": 0}
    return Measured(list(argv), got["returncode"], got["wall_s"], got["maxrss_kib"],
                    max(sampler.peak_kib, got["maxrss_kib"]), stdout, stderr, timed_out)


def _wait(proc: subprocess.Popen, timeout: float | None) -> bool:
    """Wait for the launcher; past ``timeout``, kill its process group (it leads it) and reap it. Timed out?"""
    try:
        proc.wait(timeout=timeout)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return True


def launch(argv: Sequence[str]) -> dict:
    """In the launcher: spawn ``argv`` (inheriting stdio), reap it with ``os.wait4``; wall time and ru_maxrss."""
    start = time.perf_counter()
    proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: keep Popen from waiting again
    return {"returncode": proc.returncode, "wall_s": wall, "maxrss_kib": int(usage.ru_maxrss)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="launcher: run a command, write its wall time and peak RSS")
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    result = launch(command)
    args.report.write_text(json.dumps(result))
    return result["returncode"]


if __name__ == "__main__":
    sys.exit(main())
