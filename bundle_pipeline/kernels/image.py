"""Image kernels: GridSample (N-D; nearest, linear, cubic; zeros, border, reflection), AffineGrid,
RoiAlign, NonMaxSuppression, DeformConv, ImageDecoder."""

from __future__ import annotations

import io
import itertools
import math

import numpy as np

from ._registry import Attrs, Inputs, KernelError, Tiling, arg, choice, int_list, kernel, need, scalar, wide


def _reflect(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Fold coordinates into [lo, hi] by repeated reflection at the borders."""
    span = hi - lo
    if span <= 0:
        return np.full_like(x, lo)
    below, above = x < lo, x > hi
    d = np.where(below, lo - x, np.where(above, x - hi, 0))
    n = np.floor(d / span)
    r = d - n * span
    even = n % 2 == 0
    out = np.where(below, np.where(even, lo + r, hi - r), x)
    return np.where(above, np.where(even, hi - r, lo + r), out)


def _cubic_weights(t: np.ndarray) -> list[np.ndarray]:
    """Keys cubic convolution (a = -0.75) weights of the taps at floor-1 .. floor+2 for fraction t."""
    a = -0.75

    def near(d: np.ndarray) -> np.ndarray:
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d: np.ndarray) -> np.ndarray:
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


@kernel("GridSample")
def _grid_sample(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x, grid = need(inputs, 0, "X"), need(inputs, 1, "grid")
    nd = x.ndim - 2
    modes = ("nearest", "linear", "cubic") if opset >= 20 else ("nearest", "bilinear", "bicubic")
    mode = choice(attrs, "mode", modes[1], modes)
    mode = {"bilinear": "linear", "bicubic": "cubic"}.get(mode, mode)
    padding = choice(attrs, "padding_mode", "zeros", ("zeros", "border", "reflection"))
    align = bool(int(attrs.get("align_corners", 0)))
    if nd < 1 or grid.ndim != x.ndim or grid.shape[0] != x.shape[0] or grid.shape[-1] != nd:
        raise KernelError(f"GridSample: grid {grid.shape} does not fit input {x.shape}")
    dims = x.shape[2:]
    g = grid.astype(np.float64)
    taps: list[list[tuple[np.ndarray, np.ndarray]]] = []  # per spatial dim: (index, weight) per tap
    for k in range(nd):
        size = dims[k]
        n = g[..., nd - 1 - k]  # the grid lists coordinates innermost (x) first
        c = (n + 1) / 2 * (size - 1) if align else ((n + 1) * size - 1) / 2
        lo, hi = (0.0, size - 1.0) if align else (-0.5, size - 0.5)
        if mode == "nearest":
            c = np.rint(c)
        if padding == "border":
            c = np.where((c < lo) | (c > hi), np.clip(c, 0, size - 1), c)
        elif padding == "reflection":
            c = _reflect(c, lo, hi)
        if mode == "nearest":
            entries = [(np.trunc(c), np.ones_like(c))]
        else:
            base = np.floor(c)
            t = c - base
            if mode == "linear":
                entries = [(base, 1 - t), (base + 1, t)]
            else:
                entries = list(zip([base - 1, base, base + 1, base + 2], _cubic_weights(t), strict=True))
        fixed = []
        for idx, w in entries:
            # Where a tap falls outside: zeros reads 0, border clamps, reflection folds it back inside.
            if padding == "zeros":
                inside = (idx >= 0) & (idx < size)
                w = np.where(inside, w, 0)
                idx = np.clip(idx, 0, size - 1)
            elif padding == "border":
                idx = np.clip(idx, 0, size - 1)
            else:
                idx = np.clip(np.trunc(_reflect(idx, lo, hi)), 0, size - 1)
            fixed.append((idx.astype(np.int64), w))
        taps.append(fixed)
    xf = wide(x).astype(np.float64)
    batch = np.arange(x.shape[0]).reshape(-1, *([1] * nd))
    out = np.zeros((x.shape[0], *grid.shape[1:-1], x.shape[1]))
    for combo in itertools.product(*taps):
        weight = math.prod(w for _, w in combo)
        values = np.moveaxis(xf, 1, -1)[(batch, *[i for i, _ in combo])]  # (N, *out, C)
        out += weight[..., None] * values
    return [np.moveaxis(out, -1, 1).astype(x.dtype)]


@kernel("AffineGrid")
def _affine_grid(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    theta, size = need(inputs, 0, "theta"), int_list(need(inputs, 1, "size"))
    nd = len(size) - 2
    if nd not in (2, 3) or theta.shape != (size[0], nd, nd + 1):
        raise KernelError(f"AffineGrid: theta {theta.shape} does not fit size {size}")
    align = bool(int(attrs.get("align_corners", 0)))
    spatial = size[2:]

    def axis_points(d: int) -> np.ndarray:
        if align:
            return np.linspace(-1, 1, d) if d > 1 else np.array([-1.0])
        return (np.arange(d) * 2 + 1) / d - 1

    coords = np.meshgrid(*[axis_points(d) for d in spatial], indexing="ij")
    # Homogeneous points ordered innermost first: (x, y[, z], 1).
    homo = np.stack([*coords[::-1], np.ones(spatial)], axis=-1).reshape(-1, nd + 1)
    grid = np.einsum("nij,pj->npi", wide(theta).astype(np.float64), homo)
    return [grid.reshape(size[0], *spatial, nd).astype(theta.dtype)]


@kernel("RoiAlign")
def _roi_align(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x, rois, idx = need(inputs, 0, "X"), need(inputs, 1, "rois"), need(inputs, 2, "batch_indices")
    if x.ndim != 4 or rois.ndim != 2 or rois.shape[1] != 4 or idx.shape != (rois.shape[0],):
        raise KernelError(f"RoiAlign: X {x.shape}, rois {rois.shape}, batch_indices {idx.shape} do not fit")
    mode = choice(attrs, "mode", "avg", ("avg", "max"))
    half = choice(attrs, "coordinate_transformation_mode", "half_pixel" if opset >= 16 else "output_half_pixel",
                  ("half_pixel", "output_half_pixel")) == "half_pixel"
    oh, ow = int(attrs.get("output_height", 1)), int(attrs.get("output_width", 1))
    ratio, scale = int(attrs.get("sampling_ratio", 0)), float(attrs.get("spatial_scale", 1.0))
    h, w = x.shape[2:]
    xf = wide(x).astype(np.float64)
    out = np.zeros((rois.shape[0], x.shape[1], oh, ow))
    ft = wide(rois).dtype.type  # ROI geometry in the ROIs' precision: bin counts round as onnxruntime's do
    for r, (roi, b) in enumerate(zip(wide(rois), idx.astype(np.int64), strict=True)):
        x0, y0, x1, y1 = roi * ft(scale) - ft(0.5 if half else 0.0)
        rw, rh = x1 - x0, y1 - y0
        if not half:
            rw, rh = max(rw, ft(1)), max(rh, ft(1))  # malformed ROIs are forced to 1x1
        bh, bw = rh / ft(oh), rw / ft(ow)
        gh = ratio if ratio > 0 else math.ceil(rh / ft(oh))
        gw = ratio if ratio > 0 else math.ceil(rw / ft(ow))
        # Sample points: (oh, gh) rows x (ow, gw) columns, bilinear at each.
        ys = y0 + np.arange(oh)[:, None] * bh + (np.arange(gh)[None, :] + 0.5) * bh / gh
        xs = x0 + np.arange(ow)[:, None] * bw + (np.arange(gw)[None, :] + 0.5) * bw / gw
        yy, xx = ys.reshape(oh, gh, 1, 1), xs.reshape(1, 1, ow, gw)
        outside = (yy < -1.0) | (yy > h) | (xx < -1.0) | (xx > w)
        yc, xc = np.maximum(yy, 0), np.maximum(xx, 0)
        ylo, xlo = np.floor(yc).astype(np.int64), np.floor(xc).astype(np.int64)
        ytop, xtop = ylo >= h - 1, xlo >= w - 1
        ylo, xlo = np.where(ytop, h - 1, ylo), np.where(xtop, w - 1, xlo)
        yhi, xhi = np.where(ytop, h - 1, ylo + 1), np.where(xtop, w - 1, xlo + 1)
        ly, lx = np.where(ytop, 0, yc - ylo), np.where(xtop, 0, xc - xlo)
        img = xf[b]  # (C, H, W)
        corners = [((1 - ly) * (1 - lx), ylo, xlo), ((1 - ly) * lx, ylo, xhi), (ly * (1 - lx), yhi, xlo),
                   (ly * lx, yhi, xhi)]
        shape = outside.shape
        terms = [np.where(outside, 0, wt) * img[:, np.broadcast_to(yi, shape), np.broadcast_to(xi, shape)]
                 for wt, yi, xi in corners]  # each (C, oh, gh, ow, gw)
        if mode == "avg":
            out[r] = sum(terms).sum(axis=(2, 4)) / max(gh * gw, 1)
        else:  # max of the weighted corner values over the bin's samples, as onnxruntime computes it
            out[r] = np.max(np.maximum.reduce(terms), axis=(2, 4))
    return [out.astype(x.dtype)]


def _corners(boxes: np.ndarray, center: bool) -> np.ndarray:
    """(y_min, x_min, y_max, x_max) of [y1, x1, y2, x2] boxes (corners in any order) or [xc, yc, w, h] ones."""
    if center:
        xc, yc, w, h = np.moveaxis(boxes, -1, 0)
        return np.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], axis=-1)
    y1, x1, y2, x2 = np.moveaxis(boxes, -1, 0)
    return np.stack([np.minimum(y1, y2), np.minimum(x1, x2), np.maximum(y1, y2), np.maximum(x1, x2)], axis=-1)


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one box with many; empty intersections or degenerate boxes give 0."""
    ih = np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0])
    iw = np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1])
    inter = np.where((ih > 0) & (iw > 0), ih * iw, 0.0)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    union = area + areas - inter
    ok = (inter > 0) & (area > 0) & (areas > 0) & (union > 0)
    with np.errstate(all="ignore"):
        return np.where(ok, inter / np.where(union > 0, union, 1), 0.0)


