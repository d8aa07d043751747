"""The fast per-inference paths: chunk threads, the Box–Muller sampler, DAC codes and patch
abs-max. Each is checked against the plain computation it replaces."""

import itertools
import signal
import threading
import time

import numpy as np
import pytest
from scipy import stats

import xbar.runtime.parallel as parallel
from xbar.converter import convert
from xbar.hardware import preset
from xbar.runtime import Runtime
from xbar.runtime.analog import dac, dac_codes
from xbar.runtime.gauss import MAX_ABS, standard_normal
from xbar.runtime.im2col import patch_absmax, patch_view
from xbar.runtime.ranges import find_ranges


# ---------------------------------------------------------------------------- sampler

def test_box_muller_samples_are_standard_normal():
    z = standard_normal(np.random.default_rng(0), (1_000_001,))  # odd: one of a pair dropped
    assert z.dtype == np.float32 and z.shape == (1_000_001,)
    n = z.size
    # Mean within 5 standard errors (1/√n); variance within 5 s.e. (√(2/n)); no excess
    # kurtosis beyond 5 s.e. (√(24/n)); KS against N(0, 1) does not reject.
    assert abs(z.mean()) < 5 / np.sqrt(n)
    assert abs(z.var() - 1) < 5 * np.sqrt(2 / n)
    assert abs(stats.kurtosis(z)) < 5 * np.sqrt(24 / n)
    assert stats.kstest(z, "norm").pvalue > 1e-4
    # Tails: P(|z| > 3) = 2.70e-3; its binomial s.e. at this n is 5.2e-5.
    assert abs(np.mean(np.abs(z) > 3) - 2 * stats.norm.sf(3)) < 5 * 5.2e-5
    assert np.abs(z).max() <= MAX_ABS


def test_box_muller_pairs_are_uncorrelated_and_seeded():
    z = standard_normal(np.random.default_rng(1), (2, 250_000))
    h = z.size // 2
    flat = z.reshape(-1)
    # The cos and sin halves share radii; independent normals have correlation 0 (s.e. 1/√h).
    assert abs(np.corrcoef(flat[:h], flat[h:])[0, 1]) < 5 / np.sqrt(h)
    assert abs(np.corrcoef(flat[:h] ** 2, flat[h:] ** 2)[0, 1]) < 5 / np.sqrt(h)
    np.testing.assert_array_equal(z, standard_normal(np.random.default_rng(1), (2, 250_000)))


# ---------------------------------------------------------------------------- DAC codes

@pytest.mark.parametrize("bits", [None, 2, 4, 8])
def test_dac_codes_are_the_dac_levels(bits):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4000, 37)).astype(np.float32)
    x_max = np.float32(1.7)
    codes, unit = dac_codes(x, x_max, bits)
    ref = dac(x, x_max, bits)
    if bits is None:
        np.testing.assert_array_equal(codes, ref)
        return
    levels = 2 ** (bits - 1) - 1
    assert unit == pytest.approx(1 / levels)
    assert np.all(codes == np.rint(codes)) and np.abs(codes).max() <= levels
    # The same level everywhere, except where x/x_max·levels lies within float32 rounding
    # of a tie between two levels (the two forms round their scaled input differently).
    diff = np.abs(codes * np.float32(unit) - ref)
    assert np.mean(diff > 1e-6) < 1e-3 and diff.max() <= unit + 1e-6


def test_dac_codes_read_strided_views_in_c_order():
    x = np.arange(2 * 5 * 6, dtype=np.float32).reshape(2, 5, 6)[:, ::2, 1:]
    scale = np.array([[[2.0]], [[4.0]]], dtype=np.float32)
    codes, unit = dac_codes(x, scale, 8, may_clip=False)
    assert codes.flags.c_contiguous
    np.testing.assert_array_equal(codes, np.rint(x * (127 / scale)))


# ---------------------------------------------------------------------------- patch abs-max

@pytest.mark.parametrize("kernel,strides,dilations,pads", [
    ([3, 3], [1, 1], [1, 1], [1, 1, 1, 1]),
    ([3, 3], [2, 2], [1, 1], [0, 1, 1, 0]),
    ([2, 3], [1, 2], [2, 1], [0, 0, 0, 0]),
    ([1, 1], [2, 2], [1, 1], [0, 0, 0, 0]),
    ([5], [2], [1], [2, 2]),
    ([2, 2, 2], [1, 1, 1], [1, 1, 1], [1, 0, 1, 0, 1, 0]),
])
@pytest.mark.parametrize("channels", [1, 3, 16])
def test_patch_absmax_is_the_row_max_of_the_patches(kernel, strides, dilations, pads, channels):
    rng = np.random.default_rng(3)
    spatial = [7] * len(kernel)
    x = rng.normal(size=(3, channels, *spatial)).astype(np.float32)
    view, out = patch_view(x, kernel, strides, dilations, pads)
    cols = view[0:3].reshape(-1, view.shape[-1])
    ref = np.abs(cols).max(axis=1).reshape(3, *out)
    np.testing.assert_array_equal(patch_absmax(x, kernel, strides, dilations, pads), ref)


