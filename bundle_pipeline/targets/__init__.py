"""Target descriptions as data: formats, buffer sizes and the kernel format table, read from targets/*.yaml."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

import yaml

from ..errors import ParamInvalid
from ..ir.hashing import hash_json

KNOWN_TARGETS = ("cpu",)


@dataclass(frozen=True)
class KernelFormats:
    inputs: tuple[str, ...]  # formats the kernel accepts on every input
    output: str  # format it produces


@dataclass(frozen=True)
class Target:
    name: str
    formats: tuple[str, ...]
    buffers: dict[str, int]
    kernels: dict[str, KernelFormats]
    fingerprint: str  # content hash of the description: part of every task key that reads the target

    def kernel(self, op_type: str) -> KernelFormats:
        return self.kernels.get(op_type, self.kernels["default"])


@cache
def get_target(name: str) -> Target:
    if name not in KNOWN_TARGETS:
        hint = " (the npu target is not built yet)" if name == "npu" else ""
        raise ParamInvalid(f"unknown target {name!r}{hint}; available: {', '.join(KNOWN_TARGETS)}", "target")
    raw = yaml.safe_load(resources.files(__package__).joinpath(f"{name}.yaml").read_text())
    kernels = {op: KernelFormats(tuple(k["inputs"]), k["outputs"]) for op, k in raw["kernels"].items()}
    return Target(name=raw["name"], formats=tuple(raw["formats"]), buffers=dict(raw["buffers"]),
                  kernels=kernels, fingerprint=hash_json(raw))
