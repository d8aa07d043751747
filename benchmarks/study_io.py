"""What every study script stamps on its outputs: the source commit, and paths relative to the repository."""

from __future__ import annotations

import subprocess
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
