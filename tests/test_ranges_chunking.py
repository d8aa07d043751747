"""Measured DAC/ADC ranges are a function of the calibration data and the seed alone.

`find_ranges` keeps a random sample of every analog layer's input vectors. The sample, and
the vectors themselves, must not depend on how the caller batches the calibration data
(convert asks for 128 samples per batch, a sweep for the study's batch_size, calibrate for
--batch-size) nor on how many threads BLAS runs: a one-ulp change of an ADC full scale
moves ADC levels and changes a chip's outputs.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import MODELS
from xbar.bundle import load_bundle
from xbar.cli import cli
from xbar.converter import convert
from xbar.hardware import preset
from xbar.runtime import ranges as ranges_module
from xbar.runtime.ranges import find_ranges


def _measured(bundle) -> dict[str, object]:
    """Every measured range of `bundle`: the ranges records and the full-scale arrays."""
    out: dict[str, object] = {}
    for i, entry in enumerate(bundle.layers):
        r = entry.get("ranges")
        if r is None:
            continue
        out[f"{i}/record"] = dict(r)
        out[f"{i}/adc"] = bundle.arrays[r["adc"]]
        out[f"{i}/adc_absmax"] = bundle.arrays[r["adc_absmax"]]
    return out


def _assert_identical(a: dict[str, object], b: dict[str, object], what: str) -> None:
    assert a.keys() == b.keys(), what
    for key in a:
        if isinstance(a[key], np.ndarray):
            assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), f"{what}: {key} differs"
        else:
            assert a[key] == b[key], f"{what}: {key} differs: {a[key]} vs {b[key]}"


@pytest.fixture(scope="module")
def cnn():
    return convert(MODELS / "cnn_bn.onnx")


@pytest.fixture(scope="module")
def calib_x():
    return np.load(MODELS / "digits_calib.npz")["x"]  # 512 samples


SEQ, F, G, H, C = 6, 5, 12, 7, 3


def _sequence_model():
    """x (batch, 6, 5) -> MatMul (6 vectors per sample) -> Tanh -> bidirectional LSTM
    (layout 1; W once for all steps, R once per step and direction) -> Y_h -> MatMul head."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (F, G)).astype(np.float32), "embed"),
             numpy_helper.from_array(rng.normal(0, 0.5, (2, 4 * H, G)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.normal(0, 0.5, (2, 4 * H, H)).astype(np.float32), "R"),
             numpy_helper.from_array(rng.normal(0, 0.3, (2, 8 * H)).astype(np.float32), "B"),
             numpy_helper.from_array(rng.normal(0, 1, (2 * H, C)).astype(np.float32), "head")]
    nodes = [helper.make_node("MatMul", ["x", "embed"], ["e"], name="embed_mm"),
             helper.make_node("Tanh", ["e"], ["t"], name="tanh"),
             helper.make_node("LSTM", ["t", "W", "R", "B"], ["Y", "Y_h"], name="rec", hidden_size=H,
                              direction="bidirectional", layout=1),
             helper.make_node("Flatten", ["Y_h"], ["h"], name="flat", axis=1),
             helper.make_node("MatMul", ["h", "head"], ["logits"], name="head_mm")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", SEQ, F])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", C])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_sequence_and_recurrent_ranges_depend_on_the_data_and_seed_only(monkeypatch):
    """Layers that see several vectors per sample, in one call (MatMul over the sequence,
    the LSTM's W over all steps, time-major) or one call per time step (R), are sampled
    the same however the data arrives: in one array or as a batch-first copy (the runs are
    in RANGES_BATCH samples each, whatever the caller batches at). A small MAX_VECTORS
    makes every layer sampled; the seed chooses the sample."""
    monkeypatch.setattr(ranges_module, "MAX_VECTORS", 64)
    bundle = convert(_sequence_model(), crossbar=(8, 8))
    kinds = sorted({(e["kind"], e["params"].get("matrix")) for e in bundle.layers}, key=str)
    assert kinds == [("matmul", None), ("recurrent", "R"), ("recurrent", "W")], kinds
    x = np.random.default_rng(1).normal(0, 1, (300, SEQ, F)).astype(np.float32)
    first = _measured(find_ranges(copy.deepcopy(bundle), x, preset("pcm")))
    again = _measured(find_ranges(copy.deepcopy(bundle), np.array(x, order="F"), preset("pcm")))
    assert all(first[f"{i}/record"]["vectors"] == 64 for i in range(len(bundle.layers)))
    _assert_identical(first, again, "the same data, stored otherwise")
    other = _measured(find_ranges(copy.deepcopy(bundle), x, preset("pcm"), seed=1))
    assert not all(np.array_equal(other[k], first[k]) for k in other if k.endswith("/adc"))


