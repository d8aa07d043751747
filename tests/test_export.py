"""export_onnx: a bundle's network as a float ONNX model that onnxruntime runs exactly as
the NumPy runtime runs the bundle on ideal hardware.

The reference is `Runtime(bundle)` (hardware None), itself tested against onnxruntime on
the source models. Tolerance: the conformance criterion |diff| <= 1e-4·(1 + |ref|). The
export folds each per-output affine into float32 weights and bias, which the runtime
applies as a separate multiply-add for non-conv layers, so outputs differ by float32
rounding of the products (~1e-7 relative per layer; measured ≤ 2.1e-6 on the shipped
models), far inside it; a misplaced weight, gain or bias gives errors of order 1.
"""

from __future__ import annotations

import json
import os
import sys
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from conftest import MODELS, close
from xbar.bundle import load_bundle, save_bundle
from xbar.cli import cli
from xbar.converter import convert
from xbar.converter.export import export_onnx, to_onnx
from xbar.errors import BundleError
from xbar.hardware import preset
from xbar.runtime import Runtime
from xbar.runtime.calibrate import calibrate

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conformance_models import ZOO, build, example_input  # noqa: E402

ort.set_default_logger_severity(3)


def _ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _time_major(bundle) -> dict:
    return (bundle.manifest.get("batch") or {}).get("time_major") or {}


