"""The column map: which output each tile position feeds, and with which digital gain.

Every weight position on the tiles (a differential pair, or one offset column) carries an
output column j and a gain g. A layer's output j is the gain-weighted sum of the ADC
readings of all positions assigned to j. Every encoding is a choice of this map:

- fixed point: one position per output, gain 1 (where it sits is the column placement);
- analog floating point: E positions per output, gains 2^(−k·e), disjoint weights;
- bit slicing: S positions per output, gains 2^(b·s)/(2^(b·S) − 1)·(2^b − 1), summing digits.

The converter writes the map (`position_output`, `position_gain`, one entry per tile
position in tile order); the runtime reads it back here, folds it into one K×N matrix for
exact hardware and combines ADC readings with it on a chip. Bundles of format version 1
stored only `column_order` (a permutation, gain 1), which is the fixed-point case.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from xbar.errors import BundleError


@dataclass(frozen=True)
class ColumnMap:
    output: np.ndarray  # (P,) int64: output column of tile position p
    gain: np.ndarray  # (P,) float32: digital gain of tile position p
    n: int  # outputs

    def __post_init__(self) -> None:
        # Slots: output j's s-th position (S = most positions any output has); a missing
        # slot points at position 0 with gain 0. Positions keep their order within an output.
        p = len(self.output)
        order = np.argsort(self.output, kind="stable")
        counts = np.bincount(self.output, minlength=self.n)
        s = int(counts.max()) if p else 1
        first = np.concatenate([[0], np.cumsum(counts)[:-1]])
        rank = np.arange(p) - first[self.output[order]]
        pos = np.zeros((s, self.n), dtype=np.int64)
        gain = np.zeros((s, self.n), dtype=np.float32)
        pos[rank, self.output[order]] = order
        gain[rank, self.output[order]] = self.gain[order]
        object.__setattr__(self, "slot_position", pos)
        object.__setattr__(self, "slot_gain", gain)
        object.__setattr__(self, "gather_only", s == 1 and bool(np.all(gain == 1)) and bool(np.all(counts == 1)))

    @property
    def positions(self) -> int:
        return len(self.output)

    def fold(self, full: np.ndarray) -> np.ndarray:
        """(K, P) normalised weights per position → (K, N) effective weights per output."""
        out = np.zeros((full.shape[0], self.n), dtype=np.float64)
        np.add.at(out.T, self.output, (full.astype(np.float64) * self.gain).T)
        return out.astype(full.dtype)

    def combine(self, y: np.ndarray) -> np.ndarray:
        """(M, P) readings per position → (M, N) outputs (a gather when the map is a permutation)."""
        if self.gather_only:
            return y[:, self.slot_position[0]]
        out = y[:, self.slot_position[0]] * self.slot_gain[0]
        for pos, gain in zip(self.slot_position[1:], self.slot_gain[1:]):
            out += y[:, pos] * gain
        return out


def read_map(entry: dict[str, Any], array: Callable[[str], np.ndarray]) -> ColumnMap:
    """The map of one analog layer; `array(name)` reads the layer's array by its name."""
    keys = entry["arrays"]
    n = int(entry["N"])
    if "position_output" in keys:
        output = np.asarray(array("position_output"), dtype=np.int64)
        gain = np.asarray(array("position_gain"), dtype=np.float32)
    elif "column_order" in keys:  # format version 1: a permutation with unit gains
        output = np.asarray(array("column_order"), dtype=np.int64)
        gain = np.ones(len(output), dtype=np.float32)
    else:
        raise BundleError(f"layer {entry['name']!r} has no column map (position_output or column_order)")
    if output.ndim != 1 or gain.shape != output.shape or (len(output) and (output.min() < 0 or output.max() >= n)):
        raise BundleError(f"layer {entry['name']!r}: its column map does not fit its {n} outputs")
    return ColumnMap(output, gain, n)
