"""Time-major recurrent inputs (ONNX layout 0, torch's default batch_first=False) taken
batch-first by the converter (converter/time_major.py), checked against onnxruntime on the
source model with the axes swapped back, and through the CLI on data files that hold one
sample per index of axis 0."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import close
from xbar.cli import cli
from xbar.converter.convert import convert
from xbar.runtime.executor import Runtime

T, B, F, H, C, VOCAB = 6, 5, 4, 7, 3, 11


def _model(embed: bool, classifier: bool) -> onnx.ModelProto:
    """tokens (seq, batch) -> Gather -> or x (seq, batch, F) -> bidirectional LSTM (layout 0)
    -> Y (seq, 2, batch, H), Y_h (2, batch, H) [-> logits (batch, C) from the forward Y_h]."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (2, 4 * H, F)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.normal(0, 0.5, (2, 4 * H, H)).astype(np.float32), "R"),
             numpy_helper.from_array(rng.normal(0, 0.3, (2, 8 * H)).astype(np.float32), "Bias")]
    nodes = []
    if embed:
        inits.append(numpy_helper.from_array(rng.normal(0, 1, (VOCAB, F)).astype(np.float32), "table"))
        inputs = [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["seq", "batch"])]
        nodes.append(helper.make_node("Gather", ["table", "tokens"], ["x"], name="embed"))
    else:
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["seq", "batch", F])]
    nodes.append(helper.make_node("LSTM", ["x", "W", "R", "Bias"], ["Y", "Y_h"], name="rec", hidden_size=H,
                                  direction="bidirectional"))
    outputs = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["seq", 2, "batch", H]),
               helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [2, "batch", H])]
    if classifier:
        inits += [numpy_helper.from_array(np.array([0], np.int64), "first"),
                  numpy_helper.from_array(rng.normal(0, 1, (H, C)).astype(np.float32), "head")]
        nodes += [helper.make_node("Gather", ["Y_h", "first"], ["h1"], name="forward_h", axis=0),
                  helper.make_node("Squeeze", ["h1", "first"], ["h"], name="squeeze"),
                  helper.make_node("MatMul", ["h", "head"], ["logits"], name="head_mm")]
        outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", C])]
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _samples(embed: bool, n: int, seed: int = 1) -> np.ndarray:
    """n samples, one per index of axis 0: (n, seq) tokens or (n, seq, F) vectors."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, VOCAB, (n, T)) if embed else rng.normal(0, 1, (n, T, F)).astype(np.float32)


def _ort(model: onnx.ModelProto, name: str, samples: np.ndarray) -> list[np.ndarray]:
    """The source model on its own layout: time on axis 0."""
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {name: np.ascontiguousarray(np.swapaxes(samples, 0, 1))})


@pytest.mark.parametrize("embed", [False, True], ids=["direct", "through-embedding"])
def test_inputs_and_outputs_become_batch_first_and_the_network_is_exact(embed):
    model = _model(embed, classifier=False)
    bundle = convert(model, crossbar=(8, 8))
    name = "tokens" if embed else "x"
    moved = bundle.manifest["batch"]["time_major"]
    assert moved == {"nodes": ["rec"], "inputs": [name], "outputs": {"Y": 2, "Y_h": 1}}
    assert bundle.manifest["batch"]["dim"] == "batch"
    io = {i["name"]: i for i in bundle.graph["inputs"] + bundle.graph["outputs"]}
    assert io[name]["shape"][:2] == [None, None] and io[name]["dim_names"][:2] == ["batch", "seq"]
    assert io["Y"]["dim_names"] == ["batch", "seq", None, None] and io["Y_h"]["dim_names"] == ["batch", None, None]
    x = _samples(embed, B)
    y, y_h = _ort(model, name, x)
    got = Runtime(bundle).run({name: x})
    # Y was (seq, 2, batch, H): its batch axis leads, the rest keep their order.
    assert close(got["Y"], np.moveaxis(y, 2, 0)) and close(got["Y_h"], np.moveaxis(y_h, 1, 0))
    # Samples are independent: any split of the batch gives the same rows.
    parts = [Runtime(bundle).run({name: x[s]})["Y"] for s in (slice(0, 2), slice(2, B))]
    assert close(np.concatenate(parts), got["Y"])


def test_eval_and_calibrate_run_samples_first_data_with_the_reference(tmp_path):
    model = _model(embed=True, classifier=True)
    src, bundle, data = tmp_path / "m.onnx", tmp_path / "m.xbar", tmp_path / "d.npz"
    onnx.save(model, src)
    x = _samples(True, 40)
    logits = _ort(model, "tokens", x)[0]
    np.savez(data, x=x, y=logits.argmax(1))
    run = CliRunner()
    r = run.invoke(cli, ["convert", str(src), "-o", str(bundle), "--crossbar", "8x8", "--hardware", "pcm",
                         "--calib-data", str(data)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "time-major input 'tokens' taken batch-first" in " ".join(r.output.split()), r.output
    r = run.invoke(cli, ["eval", str(bundle), "--data", str(data), "--reference", str(src), "--seeds", "0",
                         "--batch-size", "7", "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res["ideal_accuracy"] == 1.0, res  # the labels are the source model's own
    assert res["reference"]["agreement"] == 1.0 and res["reference"]["max_rel_diff"] < 1e-5, res["reference"]
    r = run.invoke(cli, ["calibrate", str(bundle), "--data", str(data), "--drift", "1d", "-o",
                         str(tmp_path / "c.xbar")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    info = run.invoke(cli, ["info", str(bundle)], catch_exceptions=False).output
    assert "tokens batch×seq -> logits batch×3" in info, info


@pytest.mark.parametrize("t", [T, B], ids=["seq-6", "seq-equal-to-batch"])
def test_fixed_sizes_are_followed_by_provisional_names(tmp_path, t):
    """Fixed sizes on the first two axes get provisional names for shape inference, so the
    embedding's path to the recurrent node is followed as with named axes: the input is
    taken batch-first with a fixed batch, also where the sequence length equals the batch
    size and nothing in the numbers tells them apart. eval scores the source model's own
    labels exactly, against onnxruntime on the source model."""
    model = _model(embed=True, classifier=True)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[0].dim_value, dims[1].dim_value = t, B
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_value = B
    src, bundle, data = tmp_path / "m.onnx", tmp_path / "m.xbar", tmp_path / "d.npz"
    onnx.save(model, src)
    x = np.random.default_rng(3).integers(0, VOCAB, (6 * B, t))
    logits = np.concatenate([_ort(model, "tokens", x[k:k + B])[0] for k in range(0, len(x), B)])
    np.savez(data, x=x, y=logits.argmax(1))
    run = CliRunner()
    r = run.invoke(cli, ["convert", str(src), "-o", str(bundle), "--crossbar", "8x8"], catch_exceptions=False)
    assert r.exit_code == 0 and "taken batch-first" in " ".join(r.output.split()), r.output
    batch = json.loads(run.invoke(cli, ["info", str(bundle), "--json"]).output)["batch"]
    assert batch["mode"] == "fixed" and batch["size"] == B and batch["time_major"]["inputs"] == ["tokens"], batch
    r = run.invoke(cli, ["eval", str(bundle), "--data", str(data), "--reference", str(src), "--json"],
                   catch_exceptions=False)
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res["ideal_accuracy"] == 1.0 and res["reference"]["agreement"] == 1.0, res


def _unnamed(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with every dynamic axis of its inputs and outputs left unnamed, as an export
    without names for them leaves it."""
    for value in list(model.graph.input) + list(model.graph.output):
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                dim.Clear()
    return model


