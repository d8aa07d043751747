"""The ONNX backend conformance cases converted from PyTorch, run through xbar.

The onnx package ships, under ``onnx/backend/test/data/pytorch-converted``, one
folder per case holding ``model.onnx`` and ``test_data_set_0/{input,output}_*.pb``.
Every case is converted with xbar (ideal hardware, default mapping) and its output
is compared with the stored expected output and with onnxruntime.

A case whose conversion raises ``UnsupportedOpError`` is skipped with the error
message, so the report lists what xbar does not support - except for the cases
in ``MUST_PASS``, where that is a failure.
"""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import numpy_helper, version_converter  # noqa: E402

from xbar.converter import convert  # noqa: E402
from xbar.errors import UnsupportedOpError  # noqa: E402
from xbar.runtime import Runtime  # noqa: E402

RTOL = 1e-4  # |xbar - ref| <= RTOL * (1 + |ref|), elementwise

CASES_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "pytorch-converted")
ALL_CASES = sorted(
    d for d in (os.listdir(CASES_DIR) if os.path.isdir(CASES_DIR) else [])
    if os.path.isfile(os.path.join(CASES_DIR, d, "model.onnx"))
)

# Cases xbar must convert and reproduce: every conv / pool / linear / batch-norm /
# activation / padding / shape case. UnsupportedOpError is a failure for these.
MUST_PASS = frozenset({
    # convolutions
    "test_Conv1d", "test_Conv1d_dilated", "test_Conv1d_groups", "test_Conv1d_pad1", "test_Conv1d_pad1size1",
    "test_Conv1d_pad2", "test_Conv1d_pad2size1", "test_Conv1d_stride",
    "test_Conv2d", "test_Conv2d_depthwise", "test_Conv2d_depthwise_padded", "test_Conv2d_depthwise_strided",
    "test_Conv2d_depthwise_with_multiplier", "test_Conv2d_dilated", "test_Conv2d_groups", "test_Conv2d_groups_thnn",
    "test_Conv2d_no_bias", "test_Conv2d_padding", "test_Conv2d_strided",
    "test_Conv3d", "test_Conv3d_dilated", "test_Conv3d_dilated_strided", "test_Conv3d_groups", "test_Conv3d_no_bias",
    "test_Conv3d_stride", "test_Conv3d_stride_padding",
    # pooling
    "test_AvgPool1d", "test_AvgPool1d_stride", "test_AvgPool2d", "test_AvgPool2d_stride", "test_AvgPool3d",
    "test_AvgPool3d_stride", "test_AvgPool3d_stride1_pad0_gpu_input",
    "test_MaxPool1d", "test_MaxPool1d_stride", "test_MaxPool1d_stride_padding_dilation", "test_MaxPool2d",
    "test_MaxPool2d_stride_padding_dilation", "test_MaxPool3d", "test_MaxPool3d_stride", "test_MaxPool3d_stride_padding",
    # batch norm
    "test_BatchNorm1d_3d_input_eval", "test_BatchNorm2d_eval", "test_BatchNorm2d_momentum_eval",
    "test_BatchNorm3d_eval", "test_BatchNorm3d_momentum_eval",
    # linear
    "test_Linear", "test_Linear_no_bias",
    # activations
    "test_ReLU", "test_LeakyReLU", "test_LeakyReLU_with_negval", "test_Sigmoid", "test_Tanh", "test_ELU", "test_SELU",
    "test_PReLU_1d", "test_PReLU_1d_multiparam", "test_PReLU_2d", "test_PReLU_2d_multiparam", "test_PReLU_3d",
    "test_PReLU_3d_multiparam", "test_Softplus", "test_Softsign", "test_GLU", "test_GLU_dim",
    # softmax family
    "test_Softmax", "test_LogSoftmax", "test_Softmin", "test_log_softmax_dim3", "test_log_softmax_lastdim",
    "test_softmax_functional_dim3", "test_softmax_lastdim",
    # shape / padding
    "test_PixelShuffle", "test_ZeroPad2d", "test_ReflectionPad2d", "test_ReplicationPad2d", "test_ConstantPad2d",
})

# By design not supported (transposed convolution): these must be refused with
# UnsupportedOpError rather than fail in some other way. (test_Embedding* is a plain
# Gather from a constant table, which xbar runs digitally; it is neither required
# nor expected to be refused, so it is checked like any other case.)
EXPECTED_UNSUPPORTED = frozenset({"test_ConvTranspose2d", "test_ConvTranspose2d_no_bias"})



