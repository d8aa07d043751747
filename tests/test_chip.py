"""The chip path of the runtime: quantisers, output-referred read noise, seeds, drift
compensation, faults, and ideal hardware through the full per-tile path."""

import numpy as np
import onnxruntime as ort
import pytest
from scipy import stats

from conftest import close
from xbar.config import MappingConfig
from xbar.converter import convert
from xbar.converter.mapping import map_weights
from xbar.hardware import ablate, preset
from xbar.runtime import Runtime
from xbar.runtime import devices
from xbar.runtime.analog import adc, dac, quantise_symmetric, tiled_product
from xbar.runtime.chip import build_tiles


# ---------------------------------------------------------------------------- quantisers

@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_quantiser_levels_and_clipping(bits):
    levels = 2 ** (bits - 1) - 1
    x = np.linspace(-3, 3, 20001, dtype=np.float32)
    q = quantise_symmetric(x, bits, 2.0)
    codes = np.unique(np.rint(q / (2.0 / levels)))
    # Exactly 2·levels + 1 symmetric codes, zero included, saturating at ±full scale.
    np.testing.assert_array_equal(codes, np.arange(-levels, levels + 1))
    assert q.max() == pytest.approx(2.0) and q.min() == pytest.approx(-2.0)
    inside = np.abs(x) <= 2.0
    assert np.max(np.abs(q[inside] - x[inside])) <= 2.0 / levels / 2 + 1e-6  # half a step


def test_dac_normalises_clips_and_quantises():
    x = np.array([[-5.0, -0.9, 0.0, 0.26, 1.2, 2.0]], dtype=np.float32)
    np.testing.assert_allclose(dac(x, 2.0, None), [[-1, -0.45, 0, 0.13, 0.6, 1]], rtol=1e-6)
    q = dac(x, 2.0, 3)  # levels ±3: steps of 1/3
    np.testing.assert_allclose(q, [[-1, -1 / 3, 0, 0, 2 / 3, 1]], atol=1e-6)


def test_ideal_adc_passes_currents_through():
    i = np.array([[-10.0, 0.3, 10.0]], dtype=np.float32)
    np.testing.assert_array_equal(adc(i, np.float32(1.0), None), i)
    np.testing.assert_allclose(adc(i, np.float32(1.0), 2), [[-1, 0, 1]])


# ---------------------------------------------------------------------------- read noise

def _single_tile(rng, k=48, n=12, encoding="differential"):
    w = rng.normal(size=(k, n))
    cfg = MappingConfig(rows=64, cols=32 if encoding == "differential" else 17, encoding=encoding)
    m = map_weights(w, cfg)
    return m, cfg


@pytest.mark.parametrize("encoding", ["differential", "offset"])
def test_output_referred_read_noise_matches_fresh_conductances(encoding):
    """Sampling the noise at the column output must give the same distribution as drawing a
    fresh conductance matrix for every read (the slow, obvious model)."""
    rng = np.random.default_rng(1)
    m, cfg = _single_tile(rng, encoding=encoding)
    spec = ablate(preset("pcm"), only=["read"]).override(t_inference=3600.0)
    st = build_tiles(m.conductance, m.tile_used, cfg.to_dict(), spec, np.random.default_rng(2), k=48, n=12)
    v = rng.uniform(-1, 1, size=(1, 48)).astype(np.float32)
    reads = 20000
    ours = tiled_product(np.repeat(v, reads, axis=0), st, spec, st.i_max, np.random.default_rng(3))
    # Reference: program nothing, just perturb every device independently per read.
    g = m.conductance[0, 0].astype(np.float64)
    sigma = devices.read_sigma(g, 3600.0, spec.device, g_ref=g)
    dg = cfg.g_max - cfg.g_min
    ref_rng = np.random.default_rng(4)
    v_rows = np.zeros(g.shape[0])
    v_rows[:48] = v[0]
    ref = np.empty((reads, ours.shape[1]))
    for s in range(0, reads, 2000):
        gs = g + sigma * ref_rng.standard_normal((2000,) + g.shape)
        if encoding == "differential":
            w_read = (gs[..., 0::2] - gs[..., 1::2]) / dg
        else:
            w_read = (gs[..., :-1] - gs[..., -1:]) / (dg / 2)
        ref[s:s + 2000] = np.einsum("r,srk->sk", v_rows, w_read)[:, :12]
    for j in range(12):
        a, b = ours[:, j].astype(np.float64), ref[:, j]
        # Means agree to 5 standard errors; standard deviations to 5 % (20k reads each:
        # the std of a sample std is ≈ 0.5 %); and a two-sample KS test does not reject.
        se = np.sqrt(a.var() / reads + b.var() / reads)
        assert abs(a.mean() - b.mean()) < 5 * se
        assert a.std() == pytest.approx(b.std(), rel=0.05)
        assert stats.ks_2samp(a, b).pvalue > 1e-4


