"""Statistical device models: pure, vectorised functions of a numpy Generator, in siemens.

All randomness comes from the Generator passed in; the same seed gives identical arrays.
Parameters come from `xbar.hardware.DeviceSpec` (and `FaultSpec`).

PCM (spec.model == 'pcm'): the statistical model of Nandakumar et al., ICECS 2019, used in
Joshi et al., Nat. Commun. 11, 2473 (2020), following IBM aihwkit `PCMLikeNoiseModel`
(src/aihwkit/inference/noise/pcm.py), checked against its source. With g = G/g_max:

  programming   G_p = max(G_t + s_p sigma_p(g_t) xi, 0),
                sigma_p(g) = max(c0 + c1 g + c2 g^2, 0) uS * g_max/25 uS
                (aihwkit clamps at 0 from below only: no upper clip, a device programmed
                near g_max may exceed it; c0 = 0.26348 as in aihwkit)
  drift         nu = s_d |mu_nu(g_t) + sigma_nu(g_t) xi|   (g_t clipped to >= 1e-7 before ln)
                G(t) = G_p ((t + t0)/t0)^-nu,  t = time since programming (t = 0: G = G_p)
  read (1/f)    G = G(t) + s_r |G(t)| Q_s(g_p) sqrt(ln((t + t0 + t_read)/(2 t_read))) xi,
                Q_s(g) = min(0.0088 / max(g^0.65, 1e-3), 0.2); result clamped at 0.
                As in aihwkit the 1/f integral runs from t_read to the total time since the
                start of programming, t + t0, and Q_s uses the programmed (not drifted)
                conductance. We additionally clip the log's argument at 1, so sigma >= 0 even
                for t + t0 < t_read (impossible with the defaults: t0 = 20 s >> 250 ns).
                The result is the accumulated noise at time t: aihwkit draws it once per
                evaluation time, frozen for all reads of that evaluation. xbar draws it
                afresh at every read by default (sampled at the column output, see
                xbar.runtime.analog); device.read_noise_mode = 'frozen' follows aihwkit
                (one `read` per device at chip preparation, xbar.runtime.chip.build_tiles).

RRAM (spec.model == 'rram', illustrative):
  programming   G_p = clip(G_t + s_p rel_p G_t xi, g_min, g_max)  (program-and-verify window,
                the final clamp of aihwkit's ReRamCMONoiseModel)
  relaxation    nu = s_d |N(nu_mean, nu_std)|, same power law as PCM (small nu = log-time decay)
  read          sigma = s_r rel_r |G|, time independent; result clamped at 0.

'ideal' devices, or a switched-off effect, return their input unchanged (zeros for nu/sigma).

Random-stream layout of `program_devices` (so that switching one effect off does not change
the realisation of the others): the given Generator spawns three children, used for
programming noise, drift exponents and faults, in that order. The chip's frozen read noise
(xbar.runtime.chip.build_tiles) is a fourth child spawned after these, so it leaves them as
they are in fresh mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from xbar.device_stats import (  # noqa: F401  (the closed forms, re-exported beside the sampler)
    G_REL_FLOOR, Q_S_DENOM_FLOOR, _f64, _statistical, pcm_drift_moments, pcm_prog_sigma, pcm_q_s,
    pcm_read_time_factor, read_sigma,
)

if TYPE_CHECKING:  # pragma: no cover
    from xbar.hardware import DeviceSpec, FaultSpec

# ------------------------------------------------------------------------------ effects


def program(g_target: np.ndarray | float, spec: "DeviceSpec", rng: np.random.Generator) -> np.ndarray:
    """Programmed conductances G_p (siemens) for targets G_t: one normal draw per device when on."""
    g = _f64(g_target)
    if not (_statistical(spec) and spec.prog_noise):
        return g.copy()
    xi = rng.standard_normal(g.shape)
    if spec.model == "pcm":
        g_p = g + spec.prog_noise_scale * pcm_prog_sigma(g, spec) * xi
        return np.maximum(g_p, 0.0)  # aihwkit: g_prog.clamp_(min=0.0), no upper clip
    g_p = g + spec.prog_noise_scale * spec.rram_prog_rel * np.abs(g) * xi
    return np.clip(g_p, spec.g_min, spec.g_max)


def drift_exponents(g_target: np.ndarray | float, spec: "DeviceSpec", rng: np.random.Generator) -> np.ndarray:
    """Per-device drift exponents nu >= 0 (dimensionless, drift_scale applied); zeros when off.

    PCM: nu = |N(mu_nu(g_t), sigma_nu(g_t))| from the target conductance (as aihwkit).
    RRAM: nu = |N(rram_nu_mean, rram_nu_std)|.
    """
    g = _f64(g_target)
    if not (_statistical(spec) and spec.drift):
        return np.zeros(g.shape)
    xi = rng.standard_normal(g.shape)
    if spec.model == "pcm":
        mu, sigma = pcm_drift_moments(g, spec)
    else:
        mu, sigma = spec.rram_nu_mean, spec.rram_nu_std
    return np.abs(mu + sigma * xi) * spec.drift_scale


def drift(g_prog: np.ndarray | float, nu: np.ndarray | float, t: float, t0: float = 20.0) -> np.ndarray:
    """G(t) = G_p ((t + t0)/t0)^-nu; t seconds since programming (>= 0), t0 > 0 the reference read."""
    if t < 0 or not np.isfinite(t):
        raise ValueError(f"drift time must be finite and >= 0 seconds, got {t!r}")
    if t0 <= 0:
        raise ValueError(f"drift reference time t0 must be > 0 seconds, got {t0!r}")
    g = _f64(g_prog)
    if t == 0:
        return g.copy()
    return g * ((t + t0) / t0) ** (-_f64(nu))


def read(
    g_now: np.ndarray | float,
    t: float,
    spec: "DeviceSpec",
    rng: np.random.Generator,
    g_ref: np.ndarray | float | None = None,
) -> np.ndarray:
    """G + read_sigma * xi, clamped at 0 (one normal draw per device when on)."""
    g = _f64(g_now)
    if not (_statistical(spec) and spec.read_noise):
        return g.copy()
    sigma = read_sigma(g, t, spec, g_ref)
    return np.maximum(g + sigma * rng.standard_normal(g.shape), 0.0)


def faults(
    shape: tuple[int, ...] | int, p0: float, p1: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint boolean masks (stuck at g_min, stuck at g_max) with probabilities p0, p1 per device.

    One uniform draw per device: u < p0 → stuck at g_min; p0 <= u < p0 + p1 → stuck at g_max.
    """
    if not (0.0 <= p0 <= 1.0 and 0.0 <= p1 <= 1.0 and p0 + p1 <= 1.0 + 1e-12):
        raise ValueError(f"fault probabilities must be in [0, 1] with p0 + p1 <= 1, got p0={p0!r}, p1={p1!r}")
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    if p0 == 0 and p1 == 0:
        return np.zeros(shape, dtype=bool), np.zeros(shape, dtype=bool)
    u = rng.random(shape)
    mask0 = u < p0
    mask1 = ~mask0 & (u < p0 + p1)
    return mask0, mask1


