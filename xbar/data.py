"""Load `.npz` data sets (x: inputs, y: optional integer labels) and check them against a model.

A model with several inputs (a text encoder's input_ids and attention_mask) reads one
array per input, saved under the input's name; `x` may stand for the first. Such data is a
dict {input name: array}, one sample per index of axis 0 in every array, and `take` and
`n_samples` cut and count it as they do a single array."""

from __future__ import annotations

import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xbar.dims import fixed_batch
from xbar.errors import DataError


class Shared:
    """An input every sample shares: the model declares it with a leading 1 beside inputs
    that lead with the batch (position_ids [1, seq] next to input_ids [batch, seq]). It is
    fed whole with every batch, never cut."""

    def __init__(self, array: np.ndarray):
        self.array = array


#: A model's inputs for a set of samples: one array, or {input name: array (or Shared)}.
Inputs = np.ndarray | dict[str, "np.ndarray | Shared"]


def n_samples(x: Inputs) -> int:
    """Samples in `x`: the length of axis 0 (of every array the samples do not share)."""
    if not isinstance(x, dict):
        return int(x.shape[0])
    return int(next(v for v in x.values() if not isinstance(v, Shared)).shape[0])


def take(x: Inputs, rows: slice | np.ndarray) -> Inputs:
    """The samples `rows` of `x` (of every array; a shared one whole)."""
    if not isinstance(x, dict):
        return x[rows]
    return {k: v if isinstance(v, Shared) else v[rows] for k, v in x.items()}


def as_feeds(x: Inputs, names: list[str]) -> dict[str, np.ndarray]:
    """`x` as a runtime's feeds: a single array is the first input's."""
    if not isinstance(x, dict):
        return {names[0]: x}
    return {k: v.array if isinstance(v, Shared) else v for k, v in x.items()}


def one_array(x: Inputs, what: str) -> np.ndarray:
    """`x` as the one input array `what` needs, or a DataError for a model with several."""
    if not isinstance(x, dict):
        return x
    if len(x) == 1:
        return next(iter(x.values()))
    raise DataError(f"{what} runs models with one input; this one takes {len(x)} ({', '.join(x)}). Evaluation "
                    "and the closed-form calibration methods ('stats', 'affine') run it.")


@dataclass
class Dataset:
    x: Inputs
    y: np.ndarray | None
    path: str
    min_samples: int = 1  # checked with the arrays (see read_dataset)
    checked: bool = False  # x and y passed _check already: a large x is not scanned twice

    def __len__(self) -> int:
        return n_samples(self.x)


def _shape_text(shape: list[int | None], names: list[str | None] | None = None) -> str:
    """(N, seq, 6): the samples N, other free dimensions by their names in the model (any
    size; `?` where the model names none)."""
    names = list(names or [None] * len(shape))
    return "(" + ", ".join("N" if k == 0 and d is None else str(d) if d is not None
                           else (n if n and not re.fullmatch(r"unk__\d+", n) else "?")
                           for k, (d, n) in enumerate(zip(shape, names))) + ")"


def time_major_input(graph: dict[str, Any]) -> tuple[str, str] | None:
    """(recurrent node, graph input) when a recurrent node with layout 0 ([seq, batch,
    features], torch's default batch_first=False) reads a graph input directly, so that the
    input's axis 0 is time, not samples; None otherwise."""
    from xbar.ops import RECURRENT_OP

    inputs = {i["name"] for i in graph["inputs"]}
    for node in graph["nodes"]:
        if node["op"] == RECURRENT_OP and int(node["attrs"].get("layout", 0)) == 0 and node["inputs"][0] in inputs:
            return node["name"], node["inputs"][0]
    return None


def check_sample_axis(graph: dict[str, Any], label: str) -> None:
    """Refuse data files for a model they cannot feed: one whose recurrent layer reads a
    graph input time-major, or its initial state from a graph input with the batch on axis 1.

    Data files hold one sample per index of axis 0, and eval, calibrate and --calib-data cut
    them into batches along it; with time on axis 0 every batch would be a slice of time
    steps: wrong results, silently."""
    from xbar.ops import RECURRENT_OP

    inputs = {i["name"] for i in graph["inputs"]}
    for node in graph["nodes"]:
        if node["op"] != RECURRENT_OP or int(node["attrs"].get("layout", 0)):
            continue
        state = next((v for v in node["inputs"][2:4] if v in inputs), None)
        if state is not None:
            raise DataError(
                f"{label}: recurrent node {node['name']!r} reads its initial state {state!r} from a graph input, "
                "shaped [directions, batch, hidden] (ONNX layout 0): its batch is on axis 1, but data files hold "
                "one sample per index of axis 0. Export the model with the states inside (left out, they are "
                "zeros), or feed them through the Python API (Runtime(bundle).run({name: array, ...})).")
    found = time_major_input(graph)
    if found is not None:
        node, x = found
        raise DataError(
            f"{label}: recurrent node {node!r} reads graph input {x!r} time-major "
            "([sequence, batch, features], ONNX layout 0), but data files hold one sample per index of "
            "axis 0 and are batched along it, which would cut the sequences apart, and the converter could not "
            "take it batch-first. Re-export it batch-first (torch: batch_first=True), or run it through the "
            "Python API on whole arrays.")


