"""Incremental builds: which tasks run after each kind of edit (from the --json report), early cutoff,
kernel cache reuse, schedulers, status/explain, several bundles in one run."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import models
import numpy as np
import onnx
import pytest
import yaml
from onnx import numpy_helper
from typer.testing import CliRunner

from bundle_pipeline import targets
from bundle_pipeline.cache import Cache
from bundle_pipeline.cache.statstate import StatState
from bundle_pipeline.cli import app
from bundle_pipeline.pipeline import build, build_many
from bundle_pipeline.pipeline.build import identity
from bundle_pipeline.pipeline.rebuild import last_build_key
from bundle_pipeline.runtime import load_bundle
from bundle_pipeline.spec import load_spec
from bundle_pipeline.stages import order, tiling
from bundle_pipeline.stages.pack import PACKED_ARRAY, entries
from bundle_pipeline.tasks.steps import TaskContext


def ran(report) -> set[str]:
    """Task ids that ran, without the bundle prefix."""
    return {t.id.split("/", 1)[1] for t in report.tasks if t.status == "ran"}


@pytest.fixture
def shared_bundle(tmp_path):
    built = models.shared(tmp_path / "shared")
    spec = load_spec(built.spec, cache=str(tmp_path / "cache"))
    first = build(spec)
    assert {t.status for t in first.tasks} == {"ran"}
    return built, spec, first


def edit_initializer(path: Path, name: str, fn) -> None:
    model = onnx.load(path)
    t = next(t for t in model.graph.initializer if t.name == name)
    t.CopyFrom(numpy_helper.from_array(fn(numpy_helper.to_array(t)), name))
    onnx.save(model, path)


def test_noop_runs_nothing(shared_bundle):
    _, spec, first = shared_bundle
    again = build(spec)
    assert ran(again) == set() and again.digest == first.digest


def test_unchanged_tasks_take_their_outputs_from_the_last_build_record_not_one_record_each(shared_bundle,
                                                                                           monkeypatch):
    """pipeline/rebuild.py: the last-build record holds every task's outputs, so a no-op reads no other action
    record; after an edit, the tasks whose keys did not change (early cutoff) are answered from it too."""
    built, spec, first = shared_bundle
    reads: list[str] = []
    real = Cache.get_action
    monkeypatch.setattr(Cache, "get_action", lambda self, key: reads.append(key) or real(self, key))
    again = build(spec)
    assert ran(again) == set() and again.digest == first.digest
    assert reads == [last_build_key(identity(spec))] * 2  # the plan reads it, and remember compares with it
    reads.clear()
    edit_initializer(built.graph("infer_c").path, "c.offset", lambda a: a + 1)
    edited = build(spec)
    assert ran(edited) == {"parse:infer_c", "parse.weights:infer_c", "dedupe.storage", "formats.weights", "pack"}
    ran_keys = {t.key for t in edited.tasks if t.status == "ran"}
    assert set(reads) & {t.key for t in edited.tasks} == ran_keys  # the cached tasks' records were not read
    fresh = build(load_spec(built.spec, cache=str(spec.cache) + "-fresh", output=str(spec.output) + "-fresh"))
    assert fresh.digest == edited.digest


def test_weight_only_edit_skips_formats_tiling_codegen(shared_bundle):
    built, spec, first = shared_bundle
    edit_initializer(built.graph("infer_c").path, "c.offset", lambda a: a + 1)
    report = build(spec)
    assert ran(report) == {"parse:infer_c", "parse.weights:infer_c", "dedupe.storage", "formats.weights", "pack"}
    assert report.digest != first.digest
    feeds = built.feeds(np.random.default_rng(0), "infer_c")
    from oracle import assert_outputs_close, ort_run
    assert_outputs_close(load_bundle(spec.output).run("infer_c", feeds), ort_run(built.graph("infer_c").path, feeds))


def test_one_graph_edit_reruns_that_graph_and_bundle_tasks_only(shared_bundle):
    built, spec, _ = shared_bundle
    model = onnx.load(built.graph("infer_b").path)
    out = model.graph.output[0].name
    last = next(n for n in model.graph.node if out in n.output)
    last.output[list(last.output).index(out)] = "pre_relu"
    model.graph.node.append(onnx.helper.make_node("Relu", ["pre_relu"], [out]))
    onnx.save(model, built.graph("infer_b").path)
    report = build(spec)
    # infer_b's interface (inputs, outputs, weights) is unchanged, so dedupe is cut off; its format costs are
    # measured again and come out equal, so formats.assign is too; its weights' formats are unchanged, so
    # formats.weights is not run
    assert ran(report) == {"parse:infer_b", "formats.cost:infer_b", "formats:infer_b", "tiling:infer_b",
                           "codegen:infer_b", "pack"}


def test_option_change_on_one_infer_graph_reruns_its_codegen(shared_bundle):
    built, spec, _ = shared_bundle
    text = yaml.safe_load(built.spec.read_text())
    next(g for g in text["graphs"] if g["name"] == "infer_a")["options"] = {"exec_disable_reused_memory": "1"}
    built.spec.write_text(yaml.safe_dump(text))
    report = build(load_spec(built.spec, cache=spec.cache))
    assert ran(report) == {"codegen:infer_a", "pack"}


def test_target_change_reruns_everything(shared_bundle, monkeypatch):
    _, spec, first = shared_bundle
    cpu = targets.get_target("cpu")
    changed = targets.Target(cpu.name, cpu.formats, {**cpu.buffers, "workspace_bytes": 1 << 20}, cpu.kernels,
                             fingerprint="a-different-target")
    monkeypatch.setattr(targets, "get_target", lambda name: changed)
    for module in ("bundle_pipeline.tasks.runner", "bundle_pipeline.tasks.steps"):
        monkeypatch.setattr(f"{module}.get_target", lambda name: changed)
    report = build(spec, scheduler="sync")
    assert ran(report) == {t.id.split("/", 1)[1] for t in first.tasks}


def test_stage_version_bump_reruns_that_stage_and_cuts_off_early(shared_bundle, monkeypatch):
    _, spec, _ = shared_bundle
    bumped = [dataclasses.replace(s, version="bumped") if s.name == "tiling" else s for s in order.ORDER]
    monkeypatch.setattr(order, "ORDER", tuple(bumped))
    report = build(spec, scheduler="sync")
    # tiling re-runs everywhere; its output is unchanged, so codegen and pack hit (early cutoff)
    assert ran(report) == {"tiling:init", "tiling:update", "tiling:infer_a", "tiling:infer_b", "tiling:infer_c"}


def test_edit_with_identical_parse_output_reruns_only_parse(shared_bundle):
    built, spec, _ = shared_bundle
    path = built.graph("infer_a").path
    model = onnx.load(path)
    model.doc_string = "re-exported by another tool"
    onnx.save(model, path)
    report = build(spec)
    assert ran(report) == {"parse:infer_a"}


def test_second_bundle_reuses_the_kernel_cache(tmp_path, monkeypatch):
    """Another bundle whose infer graph differs (so its tiling/codegen tasks run) but has the same layers: the
    npu's tile searches (the kernel cache records searches, as a tuning database does) are all reused."""
    monkeypatch.setattr(tiling, "MEMO_MIN_CANDIDATES", 0)  # every search through the kernel cache, however small
    cache = str(tmp_path / "cache")
    a = models.cnn(tmp_path / "a")
    first = build(load_spec(a.spec, cache=cache, target="npu"))
    assert first.kernel_cache()["misses"] > 0
    b = models.cnn(tmp_path / "b", seed=1)
    model = onnx.load(b.graph().path)
    out = model.graph.output[0].name
    last = next(n for n in model.graph.node if out in n.output)
    last.output[list(last.output).index(out)] = "pre_relu"
    model.graph.node.append(onnx.helper.make_node("Relu", ["pre_relu"], [out]))
    onnx.save(model, b.graph().path)
    b.spec.write_text(b.spec.read_text().replace("name: cnn", "name: cnn_b"))
    second = build(load_spec(b.spec, cache=cache, target="npu"))
    assert {"tiling:infer", "codegen:infer"} <= ran(second)
    assert second.kernel_cache() == {"hits": first.kernel_cache()["misses"], "misses": 0}


