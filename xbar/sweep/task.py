"""What a sweep worker runs: prepare a point's bundle, and evaluate one chip over the drift times.

Both are plain functions of their arguments (jobs, bundle bytes, data arrays), so they run
unchanged in this process, on a local cluster or on a remote one with no shared file system.
Each runs on one thread (BLAS, xbar's chunk workers and torch alike): a worker process is
one core, and a row never depends on how many workers there are.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from xbar.data import Dataset, take
from xbar.dims import fixed_batch
from xbar.errors import ConfigError, XbarError

#: Fault injection for tests of lost workers: when this names a file that does not exist yet,
#: the first chip task to see it creates the file and kills its own worker process.
CRASH_ONCE_ENV = "XBAR_SWEEP_CRASH_ONCE"


@dataclass(frozen=True)
class PrepareJob:
    key: str
    model_name: str  # file name, kept so the bundle records where it came from
    model_bytes: bytes
    model_source: str  # the spec's path of the model, named in errors instead of the worker's copy
    mapping: dict[str, Any]
    hardware: dict[str, Any]
    ranges: bool
    finetune: dict[str, Any]


@dataclass(frozen=True)
class ChipJob:
    key: str
    point: int
    label: str
    fields: dict[str, Any]
    resolved: dict[str, Any]
    prepare_key: str
    hardware: dict[str, Any]
    calibration: dict[str, Any]
    seed: int
    times: tuple[float, ...]
    batch_size: int
    snr_samples: int
    test_samples: int | None


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """BLAS, xbar's chunk threads and torch each held to one thread, restored afterwards."""
    from threadpoolctl import threadpool_limits

    import xbar.runtime.parallel as parallel
    from xbar.training import THREADS_ENV

    saved_workers, saved_env = parallel.MAX_WORKERS, os.environ.get(THREADS_ENV)
    parallel.MAX_WORKERS = 1
    os.environ[THREADS_ENV] = "1"
    try:
        with threadpool_limits(1):
            yield
    finally:
        parallel.MAX_WORKERS = saved_workers
        if saved_env is None:
            os.environ.pop(THREADS_ENV, None)
        else:
            os.environ[THREADS_ENV] = saved_env


def _spec(hardware: dict[str, Any], t: float | None = None):
    from xbar.hardware import HardwareSpec

    spec = HardwareSpec.from_dict(hardware)
    return spec if t is None else spec.override(t_inference=t)


def _fit(bundle, data: Dataset | None) -> Dataset | None:
    from xbar.data import check_labels, check_sample_axis, fit_to_model, scored_shape

    if data is None:
        return None
    check_sample_axis(bundle.graph, data.path)
    batch = bundle.manifest.get("batch")
    fitted = fit_to_model(data, bundle.graph["inputs"], batch)
    check_labels(fitted, scored_shape(bundle.graph["outputs"][0], batch))
    return fitted


def prepare(job: PrepareJob, calib: Dataset | None, train: Dataset | None) -> bytes:
    """Convert the model as the point maps it, measure its DAC/ADC ranges, fine-tune it if
    asked; the bundle as bytes (what `xbar convert`, then `xbar finetune`, would write)."""
    from xbar.bundle import save_bundle
    from xbar.converter import convert

    with one_thread(), tempfile.TemporaryDirectory(prefix="xbar-sweep-") as tmp:
        model = Path(tmp) / job.model_name
        model.write_bytes(job.model_bytes)
        spec = _spec(job.hardware)
        kwargs = dict(job.mapping)
        if "crossbar" in kwargs:
            kwargs["crossbar"] = tuple(kwargs["crossbar"])
        try:
            bundle = convert(str(model), hardware=None if spec.is_ideal else spec, **kwargs)
        except XbarError as exc:
            exc.args = (str(exc).replace(str(model), job.model_source),)
            raise
        calib = _fit(bundle, calib)
        if job.ranges:
            from xbar.runtime.ranges import find_ranges

            find_ranges(bundle, calib.x, spec)
        if job.finetune["method"] != "none":
            from xbar.converter.remap import remap
            from xbar.training.finetune import FinetuneOptions, finetune

            ft = job.finetune
            train = _fit(bundle, train)
            options = FinetuneOptions(method=ft["method"], epochs=ft["epochs"], lr=ft["lr"], loss=ft["loss"])
            weights, affines, rec = finetune(bundle, train.x, train.y, _spec(job.hardware, ft["time"]), options,
                                             ft["seed"])
            bundle = remap(bundle, weights, affines, calib_x=calib.x if job.ranges else None, record=rec)
        out = Path(tmp) / "prepared.xbar"
        save_bundle(bundle, out)
        return out.read_bytes()


