"""`convert(..., depthwise='packed')`: depthwise layers laid out channel-major and their
allocated tiles' live position ranges packed onto shared physical tiles (xbar.packing),
run as one pass per logical tile. Checked against the tiles policy (same programmed
weights), onnxruntime, an independent nodal solve of each physical tile (IR drop), the
probe's drift ratio computed by hand, seeded determinism and noise statistics."""

import json

import numpy as np
import onnxruntime as ort
import pytest
from conftest import export_small

from test_irdrop import reference_currents
from xbar import packing
from xbar.bundle import layer_packing, layer_tiles, load_bundle, save_bundle
from xbar.converter import convert
from xbar.errors import BundleError, ConfigError
from xbar.hardware import ablate, preset
from xbar.runtime import Runtime
from xbar.runtime.chip import weight_rows
from xbar.runtime.devices import pcm_drift_moments
from xbar.runtime.layer import Layer

CHANNELS = 61  # K = 549: the last 16-row block is short (5 rows), so probe rows matter


def _model(path, channels=CHANNELS, size=6):
    import torch
    import torch.nn as nn

    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(3, channels, 1), nn.BatchNorm2d(channels), nn.ReLU(),
                        nn.Conv2d(channels, channels, 3, padding=1, groups=channels), nn.BatchNorm2d(channels),
                        nn.ReLU(), nn.Conv2d(channels, 4, 1))
    return export_small(net, path, (1, 3, size, size))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return _model(tmp_path_factory.mktemp("packed") / "dw.onnx")


@pytest.fixture(scope="module")
def pair(model):
    """The same model on 16x16 tiles, tiles policy and packed, converted for pcm."""
    spec = preset("pcm")
    return (convert(model, crossbar=(16, 16), hardware=spec),
            convert(model, crossbar=(16, 16), hardware=spec, depthwise="packed"))


def _x(n=3, size=6):
    return np.random.default_rng(0).standard_normal((n, 3, size, size)).astype(np.float32)


def test_first_fit_places_ranges_left_to_right_on_the_first_tile_with_room():
    live = np.array([[0, 40], [10, 40], [5, 25], [0, 10]])  # widths 40, 30, 20, 10 on 64 slots
    pack_map, n = packing.first_fit(live, 64)
    assert n == 2
    np.testing.assert_array_equal(pack_map, [[0, 0, 0, 40], [1, 0, 10, 40], [0, 40, 5, 25], [1, 30, 0, 10]])
    packing.check_map(pack_map, n, 4, 64, "l")  # a map first_fit makes passes its own check


def test_packing_shrinks_the_depthwise_layer_and_counts_every_pass(pair):
    tiles, packed = pair
    t, p = tiles.layers[1]["tiles"], packed.layers[1]["tiles"]
    pk = p["packing"]
    # Channel-major rows: a 16-row block reaches 16/9 channels' positions, not 16.
    assert pk["physical_tiles"] * 3 <= t["tiles_used"]
    pack_map = packed.arrays[packed.layers[1]["arrays"]["pack_map"]]
    assert pk["passes_per_vector"] == len(pack_map) == p["tiles_used"]
    assert pk["max_passes_per_tile"] == np.bincount(pack_map[:, 0]).max() > 1
    # ADC conversions: each pass converts its own live positions, all passes counted.
    assert p["adc_per_vector"] == int((pack_map[:, 3] - pack_map[:, 2]).sum())
    s = packed.manifest["summary"]
    assert s["physical_tiles"] == s["tiles_used"] - p["tiles_used"] + pk["physical_tiles"]
    assert [l["tiles"].get("packing") is None for l in packed.layers] == [True, False, True]


def test_ideal_packed_equals_tiles_and_onnxruntime(model, pair):
    tiles, packed = pair
    x = _x()
    got = Runtime(packed)(x)
    # Same programmed conductance per weight: the ideal matrices, hence outputs, are identical.
    np.testing.assert_array_equal(got, Runtime(tiles)(x))
    want = ort.InferenceSession(str(model)).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)  # float32 im2col products vs ORT's conv


