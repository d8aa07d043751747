"""Recurrent layers (LSTM, GRU, RNN): W and R on crossbars, the time loop digital.

Ideal hardware is compared with onnxruntime at the conformance tolerance, at a tile size
that holds every matrix in one tile and at one that needs many; the chip path against an
independent loop over the chip's own layers; refusals through the command line.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import close
from xbar.bundle import load_bundle
from xbar.cli import cli
from xbar.converter.convert import convert
from xbar.errors import UnsupportedOpError
from xbar.hardware import ablate, preset
from xbar.runtime.calibrate import calibrate
from xbar.runtime.executor import Runtime
from xbar.runtime.ranges import find_ranges

CROSSBARS = [(128, 128), (4, 6)]  # one tile per matrix; many tiles, row blocks and column blocks


def _ort(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def _feeds_for(bundle, feeds: dict) -> dict:
    """The source model's feeds as the bundle takes them: the converter takes time-major
    graph inputs batch-first (converter/time_major.py), here every fixed [seq, batch, ...] X."""
    moved = (bundle.manifest["batch"].get("time_major") or {}).get("inputs", [])
    return {k: np.ascontiguousarray(np.swapaxes(v, 0, 1)) if k in moved else v for k, v in feeds.items()}


def _run(bundle, feeds: dict, *args, **kwargs) -> dict:
    """Runtime(bundle, ...).run on the source model's feeds, its outputs in the source model's
    layout (the batch axis moved back where the source model has it)."""
    axes = (bundle.manifest["batch"].get("time_major") or {}).get("outputs", {})
    out = Runtime(bundle, *args, **kwargs).run(_feeds_for(bundle, feeds))
    return {k: np.moveaxis(v, 0, axes[k]) if k in axes else v for k, v in out.items()}


def _batch_first(model: onnx.ModelProto, feeds: dict[str, np.ndarray]):
    """The same recurrent node with layout=1: inputs and states batch-first."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    node = m.graph.node[0]
    node.attribute.append(helper.make_attribute("layout", 1))
    for vi in list(m.graph.input) + list(m.graph.output):
        dims = vi.type.tensor_type.shape.dim
        old = [d.dim_value for d in dims]
        new = [old[2], old[0], old[1], old[3]] if vi.name == "Y" else [old[1], old[0], *old[2:]] if len(old) == 3 else old
        for d, v in zip(dims, new):
            d.dim_value = v
    out = {k: (np.ascontiguousarray(np.swapaxes(v, 0, 1)) if v.ndim == 3 else v) for k, v in feeds.items()}
    return m, out


def _check_ideal(proto: onnx.ModelProto, feeds: dict[str, np.ndarray], batch_first: bool = False) -> None:
    """Compare with onnxruntime; batch_first: run the layout=1 twin of `proto` (onnxruntime's
    CPU kernels refuse layout=1, so their reference is the layout=0 run, transposed)."""
    refs = _ort(proto, feeds)
    if batch_first:
        refs = [r.transpose(2, 0, 1, 3) if r.ndim == 4 else np.swapaxes(r, 0, 1) for r in refs]
        proto, feeds = _batch_first(proto, feeds)
        if "L" not in feeds:  # onnx's reference evaluator runs layout=1 too (not sequence_lens)
            from onnx.reference import ReferenceEvaluator

            for ref, other in zip(refs, ReferenceEvaluator(proto).run(None, feeds)):
                assert close(ref, other)
    names = [o.name for o in proto.graph.output]
    for crossbar in CROSSBARS:
        bundle = convert(proto, crossbar=crossbar)
        assert bundle.manifest["summary"]["analog_layers"] >= 2
        if crossbar == (4, 6):
            assert all(e["tiles"]["tiles_used"] > 1 for e in bundle.layers)
        out = _run(bundle, feeds)
        for name, ref in zip(names, refs):
            assert out[name].shape == ref.shape, (name, crossbar)
            assert close(out[name], ref), (name, crossbar, float(np.abs(out[name] - ref).max()))


# ---------------------------------------------------------------------------------------------
# torch exports
# ---------------------------------------------------------------------------------------------

