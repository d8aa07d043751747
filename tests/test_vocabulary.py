"""The converter's vocabulary: early refusal of unsupported ops, what folding rescues,
Einsum onto crossbars, If with a condition known at conversion."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from xbar.converter import convert
from xbar.errors import ModelError, UnsupportedOpError
from xbar.runtime import Runtime


def _model(nodes, inits=(), in_shape=("N", 4), out_shape=("N", 4), opset=17, out="y"):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, list(out_shape))],
        initializer=[numpy_helper.from_array(v, k) for k, v in dict(inits).items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _ref(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_unsupported_ops_are_refused_before_loading_work(monkeypatch):
    """Neither the checker, shape inference nor folding runs on a model that cannot convert."""
    import xbar.converter.fold as fold
    import xbar.converter.load as load

    def boom(*a, **k):
        raise AssertionError("expensive step ran before the vocabulary check")

    monkeypatch.setattr(load.onnx.checker, "check_model", boom)
    monkeypatch.setattr(load.shape_inference, "infer_shapes", boom)
    monkeypatch.setattr(fold, "_build_graph", boom)
    nodes = [helper.make_node("Unique", ["x"], ["t"], name=f"unique{j}") for j in range(1)]
    nodes += [helper.make_node("Hardmax", ["t"], ["y"], name="hm")]
    with pytest.raises(UnsupportedOpError) as info:
        convert(_model(nodes))
    msg = str(info.value)
    assert "2 ops" in msg and "'Unique' (1 node: 'unique0')" in msg and "'Hardmax'" in msg and "opset 17" in msg


def test_custom_domain_ops_are_listed_with_their_domain():
    node = helper.make_node("FusedGemm", ["x", "x"], ["y"], name="fg", domain="com.microsoft")
    m = _model([node])
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    with pytest.raises(UnsupportedOpError, match=r"'com\.microsoft\.FusedGemm' \(1 node: 'fg'\)"):
        convert(m)


def test_an_unsupported_op_on_constants_only_is_folded():
    """Hardmax is not in the runtime, but on a constant it is evaluated at conversion."""
    c = np.array([[1.0, 3.0, 2.0, 0.5]], np.float32)
    nodes = [helper.make_node("Hardmax", ["c"], ["hc"], name="hm"), helper.make_node("Add", ["x", "hc"], ["y"])]
    m = _model(nodes, {"c": c})
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    np.testing.assert_allclose(Runtime(convert(m))(x), _ref(m, x), rtol=1e-6)


def test_old_opset_is_checked_after_the_upgrade():
    m = _model([helper.make_node("Hardmax", ["x"], ["y"], name="hm")], opset=11)
    with pytest.raises(UnsupportedOpError, match="opset 11, upgraded to 17"):
        convert(m)


# ------------------------------------------------------------------------ Einsum


@pytest.mark.parametrize(
    ("equation", "w_shape", "weight_first", "analog"),
    [
        ("btd,de->bte", (4, 5), False, True),
        ("btd,ed->bte", (5, 4), False, True),  # transposed weight (torch's F.linear layout)
        ("...d,de->...e", (4, 5), False, True),
        ("de,btd->bte", (4, 5), True, True),  # the weight first
        ("btd,de", (4, 5), False, True),  # implicit output "bet": a Transpose after the product
        ("btd,de->bet", (4, 5), False, True),  # output axes permuted: the same
        ("bcd,ce->bed", (3, 5), False, True),  # summed axis not last: a Transpose before, and after
        ("bcd,ec->bde", (5, 3), False, True),  # ... before only
        ("btd,dt->bt", (4, 3), False, False),  # t is shared with the activation: digital
        ("bdd,de->bde", (4, 5), False, False),  # diagonal: digital
        ("...d,de->e...", (4, 5), False, False),  # "..." moved: digital
    ],
)
def test_einsum_with_a_constant_weight(equation, w_shape, weight_first, analog):
    """Exact against onnxruntime whether the product goes onto crossbars (a MatMul, with
    digital Transposes around it where axes move) or stays a digital Einsum."""
    rng = np.random.default_rng(1)
    w = rng.normal(size=w_shape).astype(np.float32)
    ins = ["w", "x"] if weight_first else ["x", "w"]
    shape = ("N", 4, 4) if equation.startswith("bdd") else ("N", 3, 4)
    rank = np.einsum(equation, *[np.zeros(w_shape) if i == "w" else np.zeros((2, *shape[1:])) for i in ins]).ndim
    m = _model([helper.make_node("Einsum", ins, ["y"], name="ein", equation=equation)], {"w": w}, in_shape=shape,
               out_shape=[f"d{i}" for i in range(rank)])
    bundle = convert(m, crossbar=(4, 4))  # several tiles
    assert [l["name"] for l in bundle.layers] == (["ein"] if analog else [])
    x = rng.normal(size=(2, *shape[1:])).astype(np.float32)
    got, ref = Runtime(bundle)(x), _ref(m, x)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_einsum_rewrite_keeps_the_bias_add_and_digital_pinning():
    rng = np.random.default_rng(2)
    w, b = rng.normal(size=(4, 5)).astype(np.float32), rng.normal(size=5).astype(np.float32)
    nodes = [helper.make_node("Einsum", ["x", "w"], ["e"], name="ein", equation="btd,de->bte"),
             helper.make_node("Add", ["e", "b"], ["y"])]
    m = _model(nodes, {"w": w, "b": b}, in_shape=("N", 3, 4), out_shape=("N", 3, 5))
    x = rng.normal(size=(2, 3, 4)).astype(np.float32)
    for digital in ([], ["ein"]):
        bundle = convert(m, digital=digital)
        assert [(l["name"], l["placement"]) for l in bundle.layers] == [("ein", "digital" if digital else "analog")]
        assert not [n for n in bundle.graph["nodes"] if n["op"] == "Add"]  # bias absorbed into the affine
        np.testing.assert_allclose(Runtime(bundle)(x), _ref(m, x), rtol=1e-4, atol=1e-5)


def test_convert_says_which_einsums_with_a_weight_stay_digital(tmp_path):
    """An Einsum with a constant weight that is no product with it (here the weight shares
    the time axis) runs digitally; convert says so, naming the node and its equation, and
    one that maps (with its output axes permuted) says nothing."""
    from click.testing import CliRunner

    from xbar.cli import cli

    for equation, out_shape, digital in (("btd,dt->bt", ("N", 3), True), ("btd,de->bet", ("N", 5, 3), False)):
        w = np.random.default_rng(1).normal(size=(4, 3 if digital else 5)).astype(np.float32)
        m = _model([helper.make_node("Einsum", ["x", "w"], ["y"], name="ein", equation=equation)], {"w": w},
                   in_shape=("N", 3, 4), out_shape=out_shape)
        src = tmp_path / "m.onnx"
        onnx.save(m, src)
        r = CliRunner().invoke(cli, ["convert", str(src), "-o", str(tmp_path / "m.xbar"), "--force"],
                               catch_exceptions=False)
        flat = " ".join(r.output.split())
        assert r.exit_code == 0, r.output
        assert (f"1 Einsum node with a constant weight runs digitally, not on the chip: 'ein' ('{equation}')"
                in flat) is digital, r.output


# ------------------------------------------------------------------------ If


def _if_model(cond_from_shape: bool):
    then_g = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    if cond_from_shape:  # x.shape[1] == 4, known from shape inference
        pre = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "one"], ["d"]),
               helper.make_node("Equal", ["d", "four"], ["cond"])]
        inits = {"one": np.array(1, np.int64), "four": np.array(4, np.int64)}
    else:  # a data-dependent condition: cannot be folded
        pre = [helper.make_node("ReduceSum", ["x"], ["sum"], keepdims=0), helper.make_node("Greater", ["sum", "zero"], ["cond"])]
        inits = {"zero": np.array(0, np.float32)}
    node = helper.make_node("If", ["cond"], ["y"], name="the_if", then_branch=then_g, else_branch=else_g)
    return _model(pre + [node], inits)


def test_if_with_a_condition_known_at_conversion_is_inlined():
    m = _if_model(True)
    bundle = convert(m)
    ops = [n["op"] for n in bundle.graph["nodes"]]
    assert "Relu" in ops and "If" not in ops and "Neg" not in ops, ops  # (+ the Identity naming the output)
    x = np.random.default_rng(3).normal(size=(3, 4)).astype(np.float32)
    np.testing.assert_array_equal(Runtime(bundle)(x), _ref(m, x))


def test_if_with_a_runtime_condition_is_refused_after_folding():
    with pytest.raises(UnsupportedOpError, match=r"'If' \(1 node: 'the_if'\).*after constant folding"):
        convert(_if_model(False))


def test_group_normalization_18_passes_the_checker():
    """onnx's checker calls GroupNormalization-18 deprecated; onnxruntime and xbar run it."""
    rng = np.random.default_rng(4)
    node = helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=2, epsilon=1e-3)
    m = _model([node], {"s": rng.normal(size=2).astype(np.float32), "b": rng.normal(size=2).astype(np.float32)},
               in_shape=("N", 6, 5), out_shape=["N", 6, 5], opset=18)
    x = rng.normal(size=(2, 6, 5)).astype(np.float32)
    np.testing.assert_allclose(Runtime(convert(m))(x), _ref(m, x), rtol=1e-4, atol=1e-5)


