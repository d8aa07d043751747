"""Digital (non-crossbar) operators of the runtime, as NumPy functions.

Every op is ``fn(inputs, attrs) -> outputs``:

* ``inputs``: the node's inputs in ONNX order; an omitted optional input is
  ``None`` (trailing omitted ones may also be left out of the list);
* ``attrs``: decoded attributes (int, float, str, lists of those, numpy
  arrays for tensor attributes). Ops whose behaviour depends on the number
  of outputs the node declares (Split without sizes, Dropout's mask,
  MaxPool's Indices) read it from ``attrs[NUM_OUTPUTS]``;
* returns the list of outputs. Outputs may be views of inputs; no op writes
  into its inputs. Float outputs keep the input's dtype.

Semantics are those of ONNX opset 13-21. Unsupported attribute values raise
:class:`xbar.errors.UnsupportedOpError` (as :class:`OpNotImplementedError`).
"""

from __future__ import annotations

from xbar.ops import DIGITAL_OPS

from . import elementwise, indexing, matmul, normalization, pooling, reduce, resize, shape  # noqa: F401  (register ops)
from ._registry import NUM_OUTPUTS, REGISTRY, OpFn, OpNotImplementedError, attribute_problem

# The shared vocabulary (xbar.ops); tests keep the registry equal to it.
SUPPORTED_OPS: frozenset[str] = DIGITAL_OPS


def get_op(op_type: str) -> OpFn | None:
    return REGISTRY.get(op_type)


__all__ = ["NUM_OUTPUTS", "REGISTRY", "SUPPORTED_OPS", "OpFn", "OpNotImplementedError", "attribute_problem", "get_op"]
