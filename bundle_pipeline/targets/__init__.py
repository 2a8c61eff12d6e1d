"""Target descriptions as data: formats, buffer sizes and the kernel format table, read from targets/*.yaml."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from ..errors import ParamInvalid
from ..hashing import hash_json

KNOWN_TARGETS = ("cpu", "npu")


@dataclass(frozen=True)
class KernelFormats:
    """Formats one kernel takes and gives. ``inputs`` has one tuple per input position (the last repeats);
    ``output`` is a format, or ``SAME`` for elementwise kernels whose operands share one format."""

    inputs: tuple[tuple[str, ...], ...]
    output: str
    native: bool  # False: the target's fallback (standard layouts, cpu kernels)

    def accepted(self, position: int) -> tuple[str, ...]:
        return self.inputs[min(position, len(self.inputs) - 1)]

    @property
    def same_format(self) -> bool:
        return self.output == "SAME"


@dataclass(frozen=True)
class Target:
    name: str
    formats: tuple[str, ...]
    buffers: dict[str, int]
    kernels: dict[str, KernelFormats]
    fingerprint: str  # content hash of the description: part of every task key that reads the target

    def kernel(self, op_type: str) -> KernelFormats:
        return self.kernels.get(op_type, self.kernels["default"])


def _kernel_formats(entry: dict, native: bool) -> KernelFormats:
    raw = entry["inputs"]
    per_position = raw if raw and isinstance(raw[0], list) else [raw]
    return KernelFormats(tuple(tuple(p) for p in per_position), entry["outputs"], native)


@cache
def get_target(name: str) -> Target:
    if name not in KNOWN_TARGETS:
        raise ParamInvalid(f"unknown target {name!r}; available: {', '.join(KNOWN_TARGETS)}", "target")
    from ..yaml_memo import remembered

    raw = remembered("target", resources.files(__package__).joinpath(f"{name}.yaml").read_text(), _safe_load)
    native = bool(raw.get("native_kernels", False))
    kernels = {op: _kernel_formats(k, native and op != "default") for op, k in raw["kernels"].items()}
    return Target(name=raw["name"], formats=tuple(raw["formats"]), buffers=dict(raw["buffers"]),
                  kernels=kernels, fingerprint=hash_json(raw))


def _safe_load(text: str) -> Any:
    import yaml  # loaded here: the runtime imports targets.npu and never reads a description

    return yaml.safe_load(text)