def test_ideal_device_chip_reads_the_same_weights_as_tiles(pair):
    tiles, packed = pair
    spec = preset("ideal")
    lt = Runtime(tiles, spec, seed=0).layers[1]
    lp = Runtime(packed, spec, seed=0).layers[1]
    k, n = lp.k, lp.p
    dt = lt.chip.tiles.d.reshape(-1, n)[:k]
    dp = weight_rows(lp.chip.tiles.d.reshape(-1, n), lp.input_rows)[:k]  # physical rows back to weight order
    np.testing.assert_array_equal(dp, dt)
    x = _x()
    # Row blocks group the partial sums differently (channel-major), so outputs agree to
    # float32 rounding of K = 549-term sums, not bit for bit.
    np.testing.assert_allclose(Runtime(packed, spec, seed=0)(x), Runtime(tiles, spec, seed=0)(x),
                               rtol=1e-5, atol=1e-5)


def test_each_pass_reads_its_columns_of_the_physical_tiles_nodal_solve(pair):
    _, packed = pair
    spec = ablate(preset("pcm"), only=["ir_drop"]).override({"circuit.r_wire": 2.5, "circuit.r_driver": 5.0})
    entry = packed.layers[1]
    layer = Layer(entry, packed, spec, np.random.default_rng(0), np.random.default_rng(1))
    physical, pack_map = layer_packing(packed, entry)
    _, used = layer_tiles(packed, entry)
    bi, ci = np.nonzero(used)
    dg = spec.device.g_max - spec.device.g_min
    cw = physical.shape[2] // 2
    r = physical.shape[1]
    c = spec.circuit
    alone_differs = False
    for p in range(len(physical)):
        g = physical[p].astype(np.float64)
        g_eff = reference_currents(g, np.eye(r), c.r_wire, c.r_driver, c.r_sense).T  # (R, C)
        for j in np.nonzero(pack_map[:, 0] == p)[0]:
            _, off, lo, hi = pack_map[j, :4]
            w = hi - lo
            want = (g_eff[:, 2 * off:2 * (off + w):2] - g_eff[:, 2 * off + 1:2 * (off + w):2]) / dg
            got = layer.chip.tiles.d[bi[j], :, ci[j] * cw + lo:ci[j] * cw + hi]
            # float32 storage of d (|d| <= 1) against a float64 sparse solve.
            np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
            # The other passes' cells load the wires: solving the logical tile alone differs.
            only = np.full_like(g, g.min())
            only[:, 2 * off:2 * (off + w)] = g[:, 2 * off:2 * (off + w)]
            g_alone = reference_currents(only, np.eye(r), c.r_wire, c.r_driver, c.r_sense).T
            alone = (g_alone[:, 2 * off:2 * (off + w):2] - g_alone[:, 2 * off + 1:2 * (off + w):2]) / dg
            alone_differs |= np.abs(alone - want).max() > 1e-4
    assert alone_differs


def test_tile_compensation_is_the_probe_ratio_over_each_pass_columns(pair):
    _, packed = pair
    # Drift alone, its exponent deterministic (σ_ν = 0): G(t) = G0 ((t + t0)/t0)^-μ_ν(G0).
    spec = ablate(preset("pcm").override({"device.pcm_nu_sigma_min": 0.0, "device.pcm_nu_sigma_max": 0.0,
                                          "drift_compensation": "tile", "t_inference": 86400.0}), only=["drift"])
    entry = packed.layers[1]
    layer = Layer(entry, packed, spec, np.random.default_rng(0), np.random.default_rng(1))
    physical, pack_map = layer_packing(packed, entry)
    _, used = layer_tiles(packed, entry)
    bi, ci = np.nonzero(used)
    dev, t = spec.device, spec.t_inference
    r, cw, k = physical.shape[1], physical.shape[2] // 2, layer.k
    g0 = physical.astype(np.float64)
    mu, _ = pcm_drift_moments(g0, dev)
    gt = g0 * ((t + dev.t0) / dev.t0) ** (-mu * dev.drift_scale)
    for j, (p, off, lo, hi) in enumerate(pack_map[:, :4]):
        # Probe rows: every row any pass of the physical tile drives (rows < K of its block).
        rows = np.zeros(r, dtype=bool)
        for jj in np.nonzero(pack_map[:, 0] == p)[0]:
            rows |= np.arange(r) < k - r * bi[jj]
        cols = slice(2 * off, 2 * (off + hi - lo))
        want = g0[p][rows][:, cols].sum() / gt[p][rows][:, cols].sum()
        got = layer.chip.tiles.comp[bi[j], ci[j] * cw + lo:ci[j] * cw + hi]
        np.testing.assert_allclose(got, want, rtol=2e-6)  # float32 storage of the factor
    assert layer.chip.tiles.comp.max() > 1.01  # a day of drift: a real correction was checked


