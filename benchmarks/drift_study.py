#!/usr/bin/env python
"""First result: accuracy of the shipped ResNet against PCM drift time, chip to chip.

    python benchmarks/drift_study.py [--seeds 0-39] [--times 1s,1min,1h,1d,1w,30d,1y] [--quick]
                                     [--batch-size 128] [--no-plot] [--replot]

Model models/resnet_bn.onnx converted onto 128x128 tiles (differential pairs); DAC input
ranges and ADC full scales from models/digits_calib.npz (find_ranges, 512 samples);
accuracy on models/digits_test.npz (450 samples). Hardware: preset('pcm') - aihwkit PCM
device model (programming noise, drift, 1/f read noise, fresh at every read), 8-bit DAC
(abs-max per input vector), 8-bit ADC (99.99th percentile full scale), IR drop with
r_wire = 1 ohm/segment - evaluated at each drift time t for every chip instance (seed) in
five configurations:

    drift compensation {tile, off} x IR drop {on, off}
    + compensation tile, IR drop off, ADC off (the 8-bit DAC stays on): the configuration
      of issue 8, where the 1-year accuracy over chips turned out to be heavy-tailed

A seed is one chip: the same seed gives the same programmed devices, drift exponents and
read-noise stream in every configuration and at every time, so the configurations and
times are paired comparisons of the same chips (default 40, seeds 0-39: at 1 y a few chips
collapse, and 10 chips do not show that tail reliably). The ideal-hardware accuracy (exact
weights) is the reference.

Per (configuration, time) the tables and the JSON give the mean over chips, the sample std
(ddof 1), the 95 % confidence interval of the mean (Student t, xbar.stats.mean_ci), the
worst and the best chip; at the last time also the worst chips by seed and the means of
consecutive blocks of 10 seeds (how far a 10-chip study can be off).

Writes benchmarks/figures/drift_study.json (every per-chip accuracy, plus summaries) and,
if matplotlib is importable, benchmarks/figures/drift_study.png (accuracy vs log time, one
line per configuration: the mean with its 95 % CI band and the worst chip as a thin dotted
line; ideal as a dashed line). Without matplotlib the plot is skipped with a note; nothing
else changes.
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

from study_io import finish, rel_path, source_commit

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
CONFIGS = (  # key, label, drift_compensation, ir_drop, adc
    ("tile_ir", "compensation tile, IR drop on", "tile", True, True),
    ("tile_noir", "compensation tile, IR drop off", "tile", False, True),
    ("off_ir", "compensation off, IR drop on", "off", True, True),
    ("off_noir", "compensation off, IR drop off", "off", False, True),
    ("tile_noir_noadc", "compensation tile, IR drop off, ADC off", "tile", False, False),
)
SHORT = {"tile_ir": "comp tile, IR on", "tile_noir": "comp tile, IR off", "off_ir": "comp off, IR on",
         "off_noir": "comp off, IR off", "tile_noir_noadc": "tile, IR off, ADC off"}


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


def _acc(row: dict) -> dict:
    """The accuracy summary of one sweep row (xbar.stats.summary over the chips)."""
    if row.get("accuracy") is None:
        raise SystemExit("drift_study.json rows carry no accuracy summary (old schema or unlabelled data); "
                         "re-run the study")
    return row["accuracy"]


def print_tables(result: dict) -> None:
    """Per configuration: mean, std, 95 % CI, worst/best chip per time; then the tail at the last
    time, blocks of 10 seeds, and paired differences between configurations (same chips)."""
    from xbar.stats import mean_ci

    configs, times, seeds = result["configs"], result["times_s"], result["seeds"]
    n = len(seeds)
    print(f"test accuracy (%) over {n} chips (seeds {seeds[0]}-{seeds[-1]}); ideal hardware "
          f"{100 * result['ideal_accuracy']:.2f} %")
    print("  mean, sample std (ddof 1), 95 % CI of the mean (Student t), worst and best chip")
    for c in configs:
        print(f"  {c['label']}")
        print(f"    {'time':<16}{'mean':>7}{'std':>7}{'95 % CI of mean':>20}{'worst':>8}{'best':>8}")
        for i, t in enumerate(times):
            a = _acc(c["rows"][i])
            lo, hi = a["ci95"]
            print(f"    {_time_label(t):<16}{100 * a['mean']:7.2f}{100 * a['std']:7.2f}"
                  f"{f'[{100 * lo:.2f}, {100 * hi:.2f}]':>20}{100 * a['min']:8.2f}{100 * a['max']:8.2f}")
    print("  seconds per configuration: " + ", ".join(f"{c['key']} {c['seconds']:.0f}" for c in configs))

    # The tail at the last time: which chips are worst, and how far 10-chip blocks scatter.
    i_last, t_last = len(times) - 1, times[-1]
    live = [c for c in configs if _acc(c["rows"][i_last])["max"] > 0.2]  # skip collapsed configurations
    if live and n >= 2:
        print()
        print(f"the tail at {_time_label(t_last)}: the five worst chips (seed: accuracy %)")
        for c in live:
            v = np.array(_acc(c["rows"][i_last])["values"])
            order = np.argsort(v, kind="stable")[:5]
            print(f"  {SHORT.get(c['key'], c['key']):<24}" + ", ".join(f"{seeds[j]}: {100 * v[j]:.2f}" for j in order))
        if n >= 20:
            blocks = [(k, min(k + 10, n)) for k in range(0, n, 10) if min(k + 10, n) - k >= 2]
            print(f"blocks of 10 consecutive seeds at {_time_label(t_last)}: mean ± std (worst)")
            col = 26
            print(f"  {'seeds':<12}" + "".join(f"{SHORT.get(c['key'], c['key']):>{col}}" for c in live))
            for lo_i, hi_i in blocks + [(0, n)]:
                cells = []
                for c in live:
                    v = np.array(_acc(c["rows"][i_last])["values"][lo_i:hi_i])
                    cells.append(f"{100 * v.mean():6.2f} ± {100 * v.std(ddof=1):5.2f} ({100 * v.min():5.2f})")
                label = f"{seeds[lo_i]}-{seeds[hi_i - 1]}" + (" (all)" if (lo_i, hi_i) == (0, n) else "")
                print(f"  {label:<12}" + "".join(f"{s:>{col}}" for s in cells))

    by = {c["key"]: c for c in configs}
    pairs = [("tile_ir", "tile_noir", "IR on - IR off (comp tile)"), ("off_ir", "off_noir", "IR on - IR off (comp off)"),
             ("tile_ir", "off_ir", "comp tile - comp off (IR on)"),
             ("tile_noir", "tile_noir_noadc", "ADC on - ADC off (tile, IR off)")]
    pairs = [p for p in pairs if p[0] in by and p[1] in by]
    if not pairs or n < 2:
        return
    print()
    print(f"paired differences (same {n} chips), accuracy points: mean [95 % CI of the mean] "
          f"(sample std) [chips > / < 0]")
    for ka, kb, label in pairs:
        print(f"  {label}")
        for i, t in enumerate(times):
            d = np.array(_acc(by[ka]["rows"][i])["values"]) - np.array(_acc(by[kb]["rows"][i])["values"])
            lo, hi = mean_ci(d, bounds=(-1.0, 1.0))
            print(f"    {_time_label(t):<16}{100 * d.mean():+7.2f} [{100 * lo:+6.2f}, {100 * hi:+6.2f}]  "
                  f"(std {100 * d.std(ddof=1):5.2f})  [{int((d > 0).sum())}/{int((d < 0).sum())}]")


def plot(result: dict, path: Path) -> str:
    try:
        import matplotlib
    except ImportError:
        return "matplotlib is not importable: plot skipped (pip install matplotlib to get it)"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    times = np.array(result["times_s"])
    n = len(result["seeds"])
    # Left: the full range (uncompensated chips fall to chance); right: the compensated
    # configurations only, on a zoomed axis.
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.0), dpi=130, gridspec_kw={"width_ratios": [1, 1]})
    styles = {"tile_ir": ("C0", "o"), "tile_noir": ("C2", "s"), "off_ir": ("C3", "^"), "off_noir": ("C1", "v"),
              "tile_noir_noadc": ("C4", "D")}
    ideal = result["ideal_accuracy"] * 100
    zoom_lo = 100.0
    for ax, keys in ((axes[0], None), (axes[1], [c["key"] for c in result["configs"] if c["drift_compensation"] != "off"])):
        for cfg in result["configs"]:
            if keys is not None and cfg["key"] not in keys:
                continue
            acc = [_acc(r) for r in cfg["rows"]]
            mean = np.array([a["mean"] for a in acc]) * 100
            lo = np.array([a["ci95"][0] for a in acc]) * 100
            hi = np.array([a["ci95"][1] for a in acc]) * 100
            worst = np.array([a["min"] for a in acc]) * 100
            if keys is not None:
                zoom_lo = min(zoom_lo, float(np.min(worst)), float(np.min(lo)))
            color, marker = styles.get(cfg["key"], (None, "o"))
            ax.plot(times, mean, marker=marker, color=color, label=cfg["label"], lw=1.6, ms=4.5)
            ax.fill_between(times, lo, hi, color=color, alpha=0.2, lw=0)
            ax.plot(times, worst, color=color, lw=0.9, ls=":", marker=marker, ms=2.5, mfc="none")
        ax.axhline(ideal, color="k", ls="--", lw=1.2)
        ax.set_xscale("log")
        ax.set_xticks(times)
        ax.set_xticklabels([_time_label(t).split(" (")[0].replace("1 month", "30 d") for t in times])
        ax.minorticks_off()
        ax.set_xlabel("time since programming (log scale)")
        ax.grid(True, which="major", alpha=0.3)
        handles, _ = ax.get_legend_handles_labels()
        handles += [Line2D([], [], color="k", ls="--", lw=1.2, label=f"ideal hardware ({ideal:.2f} %)"),
                    Patch(color="0.5", alpha=0.3, label=f"band: 95 % CI of the mean over {n} chips"),
                    Line2D([], [], color="0.3", ls=":", lw=0.9, label="dotted: worst chip")]
        ax.legend(handles=handles, fontsize=7.5, loc="lower left")
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].set_title("all configurations", fontsize=10)
    axes[1].set_ylim(max(0.0, np.floor(zoom_lo) - 3), min(100.0, ideal + 1.5))
    axes[1].set_title("drift compensation 'tile' only (zoomed)", fontsize=10)
    fig.suptitle(f"resnet_bn on PCM (preset pcm), 128×128 tiles, 8-bit DAC/ADC: mean over {n} chips "
                 f"(seeds {result['seeds'][0]}–{result['seeds'][-1]}) with its 95 % CI, and the worst chip",
                 fontsize=10.5)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return f"wrote {rel_path(path)} (matplotlib {matplotlib.__version__})"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0-39", help="chip instances, e.g. 0-39 or 0,3,7 (default 0-39)")
    ap.add_argument("--times", default=DEFAULT_TIMES, help=f"drift times (default {DEFAULT_TIMES})")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--quick", action="store_true", help="seeds 0-1, times 1s,1d,1y (smoke test)")
    ap.add_argument("--no-plot", action="store_true", help="do not write the PNG")
    ap.add_argument("--out", type=Path, default=None,
                    help="folder for drift_study.json/.png (default benchmarks/figures; with --quick a temporary "
                         "folder, so a smoke test never overwrites the full results)")
    ap.add_argument("--replot", action="store_true",
                    help="no simulation: reprint the tables and redraw the PNG from an existing drift_study.json")
    args = ap.parse_args(argv[1:])
    if args.out is None:
        import tempfile

        args.out = Path(tempfile.gettempdir()) / "xbar_drift_quick" if args.quick else FIGURES
    if args.replot:
        result = json.loads((args.out / "drift_study.json").read_text())
        print(f"tables and plot from {rel_path(args.out / 'drift_study.json')} (run of {result['date']}, "
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
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    command = shlex.join([Path(sys.executable).name, os.path.relpath(argv[0], os.getcwd())] + argv[1:])
    commit = source_commit()
    print("xbar drift study: accuracy vs time since programming")
    print(f"command     : {command}")
    print(f"date        : {started}")
    print(f"git commit  : {commit}")
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
    print("hardware (base; t_inference, drift_compensation, circuit.ir_drop and the ADC set per run):")
    for line in spec.describe().splitlines():
        print("  " + line)
    print(flush=True)

    ideal_out = predict(Runtime(bundle), test.x, args.batch_size)
    ideal_acc = accuracy(ideal_out, test.y)
    print(f"ideal hardware accuracy: {100 * ideal_acc:.2f} %", flush=True)

    progress = Progress(len(CONFIGS) * len(seeds) * len(times))
    configs = []
    for key, label, comp, ir, adc in CONFIGS:
        cfg_spec = spec.override(drift_compensation=comp)
        off = [name for name, on in (("ir-drop", ir), ("adc", adc)) if not on]
        if off:
            cfg_spec = ablate(cfg_spec, without=off)
        t0 = time.perf_counter()
        rows = sweep(bundle, cfg_spec, test, seeds, times, args.batch_size, ideal_out=ideal_out,
                     progress=progress.wrap(label))
        configs.append({"key": key, "label": label, "drift_compensation": comp, "ir_drop": ir, "adc": adc,
                        "seconds": time.perf_counter() - t0, "hardware": cfg_spec.to_dict(),
                        "rows": [r.to_dict() for r in rows]})

    result = {
        "command": command, "date": started, "host": platform.node(), "nproc": os.cpu_count(),
        "numpy": np.__version__, "xbar_source": fp, "git_commit": commit,
        "model": str(MODEL.relative_to(ROOT)), "test_data": str(TEST.relative_to(ROOT)),
        "calibration_data": str(CALIB.relative_to(ROOT)), "n_test": len(test), "n_calib": len(calib),
        "crossbar": [128, 128], "tiles_used": summary["tiles_used"], "analog_layers": summary["analog_layers"],
        "base_hardware": spec.to_dict(), "base_hardware_text": spec.describe(),
        "seeds": seeds, "times_s": times, "time_labels": [_time_label(t) for t in times],
        "ideal_accuracy": ideal_acc, "configs": configs,
        "wall_seconds": time.perf_counter() - t_start,
        "notes": "rows[i].accuracy and rows[i].agreement_with_ideal are xbar.stats.summary over the chips: "
                 "n, mean, std (sample, ddof=1), ci95 (Student-t 95 % CI of the mean, clipped to [0, 1]), "
                 "min (worst chip), max, values (per chip, in seed order). The same seed is the same chip in "
                 "every configuration and at every time.",
    }
    print()
    print_tables(result)
    print()
    args.out.mkdir(parents=True, exist_ok=True)
    js = args.out / "drift_study.json"
    js.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {rel_path(js)}")
    if args.no_plot:
        print("plot skipped (--no-plot)")
    else:
        print(plot(result, args.out / "drift_study.png"))
    finish(t_start)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main(sys.argv))
