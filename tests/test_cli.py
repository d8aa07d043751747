"""The command line end to end, and its errors: one paragraph, no traceback, nothing clobbered."""

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from xbar.cli import cli


@pytest.fixture()
def run():
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)

    return invoke


def _user_error(result, *needles):
    assert result.exit_code != 0
    text = result.output
    assert "Traceback" not in text
    for needle in needles:
        assert needle in text, text
    return text


def test_convert_info_eval(run, models_dir, tmp_path):
    out = tmp_path / "r.xbar"
    r = run("convert", models_dir / "resnet_bn.onnx", "-o", out, "--crossbar", "64x64")
    assert r.exit_code == 0, r.output
    assert "tiles of 64x64" in r.output
    r = run("info", out)
    assert r.exit_code == 0 and "/fc/Gemm" in r.output and "util" in r.output
    info = json.loads(run("info", out, "--json").output)
    assert info["mapping"]["rows"] == 64 and len(info["layers"]) == 9
    r = run("eval", out, "--data", models_dir / "digits_test.npz", "--reference", models_dir / "resnet_bn.onnx",
            "--json", "--batch-size", "100")
    res = json.loads(r.output)
    ref = res["reference"]
    assert res["n"] == 450 and ref["agreement"] == 1.0 and ref["max_abs_diff"] < 1e-3 and ref["same_model"]
    # float32 rounding of logits of order 10: relative to the largest |output| well under 1e-5.
    assert ref["max_rel_diff"] < 1e-5
    assert res["ideal_accuracy"] == ref["accuracy"] and res["rows"] == [] and res["hardware"] is None


def test_convert_does_not_overwrite(run, models_dir, tmp_path):
    out = tmp_path / "r.xbar"
    out.write_bytes(b"keep me")
    _user_error(run("convert", models_dir / "cnn_bn.onnx", "-o", out), "already exists", "--force")
    assert out.read_bytes() == b"keep me"
    assert run("convert", models_dir / "cnn_bn.onnx", "-o", out, "--force").exit_code == 0


def test_help_is_useful(run):
    assert "convert" in run("--help").output
    for cmd, word in [("convert", "--crossbar"), ("eval", "--reference"), ("info", "--json")]:
        assert word in run(cmd, "--help").output


def _save(model, path):
    onnx.save(model, str(path))
    return path


