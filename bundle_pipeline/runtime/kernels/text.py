"""Text kernels: TfIdfVectorizer (int and string n-grams) and RegexFullMatch (string in, bool out)."""

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
