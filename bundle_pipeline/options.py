"""Build options of infer graphs: accepted keys, their values, and which stage reads each.

Keys follow Ascend's ``ge::ir_option`` names in snake case; the CANN spellings in ``ALIASES`` are accepted
and normalised to the snake-case key before validation. Source of the CANN names: graphengine
``inc/external/ge/ge_api_types.h``, namespace ``ge::ir_option`` (EXEC_DISABLE_REUSED_MEMORY =
"ge.exec.disableReuseMemory", PRECISION_MODE = "ge.exec.precision_mode", INPUT_SHAPE = "input_shape",
INPUT_FORMAT = "input_format", OUT_NODES = "ge.outputNodeName", OP_SELECT_IMPL_MODE = "ge.opSelectImplmode").
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from .errors import OptionInvalid

# key -> (accepted values or None for free-form, default, the stage that reads it).
# Every accepted option changes the output: parse reads input_shape/out_nodes, codegen the rest.
OPTIONS: dict[str, tuple[tuple[str, ...] | None, str, str]] = {
    # 1: every intermediate gets its own arena bytes (no liveness-based reuse).
    "exec_disable_reused_memory": (("0", "1"), "0", "codegen"),
    # allow_fp32_to_fp16: cube-unit ops (MatMul/Gemm/Conv/ConvTranspose) take fp16 inputs and accumulate in
    # fp32, as the device's cube does; vector ops keep fp32. force_fp16: the same, and every other float32 op
    # also computes on fp16-rounded inputs and rounds its result to fp16 (stored as float32).
    "precision_mode": (("must_keep_origin_dtype", "allow_fp32_to_fp16", "force_fp16"), "must_keep_origin_dtype",
                       "codegen"),
    "input_shape": (None, "", "parse"),
    # the layout the caller feeds 4-D inputs in: NHWC makes the program transpose them to NCHW first.
    "input_format": (("NCHW", "NHWC", "ND"), "NCHW", "codegen"),
    "out_nodes": (None, "", "parse"),
    # high_performance: Gelu/Erf/Exp/Tanh/Sigmoid run approximations (bounds in runtime/approx.py).
    "op_select_implmode": (("high_precision", "high_performance"), "high_precision", "codegen"),
}

# CANN spelling (ge::ir_option value) -> key. input_shape and input_format are spelled the same in CANN.
ALIASES: dict[str, str] = {
    "ge.exec.disableReuseMemory": "exec_disable_reused_memory",
    "ge.exec.precision_mode": "precision_mode",
    "ge.outputNodeName": "out_nodes",
    "ge.opSelectImplmode": "op_select_implmode",
}

# Values CANN accepts that bundle-pipeline does not, with the reason the error gives.
NOT_ACCEPTED: dict[tuple[str, str], str] = {
    ("precision_mode", "allow_mix_precision"): "mixed precision by op lists is not modelled; use allow_fp32_to_fp16",
    ("precision_mode", "force_fp32"): "it would be must_keep_origin_dtype under another name",
}

_SHAPE_ITEM = re.compile(r"^(?P<name>[^:;]+):(?P<dims>-?\d+(,-?\d+)*)?$")


def normalize_options(options: Mapping[str, object] | None, where: str) -> dict[str, object]:
    """CANN spellings -> snake-case keys; the same option given twice (in two spellings) is an error."""
    out: dict[str, object] = {}
    spelled: dict[str, str] = {}
    for key, value in dict(options or {}).items():
        name = ALIASES.get(str(key), str(key))
        if name in out:
            raise OptionInvalid(f"option {name} is given twice (as {spelled[name]!r} and {key!r})", where)
        out[name] = value
        spelled[name] = str(key)
    return out


def validate_options(options: Mapping[str, object] | None, where: str) -> dict[str, str]:
    """Check keys and values; return the full option dict (snake-case keys, defaults filled, values as strings)."""
    given = normalize_options(options, where)
    out = {key: default for key, (_, default, _) in OPTIONS.items()}
    for key, raw in given.items():
        if key not in OPTIONS:
            raise OptionInvalid(f"unknown option {key!r}; accepted: {', '.join(sorted(OPTIONS))} "
                                f"(CANN spellings {', '.join(sorted(ALIASES))} also accepted)", where)
        value = _as_text(raw)
        accepted = OPTIONS[key][0]
        if accepted is not None and value not in accepted:
            reason = NOT_ACCEPTED.get((key, value))
            why = f" ({reason})" if reason else ""
            raise OptionInvalid(f"option {key}={value!r} is not accepted{why}; use one of: {', '.join(accepted)}",
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
        if name in shapes:
            raise OptionInvalid(f"input_shape names {name!r} twice", where)
        shapes[name] = values
    return shapes


def _as_text(raw: object) -> str:
    if isinstance(raw, bool):
        return "1" if raw else "0"
    return str(raw)
