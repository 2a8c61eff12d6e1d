"""Loss kernels: NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss (weights, ignore_index, reductions)."""

from __future__ import annotations

import numpy as np

from ._registry import Attrs, Inputs, KernelError, Tiling, arg, choice, kernel, need, wide


def nll(logp: np.ndarray, target: np.ndarray, weight: np.ndarray | None, attrs: Attrs) -> np.ndarray:
    """-logp[n, target[n, d...], d...] weighted and reduced; ignored targets weigh 0 and count for nothing."""
    reduction = choice(attrs, "reduction", "mean", ("none", "sum", "mean"))
    ignore = attrs.get("ignore_index")
    if logp.ndim < 2 or target.shape != (logp.shape[0], *logp.shape[2:]):
        raise KernelError(f"input {logp.shape} and target {target.shape} must be (N, C, d...) and (N, d...)")
    t = target.astype(np.int64)
    ignored = t == int(ignore) if ignore is not None else np.zeros(t.shape, dtype=bool)
    safe = np.where(ignored, 0, t)
    if safe.size and (safe.min() < 0 or safe.max() >= logp.shape[1]):
        raise KernelError(f"target values must be in [0, {logp.shape[1]}) or ignore_index")
    loss = -np.take_along_axis(logp, safe[:, None], axis=1)[:, 0]
    w = wide(weight).astype(loss.dtype)[safe] if weight is not None else np.ones(t.shape, loss.dtype)
    w = np.where(ignored, 0, w).astype(loss.dtype)
    loss = loss * w
    if reduction == "none":
        return loss
    if reduction == "sum":
        return np.asarray(loss.sum())
    with np.errstate(all="ignore"):
        return np.asarray(loss.sum() / w.sum())  # weighted mean: ignored entries count for nothing


@kernel("NegativeLogLikelihoodLoss")
def _nll_loss(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x, target, weight = need(inputs, 0, "input"), need(inputs, 1, "target"), arg(inputs, 2)
    return [nll(wide(x), target, weight, attrs).astype(x.dtype)]


@kernel("SoftmaxCrossEntropyLoss")
def _softmax_cross_entropy(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x, target, weight = need(inputs, 0, "scores"), need(inputs, 1, "labels"), arg(inputs, 2)
    xf = wide(x)
    if xf.ndim < 2:
        raise KernelError(f"scores must be (N, C, d...), got {x.shape}")
    shifted = xf - np.max(xf, axis=1, keepdims=True)
    logp = shifted - np.log(np.sum(np.exp(shifted), axis=1, keepdims=True))
    return [nll(logp, target, weight, attrs).astype(x.dtype), logp.astype(x.dtype)]
