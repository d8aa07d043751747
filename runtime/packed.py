"""A chip instance of packed tiles (`--depthwise packed`, `--pack-tiles`; xbar.packing).

The devices and circuit are sampled and solved per physical tile, by the same code as any
tile (chip.sample_parts); then each pass (logical tile) reads its own cells into the
logical TileState the per-inference path already uses (d, var, comp, i_max, spans), so
runtime/analog.py does not know the layer is packed. Tiles that layers share (format 6)
are sampled once per chip, before the layers (`sample_shared`), and each layer reads its
passes' cells from that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from xbar.bundle import Bundle, shared_passes, shared_tiles
from xbar.hardware import HardwareSpec
from xbar.runtime.chip import (CHUNK_CELLS, TileState, circuit_of, compensation_factors, draws_of, live_spans,
                               sample_parts)

#: The cells of one pass as sampled: d (h, w), |d| as programmed (h, w), read-noise variance
#: (h, w) or None, drift-compensation factors (w,) or None.
Cells = tuple[np.ndarray, np.ndarray, "np.ndarray | None", "np.ndarray | None"]


@dataclass
class Passes:
    """Passes on a stack of physical tiles: tile, first slot, width in slots, first physical
    row, rows driven (the probe's), rows read into the logical tile; each (P,) int64."""

    tile: np.ndarray
    slot: np.ndarray
    width: np.ndarray
    row: np.ndarray
    driven: np.ndarray
    copied: np.ndarray


def sample_passes(physical: np.ndarray, passes: Passes, mapping: dict[str, Any], spec: HardwareSpec,
                  rng: np.random.Generator, put: Callable[..., None]) -> None:
    """Sample the physical tiles (T_phys, R, C) of one chip and hand each pass j its cells:
    put(j, *Cells).

    Random draws are taken for the physical cells only, in physical tile order, in chunks
    (successive draws continue the streams, so the chunk size does not change the chip).

    The probe of a physical tile drives the union of the rows its passes drive at full scale,
    once per physical tile rather than per pass: the probe's exact solve costs as much as the
    tile's, and drift acts per cell, so a pass's columns read the same drift ratio whichever
    of the tile's driven rows feed them. Rows no pass drives are left out, as in the tiles
    policy. Each pass is converted and compensated by its own ADC readings: in 'tile' mode its
    one ratio sums the probe over its own columns, as a logical tile's does unpacked."""
    tp, r, c = physical.shape
    cw = c // 2  # differential only (the converter and the manifest check refuse offset)
    dev = spec.device
    compensate = spec.drift_compensation != "off" and dev.model != "ideal" and dev.drift
    circuit = circuit_of(spec)
    draw = draws_of(spec, rng)
    rows = np.zeros((tp, r), dtype=bool)
    read_cols = np.zeros((len(passes.tile), c), dtype=bool)
    for j, (t, s, w, p0, h) in enumerate(zip(passes.tile, passes.slot, passes.width, passes.row, passes.driven)):
        rows[t, p0:p0 + h] = True
        read_cols[j, 2 * s:2 * (s + w)] = True
    step = max(1, CHUNK_CELLS // (r * c))
    for s0 in range(0, tp, step):
        s1 = min(tp, s0 + step)
        smp = sample_parts(physical[s0:s1], draw((s1 - s0, r, c)), rows[s0:s1], mapping, spec, circuit, compensate)
        js = np.nonzero((passes.tile >= s0) & (passes.tile < s1))[0]
        local = passes.tile[js] - s0
        per_slot = (compensation_factors(smp.before[local], smp.after[local], read_cols[js], spec.drift_compensation,
                                         "differential", cw) if compensate else None)
        for i, j in enumerate(js):
            t, p0, h, s, w = local[i], passes.row[j], passes.copied[j], passes.slot[j], passes.width[j]
            var = None
            if smp.s2 is not None:
                cells = smp.s2[t, p0:p0 + h, 2 * s:2 * (s + w)]
                var = cells[:, 0::2] + cells[:, 1::2]
            put(j, smp.w[t, p0:p0 + h, s:s + w], smp.w0[t, p0:p0 + h, s:s + w], var,
                None if per_slot is None else per_slot[i, s:s + w])
        del smp


def build_packed_tiles(physical: np.ndarray, pack_map: np.ndarray, tile_used: np.ndarray, mapping: dict[str, Any],
                       spec: HardwareSpec, rng: np.random.Generator, k: int, n: int,
                       shared: dict[int, Cells] | None = None) -> TileState:
    """One packed layer on one chip: `physical` (T_phys, R, C) its own stored tiles,
    `pack_map` (T, 6) checked (physical, offset, lo, hi, row, shared) per allocated logical
    tile in tile_used row-major order; a pass's rows in use sit on physical rows
    [row, row + h). `shared`: the cells of the passes on shared tiles, by pass index
    (`sample_shared`), needed when any pass is.

    d, var, comp and spans stay in physical row order (row blocks as the tiles hold them):
    a packed layer's row order crosses row blocks (channel-major, xbar.packing), so it is
    not undone on d as a within-block placement is; the layer routes its inputs instead.
    A position of an allocated logical tile outside its live range has no cell on the chip:
    its d and var are 0 and its compensation factor 1, like an unallocated tile's."""
    nrb, ncb = tile_used.shape
    r = physical.shape[1]
    cw = physical.shape[2] // 2
    bi, ci = np.nonzero(tile_used)
    phys, off, lo, hi, row0, on_pool = (pack_map[:, i] for i in range(6))
    height = np.minimum(r, k - r * bi)  # rows in use of each pass's row block
    # What a pass reads into its row block: with stacked rows or shared tiles only its own
    # rows (the tile's other rows belong to other passes); otherwise all R, as the tiles
    # policy reads a tile (the rows past K see no input, but their cells count in i_max, the
    # ADC's full scale).
    copy = height if np.any(row0 > 0) or np.any(on_pool) else np.full(len(pack_map), r)

    d = np.zeros((nrb, r, n), dtype=np.float32)
    d0 = np.zeros((nrb, r, n), dtype=np.float32)  # |d| as programmed: the physical ADC's full scale
    var: list[np.ndarray] = []  # made when a pass first brings read noise
    comp = np.ones((nrb, n), dtype=np.float32)

    def put(j: int, w: np.ndarray, w0: np.ndarray, v: np.ndarray | None, cp: np.ndarray | None) -> None:
        b, q0, width, h = bi[j], ci[j] * cw + lo[j], hi[j] - lo[j], copy[j]
        d[b, :h, q0:q0 + width] = w
        d0[b, :h, q0:q0 + width] = w0
        if v is not None:
            if not var:
                var.append(np.zeros((nrb, r, n), dtype=np.float32))
            var[0][b, :h, q0:q0 + width] = v
        if cp is not None:
            comp[b, q0:q0 + width] = cp

    own = np.nonzero(on_pool == 0)[0]
    if len(own):
        sample_passes(physical, Passes(phys[own], off[own], (hi - lo)[own], row0[own], height[own], copy[own]),
                      mapping, spec, rng, lambda i, *cells: put(own[i], *cells))
    for j in np.nonzero(on_pool == 1)[0]:
        if shared is None or j not in shared:
            raise ValueError("a layer with passes on shared tiles is built with its chip's shared cells "
                             "(xbar.runtime.packed.sample_shared)")
        put(j, *shared[j])
    return TileState(d=d, var=var[0] if var else None, ref_var=None, block_of=np.arange(n) // cw, comp=comp,
                     i_max=d0.sum(axis=1), k=k, spans=live_spans(tile_used, r, cw, k, n, None))


def sample_shared(bundle: Bundle, spec: HardwareSpec, seed: int) -> dict[int, dict[int, Cells]]:
    """The tiles layers share on the chip of `seed`, sampled once: per layer index, per pass
    index, its cells (float32 copies, as the layers' own arrays hold them). Their draws come
    from a stream of their own, so adding or removing a layer's own tiles does not move them."""
    pool = shared_tiles(bundle)
    found = shared_passes(bundle)
    out: dict[int, dict[int, Cells]] = {i: {} for i, _, _ in found}
    if pool is None:
        return out
    refs = [(i, int(j)) for i, m, _ in found for j in np.nonzero(m[:, 5] == 1)[0]]
    if not refs:
        return out
    cols = {i: (m, h) for i, m, h in found}
    pick = np.array([cols[i][0][j] for i, j in refs], dtype=np.int64)
    heights = np.array([cols[i][1][j] for i, j in refs], dtype=np.int64)

    def keep(q: int, w: np.ndarray, w0: np.ndarray, v: np.ndarray | None, cp: np.ndarray | None) -> None:
        i, j = refs[q]
        out[i][j] = (w.astype(np.float32), w0.astype(np.float32), None if v is None else v.astype(np.float32),
                     None if cp is None else cp.copy())

    sample_passes(pool, Passes(pick[:, 0], pick[:, 1], pick[:, 3] - pick[:, 2], pick[:, 4], heights, heights),
                  bundle.manifest["mapping"], spec, np.random.default_rng([seed, 2, 0]), keep)
    return out
