#!/usr/bin/env python
"""Tables and figure of the training study (issue 11), from its sweep: does hardware-aware
fine-tuning win back what the chip loses, with and without calibration?

    xbar sweep benchmarks/training_study.toml -o benchmarks/figures/training_study
    python benchmarks/training_study.py [ROWS_DIR] [--out benchmarks/figures/training_study.md]
        [--compare OLD.md]

The study is the spec (xbar sweep runs it, resumably, on Dask): for the shipped resnet_bn,
cnn_bn and resnet_folded on 128x128 tiles of the full pcm preset (programming noise, drift
with per-tile compensation, read noise, IR drop, 8-bit DAC/ADC with ranges from the
calibration split), at drift times 1 s, 1 d and 1 y:
- weights: the original network, and the network fine-tuned with `noise` and with `hessian`
  for that t (xbar finetune: 5 passes over models/digits_train.npz, batch 64, Adam lr 1e-3,
  seed 0; the same budget for both), mapped like the original with its ranges measured again;
- calibration on each chip at t: none, `affine`, `sgd` (5 epochs);
- encodings: fixed point and analog floating point (2 exponents, step 2);
- chips: seeds 0-9, each evaluated on the 450-sample test split at t.

This script writes what `xbar plot` does not: per (model, encoding, t) a table of weights ×
calibration (mean ± sample std over chips, worst chip, n) beside each weights' ideal
accuracy (what the fine-tune costs on exact hardware), and the figure beside --out (.png).

--compare OLD.md sets every cell beside an earlier table of this layout, in standard errors
of the difference, e.g. the bespoke run this sweep replaced:
    git show 7023324:benchmarks/figures/training_study.md > /tmp/bespoke.md
The sweep's 1 y is 365.25 d (xbar's year), the bespoke script's 365 d, and the sweep reads
the test split in batches of 128 (other read-noise draws), so the two agree within
chip-to-chip spread, not bit for bit.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from study_io import rel_path  # noqa: E402

TIMES = ("1s", "1d", "1y")
WEIGHTS = ("original", "noise", "hessian")
CALIBRATIONS = ("none", "affine", "sgd")
MODELS = ("resnet_bn", "cnn_bn", "resnet_folded")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rows", type=Path, nargs="?", default=HERE / "figures" / "training_study",
                    help="the results folder of `xbar sweep benchmarks/training_study.toml`")
    ap.add_argument("--out", type=Path, default=HERE / "figures" / "training_study.md")
    ap.add_argument("--compare", type=Path, metavar="OLD.md",
                    help="set every cell beside this earlier table of the study, in standard errors")
    args = ap.parse_args(argv)
    from xbar.sweep.spec import SpecError

    try:
        done = from_sweep(args.rows)
    except SpecError as e:
        raise SystemExit(f"error: {e}") from None
    if not done:
        raise SystemExit(f"{args.rows}: no rows of the training study (run `xbar sweep "
                         f"benchmarks/training_study.toml -o {rel_path(args.rows)}` first)")
    _write_tables(done, args)
    if args.compare:
        print("\n".join(compare(cells(done), parse_tables(args.compare.read_text()))))
    print(_plot(done, args.out.with_suffix(".png"), rel_path(args.rows)))
    return 0


def from_sweep(folder: Path) -> dict[str, dict]:
    """The sweep's rows as the study's cells: (model, encoding, t, weights, calibration,
    seed) → accuracy, plus one 'ideal' row per (model, encoding, t, weights)."""
    from xbar.sweep.store import read_rows

    done: dict[str, dict] = {}
    for r in read_rows(folder).to_pylist():
        enc = "afp2" if r.get("mapping.afp_exponents") == 2 else "fixed"
        t = r["time"].replace(" ", "")
        weights = "original" if r["finetune.method"] == "none" else r["finetune.method"]
        base = {"model": r["model"], "encoding": enc, "t": t, "weights": weights}
        key0 = f"{r['model']}|{enc}|{t}|{weights}"
        done[f"{key0}|ideal"] = {**base, "key": f"{key0}|ideal", "calibration": "ideal", "seed": None,
                                 "accuracy": r["ideal_accuracy"]}
        key = f"{key0}|{r['calibration.method']}|{r['seed']}"
        done[key] = {**base, "key": key, "calibration": r["calibration.method"], "seed": r["seed"],
                     "accuracy": r["accuracy"]}
    return done


def cells(done: dict[str, dict]) -> dict[tuple, tuple[float, float, int]]:
    """(model, encoding, t, weights, calibration) → (mean, sample std, chips), in points."""
    acc: dict[tuple, list[float]] = {}
    for r in done.values():
        if r["seed"] is not None:
            acc.setdefault((r["model"], r["encoding"], r["t"], r["weights"], r["calibration"]), []).append(r["accuracy"])
    return {k: (100 * float(np.mean(v)), 100 * float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v))
            for k, v in acc.items()}


_HEADING = re.compile(r"^## (\S+), (\S+), t = (\S+)$")
_CELL = re.compile(r"^([\d.]+) ± ([\d.]+) \([\d.]+\), n=(\d+)$")


def parse_tables(text: str) -> dict[tuple, tuple[float, float, int]]:
    """The cells of a table written by this script (or by the bespoke script before it), as
    cells() returns them; means and stds carry the table's 0.1-point rounding."""
    out, group = {}, None
    for line in text.splitlines():
        if m := _HEADING.match(line):
            group = m.groups()
        elif group and line.startswith("| ") and not line.startswith("| weights"):
            fields = [f.strip() for f in line.strip("|").split("|")]
            for calib, field in zip(CALIBRATIONS, fields[2:]):
                if c := _CELL.match(field):
                    out[(*group, fields[0], calib)] = (float(c[1]), float(c[2]), int(c[3]))
    return out


