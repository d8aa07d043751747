"""One crossbar layer as a torch module, built from the NumPy runtime's `Layer`.

The chip instance is the NumPy one: a TorchLayer reads the Layer's sampled tiles
(TileState: effective matrices with IR drop, drift and faults, read-noise variances,
drift compensation), its ADC full scales and DAC range, and its column map; nothing is
sampled twice. Per call it computes what `Layer._dac` / `Layer._crossbar` /
`analog.tiled_product` compute, in the same order of float32 operations, with torch ops so
that gradients flow: quantisers (rint) pass gradients straight through, clips pass them
inside their range, and read noise is the same output-referred Gaussian, sqrt((v²)·σ²)·z,
drawn fresh per call from the layer's own seeded torch generator.

Trainable: the per-output affine (gain, shift) as parameters (what SGD calibration trains),
and, on exact hardware only, optionally the K×N weight in normalised units with a
`perturb(weight) -> weight` hook applied at every forward (noise-aware fine-tuning).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from xbar.training import require_torch

torch = require_torch()  # a one-paragraph error, not an ImportError, where torch is missing
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from xbar.affine import Affine
from xbar.errors import ConfigError, DataError
from xbar.runtime.im2col import resolve_pads
from xbar.runtime.layer import Layer


class _RoundSTE(torch.autograd.Function):
    """Round half to even (np.rint) forward, identity backward (straight-through)."""

    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


def round_ste(x: torch.Tensor) -> torch.Tensor:
    return _RoundSTE.apply(x)


def safe_sqrt(s: torch.Tensor) -> torch.Tensor:
    """sqrt with a finite gradient (0) where s = 0: an input row of zeros reads no noise."""
    if not s.requires_grad:
        return torch.sqrt(s)
    pos = s > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, s, torch.ones_like(s))), torch.zeros_like(s))


def patches(x: torch.Tensor, kernel: list[int], strides: list[int], dilations: list[int],
            pads: list[int]) -> tuple[torch.Tensor, list[int]]:
    """(B, C, *S) → (B, *out, K) patches, K = ∏kernel·C in (kernel offset, channel) order:
    the row order of a bundle's convolution matrix (and of runtime.im2col.patch_view)."""
    nd = len(kernel)
    torch_pads: list[int] = []
    for i in reversed(range(nd)):
        torch_pads += [pads[i], pads[i + nd]]
    xp = F.pad(x, torch_pads) if any(torch_pads) else x
    for i, (k, s, d) in enumerate(zip(kernel, strides, dilations)):
        if xp.shape[2 + i] < (k - 1) * d + 1:
            raise ValueError(f"convolution output would be empty: input {list(x.shape[2:])}, kernel {kernel}, "
                             f"pads {pads}")
        xp = xp.unfold(2 + i, (k - 1) * d + 1, s)[..., ::d]  # (B, C, *out so far, ..., k_i) at the end
    out = list(xp.shape[2:2 + nd])
    perm = [0, *range(2, 2 + nd), *range(2 + nd, 2 + 2 * nd), 1]
    return xp.permute(*perm).reshape(x.shape[0], *out, -1), out


def _t(a: np.ndarray | None) -> torch.Tensor | None:
    return None if a is None else torch.from_numpy(np.array(a, copy=True))