def load_dataset(path: str | os.PathLike, inputs: list[dict[str, Any]] | dict[str, Any] | None = None,
                 min_samples: int = 1, batch: dict[str, Any] | None = None) -> Dataset:
    """Read `path` (`x` or one array per model input, optional `y`) and check it fits the
    model's `inputs` (graph input records: name, shape, dtype).

    `batch` is the bundle's batch record: a model with a fixed batch size runs the data in
    chunks of that size, so the leading dimension is then free up to a multiple of it."""
    return fit_to_model(read_dataset(path, min_samples), inputs, batch)


def read_dataset(path: str | os.PathLike, min_samples: int = 1) -> Dataset:
    """Read `path` (`x`, or arrays named after the model's inputs; optional `y`). The arrays
    a model reads are checked (numeric, finite, as many samples in each, one integer label
    per sample) when `fit_to_model` has picked them: another array in the file is never
    read, and a model may even have an input named `y`. x is the one array, or a dict of
    them where the file holds several."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such data file")
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path} is not an .npz archive; save the data with numpy.savez(path, x=..., y=...)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not hasattr(npz, "files"):
                raise DataError(f"{path} holds a single array; save a .npz with keys 'x' (inputs) and optionally 'y' (labels)")
            arrays = {k: npz[k] for k in npz.files if k != "y"}
            y = npz["y"] if "y" in npz.files else None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DataError(f"{path} is not a readable .npz file ({exc}); save it with numpy.savez") from None
    except ValueError as exc:
        raise DataError(f"{path} cannot be read without pickle ({exc}); store plain numeric arrays") from None
    if not arrays:
        raise DataError(f"{path} has no array 'x' (found {'y' if y is not None else 'nothing'}); xbar reads inputs "
                        "from key 'x' (several inputs: one array per input, under its name) and labels from key 'y'")
    data = Dataset(x=arrays["x"] if list(arrays) == ["x"] else arrays, y=y, path=str(path), min_samples=min_samples)
    if list(arrays) == ["x"]:  # the common file: checked at once
        _check(data)
        data.checked = True
    return data


def _check(data: Dataset) -> None:
    """The arrays a model reads (data.x) and the labels: numeric, finite, at least
    `min_samples` samples, as many in each array, one integer label per sample."""
    arrays = data.x if isinstance(data.x, dict) else {"x": data.x}
    path, y = data.path, data.y
    for name, x in arrays.items():
        if not np.issubdtype(x.dtype, np.number) and x.dtype != np.bool_:
            raise DataError(f"{path}: {name} has dtype {x.dtype}; numeric inputs are needed")
        if np.issubdtype(x.dtype, np.complexfloating):  # a cast to the model's real type drops the imaginary part
            raise DataError(f"{path}: {name} holds complex numbers ({x.dtype}); model inputs are real: store the "
                            "part the model should read (real part, magnitude) as a real array")
        if x.ndim == 0:
            raise DataError(f"{path}: {name} is a single number (a 0-d array); data files hold one sample per "
                            "index of axis 0")
        if x.shape[0] < data.min_samples:
            raise DataError(f"{path}: {name} holds {x.shape[0]} samples; at least {data.min_samples} needed")
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            bad = int((~np.isfinite(x)).sum())
            raise DataError(f"{path}: {name} contains {bad} NaN/Inf values; clean the data first")
    counts = {name: x.shape[0] for name, x in arrays.items()}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{k} {v}" for k, v in counts.items())
        raise DataError(f"{path}: the model's input arrays hold different numbers of samples ({listed}); every "
                        "input array holds one sample per index of axis 0")
    first, x = next(iter(arrays.items()))
    if y is not None:
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise DataError(f"{path}: y has shape {list(y.shape)}; expected one label per sample, i.e. ({x.shape[0]},), "
                            f"as {first} {list(x.shape)} holds {x.shape[0]} samples along axis 0 (data files hold one "
                            "sample per index of axis 0, also for time-major models, which bundles take batch-first)")
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{path}: y has dtype {y.dtype}; labels must be integer class indices")


def _pick(data: Dataset, specs: list[dict[str, Any]]) -> list[tuple[str, np.ndarray]]:
    """The data's (key, array) for each model input: by the input's name, or `x` for the first."""
    arrays = data.x if isinstance(data.x, dict) else {"x": data.x}
    names = [spec["name"] for spec in specs]
    picked, missing = [], []
    for k, name in enumerate(names):
        if name in arrays:
            picked.append((name, arrays[name]))
        elif k == 0 and "x" in arrays and "x" not in names:
            picked.append(("x", arrays["x"]))
        else:
            missing.append(name)
    if missing:
        found = ", ".join(arrays)
        if len(names) == 1:
            raise DataError(f"{data.path} has no array 'x' (found {found}); xbar reads the model's input from key "
                            f"'x' (or its name, {names[0]!r}) and labels from key 'y'")
        raise DataError(f"{data.path}: the model takes {len(names)} inputs ({', '.join(names)}), and the data file "
                        f"holds no array for {', '.join(repr(m) for m in missing)} (found {found}). Save one array "
                        f"per input under its name, e.g. numpy.savez(path, {', '.join(f'{n}=...' for n in names)}, "
                        "y=...); 'x' may stand for the first.")
    return picked


def fit_to_model(data: Dataset, inputs: list[dict[str, Any]] | dict[str, Any] | None,
                 batch: dict[str, Any] | None = None) -> Dataset:
    """Check that `data` fits the model's `inputs` (shapes; a fixed batch size divides the
    sample count) and cast each array to its input's dtype. The result's x is one array for
    a model with one input, else {input name: array}."""
    specs = [inputs] if isinstance(inputs, dict) else list(inputs or [])
    if not specs:  # no model to fit: as read (single array; float32 as before)
        if not data.checked:
            _check(data)
        x = data.x if isinstance(data.x, dict) else data.x.astype(np.float32, copy=False)
        return Dataset(x=x, y=data.y, path=data.path, min_samples=data.min_samples)
    y = data.y
    if y is not None and any(spec["name"] == "y" for spec in specs):
        # A model input named y: the file's y is that input, and there are no labels.
        data = Dataset(x={**(data.x if isinstance(data.x, dict) else {"x": data.x}), "y": y}, y=None,
                       path=data.path, min_samples=data.min_samples)
    picked = _pick(data, specs)  # messages name each array by the key it was read from
    shared = {spec["name"] for spec in _shared(specs, batch)}
    if not (data.checked and len(picked) == 1 and picked[0][1] is data.x):
        _check(Dataset(x={key: a for spec, (key, a) in zip(specs, picked) if spec["name"] not in shared},
                       y=data.y, path=data.path, min_samples=data.min_samples))
    fitted = {spec["name"]: _fit_one(x, spec, batch, data.path, key, spec["name"] in shared)
              for spec, (key, x) in zip(specs, picked)}
    fitted = {k: Shared(v) if k in shared else v for k, v in fitted.items()}
    return Dataset(x=next(iter(fitted.values())) if len(specs) == 1 else fitted, y=data.y, path=data.path,
                   min_samples=data.min_samples)


def _shared(specs: list[dict[str, Any]], batch: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The inputs every sample shares: declared with a leading 1 in a model whose batch is
    not fixed, beside an input that leads with a free (the batch) dimension."""
    if (batch or {}).get("mode") == "fixed" or len(specs) < 2:
        return []
    leads = [(spec.get("shape") or [None])[:1] for spec in specs]
    if not any(lead == [None] for lead in leads):
        return []
    return [spec for spec, lead in zip(specs, leads) if lead == [1]]