def test_unsupported_op_names_node_op_and_opset(run, tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    node = helper.make_node("Hardmax", ["x"], ["y"], name="the_hardmax")
    m = helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    path = _save(m, tmp_path / "h.onnx")
    _user_error(run("convert", path, "-o", tmp_path / "h.xbar"), "the_hardmax", "'Hardmax'", "opset 17")
    assert not (tmp_path / "h.xbar").exists()


def test_every_unsupported_op_in_one_paragraph(run, tmp_path):
    """All unsupported ops at once (count, first three nodes, opset), exit status 1, no traceback."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    nodes = [helper.make_node("Hardmax", ["x" if i == 0 else f"h{i}"], [f"h{i + 1}"], name=f"hm{i}") for i in range(5)]
    nodes += [helper.make_node("Det", ["h5"], ["d"], name="det"), helper.make_node("Relu", ["d"], ["y"], name="relu")]
    path = _save(helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 18)]),
                 tmp_path / "m.onnx")
    r = run("convert", path, "-o", tmp_path / "m.xbar")
    assert r.exit_code == 1
    text = _user_error(r, "opset 18", "2 ops", "'Hardmax' (5 nodes: 'hm0', 'hm1', 'hm2', ...)", "'Det' (1 node: 'det')",
                       "`xbar ops`")
    assert "hm3" not in text and "Softsign" not in text  # first three nodes only; not the whole vocabulary
    assert len(text) < 700, text


def test_ops_command(run):
    from xbar.ops import ANALOG_OPS, DIGITAL_OPS

    r = run("ops")
    assert r.exit_code == 0
    assert "LayerNormalization" in r.output and "Conv, Gemm, MatMul" in r.output
    assert len(r.output.splitlines()) < 20
    data = json.loads(run("ops", "--json").output)
    assert data["analog"] == sorted(ANALOG_OPS) and data["digital"] == sorted(DIGITAL_OPS)
    assert "ops" in run("--help").output


def test_truncated_and_garbage_files(run, models_dir, tmp_path):
    data = (models_dir / "cnn_bn.onnx").read_bytes()
    (tmp_path / "t.onnx").write_bytes(data[: len(data) // 3])
    _user_error(run("convert", tmp_path / "t.onnx"), "t.onnx")
    (tmp_path / "g.onnx").write_bytes(b"\x00\xffnot a model at all" * 10)
    _user_error(run("convert", tmp_path / "g.onnx"), "g.onnx")
    _user_error(run("convert", tmp_path / "missing.onnx"), "missing.onnx", "no such file")


def test_non_constant_weight(run, tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    w = helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    node = helper.make_node("Gemm", ["x", "w"], ["y"], name="fc")
    m = helper.make_model(helper.make_graph([node], "g", [x, w], [y]), opset_imports=[helper.make_opsetid("", 17)])
    _user_error(run("convert", _save(m, tmp_path / "w.onnx")), "'fc'", "'w'", "not a constant")


def test_bad_data_shape_and_file(run, models_dir, tmp_path):
    out = tmp_path / "c.xbar"
    run("convert", models_dir / "cnn_bn.onnx", "-o", out)
    np.savez(tmp_path / "flat.npz", x=np.zeros((5, 256), np.float32), y=np.zeros(5, np.int64))
    _user_error(run("eval", out, "--data", tmp_path / "flat.npz"), "flat.npz", "(5, 256)", "(N, 1, 16, 16)")
    np.savez(tmp_path / "nox.npz", inputs=np.zeros((5, 1, 16, 16), np.float32))
    _user_error(run("eval", out, "--data", tmp_path / "nox.npz"), "no array 'x'")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    _user_error(run("eval", out, "--data", tmp_path / "junk.npz"), "junk.npz")
    _user_error(run("eval", tmp_path / "none.xbar", "--data", tmp_path / "flat.npz"), "none.xbar")


def test_a_data_shape_error_names_the_free_dimensions():
    """Only the samples axis is N; another free dimension shows by its name in the model,
    or as ? where only shape inference names it."""
    from xbar.data import Dataset, fit_to_model
    from xbar.errors import DataError

    spec = {"name": "x", "shape": [None, None, None, 6], "dim_names": ["batch", "seq", "unk__3", None],
            "dtype": "float32"}
    with pytest.raises(DataError, match=r"expects \(N, seq, \?, 6\)"):
        fit_to_model(Dataset(np.zeros((16, 12, 3, 5), np.float32), None, "d.npz"), spec)


def test_labels_for_an_output_with_several_positions_are_refused(run, tmp_path):
    """tokens [N, seq] -> embedding -> per-token head -> [N, seq, vocab]: one label per
    sample has no meaning there (it was scored against the argmax of all seq×vocab values);
    without labels eval reports agreement."""
    from onnx import numpy_helper

    rng = np.random.default_rng(0)
    table = numpy_helper.from_array(rng.normal(0, 1, (5, 3)).astype(np.float32), "table")
    head = numpy_helper.from_array(rng.normal(0, 1, (3, 5)).astype(np.float32), "head")
    nodes = [helper.make_node("Gather", ["table", "tokens"], ["e"], name="embed"),
             helper.make_node("MatMul", ["e", "head"], ["logits"], name="lm_head")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["N", "seq"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", "seq", 5])],
                              [table, head])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    assert run("convert", _save(model, tmp_path / "lm.onnx"), "-o", tmp_path / "lm.xbar").exit_code == 0
    tokens = rng.integers(0, 5, (8, 4))
    np.savez(tmp_path / "y.npz", x=tokens, y=np.zeros(8, np.int64))
    _user_error(run("eval", tmp_path / "lm.xbar", "--data", tmp_path / "y.npz"), "seq×5 values per sample",
                "Leave y out")
    np.savez(tmp_path / "x.npz", x=tokens)
    r = run("eval", tmp_path / "lm.xbar", "--data", tmp_path / "x.npz")
    assert r.exit_code == 0 and "agreement" in r.output, r.output


def test_info_layer_table_shows_no_bias_and_unnamed_dimensions_plainly(run, tmp_path):
    """A layer without a bias shows '-' under affine (not 'bias'); a per-sample dimension
    only shape inference names (unk__N) shows as '?', a named one by its name."""
    from onnx import numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 1, (4, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(0, 1, (3, 2)).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.normal(0, 1, (2,)).astype(np.float32), "b2")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="nobias"),
             helper.make_node("Reshape", ["h", "flat"], ["hf"], name="flatten"),
             helper.make_node("Gemm", ["hf", "w2", "b2"], ["y"], name="withbias")]
    inits.append(numpy_helper.from_array(np.array([-1, 3], np.int64), "flat"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "unk__1", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    assert run("convert", _save(model, tmp_path / "m.onnx"), "-o", tmp_path / "m.xbar").exit_code == 0
    rows = {line.split()[0]: line.split() for line in run("info", tmp_path / "m.xbar").output.splitlines()
            if line.startswith(("nobias", "withbias"))}
    assert rows["nobias"][3] == "?×3" and rows["nobias"][-1] == "-", rows
    assert "unk__" not in run("info", tmp_path / "m.xbar").output
    assert rows["withbias"][-1] == "bias", rows


def test_unknown_digital_layer_lists_the_real_ones(run, models_dir, tmp_path):
    _user_error(run("convert", models_dir / "cnn_bn.onnx", "-o", tmp_path / "d.xbar", "--digital", "nope"),
                "nope", "Analog layers are")


def test_bad_crossbar_option(run, models_dir, tmp_path):
    _user_error(run("convert", models_dir / "cnn_bn.onnx", "-o", tmp_path / "d.xbar", "--crossbar", "128x127"), "even")
    _user_error(run("convert", models_dir / "cnn_bn.onnx", "-o", tmp_path / "d.xbar", "--crossbar", "big"), "ROWSxCOLS")


@pytest.fixture(scope="module")
def pcm_bundle(tmp_path_factory, models_dir):
    out = tmp_path_factory.mktemp("pcm") / "p.xbar"
    r = CliRunner().invoke(cli, ["convert", str(models_dir / "resnet_bn.onnx"), "-o", str(out), "--hardware", "pcm",
                                 "--set", "circuit.ir_drop=false", "--calib-data", str(models_dir / "digits_calib.npz")])
    assert r.exit_code == 0, r.output
    return out


def test_eval_over_chips_and_times(run, pcm_bundle, models_dir):
    r = run("eval", pcm_bundle, "--data", models_dir / "digits_test.npz", "--seeds", "0-2", "--drift", "1s,1d", "--json")
    res = json.loads(r.output)
    assert res["seeds"] == [0, 1, 2] and [row["t"] for row in res["rows"]] == [1.0, 86400.0]
    early, late = res["rows"]
    assert len(early["accuracy"]["values"]) == 3
    # Drift over a day costs accuracy on this chip model, and ideal hardware is the ceiling.
    assert late["accuracy"]["mean"] < early["accuracy"]["mean"] <= res["ideal_accuracy"] + 0.01
    assert res["hardware"]["device"]["model"] == "pcm"
    text = run("eval", pcm_bundle, "--data", models_dir / "digits_test.npz", "--seeds", "0-1", "--drift", "1h").output
    assert "mean ± sample std" in text and "1 h" in text and "device" in text


def test_eval_is_reproducible_and_ablations_work(run, pcm_bundle, models_dir):
    args = ("eval", pcm_bundle, "--data", models_dir / "digits_test.npz", "--seeds", "3", "--drift", "1d", "--json")
    a, b = json.loads(run(*args).output), json.loads(run(*args).output)
    assert a["rows"] == b["rows"]
    only_adc = json.loads(run(*args, "--only", "adc").output)
    assert only_adc["hardware"]["device"]["drift"] is False
    assert only_adc["rows"][0]["accuracy"]["mean"] >= a["rows"][0]["accuracy"]["mean"]
    both = json.loads(run(*args, "--only", "drift,read").output)
    assert both == json.loads(run(*args, "--only", "drift", "--only", "read").output)
    assert both["hardware"]["device"]["drift"] and both["hardware"]["device"]["read_noise"]
    assert not both["hardware"]["device"]["prog_noise"]
    no_drift = json.loads(run(*args, "--without", "drift").output)
    assert no_drift["hardware"]["device"]["drift"] is False and no_drift["hardware"]["device"]["prog_noise"] is True


def test_eval_per_layer(run, pcm_bundle, models_dir):
    res = json.loads(run("eval", pcm_bundle, "--data", models_dir / "digits_test.npz", "--per-layer", "--json",
                         "--seeds", "4,2", "--drift", "1s,1d").output)
    d = res["per_layer"]
    assert (d["seed"], d["t"], d["samples"]) == (4, 86400.0, 256)
    rows = d["layers"]
    assert len(rows) == 9 and [r["snr_db"] for r in rows] == sorted(r["snr_db"] for r in rows)
    assert all(r["dominant"] in ("programming", "read", "drift", "dac", "adc") for r in rows)


@pytest.mark.parametrize("args,needles", [
    (("--drift", "yesterday"), ["yesterday"]),
    (("--hardware", "quantum"), ["quantum", "pcm"]),
    (("--set", "adc.bits=0"), ["adc.bits"]),
    (("--set", "adc.bitz=4"), ["bitz"]),
    (("--only", "gravity"), ["gravity", "ir-drop"]),
    (("--seeds", "5-2"), ["5-2"]),
])
def test_eval_rejects_bad_hardware_options(run, pcm_bundle, models_dir, args, needles):
    _user_error(run("eval", pcm_bundle, "--data", models_dir / "digits_test.npz", *args), *needles)


def _with_initializer(models_dir, change):
    m = onnx.load(str(models_dir / "resnet_bn.onnx"))
    for init in m.graph.initializer:
        a = numpy_helper.to_array(init)
        if a.ndim == 4:  # the first convolution's weight
            a = a.copy()
            change(a)
            init.CopyFrom(numpy_helper.from_array(a, init.name))
            return m, init.name
    raise AssertionError("no conv weight")


@pytest.mark.parametrize("value,word", [(np.nan, "1 NaN"), (np.inf, "1 +Inf"), (-np.inf, "1 -Inf")])
def test_non_finite_weights_are_refused(run, models_dir, tmp_path, value, word):
    m, name = _with_initializer(models_dir, lambda a: a.flat.__setitem__(5, value))
    path = _save(m, tmp_path / "bad.onnx")
    _user_error(run("convert", path, "-o", tmp_path / "bad.xbar"), "bad.onnx", repr(name), "/stem/stem.0/Conv", word)
    assert not (tmp_path / "bad.xbar").exists()


def test_opset_newer_than_onnx_knows_is_refused(run, models_dir, tmp_path):
    m = onnx.load(str(models_dir / "cnn_bn.onnx"))
    for imp in m.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = 99
    path = _save(m, tmp_path / "future.onnx")
    newest = onnx.defs.onnx_opset_version()
    _user_error(run("convert", path, "-o", tmp_path / "f.xbar"), "future.onnx", "opset 99", f"1 to {newest}")
    assert not (tmp_path / "f.xbar").exists()


def test_labels_outside_the_output_are_refused(run, models_dir, tmp_path):
    out = tmp_path / "c.xbar"
    run("convert", models_dir / "cnn_bn.onnx", "-o", out)
    d = np.load(models_dir / "digits_test.npz")
    y = d["y"].copy()
    y[:3] = [10, -1, 12]
    np.savez(tmp_path / "bad_y.npz", x=d["x"], y=y)
    text = _user_error(run("eval", out, "--data", tmp_path / "bad_y.npz"), "bad_y.npz", "0 to 9", "-1, 10, 12")
    assert "3 labels" in text


def test_exit_status_rule(run, models_dir, tmp_path):
    """2: the command line itself is wrong; 1: something it names is refused (README)."""
    out = tmp_path / "c.xbar"
    run("convert", models_dir / "cnn_bn.onnx", "-o", out, "--hardware", "pcm")
    data = models_dir / "digits_test.npz"
    for args in (("--seeds", "5-2"), ("--set", "adc.bitz=4"), ("--only", "gravity"), ("--drift", "soon"),
                 ("--hardware", "quantum"), ("--batch-size", "0"), ("--bogus",),
                 ("--only", "drift", "--set", "faults.p_stuck_at_gmax=0.02")):  # --only would undo the --set
        assert run("eval", out, "--data", data, *args).exit_code == 2, args
    assert run("convert", models_dir / "cnn_bn.onnx", "-o", tmp_path / "x.xbar", "--crossbar", "12x").exit_code == 2
    assert run("calibrate", out, "--data", models_dir / "digits_calib.npz").exit_code == 2  # no --drift
    for args in (("--data", tmp_path / "missing.npz"), ("--data", data, "--only", "adc", "--without", "adc")):
        assert run("eval", out, *args).exit_code == 1, args


def test_out_of_memory_names_what_the_command_can_shrink(run, pcm_bundle, models_dir, monkeypatch, tmp_path):
    """Out of memory is one line naming the command and what to make smaller: --batch-size
    where the command has one, the tiles for convert (which has no --batch-size)."""
    import xbar.converter
    import xbar.runtime.evaluate

    def exhausted(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(xbar.converter, "convert", exhausted)
    _user_error(run("convert", models_dir / "cnn_bn.onnx", "-o", tmp_path / "c.xbar"),
                "out of memory in xbar convert", "--crossbar")
    assert not (tmp_path / "c.xbar").exists()
    monkeypatch.setattr(xbar.runtime.evaluate, "predict", exhausted)
    _user_error(run("eval", pcm_bundle, "--data", models_dir / "digits_test.npz"),
                "out of memory in xbar eval", "--batch-size")
