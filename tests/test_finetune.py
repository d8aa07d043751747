"""`xbar finetune`: device-noise sampling in weight units, Hutchinson curvature, the command's contract."""

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from xbar.bundle import load_bundle  # noqa: E402
from xbar.cli import cli  # noqa: E402
from xbar.config import MappingConfig  # noqa: E402
from xbar.converter import convert  # noqa: E402
from xbar.converter.encodings import position_variance  # noqa: E402
from xbar.errors import DataError  # noqa: E402
from xbar.hardware import ablate, preset  # noqa: E402
from xbar.runtime import Runtime  # noqa: E402
from xbar.training.device_noise import sample_weights  # noqa: E402
from xbar.training.finetune import FinetuneOptions, finetune, hessian_diagonal  # noqa: E402


def _weights(seed=0, k=48, n=40):
    return np.random.default_rng(seed).normal(0, 0.3, (k, n))


def test_noise_free_device_gives_the_mapped_weights():
    """An ideal device: a draw is the weights as mapped (here 4-bit quantised), exactly."""
    w = _weights()
    cfg = MappingConfig(weight_bits=4)
    got = sample_weights(w, None, cfg, preset("ideal"), np.random.default_rng(0))
    scale = np.abs(w).max(axis=0)
    want = np.round(w / scale * 7) / 7 * scale
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_programming_noise_has_the_device_models_variance():
    """rram, programming noise only (σ = 5 % of G): the variance of a weight over draws is the
    converter's closed form position_variance, in weight units. The device clips programmed
    conductances to [G_min, G_max], which the closed form ignores: G_min is moved to 1 nS
    (its one-sided noise is then 5e-11 S, negligible) and only weights below 0.8 of their
    column's largest (5 σ from G_max) are compared."""
    spec = ablate(preset("rram"), only=["programming"]).override({"device.g_min": 1e-9})
    w = _weights(1, 16, 12)
    cfg = MappingConfig()
    rng = np.random.default_rng(2)
    draws = np.stack([sample_weights(w, None, cfg, spec, rng) for _ in range(400)])
    scale = np.abs(w).max(axis=0)
    want = position_variance(w / scale, cfg.encoding, spec.device, 0.0) * scale ** 2
    got = draws.var(axis=0, ddof=1)
    inside = np.abs(w / scale) < 0.8
    assert inside.sum() > 150
    # 400 draws: a variance estimate has relative sd sqrt(2/399) ≈ 7 %; pooled over the
    # 150+ weights the mean ratio has sd < 0.6 %: ±2 % is over 3 sd.
    assert abs(np.mean(got[inside] / want[inside]) - 1) < 0.02
    # Unbiased: the mean draw is the weight (sd of the mean ≈ 5 % σ: 5 sd bound).
    assert np.all((np.abs(draws.mean(axis=0) - w) < 5 * np.sqrt(want / 400))[inside])


def test_uniform_drift_is_compensated_away():
    """Every device drifts by the same factor: the layer's compensation factor undoes it."""
    spec = ablate(preset("pcm"), only=["drift"]).override({
        "device.pcm_nu_mu_min": 0.06, "device.pcm_nu_mu_max": 0.06,
        "device.pcm_nu_sigma_min": 0.0, "device.pcm_nu_sigma_max": 0.0, "t_inference": 86400.0})
    w = _weights(3)
    got = sample_weights(w, None, MappingConfig(), spec, np.random.default_rng(0))
    np.testing.assert_allclose(got, w, rtol=1e-12, atol=1e-12)
    off = spec.override({"drift_compensation": "off"})
    got = sample_weights(w, None, MappingConfig(), off, np.random.default_rng(0))
    np.testing.assert_allclose(got, w * (86420 / 20) ** -0.06, rtol=1e-12)


