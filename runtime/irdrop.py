"""IR drop on the crossbar wires: the exact effective conductance matrix of a tile.

Circuit of one tile (R rows, C physical columns)
------------------------------------------------
    row i:     v_i ─r_drv─ (i,0) ─r_w─ (i,1) ─r_w─ … ─r_w─ (i,C−1)          right end open
    column j:  (0,j) ─r_w─ (1,j) ─r_w─ … ─r_w─ (R−1,j) ─r_sense─ 0 V          top end open
    device (i,j): conductance G_ij from row node (i,j) to column node (i,j)

The output of column j is the current I_j through its r_sense into the virtual ground.
The unknowns of the nodal equations are the 2·R·C node voltages (row node and column node
of every cell); the circuit is linear in the drive voltages, so I = G_effᵀ v with an R×C
matrix G_eff fixed per chip instance, which `effective_conductance` returns. Every
resistance may be zero (wire segments shorted); G_eff = G exactly when all three are 0.

Method: exact nested dissection in hybrid (mixed voltage/current) parameters
-----------------------------------------------------------------------------
Each cell owns its device, the row segment to its left (r_drv in column 0, else r_w) and
the column segment below it (r_sense in row R−1, else r_w). A rectangular block of cells is
then a multiport with four sides; per side one input and one output per wire crossing it:

    left    VL  voltage at the far end of the block's leftmost row segments   (input)
            IL  current entering there                                          (output)
    right   IR  current leaving the rightmost row nodes to the right            (input)
            VR  voltage of those nodes                                          (output)
    top     IT  current entering the topmost column nodes from above            (input)
            VT  voltage of those nodes                                          (output)
    bottom  VB  voltage at the far end of the block's bottom column segments    (input)
            IB  current leaving there                                           (output)

The block is fully described by its hybrid matrix H: outputs = H · inputs. Resistances only
ever multiply currents in this form, so r = 0 needs no special case and small r loses no
precision (the admittance form would carry 1/r_w ≈ 1 S next to device conductances of
≈ 1e-5 S and cancel digits away).

A single cell has a closed-form H (`_leaves`). Two neighbouring blocks A, B are
joined across the k wires of their common side: there the voltages x and currents z are
unknown, A gives x = a·z + P·e_A and B gives z = b·x + Q·e_B (e: the remaining inputs), hence
(I − a·b)·x = P·e_A + a·Q·e_B, one k×k linear solve, after which every remaining output is a
known linear function of e_A, e_B: the hybrid matrix of the union. By reciprocity and
passivity a and b are, up to sign, a symmetric positive semi-definite resistance matrix and
admittance matrix, so I − a·b = I + Z·Y has real eigenvalues ≥ 1: the solve never fails and
is well conditioned for realistic tiles. The tile is halved recursively (along its longer
side) down to single cells; the joins are done bottom-up, level by level, vectorised over
all blocks of a level (and over tiles). The lowest levels (joins across at most 8 wires,
thousands of blocks of a few ports per tile) run compiled (runtime/irdrop_kernel.py), 128
blocks at a time with the blocks innermost; the levels above store one block per row and
use stacked matmuls. At the tile boundary the open wire ends give IR = 0
and IT = 0 and the virtual ground gives VB = 0, and IL, VR, VT are not needed; the top
levels, where blocks are large, drop those ports before joining. The last join leaves
IB = H·VL, i.e. I = H·v and G_eff = Hᵀ.

Why this is exact: it is a direct solve — Gaussian elimination of the circuit equations in
a nested-dissection order — with no iteration and no tolerance, so G_eff agrees with a plain
nodal solve up to floating-point rounding (against an independent sparse nodal solve, r_w
up to 10 Ω, G up to 100 µS, up to 256×256: 1e-13 to 1e-11 relative; the tests demand 1e-9).

Why this method: per N×N tile it costs O(N³) flops (≈ 170 Mflop for 128×128: the largest
joins are k = N solves with O(N) right-hand sides), against O(N⁴) for a column-by-column
elimination (one dense N×N factorisation per column, ≈ 0.7 Gflop at 128) and, for a
relaxation method (alternating tridiagonal solves along rows and columns), N right-hand
sides × a number of sweeps that grows with r_w·G and is unbounded for strong IR drop.
Measured (benchmarks/bench_irdrop.py, one core of an AMD EPYC, numpy + OpenBLAS, float64,
quiet machine): ≈ 4 ms per 64×64 tile, ≈ 20 ms per 128×128, ≈ 105 ms per 256×256 before
the lowest levels were compiled, which took the medians of a slow spell from 47 to 37 ms
(float64) and from 31 to 18 ms (float32) per 128×128 tile. Tiles whose sides are not
powers of two are padded (rows above row 0, columns right of column C−1, G = 0): beyond
the open wire ends no current flows, so the padding changes nothing.

Precision: the solve runs in float64 by default, or in float32 (`dtype`; the hardware
spec's circuit.solve_dtype, which the pcm and rram presets set to float32), 1.5–2×
faster per tile (benchmarks/bench_irdrop.py): half the bytes through the gathers and the
compiled levels, twice the blocks per vector instruction, single-precision products; the
interface inverses cost the same.
Measured against float64 (2026-12-01, tiles of 64–512 cells a side, r_wire 0.01–10 Ω,
r_driver and r_sense 0–1 kΩ, conductances uniform in [0, 25 µS] or [0, 100 µS], or
differential pairs of Laplace-distributed weights with programming noise): every G_eff
entry moved by at most 8.7e-6 of the tile's largest conductance (4.4e-6 for the
weight-like tiles), every column's current by at most 1.1e-5 of itself. The error grows
slowly with the tile (at most 2.1e-6, 3.4e-6, 6.2e-6 and 8.7e-6 at 64, 128, 256 and 512
cells a side); the stated bound is 2e-5 of the largest conductance (tests/test_irdrop.py,
against the nodal solve). For scale: PCM programming noise is never below 0.26 µS (1 % of
its 25 µS window), and an 8-bit ADC's step is 1/256 of full scale; float32 stays two to
three orders of magnitude below both.

Threads: a stack of tiles is cut into chunks that run on one worker thread per core
(xbar.runtime.parallel); meanwhile BLAS is limited to one thread process-wide, also when
the chunks run inline: its own threading only slows these mid-sized products, and its split
of a product would change the rounding with the thread count.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from xbar.hardware import IR_SOLVE_DTYPES
from xbar.runtime.irdrop_kernel import join_level
from xbar.runtime.parallel import blas_one_thread, map_chunks

__all__ = ["effective_conductance", "load_compiled"]

# Port groups, in the fixed order used by every layout: inputs (VL, IR, IT, VB) and
# outputs (IL, VR, VT, IB); group q of the inputs and of the outputs sit on the same side.
_VL, _IR, _IT, _VB = range(4)
_IL, _VR, _VT, _IB = range(4)

# Joining A and B: (x output group of A, z input group of A, x input group of B,
# z output group of B). Horizontal: A left, B right. Vertical: A bottom, B top.
_INTERFACE = {True: (_VR, _IR, _VL, _IL), False: (_VT, _IT, _VB, _IB)}
# Which block contributes to each port group of the union, in boundary order (rows top to
# bottom, columns left to right); 0 = A, 1 = B.
_UNION = {True: ((0,), (1,), (0, 1), (0, 1)), False: ((1, 0), (1, 0), (1,), (0,))}

# Below this many blocks per tile the joins run block by block with tile-boundary ports
# pruned; above it they run vectorised over uniform blocks.
_PRUNE_BELOW = 16
# Cells per chunk of tiles (the unit of work of a thread): for small tiles, enough of them
# to amortise the Python overhead of the pruned levels.
_CHUNK_CELLS = 1 << 14
# Cells per group of the uniform levels: a group's working set (~150 bytes per cell) stays
# in a core's L2 cache; a whole 128×128 tile at once runs 2x slower.
_GROUP_CELLS = 1 << 13
# Levels whose joins cross at most this many wires run compiled (irdrop_kernel), the blocks
# innermost; from 16 wires on, stacked BLAS matmuls are faster than the compiled loops
# (measured on 128×128 tiles, benchmarks/RESULTS.md).
_COMPILED_MAX_K = 8

_Layout = tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]


class _Plan(NamedTuple):
    """Row/column positions of the blocks of one join (shared by all blocks of a level)."""

    xA: np.ndarray  # rows of A: interface voltages (or currents) it outputs
    zA: np.ndarray  # columns of A: interface quantities it takes as input
    xB: np.ndarray
    zB: np.ndarray
    eA: np.ndarray  # columns of A that stay inputs of the union
    eB: np.ndarray
    oA: np.ndarray  # rows of A that stay outputs of the union
    oB: np.ndarray


def _cat(parts) -> np.ndarray:
    parts = [np.asarray(p, dtype=np.intp) for p in parts]
    return np.concatenate(parts) if parts else np.zeros(0, np.intp)


def _plan(lay_a: _Layout, lay_b: _Layout, horizontal: bool) -> tuple[_Plan, _Layout]:
    """Positions of a join's blocks, and the layout of the union: inputs [eA, eB], outputs [oA, oB]."""
    xo, zi, xi, zo = _INTERFACE[horizontal]
    (in_a, out_a), (in_b, out_b) = lay_a, lay_b
    ga_in = [q for q in range(4) if q != zi]
    gb_in = [q for q in range(4) if q != xi]
    ga_out = [q for q in range(4) if q != xo]
    gb_out = [q for q in range(4) if q != zo]
    plan = _Plan(
        xA=out_a[xo], zA=in_a[zi], xB=in_b[xi], zB=out_b[zo],
        eA=_cat([in_a[q] for q in ga_in]), eB=_cat([in_b[q] for q in gb_in]),
        oA=_cat([out_a[q] for q in ga_out]), oB=_cat([out_b[q] for q in gb_out]),
    )

    def placed(groups_a, sizes_a, groups_b, sizes_b):
        pos, start = ({}, {}), 0
        for side, groups, sizes in ((0, groups_a, sizes_a), (1, groups_b, sizes_b)):
            for q in groups:
                n = len(sizes[q])
                pos[side][q] = np.arange(start, start + n)
                start += n
        return pos

    pin = placed(ga_in, in_a, gb_in, in_b)
    pout = placed(ga_out, out_a, gb_out, out_b)
    union = _UNION[horizontal]
    new_in = tuple(_cat([pin[s][q] for s in union[q]]) for q in range(4))
    new_out = tuple(_cat([pout[s][q] for s in union[q]]) for q in range(4))
    return plan, (new_in, new_out)


