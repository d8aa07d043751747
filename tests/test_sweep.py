"""xbar sweep / xbar plot: specs, rows against the eval path, Dask determinism, resume, failures.

The reference for every row is the path `xbar convert --calib-data` + `xbar eval` runs
(convert, find_ranges, xbar.runtime.sweep.sweep), computed here in the test process: a
row's accuracy must equal it exactly (both count correct samples of the same chip).
Dask tests start real local clusters (one worker process per worker, one thread each).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("distributed")
pytest.importorskip("pyarrow")

from xbar.cli import cli  # noqa: E402
from xbar.sweep import engine  # noqa: E402
from xbar.sweep.spec import SpecError, load_study  # noqa: E402
from xbar.sweep.store import Results, read_rows  # noqa: E402
from xbar.sweep.task import CRASH_ONCE_ENV  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
N_TEST = 96  # test samples per row: enough to see chips differ, small enough for a fast suite

BASE_SPEC = f"""
[study]
models = ["{MODELS / 'cnn_bn.onnx'}"]
test_data = "{MODELS / 'digits_test.npz'}"
calib_data = "{MODELS / 'digits_calib.npz'}"
seeds = "0-2"
times = ["1s", "1y"]
test_samples = {N_TEST}

[base]
hardware = "pcm"
"mapping.crossbar" = "64x64"

[axes]
"hardware.adc.bits" = [4, 8]
"""


def _spec(tmp_path: Path, text: str = BASE_SPEC, name: str = "spec.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _result_rows(root: Path) -> list[dict]:
    """Rows without what may differ between runs of the same computation (wall time)."""
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in read_rows(root).to_pylist()]


# ---------------------------------------------------------------- the spec


@pytest.mark.parametrize("change, message", [
    ('"hardware.adc.bitz" = [4, 8]', "adc.bitz"),
    ('"mapping.colour" = [1]', "unknown setting 'mapping.colour'"),
    ('"calibration.method" = ["affine", "magic"]', "calibration.method 'magic'"),
    ('"hardware.t_inference" = [1]', "[study] times"),
    ('"finetune.method" = ["noise"]', "train_data"),
    ('"mapping.encoding" = ["differential", "tri"]', "encoding"),
    ('"hardware.adc.bits" = []', "non-empty list"),
    # The row would record 4 and 8 while both points ran without an ADC.
    ('"hardware.adc.bits" = [4, 8]\n"hardware.without" = ["adc"]', "adc.bits = 4 is set explicitly"),
])
def test_bad_axis_is_named(tmp_path, change, message):
    text = BASE_SPEC.replace('"hardware.adc.bits" = [4, 8]', change)
    with pytest.raises(SpecError, match=message.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        load_study(_spec(tmp_path, text))


def test_bad_spec_files_are_named(tmp_path):
    with pytest.raises(SpecError, match="no such file"):
        load_study(_spec(tmp_path, BASE_SPEC.replace("cnn_bn.onnx", "missing.onnx")))
    with pytest.raises(SpecError, match="unknown table"):
        load_study(_spec(tmp_path, BASE_SPEC + "\n[extra]\na = 1\n"))
    with pytest.raises(SpecError, match="unknown \\[study\\] key"):
        load_study(_spec(tmp_path, BASE_SPEC.replace("seeds =", "chips = 3\nseeds =")))
    with pytest.raises(SpecError, match="not valid TOML"):
        load_study(_spec(tmp_path, "[study\n"))
    with pytest.raises(SpecError, match="same configuration as point 1"):
        load_study(_spec(tmp_path, BASE_SPEC.replace("[4, 8]", "[8, 8]")))


@pytest.mark.parametrize("training", ['"calibration.method" = ["affine", "sgd"]',
                                      '"finetune.method" = ["noise"]\n"finetune.time" = ["1d"]'])
def test_training_a_recurrent_model_is_refused_before_anything_runs(tmp_path, training):
    """The training side has no torch form for LSTM/GRU/RNN: a point that trains one is
    refused by the spec, naming the node, not by a failed worker task."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((1, 8, 3), np.float32), "W")
    r = numpy_helper.from_array(np.ones((1, 8, 2), np.float32), "R")
    graph = helper.make_graph([helper.make_node("LSTM", ["x", "W", "R"], ["", "h"], name="rnn", hidden_size=2)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, "batch", 3])],
                              [helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, "batch", 2])], [w, r])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), tmp_path / "lstm.onnx")
    text = (BASE_SPEC.replace(str(MODELS / "cnn_bn.onnx"), str(tmp_path / "lstm.onnx"))
            .replace("calib_data =", f'train_data = "{MODELS / "digits_calib.npz"}"\ncalib_data =')
            .replace('"hardware.adc.bits" = [4, 8]', training))
    with pytest.raises(SpecError, match="no torch form for LSTM \\(node 'rnn'"):
        load_study(_spec(tmp_path, text))


