"""A chip instance: what the tiles of each analog layer actually compute.

On ideal hardware the effective matrix of a tile is exactly the programmed one, read back
from the stored conductances: (G+ − G−)/ΔG for differential pairs, (G − G_ref)/(ΔG/2) for
offset columns. Non-ideal chips (later) replace the conductances, never this contract.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from xbar.columns import ColumnMap
from xbar.hardware import HardwareSpec
from xbar.runtime import devices
from xbar.runtime.parallel import in_worker, map_chunks, workers
from xbar.runtime.span_store import SpanStore


def normalised_tiles(conductance: np.ndarray, mapping: dict[str, Any]) -> np.ndarray:
    """(nrb, ncb, R, C) siemens → (nrb, ncb, R, Cw) normalised weights in [-1, 1]."""
    dg = mapping["g_max"] - mapping["g_min"]
    c = conductance.shape[-1]
    if mapping["encoding"] == "differential":
        cw = c // 2
        diff = conductance[..., 0:2 * cw:2].astype(np.float64) - conductance[..., 1:2 * cw:2]
        return (diff / dg).astype(np.float32)
    cw = c - 1
    diff = conductance[..., :cw].astype(np.float64) - conductance[..., cw:cw + 1]
    return (diff / (dg / 2)).astype(np.float32)


def assemble(tiles: np.ndarray, k: int, columns: ColumnMap, row_order: np.ndarray | None = None) -> np.ndarray:
    """Stack tiles back into one K×N matrix: positions in tile order, folded by the column map,
    rows back in weight order."""
    nrb, ncb, r, cw = tiles.shape
    full = tiles.transpose(0, 2, 1, 3).reshape(nrb * r, ncb * cw)[:, :columns.positions]
    return columns.fold(weight_rows(full, row_order)[:k])


def weight_rows(stacked: np.ndarray, row_order: np.ndarray | None) -> np.ndarray:
    """Rows of stacked row blocks, (nrb·R, X) or (nrb, R, X), from tile order back to weight
    order (the converter's row placement undone; rows past K are padding and stay)."""
    if row_order is None:
        return stacked
    flat = stacked.reshape(-1, stacked.shape[-1])
    out = flat.copy()
    out[row_order] = flat[:len(row_order)]
    return out.reshape(stacked.shape)


# --------------------------------------------------------------------------- chip instances


class TileState:
    """What one analog layer's tiles compute on one chip instance, fixed per instance.

    Matrices are in normalised units: inputs in [-1, 1] (fraction of the DAC range), weights
    in [-1, 1] (fraction of the column scale), so a column current of 1 means one fully
    driven row through a fully programmed differential pair.

    Columns are tile positions 0..N−1 only: padding columns are never read out, so they
    are dropped here; rows keep the tile height (the last block's extra rows see no input).
    `d` and `var` are given and read as dense (nrb, R, N) arrays, but when `spans` skips
    tiles they are held as a SpanStore (`d_live`, `var_live`): only the position runs that
    hold something, so a chip's memory follows what is programmed, not the tile grid.
    Reading `d` or `var` builds the dense array again, bit for bit (diagnostics, tests).
    """

    def __init__(self, d: np.ndarray, var: np.ndarray | None, ref_var: np.ndarray | None, block_of: np.ndarray,
                 comp: np.ndarray, i_max: np.ndarray, k: int, spans: list[list[tuple[int, int]]] | None = None):
        # d: (nrb, R, N) float32 effective weights per tile, row blocks stacked; var: the same
        # shape, read-noise variance per unit input², or None.
        self.ref_var = ref_var  # (nrb, R, ncb) float32 offset encoding: reference column variance
        self.block_of = block_of  # (N,) column block of each tile position (whose reference it shares)
        self.comp = comp  # (nrb, N) float32 digital drift-compensation factor (1 = none)
        # (nrb, N) float32 largest |current| of each column as programmed (all inputs at ±1,
        # signed as its weights; before drift, wire losses and read noise): the physical ADC's
        # full scale, fixed when the chip is programmed, so drift lowers the currents, not it.
        self.i_max = i_max
        self.k = k  # rows in use (the layer's K)
        # Per row block (in weight order), the (lo, hi) position ranges whose tiles hold a weight;
        # outside them d, var and ref_var are 0 in the rows in use, so the product skips them.
        # None: all live.
        self.spans = spans
        if spans is None:
            self.d_live, self.var_live = d, var
        else:
            runs = SpanStore.keep([d] if var is None else [d, var], spans)
            self.d_live = SpanStore.pack(d, runs)
            self.var_live = None if var is None else SpanStore.pack(var, runs)

    @property
    def d(self) -> np.ndarray:
        return self.d_live.dense() if isinstance(self.d_live, SpanStore) else self.d_live

    @property
    def var(self) -> np.ndarray | None:
        return self.var_live.dense() if isinstance(self.var_live, SpanStore) else self.var_live


def _retarget(conductance: np.ndarray, mapping: dict[str, Any], device) -> np.ndarray:
    """Stored conductances (mapping window) → targets in this device's window, float64."""
    dg_map = mapping["g_max"] - mapping["g_min"]
    frac = (conductance.astype(np.float64) - mapping["g_min"]) / dg_map
    return device.g_min + frac * (device.g_max - device.g_min)


def _pair_difference(g: np.ndarray, encoding: str, dg: float) -> tuple[np.ndarray, np.ndarray | None]:
    """Physical (…, R, C) → normalised weights (…, R, Cw), and the reference column if offset."""
    c = g.shape[-1]
    if encoding == "differential":
        cw = c // 2
        return (g[..., 0:2 * cw:2] - g[..., 1:2 * cw:2]) / dg, None
    cw = c - 1
    return (g[..., :cw] - g[..., cw:cw + 1]) / (dg / 2), g[..., cw]


def _stack(t: np.ndarray, used: np.ndarray) -> np.ndarray:
    """(nrb, ncb, R, Cw) → (nrb, R, ncb·Cw), zeroing tiles that were never allocated."""
    t = t * used[:, :, None, None]
    nrb, ncb, r, cw = t.shape
    return np.ascontiguousarray(t.transpose(0, 2, 1, 3).reshape(nrb, r, ncb * cw)).astype(np.float32)


# Column currents of the drift-compensation probe as programmed, by content of the array
# and circuit: the same chip (seed) evaluated at several drift times reads the same probe,
# and with IR drop on, its exact solve is half of the chip's preparation. Bounded in bytes.
_PROBE_CACHE: "OrderedDict[tuple, np.ndarray]" = OrderedDict()
_PROBE_LOCK = threading.Lock()
PROBE_CACHE_BYTES = 64 << 20


def _probe(g: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(nrb, ncb, R, C) effective conductances → (nrb, ncb, C) column currents of the probe:
    the rows the layer uses driven at full scale, the others (never driven in use) at 0 V."""
    return np.einsum("brkc,bk->brc", g, rows.astype(g.dtype))


# How the probe's as-programmed currents are solved with IR drop on: "iterative" (one drive
# vector by line relaxation, xbar.runtime.irdrop_probe, node voltages within 1e-12 of the
# drive; exact solve if that bound is not reached) or "exact" (the full G_eff, as the chip).
PROBE_SOLVER = "iterative"
# Tiles per group of the iterative probe, and per part of a layer sampled in parts
# (`sample_parts`): small enough to balance the workers; the probe costs the same per tile in
# groups of 8 as of 32 (3.0-3.9 and 2.9-4.0 ms per 128x128 PCM tile, one core, 2026-12-02).
PROBE_TILES = 8


def _probe_as_programmed(g0: np.ndarray, rows: np.ndarray, spec: HardwareSpec, circuit) -> np.ndarray:
    """(T, 1, C) probe currents of a stack of used tiles (T, 1, R, C) right after programming."""
    if not spec.circuit.ir_drop:
        return _probe(g0, rows)
    c = spec.circuit
    digest = hashlib.blake2b(np.ascontiguousarray(g0).view(np.uint8), digest_size=20)
    digest.update(np.ascontiguousarray(rows).view(np.uint8))
    key = (digest.hexdigest(), g0.shape, float(c.r_wire), float(c.r_driver), float(c.r_sense), c.solve_dtype,
           PROBE_SOLVER)
    with _PROBE_LOCK:  # layers are built on several threads at once
        hit = _PROBE_CACHE.get(key)
        if hit is not None:
            _PROBE_CACHE.move_to_end(key)
            return hit.copy()
    before = None
    if PROBE_SOLVER == "iterative":
        from xbar.runtime.irdrop_probe import probe_currents

        # One drive vector, not the full G_eff: exact to a stated bound (irdrop_probe), or None.
        # In pieces of PROBE_TILES tiles: its ~15 work arrays then stay at a few MB each.
        parts = []
        for s in range(0, g0.shape[0], PROBE_TILES):
            got = probe_currents(g0[s:s + PROBE_TILES, 0], rows[s:s + PROBE_TILES].astype(np.float64),
                                 c.r_wire, c.r_driver, c.r_sense)
            if got is None:
                break
            parts.append(got)
        else:
            before = np.concatenate(parts)[:, None, :] if parts else None
    if before is None:
        before = _probe(circuit(g0), rows)
    with _PROBE_LOCK:
        _PROBE_CACHE[key] = before.copy()
        while sum(v.nbytes for v in _PROBE_CACHE.values()) > PROBE_CACHE_BYTES and len(_PROBE_CACHE) > 1:
            _PROBE_CACHE.popitem(last=False)
    return before


class _Replay:
    """Stands in for a Generator: hands `devices` the draws already taken from the real
    stream (for the used tiles of one chunk), so the device formulas run unchanged."""

    def __init__(self, *draws: np.ndarray | None) -> None:
        self.draws = list(draws)

    def spawn(self, n: int) -> list["_Replay"]:
        return [_Replay(d) for d in self.draws[:n]]

    def _next(self, shape) -> np.ndarray:
        out = self.draws[0]
        if out is None or out.shape != tuple(shape):
            raise AssertionError("chip sampling drew in an unexpected order")  # pragma: no cover
        return out

    def standard_normal(self, shape) -> np.ndarray:
        return self._next(shape)

    def random(self, shape) -> np.ndarray:
        return self._next(shape)


def draws_of(spec: HardwareSpec, rng: np.random.Generator):
    """A function shape -> (programming, drift, fault, frozen read) draws for that many cells,
    each None where the device model takes no such draw. The streams follow the layout of
    devices.program_devices (programming, drift, faults), then the frozen read noise's child,
    spawned in that order; successive calls continue the streams."""
    dev = spec.device
    stat = devices._statistical(dev)
    frozen = dev.read_noise_mode == "frozen"
    p0 = spec.faults.p_stuck_at_gmin if spec.faults is not None else 0.0
    p1 = spec.faults.p_stuck_at_gmax if spec.faults is not None else 0.0
    rng_prog, rng_drift, rng_faults = rng.spawn(3)
    rng_read = rng.spawn(1)[0] if frozen else None
    draw_prog = stat and dev.prog_noise
    draw_drift = stat and dev.drift
    draw_faults = not (p0 == 0 and p1 == 0)
    draw_read = frozen and stat and dev.read_noise

    def draw(shape: tuple[int, ...]) -> list[np.ndarray | None]:
        return [rng_prog.standard_normal(shape) if draw_prog else None,
                rng_drift.standard_normal(shape) if draw_drift else None,
                rng_faults.random(shape) if draw_faults else None,
                rng_read.standard_normal(shape) if draw_read else None]

    return draw


def circuit_of(spec: HardwareSpec):
    """Stored-array conductances (…, R, C) -> effective ones under the spec's IR drop."""
    def circuit(g: np.ndarray) -> np.ndarray:
        if not spec.circuit.ir_drop:
            return g
        from xbar.runtime.irdrop import effective_conductance

        cc = spec.circuit
        return effective_conductance(g, cc.r_wire, cc.r_driver, cc.r_sense, cc.solve_dtype)

    return circuit


# (rows, cols, solve dtype) whose compiled code a thread is loading or has loaded.
_LOADING: set[tuple[int, int, str]] = set()


def load_circuit_code(spec: HardwareSpec, rows: int, cols: int) -> None:
    """Start loading the compiled code of the IR-drop solve and probe on a thread of its own.

    A process's first solve pays Numba's import and the loading of its machine code, ~1 s
    (benchmarks/RESULTS.md, "chips after the first"). Done by the first worker to need it,
    that second stood one core idle (the other workers wait for the code) in a MobileNet-V2
    chip of 8 s; started here, beside the chip's first device formulas, part of it overlaps
    them. Once per process and tile shape; the chip's results do not depend on it."""
    key = (rows, cols, spec.circuit.solve_dtype)
    if not spec.circuit.ir_drop or key in _LOADING:
        return
    _LOADING.add(key)

    def load() -> None:
        try:
            from xbar.runtime.irdrop import load_compiled
            from xbar.runtime.irdrop_probe import probe_currents

            load_compiled(rows, cols, spec.circuit.solve_dtype)
            probe_currents(np.full((1, rows, cols), 1e-5), np.ones((1, rows)), 1.0, 0.0, 0.0)
        except Exception:  # the chip's own first solve meets the same failure and reports it
            _LOADING.discard(key)

    threading.Thread(target=load, name="xbar-load-code", daemon=True).start()


@dataclass
class Sampled:
    """One stack of physical tiles as sampled and solved (`sample_stack`)."""

    w: np.ndarray  # (T, R, Cw) effective normalised weights
    w0: np.ndarray  # (T, R, Cw) float32 |normalised weights| as programmed (no drift, wires or read noise)
    s2: np.ndarray | None  # (T, R, C) read-noise variance per cell in normalised units; None: no read noise
    before: np.ndarray | None  # (T, C) drift-compensation probe right after programming (if compensating)
    after: np.ndarray | None  # (T, C) the same probe at t_inference


def sample_stack(stored: np.ndarray, drawn: list[np.ndarray | None], rows: np.ndarray, mapping: dict[str, Any],
                 spec: HardwareSpec, circuit, compensate: bool) -> Sampled:
    """Program, fault, drift and (frozen) read a stack of physical tiles (T, R, C) from the
    stored conductances and the draws for exactly their cells, solve their circuit, and
    read the compensation probe driving `rows` (T, R) at full scale."""
    dev = spec.device
    dg = dev.g_max - dev.g_min
    enc = mapping["encoding"]
    t = spec.t_inference
    g_t = _retarget(stored, mapping, dev)  # (T, R, C)
    xi_p, xi_d, u_f, xi_r = drawn
    drawn.clear()  # the caller's list: the draws go once the devices are programmed
    state = devices.program_devices(g_t, dev, spec.faults, _Replay(xi_p, xi_d, u_f))
    del xi_p, xi_d, u_f
    g_now = devices.drift(state.g_prog, state.nu, t, dev.t0) if dev.model != "ideal" and dev.drift else state.g_prog
    g_now = devices.apply_faults(g_now, state.stuck_min, state.stuck_max, dev.g_min, dev.g_max)
    frozen = dev.read_noise_mode == "frozen"
    if frozen:
        g_now = devices.read(g_now, t, dev, _Replay(xi_r), g_ref=state.g_prog)
    sigma = None if frozen else devices.read_sigma(g_now, t, dev, g_ref=state.g_prog)
    g_eff = circuit(g_now)
    w, _ = _pair_difference(g_eff, enc, dg)  # (T, R, cw)
    g0 = devices.apply_faults(state.g_prog, state.stuck_min, state.stuck_max, dev.g_min, dev.g_max)
    w0 = np.abs(_pair_difference(g0, enc, dg)[0]).astype(np.float32)
    s2 = None
    if sigma is not None and np.any(sigma):
        s2 = sigma ** 2 / (dg if enc == "differential" else dg / 2) ** 2
    before = after = None
    if compensate:
        # A fixed probe read right after programming and again at time t; the ratio of the
        # summed currents of the columns that are read out is stored digitally.
        before = _probe_as_programmed(g0[:, None], rows, spec, circuit)[:, 0]  # (T, C)
        after = _probe(g_eff[:, None], rows)[:, 0]
    return Sampled(w, w0, s2, before, after)


def sample_parts(stored: np.ndarray, drawn: list[np.ndarray | None], rows: np.ndarray, mapping: dict[str, Any],
                 spec: HardwareSpec, circuit, compensate: bool) -> Sampled:
    """`sample_stack` over the stack cut into parts of PROBE_TILES tiles, run side by side.

    A layer too big to be built beside others has only its circuit solve spread over the
    workers by `effective_conductance`; its device formulas and drift-compensation probe
    would run on one thread while the others wait. Every step works tile by tile except the
    probe's iteration, which runs PROBE_TILES tiles together (they share its stopping
    test), so parts are those groups: the result is the one call's, bit for bit. Small parts
    taken by whichever worker is free keep the workers busy to the end: one part per worker,
    rounded up to whole groups, left MobileNet-V2's 160-tile classifier in parts of 96 and
    64 tiles, one worker idle for a sixth of the layer. The parts read views of `drawn`,
    which therefore stays alive until all are done (one call frees it once the devices are
    programmed). On a worker thread (a layer built beside others) the stack is not cut."""
    t = stored.shape[0]
    if t <= PROBE_TILES or workers() <= 1 or in_worker():  # one part, or parts one after the other
        return sample_stack(stored, drawn, rows, mapping, spec, circuit, compensate)
    starts = list(range(0, t, PROBE_TILES))
    per = PROBE_TILES
    draws = [[None if a is None else a[s:s + per] for a in drawn] for s in starts]
    drawn.clear()
    parts: list[Sampled | None] = [None] * len(starts)

    def run(j: int) -> None:
        s = starts[j]
        parts[j] = sample_stack(stored[s:s + per], draws[j], rows[s:s + per], mapping, spec, circuit, compensate)

    map_chunks(run, len(starts))
    done: list[Sampled] = parts  # type: ignore[assignment]
    noisy = [p.s2 for p in done if p.s2 is not None]

    def joined(field: str) -> np.ndarray | None:
        got = [getattr(p, field) for p in done]
        return None if got[0] is None else np.concatenate(got)

    s2 = None
    if noisy:  # a part whose cells all read noiselessly left s2 at None: zeros there
        s2 = np.concatenate([p.s2 if p.s2 is not None else np.zeros(p.w.shape[:2] + (noisy[0].shape[2],), noisy[0].dtype)
                             for p in done])
    return Sampled(np.concatenate([p.w for p in done]), np.concatenate([p.w0 for p in done]), s2, joined("before"),
                   joined("after"))


def compensation_factors(before: np.ndarray, after: np.ndarray, read_cols: np.ndarray, mode: str, enc: str,
                         cw: int) -> np.ndarray:
    """(T, Cw) float32 drift-compensation factors from the probe currents (T, C): one ratio
    per tile over its read-out columns `read_cols` (T, C) bool ('tile'), or per position."""
    if mode == "tile":
        ratio = (before * read_cols).sum(axis=1) / np.maximum((after * read_cols).sum(axis=1), 1e-30)
        per_pos = np.repeat(ratio[:, None], cw, axis=1)
    elif enc == "differential":
        bsum, asum = before[:, 0::2] + before[:, 1::2], after[:, 0::2] + after[:, 1::2]
        per_pos = bsum / np.maximum(asum, 1e-30)
    else:
        per_pos = before[:, :cw] / np.maximum(after[:, :cw], 1e-30)
    return per_pos.astype(np.float32)


# Cells (of the full tile grid) per chunk of row blocks that build_tiles samples and solves
# at once: float64 intermediates then stay at tens of MB whatever the layer's size.
CHUNK_CELLS = 1 << 22


def build_tiles(conductance: np.ndarray, tile_used: np.ndarray, mapping: dict[str, Any],
                spec: HardwareSpec, rng: np.random.Generator, k: int | None = None, n: int | None = None,
                row_order: np.ndarray | None = None) -> TileState:
    """Sample one layer's devices (programming, faults, drift, frozen read noise if chosen)
    and solve its circuit once. `conductance` is the allocated tiles (T, R, C) as a format-3
    bundle stores them, or the whole grid (nrb, ncb, R, C).

    Streamed over chunks of row blocks, and only tiles that hold a weight (`tile_used`) are
    computed: a tile that was never allocated contributes exact zeros to d and var, as it
    always did, and its drift-compensation factor is 1 (it has no ADC to compensate). The
    random streams are still drawn for every cell of the tile grid in the original order, so
    a seed gives the same chip as the unstreamed version, bit for bit (tests/_chip_reference).
    """
    dev = spec.device
    enc = mapping["encoding"]
    nrb, ncb = tile_used.shape
    r, c = conductance.shape[-2:]
    if conductance.ndim == 4:  # the whole grid (format 1, 2; tests): keep the allocated tiles
        conductance = conductance[tile_used]
    # conductance: (T, R, C) allocated tiles, row-major in tile_used order; row block b's
    # tiles are conductance[first[b]:first[b + 1]].
    first = np.concatenate([[0], np.cumsum(tile_used.sum(axis=1))])
    cw = c // 2 if enc == "differential" else c - 1
    k = nrb * r if k is None else k
    n = ncb * cw if n is None else n
    draw = draws_of(spec, rng)
    compensate = spec.drift_compensation != "off" and dev.model != "ideal" and dev.drift

    d = np.zeros((nrb, r, n), dtype=np.float32)
    d0 = np.zeros((nrb, r, n), dtype=np.float32)  # |d| as programmed: the physical ADC's full scale
    var: np.ndarray | None = None
    ref_var: np.ndarray | None = None
    comp = np.ones((nrb, n), dtype=np.float32)
    # Probe rows (the rows the layer uses) and read-out columns (positions < N, + reference).
    rows_all = np.arange(r)[None, :] < k - r * np.arange(nrb)[:, None]  # (nrb, R)
    read = (np.arange(ncb)[:, None] * cw + np.arange(cw)[None, :]) < n  # (ncb, cw)
    if enc == "differential":
        read_cols = np.repeat(read, 2, axis=1)
    else:
        read_cols = np.concatenate([read, read.any(axis=1, keepdims=True)], axis=1)
    read_cols = np.pad(read_cols, ((0, 0), (0, c - read_cols.shape[1])))
    circuit = circuit_of(spec)

    step = max(1, CHUNK_CELLS // max(1, ncb * r * c))
    for b0 in range(0, nrb, step):
        b1 = min(nrb, b0 + step)
        used = tile_used[b0:b1]
        drawn = draw((b1 - b0, ncb, r, c))
        if not used.any():
            continue
        bi, ci = np.nonzero(used)
        drawn = [None if a is None else a[used] for a in drawn]
        bb = bi + b0
        # Only the cells the layer uses take part in the probe: rows past K are never driven
        # and padding columns have no ADC, and their devices (at G_min, where PCM drifts
        # fastest) would bias it.
        smp = sample_parts(conductance[first[b0]:first[b1]], drawn, rows_all[bb], mapping, spec, circuit, compensate)
        del drawn
        for j in range(len(bi)):
            lo = ci[j] * cw
            hi = min(lo + cw, n)
            if hi > lo:
                d[bb[j], :, lo:hi] = smp.w[j, :, :hi - lo]
                d0[bb[j], :, lo:hi] = smp.w0[j, :, :hi - lo]
        if smp.s2 is not None:
            s2 = smp.s2
            if var is None:
                var = np.zeros((nrb, r, n), dtype=np.float32)
                if enc != "differential":
                    ref_var = np.zeros((nrb, r, ncb), dtype=np.float32)
            sv = s2[..., 0::2] + s2[..., 1::2] if enc == "differential" else s2[..., :cw]
            for j in range(len(bi)):
                lo = ci[j] * cw
                hi = min(lo + cw, n)
                if hi > lo:
                    var[bb[j], :, lo:hi] = sv[j, :, :hi - lo]
                if ref_var is not None:
                    ref_var[bb[j], :, ci[j]] = s2[j, :, cw]
        if compensate:
            per_pos = compensation_factors(smp.before, smp.after, read_cols[ci], spec.drift_compensation, enc, cw)
            for j in range(len(bi)):
                lo = ci[j] * cw
                hi = min(lo + cw, n)
                if hi > lo:
                    comp[bb[j], lo:hi] = per_pos[j, :hi - lo]
    # The circuit was solved where rows physically sit; inference feeds inputs in weight order.
    d = weight_rows(d, row_order)
    var = None if var is None else weight_rows(var, row_order)
    ref_var = None if ref_var is None else weight_rows(ref_var, row_order)
    return TileState(d=d, var=var, ref_var=ref_var, block_of=np.arange(n) // cw, comp=comp,
                     i_max=weight_rows(d0, row_order).sum(axis=1), k=k,
                     spans=live_spans(tile_used, r, cw, k, n, row_order))


def live_spans(tile_used: np.ndarray, r: int, cw: int, k: int, n: int,
               row_order: np.ndarray | None) -> list[list[tuple[int, int]]] | None:
    """Per row block of the weight-order matrices, the runs of tile positions [lo, hi) that
    any allocated tile reaches from the block's rows in use (< K); None if nothing is skipped.
    Rows are mapped back from tile order as `weight_rows` maps d, so a skipped range is one
    where every row of the block came from an unallocated tile: its d, var, ref_var are 0."""
    nrb, ncb = tile_used.shape
    rows = weight_rows(np.repeat(tile_used, r, axis=0), row_order).reshape(nrb, r, ncb)
    spans: list[list[tuple[int, int]]] = []
    skipped = False
    for b in range(nrb):
        live = rows[b, :max(0, min(r, k - b * r))].any(axis=0)
        live &= np.arange(ncb) * cw < n
        skipped |= not live[np.arange(ncb) * cw < n].all()
        runs, c = [], 0
        while c < ncb:
            if live[c]:
                e = c
                while e + 1 < ncb and live[e + 1]:
                    e += 1
                runs.append((c * cw, min((e + 1) * cw, n)))
                c = e + 1
            else:
                c += 1
        spans.append(runs)
    return spans if skipped else None
