"""Pooling ops for 1-D, 2-D and 3-D spatial inputs (N, C, *spatial).

The input is padded explicitly once, then pooled one spatial axis at a time
(max and sum over a box are separable): per axis, ``sliding_window_view``
exposes the windows and an in-place ufunc walks the k taps over full-batch
slices. That costs sum(k) instead of prod(k) passes, and it avoids reducing
over the tiny, strided kernel axes of a window view, which numpy does
about 10x slower than whole-array ufunc calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ._registry import checks, choice, num_outputs, register, unsupported


@dataclass(frozen=True)
class _Geometry:
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    out: tuple[int, ...]
    pad_begin: tuple[int, ...]  # padding the spec defines (explicit or auto_pad)
    pad_end: tuple[int, ...]
    extent: tuple[int, ...]  # padded length the windows actually touch, per axis


@checks("MaxPool", "AveragePool")
def _auto_pad(op: str, attrs: dict[str, Any]) -> str:
    return choice(op, attrs, "auto_pad", "NOTSET", ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"))


def _geometry(op: str, spatial: tuple[int, ...], attrs: dict[str, Any]) -> _Geometry:
    if "kernel_shape" not in attrs:
        raise ValueError(f"{op}: attribute kernel_shape is required")
    kernel = tuple(int(k) for k in attrs["kernel_shape"])
    nd = len(kernel)
    if nd != len(spatial):
        raise ValueError(f"{op}: kernel_shape {list(kernel)} does not fit spatial shape {list(spatial)}")
    strides = tuple(int(s) for s in attrs.get("strides") or [1] * nd)
    dilations = tuple(int(d) for d in attrs.get("dilations") or [1] * nd)
    pads = [int(p) for p in attrs.get("pads") or [0] * (2 * nd)]
    ceil_mode = bool(attrs.get("ceil_mode", 0))
    auto_pad = _auto_pad(op, attrs)

    out, begin, end, extent = [], [], [], []
    for i, n in enumerate(spatial):
        k, s, d = kernel[i], strides[i], dilations[i]
        span = (k - 1) * d + 1
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            # The spec's formula, with the dilated window. onnxruntime 1.31
            # uses the undilated kernel here (smaller output than ceil(n/s))
            # and rejects the negative totals that a stride longer than the
            # window produces; those are clamped to 0, as TensorFlow's SAME,
            # where such models come from, does.
            o = -(-n // s)
            total = max((o - 1) * s + span - n, 0)
            small, large = total // 2, total - total // 2
            pb, pe = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
        else:
            pb, pe = (0, 0) if auto_pad == "VALID" else (pads[i], pads[i + nd])
            room = n + pb + pe - span
            if room < 0:
                raise ValueError(f"{op}: window {span} larger than padded input {n + pb + pe}")
            if ceil_mode:
                o = -(-room // s) + 1
                # ONNX/PyTorch rule: the last window must start inside the
                # input or the left padding, never in the right padding only.
                if (o - 1) * s >= n + pb:
                    o -= 1
            else:
                o = room // s + 1
        out.append(o)
        begin.append(pb)
        end.append(pe)
        extent.append(max((o - 1) * s + span, pb + n))
    return _Geometry(kernel, strides, dilations, tuple(out), tuple(begin), tuple(end), tuple(extent))


def _padded(x: np.ndarray, g: _Geometry, fill: Any) -> np.ndarray:
    spatial = x.shape[2:]
    if all(b == 0 for b in g.pad_begin) and all(e == n for e, n in zip(g.extent, spatial)):
        return x
    # Allocate-and-assign is much faster than np.pad for large batches.
    out = np.full(x.shape[:2] + g.extent, fill, dtype=x.dtype)
    out[(slice(None), slice(None)) + tuple(slice(b, b + n) for b, n in zip(g.pad_begin, spatial))] = x
    return out


def _pool(xp: np.ndarray, g: _Geometry, ufunc: np.ufunc) -> np.ndarray:
    """Reduce every (dilated, strided) window of the padded ``xp`` with ``ufunc``."""
    out = xp
    for i, (k, s, d, o) in enumerate(zip(g.kernel, g.strides, g.dilations, g.out)):
        axis = 2 + i
        windows = sliding_window_view(out, (k - 1) * d + 1, axis=axis)
        starts = [slice(None)] * out.ndim
        starts[axis] = slice(0, (o - 1) * s + 1, s)
        taps = windows[tuple(starts) + (slice(None, None, d),)]
        acc = taps[..., 0].copy()
        for t in range(1, k):
            ufunc(acc, taps[..., t], out=acc)
        out = acc
    return out


def window_reduce(x: np.ndarray, attrs: dict[str, Any], ufunc: np.ufunc, fill: Any, op: str = "window") -> np.ndarray:
    """Reduce every window of x (N, C, *spatial) with ``ufunc``; ``attrs`` as for MaxPool
    (kernel_shape, strides, dilations, pads, ...), padding filled with ``fill``."""
    g = _geometry(op, x.shape[2:], attrs)
    return _pool(_padded(x, g, fill), g, ufunc)


def _check_rank(op: str, x: np.ndarray) -> None:
    if x.ndim not in (3, 4, 5):
        raise unsupported(op, "input rank", x.ndim, [3, 4, 5])


def _lowest(dtype: np.dtype) -> Any:
    return -np.inf if dtype.kind == "f" else np.iinfo(dtype).min


@register("MaxPool")
def max_pool(inputs, attrs):
    x = inputs[0]
    _check_rank("MaxPool", x)
    if num_outputs(attrs) >= 2:
        raise unsupported("MaxPool", "output Indices", "requested")
    # Padding (explicit and ceil-mode overhang) never wins a max.
    return [window_reduce(x, attrs, np.maximum, _lowest(x.dtype), "MaxPool")]


def _valid_counts(g: _Geometry, spatial: tuple[int, ...], include_pad: bool, dtype: np.dtype) -> np.ndarray:
    """Divisor per output position: taps landing on real input, or also on the
    explicit/auto padding when count_include_pad is set. The ceil-mode
    overhang past the padding is never counted."""
    mask = np.zeros(g.extent, dtype=np.float64)
    if include_pad:
        region = tuple(slice(0, min(b + n + e, ext)) for b, n, e, ext in zip(g.pad_begin, spatial, g.pad_end, g.extent))
    else:
        region = tuple(slice(b, b + n) for b, n in zip(g.pad_begin, spatial))
    mask[region] = 1.0
    return _pool(mask[None, None], g, np.add)[0, 0].astype(dtype)


@register("AveragePool")
def average_pool(inputs, attrs):
    x = inputs[0]
    _check_rank("AveragePool", x)
    g = _geometry("AveragePool", x.shape[2:], attrs)
    include_pad = bool(attrs.get("count_include_pad", 0))
    total = _pool(_padded(x, g, 0), g, np.add)
    counts = _valid_counts(g, x.shape[2:], include_pad, x.dtype)
    with np.errstate(all="ignore"):  # a window entirely in padding yields nan, as in onnxruntime
        total /= counts
    return [total]


@register("GlobalAveragePool")
def global_average_pool(inputs, attrs):
    x = inputs[0]
    return [np.mean(x, axis=tuple(range(2, x.ndim)), keepdims=True)]


@register("GlobalMaxPool")
def global_max_pool(inputs, attrs):
    x = inputs[0]
    return [np.max(x, axis=tuple(range(2, x.ndim)), keepdims=True)]