def _fit_one(x: np.ndarray, input_spec: dict[str, Any], batch: dict[str, Any] | None, path: str,
             label: str, shared: bool = False) -> np.ndarray:
    if input_spec.get("shape") is not None:
        want = input_spec["shape"]
        fixed = fixed_batch(batch)
        if fixed is not None and want and x.ndim:
            want = [None] + list(want[1:])
            if x.shape[0] % fixed:
                raise DataError(f"{path}: {label} holds {x.shape[0]} samples, but the model fixes its batch at "
                                f"{fixed} and runs in batches of that size; give a multiple of {fixed} samples")
        fits = x.ndim == len(want) and all(w is None or w == s for w, s in zip(want, x.shape))
        if not fits:
            raise DataError(
                f"{path}: {label} has shape {tuple(x.shape)}, but model input {input_spec['name']!r} expects "
                f"{_shape_text(want, input_spec.get('dim_names'))} (N = number of samples; named and ? "
                "dimensions take any size). Reshape the data to match the model."
                + (f" Every sample shares {input_spec['name']!r} (its leading 1 beside the batch of the other "
                   "inputs): store it once, with that 1." if shared else "")
            )
    want = np.dtype(input_spec["dtype"])
    if (want.kind in "iub" and x.dtype.kind in "fiub" and x.dtype != want
            and not (want.kind in "iu" and np.can_cast(x.dtype, want))):
        # Token ids, masks, uint8 images: a cast would truncate 3.7 to 3, turn 2 into True or
        # wrap 300 to 44 in uint8, silently.
        if want.kind == "b":
            ok = np.isin(x, (0, 1))
        else:
            info = np.iinfo(want)
            ok = (x == np.trunc(x)) & (x >= info.min) & (x <= info.max) if x.dtype.kind == "f" else \
                (x >= info.min) & (x <= info.max)
        if not ok.all():
            bad = x[~ok].flat[0].item()
            allowed = "0/1 (or booleans)" if want.kind == "b" else \
                f"whole numbers from {np.iinfo(want).min} to {np.iinfo(want).max}"
            raise DataError(f"{path}: {label} holds {int((~ok).sum())} values (e.g. {bad!r}) that model input "
                            f"{input_spec['name']!r} ({want.name}) cannot take without changing them; store "
                            f"{allowed} for it")
    if want.kind == "f" and x.dtype.kind in "fiu" and float(np.finfo(want).max) < _largest(x.dtype):
        # float64 data beyond float32's range (or huge integers) would become ±inf, then NaN.
        big = np.abs(x) > np.finfo(want).max
        if big.any():
            raise DataError(f"{path}: {label} holds {int(big.sum())} values (e.g. {x[big].flat[0].item():.3g}) beyond "
                            f"what model input {input_spec['name']!r} ({want.name}, up to ±{np.finfo(want).max:.3g}) "
                            "can hold: they would become ±inf; rescale the data")
    return x.astype(want, copy=False)


