"""Convolution as a matrix product: unfold the input into patches (im2col), chunk by chunk."""

from __future__ import annotations

import itertools

import numpy as np

from xbar.runtime.ops.pooling import window_reduce


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


def zero_padded(x: np.ndarray, pads: list[int], first: int) -> np.ndarray:
    """x with its axes first … first+nd−1 padded by zeros ([begin…, end…] as in ONNX).

    Only the border is zero-filled; the interior is written once, by the copy of x.
    """
    nd = len(pads) // 2
    shape = list(x.shape)
    inner = [slice(None)] * x.ndim
    for i in range(nd):
        ax = first + i
        shape[ax] += pads[i] + pads[i + nd]
        inner[ax] = slice(pads[i], pads[i] + x.shape[ax])
    out = np.empty(shape, dtype=x.dtype)
    out[tuple(inner)] = x
    for i in range(nd):
        ax, lo, hi = first + i, pads[i], pads[i + nd]
        edge = [slice(None)] * x.ndim
        if lo:
            edge[ax] = slice(0, lo)
            out[tuple(edge)] = 0
        if hi:
            edge[ax] = slice(shape[ax] - hi, shape[ax])
            out[tuple(edge)] = 0
    return out


def patch_view(x: np.ndarray, kernel: list[int], strides: list[int], dilations: list[int],
               pads: list[int]) -> tuple[np.ndarray, list[int]]:
    """(B, C, *S) → a (B, *out, K) array of patches, K = ∏kernel·C, and the output size.

    Patch columns are ordered (kernel offset, channel), the row order of the bundle's K×N
    matrix for convolutions. Where possible the result is a strided view of the
    channels-last input (nothing copied yet): the caller copies it chunk by chunk, so each
    chunk of patches is still in cache when its GEMM reads it.
    """
    b, c = x.shape[:2]
    spatial = x.shape[2:]
    nd = len(spatial)
    out = output_size(spatial, kernel, strides, dilations, pads)
    if any(o <= 0 for o in out):
        raise ValueError(f"convolution output would be empty: input {list(spatial)}, kernel {kernel}, pads {pads}")
    xl = np.moveaxis(x, 1, -1)  # a view; free when x is itself a channels-last buffer
    if any(pads):
        xl = zero_padded(xl, pads, first=1)
    elif not xl.flags.c_contiguous:
        xl = np.ascontiguousarray(xl)
    if all(k == 1 for k in kernel):
        sl = tuple(slice(0, s * (o - 1) + 1, s) for s, o in zip(strides, out))
        return xl[(slice(None),) + sl], out
    # A size-1 channel axis keeps whatever stride moveaxis gave it (NumPy ignores it when
    # judging contiguity), but the kernel-row run below steps through it value by value.
    st = (*xl.strides[:-1], xl.itemsize)
    if dilations[-1] == 1:
        # The last kernel axis and the channels are one contiguous run of k·C values.
        shape = (b, *out, *kernel[:-1], kernel[-1] * c)
        steps = (st[0], *(st[1 + i] * strides[i] for i in range(nd)),
                 *(st[1 + i] * dilations[i] for i in range(nd - 1)), st[-1])
        view = np.lib.stride_tricks.as_strided(xl, shape, steps, writeable=False)
        return view.reshape(b, *out, -1) if nd == 1 else _merge_tail(view, b, out), out
    cols = np.empty((b, *out, int(np.prod(kernel)), c), dtype=x.dtype)
    for k, offs in enumerate(itertools.product(*(range(k) for k in kernel))):
        sl = tuple(slice(o * d, o * d + s * (n - 1) + 1, s) for o, d, s, n in zip(offs, dilations, strides, out))
        cols[..., k, :] = xl[(slice(None),) + sl]
    return cols.reshape(b, *out, -1), out


class _merge_tail:
    """A (B, *out, k1, …, k_last·C) strided view read as (B, *out, K) without copying it all.

    Slicing along the batch and reshaping a slice copies only that slice.
    """

    def __init__(self, view: np.ndarray, b: int, out: list[int]):
        self.view = view
        self.shape = (b, *out, int(np.prod(view.shape[1 + len(out):])))

    def __getitem__(self, key: slice) -> np.ndarray:
        part = self.view[key]
        return part.reshape(part.shape[0], *self.shape[1:])


def patch_block(view: np.ndarray | _merge_tail, lo: int, hi: int) -> np.ndarray:
    """Images lo:hi of a patch_view result as a strided (b, *out, …) view, nothing copied;
    its trailing axes, read in C order, are the K values of each patch."""
    return view.view[lo:hi] if isinstance(view, _merge_tail) else view[lo:hi]


def patch_absmax(x: np.ndarray, kernel: list[int], strides: list[int], dilations: list[int],
                 pads: list[int]) -> np.ndarray:
    """(B, C, *S) → (B, *out): max |x| over each patch, exactly the row max of |patches|.

    Taken as a max over channels per pixel, then the separable sliding max of MaxPool over
    the kernel window (padding counts as 0), so it reads the input, not the ∏kernel-times
    larger patches.
    """
    a = absmax_last_axis(np.moveaxis(x, 1, -1))[:, None]  # (B, 1, *S)
    attrs = {"kernel_shape": kernel, "strides": strides, "dilations": dilations, "pads": pads}
    return window_reduce(a, attrs, np.maximum, 0)[:, 0]


def absmax_last_axis(x: np.ndarray) -> np.ndarray:
    """max |x| over the last axis."""
    # Halving the axis pass by pass: NumPy's reduction over a short last axis costs ~3 ns
    # per value, the elementwise maxima of halves ~2x less.
    a = np.abs(x)
    while a.shape[-1] > 1:
        w = a.shape[-1]
        h = w // 2
        m = np.maximum(a[..., :h], a[..., h:2 * h])
        if w % 2:
            np.maximum(m[..., :1], a[..., 2 * h:], out=m[..., :1])
        a = m
    return a[..., 0]
