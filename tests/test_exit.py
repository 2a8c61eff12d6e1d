"""The command's fast exit (cli.exit_now): exit handlers run, output is flushed, the status is kept, and a thread
someone else left running is waited for, as at the interpreter's own exit."""

from __future__ import annotations

import subprocess
import sys

PRELUDE = "import atexit, sys, threading, time\nfrom bundle_pipeline.cli import exit_now\n"


def run(body: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PRELUDE + body], capture_output=True, text=True, check=False)


def test_exit_handlers_run_and_buffered_output_is_flushed():
    done = run("atexit.register(lambda: print('handler ran'))\nprint('partial', end='')\nexit_now(3)")
    assert done.returncode == 3
    assert done.stdout == "partialhandler ran\n"


def test_a_message_is_printed_with_status_one_and_none_is_success():
    assert (run("exit_now('cannot go on')").returncode, run("exit_now('cannot go on')").stderr) == (1, "cannot go on\n")
    assert run("exit_now(None)").returncode == 0


def test_a_running_thread_is_waited_for():
    body = ("def later():\n    time.sleep(0.2)\n    print('thread done', flush=True)\n"
            "threading.Thread(target=later).start()\nexit_now(0)")
    done = run(body)
    assert done.returncode == 0 and done.stdout == "thread done\n"