@pytest.mark.slow
def test_schedulers_give_byte_identical_bundles(tmp_path):
    built = models.cnn(tmp_path / "cnn")
    digests = {}
    for name, kwargs in {"sync": {"scheduler": "sync"}, "threads": {"scheduler": "threads"},
                         "threads-3": {"scheduler": "threads", "workers": 3},
                         "processes": {"scheduler": "processes", "workers": 2},
                         "local-cluster-2": {"workers": 2}}.items():
        spec = load_spec(built.spec, cache=str(tmp_path / f"cache-{name}"), output=str(tmp_path / f"{name}.bundle"))
        report = build(spec, **kwargs)
        assert {t.status for t in report.tasks} == {"ran"}
        digests[name] = report.digest
    assert len(set(digests.values())) == 1, digests


def test_status_and_explain_name_what_changed(shared_bundle):
    built, spec, _ = shared_bundle
    runner = CliRunner()
    args = ["--cache", spec.cache]
    result = runner.invoke(app, ["status", str(built.spec), *args, "--json"])
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"stale": [], "maybe": []}
    edit_initializer(built.graph("infer_c").path, "c.offset", lambda a: a * 2)
    stale = json.loads(runner.invoke(app, ["status", str(built.spec), *args, "--json"]).stdout.splitlines()[-1])
    reasons = {s["id"].split("/", 1)[1]: s["reason"] for s in stale["stale"]}
    assert list(reasons) == ["parse:infer_c"]
    assert reasons["parse:infer_c"].startswith("file changed: ") and "infer_c.onnx" in reasons["parse:infer_c"]
    maybe = {s["id"].split("/", 1)[1]: s["reason"] for s in stale["maybe"]}
    assert "upstream shared/parse:infer_c" in maybe["dedupe"] and "parse:infer_a" not in maybe
    build(spec)  # the parse output now differs in one tensor: dedupe's reason names it
    edit_initializer(built.graph("infer_c").path, "c.offset", lambda a: a * 3)
    build(load_spec(built.spec, cache=spec.cache))
    edit_initializer(built.graph("infer_c").path, "c.offset", lambda a: a + 5)
    explained = runner.invoke(app, ["explain", str(built.spec), "parse:infer_c", *args])
    assert explained.exit_code == 0 and "stale: file changed" in explained.stdout
    assert "changed  input model" in explained.stdout
    assert "same     param input_shape" in explained.stdout


