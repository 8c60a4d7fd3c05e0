"""FIM-guided domain impact (paper section 4.2, eq. 11-12) from streamed gradients.

Role: the impact step (repartition -> *impact* -> schedule -> sampler). For training domain D_i and
downstream task S_j with mean loss gradients g_D, g_S over a parameter subset and the diagonal
empirical Fisher F:

    I(D_i, S_j) = 1/2 (g_S - g_D)^T diag(F) (g_S - g_D)
                = 1/2 (sum F g_S^2 - 2 sum F g_S g_D + sum F g_D^2)

Every term is a coordinate-wise sum, so `ImpactAccumulator` adds them parameter block by parameter block
(a sharded model adds its local shards and all-reduces the scalars) and streams domains one at a time:
it never holds more than the task gradients, F and one domain gradient (and, for the domains' Gram matrix
that `pool_cosine` reads, each domain's vector given to `add_gram_vector`). `inner_product` gives the
DIDS-FIM ablation (paper Table 2: DGA's eq. 6 similarity, no Fisher). `ImpactAccumulator.terms()` hands the
three scalar families (|g_S|^2, <g_D, g_S>, |g_D|^2 under the metric) to the strategy as `ImpactTerms`,
from which the distance, the inner product (the `directional` rule's default) and the Fisher cosine follow.

The quadratic form is a distance (a KL divergence): smaller means the domain moves the model the way
the task would. `normalise_impacts` turns distances into non-negative impacts that sum to 1 per task:
(max_i I_ij - I_ij) / sum_i (max_i I_ij - I_ij), the normalisation of the paper's reference code,
which is correct for a distance; similarities are shifted by their minimum instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

from ..utils import collective_device, max_over_ranks, rank_and_world

#: `ImpactTerms.without_pool`: a part orthogonal to the pool gradient below this share of the gradient's
#: squared norm is rounding (the gradient lies along the pool's), not a direction
POOL_RESIDUAL = 1e-9


class ImpactAccumulator:
    """Accumulate the scalar terms of eq. 12 for k domains x m tasks, block by block.

    Usage per update: `add_task_block` for every parameter block (all tasks at once, with F), then for
    each domain `add_domain_block` for every block; `distances()` returns the [k, m] matrix.
    """

    def __init__(self, num_domains: int, num_tasks: int, *, metric: str = "fim", gram: str | None = None):
        if metric not in ("fim", "inner_product"):
            raise ValueError(f"metric must be 'fim' or 'inner_product', got {metric!r}.")
        if gram not in (None, "local", "whole"):
            raise ValueError(f"gram must be None, 'local' or 'whole', got {gram!r}.")
        import torch  # here, not at import: validating a config reads this module's tables without torch

        self.metric = metric
        self.k, self.m = num_domains, num_tasks
        self.task_sq = torch.zeros(num_tasks, dtype=torch.float64)  # sum F g_S^2
        self.cross = torch.zeros(num_domains, num_tasks, dtype=torch.float64)  # sum F g_S g_D
        self.domain_sq = torch.zeros(num_domains, dtype=torch.float64)  # sum F g_D^2
        # the domains' Gram matrix <g_Di, g_Dk>_M (`pool_cosine`): from each domain's M^{1/2} g_D, kept whole
        # or sketched; "local": every rank holds its own coordinates of every domain (partial Grams are
        # summed), "whole": a domain's vector is whole on the rank that adds it (the vectors are summed)
        self.gram_mode = gram
        self.gram_vectors: dict[int, torch.Tensor] = {}
        self.domain_gram: torch.Tensor | None = None

    def _weighted(self, grads: torch.Tensor, fisher: torch.Tensor | None) -> torch.Tensor:
        """M g in float64: diag(F) g for `fim` (which needs `fisher`), g itself for `inner_product`."""
        g = grads.double()
        if self.metric != "fim":
            return g
        if fisher is None:
            raise ValueError("the `fim` metric needs the Fisher of every block.")
        return g * fisher.double()

    def add_task_block(self, task_grads: torch.Tensor, fisher: torch.Tensor | None) -> None:
        """task_grads: [m, n] one parameter block of every task's mean gradient; fisher: [n] (None with
        `inner_product`)."""
        t = task_grads.double()
        self.task_sq += (self._weighted(t, fisher) * t).sum(dim=1).cpu()

    def add_domain_block(
        self, domain: int, domain_grad: torch.Tensor, task_grads: torch.Tensor, fisher: torch.Tensor | None
    ) -> None:
        """domain_grad: [n]; task_grads: [m, n]; fisher: [n] (the same block; None with `inner_product`)."""
        g = domain_grad.double()
        weighted = self._weighted(g, fisher)
        self.cross[domain] += (task_grads.double() @ weighted).cpu()
        self.domain_sq[domain] += (weighted * g).sum().cpu()

    def add_sketched_domain(
        self,
        domain: int,
        sketches: list[torch.Tensor],
        task_sketches: list[torch.Tensor],
        norm_weights: list[float],
    ) -> None:
        """Per layer: domain sketch [r]; task sketches of M g_S [m, r]; the weight of |sketch|^2 in
        |g_D|_M^2 (runtime.domain_gradients: inner products of sketches estimate those of the layers)."""
        for s, h, w in zip(sketches, task_sketches, norm_weights, strict=True):
            s = s.double()
            self.cross[domain] += (h.double() @ s).cpu()
            self.domain_sq[domain] += (w * (s * s).sum()).cpu()

    def add_gram_vector(self, domain: int, vector: torch.Tensor) -> None:
        """Domain `domain`'s M^{1/2} g_D as one flat vector (or its sketch; the same map for every domain)."""
        self.gram_vectors[domain] = vector.detach().double().flatten().cpu()

    def _gram(self) -> torch.Tensor:
        """[k, k] <g_Di, g_Dk>_M from the vectors (collective); its diagonal is the exact |g_D|_M^2."""
        import torch

        width = max((v.numel() for v in self.gram_vectors.values()), default=0)
        width = max_over_ranks(width)
        vectors = torch.zeros(self.k, width, dtype=torch.float64)
        for d, v in self.gram_vectors.items():
            vectors[d, : v.numel()] = v
        if self.gram_mode == "local":
            gram = _all_reduce_sum(vectors @ vectors.T)
        else:
            vectors = _all_reduce_sum(vectors)
            gram = vectors @ vectors.T
        self.gram_vectors = {}
        gram.diagonal().copy_(self.domain_sq)
        return gram

    def all_reduce(self) -> None:
        """Sum the partial terms over ranks (each rank added its shards or its domains)."""
        import torch

        if rank_and_world()[1] > 1:
            packed = _all_reduce_sum(torch.cat([self.task_sq, self.cross.flatten(), self.domain_sq]))
            self.task_sq = packed[: self.m]
            self.cross = packed[self.m : self.m + self.k * self.m].view(self.k, self.m)
            self.domain_sq = packed[self.m + self.k * self.m :]
        if self.gram_mode is not None:  # after the sums: the Gram's diagonal is the summed |g_D|^2
            self.domain_gram = self._gram()

    def distances(self) -> np.ndarray:
        """[k, m]: eq. 12 distances for `fim`; for `inner_product`, the similarities g_D . g_S."""
        if self.metric == "inner_product":
            return self.cross.numpy().copy()
        return self.terms().distance()

    def terms(self, num_tasks: int | None = None) -> ImpactTerms:
        """The accumulated scalars as `ImpactTerms`; columns past `num_tasks` are the control column."""
        m = self.m if num_tasks is None else num_tasks
        if not 0 < m <= self.m or self.m - m > 1:
            raise ValueError(f"num_tasks must be {self.m} or {self.m - 1} (with a control), got {m}.")
        task_sq, cross = self.task_sq.numpy(), self.cross.numpy()
        return ImpactTerms(
            task_sq=task_sq[:m].copy(),
            cross=cross[:, :m].copy(),
            domain_sq=self.domain_sq.numpy().copy(),
            control_sq=float(task_sq[m]) if m < self.m else None,
            control_cross=cross[:, m].copy() if m < self.m else None,
            metric=self.metric,
            domain_gram=None if self.domain_gram is None else self.domain_gram.numpy().copy(),
        )