TORCH_CELLS = [("LSTM", {}), ("GRU", {}), ("RNN", {"nonlinearity": "tanh"}), ("RNN", {"nonlinearity": "relu"})]


def _torch_model(cell: str, kw: dict, opset: int, layers: int, bidirectional: bool, batch_first: bool,
                 states: bool):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    rnn = getattr(torch.nn, cell)(input_size=5, hidden_size=6, num_layers=layers, bidirectional=bidirectional,
                                  batch_first=batch_first, **kw).eval()
    t, b = 7, 3
    x = torch.randn((b, t, 5) if batch_first else (t, b, 5))
    flat, names = [x], ["x"]
    if states:
        shape = (layers * (2 if bidirectional else 1), b, 6)
        flat.append(torch.randn(shape))
        names.append("h0")
        if cell == "LSTM":
            flat.append(torch.randn(shape))
            names.append("c0")

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = rnn

        def forward(self, x, *states):
            out = self.rnn(x, (states if cell == "LSTM" else states[0]) if states else None)
            return (out[0], *out[1]) if cell == "LSTM" else out

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Wrap(), tuple(flat), buf, dynamo=False, opset_version=opset, input_names=names)
    proto = onnx.load_from_string(buf.getvalue())
    return proto, {n: v.numpy() for n, v in zip(names, flat)}


@pytest.mark.parametrize("opset", [14, 17])
@pytest.mark.parametrize("cell,kw", TORCH_CELLS, ids=["lstm", "gru", "rnn-tanh", "rnn-relu"])
@pytest.mark.parametrize("layers,bidirectional,batch_first,states", [
    (1, False, False, False),
    (2, True, True, True),
], ids=["single", "stacked-bidirectional-batchfirst-states"])
def test_torch_export_matches_onnxruntime(cell, kw, opset, layers, bidirectional, batch_first, states):
    proto, feeds = _torch_model(cell, kw, opset, layers, bidirectional, batch_first, states)
    assert any(n.op_type == cell for n in proto.graph.node)
    _check_ideal(proto, feeds)


# ---------------------------------------------------------------------------------------------
# Hand-built graphs: what torch does not export
# ---------------------------------------------------------------------------------------------

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def _onnx_rnn(cell: str, direction: str = "forward", seq_lens: bool = False,
              states: bool = False, bias: bool = True, attrs: dict | None = None, peepholes: bool = False,
              t: int = 5, b: int = 4, i: int = 3, h: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    nd = 2 if direction == "bidirectional" else 1
    g = GATES[cell]
    inits = [numpy_helper.from_array(rng.normal(0, 0.6, (nd, g * h, i)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.normal(0, 0.6, (nd, g * h, h)).astype(np.float32), "R")]
    if bias:
        inits.append(numpy_helper.from_array(rng.normal(0, 0.5, (nd, 2 * g * h)).astype(np.float32), "B"))
    x_shape, s_shape = [t, b, i], [nd, b, h]
    graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)]
    feeds = {"X": rng.normal(0, 1, x_shape).astype(np.float32)}
    node_inputs = ["X", "W", "R", "B" if bias else "", "", "", ""]
    if seq_lens:
        graph_inputs.append(helper.make_tensor_value_info("L", TensorProto.INT32, [b]))
        feeds["L"] = rng.integers(1, t + 1, b).astype(np.int32)
        feeds["L"][0] = t
        node_inputs[4] = "L"
    if states:
        graph_inputs.append(helper.make_tensor_value_info("H0", TensorProto.FLOAT, s_shape))
        feeds["H0"] = rng.normal(0, 0.5, s_shape).astype(np.float32)
        node_inputs[5] = "H0"
        if cell == "LSTM":
            graph_inputs.append(helper.make_tensor_value_info("C0", TensorProto.FLOAT, s_shape))
            feeds["C0"] = rng.normal(0, 0.5, s_shape).astype(np.float32)
            node_inputs[6] = "C0"
    if peepholes:
        inits.append(numpy_helper.from_array(rng.normal(0, 0.5, (nd, 3 * h)).astype(np.float32), "P"))
        node_inputs.append("P")
    if cell != "LSTM":
        node_inputs = node_inputs[:6]
    while node_inputs and not node_inputs[-1]:
        node_inputs.pop()
    outs = ["Y", "Y_h", "Y_c"][:3 if cell == "LSTM" else 2]
    node = helper.make_node(cell, node_inputs, outs, name="rec", hidden_size=h, direction=direction, **(attrs or {}))
    out_shapes = [[t, nd, b, h], s_shape, s_shape]
    graph = helper.make_graph([node], "g", graph_inputs,
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, sh) for o, sh in zip(outs, out_shapes)],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model, feeds


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("case,layout1", [
    (dict(direction="reverse"), False),
    (dict(direction="bidirectional", states=True), True),
    (dict(direction="forward", seq_lens=True, states=True), False),
    (dict(direction="bidirectional", seq_lens=True), False),
    (dict(direction="reverse", seq_lens=True, bias=False), True),
], ids=["reverse", "bidir-layout1-states", "seqlens-states", "bidir-seqlens", "reverse-layout1-seqlens-nobias"])
def test_hand_built_matches_onnxruntime(cell, case, layout1):
    _check_ideal(*_onnx_rnn(cell, **case), batch_first=layout1)


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_a_sequence_of_length_zero_ends_in_zero_states(cell, direction):
    """sequence_lens 0 with initial states given: onnxruntime's Y_h and Y_c are 0 there,
    not the initial states (and Y is 0 throughout)."""
    model, feeds = _onnx_rnn(cell, direction=direction, seq_lens=True, states=True)
    feeds["L"][1] = 0
    _check_ideal(model, feeds)


