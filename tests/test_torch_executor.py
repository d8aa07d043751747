"""The torch executor of bundles (xbar.training) against the NumPy runtime, its reference.

- exact hardware: torch forward == NumPy Runtime(bundle) at the conformance tolerance on the
  shipped models, every CNN zoo model and the transformer zoo;
- a chip without read noise: torch == the NumPy chip path up to float32 rounding, layer by
  layer with the converters on (DAC codes bit-identical, ADC levels compared), end to end;
- a chip with read noise: per-output mean and variance over many draws against the NumPy
  chip's and the closed form (v²)·σ²;
- gradients of the per-output affines: finite differences, and the straight-through path;
- refusals: ops with no torch form, torch missing.
"""

from __future__ import annotations

import builtins
import math
import os
import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conformance_models import ZOO, example_input  # noqa: E402
from test_conformance import RTOL, _ExportCache, assert_close  # noqa: E402

from xbar.bundle import Bundle  # noqa: E402
from xbar.converter import convert  # noqa: E402
from xbar.errors import ConfigError, UnsupportedOpError, XbarError  # noqa: E402
from xbar.hardware import preset  # noqa: E402
from xbar.ops import DIGITAL_OPS  # noqa: E402
from xbar.runtime import Runtime  # noqa: E402
from xbar.runtime.analog import dac_codes  # noqa: E402
from xbar.runtime.ranges import find_ranges  # noqa: E402
from xbar.training import TorchMissingError, require_torch  # noqa: E402
from xbar.training import torch_ops  # noqa: E402
from xbar.training.torch_executor import TorchRuntime  # noqa: E402

MODELS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models")
SHIPPED = ("resnet_bn.onnx", "cnn_bn.onnx", "resnet_folded.onnx")


def _digits(n: int, offset: int = 0) -> np.ndarray:
    return np.load(os.path.join(MODELS, "digits_test.npz"))["x"][offset:offset + n].astype(np.float32)


def _run_torch(tr: TorchRuntime, feeds) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = tr(feeds)
    return {k: (v.numpy() if torch.is_tensor(v) else v) for k, v in out.items()}


@pytest.fixture(scope="module")
def shipped():
    return {name: convert(os.path.join(MODELS, name)) for name in SHIPPED}


def test_torch_ops_are_digital_ops():
    """One vocabulary: every torch form is for an op of xbar.ops.DIGITAL_OPS."""
    assert set(torch_ops.TORCH_OPS) <= DIGITAL_OPS
    assert torch_ops.TORCH_OPS, "no torch forms registered"


# --------------------------------------------------------------------------- exact hardware


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_models_ideal(name, shipped):
    bundle = shipped[name]
    rt, tr = Runtime(bundle), TorchRuntime(bundle)
    x = _digits(37)
    ref = rt.run({"input": x})
    got = _run_torch(tr, {"input": x})
    for out in rt.output_names:
        assert_close(got[out], ref[out], f"{name} {out}")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> _ExportCache:
    return _ExportCache(tmp_path_factory.mktemp("torch_executor_onnx"))


# Opset 11 with batch-norm folded and 17 with it kept: the attribute-vs-input forms of
# Split, Squeeze, Unsqueeze, Pad, Slice and Clip across the opsets, and BN both ways.
@pytest.mark.parametrize("opset,bn_mode", [(11, "folded"), (17, "kept")])
@pytest.mark.parametrize("name", list(ZOO))
def test_cnn_zoo_ideal(name, opset, bn_mode, exported):
    bundle = convert(exported(name, opset, bn_mode))
    rt, tr = Runtime(bundle), TorchRuntime(bundle)
    for batch in (1, 5):
        x = example_input(ZOO[name], batch).numpy()
        assert_close(_run_torch(tr, {"input": x})["output"], rt.run({"input": x})["output"],
                     f"{name} opset {opset} bn {bn_mode} batch {batch}")


