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

Stacked rows (`--pack-tiles`, format 5): a fifth column, row, places a logical tile's rows
in use (h: all R, or the K − b·R of a last row block b) on physical rows [row, row + h).
Its pass drives only those rows (the others at 0 V) and converts only its columns; by
linearity its currents are x @ G_eff[row:row + h, its columns] of the whole tile. This is
what packs the partly used last row blocks of layers whose K is not a multiple of R (a
MobileNet's K = 144 leaves 16 of a block's 128 rows in use), which column ranges cannot.
`shelf_fit` places them; a 4-column map reads as row 0 (`check_map` returns 6 columns).

Shared tiles (`--pack-tiles`, format 6): packing each layer's partly used tiles among
themselves leaves every layer's last physical tile partly used, and networks of many small
layers (MobileNet-V2: 52 layers, K×N such as 96×24) lose ~5 % of their tiles to that. So the
partly used logical tiles of all layers share one pool of physical tiles (`pool_layers`,
shelf first fit by decreasing height over the whole network); a layer keeps its full tiles
as its own. A sixth column, shared, says which a pass sits on: 0 the layer's own
`packed_tiles`, 1 the bundle's `pool/tiles` (manifest `pool`). A pass of one layer drives
only its rows, so other layers' cells on the tile are what the stacked rows above already
are: devices loading the wires. A 5-column map reads as shared 0.

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

MAP_FIELDS = ("physical", "offset", "lo", "hi", "row", "shared")
#: The bundle array of the shared tiles (format 6), (T_pool, R, C) siemens.
POOL_KEY = "pool/tiles"


def pass_heights(tile_used: np.ndarray, k: int, r: int) -> np.ndarray:
    """(T,) rows in use of each allocated logical tile, in tile_used row-major order."""
    blocks = np.nonzero(tile_used)[0]
    return np.minimum(r, k - blocks * r).astype(np.int64)


def shelf_fit(live: np.ndarray, heights: np.ndarray, cw: int, r: int) -> tuple[np.ndarray, int]:
    """(T, 2) live position ranges and (T,) heights of the allocated logical tiles → (T, 5)
    pack_map (physical, offset, lo, hi, row) and the number of physical tiles.

    Shelf first fit in logical tile order: a physical tile is cut into shelves of rows, each
    filled left to right with ranges; a logical tile goes on the first shelf (of any tile)
    at least as high as it with room for its range, else opens a shelf of its own height
    where a tile has the rows left, else a new tile."""
    pack = np.zeros((len(live), 5), dtype=np.int32)
    shelves: list[list[list[int]]] = []  # per physical tile: [row, height, fill] per shelf
    for j, ((lo, hi), h) in enumerate(zip(np.asarray(live, dtype=np.int64), np.asarray(heights, dtype=np.int64))):
        width, h = int(hi - lo), int(h)
        spot = next(((p, sh) for p, tile in enumerate(shelves) for sh in tile
                     if sh[1] >= h and sh[2] + width <= cw), None)
        if spot is None:
            p = next((p for p, tile in enumerate(shelves) if sum(sh[1] for sh in tile) + h <= r), None)
            if p is None:
                p = len(shelves)
                shelves.append([])
            sh = [sum(x[1] for x in shelves[p]), h, 0]
            shelves[p].append(sh)
            spot = (p, sh)
        p, sh = spot
        pack[j] = (p, sh[2], lo, hi, sh[0])
        sh[2] += width
    return pack, len(shelves)


def _rows(pack_map: np.ndarray, heights: np.ndarray | None, r: int) -> tuple[np.ndarray, np.ndarray]:
    """(row offset, height) of every pass: a 4-column map's passes span all R rows from 0."""
    if pack_map.shape[1] < 5:
        return np.zeros(len(pack_map), dtype=np.int64), np.full(len(pack_map), r, dtype=np.int64)
    return pack_map[:, 4].astype(np.int64), np.asarray(heights, dtype=np.int64)


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


def pack(tiles: np.ndarray, pack_map: np.ndarray, n_physical: int, g_min: float,
         heights: np.ndarray | None = None) -> np.ndarray:
    """(T, R, C) logical tiles → (T_phys, R, C) physical tiles (differential: slot s is
    columns 2s, 2s+1); cells outside every pass's slots stay at G_min. `heights` (T,): the
    rows in use per logical tile, needed for a 5-column (stacked rows) map."""
    out = np.full((n_physical, *tiles.shape[1:]), g_min, dtype=tiles.dtype)
    rows, hs = _rows(pack_map, heights, tiles.shape[1])
    for j, (p, off, lo, hi) in enumerate(pack_map[:, :4]):
        out[p, rows[j]:rows[j] + hs[j], 2 * off:2 * (off + hi - lo)] = tiles[j, :hs[j], 2 * lo:2 * hi]
    return out


