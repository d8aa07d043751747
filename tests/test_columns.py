"""The column map: fold and combine against explicit sums over positions."""

import numpy as np
import pytest

from xbar.columns import ColumnMap, read_map
from xbar.errors import BundleError

rng = np.random.default_rng(11)


def _random_map(n, p):
    output = np.concatenate([rng.permutation(n), rng.integers(0, n, p - n)])  # every output has one
    rng.shuffle(output)
    return ColumnMap(output.astype(np.int64), rng.choice([1.0, 0.5, 0.25, 4.0], p).astype(np.float32), n)


@pytest.mark.parametrize("n,p", [(1, 1), (5, 5), (5, 13), (40, 120)])
def test_fold_and_combine_are_gain_weighted_sums(n, p):
    cmap = _random_map(n, p)
    full = rng.normal(size=(7, p)).astype(np.float32)
    want = np.zeros((7, n))
    for q in range(p):  # the definition, one position at a time
        want[:, cmap.output[q]] += cmap.gain[q] * full[:, q].astype(np.float64)
    # float32 results of sums of at most p/n terms of order 4: rounding well below 1e-5.
    np.testing.assert_allclose(cmap.fold(full), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cmap.combine(full), want, rtol=1e-5, atol=1e-5)


def test_a_permutation_with_unit_gains_is_a_gather():
    order = rng.permutation(9)
    cmap = ColumnMap(order.astype(np.int64), np.ones(9, np.float32), 9)
    y = rng.normal(size=(4, 9)).astype(np.float32)
    assert cmap.gather_only
    out = np.empty_like(y)
    out[:, order] = y
    np.testing.assert_array_equal(cmap.combine(y), out)


def test_format_1_column_order_and_bad_maps():
    entry = {"name": "fc", "N": 3, "arrays": {"column_order": "k"}}
    cmap = read_map(entry, lambda name: np.array([2, 0, 1]))
    assert list(cmap.output) == [2, 0, 1] and np.all(cmap.gain == 1)
    bad = {"name": "fc", "N": 3, "arrays": {"position_output": "a", "position_gain": "b"}}
    arrays = {"position_output": np.array([0, 3]), "position_gain": np.ones(2)}
    with pytest.raises(BundleError, match="'fc'"):
        read_map(bad, arrays.__getitem__)