def _transformer_bundle(name: str, opset: int, tmp_path):
    import contextlib
    import io

    from transformer_models import TZOO, build
    from transformer_models import example_input as t_input

    zm = TZOO[name]
    path = tmp_path / f"{name}_{opset}.onnx"
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(build(zm), (t_input(zm, 2),), str(path), dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    return convert(path), zm, t_input


@pytest.mark.parametrize("opset", (17, 18))
@pytest.mark.parametrize("name", ["vit_tiny", "swin_block", "convnext_block", "text_transformer", "groupnorm",
                                  "instancenorm", "lrn", "scatter"])
def test_transformer_zoo_ideal(name, opset, tmp_path):
    bundle, zm, make_input = _transformer_bundle(name, opset, tmp_path)
    rt, tr = Runtime(bundle), TorchRuntime(bundle)
    for batch in (1, 3):
        x = make_input(zm, batch).numpy()
        ref = rt.run({"input": x})["output"]
        got = _run_torch(tr, {"input": x})["output"]
        assert_close(got, ref, f"{name} opset {opset} batch {batch}")


# --------------------------------------------------------------------------- chip, no read noise


def _quiet_pcm(**over):
    """pcm (programming noise, IR drop) one day after programming (drift, per-tile drift
    compensation), with read noise and ADC noise off: the chip is then deterministic per seed."""
    return preset("pcm").override({"device.read_noise": False, "adc.noise": 0.0, "t_inference": 86400.0, **over})


def _layer_inputs(rt: Runtime, feeds) -> list[tuple[object, np.ndarray]]:
    seen = []
    walk = rt.walk(feeds)
    try:
        while True:
            layer, x = next(walk)
            seen.append((layer, np.array(x, copy=True)))
    except StopIteration:
        pass
    return seen


def _one_level(layer, x: np.ndarray) -> np.ndarray:
    """Per output channel, the most an output can change when one ADC reading of every row
    block moves by one level: Σ_blocks (i_fs/levels)·compensation · position gain · input
    scale (the DAC range, or at most max |x| with abs-max scaling) · affine gain."""
    c = layer.chip
    levels = float(2 ** (c.spec.adc.bits - 1) - 1)
    per_block = c.i_fs / np.float32(levels) * c.tiles.comp  # (nrb, P)
    per_pos = per_block.sum(axis=0) * np.abs(layer.columns.gain)
    per_out = np.zeros(layer.n)
    np.maximum.at(per_out, layer.columns.output, per_pos)
    x_scale = c.x_max if c.x_max is not None else float(np.abs(x).max())
    return per_out * np.abs(layer.gain) * x_scale


@pytest.mark.parametrize("ranges", [False, True], ids=["absmax-dac", "calibrated-ranges"])
def test_chip_layers_match_numpy_with_converters(ranges, shipped):
    """Layer by layer on identical inputs (the NumPy walk's), pcm with 8-bit DAC and ADC:
    DAC codes are bit-identical (the same float32 operations in the same order); products
    sum in another order (BLAS vs torch), so outputs agree to float32 rounding except where
    an ADC reading sat within rounding of a level boundary and moved one level. Asserted:
    at most 0.1 % of outputs differ beyond rounding, and none by more than one level per
    row block."""
    # Calibrated ranges also with per-column drift compensation (the other comp layout).
    spec = _quiet_pcm(**({"dac.range": "calibrated", "drift_compensation": "column"} if ranges else {}))
    bundle = convert(os.path.join(MODELS, "resnet_bn.onnx"))
    if ranges:
        find_ranges(bundle, _digits(64, offset=100), spec)
    rt = Runtime(bundle, spec, seed=5)
    tr = TorchRuntime(bundle, spec, seed=5)
    tls = {tl.name: tl for tl in tr.torch_layers()}
    checked = 0
    for layer, x in _layer_inputs(rt, {"input": _digits(16)}):
        tl = tls[layer.name]
        ref = layer(x)
        with torch.no_grad():
            got = tl(torch.from_numpy(x)).numpy()
        assert got.shape == ref.shape
        # Float32 rounding of a sum of K products (K <= 576 here), relative to the largest
        # output of the layer: far below one ADC level (1/127 of full scale).
        tol = 1e-5 * float(np.abs(ref).max())
        err = np.abs(got.astype(np.float64) - ref)
        moved = err > tol
        assert moved.mean() <= 1e-3, f"{layer.name}: {moved.sum()} of {moved.size} outputs moved"
        lsb = _one_level(layer, x).reshape((1, -1) + (1,) * (ref.ndim - 2))
        assert np.all(err <= lsb + tol), f"{layer.name}: an output moved by more than one ADC level per block"
        checked += 1
    assert checked == len([e for e in bundle.layers if e["placement"] == "analog"])


@pytest.mark.parametrize("ranges", [False, True], ids=["absmax-dac", "calibrated-ranges"])
def test_chip_dac_codes_bit_identical(ranges):
    """The torch DAC computes the NumPy DAC's float32 operations in the same order: equal codes."""
    spec = _quiet_pcm(**({"dac.range": "calibrated"} if ranges else {}))
    bundle = convert(os.path.join(MODELS, "cnn_bn.onnx"))
    if ranges:
        find_ranges(bundle, _digits(64, offset=100), spec)
    rt, tr = Runtime(bundle, spec, seed=1), TorchRuntime(bundle, spec, seed=1)
    tls = {tl.name: tl for tl in tr.torch_layers()}
    for layer, x in _layer_inputs(rt, {"input": _digits(8)}):
        if layer.kind != "gemm":
            continue
        rows = x.reshape(-1, layer.k)
        absmax = np.abs(rows).max(axis=1, keepdims=True)
        want, unit = layer._dac(rows, None if ranges else absmax)[:2]
        got, t_unit, _ = tls[layer.name].dac(torch.from_numpy(rows))
        assert t_unit == unit
        np.testing.assert_array_equal(got.numpy(), want)


def test_chip_end_to_end_matches_numpy(shipped):
    """The whole network on one chip instance (seed 7), converters off: the two engines then
    differ by float32 rounding only (each layer's sums are re-ordered, |rel| ~ 1e-7 per layer),
    and 1e-5 of the largest output bounds that with a wide margin over ~10 layers.

    With 8-bit converters end to end, a reading that one engine rounds to one level and the
    other to the next (its value within rounding of the boundary) moves every output that
    depends on it, by one level propagated: a comparison there could only be loose. That
    case is checked layer by layer instead (test_chip_layers_match_numpy_with_converters:
    identical inputs, codes bit-identical, each output within one ADC level per row block,
    at most 0.1 % of outputs moved)."""
    spec = _quiet_pcm(**{"dac.bits": "none", "adc.bits": "none"})
    for name in ("resnet_bn.onnx", "cnn_bn.onnx"):
        bundle = shipped[name]
        rt, tr = Runtime(bundle, spec, seed=7), TorchRuntime(bundle, spec, seed=7)
        x = _digits(32)
        ref = rt.run({"input": x})[rt.output_names[0]]
        got = _run_torch(tr, {"input": x})[rt.output_names[0]]
        err = np.abs(got.astype(np.float64) - ref)
        assert err.max() <= 1e-5 * float(np.abs(ref).max()), f"{name}: max |diff| {err.max():.3g}"


# --------------------------------------------------------------------------- chip, read noise on


def _linear_bundle(tmp_path, encoding: str) -> Bundle:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(40, 12)).eval()
    path = tmp_path / "linear.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.zeros(1, 40), str(path), dynamo=False, input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    # 16×16 tiles: three row blocks and several column blocks, each read with its own noise.
    return convert(path, crossbar=(16, 16), encoding=encoding)


