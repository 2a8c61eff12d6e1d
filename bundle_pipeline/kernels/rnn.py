"""LSTM, GRU, RNN: forward/reverse/bidirectional, sequence_lens, peepholes, custom activations, clip, layouts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ._registry import Attrs, Inputs, KernelError, Tiling, arg, choice, kernel, need, wide
from .elementwise import sigmoid

Act = Callable[[np.ndarray], np.ndarray]

# name -> (number of parameters consumed from activation_alpha/beta, defaults, factory)
_ACTS: dict[str, tuple[int, int, tuple[float, float], Callable[[float, float], Act]]] = {
    "relu": (0, 0, (0.0, 0.0), lambda a, b: lambda x: np.maximum(x, 0)),
    "tanh": (0, 0, (0.0, 0.0), lambda a, b: np.tanh),
    "sigmoid": (0, 0, (0.0, 0.0), lambda a, b: sigmoid),
    "affine": (1, 1, (1.0, 0.0), lambda a, b: lambda x: a * x + b),
    "leakyrelu": (1, 0, (0.01, 0.0), lambda a, b: lambda x: np.where(x >= 0, x, a * x)),
    "thresholdedrelu": (1, 0, (1.0, 0.0), lambda a, b: lambda x: np.where(x > a, x, 0)),
    "scaledtanh": (1, 1, (1.0, 1.0), lambda a, b: lambda x: a * np.tanh(b * x)),
    "hardsigmoid": (1, 1, (0.2, 0.5), lambda a, b: lambda x: np.clip(a * x + b, 0, 1)),
    "elu": (1, 0, (1.0, 0.0), lambda a, b: lambda x: np.where(x >= 0, x, a * np.expm1(x))),
    "softsign": (0, 0, (0.0, 0.0), lambda a, b: lambda x: x / (1 + np.abs(x))),
    "softplus": (0, 0, (0.0, 0.0), lambda a, b: lambda x: np.logaddexp(0, x)),
}


def _activations(attrs: Attrs, num_dirs: int, defaults: tuple[str, ...] = ("Sigmoid", "Tanh", "Tanh")) -> list:
    """(f, g, h) per direction (GRU: f, g; RNN: f); alpha/beta values are consumed in order by the functions
    that take them."""
    per = len(defaults)
    raw = attrs.get("activations", list(defaults) * num_dirs)
    names = [s.decode() if isinstance(s, bytes) else str(s) for s in raw]
    if len(names) == per and num_dirs == 2:
        names = names * 2
    if len(names) != per * num_dirs:
        raise KernelError(f"attribute activations needs {per * num_dirs} entries, got {len(names)}")
    alphas = list(attrs.get("activation_alpha", []))
    betas = list(attrs.get("activation_beta", []))
    funcs: list[Act] = []
    for name in names:
        key = name.lower()
        if key not in _ACTS:
            raise KernelError(f"attribute activations: unsupported function {name!r}")
        n_a, n_b, (da, db), make = _ACTS[key]
        a = float(alphas.pop(0)) if n_a and alphas else da
        b = float(betas.pop(0)) if n_b and betas else db
        funcs.append(make(a, b))
    return [tuple(funcs[per * d : per * (d + 1)]) for d in range(num_dirs)]


def _run_direction(
    xp: np.ndarray,
    r: np.ndarray,
    p: np.ndarray,
    h: np.ndarray,
    c: np.ndarray,
    valid: np.ndarray,
    acts: tuple[Act, Act, Act],
    clip: float | None,
    input_forget: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps over time; xp holds the input projections (+ biases), valid[t, b] masks padded steps."""
    f_act, g_act, h_act = acts
    p_i, p_o, p_f = np.split(p, 3)
    ys = np.zeros((xp.shape[0], *h.shape), dtype=h.dtype)
    for t in range(xp.shape[0]):
        gates = xp[t] + h @ r.T
        i, o, f, cc = np.split(gates, 4, axis=-1)
        i, f = i + p_i * c, f + p_f * c
        if clip is not None:
            i, f, cc = np.clip(i, -clip, clip), np.clip(f, -clip, clip), np.clip(cc, -clip, clip)
        i = f_act(i)
        f = 1.0 - i if input_forget else f_act(f)
        c_new = f * c + i * g_act(cc)
        o = o + p_o * c_new
        if clip is not None:
            o = np.clip(o, -clip, clip)
        h_new = f_act(o) * h_act(c_new)
        m = valid[t][:, None]
        # Padded steps (t >= sequence_lens[b]) keep the state and emit zeros.
        h, c = np.where(m, h_new, h), np.where(m, c_new, c)
        ys[t] = np.where(m, h_new, 0)
    return ys, h, c


