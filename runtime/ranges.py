"""DAC input ranges and ADC full scales from calibration data.

Run the bundle on ideal hardware over calibration inputs, keep a random subsample of each
analog layer's input vectors, and take percentiles: of |x| for the layer's DAC range, and
of each tile column's |current| for its ADC full scale. Full scales are found for both
DAC policies (a calibrated fixed range, and abs-max scaling of every input vector), since
the current a column sees depends on how its inputs were scaled.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np

from xbar.bundle import Bundle
from xbar.hardware import HardwareSpec
from xbar.runtime.analog import per_block
from xbar.runtime.chip import normalised_tiles
from xbar.runtime.evaluate import batches

MAX_VECTORS = 16384  # input vectors kept per layer: the 99.99th percentile is then the 2nd largest


def _ideal_tiles(bundle: Bundle, entry: dict[str, Any]) -> np.ndarray:
    keys = entry["arrays"]
    t = normalised_tiles(bundle.array(keys["conductance"]), bundle.manifest["mapping"])
    t = t * bundle.array(keys["tile_used"])[:, :, None, None]
    nrb, ncb, r, cw = t.shape
    return np.ascontiguousarray(t.transpose(0, 2, 1, 3).reshape(nrb, r, ncb * cw))


def _column_percentile(v: np.ndarray, d: np.ndarray, pct: float, n: int) -> np.ndarray:
    """Percentile of |current| per tile column; padding columns (beyond N) get 0."""
    y = np.abs(per_block(v.astype(np.float32), np.ascontiguousarray(d[:, :, :n]), v.shape[1]))  # (nrb, M, N)
    out = np.zeros((d.shape[0], d.shape[2]), dtype=np.float32)
    out[:, :n] = np.percentile(y, pct, axis=1)
    return out


def find_ranges(bundle: Bundle, x: np.ndarray, spec: HardwareSpec, batch_size: int = 128, seed: int = 0,
                progress: Callable[[Iterable[slice]], Iterable[slice]] | None = None) -> Bundle:
    """Add `ranges` to every analog layer of `bundle` (in place) and return it."""
    from xbar.runtime.executor import Runtime

    rt = Runtime(bundle)
    rng = np.random.default_rng(seed)
    chunks = list(batches(len(x), batch_size))
    kept: dict[int, list[np.ndarray]] = {}

    def keep(index: int):
        def probe(layer, cols, y):
            per_batch = max(1, MAX_VECTORS // len(chunks))
            take = cols if len(cols) <= per_batch else cols[rng.choice(len(cols), per_batch, replace=False)]
            kept.setdefault(index, []).append(np.array(take, dtype=np.float32))
        return probe

    for i, layer in enumerate(rt.layers):
        if layer.entry["placement"] == "analog":
            layer.probe = keep(i)
    for sl in (progress(chunks) if progress else chunks):
        rt(x[sl])
    for i, entry in enumerate(bundle.layers):
        if i not in kept:
            continue
        cols = np.concatenate(kept[i])
        x_max = float(np.percentile(np.abs(cols), spec.dac.percentile))
        if x_max <= 0:
            x_max = float(np.abs(cols).max()) or 1.0
        d = _ideal_tiles(bundle, entry)
        fixed = np.clip(cols / x_max, -1, 1)
        rowmax = np.abs(cols).max(axis=1, keepdims=True)
        rowmax[rowmax == 0] = 1
        prefix = f"layers/{i:03d}"
        bundle.arrays[f"{prefix}/adc_full_scale"] = _column_percentile(fixed, d, spec.adc.percentile, entry["N"])
        bundle.arrays[f"{prefix}/adc_full_scale_absmax"] = _column_percentile(cols / rowmax, d, spec.adc.percentile, entry["N"])
        entry["ranges"] = {
            "input": x_max,
            "dac_percentile": spec.dac.percentile,
            "adc_percentile": spec.adc.percentile,
            "vectors": int(len(cols)),
            "samples": int(len(x)),
            "adc": f"{prefix}/adc_full_scale",
            "adc_absmax": f"{prefix}/adc_full_scale_absmax",
        }
    return bundle
