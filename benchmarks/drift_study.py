#!/usr/bin/env python
"""First result: accuracy of the shipped ResNet against PCM drift time, chip to chip.

    python benchmarks/drift_study.py [--seeds 0-9] [--times 1s,1min,1h,1d,1w,30d,1y] [--quick]
                                     [--batch-size 128] [--no-plot]

Model models/resnet_bn.onnx converted onto 128x128 tiles (differential pairs); DAC input
ranges and ADC full scales from models/digits_calib.npz (find_ranges, 512 samples);
accuracy on models/digits_test.npz (450 samples). Hardware: preset('pcm') - aihwkit PCM
device model (programming noise, drift, 1/f read noise), 8-bit DAC (abs-max per input
vector), 8-bit ADC (99.99th percentile full scale), IR drop with r_wire = 1 ohm/segment -
evaluated at each drift time t for every chip instance (seed) in four configurations:

    drift compensation {tile, off} x IR drop {on, off}

A seed is one chip: the same seed gives the same programmed devices, drift exponents and
read-noise stream in every configuration and at every time, so the configurations and
times are paired comparisons of the same 10 chips. The ideal-hardware accuracy (exact
weights) is the reference.

Writes benchmarks/figures/drift_study.json (every per-chip accuracy, plus summaries) and,
if matplotlib is importable, benchmarks/figures/drift_study.png (accuracy vs log time, one
line per configuration with a +-1 sample-std band, ideal as a dashed line). Without
matplotlib the plot is skipped with a note; nothing else changes.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODEL = ROOT / "models" / "resnet_bn.onnx"
TEST = ROOT / "models" / "digits_test.npz"
CALIB = ROOT / "models" / "digits_calib.npz"
FIGURES = HERE / "figures"
DEFAULT_TIMES = "1s,1min,1h,1d,1w,30d,1y"
TIME_LABELS = {1.0: "1 s", 60.0: "1 min", 3600.0: "1 h", 86400.0: "1 d", 7 * 86400.0: "1 w",
               30 * 86400.0: "1 month (30 d)", 365.25 * 86400.0: "1 y (365.25 d)"}
CONFIGS = (  # key, label, drift_compensation, ir_drop
    ("tile_ir", "compensation tile, IR drop on", "tile", True),
    ("tile_noir", "compensation tile, IR drop off", "tile", False),
    ("off_ir", "compensation off, IR drop on", "off", True),
    ("off_noir", "compensation off, IR drop off", "off", False),
)


def _time_label(t: float) -> str:
    from xbar.units import format_time

    return TIME_LABELS.get(t, format_time(t))


class Progress:
    """One status line per finished chip (rewritten in place on a terminal)."""

    def __init__(self, total: int):
        self.total, self.done, self.t0 = total, 0, time.perf_counter()
        self.tty = sys.stderr.isatty()

    def wrap(self, label: str):
        def gen(jobs):
            for job in jobs:
                yield job
                self.done += 1
                el = time.perf_counter() - self.t0
                eta = el / self.done * (self.total - self.done)
                t, seed = job
                msg = (f"  [{self.done:>3}/{self.total}] {label:<32} t = {_time_label(t):<15} seed {seed}  "
                       f"elapsed {el:6.0f} s, eta {eta:5.0f} s")
                if self.tty:
                    sys.stderr.write("\r" + msg + "\x1b[K")
                    if self.done == self.total:
                        sys.stderr.write("\n")
                elif self.done % 10 == 0 or self.done == self.total:
                    sys.stderr.write(msg + "\n")
                sys.stderr.flush()
        return gen


def print_tables(result: dict) -> None:
    """The accuracy table, and paired differences between configurations (same chips)."""
    configs, times, n = result["configs"], result["times_s"], len(result["seeds"])
    print(f"test accuracy (%) over {n} chips: mean ± sample std (worst chip)")
    col = 24
    print(f"  {'time':<16}" + "".join(f"{c['label'].replace('compensation ', 'comp ').replace('IR drop', 'IR'):>{col}}"
                                      for c in configs))
    for i, t in enumerate(times):
        cells = []
        for c in configs:
            r = c["rows"][i]
            cells.append(f"{100 * r['accuracy_mean']:6.2f} ± {100 * r['accuracy_std']:4.2f} ({100 * r['accuracy_min']:5.2f})")
        print(f"  {_time_label(t):<16}" + "".join(f"{s:>{col}}" for s in cells))
    print(f"  ideal hardware: {100 * result['ideal_accuracy']:.2f} %")
    print("  seconds per configuration: " + ", ".join(f"{c['key']} {c['seconds']:.0f}" for c in configs))
    by = {c["key"]: c for c in configs}
    pairs = [("tile_ir", "tile_noir", "IR on - IR off (comp tile)"), ("off_ir", "off_noir", "IR on - IR off (comp off)"),
             ("tile_ir", "off_ir", "comp tile - comp off (IR on)")]
    pairs = [p for p in pairs if p[0] in by and p[1] in by]
    if not pairs or n < 2:
        return
    print()
    print(f"paired differences (same {n} chips), accuracy points: mean ± sample std of the difference [chips > / < 0]")
    col = 34
    print(f"  {'time':<16}" + "".join(f"{label:>{col}}" for _, _, label in pairs))
    for i, t in enumerate(times):
        cells = []
        for ka, kb, _ in pairs:
            d = 100 * (np.array(by[ka]["rows"][i]["accuracies"]) - np.array(by[kb]["rows"][i]["accuracies"]))
            cells.append(f"{d.mean():+6.2f} ± {d.std(ddof=1):4.2f} [{int((d > 0).sum())}/{int((d < 0).sum())}]")
        print(f"  {_time_label(t):<16}" + "".join(f"{s:>{col}}" for s in cells))


def _rel(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def plot(result: dict, path: Path) -> str:
    try:
        import matplotlib
    except ImportError:
        return "matplotlib is not importable: plot skipped (pip install matplotlib to get it)"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    times = np.array(result["times_s"])
    # Left: the full range (uncompensated chips fall to chance); right: the compensated
    # configurations only, on a zoomed axis.
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), dpi=130, gridspec_kw={"width_ratios": [1, 1]})
    styles = {"tile_ir": ("C0", "o"), "tile_noir": ("C2", "s"), "off_ir": ("C3", "^"), "off_noir": ("C1", "v")}
    ideal = result["ideal_accuracy"] * 100
    zoom_lo = 100.0
    for ax, keys in ((axes[0], None), (axes[1], [c["key"] for c in result["configs"] if c["drift_compensation"] != "off"])):
        for cfg in result["configs"]:
            if keys is not None and cfg["key"] not in keys:
                continue
            mean = np.array([r["accuracy_mean"] for r in cfg["rows"]]) * 100
            std = np.array([r["accuracy_std"] for r in cfg["rows"]]) * 100
            if keys is not None:
                zoom_lo = min(zoom_lo, float(np.min(mean - std)))
            color, marker = styles.get(cfg["key"], (None, "o"))
            ax.plot(times, mean, marker=marker, color=color, label=cfg["label"], lw=1.6, ms=4.5)
            ax.fill_between(times, mean - std, mean + std, color=color, alpha=0.15, lw=0)
        ax.axhline(ideal, color="k", ls="--", lw=1.2, label=f"ideal hardware ({ideal:.2f} %)")
        ax.set_xscale("log")
        ax.set_xticks(times)
        ax.set_xticklabels([_time_label(t).split(" (")[0].replace("1 month", "30 d") for t in times])
        ax.minorticks_off()
        ax.set_xlabel("time since programming (log scale)")
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].set_title("all four configurations", fontsize=10)
    axes[0].legend(fontsize=8, loc="lower left")
    axes[1].set_ylim(max(0.0, np.floor(zoom_lo) - 1), min(100.0, ideal + 1.5))
    axes[1].set_title("drift compensation 'tile' only (zoomed)", fontsize=10)
    axes[1].legend(fontsize=8, loc="lower left")
    n = len(result["seeds"])
    fig.suptitle(f"resnet_bn on PCM (preset pcm), 128×128 tiles, 8-bit DAC/ADC: mean ± sample std over {n} chips",
                 fontsize=10.5)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return f"wrote {_rel(path)} (matplotlib {matplotlib.__version__})"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0-9", help="chip instances, e.g. 0-9 or 0,3,7 (default 0-9)")
    ap.add_argument("--times", default=DEFAULT_TIMES, help=f"drift times (default {DEFAULT_TIMES})")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--quick", action="store_true", help="seeds 0-1, times 1s,1d,1y (smoke test)")
    ap.add_argument("--no-plot", action="store_true", help="do not write the PNG")
    ap.add_argument("--out", type=Path, default=FIGURES, help="folder for drift_study.json/.png")
    ap.add_argument("--replot", action="store_true",
                    help="no simulation: reprint the tables and redraw the PNG from an existing drift_study.json")
    args = ap.parse_args(argv[1:])
    if args.replot:
        result = json.loads((args.out / "drift_study.json").read_text())
        print(f"tables and plot from {_rel(args.out / 'drift_study.json')} (run of {result['date']}, "
              f"command: {result['command']})\n")
        print_tables(result)
        print()
        print(plot(result, args.out / "drift_study.png"))
        return 0

    from xbar.converter import convert
    from xbar.data import load_dataset
    from xbar.hardware import ablate, preset
    from xbar.runtime import Runtime
    from xbar.runtime.evaluate import accuracy, predict
    from xbar.runtime.ranges import find_ranges
    from xbar.runtime.sweep import sweep
    from xbar.units import parse_seeds, parse_time

    seeds = parse_seeds("0-1" if args.quick else args.seeds)
    times = [parse_time(t) for t in ("1s,1d,1y" if args.quick else args.times).split(",")]
    t_start = time.perf_counter()
    started = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    command = shlex.join([Path(sys.executable).name, os.path.relpath(argv[0], os.getcwd())] + argv[1:])
    print("xbar drift study: accuracy vs time since programming")
    print(f"command     : {command}")
    print(f"date        : {started}")
    print(f"host        : {platform.node()}  nproc {os.cpu_count()}  loadavg at start "
          f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"python      : {platform.python_version()}   numpy {np.__version__}")
    try:
        from bench_ideal import source_fingerprint

        fp = source_fingerprint()
        print(f"xbar source : {fp}")
    except Exception:  # noqa: BLE001 - informational only
        fp = None

    bundle = convert(str(MODEL), crossbar=(128, 128))
    summary = bundle.manifest["summary"]
    spec = preset("pcm")
    print(f"model       : {MODEL.relative_to(ROOT)}: {summary['analog_layers']} analog layers on "
          f"{summary['tiles_used']} tiles of 128x128 ({bundle.manifest['mapping']['encoding']}), "
          f"{summary['analog_weights']:,} analog weights")
    calib = load_dataset(CALIB, bundle.graph["inputs"][0])
    test = load_dataset(TEST, bundle.graph["inputs"][0])
    t0 = time.perf_counter()
    find_ranges(bundle, calib.x, spec)
    print(f"ranges      : find_ranges on {len(calib)} samples of {CALIB.relative_to(ROOT)} "
          f"({time.perf_counter() - t0:.1f} s)")
    print(f"data        : {len(test)} samples of {TEST.relative_to(ROOT)}")
    print(f"seeds       : {seeds[0]}-{seeds[-1]} ({len(seeds)} chips)   times: "
          f"{', '.join(_time_label(t) for t in times)}")
    print("hardware (base; t_inference, drift_compensation and circuit.ir_drop set per run):")
    for line in spec.describe().splitlines():
        print("  " + line)
    print(flush=True)

    ideal_out = predict(Runtime(bundle), test.x, args.batch_size)
    ideal_acc = accuracy(ideal_out, test.y)
    print(f"ideal hardware accuracy: {100 * ideal_acc:.2f} %", flush=True)

    progress = Progress(len(CONFIGS) * len(seeds) * len(times))
    configs = []
    for key, label, comp, ir in CONFIGS:
        cfg_spec = spec.override(drift_compensation=comp)
        if not ir:
            cfg_spec = ablate(cfg_spec, without=["ir-drop"])
        t0 = time.perf_counter()
        rows = sweep(bundle, cfg_spec, test, seeds, times, args.batch_size, ideal_out=ideal_out,
                     progress=progress.wrap(label))
        configs.append({"key": key, "label": label, "drift_compensation": comp, "ir_drop": ir,
                        "seconds": time.perf_counter() - t0, "hardware": cfg_spec.to_dict(),
                        "rows": [r.to_dict() for r in rows]})

    result = {
        "command": command, "date": started, "host": platform.node(), "nproc": os.cpu_count(),
        "numpy": np.__version__, "xbar_source": fp,
        "model": str(MODEL.relative_to(ROOT)), "test_data": str(TEST.relative_to(ROOT)),
        "calibration_data": str(CALIB.relative_to(ROOT)), "n_test": len(test), "n_calib": len(calib),
        "crossbar": [128, 128], "tiles_used": summary["tiles_used"], "analog_layers": summary["analog_layers"],
        "base_hardware": spec.to_dict(), "base_hardware_text": spec.describe(),
        "seeds": seeds, "times_s": times, "time_labels": [_time_label(t) for t in times],
        "ideal_accuracy": ideal_acc, "configs": configs,
        "wall_seconds": time.perf_counter() - t_start,
        "notes": "accuracy_std is the sample std (ddof=1) over chips; the same seed is the same chip in "
                 "every configuration and at every time.",
    }
    print()
    print_tables(result)
    print()
    args.out.mkdir(parents=True, exist_ok=True)
    js = args.out / "drift_study.json"
    js.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {_rel(js)}")
    if args.no_plot:
        print("plot skipped (--no-plot)")
    else:
        print(plot(result, args.out / "drift_study.png"))
    print(f"total wall time {time.perf_counter() - t_start:.0f} s  (loadavg at end "
          f"{', '.join(f'{v:.2f}' for v in os.getloadavg())})")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main(sys.argv))
