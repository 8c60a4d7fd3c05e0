"""Spherical k-means per source: domain allocation, recovery of planted clusters, determinism, sampling.

References: planted directions on the unit sphere (the true labels), a hand-computed allocation, an
explicit nearest-centroid search, and exact statistics on a tiny example.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from llamafactory_dids.algorithms.clustering import (
    allocate_domains,
    assign,
    cluster_statistics,
    faiss_available,
    label_width,
    normalise_rows,
    order_by_first_row,
    resolve_clusterer,
    spherical_kmeans,
)

BACKENDS = ["sklearn"] + (["faiss"] if faiss_available() else [])


def planted(n_per, k, dim=32, noise=0.3, seed=0, scale_spread=True):
    """Rows around k random directions, with very different norms (which spherical k-means ignores)."""
    rng = np.random.default_rng(seed)
    centres = normalise_rows(rng.standard_normal((k, dim)))
    labels = np.repeat(np.arange(k), n_per)
    x = centres[labels] + noise * rng.standard_normal((len(labels), dim)) / np.sqrt(dim)
    if scale_spread:
        x *= rng.uniform(0.1, 10.0, size=(len(labels), 1))
    perm = rng.permutation(len(labels))
    return x[perm].astype(np.float32), labels[perm]


@pytest.mark.parametrize("backend", BACKENDS)
def test_recovers_planted_clusters_whatever_the_norms(backend):
    x, truth = planted(60, 5)
    labels, centroids = spherical_kmeans(x, 5, seed=0, backend=backend, n_init=3)
    assert adjusted_rand_score(truth, labels) > 0.95
    assert np.allclose(np.linalg.norm(centroids, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(labels, assign(normalise_rows(x), centroids))


@pytest.mark.parametrize("backend", BACKENDS)
def test_seeded_runs_are_identical(backend):
    x, _ = planted(40, 6, noise=1.5, seed=1)
    first = spherical_kmeans(x, 6, seed=3, backend=backend)
    second = spherical_kmeans(x, 6, seed=3, backend=backend)
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])


def test_fit_on_sample_then_assign_everything():
    x, truth = planted(500, 4, seed=2)
    labels, centroids = spherical_kmeans(
        x, 4, seed=0, backend="sklearn", max_points_per_centroid=20, n_init=3
    )
    assert len(labels) == len(x)
    assert adjusted_rand_score(truth, labels) > 0.95


def test_allocation_is_proportional_with_at_least_one_each():
    assert allocate_domains([100, 100, 100], 6) == [2, 2, 2]
    assert allocate_domains([300, 100, 5], 8) == [5, 2, 1]  # 300/5 = 60 < 100/1: the next one goes to 100
    assert allocate_domains([2, 100], 10) == [1, 9]
    assert allocate_domains([2, 3], 5) == [2, 3]  # capped by rows
    assert allocate_domains([1000] * 18, 72) == [4] * 18  # the paper: 72 domains from 18 sources
    with pytest.raises(ValueError, match="cannot cover 3 sources"):
        allocate_domains([5, 5, 5], 2)
    with pytest.raises(ValueError, match="for only 10 rows"):
        allocate_domains([5, 5], 11)


def test_statistics_and_relabelling():
    x = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=np.float32)
    labels = np.array([4, 1, 4, 1, 4])
    new, old = order_by_first_row(labels)
    assert new.tolist() == [0, 1, 0, 1, 0] and old.tolist() == [4, 1]
    centroids = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    stats = cluster_statistics(x, new, centroids)
    assert stats[0]["size"] == 3 and stats[1]["size"] == 2
    assert stats[1]["cosine_mean"] == pytest.approx(1.0) and stats[1]["cosine_min"] == pytest.approx(1.0)
    assert stats[0]["cosine_min"] == pytest.approx(np.sqrt(0.5), abs=1e-6)
    assert stats[0]["cosine_mean"] == pytest.approx((2 + np.sqrt(0.5)) / 3, abs=1e-6)


def test_single_cluster_and_bad_k():
    x, _ = planted(5, 2)
    labels, centroids = spherical_kmeans(x, 1)
    assert labels.tolist() == [0] * 10 and centroids.shape == (1, 32)
    with pytest.raises(ValueError, match=r"k must be in \[1, 10\]"):
        spherical_kmeans(x, 11)


def test_clusterer_names_and_width():
    assert resolve_clusterer("sklearn") == "sklearn"
    assert resolve_clusterer("auto") == ("faiss" if faiss_available() else "sklearn")
    with pytest.raises(ValueError, match="must be one of auto, sklearn, faiss"):
        resolve_clusterer("hdbscan")
    assert [label_width(n) for n in (1, 10, 11, 100, 101)] == [2, 2, 2, 2, 3]
