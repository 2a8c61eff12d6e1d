"""The program format's vocabulary: versions, roles, step kinds' ops and modes (plain values, cheap to import).

Kept apart from ``schema.py`` (whose dataclasses cost milliseconds to create) so a no-op build, which reads
``FORMAT_VERSION`` and ``CONTROL_OPS`` but builds no program, does not pay for them.
"""

from __future__ import annotations

FORMAT_VERSION = 2  # the bundle format pack writes; 2: small constants share constants/packed at an offset
FORMAT_VERSIONS = (1, FORMAT_VERSION)  # the formats the runtime reads
ROLES = ("init", "update", "infer")
CONTROL_OPS = frozenset({"If", "Loop", "Scan", "SequenceMap"})  # ops whose attributes hold bodies
BODY_ATTRS = {"If": ("else_branch", "then_branch"), "Loop": ("body",), "Scan": ("body",), "SequenceMap": ("body",)}
# kernels of other domains whose graph attributes (each optional) they call as tensor -> tensor functions
KERNEL_GRAPH_ATTRS = {("ai.onnx.preview", "FlexAttention"): ("prob_mod", "score_mod")}
# ops with an approximate kernel for op_select_implmode=high_performance (runtime/approx.py; a test ties them)
APPROX_OPS = frozenset({"Gelu", "Erf", "Exp", "Tanh", "Sigmoid"})
PRECISIONS = ("fp16", "fp16_round")  # fp16: cube inputs rounded; fp16_round: a vector op's inputs and outputs
IMPLS = ("high_performance",)
TRANSDATA = "TransData"
