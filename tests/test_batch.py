"""Models that declare a fixed batch (batch 1, as the ONNX model zoo's), and `xbar info` at scale.

A declared batch 1 is relaxed to a symbolic batch when the graph allows it (a Reshape to
[1, -1] is rewritten), else the model runs in chunks of its declared size. Either way
convert → eval --reference → calibrate and --calib-data must run, and the ideal outputs
must match onnxruntime running the original graph sample by sample.
"""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from xbar.bundle import load_bundle
from xbar.cli import cli
from xbar.runtime import Runtime


def _init(name, a):
    return numpy_helper.from_array(np.asarray(a), name)


def cnn(kind: str, batch: int = 1, seed: int = 0) -> onnx.ModelProto:
    """x [batch,1,6,6] → Conv 4×3×3 → Relu → flatten → Gemm 10.

    kind: reshape (Reshape to [1, -1]), flatten (Flatten), token (a constant [1, 3] row
    concatenated before the Gemm: hard-codes batch 1, so relaxing must be refused)."""
    rng = np.random.default_rng(seed)
    inits = [_init("W", rng.standard_normal((4, 1, 3, 3)).astype(np.float32)),
             _init("B", rng.standard_normal(4).astype(np.float32))]
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv1"),
             helper.make_node("Relu", ["c"], ["r"], name="relu1")]
    feat = 4 * 4 * 4
    if kind in ("reshape", "token"):
        inits.append(_init("shape", np.array([1, -1], dtype=np.int64)))
        nodes.append(helper.make_node("Reshape", ["r", "shape"], ["f0" if kind == "token" else "f"],
                                      name="flatten_reshape"))
    else:
        nodes.append(helper.make_node("Flatten", ["r"], ["f"], axis=1, name="flatten"))
    if kind == "token":
        inits.append(_init("tok", rng.standard_normal((1, 3)).astype(np.float32)))
        nodes.append(helper.make_node("Concat", ["tok", "f0"], ["f"], axis=1, name="token_concat"))
        feat += 3
    inits += [_init("G", (rng.standard_normal((10, feat)) / np.sqrt(feat)).astype(np.float32)),
              _init("gb", rng.standard_normal(10).astype(np.float32))]
    nodes.append(helper.make_node("Gemm", ["f", "G", "gb"], ["y"], transB=1, name="fc"))
    graph = helper.make_graph(nodes, f"cnn_{kind}",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 1, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _per_sample(model: onnx.ModelProto, x: np.ndarray, size: int = 1) -> np.ndarray:
    """The original graph in onnxruntime, one declared batch at a time."""
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([s.run(None, {"x": x[i:i + size]})[0] for i in range(0, len(x), size)])


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("batch") / "data.npz"
    x = np.random.default_rng(3).standard_normal((40, 1, 6, 6)).astype(np.float32)
    np.savez(path, x=x, y=np.arange(40) % 10)
    return path, x


@pytest.mark.parametrize("kind,mode,rewritten", [
    ("reshape", "relaxed", ["flatten_reshape"]),
    ("flatten", "relaxed", []),
    ("token", "fixed", None),
])
def test_batch_one_models_run_end_to_end(tmp_path, data, kind, mode, rewritten):
    path, x = data
    model = cnn(kind)
    src = tmp_path / f"{kind}.onnx"
    onnx.save(model, src)
    out = tmp_path / f"{kind}.xbar"
    r = run("convert", src, "-o", out, "--hardware", "pcm", "--calib-data", path)
    assert r.exit_code == 0, r.output
    assert f"batch: {mode}" in r.output and "ranges: DAC and ADC full scales from 40 samples" in r.output
    b = load_bundle(out)
    batch = b.manifest["batch"]
    assert batch["mode"] == mode
    if mode == "relaxed":
        assert batch["rewritten"] == rewritten and batch["dim"] == "batch"
        assert b.graph["inputs"][0]["shape"] == [None, 1, 6, 6]
        assert b.graph["inputs"][0]["dim_names"] == ["batch", None, None, None]
    else:
        assert batch["size"] == 1 and "hard-codes batch 1" in batch["reason"]
        assert b.graph["inputs"][0]["shape"] == [1, 1, 6, 6]
    # Ideal outputs against the original graph run sample by sample, in batches that do not
    # divide the data evenly.
    want = _per_sample(model, x)
    got = np.concatenate([Runtime(b)(x[i:i + 16]) for i in range(0, len(x), 16)])
    assert got.shape == want.shape == (40, 10)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    r = run("eval", out, "--data", path, "--reference", src, "--json", "--batch-size", "16")
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res["n"] == 40 and res["reference"]["agreement"] == 1.0 and res["reference"]["max_rel_diff"] < 1e-5
    assert len(res["rows"]) == 1  # one pcm chip on all 40 samples
    cal = tmp_path / f"{kind}.cal.xbar"
    r = run("calibrate", out, "--data", path, "--drift", "1d", "-o", cal, "--batch-size", "16")
    assert r.exit_code == 0, r.output
    assert "calibrated 2 layers" in r.output
    r = run("eval", cal, "--data", path, "--json")
    assert r.exit_code == 0, r.output
    info = run("info", out).output
    assert f"batch    {mode}" in info
    assert ("x batch×1×6×6 -> y batch×10" if mode == "relaxed" else "x 1×1×6×6 -> y 1×10") in info
    js = json.loads(run("info", out, "--json").output)
    assert js["batch"]["mode"] == mode and js["io"]["inputs"][0]["name"] == "x"


def test_calibration_without_ranges_finds_them_in_fixed_mode(tmp_path, data):
    """calibrate on a bundle without ranges runs find_ranges and walks the fixed-batch graph."""
    path, x = data
    src = tmp_path / "token.onnx"
    onnx.save(cnn("token"), src)
    out = tmp_path / "token.xbar"
    assert run("convert", src, "-o", out, "--hardware", "pcm").exit_code == 0
    r = run("calibrate", out, "--data", path, "--drift", "1h", "-o", tmp_path / "c.xbar")
    assert r.exit_code == 0, r.output
    rec = load_bundle(tmp_path / "c.xbar").manifest["calibration"][-1]
    assert rec["ranges_from_calibration_data"] and rec["samples"] == 40


def test_fixed_batch_of_two_runs_in_pairs(tmp_path, data):
    """A declared batch other than 1 is never relaxed: the data run in chunks of it."""
    path, x = data
    model = cnn("flatten", batch=2)
    src = tmp_path / "two.onnx"
    onnx.save(model, src)
    out = tmp_path / "two.xbar"
    r = run("convert", src, "-o", out)
    assert r.exit_code == 0, r.output
    assert "batch: fixed: runs in batches of the declared 2 samples" in r.output
    b = load_bundle(out)
    np.testing.assert_allclose(Runtime(b)(x[:8]), _per_sample(model, x[:8], 2), rtol=1e-5, atol=1e-5)
    r = run("eval", out, "--data", path, "--reference", src, "--json", "--batch-size", "5")  # rounded up to 6
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    assert got["reference"]["agreement"] == 1.0 and got["batch_size"] == 6  # what ran, and said so
    assert "--batch-size 5 runs as 6, the next multiple of the batch of 2 this model fixes" in r.stderr
    from xbar.errors import DataError
    from xbar.runtime.evaluate import predict

    with pytest.raises(DataError, match="^5 samples, but the model fixes its batch at 2"):  # not "1 sample"
        predict(Runtime(b), x[:5], 4)
    odd = tmp_path / "odd.npz"
    np.savez(odd, x=x[:5])
    r = run("eval", out, "--data", odd)
    assert r.exit_code == 1 and "multiple of 2" in r.output and "Traceback" not in r.output


def test_per_layer_takes_whole_fixed_batches(tmp_path):
    """--per-layer diagnoses up to 256 samples: for a model fixed at batch 3 that is 255,
    not 256 (which the model refused, naming a count the user never gave)."""
    model = cnn("flatten", batch=3)
    src, out, path = tmp_path / "three.onnx", tmp_path / "three.xbar", tmp_path / "x300.npz"
    onnx.save(model, src)
    np.savez(path, x=np.random.default_rng(4).standard_normal((300, 1, 6, 6)).astype(np.float32))
    r = run("convert", src, "-o", out, "--hardware", "pcm")
    assert r.exit_code == 0, r.output
    r = run("eval", out, "--data", path, "--per-layer", "--json")
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    assert got["per_layer"]["samples"] == 255
    # The default 128 runs as 129, as reported; a size nobody gave is rounded without a warning.
    assert got["batch_size"] == 129 and got["warnings"] == [] and "batch-size" not in r.stderr


def test_symbolic_batch_model_is_left_alone(tmp_path):
    model = cnn("flatten")
    for vi in (model.graph.input[0], model.graph.output[0]):
        vi.type.tensor_type.shape.dim[0].dim_param = "N"
    src = tmp_path / "sym.onnx"
    onnx.save(model, src)
    out = tmp_path / "sym.xbar"
    r = run("convert", src, "-o", out)
    assert r.exit_code == 0 and "batch: symbolic: leading dimension 'N'" in r.output, r.output
    assert load_bundle(out).manifest["batch"]["mode"] == "symbolic"


# ---- xbar info on a deep model -------------------------------------------------------------------

def deep_chain(layers: int = 120) -> onnx.ModelProto:
    """`layers` × (Conv 3×3 + Relu) with long, path-like names, a Flatten and a MatMul head."""
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(layers):
        w = f"w{i}"
        inits.append(_init(w, (rng.standard_normal((4, 4, 3, 3)) * 0.3).astype(np.float32)))
        name = f"/backbone/stage{i // 10}/block{i}/very_long_module_name_for_testing/conv{i}/Conv"
        nodes.append(helper.make_node("Conv", [prev, w], [f"c{i}"], pads=[1, 1, 1, 1], name=name))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"))
        prev = f"r{i}"
    nodes.append(helper.make_node("Flatten", [prev], ["f"], axis=1, name="flatten"))
    inits.append(_init("head", rng.standard_normal((4 * 8 * 8, 10)).astype(np.float32)))
    nodes.append(helper.make_node("MatMul", ["f", "head"], ["y"], name="/head/MatMul"))
    graph = helper.make_graph(nodes, "deep", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def deep_bundle(tmp_path_factory):
    d = tmp_path_factory.mktemp("deep")
    onnx.save(deep_chain(), d / "deep.onnx")
    r = run("convert", d / "deep.onnx", "-o", d / "deep.xbar", "--hardware", "pcm")
    assert r.exit_code == 0, r.output
    return d / "deep.xbar"


def test_info_of_a_deep_model_fits_100_columns_summary_first(deep_bundle):
    r = run("info", deep_bundle)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert max(len(line) for line in lines) <= 100, max(lines, key=len)
    assert lines[0].startswith("bundle ")
    labels = [line.split()[0] for line in lines if line and not line.startswith(" ")]
    assert labels[:3] == ["bundle", "model", "io"]
    assert "totals" in labels
    assert "121 layers: 121 analog on" in r.output and "ADC conversions per sample" in r.output
    assert "x batch×4×8×8 -> y batch×10" in r.output
    assert "/backbone/" not in r.output and "--layers" in r.output  # no table unless asked
    assert re.search(r"bundle .*\d+(\.\d)? (kB|MB)", lines[0])


def test_info_layers_table_fits_and_shortens_names(deep_bundle):
    r = run("info", deep_bundle, "--layers")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert max(len(line) for line in lines) <= 100, max(lines, key=len)
    head = next(i for i, line in enumerate(lines) if line.startswith("layer "))
    assert head > next(i for i, line in enumerate(lines) if line.startswith("totals"))
    rows = lines[head + 2:head + 2 + 121]
    assert len(rows) == 121 and all("…" in row for row in rows[:-1])
    # Middle ellipsis: the start and the distinguishing end both survive.
    assert rows[57].startswith("/backbone/stag") and "ng/conv57/Conv " in rows[57]
    assert "4×8×8" in rows[0] and rows[-1].startswith("/head/MatMul")
    js = json.loads(run("info", deep_bundle, "--json").output)
    assert len(js["layers"]) == 121 and js["layers"][0]["name"].endswith("conv0/Conv")
    assert js["layers"][0]["output_dim_names"] == ["batch", None, None, None]


@pytest.mark.parametrize("width", [80, 120])
def test_info_follows_the_terminal_width(deep_bundle, monkeypatch, width):
    """On a terminal, info fills its width held to 80-120 columns; at 80 the layer table
    leaves out its physical columns (and if need be the affine's source), and says so."""
    import os

    monkeypatch.setattr(os, "isatty", lambda fd: fd == 1)
    monkeypatch.setenv("COLUMNS", str(width))
    r = run("info", deep_bundle, "--layers")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert max(len(line) for line in lines) <= width, max(lines, key=len)
    header = next(line for line in lines if line.startswith("layer "))
    narrow = width == 80
    assert ("columns" in header.split()) is not narrow
    assert ("left out at this width" in " ".join(r.output.split())) is narrow
    if not narrow:  # the names get the room: no middle ellipsis at 120 where 100 needs one
        assert max(len(line) for line in lines) > 100


def test_info_summary_fits_80_columns(deep_bundle, monkeypatch):
    """Without the table, the summary's last line (how to get it) wraps too."""
    import os

    monkeypatch.setattr(os, "isatty", lambda fd: fd == 1)
    monkeypatch.setenv("COLUMNS", "80")
    r = run("info", deep_bundle)
    assert r.exit_code == 0, r.output
    assert max(len(line) for line in r.output.splitlines()) <= 80, max(r.output.splitlines(), key=len)
    assert "121 layers: the per-layer table with `xbar info --layers`" in r.output


def test_info_names_symbolic_dimensions(tmp_path):
    w = _init("w", np.ones((8, 3), dtype=np.float32))
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="proj")
    graph = helper.make_graph([node], "seq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "seq", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "seq", 3])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "seq.onnx")
    assert run("convert", tmp_path / "seq.onnx", "-o", tmp_path / "seq.xbar").exit_code == 0
    text = run("info", tmp_path / "seq.xbar").output
    assert "x N×seq×8 -> y N×seq×3" in text
    row = next(line for line in text.splitlines() if line.startswith("proj"))
    assert "seq×3" in row and "N×" not in row


@pytest.mark.parametrize("batch,needle", [
    ({"mode": "sideways"}, "manifest.batch.mode"),
    ({"mode": "fixed", "size": "one"}, "manifest.batch.size"),
    ({"mode": "fixed", "size": 0}, "manifest.batch.size"),
])
def test_a_corrupt_batch_record_is_refused(tmp_path, batch, needle):
    from xbar.bundle import save_bundle
    from xbar.converter import convert

    b = convert(cnn("token"))
    b.manifest["batch"] = batch
    save_bundle(b, tmp_path / "bad.xbar")
    r = run("info", tmp_path / "bad.xbar")
    assert r.exit_code == 1 and needle in r.output and "Traceback" not in r.output, r.output


def test_a_graph_that_mixes_samples_is_not_relaxed(tmp_path, data):
    """x − mean over the batch axis: zero at batch 1, something else for two samples together.
    Shapes cannot tell; the onnxruntime comparison must, and the fixed run keeps batch 1."""
    path, x = data
    model = cnn("flatten")
    g = model.graph
    g.node.insert(0, helper.make_node("ReduceMean", ["x0"], ["m"], axes=[0], keepdims=1, name="batch_mean"))
    g.node.insert(1, helper.make_node("Sub", ["x0", "m"], ["d"], name="centre"))
    g.node.insert(2, helper.make_node("Add", ["x0", "d"], ["x"], name="plus"))
    g.input[0].name = "x0"
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    src = tmp_path / "mix.onnx"
    onnx.save(model, src)
    out = tmp_path / "mix.xbar"
    r = run("convert", src, "-o", out)
    assert r.exit_code == 0, r.output
    batch = load_bundle(out).manifest["batch"]
    assert batch["mode"] == "fixed" and "mixes samples" in batch["reason"], batch
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = np.concatenate([s.run(None, {"x0": x[i:i + 1]})[0] for i in range(len(x))])
    np.testing.assert_allclose(Runtime(load_bundle(out))(x), want, rtol=1e-5, atol=1e-5)


def test_long_preparations_report_progress():
    """convert walks its nodes, and a chip is built layer by layer, through a progress callback."""
    from xbar.converter import convert
    from xbar.hardware import preset

    seen, consumed = {}, {}

    def spy(label):
        def wrap(items):
            seen[label] = len(items)
            consumed[label] = 0
            for item in items:  # a bar: each step is counted once the caller asks for the next
                yield item
                consumed[label] += 1
        return wrap

    b = convert(deep_chain(12), progress=spy("convert"))
    assert seen["convert"] >= 2 * 12 and consumed["convert"] == seen["convert"]
    # Layers are built on several threads; the bar still sees each one finish, and closes.
    Runtime(b, preset("pcm"), seed=0, progress=spy("chip"))
    assert seen["chip"] == 13 and consumed["chip"] == 13


def test_fixed_batch_model_without_batch_axis_in_its_output(tmp_path, data):
    """Output [10] (the batch 1 squeezed away): each sample's output becomes one row, in xbar
    and in the onnxruntime reference alike."""
    path, x = data
    model = cnn("flatten")
    g = model.graph
    g.node.append(helper.make_node("Squeeze", ["y", "ax"], ["z"], name="drop_batch"))
    g.initializer.append(_init("ax", np.array([0], dtype=np.int64)))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [10]))
    onnx.checker.check_model(model)
    src = tmp_path / "sq.onnx"
    onnx.save(model, src)
    out = tmp_path / "sq.xbar"
    r = run("convert", src, "-o", out)
    assert r.exit_code == 0 and "batch: fixed" in r.output, r.output
    got = Runtime(load_bundle(out))(x[:4])
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = np.stack([s.run(None, {"x": x[i:i + 1]})[0] for i in range(4)])
    assert got.shape == (4, 10)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    r = run("eval", out, "--data", path, "--reference", src, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["reference"]["agreement"] == 1.0


def test_an_output_flattened_across_the_batch_is_not_relaxed(tmp_path, data):
    """Output [10] through Reshape [-1] (torch's h.view(-1)): relaxed, a batch of 2 gives
    [20], the two samples' outputs end to end, so the onnxruntime comparison cannot catch it
    and eval failed. The declared output has no batch axis: fixed, one row per sample."""
    path, x = data
    model = cnn("flatten")
    g = model.graph
    g.node.append(helper.make_node("Reshape", ["y", "flat"], ["z"], name="view_flat"))
    g.initializer.append(_init("flat", np.array([-1], dtype=np.int64)))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [10]))
    onnx.checker.check_model(model)
    src, out = tmp_path / "flat.onnx", tmp_path / "flat.xbar"
    onnx.save(model, src)
    r = run("convert", src, "-o", out)
    assert r.exit_code == 0, r.output
    batch = load_bundle(out).manifest["batch"]
    assert batch["mode"] == "fixed" and "output 'z' is declared [10], without a leading batch" in batch["reason"]
    r = run("eval", out, "--data", path, "--reference", src, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["reference"]["agreement"] == 1.0


def test_fixed_batch_output_without_a_row_per_sample_is_an_error(tmp_path):
    """A graph fixed at batch 4 whose output keeps only 2 of its rows: each chunk of 4
    samples gives 2 rows, not one per sample, so eval says so (with the shape) instead of
    scoring misaligned rows or failing inside the scoring."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])
    w = _init("w", np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32))
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Slice", ["h", "s0", "s1", "ax"], ["y"], name="first_two")]
    inits = [w, _init("s0", np.array([0], np.int64)), _init("s1", np.array([2], np.int64)),
             _init("ax", np.array([0], np.int64))]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    src, out, data = tmp_path / "m.onnx", tmp_path / "m.xbar", tmp_path / "d.npz"
    onnx.save(model, src)
    np.savez(data, x=np.ones((8, 3), np.float32), y=np.zeros(8, np.int64))
    assert run("convert", src, "-o", out).exit_code == 0
    r = run("eval", out, "--data", data)
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert "has shape [2, 2, 5] for a batch of 8 samples" in " ".join(r.output.split()), r.output


def test_stacked_fixed_batch_parts_become_one_row_per_sample():
    """A fixed-batch graph whose output does not declare its batch comes back as one part per
    chunk, stacked (chunks, F, C): predict makes it (N, C), the rows a joined output (and
    the onnxruntime reference, which joins) has; a part that is not F rows is refused."""
    from xbar.errors import DataError
    from xbar.runtime.evaluate import predict

    f, x = 2, np.arange(24, dtype=np.float32).reshape(8, 3)
    w = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)

    def chunked(part):
        def fn(batch):
            return np.stack([part(batch[j:j + f]) for j in range(0, len(batch), f)])
        fn.fixed_batch = f
        return fn

    np.testing.assert_allclose(predict(chunked(lambda c: c @ w), x, 4), x @ w, rtol=1e-6)
    with pytest.raises(DataError, match=r"has shape \[2, 1, 10\] for a batch of 4 samples"):
        predict(chunked(lambda c: (c @ w).reshape(1, -1)), x, 4)


def test_relax_reasons_keep_onnxruntimes_message_not_its_source_paths():
    """onnxruntime's errors carry a source path and a C++ signature before the reason; the
    recorded reason keeps the reason (cut at 200 characters before, it ended at the path)."""
    from xbar.errors import brief

    exc = RuntimeError(
        "[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Reshape node. "
        "Name:'/lrn/Reshape_3' Status Message: /onnxruntime_src/onnxruntime/core/providers/cpu/tensor/"
        "reshape_helper.h:91 onnxruntime::ReshapeHelper::ReshapeHelper(const onnxruntime::TensorShape&, "
        "onnxruntime::TensorShapeVector&, bool) input_shape_size == requested_shape_size was false. The input "
        "tensor cannot be reshaped to the requested shape. Input shape:{2,8,12,12}, requested shape:{1,8,12,12}\n")
    assert brief(exc) == (
        "Non-zero status code returned while running Reshape node. Name:'/lrn/Reshape_3' Status Message: "
        "input_shape_size == requested_shape_size was false. The input tensor cannot be reshaped to the requested "
        "shape. Input shape:{2,8,12,12}, requested shape:{1,8,12,12}")
    assert brief(ValueError()) == "ValueError"
