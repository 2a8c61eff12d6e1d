"""`inspect` reads well anywhere: at 80 columns, in a pipe or a file, no line is wider than the width and no graph,
variable, node or option name is cut or folded; a table that cannot fit becomes one `field: value` line per field,
holding the same information as the wide table (both are checked against `inspect --json`)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import writes_models as wm
from onnx import helper
from rich.cells import cell_len
from typer.testing import CliRunner

import bundle_pipeline as bp
from bundle_pipeline.cli import app
from bundle_pipeline.options import OPTIONS as ACCEPTED
from bundle_pipeline.runtime import load_bundle
from bundle_pipeline.tables import Table, cell, listed, output_width, show, wrap

INIT, UPDATE, INFER = "init_graph_that_writes_every_weight_once", "update_graph_applying_one_sgd_step_to_W", \
    "infer_graph_with_a_forty_character_name"
WEIGHT, BIAS = "encoder.layers.0.attention.query.weight", "encoder.layers.0.attention.query.bias__"
MATMUL = "encoder.layers.0.attention.query.matmul"
OPTIONS = {"precision_mode": "force_fp16", "op_select_implmode": "high_performance",
           "exec_disable_reused_memory": "1"}
DEFAULTS = {key: default for key, (_, default, _) in ACCEPTED.items()}  # inspect shows the others
DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo"


@pytest.fixture(scope="module")
def long_names(tmp_path_factory) -> Path:
    """An npu bundle (TransData, native tiling) whose graph, variable and node names are about 40 characters."""
    tmp = tmp_path_factory.mktemp("long")
    rng = np.random.default_rng(0)
    w, b = wm.random(rng, 32, 16), wm.random(rng, 16)
    infer = wm.model([helper.make_node("MatMul", ["x", WEIGHT], ["xw"], name=MATMUL),
                      helper.make_node("Add", ["xw", BIAS], ["y"])],
                     {"x": ((8, 32), "float32"), WEIGHT: w, BIAS: b}, {"y": ((8, 16), "float32")})
    update = wm.model([helper.make_node("Mul", ["lr", "g"], ["step"]), helper.make_node("Sub", [WEIGHT, "step"],
                                                                                         ["W_next"])],
                      {WEIGHT: w, "g": ((32, 16), "float32"), "lr": ((), "float32")}, {"W_next": ((32, 16), "float32")})
    graphs = [bp.GraphWithOptions(wm.init_graph({WEIGHT: w, BIAS: b}, {WEIGHT: "A", BIAS: "C"}), name=INIT),
              bp.GraphWithOptions(update, name=UPDATE, assign={"W_next": WEIGHT}),
              bp.GraphWithOptions(infer, name=INFER, build_options=OPTIONS)]
    path = tmp / "long.zip"
    bp.bundle_save_model(path, bp.bundle_build_model(graphs, target="npu", cache=tmp / "cache"))
    bundle = load_bundle(path)  # a real bundle: it computes what numpy does, within fp16 rounding (force_fp16)
    x = wm.random(rng, 8, 32)
    np.testing.assert_allclose(bundle.run(INFER, {"x": x})["y"], fp16(fp16(x) @ fp16(w) + b), rtol=2e-3, atol=2e-3)
    g, lr = wm.random(rng, 32, 16), np.array(0.1, np.float32)
    bundle.update({"g": g, "lr": lr})
    np.testing.assert_array_equal(bundle.variable(WEIGHT), w - lr * g)
    return path


def fp16(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float16).astype(np.float32)


def inspect_text(bundle: Path, columns: int) -> str:
    """`bundle-pipeline inspect NAME` run beside the bundle (a temp path may alone be wider than 80 columns)."""
    with contextlib.chdir(bundle.parent):
        result = CliRunner().invoke(app, ["inspect", bundle.name], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    return result.stdout


def piped(bundle: Path) -> str:
    """`bundle-pipeline inspect` in a pipe, no $COLUMNS: 80 columns."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.run([sys.executable, "-m", "bundle_pipeline.cli", "inspect", bundle.name], env=env,
                          cwd=bundle.parent, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def as_json(bundle: Path) -> dict:
    return json.loads(CliRunner().invoke(app, ["inspect", str(bundle), "--json"]).stdout)


