"""The chip path of a layer multiplies each row block only by its allocated tiles
(TileState.spans, xbar.runtime.analog.per_block_spans); the skipped tiles' outputs are
exactly 0 and the random streams are drawn as before, so a seed gives the same chip as the
dense per-row-block product (analog.SPARSE = False).

The products themselves are equal only up to float32 rounding: BLAS may sum a column slice
in another order than the whole matrix (OpenBLAS picks kernels by shape: bit-identical on
one AMD EPYC VM, 1 ulp apart on another). So each product is checked against the dense one
within the rounding bound of a length-R dot product, the chip's outputs with ideal
converters within a float32 tolerance, and with the 8-bit ADC and DAC, which can turn a
1-ulp difference into one level (the ADC of this layer, or the next layer's DAC), bit for
bit wherever the products came out bit-identical."""

import numpy as np
import pytest

from xbar.converter import convert
from xbar.hardware import preset
from xbar.runtime import Runtime, analog


def _model(path, channels=64, k=3):
    import torch
    import torch.nn as nn

    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(channels, channels, k, padding=k // 2, groups=channels), nn.ReLU(),
                        nn.Conv2d(channels, 5, 1))
    net.eval()
    torch.onnx.export(net, (torch.zeros(1, 3, 8, 8),), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    return path


def _run(bundle, spec, seed, x, sparse, monkeypatch):
    monkeypatch.setattr(analog, "SPARSE", sparse)
    rt = Runtime(bundle, spec, seed=seed)
    return rt, rt(x)


def _products_within_rounding(st, k, rng):
    """The sparse products of the depthwise layer's d (and read-noise var) against the dense
    ones: |a − b| <= 2·R·eps32·Σ|v||w| per element, twice the worst-case rounding error of a
    float32 dot product of length R summed in any order (Higham, Accuracy and Stability of
    Numerical Algorithms, 2nd ed., eq. 3.5). True if the products were also bit-identical."""
    v = rng.uniform(-1, 1, (13, k)).astype(np.float32)
    same = True
    for vin, live, dense in ((v, st.d_live, st.d), (np.square(v), st.var_live, st.var)):
        if dense is None:
            continue
        got = analog.per_block_spans(vin, live, k, st.spans)
        want = analog.per_block(vin, dense, k)
        bound = analog.per_block(np.abs(vin), np.abs(dense), k) * (2 * dense.shape[1] * np.finfo(np.float32).eps)
        assert np.all(np.abs(got - want) <= bound)
        same &= np.array_equal(got, want)
    return same


@pytest.mark.parametrize("overrides", [{}, {"t_inference": 3600.0}, {"adc.noise": 0.01}, {"device.read_noise_mode": "frozen"},
                                       {"circuit.ir_drop": True, "circuit.r_wire": 1.0, "t_inference": 86400.0},
                                       {"dac.range": "calibrated"}])
@pytest.mark.parametrize("options", [{}, {"encoding": "offset"},
                                     {"rearrange": "ir-drop", "rearrange_rows": "ir-drop", "hardware": preset("pcm")}],
                         ids=["differential", "offset", "rearranged"])
def test_sparse_chip_product_matches_dense(tmp_path, overrides, options, monkeypatch):
    bundle = convert(_model(tmp_path / "m.onnx"), crossbar=(16, 16), **options)
    spec = preset("pcm").override(overrides) if overrides else preset("pcm")
    ideal_converters = spec.override({"adc.bits": None, "dac.bits": None})
    x = np.random.default_rng(0).standard_normal((7, 3, 8, 8)).astype(np.float32)
    rng = np.random.default_rng(1)
    for seed in range(4):
        rt, sparse = _run(bundle, spec, seed, x, True, monkeypatch)
        st = rt.layers[1].chip.tiles
        assert st.spans is not None  # the depthwise layer skips tiles
        live = sum(hi - lo for runs in st.spans for lo, hi in runs)
        # Row placement scatters a tile's rows over the weight-order blocks: fewer skipped.
        assert live < (1.0 if "rearrange_rows" in options else 0.5) * len(st.spans) * rt.layers[1].n
        assert rt.layers[0].chip.tiles.spans is None  # a dense layer keeps the dense product
        monkeypatch.setattr(analog, "SPARSE", True)
        bit_identical = _products_within_rounding(st, st.k, rng)
        _, dense = _run(bundle, spec, seed, x, False, monkeypatch)
        if bit_identical:
            assert np.array_equal(sparse, dense), f"seed {seed}: max diff {np.abs(sparse - dense).max()}"
        # Without the converters' rounding to levels, the outputs agree to float32 precision:
        # the products differ by a few ulp at most, and the draws are the same. (With the
        # 8-bit DAC of the next layer, a 1-ulp difference on a level's edge is a 1/256 step:
        # seen with offset encoding, IR drop and 1 d drift, seed 1.)
        _, a = _run(bundle, ideal_converters, seed, x, True, monkeypatch)
        _, b = _run(bundle, ideal_converters, seed, x, False, monkeypatch)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())
        if seed:
            assert not np.array_equal(sparse, previous)  # the seed matters
        previous = sparse
