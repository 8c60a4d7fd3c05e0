"""The DIDS update rule (eq. 13-16) in its three variants, and the trajectory terms (eq. 14-15).

Hand-computed values for the `paper` and `reference` variants; for the default `directional` rule the
properties it was designed for (docs/dids.md): scale invariance, first-order impact over size, evidence that
accumulates, no oscillation, no noise from an unserved task, a floor, and a resumable state.
"""

from __future__ import annotations

import numpy as np
import pytest

from llamafactory_dids.algorithms.dids import (
    ALLOCATIONS,
    COMBINATIONS,
    EVIDENCE_FALSE_POSITIVE,
    EVIDENCE_Z_CAP,
    NORMALISERS,
    VARIANTS,
    DIDSStrategy,
    Evidence,
    clamp_normalise,
    dids_update,
    evidence_dead_zone,
    group_ties,
    impact_scores,
    softmax,
    task_weights,
)
from llamafactory_dids.algorithms.impact import ImpactTerms, normalise_impacts
from llamafactory_dids.algorithms.trajectory import (
    current_improvement,
    fit_exponential_decay,
    potential_improvement,
)


def terms_from_gradients(
    domains: np.ndarray, tasks: np.ndarray, pool: np.ndarray | None = None
) -> ImpactTerms:
    """Exact terms (metric = identity) from explicit gradients: domains [k, n], tasks [m, n], pool [n]."""
    return ImpactTerms(
        task_sq=(tasks**2).sum(1),
        cross=domains @ tasks.T,
        domain_sq=(domains**2).sum(1),
        control_sq=None if pool is None else float(pool @ pool),
        control_cross=None if pool is None else domains @ pool,
        metric="inner_product",
        domain_gram=domains @ domains.T,
    )


def toy_world(seed: int = 0, n: int = 64):
    """5 domains sharing a common direction; task 0 is domain 0's own direction, the pool their mix."""
    rng = np.random.default_rng(seed)
    common = 3.0 * rng.normal(size=n)
    own = rng.normal(size=(5, n))
    domains = common + own
    tasks = np.stack([common + own[0]])
    pool = domains.mean(0)
    return domains, tasks, pool


# ------------------------------------------------------------------------------ trajectory (eq. 14-15)


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


# ------------------------------------------------------------------------------------ the paper variant


def test_paper_variant_matches_a_hand_computed_case():
    weights = np.array([0.5, 0.25, 0.25])
    distances = np.array([[1.0], [3.0], [2.0]])  # domain 0 closest to the one task
    history = [[4.0], [3.0]]  # l_c = 1, short history -> l_p = l_c = 1
    new, terms = dids_update(weights, ImpactTerms.from_distances(distances), history, variant="paper")
    norm = np.array([2 / 3, 0.0, 1 / 3])  # (max - I) / sum
    utility = norm * 2.0 / weights  # eq. 16: sum_j Î (l_c + l_p) / p
    p_hat = softmax(utility)
    np.testing.assert_allclose(terms["impact_normalised"], norm[:, None])
    np.testing.assert_allclose(terms["utility"], utility)
    np.testing.assert_allclose(new, 0.1 * weights + 0.9 * p_hat)
    assert terms["l_c"] == [1.0] and terms["l_p"] == [1.0] and terms["variant"] == "paper"


def test_paper_variant_depends_on_the_loss_scale_and_oscillates():
    """What the issue measured, kept reproducible: the literal rule is scale-dependent and flips."""
    weights = np.full(5, 0.2)
    distances = ImpactTerms.from_distances(
        np.array([[0.0, 0.0, 0.0], [1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 1.0]])
    )
    small, _ = dids_update(weights, distances, [[3.0] * 3, [2.999] * 3], variant="paper")
    large, _ = dids_update(weights, distances, [[3.0] * 3, [2.0] * 3], variant="paper")
    assert small.max() / small.min() < 1.1 and large.max() / large.min() > 40
    # /p_{t-1}: the favoured domain is penalised next time, the weights flip back and forth
    w, history, changes = weights, [[3.0] * 3], []
    for t in range(6):
        history.append([3.0 - 0.5 * (t + 1)] * 3)
        new, _ = dids_update(w, distances, history, variant="paper")
        changes.append(new - w)
        w = new
    signs = [np.sign(c[0]) for c in changes[1:]]
    assert any(a != b for a, b in zip(signs, signs[1:], strict=False))


