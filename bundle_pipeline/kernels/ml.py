"""ai.onnx.ml kernels: ArrayFeatureExtractor, Binarizer, LabelEncoder (ml opsets 1, 2 and 4), TreeEnsemble (5).

``opset`` is the model's ai.onnx.ml version, which selects LabelEncoder's form: opset 1 maps strings to their
index in ``classes_strings`` and back; from opset 2 ``keys_*`` map to ``values_*`` (float keys compared bit for
bit); from opset 4 keys/values may also be tensors (int16/int32/double too) and any NaN key matches any NaN.
Where the spec is silent the choices follow onnxruntime: ArrayFeatureExtractor of a 1-D input is ``[1, k]``
(as onnx's reference too), and TreeEnsemble's MIN/MAX leave a target no leaf reached at 0.
"""

from __future__ import annotations

import math

import numpy as np

from ._registry import Attrs, Inputs, KernelError, Tiling, kernel, need

DOMAIN = "ai.onnx.ml"


@kernel("ArrayFeatureExtractor", domain=DOMAIN)
def _array_feature_extractor(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    """Z = X[..., indices] (indices flattened); a 1-D X gives one row."""
    x, y = need(inputs, 0, "X"), need(inputs, 1, "Y")
    if y.dtype != np.int64:
        raise KernelError(f"ArrayFeatureExtractor: indices are int64, got {y.dtype}")
    if x.ndim == 0:
        raise KernelError("ArrayFeatureExtractor: X must have at least one dimension")
    index = y.reshape(-1)
    last = x.shape[-1]
    bad = index[(index < 0) | (index >= last)]
    if bad.size:
        raise KernelError(f"ArrayFeatureExtractor: index {int(bad[0])} is out of range [0, {last})")
    z = x[..., index]
    return [z.reshape(1, index.size) if x.ndim == 1 else z]


@kernel("Binarizer", domain=DOMAIN)
def _binarizer(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    """Y = 1 where X > threshold, else 0, in X's type."""
    x = need(inputs, 0, "X")
    if x.dtype.kind not in "fi":
        raise KernelError(f"Binarizer takes float, double, int32 or int64, got {x.dtype}")
    return [(x > float(attrs.get("threshold", 0.0))).astype(x.dtype)]


# --- LabelEncoder ------------------------------------------------------------------------------------------

_NAN = ("nan",)  # the key every NaN maps to (ml opset 4)
_DEFAULTS = {"int64s": ("default_int64", -1), "floats": ("default_float", -0.0),
             "strings": ("default_string", "_Unused")}


def _one_of(attrs: Attrs, prefix: str) -> tuple[str, object]:
    given = [k for k in attrs if k.startswith(prefix) and attrs[k] is not None]
    if len(given) != 1:
        raise KernelError(f"LabelEncoder needs exactly one {prefix}* attribute, got {sorted(given) or 'none'}")
    return given[0][len(prefix):], attrs[given[0]]


def _as_array(kind: str, value: object) -> np.ndarray:
    if kind == "strings":
        return np.array([str(v) for v in value], dtype=object)
    if kind == "floats":
        return np.asarray(value, dtype=np.float32)
    if kind == "int64s":
        return np.asarray(value, dtype=np.int64)
    return np.asarray(value)  # tensor: its own dtype (1-D)


def _key(value: object, dtype: np.dtype, bitwise: bool) -> object:
    """Lookup key of one element: strings as str, integers as int, floats by bits (opset 2) or value with one
    NaN (opset 4)."""
    if dtype.kind == "O":
        return str(value)
    if dtype.kind == "f":
        v = np.asarray(value, dtype=dtype)
        if bitwise:
            return v.tobytes()
        return _NAN if np.isnan(v) else float(v)
    return int(value)


@kernel("LabelEncoder", domain=DOMAIN)
def _label_encoder(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x = need(inputs, 0, "X")
    if opset < 2:
        return [_label_encoder_v1(x, attrs)]
    key_kind, keys = _one_of(attrs, "keys_")
    value_kind, values = _one_of(attrs, "values_")
    keys, values = _as_array(key_kind, keys).reshape(-1), _as_array(value_kind, values).reshape(-1)
    if keys.size != values.size:
        raise KernelError(f"LabelEncoder: {keys.size} keys but {values.size} values")
    if value_kind == "tensor":
        default = attrs.get("default_tensor")
        if default is None:
            default = "_Unused" if values.dtype.kind == "O" else -1 if values.dtype.kind in "iu" else -0.0
        else:
            default = np.asarray(default).reshape(-1)[0]
    else:
        name, fallback = _DEFAULTS[value_kind]
        default = attrs.get(name, fallback)
    if (x.dtype.kind == "O") != (keys.dtype.kind == "O") or (x.dtype.kind == "f") != (keys.dtype.kind == "f"):
        raise KernelError(f"LabelEncoder: input is {x.dtype} but the keys are {keys.dtype}")
    key_dtype = x.dtype
    bitwise = opset < 4
    table = {_key(k, key_dtype, bitwise): v for k, v in zip(keys.tolist(), values.tolist(), strict=True)}
    out = [table.get(_key(e, key_dtype, bitwise), default) for e in x.reshape(-1).tolist()]
    return [np.array(out, dtype=values.dtype).reshape(x.shape)]


def _label_encoder_v1(x: np.ndarray, attrs: Attrs) -> np.ndarray:
    """ml opset 1: strings -> index in classes_strings (default_int64), int64 -> string (default_string)."""
    classes = [str(c) for c in attrs.get("classes_strings") or []]
    if x.dtype.kind == "O":
        index = {c: i for i, c in reversed(list(enumerate(classes)))}  # the first occurrence wins
        default = int(attrs.get("default_int64", -1))
        return np.array([index.get(str(s), default) for s in x.reshape(-1).tolist()], dtype=np.int64).reshape(x.shape)
    if x.dtype != np.int64:
        raise KernelError(f"LabelEncoder (ml opset 1) takes strings or int64, got {x.dtype}")
    default = str(attrs.get("default_string", "_Unused"))
    out = [classes[i] if 0 <= i < len(classes) else default for i in x.reshape(-1).tolist()]
    return np.array(out, dtype=object).reshape(x.shape)


# --- TreeEnsemble ------------------------------------------------------------------------------------------

LEQ, LT, GTE, GT, EQ, NEQ, MEMBER = range(7)
AVERAGE, SUM, MIN, MAX = range(4)
NONE, SOFTMAX, LOGISTIC, SOFTMAX_ZERO, PROBIT = range(5)


def _ints(attrs: Attrs, name: str, required: bool = True) -> np.ndarray | None:
    value = attrs.get(name)
    if value is None:
        if required:
            raise KernelError(f"TreeEnsemble: attribute {name!r} is required")
        return None
    return np.asarray(value).reshape(-1).astype(np.int64)


@kernel("TreeEnsemble", domain=DOMAIN)
def _tree_ensemble(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x = need(inputs, 0, "X")
    if x.ndim != 2 or x.dtype.kind != "f":
        raise KernelError(f"TreeEnsemble takes a float [N, F] input, got {x.dtype}{list(x.shape)}")
    modes = _ints(attrs, "nodes_modes")
    feature = _ints(attrs, "nodes_featureids")
    true_ids, false_ids = _ints(attrs, "nodes_truenodeids"), _ints(attrs, "nodes_falsenodeids")
    true_leaf, false_leaf = _ints(attrs, "nodes_trueleafs") != 0, _ints(attrs, "nodes_falseleafs") != 0
    splits = np.asarray(attrs.get("nodes_splits"), dtype=np.float64).reshape(-1)
    roots = _ints(attrs, "tree_roots")
    target_ids = _ints(attrs, "leaf_targetids")
    weights = np.asarray(attrs.get("leaf_weights"), dtype=np.float64).reshape(-1)
    n = modes.size
    if any(a.size != n for a in (feature, true_ids, false_ids, true_leaf, false_leaf, splits)):
        raise KernelError("TreeEnsemble: the nodes_* attributes differ in length")
    if target_ids.size != weights.size:
        raise KernelError("TreeEnsemble: leaf_targetids and leaf_weights differ in length")
    tracks = _ints(attrs, "nodes_missing_value_tracks_true", required=False)
    tracks = np.zeros(n, bool) if tracks is None else tracks != 0
    n_targets = int(attrs["n_targets"]) if attrs.get("n_targets") is not None else int(target_ids.max(initial=-1)) + 1
    if ((target_ids < 0) | (target_ids >= n_targets)).any():
        raise KernelError(f"TreeEnsemble: a leaf_targetids entry is outside [0, {n_targets})")
    members = _members(modes, attrs.get("membership_values"))
    if (feature >= x.shape[1]).any() or (feature < 0).any():
        raise KernelError(f"TreeEnsemble: a nodes_featureids entry is outside [0, {x.shape[1]})")
    leaves = np.stack([_leaves_of(r, x, modes, feature, splits, members, tracks, (true_ids, false_ids),
                                  (true_leaf, false_leaf), weights.size) for r in roots.tolist()], axis=1) \
        if roots.size else np.zeros((x.shape[0], 0), np.int64)
    aggregate = int(attrs.get("aggregate_function", SUM))
    scores = _aggregate(aggregate, leaves, weights, target_ids, x.shape[0], n_targets, roots.size)
    return [_post_transform(int(attrs.get("post_transform", NONE)), scores).astype(x.dtype)]


def _members(modes: np.ndarray, values: object) -> dict[int, np.ndarray]:
    """Node index -> its set of members: membership_values lists them NaN-delimited, in node order."""
    member_nodes = np.flatnonzero(modes == MEMBER).tolist()
    if not member_nodes:
        return {}
    if values is None:
        raise KernelError("TreeEnsemble: BRANCH_MEMBER nodes need the membership_values attribute")
    flat = np.asarray(values, dtype=np.float64).reshape(-1)
    cuts = np.flatnonzero(np.isnan(flat))
    if cuts.size != len(member_nodes):
        raise KernelError(f"TreeEnsemble: membership_values holds {cuts.size} NaN-delimited sets for "
                          f"{len(member_nodes)} BRANCH_MEMBER nodes")
    sets = np.split(flat, cuts + 1)[:-1]
    return {node: s[:-1] for node, s in zip(member_nodes, sets, strict=True)}


def _leaves_of(root: int, x: np.ndarray, modes, feature, splits, members, tracks, ids, leafs, n_leaves: int
               ) -> np.ndarray:
    """The leaf index each row of ``x`` reaches in the tree rooted at node ``root``."""
    rows = x.shape[0]
    n = modes.size
    if not 0 <= root < n:
        raise KernelError(f"TreeEnsemble: tree root {root} is outside [0, {n})")
    if leafs[0][root] and leafs[1][root] and ids[0][root] == ids[1][root]:
        return np.full(rows, ids[0][root], np.int64)  # a tree that is a single leaf
    current = np.full(rows, root, np.int64)
    leaf = np.full(rows, -1, np.int64)
    active = np.arange(rows)
    for _ in range(n + 1):  # every path visits each node at most once
        if active.size == 0:
            return leaf
        node = current[active]
        v = x[active, feature[node]].astype(np.float64)
        s = splits[node]
        m = modes[node]
        go_true = np.select([m == LEQ, m == LT, m == GTE, m == GT, m == EQ, m == NEQ],
                            [v <= s, v < s, v >= s, v > s, v == s, v != s], default=False)
        for member in np.unique(node[m == MEMBER]).tolist():
            at = node == member
            go_true[at] = np.isin(v[at], members[member])
        if ((m < LEQ) | (m > MEMBER)).any():
            raise KernelError(f"TreeEnsemble: node mode {int(m[(m < LEQ) | (m > MEMBER)][0])} is not 0..6")
        go_true |= tracks[node] & np.isnan(v)
        nxt = np.where(go_true, ids[0][node], ids[1][node])
        is_leaf = np.where(go_true, leafs[0][node], leafs[1][node])
        bad = nxt[is_leaf][(nxt[is_leaf] < 0) | (nxt[is_leaf] >= n_leaves)]
        if bad.size or ((nxt[~is_leaf] < 0) | (nxt[~is_leaf] >= n)).any():
            raise KernelError("TreeEnsemble: a node branches to a node or leaf index out of range")
        leaf[active[is_leaf]] = nxt[is_leaf]
        current[active[~is_leaf]] = nxt[~is_leaf]
        active = active[~is_leaf]
    raise KernelError(f"TreeEnsemble: the tree rooted at node {root} has a cycle")


def _aggregate(how: int, leaves: np.ndarray, weights, target_ids, rows: int, n_targets: int, n_trees: int
               ) -> np.ndarray:
    """Per row and target: the SUM/AVERAGE/MIN/MAX of the weights of the leaves reached for that target."""
    w, t = weights[leaves], target_ids[leaves]  # [rows, trees]
    row = np.repeat(np.arange(rows), leaves.shape[1])
    scores = np.zeros((rows, n_targets), np.float64)
    if how in (SUM, AVERAGE):
        np.add.at(scores, (row, t.reshape(-1)), w.reshape(-1))
        return scores / n_trees if how == AVERAGE and n_trees else scores
    if how not in (MIN, MAX):
        raise KernelError(f"TreeEnsemble: aggregate_function {how} is not 0..3")
    extreme = np.full((rows, n_targets), np.inf if how == MIN else -np.inf)
    (np.minimum if how == MIN else np.maximum).at(extreme, (row, t.reshape(-1)), w.reshape(-1))
    return np.where(np.isinf(extreme), 0.0, extreme)  # a target no leaf reached stays 0


def _post_transform(how: int, s: np.ndarray) -> np.ndarray:
    if how == NONE:
        return s
    if how == LOGISTIC:
        return 1.0 / (1.0 + np.exp(-s))
    if how in (SOFTMAX, SOFTMAX_ZERO):
        keep = np.ones_like(s, bool) if how == SOFTMAX else s != 0  # SOFTMAX_ZERO: zero scores stay 0
        top = np.max(np.where(keep, s, -np.inf), axis=1, keepdims=True) if s.size else s
        e = np.where(keep, np.exp(s - np.where(np.isfinite(top), top, 0.0)), 0.0)
        total = e.sum(axis=1, keepdims=True)
        return np.divide(e, total, out=np.zeros_like(e), where=total > 0)
    if how == PROBIT:
        return math.sqrt(2.0) * _erfinv(2.0 * s - 1.0)
    raise KernelError(f"TreeEnsemble: post_transform {how} is not 0..4")


def _erfinv(y: np.ndarray) -> np.ndarray:
    """Inverse error function: Winitzki's approximation refined by Newton steps on math.erf."""
    y = np.asarray(y, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ln = np.log((1.0 - y) * (1.0 + y))
        a = 0.147
        t = 2.0 / (math.pi * a) + ln / 2.0
        x = np.sign(y) * np.sqrt(np.sqrt(t * t - ln / a) - t)
        erf = np.vectorize(math.erf, otypes=[np.float64])
        for _ in range(3):
            step = (erf(x) - y) / (2.0 / math.sqrt(math.pi) * np.exp(-x * x))
            x = np.where(np.isfinite(x) & np.isfinite(step), x - step, x)
    return x
