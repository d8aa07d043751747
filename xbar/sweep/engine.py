"""Run a study's tasks on Dask (`dask.distributed`): a local cluster, or an existing one.

Work is split into one task per distinct prepared bundle (conversion, ranges, fine-tune)
and one per (point, chip): a chip task evaluates its chip at every drift time, so a worker
loads the bundle, computes the ideal reference and any fixed-time calibration once and
reuses them over the times (and, through its small caches, over the next chips of the
same point). Bundles and data travel through Dask, not a shared file system; only this
process writes the results folder. A worker lost mid-task is replaced and its task re-run
by the scheduler; a task that raises is reported with its point and the sweep goes on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from xbar.errors import ConfigError
from xbar.sweep.spec import Study
from xbar.sweep.store import Results
from xbar.sweep.task import ChipJob, PrepareJob, prepare, run_chip

#: Seconds to wait for an existing scheduler before giving up.
CONNECT_TIMEOUT_S = 10
#: Seconds an interrupted sweep waits for its local workers to turn their logging off.
QUIET_WORKERS_S = 3


def _distributed():
    try:
        import distributed
    except ImportError:
        raise ConfigError("xbar sweep runs on Dask and needs dask.distributed; install the sweep extra: "
                          "pip install 'xbar[sweep]'") from None
    return distributed


def preflight(scheduler: str | None) -> None:
    """Everything a sweep needs that is not the spec, checked before the results folder is
    touched: Dask and pyarrow importable, the scheduler (if any) reachable."""
    from xbar.sweep.store import _pyarrow

    _distributed()
    _pyarrow()
    if scheduler:
        client, _ = connect(scheduler, None)
        client.close()


def local_workers() -> int:
    """One worker process per core this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def connect(scheduler: str | None, workers: int | None):
    """A Dask client and the local cluster it owns (None for an existing scheduler)."""
    distributed = _distributed()
    if scheduler:
        try:
            return distributed.Client(scheduler, timeout=CONNECT_TIMEOUT_S), None
        except (OSError, TimeoutError, ValueError) as exc:
            raise ConfigError(
                f"cannot reach the Dask scheduler at {scheduler} within {CONNECT_TIMEOUT_S} s ({exc}). Start one "
                "(`dask scheduler`, then `dask worker ADDRESS` on each machine, with xbar installed there), check "
                "the address and port, or leave out --scheduler to run on a local cluster of this machine's cores."
            ) from None
    n = workers or local_workers()
    # No dashboard; the scheduler's HTTP endpoints (health, metrics) on a free port, so that
    # two sweeps on one machine do not warn about port 8787.
    # Dask's statistical profiler samples every task's stack every 10 ms for a dashboard no
    # one opens here; off, the chip work runs 1-4 % faster (measured on 8 ResNet chips).
    import dask

    # Workers log only what is critical: a failing task is reported by the sweep itself (its
    # point, chip and error), and the worker's own "Compute Failed" with a traceback only
    # repeated it on the terminal.
    with dask.config.set({"distributed.worker.profile.enabled": False}), _workers_ignore_ctrl_c():
        cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                                           scheduler_kwargs={"dashboard_address": ":0"}, silence_logs=logging.CRITICAL)
    return distributed.Client(cluster), cluster


@contextlib.contextmanager
def _workers_ignore_ctrl_c():
    """Processes started inside ignore SIGINT. Ctrl-C reaches every process of the
    terminal's foreground group, so each worker printed a KeyboardInterrupt traceback of
    its own; this process alone handles it, stopping the cluster and saying what is saved.
    (An ignored signal stays ignored across exec, and Python then leaves it so.)"""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


@dataclass
class Outcome:
    tasks: int = 0  # chip tasks this run had to do
    finished: int = 0
    rows: int = 0
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    workers: int = 0


def prepare_job(study: Study, point: Any) -> PrepareJob:
    key = point.prepare_key(study)
    return PrepareJob(key=key, model_name=point.model_path.name, model_bytes=point.model_path.read_bytes(),
                      model_source=str(point.model_path),
                      mapping=point.mapping, hardware=point.hardware, ranges=point.ranges, finetune=point.finetune)


def chip_job(study: Study, point: Any, seed: int, key: str) -> ChipJob:
    return ChipJob(key=key, point=point.index, label=point.label, fields=point.fields, resolved=point.resolved(),
                   prepare_key=point.prepare_key(study), hardware=point.hardware, calibration=point.calibration,
                   seed=seed, times=tuple(point.times), batch_size=study.batch_size, snr_samples=study.snr_samples,
                   test_samples=study.test_samples)


def datasets(study: Study) -> tuple[Any, Any, Any]:
    """The study's test, calibration and training data as stored (None where not given)."""
    from xbar.data import read_dataset

    return tuple(read_dataset(p) if p else None for p in (study.test_data, study.calib_data, study.train_data))


def plan(study: Study, results: Results) -> list[tuple[Any, int, str]]:
    """The (point, seed, task key) still to run, in spec order."""
    done = results.done()
    return [(p, s, k) for p in study.points for s in p.seeds
            if (k := study.task_key(p, s)) not in done]


