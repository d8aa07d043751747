"""Batch-norm / affine calibration on a chip instance: what it must recover, and its contract."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from xbar.cli import cli
from xbar.converter import convert
from xbar.hardware import ablate, preset
from xbar.runtime import Runtime
from xbar.runtime.calibrate import calibrate, fold_bundle
from xbar.runtime.evaluate import accuracy


@pytest.fixture(scope="module")
def calib(models_dir):
    d = np.load(models_dir / "digits_calib.npz")
    return d["x"], d["y"]


def _uniform_drift():
    """Every device drifts with the same exponent: a pure per-column gain error."""
    base = ablate(preset("pcm"), only=["drift"])
    return base.override({
        "device.pcm_nu_mu_min": 0.06, "device.pcm_nu_mu_max": 0.06,
        "device.pcm_nu_sigma_min": 0.0, "device.pcm_nu_sigma_max": 0.0,
        "t_inference": 86400.0, "drift_compensation": "off",
    })


@pytest.mark.parametrize("model", ["resnet_bn", "resnet_folded"])
@pytest.mark.parametrize("method", ["affine", "stats"])
def test_known_gain_error_is_recovered(models_dir, calib, test_data, model, method):
    x_cal, _ = calib
    x, _ = test_data
    b = convert(models_dir / f"{model}.onnx")
    spec = _uniform_drift()
    ideal = Runtime(b)(x)
    broken = Runtime(b, spec, 0)(x)
    # The drift factor (86420/20)^-0.06 ≈ 0.6 compounds through the layers.
    assert np.abs(broken - ideal).max() > 0.1 * np.abs(ideal).max()
    fixed_bundle, rec = calibrate(b, x_cal, spec, 0, method)
    fixed = Runtime(fixed_bundle, spec, 0)(x)
    if method == "affine":
        # Least squares sees an exact linear relation: float32 rounding is all that remains.
        np.testing.assert_allclose(fixed, ideal, atol=2e-4 * np.abs(ideal).max())
        assert rec["agreement_with_ideal_after"] == 1.0
    else:
        # Moment matching uses the calibration set's own statistics, which differ from the
        # training-set statistics BN stored: the gain comes back, a small residual stays.
        assert np.abs(fixed - ideal).mean() < 0.1 * np.abs(broken - ideal).mean()
        assert rec["agreement_with_ideal_after"] > 0.98


def test_calibration_does_not_hurt_and_input_is_untouched(models_dir, calib, tmp_path):
    x_cal, y_cal = calib
    src = tmp_path / "p.xbar"
    runner = CliRunner()
    assert runner.invoke(cli, ["convert", str(models_dir / "resnet_bn.onnx"), "-o", str(src), "--hardware", "pcm",
                               "--set", "circuit.ir_drop=false", "--calib-data", str(models_dir / "digits_calib.npz")]).exit_code == 0
    before_bytes = src.read_bytes()
    out = tmp_path / "c.xbar"
    r = runner.invoke(cli, ["calibrate", str(src), "--data", str(models_dir / "digits_calib.npz"), "--drift", "1d",
                            "--seed", "2", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert src.read_bytes() == before_bytes
    info = json.loads(runner.invoke(cli, ["info", str(out), "--json"]).output)
    rec = info["calibration"][-1]
    assert (rec["method"], rec["samples"], rec["seed"], rec["t_inference"]) == ("affine", 512, 2, 86400.0)
    # Read noise makes two evaluations of one chip differ by a fraction of a percent;
    # 1 % (5 of 512 samples) is the allowance for that noise.
    assert rec["accuracy_after"] >= rec["accuracy_before"] - 0.01
    assert rec["accuracy_after"] > 0.97
    # eval of the calibrated bundle defaults to the recorded chip and time.
    res = json.loads(runner.invoke(cli, ["eval", str(out), "--data", str(models_dir / "digits_test.npz"), "--json"]).output)
    assert res["seeds"] == [2] and res["rows"][0]["t"] == 86400.0
    assert "calibration" in runner.invoke(cli, ["info", str(out)]).output


@pytest.mark.parametrize("quantisers", [False, True])
def test_folded_equals_unfolded(models_dir, calib, test_data, quantisers):
    x_cal, _ = calib
    x, _ = test_data
    b = convert(models_dir / "resnet_bn.onnx")
    effects = ["programming", "drift"] + (["adc", "dac"] if quantisers else [])
    spec = ablate(preset("pcm"), only=effects).override(t_inference=3600.0)
    unfolded, _ = calibrate(b, x_cal, spec, 1, "stats", fold=False)
    folded = fold_bundle(unfolded)
    assert all(l["affine"]["source"] == "calibrated" for l in folded.layers)
    assert [l["affine"]["source"] for l in unfolded.layers] == [l["affine"]["source"] for l in b.layers]
    a, c = Runtime(folded, spec, 1)(x), Runtime(unfolded, spec, 1)(x)
    # Same chip, no read noise: folding changes only the float32 rounding of gain and shift.
    if not quantisers:
        np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-5)
    else:
        # With 8-bit ADCs that rounding occasionally tips one code (1/127 of full scale),
        # which then moves that sample's logits by up to ~0.1; nearly all elements stay equal.
        assert np.mean(np.abs(a - c) <= 1e-4 * (1 + np.abs(c))) > 0.95
        assert np.abs(a - c).max() < 0.25  # one tipped code in an early layer, amplified
    np.testing.assert_array_equal(a.argmax(1), c.argmax(1))


def test_label_free_methods_need_no_labels(models_dir, calib, tmp_path):
    x_cal, _ = calib
    np.savez(tmp_path / "nolabels.npz", x=x_cal[:64])
    src = tmp_path / "p.xbar"
    runner = CliRunner()
    runner.invoke(cli, ["convert", str(models_dir / "cnn_bn.onnx"), "-o", str(src), "--hardware", "pcm",
                        "--set", "circuit.ir_drop=false"])
    for method in ("stats", "affine"):
        r = runner.invoke(cli, ["calibrate", str(src), "--data", str(tmp_path / "nolabels.npz"), "--method", method,
                                "--drift", "1h", "-o", str(tmp_path / f"{method}.xbar")])
        assert r.exit_code == 0, r.output
        assert "agreement with ideal" in r.output


@pytest.mark.parametrize("content,needles", [
    (lambda x: {"x": x[:5]}, ["5 samples", "at least 16"]),
    (lambda x: {"x": x[:64].reshape(64, -1)}, ["(N, 1, 16, 16)"]),
    (lambda x: {"x": np.where(np.arange(x[:64].size).reshape(x[:64].shape) == 7, np.nan, x[:64])}, ["NaN"]),
])
def test_bad_calibration_data(models_dir, calib, tmp_path, content, needles):
    x_cal, _ = calib
    np.savez(tmp_path / "bad.npz", **content(x_cal))
    src = tmp_path / "p.xbar"
    runner = CliRunner()
    runner.invoke(cli, ["convert", str(models_dir / "cnn_bn.onnx"), "-o", str(src), "--hardware", "pcm"])
    r = runner.invoke(cli, ["calibrate", str(src), "--data", str(tmp_path / "bad.npz"), "--drift", "1d",
                            "-o", str(tmp_path / "o.xbar")])
    assert r.exit_code != 0 and "Traceback" not in r.output
    for needle in needles:
        assert needle in r.output, r.output
    assert not (tmp_path / "o.xbar").exists()


def _affines(bundle):
    """Every analog layer's affine arrays as stored."""
    from xbar.affine import FIELDS

    return {(e["name"], f): bundle.array(e["arrays"][f]) for e in bundle.layers if e["placement"] == "analog"
            for f in FIELDS}