def _all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """x summed over ranks (on the backend's device: CUDA for NCCL), back on the CPU."""
    import torch.distributed as dist

    if rank_and_world()[1] > 1:
        device = collective_device()
        out = x.to(device)
        dist.all_reduce(out)
        return out.cpu()
    return x


@dataclass
class ImpactTerms:
    """The three scalar families of eq. 12 for k domains and m tasks, under the metric M (diag(F) or I).

    From them every impact form is one line: the eq. 12 distance, the inner product (DGA's eq. 6 when
    M = I), and the cosine. The optional control column holds the same terms for a "control task" drawn
    from the whole training pool in natural proportions (the `directional` rule compares each domain's
    alignment with a task against its alignment with the pool).

    Attributes:
        task_sq: [m] |g_S|_M^2.
        cross: [k, m] <g_D, g_S>_M.
        domain_sq: [k] |g_D|_M^2.
        control_sq: |g_P|_M^2 of the pool control, or None.
        control_cross: [k] <g_D, g_P>_M, or None.
        metric: "fim" (M = diag(F)) or "inner_product" (M = I, the DIDS-FIM ablation).
        domain_rows: [k] rows behind each domain's gradient (probed rows, or the rows trained since the
            last update with `dids_domain_gradients: train`), or None where unknown.
        domain_gram: [k, k] <g_Di, g_Dk>_M (off the diagonal exact or from a sketch), or None where the
            probe did not keep it (only `pool_cosine` reads it).
    """

    task_sq: np.ndarray
    cross: np.ndarray
    domain_sq: np.ndarray
    control_sq: float | None = None
    control_cross: np.ndarray | None = None
    metric: str = "fim"
    domain_rows: np.ndarray | None = None
    domain_gram: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.cross.shape)  # type: ignore[return-value]

    def distance(self) -> np.ndarray:
        """[k, m] 1/2 |g_S - g_D|_M^2 (eq. 12; the squared Euclidean distance / 2 when M = I)."""
        out = 0.5 * (self.task_sq[None, :] + self.domain_sq[:, None] - 2.0 * self.cross)
        return np.clip(out, 0.0, None)

    def inner(self) -> np.ndarray:
        """[k, m] <g_D, g_S>_M."""
        return self.cross.copy()

    def cosine(self) -> np.ndarray:
        """[k, m] <g_D, g_S>_M / (|g_D|_M |g_S|_M) in [-1, 1]; 0 where a gradient is zero."""
        return _cosine(self.cross, self.domain_sq[:, None], self.task_sq[None, :])

    def without_pool(self, pool: np.ndarray) -> ImpactTerms:
        """The terms of every gradient's part orthogonal (in the metric) to the pool gradient
        g_P = sum_i pool_i g_Di (`pool`: [k] weights summing to 1): g_perp = g - (<g, g_P> / |g_P|^2) g_P, so
        <g_D_perp, g_S_perp> = <g_D, g_S> - <g_D, g_P> <g_S, g_P> / |g_P|^2 (needs `domain_gram`). A domain
        whose gradient lies along the pool's keeps no part (its cosine is 0 whatever its size)."""
        if self.domain_gram is None:
            raise ValueError(
                "pool-orthogonal terms need the domains' Gram matrix (`domain_gram`), which is None."
            )
        pi = np.asarray(pool, dtype=np.float64)
        gram = np.asarray(self.domain_gram, dtype=np.float64)
        domain_pool = gram @ pi  # [k] <g_Di, g_P>
        task_pool = pi @ self.cross  # [m] <g_P, g_S>
        pool_sq = float(pi @ domain_pool)  # |g_P|^2
        inverse = 1.0 / pool_sq if pool_sq > 0 else 0.0
        domain_sq = np.diagonal(gram) - domain_pool**2 * inverse
        task_sq = self.task_sq - task_pool**2 * inverse
        # what is left of a gradient along the pool's is rounding: no direction (its cosine is 0)
        domain_sq = np.where(domain_sq > POOL_RESIDUAL * np.diagonal(gram), domain_sq, 0.0)
        task_sq = np.where(task_sq > POOL_RESIDUAL * self.task_sq, task_sq, 0.0)
        return ImpactTerms(
            task_sq=task_sq,
            cross=self.cross - np.outer(domain_pool, task_pool) * inverse,
            domain_sq=domain_sq,
            metric=self.metric,
            domain_rows=self.domain_rows,
        )

    def control_cosine(self) -> np.ndarray | None:
        """[k] cosine of every domain with the pool control, or None without a control."""
        if self.control_cross is None or self.control_sq is None:
            return None
        return _cosine(self.control_cross, self.domain_sq, np.float64(self.control_sq))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (history records)."""
        return {
            "metric": self.metric,
            "task_sq": self.task_sq.tolist(),
            "cross": self.cross.tolist(),
            "domain_sq": self.domain_sq.tolist(),
            "control_sq": self.control_sq,
            "control_cross": None if self.control_cross is None else self.control_cross.tolist(),
            "domain_rows": None if self.domain_rows is None else self.domain_rows.tolist(),
            "domain_gram": None if self.domain_gram is None else self.domain_gram.tolist(),
        }

    @classmethod
    def from_distances(cls, distances: np.ndarray) -> ImpactTerms:
        """Terms whose `distance()` is the given [k, m] matrix (>= 0) and whose norms are 0 (tests, callers
        that only have eq. 12 distances; the cosine of such terms is 0)."""
        d = np.asarray(distances, dtype=np.float64)
        return cls(task_sq=np.zeros(d.shape[1]), cross=-d, domain_sq=np.zeros(d.shape[0]))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImpactTerms:
        return cls(
            task_sq=np.asarray(data["task_sq"], dtype=np.float64),
            cross=np.asarray(data["cross"], dtype=np.float64),
            domain_sq=np.asarray(data["domain_sq"], dtype=np.float64),
            control_sq=data.get("control_sq"),
            control_cross=None
            if data.get("control_cross") is None
            else np.asarray(data["control_cross"], dtype=np.float64),
            metric=data.get("metric", "fim"),
            domain_rows=None
            if data.get("domain_rows") is None
            else np.asarray(data["domain_rows"], dtype=np.float64),
            domain_gram=None
            if data.get("domain_gram") is None
            else np.asarray(data["domain_gram"], dtype=np.float64),
        )


def _cosine(cross: np.ndarray, a_sq: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    norm = np.sqrt(np.clip(a_sq, 0.0, None) * np.clip(b_sq, 0.0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(norm > 0, np.asarray(cross, dtype=np.float64) / np.where(norm > 0, norm, 1.0), 0.0)
    return np.clip(np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0), -1.0, 1.0)


class SparseJLProjection:
    """Sparse Johnson-Lindenstrauss projection (one +-1 per coordinate, SJLT) regenerated from a seed.

    Coordinates of parameter block b go to buckets drawn from a generator seeded with (seed, b), so the
    matrix is never stored and every rank and every call draws the same one. E|Px|^2 = |x|^2 and inner
    products are preserved in expectation; with F^{1/2} applied first, eq. 12 becomes
    1/2 |P F^{1/2} g_S - P F^{1/2} g_D|^2.
    """

    def __init__(self, dim: int, seed: int, *, cache_bytes: int = 0):
        if dim <= 0:
            raise ValueError(f"projection dim must be positive, got {dim}.")
        self.dim = dim
        self.seed = seed
        # blocks' buckets and signs kept as int32 + float32 (8 bytes per coordinate) up to `cache_bytes`
        self.cache_bytes = cache_bytes
        self._kept: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._kept_bytes = 0

    def _hash(self, block: int, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        g = torch.Generator().manual_seed(self.seed * 1_000_003 + block)
        buckets = torch.randint(0, self.dim, (n,), generator=g)
        # +-1 is exact in float32: a float64 x promotes in the product, a float32 one is not upcast
        signs = torch.randint(0, 2, (n,), generator=g).to(torch.float32).mul_(2).sub_(1)
        return buckets.to(device), signs.to(device)

    def block_hash(self, block: int, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(buckets [n], signs [n] of +-1) of parameter block `block`: drawn once and kept while all kept
        blocks fit `cache_bytes` (int32 buckets, float32 signs: float32 either way), else drawn again at
        every call."""
        import torch

        kept = self._kept.get(block)
        if kept is not None and kept[0].numel() == n:
            return kept[0].to(device), kept[1].to(device)
        buckets, signs = self._hash(block, n, device)
        if kept is None and self._kept_bytes + 8 * n <= self.cache_bytes:
            self._kept[block] = (buckets.to(torch.int32), signs)
            self._kept_bytes += 8 * n
            return self._kept[block]
        return buckets, signs

    def project_block(
        self,
        block: int,
        x: torch.Tensor,
        hashed: tuple[torch.Tensor, torch.Tensor] | None = None,
        *,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """[..., n] -> [..., dim]: the projection of parameter block `block` alone (the projection of a list
        of blocks is the sum of these); `hashed`: its `block_hash`, if kept. Summed in float64 unless `dtype`
        says otherwise (the training hooks sum in float32: each bucket adds about n / dim values, and the
        float64 copy of x costs more than the product it hashes)."""
        import torch

        dtype = torch.float64 if dtype is None else dtype
        buckets, signs = hashed if hashed is not None else self.block_hash(block, x.shape[-1], x.device)
        out = torch.zeros(*x.shape[:-1], self.dim, dtype=dtype, device=x.device)
        return out.index_add_(out.dim() - 1, buckets, x.to(dtype) * signs)

    def project(self, blocks: list[torch.Tensor], spans: list[tuple[int, int]] | None = None) -> torch.Tensor:
        """Project per-block vectors; returns [..., dim] float64.

        Args:
            blocks: per parameter block, [..., n_b] (same leading shape).
            spans: per block, (start, full_length) when `blocks[b]` holds only coordinates
                start..start+n_b of a block of full_length (a rank's shard): the shard's columns of the
                same matrix are used, so the projections of a block's shards sum to the block's projection.
        """
        import torch

        lead = blocks[0].shape[:-1]
        out = torch.zeros(*lead, self.dim, dtype=torch.float64, device=blocks[0].device)
        for b, x in enumerate(blocks):
            start, full = (0, x.shape[-1]) if spans is None else spans[b]
            buckets, signs = self.block_hash(b, full, x.device)
            stop = start + x.shape[-1]
            out.index_add_(out.dim() - 1, buckets[start:stop], x.double() * signs[start:stop])
        return out


def normalise_impacts(values: np.ndarray, *, kind: str = "distance") -> np.ndarray:
    """Per task (column), map [k, m] distances or similarities to impacts >= 0 summing to 1 over domains.

    A column whose values are all equal (no information) becomes uniform.
    """
    v = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if kind == "distance":
        score = v.max(axis=0, keepdims=True) - v
    elif kind == "similarity":
        score = v - v.min(axis=0, keepdims=True)
    else:
        raise ValueError(f"kind must be 'distance' or 'similarity', got {kind!r}.")
    total = score.sum(axis=0, keepdims=True)
    uniform = np.full_like(score, 1.0 / score.shape[0])
    return np.where(total > 0, score / np.where(total > 0, total, 1.0), uniform)


def alignment_shares(alignment: np.ndarray) -> np.ndarray:
    """Per task, each domain's share of the first-order loss reduction: max(<g_D, g_S>, 0) / sum over domains.

    A step of size eta on domain i lowers task j's loss by about eta <g_Di, g_Sj> (eq. 6), so the positive
    parts, normalised per column, say which domains can reduce that task's loss and by how much. A column
    with no positive entry (no domain helps) becomes uniform. Used by the baselines that observe per-task
    losses (DoReMi, Velocitune) to hand each task's signal to the training domains.

    Args:
        alignment: float [k, m] gradient inner products.

    Returns:
        float64 [k, m], non-negative, every column summing to 1.
    """
    a = np.clip(
        np.nan_to_num(np.asarray(alignment, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0), 0, None
    )
    total = a.sum(axis=0, keepdims=True)
    uniform = np.full_like(a, 1.0 / a.shape[0])
    return np.where(total > 0, a / np.where(total > 0, total, 1.0), uniform)


def exact_impact(domain_grads: np.ndarray, task_grads: np.ndarray, fisher: np.ndarray) -> np.ndarray:
    """Reference: the [k, m] matrix of eq. 12 with every gradient in memory (tests, small models)."""
    diff = task_grads[None, :, :] - domain_grads[:, None, :]
    return 0.5 * np.einsum("kmn,n,kmn->km", diff, fisher, diff)