def test_reference_variant_matches_a_hand_computed_case():
    weights = np.array([0.5, 0.25, 0.25])
    inner = np.array([[4.0, 2.0], [1.0, 2.0], [0.0, 0.0]])  # Fisher inner products <g_D, g_S>
    terms = ImpactTerms(task_sq=np.ones(2), cross=inner, domain_sq=np.ones(3))
    # round 0: impacts alone, mean over tasks; the max-minus normalisation of the kernel 1/2 inner
    kernel = 0.5 * inner
    norm = normalise_impacts(kernel, kind="distance")
    new0, t0 = dids_update(weights, terms, [[3.0, 3.0]], variant="reference")
    p_hat = clamp_normalise(norm.mean(1) / weights, 1e-7)
    np.testing.assert_allclose(t0["p_hat"], p_hat)
    np.testing.assert_allclose(new0, 0.2 * weights + 0.8 * p_hat)
    # below 5 points the potential is 1.0: U = mean_j Î_ij (l_c + 1) / p
    _, t1 = dids_update(weights, terms, [[3.0, 3.0], [2.5, 2.0]], variant="reference")
    assert t1["l_p"] == [1.0, 1.0]
    np.testing.assert_allclose(t1["utility"], (norm @ np.array([1.5, 2.0]) / 2) / weights)
    # the inversion the docs describe: the most similar domain (0 on task 0) gets the least impact
    assert norm[0, 0] == 0.0


# ------------------------------------------------------------------------------ the directional variant


def run_rule(terms_for_update, steps: int, history_scale: float = 1.0, **options):
    """Repeated updates of a DIDSStrategy; returns the weight trajectory [steps + 1, k]."""
    k = terms_for_update(0).shape[0]
    strategy = DIDSStrategy([f"d{i}" for i in range(k)], [100] * k, **options)
    w = strategy.initial_weights()
    m = terms_for_update(0).shape[1]
    history, path = [[history_scale * 5.0] * m], [w]
    for t in range(steps):
        history.append([history_scale * 5.0 * 0.9 ** (t + 1)] * m)
        w = strategy.update(w, {"impact": terms_for_update(t), "task_loss_history": np.array(history)})
        path.append(w)
    return np.array(path), strategy


def test_directional_is_invariant_to_the_scale_of_the_losses():
    domains, tasks, pool = toy_world()
    rng = np.random.default_rng(1)
    noisy = [terms_from_gradients(domains + rng.normal(size=domains.shape), tasks, pool) for _ in range(6)]
    base, _ = run_rule(lambda t: noisy[t], 6)
    scaled, _ = run_rule(lambda t: noisy[t], 6, history_scale=37.0)
    np.testing.assert_allclose(scaled, base, rtol=1e-9, atol=1e-12)


def test_directional_task_weights_are_scale_free():
    l_c, l_p, current = np.array([0.2, 0.1]), np.array([0.1, 0.05]), np.array([3.0, 2.0])
    np.testing.assert_allclose(
        task_weights(l_c, l_p, current, "relative"),
        task_weights(10 * l_c, 10 * l_p, 10 * current, "relative"),
    )
    np.testing.assert_allclose(task_weights(l_c, l_p, current, "absolute"), l_c + l_p)
    # no progress anywhere: equal weights
    np.testing.assert_allclose(task_weights(np.zeros(2), np.zeros(2), current, "relative"), [0.5, 0.5])


def test_an_easy_irrelevant_domain_gains_no_weight_by_direction():
    """Eq. 12 with (max - I) ranks by gradient size: a domain with a tiny gradient looks close to the task.
    The Fisher cosine ranks by direction and the inner product by first-order impact: with either the
    matched domain wins and the easy one does not gain."""
    domains, tasks, pool = toy_world()
    domains = 2.0 * domains  # training rows are not yet learnt as well as the task's: larger gradients
    easy = 0.05 * domains.mean(0)  # boilerplate: a small gradient along what every row shares
    domains = np.vstack([domains, easy])
    pool = domains.mean(0)
    terms = terms_from_gradients(domains, tasks, pool)
    distance = impact_scores(terms, "distance", pool_control=False)
    assert int(np.argmax(distance[:, 0])) == 5  # the paper's normalisation prefers the easy domain
    cosine = impact_scores(terms, "cosine", pool_control=True)
    assert int(np.argmax(cosine[:, 0])) == 0
    uniform_share = 1 / 6
    path, _ = run_rule(lambda t: terms, 8, impact="cosine", pool_control=True)
    assert path[-1][5] <= uniform_share and path[-1][0] == path[-1].max()
    # the inner product: a tiny gradient has a tiny first-order impact whatever its direction
    similarity = impact_scores(terms, "similarity", pool_control=False)
    assert int(np.argmax(similarity[:, 0])) == 0 and int(np.argmin(similarity[:, 0])) == 5
    for options in ({"impact": "similarity"}, {}):  # and the default, the cosine centred over domains
        path, _ = run_rule(lambda t: terms, 8, **options)
        assert path[-1][5] <= uniform_share and path[-1][0] == path[-1].max()


