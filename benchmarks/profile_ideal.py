#!/usr/bin/env python
"""Where does the xbar runtime spend its time? Per-step profile of Runtime.run (ideal mode).

    python benchmarks/profile_ideal.py [--model resnet20|shipped|PATH] [--batch 128] [--reps 10]
                                       [--settle 0.25] [--cprofile] [--no-whatif] [--no-blas]

Uses the same models as benchmarks/bench_ideal.py (the ResNet-20 model must already be
cached in benchmarks/.cache/ - run bench_ideal.py once first). Sections:

1. xbar breakdown. Runtime.run, Layer.__call__, Layer.product, Layer._affine, the im2col
   helper the layer module imports (``patches`` or ``im2col``) and every digital step are
   wrapped with timers (whichever of them exist: the runtime's internals change), and the
   *exclusive* time per category is reported as the median over the repetitions, plus a
   per-conv-layer table (inclusive time, achieved GFLOP/s). The instrumented result is
   checked to be bit-identical to the plain one; the wrappers are removed afterwards.
2. onnxruntime's own per-node profile of the same model (kernel time by op type).
3. What-if prototype (not part of xbar; lives only in this file): same bundle, same
   effective weights, but NHWC activations end to end, patches in (kh, kw, C) order (the
   weight rows are permuted once instead, so the patch copy moves contiguous runs of
   kw*C floats), a zero-filled buffer instead of np.pad, ONE GEMM per conv with the
   per-column gain folded into the weights, shift + following ReLU fused in place, and
   in-place Relu/Add. Timed interleaved against Runtime.run and onnxruntime.
4. BLAS micro-benchmark on three ResNet-20 conv shapes: numpy's stacked matmul (B small
   GEMMs, what the runtime used to do) vs one large GEMM, default vs 1 BLAS thread.

Nothing in xbar is modified on disk.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort
from numpy.lib.stride_tricks import as_strided

from xbar.converter import convert
from xbar.runtime import Runtime
from xbar.runtime.im2col import output_size, resolve_pads
from xbar.runtime.layer import Layer

HERE = Path(__file__).resolve().parent
MODELS = {
    "resnet20": HERE / ".cache" / "resnet20_cifar_v1.onnx",
    "shipped": HERE.parent / "models" / "resnet_bn.onnx",
}
Timers = dict[str, float]


def _op(name: str) -> str:
    return name.rsplit("/", 1)[-1].split("_")[0]


# --------------------------------------------------------------------------- 1. xbar as is


class Profiler:
    """Exclusive wall time per category, from nested wrappers (a child's time is not its parent's)."""

    def __init__(self) -> None:
        self.t: Timers = defaultdict(float)
        self.per_layer: Timers = defaultdict(float)
        self.layer_shape: dict[str, tuple[int, int, int]] = {}
        self._stack: list[list] = []

    def reset(self) -> None:
        self.t = defaultdict(float)

    def wrap(self, fn, category):
        """`category` is a string or a function of the call's arguments returning one."""
        prof = self

        def wrapper(*args, **kwargs):
            cat = category if isinstance(category, str) else category(*args)
            frame = [0.0]
            prof._stack.append(frame)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                prof._stack.pop()
                prof.t[cat] += elapsed - frame[0]
                if prof._stack:
                    prof._stack[-1][0] += elapsed

        wrapper.__wrapped__ = fn
        return wrapper