def test_same_seed_same_chip_and_programming_noise_as_tiles(model):
    spec = ablate(preset("pcm"), only=["programming"])
    b_t = convert(model, crossbar=(16, 16), hardware=spec)
    b_p = convert(model, crossbar=(16, 16), hardware=spec, depthwise="packed")
    x = _x()
    a, b = Runtime(b_p, spec, seed=4), Runtime(b_p, spec, seed=4)
    np.testing.assert_array_equal(a(x), b(x))
    np.testing.assert_array_equal(a.layers[1].chip.tiles.d, b.layers[1].chip.tiles.d)
    assert not np.array_equal(a.layers[1].chip.tiles.d, Runtime(b_p, spec, seed=5).layers[1].chip.tiles.d)

    # Programming error of the live weights: the same distribution per cell in both mappings
    # (the same stored conductances, the same device model). 10 chips x 549 weights each.
    ideal = Runtime(b_t, preset("ideal"), seed=0).layers[1]
    live = ideal.chip.tiles.d.reshape(-1, ideal.p)[:ideal.k] != 0
    errs = {}
    for name, bundle in (("tiles", b_t), ("packed", b_p)):
        e = []
        for seed in range(10):
            lyr = Runtime(bundle, spec, seed=seed).layers[1]
            d = lyr.chip.tiles.d.reshape(-1, lyr.p)
            d = weight_rows(d, lyr.input_rows)[:lyr.k] if lyr.input_rows is not None else d[:lyr.k]
            e.append((d - ideal.chip.tiles.d.reshape(-1, ideal.p)[:ideal.k])[live])
        errs[name] = np.concatenate(e)
    n = len(errs["tiles"])
    s_t, s_p = errs["tiles"].std(), errs["packed"].std()
    # Standard error of a sample std is σ/√(2n) ≈ 0.9 % here; 6 % is > 4.5 standard errors of the difference.
    assert abs(s_p / s_t - 1) < 0.06, (s_t, s_p)
    # Means: both near the same (device-model) bias; difference within 5 standard errors.
    assert abs(errs["packed"].mean() - errs["tiles"].mean()) < 5 * np.sqrt(2 / n) * s_t


def test_bundle_round_trip_and_format(pair, tmp_path):
    _, packed = pair
    path = save_bundle(packed, tmp_path / "p.xbar")
    back = load_bundle(path)
    assert back.manifest["format_version"] == 4
    for key, v in packed.arrays.items():
        np.testing.assert_array_equal(back.arrays[key], v)
    spec = preset("pcm").override(t_inference=3600.0)
    x = _x()
    np.testing.assert_array_equal(Runtime(back, spec, seed=1)(x), Runtime(packed, spec, seed=1)(x))


@pytest.mark.parametrize("edit,match", [
    (lambda m: m.__setitem__((1, 1), m[0, 1]) or m.__setitem__((1, 0), m[0, 0]), "overlap on physical tile"),
    (lambda m: m.__setitem__((0, 3), 99), r"row 0 .* does not place"),
    (lambda m: m.__setitem__((slice(None), 0), 0), "overlap|without a pass"),
])
def test_a_corrupted_pack_map_is_refused_naming_the_layer(pair, edit, match):
    _, packed = pair
    entry = packed.layers[1]
    key = entry["arrays"]["pack_map"]
    saved = packed.arrays[key]
    bad = saved.copy()
    edit(bad)
    packed.arrays[key] = bad
    try:
        with pytest.raises(BundleError, match=match) as err:
            Runtime(packed)
        assert repr(entry["name"]) in str(err.value)
    finally:
        packed.arrays[key] = saved


