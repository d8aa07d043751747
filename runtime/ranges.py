"""DAC input ranges and ADC full scales from calibration data.

Run the bundle on ideal hardware over calibration inputs, keep a random subsample of each
analog layer's input vectors, and take percentiles: of |x| for the layer's DAC range, and
of each tile column's |current| for its ADC full scale. Full scales are found for both
DAC policies (a calibrated fixed range, and abs-max scaling of every input vector), since
the current a column sees depends on how its inputs were scaled.

The ranges are a function of the calibration data and the seed alone, bit for bit: not of
the batch size a command runs at, nor of the number of threads. A one-ulp change of a full
scale moves ADC levels and changes a chip's outputs, so two things are fixed here:

- The data runs in batches of RANGES_BATCH samples whatever the caller's batch size.
  OpenBLAS rounds a row of a product differently with the number of rows multiplied, so
  the activations themselves (every layer's input vectors) depend on the batch size. And
  the sampling keys come from one seeded stream, drawn layer after layer in the order the
  runtime offers their vectors, an order that depends on the batches: a recurrent layer
  gets one call per time step with every sample of the batch, and the layers' draws
  interleave batch by batch. With the batches fixed, the order is fixed too.
- BLAS runs on one thread (parallel.blas_one_thread, as in the runtime's chunked layers)
  and the column percentiles are spread over the worker threads one row block at a time:
  a product that OpenBLAS splits between its own threads rounds differently with their
  number, so XBAR_THREADS and OPENBLAS_NUM_THREADS used to change full scales by an ulp.

RANGES_BATCH is 128, the batch size `convert --calib-data` and the default sweeps always
measured at, with the same key stream and the same products as before: their ranges are
unchanged (those measured with BLAS on one thread, as sweeps run, bit for bit).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np

from xbar.bundle import Bundle, layer_tiles
from xbar.data import n_samples, take
from xbar.hardware import HardwareSpec
from xbar.packing import routes_inputs
from xbar.runtime.chip import normalised_tiles, weight_rows
from xbar.runtime.evaluate import aligned, batches
from xbar.runtime.parallel import blas_one_thread, map_chunks

MAX_VECTORS = 16384  # input vectors kept per layer: the 99.99th percentile is then the 2nd largest
# Samples per call of the runtime while ranges are measured, whatever batch size the caller
# asks for (rounded up to a multiple of a model's fixed batch size). It is part of the
# measurement's definition: the sampled vectors and their rounding depend on it.
RANGES_BATCH = 128


def _ideal_tiles(bundle: Bundle, entry: dict[str, Any]) -> np.ndarray:
    keys = entry["arrays"]
    packed, used = layer_tiles(bundle, entry)
    normalised = normalised_tiles(packed, bundle.manifest["mapping"])
    t = np.zeros((*used.shape, *normalised.shape[1:]), dtype=np.float32)
    t[used] = normalised
    nrb, ncb, r, cw = t.shape
    stacked = t.transpose(0, 2, 1, 3).reshape(nrb, r, ncb * cw)
    order = bundle.array(keys["row_order"]) if "row_order" in keys else None
    if routes_inputs(entry):  # a packed layer: blocks stay physical, its inputs are routed
        return np.ascontiguousarray(stacked)
    return np.ascontiguousarray(weight_rows(stacked, order))


def _column_percentile(v: np.ndarray, d: np.ndarray, pct: float, n: int) -> np.ndarray:
    """Percentile of |current| per tile column; padding columns (beyond N) get 0.

    `v` (M, K) input vectors, `d` (nrb, R, Npad) the row blocks' matrices. Every row block
    is one product (the one `per_block` makes) and one percentile, on the worker threads
    with BLAS on one thread (the caller holds it there for a single worker too): the result
    does not depend on the number of threads of either kind.
    """
    v = v.astype(np.float32, copy=False)
    mats = np.ascontiguousarray(d[:, :, :n])
    nrb, r, _ = mats.shape
    k = v.shape[1]
    out = np.zeros((nrb, d.shape[2]), dtype=np.float32)

    def run(b: int) -> None:
        top = min(k, (b + 1) * r)
        y = np.abs(v[:, b * r:top] @ mats[b, :top - b * r])  # (M, n) currents of row block b
        out[b, :n] = np.percentile(y, pct, axis=0)

    map_chunks(run, nrb)
    return out


class _Sample:
    """A uniform random sample of at most `size` of all the vectors offered, in any chunks.

    Every vector gets a uniform random key from `rng`, in the order the vectors are offered,
    and the `size` smallest keys are kept (a bottom-k sample: sampling without replacement
    over the whole stream). For the same stream of vectors in the same order and the same
    `rng`, the result does not depend on how the stream is cut into `add` calls. Only
    vectors whose key beats the current k-th smallest are copied, and they are merged in
    once a quarter of a sample has piled up: the work stays proportional to the
    ~size·ln(total/size) candidates and the memory at 1.25 samples. The result does not
    depend on when merges happen either.

    That holds for a _Sample that draws from `rng` alone, offered its vectors in a fixed
    order. find_ranges shares one stream between the layers, and the order of a layer's
    vectors depends on how the data is batched, so it runs fixed batches (see the module).
    """

    def __init__(self, size: int, rng: np.random.Generator):
        self.size, self.rng = size, rng
        self.threshold = 1.0  # keys are in [0, 1): everything qualifies until the sample is full
        self.keys = [np.empty(0)]
        self.parts: list[np.ndarray] = []
        self.pending = 0
        self.seen = 0

    def add(self, cols: np.ndarray) -> None:
        self.seen += len(cols)
        keys = self.rng.random(len(cols))
        take = keys < self.threshold
        if not take.any():
            return
        self.keys.append(keys[take])
        self.parts.append(np.array(cols[take], dtype=np.float32))
        self.pending += int(take.sum())
        if 4 * self.pending >= self.size:
            self._merge()

    def _merge(self) -> None:
        keys = np.concatenate(self.keys)
        order = np.argsort(keys, kind="stable")[:self.size]
        self.keys, self.parts = [keys[order]], [np.concatenate(self.parts)[order]]
        self.pending = 0
        if len(order) == self.size:
            self.threshold = float(self.keys[0][-1])

    def vectors(self) -> np.ndarray:
        self._merge()
        return self.parts[0]


def find_ranges(bundle: Bundle, x: np.ndarray, spec: HardwareSpec, seed: int = 0,
                progress: Callable[[Iterable[slice]], Iterable[slice]] | None = None) -> Bundle:
    """Add `ranges` to every analog layer of `bundle` (in place) and return it.

    The ranges depend on the data `x` and `seed` only: the data runs in batches of
    RANGES_BATCH samples whatever batch size a command runs at (see the module's
    docstring), which also bounds the memory the activations take."""
    from xbar.runtime.executor import Runtime

    with blas_one_thread():
        return _find_ranges(bundle, x, spec, seed, progress, Runtime(bundle))


def _find_ranges(bundle: Bundle, x: np.ndarray, spec: HardwareSpec, seed: int,
                 progress: Callable[[Iterable[slice]], Iterable[slice]] | None, rt: Any) -> Bundle:
    chunks = list(batches(n_samples(x), aligned(RANGES_BATCH, rt.fixed_batch)))
    rng = np.random.default_rng(seed)  # drawn by the layers in turn, in a fixed order (see the module)
    samples = {i: _Sample(MAX_VECTORS, rng) for i, layer in enumerate(rt.layers) if layer.entry["placement"] == "analog"}

    def keep(index: int):
        def probe(layer, cols, y):
            samples[index].add(cols)
        return probe

    for i in samples:
        rt.layers[i].probe = keep(i)
    for sl in (progress(chunks) if progress else chunks):
        rt(take(x, sl))
    kept = {i: s.vectors() for i, s in samples.items() if s.seen}
    for i, entry in enumerate(bundle.layers):
        if i not in kept:
            continue
        cols = kept[i]
        x_max = float(np.percentile(np.abs(cols), spec.dac.percentile))
        if x_max <= 0:
            x_max = float(np.abs(cols).max()) or 1.0
        d = _ideal_tiles(bundle, entry)
        order = entry["arrays"].get("row_order")
        if routes_inputs(entry) and order is not None:  # --pack-tiles alone keeps the rows in order
            cols = cols[:, bundle.array(order)]
        positions = int(entry["tiles"].get("positions", entry["N"]))  # format 1: one per output
        fixed = np.clip(cols / x_max, -1, 1)
        rowmax = np.abs(cols).max(axis=1, keepdims=True)
        rowmax[rowmax == 0] = 1
        prefix = f"layers/{i:03d}"
        bundle.arrays[f"{prefix}/adc_full_scale"] = _column_percentile(fixed, d, spec.adc.percentile, positions)
        bundle.arrays[f"{prefix}/adc_full_scale_absmax"] = _column_percentile(cols / rowmax, d, spec.adc.percentile, positions)
        entry["ranges"] = {
            "input": x_max,
            "dac_percentile": spec.dac.percentile,
            "adc_percentile": spec.adc.percentile,
            "vectors": int(len(cols)),
            "samples": n_samples(x),
            "adc": f"{prefix}/adc_full_scale",
            "adc_absmax": f"{prefix}/adc_full_scale_absmax",
        }
    return bundle


def effective_spec(bundle: Bundle, spec: HardwareSpec) -> tuple[HardwareSpec, list[str]]:
    """`spec` as the runtime will apply it to `bundle`, and a note for every field that changed.

    Range policies need measured ranges: without them the DAC scales each input vector by
    its own max |x| and the ADC full scale is the largest current a column can carry. With
    them, the percentiles are the ones the ranges were measured at, whatever `spec` asks.
    Printing and recording this spec, not the requested one, keeps reports truthful.
    """
    from xbar.errors import BundleError

    analog = [e for e in bundle.layers if e["placement"] == "analog"]
    ranged = [e for e in analog if "ranges" in e]
    if spec.is_ideal or not analog:
        return spec, []
    changes: dict[str, Any] = {}
    notes: list[str] = []
    if not ranged:
        if spec.dac.range == "calibrated" and spec.dac.bits is not None:
            changes["dac.range"] = "max"
            notes.append("the bundle has no measured input ranges (convert with --calib-data): "
                         "the DAC scales every input vector by its own max |x| (dac.range = max)")
        if spec.adc.range == "percentile" and (spec.adc.bits is not None or spec.adc.noise > 0):
            changes["adc.range"] = "physical"
            notes.append("the bundle has no measured ADC full scales (convert with --calib-data): "
                         "each is the largest current its column can carry as programmed (adc.range = physical)")
    elif len(ranged) < len(analog):
        missing = ", ".join(e["name"] for e in analog if "ranges" not in e)
        raise BundleError(f"the bundle has measured ranges for some analog layers but not for {missing}; "
                          "convert it again with --calib-data")
    else:
        r = ranged[0]["ranges"]
        for field, used in (("dac", spec.dac.range == "calibrated" and spec.dac.bits is not None),
                            ("adc", spec.adc.range == "percentile")):
            measured = float(r[f"{field}_percentile"])
            if measured != getattr(spec, field).percentile:
                changes[f"{field}.percentile"] = measured
                if used:
                    notes.append(f"{field}.percentile: the bundle's ranges were measured at the {measured:g}th "
                                 f"percentile, which is what runs (not {getattr(spec, field).percentile:g}); "
                                 "convert again with --calib-data to measure others")
    return (spec.override(changes) if changes else spec), notes
