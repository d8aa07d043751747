"""Packed tiles (`--depthwise packed`): several sparse logical tiles share one physical tile.

A depthwise layer's block-diagonal matrix leaves most of every allocated logical tile's
weight positions empty: its rows reach only the few positions of their channels. Packing
places the live position range [lo, hi) of each allocated logical tile on a disjoint slot
range [offset, offset + hi − lo) of a physical R×C tile. The logical tiles of one physical
tile run one after another (time-multiplexed): a pass drives all R rows with its row
block's inputs and only its own columns are converted by the ADC. IR drop is linear in
the drive, so a pass's currents are exactly x @ G_eff[:, its columns] of the physical
tile's circuit, every cell present (the other passes' cells load the row wires).

Storage per packed layer: `packed_tiles` (T_phys, R, C) siemens and `pack_map` (T, 4)
int32, one row per allocated logical tile in tile_used (row-major) order: physical tile,
slot offset, lo, hi (slots and positions in weight-position units, 0..Cw). Cells no pass
owns are padding at G_min. Only the differential encoding packs: an offset tile's one
reference column would be shared by passes whose row blocks differ in height.

Rows: a depthwise matrix's rows are (kernel offset, channel), so in that order a row block
of R rows reaches R channels' positions and every allocated tile's live range fills its
column block (nothing would pack). A packed layer is therefore laid out channel-major
(`row_order`, converter.convert.channel_major): a row block then reaches ~R/∏k channels.
That order crosses row blocks, so for a packed layer `row_order` routes the inputs to the
physical rows (x_phys = x[:, row_order]) and the chip's per-block matrices stay in physical
order (`routes_inputs`); an unpacked layer's within-block placement is undone on its
matrices instead. The ideal matrix (assemble) undoes any row order exactly.

This file is the one place that packs (converter) and unpacks and checks (bundle) them.
"""

from __future__ import annotations

import numpy as np

from xbar.errors import BundleError

MAP_FIELDS = ("physical", "offset", "lo", "hi")


def first_fit(live: np.ndarray, cw: int) -> tuple[np.ndarray, int]:
    """(T, 2) live position ranges [lo, hi) of the allocated logical tiles → (T, 4) pack_map
    and the number of physical tiles.

    First fit in logical tile order: each physical tile fills its slots left to right, and a
    logical tile goes to the first physical tile whose free slots (from its fill mark to Cw)
    hold its range; a new physical tile is opened when none does. Ranges keep their slot
    order inside a tile, so the tile order (row block by row block) keeps neighbouring row
    blocks' ranges together."""
    pack = np.zeros((len(live), 4), dtype=np.int32)
    fill: list[int] = []
    for j, (lo, hi) in enumerate(np.asarray(live, dtype=np.int64)):
        width = int(hi - lo)
        p = next((i for i, f in enumerate(fill) if f + width <= cw), None)
        if p is None:
            p = len(fill)
            fill.append(0)
        pack[j] = (p, fill[p], lo, hi)
        fill[p] += width
    return pack, len(fill)


def pack(tiles: np.ndarray, pack_map: np.ndarray, n_physical: int, g_min: float) -> np.ndarray:
    """(T, R, C) logical tiles → (T_phys, R, C) physical tiles (differential: slot s is
    columns 2s, 2s+1); cells outside every pass's slots stay at G_min."""
    out = np.full((n_physical, *tiles.shape[1:]), g_min, dtype=tiles.dtype)
    for j, (p, off, lo, hi) in enumerate(pack_map):
        out[p, :, 2 * off:2 * (off + hi - lo)] = tiles[j, :, 2 * lo:2 * hi]
    return out


def unpack(physical: np.ndarray, pack_map: np.ndarray, g_min: float) -> np.ndarray:
    """(T_phys, R, C) physical tiles → (T, R, C) logical tiles, positions outside a tile's
    live range at G_min: the converter's tiles-policy tiles, bit for bit."""
    out = np.full((len(pack_map), *physical.shape[1:]), g_min, dtype=physical.dtype)
    for j, (p, off, lo, hi) in enumerate(pack_map):
        out[j, :, 2 * lo:2 * hi] = physical[p, :, 2 * off:2 * (off + hi - lo)]
    return out


def check_map(pack_map: np.ndarray, n_physical: int, n_logical: int, cw: int, layer: str) -> np.ndarray:
    """The pack_map as int64, or BundleError naming the layer and the first bad entry: every
    range inside [0, Cw], non-empty, placed on existing physical tiles, passes of one
    physical tile on disjoint slots, and every physical tile used by some pass."""
    where = f"layer {layer!r}: pack_map"
    fix = "; the bundle is corrupt or was edited by hand (convert the model again)"
    if pack_map.ndim != 2 or pack_map.shape != (n_logical, 4) or not np.issubdtype(pack_map.dtype, np.integer):
        raise BundleError(f"{where} has shape {list(pack_map.shape)} ({pack_map.dtype}), expected [{n_logical}, 4] "
                          f"integers ({', '.join(MAP_FIELDS)}){fix}")
    m = pack_map.astype(np.int64)
    p, off, lo, hi = m.T
    bad = ~((0 <= p) & (p < n_physical) & (0 <= lo) & (lo < hi) & (hi <= cw) & (0 <= off) & (off + hi - lo <= cw))
    if bad.any():
        j = int(np.argmax(bad))
        raise BundleError(f"{where} row {j} {m[j].tolist()} ({', '.join(MAP_FIELDS)}) does not place a range of "
                          f"0..{cw} positions inside one of {n_physical} physical tiles of {cw} slots{fix}")
    order = np.lexsort((off, p))
    ends = (off + hi - lo)[order]
    clash = (p[order][1:] == p[order][:-1]) & (off[order][1:] < ends[:-1])
    if clash.any():
        a, b = order[int(np.argmax(clash))], order[int(np.argmax(clash)) + 1]
        raise BundleError(f"{where} rows {a} and {b} overlap on physical tile {int(p[a])}{fix}")
    unused = np.setdiff1d(np.arange(n_physical), p)
    if len(unused):
        raise BundleError(f"{where} leaves physical tile {int(unused[0])} without a pass{fix}")
    return m


def routes_inputs(entry: dict) -> bool:
    """Whether a layer's row_order routes its inputs to physical rows (packed) rather than
    being undone on its per-block matrices (within-block row placement)."""
    return "pack_map" in entry.get("arrays", {})
