"""Ideal hardware reproduces onnxruntime on the shipped models, through the tiles."""

import numpy as np
import onnxruntime as ort
import pytest

from conftest import close
from xbar.bundle import load_bundle, save_bundle
from xbar.converter import convert
from xbar.hardware import preset
from xbar.runtime import Runtime

MODELS = ["cnn_bn", "resnet_bn", "resnet_folded"]


# Differential pairs need an even column count; offset also gets an odd one.
LAYOUTS = [("differential", (128, 128)), ("differential", (32, 16)), ("offset", (128, 128)),
           ("offset", (32, 16)), ("offset", (64, 7))]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("encoding,crossbar", LAYOUTS)
def test_ideal_matches_onnxruntime(models_dir, test_data, model, encoding, crossbar):
    x, y = test_data
    ref = ort.InferenceSession(str(models_dir / f"{model}.onnx")).run(None, {"input": x})[0]
    out = Runtime(convert(models_dir / f"{model}.onnx", crossbar=crossbar, encoding=encoding))(x)
    assert out.dtype == np.float32 and out.shape == ref.shape
    assert close(out, ref)
    assert (out.argmax(1) == ref.argmax(1)).all()


def test_bn_kept_as_affine_not_folded(models_dir):
    b = convert(models_dir / "resnet_bn.onnx")
    assert all(layer["affine"]["source"] == "batchnorm" for layer in b.layers if layer["kind"] == "conv")
    assert not any(n["op"] == "BatchNormalization" for n in b.graph["nodes"])
    folded = convert(models_dir / "resnet_folded.onnx")
    assert all(layer["affine"]["source"] == "bias" for layer in folded.layers)
    # The folded model's conv biases are carried by the identity affine.
    assert any(np.any(folded.array(layer["arrays"]["bias"])) for layer in folded.layers)


def test_weight_quantisation_changes_outputs_within_its_step(models_dir, test_data):
    x, _ = test_data
    exact = Runtime(convert(models_dir / "resnet_bn.onnx"))(x[:64])
    q8 = Runtime(convert(models_dir / "resnet_bn.onnx", weight_bits=8))(x[:64])
    q3 = Runtime(convert(models_dir / "resnet_bn.onnx", weight_bits=3))(x[:64])
    err8, err3 = np.abs(q8 - exact).max(), np.abs(q3 - exact).max()
    assert 0 < err8 < err3


def test_digital_pin_and_roundtrip(models_dir, test_data, tmp_path):
    x, _ = test_data
    names = [layer["name"] for layer in convert(models_dir / "resnet_bn.onnx").layers]
    b = convert(models_dir / "resnet_bn.onnx", digital=[names[0], names[-1]])
    places = {layer["name"]: layer["placement"] for layer in b.layers}
    assert places[names[0]] == places[names[-1]] == "digital"
    assert b.manifest["summary"]["digital_layers"] == 2
    out = Runtime(b)(x)
    path = save_bundle(b, tmp_path / "m.xbar")
    again = Runtime(load_bundle(path))(x)
    np.testing.assert_array_equal(out, again)
    ref = ort.InferenceSession(str(models_dir / "resnet_bn.onnx")).run(None, {"input": x})[0]
    assert close(out, ref)


def test_batch_axis_is_dynamic(models_dir, test_data):
    x, _ = test_data
    rt = Runtime(convert(models_dir / "cnn_bn.onnx"))
    full = rt(x[:7])
    for n in (1, 3):
        np.testing.assert_allclose(rt(x[:n]), full[:n], rtol=1e-5, atol=1e-5)


ENCODINGS = {
    "afp2": dict(afp_exponents=2),
    "afp3-offset": dict(afp_exponents=3, afp_step=1, encoding="offset"),
    "replicas2": dict(replicas=2),
    "afp2-placed": dict(afp_exponents=2, rearrange="ir-drop", rearrange_rows="ir-drop", hardware=preset("pcm")),
}
# Bit slicing stores S·b magnitude bits: the same network as fixed point with S·b + 1 signed bits.
SLICED = {
    "slices3x5": dict(bit_slices=3, bits_per_cell=5),
    "slices3x5-balanced-offset": dict(bit_slices=3, bits_per_cell=5, encoding="offset", rearrange="balance",
                                      hardware=preset("pcm")),
}


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("option", list(ENCODINGS) + list(SLICED))
@pytest.mark.parametrize("crossbar", [(128, 128), (32, 16)])
def test_encodings_match_onnxruntime(models_dir, test_data, model, option, crossbar):
    """Every encoding, on exact hardware both fused and tile by tile, with BN kept (cnn_bn,
    resnet_bn) and folded (resnet_folded). Against onnxruntime within the conformance
    tolerance; bit slicing against the same weights quantised in fixed point (the
    configured quantisation, 2^-15, moves these outputs by ~2e-4 of their size, more than
    the tolerance), where float32 summation order is the only difference (measured
    ≤ 2.5e-6, bound 2e-5)."""
    x, _ = test_data
    x = x[:64]
    path = models_dir / f"{model}.onnx"
    if option in SLICED:
        options = SLICED[option]
        quantised = convert(path, weight_bits=options["bit_slices"] * options["bits_per_cell"] + 1,
                            encoding=options.get("encoding", "differential"))
        ref, tol = Runtime(quantised)(x), 2e-5
    else:
        options = ENCODINGS[option]
        ref, tol = ort.InferenceSession(str(path)).run(None, {"input": x})[0], 1e-4
    b = convert(path, crossbar=crossbar, **options)
    for out in (Runtime(b)(x), Runtime(b, preset("ideal"), seed=0)(x)):
        assert close(out, ref, tol)
        assert (out.argmax(1) == ref.argmax(1)).all()
