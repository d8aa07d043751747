"""`convert(..., pack_tiles=True)` (`--pack-tiles`): the partly used tiles of every
Conv/Gemm/MatMul layer share physical tiles, stacked by rows and side by side by position
ranges (xbar.packing.shelf_fit), one pass per logical tile driving only its own rows.
Checked against the unpacked bundle (same programmed weights), onnxruntime, an
independent nodal solve of each physical tile, the drift probe computed by hand, the
bundle format and its checks, and seeded determinism."""

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
from xbar.runtime.devices import pcm_drift_moments
from xbar.runtime.layer import Layer

R = 16  # 16x16 tiles: 8 weight positions per tile (differential)


def _model(path):
    """K = 20 (16 + 4 rows), 36 (2 × 16 + 4) and 20 again: every layer's last row block is
    4 rows of 16, which only stacking by rows can share."""
    import torch
    import torch.nn as nn

    torch.manual_seed(5)
    net = nn.Sequential(nn.Conv2d(20, 36, 1), nn.BatchNorm2d(36), nn.ReLU(), nn.Conv2d(36, 20, 1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(20 * 4 * 4, 12))
    return export_small(net, path, (1, 20, 4, 4))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return _model(tmp_path_factory.mktemp("pack") / "m.onnx")


@pytest.fixture(scope="module")
def pair(model):
    spec = preset("pcm")
    return (convert(model, crossbar=(R, R), hardware=spec), convert(model, crossbar=(R, R), hardware=spec,
                                                                     pack_tiles=True))


def _x(n=3):
    return np.random.default_rng(0).standard_normal((n, 20, 4, 4)).astype(np.float32)


def _packed_layer(bundle, entry, spec):
    """One packed layer on a chip of `spec`, its physical tiles and map, and per pass its
    row block, column block and rows in use."""
    layer = Layer(entry, bundle, spec, np.random.default_rng(0), np.random.default_rng(1))
    physical, pack_map = layer_packing(bundle, entry)
    _, used = layer_tiles(bundle, entry)
    bi, ci = np.nonzero(used)
    return layer, physical, pack_map, bi, ci, packing.pass_heights(used, entry["K"], R)


def test_shelf_fit_stacks_short_row_blocks_and_fills_shelves_left_to_right():
    live = np.array([[0, 8], [0, 8], [0, 8], [0, 3], [0, 8], [0, 5]])
    heights = np.array([16, 4, 4, 4, 16, 4])
    pack_map, n = packing.shelf_fit(live, heights, 8, 16)
    # Full tiles alone; the 4-row passes on one tile's shelves (rows 0, 4, 8), the 3- and
    # 5-wide ranges side by side on one shelf.
    np.testing.assert_array_equal(pack_map, [[0, 0, 0, 8, 0], [1, 0, 0, 8, 0], [1, 0, 0, 8, 4], [1, 0, 0, 3, 8],
                                             [2, 0, 0, 8, 0], [1, 3, 0, 5, 8]])
    assert n == 3
    packing.check_map(pack_map, n, 6, 8, "l", heights, 16)  # its own map passes its own check
    back = np.array(pack_map)
    back[2, 4] = 2  # rows 2..6 overlap the pass at rows 4..8
    with pytest.raises(BundleError, match="overlap on physical tile 1"):
        packing.check_map(back, n, 6, 8, "l", heights, 16)
    back = np.array(pack_map)
    back[1, 4] = 14  # rows 14..18 leave the tile
    with pytest.raises(BundleError, match="16 rows"):
        packing.check_map(back, n, 6, 8, "l", heights, 16)


def test_pack_then_unpack_gives_the_logical_tiles_back():
    rng = np.random.default_rng(1)
    live = np.array([[0, 8], [0, 8], [2, 6], [0, 8]])
    heights = np.array([16, 4, 4, 16])
    tiles = np.full((4, 16, 16), 1e-7, dtype=np.float32)
    for j, ((lo, hi), h) in enumerate(zip(live, heights)):
        tiles[j, :h, 2 * lo:2 * hi] = rng.uniform(0, 25e-6, (h, 2 * (hi - lo)))
    pack_map, n = packing.shelf_fit(live, heights, 8, 16)
    physical = packing.pack(tiles, pack_map, n, 1e-7, heights)
    assert physical.shape[0] == 3
    np.testing.assert_array_equal(packing.unpack(physical, pack_map, 1e-7, heights), tiles)


def test_packing_shrinks_the_chip_and_counts_every_pass(pair):
    plain, packed = pair
    for lp, lq in zip(plain.layers, packed.layers):
        t, p = lp["tiles"], lq["tiles"]
        assert p["tiles_used"] == t["tiles_used"] and p["adc_per_vector"] == t["adc_per_vector"]
        pk = p["packing"]
        assert pk["physical_tiles"] < t["tiles_used"] and pk["passes_per_vector"] == t["tiles_used"]
        assert packed.arrays[lq["arrays"]["pack_map"]].shape == (t["tiles_used"], 5)
        # Utilisation: the table's of the logical tiles (as unpacked), packing's of the physical ones.
        assert p["utilisation"] == t["utilisation"]
        assert pk["utilisation"] == p["cells_used"] / (pk["physical_tiles"] * R * R) > t["utilisation"]
    s, s0 = packed.manifest["summary"], plain.manifest["summary"]
    assert s["pack_tiles"] and s["physical_tiles"] < s0["physical_tiles"] and s["adc_per_sample"] == s0["adc_per_sample"]


def test_ideal_packed_equals_unpacked_and_onnxruntime(model, pair):
    plain, packed = pair
    x = _x()
    got = Runtime(packed)(x)
    np.testing.assert_array_equal(got, Runtime(plain)(x))  # the same programmed tiles, unpacked
    want = ort.InferenceSession(str(model)).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)  # float32 products vs ORT
    # On a chip of exact devices without IR drop every pass reads its own cells exactly.
    exact = ablate(preset("pcm"), only=["dac"]).override({"dac.bits": None})
    np.testing.assert_array_equal(Runtime(packed, exact, seed=0)(x), Runtime(plain, exact, seed=0)(x))