def run(study: Study, results: Results, scheduler: str | None = None, workers: int | None = None,
        progress: Callable[[int], Any] | None = None, echo: Callable[[str], None] = print,
        data: tuple[Any, Any, Any] | None = None) -> Outcome:
    """Run every unfinished task; rows are written as tasks finish. `progress(total)` returns
    an object with update(n, label) and close(), or None for no progress display. `data`:
    `datasets(study)` if the caller has read them already."""
    todo = plan(study, results)
    outcome = Outcome(tasks=len(todo))
    if not todo:
        return outcome
    test, calib, train = datasets(study) if data is None else data
    t0 = time.perf_counter()
    with _LogsQuietOnCtrlC() as quiet:
        client, cluster = connect(scheduler, workers)
        distributed = _distributed()
        bar = None
        try:
            outcome.workers = len(client.scheduler_info()["workers"])
            where = scheduler or f"a local cluster of {outcome.workers} worker process(es), one thread each"
            echo(f"running {len(todo)} chip task(s) on {where}")
            test_f, calib_f, train_f = (client.scatter(d, broadcast=True) if d is not None else None
                                        for d in (test, calib, train))
            prep: dict[str, Any] = {}
            for point, _, _ in todo:
                key = point.prepare_key(study)
                if key in prep:
                    continue
                cached = results.bundle_path(key)
                if cached.is_file():
                    prep[key] = client.scatter(cached.read_bytes())
                else:
                    prep[key] = client.submit(prepare, prepare_job(study, point), calib_f, train_f,
                                              key=f"prepare-{key}", pure=False)
            chips = {}
            for point, seed, key in todo:
                job = chip_job(study, point, seed, key)
                fut = client.submit(run_chip, job, prep[job.prepare_key], test_f, calib_f, key=f"chip-{key}",
                                    pure=False)
                chips[fut.key] = (fut, point, seed, key)
            bar = progress(len(todo)) if progress else None
            pending = [f for f in prep.values() if isinstance(f, distributed.Future) and f.key.startswith("prepare-")]
            failed_points: set[int] = set()
            for fut in distributed.as_completed(pending + [c[0] for c in chips.values()]):
                if fut.key.startswith("prepare-"):
                    key = fut.key[len("prepare-"):]
                    if fut.status == "finished":
                        results.save_bundle_bytes(key, fut.result())
                    continue
                _, point, seed, key = chips[fut.key]
                if fut.status == "finished":
                    rows = fut.result()
                    results.write(key, rows)
                    outcome.finished += 1
                    outcome.rows += len(rows)
                else:
                    exc = fut.exception()
                    if point.index not in failed_points:
                        failed_points.add(point.index)
                        outcome.failures.append(f"point {point.index + 1} ({point.label}), chip {seed}: "
                                                f"{type(exc).__name__}: {exc}")
                if bar is not None:
                    bar.update(1, point.label)
        except KeyboardInterrupt:
            quiet.now()  # interrupted some other way than by the signal (or off the main thread)
            if cluster is not None:
                _quiet_local_workers(client)
            raise
        finally:
            if bar is not None:
                bar.close()
            client.close()
            if cluster is not None:
                cluster.close()
            outcome.seconds = time.perf_counter() - t0
        return outcome


def _quiet_local_workers(client) -> None:
    """Logging off in our local cluster's worker processes before it closes: a worker shut
    down mid-transfer (a broadcast scatter's gather from its peer) logs the closed connection
    with a traceback, on the terminal it shares with us. The workers ignore Ctrl-C, so none is
    closing yet when this runs. Best effort, QUIET_WORKERS_S at most: the cluster is closed
    either way. Never on an existing scheduler's workers, which outlive the sweep."""
    def off():
        with contextlib.suppress(Exception):  # a thread's exception would print its own traceback
            client.run(logging.disable, logging.CRITICAL, on_error="ignore")

    t = threading.Thread(target=off, daemon=True)
    t.start()
    t.join(QUIET_WORKERS_S)


class _LogsQuietOnCtrlC:
    """All logging off from the moment Ctrl-C arrives until the run has closed its cluster:
    a scatter or wait cut off mid-way makes Dask log errors and tracebacks that only restate
    the interrupt, which the caller reports in one line. Off for every logger, because Dask
    gives its own loggers (tornado.application, distributed.client, ...) levels and handlers
    of their own, so quietening their parents silences nothing. Off in the signal handler,
    not in an `except`: Dask's `sync` schedules its cancel callback on the event loop's
    thread as the KeyboardInterrupt passes through it, and that callback can log before any
    `except` of ours runs (in distributed 2026.8 it fails with a NameError when the
    interrupt comes before its future exists; seen in CI as a printed traceback)."""

    def __init__(self):
        self._disabled_before: int | None = None
        self._handler = None

    def now(self) -> None:
        if self._disabled_before is None:
            self._disabled_before = logging.root.manager.disable
            logging.disable(logging.CRITICAL)

    def _on_sigint(self, signum, frame):
        self.now()
        signal.default_int_handler(signum, frame)

    def __enter__(self):
        # Only where Python's own Ctrl-C handling is in place (a caller's handler is theirs).
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._handler = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc):
        if self._handler is not None:
            signal.signal(signal.SIGINT, self._handler)
        if self._disabled_before is not None:
            logging.disable(self._disabled_before)
        return False


def run_in_process(study: Study, results: Results) -> Outcome:
    """The same tasks one after another in this process, no Dask: the reference the engine's
    overhead is measured against (benchmarks/bench_sweep.py)."""
    todo = plan(study, results)
    outcome = Outcome(tasks=len(todo), workers=0)
    test, calib, train = datasets(study)
    t0 = time.perf_counter()
    blobs: dict[str, bytes] = {}
    for point, seed, key in todo:
        pk = point.prepare_key(study)
        if pk not in blobs:
            cached = results.bundle_path(pk)
            if cached.is_file():
                blobs[pk] = cached.read_bytes()
            else:
                blobs[pk] = prepare(prepare_job(study, point), calib, train)
                results.save_bundle_bytes(pk, blobs[pk])
        rows = run_chip(chip_job(study, point, seed, key), blobs[pk], test, calib)
        results.write(key, rows)
        outcome.finished += 1
        outcome.rows += len(rows)
    outcome.seconds = time.perf_counter() - t0
    return outcome
