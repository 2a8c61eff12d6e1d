"""The README and docs/ stay true: every CLI command and option they name exists, the quick start and the worked
example run as written (in a copy of the repository), the options table matches options.py, and the design
notes name what the code has (steps, cache areas, manifest keys, targets and formats, links)."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bundle_pipeline import targets
from bundle_pipeline.cache.store import AREAS
from bundle_pipeline.cli import app
from bundle_pipeline.options import ALIASES, OPTIONS
from bundle_pipeline.stages import order

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs"
QUICK_START = ("pip install -e . && bundle-pipeline run examples/demo/bundle.yaml && bundle-pipeline exec "
               "examples/demo/build/demo.bundle infer -i x=examples/demo/x.npy")
TESTED_MARK = "<!-- docs-test: runs in a copy of the repository -->"


def code_blocks(text: str) -> list[tuple[str, str, int]]:
    """(language, body, offset of the fence) of every fenced block."""
    return [(m.group(1), m.group(2), m.start()) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.M | re.S)]


@cache
def help_text(*command: str) -> str:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200", "TERM": "dumb"})
    assert result.exit_code == 0, (command, result.output)
    return result.output


def commands() -> dict[tuple[str, ...], str]:
    """Every command path of the app and its help text."""
    top = [c.name or c.callback.__name__ for c in app.registered_commands]
    found = {(name,): help_text(name) for name in top}
    for group in app.registered_groups:
        for sub in group.typer_instance.registered_commands:
            found[group.name, sub.name] = help_text(group.name, sub.name)
    return found


def mentions(text: str) -> list[tuple[tuple[str, ...], list[str], str]]:
    """(command path, options, where) for each `bundle-pipeline ...` in code blocks and inline code."""
    segments = []
    for lang, body, _ in code_blocks(text):
        if lang in ("bash", "sh", ""):  # continuation lines ("\\" or an indented "[--option ...") join theirs
            segments += re.sub(r"\\\n|\n(?=\s+[\[-])", " ", body).splitlines()
    inline = re.findall(r"(?<!`)`([^`\n]+)`(?!`)", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S))
    segments += inline
    found = [(None, [o], o) for o in inline if re.fullmatch(r"--[a-z][\w-]*( [A-Z]+)?", o)]  # a bare `--option N`
    known = {path[0] for path in commands()}
    for seg in segments:
        seg = re.split(r"&&|\s#\s|\s\|\s|;", seg.split("  #")[0])
        for piece in seg:
            words = piece.split()
            if "bundle-pipeline" in words:
                words = words[words.index("bundle-pipeline") + 1:]
            elif not (words and words[0] in known and len(words) > 1 and words[1].startswith("-")):
                continue  # inline code such as `run --json` counts; prose words do not
            if not words or words[0].startswith("-"):
                continue
            paths = [(words[0],)]
            if words[0] == "cache" and len(words) > 1:
                paths = [("cache", sub) for sub in words[1].split("|")]
            options = [m.group(1) for w in words[1:] for m in [re.match(r"^\[?(--?[a-zA-Z][\w-]*)", w)] if m]
            found += [(path, options, piece.strip()) for path in paths]
    return found


def has_option(help_out: str, option: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", help_out) is not None


def test_every_command_and_option_the_readme_names_exists():
    available = commands()
    seen = mentions(README)
    assert len(seen) > 20
    for path, options, where in seen:
        if path is None:  # an option named on its own: some command has it
            assert any(has_option(h, options[0].split()[0]) for h in available.values()), where
            continue
        assert path in available, f"README names `bundle-pipeline {' '.join(path)}` ({where}); no such command"
        for option in options:
            assert has_option(available[path], option), f"`{' '.join(path)}` has no {option} ({where})"
    for path in available:  # and the command reference covers every command
        assert path in {p for p, _, _ in seen}, f"README does not mention `bundle-pipeline {' '.join(path)}`"
    top = help_text()
    assert all(path[0] in top for path in available)


def test_docs_name_only_real_commands_and_options():
    available = commands()
    for page in sorted(DOCS.glob("*.md")):
        for path, options, where in mentions(page.read_text()):
            if path is None:
                assert any(has_option(h, options[0].split()[0]) for h in available.values()), (page.name, where)
                continue
            assert path in available, (page.name, where)
            assert all(has_option(available[path], o) for o in options), (page.name, where)


def test_options_table_matches_options_py():
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `(\w+)`.*\|$", README, re.M)}
    for key, (accepted, default, _) in OPTIONS.items():
        assert key in rows, f"the options table has no row for {key}"
        for value in accepted or ():
            assert f"`{value}`" in rows[key], (key, value)
        if accepted:
            assert f"`{default}` (default)" in rows[key], (key, default)
        for alias, target in ALIASES.items():
            if target == key:
                assert f"`{alias}`" in rows[key], (key, alias)


@pytest.fixture
def repo_copy(tmp_path):
    """examples/ of the repository in a temp dir, and a PATH whose `python` and `bundle-pipeline` are ours."""
    work = tmp_path / "repo"
    shutil.copytree(ROOT / "examples", work / "examples", ignore=shutil.ignore_patterns("build", ".bundle-cache"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, target in (("python", f'exec "{sys.executable}" "$@"'),
                         ("bundle-pipeline", f'exec "{sys.executable}" -m bundle_pipeline.cli "$@"')):
        shim = bin_dir / name
        shim.write_text(f"#!/bin/sh\n{target}\n")
        shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    return work, env


def test_quick_start_runs_as_written(repo_copy):
    work, env = repo_copy
    start = README.index("## Quick start")
    block = next(body for lang, body, at in code_blocks(README) if lang == "bash" and at > start)
    assert block.strip() == QUICK_START  # the two quick-start commands stay exactly these
    pieces = [p.strip() for p in block.strip().split("&&")]
    assert pieces[0] == "pip install -e ."  # installing is the one piece not re-run here
    outputs = [subprocess.run(["sh", "-c", piece], cwd=work, env=env, capture_output=True, text=True, check=False)
               for piece in pieces[1:]]
    for piece, proc in zip(pieces[1:], outputs, strict=True):
        assert proc.returncode == 0, (piece, proc.stderr)
    assert outputs[0].stdout.splitlines()[-1].startswith("built ") and "demo.bundle" in outputs[0].stdout
    assert outputs[1].stdout.startswith("y: float32[2, 4]")
    second = next(body for lang, body, at in code_blocks(README) if lang == "bash" and "pytest" in body)
    assert second.strip() == 'pip install -e ".[test]" && python -m pytest -n auto'
    ci = (ROOT / ".ci" / "run").read_text()  # "exactly what .ci/run does" (it adds pip's -q)
    assert 'pip install -q -e ".[test]" && python -m pytest -n auto' in ci


def test_worked_example_runs_as_written(repo_copy):
    work, env = repo_copy
    marked = [body for lang, body, at in code_blocks(README)
              if lang == "bash" and README.rfind(TESTED_MARK, 0, at) > README.rfind("```", 0, at - 1)]
    assert marked, "no README block is marked as tested"
    outs = {}
    for body in marked:
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", body], cwd=work, env=env, capture_output=True,
                              text=True, check=False, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outs[body] = proc.stdout
    sgd = next(out for body, out in outs.items() if "examples/sgd" in body)
    sgd_means = re.findall(r"^y: float32\[4, 3\]  mean (\S+)", sgd, re.M)
    assert len(sgd_means) == 2 and sgd_means[0] != sgd_means[1]  # one SGD step changed W and b
    out = next(out for body, out in outs.items() if "examples/demo" in body)
    assert "demo/parse:init" in out and "file changed:" in out  # status names the edited file
    report = json.loads(next(line for line in reversed(out.splitlines()) if line.startswith("{")))
    ran = {t["id"] for t in report["tasks"] if t["status"] == "ran"}
    assert ran == {"demo/parse:init", "demo/parse.weights:init", "demo/dedupe.storage", "demo/formats.weights",
                   "demo/pack"}
    means = [float(m) for m in re.findall(r"^y: float32\[2, 4\]  mean (\S+)", out, re.M)]
    assert len(means) == 2 and means[0] != means[1]  # the update changed the output
    assert (work / "demo-dag.html").read_text().count("data-task=") == len(report["tasks"])


def test_design_notes_name_what_the_code_has(tmp_path):
    pages = {p.name: p.read_text() for p in DOCS.glob("*.md")}
    index = pages["README.md"]
    for name in pages:  # every page is linked from the index, every link resolves
        assert name == "README.md" or f"]({name})" in index, name
    for page, text in pages.items():
        for link in re.findall(r"\]\(([^)#:]+\.md)\)", text):
            assert (DOCS / link).resolve().is_file(), (page, link)
    for link in re.findall(r"\]\(((?:docs/)?[^)#:]+\.(?:md|yaml))\)", README):
        if not link.startswith("../"):  # ../shared/DESIGN.md lives beside the repository, not in a clone
            assert (ROOT / link).is_file(), link
    for step in (stage.name for stage in order.ORDER):
        assert f"`{step}" in pages["tasks.md"], f"docs/tasks.md does not describe the {step} task"
        assert f"`{step}" in README, f"README's task table lacks {step}"
    for area in AREAS:
        assert f"{area}/" in pages["cache.md"], area
    spec = ROOT / "examples" / "demo" / "bundle.yaml"
    out = tmp_path / "demo.bundle"
    result = CliRunner().invoke(app, ["run", str(spec), "--out", str(out), "--cache", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "zarr.json").read_text())["attributes"]
    for key in (*manifest, *manifest["variables"][0], *manifest["graphs"][0]):
        assert f"`{key}`" in pages["bundle-format.md"], f"docs/bundle-format.md does not describe {key}"
    for name in targets.KNOWN_TARGETS:
        target = targets.get_target(name)
        assert f"`{name}`" in pages["targets.md"] and all(f in pages["targets.md"] for f in target.formats)
