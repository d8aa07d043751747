"""Per-row-block matrices that keep only the position ranges holding something.

A depthwise layer's TileState matrices (nrb, R, N) are mostly zeros: row block b's rows
reach only the few tiles that were allocated for them. `SpanStore` keeps, per row block,
contiguous runs of positions as (R, width) float32 arrays and nothing else; the positions
left out are exactly 0, so `dense()` gives back the (nrb, R, N) array bit for bit.
"""

from __future__ import annotations

import numpy as np


def _runs(keep: np.ndarray) -> list[tuple[int, int]]:
    """(N,) bool → [lo, hi) runs of True."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], keep.astype(np.int8), [0]])))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist()))


class SpanStore:
    """(nrb, R, N) float32 kept as per-row-block runs of positions.

    Built from one or more dense arrays of the same shape with the same runs, so a product
    over a span reads each at the same offset: a run is kept where `spans` (the positions
    the product reads) or any of the arrays has a nonzero value in the column.
    """

    def __init__(self, shape: tuple[int, int, int], runs: list[list[tuple[int, int]]],
                 blocks: list[list[np.ndarray]]) -> None:
        self.shape = shape
        self.runs = runs
        self.blocks = blocks
        self.dtype = np.dtype(np.float32)

    @staticmethod
    def keep(arrays: list[np.ndarray], spans: list[list[tuple[int, int]]]) -> list[list[tuple[int, int]]]:
        """The runs to keep per row block for `arrays` (all (nrb, R, N)) and the read `spans`."""
        nrb, _, n = arrays[0].shape
        out = []
        for b in range(nrb):
            keep = np.zeros(n, dtype=bool)
            for lo, hi in spans[b]:
                keep[lo:hi] = True
            for a in arrays:  # by bits: a −0.0 is kept too, so dense() is exact
                keep |= np.any(a[b].view(np.uint32) != 0, axis=0)
            out.append(_runs(keep))
        return out

    @classmethod
    def pack(cls, dense: np.ndarray, runs: list[list[tuple[int, int]]]) -> "SpanStore":
        blocks = [[np.ascontiguousarray(dense[b, :, lo:hi], dtype=np.float32) for lo, hi in rb]
                  for b, rb in enumerate(runs)]
        return cls(dense.shape, runs, blocks)

    def dense(self) -> np.ndarray:
        out = np.zeros(self.shape, dtype=np.float32)
        for b, (rb, arrs) in enumerate(zip(self.runs, self.blocks)):
            for (lo, hi), a in zip(rb, arrs):
                out[b, :, lo:hi] = a
        return out

    def view(self, b: int, rows: int, lo: int, hi: int) -> np.ndarray:
        """(rows, hi − lo) of row block b; [lo, hi) must lie inside one kept run."""
        for (s, e), a in zip(self.runs[b], self.blocks[b]):
            if s <= lo and hi <= e:
                return a[:rows, lo - s:hi - s]
        raise ValueError(f"positions [{lo}, {hi}) of row block {b} are not stored")  # pragma: no cover

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for arrs in self.blocks for a in arrs)