def test_pool_orthogonal_terms_are_those_of_the_parts_orthogonal_to_the_pool_gradient():
    rng = np.random.default_rng(3)
    domains, tasks = rng.normal(size=(4, 20)), rng.normal(size=(2, 20))
    pool = np.array([0.1, 0.4, 0.2, 0.3])
    g_p = pool @ domains

    def perp(g):
        return g - np.outer(g @ g_p, g_p) / (g_p @ g_p)

    got = terms_from_gradients(domains, tasks).without_pool(pool)
    np.testing.assert_allclose(got.cross, perp(domains) @ perp(tasks).T, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got.task_sq, (perp(tasks) ** 2).sum(1), rtol=1e-10)
    np.testing.assert_allclose(got.domain_sq, (perp(domains) ** 2).sum(1), rtol=1e-10)
    # a domain along the pool gradient keeps no direction: its cosine is 0, not rounding's +-1
    along = np.vstack([domains, 0.01 * g_p])
    weights = np.array([0.1, 0.4, 0.2, 0.3, 0.0])
    assert terms_from_gradients(along, tasks).without_pool(weights).cosine()[4].tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="Gram"):
        ImpactTerms(task_sq=np.ones(2), cross=np.ones((4, 2)), domain_sq=np.ones(4)).without_pool(pool)


def test_pool_cosine_ignores_a_direction_every_row_shares():
    """Early in training every gradient is mostly one shared direction. A domain that carries more of it
    than the others leads every task's column under the plain cosine (its direction is closest to what each
    task shares with the pool); measured from the pool gradient (`pool_cosine`), each task's column ranks
    the domain that holds its own content first."""
    right = {"cosine": 0, "pool_cosine": 0}
    for seed in range(20):
        rng = np.random.default_rng(seed)
        common, own = rng.normal(size=64), rng.normal(size=(5, 64))
        domains = np.array([3.0, 3.0, 6.0, 3.0, 3.0])[:, None] * common + own
        tasks = np.stack([3.0 * common + 0.3 * own[0], 3.0 * common + 0.3 * own[1]])
        terms = terms_from_gradients(domains, tasks)
        for form in right:
            scores = impact_scores(terms, form, pool_control=False)
            right[form] += int(np.argmax(scores[:, 0]) == 0 and np.argmax(scores[:, 1]) == 1)
    assert right["pool_cosine"] == 20
    assert right["cosine"] <= 2


def test_pool_cosine_stays_at_the_prior_under_the_null():
    """A target drawn from the training pool (its gradient: the pool's, sizes-weighted, plus noise) gives
    pool-centred scores of mean zero: the weights stay within total variation 0.1 of the start in every
    seed. The plain cosine, centred over domains only, reads the domains' different shares of the common
    direction as a signal and moves."""
    domains, _, _ = toy_world()
    sizes = np.array([100, 300, 100, 300, 200])
    finals: dict[str, list[float]] = {"pool_cosine": [], "cosine": []}
    for impact, out in finals.items():
        for seed in range(10):
            rng = np.random.default_rng(seed)
            strategy = DIDSStrategy([f"d{i}" for i in range(5)], sizes.tolist(), impact=impact)
            w = start = strategy.initial_weights()
            history = [[5.0]]
            for t in range(10):
                history.append([5.0 * 0.9 ** (t + 1)])
                noisy = domains + 0.3 * rng.normal(size=domains.shape)
                target = (sizes @ noisy / sizes.sum() + rng.normal(size=domains.shape[1]))[None, :]
                terms = terms_from_gradients(noisy, target)
                w = strategy.update(w, {"impact": terms, "task_loss_history": np.array(history)})
            out.append(0.5 * np.abs(w - start).sum())
    assert max(finals["pool_cosine"]) < 0.1
    assert np.median(finals["cosine"]) > 0.1