@pytest.mark.parametrize("embed", [False, True], ids=["direct", "through-embedding"])
def test_unnamed_dynamic_axes_are_followed_by_provisional_names(embed):
    """Unnamed dynamic axes get names for shape inference only: the recurrent node's layout
    says which one is the batch, and the input and outputs are moved as with named axes.
    The bundle declares them unnamed, as the source did."""
    model = _unnamed(_model(embed, classifier=False))
    name = "tokens" if embed else "x"
    bundle = convert(model, crossbar=(8, 8))
    assert bundle.manifest["batch"]["time_major"] == {"nodes": ["rec"], "inputs": [name], "outputs": {"Y": 2, "Y_h": 1}}
    io = {i["name"]: i for i in bundle.graph["inputs"]}
    assert not any(io[name].get("dim_names") or [])
    x = _samples(embed, B)
    y, y_h = _ort(model, name, x)
    got = Runtime(bundle).run({name: x})
    assert close(got["Y"], np.moveaxis(y, 2, 0)) and close(got["Y_h"], np.moveaxis(y_h, 1, 0))


def test_unnamed_axes_through_an_embedding_evaluate_per_sample(tmp_path):
    """The case that was scored wrongly before: with the sequence length equal to the batch
    size nothing in the shapes told time from batch, and eval's batches of samples reached
    the graph as [time, batch] without an error."""
    model = _unnamed(_model(embed=True, classifier=True))
    src, bundle, data = tmp_path / "m.onnx", tmp_path / "m.xbar", tmp_path / "d.npz"
    onnx.save(model, src)
    x = _samples(True, 4 * T)
    np.savez(data, x=x, y=_ort(model, "tokens", x)[0].argmax(1))
    run = CliRunner()
    assert run.invoke(cli, ["convert", str(src), "-o", str(bundle), "--crossbar", "8x8"]).exit_code == 0
    r = run.invoke(cli, ["eval", str(bundle), "--data", str(data), "--reference", str(src), "--batch-size", str(T),
                         "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res["ideal_accuracy"] == 1.0 and res["reference"]["agreement"] == 1.0, res
    # Shape inference's own names (unk__3) name nothing the user wrote; info does not show them.
    info = " ".join(run.invoke(cli, ["info", str(bundle)], catch_exceptions=False).output.split())
    assert "tokens N×? -> logits N×3" in info, info
    assert "×T ADC conversions per sample (T: the number of time steps" in info, info
    assert "unk__" not in info, info


@pytest.mark.parametrize("exporter", ["torchscript", pytest.param("dynamo", marks=pytest.mark.slow)])
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_torch_default_layout_exports(tmp_path, cell, exporter):
    """torch's default recurrent layers (batch_first=False) exported with named dynamic axes,
    by both exporters: the bundle takes samples first and matches onnxruntime's time-major run."""
    torch = pytest.importorskip("torch")
    import warnings

    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = getattr(torch.nn, cell)(F, H, num_layers=2, bidirectional=True)
            self.fc = torch.nn.Linear(2 * H, C)

        def forward(self, x):
            return self.fc(self.rnn(x)[0][-1])

    path = tmp_path / "m.onnx"
    x = torch.randn(T, 2, F)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            torch.onnx.export(Net().eval(), (x,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                              output_names=["y"], dynamic_axes={"x": {0: "seq", 1: "batch"}, "y": {0: "batch"}})
        else:
            torch.onnx.export(Net().eval(), (x,), str(path), dynamo=True, opset_version=18, input_names=["x"],
                              output_names=["y"], verbose=False,
                              dynamic_shapes={"x": {0: torch.export.Dim("seq"), 1: torch.export.Dim("batch")}})
    model = onnx.load(str(path))
    bundle = convert(model)
    assert bundle.manifest["batch"]["time_major"]["inputs"] == ["x"]
    samples = _samples(False, B)
    assert close(Runtime(bundle).run({"x": samples})["y"], _ort(model, "x", samples)[0])


def _pooled_over_time(axis1) -> onnx.ModelProto:
    """x [seq, batch, F] (a time-major transformer's layout, no recurrent node) -> mean over
    time -> MatMul head -> y [batch, C]; the batch axis declared as `axis1`."""
    rng = np.random.default_rng(2)
    head = numpy_helper.from_array(rng.normal(0, 1, (F, C)).astype(np.float32), "head")
    axes = numpy_helper.from_array(np.array([0], np.int64), "time")
    nodes = [helper.make_node("ReduceMean", ["x", "time"], ["pooled"], name="pool", keepdims=0),
             helper.make_node("MatMul", ["pooled", "head"], ["y"], name="head_mm")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [T, axis1, F])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [axis1, C])], [head, axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("axis1", ["batch", None, B], ids=["named", "unnamed", "fixed"])
def test_batch_on_axis_1_without_a_recurrent_node(tmp_path, axis1):
    """A time-major model without a recurrent node (torch's batch_first=False attention,
    pooled over time): its first output leads with the input's axis 1, so that axis is the
    batch, and the input is taken batch-first; data files of samples evaluate exactly."""
    model = _pooled_over_time(axis1)
    src, bundle, data = tmp_path / "m.onnx", tmp_path / "m.xbar", tmp_path / "d.npz"
    onnx.save(model, src)
    x = _samples(False, 4 * B)
    logits = np.concatenate([_ort(model, "x", x[k:k + B])[0] for k in range(0, len(x), B)])
    np.savez(data, x=x, y=logits.argmax(1))
    run = CliRunner()
    r = run.invoke(cli, ["convert", str(src), "-o", str(bundle), "--crossbar", "8x8"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "its batch was on axis 1" in " ".join(r.output.split()), r.output
    moved = json.loads(run.invoke(cli, ["info", str(bundle), "--json"]).output)["batch"]["time_major"]
    assert moved == {"nodes": [], "inputs": ["x"], "outputs": {}}, moved
    r = run.invoke(cli, ["eval", str(bundle), "--data", str(data), "--reference", str(src), "--json"],
                   catch_exceptions=False)
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res["ideal_accuracy"] == 1.0 and res["reference"]["agreement"] == 1.0, res


def test_a_batch_first_input_with_a_time_major_output_is_left_alone():
    """tokens [batch, seq] -> embedding -> transposed to [seq, batch, F] as the output: the
    output leads with the input's axis 1, but axis 0 is still in it, so nothing says axis 1
    is the batch (it is not): with unnamed and with fixed sizes, nothing is moved."""
    rng = np.random.default_rng(4)
    table = numpy_helper.from_array(rng.normal(0, 1, (VOCAB, F)).astype(np.float32), "table")
    nodes = [helper.make_node("Gather", ["table", "tokens"], ["e"], name="embed"),
             helper.make_node("Transpose", ["e"], ["y"], name="to_time_major", perm=[1, 0, 2])]
    for dims in ([None, None], [B, T]):
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("tokens", TensorProto.INT64, dims)],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [dims[1], dims[0], F])],
                                  [table])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        assert "time_major" not in convert(model, crossbar=(8, 8)).manifest["batch"]


