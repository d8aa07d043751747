"""Standard normal float32 samples, fast: the Box–Muller transform on float32 uniforms.

Read noise needs one fresh normal per tile output per inference, tens of millions per
batch, and NumPy's float32 ziggurat (Generator.standard_normal) costs ~7.5 ns each here
against ~4 ns for Box–Muller with NumPy's vectorised log, sqrt, sin and cos. The transform
is exact for the uniforms it is given; float32 uniforms come in steps of 2⁻²⁴, so |z| never
exceeds √(2·24·ln 2) ≈ 5.77, a tail of probability 8·10⁻⁹ per sample that is left out.
"""

from __future__ import annotations

import math

import numpy as np

MAX_ABS = math.sqrt(2 * 24 * math.log(2))  # largest |z| the transform can return


def standard_normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """float32 N(0, 1) samples of `shape`, from 2·⌈n/2⌉ uniforms of `rng`."""
    n = math.prod(shape)
    h = (n + 1) // 2
    u = rng.random(2 * h, dtype=np.float32)  # [0, 1) in steps of 2⁻²⁴
    radius, angle = u[:h], u[h:]
    np.subtract(np.float32(1), radius, out=radius)  # (0, 1]: the log stays finite
    np.log(radius, out=radius)
    radius *= np.float32(-2)
    np.sqrt(radius, out=radius)
    angle *= np.float32(2 * math.pi)
    out = np.empty(2 * h, dtype=np.float32)
    np.cos(angle, out=out[:h])
    np.sin(angle, out=out[h:])
    out[:h] *= radius
    out[h:] *= radius
    return out[:n].reshape(shape)