def instrument(rt: Runtime):
    """Wrap Runtime.run, the layer class, its helpers and every digital step of `rt`.

    Wraps whatever of these exists in the installed xbar (the runtime's internals change).
    Returns the profiler, a description of what was wrapped, and a function undoing it all.
    """
    import xbar.runtime.layer as layer_mod

    prof = Profiler()
    done = []
    saved = [(Layer, "__call__", vars(Layer)["__call__"])]
    saved += [(Layer, m, vars(Layer)[m]) for m in ("product", "_affine") if m in vars(Layer)]
    saved += [(layer_mod, f, getattr(layer_mod, f)) for f in ("patches", "im2col") if hasattr(layer_mod, f)]
    steps = list(rt.steps)

    def restore() -> None:
        for owner, attr, value in saved:
            setattr(owner, attr, value)
        rt.steps[:] = steps
        vars(rt).pop("run", None)

    rt.run = prof.wrap(rt.run, "executor loop (overhead)")
    done.append("Runtime.run")
    layer_call = Layer.__call__

    def timed_call(self, x):
        t0 = time.perf_counter()
        y = layer_call(self, x)
        prof.per_layer[self.name] += time.perf_counter() - t0
        if self.kind == "conv":
            prof.layer_shape[self.name] = (self.k, self.n, int(np.prod(np.shape(y)[2:])))
        return y

    Layer.__call__ = prof.wrap(timed_call, lambda self, x: f"{self.kind} layer: other (layout, reshape, checks)")
    done.append("Layer.__call__")
    for attr, cat in (("patches", "conv: im2col / patches (incl. pad)"), ("im2col", "conv: im2col / patches (incl. pad)")):
        if callable(getattr(layer_mod, attr, None)):
            setattr(layer_mod, attr, prof.wrap(getattr(layer_mod, attr), cat))
            done.append(f"layer.{attr}")
    for meth, cat in (("product", "layer: matmul (crossbar product)"), ("_affine", "layer: affine (gain, shift)")):
        if meth in vars(Layer):
            setattr(Layer, meth, prof.wrap(vars(Layer)[meth], cat))
            done.append(f"Layer.{meth}")
    if "product" not in vars(Layer):  # older runtime: the matmul is inline in _conv
        done.append("(no Layer.product: matmul counted under 'other')")
    ops = [n["op"] for n in rt.bundle.graph["nodes"]]
    for i, ((name, fn, ins, outs, attrs), op) in enumerate(zip(rt.steps, ops)):
        if not isinstance(fn, Layer):
            rt.steps[i] = (name, prof.wrap(fn, f"digital: {op}"), ins, outs, attrs)
    done.append("every digital step")
    return prof, done, restore


# --------------------------------------------------------------------------- 2. onnxruntime


def ort_profile(path: Path, x: np.ndarray, reps: int) -> tuple[dict[str, float], float]:
    so = ort.SessionOptions()
    so.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        so.profile_file_prefix = os.path.join(tmp, "ort")
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        warm = 3
        for _ in range(warm):
            sess.run(None, {name: x})
        times = []
        for _ in range(reps):
            s = time.perf_counter()
            sess.run(None, {name: x})
            times.append(time.perf_counter() - s)
        with open(sess.end_profiling()) as fh:
            events = json.load(fh)
    by_op: dict[str, float] = defaultdict(float)
    for ev in events:
        if ev.get("cat") == "Node" and ev["name"].endswith("_kernel_time"):
            by_op[ev["args"]["op_name"]] += ev["dur"] * 1e-6
    return {k: v / (reps + warm) for k, v in by_op.items()}, statistics.median(times)


# --------------------------------------------------------------------------- 3. what-if prototype


