"""Indexing ops: scatters, element gathers, cumulative sums, triangles (ONNX opset 13-21).

Scatter reductions follow the spec's sequential loop; with reduction "none" duplicate
indices are undefined in ONNX (the last write wins here, as in onnxruntime).
"""

from __future__ import annotations

import numpy as np

from ._registry import checks, ints, norm_axis, opt_input, register, unsupported

# reduction attribute -> unbuffered NumPy ufunc (every duplicate index contributes).
_REDUCTIONS = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


@checks("ScatterND", "ScatterElements")
def _reduction(op: str, attrs) -> np.ufunc | None:
    reduction = attrs.get("reduction", "none")
    if reduction == "none":
        return None
    if reduction not in _REDUCTIONS:
        raise unsupported(op, "reduction", reduction, ["none", *_REDUCTIONS])
    return _REDUCTIONS[reduction]


def _check_bounds(index: np.ndarray, dim: int, op: str) -> np.ndarray:
    if index.size and (index.min() < -dim or index.max() >= dim):
        raise IndexError(f"{op}: index out of range [{-dim}, {dim - 1}]")
    return np.where(index < 0, index + dim, index)


def _scatter(out: np.ndarray, where: tuple, updates: np.ndarray, ufunc: np.ufunc | None) -> np.ndarray:
    if ufunc is None:
        out[where] = updates
    else:
        ufunc.at(out, where, updates)
    return out


@register("ScatterND")
def scatter_nd(inputs, attrs):
    data, indices, updates = inputs[:3]
    ufunc = _reduction("ScatterND", attrs)
    k = indices.shape[-1]
    if k > data.ndim:
        raise ValueError(f"ScatterND: index tuples of length {k} for data of rank {data.ndim}")
    if updates.shape != indices.shape[:-1] + data.shape[k:]:
        raise ValueError(f"ScatterND: updates shape {updates.shape} != {indices.shape[:-1] + data.shape[k:]}")
    flat = indices.reshape(-1, k).astype(np.int64)
    where = tuple(_check_bounds(flat[:, j], data.shape[j], "ScatterND") for j in range(k))
    out = data.copy()
    return [_scatter(out, where, updates.reshape((flat.shape[0],) + data.shape[k:]), ufunc)]


def _element_index(indices: np.ndarray, axis: int, dim: int, op: str) -> tuple:
    grid = list(np.indices(indices.shape, sparse=True))
    grid[axis] = _check_bounds(indices.astype(np.int64), dim, op)
    return tuple(grid)


@register("ScatterElements")
def scatter_elements(inputs, attrs):
    data, indices, updates = inputs[:3]
    ufunc = _reduction("ScatterElements", attrs)
    axis = norm_axis(int(attrs.get("axis", 0)), data.ndim, "ScatterElements")
    if indices.shape != updates.shape or indices.ndim != data.ndim:
        raise ValueError(f"ScatterElements: indices {indices.shape} and updates {updates.shape} must have "
                         f"one shape of the data's rank {data.ndim}")
    out = data.copy()
    return [_scatter(out, _element_index(indices, axis, data.shape[axis], "ScatterElements"), updates, ufunc)]


@register("GatherElements")
def gather_elements(inputs, attrs):
    data, indices = inputs[:2]
    axis = norm_axis(int(attrs.get("axis", 0)), data.ndim, "GatherElements")
    return [data[_element_index(indices, axis, data.shape[axis], "GatherElements")]]


@register("GatherND")
def gather_nd(inputs, attrs):
    data, indices = inputs[:2]
    b = int(attrs.get("batch_dims", 0))
    k = indices.shape[-1]
    if b + k > data.ndim:
        raise ValueError(f"GatherND: batch_dims {b} + index length {k} exceed the data's rank {data.ndim}")
    batch = data.shape[:b]
    nb = int(np.prod(batch, dtype=np.int64))
    d = data.reshape((nb,) + data.shape[b:])
    idx = indices.reshape(nb, -1, k).astype(np.int64)
    where = (np.arange(nb)[:, None],) + tuple(
        _check_bounds(idx[..., j], d.shape[1 + j], "GatherND") for j in range(k))
    return [d[where].reshape(indices.shape[:-1] + data.shape[b + k:])]


@register("CumSum")
def cumsum(inputs, attrs):
    x, axis_in = inputs[0], inputs[1]
    (axis,) = ints(axis_in)
    axis = norm_axis(axis, x.ndim, "CumSum")
    exclusive = int(attrs.get("exclusive", 0))
    reverse = int(attrs.get("reverse", 0))
    y = np.flip(x, axis) if reverse else x
    y = np.cumsum(y, axis=axis, dtype=x.dtype)
    if exclusive:
        # Shift by one along the axis, a zero first.
        y = np.concatenate([np.zeros_like(np.take(y, [0], axis=axis)), np.delete(y, -1, axis=axis)], axis=axis)
    return [np.flip(y, axis) if reverse else y]


@register("Trilu")
def trilu(inputs, attrs):
    x, k_in = inputs[0], opt_input(inputs, 1)
    k = ints(k_in)[0] if k_in is not None and np.size(k_in) else 0
    if x.ndim < 2:
        raise ValueError(f"Trilu: input must have rank >= 2, got shape {x.shape}")
    upper = int(attrs.get("upper", 1))
    return [np.triu(x, k) if upper else np.tril(x, k)]