def test_each_pass_reads_its_rows_and_columns_of_the_physical_tile_nodal_solve(pair):
    _, packed = pair
    spec = ablate(preset("pcm"), only=["ir_drop"]).override({"circuit.r_wire": 2.5, "circuit.r_driver": 5.0})
    c = spec.circuit
    dg = spec.device.g_max - spec.device.g_min
    stacked = 0
    for entry in packed.layers:
        layer, physical, pack_map, bi, ci, heights = _packed_layer(packed, entry, spec)
        cw = physical.shape[2] // 2
        d = layer.chip.tiles.d
        for p in range(len(physical)):
            g_eff = reference_currents(physical[p].astype(np.float64), np.eye(R), c.r_wire, c.r_driver, c.r_sense).T
            for j in np.nonzero(pack_map[:, 0] == p)[0]:
                _, off, lo, hi, row = pack_map[j]
                w, h = hi - lo, heights[j]
                want = (g_eff[row:row + h, 2 * off:2 * (off + w):2] - g_eff[row:row + h, 2 * off + 1:2 * (off + w):2]) / dg
                got = d[bi[j], :h, ci[j] * cw + lo:ci[j] * cw + hi]
                np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)  # float32 d against a float64 solve
                assert not d[bi[j], h:, ci[j] * cw + lo:ci[j] * cw + hi].any()  # other passes' rows stay out
                stacked += row > 0
    assert stacked > 0


def test_tile_compensation_probes_the_rows_every_pass_of_the_tile_drives(pair):
    _, packed = pair
    spec = ablate(preset("pcm").override({"device.pcm_nu_sigma_min": 0.0, "device.pcm_nu_sigma_max": 0.0,
                                          "drift_compensation": "tile", "t_inference": 86400.0}), only=["drift"])
    dev, t = spec.device, spec.t_inference
    layer, physical, pack_map, bi, ci, heights = _packed_layer(packed, packed.layers[1], spec)
    cw = physical.shape[2] // 2
    g0 = physical.astype(np.float64)
    mu, _ = pcm_drift_moments(g0, dev)
    gt = g0 * ((t + dev.t0) / dev.t0) ** (-mu * dev.drift_scale)
    for j, (p, off, lo, hi, row) in enumerate(pack_map):
        rows = np.zeros(R, dtype=bool)
        for jj in np.nonzero(pack_map[:, 0] == p)[0]:
            rows[pack_map[jj, 4]:pack_map[jj, 4] + heights[jj]] = True
        cols = slice(2 * off, 2 * (off + hi - lo))
        want = g0[p][rows][:, cols].sum() / gt[p][rows][:, cols].sum()
        np.testing.assert_allclose(layer.chip.tiles.comp[bi[j], ci[j] * cw + lo:ci[j] * cw + hi], want, rtol=2e-6)
    assert layer.chip.tiles.comp.max() > 1.01


