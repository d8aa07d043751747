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


def im2col(x: np.ndarray, kernel: list[int], strides: list[int], dilations: list[int],
           pads: list[int]) -> tuple[np.ndarray, list[int]]:
    """(B, C, *S) → (B, C·∏kernel, L) patches in (channel, kernel offset) row order, and out size.

    Rows are ordered as the ONNX weight (M, C, *k) flattens, so a K×N weight matrix applies
    directly. Loops over kernel offsets only (9 for 3×3), each a strided copy of the batch.
    """
    b, c = x.shape[:2]
    spatial = x.shape[2:]
    nd = len(spatial)
    out = output_size(spatial, kernel, strides, dilations, pads)
    if any(o <= 0 for o in out):
        raise ValueError(f"convolution output would be empty: input {list(spatial)}, kernel {kernel}, pads {pads}")
    if all(k == 1 for k in kernel) and not any(pads):
        sl = tuple(slice(None, None, s) for s in strides)
        patches = x[(slice(None), slice(None)) + sl]
        return np.ascontiguousarray(patches).reshape(b, c, -1), out
    if any(pads):
        width = [(0, 0), (0, 0)] + [(pads[i], pads[i + nd]) for i in range(nd)]
        x = np.pad(x, width)
    cols = np.empty((b, c, *kernel, *out), dtype=x.dtype)
    for offs in itertools.product(*(range(k) for k in kernel)):
        sl = tuple(slice(o * d, o * d + s * (n - 1) + 1, s) for o, d, s, n in zip(offs, dilations, strides, out))
        cols[(slice(None), slice(None)) + offs] = x[(slice(None), slice(None)) + sl]
    return cols.reshape(b, c * int(np.prod(kernel)), -1), out
