"""Convolution kernels: Conv (im2col, tiled by ``tile_hw``), ConvTranspose and Col2Im (1-D/2-D/3-D)."""

from __future__ import annotations

import itertools
import math

import numpy as np

from ._registry import Attrs, Inputs, KernelError, Tiling, arg, choice, int_list, kernel, need, wide
from ._windows import AUTO_PAD, same_pads, spatial_attr, window_geometry, windows


def _conv_weights(attrs: Attrs, w: np.ndarray, nd: int) -> list[int]:
    ks = int_list(attrs["kernel_shape"]) if "kernel_shape" in attrs else list(w.shape[2:])
    if ks != list(w.shape[2:]) or len(ks) != nd:
        raise KernelError(f"attribute kernel_shape={ks} does not match weights {w.shape}")
    return ks


@kernel("Conv")
def _conv(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x, w, b = need(inputs, 0, "X"), need(inputs, 1, "W"), arg(inputs, 2)
    if x.ndim < 3 or w.ndim != x.ndim:
        raise KernelError(f"Conv: X {x.shape} and W {w.shape} must be N-D with matching rank >= 3")
    nd = x.ndim - 2
    group = int(attrs.get("group", 1))
    n, c = x.shape[:2]
    m = w.shape[0]
    if group < 1 or c % group or m % group or w.shape[1] != c // group:
        raise KernelError(f"Conv: attribute group={group} incompatible with X {x.shape} and W {w.shape}")
    ks = _conv_weights(attrs, w, nd)
    strides, dil, begin, _end, out = window_geometry(list(x.shape[2:]), ks, attrs)
    xf, wf = wide(x), wide(w).astype(wide(x).dtype, copy=False)
    win = windows(xf, begin, out, strides, dil, ks, 0.0)  # (N, C, *out, *ks)
    # Channels next to the kernel axes, so one output position's patch (Cg, *ks) is one im2col row.
    rows = np.moveaxis(win, 1, 1 + nd)  # view (N, *out, C, *ks)
    cg, mg, kk, p = c // group, m // group, math.prod(ks), math.prod(out)
    # Weights as (G, Cg*K, Mg): one im2col row times this gives Mg outputs of its group.
    wmat = wf.reshape(group, mg, cg * kk).transpose(0, 2, 1)
    tile = int((tiling or {}).get("tile_hw", 0) or 0)
    if tile <= 0:
        # Whole im2col at once (one copy), for every image and group: (N, G, P, Cg*K) @ (G, Cg*K, Mg).
        # A tile >= P still loops per image and group below: that bounds the workspace to one image.
        cols = rows.reshape(n, p, group, cg * kk).transpose(0, 2, 1, 3)
        y = np.matmul(cols, wmat).transpose(0, 1, 3, 2).reshape(n, m, p)
    else:
        y = np.empty((n, m, p), dtype=xf.dtype)
        for start in range(0, p, tile):
            pos = np.arange(start, min(start + tile, p))
            coords = np.unravel_index(pos, out)
            for i, g in itertools.product(range(n), range(group)):
                # Gather this chunk's rows only: a contiguous (tile, Cg, *ks) workspace, reshaped for free.
                patch = rows[(i, *coords, slice(g * cg, (g + 1) * cg))]
                cols = patch.reshape(len(pos), cg * kk)
                y[i, g * mg : (g + 1) * mg, start : start + len(pos)] = (cols @ wmat[g]).T
    if b is not None:
        y = y + wide(b).astype(y.dtype, copy=False).reshape(1, m, 1)
    return [y.reshape(n, m, *out).astype(x.dtype, copy=False)]


@kernel("ConvTranspose")
def _conv_transpose(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    # Tiling is ignored: the col2im scatter works on the whole input (documented in run_kernel).
    x, w, b = need(inputs, 0, "X"), need(inputs, 1, "W"), arg(inputs, 2)
    if x.ndim < 3 or w.ndim != x.ndim:
        raise KernelError(f"ConvTranspose: X {x.shape} and W {w.shape} must have matching rank >= 3")
    nd = x.ndim - 2
    group = int(attrs.get("group", 1))
    n, c = x.shape[:2]
    if group < 1 or c % group or w.shape[0] != c:
        raise KernelError(
            f"ConvTranspose: attribute group={group} incompatible with X {x.shape}, W {w.shape}"
        )
    cg, mg = c // group, w.shape[1]
    m = mg * group
    ks = _conv_weights(attrs, w, nd)
    in_shape = list(x.shape[2:])
    strides = spatial_attr(attrs, "strides", nd, 1)
    dil = spatial_attr(attrs, "dilations", nd, 1)
    out_pad = spatial_attr(attrs, "output_padding", nd, 0)
    auto_pad = choice(attrs, "auto_pad", "NOTSET", AUTO_PAD)
    full = [
        s * (i - 1) + op + (k - 1) * d + 1
        for s, i, op, k, d in zip(strides, in_shape, out_pad, ks, dil, strict=True)
    ]
    if "output_shape" in attrs or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        # Pads are derived from the requested output shape (spec: explicit pads are then ignored).
        out = (
            int_list(attrs["output_shape"])
            if "output_shape" in attrs
            else [i * s for i, s in zip(in_shape, strides, strict=True)]
        )
        out = out[-nd:]
        begin = [same_pads(f - o, auto_pad == "SAME_UPPER")[0] for f, o in zip(full, out, strict=True)]
    elif auto_pad == "VALID":
        out, begin = full, [0] * nd
    else:
        pads = spatial_attr(attrs, "pads", 2 * nd, 0)
        begin = pads[:nd]
        out = [f - pb - pe for f, pb, pe in zip(full, pads[:nd], pads[nd:], strict=True)]
    if min(out, default=1) < 1:
        raise KernelError(f"ConvTranspose: output shape {out} is empty")
    xf = wide(x)
    wf = wide(w).astype(xf.dtype, copy=False)
    p_in, kk = math.prod(in_shape), math.prod(ks)
    # cols[n, g, p, mg, k]: each input pixel's contribution to a kernel-sized output patch.
    xm = xf.reshape(n, group, cg, p_in).transpose(0, 1, 3, 2)
    cols = np.matmul(xm, wf.reshape(group, cg, mg * kk)).reshape(n, group, *in_shape, mg, *ks)
    # Scatter-add (col2im) into a buffer shifted so negative begin pads stay in range.
    shift = [max(-pb, 0) for pb in begin]
    size = [max(f, pb + o) + s for f, pb, o, s in zip(full, begin, out, shift, strict=True)]
    buf = np.zeros((n, group, mg, *size), dtype=xf.dtype)
    moved = np.moveaxis(cols, 2 + nd, 2)  # (N, G, Mg, *in, *ks)
    for koff in itertools.product(*[range(k) for k in ks]):
        dst = tuple(
            slice(sh + j * d, sh + j * d + (i - 1) * s + 1, s)
            for sh, j, d, i, s in zip(shift, koff, dil, in_shape, strides, strict=True)
        )
        buf[(Ellipsis, *dst)] += moved[(Ellipsis, *koff)]
    crop = tuple(slice(sh + pb, sh + pb + o) for sh, pb, o in zip(shift, begin, out, strict=True))
    y = buf[(Ellipsis, *crop)].reshape(n, m, *out)
    if b is not None:
        y = y + wide(b).astype(y.dtype, copy=False).reshape(1, m, *([1] * nd))
    return [y.astype(x.dtype, copy=False)]

@kernel("Col2Im")
def _col2im(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x, image, block = need(inputs, 0, "input"), int_list(need(inputs, 1, "image_shape")), int_list(
        need(inputs, 2, "block_shape"))
    nd = len(image)
    if len(block) != nd or x.ndim != 3 or x.shape[1] % math.prod(block):
        raise KernelError(f"Col2Im: input {x.shape}, image_shape {image}, block_shape {block} do not fit")
    dil = spatial_attr(attrs, "dilations", nd, 1)
    pads = spatial_attr(attrs, "pads", 2 * nd, 0)
    strides = spatial_attr(attrs, "strides", nd, 1)
    blocks = [(i + pb + pe - d * (k - 1) - 1) // s + 1 for i, pb, pe, d, k, s in
              zip(image, pads[:nd], pads[nd:], dil, block, strides, strict=True)]
    if math.prod(blocks) != x.shape[2]:
        raise KernelError(f"Col2Im: {x.shape[2]} columns, expected {blocks} sliding blocks")
    n, c = x.shape[0], x.shape[1] // math.prod(block)
    cols = x.reshape(n, c, *block, *blocks)
    buf = np.zeros((n, c, *[i + pb + pe for i, pb, pe in zip(image, pads[:nd], pads[nd:], strict=True)]),
                   dtype=x.dtype)
    for koff in itertools.product(*[range(k) for k in block]):
        dst = tuple(slice(j * d, j * d + (b - 1) * s + 1, s) for j, d, b, s in zip(koff, dil, blocks, strides,
                                                                                  strict=True))
        buf[(Ellipsis, *dst)] += cols[(slice(None), slice(None), *koff)]
    crop = tuple(slice(pb, pb + i) for pb, i in zip(pads[:nd], image, strict=True))
    return [buf[(Ellipsis, *crop)]]