# ---------------------------------------------------------------------------- chunk threads

@pytest.fixture(scope="module")
def resnet(models_dir, test_data):
    bundle = convert(models_dir / "resnet_bn.onnx")
    return find_ranges(bundle, test_data[0][:64], preset("pcm"))


@pytest.mark.parametrize("dac_range", ["max", "calibrated"])
def test_chip_outputs_do_not_depend_on_the_number_of_threads(resnet, test_data, monkeypatch, dac_range):
    """Chunk boundaries and each chunk's noise stream are fixed by the layer and the call,
    so 1, 2 or 3 worker threads give the same chip outputs bit for bit."""
    x = test_data[0][:96]  # several chunks per layer
    spec = preset("pcm").override(t_inference=86400.0, **{"dac.range": dac_range})
    outs = []
    for n in (1, 2, 3):
        monkeypatch.setattr(parallel, "MAX_WORKERS", n)
        rt = Runtime(resnet, spec, seed=4)
        outs.append((rt(x), rt(x)))
    for first, second in outs[1:]:
        np.testing.assert_array_equal(first, outs[0][0])
        np.testing.assert_array_equal(second, outs[0][1])
    assert not np.array_equal(outs[0][0], outs[0][1])  # read noise is fresh per inference


@pytest.mark.parametrize("dac_range", ["max", "calibrated"])
def test_a_probe_sees_what_inference_computes(resnet, test_data, dac_range):
    """With a probe the layer takes the generic path (whole patches, DAC in product());
    without one, the DAC reads strided patches or pre-quantised activations. Same result."""
    x = test_data[0][:64]
    spec = preset("pcm").override(**{"dac.range": dac_range})
    plain = Runtime(resnet, spec, seed=5)(x)
    rt = Runtime(resnet, spec, seed=5)
    seen = []
    for layer in rt.layers:
        layer.probe = lambda lyr, cols, y: seen.append(cols.shape)
    np.testing.assert_array_equal(rt(x), plain)
    assert seen


def test_ideal_outputs_do_not_depend_on_the_number_of_threads(resnet, test_data, monkeypatch):
    x = test_data[0][:96]
    outs = []
    for n in (1, 2):
        monkeypatch.setattr(parallel, "MAX_WORKERS", n)
        outs.append(Runtime(resnet)(x))
    # The same GEMM kernels on the same rows; only BLAS's thread split may differ.
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-6, atol=1e-6)


def test_map_chunks_runs_every_chunk_once_and_reraises(monkeypatch):
    monkeypatch.setattr(parallel, "MAX_WORKERS", 2)
    hits = np.zeros(37, dtype=int)

    def fn(j):
        hits[j] += 1

    parallel.map_chunks(fn, 37)
    assert np.all(hits == 1)

    def bad(j):
        if j == 5:
            raise ValueError("chunk 5")

    with pytest.raises(ValueError, match="chunk 5"):
        parallel.map_chunks(bad, 9)


def _when_idle(ran: list) -> int:
    """len(ran) once the workers appending to it have stopped (each finishes the chunk it is in)."""
    settled = -1
    while settled != len(ran):
        settled = len(ran)
        time.sleep(0.05)
    return settled


def _ran_after_stop(monkeypatch, stop_at):
    """How many of 400 chunks (1 ms each) map_chunks runs when chunk 3 calls `stop_at`."""
    monkeypatch.setattr(parallel, "MAX_WORKERS", 2)
    ran = []

    def fn(j):
        if j == 3:
            stop_at()
        time.sleep(1e-3)
        ran.append(j)

    with pytest.raises((ValueError, KeyboardInterrupt)):
        parallel.map_chunks(fn, 400)
    return _when_idle(ran)


def test_a_failing_chunk_stops_the_other_workers(monkeypatch):
    """The error reaches the caller without waiting for the rest of the call: the other
    workers take no chunk after it (each finishes at most the one it is in)."""
    def fail():
        raise ValueError("chunk 3")

    assert _ran_after_stop(monkeypatch, fail) < 20


