"""Model content that converts without error yet would make every later number meaningless."""

from __future__ import annotations

import numpy as np

from xbar.errors import ModelError


def refuse_nonfinite(value: np.ndarray, tensor: str, node: str, op: str, label: str, what: str,
                     allow_inf: bool = False) -> None:
    """Raise ModelError naming tensor and node if `value` holds NaN (or ±Inf unless allowed).

    Weights and biases must be finite: a NaN or Inf conductance cannot be programmed, and
    a NaN logit still yields an argmax, i.e. an accuracy that looks like a result. Other
    constants may hold ±Inf on purpose (attention masks), but never NaN.
    """
    v = np.asarray(value)
    if not np.issubdtype(v.dtype, np.floating):
        return
    bad = np.isnan(v) if allow_inf else ~np.isfinite(v)
    if not bad.any():
        return
    counts = [f"{int(n)} {name}" for name, n in (("NaN", np.isnan(v).sum()),
                                                  ("+Inf", 0 if allow_inf else np.isposinf(v).sum()),
                                                  ("-Inf", 0 if allow_inf else np.isneginf(v).sum())) if n]
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    raise ModelError(
        f"{label}: {what} tensor {tensor!r} of node {node!r} ({op}) contains {', '.join(counts)} "
        f"(first at index {first}); xbar cannot map non-finite values. The model is broken "
        "(e.g. training diverged); fix it and export it again."
    )