# ---------------------------------------------------------------------------- whole models

@pytest.fixture(scope="module")
def resnet(models_dir):
    return convert(models_dir / "resnet_bn.onnx")


def test_ideal_preset_through_the_full_hardware_path_matches_onnxruntime(models_dir, resnet, test_data):
    x, _ = test_data
    ref = ort.InferenceSession(str(models_dir / "resnet_bn.onnx")).run(None, {"input": x})[0]
    for enc in ("differential", "offset"):
        b = resnet if enc == "differential" else convert(models_dir / "resnet_bn.onnx", encoding=enc, crossbar=(64, 33))
        rt = Runtime(b, preset("ideal"), seed=0)
        assert all(layer.chip is not None for layer in rt.layers)  # really the tiled path
        assert close(rt(x), ref)


def test_same_seed_same_chip_bit_for_bit(resnet, test_data):
    x, _ = test_data
    spec = ablate(preset("pcm"), without=["ir-drop"]).override(t_inference=86400.0)
    a = Runtime(resnet, spec, seed=7)(x[:64])
    b = Runtime(resnet, spec, seed=7)(x[:64])
    c = Runtime(resnet, spec, seed=8)(x[:64])
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("ir_drop", [False, True])
def test_physical_adc_full_scale_is_set_when_the_chip_is_programmed(resnet, ir_drop):
    """adc.range = physical: each column's largest |current| as programmed. It followed the
    chip at time t, shrinking with drift (and wire losses), which made the ADC re-range
    itself as the chip aged. Now the same at every time, equal to the programmed devices'
    sums, and above what the drifted columns can reach."""
    spec = ablate(preset("pcm"), without=[] if ir_drop else ["ir-drop"]).override({"adc.range": "physical"})
    chips = [Runtime(resnet, spec.override(t_inference=t), seed=3) for t in (1.0, 3.15e7)]
    no_drift = Runtime(resnet, ablate(spec, without=["drift", "ir-drop", "read"]).override(t_inference=1.0), seed=3)
    for early, late, programmed in zip(*(rt.layers for rt in chips), no_drift.layers):
        a, b = early.chip.tiles.i_max, late.chip.tiles.i_max
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, np.abs(programmed.chip.tiles.d).sum(axis=1), rtol=1e-6)
        reach = np.abs(late.chip.tiles.d).sum(axis=1)
        assert np.all(reach <= a * 1.0001) and reach.sum() < 0.9 * a.sum()  # a year of PCM drift


def test_chip_is_sampled_once_not_per_inference(resnet, test_data):
    x, _ = test_data
    spec = ablate(preset("pcm"), only=["programming", "drift"]).override(t_inference=3600.0)
    rt = Runtime(resnet, spec, seed=0)
    np.testing.assert_array_equal(rt(x[:16]), rt(x[:16]))  # no read noise: same chip, same answer
    noisy = Runtime(resnet, ablate(preset("pcm"), only=["read"]).override(t_inference=3600.0), seed=0)
    assert not np.array_equal(noisy(x[:16]), noisy(x[:16]))  # read noise is fresh per inference


def test_drift_compensation_restores_the_scale(resnet, test_data):
    x, y = test_data
    base = ablate(preset("pcm"), only=["drift"]).override(t_inference=3.15e7)
    ideal = Runtime(resnet)(x)
    off = Runtime(resnet, base.override(drift_compensation="off"), seed=0)(x)
    tile = Runtime(resnet, base.override(drift_compensation="tile"), seed=0)(x)
    col = Runtime(resnet, base.override(drift_compensation="column"), seed=0)(x)
    # Logits are a linear readout of the last layer, so their least-squares scale against
    # ideal shows the gain the chip lost: drift shrinks it; compensation brings it back.
    scale = {k: float(np.sum(v * ideal) / np.sum(ideal * ideal)) for k, v in {"off": off, "tile": tile, "col": col}.items()}
    assert scale["off"] < 0.5
    assert abs(scale["tile"] - 1) < 0.25 and abs(scale["col"] - 1) < 0.25
    err = {k: np.abs(v - ideal).mean() for k, v in {"off": off, "tile": tile, "col": col}.items()}
    assert err["tile"] < 0.7 * err["off"] and err["col"] < 0.7 * err["off"]
    assert (tile.argmax(1) == y).mean() > (off.argmax(1) == y).mean()


def test_all_devices_stuck_at_gmax_erase_the_weights(resnet, test_data):
    x, _ = test_data
    spec = ablate(preset("pcm"), only=["faults"]).override({"faults.p_stuck_at_gmax": 1.0})
    rt = Runtime(resnet, spec, seed=0)
    for layer in rt.layers:
        assert np.all(layer.chip.tiles.d == 0)  # G+ = G− everywhere: nothing left to compute