def test_hutchinson_estimates_the_hessian_diagonal():
    a = torch.tensor([[3.0, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.5, -1.0]], dtype=torch.float64)
    w = torch.tensor([0.2, -0.4, 1.0], dtype=torch.float64, requires_grad=True)
    loss = lambda: 0.5 * w @ a @ w  # noqa: E731
    g = torch.Generator().manual_seed(0)
    (h,) = hessian_diagonal(loss, [w], 4000, g)
    # z ⊙ Az = diag(A) + Σ_{j≠i} A_ij z_i z_j: unbiased, sd per probe = the off-diagonal row
    # norm (≤ 1.12), so 4000 probes give sd ≤ 0.018; 5 sd.
    np.testing.assert_allclose(h.numpy(), np.diag(a.numpy()), atol=0.09)
    (h1,) = hessian_diagonal(lambda: 0.5 * (w * w * torch.tensor([3.0, 2.0, -1.0], dtype=torch.float64)).sum(),
                             [w], 1, g)
    np.testing.assert_array_equal(h1.numpy(), [3.0, 2.0, -1.0])  # diagonal H: exact from one probe


@pytest.mark.parametrize("method", ["noise", "hessian"])
def test_finetune_keeps_the_mapping_and_is_deterministic(models_dir, method):
    b = convert(models_dir / "cnn_bn.onnx", hardware=preset("pcm"))
    d = np.load(models_dir / "digits_train.npz")
    x, y = d["x"][:128], d["y"][:128]
    spec = preset("pcm").override(t_inference=86400.0)
    opts = FinetuneOptions(method=method, epochs=2, hessian_every=1, hessian_probes=2)
    w1, a1, rec = finetune(b, x, y, spec, opts, seed=1)
    w2, a2, _ = finetune(b, x, y, spec, opts, seed=1)
    for name in w1:
        np.testing.assert_array_equal(w1[name], w2[name])
    assert rec["steps"] == 4 and len(rec["loss_per_epoch"]) == 2
    assert (rec.get("hessian_seconds", 0) > 0) == (method == "hessian")
    # The weights moved, by a small step: Adam's lr 1e-3 in normalised units per step.
    for e in b.layers:
        before = Runtime(b).layers[b.layers.index(e)]
        w0 = before.matrix * before.col_scale
        delta = np.abs(w1[e["name"]] - w0).max() / np.abs(w0).max()
        assert 0 < delta < 0.05, (e["name"], delta)


def test_finetune_errors(models_dir):
    b = convert(models_dir / "cnn_bn.onnx", hardware=preset("pcm"))
    d = np.load(models_dir / "digits_train.npz")
    spec = preset("pcm")
    with pytest.raises(DataError, match="at least 32"):
        finetune(b, d["x"][:10], d["y"][:10], spec, FinetuneOptions())
    with pytest.raises(DataError, match="no labels"):
        finetune(b, d["x"][:64], None, spec, FinetuneOptions())


def test_cli_finetune_writes_bundle_and_onnx(models_dir, tmp_path):
    runner = CliRunner()
    src = tmp_path / "c.xbar"
    r = runner.invoke(cli, ["convert", str(models_dir / "cnn_bn.onnx"), "-o", str(src), "--hardware", "pcm",
                            "--calib-data", str(models_dir / "digits_calib.npz")])
    assert r.exit_code == 0, r.output
    data = tmp_path / "train.npz"
    d = np.load(models_dir / "digits_train.npz")
    np.savez(data, x=d["x"][:96], y=d["y"][:96])
    out, onnx_out = tmp_path / "c.ft.xbar", tmp_path / "c.ft.onnx"
    args = ["finetune", str(src), "--data", str(data), "--drift", "1d", "--epochs", "1", "-o", str(out),
            "--export-onnx", str(onnx_out)]
    r = runner.invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert "ranges measured again on 96 samples" in r.output
    assert "(epoch 1) ->" not in r.output and "(epoch 1);" in r.output  # one epoch: one loss, no trend
    ft = load_bundle(out)
    assert ft.manifest["finetune"]["method"] == "noise"
    assert [e["tiles"] for e in ft.layers] == [e["tiles"] for e in load_bundle(src).layers]
    assert all("ranges" in e for e in ft.layers)
    # The exported float model is the fine-tuned network: onnxruntime agrees with the
    # NumPy runtime on exact hardware (conformance tolerance 1e-4 relative).
    x = np.load(models_dir / "digits_test.npz")["x"][:64]
    sess = ort.InferenceSession(str(onnx_out), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x})[0]
    want = Runtime(ft)(x)
    np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())
    # Existing outputs are not overwritten; missing --drift is a usage error; nothing written.
    r = runner.invoke(cli, args)
    assert r.exit_code == 1 and "--force" in r.output
    other = tmp_path / "other.xbar"
    r = runner.invoke(cli, ["finetune", str(src), "--data", str(data), "--drift", "1d", "-o", str(other),
                            "--export-onnx", str(other)])
    assert r.exit_code == 2 and "both name" in r.output and not other.exists()
    r = runner.invoke(cli, ["finetune", str(src), "--data", str(data), "-o", str(other)])
    assert r.exit_code == 2 and "--drift" in r.output and not other.exists()
    np.savez(data, x=d["x"][:96])
    r = runner.invoke(cli, ["finetune", str(src), "--data", str(data), "--drift", "1d", "-o", str(other)])
    assert r.exit_code == 1 and "no labels" in r.output and not other.exists()
    assert "Traceback" not in r.output


