"""IR drop: effective_conductance against an independent nodal solve of the same circuit.

The reference below is deliberately written the plain way and shares nothing with the
module: every resistor and device is stamped into a node-conductance matrix, zero
resistances are handled by merging the nodes they short (connected components), the
sources and the virtual ground are fixed potentials, and the resulting sparse system is
solved directly for the given drive voltages; what is compared is the physical output,
the column currents, with G_effᵀ·v.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import splu

from xbar.runtime.irdrop import effective_conductance


def reference_currents(g: np.ndarray, v: np.ndarray, r_w: float, r_d: float, r_s: float) -> np.ndarray:
    """Sense currents of one tile g (R, C) for drive voltages v (R,) or (R, n) by nodal analysis."""
    rows, cols = g.shape
    v = v.reshape(rows, -1)
    row_node = np.arange(rows * cols).reshape(rows, cols)
    col_node = rows * cols + row_node
    source = 2 * rows * cols + np.arange(rows)
    ground = 2 * rows * cols + rows
    n_nodes = ground + 1

    # Every two-terminal element: (node p, node q, resistance). Devices are given by their
    # conductance instead, since G = 0 (an open) is as legal as r = 0 (a short).
    resistors = [
        (source, row_node[:, 0], r_d),
        (row_node[:, :-1].ravel(), row_node[:, 1:].ravel(), r_w),
        (col_node[:-1, :].ravel(), col_node[1:, :].ravel(), r_w),
        (col_node[-1, :], np.full(cols, ground), r_s),
    ]
    p_list, q_list, y_list, short_p, short_q = [], [], [], [], []
    for p, q, r in resistors:
        if r == 0:
            short_p.append(p)
            short_q.append(q)
        else:
            p_list.append(p)
            q_list.append(q)
            y_list.append(np.full(len(p), 1.0 / r))
    p_list.append(row_node.ravel())
    q_list.append(col_node.ravel())
    y_list.append(g.ravel())
    p, q, y = (np.concatenate(x) for x in (p_list, q_list, y_list))

    # Shorted nodes become one node.
    sp_, sq_ = (np.concatenate(x) if x else np.zeros(0, int) for x in (short_p, short_q))
    shorts = sp.coo_matrix((np.ones(len(sp_)), (sp_, sq_)), shape=(n_nodes, n_nodes))
    n_groups, group = connected_components(shorts, directed=False)

    # Stamp y between the two groups of each element: +y on both diagonals, −y off them.
    gp, gq = group[p], group[q]
    keep = gp != gq
    gp, gq, y = gp[keep], gq[keep], y[keep]
    rows_ = np.concatenate([gp, gq, gp, gq])
    cols_ = np.concatenate([gp, gq, gq, gp])
    lap = sp.coo_matrix((np.concatenate([y, y, -y, -y]), (rows_, cols_)), shape=(n_groups, n_groups)).tocsr()

    fixed = np.full(n_groups, -1)
    fixed[group[source]] = np.arange(rows)
    assert fixed[group[ground]] == -1, "a source is shorted to ground"
    fixed[group[ground]] = rows  # index of the 0 V potential below
    potentials = np.vstack([v, np.zeros((1, v.shape[1]))])
    is_fixed = fixed >= 0
    free = np.nonzero(~is_fixed)[0]
    known = np.nonzero(is_fixed)[0]
    u_known = potentials[fixed[known]]
    u = np.zeros((n_groups, v.shape[1]))
    u[known] = u_known
    if len(free):
        a_ff = lap[free][:, free].tocsc()
        rhs = -(lap[free][:, known] @ u_known)
        u[free] = splu(a_ff).solve(np.asarray(rhs)).reshape(len(free), -1)
    volts = u[group]

    # All current entering column j through its devices leaves through its sense resistor
    # (the top of the column is open): KCL over the whole column wire.
    device_current = g.ravel()[:, None] * (volts[row_node.ravel()] - volts[col_node.ravel()])
    currents = device_current.reshape(rows, cols, -1).sum(0)
    if r_s > 0:  # the same current, read the way a sense amplifier would: V / r_sense
        np.testing.assert_allclose(volts[col_node[-1, :]] / r_s, currents, rtol=1e-9, atol=1e-15)
    return currents


def _rel_err(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


RESISTANCES = [  # (r_wire, r_driver, r_sense) in ohms
    (0.1, 0.0, 0.0),
    (1.0, 10.0, 10.0),
    (10.0, 0.0, 25.0),
    (2.5, 40.0, 0.0),
    (0.0, 20.0, 30.0),  # ideal wires, resistive driver and sense: still a coupled circuit
]


@pytest.mark.parametrize("shape", [(4, 3), (16, 16), (32, 8), (8, 48), (5, 7), (1, 6), (6, 1)])
@pytest.mark.parametrize("res", RESISTANCES)
def test_matches_nodal_solve(shape, res):
    rng = np.random.default_rng(hash((shape, res)) % 2**32)
    g = rng.uniform(0.0, 100e-6, shape)
    v = rng.uniform(-1.0, 1.0, (shape[0], 3))
    g_eff = effective_conductance(g, *res)
    assert g_eff.shape == shape and g_eff.dtype == np.float64
    assert _rel_err(g_eff.T @ v, reference_currents(g, v, *res)) < 1e-9


@pytest.mark.parametrize("res", [(10.0, 10.0, 10.0), (0.5, 0.0, 0.0)])
def test_matches_nodal_solve_128(res):
    rng = np.random.default_rng(7)
    g = rng.uniform(0.0, 100e-6, (128, 128))
    v = rng.uniform(-1.0, 1.0, (128, 2))
    assert _rel_err(effective_conductance(g, *res).T @ v, reference_currents(g, v, *res)) < 1e-9


def test_matches_nodal_solve_256_strong_ir_drop():
    # r_w = 10 Ω with G up to 100 µS over 256 cells: a severe drop (outputs far from G·v).
    rng = np.random.default_rng(8)
    g = rng.uniform(0.0, 100e-6, (256, 256))
    v = rng.uniform(-1.0, 1.0, 256)
    i_ref = reference_currents(g, v, 10.0, 10.0, 10.0)[:, 0]
    assert _rel_err(g.T @ v, i_ref) > 0.1
    assert _rel_err(effective_conductance(g, 10.0, 10.0, 10.0).T @ v, i_ref) < 1e-9


def test_zero_resistance_reproduces_g_exactly():
    rng = np.random.default_rng(1)
    for shape in [(16, 16), (3, 5, 7), (2, 32, 8), (1, 1)]:
        g = rng.uniform(0.0, 100e-6, shape)
        np.testing.assert_allclose(effective_conductance(g, 0.0), g, rtol=1e-12, atol=0)


def test_small_wire_resistance_is_resolved_without_cancellation():
    # For r_w → 0 the deviation from G is linear in r_w; it stays measurable far below the
    # scale where an admittance formulation (1/r_w next to G) would lose it to rounding.
    rng = np.random.default_rng(2)
    g = rng.uniform(0.0, 25e-6, (32, 32))
    dev = [np.linalg.norm(effective_conductance(g, r) - g) for r in (1e-9, 2e-9, 1e-6, 2e-6)]
    assert dev[0] > 0
    assert dev[1] / dev[0] == pytest.approx(2.0, rel=1e-4)
    assert dev[3] / dev[2] == pytest.approx(2.0, rel=1e-4)
    assert dev[2] / dev[0] == pytest.approx(1000.0, rel=1e-4)


def test_error_grows_monotonically_with_wire_resistance():
    rng = np.random.default_rng(3)
    g = rng.uniform(0.0, 50e-6, (24, 40))
    for r_d, r_s in [(0.0, 0.0), (10.0, 10.0)]:
        r_ws = (0.0, 0.01, 0.1, 0.5, 1.0, 3.0, 10.0)
        dev = [np.linalg.norm(effective_conductance(g, r, r_d, r_s) - g) for r in r_ws]
        assert np.all(np.diff(dev) > 0), dev


@pytest.mark.parametrize("r_d, r_s", [(0.0, 0.0), (10.0, 10.0)])
def test_uniform_array_attenuation_grows_with_distance(r_d, r_s):
    # Uniform G: the farther a cell from its driver (column index j) and from the sense
    # amplifier (small row index i, far from the bottom), the more it is attenuated.
    g = np.full((32, 48), 25e-6)
    ratio = effective_conductance(g, 1.0, r_d, r_s) / g
    assert np.all(ratio <= 1)
    if r_d == r_s == 0:  # bottom-left cell: its row node is at v, its column node at 0 V
        assert ratio[-1, 0] == pytest.approx(1.0, abs=1e-12)
    else:
        assert ratio.max() < 1
    assert np.all(np.diff(ratio, axis=1) < 0)  # along each row, away from the driver
    assert np.all(np.diff(ratio, axis=0) > 0)  # down each column, toward the sense amplifier


def test_stack_equals_tiles_one_at_a_time():
    rng = np.random.default_rng(4)
    g = rng.uniform(0.0, 100e-6, (2, 3, 20, 12))
    stacked = effective_conductance(g, 2.0, 5.0, 5.0)
    assert stacked.shape == g.shape
    for idx in np.ndindex(2, 3):
        single = effective_conductance(g[idx], 2.0, 5.0, 5.0)
        np.testing.assert_allclose(stacked[idx], single, rtol=1e-12, atol=0)


def test_every_tile_of_a_stack_of_uneven_groups_matches_nodal_solve():
    """19 tiles of 32×32: the lowest levels run on groups of 8 whole tiles side by side
    (the last group holds 3), blocks of different tiles interleaved; each tile must still
    come out as its own circuit."""
    rng = np.random.default_rng(9)
    g = rng.uniform(0.0, 100e-6, (19, 32, 32))
    g[5] = 0.0  # a tile with nothing programmed between two that are
    v = rng.uniform(-1.0, 1.0, (32, 2))
    g_eff = effective_conductance(g, 2.0, 10.0, 10.0)
    for t in range(len(g)):
        i_ref = reference_currents(g[t], v, 2.0, 10.0, 10.0)
        if t == 5:
            assert np.all(g_eff[t] == 0.0) and np.all(i_ref == 0.0)
        else:
            assert _rel_err(g_eff[t].T @ v, i_ref) < 1e-9, t


@pytest.mark.parametrize("shape", [(9, 64, 64), (4, 128, 128)])
def test_worker_threads_give_identical_results(monkeypatch, shape):
    """One worker runs the chunks inline, where BLAS could use threads of its own: OpenBLAS
    splits the 128×128 tile's largest joins between them and rounds differently (5.8e-16
    relative, seen on 2 cores), which would make a chip depend on XBAR_THREADS."""
    import xbar.runtime.parallel as parallel

    rng = np.random.default_rng(6)
    g = rng.uniform(0.0, 100e-6, shape)  # several chunks
    monkeypatch.setattr(parallel, "MAX_WORKERS", 1)
    one = effective_conductance(g, 1.0, 10.0, 10.0)
    monkeypatch.setattr(parallel, "MAX_WORKERS", 2)
    np.testing.assert_array_equal(effective_conductance(g, 1.0, 10.0, 10.0), one)


def test_float32_input_and_empty_stack():
    rng = np.random.default_rng(5)
    g = rng.uniform(0.0, 25e-6, (8, 8)).astype(np.float32)
    out = effective_conductance(g, 1.0)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, effective_conductance(g.astype(np.float64), 1.0), rtol=0, atol=0)
    assert effective_conductance(np.zeros((0, 4, 4)), 1.0).shape == (0, 4, 4)


# The float32 solve's stated bound (xbar.runtime.irdrop, "Precision"): every G_eff entry
# within 2e-5 of the tile's largest conductance of the exact one. Measured: <= 8.7e-6.
F32_BOUND = 2e-5


@pytest.mark.parametrize("shape,res", [
    ((64, 64), (0.01, 0.0, 0.0)),  # weak drop: the correction is ~1e-4 of G, near float32's grain
    ((64, 64), (10.0, 1000.0, 1000.0)),
    ((128, 128), (1.0, 0.0, 0.0)),
    ((128, 128), (1.0, 100.0, 100.0)),
    ((256, 256), (10.0, 0.0, 0.0)),  # strong drop over the largest tile
    ((48, 80), (2.5, 40.0, 0.0)),  # padded sides
])
def test_float32_solve_is_within_its_stated_bound_of_the_nodal_solve(shape, res):
    """Against the independent nodal solve, per cell: each G_eff entry is read out by
    driving its row alone (v = e_i), so the reference's columns are G_eff's rows."""
    rng = np.random.default_rng(sum(shape) + int(res[0] * 100))
    g = rng.uniform(0.0, 100e-6, shape)
    g[:, 1::2] *= rng.random((shape[0], shape[1] // 2)) < 0.5  # differential pairs: half the cells at 0
    exact = reference_currents(g, np.eye(shape[0]), *res).T
    g32 = effective_conductance(g, *res, dtype="float32")
    assert g32.dtype == np.float64  # the arithmetic is float32, the result float64 as always
    err = np.abs(g32 - exact).max() / g.max()
    assert err <= F32_BOUND, err
    # It is float32's rounding, not a different circuit: far above float64's own error.
    assert np.abs(effective_conductance(g, *res) - exact).max() / g.max() < 1e-12


def test_float32_solve_is_deterministic_and_threads_do_not_change_it(monkeypatch):
    import xbar.runtime.parallel as parallel

    g = np.random.default_rng(4).uniform(0.0, 25e-6, (6, 128, 128))
    monkeypatch.setattr(parallel, "MAX_WORKERS", 1)
    one = effective_conductance(g, 1.0, dtype="float32")
    monkeypatch.setattr(parallel, "MAX_WORKERS", 2)
    np.testing.assert_array_equal(effective_conductance(g, 1.0, dtype="float32"), one)
    # A tile's result does not depend on the tiles solved beside it.
    np.testing.assert_array_equal(effective_conductance(g[3], 1.0, dtype="float32"), one[3])


def test_rejects_an_unknown_solve_dtype():
    with pytest.raises(ValueError, match="float64, float32"):
        effective_conductance(np.ones((2, 2)), 1.0, dtype="float16")


@pytest.mark.parametrize("args", [
    (np.ones(4), 1.0, 0.0, 0.0),
    (np.ones((2, 0)), 1.0, 0.0, 0.0),
    (-np.ones((2, 2)), 1.0, 0.0, 0.0),
    (np.full((2, 2), np.nan), 1.0, 0.0, 0.0),
    (np.ones((2, 2)), -1.0, 0.0, 0.0),
    (np.ones((2, 2)), 1.0, np.inf, 0.0),
    (np.ones((2, 2)), 1.0, 0.0, -2.0),
])
def test_rejects_invalid_input(args):
    with pytest.raises(ValueError):
        effective_conductance(*args)


# ----------------------------------------------------------------- compiled lowest levels


def _lowest_levels_input(rows, cols, scale, r_w, dtype=np.float64, seed=0):
    """A 128-cell-or-more schedule's leaves for random conductances, block-last."""
    from xbar.runtime import irdrop

    sched = irdrop._Schedule(rows, cols)
    g = np.random.default_rng(seed).uniform(0.0, scale, (1, rows * cols))[:, sched.order].astype(dtype)
    r_left = np.where(sched.is_left, 0.0, r_w).astype(dtype)
    r_below = np.where(sched.is_bottom, 0.0, r_w).astype(dtype)
    return sched, irdrop._leaves(g, r_left, r_below).reshape(16, -1)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("scale,r_w", [(25e-6, 1.0), (1e-4, 10.0), (1.0, 1e5)])
