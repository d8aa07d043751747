"""The digital time loop of an ONNX LSTM / GRU / RNN whose matrices are crossbar layers.

converter/recurrent.py explains the mapping: per direction, W (input matrix, shift Wb),
R (recurrent matrix, shift Rb) and, for a GRU with linear_before_reset=0, R_h are
ordinary crossbar layers (runtime/layer.py), so every product goes through the same
ideal or chip path as any other analog layer: DAC, tiles, read noise, ADC, affine. Here
only the digital part runs: gate non-linearities, cell state, sequence lengths, the loop.

x_t·W for all t is one call of the W layer (the inputs are known before the loop; each
vector is still its own DAC conversion and read); h_{t-1}·R is one call per time step.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from xbar.errors import DataError
from xbar.runtime.layer import Layer


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(x.dtype, copy=False)


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(x, np.zeros((), x.dtype))


# ONNX's activations for recurrent ops, with the default parameters of the ONNX op of
# the same name (converter/recurrent.py refuses explicit activation_alpha/beta).
ACTIVATION_FNS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "Sigmoid": _sigmoid,
    "Tanh": np.tanh,
    "Relu": lambda x: np.maximum(x, 0),
    "HardSigmoid": lambda x: np.clip(np.float32(0.2) * x + np.float32(0.5), 0, 1),
    "LeakyRelu": lambda x: np.where(x >= 0, x, np.float32(0.01) * x),
    "Elu": lambda x: np.where(x >= 0, x, np.expm1(np.minimum(x, 0))),
    "Softsign": lambda x: x / (1 + np.abs(x)),
    "Softplus": _softplus,
}


class Recurrent:
    """One recurrent node: called like a digital op, (X, sequence_lens, initial_h, initial_c)
    → (Y, Y_h, Y_c) in the node's layout."""

    def __init__(self, name: str, attrs: dict[str, Any], layers: list[Layer]):
        self.name = name
        self.cell = attrs["cell"]
        self.hidden = int(attrs["hidden_size"])
        self.layout = int(attrs["layout"])
        self.lbr = int(attrs["linear_before_reset"])
        self.directions = ["forward", "reverse"] if attrs["direction"] == "bidirectional" else [attrs["direction"]]
        per_dir = len(attrs["activations"]) // len(self.directions)
        self.acts = [[ACTIVATION_FNS[a] for a in attrs["activations"][d * per_dir:(d + 1) * per_dir]]
                     for d in range(len(self.directions))]
        self.layers = [[layers[i] if i >= 0 else None for i in idx] for idx in attrs["layers"]]
        self.clip = attrs.get("clip")
        self.input_forget = bool(attrs.get("input_forget", 0))
        p = attrs.get("peepholes")
        self.peepholes = None if p is None else np.asarray(p, dtype=np.float32).reshape(len(self.directions), 3, -1)

    def __call__(self, args: list[np.ndarray | None], attrs: dict[str, Any]) -> list[np.ndarray]:
        x, seq_lens, h0, c0 = (list(args) + [None] * 4)[:4]
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 3:
            raise DataError(f"{self.cell} node {self.name!r} expects a 3-D input, got shape {list(x.shape)}")
        if self.layout:
            x = np.swapaxes(x, 0, 1)  # (T, B, I)
            h0 = None if h0 is None else np.swapaxes(h0, 0, 1)  # (dirs, B, H)
            c0 = None if c0 is None else np.swapaxes(c0, 0, 1)
        t_len, batch = x.shape[:2]
        lens = np.full(batch, t_len, dtype=np.int64) if seq_lens is None else np.asarray(seq_lens).astype(np.int64)
        if lens.shape != (batch,) or np.any(lens < 0) or np.any(lens > t_len):
            raise DataError(f"{self.cell} node {self.name!r}: sequence_lens {lens.tolist()} do not fit "
                            f"{batch} sequences of at most {t_len} steps")
        nd, hs = len(self.directions), self.hidden
        y = np.zeros((t_len, nd, batch, hs), dtype=np.float32)
        y_h = np.empty((nd, batch, hs), dtype=np.float32)
        y_c = np.empty((nd, batch, hs), dtype=np.float32)
        for d, direction in enumerate(self.directions):
            h = np.zeros((batch, hs), np.float32) if h0 is None else np.array(h0[d], dtype=np.float32)
            c = np.zeros((batch, hs), np.float32) if c0 is None else np.array(c0[d], dtype=np.float32)
            w, r, r_h = self.layers[d]
            xw = w(x.reshape(t_len * batch, -1)).reshape(t_len, batch, -1)  # x_t·W + Wb, all steps
            rows = np.arange(batch)
            for s in range(t_len):
                # Step s of batch element b is time t = s (forward) or len_b − 1 − s (reverse);
                # elements whose sequence has ended keep their state and output zeros.
                t = np.full(batch, s) if direction == "forward" else lens - 1 - s
                valid = t >= 0 if direction == "reverse" else s < lens
                if not valid.any():
                    break
                tc = np.clip(t, 0, t_len - 1)
                peep = None if self.peepholes is None else self.peepholes[d]
                h_new, c_new = self._step(xw[tc, rows], h, c, r, r_h, self.acts[d], peep)
                h = np.where(valid[:, None], h_new, h)
                c = np.where(valid[:, None], c_new, c)
                y[tc[valid], d, rows[valid]] = h[valid]
            # A sequence of no steps ends in zero states, not its initial ones (onnxruntime's
            # reading; the ONNX specification does not say).
            empty = (lens == 0)[:, None]
            y_h[d], y_c[d] = np.where(empty, 0, h), np.where(empty, 0, c)
        if self.layout:
            return [np.ascontiguousarray(y.transpose(2, 0, 1, 3)), np.swapaxes(y_h, 0, 1).copy(),
                    np.swapaxes(y_c, 0, 1).copy()]
        return [y, y_h, y_c]

    def _step(self, xw: np.ndarray, h: np.ndarray, c: np.ndarray, r: Layer, r_h: Layer | None,
              acts: list[Callable[[np.ndarray], np.ndarray]],
              peep: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        hs = self.hidden
        if self.clip is not None:  # ONNX clip bounds the input of every gate activation
            lim = np.float32(self.clip)
            acts = [(lambda fn: lambda v: fn(np.clip(v, -lim, lim)))(fn) for fn in acts[:2]] + acts[2:]
        if self.cell == "RNN":
            return acts[0](xw + r(h)), c
        if self.cell == "LSTM":  # gates i, o, f, c (ONNX order); peepholes P = [P_i, P_o, P_f]
            f, g, act_h = acts
            z = xw + r(h)
            zi, zo, zf = z[:, :hs], z[:, hs:2 * hs], z[:, 2 * hs:3 * hs]
            if peep is not None:
                zi, zf = zi + peep[0] * c, zf + peep[2] * c
            i = f(zi)
            fg = 1 - i if self.input_forget else f(zf)
            c = fg * c + i * g(z[:, 3 * hs:])
            if peep is not None:
                zo = zo + peep[1] * c
            return f(zo) * act_h(c), c
        f, g = acts  # GRU: gates z, r, h
        rh = r(h)  # linear_before_reset=1: all three gates' h·R + Rb; else update and reset only
        zg = f(xw[:, :hs] + rh[:, :hs])
        rg = f(xw[:, hs:2 * hs] + rh[:, hs:2 * hs])
        if self.lbr:
            n = g(xw[:, 2 * hs:] + rg * rh[:, 2 * hs:])
        else:
            n = g(xw[:, 2 * hs:] + r_h(rg * h))
        return (1 - zg) * n + zg * h, c
