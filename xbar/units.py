"""Parsing and formatting of the physical quantities users type: times and seed lists.

Times are always handled in seconds (float). Accepted forms, e.g. for `--time`:

    '3600'  '20 s'  '1.5e3s'  '250ns'  '10us'  '10µs'  '5ms'  '2min'  '1h'  '1d'  '1w'  '1y'

A year is the Julian year, 365.25 days. 'm' alone is rejected as ambiguous (minute or
month?): write 'min'.
"""

from __future__ import annotations

import math
import numbers
import re

from xbar.errors import ConfigError

#: unit → seconds. Lookup is case-insensitive except for the micro sign variants.
TIME_UNITS: dict[str, float] = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # U+00B5 MICRO SIGN
    "μs": 1e-6,  # U+03BC GREEK SMALL LETTER MU
    "ms": 1e-3,
    "s": 1.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 7 * 86400.0,
    "y": 365.25 * 86400.0,
}

_ACCEPTED = (
    "a non-negative number with an optional unit ns, us (or µs), ms, s, min, h, d, w, y "
    "(1 y = 365.25 d; no unit = seconds), e.g. '250ns', '20 s', '1.5e3s', '1h', '1y'"
)

_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_TIME_RE = re.compile(rf"^\s*({_NUMBER})\s*([^\s\d.+-]\S*)?\s*$")

