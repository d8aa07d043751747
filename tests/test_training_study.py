"""benchmarks/training_study.py: the sweep's rows read as the study's cells (model,
encoding, time, weights, calibration, chip), the tables it writes read back, and the
comparison of two tables in standard errors, on hand-made rows."""

from __future__ import annotations

import sys
from argparse import Namespace
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


@pytest.fixture
def done(monkeypatch):
    import xbar.sweep.store as store

    rows = [_row(s, a) for s, a in enumerate((0.96, 0.98, 0.97))] + [_row(0, 0.97, ft="noise", cal="affine", afp=2)]
    monkeypatch.setattr(store, "read_rows", lambda folder: pa.Table.from_pylist(rows))
    return ts.from_sweep(Path("unused"))


def test_rows_become_cells(done):
    assert done["cnn_bn|fixed|1y|original|none|1"]["accuracy"] == 0.98
    assert done["cnn_bn|afp2|1y|noise|affine|0"]["weights"] == "noise"
    assert done["cnn_bn|fixed|1y|original|ideal"]["accuracy"] == 0.99
    mean, std, n = ts.cells(done)[("cnn_bn", "fixed", "1y", "original", "none")]
    assert (mean, n) == (pytest.approx(97.0), 3) and std == pytest.approx(1.0)  # sample std of 96, 98, 97


def test_written_tables_read_back_and_compare_in_standard_errors(done, tmp_path):
    out = tmp_path / "t.md"
    ts._write_tables(done, Namespace(rows=tmp_path, out=out))
    text = out.read_text()
    assert "| original | 99.0 | 97.0 ± 1.0 (96.0), n=3 | – | – |" in text
    back = ts.parse_tables(text)
    assert back == {("cnn_bn", "fixed", "1y", "original", "none"): (97.0, 1.0, 3),
                    ("cnn_bn", "afp2", "1y", "noise", "affine"): (97.0, 0.0, 1)}

    old = {("cnn_bn", "fixed", "1y", "original", "none"): (96.0, 2.0, 4)}
    lines = ts.compare(back, old)
    se = np.sqrt(1.0 ** 2 / 3 + 2.0 ** 2 / 4)  # Welch: s1²/n1 + s2²/n2
    assert lines[1] == f"  cnn_bn, fixed, 1y, original, none: +1.00 ({1.0 / se:+.2f} SE)"
    assert lines[-1] == (f"1 cells compared (1 only in the new table, 0 only in the old); "
                         f"largest |difference| {1.0 / se:.2f} SE, 1.00 points")
