"""Lay a K×N weight matrix onto fixed-size crossbar tiles as conductances.

Per output column the weights are normalised by their largest magnitude (or a percentile),
optionally quantised, then encoded:
- differential: weight column j → physical columns 2j (G+) and 2j+1 (G−) of its tile, so
  both halves of a pair always share a tile and are subtracted before the ADC;
- offset: weight column j → one column at G_mid + ΔG/2·u, and each tile's last physical
  column is a reference at G_mid that is subtracted from every column of that tile.
K is cut into row blocks of R rows (their partial sums add digitally) and the weight
positions into column blocks. Cells with no weight sit at G_min (a RESET device).

A weight position is one differential pair or offset column. In fixed point there is one
per output column; the column map (xbar.columns) records each position's output and
digital gain, which is all the runtime needs to put outputs back together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from xbar.config import MappingConfig
from xbar.converter.encodings import encode

if TYPE_CHECKING:  # pragma: no cover
    from xbar.hardware import CircuitSpec, DeviceSpec


@dataclass
class MappedLayer:
    tiles: np.ndarray  # (T, R, C) float32 siemens: the allocated tiles, row-major in tile_used order
    col_scale: np.ndarray  # (N,) weight units per unit of normalised weight (w_max per column)
    position_output: np.ndarray  # (P,) int64: output column of tile position p
    position_gain: np.ndarray  # (P,) float32: digital gain of tile position p
    tile_used: np.ndarray  # (n_row_blocks, n_col_blocks) bool: tile holds at least one weight
    table: dict[str, Any]  # tile table and utilisation, for the manifest
    row_order: np.ndarray | None = None  # (K,) physical row q holds weight row row_order[q]; None: identity
    g_min: float = 0.0  # what an unallocated tile holds in `conductance`
    live: np.ndarray | None = None  # (T, 2) int64: per allocated tile, the slot range [lo, hi) holding weights

    @property
    def conductance(self) -> np.ndarray:
        """(n_row_blocks, n_col_blocks, R, C) float32: the full tile grid, unallocated tiles at G_min."""
        return unpack_tiles(self.tiles, self.tile_used, self.g_min)


def unpack_tiles(tiles: np.ndarray, tile_used: np.ndarray, fill: float) -> np.ndarray:
    """(T, R, C) allocated tiles → (nrb, ncb, R, C) grid, the others filled with `fill`."""
    out = np.full((*tile_used.shape, *tiles.shape[1:]), fill, dtype=tiles.dtype)
    out[tile_used] = tiles
    return out


def column_scale(weight: np.ndarray, percentile: float | None, structure: np.ndarray | None = None) -> np.ndarray:
    """Per column of the K×N `weight`: its largest |w|, or the `percentile` of |w| over the
    column's own weights, the positions `structure` (K×N bool) marks. A depthwise or grouped
    layer's matrix is block-diagonal, and the zeros outside a column's block are not
    weights: counted in, they pulled the 90th percentile of a 16-channel depthwise layer
    onto a zero (every column then fell back to scale 1)."""
    if percentile is None:
        # max |w| as max(max w, −min w): the same value, without a K×N |w| array at the peak;
        # zeros outside the structure never raise it.
        scale = np.maximum(weight.max(axis=0), -weight.min(axis=0))
    elif structure is None or structure.all():
        scale = np.percentile(np.abs(weight), percentile, axis=0)
    else:
        k, n = weight.shape
        scale = np.zeros(n)
        step = max(1, SLAB_CELLS // max(1, k))  # |w| as float64 with NaN outside, a slab at a time
        for c0 in range(0, n, step):
            a = np.abs(weight[:, c0:c0 + step], dtype=np.float64)
            a[~np.asarray(structure[:, c0:c0 + step], dtype=bool)] = np.nan
            own = ~np.isnan(a).all(axis=0)  # a column without weights keeps 0, so 1 below
            scale[c0:c0 + step][own] = np.nanpercentile(a[:, own], percentile, axis=0)
    # An all-zero column has nothing to normalise; any positive scale encodes it exactly.
    return np.where(scale > 0, scale, 1.0)


def map_weights(weight: np.ndarray, cfg: MappingConfig, structure: np.ndarray | None = None,
                device: "DeviceSpec | None" = None, t: float = 0.0, circuit: "CircuitSpec | None" = None,
                rows_first: np.ndarray | None = None, overwrite: bool = False) -> MappedLayer:
    """Scale, encode (xbar.converter.encodings), place and tile one layer's K×N weights.

    `device` and `t` (the target's device model and time) steer analog floating point;
    `circuit` (its wires) steers column placement; neither is needed for fixed point.
    `rows_first` (K,), if given, is a row order applied before any row placement (physical
    row q holds weight row rows_first[q]; --depthwise packed lays depthwise rows channel-major).
    `overwrite`: the caller no longer needs `weight` (float64), so the normalised weights
    are computed in its place, one K×N float64 array fewer at the peak.

    `weight` and `structure` may be scipy sparse (a grouped convolution's cells): then,
    unless a placement needs the whole matrix, the layer is scaled and encoded a slab of
    columns at a time and tiled from sparse rows, so no K×N array exists (`_map_sparse`)."""
    from scipy import sparse

    if sparse.issparse(weight):
        if cfg.rearrange == "none" and cfg.rearrange_rows == "none":
            return _map_sparse(weight, structure, cfg, device, t, rows_first)
        # Placement ranks rows and columns of the whole matrix: dense, as for any layer.
        weight, structure, overwrite = weight.toarray(), structure.toarray(), True
    k, n = weight.shape
    scale = column_scale(weight, cfg.weight_clip_percentile, structure)
    in_place = overwrite and weight.dtype == np.float64 and weight.flags.writeable
    u = np.divide(weight, scale, dtype=np.float64, out=weight if in_place else None)
    np.clip(u, -1.0, 1.0, out=u)  # in place: one K×N float64 array fewer at the peak
    valid = np.ones((k, n), dtype=bool) if structure is None else structure
    enc = encode(u, valid, cfg, device, t)
    order, rows = np.arange(len(enc.output)), rows_first
    if cfg.rearrange != "none" or cfg.rearrange_rows != "none":
        from xbar.converter.placement import place, place_rows

        order = place(enc.v, enc.valid, cfg, circuit)
        if rows_first is None:
            rows = place_rows(enc.v, enc.valid, cfg, circuit)
        else:  # row placement inside the blocks of the given order
            within = place_rows(enc.v[rows_first], enc.valid[rows_first], cfg, circuit)
            rows = rows_first if within is None else rows_first[within]
    del u
    placed = not np.array_equal(order, np.arange(len(order)))
    v, valid = (enc.v[:, order], enc.valid[:, order]) if placed else (enc.v, enc.valid)  # no copy unless moved
    if rows is not None:
        v, valid = v[rows], valid[rows]
    tiles, tile_used, table, live = pack_tiles(v, valid, cfg)
    table["physical_columns"] = _physical_columns(table, cfg)
    return MappedLayer(tiles, scale.astype(np.float32), enc.output[order], enc.gain[order], tile_used, table,
                       rows, float(cfg.g_min), live)


# Cells of one dense column slab while a sparse layer is encoded (32 MB of float64).
SLAB_CELLS = 1 << 22


def _map_sparse(weight, structure, cfg: MappingConfig, device, t: float, rows_first: np.ndarray | None) -> MappedLayer:
    """map_weights for a sparse layer without placement: scaling and every encoding act on
    each column alone (positions are output-major), so slabs of columns give the dense
    path's numbers bit for bit; only their nonzeros are kept, and pack_tiles reads rows."""
    from scipy import sparse

    k, n = weight.shape
    weight, structure = sparse.csc_matrix(weight), sparse.csc_matrix(structure)
    step = max(1, SLAB_CELLS // max(1, k))
    scales, outputs, gains, vs, valids = [], [], [], [], []
    for c0 in range(0, n, step):
        c1 = min(n, c0 + step)
        w = weight[:, c0:c1].toarray()
        valid = structure[:, c0:c1].toarray()
        scale = column_scale(w, cfg.weight_clip_percentile, valid)
        u = np.divide(w, scale, dtype=np.float64, out=w)
        np.clip(u, -1.0, 1.0, out=u)
        enc = encode(u, valid, cfg, device, t)
        scales.append(scale)
        outputs.append(enc.output + c0)
        gains.append(enc.gain)
        vs.append(sparse.csc_matrix(enc.v))
        valids.append(sparse.csc_matrix(enc.valid))
    v, valid = sparse.hstack(vs, format="csr"), sparse.hstack(valids, format="csr")
    if rows_first is not None:
        v, valid = v[rows_first], valid[rows_first]
    tiles, tile_used, table, live = pack_tiles(v, valid, cfg)
    table["physical_columns"] = _physical_columns(table, cfg)
    scale = np.concatenate(scales)
    return MappedLayer(tiles, scale.astype(np.float32), np.concatenate(outputs), np.concatenate(gains), tile_used,
                       table, rows_first, float(cfg.g_min), live)


def _rows(a, lo: int, hi: int) -> np.ndarray:
    """Rows lo..hi of a dense array or a sparse matrix, dense."""
    return a[lo:hi] if isinstance(a, np.ndarray) else a[lo:hi].toarray()


def _physical_columns(table: dict[str, Any], cfg: MappingConfig) -> int:
    """Bit lines that carry weights: two per differential pair, one per offset column plus
    each column block's reference column."""
    p = table["positions"]
    return 2 * p if cfg.encoding == "differential" else p + table["n_col_blocks"]


def tile_positions(v: np.ndarray, valid: np.ndarray, cfg: MappingConfig) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(K, P) normalised weights per position, in tile order, → conductances, used tiles, table.

    `valid` marks the cells that carry a weight (False: structural zeros such as the
    off-diagonal blocks of grouped convolutions); they count as unused.
    """
    k, p = v.shape
    r, c = cfg.rows, cfg.cols
    cw = cfg.weight_cols_per_tile
    nrb, ncb = -(-k // r), -(-p // cw)
    dg = cfg.g_max - cfg.g_min
    tiles = np.full((nrb * r, ncb, c), cfg.g_min, dtype=np.float64)
    upad = np.zeros((nrb * r, ncb * cw))
    upad[:k, :p] = v
    ublocks = upad.reshape(nrb * r, ncb, cw)
    if cfg.encoding == "differential":
        tiles[:, :, 0:2 * cw:2] = cfg.g_min + dg * np.maximum(ublocks, 0.0)
        tiles[:, :, 1:2 * cw:2] = cfg.g_min + dg * np.maximum(-ublocks, 0.0)
    else:
        g_mid = cfg.g_min + dg / 2
        tiles[:, :, :cw] = g_mid + dg / 2 * ublocks
        tiles[:k, :, cw] = g_mid  # reference column, one per tile
    # Padding cells (beyond K rows or P positions) stay at G_min.
    vpad = np.zeros((nrb * r, ncb * cw), dtype=bool)
    vpad[:k, :p] = valid
    phys_valid = np.zeros((nrb * r, ncb, c), dtype=bool)
    vblocks = vpad.reshape(nrb * r, ncb, cw)
    if cfg.encoding == "differential":
        phys_valid[:, :, 0:2 * cw:2] = vblocks
        phys_valid[:, :, 1:2 * cw:2] = vblocks
    else:
        # Structural zeros (off-diagonal blocks of grouped convs) must stay at G_mid: the
        # reference column subtracts G_mid on every row. Only true padding goes to G_min.
        inside = np.zeros((nrb * r, ncb * cw), dtype=bool)
        inside[:k, :p] = True
        cols_view = tiles[:, :, :cw]
        cols_view[~inside.reshape(nrb * r, ncb, cw)] = cfg.g_min
        phys_valid[:, :, :cw] = vblocks
        phys_valid[:k, :, cw] = vblocks[:k].any(axis=2)
    conductance = tiles.reshape(nrb, r, ncb, c).transpose(0, 2, 1, 3).astype(np.float32)
    pv = phys_valid.reshape(nrb, r, ncb, c).transpose(0, 2, 1, 3)
    tile_used = pv.any(axis=(2, 3))
    used_cells = int(pv.sum())
    n_tiles = int(tile_used.sum())
    table = _tile_table(cfg, k, p, n_tiles, used_cells)
    return conductance, tile_used, table


def _tile_table(cfg: MappingConfig, k: int, p: int, n_tiles: int, used_cells: int) -> dict[str, Any]:
    """The layer's tile table: grid, allocated tiles, cells used, rows and columns per block."""
    r, c, cw = cfg.rows, cfg.cols, cfg.weight_cols_per_tile
    nrb, ncb = -(-k // r), -(-p // cw)
    return {
        "rows": r,
        "cols": c,
        "n_row_blocks": nrb,
        "n_col_blocks": ncb,
        "weight_cols_per_tile": cw,
        "positions": p,
        "tiles_used": n_tiles,
        "cells_used": used_cells,
        "utilisation": used_cells / (n_tiles * r * c) if n_tiles else 0.0,
        "rows_used_per_block": [min(r, k - i * r) for i in range(nrb)],
        "weight_cols_per_block": [min(cw, p - j * cw) for j in range(ncb)],
    }


def pack_tiles(v: np.ndarray, valid: np.ndarray, cfg: MappingConfig
               ) -> tuple[np.ndarray, np.ndarray, dict[str, Any], np.ndarray]:
    """What `tile_positions` computes, for the allocated tiles only: (T, R, C) float32 tiles
    (equal, bit for bit, to the grid's tiles where tile_used), tile_used and the table; and
    per allocated tile the slot range [lo, hi) of its positions that hold a weight, (T, 2).
    Built one row block at a time, so memory follows the tiles that are programmed, not
    the grid (a depthwise layer's block-diagonal grid is almost all unallocated)."""
    k, p = v.shape
    r, c = cfg.rows, cfg.cols
    cw = cfg.weight_cols_per_tile
    nrb, ncb = -(-k // r), -(-p // cw)
    dg = cfg.g_max - cfg.g_min
    g_mid = cfg.g_min + dg / 2
    differential = cfg.encoding == "differential"
    tile_used = np.zeros((nrb, ncb), dtype=bool)
    for b in range(nrb):  # which tiles hold a weight, first: the output is then filled in place
        kr = min(r, k - b * r)
        vb = np.zeros((r, ncb * cw), dtype=bool)
        vb[:kr, :p] = _rows(valid, b * r, b * r + kr)
        tile_used[b] = vb.reshape(r, ncb, cw).any(axis=(0, 2))
    # One (T, R, C) array written block by block, not a list of blocks concatenated at the
    # end (which held the tiles twice: 1.6 GB at VGG-19's first classifier layer).
    packed = np.empty((int(tile_used.sum()), r, c), dtype=np.float32)
    live = np.zeros((len(packed), 2), dtype=np.int64)
    t0 = 0
    used_cells = 0
    for b in range(nrb):
        kr = min(r, k - b * r)
        vb = np.zeros((r, ncb * cw), dtype=bool)
        vb[:kr, :p] = _rows(valid, b * r, b * r + kr)
        vb = vb.reshape(r, ncb, cw)
        cols = np.nonzero(tile_used[b])[0]
        if not len(cols):
            continue
        ub = np.zeros((r, ncb * cw))
        ub[:kr, :p] = _rows(v, b * r, b * r + kr)
        ub = ub.reshape(r, ncb, cw)[:, cols].transpose(1, 0, 2)  # (t, R, cw)
        vt = vb[:, cols].transpose(1, 0, 2)
        slots = vt.any(axis=1)  # (t, cw): every allocated tile has at least one
        live[t0:t0 + len(cols), 0] = slots.argmax(axis=1)
        live[t0:t0 + len(cols), 1] = cw - slots[:, ::-1].argmax(axis=1)
        tiles = np.full((len(cols), r, c), cfg.g_min, dtype=np.float64)
        if differential:
            tiles[:, :, 0:2 * cw:2] = cfg.g_min + dg * np.maximum(ub, 0.0)
            tiles[:, :, 1:2 * cw:2] = cfg.g_min + dg * np.maximum(-ub, 0.0)
            used_cells += 2 * int(vt.sum())
        else:
            tiles[:, :, :cw] = g_mid + dg / 2 * ub
            tiles[:, :kr, cw] = g_mid
            inside = np.zeros((r, ncb * cw), dtype=bool)
            inside[:kr, :p] = True
            inside = inside.reshape(r, ncb, cw)[:, cols].transpose(1, 0, 2)
            cells = tiles[:, :, :cw]
            cells[~inside] = cfg.g_min
            used_cells += int(vt.sum()) + int(vt[:, :kr].any(axis=2).sum())
        packed[t0:t0 + len(cols)] = tiles  # the float64 → float32 cast of astype, in place
        t0 += len(cols)
    n_tiles = int(tile_used.sum())
    table = _tile_table(cfg, k, p, n_tiles, used_cells)
    return packed, tile_used, table, live
