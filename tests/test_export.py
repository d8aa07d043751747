"""export_onnx: a bundle's network as a float ONNX model that onnxruntime runs exactly as
the NumPy runtime runs the bundle on ideal hardware.

The reference is `Runtime(bundle)` (hardware None), itself tested against onnxruntime on
the source models. Tolerance: the conformance criterion |diff| <= 1e-4·(1 + |ref|). The
export folds each per-output affine into float32 weights and bias, which the runtime
applies as a separate multiply-add for non-conv layers, so outputs differ by float32
rounding of the products (~1e-7 relative per layer; measured ≤ 2.1e-6 on the shipped
models), far inside it; a misplaced weight, gain or bias gives errors of order 1.
"""

from __future__ import annotations

import os
import sys
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from conftest import MODELS, close
from xbar.bundle import load_bundle, save_bundle
from xbar.converter import convert
from xbar.converter.export import export_onnx, to_onnx
from xbar.errors import BundleError
from xbar.hardware import preset
from xbar.runtime import Runtime
from xbar.runtime.calibrate import calibrate

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conformance_models import ZOO, build, example_input  # noqa: E402

ort.set_default_logger_severity(3)


def _ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _same_as_runtime(bundle, feeds: dict[str, np.ndarray]) -> onnx.ModelProto:
    model = to_onnx(bundle)
    got = _ort(model, feeds)
    ref = Runtime(bundle).run(feeds)
    names = [o["name"] for o in bundle.graph["outputs"]]
    assert [o.name for o in model.graph.output] == names
    for name, g in zip(names, got):
        r = ref[name]
        assert g.shape == r.shape, name
        assert close(g, r.astype(np.float64)), f"{name}: max |diff| {np.abs(g - r).max():.3g}"
    return model


@pytest.fixture(scope="module")
def digits():
    return np.load(MODELS / "digits_test.npz")["x"][:64]


OPTIONS = [{}, dict(crossbar=(32, 16), encoding="offset", weight_bits=4), dict(afp_exponents=3, weight_bits=6),
           dict(bit_slices=2, bits_per_cell=2), dict(replicas=2, weight_clip_percentile=99.0),
           dict(digital=["/fc/Gemm"])]


@pytest.mark.parametrize("options", OPTIONS, ids=["default", "offset-4bit-small", "afp", "slices", "replicas-clip",
                                                  "fc-digital"])