@pytest.mark.parametrize("encoding", ["differential", "offset"])
def test_read_noise_statistics(encoding, tmp_path):
    """Fresh read noise: over n draws per (input vector, output), the mean of torch's outputs
    and of the NumPy chip's both agree with the noiseless output, and both variances with the
    closed form Σ_blocks ((v²)·σ²)·(comp·unit·x_scale·gain)² (plus the reference column's
    share for offset encoding), within 5 standard errors: mean ± 5·sqrt(var/n), variance
    ratio 1 ± 5·sqrt(2/(n−1)) (a normal sample's variance has relative std sqrt(2/(n−1))).
    Converters off so that the output noise is exactly Gaussian."""
    spec = preset("pcm").override({"dac.bits": "none", "adc.bits": "none", "adc.noise": 0.0})
    quiet = preset("pcm").override({"dac.bits": "none", "adc.bits": "none", "adc.noise": 0.0,
                                    "device.read_noise": False})
    bundle = _linear_bundle(tmp_path, encoding)
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (4, 40)).astype(np.float32)
    n = 4000
    rt, tr = Runtime(bundle, spec, seed=2), TorchRuntime(bundle, spec, seed=2)
    mean_ref = Runtime(bundle, quiet, seed=2).run({"input": x})["output"]  # same chip, no read noise
    reps = np.tile(x, (n, 1))
    np_draws = rt.run({"input": reps})["output"].reshape(n, 4, 12).astype(np.float64)
    t_draws = _run_torch(tr, {"input": reps})["output"].reshape(n, 4, 12).astype(np.float64)

    layer = rt.layers[0]
    st, c = layer.chip.tiles, layer.chip
    absmax = np.abs(x).max(axis=1, keepdims=True)
    v = (x / absmax).astype(np.float64)  # DAC off, abs-max scaling: unit 1
    nrb, r, _ = st.d.shape
    vp = np.zeros((4, nrb * r))
    vp[:, :40] = v
    vb = vp.reshape(4, nrb, r).transpose(1, 0, 2)  # (nrb, M, R)
    var_pos = np.einsum("bmr,brp->bmp", vb ** 2, st.var.astype(np.float64))
    if st.ref_var is not None:  # the reference column's noise is subtracted from every column of its block
        var_pos = var_pos + np.einsum("bmr,brc->bmc", vb ** 2, st.ref_var.astype(np.float64))[:, :, st.block_of]
    var_pos = (var_pos * st.comp.astype(np.float64)[:, None, :] ** 2).sum(axis=0)  # (M, P)
    assert layer.columns.gather_only
    closed = var_pos[:, layer.columns.slot_position[0]] * (absmax * layer.gain.astype(np.float64)) ** 2
    assert np.all(closed > 0)

    for what, draws in (("torch", t_draws), ("numpy", np_draws)):
        m, s2 = draws.mean(axis=0), draws.var(axis=0, ddof=1)
        z = np.abs(m - mean_ref) / np.sqrt(closed / n)
        assert z.max() < 5, f"{what}: mean off by {z.max():.2f} standard errors"
        ratio = s2 / closed
        assert np.abs(ratio - 1).max() < 5 * math.sqrt(2 / (n - 1)), f"{what}: variance ratios {ratio.min():.3f}..{ratio.max():.3f}"
    # The two engines' variances against each other (two independent samples).
    ratio = t_draws.var(axis=0, ddof=1) / np_draws.var(axis=0, ddof=1)
    assert np.abs(ratio - 1).max() < 5 * math.sqrt(4 / (n - 1))