@pytest.mark.parametrize("lbr", [0, 1])
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_gru_linear_before_reset(lbr, direction):
    model, feeds = _onnx_rnn("GRU", direction=direction, states=True, attrs={"linear_before_reset": lbr})
    _check_ideal(model, feeds)
    names = [e["params"]["matrix"] for e in convert(model).layers]
    # linear_before_reset=0 multiplies R_h by r ⊙ h: its own crossbar layer.
    assert names.count("R_h") == (0 if lbr else len(names) // 3)


@pytest.mark.parametrize("cell,acts", [
    ("RNN", ["Relu"]), ("GRU", ["HardSigmoid", "Softsign"]), ("LSTM", ["Sigmoid", "Tanh", "Relu"]),
    ("LSTM", ["HardSigmoid", "Tanh", "Softplus"]),
])
def test_alternative_activations(cell, acts):
    _check_ideal(*_onnx_rnn(cell, attrs={"activations": acts}))


# ---------------------------------------------------------------------------------------------
# The chip path
# ---------------------------------------------------------------------------------------------

def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_chip_path_is_the_onnx_loop_over_the_chips_own_layers():
    """On a pcm chip without read noise every layer is a fixed function of its input vector;
    the runtime's LSTM must be the ONNX equations (written out here) over those functions."""
    model, feeds = _onnx_rnn("LSTM", direction="bidirectional", states=True, seq_lens=True, t=6, h=5)
    bundle = convert(model, crossbar=(4, 8))
    spec = ablate(preset("pcm"), without="read")
    rt = Runtime(bundle, spec, seed=3)
    out = _run(bundle, feeds, spec, seed=3)
    x, lens, h0, c0 = feeds["X"], feeds["L"], feeds["H0"], feeds["C0"]
    t_len, batch, hs = x.shape[0], x.shape[1], 5
    by_name = {layer.name: layer for layer in rt.layers}
    y = np.zeros((t_len, 2, batch, hs))
    for d, direction in enumerate(["forward", "reverse"]):
        w, r = by_name[f"rec/{direction}/W"], by_name[f"rec/{direction}/R"]
        for n in range(batch):
            h, c = h0[d, n:n + 1].astype(np.float32), c0[d, n:n + 1].astype(np.float32)
            steps = range(lens[n]) if direction == "forward" else range(lens[n] - 1, -1, -1)
            for t in steps:
                z = w(x[t, n:n + 1]) + r(h)  # each a product on the chip, Wb and Rb as shifts
                i, o, f, g = _sigmoid(z[:, :hs]), _sigmoid(z[:, hs:2 * hs]), _sigmoid(z[:, 2 * hs:3 * hs]), np.tanh(z[:, 3 * hs:])
                c = f * c + i * g
                h = (o * np.tanh(c)).astype(np.float32)
                y[t, d, n] = h[0]
            np.testing.assert_allclose(out["Y_h"][d, n], h[0], atol=1e-5)
            np.testing.assert_allclose(out["Y_c"][d, n], c[0], atol=1e-5)
    np.testing.assert_allclose(out["Y"], y, atol=1e-5)
    ideal = _run(bundle, feeds)["Y"]
    assert 1e-4 < np.abs(out["Y"] - ideal).max() < 0.5  # the chip's error is really there


def test_chip_noise_is_seeded_and_plausible():
    model, feeds = _onnx_rnn("GRU", direction="bidirectional", t=6)
    bundle = convert(model, crossbar=(8, 8))
    ideal = _run(bundle, feeds)["Y"]
    exact_tiles = _run(bundle, feeds, preset("ideal"), seed=0)["Y"]  # the full per-tile path
    assert close(exact_tiles, ideal)
    a, b, other = (_run(bundle, feeds, preset("pcm"), seed=s)["Y"] for s in (1, 1, 2))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, other)
    err = np.abs(a - ideal).mean() / np.abs(ideal).mean()
    assert 1e-3 < err < 0.3, err