@pytest.mark.parametrize("name", ["cnn_bn", "resnet_bn", "resnet_folded"])
def test_shipped_models(name, options, digits):
    bundle = convert(MODELS / f"{name}.onnx", **options)
    model = _same_as_runtime(bundle, {"input": digits})
    # What the bundle records about its interface comes back: names, batch dim name, opset.
    assert [i.name for i in model.graph.input] == ["input"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert model.opset_import[0].version == bundle.manifest["model"]["opset"]
    assert not any(n.op_type.startswith("Xbar") for n in model.graph.node)


def test_quantised_weights_are_the_programmed_ones(digits):
    """With 3-bit weights the export is the quantised network, not the source: it differs
    from the source model (so the test can tell) and equals the runtime (above)."""
    bundle = convert(MODELS / "cnn_bn.onnx", weight_bits=3)
    src = _ort(onnx.load(MODELS / "cnn_bn.onnx"), {"input": digits})[0]
    got = _ort(to_onnx(bundle), {"input": digits})[0]
    assert np.abs(got - src).max() > 1e-2
    assert close(got, Runtime(bundle)(digits))


def test_calibrated_affines_are_carried(digits):
    """calibrate re-fits the affines (and folds them): the export carries the new ones."""
    x = np.load(MODELS / "digits_calib.npz")["x"][:128]
    bundle = convert(MODELS / "resnet_bn.onnx", hardware=preset("pcm"))
    bundle.manifest["hardware"] = preset("pcm").to_dict()
    cal, _ = calibrate(bundle, x, preset("pcm").override({"t_inference": 86400.0}), 0, "affine")
    before = _ort(to_onnx(bundle), {"input": digits})[0]
    after = _same_as_runtime(cal, {"input": digits})
    got = _ort(after, {"input": digits})[0]
    assert np.abs(got - before).max() > 1e-3  # the calibration changed the network, and the export shows it


def _zoo_cases():
    for name, zm in ZOO.items():
        dw = name.startswith("conv2d_depthwise")
        for opset, bn_mode in ((11, "kept"), (13, "folded"), (17, "kept"), (17, "folded")):
            for depthwise in ("tiles", "digital") if dw else ("tiles",):
                yield pytest.param(name, opset, bn_mode, depthwise, id=f"{name}-op{opset}-{bn_mode}-{depthwise}")


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("export_zoo")


@pytest.mark.parametrize("name,opset,bn_mode,depthwise", list(_zoo_cases()))
def test_conformance_zoo(name, opset, bn_mode, depthwise, zoo_dir):
    """Every zoo network, at the opsets and batch-norm modes of the conformance suite (the
    export is written at the bundle's opset, whose attribute forms differ: Split, Reduce*)."""
    import torch

    zm = ZOO[name]
    path = zoo_dir / f"{name}_op{opset}_{bn_mode}.onnx"
    if not path.exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(build(zm), example_input(zm, 1), str(path), dynamo=False, opset_version=opset,
                                  input_names=["input"], output_names=["output"],
                                  dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                                  do_constant_folding=bn_mode == "folded")
            except Exception as exc:  # noqa: BLE001 - torch's business, as in test_conformance
                pytest.skip(f"torch cannot export {name}: {exc}")
    bundle = convert(path, crossbar=(16, 16), depthwise=depthwise)
    for batch in (1, 3):
        _same_as_runtime(bundle, {"input": example_input(zm, batch).numpy()})


def _recurrent_cases():
    from tests.test_recurrent import _onnx_rnn

    cases = [("LSTM", dict(direction="bidirectional", seq_lens=True, states=True, peepholes=True)),
             ("LSTM", dict(attrs={"clip": 0.7, "input_forget": 1}, states=True)),
             ("GRU", dict(direction="bidirectional", states=True)),
             ("GRU", dict(attrs={"linear_before_reset": 1}, seq_lens=True)),
             ("RNN", dict(direction="reverse", bias=False, attrs={"activations": ["Relu"]}))]
    return [pytest.param(_onnx_rnn, cell, kw, id=f"{cell}-{i}") for i, (cell, kw) in enumerate(cases)]


@pytest.mark.parametrize("make,cell,kw", _recurrent_cases())
def test_recurrent_nodes(make, cell, kw):
    """The recurrent node is exported as itself, behind the Transposes that take its fixed
    time-major input batch-first (and its outputs' batch to the front), as the bundle does."""
    from tests.test_recurrent import _feeds_for

    model, feeds = make(cell, **kw)
    bundle = convert(model, crossbar=(4, 6))
    out = _same_as_runtime(bundle, _feeds_for(bundle, feeds))
    assert [n.op_type for n in out.graph.node if n.op_type != "Transpose"] == [cell]


def test_recurrent_gains_fold_into_the_gates():
    """A recurrent layer whose affine has gain != 1 (as calibration leaves it): the gain is
    folded into the W/R columns and must still match the runtime."""
    from tests.test_recurrent import _feeds_for, _onnx_rnn

    model, feeds = _onnx_rnn("GRU", direction="bidirectional", states=True)
    bundle = convert(model)
    for entry in bundle.layers:
        gamma = bundle.arrays[entry["arrays"]["gamma"]]
        bundle.arrays[entry["arrays"]["gamma"]] = (gamma * np.linspace(0.5, 1.5, len(gamma))).astype(np.float32)
    _same_as_runtime(bundle, _feeds_for(bundle, feeds))


def test_written_atomically_and_never_over_a_file_without_force(tmp_path, digits):
    bundle = convert(MODELS / "cnn_bn.onnx")
    path = tmp_path / "net.onnx"
    export_onnx(bundle, path)
    onnx.checker.check_model(onnx.load(path), full_check=True)
    first = path.read_bytes()
    with pytest.raises(BundleError, match="already exists"):
        export_onnx(bundle, path)
    assert path.read_bytes() == first
    export_onnx(convert(MODELS / "cnn_bn.onnx", weight_bits=3), path, force=True)
    assert path.read_bytes() != first
    assert sorted(os.listdir(tmp_path)) == ["net.onnx"]  # no temporary file left behind
    with pytest.raises(BundleError, match="does not exist"):
        export_onnx(bundle, tmp_path / "missing" / "net.onnx")


def test_saved_and_loaded_bundle_exports_the_same(tmp_path, digits):
    bundle = convert(MODELS / "resnet_bn.onnx", crossbar=(32, 32))
    save_bundle(bundle, tmp_path / "m.xbar")
    a = to_onnx(bundle).SerializeToString()
    b = to_onnx(load_bundle(tmp_path / "m.xbar")).SerializeToString()
    assert a == b
