"""xbar.dims: a shape per sample, the batch divided out of whichever dimension holds it."""

from __future__ import annotations

import pytest

from xbar.dims import per_sample, vectors_per_sample

SYMBOLIC = {"mode": "symbolic", "size": None, "dim": "batch"}


@pytest.mark.parametrize("shape,names,batch,want", [
    ([None, 64, 56, 56], ["batch", None, None, None], SYMBOLIC, ([64, 56, 56], [None, None, None])),
    ([17, None, 48], [None, "batch", None], SYMBOLIC, ([17, 48], [None, None])),  # MHA: (seq, batch, d)
    ([None, 32], ["16*batch", None], SYMBOLIC, ([16, 32], [None, None])),  # dynamo's folded rows
    ([None, 32], ["batch * 16", None], SYMBOLIC, ([16, 32], [None, None])),
    ([None, 32], ["batch*seq", None], SYMBOLIC, ([None, 32], ["seq", None])),
    ([None, 32], ["2*batch*seq", None], SYMBOLIC, ([None, 32], ["2*seq", None])),
    ([None, None, 8], ["batch", "batch", None], SYMBOLIC, None),  # twice: no per-sample shape
    ([None, 32], ["batch*batch", None], SYMBOLIC, None),
    ([None, 32], ["unk__7", None], SYMBOLIC, None),  # may be batch × windows: not guessed
    ([None, 32], ["floor(batch/2)", None], SYMBOLIC, None),
    ([None, 32], [None, None], SYMBOLIC, ([32], [None])),  # inference dropped the name: leading
    ([None, 10], ["batch", None], {"mode": "relaxed", "size": None, "dim": "batch"}, ([10], [None])),
    ([None, 10], ["N", None], {"mode": "symbolic", "size": None, "dim": None}, None),
    ([None, 10], None, {"mode": "symbolic", "size": None, "dim": None}, ([10], [None])),
    ([1, 10], None, {"mode": "fixed", "size": 1}, ([10], [None])),
    ([4, 17, 48], None, {"mode": "fixed", "size": 4}, ([17, 48], [None, None])),
    ([17, 4, 48], None, {"mode": "fixed", "size": 4}, None),  # fixed sizes cannot say where the batch is
    ([], [], SYMBOLIC, None),
])
def test_per_sample(shape, names, batch, want):
    assert per_sample(shape, names, batch) == want


def test_vectors_per_sample():
    assert vectors_per_sample([None, 64, 56, 56], ["batch", None, None, None], SYMBOLIC, 64) == 56 * 56
    assert vectors_per_sample([None, 32], ["16*batch", None], SYMBOLIC, 32) == 16
    assert vectors_per_sample([None, 32], ["batch*seq", None], SYMBOLIC, 32) is None
    assert vectors_per_sample([None, 32], ["unk__3", None], SYMBOLIC, 32) is None


def test_a_fixed_batch_divides_the_whole_tensor_wherever_it_is():
    """A fixed batch of 4 running a time-major attention's [seq, batch, d] = [10, 4, 96]
    output: each call runs 4 samples through all 10×4 vectors, so 10 per sample, although
    the batch is not the leading dimension; a count the batch does not divide is unknown."""
    fixed = {"mode": "fixed", "size": 4}
    assert vectors_per_sample([10, 4, 96], None, fixed, 96) == 10
    assert vectors_per_sample([4, 10, 96], None, fixed, 96) == 10  # leading: per_sample's own way
    assert vectors_per_sample([10, 3, 96], None, fixed, 96) is None
    assert vectors_per_sample([10, None, 96], None, fixed, 96) is None
