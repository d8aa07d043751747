"""The lowest levels of the IR-drop solve as one compiled loop: joins across at most 8 wires.

These levels hold thousands of tiny blocks per tile (single cells joined into 2×1, 2×2, …
8×8 blocks), so in NumPy every step is either a pass over all blocks' memory per term or a
stacked matmul per block, and their memory traffic was about half of a 128×128 tile's solve.
Compiled, a level works on up to 128 blocks at a time with every intermediate in cache and
the blocks innermost (each step one vector instruction over 4–8 blocks): 1.3–1.7× per tile
for the whole solve (benchmarks/RESULTS.md, "the lowest IR-drop levels compiled"). Numba
is the compiler (runtime/compiled.py).

The arithmetic is the join of runtime/irdrop.py (`_join`, read with its docstring), with
the k×k interface system solved by Gauss–Jordan elimination: the same G_eff up to rounding
(1e-13 relative in float64). Pivoting: the kernel takes the diagonal as pivot only where
partial pivoting would take it too (no entry below it in its column is larger in
magnitude). For real tiles, where I + Z·Y is close to the identity, that is always so; no
physical tile tried needed another pivot, even at r_w = 100 kΩ with G up to 1 S. Where it
is not so, the kernel reports it and the caller redoes the level with LAPACK's pivoted
inverse, so no block is solved with a pivot partial pivoting would have refused.

Results do not depend on how many blocks a pass holds: each block's arithmetic runs on its
own lane in the same order, and nothing is contracted into fused multiply-adds (fastmath
off), so a chip stays the same bit for bit on any number of threads.
"""

from __future__ import annotations

import numpy as np

from xbar.runtime.compiled import compiled

# Blocks per pass: at most 128 (vectors of 4-8 blocks, loop overhead amortised), and fewer
# where a pass's scratch (gathered sub-blocks, right-hand sides, interface matrix) would
# exceed 1 MiB: the second 8-wire level ran 1.4x faster at 64 blocks than at 128 in
# float32 (benchmarks/RESULTS.md, "the lowest IR-drop levels compiled").
_MAX_LANES = 128
_SCRATCH_BYTES = 1 << 20


def join_level(stored: np.ndarray, index: np.ndarray, shapes: np.ndarray, n_out: int,
               rows_out: bool = False) -> tuple[np.ndarray, int]:
    """One level of joins over blocks stored block-last, two blocks a join side by side.

    stored: (entries, 2·n) hybrid matrices, block j in column j; the two blocks of join p
    are columns 2p and 2p + 1. index: positions, in the concatenated entries of a join's
    first and second block (second block: offset by `entries`), of the sub-blocks it reads,
    one after the other (a, P, L_A, D_A, b, Q, L_B, D_B of `_join`); shapes: (8, 2) their
    shapes. Returns the (n_out, n) hybrid matrices of the unions, block-last (or with
    `rows_out` one block per row, (n, n_out), as the levels above store them: written so
    directly, through a transposed view, it saves a transposing copy), and how many pivots
    were refused (0: every join is valid; otherwise some are not).
    """
    n = stored.shape[1] // 2
    k, m = int(shapes[0, 0]), int(shapes[1, 1] + shapes[5, 1])
    per_block = (index.size + 2 * k * m + k * k) * stored.itemsize
    lanes = _MAX_LANES
    while lanes > 8 and lanes * per_block > _SCRATCH_BYTES:
        lanes //= 2
    if rows_out:
        out = np.empty((n, n_out), stored.dtype)
        refused = _join_level(stored, index, shapes, out.T, lanes)
    else:
        out = np.empty((n_out, n), stored.dtype)
        refused = _join_level(stored, index, shapes, out, lanes)
    return out, int(refused)


