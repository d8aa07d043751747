"""Execute one crossbar layer: patches · effective weights, then the per-output affine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xbar.hardware import HardwareSpec

import numpy as np

from xbar.affine import FIELDS, Affine
from xbar.bundle import Bundle, layer_packing, layer_tiles
from xbar.columns import read_map
from xbar.errors import BundleError, DataError
from xbar.runtime.analog import dac_codes, tiled_product
from xbar.runtime.chip import TileState, assemble, build_tiles, normalised_tiles
from xbar.runtime.im2col import absmax_last_axis, patch_absmax, patch_block, patch_view, resolve_pads
from xbar.runtime.parallel import map_chunks, streams

# Input vectors are copied and multiplied in chunks of about this many values (2 MiB of
# float32), one chunk per worker thread at a time, so a chunk and its intermediates stay
# in the core's cache from the patch copy to the ADC. Chunk boundaries depend only on
# this and the layer's shape, so results do not depend on the number of threads.
CHUNK_VALUES = 1 << 19


@dataclass
class ChipContext:
    """The non-ideal hardware a layer runs on: spec, this layer's tiles, its noise stream."""

    spec: "HardwareSpec"
    tiles: TileState
    rng: np.random.Generator  # the layer's read-noise stream; each call spawns one child per chunk from it
    x_max: float | None  # DAC range from calibration data; None: each input vector's own max |x|
    i_fs: np.ndarray  # (nrb, Npad) ADC full scale per tile column, normalised current


