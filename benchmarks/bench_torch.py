#!/usr/bin/env python
"""Torch executor vs NumPy runtime: chip inference time on the same chip instance.

    python benchmarks/bench_torch.py [--quick] [--reps N] [--settle S]

The ResNet-20-shaped CIFAR model of bench_ideal.py / bench_chip.py (random weights, BN kept),
converted on 128x128 tiles, ranges from find_ranges on 256 random inputs, hardware as in
bench_chip.py: preset('pcm') one day after programming (programming noise, drift with
per-tile compensation, fresh read noise, 8-bit DAC abs-max, 8-bit ADC percentile, IR drop).
Batch 128. Both engines use chip instance seed 0 (TorchRuntime reads the NumPy runtime's
sampled tiles), built before timing; only the inference call is timed:

  numpy          Runtime(bundle, spec, seed=0)(x)
  torch 1t       TorchRuntime(bundle, spec, seed=0)({"input": x}) under torch.no_grad(),
                 torch.set_num_threads(1)
  torch Nt       the same with torch's default intra-op threads (one per core)
  torch+graph 1t the same call with autograd recording, 1 thread (a training step's forward)

torch's OpenMP intra-op threads wait for each other at every op; on a machine shared with
other processes that costs several times the work (seen here: 2 threads 3-8x slower than 1
under ~50 % foreign load), so both settings are timed.

Interleaved repetitions (order rotating, --settle s idle after each call), after warm-up.
Reported: medians, minima, torch / numpy ratios. Run it twice and report both runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import bench_ideal  # noqa: E402  (header, ForeignLoad, ensure_model)
from bench_chip import BATCH, CALIB_SAMPLES, chip_spec  # noqa: E402
from bench_ideal import ForeignLoad, ensure_model  # noqa: E402


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="two repetitions (smoke test)")
    ap.add_argument("--reps", type=int, help="timed repetitions per engine (default 6; 2 with --quick)")
    ap.add_argument("--settle", type=float, default=0.25, help="idle seconds after every timed call (default 0.25)")
    args = ap.parse_args(argv[1:])
    reps = args.reps or (2 if args.quick else 6)

    import numpy as np
    import torch

    from xbar.converter import convert
    from xbar.runtime import Runtime
    from xbar.runtime.parallel import workers
    from xbar.runtime.ranges import find_ranges
    from xbar.training.torch_executor import TorchRuntime

    lines = bench_ideal.header(argv)
    lines[0] = "xbar torch-executor benchmark (chip inference, torch vs NumPy)"
    for line in lines:
        print(line)
    spec = chip_spec()
    print(f"threads     : NumPy runtime {workers()} worker thread(s); torch intra-op 1 and {torch.get_num_threads()} (default)")
    print("hardware    : preset('pcm').override(t_inference=86400.0) on 128x128 tiles, differential")
    print(flush=True)

    model, _ = ensure_model("resnet20")
    x = np.random.default_rng(0).standard_normal((BATCH, 3, 32, 32)).astype(np.float32)
    calib = np.random.default_rng(1).standard_normal((CALIB_SAMPLES, 3, 32, 32)).astype(np.float32)
    bundle = convert(str(model), crossbar=(128, 128))
    find_ranges(bundle, calib, spec)
    t0 = time.perf_counter()
    numpy_rt = Runtime(bundle, spec, seed=0)
    t_np = time.perf_counter() - t0
    t0 = time.perf_counter()
    torch_rt = TorchRuntime(bundle, spec, seed=0)
    t_torch = time.perf_counter() - t0
    xt = torch.from_numpy(x)
    out = numpy_rt.output_names[0]

    default_threads = torch.get_num_threads()

    def run_torch(threads: int, grad: bool = False):
        torch.set_num_threads(threads)
        with torch.set_grad_enabled(grad):
            return torch_rt({"input": xt})[out]

    engines = {
        "numpy": lambda: numpy_rt(x),
        "torch 1t": lambda: run_torch(1),
        f"torch {default_threads}t": lambda: run_torch(default_threads),
        "torch+graph 1t": lambda: run_torch(1, grad=True),
    }
    ideal = Runtime(bundle)(x).astype(np.float64)
    y_np, y_t = engines["numpy"](), run_torch(1).numpy()

    def rel_rms(y):
        return float(np.sqrt(np.mean((y - ideal) ** 2)) / np.sqrt(np.mean(ideal ** 2)))

    s = bundle.manifest["summary"]
    print(f"bundle      : {s['analog_layers']} analog layers on {s['tiles_used']} tiles, {s['analog_weights']:,} weights; "
          f"chip preparation: Runtime {t_np:.2f} s, TorchRuntime (its own Runtime + torch copies) {t_torch:.2f} s")
    print(f"check       : output rel. RMS error vs ideal, numpy chip {rel_rms(y_np):.4f}, torch chip {rel_rms(y_t):.4f} "
          f"(fresh read noise: equal in distribution, not in value); argmax agreement numpy/torch "
          f"{np.mean(y_np.argmax(1) == y_t.argmax(1)):.0%}")
    for fn in engines.values():  # warm-up
        fn()
        time.sleep(args.settle)
    times: dict[str, list[float]] = {k: [] for k in engines}
    names = list(engines)
    with ForeignLoad() as load:
        for i in range(reps):
            order = names[i % len(names):] + names[:i % len(names)]
            for name in order:
                t = time.perf_counter()
                engines[name]()
                times[name].append(time.perf_counter() - t)
                time.sleep(args.settle)
    med = {k: statistics.median(v) for k, v in times.items()}
    mn = {k: min(v) for k, v in times.items()}
    print(f"\nchip inference, batch {BATCH}, {reps} interleaved reps per engine (foreign CPU load {load.text()})")
    print(f"  {'engine':<16} {'median ms':>10} {'min ms':>9}   {'/ numpy (medians)':>18} {'(minima)':>9}")
    for k in names:
        print(f"  {k:<16} {med[k] * 1e3:10.1f} {mn[k] * 1e3:9.1f}   {med[k] / med['numpy']:17.2f}x "
              f"{mn[k] / mn['numpy']:8.2f}x")
    torch.set_num_threads(default_threads)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