def test_fine_tuned_bundle_is_evaluated_and_calibrated_on_the_hardware_it_was_trained_for(models_dir, tmp_path):
    """finetune --hardware rram kept the pcm target, so eval, calibrate and info went on with
    pcm and t = 0 while the weights were trained for rram at 1 d (found by a hunt)."""
    import json

    runner = CliRunner()
    src, out = tmp_path / "c.xbar", tmp_path / "c.ft.xbar"
    assert runner.invoke(cli, ["convert", str(models_dir / "cnn_bn.onnx"), "-o", str(src), "--hardware",
                               "pcm"]).exit_code == 0
    data = tmp_path / "train.npz"
    d = np.load(models_dir / "digits_train.npz")
    np.savez(data, x=d["x"][:64], y=d["y"][:64])
    r = runner.invoke(cli, ["finetune", str(src), "--data", str(data), "--drift", "1d", "--epochs", "1",
                            "--hardware", "rram", "--set", "adc.bits=4", "-o", str(out)])
    assert r.exit_code == 0, r.output
    said = " ".join(r.output.split())
    assert "device rram" in said and "adc 4 bit" in said and "not part of the training draw" in said
    info = json.loads(runner.invoke(cli, ["info", str(out), "--json"]).output)
    assert info["hardware"]["device"]["model"] == "rram" and info["hardware"]["adc"]["bits"] == 4
    assert info["eval_defaults"] == {"seed": 0, "t_inference": 86400.0, "from": "finetune"}
    assert info["mapping"] == json.loads(runner.invoke(cli, ["info", str(src), "--json"]).output)["mapping"]
    text = " ".join(runner.invoke(cli, ["info", str(out), "--no-layers"]).output.split())
    assert "fine-tuned with 'noise' (ce loss) for 1 epoch on 64 samples" in text
    assert "eval at 1 d (the time the weights were fine-tuned for)" in text
    ev = json.loads(runner.invoke(cli, ["eval", str(out), "--data", str(models_dir / "digits_test.npz"),
                                        "--json"]).output)
    assert ev["hardware"]["device"]["model"] == "rram" and ev["hardware"]["adc"]["bits"] == 4
    assert [row["t"] for row in ev["rows"]] == [86400.0] and ev["seeds"] == [0]
    cal = tmp_path / "c.cal.xbar"
    r = runner.invoke(cli, ["calibrate", str(out), "--data", str(models_dir / "digits_calib.npz"), "--drift", "1h",
                            "-o", str(cal)])
    assert r.exit_code == 0, r.output
    assert load_bundle(cal).manifest["calibration"][-1]["hardware"]["device"]["model"] == "rram"


