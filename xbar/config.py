"""Conversion-time configuration: how weights are mapped onto crossbar tiles."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from xbar.errors import ConfigError

ENCODINGS = ("differential", "offset")
REARRANGEMENTS = ("none", "ir-drop", "balance")
ROW_REARRANGEMENTS = ("none", "ir-drop")
#: Largest exponent count and step: gains 2^(-k·e) down to 2^-24, float32's mantissa.
MAX_AFP_EXPONENTS = 8
MAX_GAIN_EXPONENT = 24
#: Signed weight quantisation (--weight-bits) and the clip percentile (--weight-clip):
#: below 2 bits no signed level is left; below the median most weights would clip.
WEIGHT_BITS = (2, 16)
WEIGHT_CLIP_PERCENTILE = (50.0, 100.0)

# Conductance window of the mapping target. Default: the PCM device of Nandakumar et al.
# 2019 / Joshi et al. 2020 as parameterised in IBM aihwkit (PCMLikeNoiseModel, g_max = 25 uS),
# with the lowest programmable state taken as 0 S (fully RESET).
DEFAULT_G_MAX_S = 25e-6  # siemens; aihwkit PCMLikeNoiseModel.g_max
DEFAULT_G_MIN_S = 0.0  # siemens


@dataclass(frozen=True)
class MappingConfig:
    """How `xbar convert` lays a layer's weights out on crossbars.

    rows, cols: physical size of one crossbar tile (word lines x bit lines).
    encoding: 'differential' (two columns per weight, G+ - G-) or 'offset'
        (one column per weight around G_mid, one reference column per tile).
    weight_bits: signed weight quantisation (None = analog, unquantised).
    g_min, g_max: programmable conductance window in siemens.
    weight_clip_percentile: per-column scale from this percentile of |W| instead of
        the maximum (weights beyond it are clipped); None = use the maximum.
    afp_exponents, afp_step: analog floating point with E exponents e = 0..E−1 and gains
        2^(−k·e): each weight goes to one exponent's position of its output (E = 1: fixed
        point). With weight_bits, mantissas are quantised per position.
    bit_slices, bits_per_cell: the magnitude quantised to S·b bits and split into S
        digits of b bits, one position each, weighted by 2^(b·s) (S = 1: no slicing).
    replicas: every weight programmed on R positions whose readings are averaged (gain
        1/R); the equal-cell baseline for analog floating point (R = 1: none).
    rearrange: where positions sit on the tiles: 'none' (output order), 'ir-drop' (the
        positions drawing most current nearest the drivers), 'balance' (current spread
        evenly over column blocks).
    rearrange_rows: 'ir-drop' orders the rows of every row block so that those drawing the
        most current sit nearest the sense amplifiers (differential encoding only); the
        runtime undoes it when it builds a chip, so inference pays nothing.
    """

    rows: int = 128
    cols: int = 128
    encoding: str = "differential"
    weight_bits: int | None = None
    g_min: float = DEFAULT_G_MIN_S
    g_max: float = DEFAULT_G_MAX_S
    weight_clip_percentile: float | None = None
    afp_exponents: int = 1
    afp_step: int = 2
    bit_slices: int = 1
    bits_per_cell: int | None = None
    replicas: int = 1
    rearrange: str = "none"
    rearrange_rows: str = "none"

    def __post_init__(self) -> None:
        if not (isinstance(self.rows, int) and isinstance(self.cols, int)) or self.rows < 1 or self.cols < 1:
            raise ConfigError(f"crossbar size must be positive integers, got {self.rows}x{self.cols}")
        if self.encoding not in ENCODINGS:
            raise ConfigError(f"encoding must be one of {', '.join(ENCODINGS)}; got {self.encoding!r}")
        if self.encoding == "differential" and self.cols % 2:
            raise ConfigError(
                f"differential encoding needs an even number of crossbar columns (pairs of G+/G-); got {self.cols}"
            )
        if self.encoding == "offset" and self.cols < 2:
            raise ConfigError("offset encoding needs at least 2 crossbar columns (one is the reference column)")
        lo, hi = WEIGHT_BITS
        if self.weight_bits is not None and not (lo <= self.weight_bits <= hi):
            raise ConfigError(f"weight bits must be between {lo} and {hi} (signed levels); got {self.weight_bits}")
        if not (0.0 <= self.g_min < self.g_max):
            raise ConfigError(f"need 0 <= g_min < g_max (siemens); got g_min={self.g_min}, g_max={self.g_max}")
        p = self.weight_clip_percentile
        lo, hi = WEIGHT_CLIP_PERCENTILE
        if p is not None and not (lo <= p <= hi):
            raise ConfigError(f"weight clip percentile must be in [{lo:g}, {hi:g}]; got {p}")
        e, k = self.afp_exponents, self.afp_step
        if not (isinstance(e, int) and 1 <= e <= MAX_AFP_EXPONENTS):
            raise ConfigError(f"--afp-exponents must be an integer in [1, {MAX_AFP_EXPONENTS}]; got {e}")
        if not (isinstance(k, int) and k >= 1 and k * (e - 1) <= MAX_GAIN_EXPONENT):
            raise ConfigError(f"--afp-step {k} with --afp-exponents {e}: the smallest gain 2^-(k·(E-1)) must stay "
                              f">= 2^-{MAX_GAIN_EXPONENT} (float32 resolution); use a smaller step or fewer exponents")
        s, b = self.bit_slices, self.bits_per_cell
        if not (isinstance(s, int) and s >= 1):
            raise ConfigError(f"--bit-slices must be a positive integer; got {s}")
        if s > 1 or b is not None:
            if s == 1 or b is None:
                raise ConfigError("bit slicing needs both --bit-slices S (>= 2) and --bits-per-cell b")
            if not (isinstance(b, int) and 1 <= b and s * b <= 16):
                raise ConfigError(f"--bit-slices {s} --bits-per-cell {b}: need b >= 1 and S·b <= 16 magnitude bits")
            if self.weight_bits is not None:
                raise ConfigError("--weight-bits and bit slicing both set the weight resolution; bit slicing "
                                  f"stores S·b = {s * b} magnitude bits plus the sign: drop --weight-bits")
            if e > 1:
                raise ConfigError("--afp-exponents and --bit-slices cannot combine: analog floating point gives "
                                  "each weight one position, bit slicing several; choose one")
        r = self.replicas
        if not (isinstance(r, int) and 1 <= r <= MAX_AFP_EXPONENTS):
            raise ConfigError(f"--replicas must be an integer in [1, {MAX_AFP_EXPONENTS}]; got {r}")
        if r > 1 and (e > 1 or s > 1):
            raise ConfigError("--replicas averages copies of a fixed-point weight; it does not combine with "
                              "--afp-exponents or --bit-slices")
        if self.rearrange_rows not in ROW_REARRANGEMENTS:
            raise ConfigError(f"--rearrange-rows must be one of {', '.join(ROW_REARRANGEMENTS)}; "
                              f"got {self.rearrange_rows!r}")
        if self.rearrange_rows != "none" and self.encoding != "differential":
            raise ConfigError("--rearrange-rows needs --encoding differential: with offset columns every row also "
                              "feeds the reference column at G_mid, and ordering rows by current made the offset "
                              "error larger where measured")
        if self.rearrange not in REARRANGEMENTS:
            raise ConfigError(f"--rearrange-columns must be one of {', '.join(REARRANGEMENTS)}; got {self.rearrange!r}")

    @property
    def weight_cols_per_tile(self) -> int:
        """Weight columns one tile holds after encoding."""
        return self.cols // 2 if self.encoding == "differential" else self.cols - 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MappingConfig":
        return cls(**data)


#: Largest accepted rows/cols in a crossbar size (real tiles are <= 4096); also keeps int() away
#: from Python's limit on very long digit strings.
MAX_CROSSBAR_SIDE = 1_000_000


def parse_crossbar(text: str) -> tuple[int, int]:
    """Parse 'RxC' (rows x columns): '128x128', '64X32', '128×64', spaces around the x allowed.

    A single number is refused: it is ambiguous between a square tile and a typo, so the
    error asks for the explicit square form ('128x128').
    """
    shown = repr(text if not isinstance(text, str) or len(text) <= 40 else text[:37] + "...")
    if not isinstance(text, str):
        raise ConfigError(f"crossbar size {shown} is not of the form ROWSxCOLS, e.g. 128x128")
    if re.fullmatch(r"\s*[0-9]+\s*", text):
        n = text.strip()
        raise ConfigError(f"crossbar size {shown} gives one number; write both sides, e.g. '{n}x{n}' for a square tile")
    m = re.fullmatch(r"\s*([0-9]+)\s*[xX\u00d7]\s*([0-9]+)\s*", text)
    if not m:
        raise ConfigError(f"crossbar size {shown} is not of the form ROWSxCOLS, e.g. 128x128 (rows = inputs, "
                          "columns = bit lines)")
    sides = [g.lstrip("0") or "0" for g in m.groups()]
    if any(len(g) > len(str(MAX_CROSSBAR_SIDE)) or not 1 <= int(g) <= MAX_CROSSBAR_SIDE for g in sides):
        raise ConfigError(f"crossbar size {shown} must have between 1 and {MAX_CROSSBAR_SIDE} rows and columns")
    return int(sides[0]), int(sides[1])
