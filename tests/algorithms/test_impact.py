"""FIM-guided impact: streamed accumulation vs the exact quadratic form, and the KL it approximates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llamafactory_dids.algorithms.impact import ImpactAccumulator, exact_impact, normalise_impacts


def _random_problem(seed=0, k=5, m=3, n=40):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(k, n)), rng.normal(size=(m, n)), rng.exponential(size=n)


def test_streamed_blocks_equal_the_exact_form():
    domains, tasks, fisher = _random_problem()
    acc = ImpactAccumulator(5, 3)
    blocks = [slice(0, 7), slice(7, 25), slice(25, 40)]  # parameter tensors of unequal size
    for b in blocks:
        acc.add_task_block(torch.tensor(tasks[:, b]), torch.tensor(fisher[b]))
    for d in range(5):  # one domain at a time
        for b in blocks:
            acc.add_domain_block(
                d, torch.tensor(domains[d, b]), torch.tensor(tasks[:, b]), torch.tensor(fisher[b])
            )
    np.testing.assert_allclose(acc.distances(), exact_impact(domains, tasks, fisher), rtol=1e-10)


def test_inner_product_metric_is_dga():
    domains, tasks, fisher = _random_problem(1)
    acc = ImpactAccumulator(5, 3, metric="inner_product")
    acc.add_task_block(torch.tensor(tasks), torch.tensor(fisher))
    for d in range(5):
        acc.add_domain_block(d, torch.tensor(domains[d]), torch.tensor(tasks), torch.tensor(fisher))
    np.testing.assert_allclose(acc.distances(), domains @ tasks.T, rtol=1e-10)
    # the identity metric never reads the Fisher, so the probe passes none; `fim` refuses to go without it
    plain = ImpactAccumulator(5, 3, metric="inner_product")
    plain.add_task_block(torch.tensor(tasks), None)
    for d in range(5):
        plain.add_domain_block(d, torch.tensor(domains[d]), torch.tensor(tasks), None)
    np.testing.assert_array_equal(plain.distances(), acc.distances())
    with pytest.raises(ValueError, match="needs the Fisher"):
        ImpactAccumulator(5, 3).add_task_block(torch.tensor(tasks), None)


def test_quadratic_form_approximates_the_kl_of_small_updates():
    """For a softmax model p(y|theta), 1/2 d^T F d matches KL[p(theta + u) || p(theta + v)] as steps shrink."""
    torch.manual_seed(0)
    logits = torch.randn(6, dtype=torch.float64)
    p = torch.softmax(logits, 0)
    fisher_full = torch.diag(p) - torch.outer(p, p)  # exact Fisher of a categorical in logit space
    u, v = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    for eps in (1e-2, 1e-3):
        kl = torch.sum(
            torch.softmax(logits + eps * u, 0)
            * (torch.log_softmax(logits + eps * u, 0) - torch.log_softmax(logits + eps * v, 0))
        )
        d = eps * (v - u)
        approx = 0.5 * d @ fisher_full @ d
        assert approx.item() == pytest.approx(kl.item(), rel=5 * eps)


def test_normalise_distances_and_similarities():
    dist = np.array([[1.0, 2.0], [3.0, 2.0], [2.0, 2.0]])
    imp = normalise_impacts(dist)
    np.testing.assert_allclose(imp[:, 0], [2 / 3, 0, 1 / 3])  # closest domain gets the most
    np.testing.assert_allclose(imp[:, 1], [1 / 3] * 3)  # no information: uniform
    sim = normalise_impacts(np.array([[1.0], [3.0], [2.0]]), kind="similarity")
    np.testing.assert_allclose(sim[:, 0], [0, 2 / 3, 1 / 3])  # most aligned domain gets the most
    assert (imp >= 0).all() and np.allclose(imp.sum(axis=0), 1)
    with pytest.raises(ValueError, match="kind must be"):
        normalise_impacts(dist, kind="other")


def test_sparse_jl_projection_preserves_the_impact_ranking():
    from scipy.stats import spearmanr

    from llamafactory_dids.algorithms.impact import SparseJLProjection

    rng = np.random.default_rng(3)
    k, m, n = 24, 3, 20000
    base = rng.normal(size=n)
    domains = base + rng.normal(size=(k, n)) * rng.uniform(0.5, 2.0, size=(k, 1))
    tasks = base + rng.normal(size=(m, n))
    fisher = rng.exponential(size=n)
    exact = exact_impact(domains, tasks, fisher)
    proj = SparseJLProjection(4096, seed=5)
    scale = torch.tensor(np.sqrt(fisher))
    blocks = [slice(0, 5000), slice(5000, n)]  # two parameter blocks with their own hashes

    def project(x):
        return proj.project([torch.tensor(x[..., b]) * scale[b] for b in blocks])

    acc = ImpactAccumulator(k, m)
    h_tasks = project(tasks)
    ones = torch.ones(4096, dtype=torch.float64)
    acc.add_task_block(h_tasks, ones)
    for d in range(k):
        acc.add_domain_block(d, project(domains[d]), h_tasks, ones)
    approx = acc.distances()
    assert spearmanr(approx.ravel(), exact.ravel()).statistic > 0.98
    np.testing.assert_allclose(approx, exact, rtol=0.1)
    # the same seed regenerates the same matrix; another seed gives another one
    assert torch.equal(project(tasks), h_tasks)
    assert not torch.equal(
        SparseJLProjection(4096, seed=6).project([torch.tensor(tasks)]), proj.project([torch.tensor(tasks)])
    )


def test_projection_hash_cache_keeps_blocks_within_its_budget_and_projects_identically():
    """Kept buckets and signs (int32 + float32, 8 bytes a coordinate) give the projection drawn afresh,
    whole and by shard spans; blocks past `cache_bytes` are drawn again instead of kept."""
    from llamafactory_dids.algorithms.impact import SparseJLProjection

    rng = np.random.default_rng(4)
    sizes = [300, 500, 200]
    blocks = [torch.tensor(rng.normal(size=(2, n))) for n in sizes]
    fresh = SparseJLProjection(64, seed=9)
    kept = SparseJLProjection(64, seed=9, cache_bytes=8 * (300 + 500))
    for _ in range(2):  # the second call reads the kept hashes
        assert torch.equal(kept.project(blocks), fresh.project(blocks))
    assert sorted(kept._kept) == [0, 1] and kept._kept_bytes == 8 * 800
    assert kept._kept[0][0].dtype == torch.int32 and kept._kept[0][1].dtype == torch.float32
    # a shard (coordinates 100..250 of block 1) uses the same columns as the whole block
    spans = [(0, 300), (100, 500), (0, 200)]
    shard = [blocks[0], blocks[1][:, 100:250], blocks[2]]
    assert torch.equal(kept.project(shard, spans), fresh.project(shard, spans))
    for b, x in enumerate(blocks):
        assert torch.equal(kept.project_block(b, x), fresh.project_block(b, x))
        # the training hooks' float32 sums: the same buckets and signs, float32 rounding only
        single = kept.project_block(b, x.float(), dtype=torch.float32)
        assert single.dtype == torch.float32
        torch.testing.assert_close(single.double(), fresh.project_block(b, x), rtol=1e-5, atol=1e-5)