def test_option_reason_in_status(shared_bundle):
    built, spec, _ = shared_bundle
    text = yaml.safe_load(built.spec.read_text())
    next(g for g in text["graphs"] if g["name"] == "infer_a")["options"] = {"exec_disable_reused_memory": "1"}
    built.spec.write_text(yaml.safe_dump(text))
    result = CliRunner().invoke(app, ["status", str(built.spec), "--cache", spec.cache, "--json"])
    status = json.loads(result.stdout.splitlines()[-1])
    stale = status["stale"]
    assert [s["id"] for s in stale] == ["shared/codegen:infer_a"]
    assert [s["id"] for s in status["maybe"]] == ["shared/pack"]
    assert "option changed" in stale[0]["reason"] and "exec_disable_reused_memory" in stale[0]["reason"]


def test_many_bundles_in_one_run_share_the_dag(tmp_path):
    specs_dir = tmp_path / "specs"
    specs_dir.mkdir()
    for builder in (models.mlp, models.cnn):
        built = builder(tmp_path / builder.__name__)
        text = yaml.safe_load(built.spec.read_text())
        text["cache"] = str(tmp_path / "cache")
        text["output"] = str(tmp_path / "out" / f"{builder.__name__}.bundle")
        text["graphs"] = [{**g, "model": str(built.directory / g["model"])} for g in text["graphs"]]
        (specs_dir / f"{builder.__name__}.yaml").write_text(yaml.safe_dump(text))
    result = CliRunner().invoke(app, ["run", str(specs_dir), "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [Path(r["bundle"]).name for r in lines] == ["cnn.bundle", "mlp.bundle"]
    # one DAG, one cache: tasks identical in both bundles (e.g. an update graph's empty weight table) run once
    assert all(t["status"] == "ran" for r in lines for t in r["tasks"] if not t["id"].endswith(":update"))
    again = build_many([load_spec(p) for p in sorted(specs_dir.glob("*.yaml"))])
    assert all(ran(r) == set() for r in again)


@pytest.mark.parametrize(("builder", "var"), [(models.mlp, None), (models.wide, "fc.weight")],
                         ids=["packed", "own-array"])
def test_weight_edit_rewrites_only_that_tensors_chunks(tmp_path, builder, var):
    built = builder(tmp_path / "m")
    spec = load_spec(built.spec, cache=str(tmp_path / "cache"))
    build(spec)
    before = {rel: (Path(spec.output) / rel).stat().st_ino for rel in entries(Path(spec.output))}
    var = var or built.variables[0]
    edit_initializer(built.init, f"{var}.init", lambda a: a + 1)
    assert ran(build(spec)) == {"parse:init", "parse.weights:init", "dedupe.storage", "formats.weights", "pack"}
    after = {rel: (Path(spec.output) / rel).stat().st_ino for rel in entries(Path(spec.output))}
    changed = {rel for rel in after if before.get(rel) != after[rel] and "/c" in rel}
    assert changed and changed <= chunk_files_of(Path(spec.output), f"init.{var}.init"), changed


def chunk_files_of(bundle: Path, cid: str) -> set[str]:
    """The chunk files that hold constant ``cid``'s bytes: its own array's, or the packed array's it lies in."""
    const = json.loads((bundle / "zarr.json").read_text())["attributes"]["constants"][cid]
    if const["array"] != PACKED_ARRAY:
        return {rel for rel in entries(bundle) if rel.startswith(f"{const['array']}/c")}
    grid = json.loads((bundle / PACKED_ARRAY / "zarr.json").read_text())["chunk_grid"]
    size = grid["configuration"]["chunk_shape"][0]
    first, last = const["offset"] // size, (const["offset"] + const["nbytes"] - 1) // size
    return {f"{PACKED_ARRAY}/c.{i}" for i in range(first, last + 1)}


def test_noop_run_imports_no_onnx_zarr_or_dask(tmp_path):
    built = models.mlp(tmp_path / "mlp")
    cache = str(tmp_path / "cache")
    build(load_spec(built.spec, cache=cache))
    code = ("import sys\nfrom bundle_pipeline.cli import app\n"
            f"try:\n    app(['run', {str(built.spec)!r}, '--cache', {cache!r}, '--json'])\n"
            "except SystemExit:\n    pass\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'onnx', 'zarr', 'dask', 'distributed'}))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = proc.stdout.strip().splitlines()
    assert {t["status"] for t in json.loads(lines[-2])["tasks"]} == {"cached"}
    assert lines[-1] == "[]"


def external_weight_bundle(tmp_path: Path):
    """One MatMul whose 64x64 weight lives in an external-data file (``w.init`` beside the init graph)."""
    rng = np.random.default_rng(2)
    w = numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "w")  # > 1024 elements
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["y"])], "ext",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 64])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 64])], [w])
    infer = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    built = models.write_bundle(tmp_path / "ext", "ext", {"infer": infer})
    for path in (built.init, built.graph().path):
        onnx.save_model(onnx.load(path), path, save_as_external_data=True, all_tensors_to_one_file=False,
                        size_threshold=0)
    return built, built.init.parent / "w.init"


