"""Element-wise ops: activations, arithmetic, comparisons and logic (ONNX opset 13-21).

Dtype rule: outputs keep the dtype of the (first) data input. Python
scalars never upcast a float32 array, but numpy arrays of another precision
(initializers, tensor attributes) would, so those are cast explicitly.
Floating-point exceptions (log(0), overflow in exp, ...) are silenced because
ONNX defines IEEE results (inf/nan) for them, as onnxruntime returns.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import special

from ._registry import checks, choice, num_outputs, opt_input, register, unsupported


def _like(result: np.ndarray, x: np.ndarray) -> np.ndarray:
    # scipy.special and some numpy loops have no float16 kernel and return float32.
    return result if result.dtype == x.dtype else result.astype(x.dtype)


def _scalar(value: Any, x: np.ndarray) -> np.ndarray:
    return np.asarray(value, dtype=x.dtype)


def _def_unary(op_type: str, fn: Callable[[np.ndarray], np.ndarray]) -> None:
    def op(inputs: list[np.ndarray | None], attrs: dict[str, Any]) -> list[np.ndarray]:
        x = inputs[0]
        with np.errstate(all="ignore"):
            return [_like(np.asarray(fn(x)), x)]

    op.__name__ = op.__qualname__ = f"op_{op_type}"
    register(op_type)(op)


def _softsign(x: np.ndarray) -> np.ndarray:
    return x / (1 + np.abs(x))


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


for _name, _fn in {
    "Relu": _relu,
    "Sigmoid": special.expit,  # no overflow warnings and exact tails, unlike 1/(1+exp(-x))
    "Tanh": np.tanh,
    "Softsign": _softsign,
    "Erf": special.erf,
    "Neg": np.negative,
    "Abs": np.abs,
    "Sqrt": np.sqrt,
    "Exp": np.exp,
    "Log": np.log,
    "Floor": np.floor,
    "Ceil": np.ceil,
    "Reciprocal": np.reciprocal,
    "Sign": np.sign,
    "Not": np.logical_not,
    "Sin": np.sin,
    "Cos": np.cos,
}.items():
    _def_unary(_name, _fn)


# ---------------------------------------------------------------- activations


@register("LeakyRelu")
def leaky_relu(inputs, attrs):
    x = inputs[0]
    alpha = float(attrs.get("alpha", 0.01))
    return [np.where(x >= 0, x, x * alpha)]


@register("PRelu")
def prelu(inputs, attrs):
    x, slope = inputs[0], inputs[1]
    slope = slope.astype(x.dtype, copy=False)
    return [np.where(x >= 0, x, x * slope)]


def _neg_expm1(x: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """expm1 of the negative part only: the positive branch is discarded by
    the callers, and evaluating exp there would overflow for large inputs."""
    neg = np.minimum(x, 0)
    return np.expm1(neg / scale if scale != 1.0 else neg)


@register("Elu")
def elu(inputs, attrs):
    x = inputs[0]
    alpha = float(attrs.get("alpha", 1.0))
    return [np.where(x > 0, x, alpha * _neg_expm1(x))]


def selu_params(attrs) -> tuple[float, float]:
    """Selu's (alpha, gamma), the ONNX defaults unless given (also the torch executor's)."""
    return float(attrs.get("alpha", 1.67326319217681884765625)), float(attrs.get("gamma", 1.05070102214813232421875))


@register("Selu")
def selu(inputs, attrs):
    x = inputs[0]
    alpha, gamma = selu_params(attrs)
    return [gamma * np.where(x > 0, x, alpha * _neg_expm1(x))]


@register("Celu")
def celu(inputs, attrs):
    x = inputs[0]
    alpha = float(attrs.get("alpha", 1.0))
    return [np.where(x > 0, x, alpha * _neg_expm1(x, alpha))]


@register("Clip")
def clip(inputs, attrs):
    x = inputs[0]
    lo, hi = opt_input(inputs, 1), opt_input(inputs, 2)
    out = x
    # max-then-min, so min > max yields max everywhere, as onnxruntime does.
    if lo is not None:
        out = np.maximum(out, _scalar(lo, x))
    if hi is not None:
        out = np.minimum(out, _scalar(hi, x))
    return [out]


@register("HardSigmoid")
def hard_sigmoid(inputs, attrs):
    x = inputs[0]
    alpha = float(attrs.get("alpha", 0.2))
    beta = float(attrs.get("beta", 0.5))
    y = x * alpha
    y += beta
    return [np.clip(y, 0, 1, out=y)]


@register("HardSwish")
def hard_swish(inputs, attrs):
    x = inputs[0]
    # In place on one temporary: this runs on full activation maps.
    y = x * (1 / 6)
    y += 0.5
    np.clip(y, 0, 1, out=y)
    y *= x
    return [y]


@register("Softplus")
def softplus(inputs, attrs):
    x = inputs[0]
    # log(1 + exp(x)) without overflow for large x.
    return [_like(np.logaddexp(x.dtype.type(0), x), x)]


@checks("Gelu")
def _approximation(op: str, attrs) -> str:
    return choice(op, attrs, "approximate", "none", ("none", "tanh"))


@register("Gelu")
def gelu(inputs, attrs):
    x = inputs[0]
    if _approximation("Gelu", attrs) == "none":
        inner = special.erf(x * (1 / math.sqrt(2)))
    else:
        inner = np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * (x * x * x)))
    return [_like(0.5 * x * (1 + inner), x)]


def _axis_attr(attrs: dict[str, Any]) -> int:
    return int(attrs.get("axis", -1))


@register("Softmax")
def softmax(inputs, attrs):
    x = inputs[0]
    axis = _axis_attr(attrs)
    with np.errstate(all="ignore"):
        e = np.exp(x - np.max(x, axis=axis, keepdims=True))
        e /= np.sum(e, axis=axis, keepdims=True)
    return [e]


@register("LogSoftmax")
def log_softmax(inputs, attrs):
    x = inputs[0]
    axis = _axis_attr(attrs)
    with np.errstate(all="ignore"):
        shifted = x - np.max(x, axis=axis, keepdims=True)
        shifted -= np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))
    return [shifted]


@register("Dropout")
def dropout(inputs, attrs):
    x = inputs[0]
    training = opt_input(inputs, 2)
    if training is not None and bool(np.asarray(training).reshape(-1)[0]):
        raise unsupported("Dropout", "training_mode", True, [False])
    outputs = [x]
    if num_outputs(attrs) >= 2:
        outputs.append(np.ones(x.shape, dtype=np.bool_))
    return outputs


# ----------------------------------------------------------------- arithmetic


def _def_binary(op_type: str, fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> None:
    def op(inputs: list[np.ndarray | None], attrs: dict[str, Any]) -> list[np.ndarray]:
        with np.errstate(all="ignore"):
            return [fn(inputs[0], inputs[1])]

    op.__name__ = op.__qualname__ = f"op_{op_type}"
    register(op_type)(op)


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iu":
        # ONNX integer Div is C division (truncates toward zero); numpy floors.
        q = np.floor_divide(a, b)
        if a.dtype.kind == "i":
            q = q + ((np.remainder(a, b) != 0) & ((a < 0) != (b < 0)))
        return q
    return np.true_divide(a, b)


for _name, _fn in {
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Div": _div,
    "Equal": np.equal,
    "Less": np.less,
    "LessOrEqual": np.less_equal,
    "Greater": np.greater,
    "GreaterOrEqual": np.greater_equal,
    "And": np.logical_and,
    "Or": np.logical_or,
    "Xor": np.logical_xor,
}.items():
    _def_binary(_name, _fn)


@register("Pow")
def power(inputs, attrs):
    x, y = inputs[0], inputs[1]
    with np.errstate(all="ignore"):
        if x.dtype.kind == "f":
            # The exponent may have its own type (T1); the result has the base's.
            y = y.astype(x.dtype, copy=False)
            if y.size == 1 and y.ndim <= x.ndim and float(y.reshape(-1)[0]) == 2.0:
                return [x * x]
            return [np.power(x, y)]
        if y.dtype.kind in "iu" and not np.any(y < 0):
            return [np.power(x, y.astype(x.dtype, copy=False))]
        # Integer base with a fractional or negative exponent: evaluated in
        # float64 and truncated, as C's static_cast<int>(pow(...)) does.
        return [np.trunc(np.power(x.astype(np.float64), y.astype(np.float64))).astype(x.dtype)]


@register("Mod")
def mod(inputs, attrs):
    a, b = inputs[0], inputs[1]
    fmod = int(attrs.get("fmod", 0))
    if a.dtype.kind == "f" and not fmod:
        raise unsupported("Mod", "fmod", fmod, [1])
    with np.errstate(all="ignore"):
        return [np.fmod(a, b) if fmod else np.mod(a, b)]


@register("Where")
def where(inputs, attrs):
    return [np.where(inputs[0], inputs[1], inputs[2])]


def _def_variadic(op_type: str, fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> None:
    def op(inputs: list[np.ndarray | None], attrs: dict[str, Any]) -> list[np.ndarray]:
        return [functools.reduce(fn, inputs)]

    op.__name__ = op.__qualname__ = f"op_{op_type}"
    register(op_type)(op)


_def_variadic("Sum", np.add)
_def_variadic("Max", np.maximum)
_def_variadic("Min", np.minimum)


@register("Mean")
def mean(inputs, attrs):
    total = functools.reduce(np.add, inputs)
    return [_like(total / len(inputs), inputs[0])]
