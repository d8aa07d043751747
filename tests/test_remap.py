"""remap: new float weights and affines mapped onto a bundle exactly as it was mapped.

Independent references: converting the equivalently modified ONNX model (built with
onnx.numpy_helper) with the same options must give the same arrays, and onnxruntime on
that model the same ideal outputs (conformance tolerance 1e-4·(1 + |ref|)).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from conftest import MODELS, close
from xbar.affine import FIELDS, Affine
from xbar.bundle import load_bundle, save_bundle
from xbar.converter import convert
from xbar.converter.remap import remap
from xbar.errors import ConfigError, DataError, ModelError, XbarError
from xbar.hardware import preset
from xbar.runtime import Runtime
from xbar.runtime.calibrate import calibrate
from xbar.runtime.ranges import find_ranges


@pytest.fixture(scope="module")
def calib_x():
    return np.load(MODELS / "digits_calib.npz")["x"][:96]


@pytest.fixture(scope="module")
def test_x():
    return np.load(MODELS / "digits_test.npz")["x"][:64]


def _convert(model, hw: str = "ideal", **options):
    """What `xbar convert` does: map for the target and record it in the manifest."""
    spec = preset(hw)
    bundle = convert(model, hardware=spec, **options)
    bundle.manifest["hardware"] = spec.to_dict()
    return bundle


def _own_weights(bundle) -> dict[str, np.ndarray]:
    """Each layer's effective float weights, as the brief defines them: Layer.matrix * col_scale."""
    return {l.name: l.matrix.astype(np.float64) * l.col_scale for l in Runtime(bundle).layers
            if l.depthwise is None}


