"""Closed-form statistics of the device models (standard deviations, drift moments), in siemens.

The runtime samples chips from these (xbar.runtime.devices, whose docstring gives the
models and their sources); the converter uses them to place weights where the target
device is least noisy (analog floating point). Pure functions of a DeviceSpec.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from xbar.hardware import DeviceSpec

#: aihwkit _ZERO_CLIP: g/g_max is clipped to this before the logarithm of the drift fit.
G_REL_FLOOR = 1e-7
#: aihwkit: (g^0.65) is clipped to this before dividing in Q_s.
Q_S_DENOM_FLOOR = 1e-3
_US = 1e-6  # siemens per microsiemens


def _f64(x: np.ndarray | float) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _statistical(spec: "DeviceSpec") -> bool:
    return spec.model in ("pcm", "rram")


# ------------------------------------------------------------------------------ PCM closed forms


def pcm_prog_sigma(g_target: np.ndarray | float, spec: "DeviceSpec") -> np.ndarray:
    """PCM programming-noise standard deviation in siemens (before prog_noise_scale)."""
    g = _f64(g_target) / spec.g_max
    poly_us = spec.pcm_prog_c0 + spec.pcm_prog_c1 * g + spec.pcm_prog_c2 * g * g
    return np.maximum(poly_us, 0.0) * _US * (spec.g_max / spec.pcm_g_ref)


def pcm_drift_moments(g_target: np.ndarray | float, spec: "DeviceSpec") -> tuple[np.ndarray, np.ndarray]:
    """(mu_nu, sigma_nu) of the Gaussian that is folded (|.|) to give the PCM drift exponent."""
    g = np.maximum(np.abs(_f64(g_target)) / spec.g_max, G_REL_FLOOR)
    ln_g = np.log(g)
    mu = np.clip(spec.pcm_nu_mu_slope * ln_g + spec.pcm_nu_mu_offset, spec.pcm_nu_mu_min, spec.pcm_nu_mu_max)
    sigma = np.clip(
        spec.pcm_nu_sigma_slope * ln_g + spec.pcm_nu_sigma_offset, spec.pcm_nu_sigma_min, spec.pcm_nu_sigma_max
    )
    return mu, sigma


def pcm_q_s(g_ref: np.ndarray | float, spec: "DeviceSpec") -> np.ndarray:
    """PCM read-noise coefficient Q_s(g) = min(q0 / max(g^exponent, 1e-3), q_max), g = |G|/g_max."""
    g = np.abs(_f64(g_ref)) / spec.g_max
    denom = np.maximum(g**spec.pcm_read_exponent, Q_S_DENOM_FLOOR)
    return np.minimum(spec.pcm_read_q0 / denom, spec.pcm_read_q_max)


def pcm_read_time_factor(t: float, spec: "DeviceSpec") -> float:
    """sqrt(ln((t + t0 + t_read)/(2 t_read))), the log's argument clipped at 1 (see module doc)."""
    arg = (float(t) + spec.t0 + spec.t_read) / (2.0 * spec.t_read)
    return float(np.sqrt(np.log(max(arg, 1.0))))


def read_sigma(
    g_now: np.ndarray | float, t: float, spec: "DeviceSpec", g_ref: np.ndarray | float | None = None
) -> np.ndarray:
    """Standard deviation (siemens) of the read noise of devices at conductance g_now at time t.

    g_ref: the conductance Q_s is evaluated at (PCM); aihwkit uses the programmed G_p while
    scaling by the drifted |G(t)|. Defaults to g_now. Zeros when off.
    """
    g = _f64(g_now)
    if not (_statistical(spec) and spec.read_noise):
        return np.zeros(g.shape)
    if spec.model == "pcm":
        q = pcm_q_s(g if g_ref is None else g_ref, spec)
        return spec.read_noise_scale * np.abs(g) * q * pcm_read_time_factor(t, spec)
    return spec.read_noise_scale * spec.rram_read_rel * np.abs(g)
