"""Reductions, ArgMax/ArgMin and TopK (ONNX opset 13-21).

ReduceSum takes axes as an input since opset 13, the others since opset 18;
both the attribute and the input form are accepted for every op.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ._registry import ints, norm_axis, opt_input, register


def _lowest(dtype: np.dtype) -> Any:
    return -np.inf if dtype.kind == "f" else np.iinfo(dtype).min


def _highest(dtype: np.dtype) -> Any:
    return np.inf if dtype.kind == "f" else np.iinfo(dtype).max


def _reduce(op_type: str, fn: Callable[..., np.ndarray], empty: Callable[[np.dtype], Any] | None = None,
            elementwise: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
    """`elementwise`: what ReduceL1/L2/SumSquare still apply with noop_with_empty_axes (|x|,
    |x|, x²): the specification skips only the reduction."""
    def op(inputs: list[np.ndarray | None], attrs: dict[str, Any]) -> list[np.ndarray]:
        x = inputs[0]
        axes_in = opt_input(inputs, 1)
        if axes_in is not None:
            axes = ints(axes_in)
        else:
            axes = [int(a) for a in attrs.get("axes") or []]
        if not axes:
            if int(attrs.get("noop_with_empty_axes", 0)):
                return [x if elementwise is None else elementwise(x).astype(x.dtype, copy=False)]
            axes = list(range(x.ndim))
        axis = tuple(sorted({norm_axis(a, x.ndim, op_type) for a in axes}))
        keepdims = bool(int(attrs.get("keepdims", 1)))
        if empty is not None and any(x.shape[a] == 0 for a in axis):
            # numpy refuses (max/min) or warns and returns nan (mean) on an
            # empty reduction; ONNX/onnxruntime give the reduction's identity.
            shape = [1 if a in axis else n for a, n in enumerate(x.shape) if keepdims or a not in axis]
            return [np.full(shape, empty(x.dtype), dtype=x.dtype)]
        out = np.asarray(fn(x, axis=axis, keepdims=keepdims))
        # np.mean of integers returns float64; ONNX keeps the input type.
        return [out if out.dtype == x.dtype else out.astype(x.dtype)]

    op.__name__ = op.__qualname__ = f"op_{op_type}"
    register(op_type)(op)


_reduce("ReduceMean", np.mean, lambda dtype: 0)
_reduce("ReduceSum", np.sum)
_reduce("ReduceMax", np.max, _lowest)
_reduce("ReduceMin", np.min, _highest)
_reduce("ReduceL1", lambda x, axis, keepdims: np.sum(np.abs(x), axis=axis, keepdims=keepdims), elementwise=np.abs)
_reduce("ReduceL2", lambda x, axis, keepdims: np.sqrt(np.sum(np.square(x), axis=axis, keepdims=keepdims)),
        elementwise=np.abs)
_reduce("ReduceSumSquare", lambda x, axis, keepdims: np.sum(np.square(x), axis=axis, keepdims=keepdims),
        elementwise=np.square)
_reduce("ReduceProd", np.prod)


def _arg(op_type: str, fn: Callable[..., np.ndarray]) -> None:
    def op(inputs: list[np.ndarray | None], attrs: dict[str, Any]) -> list[np.ndarray]:
        x = inputs[0]
        axis = norm_axis(int(attrs.get("axis", 0)), x.ndim, op_type)
        if int(attrs.get("select_last_index", 0)):  # the last of equal extremes: search reversed
            out = x.shape[axis] - 1 - fn(np.flip(x, axis), axis=axis)
        else:
            out = fn(x, axis=axis)
        if int(attrs.get("keepdims", 1)):
            out = np.expand_dims(out, axis)
        return [np.asarray(out, dtype=np.int64)]

    op.__name__ = op.__qualname__ = f"op_{op_type}"
    register(op_type)(op)


_arg("ArgMax", np.argmax)
_arg("ArgMin", np.argmin)


def top_k_indices(x: np.ndarray, k: int, attrs: dict[str, Any]) -> tuple[np.ndarray, int]:
    """(indices of the k largest, or smallest, values along the node's axis, in order;
    that axis). Equal values keep their order: the lower index first, as onnxruntime gives."""
    axis = norm_axis(int(attrs.get("axis", -1)), x.ndim, "TopK")
    if not 0 <= k <= x.shape[axis]:
        raise ValueError(f"TopK: k = {k} is outside 0..{x.shape[axis]} (the length of axis {axis})")
    if int(attrs.get("largest", 1)):
        # Descending with ties in index order: a stable ascending sort of the reversed axis,
        # read backwards, mapped back to the original positions.
        last = x.shape[axis] - 1
        order = last - np.flip(np.argsort(np.flip(x, axis), axis=axis, kind="stable"), axis)
    else:
        order = np.argsort(x, axis=axis, kind="stable")
    return np.take(order, np.arange(k), axis=axis).astype(np.int64), axis


@register("TopK")
def top_k(inputs, attrs):
    x = inputs[0]
    index, axis = top_k_indices(x, ints(inputs[1])[0], attrs)
    return [np.take_along_axis(x, index, axis=axis), index]