@dataclass(frozen=True)
class _Sequence:
    """What LSTM, GRU and RNN share: direction, layout, the input as [seq, batch, input], sizes."""

    direction: str
    num_dirs: int
    layout: int
    dt: np.dtype
    xs: np.ndarray
    seq: int
    batch: int
    hidden: int
    op: str

    def state(self, v: np.ndarray | None) -> np.ndarray:
        """An initial state as [dirs, batch, hidden] (zeros when omitted)."""
        if v is None:
            return np.zeros((self.num_dirs, self.batch, self.hidden), self.dt)
        v = wide(v).astype(self.dt)
        return v.transpose(1, 0, 2) if self.layout == 1 else v

    def lengths(self, seq_lens: np.ndarray | None) -> np.ndarray:
        lens = np.full(self.batch, self.seq, np.int64) if seq_lens is None else np.asarray(seq_lens, np.int64)
        if lens.shape != (self.batch,) or lens.min(initial=0) < 0 or lens.max(initial=0) > self.seq:
            raise KernelError(f"{self.op}: sequence_lens {lens.tolist()} invalid for seq_length {self.seq}")
        return lens


def _sequence(x: np.ndarray, w: np.ndarray, r: np.ndarray, attrs: Attrs, gates: int, op: str) -> _Sequence:
    direction = choice(attrs, "direction", "forward", ("forward", "reverse", "bidirectional"))
    num_dirs = 2 if direction == "bidirectional" else 1
    layout = int(attrs.get("layout", 0))
    if layout not in (0, 1):
        raise KernelError(f"attribute layout={layout} must be 0 or 1")
    dt = wide(x).dtype
    xs = wide(x).astype(dt, copy=False)
    if layout == 1:
        xs = xs.transpose(1, 0, 2)  # -> [seq, batch, input]
    hidden = int(attrs.get("hidden_size", r.shape[-1]))
    if w.shape[0] != num_dirs or w.shape[1] != gates * hidden or r.shape[1:] != (gates * hidden, hidden):
        raise KernelError(f"{op}: W {w.shape} / R {r.shape} do not match direction and hidden_size={hidden}")
    return _Sequence(direction, num_dirs, layout, dt, xs, xs.shape[0], xs.shape[1], hidden, op)


