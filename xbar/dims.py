"""A tensor's shape per sample: the batch taken out of whichever dimension holds it.

The batch is not always the leading dimension of a layer's output. torch's
MultiheadAttention projects (seq, batch, d) tensors, and the dynamo exporter names folded
dimensions by their expression, e.g. a Gemm over `16*batch` rows. Counting one output
vector per sample there would under-count the ADC conversions sixteen-fold, so the batch is
found as a factor of a dimension's name and divided out; where it cannot be found the
shape per sample is unknown rather than guessed.
"""

from __future__ import annotations

import math
import re
from typing import Any

# A dimension name that is a product of integers and symbols ("batch", "16*batch",
# "batch*seq"); anything else (sums, floor divisions) is an opaque symbol.
_PRODUCT = re.compile(r"\s*\w+(?:\s*\*\s*\w+)*\s*")

Shape = list[int | None]
Names = list[str | None]


def _factors(name: str) -> list[str] | None:
    return [f.strip() for f in name.split("*")] if _PRODUCT.fullmatch(name) else None


def _without(name: str, batch: str) -> tuple[int | None, str | None]:
    """A dimension named `name`, which has `batch` as a factor, with one such factor divided
    out: (value, name) of the rest, (1, None) if nothing is left."""
    factors = _factors(name) or []
    factors.remove(batch)
    numbers = [int(f) for f in factors if f.isdigit()]
    symbols = [f for f in factors if not f.isdigit()]
    const = math.prod(numbers)
    if not symbols:
        return const, None
    return None, "*".join(([str(const)] if const != 1 else []) + symbols)


def per_sample(shape: Shape | None, names: Names | None, batch: dict[str, Any] | None) -> tuple[Shape, Names] | None:
    """`shape` (None for a symbolic dimension, named in `names`) without the batch, as
    (dims, names); None when the batch is not found in it.

    `batch` is the manifest's: a symbolic (or relaxed) batch with a name (`dim`) is divided
    out of the one dimension that has it as a factor. Otherwise (a fixed batch; a batch
    without a name, or whose name shape inference did not carry this far) the batch is the
    leading dimension if that is the fixed size, or an unnamed symbol. A leading symbol of
    another name (an exporter's `unk__7` after a computed Reshape, say) may hold the batch
    times anything (windows, tokens), so it is not taken for the batch."""
    if not shape:
        return None
    names = list(names or [None] * len(shape))
    batch = batch or {}
    dim = batch.get("dim")
    symbolic = batch.get("mode") in ("symbolic", "relaxed") and dim
    hits = [i for i, n in enumerate(names) if symbolic and n and dim in (_factors(n) or [])]
    if hits:
        if len(hits) != 1 or _factors(names[hits[0]]).count(dim) != 1:
            return None  # the batch twice: not a per-sample quantity
        i = hits[0]
        value, name = _without(names[i], dim)
        dims = list(shape)
        if value == 1 and name is None:
            return dims[:i] + dims[i + 1:], names[:i] + names[i + 1:]
        return dims[:i] + [value] + dims[i + 1:], names[:i] + [name] + names[i + 1:]
    fixed = batch.get("mode") == "fixed"
    if shape[0] == batch.get("size") if fixed else shape[0] is None and names[0] in (None, dim):
        return list(shape[1:]), names[1:]
    return None


def fixed_batch(batch: dict[str, Any] | None) -> int | None:
    """The batch a model's manifest `batch` record fixes (it then runs in whole batches of
    it); None where any batch runs."""
    b = batch or {}
    return int(b["size"]) if b.get("mode") == "fixed" and b.get("size") else None


def vectors_per_sample(shape: Shape | None, names: Names | None, batch: dict[str, Any] | None, n: int) -> int | None:
    """Output vectors of n values a layer produces per sample (conv: per output pixel), if the
    shape per sample is all numbers."""
    rest = per_sample(shape, names, batch)
    if rest is None:
        # A fixed batch: each call runs `size` samples through the whole tensor, wherever in
        # its shape they are (a time-major attention's [seq, batch, d], say).
        size = fixed_batch(batch)
        if size and shape and all(isinstance(d, int) for d in shape) and math.prod(shape) % (n * size) == 0:
            return math.prod(shape) // (n * size)
        return None
    if any(d is None for d in rest[0]):
        return None
    return math.prod(rest[0]) // n