def _read_pb(path: str) -> np.ndarray:
    t = onnx.TensorProto()
    with open(path, "rb") as fh:
        t.ParseFromString(fh.read())
    return numpy_helper.to_array(t)


def _load_data(case_dir: str, kind: str) -> list[np.ndarray]:
    files = glob.glob(os.path.join(case_dir, "test_data_set_0", f"{kind}_*.pb"))
    files.sort(key=lambda f: int(os.path.basename(f)[len(kind) + 1:-3]))
    return [_read_pb(f) for f in files]


def _graph_inputs(model: "onnx.ModelProto") -> list[str]:
    inits = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def _onnxruntime(model: "onnx.ModelProto", feeds: dict[str, np.ndarray]) -> list[np.ndarray] | str:
    """Outputs of onnxruntime, or the reason it cannot run the case.

    onnxruntime no longer implements several opset-6 kernels the old cases use, so
    those models are upgraded with the onnx version converter first. The
    ``*_multiparam`` PReLU cases have a per-channel slope of shape (C,) which
    opset >= 7 broadcasting rejects; for them only the stored outputs are used.
    """
    opset = next((i.version for i in model.opset_import if i.domain in ("", "ai.onnx")), 1)
    try:
        if opset < 7:
            model = version_converter.convert_version(model, 13)
        so = ort.SessionOptions()
        so.log_severity_level = 4
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        return sess.run(None, {n: feeds[n] for n in names})
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"


def _assert_close(got: np.ndarray, ref: np.ndarray, what: str) -> None:
    got = np.asarray(got)
    ref = np.asarray(ref)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    g = got.astype(np.float64)
    r = ref.astype(np.float64)
    err = np.abs(g - r)
    bound = RTOL * (1.0 + np.abs(r))
    bad = ~(err <= bound)
    if bad.any():
        i = np.unravel_index(np.argmax(np.where(bad, err / bound, 0)), err.shape)
        raise AssertionError(
            f"{what}: {int(bad.sum())}/{bad.size} elements exceed {RTOL:g}*(1+|ref|); worst at "
            f"{tuple(int(j) for j in i)}: xbar={g[i]!r} ref={r[i]!r} (max |diff| {err.max():.3g})"
        )


def test_cases_found():
    assert ALL_CASES, f"no ONNX backend cases under {CASES_DIR}"
    missing = sorted((MUST_PASS | EXPECTED_UNSUPPORTED) - set(ALL_CASES))
    assert not missing, f"cases listed in this file but not shipped with onnx {onnx.__version__}: {missing}"


@pytest.mark.parametrize("case", ALL_CASES)
def test_backend_case(case):
    case_dir = os.path.join(CASES_DIR, case)
    model_path = os.path.join(case_dir, "model.onnx")
    try:
        bundle = convert(model_path)
    except UnsupportedOpError as exc:
        if case in MUST_PASS:
            pytest.fail(f"{case} must be supported, but convert raised UnsupportedOpError: {exc}")
        pytest.skip(f"unsupported: {exc}")
    if case in EXPECTED_UNSUPPORTED:
        pytest.fail(f"{case} converted although it was expected to raise UnsupportedOpError; update EXPECTED_UNSUPPORTED")

    model = onnx.load(model_path)
    inputs = _load_data(case_dir, "input")
    expected = _load_data(case_dir, "output")
    names = _graph_inputs(model)
    assert len(inputs) == len(names), f"{case}: {len(inputs)} input files for graph inputs {names}"
    feeds = dict(zip(names, inputs))

    rt = Runtime(bundle)
    assert list(rt.input_names) == names
    # xbar's runtime is float32 throughout; integer inputs are passed as they are.
    xfeeds = {n: (v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v) for n, v in feeds.items()}
    outs = rt.run(xfeeds)
    assert len(rt.output_names) == len(expected)
    got = [outs[n] for n in rt.output_names]
    for k, (g, e) in enumerate(zip(got, expected)):
        assert g.dtype == np.float32, f"{case} output {k}: dtype {g.dtype}"
        _assert_close(g, e, f"{case} output {k} vs stored expected output")

    ref = _onnxruntime(model, feeds)
    if isinstance(ref, str):
        # Only the stored outputs are a reference for this case (see _onnxruntime).
        return
    for k, (g, r) in enumerate(zip(got, ref)):
        _assert_close(g, r, f"{case} output {k} vs onnxruntime")


@pytest.mark.parametrize("case", sorted(EXPECTED_UNSUPPORTED & set(ALL_CASES)))
def test_unsupported_case_raises_unsupported_op_error(case):
    with pytest.raises(UnsupportedOpError):
        convert(os.path.join(CASES_DIR, case, "model.onnx"))
