"""The digital ops of xbar.runtime.ops against onnxruntime as the reference.

Each case builds a one-node ONNX model, runs it in onnxruntime, decodes the
node's attributes the way the executor does and compares our function's
outputs: same shapes and dtypes, floats within 1e-5 * (1 + |ref|).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from xbar.errors import UnsupportedOpError
from xbar.runtime.ops import NUM_OUTPUTS, REGISTRY, SUPPORTED_OPS, attribute_problem, get_op

INT64_MAX = np.iinfo(np.int64).max
INT64_MIN = np.iinfo(np.int64).min


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def randn(*shape: int, seed: int = 0, dtype=np.float32) -> np.ndarray:
    return rng(seed).standard_normal(shape).astype(dtype)


def i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


# ------------------------------------------------------------------ harness

_SESSION_OPTIONS = ort.SessionOptions()
_SESSION_OPTIONS.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
_SESSION_OPTIONS.intra_op_num_threads = 1
_SESSION_OPTIONS.inter_op_num_threads = 1


def _decode_attrs(node) -> dict[str, Any]:
    """What the executor hands to an op: python values, numpy arrays for tensors."""
    out: dict[str, Any] = {}
    for attr in node.attribute:
        value = helper.get_attribute_value(attr)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, TensorProto):
            value = numpy_helper.to_array(value)
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode() for v in value]
        out[attr.name] = value
    return out


def run_reference(op_type, inputs, attrs, n_out, opset):
    inputs = list(inputs)
    while inputs and inputs[-1] is None:  # some onnxruntime kernels reject a trailing "" input
        inputs.pop()
    names = [f"in{i}" if x is not None else "" for i, x in enumerate(inputs)]
    onnx_attrs = {k: numpy_helper.from_array(v) if isinstance(v, np.ndarray) else v for k, v in attrs.items()}
    node = helper.make_node(op_type, names, [f"out{i}" for i in range(n_out)], **onnx_attrs)
    graph_inputs = [
        helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(x.dtype), x.shape)
        for n, x in zip(names, inputs)
        if x is not None
    ]
    graph = helper.make_graph(
        [node], op_type, graph_inputs, [helper.make_empty_tensor_value_info(o) for o in node.output]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    sess = ort.InferenceSession(model.SerializeToString(), _SESSION_OPTIONS, providers=["CPUExecutionProvider"])
    feeds = {n: x for n, x in zip(names, inputs) if x is not None}
    return sess.run(None, feeds), _decode_attrs(node)


def assert_matches(ours: np.ndarray, ref: np.ndarray, what: str = "") -> None:
    ours = np.asarray(ours)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != {ref.shape}"
    assert ours.dtype == ref.dtype, f"{what}: dtype {ours.dtype} != {ref.dtype}"
    if ref.dtype.kind in "fc":
        o, r = ours.astype(np.float64), ref.astype(np.float64)
        assert np.array_equal(np.isnan(o), np.isnan(r)), f"{what}: nan positions differ"
        finite = ~np.isnan(r)
        o, r = o[finite], r[finite]
        assert np.array_equal(np.isinf(o), np.isinf(r)) and np.array_equal(o[np.isinf(o)], r[np.isinf(r)]), (
            f"{what}: inf positions differ"
        )
        fin = ~np.isinf(r)
        diff = np.abs(o[fin] - r[fin])
        bound = 1e-5 * (1 + np.abs(r[fin]))
        if diff.size:
            worst = int(np.argmax(diff - bound))
            assert np.all(diff <= bound), f"{what}: |diff| {diff[worst]:.3g} > {bound[worst]:.3g}"
    else:
        np.testing.assert_array_equal(ours, ref, err_msg=what)


def check(op_type, inputs, attrs=None, n_out=1, opset=17):
    """Run op_type through onnxruntime and our registry and compare all outputs."""
    attrs = dict(attrs or {})
    refs, decoded = run_reference(op_type, inputs, attrs, n_out, opset)
    fn = get_op(op_type)
    assert fn is not None, f"{op_type} not registered"
    ours = fn(list(inputs), {**decoded, NUM_OUTPUTS: n_out})
    assert len(ours) == len(refs), f"{op_type}: {len(ours)} outputs, reference has {len(refs)}"
    for i, (o, r) in enumerate(zip(ours, refs)):
        assert_matches(o, r, f"{op_type} output {i} (opset {opset}, attrs {attrs})")
    return ours


def _activation_input() -> np.ndarray:
    # Large magnitudes exercise overflow handling (exp of +-100).
    x = randn(2, 3, 5, 7, seed=1) * 3
    x.flat[:6] = [100.0, -100.0, 0.0, -0.0, 30.0, -30.0]
    return x


# ----------------------------------------------------------------- registry


def test_registry_surface():
    expected = {
        "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish",
        "Tanh", "Softmax", "LogSoftmax", "Softplus", "Softsign", "Erf", "Gelu", "Add", "Sum", "Sub", "Mul",
        "Div", "Neg", "Abs", "Sqrt", "Exp", "Log", "Pow", "Max", "Min", "Mean", "Floor", "Ceil", "Reciprocal",
        "Equal", "Less", "Greater", "Where", "Not", "Concat", "Flatten", "Reshape", "Transpose", "Squeeze",
        "Unsqueeze", "Split", "Slice", "Gather", "Shape", "Size", "Cast", "ConstantOfShape", "Expand", "Tile",
        "Range", "Pad", "DepthToSpace", "Identity", "Dropout", "MaxPool", "AveragePool", "GlobalAveragePool",
        "GlobalMaxPool", "BatchNormalization", "ReduceMean", "ReduceSum", "ReduceMax", "MatMul",
    }  # fmt: skip
    assert expected <= SUPPORTED_OPS
    assert SUPPORTED_OPS == frozenset(REGISTRY)
    assert get_op("Conv") is None
    assert get_op("Relu") is REGISTRY["Relu"]


# -------------------------------------------------------------- activations

UNARY = ["Relu", "Sigmoid", "Tanh", "Softsign", "Erf", "Neg", "Abs", "Exp", "Floor", "Ceil", "Sign",
         "Softplus", "HardSwish", "Sin", "Cos"]  # fmt: skip


@pytest.mark.parametrize("op_type", UNARY)
def test_unary(op_type):
    check(op_type, [_activation_input()])


@pytest.mark.parametrize("op_type", ["Sqrt", "Log", "Reciprocal"])
def test_unary_positive_domain(op_type):
    x = np.abs(_activation_input()) + 0.1
    check(op_type, [x])


def test_unary_ieee_edge_values():
    # log(0) = -inf, sqrt(-1) = nan, 1/0 = inf: no exception, same as onnxruntime.
    x = np.array([0.0, -1.0, 4.0, np.inf], dtype=np.float32)
    for op_type in ("Log", "Sqrt", "Reciprocal", "Exp"):
        check(op_type, [x])


@pytest.mark.parametrize(
    ("op_type", "attrs", "opset"),
    [
        ("LeakyRelu", {}, 17),
        ("LeakyRelu", {"alpha": 0.2}, 17),
        ("Elu", {}, 17),
        ("Elu", {"alpha": 0.5}, 17),
        ("Selu", {}, 17),
        ("Selu", {"alpha": 1.5, "gamma": 2.0}, 17),
        ("Celu", {}, 17),
        ("Celu", {"alpha": 2.0}, 17),
        ("HardSigmoid", {}, 17),
        ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}, 17),
        ("Gelu", {}, 20),
        ("Gelu", {"approximate": "tanh"}, 20),
        ("Gelu", {"approximate": "none"}, 21),
    ],
)
def test_activation_attrs(op_type, attrs, opset):
    check(op_type, [_activation_input()], attrs, opset=opset)


@pytest.mark.parametrize("slope_shape", [(1,), (3, 1, 1), (7,), (2, 3, 5, 7)])
def test_prelu(slope_shape):
    check("PRelu", [randn(2, 3, 5, 7), randn(*slope_shape, seed=2)])


@pytest.mark.parametrize(
    "bounds", [(None, None), (-0.5, None), (None, 0.7), (-0.5, 0.7), (0.7, -0.5), (0.0, 6.0)]
)
def test_clip(bounds):
    lo, hi = (None if b is None else np.array(b, dtype=np.float32) for b in bounds)
    check("Clip", [randn(2, 3, 4), lo, hi])


def test_clip_int():
    x = rng(3).integers(-10, 10, size=(4, 5)).astype(np.int64)
    check("Clip", [x, np.array(-3, np.int64), np.array(4, np.int64)])


@pytest.mark.parametrize("op_type", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("axis", [None, -1, 0, 1, 2])
def test_softmax(op_type, axis):
    x = randn(3, 4, 5) * 10
    check(op_type, [x], {} if axis is None else {"axis": axis})


def test_dropout():
    x = randn(2, 3, 4)
    check("Dropout", [x])
    check("Dropout", [x], n_out=2)
    check("Dropout", [x, np.array(0.3, np.float32), np.array(False)], n_out=2)


# --------------------------------------------------------------- arithmetic

BROADCAST_SHAPES = [((2, 3, 4), (2, 3, 4)), ((2, 3, 4), (4,)), ((2, 1, 4), (3, 1)), ((2, 3), ()), ((), (3,))]


@pytest.mark.parametrize("op_type", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize(("sa", "sb"), BROADCAST_SHAPES)
def test_binary_float(op_type, sa, sb):
    b = randn(*sb, seed=5)
    if op_type == "Div":
        b = np.where(np.abs(b) < 0.1, np.float32(0.5), b).astype(np.float32)
    check(op_type, [randn(*sa, seed=4), b])


@pytest.mark.parametrize("op_type", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("dtype", [np.int64, np.int32])
def test_binary_int(op_type, dtype):
    a = rng(6).integers(-50, 50, size=(4, 6)).astype(dtype)
    b = rng(7).integers(-7, 8, size=(6,)).astype(dtype)
    b[b == 0] = 3
    check(op_type, [a, b])


@pytest.mark.parametrize(
    ("base", "exponent"),
    [
        (np.abs(randn(3, 4)) + 0.1, randn(3, 4, seed=1)),
        (randn(3, 4), np.array(2.0, np.float32)),
        (randn(3, 4), np.array(3, np.int64)),
        (np.abs(randn(3, 4)) + 0.1, np.array([0.5, -1.0, 3.0, 0.0], np.float32)),
        (np.arange(-3, 9, dtype=np.int64).reshape(3, 4), np.array(2, np.int64)),
    ],
)
def test_pow(base, exponent):
    check("Pow", [base, exponent])


@pytest.mark.parametrize("fmod", [0, 1])
def test_mod_int(fmod):
    a = rng(8).integers(-20, 20, size=(5, 4)).astype(np.int64)
    b = rng(9).integers(1, 6, size=(4,)).astype(np.int64) * np.array([1, -1, 1, -1])
    check("Mod", [a, b], {"fmod": fmod})


def test_mod_float():
    check("Mod", [randn(5, 4) * 5, np.array([1.5, -2.0, 0.7, 3.0], np.float32)], {"fmod": 1})


@pytest.mark.parametrize("op_type", ["Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual"])
def test_comparisons(op_type):
    a = rng(10).integers(-3, 3, size=(3, 4)).astype(np.float32)
    b = rng(11).integers(-3, 3, size=(4,)).astype(np.float32)
    check(op_type, [a, b])
    check(op_type, [a.astype(np.int64), b.astype(np.int64)])


@pytest.mark.parametrize("op_type", ["And", "Or", "Xor"])
def test_logic(op_type):
    a = rng(12).integers(0, 2, size=(3, 4)).astype(bool)
    b = rng(13).integers(0, 2, size=(3, 1)).astype(bool)
    check(op_type, [a, b])


def test_not_and_where():
    c = rng(14).integers(0, 2, size=(3, 4)).astype(bool)
    check("Not", [c])
    check("Where", [c, randn(3, 4), randn(1, 4, seed=2)])
    check("Where", [c, np.arange(4, dtype=np.int64), np.array(-1, np.int64)])


@pytest.mark.parametrize("op_type", ["Sum", "Max", "Min", "Mean"])
@pytest.mark.parametrize("shapes", [[(3, 4)], [(3, 4), (3, 4)], [(2, 3, 4), (4,), (3, 1)]])
def test_variadic(op_type, shapes):
    check(op_type, [randn(*s, seed=i) for i, s in enumerate(shapes)])


# -------------------------------------------------------------------- shape


def test_identity():
    check("Identity", [randn(2, 3)])


@pytest.mark.parametrize(
    ("in_shape", "shape", "allowzero"),
    [
        ((2, 3, 4), (6, 4), 0),
        ((2, 3, 4), (0, -1), 0),
        ((2, 3, 4), (-1,), 0),
        ((2, 3, 4), (0, 0, 2, 2), 0),
        ((2, 3, 4), (4, -1, 2), 0),
        ((2, 3, 4), (2, 12), 1),
        ((0, 3), (3, 0), 1),
    ],
)
def test_reshape(in_shape, shape, allowzero):
    check("Reshape", [randn(*in_shape), i64(*shape)], {"allowzero": allowzero} if allowzero else {})


@pytest.mark.parametrize("axis", [None, 0, 1, 2, 4, -1, -4])
def test_flatten(axis):
    check("Flatten", [randn(2, 3, 4, 5)], {} if axis is None else {"axis": axis})


@pytest.mark.parametrize("perm", [None, [0, 2, 3, 1], [3, 1, 0, 2]])
def test_transpose(perm):
    check("Transpose", [randn(2, 3, 4, 5)], {} if perm is None else {"perm": perm})


@pytest.mark.parametrize("axes", [None, [], [1], [-1], [1, -1], [3, 1]])
def test_squeeze(axes):
    check("Squeeze", [randn(2, 1, 3, 1), None if axes is None else i64(*axes)])


@pytest.mark.parametrize("axes", [[], [0], [-1], [1, 3], [0, -1], [4, 0]])
def test_unsqueeze(axes):
    check("Unsqueeze", [randn(2, 3, 4), i64(*axes)])


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat(axis):
    shapes = [[2, 3, 4] for _ in range(3)]
    for i, s in enumerate(shapes):
        s[axis] = i + 1
    check("Concat", [randn(*s, seed=i) for i, s in enumerate(shapes)], {"axis": axis})


def test_concat_empty_and_int():
    check("Concat", [i64(1, 2), np.zeros(0, np.int64), i64(3)], {"axis": 0})


@pytest.mark.parametrize(
    ("shape", "attrs", "split", "n_out", "opset"),
    [
        ((6, 4), {}, None, 3, 13),
        ((6, 4), {"axis": 1}, None, 2, 17),
        ((6, 4), {}, [1, 2, 3], 3, 13),
        ((3, 7), {"axis": -1}, [2, 0, 5], 3, 17),
        ((3, 7), {"axis": 1, "num_outputs": 3}, None, 3, 18),
        ((8, 2), {"num_outputs": 4}, None, 4, 18),
        ((5, 2), {"num_outputs": 2}, None, 2, 18),
        ((3, 7), {"axis": 1}, [4, 3], 2, 18),
    ],
)
def test_split(shape, attrs, split, n_out, opset):
    check("Split", [randn(*shape), None if split is None else i64(*split)], attrs, n_out=n_out, opset=opset)


def test_split_needs_output_count():
    with pytest.raises(ValueError, match=NUM_OUTPUTS):
        REGISTRY["Split"]([randn(6, 2)], {})


@pytest.mark.parametrize(
    ("starts", "ends", "axes", "steps"),
    [
        ([1], [3], None, None),
        ([0, 1], [2, -1], None, None),
        ([1], [INT64_MAX], [1], None),
        ([-3], [INT64_MAX], [-1], [1]),
        ([-1], [INT64_MIN], [1], [-1]),
        ([INT64_MAX], [INT64_MIN], [2], [-2]),
        ([4, 0], [0, 5], [2, 1], [-1, 2]),
        ([-100], [100], [0], [1]),
        ([10], [20], [2], [1]),
        ([2], [1], [1], [1]),
        ([0, 0, 0], [-1, -1, -1], [0, 1, 2], [1, 2, 3]),
        ([-2], [-6], [2], [-3]),
    ],
)
def test_slice(starts, ends, axes, steps):
    inputs = [randn(3, 5, 6), i64(*starts), i64(*ends), None if axes is None else i64(*axes)]
    inputs.append(None if steps is None else i64(*steps))
    check("Slice", inputs)


@pytest.mark.parametrize(
    ("axis", "indices"),
    [
        (0, i64(0, 2, -1)),
        (1, i64(-1)),
        (1, np.array(-2, np.int64)),
        (-1, i64(0, 3, 3, -4).reshape(2, 2)),
        (2, np.array([1, -1], np.int32)),
        (0, np.array(1, np.int64)),
    ],
)
def test_gather(axis, indices):
    check("Gather", [randn(3, 4, 5), indices], {"axis": axis})


def test_gather_shape_vector():
    # The torch-export idiom: Gather(Shape(x), scalar index).
    check("Gather", [i64(128, 64, 7, 7), np.array(0, np.int64)], {"axis": 0})


@pytest.mark.parametrize("start_end", [(None, None), (1, None), (-2, None), (0, -1), (10, None), (-10, 2), (2, 1)])
def test_shape(start_end):
    start, end = start_end
    attrs = {k: v for k, v in (("start", start), ("end", end)) if v is not None}
    check("Shape", [randn(2, 3, 4, 5)], attrs)


def test_size():
    check("Size", [randn(2, 3, 4)])
    check("Size", [np.zeros((0, 3), np.float32)])


@pytest.mark.parametrize(
    ("dtype", "to"),
    [
        (np.float32, TensorProto.INT64),
        (np.float32, TensorProto.INT32),
        (np.float32, TensorProto.FLOAT16),
        (np.float32, TensorProto.DOUBLE),
        (np.float32, TensorProto.BOOL),
        (np.float32, TensorProto.FLOAT),
        (np.int64, TensorProto.FLOAT),
        (np.int64, TensorProto.INT32),
        (np.bool_, TensorProto.FLOAT),
        (np.float64, TensorProto.FLOAT),
    ],
)
def test_cast(dtype, to):
    x = (randn(3, 4) * 10).astype(dtype)
    check("Cast", [x], {"to": to})


def test_cast_uint8():
    check("Cast", [np.abs(randn(3, 4)) * 100], {"to": TensorProto.UINT8})


def test_cast_like():
    check("CastLike", [randn(3, 4) * 10, i64(1)], opset=17)


@pytest.mark.parametrize(
    ("shape", "value"),
    [
        ((2, 3), None),
        ((4,), np.array([7], np.int64)),
        ((2, 1, 3), np.array([1.5], np.float32)),
        ((), np.array([2.0], np.float32)),
        ((3, 0), np.array([1], np.int32)),
    ],
)
def test_constant_of_shape(shape, value):
    check("ConstantOfShape", [np.array(shape, np.int64)], {} if value is None else {"value": value})


@pytest.mark.parametrize(
    ("in_shape", "shape"), [((3, 1), (2, 1, 4)), ((1,), (5,)), ((2, 3, 4), (1, 1)), ((3, 1), (3, 4)), ((), (2, 2))]
)
def test_expand(in_shape, shape):
    out = check("Expand", [randn(*in_shape), i64(*shape)])[0]
    assert out.flags.writeable


@pytest.mark.parametrize("repeats", [(1, 1), (2, 3), (3, 1)])
def test_tile(repeats):
    check("Tile", [randn(2, 3), i64(*repeats)])


@pytest.mark.parametrize(
    ("start", "limit", "delta", "dtype"),
    [
        (0, 1, 0.1, np.float32),
        (1.0, 1.3, 0.1, np.float32),
        (5, 0, -1.5, np.float32),
        (1, 1, 1, np.float32),
        (0, 10, 3, np.int64),
        (10, 0, -3, np.int64),
        (0, -5, 1, np.int64),
        (2, 9, 2, np.int32),
    ],
)
def test_range(start, limit, delta, dtype):
    check("Range", [np.array(v, dtype) for v in (start, limit, delta)], opset=17)


PAD_CASES = [
    # (pads, mode, constant_value)
    ([0, 0, 1, 2, 0, 0, 2, 1], "constant", None),
    ([0, 0, 1, 2, 0, 0, 2, 1], "constant", 1.5),
    ([0, 1, 0, 0, 0, 0, 0, 3], "constant", -2.0),
    ([0, 0, 2, 1, 0, 0, 1, 2], "reflect", None),
    ([0, 0, 2, 1, 0, 0, 1, 2], "edge", None),
    ([0, 0, -1, 2, 0, 0, 1, -2], "constant", 0.5),
    ([0, 0, -1, 2, 0, 0, 2, -1], "reflect", None),
    ([0, 0, -1, 2, 0, 0, 2, -1], "edge", None),
    ([0, 0, 0, 0, 0, 0, 0, 0], "reflect", None),
]


@pytest.mark.parametrize(("pads", "mode", "value"), PAD_CASES)
@pytest.mark.parametrize("opset", [13, 18])
def test_pad(pads, mode, value, opset):
    inputs = [randn(2, 3, 5, 6), i64(*pads), None if value is None else np.array(value, np.float32)]
    check("Pad", inputs, {"mode": mode}, opset=opset)


@pytest.mark.parametrize(
    ("pads", "axes", "mode"),
    [
        ([1, 2, 3, 0], [2, 3], "constant"),
        ([1, 2], [-1], "reflect"),
        ([2, 1, 1, 2], [3, 1], "edge"),
        ([2, 1, 1, 2], [1, 2], "wrap"),
    ],
)
def test_pad_axes_input(pads, axes, mode):
    opset = 19 if mode == "wrap" else 18
    check("Pad", [randn(2, 3, 5, 6), i64(*pads), None, i64(*axes)], {"mode": mode}, opset=opset)


def test_pad_int():
    x = rng(15).integers(-5, 5, size=(3, 4)).astype(np.int64)
    check("Pad", [x, i64(1, 0, 0, 2), np.array(9, np.int64)])


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_to_space(mode):
    check("DepthToSpace", [randn(2, 8, 3, 4)], {"blocksize": 2, "mode": mode})


def test_space_to_depth():
    check("SpaceToDepth", [randn(2, 3, 4, 6)], {"blocksize": 2})


# ------------------------------------------------------------------ pooling

_SPATIAL = {1: (11,), 2: (7, 8), 3: (6, 5, 7)}


def _pool_configs() -> list[dict[str, Any]]:
    """Attribute combinations per spatial rank; spatial sizes are odd/even
    mixes so that ceil_mode and SAME padding produce partial windows."""
    configs: list[dict[str, Any]] = []
    for nd in (1, 2, 3):
        rep = lambda *v: [v[i % len(v)] for i in range(nd)]  # noqa: E731
        configs += [
            {"kernel_shape": rep(2)},
            {"kernel_shape": rep(3), "strides": rep(2)},
            {"kernel_shape": rep(3, 2), "strides": rep(1, 2), "pads": rep(1, 0) + rep(1, 1)},
            {"kernel_shape": rep(3), "strides": rep(2), "pads": rep(1) * 2, "ceil_mode": 1},
            {"kernel_shape": rep(2), "strides": rep(2), "ceil_mode": 1},
            {"kernel_shape": rep(2, 3), "strides": rep(3, 2), "pads": rep(0, 1) + rep(1, 0), "ceil_mode": 1},
            {"kernel_shape": rep(3), "auto_pad": "SAME_UPPER"},
            {"kernel_shape": rep(2), "strides": rep(2), "auto_pad": "SAME_UPPER"},
            {"kernel_shape": rep(4, 3), "strides": rep(3, 2), "auto_pad": "SAME_LOWER"},
            {"kernel_shape": rep(3, 2), "strides": rep(2, 1), "auto_pad": "VALID"},
            {"kernel_shape": rep(3, 2), "strides": rep(2, 3), "auto_pad": "VALID", "ceil_mode": 1},
            {"kernel_shape": rep(3), "strides": rep(2), "auto_pad": "SAME_LOWER", "ceil_mode": 1},
            {"kernel_shape": rep(3), "dilations": rep(2)},
            {"kernel_shape": rep(2, 3), "dilations": rep(2, 1), "strides": rep(2), "pads": rep(1, 2) * 2},
            {"kernel_shape": rep(2), "dilations": rep(2), "strides": rep(2), "pads": rep(1) * 2, "ceil_mode": 1},
        ]
    return configs


POOL_CONFIGS = _pool_configs()


def _pool_id(cfg: dict[str, Any]) -> str:
    return "-".join(f"{k}={v}" for k, v in cfg.items())


@pytest.mark.parametrize("cfg", POOL_CONFIGS, ids=_pool_id)
def test_max_pool(cfg):
    nd = len(cfg["kernel_shape"])
    x = randn(2, 3, *_SPATIAL[nd], seed=nd)
    check("MaxPool", [x], cfg)


@pytest.mark.parametrize("cfg", POOL_CONFIGS, ids=_pool_id)
@pytest.mark.parametrize("count_include_pad", [0, 1])
def test_average_pool(cfg, count_include_pad):
    nd = len(cfg["kernel_shape"])
    x = randn(2, 3, *_SPATIAL[nd], seed=nd)
    # AveragePool gained dilations in opset 19.
    opset = 19 if "dilations" in cfg else 17
    check("AveragePool", [x], {**cfg, "count_include_pad": count_include_pad}, opset=opset)


@pytest.mark.parametrize(
    "cfg",
    [
        # The ceil-mode rule's edge: a 4th window would start in the right padding only.
        {"kernel_shape": [2], "strides": [2], "pads": [1, 1], "ceil_mode": 1},
        {"kernel_shape": [3], "strides": [3], "pads": [0, 2], "ceil_mode": 1},
        {"kernel_shape": [1], "strides": [3]},
    ],
    ids=_pool_id,
)
@pytest.mark.parametrize("op_type", ["MaxPool", "AveragePool"])
def test_pool_ceil_rule(cfg, op_type):
    check(op_type, [randn(2, 3, 5)], cfg)


@pytest.mark.parametrize("op_type", ["MaxPool", "AveragePool"])
@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER"])
@pytest.mark.parametrize(
    ("spatial", "kernel", "strides", "dilations"), [((10,), [3], [2], [2]), ((7, 8), [3, 3], [1, 2], [2, 2])]
)
def test_pool_same_with_dilations(op_type, auto_pad, spatial, kernel, strides, dilations):
    """SAME padding of a dilated window, checked as the equivalent explicit pads.

    onnxruntime 1.31 sizes SAME padding from the undilated kernel (a smaller
    output than the spec's ceil(in / stride)), so it cannot be the reference
    here; the spec's pads, spelled out, run through onnxruntime instead.
    """
    pb, pe = [], []
    for n, k, s, d in zip(spatial, kernel, strides, dilations):
        total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
        small, large = total // 2, total - total // 2
        pb.append(small if auto_pad == "SAME_UPPER" else large)
        pe.append(large if auto_pad == "SAME_UPPER" else small)
    x = randn(2, 3, *spatial)
    explicit = {"kernel_shape": kernel, "strides": strides, "dilations": dilations, "pads": pb + pe}
    extra = {"count_include_pad": 1} if op_type == "AveragePool" else {}
    (ref,), _ = run_reference(op_type, [x], {**explicit, **extra}, 1, 19)
    same = {k: v for k, v in explicit.items() if k != "pads"} | {"auto_pad": auto_pad} | extra
    (ours,) = REGISTRY[op_type]([x], same)
    assert ours.shape[2:] == tuple(-(-n // s) for n, s in zip(spatial, strides))
    assert_matches(ours, ref, f"{op_type} {same}")


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER"])
def test_pool_same_stride_larger_than_window(auto_pad):
    # The spec's pad formula goes negative here; padding is clamped to 0
    # (TensorFlow's SAME), where onnxruntime rejects the node.
    x = np.arange(8, dtype=np.float32).reshape(1, 1, 8)
    cfg = {"kernel_shape": [1], "strides": [3], "auto_pad": auto_pad}
    np.testing.assert_array_equal(REGISTRY["MaxPool"]([x], cfg)[0].ravel(), [0, 3, 6])
    np.testing.assert_array_equal(REGISTRY["AveragePool"]([x], cfg)[0].ravel(), [0, 3, 6])


def test_average_pool_opset19_no_dilation():
    check("AveragePool", [randn(2, 3, 7, 8)], {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}, opset=19)


def test_pool_large_kernel():
    x = randn(2, 3, 12, 11)
    for op_type in ("MaxPool", "AveragePool"):
        check(op_type, [x], {"kernel_shape": [9, 9], "strides": [2, 1], "pads": [1, 2, 0, 3]})


def test_max_pool_uint8():
    x = rng(16).integers(0, 255, size=(2, 3, 7, 7)).astype(np.uint8)
    check("MaxPool", [x], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]})


def test_max_pool_indices_unsupported():
    with pytest.raises(NotImplementedError, match="Indices") as info:
        REGISTRY["MaxPool"]([randn(1, 1, 4, 4)], {"kernel_shape": [2, 2], NUM_OUTPUTS: 2})
    assert isinstance(info.value, UnsupportedOpError)


@pytest.mark.parametrize("op_type", ["GlobalAveragePool", "GlobalMaxPool"])
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_global_pool(op_type, nd):
    check(op_type, [randn(2, 3, *_SPATIAL[nd])])


# ------------------------------------------------------------ normalization


@pytest.mark.parametrize("shape", [(4, 3), (4, 3, 5), (4, 3, 5, 6), (2, 3, 3, 4, 2)])
@pytest.mark.parametrize("epsilon", [None, 1e-3])
def test_batch_norm(shape, epsilon):
    c = shape[1]
    params = [randn(c, seed=20), randn(c, seed=21), randn(c, seed=22), np.abs(randn(c, seed=23)) + 0.1]
    check("BatchNormalization", [randn(*shape)] + params, {} if epsilon is None else {"epsilon": epsilon})


# ------------------------------------------------------------------- reduce


@pytest.mark.parametrize("op_type", ["ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL1", "ReduceL2",
                                     "ReduceSumSquare", "ReduceProd"])
@pytest.mark.parametrize("axes", [None, [1], [-1], [0, 2], [2, -3]])
@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("opset", [17, 18])
def test_reduce(op_type, axes, keepdims, opset):
    x = randn(3, 4, 5)
    attrs: dict[str, Any] = {"keepdims": keepdims}
    inputs = [x]
    axes_as_input = op_type == "ReduceSum" or opset >= 18
    if axes is not None:
        if axes_as_input:
            inputs.append(i64(*axes))
        else:
            attrs["axes"] = axes
    check(op_type, inputs, attrs, opset=opset)


@pytest.mark.parametrize("op_type", ["ReduceMean", "ReduceMax", "ReduceSum", "ReduceL1", "ReduceL2", "ReduceSumSquare",
                                     "ReduceProd"])
@pytest.mark.parametrize("noop", [0, 1])
def test_reduce_empty_axes(op_type, noop):
    x = randn(3, 4)
    check(op_type, [x, np.zeros(0, np.int64)], {"noop_with_empty_axes": noop}, opset=18)
    check(op_type, [x], {"noop_with_empty_axes": noop, "keepdims": 0}, opset=18)


@pytest.mark.parametrize("op_type", ["ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL1", "ReduceL2",
                                     "ReduceSumSquare", "ReduceProd"])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_over_empty_axis(op_type, keepdims):
    check(op_type, [np.zeros((0, 3), np.float32), i64(0)], {"keepdims": keepdims}, opset=18)


def test_empty_tensors_flow_through_shape_ops():
    empty = np.zeros((0, 3), np.float32)
    check("Reshape", [empty, i64(3, -1)])
    check("Tile", [randn(2, 3), i64(0, 2)])
    check("Expand", [randn(2, 3), i64(0, 1, 3)])
    check("Gather", [randn(3, 4), np.zeros(0, np.int64)])
    check("Concat", [randn(2, 3), empty], {"axis": 0})


def test_softmax_with_infinities():
    check("Softmax", [np.array([[-np.inf, -np.inf], [1, np.inf], [0, -np.inf]], np.float32)])


@pytest.mark.parametrize("op_type", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("last", [0, 1])
def test_arg_extremes_with_ties(op_type, axis, keepdims, last):
    """Ties (few distinct values) make select_last_index matter."""
    x = rng(5).integers(-2, 3, size=(3, 4, 5)).astype(np.float32)
    check(op_type, [x], {"axis": axis, "keepdims": keepdims, "select_last_index": last})


# ------------------------------------------------------------------- resize

_RESIZE_X = randn(2, 3, 5, 7, seed=4)
_RESIZE_GEOMETRIES = {"up-2x1.5": ("scales", [1, 1, 2.0, 1.5]), "down-0.6x0.5": ("scales", [1, 1, 0.6, 0.5]),
                      "width-3": ("scales", [1, 1, 1.0, 3.0]), "sizes-9x4": ("sizes", [2, 3, 9, 4]),
                      "sizes-1x13": ("sizes", [2, 3, 1, 13])}
_TRANSFORMS = ["half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric"]


def _resize_inputs(geometry):
    kind, values = _RESIZE_GEOMETRIES[geometry]
    if kind == "scales":
        return [_RESIZE_X, None, np.array(values, np.float32)]
    return [_RESIZE_X, None, None, np.array(values, np.int64)]


@pytest.mark.parametrize("geometry", list(_RESIZE_GEOMETRIES))
@pytest.mark.parametrize("transform", _TRANSFORMS)
@pytest.mark.parametrize("mode, extra", [
    ("nearest", {"nearest_mode": "round_prefer_floor"}), ("nearest", {"nearest_mode": "floor"}),
    ("nearest", {"nearest_mode": "ceil"}), ("linear", {}), ("cubic", {}), ("cubic", {"exclude_outside": 1}),
    ("cubic", {"cubic_coeff_a": -0.5}),
], ids=["nearest-round", "nearest-floor", "nearest-ceil", "linear", "cubic", "cubic-exclude", "cubic-a0.5"])
def test_resize(geometry, transform, mode, extra):
    check("Resize", _resize_inputs(geometry), {"mode": mode, "coordinate_transformation_mode": transform, **extra},
          opset=19)


@pytest.mark.parametrize("geometry", ["up-2x1.5", "down-0.6x0.5", "width-3", "sizes-1x13"])
@pytest.mark.parametrize("transform", _TRANSFORMS)
def test_resize_nearest_round_prefer_ceil(geometry, transform):
    """Not at sizes 9x4 (asymmetric, 7 -> 4): there a coordinate one or two float32 ulps
    below a tie (2 / (4/7) = 3.4999998) rounds up in onnxruntime, and down by the
    specification's formula in float32, which xbar follows. Over 754 one-axis geometries
    (lengths 1-13 to 1-29, by scales and by sizes) this mode disagreed in 24, all of this
    kind; ten other mode/transform pairs agreed in all 754 (/tmp/s16/rs3.py). torch
    exports nearest as floor or round_prefer_floor."""
    check("Resize", _resize_inputs(geometry),
          {"mode": "nearest", "coordinate_transformation_mode": transform, "nearest_mode": "round_prefer_ceil"}, opset=19)


def test_resize_axes_and_integers():
    """opset 18's axes (scales for the listed axes only); nearest on uint8 data is exact."""
    check("Resize", [_RESIZE_X, None, np.array([1.5, 0.5], np.float32)], {"mode": "linear", "axes": [3, 2]}, opset=18)
    check("Resize", [_RESIZE_X, None, None, np.array([4, 11], np.int64)], {"mode": "cubic", "axes": [2, 3]}, opset=18)
    u8 = rng(3).integers(0, 255, size=(1, 2, 3, 4)).astype(np.uint8)
    check("Resize", [u8, None, np.array([1, 1, 2, 1.5], np.float32)], {"mode": "nearest"}, opset=13)


@pytest.mark.parametrize("attrs, named", [
    ({"mode": "linear", "antialias": 1}, "antialias"),
    ({"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize"}, "tf_crop_and_resize"),
    ({"mode": "nearest", "keep_aspect_ratio_policy": "not_larger"}, "keep_aspect_ratio_policy"),
])
def test_resize_unimplemented_attributes_are_named(attrs, named):
    with pytest.raises(UnsupportedOpError, match=named) as info:
        get_op("Resize")([_RESIZE_X, None, None, np.array([2, 3, 4, 4], np.int64)], attrs)
    assert attribute_problem("Resize", attrs) == str(info.value)  # what the converter refuses


@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("largest", [0, 1])
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
def test_top_k(axis, largest, ties):
    """Values and indices; with ties, equal values come in index order."""
    x = rng(9).integers(-2, 3, size=(3, 4, 5)).astype(np.float32) if ties else randn(3, 4, 5, seed=9)
    for k in (0, 1, 3):
        check("TopK", [x, i64(k)], {"axis": axis, "largest": largest}, n_out=2)


def test_top_k_integers_and_full_length():
    x = rng(10).integers(-50, 50, size=(4, 6)).astype(np.int64)
    check("TopK", [x, i64(6)], {"axis": 1}, n_out=2)
    check("TopK", [x, i64(4)], {"axis": 0, "largest": 0}, n_out=2)


def test_reduce_l2_of_zeros():
    check("ReduceL2", [np.zeros((2, 3), np.float32), i64(1)], opset=18)


def test_reduce_int():
    x = rng(17).integers(-9, 9, size=(3, 4)).astype(np.int64)
    check("ReduceSum", [x, i64(1)])
    check("ReduceMax", [x], {"axes": [0]})


# ------------------------------------------------------------------- matmul


@pytest.mark.parametrize(
    ("sa", "sb"),
    [((3, 4), (4, 5)), ((2, 1, 3, 4), (5, 4, 2)), ((4,), (4, 5)), ((3, 4), (4,)), ((4,), (4,)), ((2, 3, 4), (4, 6))],
)
def test_matmul(sa, sb):
    check("MatMul", [randn(*sa, seed=1), randn(*sb, seed=2)])


# ------------------------------------------------------------ dtype keeping


def test_float32_stays_float32_with_float64_operands():
    """Initializers/attributes of another precision must not upcast float32 data."""
    x = randn(2, 3, 4, 4)
    f64 = lambda v: np.asarray(v, dtype=np.float64)  # noqa: E731
    cases = {
        "Clip": [x, f64(-0.5), f64(0.5)],
        "PRelu": [x, f64(np.full((3, 1, 1), 0.1))],
        "Pow": [x, f64(3.0)],
        "Pad": [x, i64(0, 0, 1, 1, 0, 0, 1, 1), f64(1.0)],
        "BatchNormalization": [x, f64(np.ones(3)), f64(np.zeros(3)), f64(np.zeros(3)), f64(np.ones(3))],
    }
    for op_type, inputs in cases.items():
        (out,) = REGISTRY[op_type](inputs, {})
        assert out.dtype == np.float32, op_type
    (out,) = REGISTRY["ConstantOfShape"]([i64(2)], {"value": np.array([1.0], np.float32)})
    assert out.dtype == np.float32
    for cfg in ({"kernel_shape": [2, 2], "pads": [1, 1, 1, 1]}, {"kernel_shape": [9, 9]}):
        for op_type in ("MaxPool", "AveragePool"):
            (out,) = REGISTRY[op_type]([randn(1, 2, 9, 9)], cfg)
            assert out.dtype == np.float32, (op_type, cfg)


def test_ops_do_not_write_into_inputs():
    x = randn(2, 3, 6, 6)
    before = x.copy()
    for op_type, inputs, attrs in [
        ("Softmax", [x], {}),
        ("LogSoftmax", [x], {"axis": 1}),
        ("AveragePool", [x], {"kernel_shape": [2, 2]}),
        ("MaxPool", [x], {"kernel_shape": [1, 1]}),
        ("BatchNormalization", [x] + [np.ones(3, np.float32)] * 4, {}),
        ("Pad", [x, i64(0, 0, 0, 0, 0, 0, 0, 0)], {}),
    ]:
        REGISTRY[op_type](inputs, attrs)
        np.testing.assert_array_equal(x, before, err_msg=op_type)


# ------------------------------------------------- transformer-era ops (opset 17-21)


@pytest.mark.parametrize("axis", [-1, -2, 1, 0])
@pytest.mark.parametrize("with_bias", [True, False])
def test_layer_normalization(axis, with_bias):
    x = randn(2, 3, 4, 5, seed=3) * 3 + 1
    norm_shape = x.shape[axis:]
    scale = randn(*norm_shape, seed=4)
    bias = randn(*norm_shape, seed=5) if with_bias else None
    check("LayerNormalization", [x, scale, bias], {"axis": axis, "epsilon": 1e-3}, n_out=3)


def test_layer_normalization_stash_double_and_broadcast_scale():
    x = randn(2, 6, 8, seed=6)
    check("LayerNormalization", [x, randn(8, seed=7), randn(8, seed=8)], {"stash_type": 11}, n_out=1)
    check("LayerNormalization", [x, randn(1, 8, seed=7)], {"axis": 1}, n_out=2)


@pytest.mark.parametrize("shape", [(2, 3, 5), (2, 4, 3, 5), (1, 2, 2, 3, 2)])
def test_instance_normalization(shape):
    x = randn(*shape, seed=9) * 2 + 0.5
    c = shape[1]
    check("InstanceNormalization", [x, randn(c, seed=10), randn(c, seed=11)], {"epsilon": 1e-4})


@pytest.mark.parametrize("opset", [18, 21])
@pytest.mark.parametrize(("groups", "shape"), [(2, (2, 6, 3, 4)), (3, (2, 6, 5)), (6, (1, 6, 2, 2)), (1, (2, 4, 3))])
def test_group_normalization(opset, groups, shape):
    """Opset 18: scale/bias per group; opset 21: per channel."""
    x = randn(*shape, seed=12) * 2 - 1
    n = groups if opset == 18 else shape[1]
    check("GroupNormalization", [x, randn(n, seed=13), randn(n, seed=14)], {"num_groups": groups, "epsilon": 1e-3},
          opset=opset)


@pytest.mark.parametrize("size", [1, 3, 5])
def test_lrn(size):
    x = randn(2, 7, 3, 3, seed=15) * 2
    check("LRN", [x], {"size": size, "alpha": 0.01, "beta": 0.6, "bias": 1.5})
    check("LRN", [randn(1, 4, 5, 1, seed=16)], {"size": size})  # onnxruntime runs only 4-D LRN


@pytest.mark.parametrize("size", [2, 4])
def test_lrn_even_size_against_the_spec_formula(size):
    """onnxruntime refuses even sizes (and onnx's ReferenceEvaluator loops over the batch
    instead of the channels), so the spec's formula is written out here: the window is
    max(0, c - floor((size-1)/2)) <= i <= min(C-1, c + ceil((size-1)/2))."""
    import math

    x = randn(2, 6, 3, 2, seed=17) * 2
    alpha, beta, bias = 0.02, 0.7, 1.2
    ref = np.empty_like(x)
    for c in range(x.shape[1]):
        lo, hi = max(0, c - math.floor((size - 1) / 2)), min(x.shape[1] - 1, c + math.ceil((size - 1) / 2))
        square_sum = np.sum(x[:, lo:hi + 1].astype(np.float64) ** 2, axis=1)
        ref[:, c] = x[:, c] / (bias + alpha / size * square_sum) ** beta
    (ours,) = REGISTRY["LRN"]([x], {"size": size, "alpha": alpha, "beta": beta, "bias": bias})
    assert_matches(ours, ref, f"LRN size {size}")


@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_scatter_elements(reduction, axis):
    data = randn(4, 5, 3, seed=17)
    shape = [4, 5, 3]
    shape[axis] = 2
    if reduction == "none":  # duplicate indices are undefined without a reduction
        idx = np.stack([rng(18 + i).permutation(data.shape[axis])[:2] for i in range(int(np.prod(shape)) // 2)])
        idx = np.moveaxis(idx.reshape([s for a, s in enumerate(shape) if a != (axis % 3)] + [2]), -1, axis)
        idx = np.ascontiguousarray(idx).astype(np.int64)
    else:
        idx = rng(19).integers(-data.shape[axis], data.shape[axis], size=shape).astype(np.int64)
    check("ScatterElements", [data, idx, randn(*shape, seed=20)], {"axis": axis, "reduction": reduction}, opset=18)


@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
def test_scatter_nd(reduction):
    data = randn(4, 3, 2, seed=21)
    if reduction == "none":
        idx = np.array([[[0, 1], [3, 2]], [[2, 0], [-1, 1]]], np.int64)  # four distinct cells
    else:
        idx = np.array([[[0, 1], [3, 2]], [[0, 1], [-1, 2]]], np.int64)  # (3, 2) twice, (0, 1) twice
    check("ScatterND", [data, idx, randn(2, 2, 2, seed=22)], {"reduction": reduction}, opset=18)
    check("ScatterND", [data, np.array([[1], [3]], np.int64), randn(2, 3, 2, seed=23)], {"reduction": reduction},
          opset=18)
    check("ScatterND", [np.arange(12, dtype=np.int64).reshape(3, 4), np.array([[2, 3], [0, 0]], np.int64),
                        np.array([7, -7], np.int64)], {"reduction": reduction}, opset=18)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_gather_elements(axis):
    data = randn(3, 4, 2, seed=24)
    shape = [3, 4, 2]
    shape[axis] = 5
    idx = rng(25).integers(-data.shape[axis], data.shape[axis], size=shape).astype(np.int64)
    check("GatherElements", [data, idx], {"axis": axis})


@pytest.mark.parametrize("batch_dims", [0, 1])
def test_gather_nd(batch_dims):
    data = randn(2, 3, 4, seed=26)
    idx = np.array([[[1, 2], [0, -1]], [[1, 0], [0, 2]]], np.int64)
    check("GatherND", [data, idx], {"batch_dims": batch_dims})
    check("GatherND", [data, np.array([[1], [0]], np.int64)], {"batch_dims": batch_dims})


@pytest.mark.parametrize("exclusive", [0, 1])
@pytest.mark.parametrize("reverse", [0, 1])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_cumsum(exclusive, reverse, axis):
    attrs = {"exclusive": exclusive, "reverse": reverse}
    check("CumSum", [randn(3, 4, 2, seed=27), np.array(axis, np.int64)], attrs)
    check("CumSum", [rng(28).integers(-5, 5, size=(3, 4, 2)).astype(np.int64), np.array(axis, np.int32)], attrs)


@pytest.mark.parametrize("upper", [0, 1])
@pytest.mark.parametrize("k", [None, 0, 1, -2, 7])
def test_trilu(upper, k):
    kk = None if k is None else np.array(k, np.int64)
    check("Trilu", [randn(2, 4, 5, seed=29), kk], {"upper": upper})
    check("Trilu", [randn(5, 3, seed=30), kk], {"upper": upper})


@pytest.mark.parametrize(
    ("equation", "shapes"),
    [
        ("btd,de->bte", [(2, 3, 4), (4, 5)]),
        ("bhqd,bhkd->bhqk", [(2, 2, 3, 4), (2, 2, 5, 4)]),
        ("...d,ed->...e", [(2, 3, 4), (5, 4)]),
        ("ij,jk,kl->il", [(2, 3), (3, 4), (4, 2)]),
        ("ii->i", [(4, 4)]),
        ("ij", [(3, 4)]),
        ("ij,ij->", [(3, 4), (3, 4)]),
        ("b i j, b j k -> b i k", [(2, 3, 4), (2, 4, 2)]),
    ],
)
def test_einsum(equation, shapes):
    check("Einsum", [randn(*s, seed=31 + i) for i, s in enumerate(shapes)], {"equation": equation})


def test_gelu_tanh_and_where_family_exist():
    check("Gelu", [_activation_input()], {"approximate": "tanh"}, opset=20)
    for op in ("Where", "Equal", "Not", "Range", "Mod", "Erf"):
        assert get_op(op) is not None, op


# ------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("op_type", "inputs", "attrs", "needle"),
    [
        ("Pad", [randn(2, 3), i64(1, 1, 1, 1)], {"mode": "symmetric"}, "mode='symmetric'"),
        ("Gelu", [randn(2, 3)], {"approximate": "fast"}, "approximate='fast'"),
        ("MaxPool", [randn(1, 1, 4, 4)], {"kernel_shape": [2, 2], "auto_pad": "SAME"}, "auto_pad='SAME'"),
        ("AveragePool", [randn(1, 1, 4, 4)], {"kernel_shape": [2, 2], "auto_pad": "FULL"}, "auto_pad='FULL'"),
        ("Cast", [randn(2)], {"to": TensorProto.STRING}, "to='STRING'"),
        ("Cast", [randn(2)], {"to": TensorProto.FLOAT8E4M3FN}, "to='FLOAT8E4M3FN'"),
        ("Dropout", [randn(2), np.array(0.5, np.float32), np.array(True)], {}, "training_mode=True"),
        ("BatchNormalization", [randn(2, 3)] + [np.ones(3, np.float32)] * 4, {"training_mode": 1}, "training_mode=1"),
        ("DepthToSpace", [randn(1, 4, 2, 2)], {"blocksize": 2, "mode": "XYZ"}, "mode='XYZ'"),
        ("Mod", [randn(2), randn(2)], {"fmod": 0}, "fmod=0"),
        ("LayerNormalization", [randn(2, 3), randn(3)], {"stash_type": 10}, "stash_type=10"),
        ("GroupNormalization", [randn(2, 4, 3), randn(4), randn(4)], {"num_groups": 2, "stash_type": 16},
         "stash_type=16"),
        ("ScatterND", [randn(3), i64(0).reshape(1, 1), randn(1)], {"reduction": "mean"}, "reduction='mean'"),
        ("ScatterElements", [randn(3), i64(0), randn(1)], {"reduction": "xor"}, "reduction='xor'"),
    ],
)
def test_unsupported_attribute_values(op_type, inputs, attrs, needle):
    with pytest.raises(UnsupportedOpError) as info:
        REGISTRY[op_type](inputs, attrs)
    message = str(info.value)
    assert message.startswith(op_type) and needle in message, message
    # The converter refuses the same values with the same words (attribute_problem runs the
    # op's own check), except where the refusal depends on the data: Dropout's training_mode
    # is an input, Mod's fmod=0 is refused for floats only.
    expected = None if op_type in ("Dropout", "Mod") else message
    assert attribute_problem(op_type, attrs) == expected


@pytest.mark.parametrize(
    ("op_type", "inputs", "attrs", "needle"),
    [
        ("GroupNormalization", [randn(2, 4, 3), randn(4), randn(4)], {}, "num_groups is required"),
        ("GroupNormalization", [randn(2, 4, 3), randn(4), randn(4)], {"num_groups": 3}, "not divisible into num_groups=3"),
        ("GroupNormalization", [randn(2, 4, 3), randn(3), randn(3)], {"num_groups": 2}, "3/3 values fit neither"),
        ("LayerNormalization", [randn(2, 3), randn(3)], {"axis": 2}, "axis 2 out of range for rank 2"),
        ("Flatten", [randn(2, 3)], {"axis": -4}, "axis -4 out of range for rank 2"),
        ("Range", [i64(0), i64(5), i64(0)], {}, "Range: delta is 0"),
        ("Range", [np.float32(0), np.float32(1), np.float32(0)], {}, "Range: delta is 0"),
    ],
)
def test_invalid_attributes_are_named(op_type, inputs, attrs, needle):
    """Through get_op, so that tests/test_torch_ops.py runs the torch forms against the same
    messages: the checks live in one place and both backends use them."""
    with pytest.raises(ValueError, match=needle):
        get_op(op_type)(inputs, attrs)


# -------------------------------------------------------------- performance


def test_pooling_is_vectorised():
    """A CNN-sized batch must pool in well under a second (no per-sample loops)."""
    import time

    x = randn(128, 32, 32, 32)
    cfg = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}
    start = time.perf_counter()
    REGISTRY["MaxPool"]([x], cfg)
    REGISTRY["AveragePool"]([x], cfg)
    assert time.perf_counter() - start < 2.0


def test_every_registered_op_is_exercised():
    """Guard against registering an op without a reference test above."""
    import pathlib

    source = pathlib.Path(__file__).read_text()
    missing = sorted(op for op in SUPPORTED_OPS if f'"{op}"' not in source)
    assert not missing, missing


