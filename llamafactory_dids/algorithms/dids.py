"""The DIDS update rule (paper eq. 13-16, Algorithm 1).

Role: the schedule step (repartition -> impact -> *schedule* -> sampler). Given the FIM-guided impact
distances I (k domains x m tasks, eq. 12) and each task's loss history on its observation samples:

    Î        = normalise_impacts(I)                         per task, >= 0, sums to 1 over domains
    l_c, l_p = current and potential improvement per task   (eq. 14-15, algorithms.trajectory)
    U_i      = sum_j Î_ij (l_c,j + l_p,j) / p_{t-1,i}        importance-corrected utility (eq. 13, 16)
    p̂        = softmax(U / temperature)  or  clamp(U, 0) / sum (the reference code's rule)
    p_t      = beta p_{t-1} + (1 - beta) p̂                  EMA (eq. 16; paper beta = 0.1)

Ablations (paper Table 2): `use_trajectory=False` drops l_p (DIDS-LT); the caller's impact metric
`inner_product` (DIDS-FIM) passes similarities (`impact_kind="similarity"`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .impact import normalise_impacts
from .strategies import MixingStrategy
from .trajectory import current_improvement, potential_improvement


def softmax(x: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(x, dtype=np.float64) / temperature
    z = z - z.max()
    e = np.exp(z)
    return e / e.sum()


def clamp_normalise(x: np.ndarray) -> np.ndarray:
    z = np.clip(np.nan_to_num(np.asarray(x, dtype=np.float64)), 0.0, None)
    total = z.sum()
    return z / total if total > 0 else np.full_like(z, 1.0 / z.size)


def dids_update(
    weights: np.ndarray,
    impact: np.ndarray,
    task_loss_history: Sequence[Sequence[float]],
    *,
    beta: float = 0.1,
    normaliser: str = "softmax",
    temperature: float = 1.0,
    use_trajectory: bool = True,
    impact_kind: str = "distance",
    horizon: float = 1.0,
    min_probability: float = 1e-8,
) -> tuple[np.ndarray, dict[str, Any]]:
    """One DIDS update. Returns the new probabilities [k] and the intermediate terms (for history).

    Args:
        weights: [k] current probabilities p_{t-1}.
        impact: [k, m] eq. 12 distances (or similarities with impact_kind="similarity").
        task_loss_history: per update, the [m] task losses (oldest first, current last).
    """
    p = np.asarray(weights, dtype=np.float64)
    hist = np.asarray(task_loss_history, dtype=np.float64)
    if hist.ndim != 2 or hist.shape[1] != impact.shape[1]:
        raise ValueError(f"task_loss_history must be [t, {impact.shape[1]}], got {hist.shape}.")
    norm_impact = normalise_impacts(impact, kind=impact_kind)
    l_c = np.array([current_improvement(hist[:, j]) for j in range(hist.shape[1])])
    if use_trajectory:
        fitted = [potential_improvement(hist[:, j], horizon) for j in range(hist.shape[1])]
        l_p = np.array([value for value, _ in fitted])
        fit_ok = [ok for _, ok in fitted]
    else:
        l_p, fit_ok = np.zeros_like(l_c), [False] * len(l_c)
    utility = norm_impact @ (l_c + l_p) / np.maximum(p, min_probability)
    utility = np.nan_to_num(utility, nan=0.0, posinf=0.0, neginf=0.0)
    if normaliser == "softmax":
        p_hat = softmax(utility, temperature)
    elif normaliser == "clamp":
        p_hat = clamp_normalise(utility)
    else:
        raise ValueError(f"normaliser must be 'softmax' or 'clamp', got {normaliser!r}.")
    new = beta * p + (1.0 - beta) * p_hat
    new = new / new.sum()
    terms = {
        "impact": impact.tolist(),
        "impact_normalised": norm_impact.tolist(),
        "l_c": l_c.tolist(),
        "l_p": l_p.tolist(),
        "trajectory_fitted": fit_ok,
        "utility": utility.tolist(),
        "p_hat": p_hat.tolist(),
    }
    return new, terms


class DIDSStrategy(MixingStrategy):
    """Domain Impact-aware Data Sampling: impact x loss trajectory, EMA (paper Algorithm 1)."""

    name = "dids"
    dynamic = True
    signals = frozenset({"impact", "task_loss_history"})

    def __init__(
        self,
        domain_names: Sequence[str],
        domain_sizes: Sequence[int],
        *,
        beta: float = 0.1,
        normaliser: str = "softmax",
        temperature: float = 1.0,
        use_trajectory: bool = True,
        impact_kind: str = "distance",
        **options: Any,
    ):
        super().__init__(domain_names, domain_sizes, **options)
        self.beta = beta
        self.normaliser = normaliser
        self.temperature = temperature
        self.use_trajectory = use_trajectory
        self.impact_kind = impact_kind
        self.last_terms: dict[str, Any] = {}

    def initial_weights(self) -> np.ndarray:
        return np.full(self.num_domains, 1.0 / self.num_domains)  # Algorithm 1 starts from uniform

    def update(self, weights: np.ndarray, signals: Mapping[str, Any]) -> np.ndarray:
        new, self.last_terms = dids_update(
            weights,
            np.asarray(signals["impact"], dtype=np.float64),
            signals["task_loss_history"],
            beta=self.beta,
            normaliser=self.normaliser,
            temperature=self.temperature,
            use_trajectory=self.use_trajectory,
            impact_kind=self.impact_kind,
        )
        return new
