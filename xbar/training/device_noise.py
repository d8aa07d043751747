"""What the target chip does to a layer's weights, sampled in weight units, for noise-aware training.

A draw maps the weights as the converter maps them and programs them through the runtime's
own device model, so training sees the same noise the chip simulation does:
1. scale: per output column u = W / max|W| (the mapping's normalised weights);
2. encode (converter/encodings.py): quantisation, replicas, analog floating point or bit
   slices, giving the positions each output is read from and their digital gains;
3. devices (runtime/devices.py): every position's differential pair (or offset column) at
   its target conductance, programmed (programming noise, drift exponents, stuck cells),
   drifted to the target time, read once (read noise);
4. drift compensation, if the target has it: one factor per layer, the ratio of the summed
   conductances before and after drift (the chip measures it per tile with a probe read;
   pooled over the layer here);
5. read back: positions to normalised weights, combined per output with their gains
   (xbar.columns.ColumnMap), times the column scale.

Not included: IR drop and the converters (they act on the chip's currents, not on the
weights; the torch executor's chip path has them) and the offset encoding's shared reference
column's own noise (its devices are the tile's, not the weight's).
"""

from __future__ import annotations

import numpy as np

from xbar.columns import ColumnMap
from xbar.config import MappingConfig
from xbar.converter.encodings import encode
from xbar.converter.mapping import column_scale
from xbar.hardware import HardwareSpec
from xbar.runtime import devices


def sample_weights(weight: np.ndarray, valid: np.ndarray | None, cfg: MappingConfig, spec: HardwareSpec,
                   rng: np.random.Generator) -> np.ndarray:
    """One chip's version of the K×N weights `weight` (weight units), float64."""
    k, n = weight.shape
    scale = column_scale(weight, cfg.weight_clip_percentile, valid)
    u = np.clip(weight / scale, -1.0, 1.0)
    enc = encode(u, np.ones((k, n), dtype=bool) if valid is None else valid, cfg, spec.device, spec.t_inference)
    dev = spec.device
    dg = dev.g_max - dev.g_min
    v = enc.v
    if cfg.encoding == "differential":
        targets = np.stack([dev.g_min + dg * np.maximum(v, 0.0), dev.g_min + dg * np.maximum(-v, 0.0)])
    else:
        targets = (dev.g_min + dg / 2 * (1.0 + v))[None]
    state = devices.program_devices(targets, dev, spec.faults, rng)
    g0 = devices.apply_faults(state.g_prog, state.stuck_min, state.stuck_max, dev.g_min, dev.g_max)
    g = state.at(spec.t_inference, dev, rng)
    if spec.drift_compensation != "off" and dev.drift and dev.model != "ideal":
        g = g * (g0.sum() / max(g.sum(), 1e-30))
    if cfg.encoding == "differential":
        read = (g[0] - g[1]) / dg
    else:
        read = (g[0] - (dev.g_min + dg / 2)) / (dg / 2)
    read = np.where(enc.valid, read, 0.0)  # structural zeros are not on the chip
    return ColumnMap(enc.output, enc.gain, n).combine(read) * scale
