"""Column currents of tiles with resistive wires for ONE drive vector per tile, iteratively.

The drift-compensation probe (xbar.runtime.chip) needs, per tile, the column currents of
the array as programmed for a single fixed input: I = G_effᵀ·v. The exact G_eff
(xbar.runtime.irdrop) costs a full solve with R right-hand sides, as much as the chip's own
G_eff at time t; for one vector, the same nodal equations (same circuit, see irdrop's
docstring) are solved here by alternating line relaxation: all row wires are solved exactly
(tridiagonal, given the column-node voltages), then all column wires (given the row-node
voltages), until a sweep changes no node voltage by more than `tol` times the largest drive.

Error bound: the iteration is block Gauss–Seidel on a symmetric positive definite system,
which converges; its error contracts by a factor q < 1 per sweep. From two successive
changes Δ_k, Δ_{k+1} the factor is estimated as q = Δ_{k+1}/Δ_k and the remaining error of
any node voltage is at most Δ·q/(1 − q); iteration stops when that bound is below `tol`
(relative to max |v|), i.e. the currents are exact to ~tol·(ΣG) — 1e-12 by default, far
below float32 resolution of the compensation factor they feed. If the contraction is
poor (q ≥ 0.9, strong IR drop) or `max_sweeps` is reached, the caller falls back to the
exact solve (`probe_currents` returns None), so the result is never less accurate than the
bound. Only r_wire > 0 is handled (r_wire = 0 also falls back); r_driver = 0 and
r_sense = 0 are Dirichlet ends.
"""

from __future__ import annotations

import numpy as np

from xbar.runtime.compiled import compiled