def test_ranges_of_recurrent_layers():
    model, feeds = _onnx_rnn("LSTM", b=32, t=4)
    bundle = convert(model, crossbar=(8, 8))
    spec = preset("pcm")
    find_ranges(bundle, _feeds_for(bundle, feeds)["X"], spec)
    ranges = {e["params"]["matrix"]: e["ranges"]["input"] for e in bundle.layers}
    assert set(ranges) == {"W", "R"}
    assert 0 < ranges["R"] < 1 < ranges["W"]  # h = o·tanh(c) is in (−1, 1); x is N(0, 1)
    calibrated = _run(bundle, feeds, spec.override({"dac.range": "calibrated"}), seed=0)["Y"]
    assert np.abs(calibrated - _run(bundle, feeds)["Y"]).max() < 0.5


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_calibration_refits_the_gate_affines(cell):
    """Uncompensated drift is a per-column scale: the per-output fit of W, R (and R_h) wins
    most of it back."""
    model, feeds = _onnx_rnn(cell, direction="bidirectional", b=64, t=5, h=8)
    bundle = convert(model, crossbar=(8, 8))
    spec = preset("pcm").override({"drift_compensation": "off", "t_inference": 86400.0})
    out, record = calibrate(bundle, _feeds_for(bundle, feeds)["X"], spec, seed=0, method="affine")
    assert sorted(record["layers"]) == sorted(e["name"] for e in bundle.layers)
    ideal = _run(bundle, feeds)["Y"]
    before = np.abs(_run(bundle, feeds, spec, seed=0)["Y"] - ideal).mean()
    after = np.abs(_run(out, feeds, spec, seed=0)["Y"] - ideal).mean()
    assert after < 0.5 * before, (before, after)


