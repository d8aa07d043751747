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
    assert res["n"] == 450 and res["agreement"] == 1.0 and res["max_abs_diff"] < 1e-3
    assert res["accuracy"] == res["reference_accuracy"]


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
    assert len(early["accuracies"]) == 3
    # Drift over a day costs accuracy on this chip model, and ideal hardware is the ceiling.
    assert late["accuracy_mean"] < early["accuracy_mean"] <= res["ideal_accuracy"] + 0.01
    assert res["hardware"]["device"]["model"] == "pcm"
    text = run("eval", pcm_bundle, "--data", models_dir / "digits_test.npz", "--seeds", "0-1", "--drift", "1h").output
    assert "mean ± sample std" in text and "1 h" in text and "device" in text


def test_eval_is_reproducible_and_ablations_work(run, pcm_bundle, models_dir):
    args = ("eval", pcm_bundle, "--data", models_dir / "digits_test.npz", "--seeds", "3", "--drift", "1d", "--json")
    a, b = json.loads(run(*args).output), json.loads(run(*args).output)
    assert a["rows"] == b["rows"]
    only_adc = json.loads(run(*args, "--only", "adc").output)
    assert only_adc["hardware"]["device"]["drift"] is False
    assert only_adc["rows"][0]["accuracy_mean"] >= a["rows"][0]["accuracy_mean"]
    no_drift = json.loads(run(*args, "--without", "drift").output)
    assert no_drift["hardware"]["device"]["drift"] is False and no_drift["hardware"]["device"]["prog_noise"] is True


def test_eval_per_layer(run, pcm_bundle, models_dir):
    res = json.loads(run("eval", pcm_bundle, "--data", models_dir / "digits_test.npz", "--per-layer", "--json").output)
    rows = res["per_layer"]
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
