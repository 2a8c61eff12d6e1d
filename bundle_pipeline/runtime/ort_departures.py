"""Where ONNX Runtime (1.2x, cpu) departs from the ONNX spec the reference executor implements.

Found by the ONNX backend node suite run through ``BundleBackend`` with ORT (``bench/conformance.py``): on
these cases ORT returns other values or shapes than the spec's expected outputs, or refuses inputs the spec
allows. A step that matches a rule keeps its graph on the reference executor under ``executor="auto"`` (and
``inspect`` names the rule), so ``auto`` passes every case the reference passes. Rules are as narrow as the
cases show: a Resize without ``align_corners`` still runs on ORT.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from ..program import Step, decode_attr


def _attr(step: Step, name: str, default=None):
    return decode_attr(step.attrs[name]) if name in step.attrs else default


def _in_type(step: Step, types: Mapping[str, str], index: int) -> str | None:
    names = step.inputs
    return types.get(names[index]) if index < len(names) and names[index] else None


def _has_input(step: Step, index: int) -> bool:
    return index < len(step.inputs) and bool(step.inputs[index])


Rule = Callable[[Step, Mapping[str, str]], str | None]

RULES: dict[str, Rule] = {
    # ORT's kernels give other values than the spec's reference outputs
    "DFT": lambda s, t: "ORT's DFT differs from the spec's outputs",
    "STFT": lambda s, t: "ORT's STFT differs from the spec's outputs",
    "Attention": lambda s, t: "ORT's opset-23 Attention differs from the spec (causal fp16, past/present, masks)",
    "Resize": lambda s, t: ("ORT's align_corners downsampling differs from the spec"
                            if _attr(s, "coordinate_transformation_mode") in ("align_corners", b"align_corners")
                            else None),
    "MaxUnpool": lambda s, t: ("ORT's MaxUnpool with output_shape differs from the spec"
                               if _has_input(s, 2) else None),
    "Range": lambda s, t: "ORT's float16 Range has another shape" if _in_type(s, t, 0) == "float16" else None,
    "BitCast": lambda s, t: "ORT's BitCast returns a scalar as shape [1]",
    # ORT refuses inputs the spec allows
    "ConvInteger": lambda s, t: "ORT's ConvInteger refuses pads" if any(_attr(s, "pads", [])) else None,
    "Einsum": lambda s, t: ("ORT's Einsum refuses a scalar result" if str(_attr(s, "equation", "")).rstrip()
                            .endswith("->") else None),
    "ReduceMax": lambda s, t: "ORT's ReduceMax refuses bool inputs" if _in_type(s, t, 0) == "bool" else None,
}


# ops of other domains, by (domain, op)
DOMAIN_RULES: dict[tuple[str, str], Rule] = {
    # ORT applies SOFTMAX/LOGISTIC in another order than the spec (microsoft/onnxruntime#26596)
    ("ai.onnx.ml", "TreeEnsemble"): lambda s, t: ("ORT's TreeEnsemble post_transform SOFTMAX/LOGISTIC differs from "
                                                  "the spec" if _attr(s, "post_transform", 0) in (1, 2) else None),
}


def departs_from_spec(step: Step, types: Mapping[str, str]) -> str | None:
    """Why ORT would not match the spec on this step, or None."""
    domain = step.domain
    rule = DOMAIN_RULES.get((domain, step.op)) if domain else RULES.get(step.op)
    return rule(step, types) if rule else None