def _with_batch(model: onnx.ModelProto, batch_axis: dict[str, int]) -> onnx.ModelProto:
    """`model` with the batch dimension of each named input/output (at the axis given) symbolic."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in list(m.graph.input) + list(m.graph.output):
        if vi.name in batch_axis:
            d = vi.type.tensor_type.shape.dim[batch_axis[vi.name]]
            d.Clear()
            d.dim_param = "batch"
    return m


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
@pytest.mark.parametrize("layout1", [False, True], ids=["layout0", "layout1"])
def test_a_fixed_batch_runs_its_recurrent_node_on_the_whole_batch(cell, layout1):
    """A graph that fixes its batch at 4, run on 32 samples: the recurrent node, like any
    analog layer, gets all of them at once, so a noisy chip makes exactly the calls (and
    draws) of the same model with a symbolic batch, and calibration sees and fits W and R.
    It ran chunk by chunk of 4 before, out of calibration's sight."""
    model, _ = _onnx_rnn(cell, direction="bidirectional", b=4, t=5, h=6)
    axes = {"X": 1, "Y": 2, "Y_h": 1, "Y_c": 1}
    if layout1:
        model, _ = _batch_first(model, {})
        axes = {k: 0 for k in axes}
    samples = np.random.default_rng(7).normal(0, 1, (32, 5, 3)).astype(np.float32)  # batch-first, as bundles take X
    fixed, symbolic = (convert(m, crossbar=(8, 8)) for m in (model, _with_batch(model, axes)))
    assert fixed.manifest["batch"]["mode"] == "fixed" and symbolic.manifest["batch"]["mode"] != "fixed"
    spec = preset("pcm").override({"drift_compensation": "off", "t_inference": 86400.0})
    out_f, out_s = (Runtime(b, spec, seed=3).run({"X": samples}) for b in (fixed, symbolic))
    for name in out_s:
        assert np.array_equal(out_f[name], out_s[name]), name
    cal_f, rec_f = calibrate(fixed, samples, spec, seed=0, method="affine")
    cal_s, rec_s = calibrate(symbolic, samples, spec, seed=0, method="affine")
    assert sorted(rec_f["layers"]) == sorted(rec_s["layers"]) == sorted(e["name"] for e in fixed.layers)
    for ef, es in zip(cal_f.layers, cal_s.layers):
        assert np.array_equal(cal_f.arrays[ef["arrays"]["gamma"]], cal_s.arrays[es["arrays"]["gamma"]])


# ---------------------------------------------------------------------------------------------
# Refusals and the command line
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cell,kwargs", [
    ("LSTM", dict(peepholes=True)),
    ("LSTM", dict(peepholes=True, direction="bidirectional", seq_lens=True, states=True)),
    ("LSTM", dict(attrs={"clip": 0.7}, states=True)),
    ("GRU", dict(attrs={"clip": 0.7, "linear_before_reset": 1})),
    ("GRU", dict(attrs={"clip": 0.7})),
    ("RNN", dict(attrs={"clip": 0.7})),
    ("LSTM", dict(attrs={"input_forget": 1}, peepholes=True, states=True)),
], ids=["peepholes", "peepholes-bidir-seqlens", "lstm-clip", "gru-lbr-clip", "gru-clip", "rnn-clip", "input-forget"])
def test_peepholes_clip_input_forget(cell, kwargs):
    _check_ideal(*_onnx_rnn(cell, **kwargs))


@pytest.mark.parametrize("kwargs,needle", [
    (dict(attrs={"activations": ["Sigmoid", "Tanh", "Affine"], "activation_alpha": [0.5],
                 "activation_beta": [0.1]}), "activation_alpha"),
    (dict(attrs={"activations": ["Sigmoid", "Tanh", "ScaledTanh"]}), "ScaledTanh"),
    (dict(attrs={"activations": ["Sigmoid", "ThresholdedRelu", "Tanh"]}), "disagree"),
])
def test_refusals_through_the_cli(tmp_path, kwargs, needle):
    model, _ = _onnx_rnn("LSTM", **kwargs)
    src, out = tmp_path / "m.onnx", tmp_path / "m.xbar"
    onnx.save(model, src)
    r = CliRunner().invoke(cli, ["convert", str(src), "-o", str(out)], catch_exceptions=False)
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    assert "'rec'" in r.output and needle in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1  # one paragraph
    assert not out.exists()
    with pytest.raises(UnsupportedOpError):
        convert(model)