def test_compiled_levels_equal_their_numpy_form(dtype, scale, r_w):
    """Every compiled level (joins across 1-8 wires) against the same joins in NumPy
    (stacked matmuls, LAPACK's pivoted inverse), fed the same blocks: equal to rounding.
    Physical tiles, even with r_w·G far beyond any real crossbar, never need a pivot other
    than the diagonal. Tolerance: elimination and LAPACK round differently, a few ulps per
    level over seven levels."""
    from xbar.runtime.irdrop_kernel import join_level

    sched, stored = _lowest_levels_input(64, 64, scale, r_w, dtype)
    assert [int(s._shapes[0, 0]) for s in sched.compiled] == [1, 2, 2, 4, 4, 8, 8]
    for step in sched.compiled:
        compiled, refused = join_level(stored, step._index, step._shapes, step.n_o * step.m)
        assert refused == 0
        numpy_form = step(np.ascontiguousarray(stored.T)).T
        scale_out = np.abs(numpy_form).max(axis=1, keepdims=True) + np.finfo(dtype).tiny
        assert np.max(np.abs(compiled - numpy_form) / scale_out) < (1e-12 if dtype == np.float64 else 1e-4)
        stored = compiled


def test_a_join_that_needs_another_pivot_is_done_pivoted():
    """Hybrid matrices no circuit has (random entries of order 1): the interface system
    I − a·b then often needs a row exchange, which the kernel does not make. It says so, and
    the level is computed in its pivoted NumPy form instead, exactly."""
    from xbar.runtime.irdrop_kernel import join_level

    sched, _ = _lowest_levels_input(64, 64, 25e-6, 1.0)
    before, step = sched.compiled[3:5]  # step joins across 4 wires
    entries = before.n_o * before.m  # of each block step joins
    stored = np.random.default_rng(3).standard_normal((entries, 512))
    _, refused = join_level(stored, step._index, step._shapes, step.n_o * step.m)
    assert refused > 0
    np.testing.assert_array_equal(step.block_last(stored), step(np.ascontiguousarray(stored.T)).T)
    # A stack whose every join is diagonally dominant is not refused, and agrees.
    calm = stored * 0.05
    out, refused = join_level(calm, step._index, step._shapes, step.n_o * step.m)
    assert refused == 0
    np.testing.assert_allclose(out, step(np.ascontiguousarray(calm.T)).T, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_blocks_per_compiled_pass_do_not_change_the_result(monkeypatch, dtype):
    """The kernel takes fewer blocks per pass where their scratch is large; each block's
    arithmetic is the same whichever pass holds it, so the chip is the same bit for bit."""
    from xbar.runtime import irdrop_kernel

    g = np.random.default_rng(9).uniform(0.0, 25e-6, (2, 128, 128))
    want = effective_conductance(g, 1.0, 10.0, 10.0, dtype=dtype)
    for budget in (1 << 40, 1 << 14):  # 128 blocks in every pass; 8 in most
        monkeypatch.setattr(irdrop_kernel, "_SCRATCH_BYTES", budget)
        np.testing.assert_array_equal(effective_conductance(g, 1.0, 10.0, 10.0, dtype=dtype), want)


def test_compiled_functions_work_where_nothing_can_cache_them(monkeypatch):
    """Numba refuses cache=True when no cache folder is writable (a read-only install and no
    writable home): the solver then compiles without a cache instead of failing."""
    import numba

    from xbar.runtime.compiled import compiled

    real = numba.njit

    def no_cache_anywhere(*args, **kw):
        if kw.get("cache"):
            raise RuntimeError("cannot cache function 'f': no locator available for file 'f.py'")
        return real(*args, **kw)

    monkeypatch.setattr(numba, "njit", no_cache_anywhere)

    def twice(x):
        return 2.0 * x

    assert compiled(twice)(np.float64(1.5)) == 3.0
