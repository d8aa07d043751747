"""The chip preparation as it was before it was streamed over row blocks (xbar 0.x, format 2):
every cell of every tile sampled at once. Kept only as the exact reference the streamed
`xbar.runtime.chip.build_tiles` is tested against, bit for bit."""

from __future__ import annotations

from typing import Any

import numpy as np

from xbar.hardware import HardwareSpec
from xbar.runtime import devices
from xbar.runtime.chip import TileState, _pair_difference, _probe, _retarget, _stack, weight_rows
from xbar.runtime.irdrop import effective_conductance


def _probe_as_programmed(g0, tile_used, spec, circuit, rows):
    if not spec.circuit.ir_drop:
        return _probe(g0, rows)
    return _probe(circuit(g0), rows)


def reference_build_tiles(conductance: np.ndarray, tile_used: np.ndarray, mapping: dict[str, Any],
                spec: HardwareSpec, rng: np.random.Generator, k: int | None = None, n: int | None = None,
                row_order: np.ndarray | None = None) -> TileState:
    """Sample one layer's devices (programming, faults, drift, frozen read noise if chosen)
    and solve its circuit once."""
    dev = spec.device
    dg = dev.g_max - dev.g_min
    g_t = _retarget(conductance, mapping, dev)
    state = devices.program_devices(g_t, dev, spec.faults, rng)
    t = spec.t_inference
    drifting = dev.model != "ideal" and dev.drift
    g_now = devices.drift(state.g_prog, state.nu, t, dev.t0) if drifting else state.g_prog
    g_now = devices.apply_faults(g_now, state.stuck_min, state.stuck_max, dev.g_min, dev.g_max)
    frozen = dev.read_noise_mode == "frozen"
    if frozen:
        # The deviation is part of what the chip holds at time t, so the circuit solve and
        # the compensation probe below see it. Its stream is a fourth child of the chip's,
        # after program_devices' three, so a seed's other draws match fresh mode's. It does
        # not depend on t: like fresh mode's read stream, one seed's standard normals serve
        # every t, so a time sweep differs only by drift and sigma(t), not by a new draw.
        g_now = devices.read(g_now, t, dev, rng.spawn(1)[0], g_ref=state.g_prog)
    sigma = None if frozen else devices.read_sigma(g_now, t, dev, g_ref=state.g_prog)

    def circuit(g: np.ndarray) -> np.ndarray:
        if not spec.circuit.ir_drop:
            return g
        out = g.copy()
        c = spec.circuit
        out[tile_used] = effective_conductance(g[tile_used], c.r_wire, c.r_driver, c.r_sense, c.solve_dtype)
        return out

    g_eff = circuit(g_now)
    w, _ = _pair_difference(g_eff, mapping["encoding"], dg)
    # The physical ADC's full scale: each column's largest |current| as programmed.
    g0 = devices.apply_faults(state.g_prog, state.stuck_min, state.stuck_max, dev.g_min, dev.g_max)
    w0 = np.abs(_pair_difference(g0, mapping["encoding"], dg)[0])
    nrb, ncb = conductance.shape[:2]
    var = ref_var = None
    if sigma is not None and np.any(sigma):
        s2 = sigma ** 2 / (dg if mapping["encoding"] == "differential" else dg / 2) ** 2
        if mapping["encoding"] == "differential":
            var = _stack(s2[..., 0::2] + s2[..., 1::2], tile_used)
        else:
            cw = s2.shape[-1] - 1
            var = _stack(s2[..., :cw], tile_used)
            ref_var = np.ascontiguousarray((s2[..., cw] * tile_used[:, :, None]).transpose(0, 2, 1)).astype(np.float32)
    d = _stack(w, tile_used)
    d0 = _stack(w0, tile_used)
    cw = w.shape[-1]
    comp = np.ones((nrb, ncb * cw), dtype=np.float32)
    if spec.drift_compensation != "off" and drifting:
        # A fixed probe read right after programming and again at time t; the ratio of the
        # summed currents of the columns that are read out is stored digitally. Only the
        # cells the layer uses take part: rows past K are never driven and padding columns
        # have no ADC, and their devices (at G_min, where PCM drifts fastest) would bias it.
        rows_per_tile = conductance.shape[2]
        k_used = nrb * rows_per_tile if k is None else k
        rows = np.arange(rows_per_tile)[None, :] < k_used - rows_per_tile * np.arange(nrb)[:, None]  # (nrb, R)
        n_used = ncb * cw if n is None else n
        read = (np.arange(ncb)[:, None] * cw + np.arange(cw)[None, :]) < n_used  # (ncb, cw) positions
        if mapping["encoding"] == "differential":
            read_cols = np.repeat(read, 2, axis=1)
        else:
            read_cols = np.concatenate([read, read.any(axis=1, keepdims=True)], axis=1)  # + reference
        read_cols = np.pad(read_cols, ((0, 0), (0, conductance.shape[3] - read_cols.shape[1])))
        before = _probe_as_programmed(g0, tile_used, spec, circuit, rows)
        after = _probe(g_eff, rows)  # (nrb, ncb, C) column currents for the probe
        if spec.drift_compensation == "tile":
            ratio = (before * read_cols).sum(axis=2) / np.maximum((after * read_cols).sum(axis=2), 1e-30)
            comp = np.repeat(ratio[:, :, None], cw, axis=2).reshape(nrb, ncb * cw)
        else:
            if mapping["encoding"] == "differential":
                b, a = before[..., 0::2] + before[..., 1::2], after[..., 0::2] + after[..., 1::2]
            else:
                b, a = before[..., :cw], after[..., :cw]
            comp = (b / np.maximum(a, 1e-30)).reshape(nrb, ncb * cw)
        comp = comp.astype(np.float32)
    k = nrb * conductance.shape[2] if k is None else k
    n = ncb * cw if n is None else n
    d, comp = np.ascontiguousarray(d[:, :, :n]), np.ascontiguousarray(comp[:, :n])
    d0 = np.ascontiguousarray(d0[:, :, :n])
    if var is not None:
        var = np.ascontiguousarray(var[:, :, :n])
    # The circuit was solved where rows physically sit; inference feeds inputs in weight order.
    d = weight_rows(d, row_order)
    var = None if var is None else weight_rows(var, row_order)
    ref_var = None if ref_var is None else weight_rows(ref_var, row_order)
    return TileState(d=d, var=var, ref_var=ref_var, block_of=np.arange(n) // cw, comp=comp,
                     i_max=weight_rows(d0, row_order).sum(axis=1), k=k)
