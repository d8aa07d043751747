"""The per-output affine every crossbar layer ends with, shared by converter and runtime.

y = γ·(z + b − μ)/√(σ² + ε) + β: a batch-norm kept unfolded (so calibration can re-fit it),
or the identity carrying a bias. The digital periphery applies it as y = gain·z + shift.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FIELDS = ("bias", "gamma", "beta", "mean", "var")


@dataclass
class Affine:
    bias: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    eps: float

    @classmethod
    def identity(cls, bias: np.ndarray) -> "Affine":
        n = bias.shape[0]
        return cls(np.asarray(bias, np.float64), np.ones(n), np.zeros(n), np.zeros(n), np.ones(n), 0.0)

    def gain(self) -> np.ndarray:
        return np.asarray(self.gamma, np.float64) / np.sqrt(np.asarray(self.var, np.float64) + self.eps)

    def shift(self) -> np.ndarray:
        return np.asarray(self.beta, np.float64) + (np.asarray(self.bias, np.float64) - self.mean) * self.gain()

    def folded(self) -> "Affine":
        """The same map written as the periphery applies it: γ = gain, β = shift."""
        n = len(self.gamma)
        return Affine(np.zeros(n), self.gain(), self.shift(), np.zeros(n), np.ones(n), 0.0)
