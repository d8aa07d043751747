"""device.read_noise_mode: read noise drawn at every read ('fresh') or once per chip and
time ('frozen', aihwkit's convention). Statistics are checked against the closed-form
sigma of devices.read_sigma; tolerances are 5 standard errors of the estimate unless said."""

import json

import numpy as np
import pytest
from scipy import stats

import xbar.runtime.parallel as parallel
from xbar.config import MappingConfig
from xbar.converter import convert
from xbar.converter.mapping import map_weights
from xbar.errors import ConfigError
from xbar.hardware import DeviceSpec, HardwareSpec, ablate, parse_assignment, preset
from xbar.runtime import Runtime, devices
from xbar.runtime.analog import tiled_product
from xbar.runtime.chip import build_tiles, normalised_tiles
from xbar.runtime.irdrop import effective_conductance

FROZEN = {"device.read_noise_mode": "frozen"}
# Window [5, 25] uS: every device is at g >= 0.2 g_max, where the PCM read sigma is at most
# ~0.2 G (Q_s <= 0.0088 / 0.2^0.65, time factor ~4.8 at 1 h), so the clamp at 0 S sits
# beyond 5 sigma and the frozen deviation is Gaussian for all practical purposes.
WINDOW = {"device.g_min": 5e-6, "t_inference": 3600.0}


def _tile(rng, k, n, rows, cols):
    cfg = MappingConfig(rows=rows, cols=cols, encoding="differential")
    return map_weights(rng.normal(size=(k, n)), cfg), cfg


def _in_device_window(conductance, cfg, dev):
    """Mapped conductances (mapping window) → targets in the device's window, siemens."""
    frac = (conductance.astype(np.float64) - cfg.g_min) / (cfg.g_max - cfg.g_min)
    return dev.g_min + frac * (dev.g_max - dev.g_min)


def _pair_sigma(sigma, dg):
    """(1, 1, R, C) device sigmas (S) → (R, C/2) sigma of each pair's normalised weight."""
    s = sigma[0, 0]
    return np.sqrt(s[:, 0::2] ** 2 + s[:, 1::2] ** 2) / dg


# ---------------------------------------------------------------------------- whole chips

@pytest.fixture(scope="module")
def resnet(models_dir):
    # Small tiles keep the IR-drop solves cheap and give layers of 18 tiles two solver
    # chunks, so the thread test below really splits them.
    return convert(models_dir / "resnet_bn.onnx", crossbar=(32, 32))


def test_frozen_chip_reads_the_same_every_time(resnet, test_data):
    x = test_data[0][:32]
    spec = preset("pcm").override(FROZEN, t_inference=86400.0)
    rt = Runtime(resnet, spec, seed=3)
    first = rt(x)
    np.testing.assert_array_equal(rt(x), first)  # no per-read noise left
    assert all(layer.chip.tiles.var is None for layer in rt.layers if layer.chip)
    np.testing.assert_array_equal(Runtime(resnet, spec, seed=3)(x), first)  # same seed, same chip
    assert not np.array_equal(Runtime(resnet, spec, seed=4)(x), first)
    assert not np.array_equal(Runtime(resnet, ablate(spec, without=["read"]), seed=3)(x), first)


def test_fresh_is_the_default_and_draws_at_every_read(resnet, test_data):
    x = test_data[0][:32]
    spec = preset("pcm").override(t_inference=86400.0)
    assert spec.device.read_noise_mode == "fresh"
    a, b = Runtime(resnet, spec, seed=3), Runtime(resnet, spec.override({"device.read_noise_mode": "fresh"}), seed=3)
    first = a(x)
    np.testing.assert_array_equal(b(x), first)
    assert not np.array_equal(a(x), first)  # still a new draw at every read


def test_frozen_chip_does_not_depend_on_the_number_of_threads(resnet, test_data, monkeypatch):
    """The IR-drop solve of the frozen conductances runs on worker threads; the chip must not."""
    x = test_data[0][:32]
    spec = preset("pcm").override(FROZEN, t_inference=86400.0)
    outs = []
    for n in (1, 2, 3):
        monkeypatch.setattr(parallel, "MAX_WORKERS", n)
        rt = Runtime(resnet, spec, seed=5)
        outs.append(([layer.chip.tiles.d for layer in rt.layers if layer.chip], rt(x)))
    for tiles, out in outs[1:]:
        for d, d0 in zip(tiles, outs[0][0]):
            np.testing.assert_array_equal(d, d0)
        np.testing.assert_array_equal(out, outs[0][1])