def _largest(dtype: np.dtype) -> float:
    return float(np.finfo(dtype).max if dtype.kind == "f" else np.iinfo(dtype).max)


def scored_shape(output_spec: dict[str, Any], batch: dict[str, Any] | None = None) -> list[int | str | None] | None:
    """A model output's shape per sample, a free dimension as its name in the model (None
    where it has none), or None if unknown.

    The leading dimension is the batch, except for a model with a fixed batch (the
    bundle's `batch` record) whose output does not lead with it (batch 1 squeezed away)."""
    shape = output_spec.get("shape")
    if not shape or (len(shape) == 1 and np.dtype(output_spec.get("dtype", "float32")).kind in "iu"):
        return None  # unknown, or one integer per sample: the predicted class itself (an ArgMax)
    names = [n if n and not re.fullmatch(r"unk__\d+", n) else None
             for n in output_spec.get("dim_names") or [None] * len(shape)]
    named = [d if d is not None else n for d, n in zip(shape, names)]
    fixed = fixed_batch(batch)
    if fixed and shape[0] != fixed:  # the rows per sample are a guess here (predict checks them): one axis
        return [int(np.prod(shape, dtype=np.int64)) if all(isinstance(d, int) for d in shape) else None]
    return named[1:]


def check_labels(data: Dataset, per_sample: list[int | str | None] | None) -> None:
    """Refuse labels that no output could match, scoring them as misses would bias accuracy,
    and labels for an output that scores several positions per sample (a language model's
    seq×vocab), where one label per sample has no meaning. `per_sample`: the first output's
    shape per sample (`scored_shape`)."""
    y = data.y
    if y is None or len(y) == 0:
        return
    if per_sample is not None and sum(d != 1 for d in per_sample) > 1:
        shown = "×".join("?" if d is None else str(d) for d in per_sample)  # free ones by name
        raise DataError(f"{data.path}: y holds one label per sample, but the model's first output has {shown} "
                        "values per sample: scores for several positions (tokens, pixels), so one label cannot "
                        "be scored against them. Leave y out of the data file (eval then reports agreement with "
                        "ideal hardware only), or score the outputs yourself through the Python API.")
    n_classes = (None if per_sample is None or not all(isinstance(d, int) for d in per_sample)
                 else int(np.prod(per_sample, dtype=np.int64)))
    bad = y < 0 if n_classes is None else (y < 0) | (y >= n_classes)
    if bad.any():
        values = np.unique(y[bad])
        shown = ", ".join(str(int(v)) for v in values[:8]) + (", …" if len(values) > 8 else "")
        allowed = "non-negative class indices" if n_classes is None else f"class indices 0 to {n_classes - 1}"
        raise DataError(f"{data.path}: y holds {int(bad.sum())} labels outside the model's output "
                        f"({allowed}): {shown}. Fix the labels, or check that the data belong to this model.")
