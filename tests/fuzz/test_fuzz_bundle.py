"""Fuzz the loader: mutated bundles (manifest fields, programs with out-of-range offsets, absurd shapes,
unknown kernels and dtypes, damaged arrays) always end in a BundleError or a bundle that loads and runs;
never another exception, a hang, or a large allocation. Loading never unpickles or executes stored data."""

from __future__ import annotations

import contextlib
import json
import random
import signal
import tracemalloc
import uuid
import zipfile
from pathlib import Path

import models
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mutations import feeds_for, mutate_bundle

from bundle_pipeline.errors import BundleError
from bundle_pipeline.pipeline import build
from bundle_pipeline.runtime import load_bundle, validate
from bundle_pipeline.spec import load_spec

ALLOC_LIMIT = 64 << 20  # the loader's budget in this test (the default floor is 1 GiB)
PEAK_LIMIT = 192 << 20  # what one case may allocate (numpy allocations are traced), budget included
CASE_TIMEOUT_S = 60  # a hang fails the case instead of the whole run


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    """Directory bundles of small cpu and npu builds, and a zip bundle, to mutate."""
    root = tmp_path_factory.mktemp("fuzz-bases")
    out = {}
    for maker, target in ((models.cnn, "cpu"), (models.attention, "cpu"), (models.mlp, "npu")):
        built = maker(root / f"{maker.__name__}-{target}")
        spec = load_spec(built.spec, cache=str(root / "cache"), target=target)
        out[f"{maker.__name__}-{target}"] = Path(build(spec, scheduler="sync").bundle)
    zipped = load_spec(models.mlp(root / "mlp-zip").spec, cache=str(root / "cache"),
                       output=str(root / "mlp.zip"))
    out["zip"] = Path(build(zipped, scheduler="sync").bundle)
    return out


@pytest.fixture(scope="module", autouse=True)
def small_budget():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(validate.ALLOC_ENV, str(ALLOC_LIMIT))
        yield


@contextlib.contextmanager
def time_limit(seconds: int):
    def expire(signum, frame):
        raise TimeoutError(f"case still running after {seconds} s (a hang)")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def exercise(path: Path) -> str:
    """Load and run every graph of a (possibly damaged) bundle; "ok" or the BundleError status."""
    try:
        b = load_bundle(path)
        rng = np.random.default_rng(0)
        for name, role in b.roles.items():
            feeds = feeds_for(b.executors[name].program, rng)
            if feeds is None or role == "init":
                continue
            b.update(feeds, graph=name) if role == "update" else b.run(name, feeds)
        return "ok"
    except BundleError as err:
        assert err.status in ("BUNDLE_CORRUPT", "RUNTIME_ERROR", "IO_ERROR", "PARAM_INVALID"), err
        assert "\n" not in str(err)
        return err.status


def check_case(path: Path) -> str:
    tracemalloc.start()
    try:
        with time_limit(CASE_TIMEOUT_S):
            outcome = exercise(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < PEAK_LIMIT, f"{path}: a case allocated {peak} bytes"
    return outcome


def test_unmutated_bases_load_and_run(bases):
    assert {name: check_case(path) for name, path in bases.items()} == dict.fromkeys(bases, "ok")


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rng=st.randoms(use_true_random=False), base=st.sampled_from(["cnn-cpu", "attention-cpu", "mlp-npu"]))
def test_mutated_bundles_are_bundle_errors(bases, tmp_path_factory, rng: random.Random, base: str):
    dst = tmp_path_factory.getbasetemp() / "fuzz-cases" / uuid.uuid4().hex / "b.bundle"
    what = mutate_bundle(bases[base], dst, rng)
    try:
        check_case(dst)
    except AssertionError as err:
        raise AssertionError(f"{base} mutated ({what}): {err}") from None


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rng=st.randoms(use_true_random=False))
def test_mutated_zip_bundles_are_bundle_errors(bases, tmp_path_factory, rng: random.Random):
    data = bytearray(bases["zip"].read_bytes())
    if rng.random() < 0.5:
        data = data[: rng.randrange(1, len(data))]
    for _ in range(rng.randrange(1, 8)):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    dst = tmp_path_factory.getbasetemp() / "fuzz-zips" / f"{uuid.uuid4().hex}.zip"
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(bytes(data))
    check_case(dst)


def test_the_loader_never_unpickles(bases, tmp_path, monkeypatch):
    """An object-dtype array (what a pickle-based format would need) is refused before any data is read."""
    import pickle

    def refuse(*args, **kwargs):
        raise AssertionError("the loader unpickled something")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(np, "load", refuse)
    import shutil

    dst = tmp_path / "b.bundle"
    shutil.copytree(bases["cnn-cpu"], dst)
    meta = next(p for p in (dst / "constants").rglob("zarr.json") if p.parent != dst / "constants")
    doc = json.loads(meta.read_text())
    doc["data_type"] = "object"  # the packed array's uint8, or a large constant's own type
    meta.write_text(json.dumps(doc))
    with pytest.raises(BundleError) as err:
        load_bundle(dst)
    assert err.value.status == "BUNDLE_CORRUPT"
    assert check_case(bases["cnn-cpu"]) == "ok"  # and a good bundle loads without unpickling anything


def test_huge_planned_allocation_is_refused_before_allocating(bases, tmp_path):
    import json
    import shutil

    dst = tmp_path / "b.bundle"
    shutil.copytree(bases["cnn-cpu"], dst)
    meta = json.loads((dst / "zarr.json").read_text())
    infer = next(g for g in meta["attributes"]["graphs"] if g["role"] == "infer")
    infer["program"]["arena_bytes"] = 1 << 45  # 32 TiB: fits every plan, allocates nothing yet
    (dst / "zarr.json").write_text(json.dumps(meta))
    tracemalloc.start()
    try:
        with pytest.raises(BundleError, match=r"needs 32\.0 TiB of memory") as err:
            load_bundle(dst)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # a well-formed bundle that needs more than the budget is not "corrupt": the error says what it needs
    assert err.value.status == "RUNTIME_ERROR" and validate.ALLOC_ENV in str(err.value)
    assert peak < 32 << 20


def test_zip_entries_are_stored_sizes(bases):
    """The zip form stores every entry (the loader refuses compressed ones), so the sizes the budget counts are
    bytes the file really holds."""
    with zipfile.ZipFile(bases["zip"]) as zf:
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
