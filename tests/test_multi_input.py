"""Models with several inputs (a text encoder's input_ids and attention_mask): data files
hold one array per input under its name, and eval (with the onnxruntime reference),
--calib-data and calibrate run them; the training side refuses them, saying so."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from xbar.cli import cli

VOCAB, SEQ, DIM, CLASSES, N = 30, 7, 6, 3, 48


def _encoder() -> onnx.ModelProto:
    """tokens and mask [batch, seq] -> embedding · mask -> masked mean over seq -> MatMul ->
    tanh -> Gemm head [batch, classes]."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 1, (VOCAB, DIM)).astype(np.float32), "table"),
             numpy_helper.from_array(rng.normal(0, 0.5, (DIM, DIM)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.5, (DIM, CLASSES)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array([-1], np.int64), "last"),
             numpy_helper.from_array(np.array([1], np.int64), "seq_axis")]
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["e"]),
             helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["m", "last"], ["m3"]),
             helper.make_node("Mul", ["e", "m3"], ["em"]),
             helper.make_node("ReduceSum", ["em", "seq_axis"], ["s"], keepdims=0),
             helper.make_node("ReduceSum", ["m3", "seq_axis"], ["cnt"], keepdims=0),
             helper.make_node("Div", ["s", "cnt"], ["pooled"]),
             helper.make_node("MatMul", ["pooled", "w1"], ["h"], name="proj"),
             helper.make_node("Tanh", ["h"], ["t"]),
             helper.make_node("MatMul", ["t", "w2"], ["logits"], name="head")]
    graph = helper.make_graph(nodes, "enc", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
                                             helper.make_tensor_value_info("attention_mask", TensorProto.INT64,
                                                                           ["batch", "seq"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("multi")
    onnx.save(_encoder(), root / "m.onnx")
    rng = np.random.default_rng(1)
    ids = rng.integers(1, VOCAB, (N, SEQ))
    mask = np.ones((N, SEQ), np.int64)
    mask[:, 4:] = rng.integers(0, 2, (N, SEQ - 4))
    import onnxruntime as ort

    logits = ort.InferenceSession(str(root / "m.onnx")).run(None, {"input_ids": ids, "attention_mask": mask})[0]
    np.savez(root / "d.npz", input_ids=ids, attention_mask=mask, y=logits.argmax(1))
    np.savez(root / "x_first.npz", x=ids, attention_mask=mask)
    np.savez(root / "missing.npz", input_ids=ids)
    np.savez(root / "uneven.npz", input_ids=ids, attention_mask=mask[:-1])
    run = CliRunner()
    assert run.invoke(cli, ["convert", str(root / "m.onnx"), "-o", str(root / "m.xbar"), "--crossbar", "8x8"]).exit_code == 0
    return root


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_eval_reads_one_array_per_input_and_matches_the_reference(files):
    r = _run("eval", files / "m.xbar", "--data", files / "d.npz", "--reference", files / "m.onnx", "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res["ideal_accuracy"] == 1.0 and res["reference"]["agreement"] == 1.0, res
    r = _run("eval", files / "m.xbar", "--data", files / "x_first.npz", "--hardware", "pcm", "--seeds", "0-1", "--json")
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("name, needles", [
    ("missing.npz", ["takes 2 inputs (input_ids, attention_mask)", "no array for 'attention_mask'",
                     "numpy.savez(path, input_ids=..., attention_mask=..., y=...)"]),
    ("uneven.npz", ["different numbers of samples", "input_ids 48", "attention_mask 47"]),
])
def test_bad_multi_input_files_are_named(files, name, needles):
    r = _run("eval", files / "m.xbar", "--data", files / name)
    flat = " ".join(r.output.split())
    assert r.exit_code == 1 and "Traceback" not in r.output and all(n in flat for n in needles), r.output


def test_calib_data_and_calibrate_run_on_both_inputs(files):
    r = _run("convert", files / "m.onnx", "-o", files / "r.xbar", "--crossbar", "8x8", "--hardware", "pcm",
             "--calib-data", files / "d.npz")
    assert r.exit_code == 0, r.output
    r = _run("calibrate", files / "r.xbar", "--data", files / "d.npz", "--drift", "1y",
             "--set", "drift_compensation=off", "-o", files / "c.xbar")
    assert r.exit_code == 0, r.output
    before, after = (float(v) for v in
                     r.output.split("top-1 agreement with ideal hardware: ")[1].split(" after")[0]
                     .replace("%", "").split(" before, "))
    assert after >= before, r.output


def test_the_training_side_refuses_several_inputs_clearly(files):
    pytest.importorskip("torch")
    r = _run("calibrate", files / "m.xbar", "--data", files / "d.npz", "--hardware", "pcm", "--drift", "1d",
             "--method", "sgd", "-o", files / "s.xbar")
    assert r.exit_code == 1 and "runs models with one input" in r.output and "Traceback" not in r.output, r.output
    assert not (files / "s.xbar").exists()


def test_arrays_the_model_does_not_read_are_not_checked(files, tmp_path):
    d = np.load(files / "d.npz")
    np.savez(tmp_path / "extra.npz", input_ids=d["input_ids"], attention_mask=d["attention_mask"], y=d["y"],
             meta=np.array(["a", "b", "c"]))
    r = _run("eval", files / "m.xbar", "--data", tmp_path / "extra.npz", "--json")
    assert r.exit_code == 0 and json.loads(r.output)["ideal_accuracy"] == 1.0, r.output


def test_float_arrays_for_integer_inputs_must_hold_whole_numbers(files, tmp_path):
    d = np.load(files / "d.npz")
    np.savez(tmp_path / "whole.npz", input_ids=d["input_ids"].astype(np.float32), attention_mask=d["attention_mask"])
    assert _run("eval", files / "m.xbar", "--data", tmp_path / "whole.npz").exit_code == 0
    np.savez(tmp_path / "frac.npz", input_ids=d["input_ids"], attention_mask=d["attention_mask"] * 0.5)
    r = _run("eval", files / "m.xbar", "--data", tmp_path / "frac.npz")
    flat = " ".join(r.output.split())
    assert r.exit_code == 1 and "'attention_mask' (int64) cannot take" in flat and "e.g. 0.5" in flat, r.output


def test_an_input_named_y_takes_the_files_y():
    """The file's y is the model's input y then, and there are no labels."""
    from xbar.data import Dataset, fit_to_model

    specs = [{"name": "x", "shape": [None, 2], "dtype": "float32"}, {"name": "y", "shape": [None, 3], "dtype": "float32"}]
    data = fit_to_model(Dataset(x=np.ones((4, 2)), y=np.zeros((4, 3)), path="d.npz"), specs)
    assert data.y is None and sorted(data.x) == ["x", "y"] and data.x["y"].shape == (4, 3)


def test_integer_inputs_refuse_values_out_of_their_range():
    """A uint8 image input fed 300 (float or int64) was wrapped to 44 silently."""
    from xbar.data import Dataset, fit_to_model
    from xbar.errors import DataError

    spec = {"name": "img", "shape": [None, 2], "dtype": "uint8"}
    for values in (np.array([[3.0, 300.0]]), np.array([[3, -1]])):
        with pytest.raises(DataError, match="whole numbers from 0 to 255"):
            fit_to_model(Dataset(x=values, y=None, path="d.npz"), spec)
    assert fit_to_model(Dataset(x=np.array([[3, 255]]), y=None, path="d.npz"), spec).x.dtype == np.uint8


def test_messages_name_the_key_the_array_was_read_from():
    """A one-input model's array stored under its input's name was called 'x' in errors."""
    from xbar.data import Dataset, fit_to_model
    from xbar.errors import DataError

    spec = {"name": "ids", "shape": [None, 3], "dtype": "int64"}
    for key in ("ids", "x"):
        with pytest.raises(DataError, match=f"d.npz: {key} holds 1 values"):
            fit_to_model(Dataset(x={key: np.array([[1.0, 2.5, 3.0]])}, y=None, path="d.npz"), spec)


def _argmax_first(tmp_path):
    """x -> MatMul logits; outputs (ArgMax of the logits [N] int64, logits)."""
    w = numpy_helper.from_array(np.random.default_rng(3).normal(0, 1, (5, 4)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["logits"], name="fc"),
             helper.make_node("ArgMax", ["logits"], ["cls"], axis=1, keepdims=0)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])],
                              [helper.make_tensor_value_info("cls", TensorProto.INT64, ["N"]),
                               helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "a.onnx")
    x = np.random.default_rng(4).normal(0, 1, (40, 5)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=(x @ numpy_helper.to_array(w)).argmax(1))
    assert _run("convert", tmp_path / "a.onnx", "-o", tmp_path / "a.xbar").exit_code == 0


def test_an_argmax_first_output_is_the_prediction(tmp_path):
    """One integer per sample is the predicted class: labels score against it (they were
    refused as outside 'class indices 0 to 0'), and a chip's agreement reads it (it was
    always 100 %, the argmax of one value); training refuses it, as it has no gradient."""
    _argmax_first(tmp_path)
    r = _run("eval", tmp_path / "a.xbar", "--data", tmp_path / "d.npz", "--json")
    assert r.exit_code == 0 and json.loads(r.output)["ideal_accuracy"] == 1.0, r.output
    r = _run("eval", tmp_path / "a.xbar", "--data", tmp_path / "d.npz", "--hardware", "pcm", "--drift", "1y",
             "--set", "device.drift_scale=50", "--set", "drift_compensation=off", "--json")
    assert r.exit_code == 0 and json.loads(r.output)["rows"][0]["agreement_with_ideal"]["mean"] < 1.0, r.output
    pytest.importorskip("torch")
    r = _run("calibrate", tmp_path / "a.xbar", "--data", tmp_path / "d.npz", "--hardware", "pcm", "--drift", "1d",
             "--method", "sgd", "-o", tmp_path / "s.xbar")
    assert r.exit_code == 1 and "no gradient" in r.output and "Traceback" not in r.output, r.output


def test_eval_warns_that_agreement_over_several_positions_is_per_sample(files, tmp_path):
    """[N, seq, vocab] outputs: agreement is of each sample's largest value, and eval says so."""
    from onnx import numpy_helper as nh

    table = nh.from_array(np.random.default_rng(5).normal(0, 1, (VOCAB, 4)).astype(np.float32), "t")
    graph = helper.make_graph([helper.make_node("Gather", ["t", "ids"], ["lm"])], "g",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "seq"])],
                              [helper.make_tensor_value_info("lm", TensorProto.FLOAT, ["N", "seq", 4])], [table])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "lm.onnx")
    np.savez(tmp_path / "t.npz", x=np.random.default_rng(6).integers(0, VOCAB, (8, 5)))
    assert _run("convert", tmp_path / "lm.onnx", "-o", tmp_path / "lm.xbar").exit_code == 0
    r = _run("eval", tmp_path / "lm.xbar", "--data", tmp_path / "t.npz", "--json")
    assert r.exit_code == 0 and any("several positions" in w for w in json.loads(r.stdout)["warnings"]), r.output


