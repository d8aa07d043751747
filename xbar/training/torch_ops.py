"""Torch forms of the digital ops, so that gradients flow through them.

Keyed by the ONNX op names of `xbar.ops.DIGITAL_OPS`; the NumPy ops (xbar.runtime.ops) stay
the reference and the one statement of every op's semantics. Values in a torch run are of
two kinds: float activations as torch tensors (they carry gradients), and everything else -
shapes, indices, masks, integer arithmetic, constants no activation has touched - as NumPy
arrays. So:

- a node whose inputs are all NumPy arrays runs its NumPy op (the executor's rule), which is
  how shape sub-graphs (Shape → Gather → Concat → Reshape) run, never re-implemented;
- ops whose outputs carry no gradient (Shape, Size, Range, comparisons, logic, casts to
  integer types) run the NumPy op on the detached values even when an input is a tensor;
- data-movement ops (Slice, Gather, Expand, Tile, Pad, Split, scatters, ...) ask the NumPy
  op *where* every element goes, by running it on an array of element indices, and move the
  tensor's values there with one gather: the NumPy op decides the semantics (negative steps,
  index wrap, opset variants), torch carries the gradient;
- the rest (arithmetic, activations, normalisations, pooling, reductions, MatMul) are
  written in torch after the NumPy op, with the same attribute handling.

Every op is `fn(inputs, attrs) -> outputs` as in xbar.runtime.ops; inputs are tensors,
arrays or None.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import numpy as np

from xbar.training import require_torch

torch = require_torch()  # a one-paragraph error, not an ImportError, where torch is missing
import torch.nn.functional as F  # noqa: E402

from xbar.ops import DIGITAL_OPS, LAYER_OP, RECURRENT_OP
from xbar.runtime.ops import get_op
from xbar.runtime.ops._registry import NUM_OUTPUTS, ints, norm_axis, num_outputs, opt_input, unsupported
from xbar.runtime.ops.elementwise import selu_params
from xbar.runtime.ops.indexing import _check_bounds, _element_index
from xbar.runtime.ops.normalization import group_count, layer_norm_axes, per_group_params, stash_dtype
from xbar.runtime.ops.pooling import _geometry, _valid_counts
from xbar.runtime.ops.reduce import top_k_indices
from xbar.runtime.ops.resize import plan as resize_plan
from xbar.runtime.ops.shape import flatten_dims, reshape_target

Value = Any  # torch.Tensor | np.ndarray | None
TorchOp = Callable[[list[Value], dict[str, Any]], list[Value]]

TORCH_OPS: dict[str, TorchOp] = {}


def _register(*names: str):
    def deco(fn: TorchOp) -> TorchOp:
        for name in names:
            if name not in DIGITAL_OPS:  # one vocabulary: xbar.ops
                raise RuntimeError(f"torch form for {name!r}, which is not a digital op of xbar.ops")
            TORCH_OPS[name] = fn
        return fn

    return deco


def is_tensor(x: Value) -> bool:
    return isinstance(x, torch.Tensor)


def to_numpy(x: Value) -> Value:
    """A NumPy view of a tensor (its gradient is not followed); arrays and None unchanged."""
    return x.detach().numpy() if is_tensor(x) else x


def to_tensor(x: Value) -> torch.Tensor:
    if is_tensor(x):
        return x
    return torch.from_numpy(np.array(x, copy=True))


def _float_of(inputs: list[Value]) -> torch.dtype:
    for x in inputs:
        if is_tensor(x):
            return x.dtype
    return torch.float32


# ------------------------------------------------------------------ NumPy-only ops


def _numpy_op(name: str) -> TorchOp:
    op = get_op(name)

    def run(inputs, attrs):
        return op([to_numpy(x) for x in inputs], attrs)

    run.__name__ = f"numpy_{name}"
    return run


# Outputs that carry no gradient: shapes, sizes, index ranges, booleans.
for _name in ("Shape", "Size", "Range", "ConstantOfShape", "Equal", "Less", "LessOrEqual", "Greater",
              "GreaterOrEqual", "And", "Or", "Xor", "Not"):
    _register(_name)(_numpy_op(_name))


# --------------------------------------------------------- data movement by index


def _index_array(x: torch.Tensor) -> np.ndarray:
    return np.arange(x.numel(), dtype=np.int64).reshape(tuple(x.shape))


def _gather_flat(x: torch.Tensor, index: np.ndarray) -> torch.Tensor:
    return x.reshape(-1)[torch.from_numpy(np.ascontiguousarray(index, dtype=np.int64))]


def _moved(name: str, data: tuple[int, ...] = (0,)) -> TorchOp:
    """An op that only moves the elements of its inputs at positions `data` (one tensor,
    or several of one dtype: each gets its own range of element indices)."""
    op = get_op(name)

    def run(inputs, attrs):
        if not any(is_tensor(inputs[i]) for i in data if i < len(inputs)):
            return op([to_numpy(x) for x in inputs], attrs)
        tensors = [to_tensor(inputs[i]).to(_float_of(inputs)) for i in data]
        proxies, base = list(map(to_numpy, inputs)), 0
        for i, t in zip(data, tensors):
            proxies[i] = _index_array(t) + base
            base += t.numel()
        flat = torch.cat([t.reshape(-1) for t in tensors]) if len(tensors) > 1 else tensors[0]
        return [_gather_flat(flat, idx) if idx.dtype == np.int64 else idx for idx in op(proxies, attrs)]

    run.__name__ = f"moved_{name}"
    return run


for _name in ("Slice", "Gather", "Expand", "Tile", "Split", "DepthToSpace", "SpaceToDepth",
              "GatherElements", "GatherND"):
    _register(_name)(_moved(_name))


def _scatter_targets(name: str, data_shape: tuple[int, ...], indices: np.ndarray, attrs) -> np.ndarray:
    """Flat position in the data of every update element (in the updates' C order), from the
    NumPy scatters' own index checks and wrap-around."""
    if name == "ScatterElements":
        axis = norm_axis(int(attrs.get("axis", 0)), len(data_shape), name)
        where = _element_index(indices, axis, data_shape[axis], name)
        return np.ravel_multi_index(np.broadcast_arrays(*where), data_shape).reshape(-1)
    k = indices.shape[-1]
    flat = indices.reshape(-1, k).astype(np.int64)
    where = tuple(_check_bounds(flat[:, j], data_shape[j], name) for j in range(k))
    inner = math.prod(data_shape[k:])
    return (np.ravel_multi_index(where, data_shape[:k])[:, None] * inner + np.arange(inner)).reshape(-1)


_TORCH_REDUCE = {"mul": "prod", "max": "amax", "min": "amin"}


def _scatter(name: str) -> TorchOp:
    """Reduction "none" only moves elements (data and updates both, as `_moved`); "add",
    "mul", "max", "min" combine every update into its target, duplicates included."""
    moved = _moved(name, data=(0, 2))
    numpy_op = get_op(name)

    def run(inputs, attrs):
        reduction = attrs.get("reduction", "none")
        if reduction == "none" or not any(is_tensor(x) for x in inputs):
            return moved(inputs, attrs)
        if reduction not in ("add", *_TORCH_REDUCE):
            return numpy_op([to_numpy(x) for x in inputs], attrs)  # refuses it by name
        dtype = _float_of(inputs)
        data, updates = to_tensor(inputs[0]).to(dtype), to_tensor(inputs[2]).to(dtype)
        targets = torch.from_numpy(_scatter_targets(name, tuple(data.shape), to_numpy(inputs[1]), attrs))
        flat, upd = data.reshape(-1), updates.reshape(-1)
        if upd.numel() != targets.numel():
            raise ValueError(f"{name}: updates of shape {list(updates.shape)} do not fit the indices")
        if reduction == "add":
            out = flat.index_add(0, targets, upd)
        else:
            out = flat.scatter_reduce(0, targets, upd, reduce=_TORCH_REDUCE[reduction], include_self=True)
        return [out.reshape(data.shape)]

    return run


for _name in ("ScatterND", "ScatterElements"):
    _register(_name)(_scatter(_name))


@_register("Identity")
def identity(inputs, attrs):
    return [inputs[0]]


@_register("Pad")
def pad(inputs, attrs):
    x = inputs[0]
    if not is_tensor(x):
        return get_op("Pad")([to_numpy(v) for v in inputs], attrs)
    value = to_numpy(opt_input(inputs, 2))
    fill = 0.0 if value is None or np.size(value) == 0 else float(np.asarray(value).reshape(-1)[0])
    proxy = [_index_array(x)] + [to_numpy(v) for v in inputs[1:]] + [None] * (3 - len(inputs))
    proxy[2] = np.array(-1, dtype=np.int64)  # constant mode: padded cells read index -1
    idx = get_op("Pad")(proxy, attrs)[0]
    moved = _gather_flat(x, np.maximum(idx, 0))
    if (idx >= 0).all():
        return [moved]
    return [torch.where(torch.from_numpy(idx >= 0), moved, torch.tensor(fill, dtype=x.dtype))]


@_register("Trilu")
def trilu(inputs, attrs):
    x = inputs[0]
    k_in = to_numpy(opt_input(inputs, 1))
    k = ints(k_in)[0] if k_in is not None and np.size(k_in) else 0
    if x.ndim < 2:
        raise ValueError(f"Trilu: input must have rank >= 2, got shape {tuple(x.shape)}")
    return [torch.triu(x, k) if int(attrs.get("upper", 1)) else torch.tril(x, k)]


# ---------------------------------------------------------------- shape (views)


@_register("Reshape")
def reshape(inputs, attrs):
    x = inputs[0]
    return [x.reshape(reshape_target(tuple(x.shape), ints(to_numpy(inputs[1])), attrs))]


@_register("Flatten")
def flatten(inputs, attrs):
    x = inputs[0]
    return [x.reshape(*flatten_dims(tuple(x.shape), attrs))]


@_register("Transpose")
def transpose(inputs, attrs):
    x, perm = inputs[0], attrs.get("perm")
    return [x.permute(*(range(x.ndim - 1, -1, -1) if perm is None else [int(p) for p in perm]))]


@_register("Squeeze")
def squeeze(inputs, attrs):
    x, axes = inputs[0], to_numpy(opt_input(inputs, 1))
    if axes is None or axes.size == 0:
        return [x.squeeze()]
    dims = tuple(norm_axis(a, x.ndim, "Squeeze") for a in ints(axes))
    if any(x.shape[d] != 1 for d in dims):
        raise ValueError(f"Squeeze: axes {list(dims)} of shape {list(x.shape)} are not all of size 1")
    return [x.squeeze(dims)]


@_register("Unsqueeze")
def unsqueeze(inputs, attrs):
    x = inputs[0]
    rank = x.ndim + len(ints(to_numpy(inputs[1])))
    # Negative axes count from the end of the output, as np.expand_dims does.
    for a in sorted(norm_axis(a, rank, "Unsqueeze") for a in ints(to_numpy(inputs[1]))):
        x = x.unsqueeze(a)
    return [x]


@_register("Concat")
def concat(inputs, attrs):
    parts = [x for x in inputs if x is not None]
    dtype = _float_of(parts)
    return [torch.cat([to_tensor(x).to(dtype) for x in parts], dim=int(attrs["axis"]))]


@_register("Cast", "CastLike")
def cast(inputs, attrs):
    x = inputs[0]
    # The target type as the NumPy op decides it, read off a one-element proxy.
    probe = get_op("Cast" if "to" in attrs else "CastLike")(
        [np.zeros(1, to_numpy(x).dtype)] + [to_numpy(v) for v in inputs[1:]], attrs)[0]
    if probe.dtype.kind != "f" or not is_tensor(x):  # integers and booleans carry no gradient
        return [to_numpy(x).astype(probe.dtype, copy=False)]
    return [x.to(torch.from_numpy(probe).dtype)]


# ----------------------------------------------------------------- elementwise


def _unary(name: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    _register(name)(lambda inputs, attrs: [fn(inputs[0])])


for _name, _fn in {
    "Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Erf": torch.erf,
    "Softsign": lambda x: x / (1 + x.abs()), "Neg": torch.neg, "Abs": torch.abs, "Sqrt": torch.sqrt,
    "Exp": torch.exp, "Log": torch.log, "Floor": torch.floor, "Ceil": torch.ceil,
    "Reciprocal": torch.reciprocal, "Sign": torch.sign, "Sin": torch.sin, "Cos": torch.cos,
}.items():
    _unary(_name, _fn)


def _neg_expm1(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """expm1 of the negative part only (the positive branch is discarded and could overflow)."""
    neg = torch.clamp(x, max=0)
    return torch.expm1(neg / scale if scale != 1.0 else neg)


@_register("LeakyRelu")
def leaky_relu(inputs, attrs):
    x = inputs[0]
    return [torch.where(x >= 0, x, x * float(attrs.get("alpha", 0.01)))]


@_register("PRelu")
def prelu(inputs, attrs):
    x = inputs[0]
    slope = to_tensor(inputs[1]).to(x.dtype)
    return [torch.where(x >= 0, x, x * slope)]


@_register("Elu")
def elu(inputs, attrs):
    x = inputs[0]
    return [torch.where(x > 0, x, float(attrs.get("alpha", 1.0)) * _neg_expm1(x))]


@_register("Selu")
def selu(inputs, attrs):
    x = inputs[0]
    alpha, gamma = selu_params(attrs)
    return [gamma * torch.where(x > 0, x, alpha * _neg_expm1(x))]


@_register("Celu")
def celu(inputs, attrs):
    x = inputs[0]
    alpha = float(attrs.get("alpha", 1.0))
    return [torch.where(x > 0, x, alpha * _neg_expm1(x, alpha))]


@_register("Clip")
def clip(inputs, attrs):
    x = inputs[0]
    out = x
    # max-then-min, so min > max yields max everywhere, as the NumPy op and onnxruntime.
    lo, hi = opt_input(inputs, 1), opt_input(inputs, 2)
    if lo is not None:
        out = torch.maximum(out, to_tensor(lo).to(x.dtype)) if is_tensor(lo) else torch.clamp(out, min=float(lo))
    if hi is not None:
        out = torch.minimum(out, to_tensor(hi).to(x.dtype)) if is_tensor(hi) else torch.clamp(out, max=float(hi))
    return [out]


@_register("HardSigmoid")
def hard_sigmoid(inputs, attrs):
    x = inputs[0]
    return [torch.clamp(x * float(attrs.get("alpha", 0.2)) + float(attrs.get("beta", 0.5)), 0, 1)]


@_register("HardSwish")
def hard_swish(inputs, attrs):
    x = inputs[0]
    return [torch.clamp(x * (1 / 6) + 0.5, 0, 1) * x]


@_register("Softplus")
def softplus(inputs, attrs):
    x = inputs[0]
    return [torch.logaddexp(torch.zeros((), dtype=x.dtype), x)]


@_register("Gelu")
def gelu(inputs, attrs):
    x = inputs[0]
    approximate = attrs.get("approximate", "none")
    if approximate == "none":
        inner = torch.erf(x * (1 / math.sqrt(2)))
    elif approximate == "tanh":
        inner = torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * (x * x * x)))
    else:
        raise unsupported("Gelu", "approximate", approximate, ["none", "tanh"])
    return [0.5 * x * (1 + inner)]


@_register("Softmax")
def softmax(inputs, attrs):
    return [torch.softmax(inputs[0], int(attrs.get("axis", -1)))]


@_register("LogSoftmax")
def log_softmax(inputs, attrs):
    return [torch.log_softmax(inputs[0], int(attrs.get("axis", -1)))]


@_register("Dropout")
def dropout(inputs, attrs):
    x = inputs[0]
    training = to_numpy(opt_input(inputs, 2))
    if training is not None and bool(np.asarray(training).reshape(-1)[0]):
        raise unsupported("Dropout", "training_mode", True, [False])
    outputs = [x]
    if num_outputs(attrs) >= 2:
        outputs.append(np.ones(tuple(x.shape), dtype=np.bool_))
    return outputs


def _pair(a: Value, b: Value) -> tuple[torch.Tensor, torch.Tensor]:
    return to_tensor(a), to_tensor(b)


def _binary(name: str, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    _register(name)(lambda inputs, attrs: [fn(*_pair(inputs[0], inputs[1]))])


for _name, _fn in {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.true_divide}.items():
    _binary(_name, _fn)


@_register("Pow")
def power(inputs, attrs):
    x, y = _pair(inputs[0], inputs[1])
    if not x.is_floating_point():
        return get_op("Pow")([to_numpy(x), to_numpy(y)], attrs)
    y = y.to(x.dtype)  # the exponent may have its own type; the result has the base's
    if y.numel() == 1 and y.ndim <= x.ndim and float(y.detach().reshape(-1)[0]) == 2.0:
        return [x * x]
    return [torch.pow(x, y)]


@_register("Mod")
def mod(inputs, attrs):
    a, b = _pair(inputs[0], inputs[1])
    if not int(attrs.get("fmod", 0)):
        return get_op("Mod")([to_numpy(a), to_numpy(b)], attrs)  # refuses floats, as it should
    return [torch.fmod(a, b)]


@_register("Where")
def where(inputs, attrs):
    x, y = _pair(inputs[1], inputs[2])
    return [torch.where(to_tensor(to_numpy(inputs[0])), x, y)]


def _variadic(name: str, fn) -> None:
    _register(name)(lambda inputs, attrs: [functools.reduce(fn, [to_tensor(x) for x in inputs])])


_variadic("Sum", torch.add)
_variadic("Max", torch.maximum)
_variadic("Min", torch.minimum)


@_register("Mean")
def mean(inputs, attrs):
    return [functools.reduce(torch.add, [to_tensor(x) for x in inputs]) / len(inputs)]


# ---------------------------------------------------------------- products


@_register("MatMul")
def matmul(inputs, attrs):
    return [torch.matmul(*_pair(inputs[0], inputs[1]))]


@_register("Einsum")
def einsum(inputs, attrs):
    operands = [to_tensor(x) for x in inputs if x is not None]
    return [torch.einsum(str(attrs["equation"]).replace(" ", ""), *operands)]


# ---------------------------------------------------------------- reductions


def _reduce(name: str, fn, elementwise=None) -> None:
    def run(inputs, attrs):
        x = inputs[0]
        axes_in = to_numpy(opt_input(inputs, 1))
        axes = ints(axes_in) if axes_in is not None else [int(a) for a in attrs.get("axes") or []]
        if not axes:
            if int(attrs.get("noop_with_empty_axes", 0)):  # as the NumPy op: only the reduction skipped
                return [x if elementwise is None else elementwise(x)]
            axes = list(range(x.ndim))
        dims = tuple(sorted({norm_axis(a, x.ndim, name) for a in axes}))
        if any(x.shape[d] == 0 for d in dims):
            return get_op(name)([to_numpy(x), axes_in], attrs)  # the reduction's identity
        return [fn(x, dim=dims, keepdim=bool(int(attrs.get("keepdims", 1))))]

    _register(name)(run)


_reduce("ReduceMean", torch.mean)
_reduce("ReduceSum", torch.sum)
_reduce("ReduceMax", torch.amax)
_reduce("ReduceMin", torch.amin)
_reduce("ReduceL1", lambda x, dim, keepdim: torch.sum(x.abs(), dim=dim, keepdim=keepdim), torch.abs)
# vector_norm: a gradient of 0, not nan, where every value is 0 (sqrt's derivative there is inf)
_reduce("ReduceL2", lambda x, dim, keepdim: torch.linalg.vector_norm(x, 2, dim=dim, keepdim=keepdim), torch.abs)
_reduce("ReduceSumSquare", lambda x, dim, keepdim: torch.sum(x * x, dim=dim, keepdim=keepdim), torch.square)


def _prod(x: torch.Tensor, dim: tuple[int, ...], keepdim: bool) -> torch.Tensor:
    for d in sorted(dim, reverse=True):  # torch.prod takes one dimension at a time
        x = torch.prod(x, dim=d, keepdim=keepdim)
    return x


_reduce("ReduceProd", _prod)


def _arg(name: str, fn: Callable[..., torch.Tensor]) -> None:
    def run(inputs, attrs):
        x = inputs[0]
        axis = norm_axis(int(attrs.get("axis", 0)), x.ndim, name)
        keep = bool(int(attrs.get("keepdims", 1)))
        if int(attrs.get("select_last_index", 0)):
            return [x.shape[axis] - 1 - fn(torch.flip(x, (axis,)), dim=axis, keepdim=keep)]
        # torch's argmax/argmin return the first of equal extremes, as ONNX's default does
        return [fn(x, dim=axis, keepdim=keep)]

    _register(name)(run)


_arg("ArgMax", torch.argmax)
_arg("ArgMin", torch.argmin)


@_register("TopK")
def top_k(inputs, attrs):
    """The NumPy op's indices (ties in index order, as onnxruntime), values gathered from x:
    gradients flow to the values picked."""
    x = inputs[0]
    index, axis = top_k_indices(to_numpy(x), ints(to_numpy(inputs[1]))[0], attrs)
    if not is_tensor(x):  # a constant (or integer) input: the NumPy op itself
        return get_op("TopK")([x, to_numpy(inputs[1])], attrs)
    return [torch.gather(x, axis, torch.from_numpy(index)), index]


@_register("Resize")
def resize(inputs, attrs):
    """The NumPy op's taps (runtime/ops/resize.py), applied with index_select: linear in x,
    so gradients flow to it."""
    x = inputs[0]
    consts = [None] + [to_numpy(v) if v is not None else None for v in inputs[1:]]  # roi, scales, sizes
    if not is_tensor(x):  # a constant (or integer) input: nothing to differentiate
        return get_op("Resize")([x] + consts[1:], attrs)
    y = x
    for axis, index, weight in resize_plan(tuple(x.shape), consts, attrs):
        shape = [1] * x.ndim
        shape[axis] = -1
        acc = None
        for t in range(index.shape[1]):
            part = (torch.index_select(y, axis, torch.tensor(index[:, t])) *
                    torch.tensor(weight[:, t], dtype=y.dtype).reshape(shape))
            acc = part if acc is None else acc + part
        y = acc
    return [y]


# ------------------------------------------------------------- normalisation


def _channel(v: torch.Tensor, ndim: int) -> torch.Tensor:
    return v.reshape((1, -1) + (1,) * (ndim - 2))


@_register("BatchNormalization")
def batch_normalization(inputs, attrs):
    if int(attrs.get("training_mode", 0)):
        raise unsupported("BatchNormalization", "training_mode", 1, [0])
    x = inputs[0]
    scale, bias, m, var = (to_tensor(v).to(torch.float64) for v in inputs[1:5])
    # Coefficients in float64, then the data's dtype, as the NumPy op folds them.
    a = scale / torch.sqrt(var + float(attrs.get("epsilon", 1e-5)))
    b = bias - m * a
    return [x * _channel(a.to(x.dtype), x.ndim) + _channel(b.to(x.dtype), x.ndim)]


_TORCH_FLOAT = {np.float32: torch.float32, np.float64: torch.float64}


def _stash(op: str, attrs) -> torch.dtype:
    return _TORCH_FLOAT[stash_dtype(op, attrs)]


@_register("LayerNormalization")
def layer_normalization(inputs, attrs):
    x, scale = inputs[0], to_tensor(inputs[1])
    bias = opt_input(inputs, 2)
    dims = layer_norm_axes(x.ndim, attrs)
    xs = x.to(_stash("LayerNormalization", attrs))
    m = xs.mean(dim=dims, keepdim=True)
    d = xs - m
    inv_std = 1 / torch.sqrt((d * d).mean(dim=dims, keepdim=True) + float(attrs.get("epsilon", 1e-5)))
    y = (d * inv_std).to(x.dtype) * scale.to(x.dtype)
    if bias is not None:
        y = y + to_tensor(bias).to(x.dtype)
    return [y, m, inv_std][:max(1, num_outputs(attrs))]


def _instance_stats(x: torch.Tensor, dims: tuple[int, ...], eps: float, dtype: torch.dtype) -> torch.Tensor:
    xs = x.to(dtype)
    d = xs - xs.mean(dim=dims, keepdim=True)
    return d / torch.sqrt((d * d).mean(dim=dims, keepdim=True) + eps)


@_register("InstanceNormalization")
def instance_normalization(inputs, attrs):
    x = inputs[0]
    scale, bias = (to_tensor(v).to(torch.float64) for v in inputs[1:3])
    if x.ndim < 3:
        raise ValueError(f"InstanceNormalization: expected an (N, C, D1, ...) input, got shape {tuple(x.shape)}")
    d = _instance_stats(x, tuple(range(2, x.ndim)), float(attrs.get("epsilon", 1e-5)), torch.float64)
    return [(d * _channel(scale, x.ndim) + _channel(bias, x.ndim)).to(x.dtype)]


@_register("GroupNormalization")
def group_normalization(inputs, attrs):
    x = inputs[0]
    groups = group_count(tuple(x.shape), attrs)
    n, c = x.shape[:2]
    eps = float(attrs.get("epsilon", 1e-5))
    d = _instance_stats(x.reshape(n, groups, -1), (2,), eps, _stash("GroupNormalization", attrs))
    d = d.reshape(x.shape).to(torch.float64)
    scale, bias = (to_tensor(v).to(torch.float64).reshape(-1) for v in inputs[1:3])
    if per_group_params(scale.numel(), bias.numel(), groups, c):
        scale, bias = scale.repeat_interleave(c // groups), bias.repeat_interleave(c // groups)
    return [(d * _channel(scale, x.ndim) + _channel(bias, x.ndim)).to(x.dtype)]


@_register("LRN")
def lrn(inputs, attrs):
    x = inputs[0]
    if "size" not in attrs:
        raise ValueError("LRN: attribute size is required")
    size = int(attrs["size"])
    alpha, beta, bias = float(attrs.get("alpha", 1e-4)), float(attrs.get("beta", 0.75)), float(attrs.get("bias", 1.0))
    c = x.shape[1]
    lo, hi = (size - 1) // 2, -(-(size - 1) // 2)
    sq = torch.square(x.to(torch.float64))
    csum = torch.cat([torch.zeros_like(sq[:, :1]), torch.cumsum(sq, dim=1)], dim=1)
    idx = torch.arange(c)
    top = torch.clamp(idx + hi, max=c - 1) + 1
    bottom = torch.clamp(idx - lo, min=0)
    window = csum.index_select(1, top) - csum.index_select(1, bottom)
    return [(x / (bias + (alpha / size) * window) ** beta).to(x.dtype)]


# ------------------------------------------------------------------- pooling


def _pool(x: torch.Tensor, attrs: dict[str, Any], op: str, fill: float, reduce) -> tuple[torch.Tensor, Any]:
    """Every window of x (N, C, *spatial) reduced, geometry (pads, ceil mode, auto_pad) as the
    NumPy pooling decides it; padded with `fill`, reduced one axis at a time (separable)."""
    if x.ndim not in (3, 4, 5):
        raise unsupported(op, "input rank", x.ndim, [3, 4, 5])
    spatial = tuple(x.shape[2:])
    g = _geometry(op, spatial, attrs)
    pads = []
    for b, n, ext in reversed(list(zip(g.pad_begin, spatial, g.extent))):
        pads += [b, ext - b - n]
    out = F.pad(x, pads, value=fill) if any(pads) else x
    for i, (k, s, d, o) in enumerate(zip(g.kernel, g.strides, g.dilations, g.out)):
        axis = 2 + i
        windows = out.unfold(axis, (k - 1) * d + 1, s).narrow(axis, 0, o)  # (..., o, ..., span)
        out = reduce(windows[..., ::d], -1)
    return out, g


@_register("MaxPool")
def max_pool(inputs, attrs):
    if num_outputs(attrs) >= 2:
        raise unsupported("MaxPool", "output Indices", "requested")
    return [_pool(inputs[0], attrs, "MaxPool", -math.inf, lambda w, dim: w.amax(dim=dim))[0]]


@_register("AveragePool")
def average_pool(inputs, attrs):
    x = inputs[0]
    total, g = _pool(x, attrs, "AveragePool", 0.0, lambda w, dim: w.sum(dim=dim))
    counts = _valid_counts(g, tuple(x.shape[2:]), bool(attrs.get("count_include_pad", 0)), np.float32)
    return [total / torch.from_numpy(counts).to(x.dtype)]


@_register("GlobalAveragePool")
def global_average_pool(inputs, attrs):
    x = inputs[0]
    return [x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)]


@_register("GlobalMaxPool")
def global_max_pool(inputs, attrs):
    x = inputs[0]
    return [x.amax(dim=tuple(range(2, x.ndim)), keepdim=True)]


@_register("CumSum")
def cumsum(inputs, attrs):
    x = inputs[0]
    (axis,) = ints(to_numpy(inputs[1]))
    axis = norm_axis(axis, x.ndim, "CumSum")
    y = x.flip(axis) if int(attrs.get("reverse", 0)) else x
    y = torch.cumsum(y, dim=axis)
    if int(attrs.get("exclusive", 0)):
        y = torch.cat([torch.zeros_like(y.narrow(axis, 0, 1)), y.narrow(axis, 0, y.shape[axis] - 1)], dim=axis)
    return [y.flip(axis) if int(attrs.get("reverse", 0)) else y]


# --------------------------------------------------------------------- bundle


def missing_ops(bundle) -> dict[str, list[str]]:
    """Ops of the bundle's graph with no torch form → the nodes that use them. Recurrent nodes
    (LSTM/GRU/RNN, a digital time loop over crossbar layers) have none yet: listed by cell."""
    missing: dict[str, list[str]] = {}
    for node in bundle.graph["nodes"]:
        op = node["op"]
        if op == LAYER_OP or op in TORCH_OPS:
            continue
        if op == RECURRENT_OP:
            op = str(node["attrs"].get("cell", "recurrent")).upper()
        missing.setdefault(op, []).append(node["name"])
    return missing


__all__ = ["NUM_OUTPUTS", "TORCH_OPS", "is_tensor", "missing_ops", "to_numpy", "to_tensor"]
