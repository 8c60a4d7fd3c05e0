"""DGA, Dynamic Gradient Alignment (Fan, Grangier, Ablin 2024), online, as the paper's baseline (Table 1).

Role: the schedule step (repartition -> impact -> *schedule* -> sampler). The impact of training domain
D_i on task S_j is the gradient inner product of paper eq. 6,

    A_ij = < grad l(theta_t; D_i), grad l(theta_t; S_j) >          (the `alignment` signal, [k, m])

A step on D_i lowers S_j's loss by about eta <g_Di, g_Sj>, so DGA moves its mixture iterate along that
direction with an exponentiated-gradient (mirror descent) step, and samples from an exponential moving
average of the iterates, which is what keeps its weights stable:

    s_i     = 1/m sum_j A_ij                     alignment with the mean task loss (one task: A_i1)
    a_t     = a_{t-1} exp(eta s) / Z             mirror descent iterate (algorithms.mirror)
    p_t     = beta p_{t-1} + (1 - beta) a_t      EMA of the sampling weights

Adaptation (paper App. B.3): the specialised set of the original is the downstream observation sets; with
several tasks the outer objective is their mean loss. Gradients come from the same probe as DIDS (same
probed parameters and rows), with the inner product instead of the FIM metric. Keys: `dids_step_size`
(eta), `dids_ema_beta` (beta, the weight of the previous probabilities, as in DIDS eq. 16).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .mirror import MirrorDescentStrategy, exponentiated_step


def dga_update(
    weights: np.ndarray, iterate: np.ndarray, alignment: np.ndarray, *, step_size: float, beta: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One DGA update.

    Args:
        weights: [k] current sampling probabilities p_{t-1}.
        iterate: [k] mirror descent iterate a_{t-1}.
        alignment: [k, m] gradient inner products (eq. 6).

    Returns:
        (p_t [k], a_t [k], scores [k]).
    """
    scores = np.asarray(alignment, dtype=np.float64).mean(axis=1)
    new_iterate = exponentiated_step(iterate, scores, step_size)
    new = beta * np.asarray(weights, dtype=np.float64) + (1.0 - beta) * new_iterate
    return new / new.sum(), new_iterate, scores


class DGAStrategy(MirrorDescentStrategy):
    """Online gradient alignment with an EMA over the mirror descent iterates."""

    name = "dga"
    signals = frozenset({"alignment"})
    config_keys = {"step_size": "dids_step_size", "beta": "dids_ema_beta"}

    def __init__(
        self,
        domain_names: Sequence[str],
        domain_sizes: Sequence[int],
        *,
        step_size: float = 1.0,
        beta: float = 0.1,
        **options: Any,
    ):
        super().__init__(domain_names, domain_sizes, step_size=step_size, smoothing=0.0, **options)
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}.")
        self.beta = beta

    def update(self, weights: np.ndarray, signals: Mapping[str, Any]) -> np.ndarray:
        alignment = np.asarray(signals["alignment"], dtype=np.float64)
        new, self.alpha, scores = dga_update(
            weights, self.alpha, alignment, step_size=self.step_size, beta=self.beta
        )
        self.alpha_sum = self.alpha_sum + self.alpha
        self.num_steps += 1
        self.last_terms = {
            "alignment": alignment.tolist(),
            "scores": scores.tolist(),
            "iterate": self.alpha.tolist(),
        }
        return new
