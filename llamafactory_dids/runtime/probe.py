"""Probe passes on the training model: task losses, and the gradients behind the FIM-guided impact.

Role: provides the `impact` and `task_loss_history` signals of the DIDS strategy (paper eq. 11-15) inside
the training process. At an update every rank runs, in lockstep and after the optimizer step:

1. task losses: a forward-only pass over each task's fixed observation samples (token-weighted mean),
   split across ranks and all-reduced;
2. task gradients and the diagonal empirical Fisher: `torch.autograd.grad` of the loss of micro-batches
   of `fisher_batch_size` observation rows (1 = exact per-example Fisher) over the probed parameters;
   mean gradients g_S and F = mean of squared micro-batch gradients, all-reduced;
3. domain gradients, streamed: each rank takes every world_size-th domain, draws `probe_samples` rows of
   it (seeded by update and domain), and adds the eq. 12 terms block by block to an `ImpactAccumulator`;
   the scalars are all-reduced. At most the m task gradients, F and one domain gradient are in memory,
   plus, when the impact reads the domains' Gram matrix (`pool_cosine`), every domain's gradient (whole up
   to `GRAM_EXACT_BYTES`, else a `GRAM_SKETCH_DIM`-bucket sketch of each); with `projection_dim` the task
   gradients are kept only as their [m, dim] sparse JL projection of F^{1/2} g, and each domain gradient
   is projected the same way. With `domain_gradients="train"` the domain side is not probed:
   `runtime.domain_gradients` has summed, during the training backward, every trained row's gradient by
   domain since the last update, and step 3 takes those means (probing only a domain that had no trained
   row).

Under DeepSpeed ZeRO-3 (parameters partitioned across ranks) the probe runs *sharded* (the collective
pieces are `all_reduce` and `CoordinateShards` in `runtime.sharding`, `max_over_ranks` in `utils`): every
forward gathers parameters collectively, so all ranks run the same number of passes (padding with discarded
passes), every domain is probed by all ranks together (each on its share of the domain's rows), and each
micro-batch-summed gradient is reduce-scattered so that a rank keeps only its slice of the coordinates
(chunk `rank` of every probed tensor). Eq. 12 is a sum over coordinates, so each rank adds the terms of
its slice and the [k, m] scalars are all-reduced; with a projection, each rank projects its slice with
the same matrix's columns and the [dim] vectors are all-reduced. Memory per rank: m task slices, one
Fisher slice and the transient full gradient of the probed tensors. The sharded mode gives the same
numbers as the replicated one (tested under torchrun with 2 processes).

The probe runs on the unwrapped module in eval mode (no dropout; gradient checkpointing, which is
incompatible with `autograd.grad` when reentrant, is only active in train mode), then restores the mode.
Probed parameters: the trainable matrices (ndim >= 2: linear weights, LoRA factors) of the last
`layers_fraction` of the transformer blocks, plus `lm_head` on request. Say so in the docs: the paper's
reference code took the last 10% of parameter tensors instead, which includes or skips `lm_head`
depending on weight tying.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..algorithms.features import full_shape, last_block_matrices, row_losses, transformer_blocks
from ..algorithms.fisher import FISHER_ESTIMATORS, fisher_term
from ..algorithms.impact import ImpactAccumulator, ImpactTerms, SparseJLProjection
from ..data.domains import DOMAIN_ID_COLUMN, ROW_ID_COLUMN
from ..utils import IGNORE_INDEX, max_over_ranks, rank_and_world
from .domain_gradients import DOMAIN_GRADIENT_SOURCES, DomainGradientHooks
from .sharding import CoordinateShards, all_reduce, is_partitioned

logger = logging.getLogger(__name__)


#: `pool_cosine` keeps the domains' gradients whole for their Gram matrix up to this size (float64, per rank)
GRAM_EXACT_BYTES = 1 << 30
#: ... and above it their sparse JL sketches into this many buckets (a fresh draw each update, shared by
#: every domain of the update)
GRAM_SKETCH_DIM = 1 << 14
#: the sketch's buckets and signs (8 bytes per probed parameter) are drawn once per update up to this size,
#: else again for each domain
GRAM_HASH_CACHE_BYTES = 1 << 30


def select_probe_parameters(
    model: torch.nn.Module, *, layers_fraction: float = 0.1, include_lm_head: bool = False
) -> list[tuple[str, torch.nn.Parameter]]:
    """Trainable matrices of the last `layers_fraction` of blocks (at least one block), `lm_head` on request.

    Raises:
        ValueError: if the model has no transformer blocks or no trainable matrix there (with the LoRA fix).
    """
    try:
        return last_block_matrices(
            model,
            transformer_blocks(model),
            layers_fraction,
            trainable_only=True,
            include_lm_head=include_lm_head,
        )
    except ValueError as err:
        if "No trainable matrix" not in str(err):
            raise
        raise ValueError(
            f"{str(err)[:-1]} to probe. With LoRA, make sure `lora_target` covers those layers, or raise "
            "`dids_probe_layers_fraction`."
        ) from None


def _check_choices(**values: str) -> None:
    """Raise ValueError for a `fisher_estimator` or `domain_gradients` outside its allowed values."""
    for name, allowed in (
        ("fisher_estimator", FISHER_ESTIMATORS),
        ("domain_gradients", DOMAIN_GRADIENT_SOURCES),
    ):
        if values[name] not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {values[name]!r}.")


class GradientProbe:
    """Computes task losses and the [k, m] impact matrix on the current parameters."""

    def __init__(
        self,
        model: torch.nn.Module,
        collate: Callable[[list[dict[str, Any]]], dict[str, Any]],
        train_rows: Callable[[Sequence[int]], list[dict[str, Any]]],
        domain_pools: Sequence[np.ndarray],
        task_rows: Sequence[list[dict[str, Any]]],
        *,
        device: torch.device,
        probe_samples: int,
        fisher_batch_size: int,
        eval_batch_size: int,
        metric: str,
        layers_fraction: float,
        include_lm_head: bool,
        seed: int,
        projection_dim: int = 0,
        fisher_estimator: str = "batch",
        sharded: bool | None = None,
        gradients: bool = True,
        domain_gradients: str = "probe",
        domain_sketch_dim: int = 0,
        loss_samples: int | None = None,
    ):
        self.model = model
        self.collate = collate
        self.train_rows = train_rows
        self.domain_pools = [np.asarray(p) for p in domain_pools]
        self.task_rows = list(task_rows)
        # the task losses read each task's first `loss_samples` rows (all with None); the gradient windows
        # rotate through all of them
        self.loss_samples = loss_samples
        self.device = device
        self.probe_samples = probe_samples
        self.fisher_batch_size = fisher_batch_size
        self.eval_batch_size = eval_batch_size
        self.metric = metric
        self.seed = seed
        _check_choices(fisher_estimator=fisher_estimator, domain_gradients=domain_gradients)
        self.fisher_estimator = fisher_estimator
        self.projection = SparseJLProjection(projection_dim, seed) if projection_dim > 0 else None
        # without gradient signals (a static strategy observing task losses) only forward passes run
        self.params = (
            select_probe_parameters(model, layers_fraction=layers_fraction, include_lm_head=include_lm_head)
            if gradients
            else []
        )
        self.shapes = [full_shape(p) for _, p in self.params]
        self.num_probe_parameters = sum(math.prod(shape) for shape in self.shapes)
        # ZeRO-3: forward passes are collective (parameters are gathered), so ranks run in lockstep
        if sharded is None:
            sharded = any(
                is_partitioned(p)
                for p in (model.parameters() if not gradients else (p for _, p in self.params))
            )
        self.sharded = sharded
        # train: the domain side from the training backward's hooks (runtime.domain_gradients)
        self.last_domain_rows = np.zeros(len(self.domain_pools))  # of the latest impact (history records)
        self.train_gradients = None
        if gradients and domain_gradients == "train":
            self.train_gradients = self._train_gradient_hooks(domain_sketch_dim)
        if gradients:
            self._log_probe()

    def _train_gradient_hooks(self, domain_sketch_dim: int) -> DomainGradientHooks:
        """Hooks taking the domain side from the training backward (`domain_gradients: train`)."""
        if domain_sketch_dim and (self.sharded or self.projection is not None):
            raise ValueError(
                "a domain sketch (`dids_domain_sketch_dim`) works on whole, unprojected task gradients: "
                "not under ZeRO-3 and not with `dids_projection_dim` (set one of them to 0)."
            )
        return DomainGradientHooks(
            self.model,
            self.params,
            len(self.domain_pools),
            self.shapes,
            self.device,
            sketch_dim=domain_sketch_dim,
            seed=self.seed,
        )

    def _log_probe(self) -> None:
        names = ", ".join(n for n, _ in self.params[:4]) + (" ..." if len(self.params) > 4 else "")
        logger.info(
            "[dids] impact probe over %d tensors (%d parameters%s%s): %s",
            len(self.params),
            self.num_probe_parameters,
            ", sharded across ranks" if self.sharded else "",
            ", domain side from the training backward" if self.train_gradients is not None else "",
            names,
        )

    # ------------------------------------------------------------------------------------- batches
    def _batch(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collate(rows)
        batch.pop(DOMAIN_ID_COLUMN, None)
        batch.pop(ROW_ID_COLUMN, None)
        return {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}

    def _micro_batches(self, rows: list[dict[str, Any]], size: int, filler: list[dict[str, Any]]):
        """Yield (batch, real) over `rows` in chunks of `size`; in sharded mode, pad with discarded batches.

        Sharded ranks must run the same number of forward (and backward) passes; a padding pass runs on
        `filler` rows and `real` is False. Batches without a supervised token are never real.
        """
        chunks = [rows[start : start + size] for start in range(0, len(rows), size)]
        total = len(chunks)
        if self.sharded:
            total = max_over_ranks(total, self.device)
        for i in range(total):
            real = i < len(chunks)
            batch = self._batch(chunks[i] if real else filler[:size])
            if (batch["labels"][..., 1:] != IGNORE_INDEX).sum() == 0:
                if not self.sharded:
                    continue
                real = False
            yield batch, real

    def _eval_mode(self):
        probe = self

        class _Mode:
            def __enter__(self):
                self.was_training = probe.model.training
                probe.model.eval()

            def __exit__(self, *exc):
                probe.model.train(self.was_training)

        return _Mode()

    # -------------------------------------------------------------------------------- task losses
    def task_losses(self, *, every_row: bool = False) -> np.ndarray:
        """[m] token-weighted mean loss of every task on its first `loss_samples` observation rows, or with
        `every_row` on all of them (the final evaluation: the same rows for every strategy) (collective)."""
        rank, world = rank_and_world()
        sums = torch.zeros(2 * len(self.task_rows), dtype=torch.float64, device=self.device)
        with self._eval_mode(), torch.no_grad():
            for j, rows in enumerate(self.task_rows):
                rows = rows if every_row else rows[: self.loss_samples]
                for batch, real in self._micro_batches(rows[rank::world], self.eval_batch_size, rows):
                    loss = self.model(**batch).loss
                    if real:
                        tokens = (batch["labels"][..., 1:] != IGNORE_INDEX).sum()
                        sums[2 * j] += loss.double() * tokens
                        sums[2 * j + 1] += tokens
        sums = all_reduce(sums).cpu().numpy()
        return sums[0::2] / np.maximum(sums[1::2], 1)

    # ---------------------------------------------------------------------------------- gradients
    def _grad_sums(
        self, rows: list[dict[str, Any]], *, squares: bool, filler: list[dict[str, Any]] | None = None
    ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None, int, int]:
        """Sums of per-example gradients and of Fisher terms (if asked); micro-batch and example counts.

        An example's gradient is that of its own mean token loss (the paper's mean loss gradients are
        means over examples), whatever `fisher_batch_size` groups the rows: each micro-batch backpropagates
        the sum of its rows' mean losses. Fisher terms per micro-batch: `batch`, the squared mean gradient of
        the micro-batch (exact per-example Fisher at micro-batch 1, the reference code's estimator above);
        `per_token` and `kfac`, per example from each probed linear layer's input x and output gradient
        delta (`algorithms.fisher.fisher_term`), summed over the rows, so independent of the grouping as well. Probed
        tensors outside linear layers use the squared gradient.
        """
        params = [p for _, p in self.params]
        sums = [torch.zeros(shape, dtype=torch.float32, device=self.device) for shape in self.shapes]
        sq = (
            [torch.zeros(shape, dtype=torch.float32, device=self.device) for shape in self.shapes]
            if squares
            else None
        )
        from_hooks = squares and self.fisher_estimator != "batch"
        captured: dict[int, list[torch.Tensor]] = {}
        handles = self._capture_linear_io(captured) if from_hooks else []
        count = num_rows = 0
        try:
            for batch, real in self._micro_batches(rows, self.fisher_batch_size, filler or rows):
                captured.clear()
                with torch.enable_grad():
                    row_losses, supervised = self._row_losses(batch)
                    grads = torch.autograd.grad(row_losses.sum(), params, allow_unused=True)
                if not real:
                    continue
                n = int(supervised.sum())
                for i, g in enumerate(grads):
                    if g is None:
                        continue
                    g = g.float()
                    sums[i].add_(g)
                    if sq is not None:
                        sq[i].add_(
                            fisher_term(
                                self.fisher_estimator, g / n, captured.get(i), batch.get("attention_mask")
                            )
                        )
                count += 1
                num_rows += n
        finally:
            for handle in handles:
                handle.remove()
        return sums, sq, count, num_rows

    def _row_losses(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """[B] mean next-token loss of every row (0 for a row without supervised tokens) and [B] which
        rows have supervised tokens."""
        logits = self.model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        sums, tokens = row_losses(logits, batch["labels"])
        return sums / tokens.clamp_min(1), tokens > 0

    def _capture_linear_io(self, captured: dict[int, list[torch.Tensor]]) -> list[Any]:
        """Hooks keeping each probed linear layer's input and output gradient ([B, L, features])."""
        index = {id(p): i for i, (_, p) in enumerate(self.params)}
        handles = []
        for module in self.model.modules():
            if not isinstance(module, torch.nn.Linear) or id(module.weight) not in index:
                continue
            i = index[id(module.weight)]

            def forward_hook(mod, inputs, output, i=i):
                captured[i] = [inputs[0].detach()]
                if output.requires_grad:
                    output.register_hook(lambda grad, i=i: captured[i].append(grad.detach()))

            handles.append(module.register_forward_hook(forward_hook))
        return handles

    @staticmethod
    def _scaled(blocks: list[torch.Tensor], scales: list[torch.Tensor] | None) -> list[torch.Tensor]:
        return blocks if scales is None else [b * sc for b, sc in zip(blocks, scales, strict=True)]

    def _reduced_mean(
        self, sums: list[torch.Tensor], count: int, shards: CoordinateShards | None
    ) -> list[torch.Tensor]:
        """Flat sums over every rank divided by the total count: whole tensors, or this rank's shard
        (collective)."""
        flat = [s.flatten() for s in sums]
        if shards is None:
            total = all_reduce(torch.tensor(float(count), dtype=torch.float64, device=self.device)).item()
            return [all_reduce(f).div_(max(total, 1.0)) for f in flat]
        chunks, total = shards.reduce(flat, float(count))
        return [c.div_(max(total, 1.0)) for c in chunks]

    def _project(self, blocks: list[torch.Tensor], shards: CoordinateShards | None) -> torch.Tensor:
        """Projection of whole tensors, or the all-reduced sum of every rank's shard projections."""
        if shards is None:
            return self.projection.project(blocks)
        return all_reduce(self.projection.project(blocks, shards.spans))

    def impact(self, update_index: int) -> np.ndarray:
        """[k, m] eq. 12 distances (or inner products) on the current parameters (collective)."""
        return self._accumulate(update_index, control=False).distances()

    def impact_terms(self, update_index: int, *, control: bool = False, gram: bool = False) -> ImpactTerms:
        """The eq. 12 scalar terms on the current parameters (collective), optionally with a pool control.

        With `control`, one more gradient is probed: the mean over `probe_samples` rows drawn from the
        whole training pool (every row equally likely, i.e. domains in natural proportions; seeded by the
        update), kept as an extra column that does not enter the Fisher. Its cost is one more task-sized
        gradient, 1 / (k + m) more backward rows. With `gram`, the terms also hold the domains' Gram matrix
        <g_Di, g_Dk>_M (`pool_cosine`), from the same domain gradients: exact while k x (probed parameters)
        fits `GRAM_EXACT_BYTES`, else from their `GRAM_SKETCH_DIM`-bucket sparse JL sketches.
        """
        terms = self._accumulate(update_index, control=control, gram=gram).terms(len(self.task_rows))
        terms.domain_rows = self.last_domain_rows.copy()
        return terms

    def task_probe_rows(self, rows: list[dict[str, Any]], update_index: int) -> list[dict[str, Any]]:
        """The `probe_samples` observation rows of one update: consecutive windows that rotate through all
        of the task's rows from update to update (update 1 takes the first window), so evidence
        accumulated over updates covers every observation row instead of the same few."""
        n = min(self.probe_samples, len(rows))
        if n == len(rows) or n == 0:
            return list(rows)
        start = (max(update_index - 1, 0) * n) % len(rows)
        return [rows[(start + i) % len(rows)] for i in range(n)]

    def control_rows(self, update_index: int) -> list[int]:
        """Training-row ids of the pool control of one update: uniform over all rows, seeded, sorted."""
        pool = np.concatenate([p for p in self.domain_pools if p.size]) if self.domain_pools else np.array([])
        rng = np.random.default_rng([self.seed, 3, update_index])
        size = min(self.probe_samples, pool.size)
        return np.sort(rng.choice(pool, size=size, replace=False)).tolist() if size else []

    def _task_side(
        self, update_index: int, shards: CoordinateShards | None, *, control: bool
    ) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        """Per probed tensor, the [columns, ...] task mean gradients (the pool control last, with `control`)
        and the mean Fisher, or None per tensor in the identity metric, which never reads it (collective;
        run in eval mode)."""
        rank, world = rank_and_world()
        fim = self.metric == "fim"
        # task gradients and Fisher: every rank takes a share of every task's rows
        task_means, fisher, fisher_count = [], None, 0
        for rows in self.task_rows:
            rows = self.task_probe_rows(rows, update_index)
            sums, squares, count, num_rows = self._grad_sums(rows[rank::world], squares=fim, filler=rows)
            task_means.append(self._reduced_mean(sums, num_rows, shards))
            if fim:
                fisher = (
                    squares if fisher is None else [f.add_(q) for f, q in zip(fisher, squares, strict=True)]
                )
                # `batch`: one term per micro-batch; hook estimators: summed per example
                fisher_count += count if self.fisher_estimator == "batch" else num_rows
            del sums, squares
        fisher_blocks = self._reduced_mean(fisher, fisher_count, shards) if fim else [None] * len(self.shapes)
        if control:  # the pool control: a task-like column, not part of the Fisher
            rows = self.train_rows(self.control_rows(update_index))
            sums, _, _, num_rows = self._grad_sums(rows[rank::world], squares=False, filler=rows)
            task_means.append(self._reduced_mean(sums, num_rows, shards))
            del sums
        columns = len(task_means)
        task_blocks = [
            torch.stack([task_means[j][b] for j in range(columns)]) for b in range(len(self.shapes))
        ]
        return task_blocks, fisher_blocks

    def _gram_vector(
        self,
        blocks: list[torch.Tensor],
        scales: list[torch.Tensor] | None,
        shards: CoordinateShards | None,
        sketch: SparseJLProjection | None,
    ) -> torch.Tensor:
        """One domain's M^{1/2} g_D as a flat vector (`scales`: M^{1/2} per block), or its sketch."""
        blocks = self._scaled(blocks, scales)
        if sketch is None:
            return torch.cat([b.flatten() for b in blocks])
        return sketch.project([b.flatten() for b in blocks], shards.spans if shards is not None else None)

    def _accumulate(self, update_index: int, *, control: bool, gram: bool = False) -> ImpactAccumulator:
        rank, world = rank_and_world()
        k = len(self.domain_pools)
        sizes = [math.prod(shape) for shape in self.shapes]
        shards = CoordinateShards(sizes, rank, world) if self.sharded else None
        with self._eval_mode():
            task_blocks, fisher_blocks = self._task_side(update_index, shards, control=control)
            columns = len(self.task_rows) + int(control)  # the tasks, then the pool control
            # Terms are summed over ranks at the end. Sharded without projection: each rank adds its own
            # coordinates of every term. Otherwise task terms are whole on every rank (rank 0 adds them), and
            # domain terms whole on the rank that owns the domain (sharded + projection: rank 0).
            every_rank = shards is not None and self.projection is None
            # the Gram's vectors: exact coordinates (a rank's own under sharding), or one shared sketch
            width = -(-sum(sizes) // world) if every_rank else sum(sizes)
            gram_sketch = None
            if gram and self.projection is None and not self._sketched and k * width * 8 > GRAM_EXACT_BYTES:
                gram_sketch = SparseJLProjection(
                    GRAM_SKETCH_DIM, self.seed * 7919 + update_index, cache_bytes=GRAM_HASH_CACHE_BYTES
                )
            gram_mode = ("local" if every_rank and gram_sketch is None else "whole") if gram else None
            acc = ImpactAccumulator(k, columns, metric=self.metric, gram=gram_mode)
            adds_task_terms = every_rank or rank == 0
            adds_domain_terms = every_rank or shards is None or rank == 0
            scales = None
            if self.projection is None:
                task_terms = list(zip(task_blocks, fisher_blocks, strict=True))
            else:
                # eq. 12 in the projected space: h = P F^{1/2} g (P g for inner products), identity metric
                scales = [f.sqrt() for f in fisher_blocks] if self.metric == "fim" else None
                h_tasks = self._project(self._scaled(task_blocks, scales), shards)
                task_terms = [
                    (h_tasks, torch.ones(self.projection.dim, dtype=torch.float64, device=self.device))
                ]
                del task_blocks  # only the [m, dim] projection stays in memory
            if adds_task_terms:
                for task_block, fisher_block in task_terms:
                    acc.add_task_block(task_block, fisher_block)
            sketched = self._task_sketches(task_blocks, fisher_blocks) if self._sketched else None
            # |sketch|^2 weighs w in |g_D|_M^2, so a train-side Gram vector is sqrt(w) x sketch
            sketch_roots = [torch.tensor(w).sqrt() for w in sketched[1]] if gram and sketched else None
            # the Gram's metric for whole vectors (a projected vector carries it already)
            root_fisher = (
                [f.sqrt() for f in fisher_blocks]
                if gram and self.metric == "fim" and self.projection is None
                else None
            )
            for d, domain_blocks, mine in self._domain_means(update_index, shards):
                if sketched is not None:  # train-side sketches (never sharded): no collective here
                    if mine:
                        acc.add_sketched_domain(d, domain_blocks, *sketched)
                        if gram:
                            acc.add_gram_vector(d, self._gram_vector(domain_blocks, sketch_roots, None, None))
                    continue
                if self.projection is not None:
                    domain_blocks = [self._project(self._scaled(domain_blocks, scales), shards)]
                if not (adds_domain_terms if shards is not None else mine):
                    continue
                if gram:
                    acc.add_gram_vector(d, self._gram_vector(domain_blocks, root_fisher, shards, gram_sketch))
                for domain_block, (task_block, fisher_block) in zip(domain_blocks, task_terms, strict=True):
                    acc.add_domain_block(d, domain_block, task_block, fisher_block)
        acc.all_reduce()
        return acc

    @property
    def _sketched(self) -> bool:
        return self.train_gradients is not None and self.train_gradients.sketch is not None

    def _task_sketches(
        self, task_blocks: list[torch.Tensor], fisher_blocks: list[torch.Tensor | None]
    ) -> tuple[list[torch.Tensor], list[float]]:
        """Each layer's sketch of every task's M g_S ([columns, r]; M = diag(F) or I), and
        the weight of each layer's |sketch|^2 in |g_D|_M^2 (its mean Fisher, or 1)."""
        fim = self.metric == "fim"
        weighted = [t * f for t, f in zip(task_blocks, fisher_blocks, strict=True)] if fim else task_blocks
        weights = [float(f.mean()) if fim else 1.0 for f in fisher_blocks]
        return self.train_gradients.sketch_blocks(weighted), weights

    def _domain_means(self, update_index: int, shards: CoordinateShards | None):
        """Yield (d, flat mean-gradient blocks, whether this rank adds d's terms when replicated) (collective).

        Probed domains: replicated ranks take every world-th domain; sharded ranks probe every domain
        together, each on its share of the domain's rows. Train-side domains (`domain_gradients="train"`): the
        hooks' sums over every rank, divided by the rows trained since the last update; every rank gets
        every domain and, replicated, rank d % world adds its terms. A domain without a trained row since
        the last update (a small weight, a short interval) is probed instead.
        """
        rank, world = rank_and_world()
        k = len(self.domain_pools)
        trained = np.zeros(k)
        self.last_domain_rows = np.array([min(self.probe_samples, p.size) for p in self.domain_pools], float)
        if self.train_gradients is not None:
            self.train_gradients.end_batch()
            trained = self.train_gradients.total_rows().cpu().numpy()
            self.last_domain_rows = np.where(trained > 0, trained, self.last_domain_rows)
            for d in np.flatnonzero(trained > 0).tolist():
                local_rows = float(self.train_gradients.rows[d])
                yield (
                    d,
                    self._reduced_mean(self.train_gradients.domain_sums(d), local_rows, shards),
                    (d % world == rank),
                )
            self.train_gradients.reset()
        for d in range(k) if shards is not None else range(rank, k, world):
            if trained[d] > 0:
                continue
            pool = self.domain_pools[d]
            rng = np.random.default_rng([self.seed, 2, update_index, d])
            chosen = np.sort(
                rng.choice(pool, size=min(self.probe_samples, pool.size), replace=False)
            ).tolist()
            mine = chosen[rank::world] if shards is not None else chosen
            sums, _, _, num_rows = self._grad_sums(
                self.train_rows(mine), squares=False, filler=self.train_rows(chosen[:1])
            )
            if shards is None:
                blocks = [g.flatten() / max(num_rows, 1) for g in sums]
                yield d, self.train_gradients.sketch_blocks(blocks) if self._sketched else blocks, True
            else:
                yield d, self._reduced_mean(sums, num_rows, shards), True
            del sums
