"""`convert(..., depthwise='digital')` keeps depthwise convolutions digital, stored as their
kernels and run as depthwise convolutions; checked against the tiles policy's exact
(ideal) path and onnxruntime, and on a chip (the other layers still on tiles)."""

import numpy as np
import onnxruntime as ort
import pytest
from conftest import export_small

from xbar.bundle import load_bundle, save_bundle
from xbar.converter import convert
from xbar.errors import ConfigError
from xbar.hardware import preset
from xbar.runtime import Runtime


def _model(path, mult=1, stride=1, dilation=1, k=3):
    import torch
    import torch.nn as nn

    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
                        nn.Conv2d(12, 12 * mult, k, stride=stride, padding=k // 2 * dilation, dilation=dilation,
                                  groups=12),
                        nn.BatchNorm2d(12 * mult), nn.ReLU(), nn.Conv2d(12 * mult, 4, 1))
    return export_small(net, path, (1, 3, 9, 9))


@pytest.mark.parametrize("mult,stride,dilation,k", [(1, 1, 1, 3), (2, 2, 1, 3), (1, 1, 2, 5)])
def test_digital_depthwise_matches_tiles_and_onnxruntime(tmp_path, mult, stride, dilation, k):
    model = _model(tmp_path / "m.onnx", mult, stride, dilation, k)
    x = np.random.default_rng(0).standard_normal((5, 3, 9, 9)).astype(np.float32)
    tiles = convert(model, crossbar=(16, 16))
    dig = convert(model, crossbar=(16, 16), depthwise="digital")
    assert [l["placement"] for l in dig.layers] == ["analog", "digital", "analog"]
    assert dig.manifest["summary"]["depthwise"] == "digital"
    assert dig.manifest["summary"]["analog_weights"] < tiles.manifest["summary"]["analog_weights"]
    save_bundle(dig, tmp_path / "d.xbar")
    dig = load_bundle(tmp_path / "d.xbar")  # the kernels pass the manifest checks
    assert "weight" not in dig.layers[1]["arrays"]
    want = ort.InferenceSession(str(model)).run(None, {"x": x})[0]
    got = Runtime(dig)(x)
    np.testing.assert_allclose(got, Runtime(tiles)(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    spec = preset("pcm").override(t_inference=3600.0)
    chip = Runtime(dig, spec, seed=0)
    assert chip.layers[1].chip is None and chip.layers[0].chip is not None
    assert np.corrcoef(chip(x).ravel(), want.ravel())[0, 1] > 0.9


def test_unknown_depthwise_policy_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="--depthwise"):
        convert(_model(tmp_path / "m.onnx"), depthwise="packed-tightly")


def test_cli_convert_depthwise_option_is_shown_by_info(tmp_path):
    from click.testing import CliRunner

    from xbar.cli import cli

    model = _model(tmp_path / "m.onnx")
    runner = CliRunner()
    res = runner.invoke(cli, ["convert", str(model), "-o", str(tmp_path / "m.xbar"), "--crossbar", "16x16",
                              "--depthwise", "digital"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "2 analog layers" in res.output
    info = runner.invoke(cli, ["info", str(tmp_path / "m.xbar")], catch_exceptions=False)
    assert "depthwise convolution kept digital (--depthwise digital)" in " ".join(info.output.split())


def test_info_names_the_policy_only_when_it_applied(tmp_path):
    from pathlib import Path

    from click.testing import CliRunner

    from xbar.cli import cli

    runner = CliRunner()
    with_dw, without = tmp_path / "dw.xbar", tmp_path / "plain.xbar"
    shipped = Path(__file__).resolve().parent.parent / "models" / "resnet_bn.onnx"
    for src, out in ((_model(tmp_path / "m.onnx"), with_dw), (shipped, without)):
        assert runner.invoke(cli, ["convert", str(src), "-o", str(out)], catch_exceptions=False).exit_code == 0
    text = runner.invoke(cli, ["info", str(with_dw)], catch_exceptions=False).output
    assert "1 depthwise convolution on block-diagonal tiles (--depthwise tiles)" in " ".join(text.split()), text
    assert "depthwise" not in runner.invoke(cli, ["info", str(without)], catch_exceptions=False).output


def _grouped_conv(groups: int, c: int = 16, seed: int = 3):
    """One Conv of c → c channels in `groups` groups (3×3, no bias) and its weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(seed).normal(0, 1, (c, c // groups, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", group=groups, pads=[1, 1, 1, 1])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", c, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", c, 6, 6])], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, w


@pytest.mark.parametrize("groups,options", [(16, {}), (16, {"depthwise": "packed"}), (16, {"pack_tiles": True}),
                                            (4, {})], ids=["depthwise", "packed", "pack-tiles", "groups-4"])
def test_weight_clip_takes_each_outputs_own_weights(groups, options):
    """--weight-clip P scales each output by the P-th percentile of |w| over its own kernel
    weights. A depthwise or grouped layer's matrix is block-diagonal; the zeros outside an
    output's block are not weights and must not pull the percentile down (they did: at P =
    90 every depthwise column fell on a zero). Reference: onnxruntime on the source graph
    with each output's weights clipped at that percentile."""
    import onnx

    model, w = _grouped_conv(groups)
    bundle = convert(model, crossbar=(32, 32), weight_clip_percentile=90.0, **options)
    flat = w.reshape(w.shape[0], -1).astype(np.float64)
    s = np.percentile(np.abs(flat), 90.0, axis=1)[:, None]
    clipped = (np.clip(flat / s, -1.0, 1.0) * s).astype(np.float32).reshape(w.shape)
    ref_model = onnx.ModelProto()
    ref_model.CopyFrom(model)
    ref_model.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(clipped, "w"))
    x = np.random.default_rng(4).standard_normal((3, 16, 6, 6)).astype(np.float32)
    want = ort.InferenceSession(ref_model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    source = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.abs(want - source).max() > 0.05 * np.abs(source).max()  # the clip matters here
    # float32 sums of 9–36 products of magnitude ~1: 1e-5 of the largest output is ample.
    np.testing.assert_allclose(Runtime(bundle)(x), want, rtol=0, atol=1e-5 * np.abs(want).max())