class Layer:
    """A Conv/Gemm/MatMul whose weights live on crossbar tiles (or stay digital if pinned)."""

    def __init__(self, entry: dict[str, Any], bundle: Bundle, hardware: "HardwareSpec | None" = None,
                 chip_rng: np.random.Generator | None = None, read_rng: np.random.Generator | None = None,
                 shared: dict | None = None):
        """`shared`: this layer's cells on the tiles layers share, on the chip being built
        (xbar.runtime.packed.sample_shared), if it has passes there."""
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
            self.columns = read_map(entry, a.__getitem__)
            self.p = self.columns.positions
            packed, tile_used = layer_tiles(bundle, entry)
            self.row_order = a.get("row_order")  # the converter's row placement, undone here
            # The dense K×N matrix (block-diagonal and mostly zeros for a depthwise layer) is
            # what the ideal path multiplies; on a chip only diagnostics read it, so it is
            # assembled when first read (`matrix`), not held beside the chip's own state.
            self._bundle = bundle
            self._matrix = self._assemble() if hardware is None else None
            self.col_scale = a["col_scale"].astype(np.float64)
        elif "weight_depthwise" in a:
            # A digital depthwise convolution: (∏k, N) kernels, run as one, never as the
            # block-diagonal K×N matrix (which the ideal fast path would multiply in full).
            self.depthwise = a["weight_depthwise"].astype(np.float32)
            self._matrix = np.zeros((0, self.n), dtype=np.float32)
            self.col_scale = np.ones(self.n)
        else:
            self._matrix = a["weight"].astype(np.float32)
            self.col_scale = np.ones(self.n)
        self.set_affine(Affine(*(a[name] for name in FIELDS), entry["affine"]["eps"]))
        self.chip: ChipContext | None = None
        # Optional observer of (layer, input vectors, output sums); used by range finding
        # and per-layer diagnostics, never by plain inference.
        self.probe = None
        # Any hardware spec, even an ideal one, runs the full per-tile path; only
        # `hardware=None` takes the fused exact product (the fast ideal reference).
        if entry["placement"] == "analog" and hardware is not None:
            pack = layer_packing(bundle, entry)
            if pack is not None:  # packed: sampled per physical tile, read per pass
                from xbar.runtime.packed import build_packed_tiles

                tiles = build_packed_tiles(*pack, tile_used, bundle.manifest["mapping"], hardware, chip_rng,
                                           self.k, self.p, shared)
                self.input_rows = self.row_order  # xbar.packing: rows cross blocks, inputs are routed
            else:
                tiles = build_tiles(packed, tile_used, bundle.manifest["mapping"],
                                    hardware, chip_rng, self.k, self.p, self.row_order)
            ranges = entry.get("ranges")
            x_max = float(ranges["input"]) if ranges and hardware.dac.range == "calibrated" else None
            i_fs = tiles.i_max
            if ranges and hardware.adc.range == "percentile":
                key = ranges["adc"] if x_max is not None else ranges["adc_absmax"]
                i_fs = bundle.array(key)[:, :self.p].astype(np.float32)
            i_fs = np.maximum(i_fs, np.float32(1e-12))
            self.chip = ChipContext(hardware, tiles, read_rng, x_max, i_fs)

    depthwise: np.ndarray | None = None  # (∏k, N) kernels of a digital depthwise convolution
    # (K,) physical row q of the chip is fed input row input_rows[q] (a packed layer,
    # xbar.packing); None: the chip's matrices are in weight row order.
    input_rows: np.ndarray | None = None

    def chip_inputs(self, v: np.ndarray) -> np.ndarray:
        """(M, K) inputs in weight row order → in the chip's row order."""
        return v if self.input_rows is None else v[:, self.input_rows]

    _fused: np.ndarray | None = None

    def _assemble(self) -> np.ndarray:
        packed, tile_used = layer_tiles(self._bundle, self.entry)
        normalised = normalised_tiles(packed, self._bundle.manifest["mapping"])  # (T, R, Cw)
        tiles = np.zeros((*tile_used.shape, *normalised.shape[1:]), dtype=np.float32)
        tiles[tile_used] = normalised  # unallocated tiles hold no weight
        # Weights on hardware are in normalised units; the digital periphery rescales
        # each column by its w_max and applies the affine in one multiply-add.
        return assemble(tiles, self.k, self.columns, self.row_order)

    @property
    def matrix(self) -> np.ndarray:
        """(K, N) float32 programmed weights in normalised units (the ideal product's matrix)."""
        if self._matrix is None:
            self._matrix = self._assemble()
        return self._matrix

    @property
    def fused(self) -> np.ndarray:
        """`matrix` times the column gains: the exact path's one product per layer, made when
        that path first runs (a layer on a chip never needs it)."""
        if self._fused is None:
            self._fused = (self.matrix * self.gain).astype(np.float32)
        return self._fused

    def set_affine(self, affine: Affine) -> None:
        """The per-output affine applied after the product (see xbar.affine)."""
        gain = affine.gain()
        self.shift = affine.shift().astype(np.float32)
        self.gain = (gain * self.col_scale).astype(np.float32)
        # Exact hardware only: the column gains folded into the matrix save one pass per layer.
        self._fused = None

    def product(self, cols: np.ndarray, rng: np.random.Generator | None = None,
                absmax: np.ndarray | None = None) -> np.ndarray:
        """(M, K) input vectors → (M, N) sums in normalised weight units (before column scale
        and affine). On a chip, `rng` is the read-noise stream (default: the layer's next) and
        `absmax` (M, 1), if known, each vector's max |x| (else it is computed here)."""
        y = self._product(cols, rng, absmax)
        if self.probe is not None:
            self.probe(self, cols, y)
        return y

    def _product(self, cols: np.ndarray, rng: np.random.Generator | None,
                 absmax: np.ndarray | None = None) -> np.ndarray:
        if self.chip is None:
            return cols @ self.matrix  # made in __init__ for hardware=None, so no thread races here
        if self.chip.x_max is None and absmax is None:
            absmax = absmax_last_axis(cols)[:, None]
        codes, unit, x_scale = self._dac(cols, absmax)
        return self._crossbar(codes, unit, x_scale, rng)

    def _dac(self, x: np.ndarray, absmax: np.ndarray | None) -> tuple[np.ndarray, float, np.ndarray]:
        """Input vectors (any strided view) → DAC codes (C order), code unit, and the scale
        the outputs are multiplied back by: the fixed range, or each vector's max |x|."""
        c = self.chip
        if c.x_max is not None:
            x_scale = np.float32(c.x_max)
            return (*dac_codes(x, x_scale, c.spec.dac.bits), x_scale)
        # Abs-max input scaling (aihwkit's default noise management): each input vector is
        # scaled to the full DAC range and the result scaled back digitally.
        x_scale = np.where(absmax > 0, absmax, np.float32(1))
        return (*dac_codes(x, x_scale, c.spec.dac.bits, may_clip=False), x_scale)

    def _crossbar(self, codes: np.ndarray, unit: float, x_scale: np.ndarray,
                  rng: np.random.Generator | None) -> np.ndarray:
        """(M, K) DAC codes → (M, N) column sums in weight units, in the layer's column order."""
        c = self.chip
        if rng is None:
            rng = streams(c.rng, 1)[0]
        y = self.columns.combine(tiled_product(self.chip_inputs(codes), c.tiles, c.spec, c.i_fs, rng, unit=unit))
        y *= x_scale.reshape(-1, 1) if np.ndim(x_scale) else x_scale
        return y

    def _chunks(self, rows: int, width: int, fn) -> None:
        """Run fn(start, stop, rng) over chunks of `rows` input vectors of `width` values,
        in parallel unless a probe must see them in order."""
        step = max(1, CHUNK_VALUES // max(1, width))
        starts = range(0, rows, step)
        rngs = streams(self.chip.rng, len(starts)) if self.chip is not None else [None] * len(starts)
        map_chunks(lambda j: fn(starts[j], min(starts[j] + step, rows), rngs[j]), len(starts),
                   serial=self.probe is not None)

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
        if self.kind == "recurrent" or self.params["side"] == "right":  # recurrent: (..., K) vectors
            self._check_width(x.shape[-1], x.shape)
            return self._affine(self._rows(x), axis=-1)
        xt = np.swapaxes(x, -1, -2)
        self._check_width(xt.shape[-1], x.shape)
        return self._affine(np.swapaxes(self._rows(xt), -1, -2), axis=-2)

    def _rows(self, x: np.ndarray) -> np.ndarray:
        """(..., K) → (..., N) through the crossbar (or the ideal matrix), before the affine."""
        flat = x.reshape(-1, self.k)
        out = np.empty((flat.shape[0], self.n), dtype=np.float32)

        def run(lo: int, hi: int, rng) -> None:
            out[lo:hi] = self.product(flat[lo:hi], rng)

        self._chunks(flat.shape[0], self.k, run)
        return out.reshape(*x.shape[:-1], self.n)

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
        geometry = (p["kernel_shape"], p["strides"], p["dilations"], pads)
        if self.depthwise is not None:
            return self._depthwise_conv(x, geometry)
        exact = self.chip is None and self.probe is None and not self._identity
        direct = self.chip is not None and self.probe is None
        per_vector = self.chip is not None and self.chip.x_max is None  # abs-max DAC scaling
        if direct and not per_vector:
            # A fixed DAC range: quantise every activation once and unfold the codes (the
            # patches repeat each activation ∏kernel times).
            codes, unit, x_scale = self._dac(np.moveaxis(x, 1, -1), None)
            x = np.moveaxis(codes, -1, 1)
        view, out = patch_view(x, *geometry)
        b, k = x.shape[0], view.shape[-1]
        fused = self.fused if exact else None  # made here, once, not by racing worker threads
        y = np.empty((b, *out, self.n), dtype=np.float32)
        rows = y.reshape(b, -1, self.n)

        def run(lo: int, hi: int, rng) -> None:
            dest = rows[lo:hi].reshape(-1, self.n)
            if exact:
                np.matmul(view[lo:hi].reshape(-1, k), fused, out=dest)
                dest += self.shift
                return
            amax = patch_absmax(x[lo:hi], *geometry) if per_vector else None  # (b, *out)
            if direct and per_vector:
                # DAC straight from the strided patches: scaling them is also their copy.
                block = patch_block(view, lo, hi)
                c, u, xs = self._dac(block, amax.reshape(*amax.shape, *[1] * (block.ndim - amax.ndim)))
                sums = self._crossbar(c.reshape(-1, k), u, xs, rng)
            elif direct:
                sums = self._crossbar(view[lo:hi].reshape(-1, k), unit, x_scale, rng)
            else:
                sums = self.product(view[lo:hi].reshape(-1, k), rng, None if amax is None else amax.reshape(-1, 1))
            dest[...] = self._affine(sums, axis=-1)  # channels-last rows

        self._chunks(b, int(np.prod(out)) * k, run)
        # Hand back an NCHW view of the channels-last result: elementwise ops keep that
        # memory order and the next convolution's moveaxis undoes it for free.
        return np.moveaxis(y, -1, 1)

    def _depthwise_conv(self, x: np.ndarray, geometry) -> np.ndarray:
        """Digital depthwise convolution: output n = Σ over kernel offsets of its input channel
        n // multiplier times its kernel; patches are (offset, channel) as for every conv."""
        view, out = patch_view(x, *geometry)
        b, c = x.shape[0], x.shape[1]
        kk, mult = self.depthwise.shape[0], self.n // c
        w = self.depthwise.reshape(kk, c, mult)
        y = np.empty((b, *out, self.n), dtype=np.float32)
        rows = y.reshape(b, -1, c, mult)

        def run(lo: int, hi: int, rng) -> None:
            patches = view[lo:hi].reshape(hi - lo, -1, kk, c)
            dest = rows[lo:hi]
            np.multiply(patches[:, :, 0, :, None], w[0], out=dest)
            for j in range(1, kk):
                dest += patches[:, :, j, :, None] * w[j]
            flat = dest.reshape(-1, self.n)
            flat[...] = self._affine(flat, axis=-1)

        self._chunks(b, int(np.prod(out)) * kk * c, run)
        return np.moveaxis(y, -1, 1)