def _per_token(dims: list) -> onnx.ModelProto:
    """x `dims` (F features last) -> a per-token MatMul head -> y of the same leading axes:
    a time-major transformer's per-token output keeps both axes."""
    head = numpy_helper.from_array(np.random.default_rng(5).normal(0, 1, (F, C)).astype(np.float32), "head")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "head"], ["y"], name="head_mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims + [F])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims + [C])], [head])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("axis1", ["batch", "batch_size"])
def test_axis_1_named_the_batch_is_taken_batch_first_with_a_per_token_output(axis1):
    """[seq, batch, d] named so (torch's batch_first=False attention exported with
    Dim("batch")), output [seq, batch, C]: the names say where the batch is, so the input and
    the output are taken batch-first, rather than data being cut along the sequence."""
    model = _per_token(["seq", axis1])
    bundle = convert(model, crossbar=(8, 8))
    assert bundle.manifest["batch"]["time_major"] == {"nodes": [], "inputs": ["x"], "outputs": {"y": 1}}
    samples = np.random.default_rng(6).normal(0, 1, (B, T, F)).astype(np.float32)
    ref = np.swapaxes(_ort(model, "x", samples)[0], 0, 1)
    assert close(Runtime(bundle).run({"x": samples})["y"], ref)


@pytest.mark.parametrize("dims", [["batch", "seq"], ["batch", "n_batch"], [None, "seq"]])
def test_a_leading_batch_by_name_or_unnamed_stays(dims):
    """Batch-first by name, both axes batch-like (nothing to tell them apart), or an unnamed
    leading axis with a per-token output: nothing is moved."""
    assert "time_major" not in convert(_per_token(dims), crossbar=(8, 8)).manifest["batch"]


