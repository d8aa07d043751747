"""Convolution as one matrix product: unfold input patches once per layer (im2col)."""

from __future__ import annotations

import itertools

import numpy as np


def resolve_pads(spatial: tuple[int, ...], kernel: list[int], strides: list[int], dilations: list[int],
                 pads: list[int], auto_pad: str) -> list[int]:
    """Explicit [begin..., end...] pads, resolving ONNX auto_pad against the input size."""
    nd = len(spatial)
    if auto_pad in ("", "NOTSET"):
        return list(pads) if pads else [0] * (2 * nd)
    if auto_pad == "VALID":
        return [0] * (2 * nd)
    begin, end = [], []
    for n, k, s, d in zip(spatial, kernel, strides, dilations):
        out = -(-n // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - n)
        small, large = total // 2, total - total // 2
        if auto_pad == "SAME_UPPER":
            begin.append(small)
            end.append(large)
        else:  # SAME_LOWER
            begin.append(large)
            end.append(small)
    return begin + end


def output_size(spatial: tuple[int, ...], kernel: list[int], strides: list[int], dilations: list[int],
                pads: list[int]) -> list[int]:
    nd = len(spatial)
    return [
        (spatial[i] + pads[i] + pads[i + nd] - (kernel[i] - 1) * dilations[i] - 1) // strides[i] + 1
        for i in range(nd)
    ]


def patches(x: np.ndarray, kernel: list[int], strides: list[int], dilations: list[int],
            pads: list[int]) -> tuple[np.ndarray, list[int]]:
    """(B, C, *S) → (B·L, C·∏kernel) patch rows, and the output spatial size.

    Columns are ordered (channel, kernel offsets) as the ONNX weight (M, C, *k) flattens, so
    the bundle's K×N matrix applies directly. The work happens channels-last: a patch row
    is then one strided window of a (B, *S, C) array and the whole layer is one large GEMM
    (B·L × K by K × N) instead of B small ones.
    """
    b, c = x.shape[:2]
    spatial = x.shape[2:]
    nd = len(spatial)
    out = output_size(spatial, kernel, strides, dilations, pads)
    if any(o <= 0 for o in out):
        raise ValueError(f"convolution output would be empty: input {list(spatial)}, kernel {kernel}, pads {pads}")
    xl = np.moveaxis(x, 1, -1)  # a view; free when x is itself a channels-last buffer
    if any(pads):
        xl = np.pad(xl, [(0, 0)] + [(pads[i], pads[i + nd]) for i in range(nd)] + [(0, 0)])
    if all(k == 1 for k in kernel):
        sl = tuple(slice(0, s * (o - 1) + 1, s) for s, o in zip(strides, out))
        return xl[(slice(None),) + sl].reshape(-1, c), out
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    win = np.lib.stride_tricks.sliding_window_view(xl, span, axis=tuple(range(1, nd + 1)))
    # win: (B, *positions, C, *span); pick strided positions and dilated taps.
    sel = ((slice(None),) + tuple(slice(0, s * (o - 1) + 1, s) for s, o in zip(strides, out))
           + (slice(None),) + tuple(slice(None, None, d) for d in dilations))
    return win[sel].reshape(-1, c * int(np.prod(kernel))), out
