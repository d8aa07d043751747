"""Accuracy and agreement of a runtime over a data set, in batches."""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

import numpy as np

from xbar.data import Dataset, n_samples, take
from xbar.errors import DataError


def batches(n: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n, batch_size):
        yield slice(start, min(n, start + batch_size))


def aligned(batch_size: int, fixed: int | None) -> int:
    """`batch_size` rounded up to a multiple of a model's fixed batch size (if it has one)."""
    return batch_size if not fixed else -(-batch_size // fixed) * fixed


def predict(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch_size: int,
            progress: Callable[[Iterable[slice]], Iterable[slice]] | None = None) -> np.ndarray:
    """Run `fn` over `x` in batches and concatenate the outputs.

    A model that fixes its batch size (`fn.fixed_batch`) gets batches of a multiple of it."""
    parts = []
    fixed = getattr(fn, "fixed_batch", None)
    if fixed and n_samples(x) % fixed:  # else the model refuses the last chunk, naming its size, not this
        raise DataError(f"{n_samples(x)} samples, but the model fixes its batch at {fixed} and runs whole batches "
                        f"of it; give a multiple of {fixed} samples")
    chunks: Iterable[slice] = list(batches(n_samples(x), aligned(batch_size, fixed)))
    if progress is not None:
        chunks = progress(chunks)
    for sl in chunks:
        out = np.asarray(fn(take(x, sl)))
        n = sl.stop - sl.start
        # A fixed-batch graph whose output does not declare that batch returns one part per
        # chunk of `fixed` samples, stacked: rows per sample only if each part holds `fixed`.
        if getattr(fn, "squeezes_batch", False) and n == fixed:
            out = out[None]  # one chunk comes back without the chunk axis several are stacked on
        stacked = (bool(fixed) and out.ndim >= 2 and out.shape[0] != n and out.shape[0] * fixed == n
                   and out.shape[1] == fixed)
        if out.ndim == 0 or out.shape[0] != n and not stacked:
            raise DataError(
                f"the model's first output has shape {list(out.shape)} for a batch of {n} samples: it does not "
                "hold one row per sample along axis 0 (the axis data files are batched along), so it cannot be "
                "scored per sample. If it is a recurrent model read time-major whose axes the converter could not "
                "follow, re-export it batch-first (torch: batch_first=True).")
        if stacked:  # (chunks, fixed, ...) -> one row per sample, as a joined output has them
            out = out.reshape((n,) + out.shape[2:])
        parts.append(out)
    return np.concatenate(parts, axis=0)


def top1(out: np.ndarray) -> np.ndarray:
    """Each sample's predicted class: the output itself where the model gives one integer
    per sample (an ArgMax as its first output), else the index of the largest value of the
    sample's whole output."""
    if out.ndim == 1 and out.dtype.kind in "iu":
        return out
    return out.reshape(len(out), -1).argmax(axis=1)


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of samples whose predicted class (top1) is the same in both outputs."""
    return float((top1(a) == top1(b)).mean())


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((top1(logits) == y).mean())


def summarise(out: np.ndarray, data: Dataset, ref: np.ndarray | None = None) -> dict[str, float | int]:
    result: dict[str, float | int] = {"n": len(data)}
    if data.y is not None:
        result["accuracy"] = accuracy(out, data.y)
    if ref is not None:
        a = out.reshape(len(out), -1)
        b = ref.reshape(len(ref), -1)
        result["agreement"] = agreement(out, ref)
        diff = float(np.max(np.abs(a.astype(np.float64) - b)))
        result["max_abs_diff"] = diff
        # Scale-free companion: the largest difference as a fraction of the largest |output|,
        # readable whether outputs are ~1e12 or ~1e-14.
        peak = float(np.max(np.abs(b))) if b.size else 0.0
        result["max_rel_diff"] = diff / peak if peak > 0 else (0.0 if diff == 0 else float("inf"))
        if data.y is not None:
            result["reference_accuracy"] = accuracy(ref, data.y)
    return result
