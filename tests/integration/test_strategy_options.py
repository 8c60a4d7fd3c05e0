"""Strategies declare their `dids_*` keys; one generic function builds every strategy from the config."""

from __future__ import annotations

import numpy as np
import pytest
from test_runs import DOMAINS, write_run

from llamafactory_dids.algorithms.registry import STRATEGY_CLASSES, build_strategy
from llamafactory_dids.algorithms.strategies import MixingStrategy
from llamafactory_dids.algorithms.velocitune import scaling_law_target
from llamafactory_dids.config import DIDSConfigError, parse_dids_config
from llamafactory_dids.integration.trainer import strategy_options
from llamafactory_dids.runtime.runs import read_reference

DYNAMIC = {"dids_target_datasets": ["a"], "dids_num_updates": 4}


class Tilt(MixingStrategy):
    """A toy rule: the whole strategy, its keys and its registration are these lines and one registry line."""

    name = "tilt"
    dynamic = True
    signals = frozenset({"domain_train_loss"})
    config_keys = {"gain": "dids_step_size"}

    def __init__(self, domain_names, domain_sizes, *, gain: float = 1.0, **options):
        super().__init__(domain_names, domain_sizes, **options)
        self.gain = gain

    def initial_weights(self):
        return np.full(self.num_domains, 1.0 / self.num_domains)

    def update(self, weights, signals):
        tilted = weights * np.exp(self.gain * np.nan_to_num(signals["domain_train_loss"]))
        return tilted / tilted.sum()


@pytest.fixture
def tilt(monkeypatch):
    monkeypatch.setitem(STRATEGY_CLASSES, "tilt", Tilt)
    return Tilt


def test_a_registered_toy_strategy_is_validated_and_built_from_its_declared_keys(tilt):
    with pytest.raises(DIDSConfigError, match=r"`dids_strategy: tilt` needs `dids_target_datasets`"):
        parse_dids_config({"dids_strategy": "tilt"})  # dynamic: the config knows it from the class
    cfg = parse_dids_config({"dids_strategy": "tilt", "dids_step_size": 0.5, **DYNAMIC})
    assert strategy_options(cfg, DOMAINS, 100) == {"gain": 0.5}
    strategy = build_strategy("tilt", DOMAINS, [3, 1], **strategy_options(cfg, DOMAINS, 100))
    new = strategy.update(
        strategy.initial_weights(), {"domain_train_loss": np.array([np.log(3.0) / 0.5, 0.0])}
    )
    np.testing.assert_allclose(new, [0.75, 0.25])
    # unset, the key's config default (1.0 for dids_step_size) is what the constructor gets
    assert strategy_options(parse_dids_config({"dids_strategy": "tilt", **DYNAMIC}), DOMAINS, 100) == {
        "gain": 1.0
    }


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"dids_strategy": "static", "dids_static_weights": [1, 3]}, {"weights": [1.0, 3.0]}),
        ({"dids_strategy": "dga", **DYNAMIC}, {"step_size": 1.0}),  # beta unset: DGA's own default
        ({"dids_strategy": "dga", "dids_ema_beta": 0.3, **DYNAMIC}, {"step_size": 1.0, "beta": 0.3}),
        ({"dids_strategy": "doge", "dids_step_size": 2.0, **DYNAMIC}, {"step_size": 2.0}),
        ({"dids_strategy": "uniform"}, {}),
    ],
)
def test_declared_keys_feed_the_constructors(keys, expected):
    cfg = parse_dids_config(keys)
    assert strategy_options(cfg, DOMAINS, 100) == expected
    build_strategy(cfg.dids_strategy, DOMAINS, [3, 1], **strategy_options(cfg, DOMAINS, 100))


def test_dids_components_are_passed_only_when_set():
    cfg = parse_dids_config(
        {"dids_strategy": "dids", "dids_temperature": 0.5, "dids_ema_beta": 0.2, **DYNAMIC}
    )
    options = strategy_options(cfg, DOMAINS, 100)
    assert options == {
        "variant": "directional",
        "temperature": 0.5,
        "beta": 0.2,
        "evidence_decay": 0.85,
        "use_trajectory": True,
    }
    strategy = build_strategy("dids", DOMAINS, [3, 1], **options)
    assert strategy.resolved["temperature"] == 0.5 and strategy.resolved["beta"] == 0.2


def test_reference_strategies_read_the_reference_run(tmp_path):
    run = write_run(tmp_path / "uniform")
    reference = read_reference(run, DOMAINS, ["b", "a"])
    base = {"dids_reference_dir": str(run), "dids_target_datasets": ["b", "a"], "dids_num_updates": 4}
    doremi = strategy_options(parse_dids_config({"dids_strategy": "doremi", **base}), DOMAINS, 100)
    np.testing.assert_allclose(doremi.pop("reference_losses"), [4.4, 2.9])
    assert doremi == {"step_size": 1.0}
    velocitune = strategy_options(parse_dids_config({"dids_strategy": "velocitune", **base}), DOMAINS, 40)
    expected = [scaling_law_target(reference.samples, reference.losses[:, j], 40)[0] for j in range(2)]
    np.testing.assert_allclose(velocitune.pop("target_losses"), expected)
    assert velocitune == {"step_size": 1.0}