def test_cli_convert_info_calibrate(tmp_path):
    model, feeds = _onnx_rnn("GRU", direction="bidirectional", b=32, t=4)
    src, bundle, data = tmp_path / "m.onnx", tmp_path / "m.xbar", tmp_path / "d.npz"
    onnx.save(model, src)
    np.savez(data, x=np.swapaxes(feeds["X"], 0, 1))  # one sample per index of axis 0
    run = CliRunner()
    r = run.invoke(cli, ["convert", str(src), "-o", str(bundle), "--crossbar", "8x8"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    r = run.invoke(cli, ["info", str(bundle)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    for name in ("rec/forward/W", "rec/forward/R", "rec/forward/R_h", "rec/reverse/R"):
        assert name in r.output
    assert "recurrent" in r.output


@pytest.mark.parametrize("symbolic", [True, False], ids=["seq", "fixed"])
def test_info_counts_vectors_per_time_step(tmp_path, symbolic):
    """Recurrent products run once per time step: `info` says so by the time dimension's name
    (or size), per layer and in the ADC total, rather than calling it the batch."""
    model, _ = _onnx_rnn("LSTM", t=5, h=5)
    if symbolic:  # X is (seq, batch, features), time-major; Y (seq, directions, batch, hidden)
        for value in (model.graph.input[0], model.graph.output[0]):
            value.type.tensor_type.shape.dim[0].dim_param = "seq"
    src, bundle = tmp_path / "m.onnx", tmp_path / "m.xbar"
    onnx.save(model, src)
    run = CliRunner()
    assert run.invoke(cli, ["convert", str(src), "-o", str(bundle), "--crossbar", "8x8"]).exit_code == 0
    out = run.invoke(cli, ["info", str(bundle)], catch_exceptions=False).output
    layers = [l for l in load_bundle(bundle).layers if l["placement"] == "analog"]
    steps = "seq" if symbolic else "5"
    for layer in layers:
        apv = layer["tiles"]["adc_per_vector"]
        row = next(line for line in out.splitlines() if line.startswith(layer["name"] + " "))
        assert f"{steps}×{layer['N']}" in row, row
        assert (f"{apv:,}×seq" if symbolic else f"{5 * apv:,}") in row.split(), row
    per_step = sum(l["tiles"]["adc_per_vector"] for l in layers)
    total = f"{per_step:,}×seq" if symbolic else f"{5 * per_step:,}"
    assert f"{total} ADC conversions per sample" in out, out
    assert "one input and one output vector per time step" in " ".join(out.split())


@pytest.mark.parametrize("name", ["T", "unk__3"])
def test_info_says_T_is_unnamed_only_when_it_is(tmp_path, name):
    """A time axis the model names T shows as T without a note; one only shape inference
    names (unk__) shows as T with the note that the model leaves it unnamed."""
    model, _ = _onnx_rnn("LSTM", t=5, h=5)
    for value in (model.graph.input[0], model.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = name
    src, bundle = tmp_path / "m.onnx", tmp_path / "m.xbar"
    onnx.save(model, src)
    run = CliRunner()
    assert run.invoke(cli, ["convert", str(src), "-o", str(bundle), "--crossbar", "8x8"]).exit_code == 0
    out = " ".join(run.invoke(cli, ["info", str(bundle)], catch_exceptions=False).output.split())
    assert "×T ADC conversions per sample" in out, out
    assert ("unnamed in the model" in out) is (name != "T"), out


@pytest.mark.parametrize("options", [
    dict(encoding="offset"),
    dict(afp_exponents=2),
    dict(replicas=2),
    dict(digital=["rec/forward/R", "rec/reverse/W"]),
], ids=["offset", "afp", "replicas", "digital"])
def test_convert_options_keep_the_network_exact(options):
    model, feeds = _onnx_rnn("LSTM", direction="bidirectional", states=True)
    refs = _ort(model, feeds)
    bundle = convert(model, crossbar=(4, 8), **options)
    placements = [e["placement"] for e in bundle.layers]
    assert placements.count("digital") == len(options.get("digital", []))
    for out, ref in zip(_run(bundle, feeds).values(), refs):
        assert close(out, ref)


def test_rearranged_columns_run_on_a_chip():
    model, feeds = _onnx_rnn("GRU", t=4)
    spec = preset("pcm")
    plain = convert(model, crossbar=(8, 8), hardware=spec)
    moved = convert(model, crossbar=(8, 8), hardware=spec, rearrange="ir-drop", rearrange_rows="ir-drop")
    ideal = _run(plain, feeds)["Y"]
    assert close(_run(moved, feeds)["Y"], ideal)  # placement is undone exactly
    for b in (plain, moved):
        y = _run(b, feeds, spec, seed=0)["Y"]
        assert np.abs(y - ideal).max() < 0.5


def test_bundle_round_trip_keeps_the_recurrent_node(tmp_path):
    from xbar.bundle import load_bundle, save_bundle

    model, feeds = _onnx_rnn("LSTM", direction="bidirectional", peepholes=True, seq_lens=True, states=True,
                             attrs={"clip": 2.0})
    path = save_bundle(convert(model, crossbar=(4, 8), digital=["rec/reverse/R"]), tmp_path / "m.xbar")
    loaded = load_bundle(path)  # validates the manifest
    refs = _ort(model, feeds)
    for out, ref in zip(_run(loaded, feeds).values(), refs):
        assert close(out, ref)


def test_time_major_graph_input_left_time_major_is_refused_for_data_files(tmp_path, monkeypatch):
    """Data files are batched along axis 0; a layout-0 recurrent node fed by a graph input
    has time there. The converter takes such inputs batch-first (tests/test_time_major.py);
    where it could not (here it is switched off), eval, calibrate and --calib-data refuse
    instead of cutting sequences."""
    import sys

    monkeypatch.setattr(sys.modules["xbar.converter.convert"], "batch_first", lambda proto: (proto, None))
    model, feeds = _onnx_rnn("LSTM", t=5, b=4)
    src, bundle, data = tmp_path / "m.onnx", tmp_path / "m.xbar", tmp_path / "d.npz"
    onnx.save(model, src)
    np.savez(data, x=feeds["X"])
    run = CliRunner()
    r = run.invoke(cli, ["convert", str(src), "-o", str(bundle), "--hardware", "pcm", "--calib-data", str(data)],
                   catch_exceptions=False)
    assert r.exit_code == 1 and "time-major" in r.output and "Traceback" not in r.output, r.output
    assert not bundle.exists()
    r = run.invoke(cli, ["convert", str(src), "-o", str(bundle)], catch_exceptions=False)
    assert r.exit_code == 0 and "is time for recurrent node 'rec'" in r.output, r.output
    assert load_bundle(bundle).manifest["batch"]["dim"] is None  # axis 0 is not the batch
    for args in (["eval", str(bundle), "--data", str(data)],
                 ["calibrate", str(bundle), "--data", str(data), "--hardware", "pcm", "--drift", "1d"]):
        r = run.invoke(cli, args, catch_exceptions=False)
        assert r.exit_code == 1 and "time-major" in r.output and "'rec'" in r.output, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz", "m.onnx", "m.xbar"]


def test_initial_states_as_graph_inputs_are_refused_for_data_files_with_what_to_do(tmp_path):
    """torch's advice for LSTMs with a dynamic batch is to export h0/c0 as inputs; a data file
    holds them with the batch on axis 1, so eval and calibrate say so up front, with what to do,
    and write nothing."""
    model, feeds = _onnx_rnn("LSTM", states=True)
    src, bundle, data = tmp_path / "m.onnx", tmp_path / "m.xbar", tmp_path / "d.npz"
    onnx.save(model, src)
    np.savez(data, x=np.swapaxes(feeds["X"], 0, 1))
    run = CliRunner()
    assert run.invoke(cli, ["convert", str(src), "-o", str(bundle)]).exit_code == 0
    for args in (["eval", str(bundle), "--data", str(data)],
                 ["calibrate", str(bundle), "--data", str(data), "--hardware", "pcm", "--drift", "1d",
                  "-o", str(tmp_path / "c.xbar")]):
        r = run.invoke(cli, args, catch_exceptions=False)
        flat = " ".join(r.output.split())
        assert r.exit_code == 1 and "initial state 'H0' from a graph input" in flat and "Python API" in flat, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz", "m.onnx", "m.xbar"]