class _Memo(collections.OrderedDict):
    """A small LRU of what a worker reuses across its tasks (bundles, ideal outputs, calibrations)."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def get_or(self, key: Any, make):
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = self[key] = make()
        while len(self) > self.size:
            self.popitem(last=False)
        return value


_BUNDLES = _Memo(4)
_IDEAL = _Memo(4)
_CALIBRATED = _Memo(8)


def _load(key: str, blob: bytes):
    from xbar.bundle import load_bundle

    def make():
        with tempfile.TemporaryDirectory(prefix="xbar-sweep-") as tmp:
            path = Path(tmp) / f"{key}.xbar"
            path.write_bytes(blob)
            return load_bundle(path)

    return _BUNDLES.get_or(key, make)


def _maybe_crash() -> None:
    marker = os.environ.get(CRASH_ONCE_ENV)
    if marker:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        os._exit(17)


def run_chip(job: ChipJob, blob: bytes, test: Dataset, calib: Dataset | None) -> list[dict[str, Any]]:
    """One chip (job.seed) of one point at every drift time: one row each."""
    from xbar import __version__
    from xbar.runtime.calibrate import calibrate
    from xbar.runtime.evaluate import accuracy, predict
    from xbar.runtime.executor import Runtime
    from xbar.runtime.evaluate import top1
    from xbar.runtime.sweep import evaluate_chip
    from xbar.sweep.spec import calibration_chip
    from xbar.training.sgd import SGDOptions

    _maybe_crash()
    with one_thread():
        bundle = _load(job.prepare_key, blob)
        fixed = fixed_batch(bundle.manifest.get("batch"))
        for name, n in (("test_samples", job.test_samples), ("snr_samples", job.snr_samples)):
            if fixed and n and n % fixed:  # else the model refuses the last partial batch, by its size
                raise ConfigError(f"[study] {name} = {n}, but the model fixes its batch at {fixed} and runs "
                                  f"whole batches of it; set {name} to a multiple of {fixed}")
        if job.test_samples is not None:  # only these are run, so only these need to fit the model
            test = Dataset(take(test.x, slice(0, job.test_samples)),
                           None if test.y is None else test.y[:job.test_samples], test.path)
        test = _fit(bundle, test)
        calib = _fit(bundle, calib)
        ideal_out = _IDEAL.get_or((job.prepare_key, job.test_samples, job.batch_size),
                                  lambda: predict(Runtime(bundle), test.x, job.batch_size))
        ideal_top = top1(ideal_out)
        ideal_acc = accuracy(ideal_out, test.y) if test.y is not None else None
        cal = job.calibration
        rows = []
        for t in job.times:
            t0 = time.perf_counter()
            run_bundle = bundle
            if cal["method"] != "none":
                at = t if cal["time"] == "same" else cal["time"]
                chip = calibration_chip(cal["chip"], job.seed)
                sgd = (SGDOptions(epochs=cal["epochs"], lr=cal["lr"], loss=cal["loss"])
                       if cal["method"] == "sgd" else None)
                run_bundle = _CALIBRATED.get_or(
                    (job.prepare_key, json.dumps(cal, sort_keys=True), chip, at),
                    lambda: calibrate(bundle, calib.x, _spec(job.hardware, at), chip, cal["method"], y=calib.y,
                                      batch_size=job.batch_size, sgd=sgd)[0])
            spec = _spec(job.hardware, t)
            acc, agree, layers = evaluate_chip(run_bundle, spec, job.seed, test, ideal_top, job.batch_size,
                                               snr_samples=job.snr_samples)
            snr = affine_snr = None
            if layers is not None:
                snr = json.dumps({r["layer"]: round(r["snr_db"], 4) for r in layers})
                affine_snr = json.dumps({r["layer"]: round(r["snr_after_affine_db"], 4) for r in layers})
            rows.append({
                "task": job.key, "point": job.point, "label": job.label, **job.fields,
                "seed": job.seed, "time_s": float(t), "time": _time_label(t),
                "accuracy": acc, "agreement": agree, "ideal_accuracy": ideal_acc,
                "layer_snr_db": snr, "layer_affine_snr_db": affine_snr, "wall_s": time.perf_counter() - t0,
                "config": json.dumps({**job.resolved, "hardware": spec.to_dict(), "seed": job.seed,
                                      "calibration": cal}, sort_keys=True, default=str),
                "xbar_version": __version__,
            })
        return rows


def _time_label(t: float) -> str:
    from xbar.units import format_time

    return format_time(t)