class NHWCPrototype:
    """Same bundle and Layer objects as Runtime; different execution strategy (see module doc).

    Supports only what the benchmark models use: 2-D Conv layers, Gemm layers, Relu, Add,
    GlobalAveragePool, Flatten.
    """

    def __init__(self, rt: Runtime):
        self.rt = rt
        self.uses: dict[str, int] = defaultdict(int)
        producer: dict[str, tuple[str, object]] = {}
        self.weights: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name, fn, ins, outs, _ in rt.steps:
            for i in ins:
                self.uses[i] += 1
            producer[outs[0]] = (name, fn)
            if isinstance(fn, Layer) and fn.kind == "conv":
                p = fn.params
                if len(p["kernel_shape"]) != 2 or p["group"] != 1 or any(d != 1 for d in p["dilations"]):
                    raise NotImplementedError(f"prototype: conv {name} not supported")
                kh, kw = p["kernel_shape"]
                # Rows (C, kh, kw) -> (kh, kw, C) to match the NHWC patch order; gain folded in.
                w = fn.matrix.reshape(p["in_channels"], kh, kw, fn.n).transpose(1, 2, 0, 3).reshape(-1, fn.n)
                self.weights[name] = (np.ascontiguousarray(w * fn.gain[None, :]), fn.shift.copy())
        # Conv whose only consumer is a Relu: apply the ReLU inside the conv, skip the Relu step.
        self.fused_relu: set[str] = set()
        self.skip: set[str] = set()
        for name, fn, ins, _, _ in rt.steps:
            if _op(name) == "Relu" and ins[0] in producer and self.uses[ins[0]] == 1:
                pname, pfn = producer[ins[0]]
                if isinstance(pfn, Layer) and pfn.kind == "conv":
                    self.fused_relu.add(pname)
                    self.skip.add(name)

    def run(self, x: np.ndarray, t: Timers | None = None) -> np.ndarray:
        rt = self.rt
        now = time.perf_counter
        s = now()
        env = {rt.input_names[0]: np.ascontiguousarray(x.transpose(0, 2, 3, 1))}
        if t is not None:
            t["layout NCHW->NHWC"] += now() - s
        for (name, fn, ins, outs, _), release in zip(rt.steps, rt._release):
            a = env[ins[0]]
            s = now()
            cat = None
            if name in self.skip:  # ReLU already applied by the producing conv
                y = a
            elif isinstance(fn, Layer) and fn.kind == "conv":
                y = self._conv(fn, a, *self.weights[name], name in self.fused_relu, t)
            elif isinstance(fn, Layer):
                y, cat = fn(a), "gemm layer"
            else:
                op = _op(name)
                cat = "digital: " + op
                in_place = self.uses[ins[0]] == 1
                if op == "Relu":
                    y = np.maximum(a, 0, out=a if in_place else None)
                elif op == "Add":
                    y = np.add(a, env[ins[1]], out=a if in_place else None)
                elif op == "GlobalAveragePool":
                    y = a.mean(axis=(1, 2))
                elif op == "Flatten":
                    y = a.reshape(a.shape[0], -1)
                else:
                    raise NotImplementedError(f"prototype: op {op}")
            if t is not None and cat:
                t[cat] += now() - s
            env[outs[0]] = y
            for n in release:
                env.pop(n, None)
        return env[rt.output_names[0]]

    @staticmethod
    def _conv(layer: Layer, x: np.ndarray, w: np.ndarray, shift: np.ndarray, relu: bool, t: Timers | None) -> np.ndarray:
        now = time.perf_counter
        p = layer.params
        (kh, kw), (sh_, sw_) = p["kernel_shape"], p["strides"]
        b, h, wd, c = x.shape
        pads = resolve_pads((h, wd), p["kernel_shape"], p["strides"], p["dilations"], p["pads"], p["auto_pad"])
        ho, wo = output_size((h, wd), p["kernel_shape"], p["strides"], p["dilations"], pads)
        t0 = now()
        if any(pads):
            xp = np.zeros((b, h + pads[0] + pads[2], wd + pads[1] + pads[3], c), x.dtype)
            xp[:, pads[0]:pads[0] + h, pads[1]:pads[1] + wd, :] = x
        else:
            xp = x
        t1 = now()
        if kh == kw == 1:
            cols = np.ascontiguousarray(xp[:, ::sh_, ::sw_, :]).reshape(b * ho * wo, c)
        else:
            sb, sh, sw, sc = xp.strides
            view = as_strided(xp, (b, ho, wo, kh, kw, c), (sb, sh * sh_, sw * sw_, sh, sw, sc), writeable=False)
            cols = np.ascontiguousarray(view).reshape(b * ho * wo, kh * kw * c)
        t2 = now()
        y = cols @ w
        t3 = now()
        y += shift
        if relu:
            np.maximum(y, 0, out=y)
        t4 = now()
        if t is not None:
            t["conv: pad (zeros + copy)"] += t1 - t0
            t["conv: im2col (1 strided copy)"] += t2 - t1
            t["conv: GEMM (1 per layer)"] += t3 - t2
            t["conv: shift (+ReLU) in place"] += t4 - t3
        return y.reshape(b, ho, wo, layer.n)


