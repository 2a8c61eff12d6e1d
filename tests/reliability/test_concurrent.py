"""Two builds of one spec at once on one cache (and one output path): both succeed with identical bundles."""

from __future__ import annotations

import faults

from bundle_pipeline.cache import Cache
from bundle_pipeline.runtime import load_bundle


def test_two_concurrent_builds_of_one_spec_both_succeed_identically(tmp_path):
    spec = faults.many_graphs(tmp_path / "data")
    cache, out = tmp_path / "cache", tmp_path / "out.bundle"
    clean = faults.report(faults.run(faults.run_args(spec, tmp_path / "clean-cache", tmp_path / "clean.bundle")))
    for round_, extra in enumerate([(), ("--force",)]):  # cold cache, then both re-running every task
        procs = [faults.start(faults.run_args(spec, cache, out, *extra)) for _ in range(2)]
        outputs = [p.communicate(timeout=300) for p in procs]
        reports = []
        for proc, (stdout, stderr) in zip(procs, outputs, strict=True):
            assert proc.returncode == 0, f"round {round_}: {stderr[-3000:]}"
            reports.append(faults.json.loads(stdout.strip().splitlines()[-1]))
        assert [r["digest"] for r in reports] == [clean["digest"]] * 2
        built = [any(t["status"] == "ran" for t in r["tasks"]) for r in reports]
        # --force: both really build. Cold: on a loaded machine one may start after the other has finished
        # (then it finds every task cached, as it should)
        assert all(built) if extra else any(built)
        assert faults.bundle_bytes(out) == faults.bundle_bytes(tmp_path / "clean.bundle")
        assert Cache(cache).verify()["corrupt"] == []
    debris = [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.bundle") and not p.name.endswith(".lock")]
    assert debris == []  # no stage directories or set-aside bundles left
    load_bundle(out)