def test_ctrl_c_stops_the_workers(monkeypatch):
    """Ctrl-C reaches the waiting caller (the main thread) as KeyboardInterrupt; the workers
    then take no further chunk, so the process can exit at once instead of finishing the
    call in the background (as it did: worker threads are joined at exit)."""
    main = threading.main_thread().ident
    if threading.get_ident() != main:
        pytest.skip("signals reach the main thread only")
    handled = threading.Event()

    def on_sigint(signum, frame):  # Python's own behaviour, plus a note that it ran
        handled.set()
        raise KeyboardInterrupt

    def ctrl_c():
        signal.pthread_kill(main, signal.SIGINT)
        # The chunk waits until the main thread has run the handler, so what follows does
        # not depend on how soon the interpreter gets to it.
        assert handled.wait(10), "the main thread did not handle SIGINT within 10 s"

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        assert _ran_after_stop(monkeypatch, ctrl_c) < 20
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_failing_task_stops_the_tasks_beside_it(monkeypatch):
    """Tasks side by side (layers built by as_done) run their chunks inline; once one fails,
    the others start no further chunk, so the error does not wait for them to finish."""
    monkeypatch.setattr(parallel, "MAX_WORKERS", 2)
    ran = []

    def task(i):
        def chunk(j):
            if i == 0 and j == 3:
                raise ValueError("task 0")
            time.sleep(1e-3)
            ran.append((i, j))

        parallel.map_chunks(chunk, 400)
        return i

    with pytest.raises(ValueError, match="task 0"):
        for _ in parallel.as_done(task, [1.0, 1.0, 1.0]):
            pass
    assert _when_idle(ran) < 40


