"""Attention (opsets 23-25: masks, causal, GQA, KV cache, softcap, sliding windows), RotaryEmbedding,
LinearAttention and CausalConvWithState (recurrent state in and out)."""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ._registry import Attrs, Inputs, KernelError, Tiling, arg, kernel, need, onnx_dtype, wide


def _heads(x: np.ndarray, heads: int | None, name: str) -> np.ndarray:
    """(batch, seq, heads*size) -> (batch, heads, seq, size)."""
    if heads is None or heads < 1 or x.shape[2] % heads:
        raise KernelError(f"3-D {name} {x.shape} needs q_num_heads/kv_num_heads dividing its hidden size")
    return x.reshape(x.shape[0], x.shape[1], heads, -1).transpose(0, 2, 1, 3)


def _additive(mask: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """A boolean mask (True = attend) as an additive bias: 0 or -inf."""
    if mask.dtype == np.bool_:
        return np.where(mask, dtype.type(0), dtype.type(-np.inf))
    return mask.astype(dtype)


def _frontier(q_len: int, kv_len: int, offset: np.ndarray | int) -> np.ndarray:
    """diff[..., i, j] = (i + offset) - j: a scalar offset gives (q, kv), a per-batch one (batch, 1, q, kv)."""
    i = np.arange(q_len).reshape(q_len, 1)
    j = np.arange(kv_len).reshape(1, kv_len)
    if np.ndim(offset):
        return (i + np.reshape(offset, (-1, 1, 1)) - j)[:, None]
    return i + int(offset) - j


@kernel("Attention")
def _attention(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    q, k, v = need(inputs, 0, "Q"), need(inputs, 1, "K"), need(inputs, 2, "V")
    mask, past_k, past_v, nonpad = (arg(inputs, i) for i in range(3, 7))
    if not q.ndim == k.ndim == v.ndim or q.ndim not in (3, 4):
        raise KernelError(f"Q {q.shape}, K {k.shape}, V {v.shape} must all be 3-D or all 4-D")
    if (past_k is None) != (past_v is None):
        raise KernelError("past_key and past_value must be given together")
    dtype = q.dtype
    cd = q.dtype  # float16 stays float16, as the reference computes it
    rank3 = q.ndim == 3
    qh, kvh = attrs.get("q_num_heads"), attrs.get("kv_num_heads")
    if rank3:
        q, k, v = _heads(q, qh, "Q"), _heads(k, kvh, "K"), _heads(v, kvh, "V")
    # The KV cache: present = past ++ new along the sequence axis.
    present_k = np.concatenate([past_k, k], axis=2) if past_k is not None else k
    present_v = np.concatenate([past_v, v], axis=2) if past_v is not None else v
    q_len, kv_len = q.shape[2], present_k.shape[2]
    scale = float(attrs["scale"]) if "scale" in attrs else 1.0 / math.sqrt(q.shape[3])
    root = dtype.type(math.sqrt(scale))  # Q and K are each scaled by sqrt(scale), in the input type

    bias = np.zeros((q_len, kv_len), dtype=cd)
    if mask is not None and mask.shape[-1] < kv_len:  # a short mask leaves the extra keys masked out
        pad = [(0, 0)] * (mask.ndim - 1) + [(0, kv_len - mask.shape[-1])]
        mask = np.pad(mask, pad, constant_values=False if mask.dtype == np.bool_ else -np.inf)
    left, right = int(attrs.get("left_window_size", -1)), int(attrs.get("right_window_size", -1))
    # Bottom-right aligned frontier: keys before this query block (cache length, or per batch from nonpad).
    if past_k is None and nonpad is not None:
        offset: np.ndarray | int = np.asarray(nonpad, np.int64).reshape(-1) - q_len
    else:
        offset = past_k.shape[2] if past_k is not None else 0
    if int(attrs.get("is_causal", 0)):
        base = bias if mask is None else _additive(mask, cd)
        if left >= 0 or right >= 0:
            base = bias + base
        bias = base + np.where(_frontier(q_len, kv_len, offset) >= 0, cd.type(0), cd.type(-np.inf))
    elif mask is not None:
        bias = bias + _additive(mask, cd)
    if left >= 0 or right >= 0:
        diff = _frontier(q_len, kv_len, offset)
        allowed = np.ones(diff.shape, dtype=bool)
        if left >= 0:
            allowed &= diff <= left
        if right >= 0:
            allowed &= -diff <= right
        bias = np.zeros((q_len, kv_len), cd) + bias + np.where(allowed, cd.type(0), cd.type(-np.inf))
    if nonpad is not None:
        keep = np.arange(kv_len) < np.asarray(nonpad, np.int64).reshape(-1, 1)
        bias = bias + np.where(keep, cd.type(0), cd.type(-np.inf)).reshape(-1, 1, 1, kv_len)

    kk, vv = present_k, present_v
    if q.shape[1] != kk.shape[1]:  # grouped-query attention: each KV head serves q_heads / kv_heads queries
        if q.shape[1] % kk.shape[1] or kk.shape[1] != vv.shape[1]:
            raise KernelError(f"{q.shape[1]} query heads cannot share {kk.shape[1]} KV heads")
        reps = q.shape[1] // kk.shape[1]
        kk, vv = np.repeat(kk, reps, axis=1), np.repeat(vv, reps, axis=1)
    # numpy's matmul of bfloat16 returns float32: round back to the input type, as the reference does
    qk = np.matmul(q * root, np.swapaxes(kk * root, -1, -2)).astype(cd, copy=False)
    softcap = float(attrs.get("softcap", 0.0))
    if softcap > 0:
        qk = np.tanh(qk / softcap) * softcap  # before the mask, so masked keys stay -inf
    with np.errstate(all="ignore"):
        logits = qk + bias
    mode = int(attrs.get("qk_matmul_output_mode", 0))
    if "softmax_precision" in attrs:
        logits = logits.astype(wide(np.zeros(0, onnx_dtype(attrs["softmax_precision"]))).dtype)
    top = np.max(logits, axis=-1, keepdims=True)
    with np.errstate(all="ignore"):
        e = np.exp(logits - np.where(np.isneginf(top), 0, top))
        s = np.sum(e, axis=-1, keepdims=True)
        probs = e / np.where(s == 0, 1, s)
    # A query whose bias masks every key attends nothing: its row is 0 (decided on the bias, not the logits).
    probs = np.where(np.isneginf(np.max(bias, axis=-1, keepdims=True)), 0, probs)
    qk_out = {0: qk, 1: qk, 2: logits, 3: probs}.get(mode)
    if qk_out is None:
        raise KernelError(f"attribute qk_matmul_output_mode={mode} must be 0..3")
    y = np.matmul(probs.astype(dtype), vv).astype(dtype, copy=False)
    if rank3:
        y = y.transpose(0, 2, 1, 3).reshape(y.shape[0], y.shape[2], -1)
    return [y.astype(dtype), present_k, present_v, np.broadcast_to(qk_out, probs.shape).astype(dtype)]


@kernel("RotaryEmbedding")
def _rotary_embedding(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x, cos, sin, pos = need(inputs, 0, "X"), need(inputs, 1, "cos_cache"), need(inputs, 2, "sin_cache"), arg(
        inputs, 3)
    if x.ndim == 4:
        xs = x.transpose(0, 2, 1, 3)  # (batch, heads, seq, size) -> (batch, seq, heads, size)
    elif x.ndim == 3:
        heads = int(attrs.get("num_heads", 0))
        if heads < 1 or x.shape[2] % heads:
            raise KernelError(f"3-D input {x.shape} needs num_heads dividing its hidden size")
        xs = x.reshape(x.shape[0], x.shape[1], heads, -1)
    else:
        raise KernelError(f"RotaryEmbedding input must be 3-D or 4-D, got {x.shape}")
    dim = int(attrs.get("rotary_embedding_dim", 0)) or xs.shape[3]
    if pos is not None:
        cos, sin = cos[pos.astype(np.int64)], sin[pos.astype(np.int64)]  # -> (batch, seq, dim/2)
    if cos.shape[-1] != dim // 2 or sin.shape[-1] != dim // 2:
        raise KernelError(f"cos/sin caches {cos.shape}/{sin.shape} must end in rotary_embedding_dim/2 = {dim // 2}")
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    rot, rest = xs[..., :dim], xs[..., dim:]
    interleaved = int(attrs.get("interleaved", 0))
    x1, x2 = (rot[..., 0::2], rot[..., 1::2]) if interleaved else np.split(rot, 2, axis=-1)
    real, imag = cos * x1 - sin * x2, sin * x1 + cos * x2
    rotated = np.stack([real, imag], axis=-1).reshape(rot.shape) if interleaved else np.concatenate(
        [real, imag], axis=-1)
    out = np.concatenate([rotated, rest], axis=-1).astype(x.dtype)
    return [out.reshape(x.shape) if x.ndim == 3 else out.transpose(0, 2, 1, 3)]


def _split_heads(x: np.ndarray, heads: int) -> np.ndarray:
    if x.ndim != 3 or x.shape[2] % heads:
        raise KernelError(f"expected (batch, seq, heads*size) with {heads} heads, got {x.shape}")
    return x.reshape(x.shape[0], x.shape[1], heads, -1).transpose(0, 2, 1, 3)


@kernel("LinearAttention")
def _linear_attention(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    q, k, v = need(inputs, 0, "query"), need(inputs, 1, "key"), need(inputs, 2, "value")
    past, decay, beta = arg(inputs, 3), arg(inputs, 4), arg(inputs, 5)
    rule = attrs.get("update_rule", "gated_delta")
    if rule not in ("linear", "gated", "delta", "gated_delta"):
        raise KernelError(f"attribute update_rule={rule!r} is not one of linear, gated, delta, gated_delta")
    qh, kvh = int(attrs.get("q_num_heads", 0)), int(attrs.get("kv_num_heads", 0))
    if qh < 1 or kvh < 1 or qh % kvh:
        raise KernelError(f"q_num_heads={qh} must be a positive multiple of kv_num_heads={kvh}")
    gating, delta = rule in ("gated", "gated_delta"), rule in ("delta", "gated_delta")
    if gating != (decay is not None) or delta != (beta is not None):
        raise KernelError(f"update_rule {rule!r}: decay is {'required' if gating else 'forbidden'}, beta is "
                          f"{'required' if delta else 'forbidden'}")
    b, t = q.shape[:2]
    # The recurrence runs in float32 whatever the activations' type.
    q4, k4, v4 = (_split_heads(a, h).astype(np.float32) for a, h in ((q, qh), (k, kvh), (v, kvh)))
    dk, dv = q4.shape[3], v4.shape[3]
    if decay is not None:
        if decay.shape[-1] == kvh:
            decay4 = decay.reshape(b, t, kvh, 1).transpose(0, 2, 1, 3)
        elif decay.shape[-1] == kvh * dk:
            decay4 = _split_heads(decay, kvh)
        else:
            raise KernelError(f"decay {decay.shape} must end in kv_num_heads or kv_num_heads*d_k")
        decay4 = decay4.astype(np.float32)
    if beta is not None:
        if beta.ndim != 3 or beta.shape[-1] not in (kvh, 1):
            raise KernelError(f"beta {beta.shape} must be (batch, seq, kv_num_heads or 1)")
        beta4 = beta.reshape(b, t, beta.shape[-1], 1).transpose(0, 2, 1, 3).astype(np.float32)
    if past is not None:
        if past.shape != (b, kvh, dk, dv):
            raise KernelError(f"past_state {past.shape} must be {(b, kvh, dk, dv)}")
        state, state_dtype = past.astype(np.float32), past.dtype
    else:
        state, state_dtype = np.zeros((b, kvh, dk, dv), np.float32), q.dtype
    scale = float(attrs.get("scale", 0.0)) or 1.0 / math.sqrt(dk)
    out = np.zeros((b, qh, t, dv), np.float32)
    for i in range(t):
        kt, vt = k4[:, :, i], v4[:, :, i]
        if gating:
            state = state * np.exp(decay4[:, :, i])[..., None]
        if delta:
            vt = beta4[:, :, i] * (vt - np.einsum("bhdm,bhd->bhm", state, kt))
        state = state + kt[..., :, None] * vt[..., None, :]
        read = np.repeat(state, qh // kvh, axis=1) if qh != kvh else state
        out[:, :, i] = scale * np.einsum("bhd,bhdm->bhm", q4[:, :, i], read)
    y = out.transpose(0, 2, 1, 3).reshape(b, t, qh * dv)
    return [y.astype(q.dtype), state.astype(state_dtype)]


@kernel("CausalConvWithState")
def _causal_conv_with_state(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x, w, bias, past = need(inputs, 0, "input"), need(inputs, 1, "weight"), arg(inputs, 2), arg(inputs, 3)
    act = attrs.get("activation", "none")
    if act not in ("none", "silu", "swish"):
        raise KernelError(f"attribute activation={act!r} is not one of none, silu, swish")
    if x.ndim != 3 or w.ndim != 3 or w.shape[:2] != (x.shape[1], 1):
        raise KernelError(f"input {x.shape} must be (batch, channels, length), weight {w.shape} (channels, 1, k)")
    k = w.shape[2]
    pad = np.zeros((*x.shape[:2], k - 1), x.dtype) if past is None else past.astype(x.dtype)
    padded = np.concatenate([pad, x], axis=2)
    # Depthwise causal conv: every channel convolves its own left-padded sequence.
    win = sliding_window_view(wide(padded), k, axis=2)  # (batch, channels, length, k)
    y = np.einsum("bclk,ck->bcl", win, wide(w)[:, 0, :])
    if bias is not None:
        y = y + wide(bias).reshape(1, -1, 1)
    y = y.astype(x.dtype)
    if act != "none":
        yf = y.astype(np.float32)
        y = (yf / (1.0 + np.exp(-yf))).astype(x.dtype)
    return [y, padded[:, :, padded.shape[2] - (k - 1):]]