def test_an_input_every_sample_shares_is_fed_whole_with_every_batch(tmp_path):
    """position_ids declared [1, seq] beside input_ids [batch, seq] (onnxruntime broadcasts
    it): the data file holds it once, and every batch gets it whole; N rows of it are
    refused, saying to store it once."""
    rng = np.random.default_rng(7)
    inits = [numpy_helper.from_array(rng.normal(0, 1, (VOCAB, DIM)).astype(np.float32), "table"),
             numpy_helper.from_array(rng.normal(0, 1, (SEQ, DIM)).astype(np.float32), "positions"),
             numpy_helper.from_array(rng.normal(0, 1, (DIM, CLASSES)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([1], np.int64), "seq_axis")]
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["e"]),
             helper.make_node("Gather", ["positions", "position_ids"], ["p"]),
             helper.make_node("Add", ["e", "p"], ["s"]),
             helper.make_node("ReduceMean", ["s", "seq_axis"], ["m"], keepdims=0),
             helper.make_node("MatMul", ["m", "w"], ["logits"], name="head")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["N", "seq"]),
                                           helper.make_tensor_value_info("position_ids", TensorProto.INT64, [1, "seq"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "p.onnx")
    ids, pos = rng.integers(0, VOCAB, (10, SEQ)), np.arange(SEQ)[None]
    np.savez(tmp_path / "once.npz", input_ids=ids, position_ids=pos)
    np.savez(tmp_path / "rows.npz", input_ids=ids, position_ids=np.repeat(pos, 10, axis=0))
    assert _run("convert", tmp_path / "p.onnx", "-o", tmp_path / "p.xbar").exit_code == 0
    r = _run("eval", tmp_path / "p.xbar", "--data", tmp_path / "once.npz", "--reference", tmp_path / "p.onnx",
             "--batch-size", "4", "--json")
    res = json.loads(r.stdout)
    assert r.exit_code == 0 and res["n"] == 10 and res["reference"]["agreement"] == 1.0, r.output
    r = _run("eval", tmp_path / "p.xbar", "--data", tmp_path / "rows.npz")
    assert r.exit_code == 1 and "store it once" in " ".join(r.output.split()), r.output


def test_a_reference_onnxruntime_cannot_load_is_one_message_without_its_log(tmp_path, capfd):
    """onnxruntime printed its own red log line (ANSI escapes, even into a file) before
    xbar's error (found by a hunt): an RNN with layout=1, which it cannot load."""
    from xbar.errors import ModelError
    from xbar.reference import onnxruntime_fn

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(1, 4, 3)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.normal(size=(1, 4, 4)).astype(np.float32), "R")]
    node = helper.make_node("RNN", ["x", "W", "R"], ["Y"], hidden_size=4, layout=1)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 3])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "r.onnx")
    capfd.readouterr()
    with pytest.raises(ModelError, match="onnxruntime cannot load the reference model"):
        onnxruntime_fn(tmp_path / "r.onnx")
    out, err = capfd.readouterr()
    assert "onnxruntime" not in err + out and "\x1b[" not in err + out, err