def test_training_a_model_with_several_inputs_is_refused_before_anything_runs(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "g",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 4]) for n in "ab"],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "two.onnx")
    text = (BASE_SPEC.replace(str(MODELS / "cnn_bn.onnx"), str(tmp_path / "two.onnx"))
            .replace("calib_data =", f'train_data = "{MODELS / "digits_calib.npz"}"\ncalib_data =')
            .replace('"hardware.adc.bits" = [4, 8]', '"finetune.method" = ["noise"]\n"finetune.time" = ["1d"]'))
    with pytest.raises(SpecError, match=r"runs models with one input, and model 'two' takes 2 \(a, b\)"):
        load_study(_spec(tmp_path, text))


def test_points_times_axes_and_dotted_tables(tmp_path):
    text = BASE_SPEC + '\n[[points]]\n"hardware.drift_compensation" = "tile"\n\n[[points]]\n' \
                       'hardware.drift_compensation = "off"\n'
    study = load_study(_spec(tmp_path, text))
    assert len(study.points) == 4
    assert [p.fields["hardware.drift_compensation"] for p in study.points] == ["tile", "tile", "off", "off"]
    assert [p.hardware["adc"]["bits"] for p in study.points] == [4, 8, 4, 8]
    assert study.points[2].label == "hardware.drift_compensation=off, hardware.adc.bits=4"
    # Different settings, different tasks; the same spec read twice, the same identity.
    keys = {study.task_key(p, s) for p in study.points for s in study.seeds}
    assert len(keys) == 4 * 3
    assert load_study(_spec(tmp_path, text)).fingerprint() == study.fingerprint()


def test_cli_spec_error_writes_nothing(tmp_path):
    out = tmp_path / "res"
    r = CliRunner().invoke(cli, ["sweep", str(_spec(tmp_path, BASE_SPEC.replace("[4, 8]", "[4, 'x']"))),
                                 "-o", str(out)])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "hardware.adc.bits" in r.output
    assert not out.exists()


def test_bad_data_is_refused_before_a_results_folder_exists(tmp_path):
    """Data the study cannot use (NaN here) is refused before the results folder is made, so
    the same command runs once the file is fixed (it used to find a folder 'of another spec')."""
    x = np.load(MODELS / "digits_test.npz")
    bad = x["x"].copy()
    bad[0, 0, 0, 0] = np.nan
    np.savez(tmp_path / "nan.npz", x=bad, y=x["y"])
    out = tmp_path / "res"
    text = BASE_SPEC.replace(str(MODELS / "digits_test.npz"), str(tmp_path / "nan.npz"))
    r = CliRunner().invoke(cli, ["sweep", str(_spec(tmp_path, text)), "-o", str(out)])
    assert r.exit_code == 1 and "Traceback" not in r.output and "NaN" in r.output
    assert not out.exists()


# ---------------------------------------------------------------- rows against the eval path


def _reference(spec_text: str, tmp_path: Path, bits: int, seeds, times):
    """Accuracy per (seed, time) the way `xbar convert --calib-data` + `xbar eval` compute it."""
    from xbar.converter import convert
    from xbar.data import load_dataset
    from xbar.hardware import preset
    from xbar.runtime.ranges import find_ranges
    from xbar.runtime.sweep import sweep

    spec = preset("pcm").override({"adc.bits": bits})
    bundle = convert(str(MODELS / "cnn_bn.onnx"), crossbar=(64, 64), hardware=spec)
    find_ranges(bundle, load_dataset(MODELS / "digits_calib.npz", bundle.graph["inputs"][0]).x, spec)
    test = load_dataset(MODELS / "digits_test.npz", bundle.graph["inputs"][0])
    test.x, test.y = test.x[:N_TEST], test.y[:N_TEST]
    rows = sweep(bundle, spec, test, seeds, times)
    return {(s, t): row.accuracies[i] for row, t in zip(rows, times) for i, s in enumerate(seeds)}


