"""Downstream loss trajectory terms (paper section 4.3, eq. 14-15).

Role: part of the schedule step (repartition -> impact -> *schedule* -> sampler). For each task, the loss
on its fixed observation samples is recorded at every update: L_0, ..., L_t (index = update number).

    l_c = L_{t-1} - L_t                       current improvement
    L(t) = a exp(-b t) + c                    fitted with scipy.optimize.curve_fit (eq. 14)
    l_p = L(t) - L(t + horizon)               predicted further improvement (eq. 15, both on the fit)

`horizon` is in updates (1 = the next update). Short histories and failed or non-finite fits fall back
to the linear estimate l_p = l_c; nothing returned is NaN or infinite.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

MIN_POINTS_FOR_FIT = 4


def current_improvement(history: Sequence[float]) -> float:
    """l_c = L_{t-1} - L_t; 0 with fewer than two finite points."""
    if len(history) < 2 or not (math.isfinite(history[-1]) and math.isfinite(history[-2])):
        return 0.0
    return float(history[-2] - history[-1])


def exponential_decay(t: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    """L(t) = a e^{-bt} + c (eq. 14) at t [n] (what reports draw with the fitted parameters)."""
    return a * np.exp(-b * t) + c


def fit_exponential_decay(history: Sequence[float]) -> tuple[float, float, float] | None:
    """Fit L(t) = a e^{-bt} + c to the history (t = 0..n-1). None if too short or the fit fails."""
    y = np.asarray(history, dtype=np.float64)
    if y.size < MIN_POINTS_FOR_FIT or not np.isfinite(y).all():
        return None
    from scipy.optimize import curve_fit

    t = np.arange(y.size, dtype=np.float64)
    span = float(y.max() - y.min())
    p0 = (max(span, 1e-3), 0.5, float(y.min()))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            params, _ = curve_fit(
                exponential_decay,
                t,
                y,
                p0=p0,
                bounds=([-np.inf, 0.0, -np.inf], [np.inf, 50.0, np.inf]),
                maxfev=2000,
            )
    except (RuntimeError, ValueError):
        return None
    if not np.isfinite(params).all():
        return None
    return float(params[0]), float(params[1]), float(params[2])


def potential_improvement(history: Sequence[float], horizon: float = 1.0) -> tuple[float, bool]:
    """l_p = L(t) - L(t + horizon) on the fitted curve. Returns (l_p, fitted?); falls back to l_c."""
    fallback = current_improvement(history)
    params = fit_exponential_decay(history)
    if params is None:
        return fallback, False
    t_now = len(history) - 1
    now, later = exponential_decay(np.array([t_now, t_now + horizon], dtype=np.float64), *params)
    value = float(now - later)
    if not math.isfinite(value):
        return fallback, False
    return value, True