def test_external_data_weight_edit_leaves_the_structure_parse_cached(tmp_path):
    built, weight_file = external_weight_bundle(tmp_path)
    spec = load_spec(built.spec, cache=str(tmp_path / "cache"))
    build(spec)
    arr = np.fromfile(weight_file, dtype=np.float32)
    (arr + 1).tofile(weight_file)
    report = build(spec)
    assert ran(report) == {"parse.weights:init", "dedupe.storage", "formats.weights", "pack"}
    np.testing.assert_array_equal(load_bundle(spec.output).variable("w").ravel(), arr + 1)
    stale = CliRunner().invoke(app, ["status", str(built.spec), "--cache", spec.cache, "--json"])
    assert json.loads(stale.stdout.splitlines()[-1]) == {"stale": [], "maybe": []}


def test_a_large_weight_of_an_unchanged_file_is_found_by_its_range_hash_not_its_memo(tmp_path, monkeypatch):
    """parse.weights: after an edit of one large external weight, the other large one (an entry of its own) is
    named by the range hash the stat state remembers for its unchanged file; no memo is read for it."""
    rng = np.random.default_rng(3)
    ws = [numpy_helper.from_array(rng.standard_normal((300, 300)).astype(np.float32), n) for n in ("w1", "w2")]
    graph = onnx.helper.make_graph(  # 360 KB each: above the packs' small-tensor size
        [onnx.helper.make_node("MatMul", ["x", "w1"], ["h"]), onnx.helper.make_node("MatMul", ["h", "w2"], ["y"])],
        "ext", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 300])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 300])], ws)
    built = models.write_bundle(tmp_path / "ext", "ext", {"infer": onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", 17)])})
    for path in (built.init, built.graph().path):
        onnx.save_model(onnx.load(path), path, save_as_external_data=True, all_tensors_to_one_file=False,
                        size_threshold=0)
    monkeypatch.setattr(StatState, "racy_window_ns", 0)  # remember hashes of files written just now
    spec = load_spec(built.spec, cache=str(tmp_path / "cache"))
    build(spec)
    edited = built.init.parent / "w1.init"
    (np.fromfile(edited, dtype=np.float32) + 1).tofile(edited)
    answers: list[tuple[str, bool]] = []
    real = TaskContext.stored_ranges
    monkeypatch.setattr(TaskContext, "stored_ranges", lambda self, location, path, exts: answers.append(
        (Path(path).name, bool((found := real(self, location, path, exts))[0]))) or found)  # one tensor a file here
    report = build(spec)
    assert ran(report) == {"parse.weights:init", "dedupe.storage", "formats.weights", "pack"}
    assert sorted(answers) == [("w1.init", False), ("w2.init", True)]  # the edited one is read and stored
    cold = build(load_spec(built.spec, cache=str(tmp_path / "fresh"), output=str(tmp_path / "cold.bundle")))
    assert report.digest == cold.digest


def test_an_edit_of_one_weight_of_a_one_file_model_stores_only_that_weight(tmp_path, monkeypatch):
    """onnx's default external-data layout (one file a graph): after an edit of one weight in place, the others
    are found by their range hashes (fingerprints tell they did not change): the small ones (in a pack) by a memo
    of their range hash, a large bfloat16 one (not an entry found by range hash alone) likewise."""
    rng = np.random.default_rng(4)
    w = numpy_helper.from_array(rng.standard_normal((300, 300)).astype(np.float32), "w")
    bf = onnx.helper.make_tensor("bf", onnx.TensorProto.BFLOAT16, [300, 450],  # 270 KB: not packed
                                 rng.integers(0x3F00, 0x3F80, 300 * 450, dtype=np.uint16).tobytes(), raw=True)
    biases = [numpy_helper.from_array(rng.standard_normal(450 * 5).astype(np.float32).reshape(5, 450), f"b{i}")
              for i in range(3)]  # above the 1024 elements inlined as constants, under the pack size
    nodes = [onnx.helper.make_node("Cast", ["bf"], ["bf32"], to=onnx.TensorProto.FLOAT),
             onnx.helper.make_node("MatMul", ["x", "w"], ["h"]), onnx.helper.make_node("MatMul", ["h", "bf32"], ["g"]),
             *[onnx.helper.make_node("Add", ["g" if i == 0 else f"a{i - 1}", f"b{i}"], [f"a{i}"]) for i in range(3)]]
    graph = onnx.helper.make_graph(nodes, "one", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                                                     [5, 300])],
                                   [onnx.helper.make_tensor_value_info("a2", onnx.TensorProto.FLOAT, [5, 450])],
                                   [w, bf, *biases])
    built = models.write_bundle(tmp_path / "one", "one", {"infer": onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", 17)])})
    for path in (built.init, built.graph().path):
        onnx.save_model(onnx.load(path), path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=f"{Path(path).stem}.data", size_threshold=0)
    monkeypatch.setattr(StatState, "racy_window_ns", 0)  # remember hashes of files written just now
    spec = load_spec(built.spec, cache=str(tmp_path / "cache"))
    build(spec)
    model = onnx.load_model(str(built.graph().path), load_external_data=False)
    where = next({e.key: e.value for e in t.external_data} for t in model.graph.initializer if t.name == "b1")
    data = Path(built.graph().path).parent / where["location"]
    with open(data, "r+b") as f:  # b1 + 1, in place
        f.seek(int(where["offset"]))
        old = np.frombuffer(f.read(int(where["length"])), dtype="<f4")
        f.seek(int(where["offset"]))
        f.write((old + 1).astype("<f4").tobytes())
    stored: list[str] = []
    real = TaskContext.store_tensors
    monkeypatch.setattr(TaskContext, "store_tensors", lambda self, loaders: stored.extend(loaders) or real(
        self, loaders))
    report = build(spec)
    assert "parse.weights:infer" in ran(report) and stored == ["b1"]
    cold = build(load_spec(built.spec, cache=str(tmp_path / "fresh"), output=str(tmp_path / "cold.bundle")))
    assert report.digest == cold.digest


def test_small_builds_and_chains_of_reruns_run_in_process_without_loading_dask(tmp_path):
    """pipeline/serial.py: a weight edit re-runs a chain (parse.weights -> dedupe.storage -> formats.weights -> pack)
    and a tiny cold build ends within the serial budget, so dask is never imported; with no budget a cold
    build still runs here, since its ready tasks (several parses) are Python-bound and gain nothing from
    threads. The same bundle every way."""
    built, weight_file = external_weight_bundle(tmp_path)

    def run(name: str, budget: float | None = None) -> tuple[dict, bool]:
        cache, out = str(tmp_path / name), str(tmp_path / f"{name}.bundle")
        code = ("import json, sys\nfrom bundle_pipeline.cli import app\nfrom bundle_pipeline.pipeline import serial\n"
                + (f"serial.SERIAL_BUDGET_S = {budget}\n" if budget is not None else "")
                + f"try:\n    app(['run', {str(built.spec)!r}, '--cache', {cache!r}, '--out', {out!r}, '--json'])\n"
                "except SystemExit:\n    pass\nprint(json.dumps('dask' in sys.modules))\n")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        lines = proc.stdout.strip().splitlines()
        return json.loads(lines[-2]), json.loads(lines[-1])

    cold, cold_loaded_dask = run("small", budget=60.0)
    parallel, parallel_loaded_dask = run("parallel", budget=0.0)
    assert not cold_loaded_dask and not parallel_loaded_dask
    assert parallel["digest"] == cold["digest"]
    arr = np.fromfile(weight_file, dtype=np.float32)
    (arr * 2).tofile(weight_file)
    report, edit_loaded_dask = run("parallel", budget=0.0)
    assert not edit_loaded_dask  # a chain: never two tasks ready at once
    assert {t["id"].split("/", 1)[1] for t in report["tasks"] if t["status"] == "ran"} == {
        "parse.weights:init", "dedupe.storage", "formats.weights", "pack"}
    again = build(load_spec(built.spec, cache=str(tmp_path / "fresh"), output=str(tmp_path / "again.bundle")))
    assert again.digest == report["digest"]  # the same bytes as a cold build


def test_only_io_bound_tasks_ready_together_leave_the_serial_prefix_for_threads(tmp_path):
    """Past the serial budget the rest goes to dask's threads only when two ready tasks would gain from them:
    the packs of two bundles (file I/O and hashing let go of the GIL), not parses or codegens."""
    from bundle_pipeline.pipeline.build import prepare
    from bundle_pipeline.pipeline.serial import _side_by_side

    one, two = models.mlp(tmp_path / "one"), models.mlp(tmp_path / "two")
    specs = [load_spec(b.spec, cache=str(tmp_path / "c"), output=str(tmp_path / f"{i}.bundle"))
             for i, b in enumerate((one, two))]
    specs[1] = dataclasses.replace(specs[1], name="second")  # two bundles in one DAG need two names
    _, dag, _ = prepare(specs)
    by_step: dict[str, list[str]] = {}
    for tid in dag.order():
        by_step.setdefault(dag.tasks[tid].step, []).append(tid)
    assert len(by_step["pack"]) == 2 and _side_by_side(dag, by_step["pack"])
    assert not _side_by_side(dag, by_step["parse"]) and not _side_by_side(dag, by_step["codegen"])
    assert not _side_by_side(dag, [by_step["pack"][0], by_step["codegen"][0]])


def test_a_cold_builds_external_data_tasks_run_together_on_threads_after_the_parses(tmp_path):
    """pipeline/serial.py: the parse.weights tasks (hashing and storing external data) wait until the structure
    parses have run, then run side by side on threads; the rest stays on the calling thread, without dask."""
    built, _ = external_weight_bundle(tmp_path)
    report = build(load_spec(built.spec, cache=str(tmp_path / "cache")))
    threads = {t.id.split("/", 1)[1]: t.extra["thread"] for t in report.tasks}
    weights = [step for step in threads if step.startswith("parse.weights:")]
    assert len(weights) == 3 and all(threads[w] != threads["dedupe"] for w in weights)
    assert {threads[s] for s in threads if s not in weights} == {threads["dedupe"]}
    order = [t.id.split("/", 1)[1] for t in sorted(report.tasks, key=lambda t: t.extra["start"])]
    assert max(order.index(s) for s in threads if s.startswith("parse:")) < min(order.index(w) for w in weights)
    plain = build(load_spec(built.spec, cache=str(tmp_path / "sync"), output=str(tmp_path / "sync.bundle")),
                  scheduler="sync")  # one thread, as --scheduler sync promises
    assert plain.digest == report.digest and len({t.extra["thread"] for t in plain.tasks}) == 1


def test_weight_edit_inside_an_if_branch_skips_formats_tiling_codegen(tmp_path):
    """A Constant weight in a branch is hoisted to the weight table: editing its value is a weight-only edit."""
    import onnx.parser

    rng = np.random.default_rng(4)
    values = ", ".join(f"{v:.4f}" for v in rng.standard_normal(16 * 16))
    model = onnx.parser.parse_model(f"""<ir_version: 8, opset_import: ["" : 17]>
    agraph (bool c, float[4,16] x) => (float[4,16] y) {{
      y = If(c) <
        then_branch = g1 () => (float[4,16] t) {{
          w = Constant<value = float[16,16] {{{values}}}>()
          t = MatMul(x, w)
        }},
        else_branch = g2 () => (float[4,16] e) {{ e = Relu(x) }}
      >
    }}""")
    onnx.save(model, tmp_path / "m.onnx")
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({
        "name": "branchy", "target": "npu", "output": str(tmp_path / "b.bundle"),
        "graphs": [{"name": "infer", "role": "infer", "model": "m.onnx"}]}))
    spec = load_spec(tmp_path / "b.yaml", cache=str(tmp_path / "cache"))
    first = build(spec)
    branch = model.graph.node[0].attribute[0].g if model.graph.node[0].attribute[0].name == "then_branch" \
        else model.graph.node[0].attribute[1].g
    value = branch.node[0].attribute[0]
    new = numpy_helper.to_array(value.t) * 2
    value.t.CopyFrom(numpy_helper.from_array(new, value.t.name))
    onnx.save(model, tmp_path / "m.onnx")
    report = build(spec)
    assert ran(report) == {"parse:infer", "parse.weights:infer", "dedupe.storage", "formats.weights", "pack"}
    assert report.digest != first.digest
    x = rng.standard_normal((4, 16)).astype(np.float32)
    out = load_bundle(spec.output).run("infer", {"c": np.array(True), "x": x})["y"]
    np.testing.assert_allclose(out, x @ new, rtol=1e-5, atol=1e-5)
