"""Mixing strategies: the shared interface and the invariants of the static rules."""

from __future__ import annotations

import numpy as np
import pytest

from llamafactory_dids.algorithms.registry import STRATEGY_CLASSES, build_strategy
from llamafactory_dids.algorithms.strategies import (
    KNOWN_SIGNALS,
    MixingStrategy,
    normalise,
    resolve_static_weights,
)

NAMES = ["code", "math", "chat"]
SIZES = [600, 300, 100]


def test_uniform():
    s = build_strategy("uniform", NAMES, SIZES)
    np.testing.assert_allclose(s.initial_weights(), [1 / 3] * 3)
    assert s.signals == frozenset() and not s.dynamic


def test_natural_is_proportional_to_sizes():
    s = build_strategy("natural", NAMES, SIZES)
    np.testing.assert_allclose(s.initial_weights(), [0.6, 0.3, 0.1])
    assert "domain_sizes" in s.signals


def test_static_by_name_and_by_order():
    s = build_strategy("static", NAMES, SIZES, weights={"chat": 1, "code": 2, "math": 1})
    np.testing.assert_allclose(s.initial_weights(), [0.5, 0.25, 0.25])
    s = build_strategy("static", NAMES, SIZES, weights=[1, 1, 2])
    np.testing.assert_allclose(s.initial_weights(), [0.25, 0.25, 0.5])


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        ({"code": 1, "math": 1}, r"no weight for \['chat'\]"),
        ({"code": 1, "math": 1, "chat": 1, "law": 1}, r"unknown domains \['law'\]"),
        ([1, 2], r"has 2 weights but there are 3 domains"),
        ([0, 0, 0], r"non-negative with a positive total"),
    ],
)
def test_static_weights_must_match_domains(weights, match):
    with pytest.raises(ValueError, match=match):
        resolve_static_weights(weights, NAMES)


def test_static_strategies_keep_weights_on_update():
    for name, opts in [("uniform", {}), ("natural", {}), ("static", {"weights": [3, 2, 1]})]:
        s = build_strategy(name, NAMES, SIZES, **opts)
        w = s.initial_weights()
        np.testing.assert_array_equal(s.update(w, {}), w)


def test_every_strategy_declares_known_signals_and_gives_a_distribution():
    for name, cls in STRATEGY_CLASSES.items():
        assert cls.signals <= KNOWN_SIGNALS, name
        opts = {"weights": [1, 1, 1]} if name == "static" else {}
        if cls.dynamic:
            continue  # dynamic strategies start from uniform and are tested on their own
        w = build_strategy(name, NAMES, SIZES, **opts).initial_weights()
        assert w.shape == (3,) and (w >= 0).all() and w.sum() == pytest.approx(1.0)


def test_unknown_strategy_and_undeclared_signal():
    with pytest.raises(ValueError, match="Unknown strategy 'magic'"):
        build_strategy("magic", NAMES, SIZES)

    class Needy(MixingStrategy):
        name = "needy"
        signals = frozenset({"crystal_ball"})

    STRATEGY_CLASSES["needy"] = Needy
    try:
        with pytest.raises(ValueError, match="declares signals nobody provides: \\['crystal_ball'\\]"):
            build_strategy("needy", NAMES, SIZES)
    finally:
        del STRATEGY_CLASSES["needy"]


@pytest.mark.parametrize("seed", range(5))
def test_normalise_invariants(seed):
    rng = np.random.default_rng(seed)
    raw = rng.exponential(size=8) * (rng.random(8) > 0.3)
    raw[0] = np.nan
    w = normalise(raw, floor=0.05)
    assert w.sum() == pytest.approx(1.0) and (w >= 0.05 - 1e-12).all()
    # the floor mixes with uniform, so the order of the non-floored weights is kept
    order = np.argsort(np.nan_to_num(raw))
    assert (np.diff(w[order]) >= -1e-12).all()


def test_normalise_inactive_domains_and_degenerate_input():
    w = normalise(np.array([0.0, 0.0, 0.0]), active=np.array([True, False, True]))
    np.testing.assert_allclose(w, [0.5, 0.0, 0.5])
    with pytest.raises(ValueError, match="No active domain"):
        normalise(np.ones(2), active=np.zeros(2, dtype=bool))
    with pytest.raises(ValueError, match="exceeds 1"):
        normalise(np.ones(4), floor=0.3)