# --------------------------------------------------------------------------- helpers


def interleaved(fns: dict[str, object], reps: int, settle: float = 0.0) -> dict[str, list[float]]:
    for f in fns.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    items = list(fns.items())
    for i in range(reps):
        for k, f in items if i % 2 == 0 else items[::-1]:
            s = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - s)
            time.sleep(settle)  # let spinning BLAS / ORT worker threads go idle (see bench_ideal.py)
    return times


def breakdown(run, reps: int) -> list[Timers]:
    out = []
    for _ in range(reps):
        t: Timers = defaultdict(float)
        run(t)
        out.append(t)
    return out


def print_breakdown(title: str, runs: list[Timers]) -> None:
    """Median per category over runs (so the rows need not add up exactly to the total)."""
    keys = sorted({k for t in runs for k in t}, key=lambda k: -statistics.median(t.get(k, 0.0) for t in runs))
    med = {k: statistics.median(t.get(k, 0.0) for t in runs) for k in keys}
    totals = [sum(t.values()) for t in runs]
    total = sum(med.values())
    print(f"\n{title}: total {statistics.median(totals) * 1e3:.1f} ms median (min {min(totals) * 1e3:.1f}) over {len(runs)} runs")
    print(f"  {'category':<44} {'ms/run':>8} {'share':>6}   (median per category)")
    for k in keys:
        print(f"  {k:<44} {med[k] * 1e3:8.2f} {med[k] / total:6.1%}")