@pytest.mark.parametrize("threads", [1, 2])
def test_xbar_threads_bounds_blas_threads_too(resnet, test_data, monkeypatch, threads):
    """XBAR_THREADS=N bounds the threads of a run, BLAS's own included; with one sample
    (one chunk per layer), BLAS may thread a product, but never beyond N."""
    from threadpoolctl import threadpool_info

    from xbar.runtime.layer import Layer

    monkeypatch.setattr(parallel, "MAX_WORKERS", threads)
    rt = Runtime(resnet)
    seen = []
    call = Layer.__call__

    def spy(layer, x):
        seen.append(max(lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"))
        return call(layer, x)

    monkeypatch.setattr(Layer, "__call__", spy)
    rt(test_data[0][:1])
    one = list(seen)
    rt(test_data[0][:8 * threads])  # a batch that fills the workers: BLAS on one thread
    assert one and max(one) <= threads and set(seen[len(one):]) == {1}


def test_thread_count_from_the_environment(monkeypatch):
    monkeypatch.setattr(parallel, "MAX_WORKERS", None)
    monkeypatch.setenv("XBAR_THREADS", "3")
    assert parallel.workers() == 3
    monkeypatch.setenv("XBAR_THREADS", "many")
    with pytest.raises(ValueError, match="XBAR_THREADS"):
        parallel.workers()


def test_chunk_streams_are_independent_and_reproducible():
    a = parallel.streams(np.random.default_rng(7), 4)
    b = parallel.streams(np.random.default_rng(7), 4)
    draws = [g.random(1000) for g in a]
    for g, d in zip(b, draws):
        np.testing.assert_array_equal(g.random(1000), d)
    for d, e in itertools.combinations(draws, 2):
        assert abs(np.corrcoef(d, e)[0, 1]) < 0.2


# ---------------------------------------------------------------------------- heap

_FAULTS = """
import resource, sys
import numpy as np
from xbar.converter import convert
from xbar.runtime import Runtime
rt = Runtime(convert(sys.argv[1]))
x = np.load(sys.argv[2])["x"][:128]
for _ in range(3):  # the heap's high-water mark depends on how the two threads' chunks interleave
    rt(x)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    rt(x)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 3)
"""


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_runs_reuse_freed_memory_instead_of_faulting_it_in_again(models_dir, tmp_path):
    """With the heap kept, repeated runs of the shipped model allocate from memory the
    process already has; with XBAR_KEEP_HEAP=0 every run faults in its arrays afresh."""
    import os
    import subprocess
    import sys

    def faults(keep: str) -> int:
        env = dict(os.environ, XBAR_KEEP_HEAP=keep, XBAR_THREADS="2")
        out = subprocess.run([sys.executable, "-c", _FAULTS, str(models_dir / "resnet_bn.onnx"),
                              str(models_dir / "digits_test.npz")], env=env, capture_output=True, text=True, check=True)
        return int(out.stdout.strip())

    kept, default = faults("1"), faults("0")
    # Measured here: 0 against ~1600 faults per run (12 MB of fresh pages each time).
    assert default > 500
    assert kept < default / 10


# ---------------------------------------------------------------------------- range sampling

def test_range_sample_is_exact_size_uniform_and_independent_of_chunking():
    from xbar.runtime.ranges import _Sample

    n, size = 100_000, 2_000
    rows = np.arange(n, dtype=np.float32)[:, None]
    one = _Sample(size, np.random.default_rng(0))
    one.add(rows)
    many = _Sample(size, np.random.default_rng(0))
    cuts = np.sort(np.random.default_rng(1).choice(n, 60, replace=False))
    for part in np.split(rows, cuts):
        many.add(part)
    a, b = one.vectors()[:, 0], many.vectors()[:, 0]
    assert len(a) == size and len(np.unique(a)) == size
    np.testing.assert_array_equal(np.sort(a), np.sort(b))  # same keys stream, same sample
    # Uniform over the stream: 10 equal bins hold size/10 = 200 each; binomial s.d. ≈ 13.4.
    counts = np.bincount((a // (n // 10)).astype(int), minlength=10)
    assert np.all(np.abs(counts - size / 10) < 5 * np.sqrt(size * 0.1 * 0.9))


def test_range_sample_keeps_everything_when_there_is_less():
    from xbar.runtime.ranges import _Sample

    s = _Sample(100, np.random.default_rng(0))
    s.add(np.ones((30, 4)))
    s.add(np.zeros((20, 4)))
    assert s.vectors().shape == (50, 4) and s.seen == 50


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_a_forked_child_gets_its_own_worker_pool(monkeypatch):
    """multiprocessing's default start method on Linux forks; a child must not inherit the
    parent's pool object without its threads (submitted work would never run)."""
    import multiprocessing

    import threading

    monkeypatch.setattr(parallel, "MAX_WORKERS", 2)
    both = threading.Barrier(2, timeout=30)
    parallel.map_chunks(lambda j: both.wait(), 2)  # the parent's pool now has both threads
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        result = pool.apply_async(_chunk_sum_in_child)
        assert result.get(timeout=60) == sum(range(8))


def _chunk_sum_in_child() -> int:
    parallel.MAX_WORKERS = 2
    out = np.zeros(8, dtype=int)

    def fn(j):
        out[j] = j

    parallel.map_chunks(fn, 8)
    return int(out.sum())


def test_as_done_runs_every_task_once_big_ones_alone_first_and_reraises(monkeypatch):
    """Tasks costing more than a worker's fair share run first on the calling thread (their
    own map_chunks then spreads them); the rest run on the workers, costliest first."""
    import threading

    monkeypatch.setattr(parallel, "MAX_WORKERS", 2)
    main = threading.get_ident()
    costs = [1, 30, 2, 60, 1, 3]  # total 97: task 3 (60 > 97 / 2) runs alone
    ran = {}

    def fn(i):
        ran[i] = threading.get_ident()
        inner = np.zeros(4, dtype=int)
        parallel.map_chunks(lambda j: inner.__setitem__(j, inner[j] + 1), 4)
        assert np.all(inner == 1)
        return i * 10

    got = list(parallel.as_done(fn, costs))
    assert sorted(got) == [(i, i * 10) for i in range(6)]
    assert got[0] == (3, 30) and ran[3] == main
    assert all(ran[i] != main for i in (0, 1, 2, 4, 5))

    def bad(i):
        if i == 2:
            raise ValueError("task 2")
        return i

    with pytest.raises(ValueError, match="task 2"):
        list(parallel.as_done(bad, [1] * 40))
    monkeypatch.setattr(parallel, "MAX_WORKERS", 1)
    assert list(parallel.as_done(lambda i: i, [5, 1, 3])) == [(0, 0), (1, 1), (2, 2)]


def test_as_done_runs_tasks_above_the_callers_bound_alone(monkeypatch):
    import threading

    monkeypatch.setattr(parallel, "MAX_WORKERS", 2)
    main = threading.get_ident()
    ran = {}

    def fn(i):
        ran[i] = threading.get_ident()
        return i

    got = list(parallel.as_done(fn, [5, 6, 5, 5, 5], alone_above=5))
    assert got[0] == (1, 1) and ran[1] == main
    assert sorted(got) == [(i, i) for i in range(5)] and all(ran[i] != main for i in (0, 2, 3, 4))