def _perturbed(path, seed: int = 0, scale: float = 0.1) -> onnx.ModelProto:
    """The model with every Conv/Gemm/MatMul weight initializer perturbed by relative noise."""
    model = onnx.load(str(path))
    weights = {n.input[1] for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")}
    rng = np.random.default_rng(seed)
    for init in model.graph.initializer:
        if init.name in weights:
            w = numpy_helper.to_array(init)
            new = (w + scale * np.abs(w).mean() * rng.standard_normal(w.shape)).astype(w.dtype)
            init.CopyFrom(numpy_helper.from_array(new, init.name))
    return model


def _weights_of(model: onnx.ModelProto, **options) -> dict[str, np.ndarray]:
    """K×N weights of every layer of `model` as the converter extracts them, read from a
    conversion that keeps every layer digital (stored as float32 weights, which the float32
    ONNX weights are exactly). Digital depthwise layers store their kernels: expanded here."""
    names = [e["name"] for e in convert(model, **options).layers]
    bundle = convert(model, digital=names, **options)
    out = {}
    for e in bundle.layers:
        a = e["arrays"]
        if "weight" in a:
            out[e["name"]] = bundle.arrays[a["weight"]].astype(np.float64)
            continue
        kernel = bundle.arrays[a["weight_depthwise"]]  # (∏k, N): output n reads channel n // mult
        cin, n = e["params"]["in_channels"], e["N"]
        w = np.zeros((e["K"], n))
        rows = np.arange(kernel.shape[0])[:, None] * cin + (np.arange(n) // (n // cin))[None, :]
        w[rows, np.arange(n)[None, :]] = kernel
        out[e["name"]] = w
    return out


def _assert_same_arrays(got, want, what: str) -> None:
    assert sorted(got.arrays) == sorted(want.arrays), what
    for key, ref in want.arrays.items():
        assert got.arrays[key].dtype == ref.dtype and np.array_equal(got.arrays[key], ref), f"{what}: {key}"
    for g, w in zip(got.layers, want.layers):
        assert g.get("tiles") == w.get("tiles") and g["arrays"] == w["arrays"], f"{what}: {w['name']}"
    for key in ("tiles_used", "physical_columns", "adc_per_sample"):
        assert got.manifest["summary"][key] == want.manifest["summary"][key], f"{what}: summary {key}"


def _depthwise_model(tmp_path):
    from tests.test_depthwise_policy import _model

    return _model(tmp_path / "dw.onnx", mult=2)


# Every mapping option remap must reproduce (hardware: the target AFP weighs and placement reads).
OPTIONS = [
    ("default", {}),
    ("offset-4bit-small", dict(crossbar=(32, 16), encoding="offset", weight_bits=4)),
    ("afp-rram", dict(afp_exponents=3, hw="rram")),  # rram's window; with every preset device
    # the exponent rule picks what it picks on ideal hardware for these weights, so the target's part in
    # remapping is exercised by the placement options below (they fail if remap drops the target)
    ("afp-bits-rram", dict(afp_exponents=3, weight_bits=5, hw="rram")),
    ("replicas", dict(replicas=2)),
    ("bit-slices", dict(bit_slices=2, bits_per_cell=2)),
    ("placement-pcm", dict(rearrange="ir-drop", rearrange_rows="ir-drop", hw="pcm", crossbar=(64, 64))),
    ("balance-pcm", dict(rearrange="balance", hw="pcm", crossbar=(32, 32))),
    ("clip", dict(weight_clip_percentile=99.0)),
    ("pack-tiles", dict(pack_tiles=True, crossbar=(16, 16))),  # K = 27, 144, ...: stacked last row blocks
]
EXACT = {"offset-4bit-small", "afp-bits-rram", "bit-slices"}  # quantised: the weights snap back to their levels


@pytest.mark.parametrize("label,options", OPTIONS, ids=[o[0] for o in OPTIONS])
def test_perturbed_weights_equal_converting_the_perturbed_model(label, options, test_x):
    src = MODELS / "resnet_bn.onnx"
    modified = _perturbed(src)
    bundle = _convert(src, **options)
    want = _convert(modified, **options)
    opts = {k: v for k, v in options.items() if k != "hw"}
    got = remap(bundle, _weights_of(modified, **{k: v for k, v in opts.items() if k == "crossbar"}))
    _assert_same_arrays(got, want, label)
    if "weight_bits" not in options and "bit_slices" not in options and "weight_clip_percentile" not in options:
        ref = ort.InferenceSession(modified.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"input": test_x})[0]
        assert close(Runtime(got)(test_x), ref)


@pytest.mark.parametrize("label,options", [o for o in OPTIONS if o[0] != "clip"], ids=[o[0] for o in OPTIONS
                                                                                     if o[0] != "clip"])
def test_own_weights_round_trip(label, options, test_x):
    """Remapping the bundle's own effective weights gives back its arrays. The float32
    conductances are read back through float32 normalisation and column scales, so a
    re-derived conductance may land one float32 step away (never more: measured ≤ half a
    step of g_max on every layer and option here); quantised weights snap back to their
    levels exactly. Integer and bool arrays (column map, allocation, row order) are equal.
    With a clip percentile the scale is re-measured from already clipped weights, so it
    does not round-trip (test_clip_does_not_round_trip)."""
    bundle = _convert(MODELS / "resnet_bn.onnx", **options)
    got = remap(bundle, _own_weights(bundle))
    assert sorted(got.arrays) == sorted(bundle.arrays)
    step = np.spacing(np.float32(bundle.manifest["mapping"]["g_max"]))
    for key, ref in bundle.arrays.items():
        new = got.arrays[key]
        if ref.dtype.kind != "f" or label in EXACT:
            assert np.array_equal(new, ref), key
        elif key.endswith("/tiles"):
            assert np.abs(new.astype(np.float64) - ref).max() <= step, key
        else:  # col_scale: max |w| of a column, re-derived from float32 products
            assert np.allclose(new, ref, rtol=4 * np.finfo(np.float32).eps, atol=0), key
    assert close(Runtime(got)(test_x), Runtime(bundle)(test_x).astype(np.float64))


def test_clip_does_not_round_trip_but_converting_does():
    """The 99th percentile of |w| after clipping at it interpolates between order statistics
    of which the upper one was clipped: the new scale is below the old one. Documented; the
    contract that matters (same as converting the new weights) is tested above."""
    bundle = _convert(MODELS / "cnn_bn.onnx", weight_clip_percentile=99.0)
    got = remap(bundle, _own_weights(bundle))
    key = bundle.layers[1]["arrays"]["col_scale"]
    assert np.all(got.arrays[key] <= bundle.arrays[key] * (1 + 1e-6)) and np.any(got.arrays[key] < bundle.arrays[key])


@pytest.mark.parametrize("depthwise", ["tiles", "digital", "packed", "packed+pack-tiles"])
def test_depthwise_and_grouped_structure_is_kept(depthwise, tmp_path):
    src = _depthwise_model(tmp_path)
    modified = _perturbed(src, seed=3)
    stack = depthwise.endswith("+pack-tiles")
    depthwise = depthwise.split("+")[0]
    bundle = _convert(src, crossbar=(16, 16), depthwise=depthwise, pack_tiles=stack)
    want = _convert(modified, crossbar=(16, 16), depthwise=depthwise, pack_tiles=stack)
    if stack:
        assert bundle.manifest["pool"]["layers"] > 1  # layers share tiles
        assert any(bundle.arrays[l["arrays"]["pack_map"]].shape[1] == 6 for l in bundle.layers if "pack_map" in l["arrays"])
    got = remap(bundle, _weights_of(modified, crossbar=(16, 16), depthwise=depthwise))
    _assert_same_arrays(got, want, depthwise)
    x = np.random.default_rng(0).standard_normal((4, 3, 9, 9)).astype(np.float32)
    ref = ort.InferenceSession(modified.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert close(Runtime(got)(x), ref)


def test_structural_zeros_must_stay_zero(tmp_path):
    bundle = _convert(_depthwise_model(tmp_path), crossbar=(16, 16))
    entry = next(e for e in bundle.layers if e["params"].get("group", 1) > 1)
    w = _own_weights(bundle)[entry["name"]]
    w[np.nonzero(w == 0)[0][0], np.nonzero(w == 0)[1][0]] = 0.1
    with pytest.raises(DataError, match=f"{entry['name']}.*outside its groups"):
        remap(bundle, {entry["name"]: w})


def test_ranges_are_measured_again(calib_x, test_x):
    src = MODELS / "cnn_bn.onnx"
    modified = _perturbed(src, seed=1)
    bundle = _convert(src, hw="pcm")
    find_ranges(bundle, calib_x, preset("pcm"))
    with pytest.raises(ConfigError, match="calibration data"):
        remap(bundle, _weights_of(modified))
    got = remap(bundle, _weights_of(modified), calib_x=calib_x)
    want = _convert(modified, hw="pcm")
    find_ranges(want, calib_x, preset("pcm"))
    _assert_same_arrays(got, want, "ranges")
    assert [e["ranges"] for e in got.layers] == [e["ranges"] for e in want.layers]
    old = bundle.arrays[bundle.layers[0]["ranges"]["adc"]]
    assert not np.array_equal(got.arrays[got.layers[0]["ranges"]["adc"]], old)  # they did change
    assert got.manifest["finetune"]["ranges"]["samples"] == len(calib_x)


def test_new_affines_equal_the_model_with_new_batch_norms(test_x):
    src = MODELS / "resnet_bn.onnx"
    model = onnx.load(str(src))
    bns = {n.input[1] for n in model.graph.node if n.op_type == "BatchNormalization"}
    for init in model.graph.initializer:
        if init.name in bns:
            g = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array((g * 1.5).astype(g.dtype), init.name))
    bundle = _convert(src)
    affines = {}
    for e in bundle.layers:
        a = Affine(*(bundle.arrays[e["arrays"][f]].astype(np.float64) for f in FIELDS), e["affine"]["eps"])
        affines[e["name"]] = Affine(a.bias, a.gamma * 1.5, a.beta, a.mean, a.var, a.eps) \
            if e["affine"]["source"] == "batchnorm" else a
    got = remap(bundle, affines=affines)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"input": test_x})[0]
    assert close(Runtime(got)(test_x), ref)
    assert not close(Runtime(bundle)(test_x), ref)
    assert got.manifest["finetune"]["affines_replaced"] == list(affines)


