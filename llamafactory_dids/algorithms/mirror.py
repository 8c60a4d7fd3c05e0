"""Mirror descent on the probability simplex: the weight update shared by the published baselines.

Role: the schedule step (repartition -> impact -> *schedule* -> sampler) of the baseline strategies.
DoReMi (Xie et al. 2024, Algorithm 1), DoGE (Fan, Pagliardini, Jaggi 2024), DGA (Fan, Grangier, Ablin
2024) and Velocitune (Luo et al. 2024) all move their domain weights with the exponentiated-gradient step,
i.e. mirror descent under the KL divergence:

    alpha_t = alpha_{t-1} * exp(eta * s_t) / sum_i alpha_{t-1,i} exp(eta * s_t,i)

where s_t is the per-domain score the method defines (excess loss, gradient alignment, velocity).
DoReMi and Velocitune then mix with the uniform distribution, alpha <- (1 - c) alpha + c / k. The
offline methods (DoReMi, DoGE) output the average of the iterates, 1/T sum_t alpha_t.
`MirrorDescentStrategy` keeps the iterate and that running average, and their resume state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .impact import alignment_shares
from .strategies import MixingStrategy


def exponentiated_step(weights: np.ndarray, scores: np.ndarray, step_size: float) -> np.ndarray:
    """One exponentiated-gradient step, computed in log space (no overflow for large eta * s).

    Args:
        weights: float [k], a probability vector; zero entries stay zero.
        scores: float [k], the ascent direction (non-finite entries count as 0).
        step_size: eta > 0.

    Returns:
        float64 [k] summing to 1.
    """
    w = np.asarray(weights, dtype=np.float64)
    s = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if w.shape != s.shape:
        raise ValueError(f"weights {w.shape} and scores {s.shape} differ in shape.")
    with np.errstate(divide="ignore"):
        logits = np.where(w > 0, np.log(np.where(w > 0, w, 1.0)) + step_size * s, -np.inf)
    if not np.isfinite(logits).any():
        raise ValueError("every weight is zero; nothing to update.")
    logits = logits - logits[np.isfinite(logits)].max()
    out = np.exp(logits)
    return out / out.sum()


def smooth(weights: np.ndarray, smoothing: float) -> np.ndarray:
    """(1 - c) w + c u with u uniform (DoReMi's smoothing; c = 0 leaves w unchanged)."""
    w = np.asarray(weights, dtype=np.float64)
    return (1.0 - smoothing) * w + smoothing / w.size


class MirrorDescentStrategy(MixingStrategy):
    """Base of the baselines: an iterate alpha on the simplex (starts uniform) and its running average.

    Subclasses compute per-domain scores in `update` and call `step`; those with a per-task signal (DoReMi's
    excess loss, Velocitune's velocity) call `step_by_tasks`, which credits it to the domains first.
    `average` is the offline output of DoReMi/DoGE (the mean of alpha_1..alpha_T), reported in
    `history.jsonl` terms and `dids_final.json`.
    """

    dynamic = True

    def __init__(
        self,
        domain_names: Sequence[str],
        domain_sizes: Sequence[int],
        *,
        step_size: float = 1.0,
        smoothing: float = 0.0,
        **options: Any,
    ):
        super().__init__(domain_names, domain_sizes, **options)
        if step_size <= 0:
            raise ValueError(f"step_size must be positive, got {step_size}.")
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}.")
        self.step_size = step_size
        self.smoothing = smoothing
        self.alpha = np.full(self.num_domains, 1.0 / self.num_domains)
        self.alpha_sum = np.zeros(self.num_domains)
        self.num_steps = 0

    def initial_weights(self) -> np.ndarray:
        return np.full(self.num_domains, 1.0 / self.num_domains)

    @property
    def average(self) -> np.ndarray:
        """[k] mean of the iterates so far (the initial uniform weights before any step)."""
        return self.alpha_sum / self.num_steps if self.num_steps else self.initial_weights()

    def log_scalars(self, task_names: Sequence[str]) -> dict[str, float]:
        """The per-domain score of the last update (alignment, excess loss or velocity)."""
        del task_names
        scores = self.last_terms.get("scores")
        if scores is None:
            return {}
        return {f"dids/score/{n}": round(float(v), 6) for n, v in zip(self.domain_names, scores, strict=True)}

    @staticmethod
    def task_vector(values: Sequence[float], name: str) -> np.ndarray:
        """`values` as a finite float64 [m] vector (one per task); ValueError naming `name` otherwise."""
        out = np.asarray(values, dtype=np.float64)
        if out.ndim != 1 or not np.isfinite(out).all():
            raise ValueError(f"{name} must be finite [m], got {values!r}.")
        return out

    def step_by_tasks(self, alignment: np.ndarray, per_task: np.ndarray) -> dict[str, Any]:
        """Credit a per-task signal [m] to the domains by their alignment shares (`impact.alignment_shares`:
        each task's signal goes to the domains whose step lowers its loss), take the step, and return the
        terms every such baseline logs (`alignment`, `alignment_shares`, `scores`, `average_weights`)."""
        shares = alignment_shares(alignment)
        scores = shares @ per_task
        self.step(scores)
        return {
            "alignment": np.asarray(alignment).tolist(),
            "alignment_shares": shares.tolist(),
            "scores": scores.tolist(),
            "average_weights": self.average.tolist(),
        }

    def step(self, scores: np.ndarray) -> np.ndarray:
        """alpha <- smooth(exponentiated_step(alpha, scores)); updates the running average; returns alpha."""
        self.alpha = smooth(exponentiated_step(self.alpha, scores, self.step_size), self.smoothing)
        self.alpha_sum = self.alpha_sum + self.alpha
        self.num_steps += 1
        return self.alpha.copy()

    def state_dict(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha.tolist(),
            "alpha_sum": self.alpha_sum.tolist(),
            "num_steps": self.num_steps,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not state:
            return
        alpha = np.asarray(state["alpha"], dtype=np.float64)
        if alpha.shape != (self.num_domains,):
            raise ValueError(
                f"strategy state has {alpha.size} domain weights, this run has {self.num_domains} domains."
            )
        self.alpha = alpha
        self.alpha_sum = np.asarray(state["alpha_sum"], dtype=np.float64)
        self.num_steps = int(state["num_steps"])