def test_evidence_accumulates_and_a_consistent_signal_becomes_decisive():
    domains, tasks, pool = toy_world()
    terms = terms_from_gradients(domains, tasks, pool)
    path, strategy = run_rule(lambda t: terms, 8)
    shares = path[:, 0]
    assert shares[-1] > 0.6 and (np.diff(shares[1:]) >= -1e-12).all()  # grows, never steps back
    z = np.asarray(strategy.last_terms["z"])[:, 0]
    assert z[0] == z.max() and z[0] > 2.0  # beyond the dead zone
    ev = Evidence(4, decay=0.5)
    scores = np.array([1.0, 0.1, -0.1, 0.0])
    first = ev.add(scores, np.full(4, 0.25))
    second = ev.add(scores, np.full(4, 0.25))
    assert ev.count == pytest.approx(1.5) and ev.count_sq == pytest.approx(1.25)
    np.testing.assert_allclose(second["evidence_mean"], scores[:, None])
    # the first update's noise scale is its spread over domains; the same scores twice: the mean is unchanged
    # and its standard error shrinks by sqrt(N2) / N
    np.testing.assert_allclose(first["evidence_stderr"], [np.std(scores)])
    np.testing.assert_allclose(second["evidence_stderr"], [np.std(scores) * np.sqrt(1.25) / 1.5])
    assert second["z"][0][0] > first["z"][0][0]


@pytest.mark.parametrize("k", [3, 5, 72])
def test_the_dead_zone_lets_a_noise_column_through_with_the_stated_chance(k):
    """k independent unit z-scores of pure noise: any of them outside the dead zone in about alpha of the
    draws (Bonferroni: at most alpha, and close to it for independent scores)."""
    rng = np.random.default_rng(k)
    z = rng.normal(size=(40_000, k))
    passed = (np.abs(z) > evidence_dead_zone(k)).any(axis=1).mean()
    assert 0.85 * EVIDENCE_FALSE_POSITIVE < passed <= EVIDENCE_FALSE_POSITIVE + 0.006
    assert evidence_dead_zone(72) > evidence_dead_zone(5) > evidence_dead_zone(3) > 1.5


def test_noise_alone_stays_inside_the_dead_zone_mostly():
    """A null control of the default rule: every domain as useful as the pool, up to noise on both sides
    (each update draws fresh rows), so no domain has a first-order advantage and the rule keeps the prior."""
    domains, _, pool = toy_world()
    tv, worst = [], []
    for seed in range(10):
        rng = np.random.default_rng(seed)

        def noisy(t, rng=rng):
            return terms_from_gradients(
                pool + rng.normal(size=domains.shape),
                (pool + rng.normal(size=pool.shape))[None, :],
                pool + rng.normal(size=pool.shape),
            )

        path, _ = run_rule(noisy, 10)
        distance = 0.5 * np.abs(path - 0.2).sum(axis=1)
        tv.append(distance[-1])
        worst.append(distance.max())
        assert distance[1] == pytest.approx(0.0, abs=1e-12)  # one update is no evidence: the prior holds
    assert np.median(tv) < 0.1 and np.median(worst) < 0.2


def test_the_cosine_ignores_a_fixed_size_advantage_under_the_null():
    """Fixed domain gradients of different sizes along the pool direction, a pool target with noise: the
    inner product (`similarity`) reads the larger projections as a first-order advantage and tilts towards
    them; the cosine (`dids_impact: cosine`, the default) measures direction only and stays near the prior."""
    domains, _, pool = toy_world()
    finals = {"cosine": [], "similarity": []}
    for seed in range(10):
        for impact, out in finals.items():
            rng = np.random.default_rng(seed)

            def noisy(t, rng=rng):
                return terms_from_gradients(
                    domains, (pool + rng.normal(size=pool.shape))[None, :], pool + rng.normal(size=pool.shape)
                )

            out.append(0.5 * np.abs(run_rule(noisy, 10, impact=impact)[0][-1] - 0.2).sum())
    assert np.median(finals["cosine"]) < 0.1
    assert np.median(finals["similarity"]) > 0.3


def test_weights_do_not_oscillate():
    domains, tasks, pool = toy_world()
    rng = np.random.default_rng(5)
    noisy = [
        terms_from_gradients(domains + 0.3 * rng.normal(size=domains.shape), tasks, pool) for _ in range(10)
    ]
    path, _ = run_rule(lambda t: noisy[t], 10)
    changes = np.diff(path, axis=0)
    lag1 = [np.corrcoef(changes[:-1, i], changes[1:, i])[0, 1] for i in range(5) if changes[:, i].std() > 0]
    assert np.nanmean(lag1) > -0.3


