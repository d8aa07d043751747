"""The chip path of a layer multiplies each row block only by its allocated tiles
(TileState.spans, xbar.runtime.analog.per_block_spans); the skipped tiles' outputs are
exactly 0 and the random streams are drawn as before, so a seed gives the same outputs, bit
for bit, as the dense per-row-block product (analog.SPARSE = False)."""

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


@pytest.mark.parametrize("overrides", [{}, {"t_inference": 3600.0}, {"adc.noise": 0.01}, {"device.read_noise_mode": "frozen"},
                                       {"circuit.ir_drop": True, "circuit.r_wire": 1.0, "t_inference": 86400.0},
                                       {"dac.range": "calibrated"}])
@pytest.mark.parametrize("options", [{}, {"encoding": "offset"},
                                     {"rearrange": "ir-drop", "rearrange_rows": "ir-drop", "hardware": preset("pcm")}],
                         ids=["differential", "offset", "rearranged"])
def test_sparse_chip_product_is_bit_identical_to_dense(tmp_path, overrides, options, monkeypatch):
    bundle = convert(_model(tmp_path / "m.onnx"), crossbar=(16, 16), **options)
    spec = preset("pcm").override(overrides) if overrides else preset("pcm")
    x = np.random.default_rng(0).standard_normal((7, 3, 8, 8)).astype(np.float32)
    for seed in range(4):
        rt, sparse = _run(bundle, spec, seed, x, True, monkeypatch)
        spans = rt.layers[1].chip.tiles.spans
        assert spans is not None  # the depthwise layer skips tiles
        live = sum(hi - lo for runs in spans for lo, hi in runs)
        # Row placement scatters a tile's rows over the weight-order blocks: fewer skipped.
        assert live < (1.0 if "rearrange_rows" in options else 0.5) * len(spans) * rt.layers[1].n
        assert rt.layers[0].chip.tiles.spans is None  # a dense layer keeps the dense product
        _, dense = _run(bundle, spec, seed, x, False, monkeypatch)
        assert np.array_equal(sparse, dense), f"seed {seed}: max diff {np.abs(sparse - dense).max()}"
        if seed:
            assert not np.array_equal(sparse, previous)  # the seed matters
        previous = sparse
