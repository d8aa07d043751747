"""The per-inference path of a crossbar layer on a non-ideal chip.

Everything that is fixed per chip instance is in a TileState; per inference the work is:
DAC (clip, quantise), one batched product over all tiles, read noise sampled at the
output (one more product of v² with σ², not a fresh conductance matrix per read), output
noise, ADC (clip, quantise) per tile column, drift compensation, sum of row-block partial
sums. Inputs arrive as (M, K) rows (one input vector each, e.g. a chunk of unfolded
patches); outputs leave as (M, N). `dac` and `adc` state the converters' semantics; the
layer path uses `dac_codes` and the in-place ADC of `tiled_product`, which compute the same
levels (up to float32 rounding at exact ties).
"""

from __future__ import annotations

import numpy as np

from xbar.hardware import HardwareSpec
from xbar.runtime.chip import TileState
from xbar.runtime.gauss import standard_normal
from xbar.runtime.span_store import SpanStore


def quantise_symmetric(x: np.ndarray, bits: int, full_scale: np.ndarray | float) -> np.ndarray:
    """Clip to ±full_scale and round to the 2^(bits−1)−1 levels per side (zero is a level)."""
    levels = float(2 ** (bits - 1) - 1) if bits > 1 else 1.0
    step = np.asarray(full_scale, dtype=np.float32) / levels
    q = np.clip(np.rint(x / step), -levels, levels)
    return q * step


def dac(x: np.ndarray, x_max: np.ndarray | float, bits: int | None) -> np.ndarray:
    """Inputs → normalised drive voltages in [-1, 1] (fraction of V_read)."""
    v = x / x_max
    if bits is None:
        return np.clip(v, -1.0, 1.0)
    return quantise_symmetric(v, bits, 1.0)


def dac_codes(x: np.ndarray, x_max: np.ndarray | float, bits: int | None,
              may_clip: bool = True) -> tuple[np.ndarray, float]:
    """The DAC as in `dac`, returned as (codes, unit) with voltages = codes · unit.

    With `bits`, codes are the integer levels (as float32) and unit = 1/levels: the
    products then run on small integers and the one multiply by the unit moves to the
    (smaller) column outputs. `x` may be any strided view (e.g. unfolded patches) and
    `x_max` anything that broadcasts against it; codes are a new C-ordered array of x's
    shape, so reading a strided view here is also its copy. `may_clip` False skips the
    clip when no |x| exceeds x_max (abs-max scaling of every vector).
    """
    codes = np.empty(x.shape, dtype=np.float32)
    if bits is None:
        np.divide(x, x_max, out=codes)
        if may_clip:
            np.clip(codes, -1.0, 1.0, out=codes)
        return codes, 1.0
    levels = float(2 ** (bits - 1) - 1) if bits > 1 else 1.0
    np.multiply(x, np.float32(levels) / np.asarray(x_max, dtype=np.float32), out=codes)
    np.rint(codes, out=codes)
    if may_clip:
        np.clip(codes, -levels, levels, out=codes)
    return codes, 1.0 / levels


def adc(i: np.ndarray, full_scale: np.ndarray, bits: int | None) -> np.ndarray:
    """Column currents → clipped, quantised readings; an ideal ADC (bits None) passes them on."""
    if bits is None:
        return i
    return quantise_symmetric(i, bits, full_scale)


def adc_levels(y: np.ndarray, full_scale: np.ndarray, bits: int) -> np.ndarray:
    """The ADC as in `adc`, in place: (nrb, M, N) currents → integer levels; returns the
    (nrb, N) step that turns levels back into current (left to the caller's one multiply)."""
    levels = float(2 ** (bits - 1) - 1) if bits > 1 else 1.0
    step = full_scale / np.float32(levels)
    y /= step[:, None, :]
    np.rint(y, out=y)
    np.clip(y, -levels, levels, out=y)
    return step


def per_block(v: np.ndarray, mats: np.ndarray, k: int) -> np.ndarray:
    """(M, K) inputs, (nrb, R, X) per-row-block matrices → (nrb, M, X) partial products.

    Full row blocks go through one batched matmul; the last, partly filled block uses only
    its K − (nrb−1)·R live rows instead of multiplying padding.
    """
    nrb, r, x = mats.shape
    m = v.shape[0]
    head = (nrb - 1) * r
    out = np.empty((nrb, m, x), dtype=np.float32)
    if nrb > 1:
        np.matmul(v[:, :head].reshape(m, nrb - 1, r).transpose(1, 0, 2), mats[:-1], out=out[:-1])
    np.matmul(v[:, head:k], mats[-1, :k - head], out=out[-1])
    return out


# Skip the unallocated tiles of a layer (TileState.spans) in its products; False: multiply
# the full per-row-block matrices (the reference the sparse path is tested against).
SPARSE = True


def per_block_spans(v: np.ndarray, mats: np.ndarray | SpanStore, k: int,
                    spans: list[list[tuple[int, int]]] | None) -> np.ndarray:
    """`per_block`, multiplying each row block only by its live position ranges `spans[b]`;
    the rest of the output is 0, which is what those all-zero columns would give. `mats`
    is the dense (nrb, R, X) array or its SpanStore (TileState.d_live, var_live)."""
    if spans is None or not SPARSE:
        return per_block(v, mats.dense() if isinstance(mats, SpanStore) else mats, k)
    nrb, r, x = mats.shape
    m = v.shape[0]
    out = np.zeros((nrb, m, x), dtype=np.float32)
    for b, runs in enumerate(spans):
        lo_r, hi_r = b * r, min(k, (b + 1) * r)
        vb = v[:, lo_r:hi_r]
        for lo, hi in runs:
            w = mats.view(b, hi_r - lo_r, lo, hi) if isinstance(mats, SpanStore) else mats[b, :hi_r - lo_r, lo:hi]
            np.matmul(vb, w, out=out[b, :, lo:hi])
    return out


def tiled_product(v: np.ndarray, st: TileState, spec: HardwareSpec, i_fs: np.ndarray,
                  rng: np.random.Generator, use_adc: bool = True, unit: float = 1.0) -> np.ndarray:
    """(M, K) drive voltages in units of `unit` → (M, N) currents of tile positions, summed
    over row blocks (normalised units: a fully driven row through a full pair gives 1)."""
    y = per_block_spans(v, st.d_live, st.k, st.spans)  # (nrb, M, N): every tile of the layer, in units of `unit`
    if st.var_live is not None:
        v2 = np.square(v)
        std = per_block_spans(v2, st.var_live, st.k, st.spans)
        np.sqrt(std, out=std)
        z = standard_normal(rng, y.shape)
        z *= std
        y += z
        if st.ref_var is not None:
            ref_std = np.sqrt(per_block(v2, st.ref_var, st.k))  # (nrb, M, ncb), shared by a tile's columns
            noise = ref_std * standard_normal(rng, ref_std.shape)
            y -= noise[:, :, st.block_of]
    fs = i_fs / np.float32(unit)  # (nrb, N) full scales in the units of y
    if spec.adc.noise > 0:
        z = standard_normal(rng, y.shape)
        z *= (np.float32(spec.adc.noise) * fs)[:, None, :]
        y += z
    scale = st.comp * np.float32(unit)  # back to normalised current, drift-compensated
    if use_adc and spec.adc.bits is not None:
        scale = scale * adc_levels(y, fs, spec.adc.bits)
    y *= scale[:, None, :]
    return y.sum(axis=0) if y.shape[0] > 1 else y[0]