def compare(new: dict[tuple, tuple], old: dict[tuple, tuple]) -> list[str]:
    """Per cell, the new mean beside the old one, in standard errors of the difference."""
    lines, worst, largest = ["cell: new mean − old mean (points), in standard errors of the difference"], 0.0, 0.0
    shared = sorted(set(new) & set(old))
    for key in shared:
        (m1, s1, n1), (m2, s2, n2) = new[key], old[key]
        se = float(np.sqrt(s1 ** 2 / n1 + s2 ** 2 / n2))
        z = (m1 - m2) / se if se > 0 else 0.0
        worst, largest = max(worst, abs(z)), max(largest, abs(m1 - m2))
        lines.append(f"  {', '.join(key)}: {m1 - m2:+.2f} ({z:+.2f} SE)")
    lines.append(f"{len(shared)} cells compared ({len(set(new) - set(old))} only in the new table, "
                 f"{len(set(old) - set(new))} only in the old); largest |difference| {worst:.2f} SE, "
                 f"{largest:.2f} points")
    return lines


def _write_tables(done: dict[str, dict], args) -> None:
    rows = list(done.values())
    chips = sorted({n for _, _, n in cells(done).values()})
    lines = [f"# Training study: `xbar sweep benchmarks/training_study.toml -o {rel_path(args.rows)}`, then "
             f"`python {rel_path(Path(__file__))} {rel_path(args.rows)} --out {rel_path(args.out)}`", "",
             f"Accuracy on the 450-sample test split, {'/'.join(map(str, chips))} chips per cell, pcm with "
             "DAC/ADC ranges; fine-tuning on the 835-sample training split. Each cell: mean ± sample std over "
             "chips (worst chip); ideal = the same weights on exact hardware.", ""]
    groups = sorted({(r["model"], r["encoding"], r["t"]) for r in rows}, key=lambda g: (g[0], g[1], TIMES.index(g[2])))
    for model, enc, t in groups:
        lines += [f"## {model}, {enc}, t = {t}", "",
                  "| weights | ideal | " + " | ".join(f"{c} calibration" for c in CALIBRATIONS) + " |",
                  "|---|---|" + "---|" * len(CALIBRATIONS)]
        for w in WEIGHTS:
            sel = [r for r in rows if (r["model"], r["encoding"], r["t"], r["weights"]) == (model, enc, t, w)]
            ideal = [r["accuracy"] for r in sel if r["calibration"] == "ideal"]
            cols = []
            for c in CALIBRATIONS:
                a = np.array([r["accuracy"] for r in sel if r["calibration"] == c]) * 100
                cols.append(f"{a.mean():.1f} ± {a.std(ddof=1) if len(a) > 1 else 0:.1f} ({a.min():.1f}), n={len(a)}"
                            if len(a) else "–")
            lines.append(f"| {w} | {100 * ideal[0]:.1f} | " + " | ".join(cols) + " |" if ideal else
                         f"| {w} | – | " + " | ".join(cols) + " |")
        lines.append("")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