def test_in_process_rows_equal_the_eval_path(tmp_path):
    study = load_study(_spec(tmp_path))
    results, _ = Results.open(tmp_path / "res", study)
    outcome = engine.run_in_process(study, results)
    assert outcome.finished == 6 and outcome.rows == 12
    rows = read_rows(tmp_path / "res").to_pylist()
    for bits in (4, 8):
        ref = _reference(BASE_SPEC, tmp_path, bits, study.seeds, study.times)
        got = {(r["seed"], r["time_s"]): r["accuracy"] for r in rows if r["hardware.adc.bits"] == bits}
        assert got == ref
    r0 = rows[0]
    assert r0["model"] == "cnn_bn" and r0["time"] == "1 s" and 0 < r0["agreement"] <= 1
    assert json.loads(r0["config"])["hardware"]["t_inference"] == 1.0
    assert json.loads(r0["config"])["hardware"]["adc"]["bits"] == r0["hardware.adc.bits"]


def test_calibrated_rows_equal_calibrate_then_eval(tmp_path):
    """calibration.method = affine on each chip at 1 d, evaluated at 1 s and 1 y: the same as
    `xbar calibrate --seed S --drift 1d` followed by `xbar eval --seeds S`."""
    from xbar.converter import convert
    from xbar.data import load_dataset
    from xbar.hardware import preset
    from xbar.runtime.calibrate import calibrate
    from xbar.runtime.evaluate import predict
    from xbar.runtime.executor import Runtime
    from xbar.runtime.ranges import find_ranges
    from xbar.runtime.sweep import evaluate_chip, top1

    text = BASE_SPEC.replace('"hardware.adc.bits" = [4, 8]', '"calibration.method" = ["affine"]') \
        .replace('seeds = "0-2"', 'seeds = "1"') + '\n[base.calibration]\ntime = "1d"\n'
    study = load_study(_spec(tmp_path, text))
    results, _ = Results.open(tmp_path / "res", study)
    engine.run_in_process(study, results)
    got = {r["time_s"]: r["accuracy"] for r in read_rows(tmp_path / "res").to_pylist()}

    spec = preset("pcm")
    bundle = convert(str(MODELS / "cnn_bn.onnx"), crossbar=(64, 64), hardware=spec)
    calib = load_dataset(MODELS / "digits_calib.npz", bundle.graph["inputs"][0])
    find_ranges(bundle, calib.x, spec)
    test = load_dataset(MODELS / "digits_test.npz", bundle.graph["inputs"][0])
    test.x, test.y = test.x[:N_TEST], test.y[:N_TEST]
    ideal_top = top1(predict(Runtime(bundle), test.x, 128))
    cal, _ = calibrate(bundle, calib.x, spec.override(t_inference=86400.0), 1, "affine", y=calib.y)
    for t in study.times:
        acc, _, _ = evaluate_chip(cal, spec.override(t_inference=t), 1, test, ideal_top)
        assert got[t] == acc


