"""What every study script stamps on its outputs: the source commit, and paths relative to the repository."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def source_commit() -> str | None:
    """The git commit the run's sources come from, '+dirty' if tracked sources differ from it.

    Only the code that runs counts: untracked files and the studies' own outputs
    (benchmarks/figures) do not change what ran. None outside a git checkout."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "--",
                                "xbar", "converter", "runtime", "benchmarks", ":!benchmarks/figures"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def rel_path(path: Path) -> str:
    """`path` relative to the repository root when it lies inside it, else as given."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def finish(t_start: float, cache=None, blas=None) -> None:
    """The closing lines every study prints: chip-cache savings, wall time and load; then BLAS
    threads back to what they were (`blas`: a threadpoolctl limiter, or None)."""
    if cache is not None:
        print(f"chip cache: {cache.hits} hits, {cache.misses} builds, ~{cache.seconds_saved:.0f} s of chip "
              "construction saved")
    print(f"total wall time {time.perf_counter() - t_start:.0f} s  (loadavg at end "
          f"{', '.join(f'{v:.2f}' for v in os.getloadavg())})")
    if blas is not None:
        blas.restore_original_limits()