def test_the_circuit_and_the_probe_see_the_frozen_conductances():
    """IR drop is solved, and the compensation probe read at t, on G(t) plus the frozen
    deviation. Reference: the documented streams (program_devices' three children of the
    chip stream, then a fourth for the frozen read) through devices.read and the solver."""
    m, cfg = _tile(np.random.default_rng(2), 32, 16, rows=32, cols=32)
    spec = ablate(preset("pcm"), without=["dac", "adc"]).override(WINDOW, **{"circuit.r_wire": 5.0})
    frozen = build_tiles(m.conductance, m.tile_used, cfg.to_dict(), spec.override(FROZEN), np.random.default_rng(9))
    fresh = build_tiles(m.conductance, m.tile_used, cfg.to_dict(), spec, np.random.default_rng(9))
    dev, t, c = spec.device, spec.t_inference, spec.circuit
    rng = np.random.default_rng(9)
    state = devices.program_devices(_in_device_window(m.conductance, cfg, dev), dev, spec.faults, rng)
    g_read = devices.read(devices.drift(state.g_prog, state.nu, t, dev.t0), t, dev, rng.spawn(1)[0], g_ref=state.g_prog)
    g_eff = effective_conductance(g_read[0, 0], c.r_wire, c.r_driver, c.r_sense, c.solve_dtype)
    w = (g_eff[:, 0::2] - g_eff[:, 1::2]) / (dev.g_max - dev.g_min)
    probe = effective_conductance(state.g_prog[0, 0], c.r_wire, c.r_driver, c.r_sense, c.solve_dtype).sum() / g_eff.sum()
    # The tile stores float32 weights (|w| <= ~1) and factors (~1.1): rounding <= 1.2e-7.
    np.testing.assert_allclose(frozen.d[0], w, rtol=0, atol=1e-6)
    np.testing.assert_allclose(frozen.comp, probe, rtol=1e-6)
    assert not np.array_equal(frozen.comp, fresh.comp)  # fresh noise never reaches the probe


# ---------------------------------------------------------------------------- statistics

def test_frozen_deviation_is_the_closed_form_gaussian_per_pair():
    """Frozen minus read-noise-off effective weights, one chip, are N(0, sigma+^2 + sigma-^2)/dG^2
    per differential pair, sigma from devices.read_sigma at the drifted conductances.
    Programming noise and drift stay on: had the frozen draw shifted their streams, the
    difference would also carry programming noise of similar size and fail the variance."""
    m, cfg = _tile(np.random.default_rng(0), 256, 64, rows=128, cols=128)
    spec = ablate(preset("pcm"), without=["ir-drop", "dac", "adc"]).override(WINDOW, drift_compensation="off")
    frozen = build_tiles(m.conductance, m.tile_used, cfg.to_dict(), spec.override(FROZEN), np.random.default_rng(9))
    off = build_tiles(m.conductance, m.tile_used, cfg.to_dict(), ablate(spec, without=["read"]), np.random.default_rng(9))
    assert frozen.var is None and frozen.ref_var is None
    # Reference conductances: the documented streams of program_devices for the same seed.
    dev, t = spec.device, spec.t_inference
    g_t = _in_device_window(m.conductance, cfg, dev)
    state = devices.program_devices(g_t, dev, spec.faults, np.random.default_rng(9))
    g_now = devices.drift(state.g_prog, state.nu, t, dev.t0)
    sigma = devices.read_sigma(g_now, t, dev, g_ref=state.g_prog)
    assert (g_now / sigma).min() > 5  # the clamp at 0 is beyond 5 sigma for every device
    dg = dev.g_max - dev.g_min
    s = _pair_sigma(sigma[:1, :1], dg), _pair_sigma(sigma[1:, :1], dg)
    z = ((frozen.d - off.d) / np.stack(s)).ravel().astype(np.float64)
    n = z.size  # 16384 pairs
    # Mean within 5 s.e. (1/sqrt n = 0.008), variance within 5 s.e. (sqrt(2/n) = 0.011),
    # no excess kurtosis beyond 5 s.e. (sqrt(24/n)), KS against N(0, 1) does not reject.
    assert abs(z.mean()) < 5 / np.sqrt(n)
    assert abs(z.var() - 1) < 5 * np.sqrt(2 / n)
    assert abs(stats.kurtosis(z)) < 5 * np.sqrt(24 / n)
    assert stats.kstest(z, "norm").pvalue > 1e-4


