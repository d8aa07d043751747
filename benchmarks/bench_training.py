#!/usr/bin/env python
"""Time the training side on the shipped ResNet: `calibrate --method sgd` and one `finetune` epoch.

    python benchmarks/bench_training.py [--runs 2] [--torch-threads default,1]

Model models/resnet_bn.onnx on 128x128 tiles (differential), converted for the full pcm
preset with DAC/ADC ranges from models/digits_calib.npz (as `xbar convert --hardware pcm
--calib-data ...` does), before timing. Chip seed 0.

Timed, wall and CPU seconds of this process, --runs fresh calls each (all reported):
a. xbar.runtime.calibrate.calibrate(..., method="sgd") on the 512 calibration samples at
   t = 1 d with the default SGDOptions (20 epochs, batch 64, distill): everything the
   command does but loading/saving (chip, before/ideal/after passes, training). Target
   <= 60 s (issue 11).
b. xbar.training.finetune.finetune(..., method) for one epoch on models/digits_train.npz
   (835 samples, 13 steps of 64) at t = 1 y, for noise and for hessian (its curvature
   estimate, 4 probes, runs in epoch 1). Target <= 30 s per epoch.
Each --torch-threads setting ('default' = torch's own, one per core, or an integer) is
timed separately, given to the loops as XBAR_TORCH_THREADS (unset, they keep torch's
default: on a loaded 2-core machine two intra-op threads were slower than one).

The header gives the command, date, nproc, load average and the source commit.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import shlex
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from study_io import source_commit  # noqa: E402

MODEL = ROOT / "models" / "resnet_bn.onnx"
CALIB = ROOT / "models" / "digits_calib.npz"
TRAIN = ROOT / "models" / "digits_train.npz"


def _timed(fn):
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--torch-threads", default="1,default")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from xbar.converter import convert
    from xbar.hardware import preset
    from xbar.runtime.calibrate import calibrate
    from xbar.runtime.ranges import find_ranges
    from xbar.training.finetune import FinetuneOptions, finetune

    print(f"$ python benchmarks/{Path(__file__).name} {shlex.join(argv)}")
    print(f"date {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M UTC}, nproc {os.cpu_count()}, "
          f"load {os.getloadavg()[0]:.1f}, source {source_commit()}, torch {torch.__version__}")
    pcm = preset("pcm")
    bundle = convert(MODEL, hardware=pcm)
    cal = np.load(CALIB)
    find_ranges(bundle, cal["x"], pcm)
    train = np.load(TRAIN)
    from xbar.training import THREADS_ENV

    default_threads = torch.get_num_threads()
    for setting in args.torch_threads.split(","):
        threads = default_threads if setting == "default" else int(setting)
        # The training loops set torch's threads from this variable (unset: torch's default).
        os.environ[THREADS_ENV] = str(threads)
        print(f"\ntorch threads in the training loops: {threads} ({setting}; {THREADS_ENV}={threads})")
        for r in range(args.runs):
            wall, cpu = _timed(lambda: calibrate(bundle, cal["x"], pcm.override(t_inference=86400.0), 0, "sgd"))
            print(f"  calibrate --method sgd, 512 samples, 20 epochs: {wall:6.1f} s wall, {cpu:6.1f} s CPU "
                  f"(run {r + 1}; target <= 60 s)")
        for method in ("noise", "hessian"):
            for r in range(args.runs):
                wall, cpu = _timed(lambda: finetune(bundle, train["x"], train["y"], pcm.override(t_inference=3.15e7),
                                                    FinetuneOptions(method=method, epochs=1)))
                print(f"  finetune --method {method:7s} 1 epoch, 835 samples: {wall:6.1f} s wall, {cpu:6.1f} s CPU "
                      f"(run {r + 1}; target <= 30 s)")
    print(f"\nload at end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