@pytest.mark.parametrize(
    ("impact", "pool_control"), [("similarity", False), ("cosine", False), ("cosine", True)]
)
def test_a_task_no_domain_serves_adds_little_noise(impact, pool_control):
    """An unserved task: every domain's inner product or cosine (default) with it is the same, or equals the
    domain's cosine with the pool (pool control), up to noise. A flat column never passes the dead zone and
    changes nothing; a noisy one passes it only by chance (its z-scores are unit-scale whatever the noise
    level), so over 12 noise draws the served domain keeps the lead and its weight moves by little."""
    domains, tasks, pool = toy_world()
    served = terms_from_gradients(domains, tasks, pool)
    rng = np.random.default_rng(7)
    options = {"impact": impact, "pool_control": pool_control}

    def with_unserved(noise: float) -> ImpactTerms:
        norm = 4.0
        if pool_control:
            column, norm = served.control_cross.copy(), served.control_sq
        elif impact == "cosine":  # <g_D, g_U> = 0.3 |g_D| |g_U| for every domain
            column = 0.3 * np.sqrt(served.domain_sq) * np.sqrt(norm)
        else:  # <g_D, g_U> the same for every domain
            column = np.full(served.shape[0], 0.3 * np.sqrt(served.domain_sq.mean() * norm))
        column = column * (1 + noise * rng.normal(size=column.shape))
        return ImpactTerms(
            task_sq=np.array([served.task_sq[0], norm]),
            cross=np.column_stack([served.cross[:, 0], column]),
            domain_sq=served.domain_sq,
            control_sq=served.control_sq,
            control_cross=served.control_cross,
            metric="inner_product",
        )

    flat = with_unserved(0.0)
    scores = impact_scores(flat, impact, pool_control=pool_control)[:, 1]
    assert np.allclose(scores, scores.mean())
    alone, _ = run_rule(lambda t: served, 6, **options)
    flat_path, strategy = run_rule(lambda t: flat, 6, **options)
    np.testing.assert_allclose(flat_path, alone, rtol=1e-12)  # a flat column drops out exactly
    assert strategy.last_terms["live_tasks"] == [True, False]
    finals = []
    for _ in range(12):
        noisy = [with_unserved(0.02) for _ in range(6)]
        finals.append(run_rule(lambda t, noisy=noisy: noisy[t], 6, **options)[0][-1])
    finals = np.array(finals)
    assert (finals.argmax(axis=1) == 0).all()
    assert abs(finals[:, 0].mean() - flat_path[-1][0]) < 0.1


def test_floor_and_simplex_invariants_hold_for_every_variant_and_normaliser():
    rng = np.random.default_rng(0)
    for variant in VARIANTS:
        for normaliser in (None, *NORMALISERS):
            if variant == "reference" and normaliser is not None:
                continue
            strategy = DIDSStrategy(
                [f"d{i}" for i in range(6)], rng.integers(10, 100, 6), variant=variant, normaliser=normaliser
            )
            w = strategy.initial_weights()
            history = [[5.0, 4.0, 3.0]]
            for _ in range(6):
                history.append(list(np.array(history[-1]) - rng.exponential(0.2, 3)))
                terms = terms_from_gradients(
                    rng.normal(size=(6, 12)), rng.normal(size=(3, 12)), rng.normal(size=12)
                )
                w = strategy.update(w, {"impact": terms, "task_loss_history": np.array(history)})
                assert np.isfinite(w).all() and w.sum() == pytest.approx(1.0)
                floor = strategy.resolved["smoothing"] / 6
                assert (w >= floor - 1e-12).all()


def test_priors_and_initial_weights():
    s = DIDSStrategy(["a", "b"], [30, 10])  # the default: Algorithm 1's uniform start, floored
    np.testing.assert_allclose(s.initial_weights(), [0.5, 0.5])
    natural = DIDSStrategy(["a", "b"], [30, 10], prior="natural")
    np.testing.assert_allclose(natural.initial_weights(), 0.95 * np.array([0.75, 0.25]) + 0.025)
    domains, tasks, pool = toy_world()
    for prior in ("natural", "uniform"):  # the history records the prior the update used
        _, strategy = run_rule(lambda t: terms_from_gradients(domains, tasks, pool), 1, prior=prior)
        assert strategy.last_terms["components"]["prior"] == prior
    assert not s.impact_control and s.impact_gram  # the default (`pool_cosine`) reads the domains' Gram
    assert DIDSStrategy(["a", "b"], [3, 1], impact="cosine", pool_control=True).impact_control
    for impact in ("similarity", None):  # the default measures from the pool gradient already
        with pytest.raises(ValueError, match="dids_pool_control compares cosines"):
            DIDSStrategy(["a", "b"], [3, 1], impact=impact, pool_control=True)
    paper = DIDSStrategy(["a", "b"], [30, 10], variant="paper")
    np.testing.assert_allclose(paper.initial_weights(), [0.5, 0.5])
    assert not paper.impact_control and not paper.impact_gram
    assert not DIDSStrategy(["a", "b"], [1, 1], impact="distance").impact_control
    assert not DIDSStrategy(["a", "b"], [1, 1], impact="cosine").impact_gram