def _wire_line(g_line: np.ndarray, gw: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tridiagonal system of lines of nodes along axis 0 (cells g_line, wire conductance gw
    between neighbours): diagonal, sub-diagonal and super-diagonal, ends open."""
    n = g_line.shape[0]
    diag = g_line.copy()
    diag[1:] += gw
    diag[:-1] += gw
    lower = np.full(n, -gw)
    lower[0] = 0.0
    upper = np.full(n, -gw)
    upper[-1] = 0.0
    return diag, lower, upper


# The two Thomas sweeps run compiled (runtime/compiled.py): a line of 128 nodes is 128
# dependent steps, each over every line of every tile at once, which as NumPy calls costs
# more in call overhead than in arithmetic. The operations are NumPy's, in NumPy's order.
@compiled
def _thomas_factor(lower, diag, upper):
    """Tridiagonal LU along axis 0 of diag (n, a, b) with sub- and super-diagonals lower
    and upper (n,): (inverse pivots, c') for `_thomas_solve`."""
    n, p, q = diag.shape
    inv = np.empty_like(diag)
    cp = np.empty_like(diag)
    for i in range(p):
        for k in range(q):
            inv[0, i, k] = 1.0 / diag[0, i, k]
            cp[0, i, k] = upper[0] * inv[0, i, k]
    for j in range(1, n):
        for i in range(p):
            for k in range(q):
                inv[j, i, k] = 1.0 / (diag[j, i, k] - lower[j] * cp[j - 1, i, k])
                cp[j, i, k] = upper[j] * inv[j, i, k]
    return inv, cp


@compiled
def _thomas_solve(lower, inv, cp, rhs):
    """x with T·x = rhs along axis 0, T factored by `_thomas_factor`."""
    n, p, q = rhs.shape
    d = np.empty_like(rhs)
    for i in range(p):
        for k in range(q):
            d[0, i, k] = rhs[0, i, k] * inv[0, i, k]
    for j in range(1, n):
        for i in range(p):
            for k in range(q):
                d[j, i, k] = (rhs[j, i, k] - lower[j] * d[j - 1, i, k]) * inv[j, i, k]
    for j in range(n - 2, -1, -1):
        for i in range(p):
            for k in range(q):
                d[j, i, k] -= cp[j, i, k] * d[j + 1, i, k]
    return d


def probe_currents(g: np.ndarray, v: np.ndarray, r_wire: float, r_driver: float, r_sense: float,
                   tol: float = 1e-12, max_sweeps: int = 200) -> np.ndarray | None:
    """(T, R, C) conductances (S), (T, R) drive voltages → (T, C) column currents (A), or
    None when the bound cannot be met (the caller then uses the exact G_eff)."""
    if not (r_wire > 0 and np.isfinite(r_wire)):
        return None
    g = np.asarray(g, dtype=np.float64)
    t, r, c = g.shape
    v = np.asarray(v, dtype=np.float64)
    gw = 1.0 / r_wire
    vmax = float(np.max(np.abs(v))) if v.size else 0.0
    if vmax == 0:
        return np.zeros((t, c))
    # Layouts with the tile index innermost, so that switching between row lines (C, R, T)
    # and column lines (R, C, T) moves contiguous runs of T values.
    gr = g.transpose(2, 1, 0).copy()  # (C, R, T): row lines, axis 0 along the row (own memory: edited below)
    gc = gr.transpose(1, 0, 2).copy()  # (R, C, T): column lines, axis 0 down the column
    # Row line i, node j: (G + wires [+ 1/r_driver at j = 0])·x_j − gw·x_{j±1} = G·y_j [+ v/r_driver].
    diag_r, lower_r, upper_r = _wire_line(gr, gw)
    vt = np.ascontiguousarray(v.T)  # (R, T)
    if r_driver > 0:
        diag_r[0] += 1.0 / r_driver
        drive = vt / r_driver  # current source into node 0
    else:  # node 0 held at v: the equation x_0 = v
        diag_r[0] = 1.0
        upper_r[0] = 0.0
        drive = vt
    inv_r, cp_r = _thomas_factor(lower_r, diag_r, upper_r)
    # Column line j, node i (0 = top, open): (G + wires [+ 1/r_sense at the bottom])·y_i − gw·y_{i±1} = G·x_i.
    diag_c, lower_c, upper_c = _wire_line(gc, gw)
    if r_sense > 0:
        diag_c[-1] += 1.0 / r_sense
    else:  # bottom node at 0 V
        diag_c[-1] = 1.0
        lower_c[-1] = 0.0
    inv_c, cp_c = _thomas_factor(lower_c, diag_c, upper_c)
    if r_driver == 0:
        gr[0] = 0.0  # the Dirichlet equation takes no device current
    g_bottom = gc[-1].copy()  # (C, T) devices of the last row, for the current at r_sense = 0
    if r_sense == 0:
        gc[-1] = 0.0

    x = np.broadcast_to(vt[None], (c, r, t)).copy()  # row-node voltages (C, R, T); start: no drop
    y = np.zeros((r, c, t))  # column-node voltages (R, C, T)
    prev = None
    for _ in range(max_sweeps):
        rhs = gr * y.transpose(1, 0, 2)
        rhs[0] += drive
        x_new = _thomas_solve(lower_r, inv_r, cp_r, rhs)
        y_new = _thomas_solve(lower_c, inv_c, cp_c, gc * x_new.transpose(1, 0, 2))
        delta = max(float(np.max(np.abs(x_new - x))), float(np.max(np.abs(y_new - y)))) / vmax
        x, y = x_new, y_new
        if prev is not None and prev > 0:
            q = delta / prev
            if q >= 0.9:
                return None
            if delta * q / (1 - q) <= tol:
                break
        elif delta == 0:
            break
        prev = delta
    else:
        return None
    # Currents into the virtual ground, (T, C).
    if r_sense > 0:
        return (y[-1] / r_sense).T
    out = g_bottom * x[:, -1, :]  # (C, T): device (R−1, j) straight into the grounded node
    if r > 1:
        out = out + gw * y[-2]
    return out.T
