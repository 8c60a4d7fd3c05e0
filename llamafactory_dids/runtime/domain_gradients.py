"""Domain gradients from the training step itself: per-domain sums of per-row gradients, read by hooks.

Role: the domain side of the impact (paper eq. 12) with `dids_domain_gradients: train`. The training
backward already computes, for every probed linear layer, its input x_t and output gradient delta_t at
every token; the weight gradient of the micro-batch is sum_t delta_t x_t^T. Forward hooks keep x, tensor
hooks on the layer outputs receive delta, and each row's part is added to the sum of its domain:

    G_d += sum_{rows r of domain d} 1 / (c n_r) sum_{t in r} delta_t x_t^T

n_r is the row's number of supervised tokens and c the factor between a token's loss and the loss the
trainer backpropagates (1 / tokens of the batch, or 1 / `num_items_in_batch`, times gradient-accumulation
division and any loss scale). c is read, not assumed: a hook on the per-token losses of the causal-LM loss
(`integration.loss.RecordingCausalLMLoss`) receives d loss / d loss_t = c before the backward reaches the
probed layers. So G_d / rows_d is the mean over the domain's rows of each row's mean-loss gradient, the
same estimand as the probe's `probe_samples` passes, over every row trained since the last update instead
of a fresh draw (and over the parameters of the interval, as DoGE's and DGA's training-batch gradients
are). No per-example gradient is materialised: one [out, in] product per layer and domain present in the
micro-batch, about the cost of the layer's own weight gradient.

What the hooks see: only forwards in train mode while a micro-batch is open (`begin_batch` ... `end_batch`,
around the trainer's `training_step`: one micro-batch's forward and backward), so the probe's own passes (eval mode) and evaluation loops add nothing. Under
gradient checkpointing a block's forward runs again inside the backward; the hooks then see the recomputed
inputs, and each layer adds a micro-batch once. Under ZeRO-3 the inputs and output gradients are whole on
every rank, so the sums are too; every rank sums its own rows and the probe all-reduces at the update.
Memory: k x (probed parameters) float32, plus nothing per row. With `sketch_dim` r > 0
(`dids_domain_sketch_dim`) each layer's sum is kept only as its sparse Johnson-Lindenstrauss sketch (one
signed bucket of r per coordinate, `algorithms.impact.SparseJLProjection`, regenerated from the seed):
memory k x layers x r. The micro-batch's [out, in] product per domain is still formed (transiently) and
then hashed into the sketch. Inner products are preserved in expectation with an error that does not depend
on the gradients' rank, so the probe sketches each task's M g_S (M = diag(F), or I) with the same buckets
and takes <g_D, g_S>_M as the sketches' inner product; |g_D|_M^2 uses each layer's mean Fisher in place of
its diagonal (the cross term, which the default rule reads, is unaffected).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from ..algorithms.impact import SparseJLProjection
from ..config import DOMAIN_GRADIENT_SOURCES
from ..utils import IGNORE_INDEX, atomic_write, rank_and_world
from .sharding import all_reduce

__all__ = ["DOMAIN_GRADIENT_SOURCES", "STATE_FILE", "DomainGradientHooks"]

#: exact sums above this many bytes are refused: `dids_domain_sketch_dim` keeps k x layers x r instead
EXACT_BYTES_LIMIT = 4 << 30
#: a sketch keeps every layer's buckets and signs (8 bytes per probed parameter) up to this size
HASH_CACHE_BYTES = 512 << 20
#: accumulated sums in a checkpoint folder (rank 0 writes the sum over ranks)
STATE_FILE = "dids_domain_gradients.pt"


@dataclass
class _MicroBatch:
    domains: torch.Tensor  # [B] long
    tokens: torch.Tensor  # [B] supervised tokens per row
    scale: torch.Tensor | None = None  # [B] d(backpropagated loss) / d(token loss), from the loss hook
    inputs: dict[int, torch.Tensor] = field(default_factory=dict)
    done: set[int] = field(default_factory=set)


class DomainGradientHooks:
    """Per-domain sums of per-row mean-loss gradients of the probed linear layers, read during training.

    Args:
        model: the training model (hooks go on its `torch.nn.Linear` modules whose weight is probed).
        params: the probed (name, parameter) pairs (`runtime.probe.select_probe_parameters`).
        num_domains: k.
        shapes: each parameter's logical shape (ZeRO-3 keeps an empty tensor; `features.full_shape`).
        device: where the sums live.
        sketch_dim: 0 keeps exact [out, in] sums; r > 0 keeps each layer's sum as its r-bucket sketch.
        seed: of the sketch's buckets (the probe sketches the task side with the same seed).

    Raises:
        ValueError: if a probed tensor is not the weight of a linear layer (its gradient has no factored
            form here), naming it; if exact sums would exceed `EXACT_BYTES_LIMIT`, naming the sketch key.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        params: list[tuple[str, torch.nn.Parameter]],
        num_domains: int,
        shapes: list[tuple[int, ...]],
        device: torch.device,
        *,
        sketch_dim: int = 0,
        seed: int = 0,
    ):
        index = {id(p): i for i, (_, p) in enumerate(params)}
        modules: dict[int, torch.nn.Module] = {}
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and id(module.weight) in index:
                modules.setdefault(index[id(module.weight)], module)
        missing = [name for i, (name, _) in enumerate(params) if i not in modules]
        if missing:
            raise ValueError(
                f"`dids_domain_gradients: train` reads gradients of linear layers, but these probed tensors are "
                f"not a linear layer's weight: {missing[:4]}. Use `dids_domain_gradients: probe`, or leave "
                "`dids_probe_include_lm_head` off if the head is not a linear layer."
            )
        self.num_domains = num_domains
        self.device = device
        exact_bytes = 4 * num_domains * sum(math.prod(shape) for shape in shapes)
        if sketch_dim <= 0 and exact_bytes > EXACT_BYTES_LIMIT:
            raise ValueError(
                f"exact train-side domain gradients would hold {num_domains} domains x "
                f"{exact_bytes // (4 * num_domains):,} probed parameters = {exact_bytes / 2**30:.1f} GiB per rank: "
                "set `dids_domain_sketch_dim` (e.g. 4096: a sketch per layer and domain), lower "
                "`dids_probe_layers_fraction`, or use `dids_domain_gradients: probe`."
            )
        self.sketch = (
            SparseJLProjection(sketch_dim, seed, cache_bytes=HASH_CACHE_BYTES) if sketch_dim > 0 else None
        )
        self.shapes = [tuple(shape) for shape in shapes]
        block_shapes = [tuple(shape) if self.sketch is None else (sketch_dim,) for shape in shapes]
        self.sums = [
            torch.zeros(num_domains, *shape, dtype=torch.float32, device=device) for shape in block_shapes
        ]
        self.rows = torch.zeros(num_domains, dtype=torch.float64, device=device)
        self._batch: _MicroBatch | None = None
        self._handles = [
            module.register_forward_hook(self._forward_hook(i)) for i, module in sorted(modules.items())
        ]

    # ------------------------------------------------------------------------------- training side
    def begin_batch(self, domain_ids: torch.Tensor, labels: torch.Tensor) -> None:
        """Open a training micro-batch: its rows' domains and labels (supervised tokens per row)."""
        tokens = (labels[..., 1:] != IGNORE_INDEX).sum(dim=-1).to(self.device)
        domains = domain_ids.to(self.device, torch.long)
        self._batch = _MicroBatch(domains=domains, tokens=tokens)
        supervised = tokens > 0
        self.rows.index_add_(
            0, domains[supervised], torch.ones_like(domains[supervised], dtype=torch.float64)
        )

    def end_batch(self) -> None:
        """Close the open micro-batch (its backward is done, or an update's probe passes follow)."""
        self._batch = None

    def capture_scale(self, grad: torch.Tensor) -> None:
        """Tensor hook on the per-token losses [B * T]: c for every row of the open micro-batch."""
        batch = self._batch
        if batch is not None:
            batch.scale = (
                grad.detach().reshape(batch.domains.shape[0], -1)[:, 0].to(self.device, torch.float64)
            )

    def _forward_hook(self, i: int):
        def hook(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            batch = self._batch
            if batch is None or not module.training or i in batch.done or not output.requires_grad:
                return
            batch.inputs[i] = inputs[0].detach()
            output.register_hook(lambda grad: self._add(i, batch, grad))

        return hook

    def _add(self, i: int, batch: _MicroBatch, grad: torch.Tensor) -> None:
        if i in batch.done or i not in batch.inputs:
            return
        if batch.scale is None:
            raise RuntimeError(
                "[dids] the loss hook did not see this micro-batch's token losses: train-side domain "
                "gradients need the model's causal-LM loss (`dids_domain_gradients: probe` does not)."
            )
        x = batch.inputs.pop(i)
        batch.done.add(i)
        rows = batch.domains.shape[0]
        weight = torch.where(
            batch.tokens > 0, 1.0 / (batch.scale * batch.tokens.clamp_min(1)), torch.zeros_like(batch.scale)
        )
        delta = grad.detach().float().reshape(rows, -1, grad.shape[-1]) * weight.float()[:, None, None]
        x = x.float().reshape(rows, -1, x.shape[-1])
        supervised = batch.tokens > 0
        hashed = (
            None if self.sketch is None else self.sketch.block_hash(i, math.prod(self.shapes[i]), self.device)
        )
        for d in torch.unique(batch.domains[supervised]).tolist():
            mine = batch.domains == d
            if self.sketch is None:
                self.sums[i][d].addmm_(delta[mine].flatten(0, 1).T, x[mine].flatten(0, 1))
            else:
                product = delta[mine].flatten(0, 1).T @ x[mine].flatten(0, 1)
                self.sums[i][d] += self.sketch.project_block(
                    i, product.flatten(), hashed, dtype=torch.float32
                )

    # --------------------------------------------------------------------------------- update side
    def domain_sums(self, d: int) -> list[torch.Tensor]:
        """This rank's per-block sums of domain d (views): [out, in] per layer, or [r_o r_i] sketched."""
        return [s[d] for s in self.sums]

    def sketch_blocks(self, blocks: list[torch.Tensor]) -> list[torch.Tensor]:
        """Sketch flat per-layer blocks ([..., out * in] -> [..., r]) with this run's buckets."""
        assert self.sketch is not None
        return [self.sketch.project_block(i, block) for i, block in enumerate(blocks)]

    def total_rows(self) -> torch.Tensor:
        """[k] rows summed over ranks (collective)."""
        return all_reduce(self.rows.clone())

    def reset(self) -> None:
        """Start a new interval (after an update consumed the sums)."""
        for s in self.sums:
            s.zero_()
        self.rows.zero_()
        self._batch = None

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    # -------------------------------------------------------------------------------------- resume
    def save(self, checkpoint_dir: str) -> None:
        """Write the interval's sums over all ranks into a checkpoint folder (collective; rank 0 writes)."""
        sums = [all_reduce(s.clone()) for s in self.sums]
        rows = self.total_rows()
        if rank_and_world()[0] != 0:
            return
        with atomic_write(os.path.join(checkpoint_dir, STATE_FILE), "wb") as f:
            torch.save({"sums": [s.cpu() for s in sums], "rows": rows.cpu()}, f)

    def load(self, checkpoint_dir: str) -> bool:
        """Restore the sums a checkpoint holds: rank 0 takes them, other ranks start at zero (the all-reduce
        at the update adds them up). False if the checkpoint has none (it was written at an update)."""
        path = os.path.join(checkpoint_dir, STATE_FILE)
        self.reset()
        if not os.path.isfile(path):
            return False
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        if len(state["sums"]) != len(self.sums) or any(
            tuple(a.shape) != tuple(b.shape) for a, b in zip(state["sums"], self.sums, strict=True)
        ):
            raise ValueError(
                f"{path} holds domain-gradient sums of other shapes than this run's probed layers: resume with "
                "the same model, domains and `dids_probe_*` keys."
            )
        if rank_and_world()[0] == 0:
            for s, saved in zip(self.sums, state["sums"], strict=True):
                s.copy_(saved.to(s.device))
            self.rows.copy_(state["rows"].to(self.rows.device))
        return True
