"""Conformance: xbar on ideal hardware must reproduce onnxruntime.

Every network of the torch zoo (tests/conformance_models.py) is exported with the
TorchScript exporter at opsets 11, 13 and 17, once with batch-norm kept as a node
(``do_constant_folding=False``) and once folded (``True``), converted with xbar and
run at two batch sizes through the dynamic batch axis. onnxruntime is the reference;
torch is never compared against. Subsets are additionally run through both weight
encodings on small crossbars (multi-tile row and column blocking), with layers
pinned digital, and through a save/load round trip of the bundle.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

try:
    from conformance_models import ZOO, build, example_input
except ImportError:  # tests/ not on sys.path (e.g. another import mode)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from conformance_models import ZOO, build, example_input

from xbar.bundle import load_bundle, save_bundle
from xbar.converter import convert
from xbar.errors import ConfigError, UnsupportedOpError, XbarError
from xbar.hardware import preset
from xbar.runtime import Runtime

OPSETS = (11, 13, 17)
BN_MODES = ("kept", "folded")
BATCHES = (1, 5)
RTOL = 1e-4  # |xbar - ref| <= RTOL * (1 + |ref|), elementwise

ort.set_default_logger_severity(3)


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


class _ExportCache:
    """Exports each (model, opset, bn_mode) once per test session (per xdist worker)."""

    def __init__(self, root: Path):
        self.root = root
        self._done: dict[tuple[str, int, str], Path | str] = {}

    def __call__(self, name: str, opset: int, bn_mode: str) -> Path:
        key = (name, opset, bn_mode)
        if key not in self._done:
            self._done[key] = self._export(*key)
        result = self._done[key]
        if isinstance(result, str):
            pytest.skip(result)
        return result

    def _export(self, name: str, opset: int, bn_mode: str) -> Path | str:
        zm = ZOO[name]
        module = build(zm)
        path = self.root / f"{name}_op{opset}_{bn_mode}.onnx"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    module,
                    example_input(zm, 1),
                    str(path),
                    dynamo=False,
                    opset_version=opset,
                    input_names=["input"],
                    output_names=["output"],
                    dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                    do_constant_folding=(bn_mode == "folded"),
                )
        except Exception as exc:  # an op this opset cannot express: not xbar's business
            return f"torch cannot export {name} at opset {opset}: {type(exc).__name__}: {str(exc)[:200]}"
        return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> _ExportCache:
    return _ExportCache(tmp_path_factory.mktemp("conformance_onnx"))


@functools.lru_cache(maxsize=None)
def _ort_session(path: str) -> "ort.InferenceSession":
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def reference(path: Path, x: np.ndarray) -> np.ndarray:
    try:
        sess = _ort_session(str(path))
        return sess.run(["output"], {"input": x})[0]
    except Exception as exc:  # the reference itself cannot run this graph
        pytest.skip(f"onnxruntime cannot run {path.name}: {str(exc)[:200]}")


def assert_close(got: np.ndarray, ref: np.ndarray, what: str, rtol: float = RTOL) -> None:
    got = np.asarray(got)
    ref = np.asarray(ref)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != reference {ref.shape}"
    assert got.dtype == np.float32, f"{what}: output dtype {got.dtype}, expected float32"
    g = got.astype(np.float64)
    r = ref.astype(np.float64)
    assert np.all(np.isfinite(g) == np.isfinite(r)), f"{what}: non-finite values differ"
    err = np.abs(g - r)
    bound = rtol * (1.0 + np.abs(r))
    bad = ~(err <= bound)
    if bad.any():
        i = np.unravel_index(np.argmax(np.where(bad, err / bound, 0)), err.shape)
        raise AssertionError(
            f"{what}: {int(bad.sum())}/{bad.size} elements exceed {rtol:g}*(1+|ref|); "
            f"worst at {tuple(int(j) for j in i)}: xbar={g[i]!r} ref={r[i]!r} |diff|={err[i]:.3g} "
            f"(max |diff| {err.max():.3g}, max |ref| {np.abs(r).max():.3g})"
        )


def check_against_ort(rt: Runtime, name: str, path: Path, what: str, batches=BATCHES) -> dict[int, np.ndarray]:
    zm = ZOO[name]
    outs = {}
    for batch in batches:
        x = example_input(zm, batch).numpy()
        ref = reference(path, x)
        got = rt.run({"input": x})
        assert set(got) == {"output"}, f"{what}: outputs {sorted(got)}"
        assert_close(got["output"], ref, f"{what} batch={batch}")
        outs[batch] = got["output"]
    return outs


def onnx_nodes(path: Path, *ops: str) -> list[str]:
    model = onnx.load(str(path))
    return [n.name for n in model.graph.node if n.op_type in ops]


def names_with(tag: str) -> list[str]:
    return [n for n, zm in ZOO.items() if tag in zm.tags]


# --------------------------------------------------------------------------
# the full matrix: every zoo model x opset x bn mode, default mapping
# --------------------------------------------------------------------------


@pytest.mark.parametrize("bn_mode", BN_MODES)
@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_matches_onnxruntime(name, opset, bn_mode, exported):
    path = exported(name, opset, bn_mode)
    # Exercise every accepted form of the `model` argument across the matrix.
    source = {11: str(path), 13: path, 17: onnx.load(str(path))}[opset]
    bundle = convert(source)
    rt = Runtime(bundle)
    assert list(rt.input_names) == ["input"]
    assert list(rt.output_names) == ["output"]
    check_against_ort(rt, name, path, f"{name} opset {opset} bn {bn_mode}")


@pytest.mark.parametrize("name", names_with("bn"))
def test_bn_modes_export_what_they_claim(name, exported):
    """'kept' exports really contain BatchNormalization nodes; 'folded' folds BN after conv."""
    kept = onnx_nodes(exported(name, 17, "kept"), "BatchNormalization")
    assert kept, f"{name}: bn_mode=kept export has no BatchNormalization node"
    if name in ("bn_after_conv", "bn_after_conv_nobias", "bn1d_after_conv1d", "bn3d_after_conv3d", "residual_block", "mini_cnn"):
        folded = onnx_nodes(exported(name, 17, "folded"), "BatchNormalization")
        assert not folded, f"{name}: bn_mode=folded export still has BatchNormalization nodes {folded}"


# --------------------------------------------------------------------------
# encodings x small crossbars (multi-tile row and column blocks)
# --------------------------------------------------------------------------

SMALL_CROSSBARS = ((16, 16), (10, 6))


@pytest.mark.parametrize("crossbar", SMALL_CROSSBARS, ids=lambda c: f"{c[0]}x{c[1]}")
@pytest.mark.parametrize("encoding", ("differential", "offset"))
@pytest.mark.parametrize("name", names_with("tiles"))
def test_encodings_small_crossbar(name, encoding, crossbar, exported):
    bn_mode = "kept" if "bn" in ZOO[name].tags else "folded"
    path = exported(name, 13, bn_mode)
    bundle = convert(path, crossbar=crossbar, encoding=encoding)
    layers = [l for l in bundle.manifest["layers"] if l["placement"] == "analog"]
    assert layers, "expected at least one analog layer"
    # At least one layer must need more than one tile, else the test exercises nothing.
    assert any(l["tiles"]["n_row_blocks"] * l["tiles"]["n_col_blocks"] > 1 for l in layers), (
        f"{name}: no layer is split over several {crossbar} tiles"
    )
    rt = Runtime(bundle)
    check_against_ort(rt, name, path, f"{name} {encoding} {crossbar}")


@pytest.mark.parametrize("encoding", ("differential", "offset"))
def test_encodings_default_crossbar_bn_kept(encoding, exported):
    """Both encodings on the default crossbar, over the whole BN-kept zoo subset."""
    for name in names_with("bn"):
        path = exported(name, 17, "kept")
        rt = Runtime(convert(path, encoding=encoding))
        check_against_ort(rt, name, path, f"{name} {encoding}")


# --------------------------------------------------------------------------
# analog floating point and bit slicing: several column positions per output
# --------------------------------------------------------------------------

# 4 slices of 4 bits keep 16 magnitude bits: quantisation (≤ 2^-17 of a column's largest
# weight) stays far inside the conformance tolerance, so any mistake in the map shows.
ENCODING_OPTIONS = {
    "afp2": dict(afp_exponents=2),
    "afp3-step1-offset": dict(afp_exponents=3, afp_step=1, encoding="offset"),
    "slices4x4": dict(bit_slices=4, bits_per_cell=4),
    "slices4x4-offset": dict(bit_slices=4, bits_per_cell=4, encoding="offset"),
    "replicas3": dict(replicas=3),
    # Placement needs the target's circuit; the pcm preset's conductance window is the default one.
    "afp2-irdrop": dict(afp_exponents=2, rearrange="ir-drop", hardware=preset("pcm")),
    "slices4x4-balance-offset": dict(bit_slices=4, bits_per_cell=4, rearrange="balance", encoding="offset",
                                     hardware=preset("pcm")),
    "fixed-irdrop": dict(rearrange="ir-drop", hardware=preset("pcm")),
    "fixed-rows": dict(rearrange_rows="ir-drop", hardware=preset("pcm")),
    "afp2-rows-and-columns": dict(afp_exponents=2, rearrange="ir-drop", rearrange_rows="ir-drop",
                                  hardware=preset("pcm")),
}


@pytest.mark.parametrize("crossbar", SMALL_CROSSBARS, ids=lambda c: f"{c[0]}x{c[1]}")
@pytest.mark.parametrize("option", list(ENCODING_OPTIONS))
@pytest.mark.parametrize("name", names_with("tiles"))
def test_multi_position_encodings(name, option, crossbar, exported):
    """Exact hardware, fused and tile by tile, BN kept where the model has one and folded where not."""
    from xbar.hardware import preset

    bn_mode = "kept" if "bn" in ZOO[name].tags else "folded"
    path = exported(name, 13, bn_mode)
    bundle = convert(path, crossbar=crossbar, **ENCODING_OPTIONS[option])
    layers = [l for l in bundle.layers if l["placement"] == "analog"]
    if not option.startswith("fixed"):
        assert any(l["tiles"]["positions"] > l["N"] for l in layers), f"{name}: no output has several positions"
    check_against_ort(Runtime(bundle), name, path, f"{name} {option} {crossbar}", batches=(3,))
    check_against_ort(Runtime(bundle, preset("ideal"), seed=0), name, path, f"{name} {option} {crossbar} on tiles",
                      batches=(3,))


@pytest.mark.parametrize("option", list(ENCODING_OPTIONS))
def test_multi_position_encodings_bn_folded_and_kept(option, exported):
    for name in names_with("bn"):
        for bn_mode in BN_MODES:
            path = exported(name, 17, bn_mode)
            check_against_ort(Runtime(convert(path, **ENCODING_OPTIONS[option])), name, path,
                              f"{name} {option} bn {bn_mode}", batches=(2,))


# --------------------------------------------------------------------------
# layers pinned digital
# --------------------------------------------------------------------------


@pytest.mark.parametrize("which", ("first_conv", "all_analog"))
@pytest.mark.parametrize("name", names_with("digital"))
def test_digital_layers(name, which, exported):
    bn_mode = "kept" if "bn" in ZOO[name].tags else "folded"
    path = exported(name, 17, bn_mode)
    convs = onnx_nodes(path, "Conv")
    assert convs, f"{name} has no Conv node"
    if which == "first_conv":
        digital = [convs[0]]
    else:
        digital = [l["name"] for l in convert(path).manifest["layers"]]
    bundle = convert(path, digital=digital, crossbar=(16, 16))
    placement = {l["name"]: l["placement"] for l in bundle.manifest["layers"]}
    for d in digital:
        assert placement.get(d) == "digital", f"{d} should be digital, manifest says {placement.get(d)}"
    if which == "first_conv":
        assert sum(p == "analog" for p in placement.values()) == len(placement) - 1
    rt = Runtime(bundle)
    check_against_ort(rt, name, path, f"{name} digital={digital}")


def test_digital_unknown_layer_name_is_an_error(exported):
    path = exported("conv2d_basic", 17, "folded")
    with pytest.raises(ConfigError):
        convert(path, digital=["no_such_layer"])


# --------------------------------------------------------------------------
# bundle round trip
# --------------------------------------------------------------------------

ROUNDTRIP = ("mini_cnn", "residual_block", "linear_3d_input", "conv1d", "arith", "bn1d_after_linear", "pixel_shuffle")


@pytest.mark.parametrize("encoding", ("differential", "offset"))
@pytest.mark.parametrize("name", ROUNDTRIP)
def test_bundle_roundtrip_bit_exact(name, encoding, exported, tmp_path):
    bn_mode = "kept" if "bn" in ZOO[name].tags else "folded"
    path = exported(name, 13, bn_mode)
    bundle = convert(path, encoding=encoding, crossbar=(16, 16))
    before = Runtime(bundle)
    xs = [example_input(ZOO[name], b, seed=1).numpy() for b in BATCHES]
    out_before = [before.run({"input": x})["output"] for x in xs]

    target = tmp_path / f"{name}.xbar"
    save_bundle(bundle, target)
    assert target.is_file()
    loaded = load_bundle(target)
    after = Runtime(loaded)
    assert list(after.input_names) == list(before.input_names)
    assert list(after.output_names) == list(before.output_names)
    for x, ob in zip(xs, out_before):
        oa = after.run({"input": x})["output"]
        assert oa.dtype == ob.dtype and oa.shape == ob.shape
        assert np.array_equal(oa, ob), f"max |diff| {np.abs(oa.astype(np.float64) - ob).max()}"
        # and the loaded bundle is still conformant
        assert_close(oa, reference(path, x), f"{name} after load_bundle")


def test_save_bundle_refuses_overwrite_without_force(exported, tmp_path):
    path = exported("linear", 17, "folded")
    bundle = convert(path)
    target = tmp_path / "b.xbar"
    save_bundle(bundle, target)
    with pytest.raises(XbarError):
        save_bundle(bundle, target)
    save_bundle(bundle, target, force=True)
    x = example_input(ZOO["linear"], 3).numpy()
    assert np.array_equal(Runtime(load_bundle(target)).run({"input": x})["output"], Runtime(bundle).run({"input": x})["output"])


# --------------------------------------------------------------------------
# unsupported networks are refused with UnsupportedOpError
# --------------------------------------------------------------------------


class _ConvTranspose(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up = torch.nn.ConvTranspose2d(3, 2, 2, stride=2)

    def forward(self, x):
        return self.up(x)


def test_conv_transpose_is_unsupported(tmp_path):
    path = tmp_path / "convtranspose.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_ConvTranspose().eval(), torch.randn(1, 3, 4, 4), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["output"])
    with pytest.raises(UnsupportedOpError, match="ConvTranspose"):
        convert(path)


@pytest.mark.parametrize("kernel,strides,dilations", [([3, 3], [1, 1], [1, 1]), ([2, 3], [1, 2], [2, 1]), ([5], [2], [1])])
def test_single_channel_conv_without_padding(kernel, strides, dilations, tmp_path):
    """A 1-channel input with no padding is unfolded straight from the input array (no
    padded copy), where a size-1 channel axis may carry any stride."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    spatial = [9] * len(kernel)
    w = rng.normal(size=(4, 1, *kernel)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=kernel, strides=strides, dilations=dilations)
    graph = helper.make_graph([node], "c1", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, *spatial])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, *(f"s{i}" for i in range(len(kernel)))])],
                              initializer=[numpy_helper.from_array(w, "w")])
    path = tmp_path / "c1.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    x = rng.normal(size=(5, 1, *spatial)).astype(np.float32)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert_close(Runtime(convert(path))(x), ref, f"1-channel conv {kernel}")


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_through_the_tiled_chip_path(name, exported):
    """Every zoo model on the per-tile hardware path: with the `ideal` preset it matches
    onnxruntime; with 8-bit converters (deterministic, no device noise) the fast path —
    DAC read straight from the strided patches — equals the generic path a probe forces."""
    from xbar.hardware import ablate, preset

    path = exported(name, 17, "kept")
    bundle = convert(path, crossbar=(32, 16))  # small tiles: several row and column blocks
    check_against_ort(Runtime(bundle, preset("ideal"), seed=0), name, path, f"{name} on the ideal chip", batches=(3,))
    from xbar.runtime.ranges import find_ranges

    x = example_input(ZOO[name], 3).numpy()
    find_ranges(bundle, x, preset("pcm"))
    for dac_range in ("max", "calibrated"):  # per-vector scaling; activations quantised once
        spec = ablate(preset("pcm"), only=["dac", "adc"]).override(**{"dac.range": dac_range})
        fast = Runtime(bundle, spec, seed=1).run({"input": x})["output"]
        rt = Runtime(bundle, spec, seed=1)
        for layer in rt.layers:
            layer.probe = lambda lyr, cols, y: None
        np.testing.assert_array_equal(rt.run({"input": x})["output"], fast, err_msg=f"{name}, DAC range {dac_range}")