def test_calibration_history_is_dropped_and_the_bundle_saves(calib_x, tmp_path):
    bundle = _convert(MODELS / "cnn_bn.onnx", hw="pcm")
    cal, _ = calibrate(bundle, calib_x, preset("pcm").override({"t_inference": 3600.0}), 0, "affine")
    assert cal.manifest["calibration"] and any("source_affine" in e for e in cal.layers)
    got = remap(cal, _own_weights(cal), calib_x=calib_x, record={"method": "noise", "epochs": 3})
    assert got.manifest["calibration"] == [] and not any("source_affine" in e for e in got.layers)
    assert not any("/source_" in k for k in got.arrays)
    assert got.manifest["finetune"] == {"method": "noise", "epochs": 3, "remapped_layers": list(_own_weights(cal)),
                                        "affines_replaced": [], "calibration_dropped": 1,
                                        "ranges": {"samples": len(calib_x), "dac_percentile": 99.99,
                                                   "adc_percentile": 99.99}}
    save_bundle(got, tmp_path / "ft.xbar")
    back = load_bundle(tmp_path / "ft.xbar")  # checksums and the manifest schema are verified here
    assert back.manifest["format_version"] == 3 and back.manifest["finetune"]["calibration_dropped"] == 1
    assert cal.manifest["calibration"]  # the input is untouched