def test_a_batch_of_1_squeezed_out_of_the_output_is_not_time():
    """ids [1, seq] -> logits [seq, vocab] (a batch-1 export that squeezes its batch): the
    output leads with the input's axis 1 and has lost axis 0, as a pooled time-major model's
    does, but a fixed 1 on axis 0 is the batch. Nothing is moved; the model runs its own
    shape, one sequence per sample, equal to onnxruntime."""
    rng = np.random.default_rng(8)
    table = numpy_helper.from_array(rng.normal(0, 1, (VOCAB, F)).astype(np.float32), "table")
    axis0 = numpy_helper.from_array(np.array([0], np.int64), "axis0")
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
             helper.make_node("ReduceMean", ["e"], ["mu"], axes=[1], keepdims=1),
             helper.make_node("Sub", ["e", "mu"], ["c"]),
             helper.make_node("Squeeze", ["c", "axis0"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, "seq"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["seq", F])], [table, axis0])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    bundle = convert(model, crossbar=(8, 8))
    assert "time_major" not in bundle.manifest["batch"]
    ids = rng.integers(0, VOCAB, (3, T))
    from xbar.runtime.evaluate import predict

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = np.stack([sess.run(None, {"ids": ids[k:k + 1]})[0] for k in range(3)])
    for batch_size in (1, 2):
        assert close(predict(Runtime(bundle), ids, batch_size), ref)


