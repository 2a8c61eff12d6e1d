"""Build options of infer graphs: accepted keys, their values, and which stage reads each."""

from __future__ import annotations

import re
from collections.abc import Mapping

from .errors import OptionInvalid

# key -> (accepted values or None for free-form, default, the stage that reads it).
# Every accepted option changes the output: parse reads input_shape/out_nodes, codegen the rest.
OPTIONS: dict[str, tuple[tuple[str, ...] | None, str, str]] = {
    "exec_disable_reused_memory": (("0", "1"), "0", "codegen"),
    # force_fp16 casts cube-unit inputs (MatMul/Gemm/Conv/ConvTranspose) to fp16, accumulating in fp32.
    "precision_mode": (("must_keep_origin_dtype", "force_fp16"), "must_keep_origin_dtype", "codegen"),
    "input_shape": (None, "", "parse"),
    "out_nodes": (None, "", "parse"),
}

_SHAPE_ITEM = re.compile(r"^(?P<name>[^:;]+):(?P<dims>-?\d+(,-?\d+)*)?$")


def validate_options(options: Mapping[str, object] | None, where: str) -> dict[str, str]:
    """Check keys and values; return the full option dict (defaults filled, values as strings)."""
    given = dict(options or {})
    out = {key: default for key, (_, default, _) in OPTIONS.items()}
    for key, raw in given.items():
        if key not in OPTIONS:
            raise OptionInvalid(f"unknown option {key!r}; accepted: {', '.join(sorted(OPTIONS))}", where)
        value = _as_text(raw)
        accepted = OPTIONS[key][0]
        if accepted is not None and value not in accepted:
            raise OptionInvalid(f"option {key}={value!r} is not accepted; use one of: {', '.join(accepted)}",
                                where)
        out[key] = value
    if out["input_shape"]:
        parse_input_shape(out["input_shape"], where)
    return out


def options_for(stage: str, options: Mapping[str, str]) -> dict[str, str]:
    """The subset of options a stage reads: only these enter its task key."""
    return {k: v for k, v in options.items() if OPTIONS[k][2] == stage}


def parse_input_shape(text: str, where: str = "input_shape") -> dict[str, list[int]]:
    """CANN syntax ``name:d0,d1;name2:d0`` -> {name: [d0, d1]}; names may contain ':' except the last one."""
    shapes: dict[str, list[int]] = {}
    for item in filter(None, (part.strip() for part in text.split(";"))):
        name, sep, dims = item.rpartition(":")
        if not sep or not name or not _SHAPE_ITEM.match(f"x:{dims}"):
            raise OptionInvalid(f"input_shape item {item!r} is malformed; expected name:d0,d1,... "
                                f"with items separated by ';'", where)
        values = [int(d) for d in dims.split(",")] if dims else []
        if any(d < 0 for d in values):
            raise OptionInvalid(f"input_shape {item!r}: dims must be static (>= 0)", where)
        shapes[name] = values
    return shapes


def _as_text(raw: object) -> str:
    if isinstance(raw, bool):
        return "1" if raw else "0"
    return str(raw)
