"""ai.onnx.preview.training optimizers (opset 1): Adagrad, Adam, Momentum, one update step of every tensor given.

Inputs are ``R`` (learning rate, scalar), ``T`` (update count, int64 scalar), then the optimized tensors
grouped by kind: Adagrad ``X_1..X_n, G_1..G_n, H_1..H_n``; Adam ``X.., G.., V.., H..``; Momentum ``X.., G..,
V..``. Outputs are grouped the same way (Adagrad ``X_new.., H_new..``; Adam ``X_new.., V_new.., H_new..``;
Momentum ``X_new.., V_new..``). Each tensor follows the spec's pseudo code independently (numpy broadcasting);
the arithmetic is done in float64 and each result is rounded once to its input's dtype (float or double).
"""

from __future__ import annotations

import numpy as np

from ._registry import Attrs, Inputs, KernelError, Tiling, choice, kernel, scalar

DOMAIN = "ai.onnx.preview.training"


def _groups(inputs: Inputs, kinds: int, op: str) -> tuple[float, int, list[list[np.ndarray]]]:
    """``R``, ``T`` and the optimized tensors split into ``kinds`` equal groups (X, G, ...)."""
    if len(inputs) < 2 + kinds or (len(inputs) - 2) % kinds:
        raise KernelError(f"{op} takes R, T and {kinds} tensors per optimized variable, got {len(inputs)} inputs")
    if any(x is None for x in inputs):
        raise KernelError(f"{op}: every input is required")
    r, t = float(scalar(inputs[0])), int(scalar(inputs[1]))
    rest = [np.asarray(x) for x in inputs[2:]]
    for x in rest:
        if x.dtype not in (np.float32, np.float64):
            raise KernelError(f"{op}: optimized tensors are float or double, got {x.dtype}")
    n = len(rest) // kinds
    return r, t, [rest[k * n:(k + 1) * n] for k in range(kinds)]


def _wide(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64)


@kernel("Adagrad", domain=DOMAIN)
def _adagrad(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    r, t, (xs, gs, hs) = _groups(inputs, 3, "Adagrad")
    norm = float(attrs.get("norm_coefficient", 0.0))
    decay = float(attrs.get("decay_factor", 0.0))
    eps = float(attrs.get("epsilon", 1e-6))
    rate = r / (1 + t * decay)
    x_new, h_new = [], []
    for x, g, h in zip(xs, gs, hs, strict=True):
        g_reg = norm * _wide(x) + _wide(g)
        h2 = _wide(h) + g_reg * g_reg
        x_new.append((_wide(x) - rate * g_reg / (np.sqrt(h2) + eps)).astype(x.dtype))
        h_new.append(h2.astype(h.dtype))
    return x_new + h_new


@kernel("Adam", domain=DOMAIN)
def _adam(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    r, t, (xs, gs, vs, hs) = _groups(inputs, 4, "Adam")
    alpha = float(attrs.get("alpha", 0.9))
    beta = float(attrs.get("beta", 0.999))
    eps = float(attrs.get("epsilon", 1e-6))
    norm = float(attrs.get("norm_coefficient", 0.0))
    norm_post = float(attrs.get("norm_coefficient_post", 0.0))
    rate = r * np.sqrt(1 - beta**t) / (1 - alpha**t) if t > 0 else r
    x_new, v_new, h_new = [], [], []
    for x, g, v, h in zip(xs, gs, vs, hs, strict=True):
        g_reg = norm * _wide(x) + _wide(g)
        v2 = alpha * _wide(v) + (1 - alpha) * g_reg
        h2 = beta * _wide(h) + (1 - beta) * g_reg * g_reg
        x2 = _wide(x) - rate * v2 / (np.sqrt(h2) + eps)
        x_new.append(((1 - norm_post) * x2).astype(x.dtype))
        v_new.append(v2.astype(v.dtype))
        h_new.append(h2.astype(h.dtype))
    return x_new + v_new + h_new


@kernel("Momentum", domain=DOMAIN)
def _momentum(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    r, t, (xs, gs, vs) = _groups(inputs, 3, "Momentum")
    for name in ("alpha", "beta", "norm_coefficient", "mode"):
        if name not in attrs:
            raise KernelError(f"Momentum: attribute {name!r} is required")
    alpha, beta, norm = float(attrs["alpha"]), float(attrs["beta"]), float(attrs["norm_coefficient"])
    nesterov = choice(attrs, "mode", "standard", ("standard", "nesterov")) == "nesterov"
    beta_adjusted = beta if t > 0 else 1.0
    x_new, v_new = [], []
    for x, g, v in zip(xs, gs, vs, strict=True):
        g_reg = norm * _wide(x) + _wide(g)
        v2 = alpha * _wide(v) + beta_adjusted * g_reg
        step = g_reg + alpha * v2 if nesterov else v2
        x_new.append((_wide(x) - r * step).astype(x.dtype))
        v_new.append(v2.astype(v.dtype))
    return x_new + v_new
