"""`xbar plot`: a sweep's rows summarised over chips, as a text table and a matplotlib figure.

A configuration is one combination of the swept settings (the columns whose values differ
between points); for each configuration and x value the chips give a mean, a sample
standard deviation (ddof 1), the worst chip and their number.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xbar.errors import ConfigError
from xbar.stats import summary
from xbar.sweep.store import FIXED_COLUMNS, read_meta, read_rows
from xbar.units import format_time

METRICS = ("accuracy", "agreement")
_RESULT_COLUMNS = {name for name, _, _ in FIXED_COLUMNS} - {"seed", "time"}


@dataclass
class Cell:
    """One configuration at one x value: the chips' values (in %), summarised by xbar.stats."""

    hue: tuple
    x: Any
    values: list[float]
    ideal: float | None

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return summary(self.values, bounds=(0.0, 100.0))["mean"]

    @property
    def std(self) -> float | None:
        """None for one chip (no spread measured)."""
        return summary(self.values, bounds=(0.0, 100.0))["std"]

    @property
    def worst(self) -> float:
        return summary(self.values, bounds=(0.0, 100.0))["min"]


@dataclass
class Summary:
    x: str
    hue: list[str]
    metric: str
    cells: list[Cell]
    x_values: list[Any]
    hues: list[tuple]
    x_labels: dict[Any, str]
    rows: int

    def cell(self, hue: tuple, x: Any) -> Cell | None:
        for c in self.cells:
            if c.hue == hue and c.x == x:
                return c
        return None

    def hue_text(self, hue: tuple) -> str:
        return ", ".join(format_time(v) if k == "time" else "-" if v is None else str(v)
                         for k, v in zip(self.hue, hue)) or "all points"

    def hue_label(self, hue: tuple) -> str:
        return ", ".join(f"{k}={format_time(v) if k == 'time' else v}" for k, v in zip(self.hue, hue)
                         if v is not None) or "all points"


def settings(rows: list[dict[str, Any]]) -> list[str]:
    """The setting columns of a results table (every column that is not a result)."""
    return [c for c in rows[0] if c not in _RESULT_COLUMNS]


def summarise(root: str | Path, x: str | None = None, hue: list[str] | None = None,
              metric: str = "accuracy") -> Summary:
    if metric not in METRICS:
        raise ConfigError(f"--metric {metric!r}; choose one of {', '.join(METRICS)}")
    table = read_rows(root)
    rows = table.to_pylist()
    fields = settings(rows)
    def values(c: str) -> set[str]:
        return {json.dumps(r["time_s" if c == "time" else c], sort_keys=True) for r in rows}

    # Every setting that differs between rows, time included; chips (seeds) are what a cell pools.
    varying = [c for c in fields if c != "seed" and len(values(c)) > 1]
    if x is None:
        x = "time" if "time" in varying else (varying[0] if varying else "time")
    if x not in fields:
        raise ConfigError(f"--x {x!r} is not a column of {root}; choose one of {', '.join(fields)}")
    if hue is None:
        hue = [c for c in varying if c != x]
    for h in hue:
        if h not in fields:
            raise ConfigError(f"--hue {h!r} is not a column of {root}; choose from {', '.join(fields)}")
    if x in hue:
        raise ConfigError(f"--hue {x!r} is also the x axis (--x); give it once")
    pooled = [c for c in varying if c != x and c not in hue]
    if pooled:
        # A cell would mix chips of different settings, and its n would count rows, not chips.
        shown = "; ".join(f"{c} ({len(values(c))} values)" for c in pooled)
        raise ConfigError(f"the rows of {root} also differ in {shown}, which neither --x nor --hue separates: "
                          f"each cell would pool them. Give --hue {','.join(hue + pooled)} (or leave --hue out "
                          "to separate every setting)")
    if metric == "accuracy" and all(r["accuracy"] is None for r in rows):
        raise ConfigError(f"{root}: the test data has no labels, so rows carry no accuracy; use --metric agreement")
    xkey = "time_s" if x == "time" else x
    groups: dict[tuple, dict[Any, Cell]] = {}
    labels: dict[Any, str] = {}
    hue_keys = ["time_s" if c == "time" else c for c in hue]  # times order by seconds, not by their text
    for r in rows:
        h = tuple(r[c] for c in hue_keys)
        xv = r[xkey]
        labels.setdefault(xv, r["time"] if x == "time" else str(xv))
        cell = groups.setdefault(h, {}).setdefault(xv, Cell(h, xv, [], r["ideal_accuracy"]))
        if r[metric] is not None:
            cell.values.append(100.0 * r[metric])
    x_values = sorted(labels, key=_order)
    hues = sorted(groups, key=lambda t: tuple(_order(v) for v in t))
    cells = [groups[h][xv] for h in hues for xv in x_values if xv in groups[h] and groups[h][xv].values]
    return Summary(x=x, hue=hue, metric=metric, cells=cells, x_values=x_values, hues=hues, x_labels=labels,
                   rows=len(rows))