def test_evidence_state_round_trips_and_resume_continues_identically():
    domains, tasks, pool = toy_world()
    rng = np.random.default_rng(2)
    seq = [terms_from_gradients(domains + rng.normal(size=domains.shape), tasks, pool) for _ in range(6)]
    full, _ = run_rule(lambda t: seq[t], 6)
    first, strategy = run_rule(lambda t: seq[t], 3)
    resumed = DIDSStrategy([f"d{i}" for i in range(5)], [100] * 5)
    resumed.load_state_dict(strategy.state_dict())
    w, history = first[-1], [[5.0 * 0.9**t] for t in range(4)]
    for t in range(3, 6):
        history.append([5.0 * 0.9 ** (t + 1)])
        w = resumed.update(w, {"impact": seq[t], "task_loss_history": np.array(history)})
        np.testing.assert_allclose(w, full[t + 1], rtol=1e-12)
    with pytest.raises(ValueError, match="evidence state has 5 domains"):
        DIDSStrategy(["a", "b"], [1, 1]).load_state_dict(strategy.state_dict())


def test_trajectory_ablation_and_plain_distance_matrices():
    weights = np.full(2, 0.5)
    history = [[5.0], [4.0], [3.5], [3.2], [3.0]]
    _, terms = dids_update(
        weights,
        ImpactTerms.from_distances(np.array([[0.0], [1.0]])),
        history,
        variant="paper",
        use_trajectory=False,
    )
    assert terms["l_p"] == [0.0]
    s = DIDSStrategy(["a", "b"], [10, 10], variant="paper")
    out = s.update(
        weights, {"impact": np.array([[0.0], [1.0]]), "task_loss_history": np.array([[3.0], [2.0]])}
    )
    assert out[0] > out[1] and "utility" in s.last_terms


def test_normalisers_and_errors():
    np.testing.assert_allclose(softmax(np.array([0.0, np.log(3.0)])), [0.25, 0.75])
    np.testing.assert_allclose(softmax(np.zeros(2), prior=np.array([0.2, 0.8])), [0.2, 0.8])
    np.testing.assert_allclose(clamp_normalise(np.array([-1.0, 1.0, 3.0])), [0, 0.25, 0.75])
    with pytest.raises(ValueError, match="normaliser must be"):
        dids_update(
            np.ones(2) / 2,
            ImpactTerms.from_distances(np.zeros((2, 1))),
            [[1.0]],
            variant="paper",
            normaliser="other",
        )
    with pytest.raises(ValueError, match="variant must be"):
        DIDSStrategy(["a"], [1], variant="nope")


def test_config_reads_the_rule_tables():
    """The config validates against the rule's own tables (one definition, read lazily)."""
    from llamafactory_dids import config

    assert config.DIDS_VARIANTS == tuple(VARIANTS) and config.NORMALISERS is NORMALISERS
    assert config.VARIANT_IMPACTS == {"directional": "pool_cosine", "paper": "distance"}
    # every component a `reference` run takes from the authors' code, beta excepted, is refused as a key
    assert set(config.REFERENCE_FIXED_KEYS) == {
        f"dids_{c}" for c in ("impact", "pool_control", "task_weighting", "importance_correction")
    } | {
        "dids_normaliser",
        "dids_prior",
        "dids_smoothing",
        "dids_temperature",
        "dids_task_combination",
        "dids_evidence_allocation",
    }


def _naive_group(z, z_shrunk, dead_zone):
    """Reference for `group_ties`: in each column with two or more z' > 0, those whose z is within
    sqrt(2) dead zones of the best passed domain's take the largest z'."""
    k, m = z.shape
    out = np.array(z_shrunk, dtype=np.float64)
    for j in range(m):
        passed = [i for i in range(k) if z_shrunk[i, j] > 0]
        if len(passed) < 2:
            continue
        best_z = max(z[i, j] for i in passed)
        best = max(z_shrunk[i, j] for i in passed)
        for i in passed:
            if (best_z - z[i, j]) / np.sqrt(2.0) <= dead_zone:
                out[i, j] = best
    return out