def test_read_noise_is_fresh_and_seeded(tmp_path):
    """Two calls draw different noise; the same seed gives the same first draw."""
    spec = preset("pcm")
    bundle = _linear_bundle(tmp_path, "differential")
    x = np.random.default_rng(0).normal(0, 1, (3, 40)).astype(np.float32)
    a, b = TorchRuntime(bundle, spec, seed=4), TorchRuntime(bundle, spec, seed=4)
    first, second = _run_torch(a, {"input": x})["output"], _run_torch(a, {"input": x})["output"]
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(first, _run_torch(b, {"input": x})["output"])


# --------------------------------------------------------------------------- gradients


def _affine_params(tr: TorchRuntime):
    return [(tl.name, kind, getattr(tl, kind)) for tl in tr.torch_layers() for kind in ("gain", "shift")]


def _smooth_bundle(tmp_path) -> Bundle:
    """Conv → BN → tanh → Linear → BN → tanh → Linear: no ReLU or max-pool kinks, so central
    differences converge to the derivative."""
    from conformance_models import randomise_batchnorm

    nn = torch.nn
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Tanh(), nn.Flatten(), nn.Linear(144, 10),
                          nn.BatchNorm1d(10), nn.Tanh(), nn.Linear(10, 3))
    randomise_batchnorm(model, torch.Generator().manual_seed(1))
    path = tmp_path / "smooth.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), torch.zeros(1, 1, 8, 8), str(path), dynamo=False, do_constant_folding=False,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    return convert(path, crossbar=(64, 64))  # the 144-row layer spans three row blocks