def _interface_solve(s: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve s·x = rhs for a stack of interface matrices s = I + Z·Y (eigenvalues real, >= 1)."""
    # inv then matmul: numpy's batched solve copies and transposes the many right-hand
    # sides per matrix and is 2-4x slower here; s is well conditioned, so no accuracy cost.
    return np.linalg.inv(s) @ rhs


def _join(parts: list[np.ndarray], out: np.ndarray) -> np.ndarray:
    """Join two blocks (module docstring): their sub-blocks `parts` = (a, P, L_A, D_A, b, Q,
    L_B, D_B) → the union's hybrid matrix, written into `out` (…, n_o, m).

    Every array is indexed (…, rows, columns), the leading axes running over blocks (stacked
    matmuls). The same arithmetic, compiled, is irdrop_kernel's for the lowest levels.
    """
    a, p, l_a, d_a, b, q, l_b, d_b = parts
    k, n_ea, n_oa = a.shape[-1], p.shape[-1], l_a.shape[-2]
    rhs = np.empty(out.shape[:-2] + (k, n_ea + q.shape[-1]), out.dtype)
    rhs[..., :n_ea] = p
    np.matmul(a, q, out=rhs[..., n_ea:])
    s = a @ b
    np.negative(s, out=s)
    s[..., np.arange(k), np.arange(k)] += 1.0
    x = _interface_solve(s, rhs)
    z = b @ x
    z[..., n_ea:] += q
    np.matmul(l_a, z, out=out[..., :n_oa, :])
    np.matmul(l_b, x, out=out[..., n_oa:, :])
    out[..., :n_oa, :n_ea] += d_a
    out[..., n_oa:, n_ea:] += d_b
    return out


def _spans(shapes: list[tuple[int, int]]) -> list[tuple[int, int, tuple[int, int]]]:
    """(start, end, shape) of sub-blocks of these shapes gathered one after the other."""
    ends = np.cumsum([0] + [r * c for r, c in shapes]).tolist()
    return [(lo, hi, shape) for lo, hi, shape in zip(ends, ends[1:], shapes)]


def _sub_blocks(plan: _Plan, n_in_a: int, n_in_b: int) -> tuple[np.ndarray, list, np.ndarray, list]:
    """Flat positions, in A's and in B's stored hybrid matrix (rows of n_in_a, n_in_b
    entries), of the sub-blocks a join reads, one after the other: A's (a, P, L_A, D_A) and
    B's (b, Q, L_B, D_B), with the spans (`_spans`) that cut them apart again."""
    def gather(parts, n_in):
        idx = [(rows[:, None] * n_in + cols[None, :]).ravel() for rows, cols in parts]
        return _cat(idx), _spans([(len(r), len(c)) for r, c in parts])

    ia, sa = gather([(plan.xA, plan.zA), (plan.xA, plan.eA), (plan.oA, plan.zA), (plan.oA, plan.eA)], n_in_a)
    ib, sb = gather([(plan.zB, plan.xB), (plan.zB, plan.eB), (plan.oB, plan.xB), (plan.oB, plan.eB)], n_in_b)
    return ia, sa, ib, sb


class _UniformLevel:
    """One level of joins over a stack of identical-layout blocks stored flat, in pairs.

    Every block is stored as its flattened hybrid matrix, and the two blocks of each join
    are adjacent; so all the sub-blocks a join needs come out of a single gather per level,
    and the result is written straight into the same storage format for the next level.
    """

    def __init__(self, plan: _Plan, n_out: int, n_in: int, a_first: bool):
        size = n_out * n_in
        off_a, off_b = (0, size) if a_first else (size, 0)
        ia, sa, ib, sb = _sub_blocks(plan, n_in, n_in)
        self._index = np.concatenate([ia + off_a, ib + off_b]).astype(np.int64)
        self._spans = sa + [(lo + ia.size, hi + ia.size, shape) for lo, hi, shape in sb]
        self.m, self.n_o = len(plan.eA) + len(plan.eB), len(plan.oA) + len(plan.oB)
        self._shapes = np.array([shape for _, _, shape in self._spans], np.int64)

    def block_last(self, stored: np.ndarray, rows_out: bool = False) -> np.ndarray:
        """The same joins over blocks stored block-last, (entries, blocks), compiled
        (runtime/irdrop_kernel.py); a level where the kernel would need another pivot than
        partial pivoting's runs in its pivoted NumPy form instead. The unions come out
        block-last, or with `rows_out` one block per row."""
        out, refused = join_level(stored, self._index, self._shapes, self.n_o * self.m, rows_out)
        if refused:
            out = self(np.ascontiguousarray(stored.T))
            out = out if rows_out else np.ascontiguousarray(out.T)
        return out

    def __call__(self, stored: np.ndarray) -> np.ndarray:
        n = stored.shape[0] // 2
        gathered = np.take(stored.reshape(n, -1), self._index, axis=1)
        dt = stored.dtype
        out = np.empty((n, self.n_o, self.m), dt)
        _join([gathered[:, lo:hi].reshape((n,) + shape) for lo, hi, shape in self._spans], out)
        return out.reshape(n, -1)


class _Join:
    """One join of two blocks with their own layouts (the pruned top levels), over tiles.

    Blocks are passed flattened, (T, n_out·n_in); every sub-block comes out of one
    gather per operand with precomputed flat indices (far faster than 2-D fancy indexing).
    """

    def __init__(self, plan: _Plan, n_in_a: int, n_in_b: int):
        self._ia, self._sa, self._ib, self._sb = _sub_blocks(plan, n_in_a, n_in_b)
        self.m, self.n_o = len(plan.eA) + len(plan.eB), len(plan.oA) + len(plan.oB)

    @staticmethod
    def _blocks(flat, index, spans):
        g = np.take(flat, index, axis=1)
        return [g[:, lo:hi].reshape((g.shape[0],) + shape) for lo, hi, shape in spans]

    def __call__(self, flat_a: np.ndarray, flat_b: np.ndarray) -> np.ndarray:
        t, dt = flat_a.shape[0], flat_a.dtype
        out = np.empty((t, self.n_o, self.m), dt)
        _join(self._blocks(flat_a, self._ia, self._sa) + self._blocks(flat_b, self._ib, self._sb), out)
        return out.reshape(t, -1)


def _leaves(g: np.ndarray, r_left: np.ndarray, r_below: np.ndarray) -> np.ndarray:
    """Hybrid matrices of single cells, block-last: (16, …) from g, r_left, r_below of one
    broadcast shape (…).

    With r_l the cell's row segment (to its left) and r_b its column segment (below it), the
    device current d = G·(V_row − V_col) obeys d = c·(VL − VB − r_l·IR − r_b·IT) with
    c = G / (1 + (r_l + r_b)·G), and IL = IR + d, VR = VL − r_l·IL, IB = IT + d,
    VT = VB + r_b·IB.
    """
    g, r_left, r_below = np.broadcast_arrays(g, r_left, r_below)
    c = g / (1.0 + (r_left + r_below) * g)
    cl, cb = c * r_left, c * r_below
    # Entry 4·(output group) + (input group); outputs (IL, VR, VT, IB), inputs (VL, IR, IT, VB).
    return np.stack([c, 1.0 - cl, -cb, -c,
                     1.0 - cl, r_left * (cl - 1.0), r_left * cb, cl,
                     cb, -r_below * cl, r_below * (1.0 - cb), 1.0 - cb,
                     c, -cl, 1.0 - cb, -c])


def _split_order(rows: int, cols: int) -> list[bool]:
    """Top-down halvings (True: split the columns) until single cells; longer side first."""
    splits = []
    while rows > 1 or cols > 1:
        splits.append(cols >= rows)
        if cols >= rows:
            cols //= 2
        else:
            rows //= 2
    return splits


def _tree_rank(rows: int, cols: int, splits: list[bool]) -> np.ndarray:
    """(rows, cols) → position of each cell among the leaves of the halving tree."""
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    key = np.zeros((rows, cols), np.int64)
    for split_cols in splits:
        if split_cols:
            cols //= 2
            bit = c >= cols
            c = c - bit * cols
        else:
            rows //= 2
            bit = r >= rows
            r = r - bit * rows
        key = key * 2 + bit
    return key


def _prune(lay: _Layout, top: bool, bottom: bool, left: bool, right: bool) -> _Layout:
    """Layout of a block on the tile boundary without the ports that are fixed or unread there."""
    keep_in = (True, not right, not top, not bottom)  # IR = 0, IT = 0, VB = 0 there
    keep_out = (not left, not right, not top, True)  # nobody reads IL, VR, VT there
    empty = np.zeros(0, np.intp)
    ins, outs = lay
    return (tuple(ins[q] if keep_in[q] else empty for q in range(4)),
            tuple(outs[q] if keep_out[q] else empty for q in range(4)))


class _Schedule:
    """Everything about a tile shape that does not depend on the conductances (cached)."""

    def __init__(self, rows: int, cols: int):
        self.rows, self.cols = rows, cols
        splits = _split_order(rows, cols)
        self.order = np.argsort(_tree_rank(rows, cols, splits).ravel())
        one = tuple(np.array([q]) for q in range(4))
        lay: _Layout = (one, one)
        levels = splits[::-1]
        self.compiled, self.uniform = [], []
        n_out = n_in = 4
        blocks, level = rows * cols, 0
        while level < len(levels) and blocks > _PRUNE_BELOW:
            horizontal = levels[level]
            plan, lay = _plan(lay, lay, horizontal)
            # Siblings in tree order are (left, right) and (top, bottom); A is left or bottom.
            step = _UniformLevel(plan, n_out, n_in, a_first=horizontal)
            if len(plan.xA) <= _COMPILED_MAX_K and not self.uniform:
                self.compiled.append(step)
            else:
                self.uniform.append(step)
            n_out, n_in = step.n_o, step.m
            blocks //= 2
            level += 1
        self.blocks = blocks
        # The uniform levels never mix the cells of different final uniform blocks, so they
        # run group by group, each group small enough to stay in the core's cache: whole
        # subtrees ("units") of one tile, or whole tiles.
        cells = rows * cols
        self.group = max(cells // blocks, _GROUP_CELLS)
        self.unit = min(self.group, cells)
        r_idx, c_idx = np.divmod(self.order, cols)
        self.is_left = c_idx == 0  # cells whose row segment is the driver resistance
        self.is_bottom = r_idx == rows - 1  # cells whose column segment is the sense resistance

        rest = levels[level:]
        grid_r = 1 << sum(1 for s in rest if not s)
        grid_c = 1 << sum(1 for s in rest if s)
        where = np.argsort(_tree_rank(grid_r, grid_c, rest[::-1]).ravel())
        lays = []
        for i in range(blocks):
            r, c = divmod(int(where[i]), grid_c)
            lays.append(_prune(lay, r == 0, r == grid_r - 1, c == 0, c == grid_c - 1))
        widths = [n_in] * blocks  # row stride of each block's flattened storage
        self.joins = []  # per level: (join, A index, B index)
        for horizontal in rest:
            level_joins = []
            for i in range(0, len(lays), 2):
                ia, ib = (i, i + 1) if horizontal else (i + 1, i)
                plan, lay_u = _plan(lays[ia], lays[ib], horizontal)
                join = _Join(plan, widths[ia], widths[ib])
                level_joins.append((join, ia, ib))
                lays[i // 2], widths[i // 2] = lay_u, join.m
            del lays[len(level_joins):], widths[len(level_joins):]
            self.joins.append(level_joins)
        (vl, _, _, _), (_, _, _, ib) = lays[0]
        self.final = (ib[:, None] * widths[0] + vl[None, :]).ravel()
        self.final_shape = (len(ib), len(vl))

    def solve(self, g: np.ndarray, r_wire: float, r_driver: float, r_sense: float) -> np.ndarray:
        """(T, rows, cols) → (T, rows, cols) G_eff, computed in g's dtype."""
        t, cells = g.shape[0], self.rows * self.cols
        r_left = np.where(self.is_left, r_driver, r_wire).astype(g.dtype)
        r_below = np.where(self.is_bottom, r_sense, r_wire).astype(g.dtype)
        g = g.reshape(t, -1)[:, self.order].reshape(-1, self.unit)
        per_group = self.group // self.unit
        parts = []
        for u in range(0, g.shape[0], per_group):
            o = u * self.unit % cells
            stored = _leaves(g[u:u + per_group], r_left[o:o + self.unit], r_below[o:o + self.unit])
            stored = stored.reshape(stored.shape[0], -1)  # block-last, blocks in tree order
            for i, step in enumerate(self.compiled):  # the last one hands on one block per row
                stored = step.block_last(stored, rows_out=i == len(self.compiled) - 1)
            if not self.compiled:
                stored = np.ascontiguousarray(stored.T)
            for step in self.uniform:
                stored = step(stored)
            parts.append(stored)
        stored = np.concatenate(parts) if len(parts) > 1 else parts[0]
        stored = stored.reshape(t, self.blocks, -1)
        doms = [stored[:, i] for i in range(self.blocks)]
        for level_joins in self.joins:
            doms = [join(doms[ia], doms[ib]) for join, ia, ib in level_joins]
        h = np.take(doms[0], self.final, axis=1).reshape((t,) + self.final_shape)
        return np.swapaxes(h, -1, -2)


@functools.lru_cache(maxsize=8)
def _schedule(rows: int, cols: int) -> _Schedule:
    return _Schedule(rows, cols)


def effective_conductance(g: np.ndarray, r_wire: float, r_driver: float = 0.0,
                          r_sense: float = 0.0, dtype: str = "float64") -> np.ndarray:
    """Exact G_eff of crossbar tiles with resistive wires (see the module docstring).

    g: (..., R, C) device conductances in siemens, >= 0; leading dimensions are a stack of
    tiles. r_wire: resistance of every row-wire and column-wire segment between neighbouring
    cells; r_driver: between each input's ideal source and its row wire; r_sense: between
    each column's bottom and the virtual ground (all in ohms, >= 0, zero allowed).
    dtype: arithmetic of the solve, "float64" or "float32" (1.5–2× faster per tile; error
    bound in the module docstring, "Precision").

    Returns float64 G_eff of g's shape with I[..., j] = Σ_i G_eff[..., i, j] · v[..., i].
    """
    if dtype not in IR_SOLVE_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(IR_SOLVE_DTYPES)}, got {dtype!r}")
    g = np.asarray(g, dtype=np.float64)
    if g.ndim < 2 or g.shape[-1] == 0 or g.shape[-2] == 0:
        raise ValueError(f"g must have shape (..., R, C) with R, C >= 1, got {g.shape}")
    res = {"r_wire": r_wire, "r_driver": r_driver, "r_sense": r_sense}
    for name, value in res.items():
        if not (np.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    if not np.all(np.isfinite(g)) or np.any(g < 0):
        raise ValueError("conductances must be finite and >= 0")
    rows, cols = g.shape[-2:]
    tiles = g.reshape(-1, rows, cols)
    # Padding above row 0 and right of column C−1 lies beyond open wire ends: no current.
    rp, cp = 1 << (rows - 1).bit_length(), 1 << (cols - 1).bit_length()
    out = np.empty(tiles.shape)
    sched = _schedule(rp, cp)
    resist = (float(r_wire), float(r_driver), float(r_sense))
    chunk = max(1, _CHUNK_CELLS // (rp * cp))
    starts = range(0, tiles.shape[0], chunk)

    def run(s: int) -> None:
        padded = np.zeros((min(chunk, tiles.shape[0] - s), rp, cp), dtype)
        padded[:, rp - rows:, :cols] = tiles[s:s + chunk]
        out[s:s + chunk] = sched.solve(padded, *resist)[:, rp - rows:, :cols]

    # BLAS on one thread even when the chunks run inline (one chunk or one worker): a chip
    # must not depend on the thread count, and OpenBLAS's own split of the largest joins
    # rounds differently. On worker threads its threading would only slow these products.
    with blas_one_thread():
        map_chunks(lambda j: run(starts[j]), len(starts))
    return out.reshape(g.shape)


def load_compiled(rows: int, cols: int, dtype: str) -> None:
    """Solve one blank rows×cols tile in `dtype`, discarding it: loads the compiled levels'
    machine code for that solve (and builds its schedule) ahead of the first real tile.

    Runs on a thread of its own beside the workers (chip.load_circuit_code), so it does not
    enter blas_one_thread: that limit is process-wide, and a thread leaving it while
    map_chunks runs would restore BLAS's threads under the chip's products. Its own
    products' rounding does not matter, nothing of it is kept."""
    rp, cp = 1 << (rows - 1).bit_length(), 1 << (cols - 1).bit_length()
    _schedule(rp, cp).solve(np.full((1, rp, cp), 1e-5, dtype), 1.0, 0.0, 0.0)