def _naive_p_hat(z, z_shrunk, w, base, temperature, combination, allocation="tilt"):
    """Reference for the evidence normaliser's p̂ from z and z' [k, m], written with loops."""
    k, m = z.shape
    if allocation == "grouped":
        z_shrunk = _naive_group(z, z_shrunk, evidence_dead_zone(k))

    def tilt(u):
        e = [base[i] * np.exp(u[i] / temperature) for i in range(k)]
        return np.array(e) / sum(e)

    def proportional(j):
        mass = [base[i] * max(z[i, j], 0.0) for i in range(k)]
        return np.array(mass) / sum(mass)

    live = [j for j in range(m) if any(z_shrunk[i, j] != 0 for i in range(k))]
    if allocation == "proportional":
        tasks = live if combination in ("live", "live_split") else list(range(m))
        if not tasks:
            return base.copy()
        total = sum(w[j] for j in tasks)
        return sum(w[j] / total * (proportional(j) if j in live else base) for j in tasks)
    if combination == "split":
        return sum(w[j] / w.sum() * tilt(z_shrunk[:, j]) for j in range(m))
    if combination == "live_split":
        if not live:
            return base.copy()
        return sum(w[j] / sum(w[i] for i in live) * tilt(z_shrunk[:, j]) for j in live)
    tasks = live if combination == "live" else list(range(m))
    if not tasks:
        return base.copy()
    total = sum(w[j] for j in tasks)
    return tilt([sum(w[j] * z_shrunk[i, j] for j in tasks) / total for i in range(k)])


@pytest.mark.parametrize("allocation", ALLOCATIONS)
@pytest.mark.parametrize("combination", COMBINATIONS)
def test_task_combinations_match_a_naive_reference(combination, allocation):
    """Every combination x allocation gives the p̂ of a loop reference; `split` keeps a silent task's share at
    the prior (task 0 points at domain 0, task 1 is flat: domain 0 gets at most w_0 + w_1 prior_0)."""
    domains, tasks, _ = toy_world(seed=3)
    flat = np.zeros((1, tasks.shape[1]))  # a task no domain serves: every cross term 0
    terms = terms_from_gradients(domains, np.concatenate([tasks, flat]))
    prior = np.array([0.1, 0.3, 0.2, 0.2, 0.2])
    evidence = Evidence(5, decay=0.85)
    p = prior.copy()
    history = [[3.0 - 0.2 * t, 2.0 - 0.05 * t] for t in range(9)]
    for t in range(1, 9):
        p, record = dids_update(
            p,
            terms,
            history[: t + 1],
            combination=combination,
            allocation=allocation,
            prior=prior,
            evidence=evidence,
        )
        z, shrunk = np.asarray(record["z"]), np.asarray(record["z_shrunk"])
        w = np.asarray(record["task_weights"])
        temperature = VARIANTS["directional"]["temperature"]
        expected = _naive_p_hat(z, shrunk, w, prior, temperature, combination, allocation)
        np.testing.assert_allclose(record["p_hat"], expected, rtol=1e-9, atol=1e-12)
    assert record["live_tasks"] == [True, False]
    with pytest.raises(ValueError, match="combination must be one of"):
        dids_update(p, terms, history, combination="mean", evidence=Evidence(5, decay=0.85))
    if combination == "split" or (allocation == "proportional" and combination == "weighted"):
        share = w / w.sum()
        assert record["p_hat"][0] <= share[0] + share[1] * prior[0] + 1e-12
        if allocation != "proportional":
            assert record["p_hat"][0] > share[0] * 0.9  # the live task spends its share on its domain
    if combination in ("live", "live_split") and allocation != "proportional":
        assert record["p_hat"][0] > 0.95  # the silent task drops out: the live one decides


def test_proportional_allocation_shares_a_task_among_the_domains_that_serve_it():
    """Four domains hold the task's content with different strength (a source cut in four): the tilt gives
    nearly all to the strongest, the proportional allocation keeps every one of them well above the rest."""
    rng = np.random.default_rng(0)
    n = 96
    task = rng.normal(size=n)
    strength = np.array([0.5, 0.7, 0.9, 1.1, 0, 0, 0, 0])
    domains = strength[:, None] * task + 0.6 * rng.normal(size=(8, n))
    terms = terms_from_gradients(domains, task[None, :])
    finals = {}
    for allocation in ("tilt", "proportional"):
        path, _ = run_rule(lambda t: terms, 8, allocation=allocation, impact="similarity")
        finals[allocation] = path[-1]
    tilt, prop = finals["tilt"], finals["proportional"]
    assert tilt[3] > 0.8 and tilt[:3].max() < 0.1  # winner takes (nearly) all
    assert prop[:4].min() > 2 * prop[4:].max() and prop[:4].sum() > 0.8 and prop[3] < 0.5


