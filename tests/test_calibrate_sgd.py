"""`calibrate --method sgd`: per-output affines trained end to end through the chip in torch."""

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("torch")

from xbar.bundle import load_bundle  # noqa: E402
from xbar.cli import cli  # noqa: E402
from xbar.converter import convert  # noqa: E402
from xbar.errors import ConfigError, DataError  # noqa: E402
from xbar.hardware import ablate, preset  # noqa: E402
from xbar.runtime import Runtime  # noqa: E402
from xbar.runtime.calibrate import calibrate  # noqa: E402
from xbar.training.sgd import SGDOptions  # noqa: E402


@pytest.fixture(scope="module")
def calib(models_dir):
    d = np.load(models_dir / "digits_calib.npz")
    return d["x"], d["y"]


def _uniform_drift():
    """Every device drifts with the same exponent and nothing else is wrong: a pure
    per-column gain error of (86420/20)^-0.06 ≈ 0.6 per layer, compounding through them."""
    base = ablate(preset("pcm"), only=["drift"])
    return base.override({
        "device.pcm_nu_mu_min": 0.06, "device.pcm_nu_mu_max": 0.06,
        "device.pcm_nu_sigma_min": 0.0, "device.pcm_nu_sigma_max": 0.0,
        "t_inference": 86400.0, "drift_compensation": "off",
    })


def test_known_gain_error_is_recovered_end_to_end(models_dir, calib, test_data):
    x_cal, _ = calib
    x, _ = test_data
    b = convert(models_dir / "resnet_bn.onnx")
    spec = _uniform_drift()
    ideal = Runtime(b)(x)
    broken = Runtime(b, spec, 0)(x)
    err_before = np.abs(broken - ideal).mean()
    assert err_before > 0.1 * np.abs(ideal).mean()
    opts = SGDOptions(epochs=12, lr=0.02, batch_size=32)
    fixed_bundle, rec = calibrate(b, x_cal[:256], spec, 0, "sgd", sgd=opts)
    fixed = Runtime(fixed_bundle, spec, 0)(x)
    # Gradient descent approaches the exact per-column correction (the affine method finds
    # it in closed form to float32 rounding); on held-out data the mean error must fall by
    # more than 10x and the argmax agree with ideal hardware.
    assert np.abs(fixed - ideal).mean() < 0.1 * err_before
    assert (fixed.argmax(1) == ideal.argmax(1)).mean() > 0.99
    losses = rec["sgd"]["loss_per_epoch"]
    assert len(losses) == 12 and losses[-1] < 0.1 * losses[0]
    assert rec["method"] == "sgd" and rec["sgd"]["steps"] == 12 * 8
    assert rec["agreement_with_ideal_after"] > rec["agreement_with_ideal_before"]


def test_sgd_on_a_noisy_chip_beats_uncalibrated_on_held_out_data(models_dir, calib, test_data):
    """Full pcm at one year (fresh read noise at every step): trained on the calibration
    split, judged on the test split against ideal hardware."""
    x_cal, y_cal = calib
    x, y = test_data
    b = convert(models_dir / "resnet_bn.onnx", hardware=preset("pcm"))
    spec = preset("pcm").override(t_inference=3.15e7)
    ideal = Runtime(b)(x)
    before = Runtime(b, spec, 0)(x)
    out, rec = calibrate(b, x_cal, spec, 0, "sgd", y=y_cal, sgd=SGDOptions(epochs=4))
    after = Runtime(out, spec, 0)(x)
    rel = lambda a: float(np.mean((a - ideal) ** 2) / np.mean(ideal ** 2))  # noqa: E731
    assert rel(after) < 0.7 * rel(before)
    assert (after.argmax(1) == y).mean() >= (before.argmax(1) == y).mean()
    # Folded, recorded like the other methods.
    assert all(e["affine"]["source"] == "calibrated" for e in out.layers if e["placement"] == "analog")
    assert out.manifest["calibration"][-1]["sgd"]["loss"] == "distill"


def test_sgd_is_deterministic_per_seed(models_dir, calib):
    x_cal, _ = calib
    b = convert(models_dir / "cnn_bn.onnx", hardware=preset("pcm"))
    spec = preset("pcm").override(t_inference=86400.0)
    opts = SGDOptions(epochs=1, batch_size=32)
    a, _ = calibrate(b, x_cal[:64], spec, 3, "sgd", sgd=opts)
    c, _ = calibrate(b, x_cal[:64], spec, 3, "sgd", sgd=opts)
    for e in a.layers:
        for key in e["arrays"].values():
            assert np.array_equal(a.array(key), c.array(key)), key


def test_cross_entropy_needs_labels_and_options_need_sgd(models_dir, calib):
    x_cal, _ = calib
    b = convert(models_dir / "cnn_bn.onnx", hardware=preset("pcm"))
    spec = preset("pcm")
    with pytest.raises(DataError, match="labels"):
        calibrate(b, x_cal[:64], spec, 0, "sgd", sgd=SGDOptions(loss="ce"))
    with pytest.raises(ConfigError, match="sgd only"):
        calibrate(b, x_cal[:64], spec, 0, "affine", sgd=SGDOptions())
    with pytest.raises(ConfigError, match="--no-fold"):
        calibrate(b, x_cal[:64], spec, 0, "sgd", fold=False)


def test_cli_sgd(models_dir, tmp_path):
    runner = CliRunner()
    src = tmp_path / "c.xbar"
    r = runner.invoke(cli, ["convert", str(models_dir / "cnn_bn.onnx"), "-o", str(src), "--hardware", "pcm"])
    assert r.exit_code == 0, r.output
    data = tmp_path / "small.npz"
    d = np.load(models_dir / "digits_calib.npz")
    np.savez(data, x=d["x"][:64])  # no labels
    out = tmp_path / "c.sgd.xbar"
    r = runner.invoke(cli, ["calibrate", str(src), "--data", str(data), "--drift", "1d", "--method", "sgd",
                            "--epochs", "2", "--lr", "0.005", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "sgd: 2 epochs, 2 steps of 64 samples, lr 0.005, loss distill" in r.output
    rec = load_bundle(out).manifest["calibration"][-1]
    assert rec["sgd"]["epochs"] == 2 and rec["sgd"]["lr"] == 0.005
    # Settings of sgd given to a closed-form method: refused, nothing written.
    bad = tmp_path / "bad.xbar"
    r = runner.invoke(cli, ["calibrate", str(src), "--data", str(data), "--drift", "1d", "--method", "affine",
                            "--epochs", "3", "-o", str(bad)])
    assert r.exit_code == 2 and "--epochs" in r.output and not bad.exists()
    r = runner.invoke(cli, ["calibrate", str(src), "--data", str(data), "--drift", "1d", "--method", "sgd",
                            "--loss", "ce", "-o", str(bad)])
    assert r.exit_code == 1 and "labels" in r.output and not bad.exists()
    assert "Traceback" not in r.output