def _torch_encoder(tmp_path, pooled: bool, mask: bool, batch_first: bool = False):
    """torch's TransformerEncoderLayer, exported with fixed sizes (so its Reshapes hold
    constant shapes that no dimension name can be followed through): src [T, B, 8] (or
    [B, T, 8] batch-first), an optional key_padding_mask [B, T]; output pooled over time
    [B, C] or per token [T, B, 8]."""
    import torch
    import torch.nn as nn

    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=batch_first)
            self.fc = nn.Linear(8, C)

        def forward(self, src, pad=None):
            h = self.enc(src, src_key_padding_mask=pad)
            return self.fc(h.mean(1 if batch_first else 0)) if pooled else h

    src = torch.randn((B, T, 8) if batch_first else (T, B, 8))
    pad = torch.zeros(B, T, dtype=torch.bool)
    pad[:, T - 2:] = True
    path = tmp_path / "enc.onnx"
    args, names = ((src, pad), ["src", "pad"]) if mask else ((src,), ["src"])
    torch.onnx.export(Net().eval(), args, str(path), input_names=names, output_names=["o"], dynamo=False,
                      opset_version=17)
    return path


@pytest.mark.parametrize("pooled,mask", [(True, True), (True, False), (False, False)],
                         ids=["pooled-with-mask", "pooled", "per-token"])
