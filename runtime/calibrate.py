"""Re-fit each analog layer's per-output affine on one chip instance, then fold it.

Layers are visited in topological order while the calibration set flows through the
noisy chip, so each layer is fitted on the inputs it really receives once every earlier
layer is already calibrated. Two label-free methods:

- stats: re-estimate the batch-norm statistics μ, σ² from the noisy pre-BN activations.
  For layers whose affine is not a batch-norm (BN folded at export, or an earlier
  calibration already folded), the same idea is applied against the clean activations:
  the per-channel mean and spread of the noisy output are matched to the ideal output's.
- affine: per output channel, least squares a, b with a·y_noisy + b ≈ y_clean, where
  y_clean is the ideal-hardware activation at the same point for the same samples.

A third method, sgd, trains all the affines together end to end through the chip in torch
(xbar/training/sgd.py): by distillation to the ideal outputs (label-free) or cross-entropy.

The matrices of a recurrent node (LSTM/GRU/RNN) are fitted the same way when the walk
reaches the node, on every time step's input vectors (see _fit_recurrent).

Folding writes the result as the periphery applies it (γ = gain, β = shift, μ = 0,
σ² = 1, ε = 0, b = 0): one multiply-add per output after the ADC.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np

from xbar import __version__
from xbar.affine import FIELDS, Affine
from xbar.bundle import Bundle
from xbar.data import as_feeds, n_samples
from xbar.errors import ConfigError, DataError
from xbar.hardware import HardwareSpec
from xbar.runtime.evaluate import accuracy, agreement, predict
from xbar.runtime.executor import Runtime
from xbar.runtime.layer import Layer
from xbar.runtime.recurrent import Recurrent
from xbar.source_affines import keep_source_affines, restore_source_affines, source_network

if TYPE_CHECKING:
    from xbar.training.sgd import SGDOptions

METHODS = ("stats", "affine", "sgd")
MIN_SAMPLES = 16  # below this the per-channel moments are too noisy to fit two parameters


def _channels(y: np.ndarray, layer: Layer) -> np.ndarray:
    """Layer output → (samples, N): every position of every sample is one observation."""
    if layer.kind == "conv":
        return np.moveaxis(y, 1, -1).reshape(-1, layer.n).astype(np.float64)
    if layer.kind == "matmul" and layer.params.get("side") == "left":
        return np.swapaxes(y, -1, -2).reshape(-1, layer.n).astype(np.float64)
    return y.reshape(-1, layer.n).astype(np.float64)


def _read_affine(bundle: Bundle, entry: dict[str, Any]) -> Affine:
    keys = entry["arrays"]
    return Affine(*(bundle.array(keys[name]).astype(np.float64) for name in FIELDS), float(entry["affine"]["eps"]))


def _fit(method: str, layer: Layer, aff: Affine, source: str, x_noisy: np.ndarray, clean_out: np.ndarray) -> Affine:
    if method == "stats" and source == "batchnorm":
        z = _channels(layer.raw(x_noisy), layer) + aff.bias
        return Affine(aff.bias, aff.gamma, aff.beta, z.mean(axis=0), z.var(axis=0), aff.eps)
    y_noisy = _channels(layer(x_noisy), layer)
    y_clean = _channels(clean_out, layer)
    mn, mc = y_noisy.mean(axis=0), y_clean.mean(axis=0)
    if method == "stats":
        sn, sc = y_noisy.std(axis=0), y_clean.std(axis=0)
        a = np.where(sn > 0, sc / np.where(sn > 0, sn, 1), 1.0)
    else:
        cov = ((y_noisy - mn) * (y_clean - mc)).mean(axis=0)
        var = ((y_noisy - mn) ** 2).mean(axis=0)
        a = np.where(var > 0, cov / np.where(var > 0, var, 1), 1.0)
    b = mc - a * mn
    # y' = a·(γ(z + b − μ)/s + β) + b: scale γ and β, keep the statistics.
    return Affine(aff.bias, a * aff.gamma, a * aff.beta + b, aff.mean, aff.var, aff.eps)


def _inputs_of(node: Recurrent, args: list[Any], stage: int) -> list[tuple[Layer, np.ndarray]]:
    """Run `node` once; every input vector its W layers (stage 0) or its R and R_h layers
    (stage 1) receive, in the order they receive them."""
    layers = [l for idx in node.layers for j, l in enumerate(idx) if l is not None and (j > 0) == bool(stage)]
    kept: dict[int, list[np.ndarray]] = {id(l): [] for l in layers}
    for l in layers:
        l.probe = lambda layer, cols, y: kept[id(layer)].append(np.array(cols, dtype=np.float32))
    try:
        node(args, {})
    finally:
        for l in layers:
            l.probe = None
    return [(l, np.concatenate(kept[id(l)])) for l in layers if kept[id(l)]]


def _fit_recurrent(method: str, out: Bundle, noisy: Runtime, node: Recurrent, clean_node: Recurrent,
                   args_n: list[Any], args_c: list[Any]) -> list[str]:
    """Fit the per-output affines of a recurrent node's matrices like any layer's: on the
    input vectors each one receives on the chip (every time step of every sample) against
    the ideal outputs at the same point of the clean network. W first, on the node's input
    sequence; then R (and a GRU's R_h) on one pass of the time loop with W calibrated.
    The fit is one-shot: calibrating R changes the states R sees next, which it does not
    revisit."""
    fitted = []
    for stage in (0, 1):
        noisy_in, clean_in = _inputs_of(node, args_n, stage), _inputs_of(clean_node, args_c, stage)
        for (layer, x_n), (clean_layer, x_c) in zip(noisy_in, clean_in):
            entry = out.layers[noisy.layers.index(layer)]
            if entry["placement"] != "analog":
                continue
            aff = _read_affine(out, entry)
            new = _fit(method, layer, aff, entry["affine"]["source"], x_n, clean_layer(x_c))
            _write_affine(out, entry, new)
            layer.set_affine(new)
            fitted.append(entry["name"])
    return fitted


def _write_affine(bundle: Bundle, entry: dict[str, Any], aff: Affine) -> None:
    keys = entry["arrays"]
    for name in FIELDS:
        bundle.arrays[keys[name]] = np.asarray(getattr(aff, name)).astype(np.float32)
    entry["affine"]["eps"] = aff.eps


def fold_bundle(bundle: Bundle) -> Bundle:
    """Every analog layer's affine as the periphery applies it: γ = gain, β = shift, μ = 0, σ² = 1."""
    out = Bundle(manifest=_deep_copy(bundle.manifest), arrays=dict(bundle.arrays))
    for entry in out.layers:
        if entry["placement"] != "analog":
            continue
        _write_affine(out, entry, _read_affine(out, entry).folded())
        entry["affine"]["source"] = "calibrated"
    return out


def check_calibration_data(x: np.ndarray, y: np.ndarray | None, path: str) -> None:
    if n_samples(x) < MIN_SAMPLES:
        raise DataError(f"{path}: {n_samples(x)} calibration samples; at least {MIN_SAMPLES} are needed "
                        "(a few hundred give stable per-channel fits)")


def calibrate(bundle: Bundle, x: np.ndarray, spec: HardwareSpec, seed: int, method: str,
              y: np.ndarray | None = None, fold: bool = True, batch_size: int = 128,
              progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
              ranges_progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
              sgd: "SGDOptions | None" = None) -> tuple[Bundle, dict[str, Any]]:
    """Return a calibrated copy of `bundle` (the input is not modified) and its record.

    `progress` wraps the analog layers as they are fitted (the epochs, for sgd),
    `ranges_progress` the batches of the range finding that precedes a first calibration.
    `sgd`: the options of method sgd (default SGDOptions())."""
    if method not in METHODS:
        raise DataError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "sgd":
        # Fail before any work when torch is missing or the loss needs labels that are not there.
        from xbar.training.sgd import SGDOptions, fit_affines

        sgd = sgd or SGDOptions()
        if sgd.loss == "ce" and y is None:
            raise DataError("--loss ce trains on labels, and the calibration data has none (no 'y' array); "
                            "give labelled data or use --loss distill, which needs no labels")
        if not fold:
            raise ConfigError("sgd trains the periphery's gain and shift directly, so there are no batch-norm "
                              "statistics to keep unfolded: drop --no-fold")
    elif sgd is not None:
        raise ConfigError(f"SGD options (epochs, learning rate, loss) apply to method sgd only, not {method!r}")
    if spec.is_ideal:
        raise ConfigError("calibration needs a non-ideal chip: on exact hardware there is nothing to correct; "
                          "give a hardware target with non-idealities (e.g. the pcm preset)")
    out = Bundle(manifest=_deep_copy(bundle.manifest), arrays=dict(bundle.arrays))
    keep_source_affines(out)
    # Every calibration starts from the converted network, so a second one (at a later drift
    # time, say) gives what a first would: started from the first's fit it stacked on it,
    # and `stats` fitted a folded affine another way, or re-estimated batch-norm statistics
    # under a gain an unfolded `affine` fit had already put into γ.
    restore_source_affines(out)
    ranges_found = False
    if any("ranges" not in e for e in out.layers if e["placement"] == "analog"):
        from xbar.runtime.ranges import find_ranges

        find_ranges(out, x, spec, progress=ranges_progress)
        ranges_found = True
    from xbar.runtime.ranges import effective_spec

    spec, notes = effective_spec(out, spec)
    if method == "sgd":
        from xbar.training.torch_executor import TorchRuntime

        # The torch executor reads the NumPy runtime's chip, so the chip is sampled once.
        trained = TorchRuntime(out, spec, seed)
        noisy = trained.reference
    else:
        noisy = Runtime(out, spec, seed)
    # The target of the fit is the converted network on exact hardware, also when the
    # bundle was calibrated before.
    clean = Runtime(source_network(out))
    before = predict(noisy, x, batch_size)
    ideal = predict(clean, x, batch_size)

    # The same chip continues into the fit: its read-noise streams go on from where the
    # "before" pass left them, so the fit sees fresh draws and the chip is sampled once.
    changed = []
    fit_record = None
    if method == "sgd":
        target = ideal if sgd.loss == "distill" else y
        affines, fit_record = fit_affines(trained, x, target, sgd, seed, progress)
        for entry in out.layers:
            if entry["name"] in affines:
                _write_affine(out, entry, affines[entry["name"]])
                changed.append(entry["name"])
    feeds = as_feeds(x, noisy.input_names)
    walk_n, walk_c = (noisy.walk(feeds), clean.walk(feeds)) if method != "sgd" else (iter(()), iter(()))
    steps = [i for i, e in enumerate(out.layers) if e["placement"] == "analog"]
    bar = iter(progress(steps)) if progress and method != "sgd" else None
    while True:
        try:
            layer, x_noisy = next(walk_n)
        except StopIteration:
            break
        clean_layer, x_clean = next(walk_c)
        if isinstance(layer, Recurrent):
            for name in _fit_recurrent(method, out, noisy, layer, clean_layer, x_noisy, x_clean):
                changed.append(name)
                if bar is not None:
                    next(bar, None)
            continue
        index = noisy.layers.index(layer)
        entry = out.layers[index]
        if entry["placement"] != "analog":
            continue
        clean_out = clean_layer(x_clean)
        aff = _read_affine(out, entry)
        new = _fit(method, layer, aff, entry["affine"]["source"], x_noisy, clean_out)
        _write_affine(out, entry, new)
        layer.set_affine(new)
        changed.append(entry["name"])
        if bar is not None:
            next(bar, None)
    if fold:
        out = fold_bundle(out)
    after = predict(Runtime(out, spec, seed), x, batch_size)
    record: dict[str, Any] = {
        "method": method,
        "samples": n_samples(x),
        "seed": int(seed),
        "t_inference": spec.t_inference,
        "hardware": spec.to_dict(),
        "folded": fold,
        "ranges_from_calibration_data": ranges_found,
        "notes": notes,
        "layers": changed,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "xbar_version": __version__,
        "agreement_with_ideal_before": agreement(before, ideal),
        "agreement_with_ideal_after": agreement(after, ideal),
    }
    if fit_record is not None:
        record["sgd"] = fit_record
    if y is not None:
        record["accuracy_before"] = accuracy(before, y)
        record["accuracy_after"] = accuracy(after, y)
        record["accuracy_ideal"] = accuracy(ideal, y)
    out.manifest.setdefault("calibration", []).append(record)
    return out, record


def _deep_copy(obj: Any) -> Any:
    import copy

    return copy.deepcopy(obj)
