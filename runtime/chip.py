"""A chip instance: what the tiles of each analog layer actually compute.

On ideal hardware the effective matrix of a tile is exactly the programmed one, read back
from the stored conductances: (G+ − G−)/ΔG for differential pairs, (G − G_ref)/(ΔG/2) for
offset columns. Non-ideal chips (later) replace the conductances, never this contract.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def normalised_tiles(conductance: np.ndarray, mapping: dict[str, Any]) -> np.ndarray:
    """(nrb, ncb, R, C) siemens → (nrb, ncb, R, Cw) normalised weights in [-1, 1]."""
    dg = mapping["g_max"] - mapping["g_min"]
    c = conductance.shape[-1]
    if mapping["encoding"] == "differential":
        cw = c // 2
        diff = conductance[..., 0:2 * cw:2].astype(np.float64) - conductance[..., 1:2 * cw:2]
        return (diff / dg).astype(np.float32)
    cw = c - 1
    diff = conductance[..., :cw].astype(np.float64) - conductance[..., cw:cw + 1]
    return (diff / (dg / 2)).astype(np.float32)


def assemble(tiles: np.ndarray, k: int, n: int, column_order: np.ndarray) -> np.ndarray:
    """Stack tiles back into one K×N matrix, in the layer's original column order."""
    nrb, ncb, r, cw = tiles.shape
    full = tiles.transpose(0, 2, 1, 3).reshape(nrb * r, ncb * cw)[:k, :n]
    out = np.empty_like(full)
    out[:, column_order] = full
    return out