@kernel("LSTM")
def _lstm(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x, w, r = need(inputs, 0, "X"), need(inputs, 1, "W"), need(inputs, 2, "R")
    b, seq_lens, h0, c0, p = (arg(inputs, i) for i in range(3, 8))
    sq = _sequence(x, w, r, attrs, gates=4, op="LSTM")
    direction, num_dirs, layout, dt, xs = sq.direction, sq.num_dirs, sq.layout, sq.dt, sq.xs
    seq, hidden = sq.seq, sq.hidden
    b = np.zeros((num_dirs, 8 * hidden), dt) if b is None else wide(b).astype(dt)
    p = np.zeros((num_dirs, 3 * hidden), dt) if p is None else wide(p).astype(dt)
    h0, c0 = sq.state(h0), sq.state(c0)
    lens = sq.lengths(seq_lens)
    clip = float(attrs["clip"]) if "clip" in attrs else None
    input_forget = bool(attrs.get("input_forget", 0))
    acts = _activations(attrs, num_dirs)
    steps = np.arange(seq)[:, None]
    valid = steps < lens[None, :]
    # Reverse direction reads each sequence backwards within its own length.
    rev_idx = np.where(valid, lens[None, :] - 1 - steps, steps)
    ys, hs, cs = [], [], []
    for d in range(num_dirs):
        reverse = direction == "reverse" or d == 1
        xd = np.take_along_axis(xs, rev_idx[:, :, None], axis=0) if reverse else xs
        wd, rd = wide(w[d]).astype(dt), wide(r[d]).astype(dt)
        xp = xd @ wd.T + b[d, : 4 * hidden] + b[d, 4 * hidden :]
        y, h, c = _run_direction(xp, rd, p[d], h0[d], c0[d], valid, acts[d], clip, input_forget)
        if reverse:
            y = np.take_along_axis(y, rev_idx[:, :, None], axis=0) * valid[:, :, None]
        ys.append(y)
        hs.append(h)
        cs.append(c)
    y_all = np.stack(ys, axis=1)  # [seq, dirs, batch, hidden]
    y_h, y_c = np.stack(hs), np.stack(cs)
    if layout == 1:
        y_all, y_h, y_c = y_all.transpose(2, 0, 1, 3), y_h.transpose(1, 0, 2), y_c.transpose(1, 0, 2)
    return [a.astype(x.dtype, copy=False) for a in (y_all, y_h, y_c)]


def _gru_or_rnn(inputs: Inputs, attrs: Attrs, gates: int, defaults: tuple[str, ...]) -> list[np.ndarray]:
    """GRU (3 gates: z, r, h) or RNN (1 gate): shared handling of layouts, directions and sequence_lens."""
    x, w, r = need(inputs, 0, "X"), need(inputs, 1, "W"), need(inputs, 2, "R")
    b, seq_lens, h0 = arg(inputs, 3), arg(inputs, 4), arg(inputs, 5)
    sq = _sequence(x, w, r, attrs, gates=gates, op="GRU" if gates == 3 else "RNN")
    direction, num_dirs, layout, dt, xs = sq.direction, sq.num_dirs, sq.layout, sq.dt, sq.xs
    seq, batch, hidden = sq.seq, sq.batch, sq.hidden
    b = np.zeros((num_dirs, 2 * gates * hidden), dt) if b is None else wide(b).astype(dt)
    h0 = sq.state(h0)
    lens = sq.lengths(seq_lens)
    clip = float(attrs["clip"]) if "clip" in attrs else None
    before_reset = bool(int(attrs.get("linear_before_reset", 0)))
    acts = _activations(attrs, num_dirs, defaults)
    steps = np.arange(seq)[:, None]
    valid = steps < lens[None, :]
    rev_idx = np.where(valid, lens[None, :] - 1 - steps, steps)

    def clipped(v: np.ndarray) -> np.ndarray:
        return np.clip(v, -clip, clip) if clip is not None else v

    ys, hs = [], []
    for d in range(num_dirs):
        reverse = direction == "reverse" or d == 1
        xd = np.take_along_axis(xs, rev_idx[:, :, None], axis=0) if reverse else xs
        wd, rd = wide(w[d]).astype(dt), wide(r[d]).astype(dt)
        wb, rb = b[d, : gates * hidden], b[d, gates * hidden :]
        xp = xd @ wd.T + wb  # input projections of every step at once
        h = h0[d]
        y = np.zeros((seq, batch, hidden), dt)
        for t in range(seq):
            if gates == 1:
                h_new = acts[d][0](clipped(xp[t] + h @ rd.T + rb))
            else:
                f_act, g_act = acts[d]
                xz, xr, xh = np.split(xp[t], 3, axis=-1)
                rz, rr, rh = np.split(rd, 3, axis=0)
                bz, br, bh = np.split(rb, 3)
                z = f_act(clipped(xz + h @ rz.T + bz))
                rg = f_act(clipped(xr + h @ rr.T + br))
                pre = xh + rg * (h @ rh.T + bh) if before_reset else xh + (rg * h) @ rh.T + bh
                h_new = (1 - z) * g_act(clipped(pre)) + z * h
            m = valid[t][:, None]
            # Padded steps (t >= sequence_lens[b]) keep the state and emit zeros.
            h = np.where(m, h_new, h)
            y[t] = np.where(m, h_new, 0)
        if reverse:
            y = np.take_along_axis(y, rev_idx[:, :, None], axis=0) * valid[:, :, None]
        ys.append(y)
        hs.append(h)
    y_all, y_h = np.stack(ys, axis=1), np.stack(hs)  # [seq, dirs, batch, hidden], [dirs, batch, hidden]
    if layout == 1:
        y_all, y_h = y_all.transpose(2, 0, 1, 3), y_h.transpose(1, 0, 2)
    return [a.astype(x.dtype, copy=False) for a in (y_all, y_h)]


@kernel("GRU")
def _gru(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    return _gru_or_rnn(inputs, attrs, 3, ("Sigmoid", "Tanh"))


@kernel("RNN")
def _rnn(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    return _gru_or_rnn(inputs, attrs, 1, ("Tanh",))
