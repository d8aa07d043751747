"""MatMul of two runtime tensors (weights-times-activation products run on the crossbar instead)."""

from __future__ import annotations

import numpy as np

from ._registry import register


@register("MatMul")
def matmul(inputs, attrs):
    # ONNX MatMul is defined as numpy.matmul, 1-D promotion and batch broadcasting included.
    return [np.matmul(inputs[0], inputs[1])]