def _source_feeds(bundle, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The bundle's (batch-first) feeds as the source model, and so the export, takes them:
    time-major inputs with axes 0 and 1 swapped back."""
    moved = _time_major(bundle).get("inputs", [])
    return {k: np.ascontiguousarray(np.swapaxes(v, 0, 1)) if k in moved else v for k, v in feeds.items()}


def _source_outputs(bundle, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The bundle's (batch-first) outputs in the source model's layout: the batch back on
    the axis it came from."""
    axes = _time_major(bundle).get("outputs", {})
    return {k: np.moveaxis(v, 0, axes[k]) if k in axes else v for k, v in outputs.items()}


def _same_as_runtime(bundle, feeds: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The export, run by onnxruntime on `feeds` (the bundle's layout) in the source model's
    layout, equals Runtime(bundle) on them, in that layout."""
    model = to_onnx(bundle)
    got = _ort(model, _source_feeds(bundle, feeds))
    ref = _source_outputs(bundle, Runtime(bundle).run(feeds))
    names = [o["name"] for o in bundle.graph["outputs"]]
    assert [o.name for o in model.graph.output] == names
    for name, g in zip(names, got):
        r = ref[name]
        assert g.shape == r.shape, name
        assert close(g, r.astype(np.float64)), f"{name}: max |diff| {np.abs(g - r).max():.3g}"
    return model


@pytest.fixture(scope="module")
def digits():
    return np.load(MODELS / "digits_test.npz")["x"][:64]


OPTIONS = [{}, dict(crossbar=(32, 16), encoding="offset", weight_bits=4), dict(afp_exponents=3, weight_bits=6),
           dict(bit_slices=2, bits_per_cell=2), dict(replicas=2, weight_clip_percentile=99.0),
           dict(digital=["/fc/Gemm"])]


@pytest.mark.parametrize("options", OPTIONS, ids=["default", "offset-4bit-small", "afp", "slices", "replicas-clip",
                                                  "fc-digital"])
@pytest.mark.parametrize("name", ["cnn_bn", "resnet_bn", "resnet_folded"])
def test_shipped_models(name, options, digits):
    bundle = convert(MODELS / f"{name}.onnx", **options)
    model = _same_as_runtime(bundle, {"input": digits})
    # What the bundle records about its interface comes back: names, batch dim name, opset.
    assert [i.name for i in model.graph.input] == ["input"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert model.opset_import[0].version == bundle.manifest["model"]["opset"]
    assert not any(n.op_type.startswith("Xbar") for n in model.graph.node)


def test_quantised_weights_are_the_programmed_ones(digits):
    """With 3-bit weights the export is the quantised network, not the source: it differs
    from the source model (so the test can tell) and equals the runtime (above)."""
    bundle = convert(MODELS / "cnn_bn.onnx", weight_bits=3)
    src = _ort(onnx.load(MODELS / "cnn_bn.onnx"), {"input": digits})[0]
    got = _ort(to_onnx(bundle), {"input": digits})[0]
    assert np.abs(got - src).max() > 1e-2
    assert close(got, Runtime(bundle)(digits))


def test_calibrated_affines_are_carried(digits):
    """calibrate re-fits the affines (and folds them): the export carries the new ones."""
    x = np.load(MODELS / "digits_calib.npz")["x"][:128]
    bundle = convert(MODELS / "resnet_bn.onnx", hardware=preset("pcm"))
    bundle.manifest["hardware"] = preset("pcm").to_dict()
    cal, _ = calibrate(bundle, x, preset("pcm").override({"t_inference": 86400.0}), 0, "affine")
    before = _ort(to_onnx(bundle), {"input": digits})[0]
    after = _same_as_runtime(cal, {"input": digits})
    got = _ort(after, {"input": digits})[0]
    assert np.abs(got - before).max() > 1e-3  # the calibration changed the network, and the export shows it


def _zoo_cases():
    for name, zm in ZOO.items():
        dw = name.startswith("conv2d_depthwise")
        for opset, bn_mode in ((11, "kept"), (13, "folded"), (17, "kept"), (17, "folded")):
            for depthwise in ("tiles", "digital") if dw else ("tiles",):
                yield pytest.param(name, opset, bn_mode, depthwise, id=f"{name}-op{opset}-{bn_mode}-{depthwise}")


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("export_zoo")


@pytest.mark.parametrize("name,opset,bn_mode,depthwise", list(_zoo_cases()))
def test_conformance_zoo(name, opset, bn_mode, depthwise, zoo_dir):
    """Every zoo network, at the opsets and batch-norm modes of the conformance suite (the
    export is written at the bundle's opset, whose attribute forms differ: Split, Reduce*)."""
    import torch

    zm = ZOO[name]
    path = zoo_dir / f"{name}_op{opset}_{bn_mode}.onnx"
    if not path.exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(build(zm), example_input(zm, 1), str(path), dynamo=False, opset_version=opset,
                                  input_names=["input"], output_names=["output"],
                                  dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                                  do_constant_folding=bn_mode == "folded")
            except Exception as exc:  # noqa: BLE001 - torch's business, as in test_conformance
                pytest.skip(f"torch cannot export {name}: {exc}")
    bundle = convert(path, crossbar=(16, 16), depthwise=depthwise)
    for batch in (1, 3):
        _same_as_runtime(bundle, {"input": example_input(zm, batch).numpy()})


def _recurrent_cases():
    from tests.test_recurrent import _onnx_rnn

    cases = [("LSTM", dict(direction="bidirectional", seq_lens=True, states=True, peepholes=True)),
             ("LSTM", dict(attrs={"clip": 0.7, "input_forget": 1}, states=True)),
             ("GRU", dict(direction="bidirectional", states=True)),
             ("GRU", dict(attrs={"linear_before_reset": 1}, seq_lens=True)),
             ("RNN", dict(direction="reverse", bias=False, attrs={"activations": ["Relu"]}))]
    return [pytest.param(_onnx_rnn, cell, kw, id=f"{cell}-{i}") for i, (cell, kw) in enumerate(cases)]


@pytest.mark.parametrize("make,cell,kw", _recurrent_cases())
def test_recurrent_nodes(make, cell, kw):
    """The recurrent node is exported as itself, and nothing else: the bundle takes its
    fixed time-major input batch-first behind a Transpose (and gives its outputs' batch
    first), the export takes and gives them as the source model does, without those
    Transposes."""
    from tests.test_recurrent import _feeds_for

    model, feeds = make(cell, **kw)
    bundle = convert(model, crossbar=(4, 6))
    assert _time_major(bundle)["inputs"] == ["X"]
    out = _same_as_runtime(bundle, _feeds_for(bundle, feeds))
    assert [n.op_type for n in out.graph.node] == [cell]
    assert _interface(out) == _interface(model)


def test_recurrent_gains_fold_into_the_gates():
    """A recurrent layer whose affine has gain != 1 (as calibration leaves it): the gain is
    folded into the W/R columns and must still match the runtime."""
    from tests.test_recurrent import _feeds_for, _onnx_rnn

    model, feeds = _onnx_rnn("GRU", direction="bidirectional", states=True)
    bundle = convert(model)
    for entry in bundle.layers:
        gamma = bundle.arrays[entry["arrays"]["gamma"]]
        bundle.arrays[entry["arrays"]["gamma"]] = (gamma * np.linspace(0.5, 1.5, len(gamma))).astype(np.float32)
    _same_as_runtime(bundle, _feeds_for(bundle, feeds))


def test_written_atomically_and_never_over_a_file_without_force(tmp_path, digits):
    bundle = convert(MODELS / "cnn_bn.onnx")
    path = tmp_path / "net.onnx"
    export_onnx(bundle, path)
    onnx.checker.check_model(onnx.load(path), full_check=True)
    first = path.read_bytes()
    with pytest.raises(BundleError, match="already exists"):
        export_onnx(bundle, path)
    assert path.read_bytes() == first
    export_onnx(convert(MODELS / "cnn_bn.onnx", weight_bits=3), path, force=True)
    assert path.read_bytes() != first
    assert sorted(os.listdir(tmp_path)) == ["net.onnx"]  # no temporary file left behind
    with pytest.raises(BundleError, match="does not exist"):
        export_onnx(bundle, tmp_path / "missing" / "net.onnx")


def test_saved_and_loaded_bundle_exports_the_same(tmp_path, digits):
    bundle = convert(MODELS / "resnet_bn.onnx", crossbar=(32, 32))
    save_bundle(bundle, tmp_path / "m.xbar")
    a = to_onnx(bundle).SerializeToString()
    b = to_onnx(load_bundle(tmp_path / "m.xbar")).SerializeToString()
    assert a == b


# Time-major models: the bundle takes their time-major inputs batch-first
# (converter/time_major.py); the export keeps the source model's interface, so it replaces
# the source model for onnxruntime users and for `xbar eval --reference`.

def _interface(model: onnx.ModelProto) -> list[tuple]:
    """(name, element type, dims) of every graph input and output; a dimension is its size,
    its name, or None. Shape inference's own names (unk__N, for axes the source left
    unnamed) count as unnamed."""
    def dims(vi):
        if not vi.type.tensor_type.HasField("shape"):
            return None
        return [d.dim_value if d.HasField("dim_value") else
                d.dim_param if d.HasField("dim_param") and not d.dim_param.startswith("unk__") else None
                for d in vi.type.tensor_type.shape.dim]

    values = list(model.graph.input) + list(model.graph.output)
    return [(vi.name, vi.type.tensor_type.elem_type, dims(vi)) for vi in values]


def _fixed(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its axes named seq and batch fixed at T and B (an export with fixed sizes)."""
    from tests.test_time_major import B, T

    for vi in list(model.graph.input) + list(model.graph.output):
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param in ("seq", "batch"):
                d.dim_value = {"seq": T, "batch": B}[d.dim_param]
    return model


def _torch_tokens(tmp_path, dynamic: bool) -> onnx.ModelProto:
    """The audit's model, small: int64 ids [seq, batch] -> embedding -> torch's
    TransformerEncoderLayer (batch_first=False) -> mean over time -> logits [batch, C];
    exported with dynamic seq and batch or with fixed sizes [T, B]."""
    torch = pytest.importorskip("torch")
    from tests.test_time_major import B, C, T, VOCAB

    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(VOCAB, 8)
            self.enc = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0)
            self.head = torch.nn.Linear(8, C)

        def forward(self, ids):
            return self.head(self.enc(self.emb(ids)).mean(0))

    path = tmp_path / f"tokens_{'dyn' if dynamic else 'fixed'}.onnx"
    axes = {"ids": {0: "seq", 1: "batch"}, "out": {0: "batch"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Net().eval(), (torch.randint(0, VOCAB, (T, 2 if dynamic else B)),), str(path), dynamo=False,
                          opset_version=17, input_names=["ids"], output_names=["out"], dynamic_axes=axes)
    return onnx.load(str(path))


def _time_major_model(case: str, tmp_path) -> onnx.ModelProto:
    from tests.test_time_major import B, _model, _per_token, _pooled_over_time, _torch_encoder, _unnamed

    if case.startswith("torch-tokens"):
        return _torch_tokens(tmp_path, dynamic=not case.endswith("fixed"))
    if case.startswith("torch-encoder"):
        return onnx.load(str(_torch_encoder(tmp_path, pooled="pooled" in case, mask="mask" in case)))
    return {"lstm-steps": lambda: _model(False, False), "lstm-steps-unnamed": lambda: _unnamed(_model(False, False)),
            "lstm-steps-fixed": lambda: _fixed(_model(False, False)), "lstm-tokens": lambda: _model(True, True),
            "lstm-tokens-fixed": lambda: _fixed(_model(True, True)), "pooled-fixed": lambda: _pooled_over_time(B),
            "per-token": lambda: _per_token(["seq", "batch"])}[case]()


def _time_major_samples(model: onnx.ModelProto, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """n samples per input, one per index of axis 0 (the data files' and the bundle's
    layout): tokens for integer inputs, the key padding mask all False but the last two
    positions, normal floats otherwise."""
    from tests.test_time_major import T, VOCAB

    rng = np.random.default_rng(seed)
    out = {}
    for vi in model.graph.input:
        dims = [d.dim_value or None for d in vi.type.tensor_type.shape.dim]
        elem = vi.type.tensor_type.elem_type
        if elem == onnx.TensorProto.BOOL:  # key_padding_mask [batch, seq]
            out[vi.name] = np.zeros((n, T), bool)
            out[vi.name][:, T - 2:] = True
            continue
        rest = [T] + [d for d in dims[2:]]  # time-major [seq, batch, ...] -> sample [seq, ...]
        if elem == onnx.TensorProto.INT64:
            out[vi.name] = rng.integers(0, VOCAB, [n] + rest)
        else:
            out[vi.name] = rng.normal(0, 1, [n] + rest).astype(np.float32)
    assert all(len(v) == n for v in out.values())
    return out


TIME_MAJOR_CASES = ["lstm-steps", "lstm-steps-unnamed", "lstm-steps-fixed", "lstm-tokens", "lstm-tokens-fixed",
                    "pooled-fixed", "per-token", "torch-tokens", "torch-tokens-fixed", "torch-encoder-pooled-mask",
                    "torch-encoder-per-token"]


@pytest.mark.parametrize("case", TIME_MAJOR_CASES)
def test_time_major_export_keeps_the_source_interface(case, tmp_path):
    """The export of a bundle that takes a time-major input batch-first declares the source
    model's inputs and outputs (names, types, sizes, dimension names, axis order: time-major
    in, the batch where the source has it out), without the converter's boundary Transposes,
    and onnxruntime runs it, fed time-major as the source is fed, to what the bundle computes
    on ideal hardware (Runtime on the same samples batch-first, its outputs moved back).
    Tolerance: the module's conformance criterion, |diff| <= 1e-4·(1 + |ref|); the export
    differs from the runtime only by float32 rounding of the folded affines (module
    docstring), a wrong axis order gives errors of order 1 or a shape error."""
    from tests.test_time_major import B

    model = _time_major_model(case, tmp_path)
    bundle = convert(model, crossbar=(8, 8))
    assert _time_major(bundle)["inputs"], bundle.manifest["batch"]
    out = to_onnx(bundle)
    assert _interface(out) == _interface(model)
    assert dict((p.key, p.value) for p in out.metadata_props) == {"xbar.io_layout": "source"}
    assert not any(n.name.endswith((".to_time_major", ".to_batch_first")) for n in out.graph.node)
    fixed = bundle.manifest["batch"]["mode"] == "fixed"
    assert fixed == (case.endswith("fixed") or case.startswith("torch-encoder"))  # torch's encoder: fixed sizes
    samples = _time_major_samples(model, B if fixed else 2 * B)
    _same_as_runtime(bundle, samples)


def _labelled(model: onnx.ModelProto, samples: dict[str, np.ndarray], path) -> None:
    """Save `samples` with y = the source model's own top-1 (run time-major, in chunks of its
    batch where it fixes one)."""
    from tests.test_time_major import B

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    n = len(next(iter(samples.values())))
    fixed = all(d.HasField("dim_value") for d in model.graph.input[0].type.tensor_type.shape.dim)
    step = B if fixed else n
    moved = [vi.name for vi in model.graph.input if vi.type.tensor_type.elem_type != onnx.TensorProto.BOOL]
    logits = np.concatenate([sess.run(None, {k: np.ascontiguousarray(np.swapaxes(v[j:j + step], 0, 1))
                                             if k in moved else v[j:j + step] for k, v in samples.items()})[0]
                             for j in range(0, n, step)])
    assert len(logits) == n
    np.savez(path, **samples, y=logits.argmax(1))


@pytest.mark.parametrize("case", ["lstm-tokens", "lstm-tokens-fixed", "torch-tokens", "torch-tokens-fixed"])
def test_eval_reference_on_the_export_of_a_time_major_model(case, tmp_path):
    """`xbar eval BUNDLE --reference EXPORT.onnx` feeds the export as it feeds the source
    model (time-major, the bundle's record says so) and agrees with the bundle exactly.
    Batches of as many samples as the sequence is long make every batch square, where a
    batch-first export fed time-major ran without an error and scored a third; with fixed
    sizes it was refused with a message that blamed the file for not being the source."""
    from tests.test_time_major import B, T

    model = _time_major_model(case, tmp_path)
    src, bundle, exported, data = (tmp_path / n for n in ("m.onnx", "m.xbar", "m.export.onnx", "d.npz"))
    onnx.save(model, src)
    fixed = case.endswith("fixed")
    _labelled(model, _time_major_samples(model, 4 * (B if fixed else T), seed=1), data)
    run = CliRunner()
    r = run.invoke(cli, ["convert", str(src), "-o", str(bundle), "--crossbar", "8x8"], catch_exceptions=False)
    assert r.exit_code == 0 and "taken batch-first" in " ".join(r.output.split()), r.output
    export_onnx(load_bundle(bundle), exported)
    for ref in (src, exported):
        r = run.invoke(cli, ["eval", str(bundle), "--data", str(data), "--reference", str(ref), "--json",
                             *(() if fixed else ("--batch-size", str(T)))])
        assert r.exit_code == 0, r.output
        res = json.loads(r.stdout)
        assert res["ideal_accuracy"] == 1.0, res
        assert res["reference"]["agreement"] == 1.0 and res["reference"]["max_rel_diff"] < 1e-5, (ref, res)


def test_eval_reference_on_an_older_batch_first_export(tmp_path):
    """An export from xbar before it kept the source's layout (producer xbar, no
    xbar.io_layout entry) is batch-first, as the bundle is: eval feeds it so, also in square
    batches where feeding it time-major would run and score wrongly. A model of other inputs
    written by xbar gets a hint that fits it, not "give the model it was converted from"."""
    from tests.test_time_major import T

    model = _time_major_model("lstm-tokens", tmp_path)
    src, bundle_path, old, data = (tmp_path / n for n in ("m.onnx", "m.xbar", "old.onnx", "d.npz"))
    onnx.save(model, src)
    _labelled(model, _time_major_samples(model, 4 * T, seed=2), data)
    bundle = convert(src, crossbar=(8, 8))
    save_bundle(bundle, bundle_path)
    record = bundle.manifest["batch"].pop("time_major")  # what the export was then: the bundle's own graph
    legacy = to_onnx(bundle)
    bundle.manifest["batch"]["time_major"] = record
    del legacy.metadata_props[:]
    assert [n.op_type for n in legacy.graph.node][0] == "Transpose"
    onnx.save(legacy, old)
    run = CliRunner()
    r = run.invoke(cli, ["eval", str(bundle_path), "--data", str(data), "--reference", str(old), "--json",
                         "--batch-size", str(T)])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)["reference"]
    assert res["agreement"] == 1.0 and res["max_rel_diff"] < 1e-5, res
    other = tmp_path / "cnn.onnx"
    export_onnx(convert(MODELS / "cnn_bn.onnx"), other)
    r = run.invoke(cli, ["eval", str(bundle_path), "--data", str(data), "--reference", str(other)])
    msg = " ".join(r.output.split())
    assert r.exit_code == 1 and "the float model xbar exported from this bundle" in msg, msg
    assert "Traceback" not in r.output


def test_time_major_boundaries_the_converter_did_not_leave_get_inverse_transposes():
    """Where the converter's boundary Transposes are not as it left them (here an Identity
    between each and the graph's input or output, as a hand edit or a later pass might put
    there), the export adds the inverse Transposes at the boundary instead: the same
    interface, the same values."""
    from tests.test_time_major import B, _model

    model = _model(False, False)
    bundle = convert(model, crossbar=(8, 8))
    assert _time_major(bundle) == {"nodes": ["rec"], "inputs": ["x"], "outputs": {"Y": 2, "Y_h": 1}}
    nodes = bundle.graph["nodes"]
    for node in nodes:
        node["inputs"] = ["x.copy" if v == "x" else v for v in node["inputs"]]
        node["outputs"] = [f"{v}.copy" if v in ("Y", "Y_h") else v for v in node["outputs"]]
    nodes.insert(0, {"name": "copy_x", "op": "Identity", "inputs": ["x"], "outputs": ["x.copy"], "attrs": {}})
    nodes += [{"name": f"copy_{y}", "op": "Identity", "inputs": [f"{y}.copy"], "outputs": [y], "attrs": {}}
              for y in ("Y", "Y_h")]
    out = _same_as_runtime(bundle, _time_major_samples(model, 2 * B))
    assert _interface(out) == _interface(model)
    assert [n.op_type for n in out.graph.node].count("Transpose") == 6  # the bundle's 3 and their inverses


@pytest.mark.parametrize("fixed", [False, True], ids=["dynamic", "fixed"])
def test_finetune_export_of_a_time_major_model_replaces_it(tmp_path, fixed):
    """The audit's flow: `xbar finetune --export-onnx` on a time-major model writes an ONNX
    model with the source's interface; onnxruntime fed time-major computes what the
    fine-tuned bundle does, and `eval --reference` of that file agrees exactly."""
    pytest.importorskip("torch")
    from tests.test_time_major import B, _pooled_over_time

    model = _pooled_over_time(B if fixed else "batch")
    src, bundle, ft, exported, data = (tmp_path / n for n in ("m.onnx", "m.xbar", "ft.xbar", "ft.onnx", "d.npz"))
    onnx.save(model, src)
    samples = _time_major_samples(model, 8 * B, seed=3)
    _labelled(model, samples, data)
    run = CliRunner()
    r = run.invoke(cli, ["convert", str(src), "-o", str(bundle), "--crossbar", "8x8", "--hardware", "pcm"])
    assert r.exit_code == 0, r.output
    r = run.invoke(cli, ["finetune", str(bundle), "--data", str(data), "--drift", "1d", "--epochs", "1", "-o", str(ft),
                         "--export-onnx", str(exported)])
    assert r.exit_code == 0, r.output
    written = onnx.load(str(exported))
    assert _interface(written) == _interface(model)
    b = load_bundle(ft)
    sess = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    x = samples["x"][:B]
    got = sess.run(None, {"x": np.ascontiguousarray(np.swapaxes(x, 0, 1))})[0]
    assert close(got, Runtime(b).run({"x": x})["y"].astype(np.float64))
    r = run.invoke(cli, ["eval", str(ft), "--data", str(data), "--reference", str(exported), "--hardware", "ideal",
                         "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["reference"]["agreement"] == 1.0 and res["reference"]["max_rel_diff"] < 1e-5, res
    # The bundle's own export is no stranger: no warning that it is not the source.
    assert res["warnings"] == [], res["warnings"]
    r = run.invoke(cli, ["eval", str(ft), "--data", str(data), "--reference", str(src), "--hardware", "ideal",
                         "--json"])
    assert "fine-tuned since" in " ".join(json.loads(r.stdout)["warnings"])