def test_programming_noise_on_tiles_matches_the_closed_form():
    rng = np.random.default_rng(0)
    w = rng.uniform(0.2, 1.0, size=(128, 64))  # positive: G− sits at 0, G+ carries the weight
    cfg = MappingConfig()
    m = map_weights(w, cfg)
    spec = ablate(preset("pcm"), only=["programming"])
    st = build_tiles(m.conductance, m.tile_used, cfg.to_dict(), spec, np.random.default_rng(5))
    target = m.conductance[0, 0, :, 0::2].astype(np.float64) / cfg.g_max
    got = st.d[0, :, :64].astype(np.float64)
    # G+ noise is N(0, σ_p(g)²); G− programmed at 0 S becomes max(N(0, σ_p(0)²), 0), a
    # rectified normal: mean σ/√(2π), variance σ²(1/2 − 1/(2π)).
    sp = devices.pcm_prog_sigma(target * cfg.g_max, spec.device) / cfg.g_max
    s0 = float(devices.pcm_prog_sigma(np.array(0.0), spec.device)) / cfg.g_max
    expected_mean = target - s0 / np.sqrt(2 * np.pi)
    z = (got - expected_mean) / np.sqrt(sp ** 2 + s0 ** 2 * (0.5 - 1 / (2 * np.pi)))
    assert abs(z.mean()) < 5 / np.sqrt(z.size)
    assert z.std() == pytest.approx(1.0, rel=0.05)


def test_probe_as_programmed_is_reused_across_drift_times_bit_for_bit(resnet, test_data, monkeypatch):
    """The compensation probe's exact IR-drop solve depends on the programmed chip, not on
    the drift time: a second time for the same seed reuses it and gives what a fresh solve
    gives."""
    from xbar.runtime import chip

    x = test_data[0][:32]
    spec = preset("pcm")  # IR drop on, drift compensation per tile
    solves = []
    real = chip._probe_as_programmed
    monkeypatch.setattr(chip, "PROBE_SOLVER", "exact")  # count the exact solves through `circuit`

    def counting(g0, rows, spec_, circuit):
        return real(g0, rows, spec_, lambda g: solves.append(1) or circuit(g))

    monkeypatch.setattr(chip, "_probe_as_programmed", counting)
    chip._PROBE_CACHE.clear()
    Runtime(resnet, spec.override(t_inference=3600.0), seed=11)
    first = len(solves)
    cached = Runtime(resnet, spec.override(t_inference=86400.0), seed=11)(x)
    assert first > 0 and len(solves) == first  # the second time solved no probe
    chip._PROBE_CACHE.clear()
    fresh = Runtime(resnet, spec.override(t_inference=86400.0), seed=11)(x)
    assert len(solves) == 2 * first
    np.testing.assert_array_equal(cached, fresh)
    Runtime(resnet, spec.override(t_inference=86400.0), seed=12)  # another chip: its own solve
    assert len(solves) == 3 * first


@pytest.mark.parametrize("encoding", ["differential", "offset"])
@pytest.mark.parametrize("compensation", ["tile", "column"])
@pytest.mark.parametrize("ir_drop", [False, True])
def test_drift_compensation_reads_only_the_cells_a_layer_uses(encoding, compensation, ir_drop):
    """Rows past K are never driven and padding columns have no ADC: whatever their devices
    hold, the compensation factor of the used columns is the same. (Unused cells sit at G_min,
    where PCM drifts fastest; counting them once biased the tile factor by up to 25 %.)"""
    cfg = MappingConfig(rows=16, cols=16, encoding=encoding)
    m = map_weights(np.random.default_rng(4).normal(size=(11, 5)), cfg)  # 11 of 16 rows, 5 positions
    spec = preset("pcm").override({"t_inference": 86400.0, "drift_compensation": compensation,
                                   "circuit.ir_drop": ir_drop, "device.read_noise": False})
    spoiled = m.conductance.copy()
    spoiled[:, :, 11:, :] = cfg.g_max  # unused rows
    # Columns past the 5 positions (read: differential pairs 0-9; offset 0-4 and reference 15).
    spoiled[:, :, :, slice(10, 16) if encoding == "differential" else slice(5, 15)] = cfg.g_max
    comps = [build_tiles(g, m.tile_used, cfg.to_dict(), spec, np.random.default_rng(9), k=11, n=5).comp
             for g in (m.conductance, spoiled)]
    if ir_drop:  # the unused devices share the wires: the used columns' currents move a little
        np.testing.assert_allclose(comps[0], comps[1], rtol=2e-3)
    else:
        np.testing.assert_array_equal(comps[0], comps[1])
    assert np.all(np.abs(comps[0] - 1) > 0.1)  # a day of drift is being compensated
