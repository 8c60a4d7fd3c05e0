"""DoReMi (Xie et al. 2024, Algorithm 1) adapted to downstream observation sets, as the paper's baseline.

Role: the schedule step (repartition -> impact -> *schedule* -> sampler). DoReMi trains a proxy with
Group DRO against a fixed reference model: per domain, the excess loss of the proxy over the reference,
clipped at 0, drives an exponentiated-gradient step on the domain weights, which are then smoothed
towards uniform; the averaged weights are the output:

    lambda_i = max(l_theta(D_i) - l_ref(D_i), 0)               excess loss (per token)
    alpha_t  = (1 - c) alpha_{t-1} exp(eta lambda) / Z + c u   (eta = 1, c = 1e-3 in the original)
    output   = 1/T sum_t alpha_t

Adaptation (paper App. B.3: "computing excess loss over downstream domains"). The excess loss is
measured on the downstream observation sets instead of the training domains:

    e_j      = max(L_j(theta_t) - L_j^ref, 0)                  per task, on its observation rows
    lambda_i = sum_j Ahat_ij e_j                               credited to the training domains

Ahat = `impact.alignment_shares(A)`, with A the eq. 6 gradient inner products (the `alignment` signal):
each task's excess loss goes to the domains whose gradient step lowers that task's loss, in proportion
to the first-order reduction max(<g_Di, g_Sj>, 0). Something must map m task losses to k domain
weights; the gradient alignment is the coupling the paper's other baselines (DoGE, DGA) already use.
L^ref are the final task losses of a reference run of this plugin (e.g. `dids_strategy: uniform` with the
same data and `dids_target_datasets`), read from its output directory (`dids_reference_dir`): DoReMi's
reference is a fully trained model, fixed during the run. The training run samples from alpha_t
(online); `llamafactory-dids export <output_dir>` writes the time-averaged weights for a `static` run (the
original offline protocol). Keys: `dids_step_size` (eta), `dids_smoothing` (c), `dids_reference_dir`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .mirror import MirrorDescentStrategy


def excess_losses(task_losses: np.ndarray, reference_losses: np.ndarray) -> np.ndarray:
    """[m] max(L_j - L_j^ref, 0); non-finite losses give 0."""
    diff = np.asarray(task_losses, dtype=np.float64) - np.asarray(reference_losses, dtype=np.float64)
    return np.clip(np.nan_to_num(diff, nan=0.0, posinf=0.0, neginf=0.0), 0.0, None)


class DoReMiStrategy(MirrorDescentStrategy):
    """Excess loss over the downstream sets against a reference run, exponentiated-gradient weights."""

    name = "doremi"
    signals = frozenset({"alignment", "task_loss_history"})
    config_keys = {"step_size": "dids_step_size", "smoothing": "dids_smoothing"}
    needs_reference = True

    @classmethod
    def reference_options(cls, reference: Any, planned_samples: int) -> dict[str, Any]:
        """The reference run's final task losses (DoReMi's reference model)."""
        del planned_samples
        return {"reference_losses": reference.final_losses}

    def __init__(
        self,
        domain_names: Sequence[str],
        domain_sizes: Sequence[int],
        *,
        reference_losses: Sequence[float],
        step_size: float = 1.0,
        smoothing: float = 1e-3,
        **options: Any,
    ):
        super().__init__(domain_names, domain_sizes, step_size=step_size, smoothing=smoothing, **options)
        self.reference_losses = self.task_vector(reference_losses, "reference_losses")

    def update(self, weights: np.ndarray, signals: Mapping[str, Any]) -> np.ndarray:
        alignment = np.asarray(signals["alignment"], dtype=np.float64)
        current = np.asarray(signals["task_loss_history"], dtype=np.float64)[-1]
        if current.shape != self.reference_losses.shape or alignment.shape[1] != current.size:
            raise ValueError(
                f"{current.size} task losses and a [{alignment.shape}] alignment for "
                f"{self.reference_losses.size} reference losses."
            )
        excess = excess_losses(current, self.reference_losses)
        terms = self.step_by_tasks(alignment, excess)
        self.last_terms = {
            **terms,
            "reference_losses": self.reference_losses.tolist(),
            "excess_loss": excess.tolist(),
        }
        return self.alpha.copy()