def size(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n / 1024:.1f} KiB"


def expected_tables(info: dict) -> dict[str, tuple[tuple[str, ...], list[list[str]]]]:
    """The header and rows each table must show, from ``inspect --json`` (options at their default left out)."""
    graphs = [[g["name"], g["role"], str(g["steps"]), str(g["native_steps"]), str(g["transdata"]),
               size(g["transdata_bytes"]), size(g["arena_bytes_by_reuse"]["on"]),
               size(g["arena_bytes_by_reuse"]["off"]),
               ", ".join(f"{k}={v}" for k, v in g["options"].items() if v != DEFAULTS[k]) or "-"]
              for g in info["graphs"]]
    kernels = [[g["name"], k["node"], k["op"], "native" if k["native"] else "portable",
                " ".join(f"{key}={value}" for key, value in sorted(k["tiling"].items()))]
               for g in info["graphs"] for k in g["kernels"]]
    writes = {g["name"]: g["writes"] for g in info["graphs"]}
    variables = [[v["name"], str(v["shape"]), v["dtype"], v["format"], size(v["nbytes"]), ", ".join(v["readers"]),
                  ", ".join(w if writes[w].get(v["name"], v["name"]) == v["name"]
                            else f"{w} ({writes[w][v['name']]})" for w in v["writers"])] for v in info["variables"]]
    return {"graphs": (("graph", "role", "steps", "native", "TransData", "TransData bytes", "arena (reuse on)",
                        "arena (reuse off)", "options"), graphs),
            "tiling per kernel": (("graph", "node", "op", "kernel", "tiling"), kernels),
            "variables": (("variable", "shape", "dtype", "format", "bytes", "readers", "writers"), variables)}


def sections(text: str) -> dict[str, list[str]]:
    """Title -> the lines under it (sections are separated by blank lines)."""
    blocks = [b.splitlines() for b in text.strip("\n").split("\n\n")]
    return {b[0]: b[1:] for b in blocks}


def records(lines: list[str]) -> list[dict[str, str]]:
    """`- label: value` / `  label: value` / `    continued` lines back to one dict per row."""
    rows: list[dict[str, str]] = []
    label = None
    for line in lines:
        if line.startswith("    "):
            rows[-1][label] = f"{rows[-1][label]} {line.strip()}".strip()
            continue
        label, _, value = line[2:].partition(": ")
        label = label.rstrip(":")
        if line.startswith("- "):
            rows.append({})
        rows[-1][label] = value
    return rows


def names(info: dict) -> set[str]:
    found = {g["name"] for g in info["graphs"]} | {v["name"] for v in info["variables"]}
    found |= {k["node"] for g in info["graphs"] for k in g["kernels"]}
    found |= {f"{k}={v}" for g in info["graphs"] for k, v in g["options"].items() if OPTIONS.get(k) == v}
    return found | {out for g in info["graphs"] for out in g["writes"].values()}


def assert_fits(text: str, width: int, info: dict) -> None:
    lines = text.splitlines()
    assert max(cell_len(line) for line in lines) <= width
    assert "…" not in text
    for name in names(info):
        assert any(name in line for line in lines), name  # whole, on one line


def test_at_80_columns_names_are_whole_and_records_hold_every_field(long_names):
    info = as_json(long_names)
    assert {INIT, UPDATE, INFER, WEIGHT, BIAS, MATMUL} <= names(info)
    text = inspect_text(long_names, 80)
    assert_fits(text, 80, info)
    shown = sections(text)
    for title, (header, rows) in expected_tables(info).items():
        assert records(shown[title]) == [dict(zip(header, row, strict=True)) for row in rows], title
    assert f"- graph: {INFER}" in shown["graphs"] and f"  writers: {INIT}," in shown["variables"]


def test_in_a_pipe_the_width_is_80(long_names):
    text = piped(long_names)
    assert_fits(text, 80, as_json(long_names))
    assert text == inspect_text(long_names, 80)


