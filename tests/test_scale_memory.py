"""Memory that follows what is programmed (issue 10): a chip keeps a depthwise layer's
per-tile matrices as live position runs (SpanStore), a layer on a chip assembles its dense
K×N matrix only when read, and conversion skips K×N copies that change nothing. Each is
checked bit for bit against the straightforward form it replaces."""

import numpy as np
import pytest

from xbar.config import MappingConfig
from xbar.converter import convert
from xbar.converter.encodings import encode
from xbar.converter.mapping import column_scale
from xbar.hardware import preset
from xbar.runtime import Runtime
from xbar.runtime.span_store import SpanStore


def test_span_store_gives_back_the_dense_array_bit_for_bit():
    rng = np.random.default_rng(0)
    dense = np.zeros((3, 4, 20), dtype=np.float32)
    dense[0, :, 2:6] = rng.standard_normal((4, 4))
    dense[1, 3, 10] = -0.0  # a signed zero outside every span must survive too
    dense[2, :, 15:20] = rng.standard_normal((4, 5))
    spans = [[(2, 6)], [(0, 4)], [(16, 18)]]
    store = SpanStore.pack(dense, SpanStore.keep([dense], spans))
    back = store.dense()
    assert back.tobytes() == dense.tobytes()  # bytes: np.array_equal would accept +0 for −0
    assert store.nbytes < dense.nbytes / 2
    assert np.array_equal(store.view(2, 3, 16, 18), dense[2, :3, 16:18])
    assert store.runs[1] == [(0, 4), (10, 11)]


