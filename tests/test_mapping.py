"""Weight → conductance mapping: scaling, encodings, quantisation, tiling and its tables."""

import numpy as np
import pytest

from xbar.columns import ColumnMap
from xbar.config import MappingConfig, parse_crossbar
from xbar.converter.mapping import map_weights
from xbar.errors import ConfigError
from xbar.runtime.chip import assemble, normalised_tiles

rng = np.random.default_rng(0)


def _map(m, n):
    return ColumnMap(m.position_output, m.position_gain, n)


@pytest.mark.parametrize("encoding", ["differential", "offset"])
@pytest.mark.parametrize("shape,tile", [((5, 3), (8, 8)), ((300, 70), (128, 64)), ((64, 64), (64, 128)), ((17, 9), (4, 4))])
def test_tiles_reassemble_to_normalised_weights(encoding, shape, tile):
    w = rng.normal(size=shape)
    cfg = MappingConfig(rows=tile[0], cols=tile[1], encoding=encoding)
    m = map_weights(w, cfg)
    k, n = shape
    cw = cfg.weight_cols_per_tile
    assert m.conductance.shape == (-(-k // tile[0]), -(-n // cw), tile[0], tile[1])
    assert m.conductance.dtype == np.float32
    assert m.conductance.min() >= cfg.g_min and m.conductance.max() <= cfg.g_max * (1 + 1e-6)
    got = assemble(normalised_tiles(m.conductance, cfg.to_dict()), k, _map(m, n)) * m.col_scale
    np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-6 * np.abs(w).max())
    # Each column's largest weight uses the full conductance window.
    np.testing.assert_allclose(m.col_scale, np.abs(w).max(axis=0), rtol=1e-6)


def test_differential_pairs_share_a_tile_and_one_side_is_at_gmin():
    w = rng.normal(size=(10, 6))
    cfg = MappingConfig(rows=16, cols=4, g_min=1e-6, g_max=21e-6)
    g = map_weights(w, cfg).conductance.astype(np.float64)
    gp, gn = g[..., 0::2], g[..., 1::2]
    assert np.all(np.minimum(gp, gn) == pytest.approx(1e-6))
    # 6 weight columns, 2 per tile → 3 column blocks
    assert g.shape[:2] == (1, 3)


def test_offset_reference_column_is_gmid():
    cfg = MappingConfig(rows=8, cols=5, encoding="offset", g_min=2e-6, g_max=22e-6)
    g = map_weights(rng.normal(size=(6, 7)), cfg).conductance
    np.testing.assert_allclose(g[:, :, :6, 4], 12e-6, rtol=1e-6)


def test_tile_table_and_utilisation():
    cfg = MappingConfig(rows=128, cols=128)
    m = map_weights(rng.normal(size=(288, 32)), cfg)
    t = m.table
    assert (t["n_row_blocks"], t["n_col_blocks"], t["tiles_used"]) == (3, 1, 3)
    assert t["rows_used_per_block"] == [128, 128, 32]
    assert t["cells_used"] == 288 * 32 * 2
    assert t["utilisation"] == pytest.approx(288 * 64 / (3 * 128 * 128))


def test_structural_zeros_do_not_count_and_empty_tiles_are_unused():
    # Two groups of a grouped conv, each exactly one tile: off-diagonal tiles hold nothing.
    w = np.zeros((8, 8))
    mask = np.zeros((8, 8), bool)
    mask[:4, :4] = mask[4:, 4:] = True
    w[mask] = rng.normal(size=mask.sum())
    m = map_weights(w, MappingConfig(rows=4, cols=8), structure=mask)
    assert m.tile_used.tolist() == [[True, False], [False, True]]
    assert m.table["tiles_used"] == 2 and m.table["cells_used"] == 32 * 2


def test_quantised_levels():
    w = rng.normal(size=(50, 4))
    cfg = MappingConfig(weight_bits=4)
    m = map_weights(w, cfg)
    u = assemble(normalised_tiles(m.conductance, cfg.to_dict()), 50, _map(m, 4))
    levels = u * 7
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)
    assert np.abs(levels).max() == pytest.approx(7, abs=1e-4)


def test_percentile_clip_saturates_outliers():
    w = rng.normal(size=(1000, 2))
    w[0] = 50.0
    m = map_weights(w, MappingConfig(weight_clip_percentile=99.0))
    assert np.all(m.col_scale < 5)
    u = assemble(normalised_tiles(m.conductance, MappingConfig().to_dict()), 1000, _map(m, 2))
    assert np.allclose(u[0], 1.0, atol=1e-6)


@pytest.mark.parametrize("kwargs,field", [
    ({"cols": 7}, "even"), ({"encoding": "ternary"}, "encoding"), ({"weight_bits": 1}, "weight bits"),
    ({"g_min": 3e-5, "g_max": 2e-5}, "g_min"), ({"rows": 0}, "crossbar"),
])
def test_bad_mapping_config(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        MappingConfig(**kwargs)


def test_parse_crossbar():
    assert parse_crossbar("128x64") == (128, 64)
    assert parse_crossbar("64X32") == (64, 32)
    assert parse_crossbar(" 128 \u00d7 64 ") == (128, 64)
    with pytest.raises(ConfigError, match="'256x256'"):
        parse_crossbar("256")
    with pytest.raises(ConfigError, match="between 1 and"):
        parse_crossbar("0x128")
    with pytest.raises(ConfigError, match="ROWSxCOLS"):
        parse_crossbar("128 by 128")


@pytest.mark.parametrize("encoding", ["differential", "offset"])
@pytest.mark.parametrize("grouped", [False, True])
def test_packed_tiles_equal_the_grid_bit_for_bit(encoding, grouped):
    """pack_tiles builds only allocated tiles, row block by row block; they must be exactly
    tile_positions' grid tiles, with the same tile_used and table."""
    from xbar.converter.mapping import pack_tiles, tile_positions

    rng = np.random.default_rng(7)
    k, p = 70, 23
    v = rng.uniform(-1, 1, size=(k, p))
    valid = np.ones((k, p), dtype=bool)
    if grouped:
        valid[:] = False
        for g in range(5):
            valid[g * 14:(g + 1) * 14, g * 4:(g + 1) * 4 + 1] = True
        v = v * valid
    cfg = MappingConfig(rows=16, cols=8 if encoding == "differential" else 5, encoding=encoding)
    grid, used, table = tile_positions(v, valid, cfg)
    tiles, used2, table2, _ = pack_tiles(v, valid, cfg)
    np.testing.assert_array_equal(used, used2)
    assert table == table2
    np.testing.assert_array_equal(tiles, grid[used])
    assert tiles.dtype == np.float32 and tiles.shape == (used.sum(), 16, cfg.cols)
