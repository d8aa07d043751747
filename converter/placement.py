"""Column rearrangement: which tile position holds which weight position (our design).

`place` returns a permutation `order`: tile position q holds the encoder's position
order[q]. The caller lays out v[:, order] and stores output[order], gain[order]; the
column map then undoes the placement digitally, so ideal outputs are unchanged.

Why position matters (runtime/irdrop.py circuit)
------------------------------------------------
Row wire i is driven at its left end; the segment between physical columns m−1 and m
carries the current of every cell of the row at columns ≥ m, the tail current
T_im = Σ_{l≥m} G_il·x_i, so the cell in column j sees its row voltage lowered by
r_wire·Σ_{m=1..j} T_im. Sorting the columns by the current they draw, heaviest nearest the
driver, makes every tail current, hence the drop at every column, as small as any order
can; and by the rearrangement inequality the heaviest columns then also sit where the drop
is smallest. So that order minimises the row's first-order error Σ_j (G_ij·drop_ij)²;
over many rows, columns are ranked by their total current. The other resistances act the
same wherever a column sits (to first order): r_driver carries a row's total current,
common to all its columns; r_sense and the column wire carry the column's own current. So
only r_wire makes position matter, and the rule holds for any r_wire > 0 without its value.

The load of a position is the current it draws beyond what every position draws anyway,
in normalised units (all inputs alike):
- differential: Σ_i |v_ip|. A pair holds G_min + ΔG·|v| on one side and G_min on the
  other; the 2·G_min every pair draws is common to all and does not order them.
- offset: Σ_i v_ip, signed. Every column sits at G_mid + ΔG/2·v and every row also feeds
  the reference column (G_mid, last in each tile, farthest from the driver), so G_mid is a
  common baseline; what tells columns apart is the signed excess. Ordering by Σ|v| would be
  wrong here. The dominant offset error is the reference column's larger drop (it is
  farthest from the driver): an additive bias on every column, largest near the driver,
  that no gain removes. A least-squares gain trades a small column's signal against that
  bias (it shrinks the column), so the residual is lower where small columns carry it,
  and Σ|v| puts the largest ones there: measured, +11 % after the gain at 128×128. The
  bias is made of the tail currents up to the reference, which the signed order makes
  smallest; it lowers both errors (and the raw one more than Σ|v| does on weights whose
  columns have a signed mean, as real conv layers do).

Policies
--------
- 'none': output order (the identity).
- 'ir-drop': positions ranked by load, heaviest first (ties: lower index first), dealt
  slot by slot over the column blocks: slot 0 (nearest the driver) of every block, then
  slot 1, … . The blocks are visited in snake order (forward on even slots, backward on
  odd ones), so every tile gets its share of heavy and light positions and the totals of
  full blocks differ by at most the largest minus the smallest load.
- 'balance': the same snake dealing decides only which column block a position goes to
  (load spread evenly over the tiles); inside a block positions keep output order, as in
  'none'. With a single column block it is the identity.

Measured (tests/test_placement.py; relative Frobenius error of the effective normalised
weights, raw / after a least-squares gain per output; 64×64 and 128×128 tiles, r_wire 1 and
2.5 Ω): 'ir-drop' lowers the raw error by 18–20 % on conv-like random weights and 2–5 % on
resnet_bn's layer3.conv1 (differential), 5–6 % and 1.6–5 % (offset); after the gain by
0.5–1.6 % and −0.05–1.7 % (differential), 2–5 % and 4–10 % (offset). 'balance' lowers the
differential raw error by 3–7 % when there are several column blocks, and changes the
offset errors by ±1 %: there the G_mid baseline, the same in every tile, is most of a
tile's current.

What no column order changes: the column wires' drop (a column's own current on its way to
the sense end, larger for rows far from it). After a per-output gain it is 77–99 % of the
squared differential error (first-order split; more in taller tiles), which is why
'ir-drop' buys little there. Its lever is a row permutation (heaviest rows nearest the
sense end, inputs permuted alike): measured −42 % after gain on layer3.conv1 at 64×64,
−7 % at 128×128; it needs the runtime to permute inputs and is not done here.

Cost: one pass over v plus a sort of P loads, O(K·P + P log P) per layer (~0.3 s for a
25M-weight model).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from xbar.config import MappingConfig
from xbar.errors import ConfigError

if TYPE_CHECKING:
    from xbar.hardware import CircuitSpec


def place(v: np.ndarray, valid: np.ndarray, cfg: MappingConfig, circuit: CircuitSpec | None) -> np.ndarray:
    """(P,) int64 permutation: tile position q holds the encoder's position order[q]."""
    p = v.shape[1]
    if cfg.rearrange == "none":
        return np.arange(p, dtype=np.int64)
    check_circuit(cfg.rearrange, circuit)
    cw = cfg.weight_cols_per_tile
    ranked = np.argsort(-load(v, valid, cfg.encoding), kind="stable")  # heaviest first, ties by index
    slots = _dealing_sequence(p, cw)
    if cfg.rearrange == "ir-drop":
        order = np.empty(p, dtype=np.int64)
        order[slots] = ranked
        return order
    block = np.empty(p, dtype=np.int64)
    block[ranked] = slots // cw
    return np.lexsort((np.arange(p), block)).astype(np.int64)  # by block, output order within