def check_figure_path(path: str | Path) -> Path:
    """The figure file `path`, refused unless matplotlib can write its format."""
    path = Path(path)
    if path.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise ConfigError(f"-o {path}: give a .png, .svg or .pdf file")
    return path


def _order(v: Any) -> tuple:
    if v is None:
        return (0, 0, "")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (1, float(v), "")
    return (2, 0, str(v))


def text_table(s: Summary) -> str:
    """mean ± std (worst chip) per configuration and x value, in %, with the chip count; for
    accuracy, the bundle's ideal-hardware accuracy beside (agreement with ideal hardware has no
    ideal value of its own: it would be 100 %)."""
    with_ideal = s.metric == "accuracy"
    head = [", ".join(s.hue) or "points"] + [s.x_labels[x] if s.x == "time" else f"{s.x}={s.x_labels[x]}"
                                             for x in s.x_values] + (["ideal"] if with_ideal else [])
    body = []
    for h in s.hues:
        line = [s.hue_text(h)]
        ideals = []
        for x in s.x_values:
            c = s.cell(h, x)
            spread = "" if c is None or c.std is None else f" ± {c.std:.2f}"
            line.append("-" if c is None else f"{c.mean:.2f}{spread} ({c.worst:.2f}) n={c.n}")
            if c is not None and c.ideal is not None:
                ideals.append(100 * c.ideal)
        # The ideal-hardware accuracy belongs to the prepared bundle: one value unless x changes the bundle.
        if with_ideal:
            line.append("-" if not ideals else f"{ideals[0]:.2f}" if len(set(ideals)) == 1
                        else "/".join(f"{v:.2f}" for v in ideals))
        body.append(line)
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
    out = [f"{s.metric} (%) over chips: mean ± sample std (worst chip), n chips"
           + ("; ideal: the same bundle on ideal hardware" if with_ideal else " (top-1 agreement with the same "
              "bundle on ideal hardware)")]
    for line in [head, ["-" * w for w in widths]] + body:
        out.append("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(line, widths))))
    return "\n".join(out)


def figure(s: Summary, path: str | Path, title: str = "") -> Path:
    """The summary as a line plot (mean with a ±1 std band per configuration; the worst chip
    dotted); log time axis when x is the drift time."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("xbar plot draws with matplotlib, which is not installed; install the sweep extra: "
                          "pip install 'xbar[sweep]' (the text table needs no matplotlib: leave out -o)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = check_figure_path(path)
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in s.x_values)
    pos = {x: (float(x) if numeric else i) for i, x in enumerate(s.x_values)}
    fig, ax = plt.subplots(figsize=(7.5, 4.6), dpi=130)
    for i, h in enumerate(s.hues):
        cs = [c for c in (s.cell(h, x) for x in s.x_values) if c is not None]
        if not cs:
            continue
        xs = np.array([pos[c.x] for c in cs])
        mean = np.array([c.mean for c in cs])
        std = np.array([0.0 if c.std is None else c.std for c in cs])  # one chip: no band
        color = f"C{i % 10}"
        n = max(c.n for c in cs)
        ax.plot(xs, mean, marker="o", ms=4, lw=1.6, color=color, label=f"{s.hue_label(h)} (n={n})")
        ax.fill_between(xs, mean - std, mean + std, color=color, alpha=0.18, lw=0)
        ax.plot(xs, [c.worst for c in cs], color=color, lw=0.8, ls=":")
        if s.metric == "accuracy" and cs[0].ideal is not None and len({c.ideal for c in cs}) == 1:
            ax.axhline(100 * cs[0].ideal, color=color, lw=0.8, ls="--", alpha=0.6)
    if s.x == "time":
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xlabel("time since programming")
    else:
        ax.set_xlabel(s.x)
    ax.set_xticks([pos[x] for x in s.x_values])
    ax.set_xticklabels([s.x_labels[x] for x in s.x_values])
    ax.set_ylabel(f"{s.metric} (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7.5, loc="lower left", title="band: ±1 std over chips; dotted: worst chip; dashed: ideal",
              title_fontsize=7)
    if title:
        ax.set_title(title, fontsize=9.5)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def title_of(root: str | Path) -> str:
    meta = read_meta(root)
    models = ", ".join(meta.get("models", {}))
    return f"{models}: {Path(meta.get('spec_path', '')).name} ({len(meta.get('seeds', []))} chips per point)"
