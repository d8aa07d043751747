"""benchmarks/calibration_study.py: the analysis over the calibration study's sweep rows.

It matches every row to a condition by the row's resolved hardware; these checks keep the
spec and the conditions it names in step, without running a chip: every point of the spec
at every time is exactly one condition with the three methods, every condition is in the
spec, and the deterministic conditions run one chip."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import calibration_study as cs  # noqa: E402


def test_the_spec_runs_every_condition_with_every_method():
    from xbar.sweep.spec import load_study
    from xbar.sweep.task import _spec

    study = load_study(ROOT / "benchmarks" / "calibration_study.toml")
    by_hw = {cs._hardware_key(json.loads(json.dumps(c.spec.to_dict(), default=str))): c for c in cs.conditions()}
    seen: dict[tuple[str, str], list[int]] = {}
    for p in study.points:
        for t in p.times:
            hw = json.loads(json.dumps(_spec(p.hardware, t).to_dict(), default=str))
            cond = by_hw.get(cs._hardware_key(hw))
            assert cond is not None, (p.label, t)
            key = (cond.key, p.calibration["method"])
            assert key not in seen, key
            seen[key] = p.seeds
    assert set(seen) == {(c.key, m) for c in cs.conditions() for m in ("none", "stats", "affine")}
    for c in cs.conditions():
        want = [0] if cs.is_deterministic(c.spec) else list(range(40))
        assert all(seen[(c.key, m)] == want for m in ("none", "stats", "affine")), c.key
    assert study.snr_samples == 64  # the error anatomy's samples


def test_followups_spec_pairs_chip_a_with_chip_b():
    from xbar.sweep.spec import load_study

    study = load_study(ROOT / "benchmarks" / "calibration_followups.toml")
    chips_b = [p for p in study.points if p.seeds[0] >= cs.SPECIFICITY_OFFSET]
    assert {p.calibration["method"] for p in chips_b} == {"none", "stats", "affine"}
    for p in chips_b:
        assert p.seeds == list(range(cs.SPECIFICITY_OFFSET, cs.SPECIFICITY_OFFSET + 40))
        if p.calibration["method"] != "none":
            assert p.calibration["chip"] == f"seed-{cs.SPECIFICITY_OFFSET}"
