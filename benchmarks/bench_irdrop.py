#!/usr/bin/env python
"""IR-drop benchmark: time per tile of `effective_conductance` (exact G_eff with wire resistance).

    python benchmarks/bench_irdrop.py [--reps N] [--workers N] [--dtypes float64,float32]

Workload: stacks of 32 tiles of 64×64, 16 of 128×128 and 4 of 256×256, PCM-like conductances
drawn uniformly from [0, 25 µS], r_wire = 1 Ω per segment, r_driver = r_sense = 10 Ω. Each
stack is computed once per solve dtype to warm up (caches the tile shape's schedule), then
timed --reps times, the dtypes taking turns so that both see the same machine; the table
gives the best and the median wall time per tile, the CPU time per tile of the best run
(CPU > wall when the worker threads overlap), and for float32 its speed-up over float64
(ratio of the medians) and its largest deviation from the float64 result, in units of the
stack's largest conductance (the stated bound is 2e-5, xbar.runtime.irdrop). The last line
extrapolates the 128×128 figure to a ResNet-18-sized model, 1,400 tiles of 128×128
(target: well under 60 s on 2 cores, i.e. ≲ 20 ms per tile).

The machine may be shared: the load average is printed before and after, since other
processes on the same cores inflate every figure.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np

import xbar.runtime.irdrop as irdrop
from xbar.hardware import IR_SOLVE_DTYPES
import xbar.runtime.parallel as parallel

R_WIRE, R_DRIVER, R_SENSE = 1.0, 10.0, 10.0
G_MAX = 25e-6
CASES = [(64, 32), (128, 16), (256, 4)]  # (tile side, tiles in the stack)
RESNET18_TILES = 1400


def _blas_info() -> str:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl not installed: BLAS threads not controlled, tiles on one thread"
    pools = [f"{p['internal_api']} {p.get('version')} ({p['num_threads']} threads by default)"
             for p in threadpool_info() if p["user_api"] == "blas"]
    return "; ".join(pools) or "none found"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--workers", type=int, default=None, help="worker threads (default: one per core)")
    ap.add_argument("--dtypes", default="float64,float32", help="solve dtypes to time, comma-separated")
    args = ap.parse_args()
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    bad = [d for d in dtypes if d not in IR_SOLVE_DTYPES]
    if bad or not dtypes:
        ap.error(f"--dtypes: choose from {', '.join(IR_SOLVE_DTYPES)}; got {args.dtypes!r}")
    parallel.MAX_WORKERS = args.workers

    print(f"python {platform.python_version()}, numpy {np.__version__}, "
          f"worker threads: {parallel.workers()}; BLAS: {_blas_info()}")
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    print(f"G ~ U[0, {G_MAX * 1e6:.0f} µS], r_wire = {R_WIRE} Ω, r_driver = {R_DRIVER} Ω, r_sense = {R_SENSE} Ω")
    print(f"{'tile':>9} {'stack':>5} {'dtype':>8} {'best ms/tile':>13} {'median':>8} {'cpu ms/tile':>12}"
          f" {'mean |Geff-G|/G':>16} {'speed-up':>9} {'max |Δ|/G_max':>14}")
    rng = np.random.default_rng(0)
    per_tile = {}
    for n, count in CASES:
        g = rng.uniform(0.0, G_MAX, (count, n, n))
        g_eff = {d: irdrop.effective_conductance(g, R_WIRE, R_DRIVER, R_SENSE, d) for d in dtypes}  # warm-up
        walls = {d: [] for d in dtypes}
        cpus = {d: [] for d in dtypes}
        for _ in range(args.reps):
            for d in dtypes:
                c0, t0 = time.process_time(), time.perf_counter()
                irdrop.effective_conductance(g, R_WIRE, R_DRIVER, R_SENSE, d)
                walls[d].append(time.perf_counter() - t0)
                cpus[d].append(time.process_time() - c0)
        for d in dtypes:
            best = min(range(args.reps), key=walls[d].__getitem__)
            per_tile[n, d] = walls[d][best] / count
            deviation = np.mean(np.abs(g_eff[d] - g)) / np.mean(g)
            speed = err = ""
            if d != "float64" and "float64" in dtypes:
                speed = f"{statistics.median(walls['float64']) / statistics.median(walls[d]):.2f}x"
                err = f"{np.abs(g_eff[d] - g_eff['float64']).max() / g.max():.1e}"
            print(f"{n:>4}×{n:<4} {count:>5} {d:>8} {walls[d][best] / count * 1e3:>13.1f}"
                  f" {statistics.median(walls[d]) / count * 1e3:>8.1f} {cpus[d][best] / count * 1e3:>12.1f}"
                  f" {deviation:>16.4f} {speed:>9} {err:>14}")
    for d in dtypes:
        total = per_tile[128, d] * RESNET18_TILES
        print(f"extrapolated, {d}: {RESNET18_TILES} tiles of 128×128 in {total:.1f} s"
              f" (best per-tile time × {RESNET18_TILES})")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
