"""Velocitune (Luo et al. 2024): learning velocity towards target losses, adapted to downstream sets.

Role: the schedule step (repartition -> impact -> *schedule* -> sampler). Velocitune favours domains that
learn slowly relative to how far they can go. Each domain has an initial loss l_0, a target loss l* that
a Chinchilla-style scaling law fitted on a proxy run predicts for the full budget, and a learning
velocity; the weights take a Group-DRO-style exponentiated step on the velocities:

    V_i     = (l_t,i - l*_i) / (l_0,i - l*_i)          1 at the start, 0 at the target
    l*_i    = E + B n^-b  evaluated at the run's budget n (fitted with scipy.optimize.curve_fit)
    alpha_t = (1 - c) alpha_{t-1} exp(eta V) / Z + c u

Adaptation (paper App. B.3: "observe loss over downstream domains"). The losses are those of the
downstream observation sets, so velocities are per task, V_j, and each task's velocity is credited to the
training domains by the share of the first-order reduction of that task's loss they give, as for DoReMi:

    v_i = sum_j Ahat_ij V_j        Ahat = impact.alignment_shares(A), A the eq. 6 inner products

l_0 is this run's first task-loss measurement (before any step). l* comes from a reference run of this
plugin (`dids_reference_dir`, e.g. a `uniform` run on a smaller budget, Velocitune's proxy run): its task
losses against samples seen are fitted with `scaling_law_target` and evaluated at this run's budget; with
fewer than 3 measured points, or a failed fit, the reference's last loss is the target. A task whose
initial loss is already at or below its target has velocity 0. Keys: `dids_step_size` (eta),
`dids_smoothing` (c), `dids_reference_dir`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .mirror import MirrorDescentStrategy

MIN_POINTS_FOR_SCALING_FIT = 3


def _power_law(n: np.ndarray, e: float, b: float, beta: float) -> np.ndarray:
    return e + b * np.power(n, -beta)


def scaling_law_target(samples: Sequence[float], losses: Sequence[float], at: float) -> tuple[float, bool]:
    """Fit L(n) = E + B n^-beta to (samples seen, loss) points and evaluate it at `at` samples.

    Points with n <= 0 or a non-finite loss are ignored. Returns (target, fitted?); without a usable fit
    the target is the loss of the (last) point with the most samples.

    Raises:
        ValueError: if no point has n > 0 and a finite loss.
    """
    n = np.asarray(samples, dtype=np.float64)
    y = np.asarray(losses, dtype=np.float64)
    keep = (n > 0) & np.isfinite(y)
    n, y = n[keep], y[keep]
    if n.size == 0:
        raise ValueError("no measured loss after training started: cannot estimate a target loss.")
    fallback = float(y[n.size - 1 - np.argmax(n[::-1])])  # the last of the points with the most samples
    if np.unique(n).size < MIN_POINTS_FOR_SCALING_FIT:
        return fallback, False
    from scipy.optimize import curve_fit

    scale = float(n.max())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            (e, b, beta), _ = curve_fit(
                _power_law,
                n / scale,  # fit on n / max(n): B stays O(loss) whatever the sample counts
                y,
                p0=(float(y.min()) * 0.9, max(float(y.max() - y.min()), 1e-3), 0.5),
                bounds=([0.0, 0.0, 1e-3], [np.inf, np.inf, 5.0]),
                maxfev=5000,
            )
    except (RuntimeError, ValueError):
        return fallback, False
    target = float(_power_law(np.array([at / scale]), e, b, beta)[0])
    if not math.isfinite(target):
        return fallback, False
    return target, True


def learning_velocity(current: np.ndarray, initial: np.ndarray, target: np.ndarray) -> np.ndarray:
    """[m] V = (L_t - L*) / (L_0 - L*); 0 where L_0 <= L* (nothing left to learn) or a loss is non-finite."""
    current, initial, target = (np.asarray(x, dtype=np.float64) for x in (current, initial, target))
    gap = initial - target
    ok = (gap > 1e-12) & np.isfinite(current) & np.isfinite(gap)
    return np.where(ok, (current - target) / np.where(ok, gap, 1.0), 0.0)


class VelocituneStrategy(MirrorDescentStrategy):
    """Velocity of the downstream task losses towards scaling-law targets, exponentiated-gradient weights."""

    name = "velocitune"
    signals = frozenset({"alignment", "task_loss_history"})
    config_keys = {"step_size": "dids_step_size", "smoothing": "dids_smoothing"}
    needs_reference = True

    @classmethod
    def reference_options(cls, reference: Any, planned_samples: int) -> dict[str, Any]:
        """Each task's target loss: the reference run's scaling law evaluated at this run's budget."""
        losses = np.asarray(reference.losses, dtype=np.float64)
        targets = [
            scaling_law_target(reference.samples, losses[:, j], planned_samples)[0]
            for j in range(losses.shape[1])
        ]
        return {"target_losses": targets}

    def __init__(
        self,
        domain_names: Sequence[str],
        domain_sizes: Sequence[int],
        *,
        target_losses: Sequence[float],
        step_size: float = 1.0,
        smoothing: float = 1e-3,
        **options: Any,
    ):
        super().__init__(domain_names, domain_sizes, step_size=step_size, smoothing=smoothing, **options)
        self.target_losses = self.task_vector(target_losses, "target_losses")

    def update(self, weights: np.ndarray, signals: Mapping[str, Any]) -> np.ndarray:
        alignment = np.asarray(signals["alignment"], dtype=np.float64)
        history = np.asarray(signals["task_loss_history"], dtype=np.float64)
        if history.ndim != 2 or history.shape[1] != self.target_losses.size:
            raise ValueError(
                f"task_loss_history must be [t, {self.target_losses.size}], got {history.shape}."
            )
        velocity = learning_velocity(history[-1], history[0], self.target_losses)
        terms = self.step_by_tasks(alignment, velocity)
        self.last_terms = {
            **terms,
            "initial_losses": history[0].tolist(),
            "target_losses": self.target_losses.tolist(),
            "velocity": velocity.tolist(),
        }
        return self.alpha.copy()