@pytest.mark.parametrize("hardware", ["ideal", "chip"])
def test_affine_gradients_match_finite_differences(hardware, tmp_path):
    """d(loss)/d(gain, shift) of every layer by autograd against central differences, h = 1e-2
    of the parameter. The network is smooth, so the truncation error is O(h²) (~1e-4
    relative); the loss is computed in float32 (~1e-6 relative rounding, i.e. ~1e-4 of the
    gradient after dividing by 2h). 1 % of the gradient plus 1e-3 of the layer's largest
    gradient bounds both; a missing factor (column scale, input scale, compensation, a
    wrong transpose) would be off by far more. The chip runs without noise and with the
    converters off (rint has no derivative for differences to see)."""
    bundle = _smooth_bundle(tmp_path)
    spec = None if hardware == "ideal" else _quiet_pcm(**{"dac.bits": "none", "adc.bits": "none"})
    tr = TorchRuntime(bundle, spec, seed=0)
    x = torch.from_numpy(np.random.default_rng(2).normal(0, 1, (5, 1, 8, 8)).astype(np.float32))
    proj = torch.from_numpy(np.random.default_rng(1).normal(0, 1, (5, 3)).astype(np.float32))

    def loss() -> torch.Tensor:
        return (tr({"input": x})["output"].double() * proj).sum()

    tr.zero_grad()
    loss().backward()
    rng = np.random.default_rng(0)
    for name, kind, p in _affine_params(tr):
        g = p.grad.numpy().copy()
        assert np.all(np.isfinite(g))
        for j in rng.choice(p.numel(), size=min(4, p.numel()), replace=False):
            with torch.no_grad():
                old = float(p[j])
                h = 1e-2 * max(1.0, abs(old))
                p[j] = old + h
                up = float(loss())
                p[j] = old - h
                down = float(loss())
                p[j] = old
            fd = (up - down) / (2 * h)
            assert abs(fd - g[j]) <= 0.01 * abs(g[j]) + 1e-3 * np.abs(g).max(), (
                f"{name}.{kind}[{j}]: autograd {g[j]:.6g}, finite difference {fd:.6g}")


def test_straight_through_gradients_reach_every_layer(shipped):
    """With 8-bit DAC and ADC (rint everywhere), gradients still reach the first layer's affine."""
    bundle = shipped["resnet_bn.onnx"]
    tr = TorchRuntime(bundle, preset("pcm"), seed=0)
    out = tr({"input": torch.from_numpy(_digits(4))})["logits"]
    out.square().sum().backward()
    for name, kind, p in _affine_params(tr):
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name}.{kind}"
        assert p.grad.abs().sum() > 0, f"{name}.{kind}: zero gradient"


# --------------------------------------------------------------------------- parameters read back


def test_trained_affine_reads_back_into_the_numpy_runtime(shipped):
    """Changed gains and shifts, read back as Affines and set on the NumPy layers, give the
    NumPy runtime the torch runtime's outputs (ideal hardware, conformance tolerance)."""
    bundle = shipped["resnet_bn.onnx"]
    tr = TorchRuntime(bundle)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tl in tr.torch_layers():
            tl.gain.mul_(1 + 0.2 * torch.rand(tl.gain.shape, generator=g, dtype=torch.float64))
            tl.shift.add_(0.1 * torch.randn(tl.shift.shape, generator=g, dtype=torch.float64))
    rt = Runtime(bundle)
    affines = tr.affines()
    for layer in rt.layers:
        layer.set_affine(affines[layer.name])
    x = _digits(16)
    assert_close(_run_torch(tr, {"input": x})["logits"], rt.run({"input": x})["logits"], "trained affines")


def test_trainable_weights_and_perturb_hook(shipped):
    """train_weights makes analog weights parameters (normalised units, the Layer's matrix);
    the hook sees them at every forward: a hook that zeroes one layer leaves only its shift."""
    bundle = shipped["cnn_bn.onnx"]
    tr = TorchRuntime(bundle, train_weights=True)
    rt = Runtime(bundle)
    analog = [tl for tl in tr.torch_layers() if tl.analog]
    assert analog and all(isinstance(tl.weight, torch.nn.Parameter) for tl in analog)
    for tl, layer in zip(tr.torch_layers(), rt.layers):
        np.testing.assert_array_equal(tl.weight.detach().numpy(), layer.matrix)
    last = tr.torch_layers()[-1]
    seen = []

    def zero_last(name, w):
        seen.append(name)
        return w * 0 if name == last.name else w

    hooked = TorchRuntime(bundle, train_weights=True, perturb=zero_last)
    out = _run_torch(hooked, {"input": _digits(3)})["logits"]
    np.testing.assert_allclose(out, np.broadcast_to(last.shift.detach().numpy().astype(np.float32), out.shape))
    assert last.name in seen
    with pytest.raises(ConfigError, match="exact hardware"):
        TorchRuntime(bundle, preset("pcm"), train_weights=True)