def test_snr_columns_are_the_evaluated_chips_per_layer_snr(tmp_path):
    """snr_samples = 8: each row carries, per analog layer, the SNR and the SNR after the
    per-channel affine fit of the very chip its accuracy came from (evaluate_chip run here
    the same way); without snr_samples both are null, and a results file from before the
    affine column existed reads with it null."""
    import pyarrow.parquet as pq

    from xbar.converter import convert
    from xbar.data import load_dataset
    from xbar.hardware import preset
    from xbar.runtime.evaluate import predict
    from xbar.runtime.executor import Runtime
    from xbar.runtime.ranges import find_ranges
    from xbar.runtime.sweep import evaluate_chip, top1

    text = BASE_SPEC.replace('"hardware.adc.bits" = [4, 8]', '"hardware.adc.bits" = [8]') \
        .replace('seeds = "0-2"', 'seeds = "2"').replace('times = ["1s", "1y"]', 'times = ["1d"]') \
        .replace("[base]", "snr_samples = 8\n\n[base]")
    study = load_study(_spec(tmp_path, text))
    results, _ = Results.open(tmp_path / "res", study)
    engine.run_in_process(study, results)
    (row,) = read_rows(tmp_path / "res").to_pylist()

    spec = preset("pcm").override({"adc.bits": 8})
    bundle = convert(str(MODELS / "cnn_bn.onnx"), crossbar=(64, 64), hardware=spec)
    find_ranges(bundle, load_dataset(MODELS / "digits_calib.npz", bundle.graph["inputs"][0]).x, spec)
    test = load_dataset(MODELS / "digits_test.npz", bundle.graph["inputs"][0])
    test.x, test.y = test.x[:N_TEST], test.y[:N_TEST]
    ideal_top = top1(predict(Runtime(bundle), test.x, 128))
    acc, _, layers = evaluate_chip(bundle, spec.override(t_inference=86400.0), 2, test, ideal_top, snr_samples=8)
    assert row["accuracy"] == acc
    snr, fit = json.loads(row["layer_snr_db"]), json.loads(row["layer_affine_snr_db"])
    assert list(snr) == [r["layer"] for r in layers] == [l["name"] for l in bundle.layers if l["placement"] == "analog"]
    for r in layers:
        assert snr[r["layer"]] == round(r["snr_db"], 4) and fit[r["layer"]] == round(r["snr_after_affine_db"], 4)
        assert fit[r["layer"]] >= snr[r["layer"]]

    # A row file written before layer_affine_snr_db existed, beside the new one.
    part = next((tmp_path / "res" / "rows").glob("*.parquet"))
    old = pq.read_table(part).drop_columns(["layer_affine_snr_db"])
    pq.write_table(old, part.with_name("0" * 16 + ".parquet"))
    both = read_rows(tmp_path / "res").to_pylist()
    assert sorted(r["layer_affine_snr_db"] is None for r in both) == [False, True]


# ---------------------------------------------------------------- Dask


@pytest.mark.slow
def test_one_and_two_workers_are_bit_identical(tmp_path):
    study = load_study(_spec(tmp_path))
    for name, workers in (("w1", 1), ("w2", 2)):
        results, _ = Results.open(tmp_path / name, study)
        outcome = engine.run(study, results, workers=workers, echo=lambda s: None)
        assert outcome.workers == workers and outcome.finished == 6 and not outcome.failures
    results, _ = Results.open(tmp_path / "inproc", study)
    engine.run_in_process(study, results)
    a, b, c = (_result_rows(tmp_path / n) for n in ("w1", "w2", "inproc"))
    assert len(a) == 12 and a == b == c
    # Each distinct prepared bundle is converted once and kept by its content hash.
    assert len(list((tmp_path / "w1" / "bundles").glob("*.xbar"))) == 2


@pytest.mark.slow
def test_resume_reruns_only_missing_tasks_and_a_lost_worker_is_replaced(tmp_path, monkeypatch):
    spec = _spec(tmp_path)
    out = tmp_path / "res"
    marker = tmp_path / "crashed"
    monkeypatch.setenv(CRASH_ONCE_ENV, str(marker))  # the first chip task kills its worker process
    r = CliRunner().invoke(cli, ["sweep", str(spec), "-o", str(out), "--workers", "2"])
    assert r.exit_code == 0, r.output
    assert marker.exists()  # a worker did die mid-sweep ...
    full = _result_rows(out)
    assert len(full) == 12  # ... and every row is there
    monkeypatch.delenv(CRASH_ONCE_ENV)

    # A killed sweep: one task's file missing, a writer's temporary file left behind.
    parts = sorted((out / "rows").glob("*.parquet"))
    parts[3].unlink()
    (out / "rows" / f".{parts[0].name}.tmp999").write_bytes(b"half a file")
    r = CliRunner().invoke(cli, ["sweep", str(spec), "-o", str(out), "--workers", "1"])
    assert r.exit_code == 0, r.output
    assert "resuming: 5 of 6 tasks already done" in r.output and "1 of 1 chip task(s) finished" in r.output
    assert _result_rows(out) == full
    assert not list((out / "rows").glob(".*"))

    r = CliRunner().invoke(cli, ["sweep", str(spec), "-o", str(out)])
    assert r.exit_code == 0 and "nothing to run" in r.output


