"""Typed specification of the target chip: devices, converters, circuit, faults, time.

A `HardwareSpec` is an immutable tree of frozen dataclasses in SI units (siemens, ohms,
volts, seconds). It is validated on construction; every error names the field as a dotted
path (e.g. 'adc.bits') and its allowed range. Ways to obtain one:

    preset('pcm')                                        # named presets: ideal, pcm, rram
    preset('pcm').override({'adc.bits': 6, 'circuit.r_wire': 2.0})
    HardwareSpec.from_toml('examples/pcm_4bit_adc.toml') # `preset = "pcm"` + [sections]
    HardwareSpec.from_dict(spec.to_dict())               # JSON-able, for the bundle manifest
    ablate(spec, without=['drift'])                      # switch single non-idealities off

TOML layout (every key optional; sections override the preset named at the top):

    preset = "pcm"
    t_inference = "1d"          # numbers are seconds; strings go through xbar.units.parse_time
    drift_compensation = "tile"
    [device]   model, g_min, g_max (or r_on / r_off in ohms), prog_noise, read_noise_mode, ...
               (see DeviceSpec)
    [dac]      bits, range, percentile, v_read
    [adc]      bits, range, percentile, noise
    [circuit]  ir_drop, r_wire, r_driver, r_sense, solve_dtype
    [faults]   p_stuck_at_gmin, p_stuck_at_gmax

Optional integers (converter bits) are switched off with the string "none" (TOML has no null).

The statistics these parameters feed are implemented in `xbar.runtime.devices`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping

import numpy as np

from xbar.errors import ConfigError
from xbar.units import format_time, parse_time

DEVICE_MODELS = ("ideal", "pcm", "rram")
DAC_RANGES = ("max", "calibrated")
ADC_RANGES = ("percentile", "physical")
DRIFT_COMPENSATIONS = ("off", "tile", "column")
READ_NOISE_MODES = ("fresh", "frozen")
#: Arithmetic of the exact IR-drop solve (xbar.runtime.irdrop; float32 error bound there).
IR_SOLVE_DTYPES = ("float64", "float32")
PRESETS = ("ideal", "pcm", "rram")
#: Non-idealities `ablate` can switch off, by name.
ABLATIONS = ("programming", "drift", "read", "ir-drop", "faults", "dac", "adc", "output-noise")

MAX_CONVERTER_BITS = 16

# --------------------------------------------------------------------------------------------
# Field coercion shared by construction, from_dict, override and from_toml.
# --------------------------------------------------------------------------------------------

_TIME_FIELDS = frozenset({"t0", "t_read", "t_inference"})
_NONE_WORDS = ("none", "ideal", "off")


def _coerce(path: str, kind: str, value: Any) -> Any:
    """Check/convert one field value by its annotation ('float', 'bool', 'str', 'int | None')."""
    name = path.rsplit(".", 1)[-1]
    if kind == "bool":
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        raise ConfigError(f"{path} must be true or false; got {value!r}")
    if kind == "str":
        if isinstance(value, str):
            return value.strip().lower()
        raise ConfigError(f"{path} must be a string; got {value!r}")
    if kind == "float":
        if name in _TIME_FIELDS and isinstance(value, str):
            try:
                return parse_time(value)
            except ConfigError as exc:
                raise ConfigError(f"{path}: {exc}") from None
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            extra = " (or a time string such as '20 s', '1d')" if name in _TIME_FIELDS else ""
            raise ConfigError(f"{path} must be a number{extra}; got {value!r}")
        v = float(value)
        if math.isnan(v):
            raise ConfigError(f"{path} must be a number; got NaN")
        return v
    if kind == "int | None":
        if value is None:
            return None
        if isinstance(value, str) and value.strip().lower() in _NONE_WORDS:
            return None
        if isinstance(value, bool):
            raise ConfigError(f"{path} must be an integer or 'none'; got {value!r}")
        if isinstance(value, numbers.Integral):
            return int(value)
        if isinstance(value, numbers.Real) and float(value).is_integer():
            return int(value)
        raise ConfigError(f"{path} must be an integer or 'none'; got {value!r}")
    raise AssertionError(f"unhandled field kind {kind!r} for {path}")  # pragma: no cover


def _coerce_fields(obj: Any) -> None:
    for f in dataclasses.fields(obj):
        object.__setattr__(obj, f.name, _coerce(f"{obj.SECTION}.{f.name}", f.type, getattr(obj, f.name)))


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _finite_nonneg(path: str, v: float, unit: str = "") -> None:
    _need(math.isfinite(v) and v >= 0, f"{path} must be a finite number >= 0{unit}; got {v!r}")


def _positive(path: str, v: float, unit: str = "") -> None:
    _need(math.isfinite(v) and v > 0, f"{path} must be a finite number > 0{unit}; got {v!r}")


def _choice(path: str, v: str, choices: tuple[str, ...]) -> None:
    _need(v in choices, f"{path} must be one of {', '.join(choices)}; got {v!r}")


def _bits(path: str, v: int | None, what: str) -> None:
    _need(
        v is None or 1 <= v <= MAX_CONVERTER_BITS,
        f"{path} must be an integer in [1, {MAX_CONVERTER_BITS}] (or 'none' for an ideal, unquantised {what}); got {v!r}",
    )


def _percentile(path: str, v: float) -> None:
    _need(0.0 < v <= 100.0, f"{path} must be a percentile in (0, 100]; got {v!r}")


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceSpec:
    """The memory device in every crosspoint and its statistics.

    model 'ideal' stores the target conductance exactly (all noise switches must be off);
    'pcm' is the statistical PCM model of Nandakumar et al., ICECS 2019 / Joshi et al.,
    Nat. Commun. 11, 2473 (2020), as implemented in IBM aihwkit `PCMLikeNoiseModel`
    (src/aihwkit/inference/noise/pcm.py); 'rram' is an illustrative HfOx-like filamentary
    RRAM (typical literature values, not a fit to one device).
    """

    SECTION: ClassVar[str] = "device"

    model: str = "ideal"  # 'ideal' | 'pcm' | 'rram'
    # Programmable conductance window, siemens. Default = xbar.config's mapping default:
    # aihwkit PCMLikeNoiseModel g_max = 25 uS, lowest state 0 S (fully RESET).
    g_min: float = 0.0  # S
    g_max: float = 25e-6  # S

    # --- switches and global scales (aihwkit prog_noise_scale / drift_scale / read_noise_scale)
    prog_noise: bool = False  # programming (write) noise on/off
    prog_noise_scale: float = 1.0  # dimensionless multiplier of the programming-noise sigma
    drift: bool = False  # conductance drift (PCM) / relaxation (RRAM) on/off
    drift_scale: float = 1.0  # dimensionless multiplier of the drift exponent nu
    # Reference time of the drift law G(t) = G_p ((t + t0)/t0)^-nu, seconds: the first read
    # after programming. 20 s = aihwkit PCMLikeNoiseModel t_0 (Joshi et al. 2020).
    t0: float = 20.0  # s
    read_noise: bool = False  # read (1/f + RTN) noise on/off
    read_noise_scale: float = 1.0  # dimensionless multiplier of the read-noise sigma
    # Read duration in the PCM 1/f noise integral, seconds; aihwkit t_read = 250 ns.
    t_read: float = 250e-9  # s
    # When read noise is drawn. 'fresh': anew at every read, so no calibration can undo it.
    # 'frozen': once per device, chip instance and evaluation time, then held for every read,
    # as IBM aihwkit does (src/aihwkit/inference/noise/pcm.py,
    # PCMLikeNoiseModel.apply_drift_noise_to_conductance, run once per drift_analog_weights
    # call into the stored weights); it then acts like a per-chip weight error.
    read_noise_mode: str = "fresh"  # 'fresh' | 'frozen'

    # --- PCM coefficients (aihwkit PCMLikeNoiseModel, fitted by Nandakumar et al. 2019 on
    # IBM doped-GST mushroom cells; used in Joshi et al. 2020). g = G / g_max.
    # Reference g_max of the programming-noise fit, siemens: sigma_p scales by g_max/pcm_g_ref.
    pcm_g_ref: float = 25e-6  # S
    # Programming noise sigma_p(g) = max(c0 + c1 g + c2 g^2, 0) in uS at g_max = pcm_g_ref
    # (aihwkit prog_coeff = [0.26348, 1.9650, -1.1731]).
    pcm_prog_c0: float = 0.26348  # uS
    pcm_prog_c1: float = 1.9650  # uS
    pcm_prog_c2: float = -1.1731  # uS
    # Drift exponent nu ~ |N(mu_nu, sigma_nu)| (aihwkit generate_drift_coefficients):
    #   mu_nu    = clip(-0.0155 ln g + 0.0244, 0.049, 0.1)
    #   sigma_nu = clip(-0.0125 ln g - 0.0059, 0.008, 0.045)       (dimensionless)
    pcm_nu_mu_slope: float = -0.0155
    pcm_nu_mu_offset: float = 0.0244
    pcm_nu_mu_min: float = 0.049
    pcm_nu_mu_max: float = 0.1
    pcm_nu_sigma_slope: float = -0.0125
    pcm_nu_sigma_offset: float = -0.0059
    pcm_nu_sigma_min: float = 0.008
    pcm_nu_sigma_max: float = 0.045
    # Read (1/f) noise: sigma_r = |G(t)| Q_s sqrt(ln((t + t0 + t_read)/(2 t_read))),
    # Q_s = min(q0 / g^exponent, q_max) (aihwkit apply_drift_noise_to_conductance).
    pcm_read_q0: float = 0.0088  # dimensionless
    pcm_read_exponent: float = 0.65  # dimensionless
    pcm_read_q_max: float = 0.2  # dimensionless

    # --- RRAM parameters (ILLUSTRATIVE, typical of HfOx 1T1R filamentary cells).
    # Programming noise sigma = rram_prog_rel * G_target after program-and-verify; ~5 % is a
    # typical verify tolerance (aihwkit ReRamCMONoiseModel uses 0.2 %/2 % acceptance ranges;
    # Wan et al., Nature 608, 504 (2022) report a few % spread).
    rram_prog_rel: float = 0.05  # fraction of G
    # Read noise sigma = rram_read_rel * |G|; aihwkit's ReRAM models note "short-term read
    # noise (about 1 %)" for Wan et al. 2022.
    rram_read_rel: float = 0.01  # fraction of G
    # Weak log-time relaxation, modelled as a small power law G_p ((t + t0)/t0)^-nu with
    # nu ~ |N(rram_nu_mean, rram_nu_std)|; nu = 0.005 loses ~7 % in a year from t0 = 1 s.
    rram_nu_mean: float = 0.005  # dimensionless
    rram_nu_std: float = 0.002  # dimensionless

    def __post_init__(self) -> None:
        _coerce_fields(self)
        _choice("device.model", self.model, DEVICE_MODELS)
        _choice("device.read_noise_mode", self.read_noise_mode, READ_NOISE_MODES)
        _need(
            math.isfinite(self.g_max) and 0.0 <= self.g_min < self.g_max,
            f"device.g_min and device.g_max must satisfy 0 <= g_min < g_max (siemens); "
            f"got g_min={self.g_min!r}, g_max={self.g_max!r}",
        )
        for name in ("prog_noise_scale", "drift_scale", "read_noise_scale"):
            _finite_nonneg(f"device.{name}", getattr(self, name))
        _positive("device.t0", self.t0, " (seconds)")
        _positive("device.t_read", self.t_read, " (seconds)")
        _positive("device.pcm_g_ref", self.pcm_g_ref, " (siemens)")
        for name in ("pcm_prog_c0", "pcm_prog_c1", "pcm_prog_c2", "pcm_nu_mu_slope", "pcm_nu_mu_offset",
                     "pcm_nu_sigma_slope", "pcm_nu_sigma_offset", "pcm_read_exponent"):
            _need(math.isfinite(getattr(self, name)), f"device.{name} must be a finite number; got {getattr(self, name)!r}")
        for lo, hi in (("pcm_nu_mu_min", "pcm_nu_mu_max"), ("pcm_nu_sigma_min", "pcm_nu_sigma_max")):
            a, b = getattr(self, lo), getattr(self, hi)
            _need(
                math.isfinite(a) and math.isfinite(b) and 0.0 <= a <= b,
                f"device.{lo} and device.{hi} must satisfy 0 <= {lo} <= {hi}; got {a!r}, {b!r}",
            )
        for name in ("pcm_read_q0", "pcm_read_q_max", "rram_prog_rel", "rram_read_rel", "rram_nu_mean", "rram_nu_std"):
            _finite_nonneg(f"device.{name}", getattr(self, name))
        if self.model == "ideal":
            for name in ("prog_noise", "drift", "read_noise"):
                _need(
                    not getattr(self, name),
                    f"device.{name} = true needs a statistical device: set device.model to 'pcm' or 'rram' "
                    f"(the 'ideal' device stores conductances exactly), or set device.{name} = false",
                )

    @property
    def r_on(self) -> float:
        """Low-resistance (ON) state in ohms: 1/g_max."""
        return 1.0 / self.g_max

    @property
    def r_off(self) -> float:
        """High-resistance (OFF) state in ohms: 1/g_min (inf for g_min = 0)."""
        return math.inf if self.g_min == 0 else 1.0 / self.g_min


@dataclass(frozen=True)
class ConverterSpec:
    """The input DAC of every word line (drives the read voltage encoding the input).

    bits None = ideal: no quantisation and no clipping of inputs. Otherwise inputs are
    clipped to [-R, R] and quantised symmetrically about 0 with `bits` bits, where R is set by
    `range`: 'max' = max |x| of each input vector (dynamic, like aihwkit's abs-max noise
    management); 'calibrated' = a fixed R per layer, the `percentile`-th percentile of |x| over
    calibration data.
    """

    SECTION: ClassVar[str] = "dac"

    bits: int | None = None  # resolution in bits, [1, 16]; None = ideal
    range: str = "max"  # 'max' | 'calibrated'
    percentile: float = 99.99  # percent, (0, 100]; used by range = 'calibrated'
    # Read voltage at full-scale input, volts. 0.2 V: typical PCM/RRAM read bias low enough
    # not to disturb the state (IBM PCM chips read at ~0.2-0.3 V; Joshi et al. 2020).
    # It sets the unit of the currents only: the devices here are linear (no read disturb,
    # no I-V nonlinearity), and so is the IR-drop network, so every current and full scale
    # scales with it alike and no result changes. Kept to state the operating point.
    v_read: float = 0.2  # V

    def __post_init__(self) -> None:
        _coerce_fields(self)
        _bits("dac.bits", self.bits, "DAC")
        _choice("dac.range", self.range, DAC_RANGES)
        _percentile("dac.percentile", self.percentile)
        _need(
            math.isfinite(self.v_read) and 0.0 < self.v_read <= 5.0,
            f"dac.v_read must be in (0, 5] volts; got {self.v_read!r}",
        )


DACSpec = ConverterSpec


@dataclass(frozen=True)
class ADCSpec:
    """The output ADC of every column (after the sense amplifier / integrator).

    bits None = ideal: no quantisation and no clipping. Otherwise outputs are clipped to the
    full scale [-F, F] and quantised with `bits` bits, where F is set by `range`:
    'percentile' = the `percentile`-th percentile of |column output| over calibration data;
    'physical' = the largest |current| the column's devices can carry as programmed (every row
    at full input, signed as its weights; before drift, wire losses and read noise), fixed
    when the chip is programmed: drift lowers the currents, not the full scale. Output
    noise is additive Gaussian with sigma = noise * F (F from the same policy), applied even
    when bits is None.
    """

    SECTION: ClassVar[str] = "adc"

    bits: int | None = None  # resolution in bits, [1, 16]; None = ideal
    range: str = "percentile"  # 'percentile' | 'physical'
    percentile: float = 99.99  # percent, (0, 100]; used by range = 'percentile'
    noise: float = 0.0  # output noise sigma as a fraction of full scale, >= 0

    def __post_init__(self) -> None:
        _coerce_fields(self)
        _bits("adc.bits", self.bits, "ADC")
        _choice("adc.range", self.range, ADC_RANGES)
        _percentile("adc.percentile", self.percentile)
        _need(
            math.isfinite(self.noise) and 0.0 <= self.noise <= 1.0,
            f"adc.noise must be a fraction of full scale in [0, 1]; got {self.noise!r}",
        )


@dataclass(frozen=True)
class CircuitSpec:
    """Parasitic resistances of the array (used when ir_drop is on).

    r_wire default 1 ohm per cell segment is an ASSUMPTION of order-of-magnitude: a Cu line of
    ~50 nm x 100 nm cross-section with ~4 uOhm.cm effective resistivity over a ~200 nm cell
    pitch gives ~1.6 ohm; array studies at 22-65 nm nodes typically use ~1-3 ohm per cell.
    A resistance of 0 means an ideal connection (no drop).

    solve_dtype: arithmetic of the exact IR-drop solve. "float64" agrees with an independent
    nodal solve to 1e-11; "float32" is 1.5-2x faster per tile and moves each effective
    conductance by at most 2e-5 of the tile's largest conductance (measured: at most 8.7e-6
    over tiles of 64–512 cells a side, r_wire 0.01–10 ohm; xbar.runtime.irdrop, "Precision").
    The pcm and rram presets use float32: their smallest programming noise (0.26 uS at 25 uS,
    about 1 % of g_max; rram 5 %) is 500x that bound, and so is an 8-bit ADC's step.
    """

    SECTION: ClassVar[str] = "circuit"

    ir_drop: bool = False  # solve the resistive network (True) or assume ideal wires
    r_wire: float = 1.0  # ohm per segment between adjacent cells, word and bit lines
    r_driver: float = 0.0  # ohm, output resistance of each word-line driver
    r_sense: float = 0.0  # ohm, input resistance of each bit-line sense amplifier (virtual ground)
    solve_dtype: str = "float64"  # arithmetic of the IR-drop solve, one of IR_SOLVE_DTYPES

    def __post_init__(self) -> None:
        _coerce_fields(self)
        for name in ("r_wire", "r_driver", "r_sense"):
            _finite_nonneg(f"circuit.{name}", getattr(self, name), " (ohms)")
        _choice("circuit.solve_dtype", self.solve_dtype, IR_SOLVE_DTYPES)


@dataclass(frozen=True)
class FaultSpec:
    """Stuck-at faults, drawn independently per device (disjoint: a device is stuck at most once)."""

    SECTION: ClassVar[str] = "faults"

    p_stuck_at_gmin: float = 0.0  # fraction of devices stuck at device.g_min, [0, 1]
    p_stuck_at_gmax: float = 0.0  # fraction of devices stuck at device.g_max, [0, 1]

    def __post_init__(self) -> None:
        _coerce_fields(self)
        for name in ("p_stuck_at_gmin", "p_stuck_at_gmax"):
            v = getattr(self, name)
            _need(0.0 <= v <= 1.0, f"faults.{name} must be a fraction in [0, 1]; got {v!r}")
        total = self.p_stuck_at_gmin + self.p_stuck_at_gmax
        _need(
            total <= 1.0 + 1e-12,
            f"faults.p_stuck_at_gmin + faults.p_stuck_at_gmax must be <= 1; got {total!r}",
        )


_SECTIONS: dict[str, type] = {
    "device": DeviceSpec,
    "dac": ConverterSpec,
    "adc": ADCSpec,
    "circuit": CircuitSpec,
    "faults": FaultSpec,
}
_TOP_KEYS = ("t_inference", "drift_compensation")
_DEVICE_ALIASES = {"r_on": "g_max", "r_off": "g_min"}  # ohms in, siemens stored


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


# --------------------------------------------------------------------------------------------
# The whole chip
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HardwareSpec:
    """Everything about the target chip that the simulator needs; seeds are not part of it.

    t_inference: time since programming at which the chip is evaluated, seconds (aihwkit's
        t_inference; the drift law counts from t0 so t_inference = 0 gives G = G_p).
        Default 0 s: the chip as programmed and verified (aihwkit's drift_analog_weights
        default); drift only acts when a later time is asked for, e.g. override t_inference
        = '1d' or the CLI's time sweep.
    drift_compensation: 'off' | 'tile' (one global scale per tile, like aihwkit's
        GlobalDriftCompensation) | 'column' (one scale per column).
    """

    SECTION: ClassVar[str] = ""

    device: DeviceSpec = field(default_factory=DeviceSpec)
    dac: ConverterSpec = field(default_factory=ConverterSpec)
    adc: ADCSpec = field(default_factory=ADCSpec)
    circuit: CircuitSpec = field(default_factory=CircuitSpec)
    faults: FaultSpec = field(default_factory=FaultSpec)
    t_inference: float = 0.0  # s, >= 0
    drift_compensation: str = "off"

    def __post_init__(self) -> None:
        for name, cls in _SECTIONS.items():
            v = getattr(self, name)
            if isinstance(v, Mapping):
                v = _build_section(cls(), name, dict(v))
                object.__setattr__(self, name, v)
            _need(isinstance(v, cls), f"{name} must be a {cls.__name__}; got {type(v).__name__}")
        object.__setattr__(self, "t_inference", _coerce("t_inference", "float", self.t_inference))
        _need(
            math.isfinite(self.t_inference) and self.t_inference >= 0,
            f"t_inference must be a finite time >= 0 (seconds); got {self.t_inference!r}",
        )
        object.__setattr__(self, "drift_compensation", _coerce("drift_compensation", "str", self.drift_compensation))
        _choice("drift_compensation", self.drift_compensation, DRIFT_COMPENSATIONS)

    # ---- construction ------------------------------------------------------------------

    def override(self, changes: Mapping[str, Any] | None = None, /, **dotted: Any) -> "HardwareSpec":
        """A copy with fields changed by dotted path: override({'adc.bits': 6, 'circuit.r_wire': 2.0}).

        Keys are 'section.key' (sections: device, dac, adc, circuit, faults) or the top-level
        't_inference' / 'drift_compensation'; a section may also be given as a nested dict
        ({'adc': {'bits': 6}}). 'device.r_on' / 'device.r_off' (ohms) set g_max / g_min.
        Unknown keys and wrong types raise ConfigError naming the key and the valid ones.
        """
        flat = _flatten({**(changes or {}), **dotted})
        per_section: dict[str, dict[str, Any]] = {}
        top: dict[str, Any] = {}
        for path, value in flat.items():
            parts = path.split(".")
            if len(parts) == 1:
                key = parts[0]
                if key in _TOP_KEYS:
                    top[key] = value
                    continue
                if key == "preset":
                    raise ConfigError("'preset' can only start a spec (TOML file or from_dict), not override one")
                if key in _SECTIONS:
                    raise ConfigError(f"{key!r} is a section; give its keys, e.g. {key}.{_field_names(_SECTIONS[key])[0]}")
                raise ConfigError(f"unknown hardware key {key!r}; {_valid_top()}")
            section = parts[0]
            if section not in _SECTIONS:
                raise ConfigError(f"unknown hardware section {section!r} in {path!r}; {_valid_top()}")
            if len(parts) > 2:
                raise ConfigError(f"unknown hardware key {path!r}; {_valid_keys(section)}")
            per_section.setdefault(section, {})[parts[1]] = value
        kwargs: dict[str, Any] = dict(top)
        for section, values in per_section.items():
            kwargs[section] = _build_section(getattr(self, section), section, values)
        return dataclasses.replace(self, **kwargs)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base: "HardwareSpec | str | None" = None) -> "HardwareSpec":
        """Inverse of to_dict; also accepts partial dicts applied over `base`.

        A 'preset' key in the data names the starting point (it wins over `base`); otherwise
        `base` (a spec or preset name; default: the ideal preset).
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"a hardware specification must be a table/dict; got {type(data).__name__}")
        data = dict(data)
        name = data.pop("preset", None)
        if name is not None:
            start = preset(name)
        elif base is None:
            start = cls()
        elif isinstance(base, str):
            start = preset(base)
        else:
            start = base
        return start.override(data)

    @classmethod
    def from_toml(cls, path: str | Path, base: "HardwareSpec | str | None" = None) -> "HardwareSpec":
        """Read a TOML file; `preset = "..."` at the top (or `base`) is the starting point."""
        path = Path(path)
        tomllib = _tomllib()
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"hardware file {str(path)!r} does not exist") from None
        except OSError as exc:
            raise ConfigError(f"cannot read hardware file {str(path)!r}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"hardware file {str(path)!r} is not valid TOML: {exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"hardware file {str(path)!r} is not a text file (not UTF-8); "
                              "give a preset name or a TOML file such as examples/pcm_4bit_adc.toml") from None
        try:
            return cls.from_dict(data, base=base)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    # ---- export -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-able nested dict (None for ideal converters); from_dict(to_dict()) == self."""
        out: dict[str, Any] = {name: dataclasses.asdict(getattr(self, name)) for name in _SECTIONS}
        out["t_inference"] = self.t_inference
        out["drift_compensation"] = self.drift_compensation
        return out

    def active_nonidealities(self) -> list[str]:
        """Names (from ABLATIONS) of the non-idealities this spec switches on."""
        d, active = self.device, []
        statistical = d.model != "ideal"
        if statistical and d.prog_noise:
            active.append("programming")
        if statistical and d.drift:
            active.append("drift")
        if statistical and d.read_noise:
            active.append("read")
        if self.circuit.ir_drop:
            active.append("ir-drop")
        if self.faults.p_stuck_at_gmin > 0 or self.faults.p_stuck_at_gmax > 0:
            active.append("faults")
        if self.dac.bits is not None:
            active.append("dac")
        if self.adc.bits is not None:
            active.append("adc")
        if self.adc.noise > 0:
            active.append("output-noise")
        return active

    @property
    def is_ideal(self) -> bool:
        """True when nothing deviates from exact matrix-vector products."""
        return not self.active_nonidealities()

    def describe(self, times: Iterable[float] | None = None) -> str:
        """A compact multi-line summary with units (what `xbar eval` prints as the effective spec).

        `times`: the drift times actually evaluated, when there are several (each result
        row has its own); the summary then names them instead of t_inference."""
        d, dac, adc, c, f = self.device, self.dac, self.adc, self.circuit, self.faults

        def onoff(flag: bool, scale: float, detail: str = "") -> str:
            if not flag:
                return "off"
            s = "on" if scale == 1.0 else f"on x{scale:g}"
            return f"{s} ({detail})" if detail else s

        window = f"G in [{_si(d.g_min, 'S')}, {_si(d.g_max, 'S')}]"
        if d.model == "ideal":
            dev = f"ideal, {window} (exact)"
        else:
            if d.model == "pcm":
                prog_detail = "aihwkit PCM polynomial"
                drift_detail = f"nu ~ |N(mu(g), sigma(g))|, t0 = {format_time(d.t0)}"
                read_detail = f"1/f, t_read = {format_time(d.t_read)}"
            else:
                prog_detail = f"sigma = {d.rram_prog_rel:.3g} G"
                drift_detail = f"nu ~ |N({d.rram_nu_mean:g}, {d.rram_nu_std:g})|, t0 = {format_time(d.t0)}"
                read_detail = f"sigma = {d.rram_read_rel:.3g} G"
            read_detail += ", fresh per read" if d.read_noise_mode == "fresh" else ", frozen per chip and time"
            dev = (
                f"{d.model}, {window}; programming noise {onoff(d.prog_noise, d.prog_noise_scale, prog_detail)}; "
                f"drift {onoff(d.drift, d.drift_scale, drift_detail)}; read noise {onoff(d.read_noise, d.read_noise_scale, read_detail)}"
            )
        if dac.bits is None:
            dac_s = "ideal (unquantised, unclipped)"
        else:
            span = "max |x| per input vector" if dac.range == "max" else f"calibrated, {dac.percentile:g}th percentile of |x|"
            dac_s = f"{dac.bits} bit, range {span}"
        dac_s += f"; v_read = {dac.v_read:g} V (the current unit: results are linear in it)"
        if adc.bits is None:
            adc_s = "ideal (unquantised, unclipped)"
        else:
            fs = "physical maximum current" if adc.range == "physical" else f"{adc.percentile:g}th percentile of |output|"
            adc_s = f"{adc.bits} bit, full scale = {fs}"
        if adc.noise > 0:
            adc_s += f"; output noise sigma = {adc.noise * 100:.3g} % of full scale"
        res = f"r_wire = {_si(c.r_wire, 'Ω')}/segment, r_driver = {_si(c.r_driver, 'Ω')}, r_sense = {_si(c.r_sense, 'Ω')}"
        circ = f"IR drop on: {res}; solved in {c.solve_dtype}" if c.ir_drop else "IR drop off (ideal wires)"
        if f.p_stuck_at_gmin == 0 and f.p_stuck_at_gmax == 0:
            faults_s = "none"
        else:
            faults_s = f"stuck at G_min {f.p_stuck_at_gmin * 100:.3g} %, stuck at G_max {f.p_stuck_at_gmax * 100:.3g} %"
        ts = [self.t_inference] if times is None else list(times)
        when = ", ".join(format_time(t) for t in ts) + (" (one row each)" if len(ts) > 1 else "")
        time_s = f"t = {when} after programming; drift compensation {self.drift_compensation}"
        rows = [("device", dev), ("dac", dac_s), ("adc", adc_s), ("circuit", circ), ("faults", faults_s), ("time", time_s)]
        return "\n".join(f"{k:<8} {v}" for k, v in rows)


def _tomllib() -> Any:
    try:
        import tomllib  # Python >= 3.11
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise ConfigError("reading TOML needs Python >= 3.11 or the 'tomli' package") from None
    return tomllib


def _si(value: float, unit: str) -> str:
    """Engineering notation: 2.5e-05 S → '25 µS', 20000 Ω → '20 kΩ'."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g} {unit}"
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""), (1e-3, "m"), (1e-6, "µ"), (1e-9, "n"), (1e-12, "p")):
        if abs(value) >= factor * (1 - 1e-9):
            return f"{value / factor:.4g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def _valid_top() -> str:
    return f"valid sections: {', '.join(_SECTIONS)}; valid top-level keys: {', '.join(_TOP_KEYS)}"


def _valid_keys(section: str) -> str:
    names = _field_names(_SECTIONS[section])
    if section == "device":
        names = names + list(_DEVICE_ALIASES)
    return f"valid keys in [{section}]: {', '.join(names)}"


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise ConfigError(f"hardware keys must be strings; got {key!r}")
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            if path in out or any(k.startswith(path + ".") for k in out):
                raise ConfigError(f"hardware key {path!r} is given twice")
            out.update(_flatten(value, path + "."))
        else:
            if path in out:
                raise ConfigError(f"hardware key {path!r} is given twice")
            out[path] = value
    return out


def _build_section(current: Any, section: str, values: dict[str, Any]) -> Any:
    """dataclasses.replace on one section with key checks, r_on/r_off aliases and clear errors."""
    cls = _SECTIONS[section]
    names = set(_field_names(cls))
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if section == "device" and key in _DEVICE_ALIASES:
            target = _DEVICE_ALIASES[key]
            if target in values:
                raise ConfigError(f"device.{key} and device.{target} both given; set one of them")
            r = _coerce(f"device.{key}", "float", value)
            if key == "r_on":
                _positive("device.r_on", r, " (ohms)")
                kwargs[target] = 1.0 / r
            else:
                _need(r > 0, f"device.r_off must be > 0 ohms (inf allowed: g_min = 0); got {r!r}")
                kwargs[target] = 0.0 if math.isinf(r) else 1.0 / r
            continue
        if key not in names:
            raise ConfigError(f"unknown hardware key '{section}.{key}'; {_valid_keys(section)}")
        kwargs[key] = value
    return dataclasses.replace(current, **kwargs)


def parse_assignment(text: str) -> tuple[str, Any]:
    """'adc.bits=6' → ('adc.bits', 6), for command-line overrides.

    The value is read as a TOML literal (6, 2.0, 1e-6, true, "none", "1d"); a bare word that
    is not a TOML literal is taken as a string (adc.range=physical, t_inference=1d).
    """
    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(f"hardware override {text!r} is not of the form KEY=VALUE, e.g. adc.bits=6")
    key, raw = (part.strip() for part in text.split("=", 1))
    if not key or not raw:
        raise ConfigError(f"hardware override {text!r} is not of the form KEY=VALUE, e.g. adc.bits=6")
    tomllib = _tomllib()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


# --------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------


def preset(name: str) -> HardwareSpec:
    """The named starting points: 'ideal', 'pcm', 'rram' (see the module docstring / report).

    ideal: exact devices, ideal converters, ideal wires, no faults.
    pcm:   aihwkit PCMLikeNoiseModel device (25 uS, programming + drift + read noise),
           8-bit DAC (abs-max range) and ADC (99.99th percentile full scale), IR drop on
           (1 ohm/segment, solved in float32: see CircuitSpec), no faults, t = 0 s, global
           (tile) drift compensation.
    rram:  illustrative HfOx RRAM, R_on = 20 kohm / R_off = 200 kohm (50 / 5 uS), 5 %
           programming, 1 % read noise, weak relaxation (t0 = 1 s), same periphery as pcm.
    """
    key = name.strip().lower() if isinstance(name, str) else name
    periphery = dict(
        dac=ConverterSpec(bits=8, range="max"),
        adc=ADCSpec(bits=8, range="percentile", percentile=99.99),
        circuit=CircuitSpec(ir_drop=True, r_wire=1.0, solve_dtype="float32"),
        faults=FaultSpec(),
        drift_compensation="tile",
    )
    if key == "ideal":
        return HardwareSpec()
    if key == "pcm":
        device = DeviceSpec(model="pcm", g_min=0.0, g_max=25e-6, prog_noise=True, drift=True, read_noise=True, t0=20.0)
        return HardwareSpec(device=device, **periphery)
    if key == "rram":
        device = DeviceSpec(
            model="rram", g_min=1 / 200e3, g_max=1 / 20e3, prog_noise=True, drift=True, read_noise=True, t0=1.0
        )
        return HardwareSpec(device=device, **periphery)
    raise ConfigError(f"unknown hardware preset {name!r}; presets: {', '.join(PRESETS)}")


# --------------------------------------------------------------------------------------------
# Ablation
# --------------------------------------------------------------------------------------------


def _names(arg: Iterable[str] | str | None, what: str) -> list[str] | None:
    if arg is None:
        return None
    items = arg.split(",") if isinstance(arg, str) else list(arg)
    out = []
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"{what}: non-idealities are named by strings; got {item!r}")
        n = item.strip().lower().replace("_", "-")
        if not n:
            continue
        if n not in ABLATIONS:
            raise ConfigError(f"{what}: unknown non-ideality {item.strip()!r}; valid names: {', '.join(ABLATIONS)}")
        out.append(n)
    return out


def _switch_off(spec: HardwareSpec, name: str) -> HardwareSpec:
    r = dataclasses.replace
    if name == "programming":
        return r(spec, device=r(spec.device, prog_noise=False))
    if name == "drift":
        return r(spec, device=r(spec.device, drift=False))
    if name == "read":
        return r(spec, device=r(spec.device, read_noise=False))
    if name == "ir-drop":
        return r(spec, circuit=r(spec.circuit, ir_drop=False))
    if name == "faults":
        return r(spec, faults=FaultSpec())
    if name == "dac":
        return r(spec, dac=r(spec.dac, bits=None))
    if name == "adc":
        return r(spec, adc=r(spec.adc, bits=None))
    if name == "output-noise":
        return r(spec, adc=r(spec.adc, noise=0.0))
    raise AssertionError(name)  # pragma: no cover


def ablate(
    spec: HardwareSpec,
    only: Iterable[str] | str | None = None,
    without: Iterable[str] | str | None = None,
    set_keys: Iterable[str] = (),
) -> HardwareSpec:
    """Switch single non-idealities off by name (see ABLATIONS).

    only: keep just these (all other non-idealities off); None = keep all.
    without: switch these off. Both may be given ('only' applies first).
    Names are case-insensitive, '_' equals '-', a comma-separated string is accepted.
    Everything else (device model, window, ranges, time, compensation) is unchanged.
    set_keys: dotted settings the caller set explicitly (--set): switching off one that
    changes any of them is refused (ConfigError) rather than overriding it in silence.
    """
    keep = _names(only, "ablation 'only'")
    drop = _names(without, "ablation 'without'") or []
    set_keys = tuple(set_keys)  # read once per non-ideality switched off
    out = spec
    for name in ABLATIONS:
        if (keep is not None and name not in keep) or name in drop:
            out = _switch_off(out, name)
            _refuse_undoing(spec, out, set_keys, name)
    return out


def _refuse_undoing(before: HardwareSpec, after: HardwareSpec, keys: Iterable[str], name: str) -> None:
    """A setting the user gave explicitly that switching `name` off changes: a contradiction,
    which would otherwise run without it while the setting is printed and recorded as given."""
    old, new = before.to_dict(), after.to_dict()
    for key in keys:
        a, b = old, new
        for part in key.split("."):
            a, b = (a or {}).get(part), (b or {}).get(part)
        if a != b:
            raise ConfigError(f"{key} = {a!r} is set explicitly, but switching '{name}' off (only/without) makes it "
                              f"{b!r}: keep '{name}' on, or leave the setting out")
