#!/usr/bin/env python
"""Throughput of `xbar sweep` on Dask: 1 and 2 workers, and the engine's overhead per task.

    python benchmarks/bench_sweep.py [--chips 40] [--times 1s,1h,1d,1y] [--test-samples N]

One point (models/resnet_bn.onnx on 128x128 tiles, preset pcm, DAC/ADC ranges from
models/digits_calib.npz), --chips chips × --times drift times, on the 450-sample test split:
one chip task per chip, one row per chip and time. Measured in one run, each on a fresh
results folder holding the already prepared bundle (its preparation is timed once,
separately), so all three measure the same chip tasks:

    in-process   xbar.sweep.engine.run_in_process: the tasks one after another in this
                 process, one thread, no Dask (the reference)
    dask, 1      engine.run on a local cluster of 1 worker process (one thread)
    dask, 2      the same with 2 worker processes

Reported: wall seconds (cluster start-up included for Dask, and shown apart), the seconds
spent inside the rows (the sum of their wall_s: the chip work itself, wherever it ran), rows per
second, the scaling ratio (1 worker's time ÷ 2 workers'), and the engine's overhead per task
((dask, 1 − in-process) ÷ tasks, and as a fraction of the in-process time; target ≤ 10 %).
The three runs' rows are checked bit-identical (wall time aside).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from study_io import source_commit  # noqa: E402

SPEC = """
[study]
models = ["{root}/models/resnet_bn.onnx"]
test_data = "{root}/models/digits_test.npz"
calib_data = "{root}/models/digits_calib.npz"
seeds = "0-{last}"
times = [{times}]
{limit}
[base]
hardware = "pcm"
"mapping.crossbar" = "128x128"
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chips", type=int, default=40)
    ap.add_argument("--times", default="1s,1h,1d,1y")
    ap.add_argument("--test-samples", type=int, default=None, help="first N test samples only (quick runs)")
    args = ap.parse_args()

    from xbar.sweep import engine
    from xbar.sweep.spec import load_study
    from xbar.sweep.store import Results, read_rows

    work = Path(tempfile.mkdtemp(prefix="xbar-bench-sweep-"))
    try:
        spec = work / "spec.toml"
        spec.write_text(SPEC.format(root=ROOT, last=args.chips - 1,
                                    times=", ".join(f'"{t}"' for t in args.times.split(",")),
                                    limit=f"test_samples = {args.test_samples}" if args.test_samples else ""))
        study = load_study(spec)
        tasks = sum(len(p.seeds) for p in study.points)
        print(f"bench_sweep: source {source_commit()}; {os.cpu_count()} cores; load at start "
              f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}")
        print(f"  resnet_bn, pcm, 128x128: {tasks} chip tasks × {len(study.times)} times = {study.rows} rows")

        # Prepare the bundle once, outside the timed runs.
        t0 = time.perf_counter()
        from xbar.sweep.task import prepare

        point = study.points[0]
        _, calib, _ = engine.datasets(study)
        blob = prepare(engine.prepare_job(study, point), calib, None)
        prep_s = time.perf_counter() - t0
        key = point.prepare_key(study)
        print(f"  preparation (convert + ranges, once): {prep_s:.1f} s")

        timings = {}
        for name, workers in (("in-process", 0), ("dask, 1 worker", 1), ("dask, 2 workers", 2)):
            folder = work / name.replace(" ", "_").replace(",", "")
            results, _ = Results.open(folder, study)
            results.save_bundle_bytes(key, blob)
            t0 = time.perf_counter()
            if workers == 0:
                out = engine.run_in_process(study, results)
                start = 0.0
            else:
                t_connect = time.perf_counter()
                client, cluster = engine.connect(None, workers)
                start = time.perf_counter() - t_connect
                client.close()
                cluster.close()
                t0 = time.perf_counter()
                out = engine.run(study, results, workers=workers, echo=lambda s: None)
            wall = time.perf_counter() - t0
            assert out.finished == tasks and not out.failures, out.failures
            timings[name] = (wall, start, folder)
            inside = sum(r["wall_s"] for r in read_rows(folder).to_pylist())
            print(f"  {name:<16} {wall:7.1f} s  {study.rows / wall:5.2f} rows/s;  in rows (their wall_s) {inside:6.1f} s, "
                  f"cluster start-up alone {start:4.1f} s", flush=True)

        rows = [[{k: v for k, v in r.items() if k != "wall_s"} for r in read_rows(f).to_pylist()]
                for _, _, f in timings.values()]
        identical = rows[0] == rows[1] == rows[2]
        t_in, t1, t2 = (timings[k][0] for k in ("in-process", "dask, 1 worker", "dask, 2 workers"))
        print(f"  rows bit-identical across the three runs: {identical}")
        print(f"  scaling: 1 worker ÷ 2 workers = {t1 / t2:.2f}x (ideal 2.00x on 2 free cores)")
        print(f"  engine overhead: {(t1 - t_in) / tasks * 1000:+.0f} ms per task, {100 * (t1 - t_in) / t_in:+.1f} % of "
              f"the in-process time (target ≤ 10 %; cluster start-up included)")
        print("  (time in rows is the chip work itself; wall time minus it is each run's own overhead, and the two "
              "runs' chip work differing shows the machine's noise)")
        print(f"  load at end {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
        return 0 if identical else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)



if __name__ == "__main__":
    sys.exit(main())
