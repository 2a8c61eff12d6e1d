"""A no-op `run` (and `status`) plans from JSON records and stats: it must not import the heavy libraries.

The import list is what makes a no-op cost a fraction of a second (issue: speed): ml_dtypes alone once took
0.75 s. No timings are asserted, only which modules a whole process loaded.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo"
# What a no-op must not load: the list, plus numpy, networkx, fsspec and pydantic (each 0.1-0.2 s at
# import; planning needs none of them: task keys hash JSON, a local cache is read with os calls), and the
# numpy-heavy shared modules that moved out of the runtime (issue 15): the kernels, formats, npu predicates.
HEAVY = ("ml_dtypes", "onnx", "zarr", "dask", "distributed", "rich", "bundle_pipeline.runtime", "numpy", "networkx",
         "fsspec", "pydantic", "onnxruntime", "bundle_pipeline.kernels", "bundle_pipeline.formats",
         "bundle_pipeline.targets.npu")
PROBE = """
import json, sys
from bundle_pipeline.cli import main
sys.argv = ["bundle-pipeline", *sys.argv[1:]]
try:
    main()
except SystemExit as stop:
    code = stop.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def loaded_by(*args: str) -> tuple[int, set[str]]:
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, check=False)
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    return last["code"], set(last["modules"])


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


def built_demo(tmp_path: Path) -> str:
    """A copy of the demo, built once (so the next run is a no-op); its spec's path."""
    demo = tmp_path / "demo"
    shutil.copytree(DEMO, demo, ignore=shutil.ignore_patterns("build", ".bundle-cache"))
    spec = str(demo / "bundle.yaml")
    built = subprocess.run([sys.executable, "-m", "bundle_pipeline.cli", "run", spec], capture_output=True, text=True,
                           check=False)
    assert built.returncode == 0, built.stderr
    return spec


def test_noop_run_and_status_import_nothing_heavy(tmp_path):
    spec = built_demo(tmp_path)
    code, modules = loaded_by("run", spec)
    assert code in (None, 0) and heavy(modules) == []
    assert "bundle_pipeline.pipeline.build" in modules  # the probe really planned the build
    code, modules = loaded_by("status", spec)
    assert code in (None, 0) and heavy(modules) == []


def test_planning_a_weight_edit_of_plain_float_weights_loads_no_numpy(tmp_path):
    """The planner hashes a changed external-data file's float32 ranges from the mapped bytes (external_ranges):
    numpy (~0.1 s) loads only once a task runs, as the scheduler's setup."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import generate
    import incremental

    manifest = generate.generate("a", tmp_path / "data", 0.001)
    spec = manifest["spec"]
    built = subprocess.run([sys.executable, "-m", "bundle_pipeline.cli", "run", spec], capture_output=True, text=True,
                           check=False)
    assert built.returncode == 0, built.stderr
    incremental.edit_external(Path(spec).parent, manifest)
    proc = subprocess.run([sys.executable, "-c", PROBE, "status", spec, "--json"], capture_output=True, text=True,
                          check=False)
    *report, last = proc.stdout.strip().splitlines()
    assert heavy(set(json.loads(last)["modules"])) == []
    stale = json.loads("\n".join(report))["stale"]  # the probe hashed the edited file's ranges to say so
    assert [s["id"] for s in stale] == ["a/parse.weights:infer"] and "file changed" in stale[0]["reason"]
