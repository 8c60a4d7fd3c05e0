"""Spherical k-means of projected features inside each initial source (paper section 4.1).

Role: the clustering step of repartition (features -> *clustering* -> domains -> impact -> schedule).
"Building upon initial semantic categorization, k-means clustering on these reduced gradient vectors
refines each domain": every source (a `dataset:` entry or a source column value) is split on its own into
k_s clusters; the paper uses 72 domains from 18 sources.

Features are L2-normalised first (spherical k-means: rows compare by direction; a per-example gradient's
norm follows how large the row's loss is rather than what the row is about, and the projection's scale is
a constant; docs/repartition.md, "Clustering"). Backends: faiss when installed
(`faiss.Kmeans(spherical=True)`), else scikit-learn `KMeans` on the normalised rows with centroids
re-normalised. Both are seeded and deterministic. For large inputs the centroids are fitted on a seeded
sample of `max_points_per_centroid * k` rows and every row is then assigned to its nearest centroid in
chunks (one search pass).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

CLUSTERERS = ("auto", "sklearn", "faiss")


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_clusterer(name: str) -> str:
    """`auto` -> `faiss` when importable, else `sklearn`; `faiss` without faiss raises."""
    if name == "auto":
        return "faiss" if faiss_available() else "sklearn"
    if name == "faiss" and not faiss_available():
        raise ValueError(
            "`dids_clusterer: faiss` but faiss is not installed. Install `faiss-cpu` (or `faiss-gpu`), or set "
            "`dids_clusterer: sklearn`."
        )
    if name not in CLUSTERERS:
        raise ValueError(f"`dids_clusterer` must be one of {', '.join(CLUSTERERS)}, got {name!r}.")
    return name


def allocate_domains(sizes: Sequence[int], total: int) -> list[int]:
    """Split `total` domains over sources proportionally to their sizes (highest averages,
    D'Hondt: each next domain goes to the source with the most rows per domain).

    Every source gets at least one domain and at most as many as it has rows. Ties go to the earlier
    source, so the result is deterministic.

    Raises:
        ValueError: if total < number of sources or total > number of rows.
    """
    sizes = [int(s) for s in sizes]
    if total < len(sizes):
        raise ValueError(
            f"{total} domains cannot cover {len(sizes)} sources (each source needs at least one)."
        )
    if total > sum(sizes):
        raise ValueError(f"{total} domains for only {sum(sizes)} rows.")
    counts = [1] * len(sizes)
    for _ in range(total - len(sizes)):
        # give the next domain to the source with the most rows per domain that can still take one
        best = max(
            (i for i in range(len(sizes)) if counts[i] < sizes[i]),
            key=lambda i: (sizes[i] / counts[i], -i),
        )
        counts[best] += 1
    return counts


def normalise_rows(x: np.ndarray) -> np.ndarray:
    """[n, d] float32 rows scaled to unit norm (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def assign(x: np.ndarray, centroids: np.ndarray, *, chunk: int = 65536) -> np.ndarray:
    """[n] index of the nearest unit centroid (largest inner product) of each normalised row, chunked."""
    out = np.empty(len(x), dtype=np.int64)
    for start in range(0, len(x), chunk):
        out[start : start + chunk] = np.argmax(x[start : start + chunk] @ centroids.T, axis=1)
    return out


def _fit_sklearn(x: np.ndarray, k: int, seed: int, n_init: int, max_iter: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, n_init=n_init, max_iter=max_iter, random_state=seed).fit(x)
    return normalise_rows(km.cluster_centers_)


def _fit_faiss(x: np.ndarray, k: int, seed: int, n_init: int, max_iter: int) -> np.ndarray:
    import faiss

    km = faiss.Kmeans(
        x.shape[1],
        k,
        niter=max_iter,
        nredo=n_init,
        seed=seed,
        spherical=True,
        max_points_per_centroid=len(x),  # sampling is done (seeded) by the caller
        min_points_per_centroid=1,
        verbose=False,
    )
    km.train(np.ascontiguousarray(x, dtype=np.float32))
    return normalise_rows(km.centroids)


def spherical_kmeans(
    features: np.ndarray,
    k: int,
    *,
    seed: int = 0,
    backend: str = "auto",
    max_points_per_centroid: int = 256,
    n_init: int = 1,
    max_iter: int = 50,
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster rows by cosine geometry.

    Args:
        features: [n, d] (any scale; rows are normalised here).
        k: clusters, 1 <= k <= n.
        max_points_per_centroid: fit on a seeded sample of this many rows per centroid when n is larger.

    Returns:
        labels [n] int64 in [0, k) and unit centroids [k, d] float32. A cluster can end up empty only
        when the centroids were fitted on a sample; callers drop empty clusters.
    """
    x = normalise_rows(features)
    n = len(x)
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}.")
    if k == 1:
        centroid = normalise_rows(x.mean(axis=0, keepdims=True))
        return np.zeros(n, dtype=np.int64), centroid
    backend = resolve_clusterer(backend)
    limit = max(k, max_points_per_centroid * k)
    fit_rows = x
    if n > limit:
        rng = np.random.default_rng([seed, 17])
        fit_rows = x[np.sort(rng.choice(n, size=limit, replace=False))]
    fit = _fit_faiss if backend == "faiss" else _fit_sklearn
    centroids = fit(fit_rows, k, seed, n_init, max_iter)
    return assign(x, centroids), centroids


def cluster_statistics(features: np.ndarray, labels: np.ndarray, centroids: np.ndarray) -> list[dict]:
    """Per cluster: size and the cosine of its rows to the centroid (mean, std, min) and the centroid norm
    of the mean direction (1 = all rows identical in direction).

    Args:
        features: [n, d]; labels: [n]; centroids: [k, d] unit rows.
    """
    x = normalise_rows(features)
    stats = []
    for c in range(len(centroids)):
        rows = x[labels == c]
        if len(rows) == 0:
            stats.append({"size": 0})
            continue
        cos = rows @ centroids[c]
        stats.append(
            {
                "size": int(len(rows)),
                "cosine_mean": float(cos.mean()),
                "cosine_std": float(cos.std()),
                "cosine_min": float(cos.min()),
                "mean_resultant_length": float(np.linalg.norm(rows.mean(axis=0))),
            }
        )
    return stats


def order_by_first_row(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Relabel clusters 0..m-1 in the order of their first row, dropping empty ones.

    Returns:
        new labels [n] and the old cluster id of each new label [m] (to reorder centroids).
    """
    _, first = np.unique(labels, return_index=True)
    old_ids = labels[np.sort(first)]
    mapping = np.full(int(labels.max()) + 1 if len(labels) else 0, -1, dtype=np.int64)
    mapping[old_ids] = np.arange(len(old_ids))
    return mapping[labels], old_ids


def label_width(count: int) -> int:
    """Digits of domain suffixes: at least 2 (`code_03`)."""
    return max(2, int(math.log10(max(count - 1, 1))) + 1)
