#!/usr/bin/env python
"""Training study (issue 11): does hardware-aware fine-tuning win back what the chip loses,
with and without calibration?

    python benchmarks/training_study.py [--models resnet_bn,cnn_bn] [--times 1s,1d,1y]
        [--chips 10] [--epochs 5] [--sgd-epochs 5] [--afp] [--out benchmarks/figures/training_study.md]

For every shipped model and drift time t, on the full pcm preset (programming noise, drift
with per-tile compensation, read noise, IR drop, 8-bit DAC/ADC with ranges from the
calibration split):
- weights: the original network, and the network fine-tuned with `noise` and with
  `hessian` (xbar.training.finetune; the same budget for both: --epochs passes over
  models/digits_train.npz, batch 64, Adam lr 1e-3, seed 0) for that t, mapped like the
  original (xbar.converter.remap, ranges re-measured on the calibration split);
- calibration on each chip: none, `affine` (closed form), `sgd` (--sgd-epochs epochs, the
  other SGD options at their defaults), fitted on the calibration split at t;
- chips: seeds 0..--chips-1, each evaluated on the 450-sample test split at t.
With --afp, every cell is repeated with analog floating point (2 exponents, step 2).

The same study is also the sweep spec benchmarks/training_study.toml; `--from-sweep DIR`
writes these tables and the figure from that sweep's rows instead (and with `--replot
COMMIT` sets every cell beside that bespoke run's, in standard errors). The sweep's 1 y is
365.25 d (xbar's year), this script's 365 d, and its chips see other read-noise draws
(other batching), so the two agree within chip-to-chip spread, not bit for bit.

Reported per (model, encoding, t, weights, calibration): accuracy mean ± std over chips and
the worst chip; per (model, encoding, t, weights): the ideal (digital) accuracy, which is
what a fine-tune costs on exact hardware. Rows are cached in
benchmarks/.cache/training_study.jsonl by their settings and the source commit, so a killed
run resumes; the tables go to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from study_io import finish, rel_path, source_commit  # noqa: E402

CACHE = HERE / ".cache" / "training_study.jsonl"
TIMES = {"1s": 1.0, "1d": 86400.0, "1y": 365 * 86400.0}
WEIGHTS = ("original", "noise", "hessian")
CALIBRATIONS = ("none", "affine", "sgd")


def _load_cache(commit: str) -> dict[str, dict]:
    rows = {}
    if CACHE.exists():
        for line in CACHE.read_text().splitlines():
            row = json.loads(line)
            if row.get("commit") == commit:
                rows[row["key"]] = row
    return rows


def _append(row: dict) -> None:
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    with CACHE.open("a") as fh:
        fh.write(json.dumps(row) + "\n")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="resnet_bn,cnn_bn")
    ap.add_argument("--times", default="1s,1d,1y")
    ap.add_argument("--chips", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--sgd-epochs", type=int, default=5)
    ap.add_argument("--afp", action="store_true")
    ap.add_argument("--out", type=Path, default=HERE / "figures" / "training_study.md")
    ap.add_argument("--from-sweep", type=Path, metavar="DIR",
                    help="no training or chips: the tables and figure from the rows of `xbar sweep "
                         "benchmarks/training_study.toml -o DIR` (with --replot COMMIT: each cell beside that run's)")
    ap.add_argument("--replot", metavar="COMMIT",
                    help="no training or chips: rewrite the tables (--out) and the figure (beside it, .png) from the "
                         "cached rows of the run made at source COMMIT (see the first line of --out)")
    args = ap.parse_args(argv)
    if args.from_sweep:
        done = from_sweep(args.from_sweep)
        _write_tables(done, args, f"the sweep in {rel_path(args.from_sweep)}")
        if args.replot:
            print("\n".join(compare(done, _load_cache(args.replot))))
        print(_plot(done, args.out.with_suffix(".png"), f"sweep {args.from_sweep.name}"))
        return 0
    if args.replot:
        done = _load_cache(args.replot)
        if not done:
            raise SystemExit(f"{CACHE}: no rows of commit {args.replot}")
        models = args.models.split(",")
        done = {k: r for k, r in done.items() if r["model"] in models}
        # Only whole (model, encoding) blocks: every time, weights and calibration on every chip.
        times = args.times.split(",")
        for pair in sorted({(r["model"], r["encoding"]) for r in done.values()}):
            n = sum(1 for r in done.values() if (r["model"], r["encoding"]) == pair and r["seed"] is not None)
            if n < len(times) * len(WEIGHTS) * len(CALIBRATIONS) * args.chips:
                print(f"left out {pair[0]}, {pair[1]}: {n} of "
                      f"{len(times) * len(WEIGHTS) * len(CALIBRATIONS) * args.chips} chip rows in the cache")
                done = {k: r for k, r in done.items() if (r["model"], r["encoding"]) != pair}
        _write_tables(done, args, args.replot)
        print(_plot(done, args.out.with_suffix(".png"), args.replot))
        return 0

    from xbar.converter import convert
    from xbar.converter.remap import remap
    from xbar.hardware import preset
    from xbar.runtime import Runtime
    from xbar.runtime.calibrate import calibrate
    from xbar.runtime.ranges import find_ranges
    from xbar.training.finetune import FinetuneOptions, finetune
    from xbar.training.sgd import SGDOptions

    t_start = time.perf_counter()
    commit = source_commit() or "unknown"
    done = _load_cache(commit)
    cal, test, train = (np.load(ROOT / "models" / f"digits_{s}.npz") for s in ("calib", "test", "train"))
    pcm = preset("pcm")
    encodings = {"fixed": {}} | ({"afp2": {"afp_exponents": 2, "afp_step": 2}} if args.afp else {})
    print(f"training study: source {commit}; models {args.models}; times {args.times}; {args.chips} chips; "
          f"fine-tune {args.epochs} epochs; sgd {args.sgd_epochs} epochs; encodings {', '.join(encodings)}")

    def acc(out: np.ndarray) -> float:
        return float((out.argmax(1) == test["y"]).mean())

    for model in args.models.split(","):
        for enc, options in encodings.items():
            base = convert(ROOT / "models" / f"{model}.onnx", hardware=pcm, **options)
            find_ranges(base, cal["x"], pcm)
            for tname in args.times.split(","):
                spec = pcm.override(t_inference=TIMES[tname])
                for weights in WEIGHTS:
                    key0 = f"{model}|{enc}|{tname}|{weights}"
                    bundle = base
                    if weights != "original":
                        w, a, rec = finetune(base, train["x"], train["y"], spec,
                                             FinetuneOptions(method=weights, epochs=args.epochs), seed=0)
                        bundle = remap(base, w, a, calib_x=cal["x"], record=rec)
                    if f"{key0}|ideal" not in done:
                        row = {"key": f"{key0}|ideal", "commit": commit, "model": model, "encoding": enc, "t": tname,
                               "weights": weights, "calibration": "ideal", "seed": None,
                               "accuracy": acc(Runtime(bundle)(test["x"]))}
                        _append(row)
                        done[row["key"]] = row
                    for seed in range(args.chips):
                        for calib in CALIBRATIONS:
                            key = f"{key0}|{calib}|{seed}"
                            if key in done:
                                continue
                            t0 = time.perf_counter()
                            run = bundle
                            if calib != "none":
                                run, _ = calibrate(bundle, cal["x"], spec, seed, calib,
                                                   sgd=SGDOptions(epochs=args.sgd_epochs) if calib == "sgd" else None)
                            row = {"key": key, "commit": commit, "model": model, "encoding": enc, "t": tname,
                                   "weights": weights, "calibration": calib, "seed": seed,
                                   "accuracy": acc(Runtime(run, spec, seed)(test["x"])),
                                   "seconds": round(time.perf_counter() - t0, 2)}
                            _append(row)
                            done[key] = row
                    print(f"  {key0}: done ({time.perf_counter() - t_start:.0f} s)", flush=True)
    _write_tables(done, args, commit)
    print(_plot(done, args.out.with_suffix(".png"), commit))
    finish(t_start)
    return 0


def from_sweep(folder: Path) -> dict[str, dict]:
    """The sweep's rows as this script's cache rows: (model, encoding, t, weights,
    calibration, seed) → accuracy, plus one 'ideal' row per prepared bundle. The sweep's
    1 y is 365.25 d, this script's 365 d; rows are keyed by the label either way."""
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