def test_fixed_size_time_major_attention_is_found_by_onnxruntime(tmp_path, pooled, mask):
    """A time-major encoder exported with fixed sizes: no name reaches its output, so
    onnxruntime tells where the batch is. The input (not the mask, already batch-first) is
    taken batch-first, a per-token output too; the batch is the declared 5 on axis 1, and
    data files of samples evaluate exactly, in batches of 5 (also through --reference)."""
    src = _torch_encoder(tmp_path, pooled, mask)
    bundle = convert(str(src), crossbar=(16, 16))
    batch = bundle.manifest["batch"]
    assert batch["mode"] == "fixed" and batch["size"] == B, batch
    assert batch["time_major"] == {"nodes": [], "inputs": ["src"], "outputs": {} if pooled else {"o": 1}}, batch
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, (3 * B, T, 8)).astype(np.float32)
    pad = np.zeros((3 * B, T), bool)
    pad[:, T - 2:] = True
    sess = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    ref = []
    for k in range(0, 3 * B, B):
        feeds = {"src": np.ascontiguousarray(np.swapaxes(x[k:k + B], 0, 1))} | ({"pad": pad[k:k + B]} if mask else {})
        y = sess.run(None, feeds)[0]
        ref.append(y if pooled else np.swapaxes(y, 0, 1))
    got = Runtime(bundle).run({"src": x} | ({"pad": pad} if mask else {}))["o"]
    assert close(got, np.concatenate(ref))
    if pooled:
        data, out = tmp_path / "d.npz", tmp_path / "m.xbar"
        np.savez(data, src=x, **({"pad": pad} if mask else {}))
        run = CliRunner()
        assert run.invoke(cli, ["convert", str(src), "-o", str(out), "--crossbar", "16x16"]).exit_code == 0
        r = run.invoke(cli, ["eval", str(out), "--data", str(data), "--reference", str(src), "--json"])
        assert r.exit_code == 0, r.output
        assert json.loads(r.output)["reference"]["agreement"] == 1.0


def test_fixed_size_batch_first_attention_is_left_alone(tmp_path):
    """The same encoder batch-first with fixed sizes: new values in one sample change only
    that sample's output, so axis 0 is the batch, as declared; nothing is moved."""
    bundle = convert(str(_torch_encoder(tmp_path, pooled=True, mask=True, batch_first=True)), crossbar=(16, 16))
    assert "time_major" not in bundle.manifest["batch"] and bundle.manifest["batch"]["size"] == B


def test_a_second_operand_fed_as_an_input_is_not_a_time_major_batch():
    """x [8, 4] @ w [4, 3], both graph inputs with fixed sizes (a digital MatMul): new values
    in one column of w change one column of y, as a batch on axis 1 would, but its 3 is not
    x's batch of 8; nothing is moved, and the bundle runs the graph as it is."""
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 4]),
                               helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    bundle = convert(model, crossbar=(8, 8))
    assert "time_major" not in bundle.manifest["batch"], bundle.manifest["batch"]
    rng = np.random.default_rng(9)
    x, w = rng.normal(0, 1, (8, 4)).astype(np.float32), rng.normal(0, 1, (4, 3)).astype(np.float32)
    assert close(Runtime(bundle).run({"x": x, "w": w})["y"], x @ w)


def test_an_initial_state_input_of_a_batch_first_model_is_taken_batch_first(tmp_path):
    """torch's advice for a dynamic batch: h0 as a graph input, [layers, batch, hidden]. With
    a batch-first x beside it, the graph shows h0's batch on axis 1: convert takes h0
    batch-first, data files hold it per sample, and eval --reference feeds the source its own
    layout (README, "Inputs and data files")."""
    torch = pytest.importorskip("torch")
    import warnings

    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.GRU(F, H, batch_first=True)
            self.fc = torch.nn.Linear(H, C)

        def forward(self, x, h0):
            return self.fc(self.rnn(x, h0)[0][:, -1])

    src, bundle, data = tmp_path / "m.onnx", tmp_path / "m.xbar", tmp_path / "d.npz"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Net().eval(), (torch.randn(2, T, F), torch.randn(1, 2, H)), str(src), dynamo=False,
                          opset_version=17, input_names=["x", "h0"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "h0": {1: "batch"}, "y": {0: "batch"}})
    rng = np.random.default_rng(5)
    n = 12
    np.savez(data, x=rng.normal(size=(n, T, F)).astype(np.float32), h0=rng.normal(size=(n, 1, H)).astype(np.float32))
    run = CliRunner()
    r = run.invoke(cli, ["convert", str(src), "-o", str(bundle)], catch_exceptions=False)
    assert r.exit_code == 0 and "time-major input 'h0' taken batch-first" in " ".join(r.output.split()), r.output
    r = run.invoke(cli, ["eval", str(bundle), "--data", str(data), "--reference", str(src), "--batch-size", "5",
                         "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)["reference"]
    assert res["agreement"] == 1.0 and res["max_rel_diff"] < 1e-5, res
