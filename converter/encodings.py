"""Encodings: a layer's normalised weights u = W/w_max ∈ [-1, 1] → weight positions.

Every encoding yields the same four things (the column map of xbar.columns): v (K, P),
the normalised weight each position holds per row, in [-1, 1]; output (P,) and gain (P,),
so that u[:, j] = Σ_{p: output[p] = j} gain[p]·v[:, p]; and valid (K, P), the cells that
are programmed devices. Positions come out output by output; where they sit on the tiles
is the placement's business (xbar.converter.placement).

- fixed point: one position per output, gain 1; with weight_bits, u is quantised.
- analog floating point (our design, after the bi-scale idea in DESIGN.md §3): E
  exponents with gains 2^(−k·e). Each weight goes to exactly one exponent of its output,
  as the mantissa m = u/2^(−k·e) ∈ [-1, 1]; the other positions of that output hold 0 in
  its row. The exponent minimises the expected squared error the weight contributes,
  under the target device's programming and read noise and the mantissa quantisation:

      cost_e(u) = gain_e² · (σ²(m_e) − σ²(0) + Δ²/12),   over e with |u| ≤ gain_e,

  where σ²(m) is the variance, in normalised units, of a position holding m (both
  devices of a differential pair: the one at |m| and the one at G_min; one column for
  offset), Δ = 1/(2^(B−1) − 1) the mantissa step with --weight-bits B (else 0). The
  −σ²(0) is because a weight's row in every other position of its output still holds a
  device at rest, whatever exponent it takes. A small weight in a high exponent uses
  more of the conductance range, where PCM's noise grows more slowly than the signal,
  but its gain also scales the noise down; the rule weighs both, per device model and
  time, instead of a fixed magnitude threshold. Without a noisy device (ideal target)
  all costs tie and the weight takes the smallest gain that still holds it. An exponent
  that no weight of an output uses gets no position (no columns, no ADC).
- replicas: R positions per output each holding u, gain 1/R: independent device errors
  average down by √R. It costs R times the cells, so it is the fair fixed-point baseline
  for an encoding with R positions per output.
- bit slicing: |u| quantised to L = 2^(S·b) − 1 levels, q = Σ_s d_s·2^(b·s) with digits
  d_s ∈ [0, 2^b − 1]; slice s holds sign(u)·d_s/(2^b − 1) with gain (2^b − 1)·2^(b·s)/L.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from xbar.config import MappingConfig

if TYPE_CHECKING:  # pragma: no cover
    from xbar.hardware import DeviceSpec


@dataclass
class Encoded:
    v: np.ndarray  # (K, P) float64 normalised weight per row and position
    output: np.ndarray  # (P,) int64
    gain: np.ndarray  # (P,) float32
    valid: np.ndarray  # (K, P) bool


def quantise(u: np.ndarray, bits: int) -> np.ndarray:
    levels = 2 ** (bits - 1) - 1
    return np.round(u * levels) / levels


def encode(u: np.ndarray, valid: np.ndarray, cfg: MappingConfig, device: "DeviceSpec | None" = None,
           t: float = 0.0) -> Encoded:
    if cfg.afp_exponents > 1:
        return _afp(u, valid, cfg, device, t)
    if cfg.bit_slices > 1:
        return _bit_slices(u, valid, cfg)
    v = quantise(u, cfg.weight_bits) if cfg.weight_bits is not None else u
    n, r = u.shape[1], cfg.replicas
    # One replica: the positions are the columns themselves, so no K×N copy (np.repeat
    # always copies; for VGG-19's first classifier layer that is 0.8 GB of float64).
    spread = (lambda a: a) if r == 1 else (lambda a: np.repeat(a, r, axis=1))
    return Encoded(spread(v), np.repeat(np.arange(n, dtype=np.int64), r),
                   np.full(n * r, 1.0 / r, dtype=np.float32), spread(valid))


def position_variance(m: np.ndarray, encoding: str, device: "DeviceSpec | None", t: float) -> np.ndarray:
    """Variance in normalised weight units of a position holding m, from programming and read noise."""
    m = np.asarray(m, dtype=np.float64)
    if device is None or device.model == "ideal":
        return np.zeros(m.shape)
    from xbar.device_stats import pcm_prog_sigma, read_sigma

    dg = device.g_max - device.g_min

    def var(g: np.ndarray) -> np.ndarray:
        prog = 0.0
        if device.prog_noise:
            sigma = pcm_prog_sigma(g, device) if device.model == "pcm" else device.rram_prog_rel * g
            prog = (device.prog_noise_scale * sigma) ** 2
        return prog + read_sigma(g, t, device) ** 2

    if encoding == "differential":
        return (var(device.g_min + dg * np.maximum(m, 0)) + var(device.g_min + dg * np.maximum(-m, 0))) / dg ** 2
    return var(device.g_min + dg / 2 * (1 + m)) / (dg / 2) ** 2


def best_exponent(a: np.ndarray, cfg: MappingConfig, device: "DeviceSpec | None", t: float) -> np.ndarray:
    """The exponent rule of the module docstring, evaluated directly for magnitudes a ∈ [0, 1]."""
    gains = 2.0 ** (-cfg.afp_step * np.arange(cfg.afp_exponents))
    q2 = 0.0 if cfg.weight_bits is None else (1.0 / (2 ** (cfg.weight_bits - 1) - 1)) ** 2 / 12
    rest = position_variance(np.zeros(1), cfg.encoding, device, t)[0]
    best = np.zeros(a.shape, dtype=np.int64)
    best_cost = np.full(a.shape, np.inf)
    for e, g in enumerate(gains):
        fits = a <= g * (1 + 1e-12)
        cost = g * g * (position_variance(np.where(fits, a / g, 0.0), cfg.encoding, device, t) - rest + q2)
        # Ties (no noise, no quantisation) go to the smaller gain: more of the range is used.
        better = fits & (cost <= best_cost * (1 + 1e-12) + 1e-300)
        best[better], best_cost[better] = e, cost[better]
    return best


def exponents(u: np.ndarray, cfg: MappingConfig, device: "DeviceSpec | None", t: float) -> np.ndarray:
    """The exponent of every weight, by table lookup of `best_exponent`'s breakpoints in |u|.

    The rule depends on |u| alone and is piecewise constant, so it is evaluated once on a
    dense log grid, each change located by bisection to float64 resolution, and every
    weight then costs one binary search: the ~25M weights of a ResNet-50 take a second
    instead of evaluating the noise model E times per weight. (Changes closer together
    than the grid, 1/4000 of a decade, would be missed; the cost functions are smooth.
    Magnitudes below 1e-9 of the column's largest weight take what 0 takes: there the
    costs differ by rounding only.)
    """
    breaks, values = _breakpoints(cfg, device, float(t))
    return values[np.searchsorted(breaks, np.abs(u), side="right")]


@functools.lru_cache(maxsize=64)
def _breakpoints(cfg: MappingConfig, device: "DeviceSpec | None", t: float) -> tuple[np.ndarray, np.ndarray]:
    """(breaks, values): magnitudes in [breaks[i−1], breaks[i]) take values[i]; one table per
    mapping, device and time, shared by every layer of a model."""
    grid = np.concatenate([[0.0], np.logspace(-9, 0, 36001)])
    choice = best_exponent(grid, cfg, device, t)
    breaks, values = [], [int(choice[0])]
    for i in np.nonzero(np.diff(choice))[0]:
        lo, hi = grid[i], grid[i + 1]
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if best_exponent(np.array([mid]), cfg, device, t)[0] == choice[i]:
                lo = mid
            else:
                hi = mid
        breaks.append(hi)  # the first magnitude that takes the next choice
        values.append(int(choice[i + 1]))
    return np.asarray(breaks), np.asarray(values)


def _afp(u: np.ndarray, valid: np.ndarray, cfg: MappingConfig, device, t: float) -> Encoded:
    k, n = u.shape
    e = exponents(u, cfg, device, t)
    held = valid & (u != 0)  # a zero is 0 in every position: it asks for none
    used = np.zeros((cfg.afp_exponents, n), dtype=bool)
    used[e[held], np.nonzero(held)[1]] = True
    used[0, ~used.any(axis=0)] = True  # an all-zero output still has one position
    outputs, groups = np.nonzero(used.T)  # output-major, exponent ascending
    gain = (2.0 ** (-cfg.afp_step * groups)).astype(np.float32)
    position = np.zeros((cfg.afp_exponents, n), dtype=np.int64)
    position[groups, outputs] = np.arange(len(outputs))
    rows, cols = np.nonzero(held)
    where = position[e[rows, cols], cols]
    v = np.zeros((k, len(outputs)))
    v[rows, where] = u[rows, cols] / gain[where].astype(np.float64)
    if cfg.weight_bits is not None:
        v = quantise(v, cfg.weight_bits)
    return Encoded(np.clip(v, -1.0, 1.0), outputs.astype(np.int64), gain, valid[:, outputs])


def _bit_slices(u: np.ndarray, valid: np.ndarray, cfg: MappingConfig) -> Encoded:
    s, b = cfg.bit_slices, cfg.bits_per_cell
    k, n = u.shape
    levels = 2 ** (s * b) - 1
    digit = 2 ** b - 1
    q = np.rint(np.abs(u) * levels).astype(np.int64)
    sign = np.sign(u)
    slices = np.arange(s)
    v = np.stack([sign * ((q >> (b * i)) & digit) / digit for i in slices], axis=2).reshape(k, n * s)
    gain = np.tile(digit * 2.0 ** (b * slices) / levels, n).astype(np.float32)
    output = np.repeat(np.arange(n, dtype=np.int64), s)
    return Encoded(v, output, gain, np.repeat(valid, s, axis=1))
