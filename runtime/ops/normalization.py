"""Normalization ops, inference mode only."""

from __future__ import annotations

import numpy as np

from ._registry import checks, num_outputs, register, unsupported


@checks("BatchNormalization")
def _inference_mode(op: str, attrs) -> None:
    if int(attrs.get("training_mode", 0)):
        raise unsupported(op, "training_mode", 1, [0])


@register("BatchNormalization")
def batch_normalization(inputs, attrs):
    _inference_mode("BatchNormalization", attrs)
    x, scale, bias, mean, var = inputs[:5]
    eps = float(attrs.get("epsilon", 1e-5))
    # Folded to one multiply-add per element. The per-channel coefficients are
    # tiny, so they are formed in float64 (scale/bias/mean/var may also have
    # their own dtype since opset 15) and only then cast to the data's dtype.
    a = scale.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
    b = bias.astype(np.float64) - mean.astype(np.float64) * a
    shape = (1, -1) + (1,) * (x.ndim - 2)
    y = x * a.astype(x.dtype).reshape(shape)
    y += b.astype(x.dtype).reshape(shape)
    return [y]


# Float types a stash_type attribute may name, and the NumPy precision used for it.
# float16/bfloat16 statistics would be less precise than the data: refused, not guessed.
_STASH = {1: np.float32, 11: np.float64}


@checks("LayerNormalization", "GroupNormalization")
def stash_dtype(op: str, attrs) -> type:
    """The NumPy float type of a node's stash_type (the torch executor maps it to its own)."""
    stash = int(attrs.get("stash_type", 1))
    if stash not in _STASH:
        raise unsupported(op, "stash_type", stash, sorted(_STASH))
    return _STASH[stash]


def layer_norm_axes(ndim: int, attrs) -> tuple[int, ...]:
    """LayerNormalization's normalised axes [axis, rank) (also the torch executor's)."""
    axis = int(attrs.get("axis", -1))
    axis = axis + ndim if axis < 0 else axis
    if not 0 <= axis < ndim:
        raise ValueError(f"LayerNormalization: axis {attrs.get('axis')} out of range for rank {ndim}")
    return tuple(range(axis, ndim))


@register("LayerNormalization")
def layer_normalization(inputs, attrs):
    """Opset 17: normalise over axes [axis, rank), scale and bias broadcast over those axes.

    Mean and inverse standard deviation are computed in the stash type and returned (as
    the optional outputs Mean, InvStdDev) with the normalised axes kept as size 1.
    """
    x, scale = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    eps = float(attrs.get("epsilon", 1e-5))
    dtype = stash_dtype("LayerNormalization", attrs)
    axes = layer_norm_axes(x.ndim, attrs)
    xs = x.astype(dtype, copy=False)
    mean = xs.mean(axis=axes, keepdims=True)
    d = xs - mean
    inv_std = 1 / np.sqrt((d * d).mean(axis=axes, keepdims=True) + dtype(eps))
    d *= inv_std
    y = d.astype(x.dtype, copy=False) * scale.astype(x.dtype, copy=False)
    if bias is not None:
        y += bias.astype(x.dtype, copy=False)
    outputs = [y]
    n = num_outputs(attrs)
    if n >= 2:
        outputs.append(mean)
    if n >= 3:
        outputs.append(inv_std)
    return outputs


def _instance_stats(x: np.ndarray, axes: tuple[int, ...], eps: float, dtype) -> np.ndarray:
    xs = x.astype(dtype, copy=False)
    d = xs - xs.mean(axis=axes, keepdims=True)
    d /= np.sqrt((d * d).mean(axis=axes, keepdims=True) + dtype(eps))
    return d


@register("InstanceNormalization")
def instance_normalization(inputs, attrs):
    """y = scale·(x − mean)/√(var + ε) + B, statistics per sample and channel over the spatial axes."""
    x, scale, bias = inputs[:3]
    if x.ndim < 3:
        raise ValueError(f"InstanceNormalization: expected an (N, C, D1, ...) input, got shape {x.shape}")
    eps = float(attrs.get("epsilon", 1e-5))
    d = _instance_stats(x, tuple(range(2, x.ndim)), eps, np.float64)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    y = d * scale.astype(np.float64).reshape(shape) + bias.astype(np.float64).reshape(shape)
    return [y.astype(x.dtype)]


def group_count(shape: tuple[int, ...], attrs) -> int:
    """GroupNormalization's num_groups, checked against the C of an input of `shape`."""
    if "num_groups" not in attrs:
        raise ValueError("GroupNormalization: attribute num_groups is required")
    groups, c = int(attrs["num_groups"]), shape[1]
    if groups <= 0 or c % groups:
        raise ValueError(f"GroupNormalization: {c} channels are not divisible into num_groups={groups}")
    return groups


def per_group_params(n_scale: int, n_bias: int, groups: int, c: int) -> bool:
    """Whether scale and bias are given per group (opset 18: True) or per channel (opset 21:
    False), from their sizes; neither fitting is an error."""
    if n_scale == groups and n_bias == groups and groups != c:
        return True
    if n_scale != c or n_bias != c:
        raise ValueError(f"GroupNormalization: scale/bias of {n_scale}/{n_bias} values fit neither "
                         f"num_groups={groups} (opset 18) nor C={c} (opset 21)")
    return False


@register("GroupNormalization")
def group_normalization(inputs, attrs):
    """Statistics per sample and group of C/num_groups channels (and all spatial positions).

    Opset 18 gives scale and bias per group (num_groups values), opset 21 per channel (C
    values); the sizes tell the two forms apart (they coincide when num_groups = C).
    """
    x, scale, bias = inputs[:3]
    groups = group_count(x.shape, attrs)
    n, c = x.shape[:2]
    eps = float(attrs.get("epsilon", 1e-5))
    dtype = stash_dtype("GroupNormalization", attrs)
    g = x.reshape(n, groups, -1)
    d = _instance_stats(g, (2,), eps, dtype).reshape(x.shape).astype(np.float64)
    scale = scale.astype(np.float64).reshape(-1)
    bias = bias.astype(np.float64).reshape(-1)
    if per_group_params(scale.size, bias.size, groups, c):
        scale, bias = np.repeat(scale, c // groups), np.repeat(bias, c // groups)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return [(d * scale.reshape(shape) + bias.reshape(shape)).astype(x.dtype)]


@register("LRN")
def lrn(inputs, attrs):
    """Local response normalisation across channels:
    y = x / (bias + alpha/size · Σ x²)^beta over channels c − ⌊(size−1)/2⌋ … c + ⌈(size−1)/2⌉."""
    x = inputs[0]
    if "size" not in attrs:
        raise ValueError("LRN: attribute size is required")
    size = int(attrs["size"])
    alpha = float(attrs.get("alpha", 1e-4))
    beta = float(attrs.get("beta", 0.75))
    bias = float(attrs.get("bias", 1.0))
    c = x.shape[1]
    lo, hi = (size - 1) // 2, -(-(size - 1) // 2)
    sq = np.square(x.astype(np.float64))
    # Channel window sums from a cumulative sum padded with one leading zero.
    csum = np.concatenate([np.zeros_like(sq[:, :1]), np.cumsum(sq, axis=1)], axis=1)
    idx = np.arange(c)
    top = np.minimum(idx + hi, c - 1) + 1
    bottom = np.maximum(idx - lo, 0)
    window = np.take(csum, top, axis=1) - np.take(csum, bottom, axis=1)
    return [(x / (bias + (alpha / size) * window) ** beta).astype(x.dtype)]
