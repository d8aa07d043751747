"""Per-layer diagnostics (xbar.runtime.diagnose): the affine re-fit against an independent
least-squares solve, and the light per-layer SNR the sweep uses against `diagnose`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from xbar.converter import convert
from xbar.data import load_dataset
from xbar.hardware import preset
from xbar.runtime import Runtime
from xbar.runtime.diagnose import affine_residual, diagnose, layer_snr

MODELS = Path(__file__).resolve().parent.parent / "models"


def test_affine_residual_is_the_least_squares_fit_per_channel():
    rng = np.random.default_rng(0)
    ideal = rng.standard_normal((200, 5))
    y = ideal * rng.uniform(0.5, 2, 5) + rng.standard_normal(5) + 0.1 * rng.standard_normal((200, 5))
    y[:, 3] = 7.0  # a constant output: no scale to fit, only the shift
    got = affine_residual(y, ideal)
    for j in range(5):
        a = np.column_stack([y[:, j], np.ones(200)])
        coef = np.linalg.lstsq(a, ideal[:, j], rcond=None)[0]
        if j == 3:  # rank-deficient: lstsq's minimum-norm answer leaves the same residual
            np.testing.assert_allclose(got[:, j], ideal[:, j].mean() - ideal[:, j], atol=1e-12)
            continue
        # float64 normal equations against LAPACK's QR: equal to ~1e-12 relative on 200 samples
        np.testing.assert_allclose(got[:, j], a @ coef - ideal[:, j], atol=1e-10)
    # An output that is an exact affine image of the ideal one leaves nothing.
    exact = 3 * ideal - 2
    assert np.abs(affine_residual(exact, ideal)).max() < 1e-12


@pytest.fixture(scope="module")
def chip():
    spec = preset("pcm").override(t_inference=86400.0)
    bundle = convert(str(MODELS / "cnn_bn.onnx"), crossbar=(64, 64), hardware=spec)
    x = load_dataset(MODELS / "digits_test.npz", bundle.graph["inputs"][0]).x[:32]
    return bundle, spec, x


def test_layer_snr_matches_diagnose_on_the_same_chip(chip):
    bundle, spec, x = chip
    light = layer_snr(Runtime(bundle, spec, seed=3), x)
    full = {r["layer"]: r for r in diagnose(bundle, spec, x, seed=3)}
    assert [r["layer"] for r in light] == [l["name"] for l in bundle.layers if l["placement"] == "analog"]
    for r in light:
        # One fresh runtime of the same seed on the same inputs: the same draws, bit for bit.
        for k in ("snr_db", "snr_after_affine_db", "affine_share"):
            assert r[k] == full[r["layer"]][k]
        # The fit includes a = 1, b = 0, so it never leaves more error than there was.
        assert r["snr_after_affine_db"] >= r["snr_db"] - 1e-9
        assert 0 <= r["affine_share"] <= 1


def test_layer_snr_leaves_the_runtime_as_it_was(chip):
    bundle, spec, x = chip
    rt = Runtime(bundle, spec, seed=1)
    layer_snr(rt, x[:4])
    assert all(layer.probe is None for layer in rt.layers)


def test_per_layer_snr_sees_what_calibration_did(chip):
    """The SNR after a layer's own affine: the plain SNR where the bundle was never
    calibrated; after an affine calibration on this chip and time, higher on average, and
    never above the best per-channel re-fit on the same inputs (which is fitted on them).
    Not higher in every layer: calibration fits each layer to the ideal network's activations,
    so it also absorbs the errors of the layers before, which judged alone looks worse.
    Before, --per-layer compared the product before any affine, so calibration changed
    nothing in it."""
    from xbar.runtime.calibrate import calibrate

    bundle, spec, x = chip
    for r in layer_snr(Runtime(bundle, spec, seed=3), x):
        assert abs(r["snr_own_affine_db"] - r["snr_db"]) < 1e-4  # (y·g + s − s)/g: rounding only
    cal, _ = calibrate(bundle, load_dataset(MODELS / "digits_calib.npz", bundle.graph["inputs"][0]).x, spec,
                       seed=3, method="affine")
    rows = layer_snr(Runtime(cal, spec, seed=3), x)
    gain = [r["snr_own_affine_db"] - r["snr_db"] for r in rows]
    assert np.mean(gain) > 0.2 and max(gain) > 1.0, gain
    assert all(r["snr_own_affine_db"] <= r["snr_after_affine_db"] + 1e-6 for r in rows), rows