def unpack(physical: np.ndarray, pack_map: np.ndarray, g_min: float, heights: np.ndarray | None = None,
           shared: np.ndarray | None = None) -> np.ndarray:
    """(T_phys, R, C) physical tiles → (T, R, C) logical tiles, positions outside a tile's
    live range (and rows past its height) at G_min: the converter's tiles-policy tiles, bit
    for bit. `shared`: the pool tiles the passes of a 6-column map with shared 1 sit on."""
    out = np.full((len(pack_map), *physical.shape[1:]), g_min, dtype=physical.dtype)
    rows, hs = _rows(pack_map, heights, physical.shape[1])
    on_pool = pack_map[:, 5] if pack_map.shape[1] > 5 else np.zeros(len(pack_map), dtype=np.int64)
    for j, (p, off, lo, hi) in enumerate(pack_map[:, :4]):
        src = shared if on_pool[j] else physical
        out[j, :hs[j], 2 * lo:2 * hi] = src[p, rows[j]:rows[j] + hs[j], 2 * off:2 * (off + hi - lo)]
    return out


def check_map(pack_map: np.ndarray, n_physical: int, n_logical: int, cw: int, layer: str,
              heights: np.ndarray | None = None, r: int | None = None, n_shared: int = 0) -> np.ndarray:
    """The pack_map as (T, 6) int64 (a 4-column map gets row 0, a 4- or 5-column map shared
    0), or BundleError naming the layer and the first bad entry: every range inside [0, Cw],
    non-empty, placed on existing physical tiles (its own `n_physical`, or the `n_shared`
    pool tiles) and, with stacked rows, its `heights` rows inside the tile's `r`; passes on
    the layer's own tiles on disjoint cells, and every own tile used by a pass. Passes on
    pool tiles are checked against every layer's by `check_pool`."""
    where = f"layer {layer!r}: pack_map"
    if (pack_map.ndim != 2 or pack_map.shape[0] != n_logical or pack_map.shape[1] not in (4, 5, 6)
            or not np.issubdtype(pack_map.dtype, np.integer)):
        raise BundleError(f"{where} has shape {list(pack_map.shape)} ({pack_map.dtype}), expected [{n_logical}, 4] "
                          f"to [{n_logical}, 6] integers ({', '.join(MAP_FIELDS)}){_FIX}")
    m = pack_map.astype(np.int64)
    if m.shape[1] == 4:
        m = np.concatenate([m, np.zeros((len(m), 1), dtype=np.int64)], axis=1)
        h = np.full(len(m), r if r is not None else 1, dtype=np.int64)
    else:
        h = np.asarray(heights, dtype=np.int64)
    if m.shape[1] == 5:
        m = np.concatenate([m, np.zeros((len(m), 1), dtype=np.int64)], axis=1)
    p, off, lo, hi, row, on_pool = m.T
    limit = np.where(on_pool == 1, n_shared, n_physical)
    bad = ~((0 <= p) & (p < limit) & (0 <= lo) & (lo < hi) & (hi <= cw) & (0 <= off) & (off + hi - lo <= cw)
            & ((on_pool == 0) | (on_pool == 1)))
    if r is not None:
        bad |= ~((0 <= row) & (row + h <= r))
    if bad.any():
        j = int(np.argmax(bad))
        raise BundleError(f"{where} row {j} {m[j].tolist()} ({', '.join(MAP_FIELDS)}) does not place a range of "
                          f"0..{cw} positions inside one of {n_physical} physical tiles (or {n_shared} shared ones) "
                          f"of {cw} slots{f' and {r} rows' if r is not None else ''}{_FIX}")
    own = on_pool == 0
    for t in np.unique(p[own]):  # passes of one tile: disjoint rectangles of rows × slots
        js = np.nonzero(own & (p == t))[0]
        for i, a in enumerate(js):
            for b in js[i + 1:]:
                if (off[a] < off[b] + hi[b] - lo[b] and off[b] < off[a] + hi[a] - lo[a]
                        and row[a] < row[b] + h[b] and row[b] < row[a] + h[a]):
                    raise BundleError(f"{where} rows {a} and {b} overlap on physical tile {int(t)}{_FIX}")
    unused = np.setdiff1d(np.arange(n_physical), p[own])
    if len(unused):
        raise BundleError(f"{where} leaves physical tile {int(unused[0])} without a pass{_FIX}")
    return m


_FIX = "; the bundle is corrupt or was edited by hand (convert the model again)"