def test_a_wide_terminal_gets_the_same_information_in_columns(long_names):
    info = as_json(long_names)
    text = inspect_text(long_names, 300)
    assert_fits(text, 300, info)
    shown = sections(text)
    for title, (header, rows) in expected_tables(info).items():
        lines = shown[title]
        assert re.split(r"\s{2,}", lines[0]) == list(header) and set(lines[1]) == {"─"}
        assert [re.split(r"\s{2,}", line) for line in lines[2:]] == rows, title
    for line in (text.splitlines()[0], sections(text)["variables"][2]):
        assert line == line.rstrip()


def test_the_demo_in_a_pipe_keeps_its_tables(tmp_path):
    out = tmp_path / "demo.zip"
    assert CliRunner().invoke(app, ["run", str(DEMO / "bundle.yaml"), "--out", str(out), "--cache",
                                    str(tmp_path / "cache")]).exit_code == 0
    text = piped(out)
    info = as_json(out)
    assert_fits(text, 80, info)
    shown = sections(text)
    assert not any(line.startswith("- ") for line in text.splitlines())  # every table fits in columns
    for title in ("graphs", "variables"):
        lines = shown[title]
        rule = next(i for i, line in enumerate(lines) if set(line) == {"─"})
        assert lines[rule - 1].startswith(f"{expected_tables(info)[title][0][0]}  ")  # headers above the rule
        assert [re.split(r"\s{2,}", line) for line in lines[rule + 1:]] == expected_tables(info)[title][1]


# ---------------------------------------------------------------- the layout rules themselves


def test_wrap_keeps_items_whole_and_an_overlong_one_alone():
    assert wrap(["alpha", "beta", "gamma"], ", ", 12, 12) == ["alpha, beta,", "gamma"]
    long = "x" * 30
    assert wrap(["a", long, "b"], " ", 10, 10) == ["a", long, "b"]
    assert wrap([long[:9]], " ", 10, 4) == ["", long[:9]]  # no room after a label: the item starts a line


def rendered(blocks: list, columns: int, monkeypatch) -> list[str]:
    monkeypatch.setenv("COLUMNS", str(columns))
    out = io.StringIO()
    show(blocks, out)
    return out.getvalue().splitlines()


def test_columns_when_they_fit_records_when_not_and_names_verbatim(monkeypatch):
    odd = "[bold]w[/bold]:smile:"  # rich markup and an emoji code, as a name may spell them
    table = Table("variables", ("variable", "read by"), [(cell(odd), listed(["alpha", "beta"])),
                                                         (cell("u"), listed([]))])
    assert [table.widths(w) for w in (40, 30, 29, 28)] == [[21, 11], [21, 7], [21, 6], None]
    pad = " " * 23
    assert rendered([table], 40, monkeypatch) == ["variables", "variable               read by", "─" * 34,
                                                  f"{odd}  alpha, beta", "u"]
    assert rendered([table], 30, monkeypatch) == ["variables", "variable               read by", "─" * 30,
                                                  f"{odd}  alpha,", f"{pad}beta", "u"]
    assert rendered([table], 29, monkeypatch) == ["variables", f"{pad}read", "variable               by", "─" * 29,
                                                  f"{odd}  alpha,", f"{pad}beta", "u"]
    assert rendered([table], 28, monkeypatch) == ["variables", "- variable:", f"    {odd}", "  read by: alpha, beta",
                                                  "- variable: u", "  read by:"]


def test_a_name_wider_than_the_width_keeps_a_line_of_its_own(monkeypatch):
    long = "v" * 100
    table = Table("variables", ("variable", "readers"), [(cell(long), listed(["a", "b"]))])
    assert rendered([table, cell("the", "end")], 40, monkeypatch) == ["variables", f"- variable: {long}",
                                                                      "  readers: a, b", "", "the end"]


def test_output_width_from_columns_else_80_off_a_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "123")
    assert output_width(io.StringIO()) == 123
    monkeypatch.delenv("COLUMNS")
    assert output_width(io.StringIO()) == 80
