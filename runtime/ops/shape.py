"""Shape and data-movement ops (ONNX opset 13-21).

Outputs may be views of their inputs (Reshape, Transpose, Slice, Squeeze,
Identity, ...); no op here ever writes into an input.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from ._registry import NUM_OUTPUTS, checks, choice, norm_axis, num_outputs, ints, opt_input, register, unsupported


@register("Identity")
def identity(inputs, attrs):
    return [inputs[0]]


def reshape_target(in_shape: tuple[int, ...], shape: list[int], attrs) -> list[int]:
    """Reshape's target for an input of `in_shape` (also the torch executor's)."""
    if not int(attrs.get("allowzero", 0)):
        # 0 means "copy this dim from the input" unless allowzero is set.
        shape = [in_shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return list(shape)


@register("Reshape")
def reshape(inputs, attrs):
    x = inputs[0]
    return [x.reshape(reshape_target(x.shape, ints(inputs[1]), attrs))]


def flatten_dims(in_shape: tuple[int, ...], attrs) -> tuple[int, int]:
    """Flatten's (outer, inner) for an input of `in_shape` (also the torch executor's)."""
    ndim = len(in_shape)
    axis = int(attrs.get("axis", 1))
    axis = axis + ndim if axis < 0 else axis
    if not 0 <= axis <= ndim:
        raise ValueError(f"Flatten: axis {attrs.get('axis')} out of range for rank {ndim}")
    # Explicit products instead of -1, which is ambiguous for empty tensors.
    return int(np.prod(in_shape[:axis], dtype=np.int64)), int(np.prod(in_shape[axis:], dtype=np.int64))


@register("Flatten")
def flatten(inputs, attrs):
    x = inputs[0]
    return [x.reshape(*flatten_dims(x.shape, attrs))]


@register("Transpose")
def transpose(inputs, attrs):
    perm = attrs.get("perm")
    return [np.transpose(inputs[0], None if perm is None else [int(p) for p in perm])]


@register("Squeeze")
def squeeze(inputs, attrs):
    x, axes = inputs[0], opt_input(inputs, 1)
    if axes is None or axes.size == 0:  # onnxruntime treats empty axes like absent ones
        return [np.squeeze(x)]
    return [np.squeeze(x, axis=tuple(norm_axis(a, x.ndim, "Squeeze") for a in ints(axes)))]


@register("Unsqueeze")
def unsqueeze(inputs, attrs):
    # np.expand_dims resolves negative axes against the output rank, as ONNX does.
    return [np.expand_dims(inputs[0], tuple(ints(inputs[1])))]


@register("Concat")
def concat(inputs, attrs):
    return [np.concatenate([x for x in inputs if x is not None], axis=int(attrs["axis"]))]


@register("Split")
def split(inputs, attrs):
    x = inputs[0]
    axis = norm_axis(int(attrs.get("axis", 0)), x.ndim, "Split")
    dim = x.shape[axis]
    sizes_in = opt_input(inputs, 1)
    if sizes_in is not None:
        sizes = ints(sizes_in)
    elif "num_outputs" in attrs:
        # opset 18: equal chunks of ceil(dim / n), the last one smaller.
        n = int(attrs["num_outputs"])
        chunk = -(-dim // n)
        sizes = [chunk] * (n - 1) + [dim - chunk * (n - 1)]
    elif NUM_OUTPUTS in attrs:
        n = num_outputs(attrs)
        if dim % n:
            raise ValueError(f"Split: dimension {dim} of axis {axis} is not divisible into {n} equal outputs")
        sizes = [dim // n] * n
    else:
        raise ValueError(
            f"Split: without a 'split' input or 'num_outputs' attribute the executor must pass "
            f"the node's output count as attrs[{NUM_OUTPUTS!r}]"
        )
    if any(s < 0 for s in sizes) or sum(sizes) != dim:
        raise ValueError(f"Split: sizes {sizes} do not partition dimension {dim} of axis {axis}")
    return np.split(x, np.cumsum(sizes)[:-1], axis=axis)


@register("Slice")
def slice_(inputs, attrs):
    x = inputs[0]
    starts, ends = ints(inputs[1]), ints(inputs[2])
    axes_in, steps_in = opt_input(inputs, 3), opt_input(inputs, 4)
    axes = ints(axes_in) if axes_in is not None else list(range(len(starts)))
    steps = ints(steps_in) if steps_in is not None else [1] * len(starts)
    index = [slice(None)] * x.ndim
    # Python slice semantics (negative wrap once, then clamp; the clamp bounds
    # depend on the step's sign) are exactly ONNX's, including INT64_MIN/MAX
    # sentinels, as long as the bounds stay python ints.
    for axis, start, end, step in zip(axes, starts, ends, steps):
        if step == 0:
            raise ValueError("Slice: steps must be non-zero")
        index[norm_axis(axis, x.ndim, "Slice")] = slice(start, end, step)
    return [x[tuple(index)]]


@register("Gather")
def gather(inputs, attrs):
    x, indices = inputs[0], inputs[1]
    axis = norm_axis(int(attrs.get("axis", 0)), x.ndim, "Gather")
    # np.take accepts negative indices (counted from the end) like ONNX, and a
    # 0-d index drops the axis.
    return [np.take(x, indices, axis=axis)]


@register("Shape")
def shape(inputs, attrs):
    dims = inputs[0].shape
    start = int(attrs.get("start", 0))
    end = attrs.get("end")
    # Out-of-range start/end are clamped, the same as a python slice does.
    return [np.array(dims[start : None if end is None else int(end)], dtype=np.int64)]


@register("Size")
def size(inputs, attrs):
    return [np.array(inputs[0].size, dtype=np.int64)]


_CASTABLE = {
    TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16,
    TensorProto.INT8, TensorProto.INT16, TensorProto.INT32, TensorProto.INT64,
    TensorProto.UINT8, TensorProto.UINT16, TensorProto.UINT32, TensorProto.UINT64,
    TensorProto.BOOL,
}  # fmt: skip


def _castable(to: int, op: str) -> None:
    # Strings, float8 (with its saturate semantics) and sub-byte types are out of scope.
    if to not in _CASTABLE:
        name = TensorProto.DataType.Name(to) if to in TensorProto.DataType.values() else to
        raise unsupported(op, "to", name)


@checks("Cast")
def _cast_to(op: str, attrs) -> None:
    _castable(int(attrs["to"]), op)


def _cast(x: np.ndarray, to: int, op: str) -> np.ndarray:
    _castable(to, op)
    with np.errstate(all="ignore"):  # nan/inf -> int is undefined in ONNX; no warning noise
        return x.astype(helper.tensor_dtype_to_np_dtype(to), copy=False)


@register("Cast")
def cast(inputs, attrs):
    return [_cast(inputs[0], int(attrs["to"]), "Cast")]


@register("CastLike")
def cast_like(inputs, attrs):
    return [_cast(inputs[0], helper.np_dtype_to_tensor_dtype(inputs[1].dtype), "CastLike")]


@register("ConstantOfShape")
def constant_of_shape(inputs, attrs):
    value = attrs.get("value")
    value = np.zeros(1, dtype=np.float32) if value is None else np.asarray(value)
    return [np.full(tuple(ints(inputs[0])), value.reshape(-1)[0], dtype=value.dtype)]


@register("Expand")
def expand(inputs, attrs):
    x = inputs[0]
    out_shape = np.broadcast_shapes(x.shape, tuple(ints(inputs[1])))
    # Copied: a broadcast view is read-only with zero strides, which would
    # surprise consumers that write into their operands.
    return [np.broadcast_to(x, out_shape).copy()]


@register("Tile")
def tile(inputs, attrs):
    return [np.tile(inputs[0], tuple(ints(inputs[1])))]


@register("Range")
def range_(inputs, attrs):
    start, limit, delta = (np.asarray(v).reshape(()) for v in inputs[:3])
    if delta == 0:  # the spec's loop would never end; onnxruntime refuses it too
        raise ValueError("Range: delta is 0, so the range has no end")
    dtype = start.dtype
    if dtype.kind in "iu":
        s, l, d = int(start), int(limit), int(delta)
        n = max(-(-(l - s) // d), 0)
        return [(s + d * np.arange(n, dtype=np.int64)).astype(dtype)]
    # Element count computed in the input precision, as the spec's loop does;
    # np.arange would decide it in float64 and can differ by one.
    n = max(int(np.ceil((limit - start) / delta)), 0)
    return [start + np.arange(n, dtype=dtype) * delta]


@checks("Pad")
def _pad_mode(op: str, attrs) -> str:
    return choice(op, attrs, "mode", "constant", ("constant", "reflect", "edge", "wrap"))


@register("Pad")
def pad(inputs, attrs):
    x, pads = inputs[0], ints(inputs[1])
    value, axes_in = opt_input(inputs, 2), opt_input(inputs, 3)
    mode = _pad_mode("Pad", attrs)
    rank = x.ndim
    axes = [norm_axis(a, rank, "Pad") for a in ints(axes_in)] if axes_in is not None else list(range(rank))
    if len(pads) != 2 * len(axes):
        raise ValueError(f"Pad: {len(pads)} pads for {len(axes)} axes")
    before, after = [0] * rank, [0] * rank
    for i, a in enumerate(axes):
        before[a], after[a] = pads[i], pads[i + len(axes)]

    if any(p < 0 for p in before + after):
        # Negative pads crop; onnxruntime crops first and pads the remainder,
        # which matters for reflect/edge/wrap.
        x = x[tuple(slice(-min(b, 0), n + min(e, 0)) for b, e, n in zip(before, after, x.shape))]
        before = [max(b, 0) for b in before]
        after = [max(e, 0) for e in after]
    if not any(before) and not any(after):
        return [x]

    if mode == "constant":
        # np.pad is ~10x slower than filling and assigning for large batches.
        fill = 0 if value is None or value.size == 0 else value.reshape(-1)[0]
        out = np.full([n + b + e for n, b, e in zip(x.shape, before, after)], fill, dtype=x.dtype)
        out[tuple(slice(b, b + n) for b, n in zip(before, x.shape))] = x
        return [out]
    return [np.pad(x, list(zip(before, after)), mode=mode)]


def _depth_space_check(x: np.ndarray, op: str) -> None:
    if x.ndim != 4:
        raise ValueError(f"{op}: expected a 4-D NCHW input, got shape {x.shape}")


@checks("DepthToSpace")
def _depth_to_space_mode(op: str, attrs) -> str:
    return choice(op, attrs, "mode", "DCR", ("DCR", "CRD"))


@register("DepthToSpace")
def depth_to_space(inputs, attrs):
    x = inputs[0]
    _depth_space_check(x, "DepthToSpace")
    bs = int(attrs["blocksize"])
    mode = _depth_to_space_mode("DepthToSpace", attrs)
    n, c, h, w = x.shape
    oc = c // (bs * bs)
    if mode == "DCR":
        y = x.reshape(n, bs, bs, oc, h, w).transpose(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, oc, bs, bs, h, w).transpose(0, 1, 4, 2, 5, 3)
    return [y.reshape(n, oc, h * bs, w * bs)]


@register("SpaceToDepth")
def space_to_depth(inputs, attrs):
    x = inputs[0]
    _depth_space_check(x, "SpaceToDepth")
    bs = int(attrs["blocksize"])
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // bs, bs, w // bs, bs).transpose(0, 3, 5, 1, 2, 4)
    return [y.reshape(n, c * bs * bs, h // bs, w // bs)]