def blas_micro(reps: int) -> None:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    rng = np.random.default_rng(0)
    print("\n4. BLAS micro-benchmark, batch 128 (median / min ms over interleaved reps)")
    print(f"  {'K':>4} {'N':>3} {'L':>5}  {'stacked (N,K)@(B,K,L)':>22} {'same, 1 thread':>16} {'1 GEMM (BL,K)@(K,N)':>20} {'same, 1 thread':>16}")
    for k, n, l in ((144, 16, 1024), (288, 32, 256), (576, 64, 64)):
        wt = rng.standard_normal((n, k), dtype=np.float32)
        w = np.ascontiguousarray(wt.T)
        cols = rng.standard_normal((128, k, l), dtype=np.float32)
        flat = np.ascontiguousarray(cols.transpose(0, 2, 1)).reshape(-1, k)

        def one(f):
            if threadpool_limits is None:
                return lambda: None
            def g():
                with threadpool_limits(1):
                    f()
            return g

        fns = {"st": lambda: np.matmul(wt, cols), "st1": one(lambda: np.matmul(wt, cols)),
               "g": lambda: flat @ w, "g1": one(lambda: flat @ w)}
        ts = interleaved(fns, reps)
        cells = [f"{statistics.median(ts[key]) * 1e3:7.1f} / {min(ts[key]) * 1e3:6.1f}" for key in fns]
        print(f"  {k:>4} {n:>3} {l:>5}  {cells[0]:>22} {cells[1]:>16} {cells[2]:>20} {cells[3]:>16}")


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--cprofile", action="store_true", help="also print a cProfile of plain Runtime.run")
    ap.add_argument("--no-whatif", action="store_true", help="skip the NHWC prototype comparison")
    ap.add_argument("--settle", type=float, default=0.25, help="idle seconds after each timed call in section 3")
    ap.add_argument("--no-blas", action="store_true", help="skip the BLAS micro-benchmark")
    args = ap.parse_args()
    path = MODELS.get(args.model, Path(args.model))
    if not path.exists():
        raise SystemExit(f"{path} not found; run benchmarks/bench_ideal.py first to generate it")
    print(f"model {path.name}, batch {args.batch}, {args.reps} reps; loadavg {os.getloadavg()[0]:.2f}")
    rt = Runtime(convert(str(path)))
    shape = rt.inputs[0]["shape"]
    x = np.random.default_rng(0).standard_normal([args.batch] + shape[1:]).astype(np.float32)

    # 1. xbar as is
    ref = rt(x)
    plain = []
    for _ in range(args.reps):
        s = time.perf_counter()
        rt(x)
        plain.append(time.perf_counter() - s)
    prof, wrapped, restore = instrument(rt)
    assert np.array_equal(rt(x), ref), "instrumented run differs"
    prof.per_layer.clear()
    runs = []
    for _ in range(args.reps):
        prof.reset()
        rt(x)
        runs.append(prof.t)
    restore()
    print(f"\nplain Runtime.run: median {statistics.median(plain) * 1e3:.1f} ms, min {min(plain) * 1e3:.1f} ms "
          f"({args.reps} reps, before instrumenting)")
    print(f"instrumented: {', '.join(wrapped)}")
    print_breakdown("1. xbar Runtime.run, instrumented (exclusive time per category)", runs)
    shapes = prof.layer_shape
    print(f"\n  {'conv layer':<32} {'K':>5} {'N':>4} {'L':>5} {'im2col MiB':>10} {'ms (mean)':>9} {'GFLOP/s':>8}")
    for name, (k, n, l) in shapes.items():
        sec = prof.per_layer[name] / args.reps
        print(f"  {name:<32} {k:>5} {n:>4} {l:>5} {k * l * args.batch * 4 / 2**20:10.1f} {sec * 1e3:9.2f} "
              f"{2 * k * n * l * args.batch / sec / 1e9:8.1f}")
    gflop = sum(2 * k * n * l * args.batch for k, n, l in shapes.values()) / 1e9
    print(f"  total conv work {gflop:.2f} GFLOP per batch")

    # 2. onnxruntime
    by_op, ort_med = ort_profile(path, x, args.reps)
    ort_total = sum(by_op.values())
    print(f"\n2. onnxruntime (default options, profiling on): run median {ort_med * 1e3:.1f} ms; kernel time by op type")
    for k, v in sorted(by_op.items(), key=lambda kv: -kv[1]):
        print(f"  {k:<36} {v * 1e3:8.2f} {v / ort_total:6.1%}")

    # 3. what-if
    if not args.no_whatif:
        proto = NHWCPrototype(rt)
        y = proto.run(x)
        err = float(np.max(np.abs(y - ref)))
        print_breakdown("3. what-if NHWC prototype, instrumented", breakdown(lambda t: proto.run(x, t), args.reps))
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = sess.get_inputs()[0].name
        ts = interleaved({"xbar Runtime.run": lambda: rt(x), "NHWC prototype": lambda: proto.run(x),
                          "onnxruntime": lambda: sess.run(None, {feed: x})}, args.reps, args.settle)
        om = statistics.median(ts["onnxruntime"])
        print(f"\n  end to end, interleaved, {args.settle:g} s idle after each call, {args.reps} reps (prototype max |dy| vs xbar = {err:.1e})")
        for k, v in ts.items():
            print(f"  {k:<20} median {statistics.median(v) * 1e3:8.1f} ms   min {min(v) * 1e3:8.1f} ms   "
                  f"/ort {statistics.median(v) / om:5.2f}x (median)  {min(v) / min(ts['onnxruntime']):5.2f}x (min)")

    if not args.no_blas:
        blas_micro(args.reps)

    if args.cprofile:
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(args.reps):
            rt(x)
        pr.disable()
        buf = io.StringIO()
        pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(12)
        print("\ncProfile of plain Runtime.run (tottime):\n" + buf.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
