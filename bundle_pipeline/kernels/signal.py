"""Signal kernels: DFT (opsets 17, 20), STFT, Hann/Hamming/Blackman windows, MelWeightMatrix."""

from __future__ import annotations

import numpy as np

from ._registry import Attrs, Inputs, KernelError, Tiling, arg, kernel, need, norm_axis, onnx_dtype, scalar


def _complex(x: np.ndarray) -> np.ndarray:
    """[..., 1] real or [..., 2] (real, imag) -> complex [...]: complex128 for float64, else complex64 (numpy's
    FFT keeps single precision, as onnx's expected values are computed)."""
    ctype = np.complex128 if x.dtype == np.float64 else np.complex64
    if x.shape[-1] == 1:
        return x[..., 0].astype(ctype)
    if x.shape[-1] == 2:
        z = np.empty(x.shape[:-1], ctype)
        z.real, z.imag = x[..., 0], x[..., 1]
        return z
    raise KernelError(f"signal must end in a dimension of 1 (real) or 2 (complex), got {x.shape}")


def _pair(z: np.ndarray) -> np.ndarray:
    return np.stack([z.real, z.imag], axis=-1)


def dft(x: np.ndarray, length: int, axis: int, inverse: bool, onesided: bool) -> np.ndarray:
    """The (inverse) DFT of ``x`` along ``axis`` (an axis of the complex signal), as [..., 2] (or [..., 1])."""
    z = _complex(x)
    if inverse:
        if onesided:
            return np.fft.irfft(z, n=length, axis=axis)[..., None]  # one-sided spectrum -> real signal
        return _pair(np.fft.ifft(z, n=length, axis=axis))
    y = np.fft.fft(z, n=length, axis=axis)
    if onesided:
        y = np.take(y, np.arange(length // 2 + 1), axis=axis)
    return _pair(y)


@kernel("DFT")
def _dft(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x, length_in = need(inputs, 0, "input"), arg(inputs, 1)
    if opset >= 20:
        axis_in = arg(inputs, 2)
        axis = int(scalar(axis_in)) if axis_in is not None else -2
    else:
        axis = int(attrs.get("axis", 1))
    axis = norm_axis(axis, x.ndim)
    if axis == x.ndim - 1:
        raise KernelError("DFT: the last axis holds (real, imag); choose another axis")
    inverse, onesided = bool(int(attrs.get("inverse", 0))), bool(int(attrs.get("onesided", 0)))
    if length_in is not None:
        length = int(scalar(length_in))
    else:
        length = 2 * (x.shape[axis] - 1) if inverse and onesided else x.shape[axis]
    return [dft(x, length, axis, inverse, onesided).astype(x.dtype)]


@kernel("STFT")
def _stft(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x, step_in, window, length_in = need(inputs, 0, "signal"), need(inputs, 1, "frame_step"), arg(inputs, 2), arg(
        inputs, 3)
    if x.ndim == 2:  # [batch, length]: a real signal, as onnxruntime reads it (the spec wants [batch, length, 1])
        x = x[..., None]
    if x.ndim != 3:
        raise KernelError(f"STFT signal must be [batch, length], [batch, length, 1] or [batch, length, 2], "
                          f"got {x.shape}")
    step = int(scalar(step_in))
    frame = window.shape[0] if window is not None else x.shape[1]
    if length_in is not None:
        frame = int(scalar(length_in))
    win = np.ones(frame, x.dtype) if window is None else window
    if step < 1 or win.shape != (frame,) or frame > x.shape[1]:
        raise KernelError(f"STFT: frame_step={step}, window {win.shape}, frame_length={frame} do not fit {x.shape}")
    frames = 1 + (x.shape[1] - frame) // step
    starts = np.arange(frames) * step
    framed = x[:, starts[:, None] + np.arange(frame)[None, :]]  # [batch, frames, frame, 1 or 2]
    weighted = framed * win[None, None, :, None]
    onesided = bool(int(attrs.get("onesided", 1)))
    return [dft(weighted, frame, 2, False, onesided).astype(x.dtype)]


def _window(inputs: Inputs, attrs: Attrs, formula) -> list[np.ndarray]:
    size = int(scalar(need(inputs, 0, "size")))
    if size < 0:
        raise KernelError(f"window size {size} must be >= 0")
    periodic = int(attrs.get("periodic", 1))
    n = np.arange(size, dtype=np.float64)
    denom = size if periodic else size - 1
    with np.errstate(all="ignore"):
        y = formula(2 * np.pi * n / denom)
    return [y.astype(onnx_dtype(int(attrs.get("output_datatype", 1)), "output_datatype"))]


@kernel("HannWindow")
def _hann(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    return _window(inputs, attrs, lambda t: np.sin(t / 2) ** 2)


@kernel("HammingWindow")
def _hamming(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    return _window(inputs, attrs, lambda t: 25.0 / 46.0 - (1 - 25.0 / 46.0) * np.cos(t))


@kernel("BlackmanWindow")
def _blackman(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    return _window(inputs, attrs, lambda t: 0.42 - 0.5 * np.cos(t) + 0.08 * np.cos(2 * t))


@kernel("MelWeightMatrix")
def _mel_weight_matrix(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    bins, length, rate, low, high = (scalar(need(inputs, i, n)) for i, n in enumerate(
        ("num_mel_bins", "dft_length", "sample_rate", "lower_edge_hertz", "upper_edge_hertz")))
    bins, length, rate = int(bins), int(length), int(rate)
    spectrogram_bins = length // 2 + 1

    def to_mel(hz: float) -> float:
        return 2595 * np.log1p(hz / 700) / np.log(10)

    # num_mel_bins + 2 edges evenly spaced in mel, mapped back to DFT bins (floor).
    step = (to_mel(high) - to_mel(low)) / (bins + 2)
    mel = np.arange(bins + 2) * step + to_mel(low)
    edges = (((length + 1) * (700 * np.expm1(mel / 2595 * np.log(10)))) // rate).astype(np.int64)
    out = np.zeros((spectrogram_bins, bins))
    for i in range(bins):
        lo, mid, hi = edges[i], edges[i + 1], edges[i + 2]
        if mid == lo:
            out[mid, i] = 1
        else:
            out[lo : mid + 1, i] = (np.arange(lo, mid + 1) - lo) / (mid - lo)
        if hi > mid:
            out[mid:hi, i] = (hi - np.arange(mid, hi)) / (hi - mid)
    return [out.astype(onnx_dtype(int(attrs.get("output_datatype", 1)), "output_datatype"))]
