"""Per-domain training loss reaches the logs when a mixture update falls on a logging step (issue 16, item 3)."""

from __future__ import annotations

import numpy as np
import torch

from llamafactory_dids.algorithms.registry import build_strategy
from llamafactory_dids.runtime.mixture import DomainMixture


def _mixture(tmp_path) -> DomainMixture:
    strategy = build_strategy("uniform", ["a", "b"], np.array([4, 4]))
    mixture = DomainMixture(
        strategy, seed=0, on_exhausted="reshuffle", min_weight=0.0, output_dir=str(tmp_path)
    )
    mixture.build_sampler(np.array([0, 0, 0, 0, 1, 1, 1, 1]), 8)
    # one micro-batch: row losses summed over tokens, 2 tokens per row -> mean 1.0 (a) and 3.0 (b)
    mixture.record_batch(torch.tensor([0, 1]), torch.tensor([2.0, 6.0]), torch.tensor([2, 2]))
    return mixture


def test_per_domain_loss_is_logged_without_an_update(tmp_path):
    logs = _mixture(tmp_path).log_metrics()
    assert logs["dids/loss/a"] == 1.0 and logs["dids/loss/b"] == 3.0


def test_per_domain_loss_is_logged_when_an_update_falls_on_the_logging_step(tmp_path):
    mixture = _mixture(tmp_path)
    mixture.update(step=10)  # MixtureCallback.on_step_end runs before Trainer.log at the same step
    logs = mixture.log_metrics()
    assert logs["dids/loss/a"] == 1.0 and logs["dids/loss/b"] == 3.0
    # the next log covers only what was trained after this one
    mixture.record_batch(torch.tensor([0]), torch.tensor([8.0]), torch.tensor([2]))
    logs = mixture.log_metrics()
    assert logs["dids/loss/a"] == 4.0 and "dids/loss/b" not in logs
