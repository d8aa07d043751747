"""Resize (ONNX opset 11-19): nearest, linear and cubic interpolation, axis by axis.

Resize is separable: each output position along an axis is a weighted sum of a few input
positions along it (1 for nearest, 2 for linear, 4 for cubic), with weights that depend
only on the axis's input and output lengths, its scale and the node's attributes.
`axis_taps` computes them once per axis geometry, following the ONNX specification's
formulas as onnxruntime evaluates them (in float32: the source coordinate of each
coordinate_transformation_mode, the four nearest_mode roundings, linear weights from the
clamped coordinate, cubic weights with cubic_coeff_a and exclude_outside, indices clamped
to the edge). The onnx package's own reference implementation differs from onnxruntime for
align_corners and half_pixel_symmetric at non-integer output lengths (it uses length ·
scale, not the integer length); onnxruntime is the reference here. The NumPy op and the
torch executor apply the same taps.

Not implemented, and refused with the node's attribute: coordinate_transformation_mode
'tf_crop_and_resize' (a crop with an extrapolation value, from TensorFlow graphs),
antialias = 1 (opset 18's low-pass filter when shrinking) and keep_aspect_ratio_policy
other than 'stretch'.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ._registry import checks, ints, opt_input, register, unsupported

# Attributes that shape the taps, with the ONNX defaults.
_DEFAULTS = {"mode": "nearest", "coordinate_transformation_mode": "half_pixel",
             "nearest_mode": "round_prefer_floor", "cubic_coeff_a": -0.75, "exclude_outside": 0}
_MODES = ("nearest", "linear", "cubic")
_TRANSFORMS = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric")
_ROUNDING = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
_F = np.float32


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


@checks("Resize")
def _check(op: str, attrs: dict[str, Any]) -> None:
    tap_attrs(attrs)


def tap_attrs(attrs: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """The node's attributes that shape the taps, checked, as a hashable key."""
    a = {k: _text(attrs.get(k, d)) for k, d in _DEFAULTS.items()}
    for name, allowed in (("mode", _MODES), ("coordinate_transformation_mode", _TRANSFORMS),
                          ("nearest_mode", _ROUNDING)):
        if a[name] not in allowed:
            raise unsupported("Resize", name, a[name], allowed)
    if int(attrs.get("antialias", 0)):
        raise unsupported("Resize", "antialias", int(attrs["antialias"]), [0])
    policy = _text(attrs.get("keep_aspect_ratio_policy", "stretch"))
    if policy != "stretch":
        raise unsupported("Resize", "keep_aspect_ratio_policy", policy, ["stretch"])
    a["cubic_coeff_a"] = float(a["cubic_coeff_a"])
    a["exclude_outside"] = int(a["exclude_outside"])
    return tuple(sorted(a.items()))


def _source(out: int, length: int, scale: np.float32, transform: str) -> np.ndarray:
    """Each output position's coordinate in the input, float32 as onnxruntime computes it."""
    x = np.arange(out, dtype=_F)
    half = _F(0.5)
    if transform == "asymmetric":
        return x / scale
    if transform == "align_corners":
        return np.zeros(out, _F) if out == 1 else x * _F(length - 1) / _F(out - 1)
    if transform == "pytorch_half_pixel" and out <= 1:
        return np.zeros(out, _F)
    if transform == "half_pixel_symmetric":  # onnxruntime evaluates this one partly in double
        adjustment = _F(out) / (scale * _F(length))
        offset = _F(length) / _F(2) * (_F(1) - adjustment)
        return (np.float64(offset) + (x.astype(np.float64) + 0.5) / np.float64(scale) - 0.5).astype(_F)
    return (x + half) / scale - half


def _cubic(s: np.ndarray, a: np.float32) -> np.ndarray:
    """(n, 4) weights of the taps at floor − 1 … floor + 2 for fractions s (Keys, with a)."""
    one, two = _F(1), _F(2)
    t = [s + one, s, one - s, two - s]
    far = lambda d: ((a * d - _F(5) * a) * d + _F(8) * a) * d - _F(4) * a  # noqa: E731  1 ≤ d < 2
    near = lambda d: ((a + two) * d - (a + _F(3))) * d * d + one  # noqa: E731  d < 1
    return np.stack([far(t[0]), near(t[1]), near(t[2]), far(t[3])], axis=1)