@pytest.mark.parametrize("first", [("stats", True), ("affine", False), ("affine", True)],
                         ids=["stats", "affine-no-fold", "affine"])
def test_calibrating_again_starts_from_the_converted_network(models_dir, calib, first):
    """A second calibration (same chip, time, data) gives what calibrating the converted
    bundle gives, whatever the first did: it started from the first's fit, so `stats` after
    a folded calibration fitted another way, and after `affine --no-fold` applied a gain
    twice. Both records stay, and the converted affines are still what `ideal` runs."""
    from xbar.runtime.ranges import find_ranges
    from xbar.source_affines import source_network

    x_cal, _ = calib
    spec = preset("pcm").override({"t_inference": 3.156e7, "adc.bits": 4, "drift_compensation": "off"})
    b = convert(models_dir / "resnet_bn.onnx", hardware=spec)
    find_ranges(b, x_cal, spec)
    method, fold = first
    once, _ = calibrate(b, x_cal, spec, 7, method, fold=fold)
    again, _ = calibrate(once, x_cal, spec, 7, "stats")
    fresh, _ = calibrate(b, x_cal, spec, 7, "stats")
    got, want = _affines(again), _affines(fresh)
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=str(key))
    assert [r["method"] for r in again.manifest["calibration"]] == [method, "stats"]
    for key, value in _affines(source_network(again)).items():
        np.testing.assert_array_equal(value, _affines(b)[key], err_msg=str(key))