def test_fresh_and_frozen_output_noise_agree_with_the_closed_form():
    """One input vector: the output across reads of one fresh chip and across frozen chips
    (seeds) has mean = the noiseless product and variance = sum_i v_i^2 sigma_ij^2 / dG^2."""
    rng = np.random.default_rng(1)
    m, cfg = _tile(rng, 64, 32, rows=64, cols=64)
    spec = ablate(preset("pcm"), only=["read"]).override(WINDOW)
    dev, t = spec.device, spec.t_inference
    g_t = _in_device_window(m.conductance, cfg, dev)
    v = rng.uniform(-1, 1, size=(1, 64)).astype(np.float32)
    s = _pair_sigma(devices.read_sigma(g_t, t, dev, g_ref=g_t), dev.g_max - dev.g_min)
    var = (v[0].astype(np.float64) ** 2) @ s ** 2  # (32,) closed-form output variance
    clean = v[0].astype(np.float64) @ normalised_tiles(m.conductance, cfg.to_dict())[0, 0].astype(np.float64)

    reads = 20000
    st = build_tiles(m.conductance, m.tile_used, cfg.to_dict(), spec, np.random.default_rng(2))
    fresh = tiled_product(np.repeat(v, reads, axis=0), st, spec, st.i_max, np.random.default_rng(3))
    chips = 2000
    frozen = np.empty((chips, 32))
    for c in range(chips):
        st = build_tiles(m.conductance, m.tile_used, cfg.to_dict(), spec.override(FROZEN), np.random.default_rng(c))
        frozen[c] = tiled_product(v, st, spec, st.i_max, np.random.default_rng(0))[0]

    pooled = []
    for y, n in ((fresh.astype(np.float64), reads), (frozen, chips)):
        z = (y - clean) / np.sqrt(var)  # independent columns: pool them
        # Per column: mean within 5 s.e. (1/sqrt n); variance within 5 s.e. (sqrt(2/n):
        # 5 % at 20000 reads, 16 % at 2000 chips). Pooled over the 32 columns: the same
        # bounds with 32 n samples, and KS against N(0, 1) does not reject.
        assert np.all(np.abs(z.mean(axis=0)) < 5 / np.sqrt(n))
        assert np.all(np.abs(z.var(axis=0) - 1) < 5 * np.sqrt(2 / n))
        z = z.ravel()
        assert abs(z.mean()) < 5 / np.sqrt(z.size) and abs(z.var() - 1) < 5 * np.sqrt(2 / z.size)
        assert stats.kstest(z, "norm").pvalue > 1e-4
        pooled.append(z)
    assert stats.ks_2samp(*pooled).pvalue > 1e-4


# ---------------------------------------------------------------------------- the field

def test_unknown_mode_names_the_field_and_the_choices():
    with pytest.raises(ConfigError) as exc:
        preset("pcm").override({"device.read_noise_mode": "sticky"})
    msg = str(exc.value)
    assert "device.read_noise_mode" in msg and "fresh, frozen" in msg and "'sticky'" in msg
    with pytest.raises(ConfigError, match="device.read_noise_mode must be a string"):
        DeviceSpec(read_noise_mode=1)


def test_mode_from_toml_override_command_line_and_dict(tmp_path):
    path = tmp_path / "frozen.toml"
    path.write_text('preset = "pcm"\n[device]\nread_noise_mode = "frozen"\n')
    spec = HardwareSpec.from_toml(path)
    assert spec.device.read_noise_mode == "frozen"
    assert spec == preset("pcm").override(FROZEN)
    assert spec == preset("pcm").override(dict([parse_assignment("device.read_noise_mode=frozen")]))
    assert HardwareSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert DeviceSpec().read_noise_mode == "fresh" and preset("rram").device.read_noise_mode == "fresh"


def test_describe_says_which_mode_is_active():
    assert "read noise on (1/f, t_read = 250 ns, fresh per read)" in preset("pcm").describe()
    assert "read noise on (1/f, t_read = 250 ns, frozen per chip and time)" in preset("pcm").override(FROZEN).describe()
    assert "read noise on (sigma = 0.01 G, frozen per chip and time)" in preset("rram").override(FROZEN).describe()
    assert "read noise off" in ablate(preset("pcm").override(FROZEN), without=["read"]).describe()


def test_command_line_set_reaches_the_chip(models_dir, tmp_path):
    from click.testing import CliRunner

    from xbar.cli import cli

    bundle, data = tmp_path / "r.xbar", tmp_path / "few.npz"
    d = np.load(models_dir / "digits_test.npz")
    np.savez(data, x=d["x"][:32], y=d["y"][:32])
    run = CliRunner().invoke
    assert run(cli, ["convert", str(models_dir / "resnet_bn.onnx"), "-o", str(bundle), "--crossbar", "32x32"]).exit_code == 0
    args = ["eval", str(bundle), "--data", str(data), "--hardware", "pcm", "--set", "device.read_noise_mode=frozen"]
    res = json.loads(run(cli, args + ["--json"]).output.splitlines()[-1])  # after the no-ranges warning
    assert res["hardware"]["device"]["read_noise_mode"] == "frozen"
    assert "frozen per chip and time" in run(cli, args).output
    bad = run(cli, args[:-1] + ["device.read_noise_mode=stale"])
    assert bad.exit_code != 0 and "device.read_noise_mode" in bad.output and "fresh, frozen" in bad.output