def _depthwise_model(path):
    import torch
    import torch.nn as nn

    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 96, 3, padding=1), nn.ReLU(), nn.Conv2d(96, 96, 3, padding=1, groups=96),
                        nn.ReLU(), nn.Conv2d(96, 4, 1))
    net.eval()
    torch.onnx.export(net, (torch.zeros(1, 3, 6, 6),), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    return path


@pytest.mark.parametrize("encoding", ["differential", "offset"])
def test_chip_holds_live_tiles_only_and_assembles_the_matrix_on_demand(tmp_path, encoding):
    bundle = convert(_depthwise_model(tmp_path / "m.onnx"), crossbar=(16, 16), encoding=encoding)
    x = np.random.default_rng(2).standard_normal((3, 3, 6, 6)).astype(np.float32)
    rt = Runtime(bundle, preset("pcm"), seed=0)
    first = rt(x)
    dw = rt.layers[1]
    st = dw.chip.tiles
    assert st.spans is not None and isinstance(st.d_live, SpanStore) and isinstance(st.var_live, SpanStore)
    # Rows are (kernel offset, channel): a 16-row block holds 16 consecutive channels of one
    # offset, so it reaches 2–3 tiles of 8 positions (differential) or 2 of 15 (offset) of
    # the 96 positions: at most 30/96 of the dense array is kept.
    assert st.d_live.nbytes <= 30 / 96 * st.d.nbytes and st.var_live.nbytes <= 30 / 96 * st.var.nbytes
    assert all(layer._matrix is None for layer in rt.layers if layer.chip is not None)
    ideal = Runtime(bundle)  # hardware=None assembles its matrices at construction
    for chip_layer, ideal_layer in zip(rt.layers, ideal.layers):
        assert np.array_equal(chip_layer.matrix, ideal_layer.matrix)
    assert np.array_equal(rt.layers[1]._fused, None)  # the chip path never makes the fused matrix
    # Reading the matrix changes nothing on the chip: a fresh chip of the same seed agrees.
    assert np.array_equal(Runtime(bundle, preset("pcm"), seed=0)(x), first)


def test_column_scale_is_the_column_abs_max_bit_for_bit():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((50, 7))
    w[:, 2] = 0.0
    w[:, 3] = -0.0
    w[:, 4] = -np.abs(w[:, 4])  # the largest magnitude is a negative weight
    ref = np.abs(w).max(axis=0)
    assert column_scale(w, None).tobytes() == np.where(ref > 0, ref, 1.0).tobytes()


@pytest.mark.parametrize("replicas,bits", [(1, None), (1, 4), (3, None)])
def test_encode_positions_equal_the_repeated_columns(replicas, bits):
    rng = np.random.default_rng(4)
    u = np.clip(rng.standard_normal((20, 6)), -1, 1)
    valid = rng.random((20, 6)) < 0.7
    enc = encode(u, valid, MappingConfig(rows=16, cols=16, replicas=replicas, weight_bits=bits))
    levels = 2 ** (bits - 1) - 1 if bits else None
    v = np.round(u * levels) / levels if bits else u
    assert enc.v.tobytes() == np.repeat(v, replicas, axis=1).tobytes()
    assert np.array_equal(enc.valid, np.repeat(valid, replicas, axis=1))


@pytest.mark.parametrize("options", [{}, {"encoding": "offset", "weight_bits": 5}, {"weight_clip_percentile": 99.0}])
def test_mapping_in_place_of_the_weights_gives_the_same_tiles(options):
    from xbar.converter.mapping import map_weights

    rng = np.random.default_rng(5)
    w = rng.standard_normal((70, 30))
    cfg = MappingConfig(rows=16, cols=16, **options)
    kept = w.copy()
    ref = map_weights(w, cfg)
    assert np.array_equal(w, kept)  # without overwrite the caller's weights are untouched
    got = map_weights(w, cfg, overwrite=True)
    for field in ("tiles", "col_scale", "position_output", "position_gain", "tile_used"):
        assert getattr(got, field).tobytes() == getattr(ref, field).tobytes(), field
    assert not np.array_equal(w, kept)  # the weights' memory held the normalised weights
    assert np.all(np.abs(w) <= 1)


@pytest.mark.parametrize("cfg", [
    {}, {"encoding": "offset"}, {"afp_exponents": 3, "afp_step": 2}, {"bit_slices": 2, "bits_per_cell": 3},
    {"weight_bits": 5, "weight_clip_percentile": 90.0}, {"replicas": 2}, {"rearrange": "ir-drop"},
])
@pytest.mark.parametrize("group, mult", [(24, 1), (24, 2), (3, 1)])
def test_grouped_conv_maps_from_sparse_cells_bit_for_bit(monkeypatch, cfg, group, mult):
    """A grouped convolution's weights are kept as the CSR matrix of its groups' cells and
    mapped a slab of columns at a time (placement: densified first); tiles, scales, column
    map, tile table and live ranges must equal the dense block-diagonal path's exactly,
    with the channel-major rows of --depthwise packed too."""
    import xbar.converter.mapping as mapping
    from xbar.converter.layers import _conv_weight, _grouped_conv_weight

    cin = 24
    w = np.random.default_rng(group + mult).standard_normal((cin * mult, cin // group, 3, 3))
    w[0, 0, 1, 1] = 0.0  # an explicit zero inside a group stays a held cell
    dense, mask = _conv_weight(w, group)
    sw, smask = _grouped_conv_weight(w, group)
    assert np.array_equal(sw.toarray(), dense) and np.array_equal(smask.toarray(), mask)
    monkeypatch.setattr(mapping, "SLAB_CELLS", 3 * dense.shape[0] + 1)  # several slabs, uneven
    pcm = preset("pcm")
    device = pcm.device if cfg.get("afp_exponents") or cfg.get("rearrange") else None
    circuit = pcm.circuit if cfg.get("rearrange") else None
    c = MappingConfig(rows=16, cols=16, **cfg)
    k = dense.shape[0]
    orders = [None, np.lexsort((np.arange(k) // cin, np.arange(k) % cin)).astype(np.int64)]
    for rows_first in orders if not cfg.get("rearrange") else orders[:1]:
        want = mapping.map_weights(dense.copy(), c, mask, device, 86400.0, circuit, rows_first=rows_first)
        got = mapping.map_weights(sw, c, smask, device, 86400.0, circuit, rows_first=rows_first)
        for name in ("tiles", "col_scale", "position_output", "position_gain", "tile_used", "live"):
            a, b = getattr(want, name), getattr(got, name)
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), name
        assert want.table == got.table
        assert (want.row_order is None) == (got.row_order is None)
        if want.row_order is not None:
            assert np.array_equal(want.row_order, got.row_order)


def test_shapes_inferred_without_the_weights_equal_inference_on_the_whole_model(tmp_path):
    """load_model runs the checker and shape inference on a skeleton whose large weights
    are typed inputs (converter/load.py): the model keeps every initializer and gets the
    same value_info and outputs that inference on the whole model gives."""
    import onnx
    from onnx import shape_inference

    import xbar.converter.load as load

    path = _depthwise_model(tmp_path / "m.onnx")
    full = shape_inference.infer_shapes(onnx.load(str(path)), data_prop=True)
    original = onnx.load(str(path))
    assert load.skeleton(original) is original  # nothing here is over the default threshold
    old = load.SKELETON_BYTES
    try:
        load.SKELETON_BYTES = 1000  # the 96x96 pointwise and 3x3 weights become inputs
        assert len(load.skeleton(original).graph.initializer) < len(original.graph.initializer)
        model, _, _ = load.load_model(path)
    finally:
        load.SKELETON_BYTES = old
    assert [i.SerializeToString() for i in model.graph.initializer] == \
        [i.SerializeToString() for i in original.graph.initializer]
    assert [v.SerializeToString() for v in model.graph.value_info] == [v.SerializeToString() for v in full.graph.value_info]
    assert [v.SerializeToString() for v in model.graph.output] == [v.SerializeToString() for v in full.graph.output]
