"""Chunks of independent work on one worker thread per core, BLAS held to one thread.

NumPy releases the GIL inside copies, ufuncs and BLAS calls, so plain threads over chunks
of rows run the whole per-chunk pipeline (patch copy, GEMMs, quantisation, noise) on every
core at once, where BLAS's own threading would parallelise the GEMMs only. While chunks
run, BLAS is limited to one thread process-wide so the two kinds of threads do not compete.

Results never depend on the number of workers: chunk boundaries are fixed by the caller
and every chunk that draws random numbers gets its own stream (see `streams`).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import threading
from concurrent.futures import CancelledError, ThreadPoolExecutor, as_completed
from typing import Callable, Iterator, Sequence, TypeVar

import numpy as np
from threadpoolctl import ThreadpoolController

# Worker threads (None: XBAR_THREADS from the environment, else one per available core).
MAX_WORKERS: int | None = None

_local = threading.local()
_T = TypeVar("_T")


@functools.lru_cache(maxsize=1)
def _blas_controller() -> ThreadpoolController:
    # Created on first use: inspecting the loaded libraries costs ~0.1 ms, a kept
    # controller limits BLAS in ~3 µs.
    return ThreadpoolController()


def workers() -> int:
    """How many threads map_chunks uses."""
    if MAX_WORKERS is not None:
        return max(1, MAX_WORKERS)
    env = os.environ.get("XBAR_THREADS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise ValueError(f"XBAR_THREADS must be a whole number of threads, got {env!r}") from None
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


@functools.lru_cache(maxsize=None)
def _pool(n: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(n, thread_name_prefix="xbar", initializer=_mark_worker)


def _mark_worker() -> None:
    _local.worker = True


def in_worker() -> bool:
    """True on one of map_chunks' worker threads, where a nested map_chunks runs inline."""
    return getattr(_local, "worker", False)


# A forked child inherits the pool object but not its threads: work submitted there would
# wait forever, so the child starts with no pool and makes its own on first use.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_pool.cache_clear)


@contextlib.contextmanager
def blas_one_thread() -> Iterator[None]:
    """BLAS held to one thread whatever the number of workers, for results that must not
    depend on it: OpenBLAS splits a large product between its own threads, and the split
    changes the rounding."""
    with _blas_controller().limit(limits=1, user_api="blas"):
        yield


def map_chunks(fn: Callable[[int], None], count: int, serial: bool = False) -> None:
    """Call fn(0) … fn(count − 1), each once, on worker threads; return when all are done.

    One chunk, `serial`, a single worker, or a call from inside a worker runs inline on the
    calling thread with BLAS threading left as it is. The first exception is re-raised; after
    it (or Ctrl-C), no further chunk starts, here or in the tasks of the as_done call that
    this one runs inside.
    """
    n = min(workers(), count)
    if serial or n <= 1 or in_worker():
        stop = getattr(_local, "stop", None)  # the as_done call this runs in, if any
        for j in range(count):
            if stop is not None and stop.is_set():
                raise CancelledError("the tasks beside this one failed or were interrupted")
            fn(j)
        return
    # One task per worker, each taking the next chunk index until none is left: a pool
    # round trip costs tens of µs and small layers have many small chunks, yet a worker
    # that falls behind (a busy core) still gets fewer of them.
    indices = itertools.count()  # next() on it is atomic under the GIL
    # Set when a chunk fails or the caller stops waiting (Ctrl-C): the workers then take no
    # further chunks, so neither the error nor the interrupt waits for the rest of the call.
    stop = threading.Event()

    def drain() -> None:
        try:
            for j in indices:
                if j >= count or stop.is_set():
                    return
                fn(j)
        except BaseException:
            stop.set()
            raise

    with blas_one_thread():
        futures = [_pool(n).submit(drain) for _ in range(n)]
        try:
            for f in futures:
                f.result()
        except BaseException:
            stop.set()
            raise


def as_done(fn: Callable[[int], _T], costs: Sequence[float],
            alone_above: float = float("inf")) -> Iterator[tuple[int, _T]]:
    """Call fn(i) for every task i of estimated cost costs[i]; yield (i, result) as each finishes.

    Many small tasks (the layers of a network, each a few tiles) split into chunks would
    leave workers idle at every task's end and run one-chunk tasks on one core. Instead they
    run side by side, one per worker, costliest first, so the last to start are the shortest
    (map_chunks inside them runs inline). A task costing more than one worker's fair share of
    the total, or more than `alone_above` (the caller's bound on what may run side by side,
    e.g. for memory), runs alone first, its own map_chunks spreading it over every worker.
    Results never depend on the order: each task must draw only from its own streams.
    """
    count, n = len(costs), workers()
    if n <= 1 or count <= 1 or in_worker():
        for i in range(count):
            yield i, fn(i)
        return
    total = float(sum(costs))
    alone = [i for i in range(count) if costs[i] * n > total or costs[i] > alone_above]
    for i in alone:
        yield i, fn(i)
    rest = sorted(set(range(count)) - set(alone), key=lambda i: (-costs[i], i))
    stop = threading.Event()

    def run(i: int) -> _T:
        _local.stop = stop  # read by map_chunks run inline inside the task
        try:
            return fn(i)
        finally:
            _local.stop = None

    with blas_one_thread():
        futures = {_pool(n).submit(run, i): i for i in rest}
        try:
            for f in as_completed(futures):
                yield futures[f], f.result()
        finally:  # an error, Ctrl-C or an abandoned caller: start nothing more, and the
            stop.set()  # tasks already running stop before their next chunk
            for f in futures:
                f.cancel()


@contextlib.contextmanager
def blas_single_threaded(active: bool = True) -> Iterator[None]:
    """Hold BLAS to one thread for a whole run of many map_chunks calls if `active`, and
    otherwise to at most `workers()` threads, so that XBAR_THREADS=N bounds every thread
    of a run, BLAS's own included (N = 1: one thread in all).

    OpenBLAS's own threads keep spinning for a while after a multi-threaded call; a run
    that lets BLAS use them between its chunked layers pays for that spinning in every
    chunked layer that follows.
    """
    blas = _blas_controller().select(user_api="blas")
    # A cap, never a raise: a user's own lower setting (OPENBLAS_NUM_THREADS=1) stands.
    now = min((lib["num_threads"] for lib in blas.info()), default=1)
    with blas.limit(limits=1 if active else min(workers(), now)):
        yield


def streams(rng: np.random.Generator, count: int) -> list[np.random.Generator]:
    """`count` independent generators for the chunks of one call, drawn from `rng`.

    One draw from the layer's stream per call keys the call; its chunks get spawned
    children of that key, so a chunk's noise depends on its index, never on which thread
    ran it or in what order.
    """
    key = np.random.SeedSequence(int(rng.integers(1 << 63)))
    return [np.random.Generator(np.random.SFC64(s)) for s in key.spawn(count)]