def test_optional_outputs_nobody_reads_are_dropped_and_a_read_maxpool_index_is_refused():
    """A MaxPool's Indices (which xbar does not compute) and a LayerNormalization's Mean and
    InvStdDev, declared but read by nothing: dropped at conversion, the model runs and
    equals onnxruntime. An Indices output the model does return: refused at conversion,
    naming the node, not at every run."""
    nodes = [helper.make_node("MaxPool", ["x"], ["p", "idx"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
             helper.make_node("LayerNormalization", ["p", "s"], ["y", "mean", "istd"], axis=-1, name="ln")]
    inits = [numpy_helper.from_array(np.linspace(0.5, 1.5, 3).astype(np.float32), "s")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 3, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    bundle = convert(model)
    ops = {n["op"]: n["outputs"] for n in bundle.manifest["graph"]["nodes"]}
    assert ops["MaxPool"] == ["p"] and ops["LayerNormalization"] == ["y"]
    x = np.random.default_rng(0).standard_normal((3, 2, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(Runtime(bundle)(x), _ref(model, x), rtol=1e-5, atol=1e-6)

    graph.output.append(helper.make_tensor_value_info("idx", TensorProto.INT64, ["N", 2, 3, 3]))
    with pytest.raises(UnsupportedOpError, match="MaxPool node 'pool': its Indices output 'idx'"):
        convert(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_attribute_values_the_runtime_refuses_stop_the_conversion(tmp_path):
    """Every such node at once, each problem with its node names, before any mapping; no
    file. onnxruntime runs all three, so nothing but xbar's own refusal stops them."""
    nodes = [
        helper.make_node("LayerNormalization", ["x", "s"], ["a"], axis=-1, stash_type=10, name="ln1"),
        helper.make_node("LayerNormalization", ["a", "s"], ["b"], axis=-1, stash_type=10, name="ln2"),
        helper.make_node("Gelu", ["b"], ["y"], approximate="fast", name="gelu"),
    ]
    m = _model(nodes, {"s": np.ones(4, np.float32)}, opset=20)
    with pytest.raises(UnsupportedOpError) as info:
        convert(m)
    msg = str(info.value)
    assert "LayerNormalization: stash_type=10 is not supported (supported: 1, 11) (2 nodes: 'ln1', 'ln2')" in msg
    assert "Gelu: approximate='fast' is not supported" in msg and "(1 node: 'gelu')" in msg
    assert "Nothing was converted" in msg and "opset 20" in msg


@pytest.mark.parametrize("attrs, named", [
    ({"antialias": 1}, "antialias=1"),
    ({"keep_aspect_ratio_policy": "not_larger"}, "keep_aspect_ratio_policy='not_larger'"),
    ({"coordinate_transformation_mode": "tf_crop_and_resize"}, "'tf_crop_and_resize'"),
])
def test_resize_attributes_are_refused_at_conversion(attrs, named):
    node = helper.make_node("Resize", ["x", "", "sc"], ["y"], mode="linear", name="up", **attrs)
    m = _model([node], {"sc": np.array([1, 1, 2, 2], np.float32)}, in_shape=("N", 1, 2, 2),
               out_shape=("N", 1, 4, 4), opset=18)
    with pytest.raises(UnsupportedOpError, match=f"Resize: .*{named}.*'up'"):
        convert(m)


def test_a_refused_attribute_on_a_folded_node_does_not_matter():
    """Only nodes that will run are checked: casts through float8 on a constant were
    evaluated at conversion (the values below are exact in float8 e4m3)."""
    c = np.array([[1.0, -2.0, 0.5, 3.0]], np.float32)

    def through_float8(src, name):
        return [helper.make_node("Cast", [src], [name + "8"], to=TensorProto.FLOAT8E4M3FN, name=name),
                helper.make_node("Cast", [name + "8"], [name + "f"], to=TensorProto.FLOAT)]

    m = _model(through_float8("c", "q") + [helper.make_node("Add", ["x", "qf"], ["y"])], {"c": c})
    with pytest.raises(UnsupportedOpError, match=r"Cast: to='FLOAT8E4M3FN' .*'q'"):  # on the data path
        convert(_model(through_float8("x", "q") + [helper.make_node("Identity", ["qf"], ["y"])]))
    x = np.ones((2, 4), np.float32)
    assert np.array_equal(Runtime(convert(m)).run({"x": x})["y"], x + c)


@pytest.mark.parametrize("w_shape", [(0, 5), (4, 0)])
def test_an_empty_constant_weight_is_refused_by_name(w_shape):
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
    m = _model([node], {"w": np.zeros(w_shape, np.float32)}, in_shape=("N", w_shape[0]), out_shape=("N", w_shape[1]))
    with pytest.raises(ModelError, match=rf"node 'mm' \(MatMul\) has an empty constant weight 'w' of shape "
                                         rf"\[{w_shape[0]}, {w_shape[1]}\]"):
        convert(m)
