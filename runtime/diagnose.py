"""Per-layer diagnostics: which analog layer loses most, and to which non-ideality.

Each layer is judged on its own: its noisy output is compared with the ideal product of
the very inputs it received on the chip, so errors that arrive from earlier layers are not
counted against it. The dominant non-ideality is the one that, switched on alone for that
layer (same chip seed), produces the largest error power.
"""

from __future__ import annotations

from typing import Any

import numpy as np

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


def diagnose(bundle: Bundle, spec: HardwareSpec, x: np.ndarray, seed: int = 0) -> list[dict[str, Any]]:
    rt = Runtime(bundle, spec, seed)
    parts: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    for i, layer in enumerate(rt.layers):
        if layer.chip is not None:
            layer.probe = (lambda idx: lambda lyr, cols, y: parts.setdefault(idx, []).append((cols.copy(), y.copy())))(i)
    rt(x)
    seen = {i: (np.concatenate([c for c, _ in p]), np.concatenate([y for _, y in p])) for i, p in parts.items()}
    active = spec.active_nonidealities()
    report = []
    for i, (cols, y) in seen.items():
        layer = rt.layers[i]
        ideal = cols @ layer.matrix
        entry = bundle.layers[i]
        chip = layer.chip
        x_max = chip.x_max if chip.x_max is not None else np.maximum(np.abs(cols).max(axis=1, keepdims=True), 1e-30)
        dac_clip = float(np.mean(np.abs(cols) > x_max)) if chip.x_max is not None else 0.0
        v = dac(cols, x_max, spec.dac.bits)
        # Clean signal currents of the columns that carry weights, against their full scale.
        currents = per_block(layer.chip_inputs(v), chip.tiles.d, chip.tiles.k)
        adc_clip = float(np.mean(np.abs(currents) > chip.i_fs[:, None, :])) if spec.adc.bits is not None else 0.0
        errors = {}
        for name in active:
            alone = Layer(entry, bundle, ablate(spec, only=[name]), *_rngs(seed, i))
            out = alone.product(cols) if alone.chip is not None else ideal
            errors[name] = float(np.sum((out.astype(np.float64) - ideal) ** 2))
        dominant = max(errors, key=errors.get) if errors else "-"
        report.append({
            "layer": entry["name"],
            "snr_db": _snr_db(ideal, y - ideal),
            "dac_clip": dac_clip,
            "adc_clip": adc_clip,
            "tiles": entry["tiles"]["tiles_used"],
            "dominant": dominant,
            "error_power": errors,
        })
    report.sort(key=lambda row: row["snr_db"])
    return report
