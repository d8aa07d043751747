"""Conversion-time configuration: how weights are mapped onto crossbar tiles."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from xbar.errors import ConfigError

ENCODINGS = ("differential", "offset")

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
    """

    rows: int = 128
    cols: int = 128
    encoding: str = "differential"
    weight_bits: int | None = None
    g_min: float = DEFAULT_G_MIN_S
    g_max: float = DEFAULT_G_MAX_S
    weight_clip_percentile: float | None = None

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
        if self.weight_bits is not None and not (2 <= self.weight_bits <= 16):
            raise ConfigError(f"weight bits must be between 2 and 16 (signed levels); got {self.weight_bits}")
        if not (0.0 <= self.g_min < self.g_max):
            raise ConfigError(f"need 0 <= g_min < g_max (siemens); got g_min={self.g_min}, g_max={self.g_max}")
        p = self.weight_clip_percentile
        if p is not None and not (50.0 <= p <= 100.0):
            raise ConfigError(f"weight clip percentile must be in [50, 100]; got {p}")

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
