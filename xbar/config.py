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


def parse_crossbar(text: str) -> tuple[int, int]:
    """Parse 'RxC' (e.g. '128x128') or a single 'N' for a square tile."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX×]\s*(\d+))?\s*", text)
    if not m:
        raise ConfigError(f"crossbar size {text!r} is not of the form ROWSxCOLS, e.g. 128x128")
    rows = int(m.group(1))
    cols = int(m.group(2)) if m.group(2) else rows
    if rows < 1 or cols < 1:
        raise ConfigError(f"crossbar size {text!r} must be positive")
    return rows, cols
