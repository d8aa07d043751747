"""benchmarks/training_study.py --from-sweep: the sweep's rows read as the study's cells
(model, encoding, time, weights, calibration, chip), and the comparison with the bespoke
run in standard errors, checked on hand-made rows."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import training_study as ts  # noqa: E402


def _row(seed, acc, *, ft="none", cal="none", afp=None, time="1 y"):
    return {"model": "cnn_bn", "mapping.afp_exponents": afp, "finetune.method": ft, "calibration.method": cal,
            "seed": seed, "time": time, "accuracy": acc, "ideal_accuracy": 0.99}


def test_rows_become_cells_and_compare_in_standard_errors(monkeypatch):
    import xbar.sweep.store as store

    rows = [_row(s, a) for s, a in enumerate((0.96, 0.98))] + [_row(0, 0.97, ft="noise", cal="affine", afp=2)]
    monkeypatch.setattr(store, "read_rows", lambda folder: pa.Table.from_pylist(rows))
    done = ts.from_sweep(Path("unused"))
    assert done["cnn_bn|fixed|1y|original|none|1"]["accuracy"] == 0.98
    assert done["cnn_bn|afp2|1y|noise|affine|0"]["weights"] == "noise"
    assert done["cnn_bn|fixed|1y|original|ideal"]["accuracy"] == 0.99
    old = {f"k{s}": {**done["cnn_bn|fixed|1y|original|none|0"], "seed": s, "accuracy": a}
           for s, a in enumerate((0.95, 0.97))}
    lines = ts.compare(done, old)
    se = np.sqrt(np.var([96, 98], ddof=1) / 2 + np.var([95, 97], ddof=1) / 2)  # both sample std √2 points
    assert lines[1] == f"  cnn_bn, fixed, 1y, original, none: +1.00 ({1.0 / se:+.2f} SE)"
    assert lines[-1] == f"1 cells compared; largest |difference| {1.0 / se:.2f} SE"
