"""Adding a stage is one module plus its place in the ordered list (issue 15): a toy ``annotate`` stage after
codegen is built, cached, and cut off early, with nothing else changed."""

from __future__ import annotations

import dataclasses
import importlib
import json
import shutil
import sys
from collections import Counter
from pathlib import Path

import onnx
import pytest
import yaml

from bundle_pipeline.cache import Cache
from bundle_pipeline.pipeline import build
from bundle_pipeline.spec import load_spec
from bundle_pipeline.stages import order
from bundle_pipeline.tasks.factory import bundle_tasks

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo"

# The whole stage: written as a module of its own, as a stage author would.
ANNOTATE = '''
"""annotate: per graph, how many program steps run each op (a summary for tools; the bundle does not read it)."""

from collections import Counter

from bundle_pipeline.stages.stage import GRAPH, Input, Stage

VERSION = "1"


def compute(inputs, params, ctx):
    ops = Counter(step["op"] for step in inputs["program"]["steps"])
    return {"notes": {"graph": ctx.graph, "role": params["role"], "ops": dict(sorted(ops.items()))}}


STAGE = Stage("annotate", VERSION, compute, outputs=("notes",), inputs=(Input("codegen", "program"),),
              params=("role",), scope=GRAPH)
'''


@pytest.fixture
def annotate(tmp_path, monkeypatch):
    """The toy stage module, inserted after codegen in the ordered list."""
    (tmp_path / "toy_stages").mkdir()
    (tmp_path / "toy_stages" / "annotate.py").write_text(ANNOTATE)
    monkeypatch.syspath_prepend(str(tmp_path / "toy_stages"))
    module = importlib.import_module("annotate")
    at = [s.name for s in order.ORDER].index("codegen") + 1
    monkeypatch.setattr(order, "ORDER", (*order.ORDER[:at], module.STAGE, *order.ORDER[at:]))
    yield module.STAGE
    sys.modules.pop("annotate", None)  # the next test imports its own copy


@pytest.fixture
def demo(tmp_path):
    shutil.copytree(DEMO, tmp_path / "demo", ignore=shutil.ignore_patterns("build", ".bundle-cache"))
    return tmp_path / "demo"


def ran(report) -> set[str]:
    return {t.id.split("/", 1)[1] for t in report.tasks if t.status == "ran"}


def notes(report, cache: Cache) -> dict[str, dict]:
    return {t.graph: cache.get_json(t.outputs["notes"]) for t in report.tasks if t.stage == "annotate"}


def programs(bundle: Path) -> dict[str, dict]:
    manifest = json.loads((bundle / "zarr.json").read_text())["attributes"]
    return {g["name"]: g["program"] for g in manifest["graphs"]}


def test_factory_derives_the_new_stage_from_its_declaration(annotate, demo):
    tasks = {t.id: t for t in bundle_tasks(load_spec(demo / "bundle.yaml"))}
    task = tasks["demo/annotate:infer"]
    assert task.deps[0].task == "demo/codegen:infer" and task.deps[0].output == "program"
    assert task.params == {"role": "infer"} and task.version == "1" and task.stage == "annotate"
    ids = list(tasks)
    assert ids.index("demo/codegen:infer") < ids.index("demo/annotate:infer") < ids.index("demo/pack")


def test_a_toy_stage_is_built_cached_and_cut_off_early(annotate, demo):
    spec = load_spec(demo / "bundle.yaml", cache=str(demo / "cache"))
    cache = Cache(spec.cache)
    first = build(spec, scheduler="sync")
    assert {"annotate:init", "annotate:update", "annotate:infer"} <= ran(first)
    made = notes(first, cache)
    for graph, program in programs(Path(spec.output)).items():  # what it wrote is the program's op counts
        ops = Counter(step["op"] for step in program["steps"])
        assert made[graph] == {"graph": graph, "role": program["role"], "ops": dict(sorted(ops.items()))}

    again = build(spec, scheduler="sync")
    assert ran(again) == set() and {t.status for t in again.tasks} == {"cached"}

    model = onnx.load(demo / "infer.onnx")  # an edit that leaves the parsed graph the same
    model.doc_string = "re-exported by another tool"
    onnx.save(model, demo / "infer.onnx")
    assert ran(build(spec, scheduler="sync")) == {"parse:infer"}  # codegen and annotate hit: early cutoff

    raw = yaml.safe_load((demo / "bundle.yaml").read_text())  # codegen re-runs, the op counts stay
    raw["graphs"][2]["options"]["exec_disable_reused_memory"] = "1"
    (demo / "bundle.yaml").write_text(yaml.safe_dump(raw))
    edited = build(load_spec(demo / "bundle.yaml", cache=spec.cache), scheduler="sync")
    assert {"codegen:infer", "annotate:infer"} <= ran(edited)
    assert notes(edited, cache) == made


def test_a_version_bump_reruns_only_that_stage(annotate, demo, monkeypatch):
    spec = load_spec(demo / "bundle.yaml", cache=str(demo / "cache"))
    build(spec, scheduler="sync")
    bumped = dataclasses.replace(annotate, version="2")
    monkeypatch.setattr(order, "ORDER", tuple(bumped if s is annotate else s for s in order.ORDER))
    assert ran(build(spec, scheduler="sync")) == {"annotate:init", "annotate:update", "annotate:infer"}


def test_declarations_name_known_stages_params_and_an_order_that_reads_backwards():
    seen: dict[str, str] = {}
    for stage in order.ORDER:
        assert stage.name not in seen and stage.outputs, stage.name
        assert all(p in order_params() for p in stage.params), stage.name
        for inp in stage.inputs:  # every input is an output of an earlier stage
            assert inp.stage in seen, (stage.name, inp.stage)
            assert inp.output in order.named(inp.stage).outputs, (stage.name, inp.output)
        seen[stage.name] = stage.scope
    assert order.groups() == ("parse", "dedupe", "formats", "tiling", "codegen", "pack")
    assert {s.name for s in order.ORDER if s.on_client} == {"parse", "parse.weights", "pack"}


def order_params() -> set[str]:
    from bundle_pipeline.stages.stage import PARAMS

    return set(PARAMS)