@kernel("NonMaxSuppression")
def _non_max_suppression(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    boxes, scores = need(inputs, 0, "boxes"), need(inputs, 1, "scores")
    max_in, iou_in, score_in = arg(inputs, 2), arg(inputs, 3), arg(inputs, 4)
    if boxes.ndim != 3 or boxes.shape[2] != 4 or scores.ndim != 3 or scores.shape[::2] != boxes.shape[:2]:
        raise KernelError(f"NonMaxSuppression: boxes {boxes.shape} and scores {scores.shape} do not fit")
    limit = max(int(scalar(max_in)), 0) if max_in is not None and max_in.size else 0
    iou_limit = float(scalar(iou_in)) if iou_in is not None and iou_in.size else 0.0
    score_min = float(scalar(score_in)) if score_in is not None and score_in.size else None
    corners = _corners(boxes.astype(np.float64), bool(int(attrs.get("center_point_box", 0))))
    selected = []
    for b, c in itertools.product(range(scores.shape[0]), range(scores.shape[1])):
        s = scores[b, c].astype(np.float64)
        candidates = np.arange(s.size) if score_min is None else np.flatnonzero(s > score_min)
        order = candidates[np.lexsort((candidates, -s[candidates]))]  # best first; ties: lower index first
        keep: list[int] = []
        for i in order:
            if len(keep) >= limit:
                break
            if not keep or not np.any(_iou(corners[b, i], corners[b, keep]) > iou_limit):
                keep.append(int(i))
        selected += [(b, c, i) for i in keep]
    return [np.array(selected, dtype=np.int64).reshape(-1, 3)]


def _bilinear_zeros(img: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """img (N, C, H, W) sampled at real coordinates y, x of shape (N, C, ...): bilinear, zero outside."""
    h, w = img.shape[2:]
    y0, x0 = np.floor(y), np.floor(x)
    n = np.arange(img.shape[0]).reshape(-1, *([1] * (y.ndim - 1)))
    c = np.arange(img.shape[1]).reshape(1, -1, *([1] * (y.ndim - 2)))
    out = np.zeros(y.shape)
    for yi, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xi, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            inside = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
            vals = img[n, c, np.clip(yi, 0, h - 1).astype(np.int64), np.clip(xi, 0, w - 1).astype(np.int64)]
            out += np.where(inside, wy * wx * vals, 0)
    return out


@kernel("DeformConv")
def _deform_conv(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    x, w, offset, bias, mask = need(inputs, 0, "X"), need(inputs, 1, "W"), need(inputs, 2, "offset"), arg(
        inputs, 3), arg(inputs, 4)
    if x.ndim != 4 or w.ndim != 4:
        raise KernelError(f"DeformConv supports 2-D images: X {x.shape}, W {w.shape}")
    n, ic = x.shape[:2]
    oc, icg, kh, kw = w.shape
    group, ogroups = int(attrs.get("group", 1)), int(attrs.get("offset_group", 1))
    sh, sw = int_list(attrs.get("strides", [1, 1]))
    dh, dw = int_list(attrs.get("dilations", [1, 1]))
    pads = int_list(attrs.get("pads", [0, 0, 0, 0]))
    oh, ow = offset.shape[2:]
    if ic != icg * group or oc % group or ic % ogroups or offset.shape[1] != ogroups * kh * kw * 2:
        raise KernelError(f"DeformConv: X {x.shape}, W {w.shape}, offset {offset.shape}, group={group}, "
                          f"offset_group={ogroups} do not fit")
    off = wide(offset).astype(np.float64).reshape(n, ogroups, kh, kw, 2, oh, ow)
    m = np.ones((n, ogroups, kh, kw, oh, ow)) if mask is None else wide(mask).astype(np.float64).reshape(
        n, ogroups, kh, kw, oh, ow)
    # Sampling positions per offset group: base window position + dilated tap + learned offset.
    base_y = (np.arange(oh) * sh - pads[0]).reshape(1, 1, 1, 1, oh, 1) + (np.arange(kh) * dh).reshape(1, 1, kh, 1, 1, 1)
    base_x = (np.arange(ow) * sw - pads[1]).reshape(1, 1, 1, 1, 1, ow) + (np.arange(kw) * dw).reshape(1, 1, 1, kw, 1, 1)
    ys, xs = base_y + off[:, :, :, :, 0], base_x + off[:, :, :, :, 1]  # (N, G_off, kh, kw, oh, ow)
    per = ic // ogroups
    ys, xs, m = (np.repeat(a, per, axis=1) for a in (ys, xs, m))  # -> per input channel
    cols = _bilinear_zeros(wide(x).astype(np.float64), ys, xs) * m  # (N, C, kh, kw, oh, ow)
    cols = cols.reshape(n, group, icg * kh * kw, oh * ow)
    wg = wide(w).astype(np.float64).reshape(group, oc // group, icg * kh * kw)
    y = np.einsum("gok,ngkp->ngop", wg, cols).reshape(n, oc, oh, ow)
    if bias is not None:
        y = y + wide(bias).reshape(1, -1, 1, 1)
    return [y.astype(x.dtype)]


@kernel("ImageDecoder")
def _image_decoder(inputs: Inputs, attrs: Attrs, opset: int, tiling: Tiling) -> list[np.ndarray]:
    """Encoded bytes (jpeg, png, bmp, tiff, webp, ...) -> uint8 [H, W, 3] (RGB/BGR) or [H, W, 1] (Grayscale).

    The codecs are Pillow's (the ``image`` extra): decoding is theirs to get right, not ours."""
    data = need(inputs, 0, "encoded_stream")
    pixel_format = choice(attrs, "pixel_format", "RGB", ("RGB", "BGR", "Grayscale"))
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise KernelError("ImageDecoder needs Pillow: pip install 'bundle-pipeline[image]'") from None
    try:
        image = Image.open(io.BytesIO(np.ascontiguousarray(data, dtype=np.uint8).tobytes()))
        if pixel_format == "Grayscale":
            return [np.asarray(image.convert("L"), dtype=np.uint8)[:, :, None]]
        rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as err:
        raise KernelError(f"ImageDecoder: cannot decode the image: {err}") from None
    return [np.ascontiguousarray(rgb[:, :, ::-1]) if pixel_format == "BGR" else rgb]
