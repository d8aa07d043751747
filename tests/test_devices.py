"""Device statistics against their closed forms.

Statistical tolerances: N = 200 000 samples per check; every bound is 4 standard errors of
the estimator (two-sided false-alarm probability ~6e-5 per check for a correct model; the
seeds are fixed, so the tests are deterministic). Standard errors used:
  sample mean      sd / sqrt(N)
  sample std       sd * sqrt((kurtosis - 1) / (4 N))   (= sd / sqrt(2N) ≈ 0.16 % for a normal)
  sample median    sqrt(pi/2) * sd / sqrt(N)            (normal distribution)
  a fraction p     sqrt(p (1 - p) / N)
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from xbar.hardware import DeviceSpec, FaultSpec, preset
from xbar.runtime import devices as dev

N = 200_000
K = 4.0  # bound in standard errors
US = 1e-6
PCM = preset("pcm").device
RRAM = preset("rram").device


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def assert_mean(x: np.ndarray, expected: float, sd: float) -> None:
    se = sd / math.sqrt(x.size)
    assert abs(x.mean() - expected) <= K * se, (x.mean(), expected, se)


def assert_std(x: np.ndarray, expected: float, kurtosis: float = 3.0) -> None:
    se = expected * math.sqrt((kurtosis - 1) / (4 * x.size))
    assert abs(x.std(ddof=1) - expected) <= K * se, (x.std(ddof=1), expected, se)


def assert_fraction(mask: np.ndarray, p: float) -> None:
    se = math.sqrt(p * (1 - p) / mask.size)
    assert abs(mask.mean() - p) <= K * se + 1e-12, (mask.mean(), p, se)


def folded_normal_mean(mu: float, sigma: float) -> float:
    return sigma * math.sqrt(2 / math.pi) * math.exp(-mu * mu / (2 * sigma * sigma)) + mu * (1 - 2 * norm.cdf(-mu / sigma))


# ----------------------------------------------------------------------------- PCM programming


def sigma_p_us(g: float) -> float:
    """The aihwkit polynomial by hand, uS at g_max = 25 uS."""
    return max(-1.1731 * g * g + 1.9650 * g + 0.26348, 0.0)


def test_pcm_prog_sigma_closed_form():
    g = np.array([0.0, 0.25, 0.5, 1.0])
    expected = np.array([sigma_p_us(v) for v in g]) * US
    np.testing.assert_allclose(dev.pcm_prog_sigma(g * 25e-6, PCM), expected, rtol=1e-12)
    # sigma scales with g_max / 25 uS at the same normalised g.
    wide = DeviceSpec(model="pcm", g_max=50e-6, prog_noise=True)
    np.testing.assert_allclose(dev.pcm_prog_sigma(g * 50e-6, wide), 2 * expected, rtol=1e-12)
    # max(., 0): the polynomial is negative only beyond g ≈ 1.79 (outside the window).
    assert dev.pcm_prog_sigma(2.0 * 25e-6, PCM) == 0.0


@pytest.mark.parametrize("g", [0.25, 0.5, 1.0])
def test_pcm_programming_moments(g):
    g_t = np.full(N, g * 25e-6)
    g_p = dev.program(g_t, PCM, rng(1))
    sd = sigma_p_us(g) * US
    assert_mean(g_p, g * 25e-6, sd)
    assert_std(g_p, sd)


def test_pcm_programming_scale_and_g_max():
    spec = DeviceSpec(model="pcm", g_max=50e-6, prog_noise=True, prog_noise_scale=0.5)
    g_p = dev.program(np.full(N, 25e-6), spec, rng(2))
    assert_std(g_p, 0.5 * 2 * sigma_p_us(0.5) * US)


def test_pcm_programming_clamps_at_zero_only():
    # aihwkit: g_prog.clamp_(min=0.0). At G_t = 0: G_p = max(sigma xi, 0), a rectified normal.
    sd = sigma_p_us(0.0) * US
    g_p = dev.program(np.zeros(N), PCM, rng(3))
    assert g_p.min() == 0.0
    assert_fraction(g_p == 0.0, 0.5)
    mean = sd / math.sqrt(2 * math.pi)
    var = sd * sd * (0.5 - 1 / (2 * math.pi))
    assert_mean(g_p, mean, math.sqrt(var))
    # No upper clip: targets at g_max exceed it half of the time.
    top = dev.program(np.full(N, 25e-6), PCM, rng(4))
    assert_fraction(top > 25e-6, 0.5)


# ----------------------------------------------------------------------------- PCM drift


def test_pcm_drift_moments_closed_form():
    g = np.array([1.0, 0.1, 0.01, 0.0]) * 25e-6
    mu, sigma = dev.pcm_drift_moments(g, PCM)
    ln = np.log(np.array([1.0, 0.1, 0.01, 1e-7]))
    np.testing.assert_allclose(mu, np.clip(-0.0155 * ln + 0.0244, 0.049, 0.1), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.clip(-0.0125 * ln - 0.0059, 0.008, 0.045), rtol=1e-12)
    assert mu[0] == 0.049 and sigma[0] == 0.008  # both clipped at g = 1
    assert mu[3] == 0.1 and sigma[3] == 0.045  # g -> 0 is clipped before ln, no -inf/nan


@pytest.mark.parametrize("g", [1.0, 0.1, 0.01])
def test_pcm_drift_exponent_folded_normal(g):
    g_t = np.full(N, g * 25e-6)
    nu = dev.drift_exponents(g_t, PCM, rng(5))
    assert nu.min() >= 0
    mu, sigma = (float(v[0]) for v in dev.pcm_drift_moments(g_t[:1], PCM))
    m = folded_normal_mean(mu, sigma)
    raw2 = mu * mu + sigma * sigma  # E[nu^2] is unchanged by folding
    sd = math.sqrt(raw2 - m * m)
    assert_mean(nu, m, sd)
    # Second raw moment: Var(nu^2) = E X^4 - (E X^2)^2 = 4 mu^2 sigma^2 + 2 sigma^4 (exact).
    assert_mean(nu**2, raw2, math.sqrt(4 * mu * mu * sigma * sigma + 2 * sigma**4))
    kurt = float(np.mean((nu - nu.mean()) ** 4) / nu.var() ** 2)
    assert_std(nu, sd, kurtosis=kurt)


def test_drift_scale_multiplies_nu():
    base = dev.drift_exponents(np.full(1000, 5e-6), PCM, rng(6))
    half = dev.drift_exponents(np.full(1000, 5e-6), DeviceSpec(model="pcm", drift=True, drift_scale=0.5), rng(6))
    np.testing.assert_allclose(half, 0.5 * base, rtol=1e-12)


def test_drift_power_law_exact():
    g = np.array([1e-6, 10e-6, 25e-6])
    nu = np.array([0.0, 0.05, 0.1])
    np.testing.assert_array_equal(dev.drift(g, nu, 0.0, 20.0), g)
    for t in (1.0, 3600.0, 365.25 * 86400):
        np.testing.assert_allclose(dev.drift(g, nu, t, 20.0), g * ((t + 20.0) / 20.0) ** -nu, rtol=1e-12)
    with pytest.raises(ValueError):
        dev.drift(g, nu, -1.0)
    with pytest.raises(ValueError):
        dev.drift(g, nu, 1.0, t0=0.0)


@pytest.mark.parametrize("t", [3600.0, 86400.0, 365.25 * 86400])
def test_pcm_drift_median_follows_power_law(t):
    # g = 1: nu ~ N(0.049, 0.008) folded at mu/sigma ≈ 6 (P(fold) ≈ 5e-10), so the median of
    # G(t) = G_p s^-nu (monotone in nu) is G_p s^-mu, s = (t + t0)/t0.
    g_p = 25e-6
    nu = dev.drift_exponents(np.full(N, g_p), PCM, rng(7))
    g_t = dev.drift(np.full(N, g_p), nu, t, PCM.t0)
    s = (t + PCM.t0) / PCM.t0
    expected = g_p * s**-0.049
    se = math.sqrt(math.pi / 2) * 0.008 / math.sqrt(N) * expected * math.log(s)
    assert abs(np.median(g_t) - expected) <= K * se
    # Any g: E[ln(G(t)/G_p)] = -E[nu] ln s with the folded-normal mean (g = 0.01 folds).
    nu2 = dev.drift_exponents(np.full(N, 0.25e-6), PCM, rng(8))
    log_ratio = np.log(dev.drift(np.full(N, 0.25e-6), nu2, t, PCM.t0) / 0.25e-6)
    mu = -0.0155 * math.log(0.01) + 0.0244  # 0.0958, inside [0.049, 0.1]; sigma clipped to 0.045
    m = folded_normal_mean(mu, 0.045)
    assert_mean(log_ratio, -m * math.log(s), math.sqrt(mu**2 + 0.045**2 - m * m) * math.log(s))


# ----------------------------------------------------------------------------- PCM read noise


def test_pcm_read_sigma_closed_form():
    t = 86400.0
    factor = math.sqrt(math.log((t + 20.0 + 250e-9) / (2 * 250e-9)))
    assert dev.pcm_read_time_factor(t, PCM) == pytest.approx(factor, rel=1e-12)
    g = np.array([1.0, 0.5, 0.1, 1e-3, 0.0]) * 25e-6
    q = np.minimum(0.0088 / np.maximum((g / 25e-6) ** 0.65, 1e-3), 0.2)
    np.testing.assert_allclose(dev.pcm_q_s(g, PCM), q, rtol=1e-12)
    assert q[3] == 0.2 and q[4] == 0.2  # Q_s capped as g -> 0
    np.testing.assert_allclose(dev.read_sigma(g, t, PCM), g * q * factor, rtol=1e-12)
    assert dev.read_sigma(np.zeros(3), t, PCM).tolist() == [0.0, 0.0, 0.0]
    # Q_s from the programmed conductance, scaled by the drifted one (aihwkit).
    np.testing.assert_allclose(
        dev.read_sigma(np.array([10e-6]), t, PCM, g_ref=np.array([20e-6])),
        10e-6 * 0.0088 / 0.8**0.65 * factor, rtol=1e-12,
    )


def test_pcm_read_log_argument_clipped_at_one():
    # With t0 + t < t_read the aihwkit log would be negative (sqrt -> nan); we clip it at 1.
    spec = DeviceSpec(model="pcm", read_noise=True, t0=1e-9, t_read=250e-9)
    assert dev.pcm_read_time_factor(0.0, spec) == 0.0
    assert np.all(dev.read_sigma(np.full(3, 10e-6), 0.0, spec) == 0.0)
    assert np.all(np.isfinite(dev.read(np.full(3, 10e-6), 0.0, spec, rng(0))))


@pytest.mark.parametrize("g, t", [(0.5, 86400.0), (1.0, 1.0), (0.1, 365.25 * 86400)])
def test_pcm_read_noise_std(g, t):
    g_now = np.full(N, g * 25e-6)
    out = dev.read(g_now, t, PCM, rng(9))
    sd = g * 25e-6 * min(0.0088 / g**0.65, 0.2) * math.sqrt(math.log((t + 20 + 250e-9) / 500e-9))
    assert sd < 0.25 * g * 25e-6  # the clamp at 0 is > 4 sd away
    assert_mean(out, g * 25e-6, sd)
    assert_std(out, sd)


# ----------------------------------------------------------------------------- RRAM


def test_rram_programming_and_window_clip():
    g_p = dev.program(np.full(N, 25e-6), RRAM, rng(10))
    assert_mean(g_p, 25e-6, 0.05 * 25e-6)
    assert_std(g_p, 0.05 * 25e-6)
    top = dev.program(np.full(N, RRAM.g_max), RRAM, rng(11))
    assert top.max() == RRAM.g_max
    assert_fraction(top == RRAM.g_max, 0.5)
    bottom = dev.program(np.full(N, RRAM.g_min), RRAM, rng(12))
    assert bottom.min() == RRAM.g_min


def test_rram_read_and_relaxation():
    out = dev.read(np.full(N, 40e-6), 86400.0, RRAM, rng(13))
    assert_std(out, 0.01 * 40e-6)
    np.testing.assert_allclose(dev.read_sigma(np.array([40e-6]), 1.0, RRAM), [0.01 * 40e-6])
    assert dev.read_sigma(np.array([40e-6]), 1e7, RRAM)[0] == dev.read_sigma(np.array([40e-6]), 1.0, RRAM)[0]
    nu = dev.drift_exponents(np.full(N, 40e-6), RRAM, rng(14))
    m = folded_normal_mean(0.005, 0.002)
    assert_mean(nu, m, math.sqrt(0.005**2 + 0.002**2 - m * m))


# ----------------------------------------------------------------------------- switches, ideal


def test_off_and_ideal_are_identity():
    g = np.linspace(0, 25e-6, 11)
    for spec in (DeviceSpec(), preset("pcm").override({"device.prog_noise": False, "device.drift": False,
                                                       "device.read_noise": False}).device):
        r = rng(0)
        np.testing.assert_array_equal(dev.program(g, spec, r), g)
        np.testing.assert_array_equal(dev.drift_exponents(g, spec, r), np.zeros_like(g))
        np.testing.assert_array_equal(dev.read(g, 3600.0, spec, r), g)
        np.testing.assert_array_equal(dev.read_sigma(g, 3600.0, spec), np.zeros_like(g))
        # Nothing was drawn from the generator.
        assert r.random() == rng(0).random()


# ----------------------------------------------------------------------------- faults


def test_fault_fractions_binomial():
    m0, m1 = dev.faults((400, 500), 0.01, 0.05, rng(15))
    assert m0.shape == (400, 500) and m0.dtype == bool
    assert not np.any(m0 & m1)  # disjoint
    assert_fraction(m0, 0.01)
    assert_fraction(m1, 0.05)
    a, b = dev.faults(1000, 0.3, 0.7, rng(16))
    assert np.all(a | b)
    a, b = dev.faults(1000, 0.0, 0.0, rng(16))
    assert not a.any() and not b.any()
    with pytest.raises(ValueError):
        dev.faults(10, 0.6, 0.5, rng(0))


def test_apply_faults():
    g = np.full(4, 10e-6)
    out = dev.apply_faults(g, np.array([1, 0, 0, 0], bool), np.array([0, 1, 0, 0], bool), 1e-6, 25e-6)
    np.testing.assert_array_equal(out, [1e-6, 25e-6, 10e-6, 10e-6])
    assert g[0] == 10e-6  # input untouched


# ----------------------------------------------------------------------------- determinism


def test_same_seed_same_arrays():
    g = rng(99).uniform(0, 25e-6, size=(64, 32))
    fspec = FaultSpec(p_stuck_at_gmin=0.02, p_stuck_at_gmax=0.02)
    a = dev.program_devices(g, PCM, fspec, rng(42))
    b = dev.program_devices(g, PCM, fspec, rng(42))
    for name in ("g_prog", "nu", "stuck_min", "stuck_max"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    np.testing.assert_array_equal(a.at(86400.0, PCM, rng(7)), b.at(86400.0, PCM, rng(7)))
    c = dev.program_devices(g, PCM, fspec, rng(43))
    assert not np.array_equal(a.g_prog, c.g_prog)
    for fn in (dev.program, dev.drift_exponents):
        np.testing.assert_array_equal(fn(g, RRAM, rng(5)), fn(g, RRAM, rng(5)))


def test_program_devices_streams_independent_and_faults_win():
    g = rng(1).uniform(0, 25e-6, size=(50, 40))
    fspec = FaultSpec(p_stuck_at_gmin=0.05, p_stuck_at_gmax=0.05)
    full = dev.program_devices(g, PCM, fspec, rng(3))
    no_prog = dev.program_devices(g, DeviceSpec(model="pcm", drift=True, read_noise=True), fspec, rng(3))
    # Switching programming noise off leaves the drift exponents and faults unchanged.
    np.testing.assert_array_equal(no_prog.g_prog, g)
    np.testing.assert_array_equal(no_prog.nu, full.nu)
    np.testing.assert_array_equal(no_prog.stuck_min, full.stuck_min)
    np.testing.assert_array_equal(full.at(0.0, DeviceSpec(model="pcm"), None), np.where(
        full.stuck_min, 0.0, np.where(full.stuck_max, 25e-6, full.g_prog)))
    later = full.at(365.25 * 86400, PCM, rng(4))
    assert np.all(later[full.stuck_min] == PCM.g_min) and np.all(later[full.stuck_max] == PCM.g_max)
    ok = ~(full.stuck_min | full.stuck_max)
    assert np.median(later[ok] / np.maximum(full.g_prog[ok], 1e-9)) < 1.0  # drifted down
    with pytest.raises(ValueError, match="Generator"):
        full.at(1.0, PCM, None)
