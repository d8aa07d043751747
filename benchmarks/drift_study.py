#!/usr/bin/env python
"""Tables and figure of the drift study, from its sweep: accuracy of the shipped ResNet
against PCM drift time, chip to chip.

    xbar sweep benchmarks/drift_study.toml -o benchmarks/figures/drift_study
    python benchmarks/drift_study.py benchmarks/figures/drift_study [--compare OLD.json] [--no-plot]

The study itself is the spec benchmarks/drift_study.toml (xbar sweep runs it, resumably, on
Dask): models/resnet_bn.onnx on 128x128 tiles, DAC/ADC ranges from models/digits_calib.npz,
accuracy on models/digits_test.npz (450 samples), preset pcm (aihwkit PCM device model:
programming noise, drift, 1/f read noise fresh at every read; 8-bit DAC abs-max, 8-bit ADC
99.99th percentile full scale, IR drop r_wire = 1 ohm) in five configurations:

    drift compensation {tile, off} x IR drop {on, off}
    + compensation tile, IR drop off, ADC off (the 8-bit DAC stays on): issue 8's configuration

on 40 chips (seeds 0-39, the same chip in every configuration and at every time, so the
configurations are paired comparisons).

This script adds what `xbar plot` does not: per (configuration, time) the 95 % confidence
interval of the mean (Student t, xbar.stats.mean_ci) beside mean, std, worst and best chip;
at the last time the worst chips by seed and the means of blocks of 10 seeds (how far a
10-chip study can be off); paired differences between configurations (same chips); and the
two-panel figure benchmarks/figures/drift_study.png (all configurations; compensated ones
zoomed). --compare OLD.json sets the means beside those of a drift_study.json written by the
former bespoke script, in units of their standard error.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from study_io import rel_path, source_commit

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FIGURES = HERE / "figures"
TIME_LABELS = {1.0: "1 s", 60.0: "1 min", 3600.0: "1 h", 86400.0: "1 d", 7 * 86400.0: "1 w",
               30 * 86400.0: "1 month (30 d)", 365.25 * 86400.0: "1 y (365.25 d)"}
# The spec's points by (drift compensation, switched-off non-idealities) -> key, label.
CONFIGS = {
    ("tile", ()): ("tile_ir", "compensation tile, IR drop on"),
    ("tile", ("ir-drop",)): ("tile_noir", "compensation tile, IR drop off"),
    ("off", ()): ("off_ir", "compensation off, IR drop on"),
    ("off", ("ir-drop",)): ("off_noir", "compensation off, IR drop off"),
    ("tile", ("adc", "ir-drop")): ("tile_noir_noadc", "compensation tile, IR drop off, ADC off"),
}
SHORT = {"tile_ir": "comp tile, IR on", "tile_noir": "comp tile, IR off", "off_ir": "comp off, IR on",
         "off_noir": "comp off, IR off", "tile_noir_noadc": "tile, IR off, ADC off"}


def _time_label(t: float) -> str:
    from xbar.units import format_time

    return TIME_LABELS.get(t, format_time(t))


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


def from_sweep(root: Path) -> dict:
    """The sweep's rows in the shape the tables and the figure read: per configuration, per
    time, xbar.stats.summary over the chips (values in seed order)."""
    from xbar.stats import summary
    from xbar.sweep.store import read_meta, read_rows

    rows = read_rows(root).to_pylist()
    meta = read_meta(root)
    seeds = sorted({r["seed"] for r in rows})
    times = sorted({r["time_s"] for r in rows})
    configs = []
    for point in sorted({r["point"] for r in rows}):
        mine = [r for r in rows if r["point"] == point]
        without = tuple(sorted(json.loads(mine[0]["hardware.without"] or "[]")))
        key, label = CONFIGS.get((mine[0]["hardware.drift_compensation"], without), (f"point{point}", mine[0]["label"]))
        per_time = []
        for t in times:
            by_seed = {r["seed"]: r["accuracy"] for r in mine if r["time_s"] == t}
            if sorted(by_seed) != seeds:
                raise SystemExit(f"{root}: {label} at {_time_label(t)} has {len(by_seed)} of {len(seeds)} chips; "
                                 "finish the sweep first (run the same xbar sweep command again)")
            per_time.append({"accuracy": summary([by_seed[s] for s in seeds])})
        configs.append({"key": key, "label": label, "drift_compensation": mine[0]["hardware.drift_compensation"],
                        "seconds": sum(r["wall_s"] for r in mine), "rows": per_time})
    return {"seeds": seeds, "times_s": times, "configs": configs, "ideal_accuracy": rows[0]["ideal_accuracy"],
            "spec_path": meta.get("spec_path")}


def compare(result: dict, old_path: Path) -> None:
    """Means beside an older drift_study.json's: difference in units of the combined standard error."""
    old = json.loads(old_path.read_text())
    old_cfg = {c["key"]: c for c in old["configs"]}
    print(f"against {rel_path(old_path)} ({old.get('command')}, commit {str(old.get('git_commit'))[:10]}):")
    print(f"  {'configuration':<24}{'time':<16}{'old mean':>9}{'new mean':>9}{'diff':>7}{'diff/SE':>8}{'same chips':>11}")
    worst = 0.0
    for c in result["configs"]:
        o = old_cfg.get(c["key"])
        if o is None:
            continue
        for i, t in enumerate(result["times_s"]):
            j = next((k for k, ot in enumerate(old["times_s"]) if abs(ot - t) < 1e-6 * t), None)
            if j is None:
                continue
            a, b = _acc(o["rows"][j]), _acc(c["rows"][i])
            se = math.sqrt(a["std"] ** 2 / a["n"] + b["std"] ** 2 / b["n"]) or 1e-12
            d = b["mean"] - a["mean"]
            worst = max(worst, abs(d) / se)
            same = f"{sum(x == y for x, y in zip(a['values'], b['values']))}/{b['n']}"
            print(f"  {SHORT.get(c['key'], c['key']):<24}{_time_label(t):<16}{100 * a['mean']:9.2f}"
                  f"{100 * b['mean']:9.2f}{100 * d:+7.2f}{d / se:+8.2f}{same:>11}")
    print(f"  largest |difference| / standard error: {worst:.2f}")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="the folder `xbar sweep benchmarks/drift_study.toml -o` wrote")
    ap.add_argument("--compare", type=Path, help="a drift_study.json of the former script, to set the means beside")
    ap.add_argument("--png", type=Path, default=FIGURES / "drift_study.png")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv[1:])
    result = from_sweep(args.results)
    print(f"drift study from {rel_path(args.results)} (spec {result['spec_path']}; source {source_commit()})\n")
    print_tables(result)
    if args.compare:
        print()
        compare(result, args.compare)
    print()
    print("plot skipped (--no-plot)" if args.no_plot else plot(result, args.png))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
