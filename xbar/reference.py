"""onnxruntime on the source model: the independent reference for ideal hardware."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import numpy as np

from xbar.errors import DataError, ModelError, brief


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def onnxruntime_fn(path: str | os.PathLike, x: np.ndarray | None = None,
                   data_label: str = "the data", time_major: dict | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """First output of the model at `path` for a single input, via onnxruntime.

    With `x`, its shape is checked against the model's declared input first, so a
    mismatch is one clear error before any work rather than onnxruntime's mid-run failure.
    `time_major` is the bundle's batch record of inputs it takes batch-first
    (converter/time_major.py): the source model gets them time-major again, and its output
    comes back batch-first, so both run on the same samples.
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such reference model")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"{path}: onnxruntime cannot load the reference model ({exc})") from None
    meta = session.get_inputs()[0]
    swap = bool(time_major) and meta.name in time_major["inputs"]
    out_axis = (time_major or {}).get("outputs", {}).get(session.get_outputs()[0].name)
    declared = "(" + ", ".join(d if isinstance(d, str) else "?" if d is None else str(d) for d in meta.shape) + ")"
    # The source's input as the bundle and the data file hold it: samples on axis 0.
    shape = list(meta.shape)
    if swap:
        shape[:2] = shape[1::-1]
        declared += ", time-major: samples on axis 1"
    # A model that fixes its batch (e.g. [1, 3, 224, 224]) runs in chunks of that size:
    # sample by sample for batch 1, which is the ground truth a relaxed batch must match.
    fixed = shape[0] if shape and isinstance(shape[0], int) and shape[0] > 0 else None
    if x is not None:
        fits = len(shape) == x.ndim and all(not isinstance(d, int) or d == s
                                            for d, s in zip(shape[1:] if fixed else shape,
                                                            x.shape[1:] if fixed else x.shape))
        if fits and fixed and len(x) % fixed:
            raise DataError(f"{data_label}: x holds {len(x)} samples, but the reference model {path} fixes its "
                            f"batch at {fixed}; give a multiple of {fixed} samples")
        if not fits:
            raise DataError(f"{data_label}: x has shape {tuple(x.shape)}, but the reference model {path} expects "
                            f"input {meta.name!r} of shape {declared}; give the reference this bundle was "
                            "converted from, or data that fits it.")

    def run(batch: np.ndarray) -> np.ndarray:
        if not fixed or len(batch) == fixed:
            return _run(batch)
        parts = [_run(batch[j:j + fixed]) for j in range(0, len(batch), fixed)]
        # Outputs that lead with the batch join along it; others (batch squeezed away) stack.
        joins = all(np.ndim(p) and np.shape(p)[0] == fixed for p in parts)
        return np.concatenate(parts, axis=0) if joins else np.stack(parts)

    def _run(batch: np.ndarray) -> np.ndarray:
        """One call of the source model on `batch` (samples on axis 0), its output likewise."""
        feed = np.ascontiguousarray(np.swapaxes(batch, 0, 1)) if swap else batch
        try:
            out = session.run(None, {meta.name: feed})[0]
        except Exception as exc:
            raise DataError(f"the reference model {path} (input {meta.name!r} of shape {declared}) fails on a batch "
                            f"of shape {tuple(feed.shape)} from {data_label}: {brief(exc)}") from None
        return np.moveaxis(out, out_axis, 0) if out_axis else out

    run.fixed_batch = fixed  # type: ignore[attr-defined]  # predict() sends multiples of it
    return run
