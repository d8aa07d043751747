"""A chip instance of a packed layer (`--depthwise packed`, xbar.packing).

The devices and circuit are sampled and solved per physical tile, by the same code as any
tile (chip.sample_stack); then each pass (logical tile) reads its own slots into the
logical TileState the per-inference path already uses (d, var, comp, i_max, spans), so
runtime/analog.py does not know the layer is packed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xbar.hardware import HardwareSpec
from xbar.runtime.chip import (CHUNK_CELLS, TileState, circuit_of, compensation_factors, draws_of, live_spans,
                               sample_stack)


def build_packed_tiles(physical: np.ndarray, pack_map: np.ndarray, tile_used: np.ndarray, mapping: dict[str, Any],
                       spec: HardwareSpec, rng: np.random.Generator, k: int, n: int) -> TileState:
    """One packed layer on one chip: `physical` (T_phys, R, C) stored tiles, `pack_map` (T, 5)
    checked (physical, offset, lo, hi, row) per allocated logical tile in tile_used row-major
    order; a pass's rows in use sit on physical rows [row, row + h).

    d, var, comp and spans stay in physical row order (row blocks as the tiles hold them):
    a packed layer's row order crosses row blocks (channel-major, xbar.packing), so it is
    not undone on d as a within-block placement is; the layer routes its inputs instead.

    Random draws are taken for the physical cells only, in physical tile order, in chunks
    (successive draws continue the streams, so the chunk size does not change the chip).
    A position of an allocated logical tile outside its live range has no cell on the chip:
    its d and var are 0 and its compensation factor 1, like an unallocated tile's."""
    nrb, ncb = tile_used.shape
    tp, r, c = physical.shape
    cw = c // 2  # differential only (the converter and the manifest check refuse offset)
    bi, ci = np.nonzero(tile_used)
    phys, off, lo, hi, row0 = (pack_map[:, i] for i in range(5))
    draw = draws_of(spec, rng)
    dev = spec.device
    compensate = spec.drift_compensation != "off" and dev.model != "ideal" and dev.drift
    circuit = circuit_of(spec)

    # The probe of a physical tile drives the union of the rows its passes drive (each pass:
    # its row block's rows < K) at full scale, once per physical tile rather than per pass:
    # the probe's exact solve costs as much as the tile's, and drift acts per cell, so a
    # pass's columns read the same drift ratio whichever of the tile's driven rows feed them.
    # Rows no pass drives are left out, as in the tiles policy. Only the columns passes own
    # are read (see read_cols below): the other cells are padding at G_min without an ADC.
    height = np.minimum(r, k - r * bi)  # rows in use of each pass's row block
    # What a pass reads into its row block: with stacked rows only its own rows (the tile's
    # other rows belong to other passes); otherwise all R, as the tiles policy reads a tile
    # (the rows past K see no input, but their cells count in i_max, the ADC's full scale).
    copy = height if np.any(row0 > 0) else np.full(len(pack_map), r)
    rows = np.zeros((tp, r), dtype=bool)
    for j in range(len(pack_map)):
        rows[phys[j], row0[j]:row0[j] + height[j]] = True
    # Each pass is converted and compensated by its own ADC readings: in 'tile' mode its one
    # ratio sums the probe over its own columns, as a logical tile's does in the tiles policy.
    read_cols = np.zeros((len(pack_map), c), dtype=bool)
    for j in range(len(pack_map)):
        read_cols[j, 2 * off[j]:2 * (off[j] + hi[j] - lo[j])] = True

    d = np.zeros((nrb, r, n), dtype=np.float32)
    d0 = np.zeros((nrb, r, n), dtype=np.float32)  # |d| as programmed: the physical ADC's full scale
    var: np.ndarray | None = None
    comp = np.ones((nrb, n), dtype=np.float32)
    step = max(1, CHUNK_CELLS // (r * c))
    for s0 in range(0, tp, step):
        s1 = min(tp, s0 + step)
        smp = sample_stack(physical[s0:s1], draw((s1 - s0, r, c)), rows[s0:s1], mapping, spec, circuit, compensate)
        passes = np.nonzero((phys >= s0) & (phys < s1))[0]
        local = phys[passes] - s0
        if smp.s2 is not None and var is None:
            var = np.zeros((nrb, r, n), dtype=np.float32)
        if compensate:
            per_slot = compensation_factors(smp.before[local], smp.after[local], read_cols[passes],
                                            spec.drift_compensation, "differential", cw)
        for i, j in enumerate(passes):
            width = hi[j] - lo[j]
            b, q0, s = bi[j], ci[j] * cw + lo[j], off[j]  # row block, first position, first slot
            h, p0 = copy[j], row0[j]  # the pass's rows: physical p0.. p0 + h, its row block's 0..h
            d[b, :h, q0:q0 + width] = smp.w[local[i], p0:p0 + h, s:s + width]
            d0[b, :h, q0:q0 + width] = smp.w0[local[i], p0:p0 + h, s:s + width]
            if smp.s2 is not None:
                cells = smp.s2[local[i], p0:p0 + h, 2 * s:2 * (s + width)]
                var[b, :h, q0:q0 + width] = cells[:, 0::2] + cells[:, 1::2]
            if compensate:
                comp[b, q0:q0 + width] = per_slot[i, s:s + width]
        del smp
    return TileState(d=d, var=var, ref_var=None, block_of=np.arange(n) // cw, comp=comp,
                     i_max=d0.sum(axis=1), k=k,
                     spans=live_spans(tile_used, r, cw, k, n, None))
