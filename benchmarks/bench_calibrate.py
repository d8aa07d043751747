#!/usr/bin/env python
"""Time `calibrate` of the shipped ResNet on the calibration split, per method.

    python benchmarks/bench_calibrate.py [--runs 3] [--threads default,1] [--batch-size 128]

Model models/resnet_bn.onnx converted onto 128x128 tiles (differential); DAC/ADC ranges from
find_ranges on models/digits_calib.npz (512 samples), done once before timing (as a bundle
converted with `xbar convert --calib-data` already carries them, so calibrate does not
search ranges itself). Hardware: the full preset('pcm') at t_inference = 1 d (programming
noise, drift with 'tile' compensation, 1/f read noise, IR drop 1 ohm/segment, 8-bit DAC
abs-max, 8-bit ADC 99.99th percentile). Chip seed 0.

Timed: xbar.runtime.calibrate.calibrate(bundle, x_calib (512), spec, seed=0, method) for
method in (stats, affine): wall time, median of --runs (default 3) fresh calls, interleaved
between the methods. Target <= 30 s per call. Each --threads setting ('default' = the BLAS
library's own thread count, or an integer, applied with threadpoolctl) is timed separately.

Also printed, once per thread setting, the pieces calibrate is made of, so the total can be
read: chip construction Runtime(bundle, spec, 0) (programming, drift, IR-drop solve of every
tile, twice with drift compensation), one noisy pass over the 512 samples, and one
ideal-hardware pass. calibrate builds the chip 3 times and runs roughly 4 noisy passes (the
'before' record, the layer-by-layer fit - each layer's noisy output is computed once for the
fit and once more to feed the next layer - and the 'after' record) and 2 ideal passes.

The header gives the command, date, nproc and the load average; 'other load' is the CPU time
other processes used during the timed calls (/proc/stat), as a share of the machine.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODEL = ROOT / "models" / "resnet_bn.onnx"
CALIB = ROOT / "models" / "digits_calib.npz"
TARGET_S = 30.0
METHODS = ("stats", "affine")


def _nproc() -> str:
    try:
        return subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return str(len(os.sched_getaffinity(0)))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="timed calls per method and thread setting (median)")
    ap.add_argument("--threads", default="default,1",
                    help="comma-separated BLAS thread settings: 'default' or an integer (default: default,1)")
    ap.add_argument("--batch-size", type=int, default=128)
    args = ap.parse_args(argv[1:])

    import numpy as np
    from threadpoolctl import threadpool_info, threadpool_limits

    sys.path.insert(0, str(HERE))
    try:
        from bench_ideal import ForeignLoad, source_fingerprint
    except Exception:  # noqa: BLE001 - header extras only
        ForeignLoad, source_fingerprint = None, None

    from xbar.converter import convert
    from xbar.data import load_dataset
    from xbar.hardware import preset
    from xbar.runtime import Runtime
    from xbar.runtime.calibrate import calibrate
    from xbar.runtime.evaluate import predict
    from xbar.runtime.ranges import find_ranges

    command = shlex.join([Path(sys.executable).name, os.path.relpath(argv[0], os.getcwd())] + argv[1:])
    blas = "; ".join(f"{p.get('internal_api')} {p.get('version')} num_threads={p.get('num_threads')}"
                     for p in threadpool_info() if p.get("user_api") == "blas") or "none found"
    print("xbar calibration benchmark")
    print(f"command     : {command}")
    print(f"cwd         : {os.getcwd()}")
    print(f"date        : {_dt.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"host        : {platform.node()}  {platform.platform()}")
    print(f"nproc       : {_nproc()}   (loadavg at start {', '.join(f'{v:.2f}' for v in os.getloadavg())})")
    print(f"python      : {platform.python_version()}   numpy {np.__version__}   BLAS: {blas}")
    if source_fingerprint is not None:
        print(f"xbar source : {source_fingerprint()}")

    spec = preset("pcm").override(t_inference=86400.0)
    bundle = convert(str(MODEL), crossbar=(128, 128))
    calib = load_dataset(CALIB, bundle.graph["inputs"][0])
    t0 = time.perf_counter()
    find_ranges(bundle, calib.x, spec)
    t_ranges = time.perf_counter() - t0
    s = bundle.manifest["summary"]
    print(f"model       : {MODEL.relative_to(ROOT)}: {s['analog_layers']} analog layers on {s['tiles_used']} tiles "
          f"of 128x128; calibration data {len(calib)} samples of {CALIB.relative_to(ROOT)}")
    print(f"ranges      : find_ranges once before timing ({t_ranges:.1f} s; not part of the timed calls)")
    print("hardware    : preset pcm, t = 1 d, chip seed 0")
    for line in spec.describe().splitlines():
        print("              " + line)
    print(f"runs        : median of {args.runs} per method, methods interleaved; target <= {TARGET_S:g} s per call")
    print(flush=True)

    settings = [t.strip() for t in args.threads.split(",") if t.strip()]
    rows = []
    for setting in settings:
        limit = None if setting == "default" else int(setting)
        ctx = threadpool_limits(limits=limit, user_api="blas") if limit else None
        try:
            nthreads = ",".join(str(p.get("num_threads")) for p in threadpool_info() if p.get("user_api") == "blas")
            # the pieces, once (after one warm-up construction)
            Runtime(bundle, spec, 0)
            t0 = time.perf_counter()
            rt = Runtime(bundle, spec, 0)
            t_chip = time.perf_counter() - t0
            t0 = time.perf_counter()
            predict(rt, calib.x, args.batch_size)
            t_noisy = time.perf_counter() - t0
            t0 = time.perf_counter()
            predict(Runtime(bundle), calib.x, args.batch_size)
            t_ideal = time.perf_counter() - t0
            print(f"BLAS threads {setting} ({nthreads}): pieces - chip construction {t_chip:.2f} s, noisy pass over "
                  f"{len(calib)} samples {t_noisy:.2f} s, ideal pass {t_ideal:.2f} s "
                  f"(3 x chip + 4 x noisy + 2 x ideal ≈ {3 * t_chip + 4 * t_noisy + 2 * t_ideal:.1f} s)", flush=True)
            times = {m: [] for m in METHODS}
            load = ForeignLoad() if ForeignLoad is not None else None
            if load is not None:
                load.__enter__()
            for r in range(args.runs):
                order = METHODS if r % 2 == 0 else METHODS[::-1]
                for m in order:
                    t0 = time.perf_counter()
                    calibrate(bundle, calib.x, spec, 0, m, batch_size=args.batch_size)
                    dt = time.perf_counter() - t0
                    times[m].append(dt)
                    print(f"  run {r + 1}/{args.runs} {m:<6} {dt:6.2f} s", flush=True)
            if load is not None:
                load.__exit__(None, None, None)
            for m in METHODS:
                rows.append((setting, nthreads, m, times[m], load.text() if load is not None else "n/a"))
        finally:
            if ctx is not None:
                ctx.restore_original_limits()

    print()
    print(f"calibrate(resnet_bn, {len(calib)} samples, pcm @ 1 d), wall seconds")
    print(f"  {'BLAS threads':<14} {'method':<8} {'median':>8} {'min':>8} {'max':>8}  {'target':>8}  status  other load  runs")
    for setting, nthreads, m, ts, other in rows:
        med = statistics.median(ts)
        status = "OK" if med <= TARGET_S else "MISS"
        print(f"  {setting + ' (' + nthreads + ')':<14} {m:<8} {med:8.2f} {min(ts):8.2f} {max(ts):8.2f}  "
              f"{'<= ' + format(TARGET_S, 'g'):>8}  {status:<6}  {other:>10}  {', '.join(f'{t:.2f}' for t in ts)}")
    print(f"loadavg at end {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
