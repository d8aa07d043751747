"""Accuracy over chip instances (seeds) and drift times: the table `xbar eval` prints."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from xbar.bundle import Bundle
from xbar.data import Dataset, take
from xbar.hardware import HardwareSpec
from xbar.runtime.evaluate import accuracy, predict, top1
from xbar.runtime.executor import Runtime
from xbar.stats import summary
from xbar.units import format_time


@dataclass
class SweepRow:
    t: float
    accuracies: list[float] = field(default_factory=list)
    agreements: list[float] = field(default_factory=list)  # top-1 agreement with ideal hardware

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracies))

    @property
    def std(self) -> float:
        # Sample standard deviation across chip instances (ddof=1), 0 for a single chip.
        return float(np.std(self.accuracies, ddof=1)) if len(self.accuracies) > 1 else 0.0

    def to_dict(self) -> dict:
        """One drift time over the chips: `accuracy` (None without labels) and
        `agreement_with_ideal`, each a `xbar.stats.summary` (per-chip values in seed order)."""
        return {"t": self.t, "time": format_time(self.t),
                "accuracy": summary(self.accuracies) if self.accuracies else None,
                "agreement_with_ideal": summary(self.agreements)}


def sweep(bundle: Bundle, spec: HardwareSpec, data: Dataset, seeds: list[int], times: list[float],
          batch_size: int = 128, ideal_out: np.ndarray | None = None,
          progress: Callable[[Iterable[tuple[float, int]]], Iterable[tuple[float, int]]] | None = None,
          chip_progress: Callable[[list[Any]], Iterable[Any]] | None = None) -> list[SweepRow]:
    """Evaluate one chip per (time, seed); every chip is sampled afresh from its seed."""
    if ideal_out is None:
        ideal_out = predict(Runtime(bundle), data.x, batch_size)
    ideal_top = top1(ideal_out)
    rows = {t: SweepRow(t) for t in times}
    jobs = [(t, s) for t in times for s in seeds]
    for t, seed in (progress(jobs) if progress else jobs):
        acc, agree, _ = evaluate_chip(bundle, spec.override(t_inference=t), seed, data, ideal_top, batch_size,
                                      chip_progress)
        if acc is not None:
            rows[t].accuracies.append(acc)
        rows[t].agreements.append(agree)
    return [rows[t] for t in times]


def evaluate_chip(bundle: Bundle, spec: HardwareSpec, seed: int, data: Dataset, ideal_top: np.ndarray,
                  batch_size: int = 128, chip_progress: Callable[[list[Any]], Iterable[Any]] | None = None,
                  snr_samples: int = 0) -> tuple[float | None, float, list[dict[str, Any]] | None]:
    """One chip (`seed`) at the time `spec` names: its accuracy (None without labels), its
    top-1 agreement with ideal hardware's predictions `ideal_top`, and with `snr_samples`
    its per-layer SNR on the first that many samples (`diagnose.layer_snr`, the same chip
    run once more after the accuracy), else None."""
    rt = Runtime(bundle, spec, seed=seed, progress=chip_progress)
    out = predict(rt, data.x, batch_size)
    acc = accuracy(out, data.y) if data.y is not None else None
    snr = None
    if snr_samples:
        from xbar.runtime.diagnose import layer_snr

        snr = layer_snr(rt, take(data.x, slice(0, snr_samples)))
    return acc, float((top1(out) == ideal_top).mean()), snr