def check_pool(passes: list[tuple[str, np.ndarray, np.ndarray]], shape: tuple[int, ...]) -> None:
    """BundleError unless the passes that sit on pool tiles, over all layers, cover disjoint
    cells and leave no pool tile without a pass. `passes`: per layer (name, its checked
    (T, 6) map, its pass heights); `shape` the pool's (T_pool, R, C)."""
    taken = np.full((shape[0], shape[1], shape[2] // 2), -1, dtype=np.int64)
    names = [name for name, _, _ in passes]
    for i, (name, m, h) in enumerate(passes):
        for j in np.nonzero(m[:, 5] == 1)[0]:
            p, off, lo, hi, row = (int(v) for v in m[j, :5])
            cells = taken[p, row:row + int(h[j]), off:off + hi - lo]
            if (cells >= 0).any():
                other = names[int(cells[cells >= 0][0])]
                raise BundleError(f"layer {name!r}: pack_map row {j} overlaps a pass of layer {other!r} on shared "
                                  f"tile {p}{_FIX}")
            cells[...] = i
    unused = np.nonzero((taken < 0).all(axis=(1, 2)))[0]
    if len(unused):
        raise BundleError(f"shared tile {int(unused[0])} of {shape[0]} holds no layer's pass{_FIX}")


def pool_layers(layers: list[dict], arrays: dict[str, np.ndarray], live: dict[int, np.ndarray], rows: int, cw: int,
                g_min: float, keep_map: set[int] = frozenset()) -> dict | None:
    """Share the partly used tiles of the analog layers in `live` (layer index → (T, 2) live
    position ranges of its allocated tiles, which it holds as plain `tiles`) on pool tiles.

    A layer whose tiles are all full (R rows, Cw positions) keeps them as plain tiles, unless
    it is in `keep_map` (its row order crosses row blocks, so its inputs must be routed: a
    `--depthwise packed` layer). Any other layer gets `packed_tiles` (its full tiles, one pass
    each) and a 6-column `pack_map`; its partly used tiles go to the pool, placed by shelf
    first fit over the whole network, tallest first (ties in layer and tile order).
    Rewrites the layers' arrays and tile tables in place and adds `POOL_KEY` to `arrays`;
    returns the manifest's `pool` record, or None if no tile is partly used."""
    parts: list[tuple[int, int, int, int, int]] = []  # (layer, logical tile, lo, hi, height)
    for i, lv in live.items():
        e = layers[i]
        used = arrays[e["arrays"]["tile_used"]].astype(bool)
        h = pass_heights(used, e["K"], rows)
        for j in np.nonzero((lv[:, 1] - lv[:, 0] < cw) | (h < rows))[0]:
            parts.append((i, int(j), int(lv[j, 0]), int(lv[j, 1]), int(h[j])))
    if not parts:
        return None
    table = np.array(parts, dtype=np.int64)
    order = np.argsort(-table[:, 4], kind="stable")
    placed, n_pool = shelf_fit(table[order, 2:4], table[order, 4], cw, rows)
    where = np.empty_like(placed)
    where[order] = placed
    logical = np.stack([arrays[layers[i]["arrays"]["tiles"]][j] for i, j in table[:, :2]])
    pool = pack(logical, where, n_pool, g_min, table[:, 4])
    del logical
    per_tile = np.bincount(where[:, 0], minlength=n_pool)
    for i, lv in live.items():
        e, keys = layers[i], layers[i]["arrays"]
        mine = np.nonzero(table[:, 0] == i)[0]
        if not len(mine) and i not in keep_map:
            continue
        tiles = arrays.pop(keys.pop("tiles"))
        full = np.ones(len(tiles), dtype=bool)
        full[table[mine, 1]] = False
        m = np.zeros((len(tiles), 6), dtype=np.int32)
        m[full, 0] = np.arange(int(full.sum()))
        m[:, 2:4] = lv
        m[table[mine, 1]] = np.column_stack([where[mine], np.ones(len(mine), dtype=where.dtype)])
        prefix = f"layers/{i:03d}"
        keys["packed_tiles"], keys["pack_map"] = f"{prefix}/packed_tiles", f"{prefix}/pack_map"
        arrays[keys["packed_tiles"]] = np.ascontiguousarray(tiles[full])
        arrays[keys["pack_map"]] = m
        t = e["tiles"]
        shared = np.unique(m[~full, 0])
        t["packing"] = {"physical_tiles": int(full.sum()), "shared_tiles": int(len(shared)),
                        "passes_per_vector": len(m),
                        "max_passes_per_tile": int(max(np.bincount(m[~full, 0]).max(initial=0), full.any())),
                        "positions_converted": int((lv[:, 1] - lv[:, 0]).sum()),
                        # of the tiles its passes reach, shared ones counted whole
                        "utilisation": t["cells_used"] / max(1, (int(full.sum()) + len(shared)) * rows * 2 * cw)}
    arrays[POOL_KEY] = pool
    owners = np.unique(np.stack([where[:, 0], table[:, 0]], axis=1), axis=0)[:, 0]  # (tile, layer) pairs
    return {"tiles": POOL_KEY, "physical_tiles": int(n_pool), "passes": len(parts),
            # tiles holding passes of more than one layer (the rest pack one layer's tiles)
            "multi_layer_tiles": int((np.bincount(owners, minlength=n_pool) > 1).sum()),
            "layers": len({int(i) for i in table[:, 0]}), "max_passes_per_tile": int(per_tile.max(initial=0)),
            "utilisation": float(sum((hi - lo) * h for _, _, lo, hi, h in parts) / (n_pool * rows * cw))}


def routes_inputs(entry: dict) -> bool:
    """Whether a layer's row_order routes its inputs to physical rows (packed) rather than
    being undone on its per-block matrices (within-block row placement)."""
    return "pack_map" in entry.get("arrays", {})
