"""Per-layer diagnostics: which analog layer loses most, and to which non-ideality.

Each layer is judged on its own: its noisy output is compared with the ideal product of
the very inputs it received on the chip, so errors that arrive from earlier layers are not
counted against it. The dominant non-ideality is the one that, switched on alone for that
layer (same chip seed), produces the largest error power.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xbar.affine import FIELDS, Affine
from xbar.bundle import Bundle
from xbar.hardware import HardwareSpec, ablate
from xbar.runtime.analog import dac, per_block
from xbar.runtime.executor import Runtime
from xbar.runtime.layer import Layer


def _rngs(seed: int, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    # The same streams Runtime gives layer `index` for chip `seed`.
    return np.random.default_rng([seed, 0, index]), np.random.default_rng([seed, 1, index])


def _snr_db(signal: np.ndarray, error: np.ndarray) -> float:
    p_err = float(np.sum(error.astype(np.float64) ** 2))
    p_sig = float(np.sum(signal.astype(np.float64) ** 2))
    if p_err == 0:
        return float("inf")
    return 10 * np.log10(max(p_sig, 1e-300) / p_err)


def affine_residual(y: np.ndarray, ideal: np.ndarray) -> np.ndarray:
    """What is left of the error y − ideal after the best per-output affine a·y + b
    (least squares, column by column): the part of a layer's error that re-fitting its
    per-channel scale and shift, which is all `affine` calibration changes, cannot remove."""
    y, ideal = y.astype(np.float64), ideal.astype(np.float64)
    yc, ic = y - y.mean(0), ideal - ideal.mean(0)
    var = (yc ** 2).mean(0)
    a = np.where(var > 0, (yc * ic).mean(0) / np.where(var > 0, var, 1), 1.0)
    b = ideal.mean(0) - a * y.mean(0)
    return a * y + b - ideal


def layer_io(rt: Runtime, x: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Run `x` through the chip and keep, per analog layer index, the inputs it received
    (im2col rows) and what its tiles returned."""
    parts: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    chips = [i for i, layer in enumerate(rt.layers) if layer.chip is not None]
    for i in chips:
        rt.layers[i].probe = (lambda idx: lambda lyr, cols, y: parts.setdefault(idx, []).append((cols.copy(), y.copy())))(i)
    try:
        rt(x)
    finally:
        for i in chips:
            rt.layers[i].probe = None
    return {i: (np.concatenate([c for c, _ in p]), np.concatenate([y for _, y in p])) for i, p in parts.items()}


def _snr_entry(layer: Layer, cols: np.ndarray, y: np.ndarray,
               source: Affine | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """SNRs of the product `y` against the ideal product of `cols`; with `source`, the
    layer's affine as converted, also after the layer's own (calibrated) affine."""
    ideal = cols @ layer.matrix
    err = y - ideal
    resid = affine_residual(y, ideal)
    p_err = float(np.sum(err.astype(np.float64) ** 2))
    own = err
    if source is not None:
        # What the calibrated affine makes of y, in the units of the ideal product: the
        # output gain·y + shift mapped back through the affine the network was converted with.
        g_s = source.gain() * layer.col_scale
        g_c, s_c = layer.gain.astype(np.float64), layer.shift.astype(np.float64)
        live = g_s != 0
        own = np.where(live, (y * g_c + s_c - source.shift()) / np.where(live, g_s, 1.0), y) - ideal
    return ideal, {"snr_db": _snr_db(ideal, err), "snr_own_affine_db": _snr_db(ideal, own),
                   "snr_after_affine_db": _snr_db(ideal, resid),
                   "affine_share": 1 - float(np.sum(resid ** 2)) / p_err if p_err > 0 else None}


def _source_affine(entry: dict[str, Any], bundle: Bundle) -> Affine | None:
    """A calibrated layer's affine as converted (None: never calibrated, so its own)."""
    src = entry.get("source_affine")
    if src is None:
        return None
    return Affine(*(bundle.array(src["arrays"][name]) for name in FIELDS), src["eps"])


def layer_snr(rt: Runtime, x: np.ndarray) -> list[dict[str, Any]]:
    """Per analog layer, in layer order: its own output SNR on the chip `rt` (against the
    ideal product of the inputs it received), the same after the layer's own affine (a
    calibrated one, against the affine it was converted with; else the same figure), the
    SNR left after the best per-output affine fit, and the share of the error power that
    fit removes (None: no error). One run of `x`; no ablations (`diagnose` adds those)."""
    return [{"layer": rt.layers[i].name,
             **_snr_entry(rt.layers[i], cols, y, _source_affine(rt.bundle.layers[i], rt.bundle))[1]}
            for i, (cols, y) in layer_io(rt, x).items()]


def _physical_tiles(table: dict[str, Any]) -> int:
    pk = table.get("packing")
    return table["tiles_used"] if pk is None else pk["physical_tiles"] + pk.get("shared_tiles", 0)


def diagnose(bundle: Bundle, spec: HardwareSpec, x: np.ndarray, seed: int = 0) -> list[dict[str, Any]]:
    rt = Runtime(bundle, spec, seed)
    seen = layer_io(rt, x)
    active = spec.active_nonidealities()
    report = []
    alone_shared: dict[str, dict] = {}  # per non-ideality: the shared tiles of its chip, sampled once

    def shared_cells(name: str, i: int) -> dict | None:
        if not bundle.manifest.get("pool"):
            return None
        if name not in alone_shared:
            from xbar.runtime.packed import sample_shared

            alone_shared[name] = sample_shared(bundle, ablate(spec, only=[name]), seed)
        return alone_shared[name].get(i)

    for i, (cols, y) in seen.items():
        layer = rt.layers[i]
        entry = bundle.layers[i]
        ideal, snr = _snr_entry(layer, cols, y, _source_affine(entry, bundle))
        chip = layer.chip
        x_max = chip.x_max if chip.x_max is not None else np.maximum(np.abs(cols).max(axis=1, keepdims=True), 1e-30)
        dac_clip = float(np.mean(np.abs(cols) > x_max)) if chip.x_max is not None else 0.0
        v = dac(cols, x_max, spec.dac.bits)
        # Clean signal currents of the columns that carry weights, against their full scale.
        currents = per_block(layer.chip_inputs(v), chip.tiles.d, chip.tiles.k)
        adc_clip = float(np.mean(np.abs(currents) > chip.i_fs[:, None, :])) if spec.adc.bits is not None else 0.0
        errors = {}
        for name in active:
            alone = Layer(entry, bundle, ablate(spec, only=[name]), *_rngs(seed, i), shared_cells(name, i))
            out = alone.product(cols) if alone.chip is not None else ideal
            errors[name] = float(np.sum((out.astype(np.float64) - ideal) ** 2))
        dominant = max(errors, key=errors.get) if errors else "-"
        report.append({
            "layer": entry["name"],
            **snr,
            "dac_clip": dac_clip,
            "adc_clip": adc_clip,
            "tiles": entry["tiles"]["tiles_used"],  # allocated (logical) tiles, as `info`'s "tiles" field
            # own tiles, plus the shared ones its passes reach (--pack-tiles, format 6)
            "physical_tiles": _physical_tiles(entry["tiles"]),
            "shared_tiles": (entry["tiles"].get("packing") or {}).get("shared_tiles", 0),
            "dominant": dominant,
            "error_power": errors,
        })
    report.sort(key=lambda row: row["snr_db"])
    return report
