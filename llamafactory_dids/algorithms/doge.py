"""DoGE, Domain reweighting with Generalization Estimation (Fan, Pagliardini, Jaggi 2024), paper baseline.

Role: the schedule step (repartition -> impact -> *schedule* -> sampler). DoGE learns domain weights W by
a bilevel problem: the inner model takes the step theta_{t+1} = theta_t - mu sum_i W_i g_Di, and W is
moved to lower the outer (generalization) loss after that step. To first order, l_out(theta_{t+1}) =
l_out(theta_t) - mu sum_i W_i <g_Di, g_out>, so the gradient w.r.t. W_i is -mu <g_Di, g_out> and the
mirror descent (exponentiated-gradient) update of the weights is

    s_i  = <g_Di, g_out> = 1/m sum_j A_ij          A: the `alignment` signal, eq. 6 inner products [k, m]
    W_t  = W_{t-1} exp(eta s) / Z                  (algorithms.mirror; the inner lr is folded into eta)

and the output of the proxy run is the average W_bar = 1/T sum_t W_t, used as static weights for the
final training run.

Adaptation (paper App. B.3): the out-of-domain target of DoGE is the downstream observation sets (their
mean loss when there are several). Two ways to run it:
- online: `dids_strategy: doge` samples the training model's data from W_t directly (the proxy is the
  model being trained; sampling by W replaces DoGE's weighted gradient, equal in expectation);
- offline (the original protocol): run `doge` on a proxy model / small budget, then
  `llamafactory-dids export <output_dir> --average steps` writes the time average of the weights in force
  (with one update per step, DoGE's W_bar) as `dids_strategy: static` keys.
Differences to DGA: no EMA (the sampled weights are the iterate itself) and the averaged output.
Keys: `dids_step_size` (eta).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .mirror import MirrorDescentStrategy


class DoGEStrategy(MirrorDescentStrategy):
    """Mirror descent on gradient alignment; samples from the iterate, reports the running average."""

    name = "doge"
    signals = frozenset({"alignment"})
    config_keys = {"step_size": "dids_step_size"}

    def update(self, weights: np.ndarray, signals: Mapping[str, Any]) -> np.ndarray:
        alignment = np.asarray(signals["alignment"], dtype=np.float64)
        scores = alignment.mean(axis=1)
        new = self.step(scores)
        self.last_terms = {
            "alignment": alignment.tolist(),
            "scores": scores.tolist(),
            "average_weights": self.average.tolist(),
        }
        return new
