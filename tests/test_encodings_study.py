"""benchmarks/encodings_study.py: the analysis over the encodings study's sweep rows.

A row it misreads (wrong encoding, condition or calibration) would put a wrong number in
the published tables without any error, so the mapping from spec settings to the former
bespoke script's configurations, and the pairing of a chip's rows, are checked here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import encodings_study as es  # noqa: E402


def bespoke_blocks() -> set[tuple]:
    """(model, encoding, condition, tiles, placement) of every point the bespoke script ran
    (its docstring's blocks main, folded, slicing, irdrop)."""
    main = {("resnet_bn", v, c, 128, "none") for v in es.MAIN for c in ("pr_1d", "full_1d", "full_1y")}
    folded = {("resnet_folded", v, "full_1d", 128, "none") for v in ("fixed", "afp2", "afp3")}
    slicing = ({("resnet_bn", v, c, 128, "none") for v in ("w9", "bs2x4") for c in ("pr_1d", "full_1d")}
               | {("resnet_bn", "bs4x2", "full_1d", 128, "none")})
    ir_alone = {("resnet_bn", v, c, size, p) for c in ("ir_r1", "ir_r5") for size in (64, 128, 256)
                for v in ("fixed", "afp2") for p in es.PLACEMENTS}
    ir_full = {("resnet_bn", v, c, 128, p) for c in ("full_1d", "full_1d_r5") for v in ("fixed", "afp2")
               for p in ("none", "ir-drop", "ir-drop+rows")}
    return main | folded | slicing | ir_alone | ir_full


def test_the_spec_is_the_bespoke_study():
    from xbar.sweep.spec import load_study

    study = load_study(ROOT / "benchmarks" / "encodings_study.toml")
    seen: dict[tuple, list[int]] = {}
    for p in study.points:
        for t in p.times:
            key = (es.classify(p.fields, t), p.calibration["method"])
            assert key not in seen, key
            seen[key] = p.seeds
    assert {k for k, _ in seen} == bespoke_blocks()
    assert {m for _, m in seen} == {"none", "affine"}
    assert len(seen) == 2 * len(bespoke_blocks())
    for (key, _), seeds in seen.items():  # IR drop alone is deterministic: one chip is all of them
        assert seeds == ([0] if key[2].startswith("ir_") else list(range(10))), key


def test_unknown_settings_are_refused():
    fields = {"model": "resnet_bn", "mapping.crossbar": "128x128", "mapping.replicas": 4}
    with pytest.raises(SystemExit, match="does not know"):
        es.classify(fields, es.DAY)
    with pytest.raises(SystemExit, match="does not know"):
        es.classify({**fields, "mapping.replicas": 2}, 3600.0)  # no condition at 1 h


def _write_rows(root: Path, rows: list[dict]) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    (root / "rows").mkdir(parents=True)
    (root / "sweep.json").write_text(json.dumps({"fingerprint": "f", "started": "now", "xbar_version": "0"}))
    for i, r in enumerate(rows):
        pq.write_table(pa.Table.from_pylist([r]), root / "rows" / f"{i}.parquet")


def _row(point: int, seed: int, method: str, acc: float, snr: dict, fit: dict) -> dict:
    return {"task": f"{point}-{seed}", "point": point, "label": "", "model": "resnet_bn", "mapping.crossbar": "128x128",
            "hardware.only": json.dumps(["programming", "read"]), "calibration.method": method, "seed": seed,
            "time_s": es.DAY, "time": "1 d", "accuracy": acc, "agreement": 1.0, "ideal_accuracy": 0.99,
            "layer_snr_db": json.dumps(snr), "layer_affine_snr_db": json.dumps(fit), "wall_s": 1.0}


def test_a_chip_pairs_its_uncalibrated_and_calibrated_rows(tmp_path):
    rows = [_row(0, 0, "none", 0.90, {"a": 20.0, "b": 10.0}, {"a": 25.0, "b": 15.0}),
            _row(1, 0, "affine", 0.98, {"a": 21.0, "b": 11.0}, {"a": 26.0, "b": 16.0}),
            _row(0, 1, "none", 0.80, {"a": 22.0, "b": 14.0}, {"a": 27.0, "b": 17.0}),
            _row(1, 1, "affine", 0.96, {"a": 23.0, "b": 15.0}, {"a": 28.0, "b": 18.0})]
    _write_rows(tmp_path / "ok", rows)
    result = es.from_sweep(tmp_path / "ok")
    p = es.find(result, cond="pr_1d")
    assert [c["seed"] for c in p["chips"]] == [0, 1]
    c0 = p["chips"][0]
    # before / SNR / fit from the uncalibrated row, after and the SNR after from the calibrated one
    assert (c0["before"], c0["after"]) == (0.90, 0.98)
    assert (c0["snr_db"], c0["snr_worst_db"], c0["fit_db"], c0["snr_after_db"]) == (15.0, 10.0, 20.0, 16.0)
    assert p["summary"]["before"]["mean"] == pytest.approx(0.85)
    assert p["summary"]["snr_db"]["values"] == [15.0, 18.0]
    assert p["point_index"] == {"none": 0, "affine": 1}

    _write_rows(tmp_path / "short", rows[:3])  # chip 1 lacks its calibrated row
    with pytest.raises(SystemExit, match="lacks rows"):
        es.from_sweep(tmp_path / "short")
