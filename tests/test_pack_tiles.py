"""`convert(..., pack_tiles=True)` (`--pack-tiles`): the partly used tiles of all
Conv/Gemm/MatMul layers share physical tiles, stacked by rows and side by side by position
ranges (xbar.packing.pool_layers, shelf_fit), one pass per logical tile driving only its
own rows. Checked against the unpacked bundle (same programmed weights), onnxruntime, an
independent nodal solve of each physical tile, the drift probe computed by hand, the
bundle format and its checks, and seeded determinism."""

import json

import numpy as np
import onnxruntime as ort
import pytest
from conftest import export_small

from test_irdrop import reference_currents
from xbar import packing
from xbar.bundle import layer_packing, layer_tiles, load_bundle, save_bundle, shared_tiles
from xbar.converter import convert
from xbar.errors import BundleError, ConfigError
from xbar.hardware import ablate, preset
from xbar.runtime import Runtime
from xbar.runtime.devices import pcm_drift_moments
from xbar.runtime.layer import Layer

R = 16  # 16x16 tiles: 8 weight positions per tile (differential)


def _model(path):
    """K × N = 20 × 12 (16 + 4 rows), 12 × 20 (12 rows) and 320 × 12 (20 row blocks), at
    16 × 16 tiles of 8 positions: of the first two layers only one tile is full, and every
    layer's last column block holds 4 of 8 positions. Packed within each layer they take 36
    physical tiles; shared across layers, 34 (unpacked, 47)."""
    import torch
    import torch.nn as nn

    torch.manual_seed(5)
    net = nn.Sequential(nn.Conv2d(20, 12, 1), nn.BatchNorm2d(12), nn.ReLU(), nn.Conv2d(12, 20, 1), nn.ReLU(),
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


def _packed_layer(bundle, i, spec):
    """Layer i of a chip of `spec` (seed 0), its physical tiles and map, and per pass its row
    block, column block, rows in use and the tile it sits on (its own or a shared one)."""
    layer = Runtime(bundle, spec, seed=0).layers[i]
    entry = bundle.layers[i]
    physical, pack_map = layer_packing(bundle, entry)
    _, used = layer_tiles(bundle, entry)
    bi, ci = np.nonzero(used)
    pool = shared_tiles(bundle)
    tiles = [pool[p] if shared else physical[p] for p, shared in pack_map[:, [0, 5]]]
    return layer, pack_map, bi, ci, packing.pass_heights(used, entry["K"], R), tiles


def _driven_rows(bundle):
    """Per physical tile ('own', layer, p) or ('pool', p): the rows every pass on it drives."""
    rows = {}
    for i, entry in enumerate(bundle.layers):
        _, m = layer_packing(bundle, entry)
        _, used = layer_tiles(bundle, entry)
        for j, h in enumerate(packing.pass_heights(used, entry["K"], R)):
            key = ("pool", m[j, 0]) if m[j, 5] else ("own", i, m[j, 0])
            rows.setdefault(key, np.zeros(R, dtype=bool))[m[j, 4]:m[j, 4] + h] = True
    return rows


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


def test_layers_share_tiles_and_every_pass_is_counted(pair):
    plain, packed = pair
    pool = packed.manifest["pool"]
    on_tile: dict[int, set[str]] = {}  # shared tile -> the layers with a pass on it
    per_layer = 0  # tiles if each layer packed its own partly used tiles (format 5)
    for lp, lq in zip(plain.layers, packed.layers):
        t, p = lp["tiles"], lq["tiles"]
        assert p["tiles_used"] == t["tiles_used"] and p["adc_per_vector"] == t["adc_per_vector"]
        pk = p["packing"]
        m = packed.arrays[lq["arrays"]["pack_map"]]
        assert m.shape == (t["tiles_used"], 6) and pk["passes_per_vector"] == t["tiles_used"]
        shared = m[:, 5] == 1
        assert pk["physical_tiles"] == (~shared).sum() == len(packed.arrays[lq["arrays"]["packed_tiles"]])
        assert pk["shared_tiles"] == len(np.unique(m[shared, 0]))
        for q in m[shared, 0]:
            on_tile.setdefault(int(q), set()).add(lq["name"])
        # Utilisation: the table's of the logical tiles (as unpacked), packing's of the tiles it reaches.
        assert p["utilisation"] == t["utilisation"]
        assert pk["utilisation"] == p["cells_used"] / ((pk["physical_tiles"] + pk["shared_tiles"]) * R * R)
        _, used = layer_tiles(packed, lq)
        per_layer += packing.shelf_fit(m[:, 2:4], packing.pass_heights(used, lq["K"], R), R // 2, R)[1]
    assert sorted(on_tile) == list(range(pool["physical_tiles"])) and pool["layers"] == 3
    # tiles hold passes of several layers, and the pool record counts them
    assert pool["multi_layer_tiles"] == sum(len(names) > 1 for names in on_tile.values()) == 4
    s, s0 = packed.manifest["summary"], plain.manifest["summary"]
    own = sum(l["tiles"]["packing"]["physical_tiles"] for l in packed.layers)
    assert s["pack_tiles"] and s["physical_tiles"] == own + pool["physical_tiles"] and s["shared_tiles"] == 13
    assert s["physical_tiles"] == 34 < per_layer == 36 < s0["physical_tiles"] == 47
    assert s["adc_per_sample"] == s0["adc_per_sample"]


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
    stacked = shared = 0
    for i in range(len(packed.layers)):
        layer, pack_map, bi, ci, heights, tiles = _packed_layer(packed, i, spec)
        d = layer.chip.tiles.d
        for j, (_, off, lo, hi, row, on_pool) in enumerate(pack_map):
            g_eff = reference_currents(tiles[j].astype(np.float64), np.eye(R), c.r_wire, c.r_driver, c.r_sense).T
            w, h = hi - lo, heights[j]
            want = (g_eff[row:row + h, 2 * off:2 * (off + w):2] - g_eff[row:row + h, 2 * off + 1:2 * (off + w):2]) / dg
            got = d[bi[j], :h, ci[j] * R // 2 + lo:ci[j] * R // 2 + hi]
            np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)  # float32 d against a float64 solve
            assert not d[bi[j], h:, ci[j] * R // 2 + lo:ci[j] * R // 2 + hi].any()  # other passes' rows stay out
            stacked += row > 0
            shared += on_pool
    assert stacked > 0 and shared > 0


def test_tile_compensation_probes_the_rows_every_pass_of_the_tile_drives(pair):
    """Of every layer with a pass on the tile: a shared tile's probe drives them all."""
    _, packed = pair
    spec = ablate(preset("pcm").override({"device.pcm_nu_sigma_min": 0.0, "device.pcm_nu_sigma_max": 0.0,
                                          "drift_compensation": "tile", "t_inference": 86400.0}), only=["drift"])
    dev, t = spec.device, spec.t_inference
    driven = _driven_rows(packed)
    assert any(key[0] == "pool" and rows.sum() > 4 for key, rows in driven.items())
    for i in (0, 1):
        layer, pack_map, bi, ci, heights, tiles = _packed_layer(packed, i, spec)
        for j, (p, off, lo, hi, row, on_pool) in enumerate(pack_map):
            g0 = tiles[j].astype(np.float64)
            mu, _ = pcm_drift_moments(g0, dev)
            gt = g0 * ((t + dev.t0) / dev.t0) ** (-mu * dev.drift_scale)
            rows = driven[("pool", p) if on_pool else ("own", i, p)]
            cols = slice(2 * off, 2 * (off + hi - lo))
            want = g0[rows][:, cols].sum() / gt[rows][:, cols].sum()
            np.testing.assert_allclose(layer.chip.tiles.comp[bi[j], ci[j] * R // 2 + lo:ci[j] * R // 2 + hi], want,
                                       rtol=2e-6)
        assert layer.chip.tiles.comp.max() > 1.01


def test_same_seed_same_chip_and_bundle_format_6(pair, tmp_path):
    plain, packed = pair
    spec = preset("pcm").override(t_inference=3600.0)
    x = _x()
    np.testing.assert_array_equal(Runtime(packed, spec, seed=2)(x), Runtime(packed, spec, seed=2)(x))
    assert not np.array_equal(Runtime(packed, spec, seed=2)(x), Runtime(packed, spec, seed=3)(x))
    back = load_bundle(save_bundle(packed, tmp_path / "p.xbar"))
    assert back.manifest["format_version"] == 6
    assert load_bundle(save_bundle(plain, tmp_path / "q.xbar")).manifest["format_version"] == 3
    np.testing.assert_array_equal(Runtime(back, spec, seed=2)(x), Runtime(packed, spec, seed=2)(x))


def test_a_shared_pass_that_overlaps_another_layers_is_refused_naming_both(pair):
    _, packed = pair
    passes = {i: packed.arrays[e["arrays"]["pack_map"]] for i, e in enumerate(packed.layers)}
    # A pass on a shared tile that another layer's pass sits right above.
    i, j, other = next((i, j, k) for i, m in passes.items() for j in np.nonzero((m[:, 5] == 1) & (m[:, 4] > 0))[0]
                       for k, mk in passes.items() if k != i and any(
                           (mk[:, 5] == 1) & (mk[:, 0] == m[j, 0]) & (mk[:, 4] < m[j, 4])))
    key = packed.layers[i]["arrays"]["pack_map"]
    saved = passes[i]
    bad = saved.copy()
    bad[j, 4] -= 1  # one row into the shelf below
    packed.arrays[key] = bad
    try:
        with pytest.raises(BundleError, match="overlaps a pass of layer") as err:
            Runtime(packed, preset("pcm"))
        assert repr(packed.layers[i]["name"]) in str(err.value) or repr(packed.layers[other]["name"]) in str(err.value)
        bad = saved.copy()
        bad[j, 0] = packed.manifest["pool"]["physical_tiles"]  # past the last shared tile
        packed.arrays[key] = bad
        with pytest.raises(BundleError, match="or 13 shared ones"):
            Runtime(packed)
    finally:
        packed.arrays[key] = saved


def test_an_idle_shared_tile_is_refused(pair):
    _, packed = pair
    key = packed.manifest["pool"]["tiles"]
    saved = packed.arrays[key]
    packed.arrays[key] = np.concatenate([saved, saved[:1]])
    packed.manifest["pool"]["physical_tiles"] += 1
    try:
        with pytest.raises(BundleError, match="shared tile 13 of 14 holds no layer's pass"):
            Runtime(packed, preset("pcm"))
    finally:
        packed.arrays[key] = saved
        packed.manifest["pool"]["physical_tiles"] -= 1


def test_full_tiles_stay_unpacked_and_offset_is_refused(model, tmp_path):
    b = convert(model, crossbar=(4, 8), pack_tiles=True)  # K = 20, 12, 320, N = 12, 20, 12: all fill 4 × 8 tiles
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
    text = " ".join(runner.invoke(cli, ["info", str(out)], catch_exceptions=False).output.split())  # unwrapped
    assert ("partly used tiles of 3 layers packed together on 13 tiles, 4 of them holding passes of several "
            "layers (--pack-tiles)") in text
    assert "13 of them pooled across layers" in res.output
    shown = json.loads(runner.invoke(cli, ["info", str(out), "--json"]).output)
    assert shown["summary"]["pack_tiles"] is True and shown["summary"]["shared_tiles"] == 13
    assert shown["pool"]["physical_tiles"] == 13 and shown["pool"]["layers"] == 3


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


def test_the_manifest_checks_the_shared_tiles(pair, tmp_path):
    import copy

    from xbar.manifest import manifest_problem

    back = load_bundle(save_bundle(pair[1], tmp_path / "p.xbar"))
    assert manifest_problem(back.manifest) is None
    m = copy.deepcopy(back.manifest)
    m["pool"]["physical_tiles"] = 12
    assert "expected [12, 16, 16] (pool.physical_tiles shared tiles)" in manifest_problem(m)
    m = copy.deepcopy(back.manifest)
    del m["pool"]
    assert "6-column pack_map places passes on shared tiles, but the manifest has no pool" in manifest_problem(m)
    m = copy.deepcopy(back.manifest)
    m["format_version"] = 5
    assert "pack_map" in manifest_problem(m)  # a 6-column map needs format 6


def test_remap_refuses_weights_that_would_share_the_tiles_otherwise(pair):
    import copy

    from xbar.converter.remap import _same_sharing
    from xbar.errors import ModelError

    _, packed = pair
    live = {i: None for i in range(len(packed.layers))}
    manifest, arrays = copy.deepcopy(packed.manifest), dict(packed.arrays)
    _same_sharing(packed, manifest, arrays, live)  # the same sharing passes
    key = manifest["layers"][0]["arrays"]["pack_map"]
    arrays[key] = arrays[key].copy()
    arrays[key][-1, 1] += 1
    with pytest.raises(ModelError, match="shared tiles otherwise"):
        _same_sharing(packed, manifest, arrays, live)
    manifest["pool"]["physical_tiles"] += 1
    arrays[key] = packed.arrays[key]
    with pytest.raises(ModelError, match="shared tiles otherwise"):
        _same_sharing(packed, manifest, arrays, live)


def _format5(plain, packed):
    """`plain` as xbar wrote --pack-tiles before layers shared tiles (format 5): each layer's
    partly used tiles packed among themselves (shelf_fit over its own passes)."""
    import copy

    old = copy.deepcopy(plain)
    for i, (e, q) in enumerate(zip(old.layers, packed.layers)):
        live = packed.arrays[q["arrays"]["pack_map"]][:, 2:4]
        tiles, used = layer_tiles(plain, e)
        h = packing.pass_heights(used, e["K"], R)
        m5, n = packing.shelf_fit(live, h, R // 2, R)
        if n >= len(m5):  # nothing shares a tile: format 5 kept such a layer's tiles plain
            continue
        keys = e["arrays"]
        old.arrays.pop(keys.pop("tiles"))
        keys["packed_tiles"], keys["pack_map"] = f"layers/{i:03d}/packed_tiles", f"layers/{i:03d}/pack_map"
        old.arrays[keys["packed_tiles"]] = packing.pack(tiles, m5, n, plain.manifest["mapping"]["g_min"], h)
        old.arrays[keys["pack_map"]] = m5
        e["tiles"]["packing"] = {"physical_tiles": n, "passes_per_vector": len(m5),
                                 "max_passes_per_tile": int(np.bincount(m5[:, 0]).max()),
                                 "positions_converted": int((live[:, 1] - live[:, 0]).sum()),
                                 "utilisation": e["tiles"]["cells_used"] / (n * R * R)}
        e["tiles"]["adc_per_vector"] = q["tiles"]["adc_per_vector"]
    old.manifest["summary"].update(pack_tiles=True, physical_tiles=sum(
        e["tiles"]["packing"]["physical_tiles"] if "packing" in e["tiles"] else e["tiles"]["tiles_used"]
        for e in old.layers))
    return old


def test_a_format_5_bundle_still_loads_runs_and_remaps_as_it_was_packed(pair, tmp_path):
    from click.testing import CliRunner

    from xbar.cli import cli
    from xbar.converter.remap import remap

    plain, packed = pair
    path = save_bundle(_format5(plain, packed), tmp_path / "f5.xbar")
    old = load_bundle(path)
    assert old.manifest["format_version"] == 5 and "pool" not in old.manifest
    assert old.manifest["summary"]["physical_tiles"] == 36  # each layer's own: 2 more than shared
    x = _x()
    exact = ablate(preset("pcm"), only=["dac"]).override({"dac.bits": None})
    np.testing.assert_array_equal(Runtime(old, exact, seed=0)(x), Runtime(plain, exact, seed=0)(x))
    spec = preset("pcm").override(t_inference=3600.0)
    np.testing.assert_array_equal(Runtime(old, spec, seed=1)(x), Runtime(old, spec, seed=1)(x))
    text = " ".join(CliRunner().invoke(cli, ["info", str(path)]).output.split())
    assert "partly used tiles packed within each layer (--pack-tiles, format 5)" in text
    weights = {l.name: l.matrix.astype(np.float64) * l.col_scale for l in Runtime(old).layers}
    again = remap(old, weights)
    assert "pool" not in again.manifest and any("pack_map" in e["arrays"] for e in again.layers)
    for e, o in zip(again.layers, old.layers):
        assert ("pack_map" in e["arrays"]) == ("pack_map" in o["arrays"])
        if "pack_map" in o["arrays"]:
            np.testing.assert_array_equal(again.arrays[e["arrays"]["pack_map"]], old.arrays[o["arrays"]["pack_map"]])


def test_bad_conductances_and_maps_are_refused_by_every_command(pair, tmp_path):
    """A NaN or negative conductance (a hand-edited bundle with valid checksums) ran the
    ideal path at chance accuracy and crashed a chip in the IR-drop solve; a bad pack_map
    was shown by info as if it were fine. Now each is a BundleError naming where it is."""
    from click.testing import CliRunner

    from xbar.cli import cli

    _, packed = pair
    x = _x()
    key = packed.manifest["pool"]["tiles"]
    saved = packed.arrays[key]
    for value, shown in ((np.nan, "nan"), (-1e-3, "-0.001")):
        bad = saved.copy()
        bad[3, 2, 5] = value
        packed.arrays[key] = bad
        try:
            for run in (lambda: Runtime(packed)(x), lambda: Runtime(packed, preset("pcm"), seed=0)):
                with pytest.raises(BundleError, match=rf"must be finite and >= 0, but tile \d+ holds {shown}"):
                    run()
        finally:
            packed.arrays[key] = saved
    entry = packed.layers[2]
    mkey = entry["arrays"]["pack_map"]
    good = packed.arrays[mkey]
    bad = good.copy()
    bad[0, 0] = 99
    packed.arrays[mkey] = bad
    try:
        path = save_bundle(packed, tmp_path / "bad_map.xbar")
    finally:
        packed.arrays[mkey] = good
    res = CliRunner().invoke(cli, ["info", str(path)])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert f"layer {entry['name']!r}: pack_map row 0" in " ".join(res.output.split())