def test_same_seed_same_chip_and_bundle_format_5(pair, tmp_path):
    plain, packed = pair
    spec = preset("pcm").override(t_inference=3600.0)
    x = _x()
    np.testing.assert_array_equal(Runtime(packed, spec, seed=2)(x), Runtime(packed, spec, seed=2)(x))
    assert not np.array_equal(Runtime(packed, spec, seed=2)(x), Runtime(packed, spec, seed=3)(x))
    back = load_bundle(save_bundle(packed, tmp_path / "p.xbar"))
    assert back.manifest["format_version"] == 5
    assert load_bundle(save_bundle(plain, tmp_path / "q.xbar")).manifest["format_version"] == 3
    np.testing.assert_array_equal(Runtime(back, spec, seed=2)(x), Runtime(packed, spec, seed=2)(x))


def test_a_stacked_pack_map_that_overlaps_is_refused_naming_the_layer(pair):
    _, packed = pair
    entry = packed.layers[1]
    key = entry["arrays"]["pack_map"]
    saved = packed.arrays[key]
    stacked = np.nonzero(saved[:, 4] > 0)[0]
    assert len(stacked)
    bad = saved.copy()
    bad[stacked[0], 4] -= 1  # one row into the shelf below
    packed.arrays[key] = bad
    try:
        with pytest.raises(BundleError, match="overlap on physical tile") as err:
            Runtime(packed)
        assert repr(entry["name"]) in str(err.value)
    finally:
        packed.arrays[key] = saved


def test_full_tiles_stay_unpacked_and_offset_is_refused(model, tmp_path):
    b = convert(model, crossbar=(4, 8), pack_tiles=True)  # K = 20, 36, 320: all multiples of 4 rows
    assert all("pack_map" not in l["arrays"] for l in b.layers)
    with pytest.raises(ConfigError, match="--pack-tiles needs the differential encoding"):
        convert(model, crossbar=(R, R), encoding="offset", pack_tiles=True)


def test_cli_convert_pack_tiles_and_info(model, tmp_path):
    from click.testing import CliRunner

    from xbar.cli import cli

    runner = CliRunner()
    out = tmp_path / "p.xbar"
    res = runner.invoke(cli, ["convert", str(model), "-o", str(out), "--crossbar", "16x16", "--pack-tiles"],
                        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    s = load_bundle(out).manifest["summary"]
    assert f"on {s['physical_tiles']} physical tiles ({s['tiles_used']} logical tiles" in res.output
    text = runner.invoke(cli, ["info", str(out)], catch_exceptions=False).output
    assert "partly used tiles packed (--pack-tiles)" in text
    assert json.loads(runner.invoke(cli, ["info", str(out), "--json"]).output)["summary"]["pack_tiles"] is True


def test_ranges_and_calibration_of_a_packed_bundle(model, pair):
    """--pack-tiles keeps a plain layer's rows in order (no row_order): range finding read
    one anyway and failed with a KeyError, so --calib-data and calibrate did too. The
    ranges are the unpacked bundle's, and the calibration runs on the packed chip."""
    import copy

    from xbar.runtime.calibrate import calibrate
    from xbar.runtime.ranges import find_ranges

    spec = preset("pcm").override(t_inference=86400.0)
    x = _x(64)
    plain, packed = (find_ranges(copy.deepcopy(b), x, spec) for b in pair)
    assert any("pack_map" in e["arrays"] and "row_order" not in e["arrays"] for e in packed.layers)
    for a, b in zip(plain.layers, packed.layers):
        assert a["ranges"]["input"] == b["ranges"]["input"]
        np.testing.assert_array_equal(plain.array(a["ranges"]["adc"]), packed.array(b["ranges"]["adc"]))
    out, record = calibrate(copy.deepcopy(packed), x, spec, method="affine", seed=0)
    assert out.manifest["calibration"][-1] == record and record["method"] == "affine"