# --------------------------------------------------------------------------- refusals


def test_bundle_with_an_op_without_torch_form_is_refused(shipped, monkeypatch):
    bundle = shipped["cnn_bn.onnx"]
    relus = [n["name"] for n in bundle.graph["nodes"] if n["op"] == "Relu"]
    assert relus
    monkeypatch.delitem(torch_ops.TORCH_OPS, "Relu")
    assert torch_ops.missing_ops(bundle) == {"Relu": relus}
    with pytest.raises(UnsupportedOpError, match=r"no torch form for Relu \(node") as err:
        TorchRuntime(bundle)
    assert repr(relus[0]) in str(err.value)


def test_recurrent_nodes_are_refused_by_name():
    from test_recurrent import _onnx_rnn

    model, _ = _onnx_rnn("LSTM")
    bundle = convert(model)
    assert torch_ops.missing_ops(bundle) == {"LSTM": ["rec"]}
    with pytest.raises(UnsupportedOpError, match=r"LSTM \(node 'rec'\)"):
        TorchRuntime(bundle)


def test_torch_missing_is_one_clear_error(monkeypatch):
    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    with pytest.raises(TorchMissingError) as err:
        require_torch()
    assert isinstance(err.value, XbarError)
    text = str(err.value)
    assert "calibrate --method sgd" in text and "finetune" in text and "pip install" in text
    assert "torch==2.13.0" in text


# --------------------------------------------------------------------------- fixed batch


@pytest.mark.parametrize("kind,size", [("token", 1), ("flatten", 2)])
def test_fixed_batch_bundles_run_in_chunks(kind, size):
    """Graphs that fix their batch (a constant row concatenated: batch 1 hard-coded; a
    declared batch of 2, never relaxed) run chunk by chunk, ideal and on a chip; a batch that is not a multiple is refused by the
    NumPy runtime's own check."""
    from test_batch import cnn

    from xbar.errors import DataError

    bundle = convert(cnn(kind, batch=size))
    assert bundle.manifest["batch"]["mode"] == "fixed"
    x = np.random.default_rng(0).standard_normal((6, 1, 6, 6)).astype(np.float32)
    for spec in (None, _quiet_pcm()):
        rt, tr = Runtime(bundle, spec, seed=1), TorchRuntime(bundle, spec, seed=1)
        ref = rt.run({"x": x})["y"]
        got = _run_torch(tr, {"x": x})["y"]
        assert got.shape == ref.shape == (6, 10)
        assert_close(got, ref, f"{kind} batch {size} {'chip' if spec else 'ideal'}")
    if size > 1:
        with pytest.raises(DataError, match="multiple"):
            tr({"x": x[:5]})


def test_importing_the_executor_without_torch_names_the_fix(monkeypatch):
    """The training modules import torch through require_torch: without torch, importing the
    executor raises the one-paragraph TorchMissingError, not a bare ImportError."""
    import importlib

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` then raises ImportError
    for name in ("xbar.training.torch_executor", "xbar.training.torch_layer", "xbar.training.torch_ops"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.raises(TorchMissingError, match="pip install"):
        importlib.import_module("xbar.training.torch_executor")


def test_packed_depthwise_chip_matches_numpy(tmp_path):
    """--depthwise packed: the chip's matrices are in physical row order and inputs are routed
    there (Layer.chip_inputs); the torch layer must route them the same way. Converters off,
    so the engines differ by float32 summation order only (bound as in the end-to-end test)."""
    from tests.test_depthwise_policy import _model

    src = _model(tmp_path / "dw.onnx", mult=1)
    bundle = convert(src, crossbar=(32, 32), depthwise="packed")
    assert any("packing" in e["tiles"] for e in bundle.layers if e["placement"] == "analog")
    spec = _quiet_pcm(**{"dac.bits": "none", "adc.bits": "none"})
    rt, tr = Runtime(bundle, spec, seed=2), TorchRuntime(bundle, spec, seed=2)
    x = np.random.default_rng(0).normal(size=(4, *rt.inputs[0]["shape"][1:])).astype(np.float32)
    ref = rt.run({rt.input_names[0]: x})[rt.output_names[0]]
    got = _run_torch(tr, {rt.input_names[0]: x})[rt.output_names[0]]
    assert np.abs(got.astype(np.float64) - ref).max() <= 1e-5 * float(np.abs(ref).max())
