"""Summaries of a figure measured on several chip instances: mean, spread, interval, worst.

Chips are independent draws of the same manufacturing process, so the mean over chips
estimates the expected accuracy of a chip; its 95 % confidence interval is the Student-t
interval mean ± t(0.975, n−1)·s/√n, clipped to the values a fraction can take [0, 1]
(with few chips and a wide spread the symmetric interval would otherwise pass 100 %).
At long drift times accuracy over chips is heavy-tailed (a few chips collapse), so the
t interval is only approximate there; the worst chip is reported beside it because the
tail, not the mean, is what a deployment has to survive.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

CONFIDENCE = 0.95


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE,
            bounds: tuple[float, float] = (0.0, 1.0)) -> tuple[float, float]:
    """Student-t confidence interval of the mean within `bounds`; (mean, mean) for one value."""
    v = np.asarray(values, dtype=np.float64)
    m = float(v.mean())
    if v.size < 2:
        return m, m
    from scipy.stats import t

    half = float(t.ppf(0.5 + confidence / 2, v.size - 1)) * float(v.std(ddof=1)) / math.sqrt(v.size)
    return max(m - half, bounds[0]), min(m + half, bounds[1])


def summary(values: Sequence[float], bounds: tuple[float, float] = (0.0, 1.0)
            ) -> dict[str, float | int | list[float]]:
    """Figures over chips: mean, sample std (ddof 1), 95 % CI of the mean, worst, best, n, values.

    One chip measures no spread: std and ci95 are then None (null in JSON), not a spread of 0
    and an interval of zero width that would read as certainty.
    `bounds` are the values the figure can take (default: a fraction, [0, 1]); pass
    (-inf, inf) for an unbounded figure such as an SNR in dB."""
    v = [float(x) for x in values]
    spread = len(v) > 1
    return {"n": len(v), "mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if spread else None,
            "ci95": list(mean_ci(v, bounds=bounds)) if spread else None, "min": min(v), "max": max(v), "values": v}
