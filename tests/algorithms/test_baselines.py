"""The paper's baselines (DGA, DoGE, DoReMi, Velocitune): update rules against hand-computed cases,
simplex invariants, direction of response, and the resume state round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llamafactory_dids.algorithms.dga import dga_update
from llamafactory_dids.algorithms.doremi import excess_losses
from llamafactory_dids.algorithms.impact import alignment_shares
from llamafactory_dids.algorithms.mirror import exponentiated_step, smooth
from llamafactory_dids.algorithms.registry import build_strategy
from llamafactory_dids.algorithms.velocitune import learning_velocity, scaling_law_target

NAMES = ["code", "math", "chat"]
SIZES = [600, 300, 100]


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


# ---------------------------------------------------------------------------------------- shared pieces
def test_exponentiated_step_and_smoothing_by_hand():
    new = exponentiated_step(np.array([0.5, 0.25, 0.25]), np.array([math.log(2), 0.0, -math.log(2)]), 1.0)
    np.testing.assert_allclose(new, np.array([1.0, 0.25, 0.125]) / 1.375)
    # log-space: huge steps neither overflow nor give NaN; zero weights stay zero
    new = exponentiated_step(np.array([0.0, 0.5, 0.5]), np.array([1e6, 1e4, 0.0]), 10.0)
    np.testing.assert_allclose(new, [0.0, 1.0, 0.0])
    np.testing.assert_allclose(smooth(np.array([1.0, 0.0]), 0.1), [0.95, 0.05])


def test_alignment_shares_positive_part_per_task():
    a = np.array([[3.0, -1.0, -2.0], [1.0, -1.0, 0.0], [0.0, 2.0, -1.0]])
    shares = alignment_shares(a)
    np.testing.assert_allclose(shares[:, 0], [0.75, 0.25, 0.0])
    np.testing.assert_allclose(shares[:, 1], [0.0, 0.0, 1.0])
    np.testing.assert_allclose(shares[:, 2], [1 / 3] * 3)  # no domain helps: uniform


# ------------------------------------------------------------------------------------------------ DGA
def test_dga_update_by_hand():
    weights, iterate = np.array([0.5, 0.5]), np.array([0.5, 0.5])
    new, it, scores = dga_update(weights, iterate, np.array([[math.log(2)], [0.0]]), step_size=1.0, beta=0.1)
    np.testing.assert_allclose(it, [2 / 3, 1 / 3])
    np.testing.assert_allclose(new, [0.1 * 0.5 + 0.9 * 2 / 3, 0.1 * 0.5 + 0.9 / 3])
    # several tasks: the mean inner product (alignment with the mean task loss)
    _, it, scores = dga_update(weights, iterate, np.array([[1.0, 3.0], [2.0, 0.0]]), step_size=0.5, beta=0.0)
    np.testing.assert_allclose(scores, [2.0, 1.0])
    np.testing.assert_allclose(it, [sigmoid(0.5), 1 - sigmoid(0.5)])


def test_dga_strategy_keeps_the_iterate_apart_from_the_ema():
    s = build_strategy("dga", NAMES, SIZES, step_size=1.0, beta=0.5)
    a = np.array([[math.log(4)], [0.0], [0.0]])
    p1 = s.update(s.initial_weights(), {"alignment": a})
    np.testing.assert_allclose(s.alpha, [4 / 6, 1 / 6, 1 / 6])
    np.testing.assert_allclose(p1, 0.5 / 3 + 0.5 * np.array([4 / 6, 1 / 6, 1 / 6]))
    p2 = s.update(p1, {"alignment": a})
    np.testing.assert_allclose(s.alpha, np.array([16, 1, 1]) / 18)  # the iterate, not the EMA, is stepped
    np.testing.assert_allclose(p2, 0.5 * p1 + 0.5 * s.alpha)
    assert set(s.last_terms) == {"alignment", "scores", "iterate"}


# ----------------------------------------------------------------------------------------------- DoGE
def test_doge_mirror_descent_and_average_by_hand():
    s = build_strategy("doge", NAMES, SIZES, step_size=1.0)
    a = np.array([[math.log(3)], [0.0], [-math.log(3)]])
    w1 = s.update(s.initial_weights(), {"alignment": a})
    np.testing.assert_allclose(w1, np.array([9, 3, 1]) / 13)
    w2 = s.update(w1, {"alignment": a})
    np.testing.assert_allclose(w2, np.array([81, 9, 1]) / 91)
    np.testing.assert_allclose(s.average, (w1 + w2) / 2)
    np.testing.assert_allclose(s.last_terms["average_weights"], (w1 + w2) / 2)


# --------------------------------------------------------------------------------------------- DoReMi
def test_doremi_excess_loss_credited_through_alignment_by_hand():
    s = build_strategy(
        "doremi", NAMES[:2], SIZES[:2], reference_losses=[2.0, 2.5], step_size=1.0, smoothing=0.1
    )
    history = [[3.5, 2.8], [3.0, 2.0]]  # current: task 0 above its reference by 1, task 1 below
    alignment = np.array([[3.0, 1.0], [1.0, 1.0]])  # task 0 shares: 0.75 / 0.25
    new = s.update(s.initial_weights(), {"alignment": alignment, "task_loss_history": history})
    expected = 0.9 * sigmoid(0.5) + 0.05  # alpha ∝ 0.5 [e^0.75, e^0.25], then smoothed with c = 0.1
    np.testing.assert_allclose(new, [expected, 1 - expected])
    np.testing.assert_allclose(s.last_terms["excess_loss"], [1.0, 0.0])
    np.testing.assert_allclose(s.last_terms["scores"], [0.75, 0.25])


def test_doremi_no_excess_no_change_and_clipping():
    np.testing.assert_allclose(
        excess_losses(np.array([1.0, 3.0, np.nan]), np.array([2.0, 2.0, 1.0])), [0, 1, 0]
    )
    s = build_strategy("doremi", NAMES, SIZES, reference_losses=[5.0], smoothing=0.0)
    new = s.update(s.initial_weights(), {"alignment": np.ones((3, 1)), "task_loss_history": [[4.0]]})
    np.testing.assert_allclose(new, [1 / 3] * 3)


def test_doremi_rejects_mismatched_reference():
    s = build_strategy("doremi", NAMES, SIZES, reference_losses=[1.0, 2.0])
    with pytest.raises(ValueError, match="2 reference losses"):
        s.update(s.initial_weights(), {"alignment": np.ones((3, 1)), "task_loss_history": [[4.0]]})
    with pytest.raises(ValueError, match="reference_losses must be finite"):
        build_strategy("doremi", NAMES, SIZES, reference_losses=[float("nan")])


# ----------------------------------------------------------------------------------------- Velocitune
def test_velocitune_update_by_hand():
    s = build_strategy("velocitune", NAMES[:2], SIZES[:2], target_losses=[2.0, 2.0], smoothing=0.0)
    history = [[4.0, 3.0], [3.5, 2.95], [3.0, 2.9]]
    alignment = np.array([[1.0, -1.0], [-1.0, 1.0]])  # domain 0 serves task 0, domain 1 task 1
    new = s.update(s.initial_weights(), {"alignment": alignment, "task_loss_history": history})
    np.testing.assert_allclose(s.last_terms["velocity"], [0.5, 0.9])  # (L_t - L*) / (L_0 - L*)
    # the slower task (1: 90% of its way left) pulls weight to its domain: alpha ∝ [e^0.5, e^0.9]
    np.testing.assert_allclose(new, [1 - sigmoid(0.4), sigmoid(0.4)])


def test_learning_velocity_edge_cases():
    v = learning_velocity(np.array([2.0, 1.0, np.nan, 1.5]), np.array([3.0, 1.0, 2.0, 3.0]), np.ones(4))
    np.testing.assert_allclose(v, [0.5, 0.0, 0.0, 0.25])  # L_0 == L*: 0; NaN current: 0
    assert learning_velocity(np.array([0.5]), np.array([3.0]), np.array([1.0]))[0] == pytest.approx(-0.25)


def test_scaling_law_target_recovers_a_power_law():
    n = np.array([0, 100, 200, 400, 800, 1600], dtype=float)
    losses = np.where(n > 0, 1.5 + 2.0 * np.power(np.maximum(n, 1), -0.5), 9.0)  # n = 0 is ignored
    target, fitted = scaling_law_target(n, losses, 10_000)
    assert fitted and target == pytest.approx(1.5 + 2.0 / 100, abs=1e-3)
    # too few points: the last measured loss
    assert scaling_law_target([0, 100, 200], [5.0, 3.0, 2.5], 10_000) == (2.5, False)
    with pytest.raises(ValueError, match="no measured loss"):
        scaling_law_target([0], [5.0], 100)


# ----------------------------------------------------------------------------------------- invariants
def _signals(rng, k, m, t=3):
    history = np.cumsum(-rng.exponential(0.2, size=(t, m)), axis=0) + 4
    return {"alignment": rng.normal(size=(k, m)), "task_loss_history": history}


def _build(name, m):
    if name == "doremi":
        return build_strategy(name, [f"d{i}" for i in range(6)], [10] * 6, reference_losses=[2.5] * m)
    if name == "velocitune":
        return build_strategy(name, [f"d{i}" for i in range(6)], [10] * 6, target_losses=[1.0] * m)
    return build_strategy(name, [f"d{i}" for i in range(6)], [10] * 6)


@pytest.mark.parametrize("name", ["dga", "doge", "doremi", "velocitune"])
def test_simplex_invariants(name):
    rng = np.random.default_rng(0)
    s = _build(name, 2)
    w = s.initial_weights()
    np.testing.assert_allclose(w, 1 / 6)
    for _ in range(10):
        w = s.update(w, _signals(rng, 6, 2))
        assert np.isfinite(w).all() and (w >= 0).all() and w.sum() == pytest.approx(1.0)
    assert s.dynamic and s.average.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["dga", "doge", "doremi", "velocitune"])
def test_direction_aligned_domain_gains(name):
    """Domain 0's gradient lowers the task's loss, the others' raise it: domain 0 gains, they lose."""
    s = _build(name, 1)
    alignment = np.array([[1.0], [-1.0], [-1.0], [-1.0], [-1.0], [-1.0]])
    w = s.update(s.initial_weights(), {"alignment": alignment, "task_loss_history": [[4.0], [3.0]]})
    assert w[0] > 1 / 6 > w[1] and w[1] == pytest.approx(w[5])


@pytest.mark.parametrize("name", ["dga", "doge", "doremi", "velocitune"])
def test_state_round_trip_continues_the_same_mixture(name):
    rng = np.random.default_rng(1)
    signals = [_signals(rng, 6, 2, t=i + 2) for i in range(4)]
    full = _build(name, 2)
    w = full.initial_weights()
    for sig in signals[:2]:
        w = full.update(w, sig)
    state = full.state_dict()
    resumed = _build(name, 2)
    resumed.load_state_dict(state)
    w_full, w_res = w.copy(), w.copy()
    for sig in signals[2:]:
        w_full, w_res = full.update(w_full, sig), resumed.update(w_res, sig)
    np.testing.assert_allclose(w_res, w_full)
    np.testing.assert_allclose(resumed.average, full.average)
    with pytest.raises(ValueError, match="this run has 6 domains"):
        resumed.load_state_dict({**state, "alpha": [0.5, 0.5]})