def test_group_ties_matches_a_hand_computed_case():
    """Column 0: three domains past the dead zone (2); z 4 is within 2 sqrt(2) of the best's 5, 2.1 is not:
    the first two take the best's z' 3, the third keeps 0.1. Column 1 has one: unchanged, negatives too."""
    z = np.array([[5.0, 1.0], [4.0, 3.0], [1.5, -3.0], [2.1, 0.5]])
    shrunk = np.sign(z) * np.clip(np.abs(z) - 2.0, 0.0, EVIDENCE_Z_CAP)
    grouped = group_ties(z, shrunk, 2.0)
    np.testing.assert_allclose(grouped, [[3.0, 0.0], [3.0, 1.0], [0.0, -1.0], [0.1, 0.0]], atol=1e-12)
    np.testing.assert_allclose(grouped, _naive_group(z, shrunk, 2.0), atol=1e-12)
    np.testing.assert_array_equal(shrunk[:, 1], grouped[:, 1])


def test_grouped_allocation_tilts_the_clusters_of_one_source_alike():
    """Four domains serve the task equally (a source cut in four), each probed with fresh noise: `tilt`
    gives most of their budget to whichever the noise puts first, `grouped` shares it among those past the
    dead zone, and the four together get no less."""
    largest = {"tilt": [], "grouped": []}
    for seed in range(5):
        rng = np.random.default_rng(seed)
        task = rng.normal(size=96)
        strength = np.array([1.0, 1.0, 1.0, 1.0, 0, 0, 0, 0])
        noisy = [
            terms_from_gradients(strength[:, None] * task + 1.5 * rng.normal(size=(8, 96)), task[None, :])
            for _ in range(10)
        ]
        finals = {a: run_rule(lambda t, seq=noisy: seq[t], 10, allocation=a)[0][-1] for a in largest}
        for allocation, final in finals.items():
            largest[allocation].append(final[:4].max() / final[:4].sum())
        assert finals["grouped"][:4].sum() >= finals["tilt"][:4].sum() - 0.02
        assert largest["grouped"][-1] <= largest["tilt"][-1]
    # an even share is 0.25 of the four
    assert np.mean(largest["tilt"]) > 0.45 and np.mean(largest["grouped"]) < 0.32


def test_live_split_gives_each_live_task_its_share_of_the_budget():
    """Two tasks, each the direction of its own domain among twelve, both live at the cap: `live_split` spends
    each task's share of the budget on its domain (the loop reference; each domain at its task's share),
    where `live`'s one tilt of the weighted z' gives the heavier task's domain most (the task weights act in
    the exponent)."""
    rng = np.random.default_rng(0)
    n = 128
    own = rng.normal(size=(12, n))
    tasks = own[:2] + 0.3 * rng.normal(size=(2, n))
    draws = [terms_from_gradients(own + 1.2 * rng.normal(size=own.shape), tasks) for _ in range(8)]
    finals = {}
    for combination in ("live_split", "live"):
        strategy = DIDSStrategy([f"d{i}" for i in range(12)], [100] * 12, combination=combination)
        p, history = strategy.initial_weights(), [[5.0, 4.0]]
        for t in range(8):
            history.append([5.0 * 0.9 ** (t + 1), 4.0 * 0.95 ** (t + 1)])
            p = strategy.update(p, {"impact": draws[t], "task_loss_history": np.array(history)})
        record = strategy.last_terms
        assert record["live_tasks"] == [True, True]
        z, w = np.asarray(record["z"]), np.asarray(record["task_weights"])
        base = np.full(12, 1.0 / 12)
        expected = _naive_p_hat(z, np.asarray(record["z_shrunk"]), w, base, 1.0 / 3.0, combination, "grouped")
        np.testing.assert_allclose(record["p_hat"], expected, rtol=1e-9, atol=1e-12)
        finals[combination] = (np.asarray(record["p_hat"]), w / w.sum())
    p_hat, share = finals["live_split"]
    np.testing.assert_allclose(p_hat[:2], share, atol=0.02)
    assert finals["live"][0][1] < 0.5 * share[1] and p_hat[2:].sum() < finals["live"][0][2:].sum()