@functools.lru_cache(maxsize=512)
def axis_taps(length: int, scale: float | None, size: int | None,
              attrs: tuple[tuple[str, Any], ...]) -> tuple[np.ndarray, np.ndarray]:
    """(index, weight), each (output length, taps): output position j along an axis of
    `length` inputs is sum_t weight[j, t] · input[index[j, t]]. The axis is resized by
    `scale` (a float32 scales value; output length floor(scale · length)) or to `size`
    (scale size / length)."""
    a = dict(attrs)
    if size is None:
        sc = _F(scale)
        out = int(sc * _F(length))
    else:
        out, sc = int(size), _F(size) / _F(length)
    x = _source(out, length, sc, a["coordinate_transformation_mode"])
    last = length - 1
    if a["mode"] == "nearest":
        rounding = a["nearest_mode"]
        if rounding == "floor":
            k = np.floor(x)
        elif rounding == "ceil":
            k = np.ceil(x)
        else:  # to the nearest; a tie (fraction exactly 1/2) up or down as the mode says. The
            # fraction is exact in float32, where x + 0.5 could round up (0.49999997 + 0.5 = 1).
            base = np.floor(x)
            frac = x - base
            k = base + (frac >= _F(0.5) if rounding == "round_prefer_ceil" else frac > _F(0.5))
        index = np.clip(k, 0, last).astype(np.intp)[:, None]
        weight = np.ones((out, 1), _F)
    elif a["mode"] == "linear":
        xc = np.clip(x, _F(0), _F(last))
        lo = np.minimum(xc.astype(np.intp), last)
        hi = np.minimum(lo + 1, last)
        d_lo, d_hi = np.abs(xc - lo.astype(_F)), np.abs(xc - hi.astype(_F))
        same = lo == hi  # the last input: both weights 1/2 on it
        d_lo, d_hi = np.where(same, _F(0.5), d_lo), np.where(same, _F(0.5), d_hi)
        index, weight = np.stack([lo, hi], axis=1), np.stack([d_hi, d_lo], axis=1)
    else:
        base = np.floor(x)
        weight = _cubic((x - base).astype(_F), _F(a["cubic_coeff_a"]))
        raw = base.astype(np.intp)[:, None] + np.arange(-1, 3)[None, :]
        if a["exclude_outside"]:
            weight = np.where((raw < 0) | (raw > last), _F(0), weight)
            weight = weight / weight.sum(axis=1, keepdims=True)
        index = np.clip(raw, 0, last)
    index, weight = np.ascontiguousarray(index), np.ascontiguousarray(weight, dtype=_F)
    index.flags.writeable = weight.flags.writeable = False  # shared through the cache
    return index, weight


def plan(shape: tuple[int, ...], inputs: list[Any], attrs: dict[str, Any]) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(axis, index, weight) for every axis the node resizes, in axis order; `inputs` the
    node's (X, roi, scales, sizes) as NumPy arrays or None."""
    key = tap_attrs(attrs)
    rank = len(shape)
    axes = [a + rank if a < 0 else a for a in ints(attrs["axes"])] if attrs.get("axes") is not None else list(range(rank))
    scales, sizes = opt_input(inputs, 2), opt_input(inputs, 3)
    if scales is not None and np.asarray(scales).size:
        per_axis = dict(zip(axes, (float(s) for s in np.asarray(scales, dtype=np.float32).reshape(-1))))
        steps = [(a, per_axis[a], None) for a in axes]
    elif sizes is not None and np.asarray(sizes).size:
        per_axis = dict(zip(axes, ints(sizes)))
        steps = [(a, None, per_axis[a]) for a in axes]
    else:
        raise ValueError("Resize needs scales or sizes")
    out = []
    for axis, scale, size in steps:
        if (scale == 1.0) if size is None else (size == shape[axis]):
            continue  # every coordinate transformation maps an unscaled axis onto itself
        index, weight = axis_taps(shape[axis], scale, size, key)
        out.append((axis, index, weight))
    return out


@register("Resize")
def resize(inputs, attrs):
    x = inputs[0]
    y = x if x.dtype == np.float32 else x.astype(np.float64)
    for axis, index, weight in plan(x.shape, inputs, attrs):
        lead = (1,) * axis
        tail = (1,) * (y.ndim - axis - 1)
        acc = None
        for t in range(index.shape[1]):
            part = np.take(y, index[:, t], axis=axis) * weight[:, t].reshape(lead + (-1,) + tail)
            acc = part if acc is None else acc + part
        y = acc
    if np.issubdtype(x.dtype, np.integer):  # nearest on integers: exact; others rounded, saturated
        info = np.iinfo(x.dtype)
        return [np.clip(np.rint(y), info.min, info.max).astype(x.dtype)]
    return [y.astype(x.dtype)]
