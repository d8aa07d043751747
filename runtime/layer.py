"""Execute one crossbar layer: patches · effective weights, then the per-output affine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xbar.hardware import HardwareSpec

import numpy as np

from xbar.affine import FIELDS, Affine
from xbar.bundle import Bundle
from xbar.errors import BundleError, DataError
from xbar.runtime.chip import TileState, assemble, build_tiles, normalised_tiles
from xbar.runtime.im2col import patch_view, resolve_pads

# Patches are copied and multiplied this many values at a time (16 MiB of float32), so a
# chunk is still in cache when its GEMM reads it: ~2x faster than one layer-sized GEMM.
CHUNK_VALUES = 1 << 22


@dataclass
class ChipContext:
    """The non-ideal hardware a layer runs on: spec, this layer's tiles, its noise stream."""

    spec: "HardwareSpec"
    tiles: TileState
    rng: np.random.Generator
    x_max: float | None  # DAC range from calibration data; None: each input vector's own max |x|
    i_fs: np.ndarray  # (nrb, Npad) ADC full scale per tile column, normalised current


class Layer:
    """A Conv/Gemm/MatMul whose weights live on crossbar tiles (or stay digital if pinned)."""

    def __init__(self, entry: dict[str, Any], bundle: Bundle, hardware: "HardwareSpec | None" = None,
                 chip_rng: np.random.Generator | None = None, read_rng: np.random.Generator | None = None):
        self.entry = entry
        self.name = entry["name"]
        self.kind = entry["kind"]
        self.params = entry["params"]
        self.k, self.n = entry["K"], entry["N"]
        if self.kind == "conv" and self.params.get("row_order") != "kernel,channel":
            raise BundleError(f"layer {self.name!r}: convolution rows are in order {self.params.get('row_order')!r}; "
                              "this runtime needs 'kernel,channel'. Convert the model again with this xbar.")
        keys = entry["arrays"]
        a = {name: bundle.array(key) for name, key in keys.items()}
        if entry["placement"] == "analog":
            tiles = normalised_tiles(a["conductance"], bundle.manifest["mapping"])
            # Weights on hardware are in normalised units; the digital periphery rescales
            # each column by its w_max and applies the affine in one multiply-add.
            self.matrix = assemble(tiles, self.k, self.n, a["column_order"])
            self.col_scale = a["col_scale"].astype(np.float64)
        else:
            self.matrix = a["weight"].astype(np.float32)
            self.col_scale = np.ones(self.n)
        self.set_affine(Affine(*(a[name] for name in FIELDS), entry["affine"]["eps"]))
        self.chip: ChipContext | None = None
        # Optional observer of (layer, input vectors, output sums); used by range finding
        # and per-layer diagnostics, never by plain inference.
        self.probe = None
        # Any hardware spec, even an ideal one, runs the full per-tile path; only
        # `hardware=None` takes the fused exact product (the fast ideal reference).
        if entry["placement"] == "analog" and hardware is not None:
            tiles = build_tiles(a["conductance"], a["tile_used"].astype(bool), bundle.manifest["mapping"],
                                hardware, chip_rng, self.k, self.n)
            ranges = entry.get("ranges")
            x_max = float(ranges["input"]) if ranges and hardware.dac.range == "calibrated" else None
            i_fs = tiles.i_max
            if ranges and hardware.adc.range == "percentile":
                key = ranges["adc"] if x_max is not None else ranges["adc_absmax"]
                i_fs = bundle.array(key)[:, :self.n].astype(np.float32)
            i_fs = np.maximum(i_fs, np.float32(1e-12))
            self.chip = ChipContext(hardware, tiles, read_rng, x_max, i_fs)
            self.position = np.argsort(a["column_order"])

    def set_affine(self, affine: Affine) -> None:
        """The per-output affine applied after the product (see xbar.affine)."""
        gain = affine.gain()
        self.shift = affine.shift().astype(np.float32)
        self.gain = (gain * self.col_scale).astype(np.float32)
        # Exact hardware only: the column gains folded into the matrix save one pass per layer.
        self.fused = (self.matrix * self.gain).astype(np.float32)

    def product(self, cols: np.ndarray) -> np.ndarray:
        """(M, K) input vectors → (M, N) sums in normalised weight units (before column scale and affine)."""
        y = self._product(cols)
        if self.probe is not None:
            self.probe(self, cols, y)
        return y

    def _product(self, cols: np.ndarray) -> np.ndarray:
        if self.chip is None:
            return cols @ self.matrix
        from xbar.runtime.analog import dac, tiled_product

        c = self.chip
        if c.x_max is not None:
            x_max = np.float32(c.x_max)
        else:
            # Abs-max input scaling (aihwkit's default noise management): each input vector
            # is scaled to the full DAC range and the result scaled back digitally.
            x_max = np.abs(cols).max(axis=1, keepdims=True)
            x_max[x_max == 0] = 1.0
        v = dac(cols, x_max, c.spec.dac.bits)
        y = tiled_product(v, c.tiles, c.spec, c.i_fs, c.rng)
        y = y[:, self.position]
        y *= x_max
        return y

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.kind == "conv":
            return self._conv(x)
        if self.kind == "gemm":
            if x.ndim != 2:
                raise DataError(f"layer {self.name!r} (Gemm) expects a 2-D input, got shape {list(x.shape)}")
            if self.params.get("transA"):
                x = x.T
            self._check_width(x.shape[-1], x.shape)
            return self._affine(self._rows(x), axis=-1)
        if self.params["side"] == "right":
            self._check_width(x.shape[-1], x.shape)
            return self._affine(self._rows(x), axis=-1)
        xt = np.swapaxes(x, -1, -2)
        self._check_width(xt.shape[-1], x.shape)
        return self._affine(np.swapaxes(self._rows(xt), -1, -2), axis=-2)

    def _rows(self, x: np.ndarray) -> np.ndarray:
        """(..., K) → (..., N) through the crossbar (or the ideal matrix)."""
        return self.product(x.reshape(-1, self.k)).reshape(*x.shape[:-1], self.n)

    def _check_width(self, width: int, shape: tuple[int, ...]) -> None:
        if width != self.k:
            raise DataError(f"layer {self.name!r} expects {self.k} input features, got a tensor of shape {list(shape)}")

    def raw(self, x: np.ndarray) -> np.ndarray:
        """The layer's output before its per-output affine, in the layout __call__ returns
        (channel axis 1 for Conv, the output axis for Gemm/MatMul), scaled to weight units."""
        self._identity = True
        try:
            return self(x)
        finally:
            self._identity = False

    _identity = False

    def _affine(self, y: np.ndarray, axis: int) -> np.ndarray:
        shape = [1] * y.ndim
        shape[axis] = self.n
        if self._identity:  # raw(): column scale only, no affine
            y *= self.col_scale.astype(np.float32).reshape(shape)
            return y
        y *= self.gain.reshape(shape)
        y += self.shift.reshape(shape)
        return y

    def _conv(self, x: np.ndarray) -> np.ndarray:
        p = self.params
        if x.ndim != 2 + len(p["kernel_shape"]) or x.shape[1] != p["in_channels"]:
            raise DataError(
                f"layer {self.name!r} (Conv) expects input (batch, {p['in_channels']}, "
                f"{len(p['kernel_shape'])} spatial dims), got shape {list(x.shape)}"
            )
        pads = resolve_pads(x.shape[2:], p["kernel_shape"], p["strides"], p["dilations"], p["pads"], p["auto_pad"])
        view, out = patch_view(x, p["kernel_shape"], p["strides"], p["dilations"], pads)
        b = x.shape[0]
        per_image = int(np.prod(out)) * view.shape[-1]
        step = max(1, CHUNK_VALUES // per_image)
        y = np.empty((b, *out, self.n), dtype=np.float32)
        for start in range(0, b, step):
            cols = view[start:start + step].reshape(-1, view.shape[-1])
            if self.chip is None and self.probe is None and not self._identity:
                part = cols @ self.fused
                part += self.shift
            else:
                part = self._affine(self.product(cols), axis=-1)  # channels-last rows
            y[start:start + step] = part.reshape(-1, *out, self.n)
        # Hand back an NCHW view of the channels-last result: elementwise ops keep that
        # memory order and the next convolution's moveaxis undoes it for free.
        return np.moveaxis(y, -1, 1)
