"""Execute one crossbar layer: patches · effective weights, then the per-output affine."""

from __future__ import annotations

from typing import Any

import numpy as np

from xbar.bundle import Bundle
from xbar.errors import DataError
from xbar.runtime.chip import assemble, normalised_tiles
from xbar.runtime.im2col import im2col, resolve_pads


class Layer:
    """A Conv/Gemm/MatMul whose weights live on crossbar tiles (or stay digital if pinned)."""

    def __init__(self, entry: dict[str, Any], bundle: Bundle):
        self.entry = entry
        self.name = entry["name"]
        self.kind = entry["kind"]
        self.params = entry["params"]
        self.k, self.n = entry["K"], entry["N"]
        keys = entry["arrays"]
        a = {name: bundle.array(key) for name, key in keys.items()}
        eps = entry["affine"]["eps"]
        gain = a["gamma"].astype(np.float64) / np.sqrt(a["var"].astype(np.float64) + eps)
        shift = a["beta"] + (a["bias"] - a["mean"]) * gain
        if entry["placement"] == "analog":
            tiles = normalised_tiles(a["conductance"], bundle.manifest["mapping"])
            # Weights on hardware are in normalised units; the digital periphery rescales
            # each column by its w_max and applies the affine in one multiply-add.
            self.matrix = assemble(tiles, self.k, self.n, a["column_order"])
            gain = gain * a["col_scale"]
        else:
            self.matrix = a["weight"].astype(np.float32)
        self.gain = gain.astype(np.float32)
        self.shift = shift.astype(np.float32)
        self.matrix_t = np.ascontiguousarray(self.matrix.T) if self.kind == "conv" else None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.kind == "conv":
            return self._conv(x)
        if self.kind == "gemm":
            if x.ndim != 2:
                raise DataError(f"layer {self.name!r} (Gemm) expects a 2-D input, got shape {list(x.shape)}")
            if self.params.get("transA"):
                x = x.T
            self._check_width(x.shape[-1], x.shape)
            return self._affine(x @ self.matrix, axis=-1)
        if self.params["side"] == "right":
            self._check_width(x.shape[-1], x.shape)
            return self._affine(x @ self.matrix, axis=-1)
        xt = np.swapaxes(x, -1, -2)
        self._check_width(xt.shape[-1], x.shape)
        return self._affine(np.swapaxes(xt @ self.matrix, -1, -2), axis=-2)

    def _check_width(self, width: int, shape: tuple[int, ...]) -> None:
        if width != self.k:
            raise DataError(f"layer {self.name!r} expects {self.k} input features, got a tensor of shape {list(shape)}")

    def _affine(self, y: np.ndarray, axis: int) -> np.ndarray:
        shape = [1] * y.ndim
        shape[axis] = self.n
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
        cols, out = im2col(x, p["kernel_shape"], p["strides"], p["dilations"], pads)
        y = np.matmul(self.matrix_t, cols)  # (B, N, L)
        y = self._affine(y, axis=1)
        return y.reshape(x.shape[0], self.n, *out)