def _plot(done: dict[str, dict], path: Path, source: str) -> str:
    """One panel per model and calibration (none, affine, sgd): accuracy vs drift time for the
    original, noise- and hessian-fine-tuned weights, fixed point solid and AFP dashed; the
    mean over chips with ±1 std bars and the worst chip as a small marker."""
    try:
        import matplotlib
    except ImportError:
        return "matplotlib is not importable: figure skipped"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(done.values())
    models = [m for m in ("resnet_bn", "cnn_bn", "resnet_folded") if any(r["model"] == m for r in rows)]
    times = [t for t in TIMES if any(r["t"] == t for r in rows)]
    encs = [e for e in ("fixed", "afp2") if any(r["encoding"] == e for r in rows)]
    fig, axes = plt.subplots(len(CALIBRATIONS), len(models), figsize=(4.2 * len(models), 9), dpi=120,
                             sharex=True, squeeze=False)
    colors = {"original": "C0", "noise": "C1", "hessian": "C2"}
    for i, cal in enumerate(CALIBRATIONS):
        for j, model in enumerate(models):
            ax = axes[i][j]
            for enc in encs:
                for k, w in enumerate(WEIGHTS):
                    xs, mean, std, worst = [], [], [], []
                    for ti, t in enumerate(times):
                        a = np.array([r["accuracy"] for r in rows if (r["model"], r["encoding"], r["t"], r["weights"],
                                                                      r["calibration"]) == (model, enc, t, w, cal)])
                        if len(a):
                            xs.append(ti + (k - 1) * 0.08 + (0.03 if enc != "fixed" else 0))
                            mean.append(100 * a.mean())
                            std.append(100 * a.std(ddof=1) if len(a) > 1 else 0)
                            worst.append(100 * a.min())
                    if xs:
                        ax.errorbar(xs, mean, yerr=std, color=colors[w], ls="-" if enc == "fixed" else "--", marker="o",
                                    ms=3.5, lw=1.3, capsize=2, label=f"{w}, {enc}")
                        ax.plot(xs, worst, color=colors[w], ls="none", marker="v", ms=3.5, alpha=0.6)
            ax.set_xticks(range(len(times)))
            ax.set_xticklabels(times)
            ax.grid(True, alpha=0.3)
            if i == 0:
                ax.set_title(model, fontsize=10)
            if j == 0:
                ax.set_ylabel(f"calibration: {cal}\ntest accuracy (%)")
    axes[0][0].legend(fontsize=7, loc="lower left", title="weights, encoding (▼ worst chip)", title_fontsize=7)
    chips = "/".join(map(str, sorted({n for _, _, n in cells(done).values()})))
    fig.suptitle(f"Training study ({source}): mean ± std over {chips} pcm chips, by drift time", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return f"wrote {rel_path(path)}"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
