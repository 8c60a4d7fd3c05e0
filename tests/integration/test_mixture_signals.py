"""The mixture's probe signals for the baselines: inner-product alignment, task losses observed for any
strategy with target sets, and the final measurement in `dids_final.json`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llamafactory_dids.algorithms.registry import build_strategy
from llamafactory_dids.runtime.mixture import DomainMixture


class FakeProbe:
    """Stands in for GradientProbe: counts calls, returns fixed values."""

    def __init__(self, metric="inner_product"):
        self.metric = metric
        self.loss_calls = 0
        self.impact_calls = []

    def task_losses(self, every_row=False):
        self.loss_calls += 1
        self.every_row = every_row  # of the latest call
        return np.array([3.0 - 0.5 * self.loss_calls])

    def impact(self, update_index):
        self.impact_calls.append(update_index)
        return np.array([[1.0], [-1.0]])


def make_mixture(tmp_path, name, probe=None, **options):
    strategy = build_strategy(name, ["a", "b"], [10, 10], **options)
    mixture = DomainMixture(
        strategy,
        seed=0,
        on_exhausted="reshuffle",
        min_weight=0.0,
        output_dir=str(tmp_path),
        probe=probe,
        task_names=["t"] if probe is not None else [],
    )
    mixture.build_sampler(np.array([0] * 10 + [1] * 10), 20)
    return mixture


def test_static_strategy_observes_task_losses_and_writes_the_final_ones(tmp_path):
    mixture = make_mixture(tmp_path, "uniform", FakeProbe(metric="fim"))
    mixture.observe_initial_task_losses()
    record = mixture.update(5)
    assert record["task_losses"] == [2.0] and mixture.probe.impact_calls == []  # no gradient for uniform
    final = mixture.final_evaluation(7)
    written = json.loads((tmp_path / "dids_final.json").read_text())
    assert written == final and written["task_losses"] == [1.5] and written["step"] == 7
    assert mixture.probe.every_row  # the final losses: every loaded row, whatever dids_target_samples
    assert written["weights"] == [0.5, 0.5] and written["average_weights"] is None
    mixture.truncate_history(None)  # a new run in the same output_dir: the old final file goes
    assert not (tmp_path / "dids_final.json").exists()


def test_alignment_signal_needs_the_inner_product_probe(tmp_path):
    mixture = make_mixture(tmp_path, "dga", FakeProbe())
    record = mixture.update(5)
    assert mixture.probe.impact_calls == [1] and mixture.probe.loss_calls == 1  # observed for the record
    assert record["weights"][0] > 0.5 and record["terms"]["alignment"] == [[1.0], [-1.0]]
    assert mixture.final_evaluation(5)["average_weights"] == record["terms"]["iterate"]
    logged = mixture.log_metrics()
    assert (
        logged["dids/score/a"] == 1.0 and logged["dids/score/b"] == -1.0 and "dids/update_seconds" in logged
    )
    with pytest.raises(RuntimeError, match="needs gradient inner products"):
        make_mixture(tmp_path / "fim", "dga", FakeProbe(metric="fim")).update(10)


def test_no_probe_no_final_file(tmp_path):
    mixture = make_mixture(tmp_path, "uniform")
    assert mixture.final_evaluation(3) is None and not (tmp_path / "dids_final.json").exists()
    with pytest.raises(ValueError, match="task_names without a probe"):
        DomainMixture(
            build_strategy("uniform", ["a"], [1]),
            seed=0,
            on_exhausted="reshuffle",
            min_weight=0.0,
            output_dir=str(tmp_path),
            task_names=["t"],
        )