def apply_faults(
    g: np.ndarray, mask0: np.ndarray | None, mask1: np.ndarray | None, g_min: float, g_max: float
) -> np.ndarray:
    """Conductances with stuck devices overwritten by g_min / g_max (a copy)."""
    out = _f64(g).copy()
    if mask0 is not None:
        out[mask0] = g_min
    if mask1 is not None:
        out[mask1] = g_max
    return out


# ------------------------------------------------------------------------------ a programmed array


@dataclass(frozen=True)
class ProgrammedDevices:
    """The frozen state of a programmed array: what stays fixed across evaluation times."""

    g_target: np.ndarray  # S
    g_prog: np.ndarray  # S, after programming noise
    nu: np.ndarray  # drift exponents (zeros when drift is off)
    stuck_min: np.ndarray  # bool, stuck at g_min
    stuck_max: np.ndarray  # bool, stuck at g_max

    def at(self, t: float, spec: "DeviceSpec", rng: np.random.Generator | None = None) -> np.ndarray:
        """Conductances at t seconds after programming: drift, then read noise (needs rng when
        read noise is on), then stuck devices overwritten."""
        g = drift(self.g_prog, self.nu, t, spec.t0) if (_statistical(spec) and spec.drift) else self.g_prog
        if _statistical(spec) and spec.read_noise:
            if rng is None:
                raise ValueError("read noise is on: pass a numpy Generator")
            g = read(g, t, spec, rng, g_ref=self.g_prog)
        return apply_faults(g, self.stuck_min, self.stuck_max, spec.g_min, spec.g_max)


def program_devices(
    g_target: np.ndarray, spec: "DeviceSpec", fault_spec: "FaultSpec | None", rng: np.random.Generator
) -> ProgrammedDevices:
    """Program an array of target conductances: programming noise, drift exponents, faults.

    Uses three child Generators spawned from `rng` (programming, drift, faults), so the
    realisation of one effect does not depend on whether another is switched on.
    """
    g = _f64(g_target)
    rng_prog, rng_drift, rng_faults = rng.spawn(3)
    p0 = fault_spec.p_stuck_at_gmin if fault_spec is not None else 0.0
    p1 = fault_spec.p_stuck_at_gmax if fault_spec is not None else 0.0
    mask0, mask1 = faults(g.shape, p0, p1, rng_faults)
    return ProgrammedDevices(
        g_target=g,
        g_prog=program(g, spec, rng_prog),
        nu=drift_exponents(g, spec, rng_drift),
        stuck_min=mask0,
        stuck_max=mask1,
    )
