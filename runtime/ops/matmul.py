"""MatMul of two runtime tensors (weights-times-activation products run on the crossbar instead)."""

from __future__ import annotations

import numpy as np

from ._registry import register


@register("MatMul")
def matmul(inputs, attrs):
    # ONNX MatMul is defined as numpy.matmul, 1-D promotion and batch broadcasting included.
    return [np.matmul(inputs[0], inputs[1])]


@register("Einsum")
def einsum(inputs, attrs):
    # numpy.einsum implements the same Einstein-summation language (implicit output,
    # "..." broadcasting, repeated labels for diagonals); ONNX allows blanks, numpy not.
    equation = str(attrs["equation"]).replace(" ", "")
    operands = [x for x in inputs if x is not None]
    out = np.einsum(equation, *operands, optimize=len(operands) > 2)
    dtype = operands[0].dtype
    return [np.asarray(out, dtype=dtype)]
