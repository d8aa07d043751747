#!/usr/bin/env python
"""Speed of the encodings: conversion with AFP + column placement, chip inference per encoding.

    python benchmarks/bench_encodings.py [--quick] [--conv-runs N] [--reps N] [--settle S]

Measures, in one run, on the same machine:

1. Conversion of bench_ideal.py's ResNet-50-shaped model (~25.6 M parameters, random
   weights, cached in benchmarks/.cache/): wall time of
       convert(path, crossbar=(128, 128))                                        (fixed point)
       convert(path, crossbar=(128, 128), afp_exponents=2, rearrange="ir-drop",
               hardware=preset("pcm"))                                           (AFP + placement)
   each in a fresh subprocess (the two alternate, --conv-runs each, default 3), median.
   Target for the second: <= 20 s. Peak RSS of the child (VmHWM) and the bundle's physical
   columns, tiles and ADC conversions per sample are reported beside it.
2. Chip inference on bench_ideal.py's ResNet-20-shaped CIFAR model (random weights, BN
   kept), preset('pcm') at t = 1 d (the full noise stack of bench_chip.py), 128x128 tiles,
   batch 128, for four encodings: fixed point, AFP E = 2 (converted with hardware= the
   spec), 2 replicas, bit slicing 2 slices x 4 bits. Each bundle gets ranges from
   find_ranges on 256 random inputs, and its chip Runtime(bundle, spec, seed=0) is built
   (prepared) before timing; only rt(x) is timed. Following bench_chip.py: warm-up, then
   interleaved repetitions (the order rotates every round and reverses every other round)
   with --settle seconds idle after every call; medians. Reported per encoding: median
   time / fixed's median, beside physical columns / fixed's and ADC conversions per sample /
   fixed's. The claim under test: inference time grows no more than in proportion to the
   extra physical columns (time ratio <= columns ratio).

The machine is shared and noisy: run it more than once (RESULTS.md reports two runs).
Exit code 0 unless something fails outright; a missed target is reported, not an error.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import bench_ideal  # noqa: E402  (header, ForeignLoad, prepare_models, cache layout)
from bench_ideal import ForeignLoad, _proc_status_kib, prepare_models  # noqa: E402
from study_io import source_commit  # noqa: E402

BATCH = 128
T_INFERENCE = 86400.0  # 1 day
CALIB_SAMPLES = 256
TARGET_CONVERT_S = 20.0
CONVERSIONS = {
    "fixed": {},
    "afp2+ir-drop": {"afp_exponents": 2, "rearrange": "ir-drop", "hardware": "pcm"},
}
ENCODINGS = {
    "fixed": ("fixed point", {}),
    "afp2": ("AFP E=2", {"afp_exponents": 2}),
    "rep2": ("2 replicas", {"replicas": 2}),
    "bs2x4": ("bit slicing 2x4", {"bit_slices": 2, "bits_per_cell": 4}),
}


# --------------------------------------------------------------------------- 1. conversion


def _convert_child(model: str, mode: str) -> None:
    t_start = time.perf_counter()
    from xbar.converter import convert
    from xbar.hardware import preset

    kwargs = dict(CONVERSIONS[mode])
    if "hardware" in kwargs:
        kwargs["hardware"] = preset(kwargs["hardware"])
    res: dict = {"import_s": time.perf_counter() - t_start, "rss_before_kib": _proc_status_kib("VmRSS")}
    t0 = time.perf_counter()
    bundle = convert(model, crossbar=(128, 128), **kwargs)
    res["convert_s"] = time.perf_counter() - t0
    res["hwm_kib"] = _proc_status_kib("VmHWM")
    s = bundle.manifest["summary"]
    res.update(params=s["parameters"], tiles=s["tiles_used"], physical_columns=s["physical_columns"],
               adc_per_sample=s["adc_per_sample"], analog_layers=s["analog_layers"])
    print("RESULT " + json.dumps(res))


def bench_conversion(model: Path, runs: int) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {m: [] for m in CONVERSIONS}
    for _ in range(runs):
        for mode in CONVERSIONS:  # alternate, so slow spells of the shared machine hit both
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, __file__, "_convert", str(model), mode], capture_output=True, text=True)
            if proc.returncode != 0:
                sys.stderr.write(proc.stdout + proc.stderr)
                raise SystemExit(f"conversion subprocess ({mode}) failed (exit {proc.returncode})")
            line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
            res = json.loads(line[len("RESULT "):])
            res["process_s"] = time.perf_counter() - t0
            out[mode].append(res)
    return out


# --------------------------------------------------------------------------- 2. inference


def bench_inference(model: Path, x, calib, spec, reps: int, warmup: int, settle: float) -> dict:
    import numpy as np

    from xbar.converter import convert
    from xbar.runtime import Runtime
    from xbar.runtime.ranges import find_ranges

    chips, info = {}, {}
    for key, (label, kwargs) in ENCODINGS.items():
        t0 = time.perf_counter()
        b = convert(str(model), crossbar=(128, 128), hardware=spec, **kwargs)
        t_conv = time.perf_counter() - t0
        t0 = time.perf_counter()
        find_ranges(b, calib, spec)
        t_ranges = time.perf_counter() - t0
        t0 = time.perf_counter()
        chips[key] = Runtime(b, spec, seed=0)
        s = b.manifest["summary"]
        info[key] = {"label": label, "convert_s": t_conv, "ranges_s": t_ranges, "prep_s": time.perf_counter() - t0,
                     "tiles": s["tiles_used"], "physical_columns": s["physical_columns"],
                     "adc_per_sample": s["adc_per_sample"], "positions": sum(l["tiles"]["positions"] for l in b.layers
                                                                             if l["placement"] == "analog")}
    names = list(chips)
    outs = {k: chips[k](x) for k in names}
    ref = outs["fixed"].argmax(1)
    for k in names:
        info[k]["agree_fixed"] = float(np.mean(outs[k].argmax(1) == ref))
    for _ in range(warmup):
        for k in names:
            chips[k](x)
            time.sleep(settle)
    times: dict[str, list[float]] = {k: [] for k in names}
    n = len(names)
    with ForeignLoad() as load:
        for i in range(reps):
            order = names[i % n:] + names[:i % n]
            if (i // n) % 2:
                order = order[::-1]
            for k in order:
                t = time.perf_counter()
                chips[k](x)
                times[k].append(time.perf_counter() - t)
                time.sleep(settle)
    for k in names:
        info[k]["median_s"] = statistics.median(times[k])
        info[k]["min_s"] = min(times[k])
        info[k]["times_s"] = times[k]
    return {"encodings": info, "foreign": load.text(), "reps": reps, "warmup": warmup}


# --------------------------------------------------------------------------- main


def main(argv: list[str]) -> int:
    if len(argv) > 1 and argv[1] == "_convert":
        _convert_child(argv[2], argv[3])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one conversion run each, 2 timed reps (smoke test)")
    ap.add_argument("--conv-runs", type=int, help="ResNet-50 conversions per mode (default 3; 1 with --quick)")
    ap.add_argument("--reps", type=int, help="timed chip calls per encoding (default 10; 2 with --quick)")
    ap.add_argument("--settle", type=float, default=0.25, help="idle seconds after every timed call (default 0.25)")
    args = ap.parse_args(argv[1:])
    conv_runs = args.conv_runs or (1 if args.quick else 3)
    reps = args.reps or (2 if args.quick else 10)
    warmup = 1 if args.quick else 2

    t_all = time.perf_counter()
    lines = bench_ideal.header(argv)
    lines[0] = "xbar encodings benchmark"
    for line in lines:
        print(line)
    commit = source_commit() or "unknown"
    print(f"git commit  : {commit}")
    print(f"mode        : {'quick' if args.quick else 'full'}; conversion runs {conv_runs} per mode (fresh subprocess, "
          f"alternating); chip: warm-up {warmup}, timed reps {reps} per encoding (interleaved, order rotating, "
          f"{args.settle:g} s idle after each call)")
    print(flush=True)

    import numpy as np

    from xbar.hardware import preset

    r20, r50 = prepare_models()

    print(f"1. conversion, ResNet-50-shaped model, 128x128 tiles, {conv_runs} run(s) per mode, each a fresh subprocess",
          flush=True)
    with ForeignLoad() as conv_load:
        conv = bench_conversion(r50, conv_runs)
    med = {m: statistics.median(r["convert_s"] for r in rs) for m, rs in conv.items()}
    print(f"  {'mode':<76} {'median s':>9}  {'runs':<20} {'peak RSS':>9} {'tiles':>6} {'phys. cols':>11} {'ADC/sample':>14}")
    for m, rs in conv.items():
        r0 = rs[0]
        call = "convert(path)" if not CONVERSIONS[m] else \
            'convert(path, afp_exponents=2, rearrange="ir-drop", hardware=preset("pcm"))'
        runs = ", ".join(f"{r['convert_s']:.2f}" for r in rs)
        print(f"  {call:<76} {med[m]:9.2f}  {runs:<20} "
              f"{statistics.median(r['hwm_kib'] for r in rs) / 2**10:6.0f} MiB {r0['tiles']:>6} "
              f"{r0['physical_columns']:>11,} {r0['adc_per_sample']:>14,}")
    afp = med["afp2+ir-drop"]
    status = "ok" if afp <= TARGET_CONVERT_S else "MISS"
    print(f"  AFP E=2 + ir-drop placement: {afp:.2f} s (target <= {TARGET_CONVERT_S:.0f} s: {status}); "
          f"{afp / med['fixed']:.2f}x fixed point's {med['fixed']:.2f} s")
    print(f"  other load during the conversions: {conv_load.text()} of all cores")
    print(flush=True)

    spec = preset("pcm").override(t_inference=T_INFERENCE)
    x = np.random.default_rng(0).standard_normal((BATCH, 3, 32, 32)).astype(np.float32)
    calib = np.random.default_rng(1).standard_normal((CALIB_SAMPLES, 3, 32, 32)).astype(np.float32)
    print(f"2. chip inference, ResNet-20 (CIFAR, random weights), pcm at 1 d, 128x128 tiles, batch {BATCH}, "
          "after chip preparation", flush=True)
    inf = bench_inference(r20, x, calib, spec, reps, warmup, args.settle)
    e = inf["encodings"]
    f = e["fixed"]
    print(f"  {'encoding':<18} {'tiles':>5} {'positions':>9} {'phys. cols':>10} {'ADC/sample':>12} {'prep s':>7} "
          f"{'median ms':>10} {'min ms':>8} {'time ratio':>10} {'cols ratio':>10} {'ADC ratio':>9}  verdict")
    verdicts = {}
    for k, v in e.items():
        tr = v["median_s"] / f["median_s"]
        cr = v["physical_columns"] / f["physical_columns"]
        ar = v["adc_per_sample"] / f["adc_per_sample"]
        ok = tr <= cr * 1.0
        verdicts[k] = ok
        print(f"  {v['label']:<18} {v['tiles']:>5} {v['positions']:>9,} {v['physical_columns']:>10,} "
              f"{v['adc_per_sample']:>12,} {v['prep_s']:7.2f} {v['median_s'] * 1e3:10.0f} {v['min_s'] * 1e3:8.0f} "
              f"{tr:9.2f}x {cr:9.2f}x {ar:8.2f}x  {'-' if k == 'fixed' else ('ok (<= cols)' if ok else 'MISS (> cols)')}")
    print("  time ratio = median chip call / fixed point's; cols ratio = physical columns / fixed point's; ADC ratio ="
          " ADC conversions per sample / fixed point's")
    print(f"  other load during the timed loop: {inf['foreign']} of all cores")
    print(flush=True)

    print("summary")
    print(f"  convert ResNet-50, AFP E=2 + ir-drop placement : {afp:.2f} s (target <= {TARGET_CONVERT_S:.0f} s) {status}"
          f"   [fixed point {med['fixed']:.2f} s]")
    for k, v in e.items():
        if k == "fixed":
            continue
        print(f"  chip inference {v['label']:<18}: {v['median_s'] / f['median_s']:.2f}x fixed for "
              f"{v['physical_columns'] / f['physical_columns']:.2f}x the physical columns "
              f"({v['adc_per_sample'] / f['adc_per_sample']:.2f}x the ADC conversions) "
              f"{'ok' if verdicts[k] else 'MISS'}")
    print(f"  total benchmark wall time                      : {time.perf_counter() - t_all:.0f} s"
          f"   (loadavg at end: {', '.join(f'{v:.2f}' for v in os.getloadavg())})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
