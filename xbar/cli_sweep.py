"""`xbar sweep` and `xbar plot`: design-space studies (xbar.sweep) from the command line."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from xbar.units import format_seeds, format_time


class _Progress:
    """Chip tasks done, with ETA: a bar on a terminal, a line per tenth of the work otherwise."""

    def __init__(self, total: int):
        self.total, self.done, self.t0 = total, 0, time.perf_counter()
        self.tty = sys.stderr.isatty()
        self.bar = None
        if self.tty:
            self.bar = click.progressbar(length=total, label="chips", file=sys.stderr, show_eta=True, show_pos=True,
                                         item_show_func=lambda label: label[:40] if label else None)
            self.bar.__enter__()
        self.step = max(1, total // 10)

    def update(self, n: int, label: str) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n, label)
        elif self.done % self.step == 0 or self.done == self.total:
            el = time.perf_counter() - self.t0
            eta = el / self.done * (self.total - self.done)
            click.echo(f"  [{self.done}/{self.total}] chip tasks  elapsed {el:.0f} s, eta {eta:.0f} s", err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


@click.command()
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Results folder: rows/*.parquet, spec.toml, sweep.json, bundles/. Re-running the same command "
                   "resumes: finished tasks are skipped.")
@click.option("--scheduler", metavar="tcp://HOST:PORT",
              help="An existing Dask scheduler to submit to (its workers need xbar installed). Default: a local "
                   "cluster, one worker process per core.")
@click.option("--workers", type=click.IntRange(min=1), help="Worker processes of the local cluster (default: one per core).")
@click.option("--force", is_flag=True,
              help="Reuse a folder holding another spec's results: rows of tasks both specs share are kept, the "
                   "others deleted.")
def sweep(spec: Path, out: Path, scheduler: str | None, workers: int | None, force: bool) -> None:
    """Run a design-space study from a TOML spec: models × mapping × hardware × calibration ×
    fine-tuning × chips × drift times, on Dask. One row per (point, chip, time).

    \b
    xbar sweep examples/sweep.toml -o build/sweep
    xbar plot build/sweep -o build/sweep.png
    """
    from xbar.sweep import engine
    from xbar.sweep.plot import summarise, text_table
    from xbar.sweep.spec import load_study
    from xbar.sweep.store import Results

    if scheduler and workers:
        raise click.UsageError("--workers sizes the local cluster; an existing scheduler (--scheduler) has its own "
                               "workers. Give one of them.")
    study = load_study(spec)
    n_tasks = sum(len(p.seeds) for p in study.points)
    click.echo(f"spec {spec}: {len(study.points)} point(s), {n_tasks} chip task(s), {study.rows} rows (one per "
               f"point, chip and time); test data {study.test_data.name}"
               + (f" (first {study.test_samples} samples)" if study.test_samples else ""))
    click.echo(f"  times {', '.join(format_time(t) for t in study.times)}; chips (seeds) {format_seeds(study.seeds)}"
               + (" (some points set their own)" if any(p.seeds != study.seeds or p.times != study.times
                                                        for p in study.points) else ""))
    shown = study.points[:12]
    for p in shown:
        click.echo(f"  point {p.index + 1:>3}: {p.label}")
    if len(study.points) > len(shown):
        click.echo(f"  … {len(study.points) - len(shown)} more (every point's settings: {out}/sweep.json)")
    engine.preflight(scheduler)
    data = engine.datasets(study)  # bad data is refused before a results folder exists
    results, note = Results.open(out, study, force=force)
    click.echo(f"{out}: {note}")
    try:
        outcome = engine.run(study, results, scheduler=scheduler, workers=workers, progress=_Progress,
                             echo=click.echo, data=data)
    except KeyboardInterrupt:
        done = len(results.done())
        raise click.ClickException(f"interrupted: {done} of {n_tasks} chip tasks are finished and saved in {out}; "
                                   "run the same command again to resume") from None
    if outcome.tasks == 0:
        click.echo(f"nothing to run: all {n_tasks} chip tasks of this spec are finished in {out}")
    else:
        click.echo(f"{outcome.finished} of {outcome.tasks} chip task(s) finished, {outcome.rows} rows written to "
                   f"{out}/rows in {outcome.seconds:.1f} s on {outcome.workers} worker(s)")
    if len(results.done()) > 0:
        click.echo()
        click.echo(text_table(summarise(out)))
        click.echo(f"\nplot: xbar plot {out} -o {out}/sweep.png")
    if outcome.failures:
        lines = "\n  ".join(outcome.failures)
        raise click.ClickException(f"{len(outcome.failures)} point(s) failed; their rows are missing, every finished "
                                   f"row is saved. Fix the spec and run the same command again:\n  {lines}")


@click.command()
@click.argument("results", type=click.Path(file_okay=False, path_type=Path))
@click.option("--x", "x", metavar="FIELD", help="The x axis: 'time' (default when several times) or any swept setting, "
                                                 "e.g. hardware.adc.bits.")
@click.option("--hue", metavar="FIELD[,FIELD]", help="One line per value of these settings (default: every swept "
                                                     "setting but --x).")
@click.option("--metric", type=click.Choice(["accuracy", "agreement"]), default="accuracy", show_default=True)
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, path_type=Path),
              help="Figure file (.png, .svg or .pdf). Without it only the text table is printed.")
def plot(results: Path, x: str | None, hue: str | None, metric: str, out: Path | None) -> None:
    """Summarise a sweep's rows over chips: a text table, and with -o a figure (mean ± std band
    per configuration, worst chip dotted, ideal dashed)."""
    from xbar.sweep.plot import check_figure_path, figure, summarise, text_table, title_of

    if out is not None:
        check_figure_path(out)  # before the table is printed, not after
    hues = [h.strip() for h in hue.split(",") if h.strip()] if hue is not None else None
    s = summarise(results, x=x, hue=hues, metric=metric)
    click.echo(text_table(s))
    if out is not None:
        figure(s, out, title=title_of(results))
        click.echo(f"wrote {out}")
