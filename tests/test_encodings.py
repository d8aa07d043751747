"""Analog floating point and bit slicing: the exponent rule, the digits, and the chip path."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from xbar.cli import cli
from xbar.config import MappingConfig
from xbar.converter import convert
from xbar.converter.encodings import best_exponent, encode, exponents, position_variance
from xbar.hardware import preset
from xbar.runtime import devices

rng = np.random.default_rng(5)


def _fold(enc, n):
    out = np.zeros((enc.v.shape[0], n))
    for p in range(len(enc.output)):
        out[:, enc.output[p]] += enc.gain[p] * enc.v[:, p]
    return out


@pytest.mark.parametrize("e,k", [(2, 1), (2, 2), (3, 2), (4, 3)])
def test_afp_on_exact_hardware_takes_the_smallest_gain_that_holds_the_weight(e, k):
    u = rng.uniform(-1, 1, size=(60, 7)) ** 3
    u[0, :] = 0.0
    cfg = MappingConfig(afp_exponents=e, afp_step=k)
    got = exponents(u, cfg, None, 0.0)
    with np.errstate(divide="ignore"):
        want = np.minimum(e - 1, np.floor(-np.log2(np.abs(u)) / k)).astype(int)
    want[u == 0] = e - 1
    np.testing.assert_array_equal(got, want)
    enc = encode(u, np.ones(u.shape, bool), cfg)
    np.testing.assert_allclose(_fold(enc, 7), u, rtol=0, atol=1e-12)
    assert np.abs(enc.v).max() <= 1.0
    # Each weight sits in exactly one position of its output.
    assert np.all((enc.v != 0).sum(axis=1) == (u != 0).sum(axis=1))


def test_afp_exponent_minimises_the_sampled_error_on_pcm():
    """The closed-form rule against the runtime's sampler: for weights where the two exponents'
    costs differ by more than 10 %, the chosen one has the smaller Monte-Carlo error variance
    (programming + read noise, both positions of the output sampled, 40 000 chips: the
    variance estimates are within ~1.5 % of the truth)."""
    spec = preset("pcm").override(t_inference=86400.0)
    dev = spec.device
    cfg = MappingConfig(afp_exponents=2, afp_step=2)
    dg = dev.g_max - dev.g_min
    draws = 40000
    checked = 0
    for u in (0.02, 0.05, 0.1, 0.15, 0.2, 0.24):
        chosen = exponents(np.array([[u]]), cfg, dev, spec.t_inference)[0, 0]
        mc = {}
        for e in (0, 1):
            gains = [1.0, 0.25]
            err = np.zeros(draws)
            for pos, g in enumerate(gains):
                m = u / g if pos == e else 0.0
                pair = np.array([dev.g_min + dg * max(m, 0), dev.g_min + dg * max(-m, 0)])
                gp = devices.program(np.broadcast_to(pair, (draws, 2)), dev, np.random.default_rng([7, e, pos]))
                gr = devices.read(gp, spec.t_inference, dev, np.random.default_rng([8, e, pos]), g_ref=gp)
                err += g * ((gr[:, 0] - gr[:, 1]) / dg - m)
            mc[e] = err.var()
        costs = [0.25 ** (2 * e) * (position_variance(np.array([u / 0.25 ** e]), "differential", dev, spec.t_inference)[0]
                                     - position_variance(np.zeros(1), "differential", dev, spec.t_inference)[0])
                 for e in (0, 1)]
        if abs(costs[0] - costs[1]) > 0.1 * max(costs):
            assert mc[chosen] <= mc[1 - chosen], (u, chosen, mc)
            checked += 1
    assert checked >= 3


def test_afp_quantises_mantissas_per_exponent():
    u = rng.uniform(-1, 1, size=(200, 3)) ** 3
    cfg = MappingConfig(afp_exponents=3, afp_step=2, weight_bits=4)
    enc = encode(u, np.ones(u.shape, bool), cfg)
    levels = 7
    np.testing.assert_allclose(enc.v * levels, np.round(enc.v * levels), atol=1e-9)
    e = exponents(u, cfg, None, 0.0)
    # Error of each weight: half a step of its own exponent's mantissa.
    assert np.all(np.abs(_fold(enc, 3) - u) <= 0.5 / levels * 4.0 ** -e + 1e-12)


def test_unused_exponents_get_no_position():
    u = np.array([[1.0, 0.0, 0.01], [0.0, 0.0, 0.02]])
    enc = encode(u, np.ones(u.shape, bool), MappingConfig(afp_exponents=3, afp_step=2))
    # Column 0 uses exponent 0 only (its zero asks for nothing), column 1 (all zero) keeps one
    # position, column 2 uses exponent 2 only.
    assert list(enc.output) == [0, 1, 2] and list(enc.gain) == [1.0, 1.0, 2.0 ** -4]


@pytest.mark.parametrize("s,b", [(2, 1), (2, 4), (3, 2), (4, 4)])
def test_bit_slices_hold_the_digits_of_the_quantised_magnitude(s, b):
    u = rng.uniform(-1, 1, size=(50, 4))
    enc = encode(u, np.ones(u.shape, bool), MappingConfig(bit_slices=s, bits_per_cell=b))
    levels = 2 ** (s * b) - 1
    want = np.sign(u) * np.rint(np.abs(u) * levels) / levels
    # Gains are float32 (relative rounding 6e-8), far below the 1/levels step being checked.
    np.testing.assert_allclose(_fold(enc, 4), want, rtol=0, atol=1e-7)
    digits = np.abs(enc.v) * (2 ** b - 1)
    np.testing.assert_allclose(digits, np.round(digits), atol=1e-9)
    assert len(enc.output) == 4 * s and np.all(np.bincount(enc.output) == s)


def test_chip_ranges_and_calibration_cover_every_position(models_dir, test_data):
    """ADC full scales exist per physical position; calibrate runs and helps on each encoding."""
    from xbar.runtime.calibrate import calibrate
    from xbar.runtime.ranges import find_ranges

    x, y = test_data
    spec = preset("pcm").override(**{"circuit.ir_drop": False, "t_inference": 86400.0})
    for options in (dict(afp_exponents=2), dict(bit_slices=2, bits_per_cell=4)):
        b = convert(models_dir / "resnet_bn.onnx", hardware=spec, **options)
        find_ranges(b, x[:128], spec)
        for layer in b.layers:
            fs = b.array(layer["ranges"]["adc"])
            t = layer["tiles"]
            assert fs.shape == (t["n_row_blocks"], t["n_col_blocks"] * t["weight_cols_per_tile"])
            assert np.all(fs[:, :t["positions"]].max(axis=0) > 0)  # every position read out
        out, rec = calibrate(b, x[:256], spec, seed=2, method="affine", y=y[:256])
        assert rec["agreement_with_ideal_after"] > rec["agreement_with_ideal_before"]


def test_info_counts_columns_and_conversions(models_dir, tmp_path):
    out = tmp_path / "a.xbar"
    r = CliRunner().invoke(cli, ["convert", str(models_dir / "resnet_bn.onnx"), "-o", str(out),
                                 "--afp-exponents", "2", "--hardware", "pcm"])
    assert r.exit_code == 0, r.output
    info = json.loads(CliRunner().invoke(cli, ["info", str(out), "--json"]).output)
    fc = info["layers"][-1]["tiles"]
    assert fc["physical_columns"] == 2 * fc["positions"] and fc["vectors_per_sample"] == 1
    stem = info["layers"][0]
    assert stem["tiles"]["vectors_per_sample"] == 16 * 16 and stem["tiles"]["positions"] > stem["N"]
    assert info["summary"]["adc_per_sample"] == sum(l["tiles"]["adc_per_vector"] * l["tiles"]["vectors_per_sample"]
                                                    for l in info["layers"])
    text = CliRunner().invoke(cli, ["info", str(out)]).output
    assert "analog floating point (2 exponents" in text and "ADC conversions per sample" in text


@pytest.mark.parametrize("args,needles", [
    (("--afp-exponents", "2", "--bit-slices", "2", "--bits-per-cell", "2"), ["cannot combine"]),
    (("--bit-slices", "2", "--bits-per-cell", "4", "--weight-bits", "8"), ["--weight-bits", "bit slicing"]),
    (("--bit-slices", "3"), ["--bits-per-cell"]),
    (("--bit-slices", "3", "--bits-per-cell", "6"), ["S·b <= 16"]),
    (("--afp-exponents", "9"), ["--afp-exponents"]),
    (("--afp-exponents", "4", "--afp-step", "9"), ["--afp-step 9"]),
    (("--afp-step", "3"), ["--afp-exponents 2 or more"]),  # was ignored and written to the manifest
])
def test_encoding_options_that_cannot_combine(models_dir, tmp_path, args, needles):
    out = tmp_path / "e.xbar"
    r = CliRunner().invoke(cli, ["convert", str(models_dir / "cnn_bn.onnx"), "-o", str(out), *args])
    assert r.exit_code != 0 and "Traceback" not in r.output
    for needle in needles:
        assert needle in r.output, r.output
    assert not out.exists()


def test_replicas_average_independent_copies():
    u = rng.uniform(-1, 1, size=(9, 4))
    enc = encode(u, np.ones(u.shape, bool), MappingConfig(replicas=3))
    np.testing.assert_allclose(_fold(enc, 4), u, atol=1e-7)
    assert np.all(np.bincount(enc.output) == 3) and np.allclose(enc.gain, 1 / 3)


@pytest.mark.parametrize("bits", [None, 6])
@pytest.mark.parametrize("name", ["pcm", "rram"])
def test_exponent_lookup_equals_the_rule_evaluated_directly(name, bits):
    dev = preset(name).device
    cfg = MappingConfig(afp_exponents=3, afp_step=1, weight_bits=bits)
    u = np.concatenate([rng.uniform(-1, 1, 20000) ** 5, [0.0, 0.25, 0.5, 1.0, -0.125]])
    # Below 1e-9 of a column's largest weight the costs tie to rounding and the lookup gives
    # what 0 gets; that region is left out of the comparison.
    u = u[(np.abs(u) >= 1e-9) | (u == 0)]
    np.testing.assert_array_equal(exponents(u, cfg, dev, 3600.0), best_exponent(np.abs(u), cfg, dev, 3600.0))
