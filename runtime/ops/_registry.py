"""Operator registry and the small helpers every op family shares.

Kept apart from ``__init__`` so that the family modules can import it without
importing the package's public surface (which imports them in turn).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from xbar.errors import UnsupportedOpError

OpFn = Callable[[list[np.ndarray | None], dict[str, Any]], list[np.ndarray]]
AttrCheck = Callable[[str, dict[str, Any]], Any]

REGISTRY: dict[str, OpFn] = {}
# Per op, the check of those attribute values it refuses whatever its inputs: the op runs it
# itself, and the converter runs it on every node (attribute_problem), so that a model the
# runtime would refuse is refused at conversion, naming the node, not at its first run.
ATTR_CHECKS: dict[str, AttrCheck] = {}

# ONNX lets several ops infer their behaviour from how many outputs the node
# declares (Split without sizes, Dropout's mask, MaxPool's Indices); the op
# function cannot see the node, so the executor passes that count under this
# key. No ONNX attribute name starts with an underscore, so it cannot clash.
NUM_OUTPUTS = "_num_outputs"


class OpNotImplementedError(UnsupportedOpError, NotImplementedError):
    """A valid ONNX feature this runtime does not execute.

    Also a NotImplementedError so generic callers that probe optional features
    (and catch that builtin) treat it as "not available" rather than a crash.
    """


def _registrar(table: dict[str, Any], what: str) -> Callable[..., Callable[[Any], Any]]:
    """A decorator factory: `@name(*op_types)` enters the function into `table` under each."""
    def named(*op_types: str) -> Callable[[Any], Any]:
        def deco(fn: Any) -> Any:
            for op_type in op_types:
                if op_type in table:
                    raise RuntimeError(f"{what} {op_type!r} registered twice")
                table[op_type] = fn
            return fn

        return deco

    return named


#: `@register(*op_types)`: the op function of these ops.
register = _registrar(REGISTRY, "op")
#: `@checks(*op_types)`: `fn(op, attrs)`, raising OpNotImplementedError for an attribute value
#: the op does not implement, as the attribute check of these ops.
checks = _registrar(ATTR_CHECKS, "attribute check of")


def attribute_problem(op: str, attrs: dict[str, Any]) -> str | None:
    """What the runtime would refuse in a node's attributes, before it runs; None if nothing."""
    check = ATTR_CHECKS.get(op)
    if check is None:
        return None
    try:
        check(op, attrs)
    except OpNotImplementedError as exc:
        return str(exc)
    return None


def unsupported(op: str, attr: str, value: Any, supported: Sequence[Any] | None = None) -> OpNotImplementedError:
    msg = f"{op}: {attr}={value!r} is not supported"
    if supported:
        msg += f" (supported: {', '.join(repr(s) for s in supported)})"
    return OpNotImplementedError(msg)


def choice(op: str, attrs: dict[str, Any], name: str, default: str, allowed: Sequence[str]) -> str:
    """String attribute `name` (`default` when absent), refused unless one of `allowed`."""
    value = attrs.get(name, default)
    if value not in allowed:
        raise unsupported(op, name, value, list(allowed))
    return value


def opt_input(inputs: Sequence[np.ndarray | None], index: int) -> np.ndarray | None:
    """Optional input ``index``; trailing optional inputs may be absent from the list entirely."""
    return inputs[index] if len(inputs) > index else None


def ints(value: Any) -> list[int]:
    """A 0-d/1-d integer tensor or an int/list attribute as python ints.

    Python ints are used for shape arithmetic so that INT64_MAX/INT64_MIN
    sentinels (Slice ends) cannot overflow numpy int64.
    """
    return [int(v) for v in np.asarray(value).reshape(-1)]


def norm_axis(axis: int, rank: int, op: str) -> int:
    if not -rank <= axis < rank:
        raise ValueError(f"{op}: axis {axis} out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def num_outputs(attrs: dict[str, Any], default: int = 1) -> int:
    return int(attrs.get(NUM_OUTPUTS, default))
