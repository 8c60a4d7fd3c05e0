"""The DIDS update rule (eq. 13-16) and the trajectory terms (eq. 14-15): values and invariants."""

from __future__ import annotations

import numpy as np
import pytest

from llamafactory_dids.algorithms.dids import DIDSStrategy, clamp_normalise, dids_update, softmax
from llamafactory_dids.algorithms.trajectory import (
    current_improvement,
    fit_exponential_decay,
    potential_improvement,
)


def test_current_improvement():
    assert current_improvement([3.0, 2.5]) == pytest.approx(0.5)
    assert current_improvement([3.0]) == 0.0
    assert current_improvement([3.0, float("nan")]) == 0.0


def test_exponential_fit_recovers_a_clean_curve():
    t = np.arange(8)
    curve = 2.0 * np.exp(-0.4 * t) + 1.0
    a, b, c = fit_exponential_decay(curve)
    assert (a, b, c) == pytest.approx((2.0, 0.4, 1.0), rel=1e-3)
    lp, fitted = potential_improvement(curve, horizon=1)
    expected = 2.0 * (np.exp(-0.4 * 7) - np.exp(-0.4 * 8))
    assert fitted and lp == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize(
    "history", [[5.0, 4.0], [5.0, 4.0, 3.5], [1.0, np.nan, 0.5, 0.4], [2.0, 2.0, 2.0, 2.0, 2.0]]
)
def test_short_or_degenerate_histories_fall_back_without_nan(history):
    lp, _ = potential_improvement(history)
    assert np.isfinite(lp)
    if len(history) < 4:
        assert lp == current_improvement(history)


def test_update_matches_a_hand_computed_case():
    weights = np.array([0.5, 0.25, 0.25])
    impact = np.array([[1.0], [3.0], [2.0]])  # distances to one task: domain 0 closest
    history = [[4.0], [3.0]]  # l_c = 1, short history -> l_p = l_c = 1
    new, terms = dids_update(weights, impact, history, beta=0.1, normaliser="clamp")
    norm = np.array([2 / 3, 0.0, 1 / 3])
    utility = norm * 2.0 / weights  # [2.6667, 0, 2.6667]
    p_hat = utility / utility.sum()
    np.testing.assert_allclose(terms["utility"], utility)
    np.testing.assert_allclose(new, 0.1 * weights + 0.9 * p_hat)
    assert terms["l_c"] == [1.0] and terms["l_p"] == [1.0]


def test_softmax_variant_and_invariants():
    rng = np.random.default_rng(0)
    for _ in range(20):
        k, m = 6, 3
        weights = rng.dirichlet(np.ones(k))
        impact = rng.exponential(size=(k, m))
        history = np.cumsum(-rng.exponential(0.1, size=(5, m)), axis=0) + 5
        for normaliser in ("softmax", "clamp"):
            new, _ = dids_update(weights, impact, history, normaliser=normaliser, beta=0.2)
            assert np.isfinite(new).all() and (new >= 0).all() and new.sum() == pytest.approx(1.0)
            assert (new >= 0.2 * weights - 1e-12).all()  # the EMA keeps beta of the old mass


def test_direction_closer_domain_gains_weight():
    weights = np.full(3, 1 / 3)
    impact = np.array([[0.1], [1.0], [1.0]])
    new, _ = dids_update(weights, impact, [[3.0], [2.5]])
    assert new[0] > 1 / 3 > new[1] and new[1] == pytest.approx(new[2])
    # the importance correction favours a domain that achieved the same with less probability
    new2, _ = dids_update(np.array([0.2, 0.4, 0.4]), np.array([[0.1], [0.1], [1.0]]), [[3.0], [2.5]])
    assert new2[0] > new2[1]


def test_losses_going_up_lower_the_utility_sign():
    weights = np.full(2, 0.5)
    new, terms = dids_update(weights, np.array([[0.0], [1.0]]), [[2.0], [2.5]], normaliser="clamp", beta=0.0)
    assert terms["utility"][0] < 0
    np.testing.assert_allclose(new, [0.5, 0.5])  # nothing positive: clamp falls back to uniform


def test_ablation_without_trajectory_and_strategy_wrapper():
    weights = np.full(2, 0.5)
    _, terms = dids_update(
        weights,
        np.array([[0.0], [1.0]]),
        [
            [
                5,
            ],
            [4],
            [3.5],
            [3.2],
            [3.0],
        ],
        use_trajectory=False,
    )
    assert terms["l_p"] == [0.0]
    s = DIDSStrategy(["a", "b"], [10, 10], beta=0.3)
    np.testing.assert_allclose(s.initial_weights(), [0.5, 0.5])
    out = s.update(
        weights, {"impact": np.array([[0.0], [1.0]]), "task_loss_history": np.array([[3.0], [2.0]])}
    )
    assert out[0] > out[1] and "utility" in s.last_terms


def test_normalisers():
    np.testing.assert_allclose(softmax(np.array([0.0, np.log(3.0)])), [0.25, 0.75])
    np.testing.assert_allclose(clamp_normalise(np.array([-1.0, 1.0, 3.0])), [0, 0.25, 0.75])
    with pytest.raises(ValueError, match="normaliser must be"):
        dids_update(np.ones(2) / 2, np.zeros((2, 1)), [[1.0]], normaliser="other")