@pytest.mark.slow
def test_changed_spec_is_refused_unless_forced(tmp_path):
    out = tmp_path / "res"
    study = load_study(_spec(tmp_path))
    results, _ = Results.open(out, study)
    engine.run_in_process(study, results)
    before = _result_rows(out)
    changed = _spec(tmp_path, BASE_SPEC.replace("[4, 8]", "[4, 6]"), "changed.toml")
    r = CliRunner().invoke(cli, ["sweep", str(changed), "-o", str(out)])
    assert r.exit_code == 1 and "holds the results of another spec" in r.output and "--force" in r.output
    assert _result_rows(out) == before  # refused: nothing touched

    study2 = load_study(changed)
    results2, note = Results.open(out, study2, force=True)
    assert "kept 3 finished tasks" in note and "deleted 3" in note
    assert len(results2.done()) == 3
    assert (out / "spec.toml").read_text() == changed.read_text()


def test_not_a_results_folder_is_refused(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    study = load_study(_spec(tmp_path))
    with pytest.raises(SpecError, match="not a sweep results folder"):
        Results.open(tmp_path, study)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


@pytest.mark.slow
def test_failing_point_is_reported_and_other_rows_kept(tmp_path):
    text = BASE_SPEC.replace('"hardware.adc.bits" = [4, 8]', '"mapping.digital" = [[], ["no_such_layer"]]') \
        .replace('seeds = "0-2"', 'seeds = "0"')
    out = tmp_path / "res"
    r = CliRunner().invoke(cli, ["sweep", str(_spec(tmp_path, text)), "-o", str(out), "--workers", "1"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "1 point(s) failed" in r.output and "no_such_layer" in r.output and "point 2" in r.output
    rows = read_rows(out).to_pylist()
    assert len(rows) == 2 and {r["mapping.digital"] for r in rows} == {"[]"}


def test_a_failing_model_is_named_by_its_path_in_the_spec(tmp_path):
    """A model the converter cannot read fails its point naming the spec's path, not the
    worker's temporary copy."""
    bad = tmp_path / "trunc.onnx"
    bad.write_bytes((MODELS / "cnn_bn.onnx").read_bytes()[:300])
    text = BASE_SPEC.replace(str(MODELS / "cnn_bn.onnx"), str(bad)).replace('seeds = "0-2"', 'seeds = "0"') \
        .replace('"hardware.adc.bits" = [4, 8]', '"hardware.adc.bits" = [8]')
    out = tmp_path / "res"
    r = CliRunner().invoke(cli, ["sweep", str(_spec(tmp_path, text)), "-o", str(out), "--workers", "1"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert f"{bad} is not a readable ONNX model" in " ".join(r.output.split()) and "xbar-sweep-" not in r.output


def test_sample_counts_a_fixed_batch_model_cannot_run_are_named(tmp_path):
    """A model fixed at batch 4 and test_samples = 10: the point failed naming '2 samples',
    the size of the last partial batch, a number the spec never gave; now the setting."""
    import onnx

    model = onnx.load(MODELS / "cnn_bn.onnx")
    for vi in (model.graph.input[0], model.graph.output[0]):
        vi.type.tensor_type.shape.dim[0].dim_value = 4
    fixed = tmp_path / "fixed4.onnx"
    onnx.save(model, fixed)
    text = BASE_SPEC.replace(str(MODELS / "cnn_bn.onnx"), str(fixed)).replace('seeds = "0-2"', 'seeds = "0"') \
        .replace('"hardware.adc.bits" = [4, 8]', '"hardware.adc.bits" = [8]').replace(f"test_samples = {N_TEST}",
                                                                                    "test_samples = 10")
    r = CliRunner().invoke(cli, ["sweep", str(_spec(tmp_path, text)), "-o", str(tmp_path / "res"), "--workers", "1"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert ("test_samples = 10, but the model fixes its batch at 4 and runs whole batches of it; set test_samples "
            "to a multiple of 4") in " ".join(r.output.split())


@pytest.mark.parametrize("entry", ["command", "module"])
def test_ctrl_c_stops_the_sweep_with_one_message(tmp_path, entry):
    """Ctrl-C reaches every process of the terminal's foreground group; the local cluster's
    workers ignore it (each printed a KeyboardInterrupt traceback) and the sweep stops with
    its one message, leaving no worker behind. Run as the installed command and as
    `python -m xbar.cli` (whose spawned workers re-imported it and failed on a cyclic import)."""
    import os
    import signal
    import subprocess
    import sys

    out = tmp_path / "res"
    script = Path(sys.executable).with_name("xbar")  # the installed command, as a user runs it
    if entry == "command" and not script.exists():
        pytest.skip(f"no xbar command beside {sys.executable}")
    head = [str(script)] if entry == "command" else [sys.executable, "-m", "xbar.cli"]
    cmd = head + ["sweep", str(_spec(tmp_path)), "-o", str(out), "--workers", "2"]
    import threading

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    watchdog = threading.Timer(180, lambda: os.killpg(proc.pid, signal.SIGKILL))  # a hang fails, not blocks
    watchdog.start()
    try:
        lines = []
        for line in proc.stdout:  # the workers are up once it says what it runs on
            lines.append(line)
            if line.startswith("running "):
                break
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole group
        rest, _ = proc.communicate(timeout=170)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = "".join(lines) + rest
    assert proc.returncode == 1, text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    assert "interrupted:" in text and "run the same command again to resume" in text, text


def test_dask_logs_are_silent_from_the_moment_ctrl_c_arrives():
    """Dask's cancel callback runs on the event loop's thread as the interrupt leaves its
    `sync`, before any `except` of the caller: the loggers must already be quiet when the
    KeyboardInterrupt is raised (CI once printed that callback's traceback), and be restored
    after."""
    import logging
    import os
    import signal
    import time

    tornado_app = logging.getLogger("tornado.application")
    assert tornado_app.isEnabledFor(logging.ERROR)
    seen = []
    with engine._LogsQuietOnCtrlC():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the handler runs at the next bytecode; never reached
        except KeyboardInterrupt:
            seen.append(tornado_app.isEnabledFor(logging.CRITICAL))
    assert seen == [False]
    assert tornado_app.isEnabledFor(logging.ERROR)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_interrupted_local_cluster_turns_its_workers_logging_off():
    """A worker closed mid-transfer logs a traceback on the shared terminal (CI: 'Exception
    while handling op gather ... ConnectionPool is closed'); before closing, an interrupted
    sweep turns logging off in its own workers."""
    import logging

    client, cluster = engine.connect(None, 1)
    try:
        assert client.run(lambda: logging.root.manager.disable) == {w: 0 for w in client.scheduler_info()["workers"]}
        engine._quiet_local_workers(client)
        assert set(client.run(lambda: logging.root.manager.disable).values()) == {logging.CRITICAL}
    finally:
        client.close()
        cluster.close()


def test_unreachable_scheduler_is_a_clear_error(tmp_path):
    r = CliRunner().invoke(cli, ["sweep", str(_spec(tmp_path)), "-o", str(tmp_path / "res"),
                                 "--scheduler", "tcp://127.0.0.1:9"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in r.output
    assert not (tmp_path / "res").exists()  # refused before the results folder is made


# ---------------------------------------------------------------- plot


def test_plot_table_and_figure(tmp_path):
    study = load_study(_spec(tmp_path))
    results, _ = Results.open(tmp_path / "res", study)
    engine.run_in_process(study, results)
    rows = read_rows(tmp_path / "res").to_pylist()
    r = CliRunner().invoke(cli, ["plot", str(tmp_path / "res"), "-o", str(tmp_path / "fig.png")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The table's cell for 4-bit ADC at 1 y is the mean, sample std and worst of those chips.
    v = np.array([100 * x["accuracy"] for x in rows if x["hardware.adc.bits"] == 4 and x["time"] == "1 y"])
    line = next(ln for ln in r.output.splitlines() if ln.startswith("4 "))
    assert f"{v.mean():.2f} ± {v.std(ddof=1):.2f} ({v.min():.2f}) n=3" in line
    r = CliRunner().invoke(cli, ["plot", str(tmp_path / "res"), "--x", "hardware.adc.bits", "--hue", "time",
                                 "-o", str(tmp_path / "fig.svg")])
    assert r.exit_code == 0 and (tmp_path / "fig.svg").exists()
    assert [ln[:3] for ln in r.output.splitlines()[3:5]] == ["1 s", "1 y"]  # times in time order
    r = CliRunner().invoke(cli, ["plot", str(tmp_path / "res"), "--x", "colour"])
    assert r.exit_code == 1 and "not a column" in r.output
    # A cell pools chips only: settings that neither --x nor --hue separates are refused.
    r = CliRunner().invoke(cli, ["plot", str(tmp_path / "res"), "--x", "hardware.adc.bits"])
    assert r.exit_code == 0, r.output  # --hue left out: every other setting, time included
    assert all(" n=3" in ln for ln in r.output.splitlines()[3:] if "±" in ln)
    r = CliRunner().invoke(cli, ["plot", str(tmp_path / "res"), "--x", "hardware.adc.bits", "--hue", ""])
    assert r.exit_code == 1 and "also differ in time (2 values)" in r.output and "--hue time" in r.output
    r = CliRunner().invoke(cli, ["plot", str(tmp_path / "res"), "--x", "time", "--hue", "time"])
    assert r.exit_code == 1 and "also the x axis" in r.output
    r = CliRunner().invoke(cli, ["plot", str(tmp_path / "res"), "-o", str(tmp_path / "fig.jpg")])
    assert r.exit_code == 1 and ".png, .svg or .pdf" in r.output and "±" not in r.output  # refused before the table
    r = CliRunner().invoke(cli, ["plot", str(tmp_path)])
    assert r.exit_code == 1 and "not a sweep results folder" in r.output


def test_example_spec_loads():
    study = load_study(ROOT / "examples" / "sweep.toml")
    assert len(study.points) == 2 and study.points[0].model == "resnet_bn"


def test_points_may_set_their_own_chips_times_and_calibration_chip(tmp_path):
    from xbar.sweep.spec import calibration_chip

    text = BASE_SPEC.replace('"hardware.adc.bits" = [4, 8]', '"calibration.method" = ["affine"]') + (
        '\n[[points]]\ntimes = ["1d"]\n"calibration.chip" = "seed + 100"\n'
        '\n[[points]]\nseeds = "5-6"\n"calibration.chip" = 3\n')
    study = load_study(_spec(tmp_path, text))
    a, b = study.points
    assert (a.seeds, a.times, b.seeds, b.times) == ([0, 1, 2], [86400.0], [5, 6], [1.0, 31557600.0])
    assert "seeds" not in study.columns and "times" not in study.columns
    assert [calibration_chip(a.calibration["chip"], s) for s in a.seeds] == [100, 101, 102]
    assert [calibration_chip(b.calibration["chip"], s) for s in b.seeds] == [3, 3]
    assert study.rows == 3 * 1 + 2 * 2 and "[t 1 d]" in a.label
    with pytest.raises(SpecError, match="negative seed"):
        load_study(_spec(tmp_path, text.replace("seed + 100", "seed-1")))
    with pytest.raises(SpecError, match="cannot be an axis"):
        load_study(_spec(tmp_path, BASE_SPEC + 'times = [["1s"], ["1d"]]\n'))


def test_compound_axis_moves_settings_together(tmp_path):
    text = BASE_SPEC.replace('"hardware.adc.bits" = [4, 8]',
                             'calibration = [{method = "none"}, {method = "affine"}, {method = "sgd", epochs = 2}]')
    study = load_study(_spec(tmp_path, text))
    assert [p.calibration for p in study.points] == [
        {"method": "none"}, {"method": "affine", "chip": "same", "time": "same"},
        {"method": "sgd", "chip": "same", "time": "same", "epochs": 2, "lr": 0.01, "loss": "distill"}]
    assert study.columns[-2:] == ["calibration.method", "calibration.epochs"]
    assert study.points[2].label == "calibration.method=sgd, calibration.epochs=2"
    bad = text.replace('{method = "none"}, ', '"none", ')
    with pytest.raises(SpecError, match="every value is a table"):
        load_study(_spec(tmp_path, bad))
    clash = text + '\n[[points]]\n"calibration.epochs" = 3\n'
    with pytest.raises(SpecError, match="both an axis and set by"):
        load_study(_spec(tmp_path, clash))


def test_identity_follows_content_not_location(tmp_path):
    """A clone elsewhere resumes the same results folder: keys hash the model's bytes, not its path."""
    import shutil

    here = load_study(_spec(tmp_path))
    other = tmp_path / "elsewhere"
    other.mkdir()
    shutil.copy(MODELS / "cnn_bn.onnx", other / "cnn_bn.onnx")
    moved = load_study(_spec(tmp_path, BASE_SPEC.replace(str(MODELS / "cnn_bn.onnx"), str(other / "cnn_bn.onnx")),
                             "moved.toml"))
    assert moved.fingerprint() == here.fingerprint()
    (other / "cnn_bn.onnx").write_bytes((MODELS / "resnet_bn.onnx").read_bytes())  # same name, other model
    changed = load_study(_spec(tmp_path, BASE_SPEC.replace(str(MODELS / "cnn_bn.onnx"),
                                                           str(other / "cnn_bn.onnx")), "changed.toml"))
    assert changed.fingerprint() != here.fingerprint()


@pytest.mark.slow
def test_existing_cluster_by_address(tmp_path):
    """--scheduler submits to a cluster the sweep did not start; the rows are the same."""
    import logging

    import distributed

    spec = _spec(tmp_path, BASE_SPEC.replace('seeds = "0-2"', 'seeds = "0-1"'))
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                                  scheduler_kwargs={"dashboard_address": ":0"}, silence_logs=logging.ERROR) as cluster:
        r = CliRunner().invoke(cli, ["sweep", str(spec), "-o", str(tmp_path / "remote"), "--scheduler",
                                     cluster.scheduler_address])
        assert r.exit_code == 0, r.output
        assert f"on {cluster.scheduler_address}" in r.output
    study = load_study(spec)
    results, _ = Results.open(tmp_path / "local", study)
    engine.run_in_process(study, results)
    assert _result_rows(tmp_path / "remote") == _result_rows(tmp_path / "local")


def test_plot_one_chip_has_no_spread(tmp_path):
    """A cell of one chip shows its mean and worst without '± 0.00', and draws no band."""
    from xbar.sweep.plot import Cell, Summary, figure, text_table

    cells = [Cell(hue=(), x=3600.0, values=[91.5], ideal=0.95),
             Cell(hue=(), x=86400.0, values=[90.0, 88.0], ideal=0.95)]
    s = Summary(x="time", hue=[], metric="accuracy", cells=cells, x_values=[3600.0, 86400.0], hues=[()],
                x_labels={3600.0: "1 h", 86400.0: "1 d"}, rows=3)
    line = text_table(s).splitlines()[-1]
    assert "91.50 (91.50) n=1" in line and "91.50 ±" not in line
    assert f"89.00 ± {np.std([90.0, 88.0], ddof=1):.2f} (88.00) n=2" in line
    assert figure(s, tmp_path / "one.png").read_bytes()[:4] == b"\x89PNG"
    assert text_table(s).splitlines()[1].split()[-1] == "ideal" and line.endswith("95.00")


def test_plot_agreement_has_no_ideal_column():
    """Agreement is with ideal hardware; its table showed the ideal accuracy under 'ideal', so
    chips seemed to agree more than ideal hardware scores (found by a hunt)."""
    from xbar.sweep.plot import Cell, Summary, text_table

    s = Summary(x="time", hue=[], metric="agreement", cells=[Cell(hue=(), x=3600.0, values=[99.7], ideal=0.9956)],
                x_values=[3600.0], hues=[()], x_labels={3600.0: "1 h"}, rows=1)
    table = text_table(s)
    assert "ideal" not in table.splitlines()[1] and "99.56" not in table and "99.70" in table


@pytest.mark.parametrize("change, message", [
    ('hardware = "pcm"', "'hardware.adc.bits' is set in [base] and swept in [axes]"),
    ('hardware = "pcmm"', "hardware 'pcmm' is neither a preset (ideal, pcm, rram) nor a file"),
])
def test_base_settings_that_cannot_run_are_refused(tmp_path, change, message):
    """A [base] setting every axis value overrides would never run; an unknown hardware name
    lists the presets (once: it was prefixed twice)."""
    extra = '\n"hardware.adc.bits" = 6' if "preset" not in message else ""
    text = BASE_SPEC.replace('hardware = "pcm"', change + extra)
    with pytest.raises(SpecError) as info:
        load_study(_spec(tmp_path, text))
    assert message in str(info.value) and str(info.value).count("spec.toml") == 1, str(info.value)