def test_a_pack_map_of_the_wrong_shape_is_refused_at_load(pair, tmp_path):
    _, packed = pair
    entry = packed.layers[1]
    key = entry["arrays"]["pack_map"]
    saved = packed.arrays[key]
    packed.arrays[key] = saved[:-1]
    try:
        save_bundle(packed, tmp_path / "bad.xbar")
    finally:
        packed.arrays[key] = saved
    with pytest.raises(BundleError, match=r"pack_map.*expected \["):
        load_bundle(tmp_path / "bad.xbar")


def test_offset_encoding_is_refused(model):
    with pytest.raises(ConfigError, match="--depthwise packed needs the differential encoding"):
        convert(model, crossbar=(16, 16), encoding="offset", depthwise="packed")


def test_calibrated_ranges_use_physical_row_blocks(model):
    """ADC full scales of a packed layer come from its physical row blocks (inputs routed):
    calibrated on the data itself, no column of the clean chip exceeds its full scale much."""
    from xbar.runtime.ranges import find_ranges

    b = convert(model, crossbar=(16, 16), hardware=preset("pcm"), depthwise="packed")
    x = np.random.default_rng(2).standard_normal((16, 3, 6, 6)).astype(np.float32)
    spec = preset("pcm").override({"dac.range": "calibrated"})
    find_ranges(b, x, spec)
    from xbar.runtime.analog import per_block
    from xbar.runtime.diagnose import diagnose

    clean = ablate(spec, only=["adc", "dac"])
    rt = Runtime(b, clean, seed=0)
    lyr = rt.layers[1]
    # The layer's input vectors, through the ideal runtime up to layer 1.
    seen = []
    ideal = Runtime(b)
    ideal.layers[1].probe = lambda l, cols, y: seen.append(cols.copy())
    ideal(x)
    cols = np.clip(np.concatenate(seen) / lyr.chip.x_max, -1, 1)
    cur = np.abs(per_block(lyr.chip_inputs(cols), lyr.chip.tiles.d, lyr.k))
    # 99.99th-percentile full scales from the same vectors: at most 0.01 % of them above.
    assert np.mean(cur > lyr.chip.i_fs[:, None, :] * (1 + 1e-5)) <= 1e-4 + 1e-9
    assert diagnose(b, clean, x[:4])[0]["adc_clip"] <= 1e-3


def test_cli_convert_packed_and_info(model, tmp_path):
    from click.testing import CliRunner

    from xbar.cli import cli

    runner = CliRunner()
    out = tmp_path / "p.xbar"
    res = runner.invoke(cli, ["convert", str(model), "-o", str(out), "--crossbar", "16x16", "--depthwise", "packed"],
                        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    b = load_bundle(out)
    s = b.manifest["summary"]
    assert f"on {s['physical_tiles']} physical tiles ({s['tiles_used']} logical tiles" in res.output
    text = runner.invoke(cli, ["info", str(out), "--layers"], catch_exceptions=False).output
    pk = b.layers[1]["tiles"]["packing"]
    assert "1 depthwise convolution packed densely onto shared tiles (--depthwise packed)" in " ".join(text.split())
    t = b.layers[1]["tiles"]
    row = next(line for line in text.splitlines() if line.startswith(b.layers[1]["name"]))
    assert f"{pk['physical_tiles']}/{t['tiles_used']}×{pk['max_passes_per_tile']}" in row
    assert f"{100 * t['cells_used'] / (pk['physical_tiles'] * 16 * 16):.1f}%" in row  # util of the physical tiles
    js = json.loads(runner.invoke(cli, ["info", str(out), "--json"], catch_exceptions=False).output)
    assert js["summary"]["physical_tiles"] == s["physical_tiles"] and js["summary"]["depthwise"] == "packed"
    assert js["layers"][1]["tiles"]["packing"] == pk
    assert js["layers"][1]["tiles"]["adc_per_vector"] == pk["positions_converted"]