def test_errors_name_the_layer(test_x):
    bundle = _convert(MODELS / "cnn_bn.onnx")
    name = bundle.layers[0]["name"]
    w = _own_weights(bundle)[name]
    with pytest.raises(ConfigError, match="no layer named 'nope'.*features.0/Conv"):
        remap(bundle, {"nope": w})
    with pytest.raises(ConfigError, match="no layer named 'gone'"):
        remap(bundle, affines={"gone": None})
    with pytest.raises(DataError, match=f"{name}.*shape \\[9, 15\\], expected \\[9, 16\\]"):
        remap(bundle, {name: w[:, :15]})
    bad = w.copy()
    bad[0, 0] = np.nan
    with pytest.raises(DataError, match=f"{name}.*1 non-finite"):
        remap(bundle, {name: bad})
    with pytest.raises(DataError, match="affine gamma must be 16 finite"):
        remap(bundle, affines={name: Affine(np.zeros(16), np.ones(3), np.zeros(16), np.zeros(16), np.ones(16), 0.0)})


def test_another_tile_grid_is_refused():
    """Analog floating point: weights that all need exponent 0 have one position per output
    instead of several, so fewer column blocks: not the deployment the bundle planned."""
    bundle = _convert(MODELS / "cnn_bn.onnx", afp_exponents=3, crossbar=(8, 8))
    fc = bundle.layers[-1]
    assert fc["tiles"]["positions"] > fc["N"]
    flat = np.where(np.arange(fc["K"])[:, None] % 2, 1.0, -1.0) * np.ones((1, fc["N"]))
    with pytest.raises(ModelError, match=f"{fc['name']}.*n_col_blocks"):
        remap(bundle, {fc["name"]: flat})


def test_placement_without_a_recorded_target_is_refused():
    bundle = convert(MODELS / "cnn_bn.onnx", rearrange="ir-drop", hardware=preset("pcm"))
    with pytest.raises(XbarError, match="records no hardware target"):
        remap(bundle, _own_weights(bundle))


@pytest.mark.parametrize("cell,kw", [("GRU", dict(direction="bidirectional", states=True)),
                                     ("LSTM", dict(peepholes=True, seq_lens=True))])
def test_recurrent_layers(cell, kw):
    from tests.test_recurrent import _onnx_rnn, _run

    model, feeds = _onnx_rnn(cell, **kw)
    modified = onnx.ModelProto()
    modified.CopyFrom(model)
    rng = np.random.default_rng(5)
    for init in modified.graph.initializer:
        if init.name in ("W", "R"):
            w = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array((w + 0.1 * rng.standard_normal(w.shape)).astype(w.dtype), init.name))
    bundle = _convert(model, crossbar=(4, 6))
    want = _convert(modified, crossbar=(4, 6))
    got = remap(bundle, _weights_of(modified))
    _assert_same_arrays(got, want, cell)
    ref = ort.InferenceSession(modified.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    for g, r in zip(_run(got, feeds).values(), ref):  # the source model's layout
        assert close(g, r)
