"""Normalization ops, inference mode only."""

from __future__ import annotations

import numpy as np

from ._registry import register, unsupported


@register("BatchNormalization")
def batch_normalization(inputs, attrs):
    if int(attrs.get("training_mode", 0)):
        raise unsupported("BatchNormalization", "training_mode", 1, [0])
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