class TorchLayer(nn.Module):
    """A Conv/Gemm/MatMul layer of a bundle in torch; `layer` is the NumPy runtime's Layer
    (its chip, if any, is used as sampled). `affine` is the layer's per-output affine as the
    bundle stores it; `generator` draws the read noise."""

    def __init__(self, layer: Layer, affine: Affine, generator: torch.Generator | None = None,
                 train_weight: bool = False, perturb: Callable[[torch.Tensor], torch.Tensor] | None = None):
        super().__init__()
        self.name, self.kind, self.params = layer.name, layer.kind, layer.params
        self.k, self.n = layer.k, layer.n
        self.chip = layer.chip
        self.analog = layer.entry["placement"] == "analog"
        if (train_weight or perturb is not None) and self.chip is not None:
            raise ConfigError(f"layer {self.name!r}: a trainable or perturbed weight needs exact hardware "
                              "(hardware=None); on a chip the weights are the sampled tiles")
        self.perturb = perturb if self.analog else None  # pinned-digital weights are not on a chip
        self.generator = generator
        # float64 parameters: the effective gain (gain · column scale) and shift are then cast
        # to float32 exactly as Layer.set_affine casts them, so a chip run matches the NumPy one.
        self.gain = nn.Parameter(torch.from_numpy(np.asarray(affine.gain(), np.float64).copy()))
        self.shift = nn.Parameter(torch.from_numpy(np.asarray(affine.shift(), np.float64).copy()))
        self.register_buffer("col_scale", torch.from_numpy(np.asarray(layer.col_scale, np.float64).copy()))
        self.depthwise = _t(layer.depthwise)
        weight = torch.from_numpy(np.array(layer.matrix, dtype=np.float32, copy=True))  # (K, N), normalised if analog
        if train_weight and self.analog:
            self.weight = nn.Parameter(weight)
        else:
            self.register_buffer("weight", weight)
        if self.chip is not None:
            c, st = self.chip, self.chip.tiles
            self.d, self.var, self.ref_var = _t(st.d), _t(st.var), _t(st.ref_var)
            self.block_of = torch.from_numpy(np.asarray(st.block_of, np.int64))
            self.comp = _t(st.comp)
            self.i_fs = _t(np.asarray(c.i_fs, np.float32))
            # A packed layer's chip matrices are in physical row order: its inputs are routed there.
            self.input_rows = None if layer.input_rows is None else torch.from_numpy(np.asarray(layer.input_rows))
            self.slot_position = torch.from_numpy(layer.columns.slot_position)
            self.slot_gain = _t(layer.columns.slot_gain)
            self.gather_only = layer.columns.gather_only
            # Positions in output order already: the gather would only copy.
            self.identity_columns = self.gather_only and bool(
                np.array_equal(layer.columns.slot_position[0], np.arange(self.n)))

    # ------------------------------------------------------------------ affine

    def affine(self) -> Affine:
        """The (trained) per-output affine, in the folded form the periphery applies
        (γ = gain, β = shift): Layer.set_affine of it reproduces this layer's gain and shift."""
        n = self.n
        return Affine(np.zeros(n), self.gain.detach().numpy().copy(), self.shift.detach().numpy().copy(),
                      np.zeros(n), np.ones(n), 0.0)

    def _apply_affine(self, y: torch.Tensor) -> torch.Tensor:
        # Layer._affine: y·gain + shift with gain = (affine gain · column scale) in float32.
        gain, shift = (self.gain * self.col_scale).float(), self.shift.float()
        if torch.is_grad_enabled():
            return y * gain + shift
        return y.mul_(gain).add_(shift)  # y is this layer's own temporary

    def matrix(self) -> torch.Tensor:
        """The K×N weight the exact path multiplies by (normalised units on analog layers)."""
        return self.perturb(self.weight) if self.perturb is not None else self.weight

    # ------------------------------------------------------------------ products

    def product(self, cols: torch.Tensor) -> torch.Tensor:
        """(M, K) input vectors → (M, N) sums in normalised weight units (Layer.product)."""
        if self.chip is None:
            return cols @ self.matrix()
        codes, unit, x_scale = self.dac(cols)
        return self.crossbar(codes, unit, x_scale)

    def dac(self, x: torch.Tensor) -> tuple[torch.Tensor, float, torch.Tensor]:
        """Layer._dac with analog.dac_codes: codes, their unit, the scale outputs are multiplied by."""
        c = self.chip
        bits = c.spec.dac.bits
        if c.x_max is not None:
            x_scale = torch.tensor(np.float32(c.x_max))
            may_clip = True
        else:
            # Abs-max scaling per input vector: nothing exceeds the range, so nothing is clipped.
            absmax = x.abs().amax(dim=-1, keepdim=True)
            x_scale = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
            may_clip = False
        if bits is None:
            codes = x / x_scale
            return (torch.clamp(codes, -1.0, 1.0) if may_clip else codes), 1.0, x_scale
        levels = float(2 ** (bits - 1) - 1) if bits > 1 else 1.0
        codes = x * (torch.tensor(np.float32(levels)) / x_scale)
        if torch.is_grad_enabled():
            codes = round_ste(codes)
            return (torch.clamp(codes, -levels, levels) if may_clip else codes), 1.0 / levels, x_scale
        codes.round_()  # in place: no autograd recording
        return (codes.clamp_(-levels, levels) if may_clip else codes), 1.0 / levels, x_scale

    def crossbar(self, codes: torch.Tensor, unit: float, x_scale: torch.Tensor) -> torch.Tensor:
        """(M, K) DAC codes → (M, N) outputs in weight units: analog.tiled_product, then the
        column map (xbar.columns.ColumnMap.combine) and the input scale, as Layer._crossbar.

        Row block by row block (each block's rows of the codes are a strided view, so nothing
        is padded or copied), every block's readings summed in block order as the NumPy sum
        over blocks adds them."""
        spec = self.chip.spec
        if self.input_rows is not None:  # a packed layer: inputs routed to the chip's physical rows
            codes = codes[:, self.input_rows]
        nrb, r, _ = self.d.shape
        k = codes.shape[1]
        unit32 = torch.tensor(np.float32(unit))
        fs_all = self.i_fs / unit32  # (nrb, N) full scales in the units of the products
        scale_all = self.comp * unit32  # back to normalised current, drift-compensated
        v2 = torch.square(codes) if self.var is not None else None
        bits = spec.adc.bits
        levels = (float(2 ** (bits - 1) - 1) if bits > 1 else 1.0) if bits is not None else None
        # Without autograd recording, the same operations in place (no temporaries).
        inplace = not torch.is_grad_enabled()
        total = None
        for b in range(nrb):
            lo, hi = b * r, min(k, (b + 1) * r)
            y = codes[:, lo:hi] @ self.d[b, :hi - lo]  # in units of `unit`
            if self.var is not None:
                std = safe_sqrt(v2[:, lo:hi] @ self.var[b, :hi - lo])
                z = torch.randn(y.shape, generator=self.generator)
                y = y.add_(z.mul_(std)) if inplace else y + z * std
                if self.ref_var is not None:  # offset encoding: the reference column's noise, shared
                    ref_std = safe_sqrt(v2[:, lo:hi] @ self.ref_var[b, :hi - lo])  # (M, ncb)
                    noise = ref_std * torch.randn(ref_std.shape, generator=self.generator)
                    y = y - noise[:, self.block_of]
            fs = fs_all[b]
            if spec.adc.noise > 0:
                y = y + torch.randn(y.shape, generator=self.generator) * (torch.tensor(np.float32(spec.adc.noise)) * fs)
            scale = scale_all[b]
            if levels is not None:
                step = fs / torch.tensor(np.float32(levels))
                if inplace:
                    y = y.div_(step).round_().clamp_(-levels, levels)
                else:
                    y = torch.clamp(round_ste(y / step), -levels, levels)
                scale = scale * step
            if inplace:
                y = y.mul_(scale)
                total = y if total is None else total.add_(y)
            else:
                y = y * scale
                total = y if total is None else total + y
        if self.identity_columns:
            out = total
        elif self.gather_only:
            out = total[:, self.slot_position[0]]
        else:
            out = total[:, self.slot_position[0]] * self.slot_gain[0]
            for pos, gain in zip(self.slot_position[1:], self.slot_gain[1:]):
                out = out + total[:, pos] * gain
        return out * (x_scale.reshape(-1, 1) if x_scale.ndim else x_scale)

    # ------------------------------------------------------------------ forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "conv":
            return self._conv(x)
        if self.kind == "gemm":
            if x.ndim != 2:
                raise DataError(f"layer {self.name!r} (Gemm) expects a 2-D input, got shape {list(x.shape)}")
            if self.params.get("transA"):
                x = x.T
            self._check_width(x.shape[-1], x.shape)
            return self._apply_affine(self._rows(x))
        if self.kind == "recurrent" or self.params["side"] == "right":
            self._check_width(x.shape[-1], x.shape)
            return self._apply_affine(self._rows(x))
        xt = x.transpose(-1, -2)  # left MatMul, W @ x: rows are the columns of x
        self._check_width(xt.shape[-1], x.shape)
        return self._apply_affine(self._rows(xt)).transpose(-1, -2)

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        return self.product(x.reshape(-1, self.k)).reshape(*x.shape[:-1], self.n)

    def _check_width(self, width: int, shape) -> None:
        if width != self.k:
            raise DataError(f"layer {self.name!r} expects {self.k} input features, got a tensor of shape {list(shape)}")

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        p = self.params
        if x.ndim != 2 + len(p["kernel_shape"]) or x.shape[1] != p["in_channels"]:
            raise DataError(
                f"layer {self.name!r} (Conv) expects input (batch, {p['in_channels']}, "
                f"{len(p['kernel_shape'])} spatial dims), got shape {list(x.shape)}")
        pads = resolve_pads(tuple(x.shape[2:]), p["kernel_shape"], p["strides"], p["dilations"], p["pads"],
                            p["auto_pad"])
        geometry = (p["kernel_shape"], p["strides"], p["dilations"], pads)
        b = x.shape[0]
        if self.chip is not None and self.chip.x_max is not None:
            # A fixed DAC range quantises each activation on its own: quantise, then unfold
            # the codes (as Layer._conv does; the same codes as quantising the patches).
            codes, unit, x_scale = self.dac(x.movedim(1, -1))
            x = codes.movedim(-1, 1)
        cols, out = patches(x, *geometry)
        if self.depthwise is not None:
            kk, c = self.depthwise.shape[0], x.shape[1]
            w = self.depthwise.reshape(kk, c, self.n // c)
            y = (cols.reshape(-1, kk, c, 1) * w).sum(dim=1).reshape(-1, self.n)
        elif self.chip is not None and self.chip.x_max is not None:
            y = self.crossbar(cols.reshape(-1, self.k), unit, x_scale)
        else:
            y = self.product(cols.reshape(-1, self.k))
        y = self._apply_affine(y)
        return y.reshape(b, *out, self.n).movedim(-1, 1)