def test_calibrate_at_any_batch_size_measures_convert_s_ranges(cnn, calib_x):
    """calibrate measures the ranges of a bundle without them at its own batch size (and
    sweeps at the study's); they must equal convert's, measured at 128, bit for bit, with
    the first convolutions really sampled (131072 vectors each down to MAX_VECTORS)."""
    from xbar.runtime.calibrate import calibrate

    want = _measured(find_ranges(copy.deepcopy(cnn), calib_x, preset("pcm")))
    assert len(want) == 3 * 4 and want["1/record"]["vectors"] == ranges_module.MAX_VECTORS
    spec = preset("pcm").override(t_inference=86400.0)
    for bs in (7, 512):
        out, _ = calibrate(copy.deepcopy(cnn), calib_x, spec, 0, "stats", batch_size=bs)
        _assert_identical(_measured(out), want, f"calibrate at batch size {bs} vs convert")


_RANGES_CHILD = r"""
import hashlib, sys
import numpy as np
from xbar.converter import convert
from xbar.hardware import preset
from xbar.runtime.ranges import find_ranges

bundle = find_ranges(convert(sys.argv[1]), np.load(sys.argv[2])["x"], preset("pcm"))
h = hashlib.sha256()
for e in bundle.layers:
    r = e.get("ranges")
    if r:
        h.update(np.float64(r["input"]).tobytes())
        h.update(bundle.arrays[r["adc"]].tobytes())
        h.update(bundle.arrays[r["adc_absmax"]].tobytes())
print(h.hexdigest())
"""


def test_ranges_do_not_depend_on_the_number_of_blas_or_worker_threads():
    """XBAR_THREADS=N keeps BLAS to at most N threads, and BLAS's own thread count (set
    here above the core count too, so OpenBLAS splits its products on any machine) changes
    no measured range."""
    base = {k: v for k, v in os.environ.items() if k not in ("XBAR_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    settings = [{"XBAR_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"},
                {"OPENBLAS_NUM_THREADS": "4"},
                {"XBAR_THREADS": "1", "OPENBLAS_NUM_THREADS": "4"},
                {"XBAR_THREADS": "3"}]
    digests = []
    for extra in settings:
        out = subprocess.run([sys.executable, "-c", _RANGES_CHILD, str(MODELS / "cnn_bn.onnx"),
                              str(MODELS / "digits_calib.npz")], env={**base, **extra},
                             capture_output=True, text=True, check=True)
        digests.append(out.stdout.strip())
    assert len(set(digests)) == 1, dict(zip(map(str, settings), digests))


def test_convert_and_calibrate_at_another_batch_size_measure_the_same_ranges(tmp_path):
    """`convert --calib-data` measures at 128 samples per batch; `calibrate` on a bundle
    without ranges measures them at its --batch-size. Same data, same seed: same ranges."""
    run = CliRunner()
    model, calib = str(MODELS / "cnn_bn.onnx"), str(MODELS / "digits_calib.npz")
    ranged, plain = tmp_path / "ranged.xbar", tmp_path / "plain.xbar"
    r = run.invoke(cli, ["convert", model, "-o", str(ranged), "--hardware", "pcm", "--calib-data", calib],
                   catch_exceptions=False)
    assert r.exit_code == 0, r.output
    r = run.invoke(cli, ["convert", model, "-o", str(plain), "--hardware", "pcm"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert not _measured(load_bundle(plain))
    calibrated = tmp_path / "calibrated.xbar"
    r = run.invoke(cli, ["calibrate", str(plain), "--data", calib, "--drift", "1d", "--batch-size", "7",
                         "-o", str(calibrated)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    a, b = _measured(load_bundle(ranged)), _measured(load_bundle(calibrated))
    assert len(a) == 3 * 4
    _assert_identical(a, b, "convert --calib-data vs calibrate --batch-size 7")
