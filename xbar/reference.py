"""onnxruntime on the source model: the independent reference for ideal hardware."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import numpy as np

from xbar.converter.export import IO_LAYOUT_KEY, IO_LAYOUT_SOURCE
from xbar.data import Inputs, as_feeds, n_samples, take
from xbar.errors import DataError, ModelError, brief


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def onnxruntime_fn(path: str | os.PathLike, x: Inputs | None = None,
                   data_label: str = "the data", time_major: dict | None = None) -> Callable[[Inputs], np.ndarray]:
    """First output of the model at `path` for its inputs (one array, or {input name: array}
    for several), via onnxruntime.

    With `x`, its shapes are checked against the model's declared inputs first, so a
    mismatch is one clear error before any work rather than onnxruntime's mid-run failure.
    `time_major` is the bundle's batch record of inputs it takes batch-first
    (converter/time_major.py): the source model gets them time-major again, and its output
    comes back batch-first, so both run on the same samples. So does the float model
    xbar exports from the bundle (converter/export.py), which keeps the source's layout and
    says so in its metadata; an export from xbar before that (producer xbar, no such entry)
    is batch-first as the bundle is, and gets the bundle's layout.
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such reference model")
    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # its failures are caught and said in one message, not logged in colour first
    try:
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"{path}: onnxruntime cannot load the reference model ({exc})") from None
    metas = session.get_inputs()
    names = [m.name for m in metas]
    swapped = set((time_major or {}).get("inputs", []))
    out_axis = (time_major or {}).get("outputs", {}).get(session.get_outputs()[0].name)
    about = session.get_modelmeta()
    exported = about.producer_name == "xbar"
    if exported and about.custom_metadata_map.get(IO_LAYOUT_KEY) != IO_LAYOUT_SOURCE:
        swapped, out_axis = set(), None  # an older xbar export: the bundle's own (batch-first) layout
    hint = ("give the model this bundle was converted from, or the float model xbar exported from this bundle"
            if exported else "give the reference this bundle was converted from")
    # Each source input as the bundle and the data file hold it: samples on axis 0.
    shapes, declared = {}, {}
    for meta in metas:
        shape = list(meta.shape)
        declared[meta.name] = "(" + ", ".join(d if isinstance(d, str) else "?" if d is None else str(d)
                                              for d in meta.shape) + ")"
        if meta.name in swapped:
            shape[:2] = shape[1::-1]
            declared[meta.name] += ", time-major: samples on axis 1"
        shapes[meta.name] = shape
    # A model that fixes its batch (e.g. [1, 3, 224, 224]) runs in chunks of that size:
    # sample by sample for batch 1, which is the ground truth a relaxed batch must match.
    lead = shapes[names[0]]
    fixed = lead[0] if lead and isinstance(lead[0], int) and lead[0] > 0 else None
    if x is not None:
        arrays = as_feeds(x, names)
        missing = [n for n in names if n not in arrays]
        if missing:
            raise DataError(f"{data_label}: the reference model {path} takes inputs {', '.join(names)}; the data "
                            f"has no array for {', '.join(repr(m) for m in missing)}; {hint}")
        for name in names:
            a, shape, label = arrays[name], shapes[name], "x" if len(names) == 1 else name
            fits = len(shape) == a.ndim and all(not isinstance(d, int) or d == s
                                                for d, s in zip(shape[1:] if fixed else shape,
                                                                a.shape[1:] if fixed else a.shape))
            if fits and fixed and len(a) % fixed:
                raise DataError(f"{data_label}: {label} holds {len(a)} samples, but the reference model {path} fixes "
                                f"its batch at {fixed}; give a multiple of {fixed} samples")
            if not fits:
                raise DataError(f"{data_label}: {label} has shape {tuple(a.shape)}, but the reference model {path} "
                                f"expects input {name!r} of shape {declared[name]}; {hint}, or data that fits it.")

    # A first output that does not declare the fixed batch on axis 0 (a batch of 1 squeezed
    # away) stacks per chunk, whatever its sizes happen to be.
    squeezes = bool(fixed) and list(session.get_outputs()[0].shape)[:1] != [fixed]

    def run(batch: Inputs) -> np.ndarray:
        n = n_samples(batch)
        if not fixed or n == fixed:
            return _run(batch)
        parts = [_run(take(batch, slice(j, j + fixed))) for j in range(0, n, fixed)]
        # Outputs that lead with the batch join along it; others (batch squeezed away) stack.
        joins = not squeezes and all(np.ndim(p) and np.shape(p)[0] == fixed for p in parts)
        return np.concatenate(parts, axis=0) if joins else np.stack(parts)

    def _run(batch: Inputs) -> np.ndarray:
        """One call of the source model on `batch` (samples on axis 0), its output likewise."""
        feed = {k: np.ascontiguousarray(np.swapaxes(v, 0, 1)) if k in swapped else v
                for k, v in as_feeds(batch, names).items()}
        try:
            out = session.run(None, feed)[0]
        except Exception as exc:
            shown = ", ".join(f"{k!r} of shape {declared[k]}" for k in names if k in declared)
            raise DataError(f"the reference model {path} (input {shown}) fails on a batch of shape "
                            f"{', '.join(str(tuple(v.shape)) for v in feed.values())} from {data_label}: "
                            f"{brief(exc)}") from None
        return np.moveaxis(out, out_axis, 0) if out_axis else out

    run.fixed_batch = fixed  # type: ignore[attr-defined]  # predict() sends multiples of it
    run.squeezes_batch = squeezes  # type: ignore[attr-defined]  # as Runtime's
    return run