def compare(new: dict[str, dict], old: dict[str, dict]) -> list[str]:
    """Per cell, the sweep's mean beside the bespoke run's, in standard errors of the difference."""
    def cells(rows):
        out: dict[tuple, list[float]] = {}
        for r in rows.values():
            if r["seed"] is not None:
                out.setdefault((r["model"], r["encoding"], r["t"], r["weights"], r["calibration"]), []).append(r["accuracy"])
        return out

    a, b = cells(new), cells(old)
    lines, worst = ["cell: sweep mean − bespoke mean (points), in standard errors of the difference"], 0.0
    for key in sorted(set(a) & set(b)):
        x, y = np.array(a[key]) * 100, np.array(b[key]) * 100
        se = np.sqrt(x.var(ddof=1) / len(x) + y.var(ddof=1) / len(y)) if min(len(x), len(y)) > 1 else 0.0
        z = (x.mean() - y.mean()) / se if se > 0 else 0.0
        worst = max(worst, abs(z))
        lines.append(f"  {', '.join(key)}: {x.mean() - y.mean():+.2f} ({z:+.2f} SE)")
    lines.append(f"{len(set(a) & set(b))} cells compared; largest |difference| {worst:.2f} SE")
    return lines


def _write_tables(done: dict[str, dict], args, commit: str) -> None:
    rows = list(done.values())
    lines = [f"# Training study: `python {rel_path(Path(__file__))} {' '.join(sys.argv[1:])}`", "",
             f"Source {commit}. Accuracy on the 450-sample test split, {args.chips} chips per cell, pcm with "
             "DAC/ADC ranges; fine-tuning on the 835-sample training split. Each cell: mean ± std over chips "
             "(worst chip); ideal = the same weights on exact hardware.", ""]
    groups = sorted({(r["model"], r["encoding"], r["t"]) for r in rows}, key=lambda g: (g[0], g[1], TIMES[g[2]]))
    for model, enc, t in groups:
        lines += [f"## {model}, {enc}, t = {t}", "",
                  "| weights | ideal | " + " | ".join(f"{c} calibration" for c in CALIBRATIONS) + " |",
                  "|---|---|" + "---|" * len(CALIBRATIONS)]
        for w in WEIGHTS:
            sel = [r for r in rows if (r["model"], r["encoding"], r["t"], r["weights"]) == (model, enc, t, w)]
            ideal = [r["accuracy"] for r in sel if r["calibration"] == "ideal"]
            cells = []
            for c in CALIBRATIONS:
                a = np.array([r["accuracy"] for r in sel if r["calibration"] == c]) * 100
                cells.append(f"{a.mean():.1f} ± {a.std(ddof=1) if len(a) > 1 else 0:.1f} ({a.min():.1f}), n={len(a)}"
                             if len(a) else "–")
            lines.append(f"| {w} | {100 * ideal[0]:.1f} | " + " | ".join(cells) + " |" if ideal else
                         f"| {w} | – | " + " | ".join(cells) + " |")
        lines.append("")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


def _plot(done: dict[str, dict], path: Path, commit: str) -> str:
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
    fig.suptitle(f"Training study (source {commit[:10]}): mean ± std over 10 pcm chips, by drift time", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return f"wrote {rel_path(path)}"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
