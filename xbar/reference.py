"""onnxruntime on the source model: the independent reference for ideal hardware."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import numpy as np

from xbar.errors import ModelError


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def onnxruntime_fn(path: str | os.PathLike) -> Callable[[np.ndarray], np.ndarray]:
    """First output of the model at `path` for a single input, via onnxruntime."""
    import onnxruntime as ort

    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such reference model")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"{path}: onnxruntime cannot load the reference model ({exc})") from None
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]
