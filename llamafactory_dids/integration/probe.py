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
   the scalars are all-reduced. At most the m task gradients, F and one domain gradient are in memory;
   with `projection_dim` the task gradients are kept only as their [m, dim] sparse JL projection of
   F^{1/2} g, and each domain gradient is projected the same way.

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
import torch.distributed as dist

from ..algorithms.impact import ImpactAccumulator, SparseJLProjection
from ..data.domains import DOMAIN_ID_COLUMN, ROW_ID_COLUMN

logger = logging.getLogger(__name__)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    if _world()[1] > 1:
        dist.all_reduce(tensor)
    return tensor


def transformer_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The longest `ModuleList` of identically typed modules: the decoder layers of any HF causal LM."""
    best: list[torch.nn.Module] = []
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > len(best):
            kinds = {type(m) for m in module}
            if len(kinds) == 1:
                best = list(module)
    return best


def select_probe_parameters(
    model: torch.nn.Module, *, layers_fraction: float = 0.1, include_lm_head: bool = False
) -> list[tuple[str, torch.nn.Parameter]]:
    """Trainable matrices of the last `layers_fraction` of blocks (at least one block).

    Raises:
        ValueError: if the model has no transformer blocks or no trainable matrix there.
    """
    blocks = transformer_blocks(model)
    if not blocks:
        raise ValueError("Cannot find the transformer blocks of the model (no ModuleList of layers).")
    count = max(1, math.ceil(layers_fraction * len(blocks)))
    chosen_ids = {id(p) for block in blocks[-count:] for p in block.parameters()}
    selected = [
        (name, p)
        for name, p in model.named_parameters()
        if id(p) in chosen_ids and p.requires_grad and p.ndim >= 2
    ]
    if include_lm_head:
        head = getattr(model, "get_output_embeddings", lambda: None)()
        if head is not None and head.weight.requires_grad and id(head.weight) not in chosen_ids:
            selected.append(("lm_head.weight", head.weight))
    if not selected:
        raise ValueError(
            f"No trainable matrix in the last {count} of {len(blocks)} transformer blocks to probe. With LoRA, "
            "make sure `lora_target` covers those layers, or raise `dids_probe_layers_fraction`."
        )
    return selected


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
    ):
        self.model = model
        self.collate = collate
        self.train_rows = train_rows
        self.domain_pools = [np.asarray(p) for p in domain_pools]
        self.task_rows = list(task_rows)
        self.device = device
        self.probe_samples = probe_samples
        self.fisher_batch_size = fisher_batch_size
        self.eval_batch_size = eval_batch_size
        self.metric = metric
        self.seed = seed
        if fisher_estimator not in ("batch", "per_token"):
            raise ValueError(f"fisher_estimator must be 'batch' or 'per_token', got {fisher_estimator!r}.")
        self.fisher_estimator = fisher_estimator
        self.projection = SparseJLProjection(projection_dim, seed) if projection_dim > 0 else None
        self.params = select_probe_parameters(
            model, layers_fraction=layers_fraction, include_lm_head=include_lm_head
        )
        self.num_probe_parameters = sum(p.numel() for _, p in self.params)
        logger.info(
            "[dids] impact probe over %d tensors (%d parameters): %s%s",
            len(self.params),
            self.num_probe_parameters,
            ", ".join(n for n, _ in self.params[:4]),
            " ..." if len(self.params) > 4 else "",
        )

    # ------------------------------------------------------------------------------------- batches
    def _batch(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collate(rows)
        batch.pop(DOMAIN_ID_COLUMN, None)
        batch.pop(ROW_ID_COLUMN, None)
        return {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}

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
    def task_losses(self) -> np.ndarray:
        """[m] token-weighted mean loss of every task on its observation samples (collective)."""
        rank, world = _world()
        sums = torch.zeros(2 * len(self.task_rows), dtype=torch.float64, device=self.device)
        with self._eval_mode(), torch.no_grad():
            for j, rows in enumerate(self.task_rows):
                mine = rows[rank::world]
                for start in range(0, len(mine), self.eval_batch_size):
                    batch = self._batch(mine[start : start + self.eval_batch_size])
                    tokens = (batch["labels"][..., 1:] != -100).sum()
                    if tokens == 0:
                        continue
                    loss = self.model(**batch).loss
                    sums[2 * j] += loss.double() * tokens
                    sums[2 * j + 1] += tokens
        sums = _all_reduce(sums).cpu().numpy()
        return sums[0::2] / np.maximum(sums[1::2], 1)

    # ---------------------------------------------------------------------------------- gradients
    def _grad_sums(
        self, rows: list[dict[str, Any]], *, squares: bool
    ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None, int]:
        """Sum of micro-batch mean gradients, sum of their Fisher terms (if asked), number of micro-batches.

        Fisher terms: the squared micro-batch gradient (`batch` estimator), or for linear layers the
        per-token sum (delta^2)^T (x^2) from the layer's input x and output gradient delta (`per_token`).
        """
        params = [p for _, p in self.params]
        sums = [torch.zeros_like(p, dtype=torch.float32) for p in params]
        sq = [torch.zeros_like(p, dtype=torch.float32) for p in params] if squares else None
        per_token = squares and self.fisher_estimator == "per_token"
        captured: dict[int, list[torch.Tensor]] = {}
        handles = self._capture_linear_io(captured) if per_token else []
        count = 0
        try:
            for start in range(0, len(rows), self.fisher_batch_size):
                batch = self._batch(rows[start : start + self.fisher_batch_size])
                if (batch["labels"][..., 1:] != -100).sum() == 0:
                    continue
                captured.clear()
                with torch.enable_grad():
                    loss = self.model(**batch).loss
                    grads = torch.autograd.grad(loss, params, allow_unused=True)
                for i, g in enumerate(grads):
                    if g is None:
                        continue
                    g = g.float()
                    sums[i].add_(g)
                    if sq is None:
                        continue
                    if per_token and len(captured.get(i, ())) == 2:
                        x, delta = captured[i]
                        sq[i].add_((delta.float() ** 2).T @ (x.float() ** 2))
                    else:
                        sq[i].add_(g * g)
                count += 1
        finally:
            for handle in handles:
                handle.remove()
        return sums, sq, count

    def _capture_linear_io(self, captured: dict[int, list[torch.Tensor]]) -> list[Any]:
        """Hooks keeping each probed linear layer's input and output gradient, flattened over tokens."""
        index = {id(p): i for i, (_, p) in enumerate(self.params)}
        handles = []
        for module in self.model.modules():
            if not isinstance(module, torch.nn.Linear) or id(module.weight) not in index:
                continue
            i = index[id(module.weight)]

            def forward_hook(mod, inputs, output, i=i):
                captured[i] = [inputs[0].detach().reshape(-1, inputs[0].shape[-1])]
                if output.requires_grad:
                    output.register_hook(
                        lambda grad, i=i: captured[i].append(grad.detach().reshape(-1, grad.shape[-1]))
                    )

            handles.append(module.register_forward_hook(forward_hook))
        return handles

    @staticmethod
    def _scaled(blocks: list[torch.Tensor], scales: list[torch.Tensor] | None) -> list[torch.Tensor]:
        return blocks if scales is None else [b * sc for b, sc in zip(blocks, scales, strict=True)]

    def impact(self, update_index: int) -> np.ndarray:
        """[k, m] eq. 12 distances (or inner products) on the current parameters (collective)."""
        rank, world = _world()
        m, k = len(self.task_rows), len(self.domain_pools)
        with self._eval_mode():
            # task gradients and Fisher: every rank takes a share of every task's rows, then all-reduce
            task_sums, fisher, counts = [], None, []
            for rows in self.task_rows:
                sums, squares, count = self._grad_sums(rows[: self.probe_samples][rank::world], squares=True)
                task_sums.append(sums)
                fisher = squares if fisher is None else [f + q for f, q in zip(fisher, squares, strict=True)]
                counts.append(count)
            count_t = _all_reduce(torch.tensor(counts, dtype=torch.float64, device=self.device)).cpu()
            for j in range(m):
                for tensor in task_sums[j]:
                    _all_reduce(tensor).div_(max(count_t[j].item(), 1.0))
            for tensor in fisher:
                _all_reduce(tensor).div_(max(count_t.sum().item(), 1.0))
            acc = ImpactAccumulator(k, m, metric=self.metric)
            task_blocks = [
                torch.stack([task_sums[j][b].flatten() for j in range(m)]) for b in range(len(fisher))
            ]
            fisher_blocks = [f.flatten() for f in fisher]
            del task_sums, fisher
            if self.projection is None:
                task_terms = list(zip(task_blocks, fisher_blocks, strict=True))
            else:
                # eq. 12 in the projected space: h = P F^{1/2} g (P g for inner products), identity metric
                scales = [f.sqrt() for f in fisher_blocks] if self.metric == "fim" else None
                h_tasks = self.projection.project(self._scaled(task_blocks, scales))
                task_terms = [
                    (h_tasks, torch.ones(h_tasks.shape[-1], dtype=torch.float64, device=h_tasks.device))
                ]
                del task_blocks  # only the [m, dim] projection stays in memory
            if rank == 0:
                for task_block, fisher_block in task_terms:
                    acc.add_task_block(task_block, fisher_block)
            # domains, streamed: this rank's share
            for d in range(rank, k, world):
                pool = self.domain_pools[d]
                rng = np.random.default_rng([self.seed, 2, update_index, d])
                chosen = np.sort(rng.choice(pool, size=min(self.probe_samples, pool.size), replace=False))
                sums, _, count = self._grad_sums(self.train_rows(chosen.tolist()), squares=False)
                domain_blocks = [g.flatten() / max(count, 1) for g in sums]
                del sums
                if self.projection is not None:
                    domain_blocks = [self.projection.project(self._scaled(domain_blocks, scales))]
                for domain_block, (task_block, fisher_block) in zip(domain_blocks, task_terms, strict=True):
                    acc.add_domain_block(d, domain_block, task_block, fisher_block)
        acc.all_reduce()
        return acc.distances()
