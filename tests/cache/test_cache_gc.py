"""cache gc: keep what the newest build of each spec needs (its last-build record, task records, their
objects and tensors), drop the rest; --max-bytes evicts unreachable entries first, then reachable ones,
least recently used first; --older-than spares recent entries; gc's own reads leave access times alone."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import models
import numpy as np
import onnx
from onnx import numpy_helper
from typer.testing import CliRunner

from bundle_pipeline.cache import Cache
from bundle_pipeline.cli import app
from bundle_pipeline.pipeline import build
from bundle_pipeline.spec import load_spec

DAY = 86400


def gc_cli(*args: str) -> dict:
    result = CliRunner().invoke(app, ["cache", "gc", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def scale_weights(built: models.BuiltBundle, factor: float) -> None:
    """Scale every initializer of every graph (the init graph's and the infer graphs' copies alike)."""
    for path in (built.init, built.update, *(g.path for g in built.infer.values())):
        m = onnx.load(path)
        for t in m.graph.initializer:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(factor), t.name))
        onnx.save(m, path)


def ran(report) -> set[str]:
    return {t.id.split("/", 1)[1] for t in report.tasks if t.status == "ran"}


def test_gc_keeps_the_newest_build_of_each_spec(tmp_path):
    cache = str(tmp_path / "cache")
    mlp, cnn = models.mlp(tmp_path / "mlp"), models.cnn(tmp_path / "cnn")
    build(load_spec(mlp.spec, cache=cache))
    scale_weights(mlp, 2.0)  # the first build's weights, parse and pack results become garbage
    build(load_spec(mlp.spec, cache=cache))
    build(load_spec(cnn.spec, cache=cache))
    c = Cache(cache)
    before = c.info()
    out = gc_cli(cache)
    assert out["roots"] == len(c.newest_builds()) > 0
    # these models' weights are small, so they live in tensor packs (objects), not tensor entries
    assert out["objects_removed"] > 0 and out["actions_removed"] > 0
    assert out["total_bytes"] == c.info()["total_bytes"] < before["total_bytes"]
    assert ran(build(load_spec(mlp.spec, cache=cache))) == set()  # both newest builds are whole
    assert ran(build(load_spec(cnn.spec, cache=cache))) == set()
    scale_weights(mlp, 0.5)  # back to the first weights: their results were collected
    assert {"parse:init", "parse.weights:init", "pack"} <= ran(build(load_spec(mlp.spec, cache=cache)))


def test_gc_older_than_spares_recent_entries(tmp_path):
    cache = str(tmp_path / "cache")
    mlp = models.mlp(tmp_path / "mlp")
    build(load_spec(mlp.spec, cache=cache))
    scale_weights(mlp, 3.0)
    build(load_spec(mlp.spec, cache=cache))
    assert gc_cli(cache, "--older-than", "2")["objects_removed"] == 0  # everything was used today
    old = time.time() - 3 * DAY
    for p in Path(cache, "objects").rglob("*"):
        os.utime(p, (old, old))
    assert gc_cli(cache, "--older-than", "2")["objects_removed"] > 0


def test_max_bytes_evicts_unreachable_first_then_least_recently_used(tmp_path):
    c = Cache(tmp_path / "cache")
    now = time.time()
    blob = b"x" * 1000

    def obj(tag: str, age_days: float) -> str:
        h = c.put_object(tag.encode() + blob)
        path = tmp_path / "cache" / "objects" / h[:2] / h
        os.utime(path, (now - age_days * DAY, now - age_days * DAY))
        return h

    def action(key: str, output: str, age_days: float) -> None:
        c.put_action(key, {"outputs": {"out": output}})
        path = tmp_path / "cache" / "actions" / key[:2] / key
        os.utime(path, (now - age_days * DAY, now - age_days * DAY))

    reach_old, reach_new = obj("reachable, old", 30), obj("reachable, new", 1)
    garbage_new, garbage_old = obj("garbage, used yesterday", 1), obj("garbage, old", 20)
    action("task-old", reach_old, 30)
    action("task-new", reach_new, 1)
    keep = {"task-old", "task-new"}
    total = c.info()["total_bytes"]
    assert c.gc(keep_actions=keep, max_bytes=total)["bytes_freed"] == 0  # under budget: nothing goes

    c.gc(keep_actions=keep, max_bytes=total - 1)  # one object over: the oldest unreachable goes first
    assert not c.has_object(garbage_old) and c.has_object(garbage_new)
    c.gc(keep_actions=keep, max_bytes=total - 1500)  # all garbage, even recent, before anything needed
    assert not c.has_object(garbage_new) and c.has_object(reach_old) and c.has_object(reach_new)
    c.gc(keep_actions=keep, max_bytes=c.info()["total_bytes"] - 1)  # then the least recently used needed entry
    assert not c.has_object(reach_old) and c.has_object(reach_new)
    assert c.get_action("task-old") is None  # with the record pointing at it: no dangling hit
    assert c.get_action("task-new") is not None


def test_a_recent_hit_on_a_record_keeps_its_outputs(tmp_path):
    """An output written long ago but reached by a record read recently counts as recently used."""
    c = Cache(tmp_path / "cache")
    now = time.time()
    old_output = c.put_object(b"o" * 1000)
    fresher_output = c.put_object(b"f" * 1000)
    c.put_action("task-a", {"outputs": {"out": old_output}})
    c.put_action("task-b", {"outputs": {"out": fresher_output}})
    paths = {h: tmp_path / "cache" / "objects" / h[:2] / h for h in (old_output, fresher_output)}
    os.utime(paths[old_output], (now - 40 * DAY, now - 40 * DAY))
    os.utime(paths[fresher_output], (now - 10 * DAY, now - 10 * DAY))
    for key, age in (("task-a", 0.5), ("task-b", 10)):  # task-a hit this morning
        p = tmp_path / "cache" / "actions" / key[:2] / key
        os.utime(p, (now - age * DAY, now - age * DAY))
    c.gc(keep_actions={"task-a", "task-b"}, max_bytes=c.info()["total_bytes"] - 1)
    assert c.has_object(old_output) and not c.has_object(fresher_output)


def test_gc_reads_leave_access_times_alone(tmp_path):
    cache = str(tmp_path / "cache")
    build(load_spec(models.mlp(tmp_path / "mlp").spec, cache=cache))
    past = time.time() - 100 * DAY
    files = [p for p in Path(cache, "objects").rglob("*") if p.is_file()]
    for p in files:
        os.utime(p, (past, p.stat().st_mtime))  # atime < mtime: a plain read would refresh it (relatime)
    gc_cli(cache, "--max-bytes", "10G")  # reads every reachable object's JSON, removes nothing
    assert all(abs(p.stat().st_atime - past) < 1 for p in files)


def test_gc_rejects_bad_sizes(tmp_path):
    Cache(tmp_path / "c").put_object(b"kept")  # creates the cache root, with its marker
    result = CliRunner().invoke(app, ["cache", "gc", str(tmp_path / "c"), "--max-bytes", "lots"])
    assert result.exit_code == 1 and "PARAM_INVALID" in result.stderr
    assert gc_cli(str(tmp_path / "c"), "--max-bytes", "1.5G")["bytes_freed"] == 0