@compiled
def _join_level(st, index, sh, out, lanes):
    n = st.shape[1] // 2
    size = st.shape[0]
    k, n_ea, n_oa, n_eb, n_ob = sh[0, 0], sh[1, 1], sh[2, 0], sh[5, 1], sh[6, 0]
    m = n_ea + n_eb
    # Offsets of the sub-blocks in the gathered entries (a, P, L_A, D_A, b, Q, L_B, D_B).
    o_p = k * k
    o_la = o_p + k * n_ea
    o_da = o_la + n_oa * k
    o_b = o_da + n_oa * n_ea
    o_q = o_b + k * k
    o_lb = o_q + k * n_eb
    o_db = o_lb + n_ob * k
    dt = st.dtype
    n_idx = index.shape[0]
    g = np.empty((n_idx, lanes), dt)
    x = np.empty((k * m, lanes), dt)
    s = np.empty((k * k, lanes), dt)
    z = np.empty((k * m, lanes), dt)
    acc = np.empty(lanes, dt)
    f = np.empty(lanes, dt)
    one = dt.type(1.0)
    refused = 0
    for c0 in range(0, n, lanes):
        w = min(lanes, n - c0)
        for t in range(n_idx):
            j = index[t]
            second = 1 if j >= size else 0
            e = j - second * size
            for b in range(w):
                g[t, b] = st[e, 2 * (c0 + b) + second]
        # x = [P, a·Q], s = I − a·b
        for i in range(k):
            for c in range(n_ea):
                for b in range(w):
                    x[i * m + c, b] = g[o_p + i * n_ea + c, b]
            for c in range(n_eb):
                for b in range(w):
                    acc[b] = 0.0
                for l in range(k):
                    for b in range(w):
                        acc[b] += g[i * k + l, b] * g[o_q + l * n_eb + c, b]
                for b in range(w):
                    x[i * m + n_ea + c, b] = acc[b]
            for c in range(k):
                for b in range(w):
                    acc[b] = 0.0
                for l in range(k):
                    for b in range(w):
                        acc[b] += g[i * k + l, b] * g[o_b + l * k + c, b]
                d = one if i == c else dt.type(0.0)
                for b in range(w):
                    s[i * k + c, b] = d - acc[b]
        # x = s⁻¹·x by Gauss–Jordan, the diagonal as pivot where partial pivoting agrees.
        for c in range(k):
            for b in range(w):
                f[b] = abs(s[c * k + c, b])
            for r in range(c + 1, k):
                for b in range(w):
                    if abs(s[r * k + c, b]) > f[b]:
                        f[b] = -one
            for b in range(w):
                if not (f[b] > 0.0):  # a larger entry below, or a zero or non-finite pivot
                    refused += 1
                f[b] = one / s[c * k + c, b]
            for cc in range(c, k):
                for b in range(w):
                    s[c * k + cc, b] *= f[b]
            for cc in range(m):
                for b in range(w):
                    x[c * m + cc, b] *= f[b]
            for r in range(k):
                if r == c:
                    continue
                for b in range(w):
                    f[b] = s[r * k + c, b]
                for cc in range(c, k):
                    for b in range(w):
                        s[r * k + cc, b] -= f[b] * s[c * k + cc, b]
                for cc in range(m):
                    for b in range(w):
                        x[r * m + cc, b] -= f[b] * x[c * m + cc, b]
        # z = b·x + [0, Q]
        for i in range(k):
            for c in range(m):
                for b in range(w):
                    acc[b] = 0.0
                for l in range(k):
                    for b in range(w):
                        acc[b] += g[o_b + i * k + l, b] * x[l * m + c, b]
                for b in range(w):
                    z[i * m + c, b] = acc[b]
            for c in range(n_eb):
                for b in range(w):
                    z[i * m + n_ea + c, b] += g[o_q + i * n_eb + c, b]
        # union: [L_A·z + [D_A, 0]; L_B·x + [0, D_B]]
        for i in range(n_oa):
            for c in range(m):
                for b in range(w):
                    acc[b] = g[o_da + i * n_ea + c, b] if c < n_ea else dt.type(0.0)
                for l in range(k):
                    for b in range(w):
                        acc[b] += g[o_la + i * k + l, b] * z[l * m + c, b]
                for b in range(w):
                    out[i * m + c, c0 + b] = acc[b]
        for i in range(n_ob):
            for c in range(m):
                for b in range(w):
                    acc[b] = g[o_db + i * n_eb + c - n_ea, b] if c >= n_ea else dt.type(0.0)
                for l in range(k):
                    for b in range(w):
                        acc[b] += g[o_lb + i * k + l, b] * x[l * m + c, b]
                for b in range(w):
                    out[(n_oa + i) * m + c, c0 + b] = acc[b]
    return refused