def test_training_threads_follow_the_environment(monkeypatch):
    from xbar.errors import XbarError
    from xbar.training import training_threads

    before = torch.get_num_threads()
    monkeypatch.delenv("XBAR_TORCH_THREADS", raising=False)
    with training_threads() as n:  # unset: torch's own setting, untouched
        assert n == before == torch.get_num_threads()
    monkeypatch.setenv("XBAR_TORCH_THREADS", "1")
    with training_threads() as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    monkeypatch.setenv("XBAR_TORCH_THREADS", "two")
    with pytest.raises(XbarError, match="XBAR_TORCH_THREADS='two'"):
        with training_threads():
            pass


@pytest.mark.parametrize("method", ["noise", "hessian"])
def test_finetune_grouped_and_depthwise_convolutions(tmp_path, method):
    """The torch layer multiplies by a grouped convolution's whole block-diagonal matrix, so
    its structural zeros get gradients (and the hessian method's penalty); they must stay 0,
    or the weights cannot be written back to the layer's groups. Trained, written and read
    back through the CLI; the zeros are exactly 0 and the real weights moved."""
    import torch
    import torch.nn as nn

    from xbar.converter.layers import conv_structure

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 4))
    net.eval()
    src = tmp_path / "g.onnx"
    torch.onnx.export(net, (torch.zeros(1, 1, 6, 6),), str(src), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    x = np.random.default_rng(0).standard_normal((64, 1, 6, 6)).astype(np.float32)
    with torch.no_grad():
        y = net(torch.from_numpy(x)).argmax(1).numpy()
    data = tmp_path / "d.npz"
    np.savez(data, x=x, y=y)
    runner = CliRunner()
    b, ft = tmp_path / "g.xbar", tmp_path / "g.ft.xbar"
    assert runner.invoke(cli, ["convert", str(src), "-o", str(b), "--hardware", "pcm"]).exit_code == 0
    r = runner.invoke(cli, ["finetune", str(b), "--data", str(data), "--drift", "1d", "--epochs", "2",
                            "--method", method, "-o", str(ft)])
    assert r.exit_code == 0, r.output
    before, after = Runtime(load_bundle(b)), Runtime(load_bundle(ft))
    grouped = 0
    for entry, l0, l1 in zip(load_bundle(b).layers, before.layers, after.layers):
        mask = conv_structure(entry["params"], l0.n) if entry["kind"] == "conv" else None
        w0, w1 = l0.matrix * l0.col_scale, l1.matrix * l1.col_scale
        if mask is not None:
            grouped += 1
            assert np.all(w1[~mask] == 0) and np.all(w0[~mask] == 0), entry["name"]
        assert np.abs(w1 - w0).max() > 0, entry["name"]  # trained
    assert grouped == 2


def test_finetune_of_a_calibrated_bundle_trains_the_converted_network(models_dir, tmp_path):
    """A calibration fits the affines to one chip; fine-tuning trains the network as
    converted (the same weights and affines as from the uncalibrated bundle), and remap
    drops the chip fit with the records rather than keep it unlabelled."""
    from xbar.converter.remap import remap
    from xbar.runtime.calibrate import calibrate

    b = convert(models_dir / "cnn_bn.onnx", hardware=preset("pcm"))
    d = np.load(models_dir / "digits_train.npz")
    x, y = d["x"][:64], d["y"][:64]
    spec = preset("pcm").override({"t_inference": 86400.0, "adc.bits": 3, "drift_compensation": "off"})
    cal, _ = calibrate(b, x, spec, 2, "affine")
    opts = FinetuneOptions(method="noise", epochs=1)
    w_cal, a_cal, _ = finetune(cal, x, y, spec, opts, seed=1)
    w_src, a_src, _ = finetune(b, x, y, spec, opts, seed=1)
    for name in w_src:
        np.testing.assert_array_equal(w_cal[name], w_src[name], err_msg=name)
    # remap with weights only: the layers keep their converted affines, not chip 2's fit.
    out = remap(cal, w_src, calib_x=x)
    ref = remap(b, w_src, calib_x=x)
    assert out.manifest["calibration"] == [] and out.manifest["finetune"]["calibration_dropped"] == 1
    np.testing.assert_array_equal(Runtime(out)(x[:16]), Runtime(ref)(x[:16]))
