"""--workers N alone: a LocalCluster whose workers fork from a fork server where the platform has one, and are
spawned where it has none (Windows); the same bundle either way."""

from __future__ import annotations

import multiprocessing

import models

from bundle_pipeline.pipeline import build, schedule
from bundle_pipeline.spec import load_spec


def test_without_a_fork_server_the_workers_are_spawned_and_the_bundle_is_the_same(tmp_path, monkeypatch):
    built = models.mlp(tmp_path / "mlp")
    plain = build(load_spec(built.spec, cache=str(tmp_path / "plain"), output=str(tmp_path / "plain.bundle")),
                  scheduler="sync")
    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["fork", "spawn"])
    monkeypatch.setattr(schedule, "_start_forkserver", lambda steps: (_ for _ in ()).throw(AssertionError(steps)))
    spawned = build(load_spec(built.spec, cache=str(tmp_path / "spawned"), output=str(tmp_path / "spawned.bundle")),
                    workers=1)
    assert spawned.digest == plain.digest and {t.status for t in spawned.tasks} == {"ran"}
