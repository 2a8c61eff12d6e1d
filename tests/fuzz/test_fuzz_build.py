"""Fuzz the build: mutated ONNX files (ops, dims, truncated data, attributes, dangling inputs, opsets, raw
byte damage) and mutated specs fed to ``run`` end in a BundleError or in a bundle that loads and runs;
never another exception, a hang or a large allocation. Nothing the build reads is unpickled or executed
(specs are read with yaml.safe_load: a ``!!python/object`` tag is a PARAM_INVALID error)."""

from __future__ import annotations

import random
import shutil
import tracemalloc
import uuid
from pathlib import Path

import models
import onnx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mutations import mutate_onnx, mutate_spec
from test_fuzz_bundle import ALLOC_LIMIT, PEAK_LIMIT, exercise, time_limit

from bundle_pipeline.errors import BundleError
from bundle_pipeline.pipeline import build
from bundle_pipeline.runtime import validate
from bundle_pipeline.spec import load_spec

BUILD_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return models.mlp(tmp_path_factory.mktemp("fuzz-build") / "mlp").directory


@pytest.fixture(scope="module", autouse=True)
def small_budget():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(validate.ALLOC_ENV, str(ALLOC_LIMIT))
        yield


def build_case(spec_path: Path, workdir: Path) -> str:
    """Build (sync scheduler; cache and output forced into ``workdir``) and, when that works, load and run."""
    tracemalloc.start()
    try:
        with time_limit(BUILD_TIMEOUT_S):
            try:
                spec = load_spec(spec_path, cache=str(workdir / "cache"), output=str(workdir / "out.bundle"))
                report = build(spec, scheduler="sync")
                outcome = exercise(Path(report.bundle))
            except BundleError as err:
                assert "\n" not in str(err)
                outcome = err.status
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < PEAK_LIMIT, f"a case allocated {peak} bytes"
    return outcome


def fresh_copy(base: Path, tmp_path_factory) -> Path:
    work = tmp_path_factory.getbasetemp() / "fuzz-build-cases" / uuid.uuid4().hex
    shutil.copytree(base, work / "mlp")
    return work


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rng=st.randoms(use_true_random=False), graph=st.sampled_from(["init", "update", "infer"]))
def test_mutated_onnx_files_are_bundle_errors(base, tmp_path_factory, rng: random.Random, graph: str):
    work = fresh_copy(base, tmp_path_factory)
    path = work / "mlp" / f"{graph}.onnx"
    path.write_bytes(mutate_onnx(onnx.load(path), rng))
    build_case(work / "mlp" / "bundle.yaml", work)


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rng=st.randoms(use_true_random=False))
def test_mutated_specs_are_bundle_errors(base, tmp_path_factory, rng: random.Random):
    work = fresh_copy(base, tmp_path_factory)
    spec_path = work / "mlp" / "bundle.yaml"
    spec_path.write_text(mutate_spec(yaml.safe_load(spec_path.read_text()), rng))
    build_case(spec_path, work)


def test_spec_tags_are_not_constructed(base, tmp_path_factory):
    work = fresh_copy(base, tmp_path_factory)
    spec_path = work / "mlp" / "bundle.yaml"
    spec_path.write_text("!!python/object/apply:os.system ['touch pwned']\n")
    assert build_case(spec_path, work) == "PARAM_INVALID"
    assert not (work / "mlp" / "pwned").exists() and not Path("pwned").exists()


def test_unmutated_base_builds_and_runs(base, tmp_path_factory):
    work = fresh_copy(base, tmp_path_factory)
    assert build_case(work / "mlp" / "bundle.yaml", work) == "ok"
