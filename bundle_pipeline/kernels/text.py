"""Text kernels: TfIdfVectorizer (int and string n-grams), RegexFullMatch and the String* ops."""

from __future__ import annotations

import re

import numpy as np

from ._registry import Attrs, Inputs, KernelError, Tiling, choice, int_list, kernel, need


def _ngram_table(attrs: Attrs) -> dict[tuple, int]:
    """n-gram (tuple of tokens) -> output column, from the pool laid out by ngram_counts (size 1, 2, ...)."""
    pool = list(attrs.get("pool_int64s") or attrs.get("pool_strings") or [])
    counts = int_list(attrs.get("ngram_counts", []))
    indexes = int_list(attrs.get("ngram_indexes", []))
    table: dict[tuple, int] = {}
    k = 0  # global n-gram number: ngram_indexes[k] is its output column
    for size, start in enumerate(counts, start=1):
        end = counts[size] if size < len(counts) else len(pool)
        for pos in range(start, end, size):
            if k >= len(indexes):
                raise KernelError("TfIdfVectorizer: fewer ngram_indexes than n-grams in the pool")
            table[tuple(pool[pos : pos + size])] = indexes[k]
            k += 1
    return table


@kernel("TfIdfVectorizer")
def _tfidf_vectorizer(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x = need(inputs, 0, "X")
    mode = choice(attrs, "mode", "TF", ("TF", "IDF", "TFIDF"))
    lo, hi = int(attrs.get("min_gram_length", 1)), int(attrs.get("max_gram_length", 1))
    skips = int(attrs.get("max_skip_count", 0))
    table = _ngram_table(attrs)
    width = max(table.values(), default=-1) + 1
    if x.ndim not in (1, 2) or lo < 1 or hi < lo:
        raise KernelError(f"TfIdfVectorizer: input {x.shape} must be 1-D or 2-D, gram lengths 1 <= min <= max")
    rows = x.reshape(1, -1) if x.ndim == 1 else x
    counts = np.zeros((rows.shape[0], width), np.float64)
    for r, row in enumerate(rows.tolist()):
        for size in range(lo, hi + 1):
            # Unigrams are counted once; longer n-grams once per skip distance 1 .. max_skip_count + 1.
            for step in range(1, (skips if size > 1 else 0) + 2):
                for start in range(len(row) - (size - 1) * step):
                    column = table.get(tuple(row[start : start + (size - 1) * step + 1 : step]))
                    if column is not None:
                        counts[r, column] += 1
    weights = np.asarray(attrs.get("weights", []), np.float64)
    if mode == "IDF":
        out = (counts > 0) * (weights[:width] if weights.size else 1.0)
    elif mode == "TFIDF" and weights.size:
        out = counts * weights[:width]
    else:
        out = counts
    out = out.astype(np.float32)
    return [out[0] if x.ndim == 1 else out]


@kernel("RegexFullMatch")
def _regex_full_match(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x = need(inputs, 0, "X")
    if x.dtype.kind not in "OU":
        raise KernelError(f"RegexFullMatch takes strings, got {x.dtype}")
    try:
        regex = re.compile(str(attrs.get("pattern", "")))  # RE2 syntax is (nearly) a subset of Python's
    except re.error as err:
        raise KernelError(f"attribute pattern is not a valid regular expression: {err}") from None
    return [np.array([regex.fullmatch(str(s)) is not None for s in x.reshape(-1)], dtype=bool).reshape(x.shape)]


def _strings(x: np.ndarray, op: str) -> np.ndarray:
    if x.dtype.kind not in "OU":
        raise KernelError(f"{op} takes strings, got {x.dtype}")
    return x.astype(object)


@kernel("StringConcat")
def _string_concat(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x, y = _strings(need(inputs, 0, "X"), "StringConcat"), _strings(need(inputs, 1, "Y"), "StringConcat")
    try:
        a, b = np.broadcast_arrays(x, y)
    except ValueError:
        raise KernelError(f"StringConcat: shapes {list(x.shape)} and {list(y.shape)} do not broadcast") from None
    return [np.array([str(p) + str(q) for p, q in zip(a.reshape(-1), b.reshape(-1), strict=True)],
                     dtype=object).reshape(a.shape)]


@kernel("StringSplit")
def _string_split(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    """Y: X.shape + [most pieces], short rows padded with ""; Z: the piece count of each string.
    No (or an empty) delimiter splits on runs of whitespace, as Python's ``str.split()``."""
    x = _strings(need(inputs, 0, "X"), "StringSplit")
    delimiter = attrs.get("delimiter") or None
    maxsplit = int(attrs.get("maxsplit", -1))
    pieces = [str(s).split(delimiter, maxsplit) for s in x.reshape(-1)]
    width = max((len(p) for p in pieces), default=0)
    y = np.array([p + [""] * (width - len(p)) for p in pieces], dtype=object).reshape(*x.shape, width)
    return [y, np.array([len(p) for p in pieces], dtype=np.int64).reshape(x.shape)]


@kernel("StringNormalizer")
def _string_normalizer(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    """Drop the elements that are stopwords (compared case-insensitively unless is_case_sensitive), then
    change case. Input [C] or [1, C]; when every element is dropped the output holds one empty string."""
    x = _strings(need(inputs, 0, "X"), "StringNormalizer")
    if x.ndim not in (1, 2) or (x.ndim == 2 and x.shape[0] != 1):
        raise KernelError(f"StringNormalizer: input must be [C] or [1, C], got {list(x.shape)}")
    action = choice(attrs, "case_change_action", "NONE", ("NONE", "LOWER", "UPPER"))
    sensitive = bool(attrs.get("is_case_sensitive", 0))
    stops = {w if sensitive else w.lower() for w in attrs.get("stopwords", [])}
    kept = [str(s) for s in x.reshape(-1) if (str(s) if sensitive else str(s).lower()) not in stops]
    changed = [s.lower() if action == "LOWER" else s.upper() if action == "UPPER" else s for s in kept] or [""]
    out = np.array(changed, dtype=object)
    return [out.reshape(1, -1) if x.ndim == 2 else out]
