"""ONNX backend node cases the compiler cannot pass yet, each with why: the documented conformance gap.

Keys are regular expressions matched against the whole case name (``re.fullmatch``); the first matching
entry gives the reason. Shared by ``tests/conformance/test_node_suite.py`` (skips them) and
``bench/conformance.py`` (counts them as excluded; ``--check-exclusions`` runs them and lists any that
pass, so a stale entry is noticed). Reasons start with the category:

- ``dtype``: string tensors, which the runtime's arena (numeric and bool buffers) cannot hold as node
  outputs (bfloat16, float8*, float4, int4/uint4 and int2/uint2 are supported through ml_dtypes);
- ``types``: sequence / optional / map values (the IR has tensors only);
- ``control flow``: If / Loop / Scan need subgraphs in the IR (also in ``*_expanded`` function bodies);
- ``domain``: ops outside the default ONNX domain (ai.onnx.ml, training, preview);
- ``random``: outputs drawn from an RNG only the reference implementation reproduces;
- ``data-dependent shape``: a value's shape depends on a value fed at run time, while the compiler plans
  static buffers (a declared graph output shape is enough, an undeclared intermediate is not);
- ``op``: an operator the kernel library does not implement;
- ``precision``: expected values that are bit-exact float16 arithmetic of the reference;
- ``BUG``: a defect (here: in onnx) that makes a valid model fail, with where it is.
"""

from __future__ import annotations

_STRINGS = "dtype: string outputs; the runtime arena holds numeric and bool tensors only"
_TYPES = "types: sequence/optional values; the IR has tensors only"
_CONTROL = "control flow: subgraphs not supported by the IR yet"
_DATA_SHAPE = "data-dependent shape: an undeclared intermediate's shape depends on a runtime input value"

EXCLUSIONS: dict[str, str] = {
    # --- element types -------------------------------------------------------------------------------
    r"test_string_(concat|split).*": _STRINGS,
    r"test_strnormalizer_.*": _STRINGS,
    # --- sequences and optionals ---------------------------------------------------------------------
    r"test_sequence_.*": _TYPES,
    r"test_split_to_sequence_.*": _TYPES,
    r"test_identity_(opt|sequence)": _TYPES,
    r"test_optional_get_element_(optional_sequence|optional_tensor|sequence)": _TYPES,
    r"test_optional_has_element_(empty_optional_input|optional_input|tensor_input)": _TYPES,
    r"test_if_(opt|seq)": f"{_TYPES}; {_CONTROL}",
    r"test_loop(13_seq|16_seq_none)": f"{_TYPES}; {_CONTROL}",
    # --- control flow (If / Loop / Scan, also inside expanded function bodies) -----------------------
    r"test_if": _CONTROL,
    r"test_loop11": _CONTROL,
    r"test_scan9?_.*": _CONTROL,
    r"test_affine_grid_.*_expanded": f"{_CONTROL} (the AffineGrid function body uses If)",
    r"test_range_.*_expanded": f"{_CONTROL} (the Range function body uses Loop)",
    r"test_linear_attention_.*_expanded": f"{_CONTROL} (the LinearAttention function body uses Scan)",
    # --- other domains -------------------------------------------------------------------------------
    r"test_ai_onnx_ml_.*": "domain: ai.onnx.ml operators are not supported",
    r"test_(adagrad|adam|momentum|nesterov_momentum)(_multiple)?": "domain: ai.onnx.preview.training operators "
                                                                    "are not supported",
    r"test_flexattention(?!.*_expanded).*": "domain: ai.onnx.preview FlexAttention (subgraph attributes) is not "
                                            "supported; its *_expanded forms pass",
    # --- randomness ----------------------------------------------------------------------------------
    r"test_bernoulli.*": "random: Bernoulli draws from an RNG only the reference reproduces",
    r"test_training_dropout(_default|_mask|_default_mask)?": "random: training-mode Dropout draws a random mask",
    # --- data-dependent shapes -----------------------------------------------------------------------
    r"test_reduce_(l2|log_sum|log_sum_exp)_.*_expanded": f"{_DATA_SHAPE} (ReduceSum with axes fed at run time)",
    r"test_center_crop_pad_.*_expanded": f"{_DATA_SHAPE} (Pad amounts computed from the fed shape)",
    r"test_(blackman|hamming|hann)window(_symmetric)?_expanded": f"{_DATA_SHAPE} (Range over the fed size)",
    # (test_unique_bfloat16_sorted_without_axis declares its output dims and passes)
    r"test_unique_(?!bfloat16_).*": "data-dependent shape: Unique's outputs are declared without static dims",
    # --- operators -----------------------------------------------------------------------------------
    r"test_image_decoder_.*": "op: ImageDecoder needs image codecs (jpeg, png, webp, ...), not a dependency",
    # --- precision -----------------------------------------------------------------------------------
    r"test_attention_4d_causal_fp16_expanded": "precision: expected values are bit-exact float16 reference "
                                               "arithmetic; our MatMul/Softmax accumulate float16 in float32 "
                                               "(1 ulp off at rtol=1e-3, as onnxruntime)",
    # --- bugs ----------------------------------------------------------------------------------------
    r"test_mvn": "BUG(onnx 1.23): strict shape inference of MeanVarianceNormalization's function body fails "
                 "when 'axes' is defaulted (Constant with no value); test_mvn_expanded passes",
}