def place_rows(v: np.ndarray, valid: np.ndarray, cfg: MappingConfig, circuit: CircuitSpec | None) -> np.ndarray | None:
    """(K,) int64 permutation within each row block: physical row q holds weight row order[q].

    Rows are ranked by the current they feed into the columns, Σ_p |v_ip| (differential),
    lightest first, so that within every tile the heaviest rows sit nearest the sense
    amplifiers at the bottom of the columns (the last rows the block uses): the column
    wires then carry the big currents over the fewest segments. None for 'none'."""
    if cfg.rearrange_rows == "none":
        return None
    check_circuit(cfg.rearrange_rows, circuit, "--rearrange-rows")
    k = v.shape[0]
    row_load = np.abs(np.where(valid, v, 0.0)).sum(axis=1)
    block = np.arange(k) // cfg.rows
    return np.lexsort((np.arange(k), row_load, block)).astype(np.int64)  # by block, light to heavy


def load(v: np.ndarray, valid: np.ndarray, encoding: str) -> np.ndarray:
    """(P,) current each position draws beyond the common baseline, in units of ΔG·x."""
    w = np.where(valid, v, 0.0).astype(np.float64)
    return np.abs(w).sum(axis=0) if encoding == "differential" else w.sum(axis=0)


def _dealing_sequence(p: int, cw: int) -> np.ndarray:
    """Tile positions in the order they are filled: slot by slot, blocks in snake order."""
    q = np.arange(p)
    slot, block = q % cw, q // cw
    n_blocks = -(-p // cw)
    visit = np.where(slot % 2 == 0, block, n_blocks - 1 - block)
    return np.lexsort((visit, slot))


def check_circuit(policy: str, circuit: CircuitSpec | None, option: str = "--rearrange-columns") -> None:
    """Refuse a placement policy the target's circuit cannot inform (before any conversion work)."""
    if circuit is None:
        missing = "this conversion has no hardware target (no --hardware), so no circuit"
    elif not circuit.ir_drop:
        missing = "the target hardware has IR drop switched off (circuit.ir_drop = false)"
    elif circuit.r_wire <= 0:
        if circuit.r_driver <= 0 and circuit.r_sense <= 0:
            missing = "the target hardware's wire, driver and sense resistances are all 0 Ω"
        else:
            missing = ("the target hardware's circuit.r_wire is 0 Ω, and only the wire between cells makes a "
                       "column's position matter (r_driver and r_sense act alike on every column)")
    else:
        return
    raise ConfigError(
        f"{option} {policy} places {option.rsplit('-', 1)[-1]} to reduce IR drop on the crossbar wires, so it needs a "
        f"hardware target with IR drop and a wire resistance (e.g. --hardware pcm, which has r_wire = 1 Ω), "
        f"but {missing}. Give such a target (a preset, or a TOML file with [circuit] ir_drop = true and "
        f"r_wire > 0), or use {option} none."
    )