# Units used by format_time, largest first (weeks are shown as days).
_FORMAT_UNITS = (("y", TIME_UNITS["y"]), ("d", 86400.0), ("h", 3600.0), ("min", 60.0),
                 ("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9))


def parse_time(text: str | float | int) -> float:
    """A duration in seconds from '1s', '250ns', '20 s', '1h', '1d', '1w', '1y', '3600', '1.5e3s', ...

    Plain numbers (int/float, e.g. from a TOML file) are taken as seconds.
    Raises ConfigError naming the text and the accepted forms for negative, non-finite or
    unparsable input.
    """
    if isinstance(text, bool):
        raise ConfigError(f"time {text!r} is not valid: expected {_ACCEPTED}")
    if isinstance(text, numbers.Real):
        value = float(text)
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"time {text!r} is not valid: expected {_ACCEPTED}")
        return value
    if not isinstance(text, str):
        raise ConfigError(f"time {text!r} is not valid: expected {_ACCEPTED}")
    if "," in text:  # where several times are taken, parse_time_list splits them first
        raise ConfigError(f"time {text!r} is a list; one time is needed here (e.g. 1d): calibrate and finetune "
                          "fit a chip at one time after programming")
    m = _TIME_RE.match(text)
    if not m:
        raise ConfigError(f"time {text!r} is not valid: expected {_ACCEPTED}")
    number, unit = m.group(1), m.group(2) or "s"
    key = unit if unit in ("µs", "μs") else unit.lower()
    if key not in TIME_UNITS:
        hint = " ('m' is ambiguous: write 'min' for minutes)" if key == "m" else ""
        raise ConfigError(f"time {text!r} has an unknown unit {unit!r}{hint}: expected {_ACCEPTED}")
    value = float(number) * TIME_UNITS[key]
    if value < 0 or number.lstrip().startswith("-"):
        raise ConfigError(f"time {text!r} is negative: expected {_ACCEPTED}")
    if not math.isfinite(value):
        raise ConfigError(f"time {text!r} is not finite: expected {_ACCEPTED}")
    return value


def format_time(seconds: float) -> str:
    """A compact human-readable duration: 1 → '1 s', 3600 → '1 h', 86400 → '1 d', 31557600 → '1 y'.

    Uses the largest unit (y, d, h, min, s, ms, µs, ns) the value reaches, with up to 4
    significant digits, so parse_time(format_time(x)) equals x to 4 significant digits.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, numbers.Real):
        raise ConfigError(f"cannot format {seconds!r} as a time: expected a number of seconds")
    s = float(seconds)
    if not math.isfinite(s) or s < 0:
        raise ConfigError(f"cannot format {seconds!r} as a time: expected a finite, non-negative number of seconds")
    if s == 0:
        return "0 s"
    for unit, factor in _FORMAT_UNITS:
        # A relative tolerance so that e.g. 0.99999999999 y still prints as '1 y'.
        if s >= factor * (1 - 1e-9):
            return f"{s / factor:.4g} {unit}"
    return f"{s / 1e-9:.4g} ns"


def parse_time_list(text: str) -> list[float]:
    """Comma-separated times, e.g. '1s,1h,1d,1y' → [1.0, 3600.0, 86400.0, 31557600.0] (order kept;
    the same time twice, e.g. '1d,24h', is refused like a repeated seed)."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"time list {text!r} is empty: expected comma-separated times, e.g. '1s,1h,1d,1y'")
    items = text.split(",")
    out = []
    for item in items:
        if not item.strip():
            raise ConfigError(f"time list {text!r} has an empty item: expected comma-separated times, e.g. '1s,1h,1d,1y'")
        t = parse_time(item)
        if t in out:
            raise ConfigError(f"time list {text!r} gives {format_time(t)} twice ({item.strip()!r}); each time is one "
                              "row of results, so list it once")
        alike = next((u for u in out if format_time(u) == format_time(t)), None)
        if alike is not None:  # two rows would read the same
            raise ConfigError(f"time list {text!r}: {item.strip()!r} and {format_time(alike)} both print as "
                              f"{format_time(t)}; give times that differ in their first 4 digits")
        out.append(t)
    return out


#: The largest number of seeds one list may expand to (guards against typos such as '0-99999999').
MAX_SEEDS = 100_000

_SEED_ITEM = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def parse_seeds(text: str | int) -> list[int]:
    """Seeds from '7', '0,3,5', '0-9' (inclusive) or mixtures such as '0-3,10'.

    Seeds are non-negative integers; ranges must ascend; duplicates are rejected (they would
    repeat identical runs). An int is accepted as a single seed.
    """
    form = "expected non-negative integer seeds as 'N', 'A-B' (inclusive) or a comma-separated list, e.g. '7', '0-9', '0,3,5'"
    if isinstance(text, bool):
        raise ConfigError(f"seeds {text!r} are not valid: {form}")
    if isinstance(text, numbers.Integral):
        if text < 0:
            raise ConfigError(f"seed {text} is negative: {form}")
        return [int(text)]
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"seeds {text!r} are empty: {form}")
    seeds: list[int] = []
    for item in text.split(","):
        m = _SEED_ITEM.match(item)
        if not m:
            what = "negative seed" if item.strip().startswith("-") else "invalid item"
            raise ConfigError(f"seeds {text!r}: {what} {item.strip()!r}; {form}")
        if max(len(g) for g in m.groups() if g) > 18:  # beyond any real seed, and int() limits
            raise ConfigError(f"seeds {text!r}: {item.strip()!r} is too large; {form}")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise ConfigError(f"seeds {text!r}: range {item.strip()!r} runs backwards; write it as '{hi}-{lo}'")
        if len(seeds) + (hi - lo + 1) > MAX_SEEDS:
            raise ConfigError(f"seeds {text!r} expand to more than {MAX_SEEDS} seeds")
        seeds.extend(range(lo, hi + 1))
    seen: set[int] = set()
    dups = sorted({s for s in seeds if s in seen or seen.add(s)})  # type: ignore[func-returns-value]
    if dups:
        raise ConfigError(f"seeds {text!r} repeat {', '.join(map(str, dups[:10]))}: each seed must appear once")
    return seeds


def format_seeds(seeds: list[int]) -> str:
    """Seeds as text parse_seeds reads back: '0-9' for a run of three or more, else '0,3,5'."""
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(map(str, seeds))
