"""The mixture of one training run: strategy + sampler + per-domain statistics + history + state.

Role: the schedule step (repartition -> impact -> *schedule* -> sampler) inside a training process.
The trainer feeds it each micro-batch's domain ids and per-row token losses; at every update it
gathers the signals the strategy declared, asks the strategy (rank 0) for new probabilities,
broadcasts them so every rank keeps the identical sample stream, applies them to the sampler and
appends one record to `history.jsonl`. With target sets (a probe), the task losses are measured at the
start, at every update and, at the end of training, into `dids_final.json`, whatever the strategy, so
every strategy's final model is measured the same way. Its state (sampler schedule, strategy state, counters) is
saved in every checkpoint and restored on resume.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..algorithms.strategies import SIGNALS, MixingStrategy, normalise
from ..data.sampler import DomainMixtureSampler
from ..run_files import FINAL_FILE, FINAL_VERSION, HISTORY_FILE, HISTORY_VERSION, STATE_FILE, STATE_VERSION
from ..utils import atomic_write, rank_and_world

logger = logging.getLogger(__name__)


def broadcast_from_rank0(value: Any) -> Any:
    """Every rank gets rank 0's value (identity outside torch.distributed)."""
    rank, world = rank_and_world()
    if world == 1:
        return value
    box = [value if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class DomainMixture:
    """Owns everything domain-mixing for one run; the trainer and the callback call into it."""

    def __init__(
        self,
        strategy: MixingStrategy,
        *,
        seed: int,
        on_exhausted: str,
        min_weight: float,
        output_dir: str,
        device: torch.device | str = "cpu",
        probe: Any = None,
        task_names: Sequence[str] = (),
        domain_column: str | None = None,
    ):
        """`probe`: the gradient probe (`runtime.probe.GradientProbe`) when the strategy needs probed
        signals or target sets are observed, with `task_names` its tasks in order; `domain_column`: the
        `dids_domain_column` (None: one domain per `dataset:` entry)."""
        self.strategy = strategy
        self.names = list(strategy.domain_names)
        self.sizes = np.asarray(strategy.domain_sizes, dtype=np.int64)
        self.k = len(self.names)
        self.seed = seed
        self.on_exhausted = on_exhausted
        self.min_weight = min_weight
        self.output_dir = output_dir
        self.device = torch.device(device)
        self.sampler: DomainMixtureSampler | None = None
        self.num_updates = 0
        self.probe = probe
        self.task_names = list(task_names)
        if probe is None and self.task_names:
            raise ValueError("task_names without a probe: the task losses are measured by the probe.")
        self.task_loss_history: list[list[float]] = []
        self.last_update_seconds = 0.0
        self.resumed_state: dict[str, Any] | None = None
        self.domain_column = domain_column
        # window accumulators (this rank, since the last sync), on the training device
        self._loss_sum = torch.zeros(self.k, dtype=torch.float64, device=self.device)
        self._tokens = torch.zeros(self.k, dtype=torch.float64, device=self.device)
        self._samples = torch.zeros(self.k, dtype=torch.float64, device=self.device)
        # global totals (all ranks), on CPU
        self.realised_total = np.zeros(self.k, dtype=np.int64)
        self.window_loss = np.full(self.k, np.nan)  # per domain, over the rows trained since the last log
        self._since_log_loss = np.zeros(self.k)
        self._since_log_tokens = np.zeros(self.k)
        self._since_update_loss = np.zeros(self.k)
        self._since_update_tokens = np.zeros(self.k)

    # ------------------------------------------------------------------------------------ sampler
    def build_sampler(
        self, domain_ids: Sequence[int] | np.ndarray, epoch_length: int
    ) -> DomainMixtureSampler:
        if self.sampler is not None:
            return self.sampler
        weights = normalise(self.strategy.initial_weights(), floor=self.min_weight)
        self.sampler = DomainMixtureSampler(
            domain_ids,
            weights,
            epoch_length=epoch_length,
            seed=self.seed,
            on_exhausted=self.on_exhausted,
            domain_names=self.names,
        )
        if self.resumed_state is not None:
            self._load(self.resumed_state)
        return self.sampler

    @property
    def weights(self) -> np.ndarray:
        if self.sampler is None:
            return normalise(self.strategy.initial_weights(), floor=self.min_weight)
        return self.sampler.weights

    # ---------------------------------------------------------------------------------- statistics
    def record_batch(
        self, domain_ids: torch.Tensor, row_loss_sum: torch.Tensor | None, row_tokens: torch.Tensor | None
    ) -> None:
        """Accumulate one micro-batch (this rank). `domain_ids`: long [B]; losses/tokens: [B] or None."""
        ids = domain_ids.to(self.device)
        valid = ids >= 0
        ids = ids[valid]
        self._samples.index_add_(0, ids, torch.ones_like(ids, dtype=torch.float64))
        if row_loss_sum is not None and row_tokens is not None:
            self._loss_sum.index_add_(0, ids, row_loss_sum.to(self.device, torch.float64)[valid])
            self._tokens.index_add_(0, ids, row_tokens.to(self.device, torch.float64)[valid])

    def sync(self) -> None:
        """All-reduce the window accumulators into the global totals (collective: call on every rank)."""
        packed = torch.stack([self._samples, self._loss_sum, self._tokens])
        _, world = rank_and_world()
        if world > 1:
            dist.all_reduce(packed)
        samples, loss, tokens = packed.cpu().numpy()
        self._samples.zero_()
        self._loss_sum.zero_()
        self._tokens.zero_()
        counts = np.rint(samples).astype(np.int64)
        self.realised_total += counts
        self._since_update_loss += loss
        self._since_update_tokens += tokens
        # an update at a logging step syncs first: the log still sees the rows since the previous log
        self._since_log_loss += loss
        self._since_log_tokens += tokens
        with np.errstate(invalid="ignore", divide="ignore"):
            self.window_loss = np.where(
                self._since_log_tokens > 0,
                self._since_log_loss / np.maximum(self._since_log_tokens, 1),
                np.nan,
            )

    def log_metrics(self) -> dict[str, float]:
        """Scalars for `Trainer.log`: target and realised fractions and loss per domain."""
        self.sync()
        out: dict[str, float] = {}
        weights = self.weights
        total = max(int(self.realised_total.sum()), 1)
        for i, name in enumerate(self.names):
            out[f"dids/target/{name}"] = round(float(weights[i]), 6)
            out[f"dids/realised/{name}"] = round(float(self.realised_total[i]) / total, 6)
            if np.isfinite(self.window_loss[i]):
                out[f"dids/loss/{name}"] = round(float(self.window_loss[i]), 6)
        if self.task_loss_history:
            for name, value in zip(self.task_names, self.task_loss_history[-1], strict=True):
                out[f"dids/task_loss/{name}"] = round(float(value), 6)
        scalars = self.strategy.log_scalars(self.task_names)  # the last update's terms, for report_to
        if scalars:
            out.update(scalars)
            out["dids/update_seconds"] = self.last_update_seconds
        p = weights[weights > 0]
        out["dids/weights_entropy"] = round(float(-(p * np.log(p)).sum()), 6)
        self._since_log_loss[:] = 0
        self._since_log_tokens[:] = 0
        return out

    # ------------------------------------------------------------------------------------- updates
    def signals(self, step: int) -> dict[str, Any]:
        available = {
            "domain_sizes": lambda: self.sizes.copy(),
            "realised_counts": lambda: self.realised_total.copy(),
            "domain_train_loss": self._train_loss_since_update,
            "step": lambda: step,
            "impact": lambda: self.probe.impact_terms(
                self.num_updates + 1, control=self.strategy.impact_control, gram=self.strategy.impact_gram
            ),
            "alignment": self._alignment,
            "task_loss_history": self._measure_task_losses,
        }
        # sorted: some signals are collective, and every rank must run them in the same order
        return {name: available[name]() for name in sorted(self.strategy.signals)}

    def _alignment(self) -> np.ndarray:
        """[k, m] eq. 6 gradient inner products (collective); the probe must use the inner product."""
        if self.probe.metric != "inner_product":
            raise RuntimeError(
                f"strategy {self.strategy.name!r} needs gradient inner products, but the probe uses "
                f"{self.probe.metric!r}."
            )
        return self.probe.impact(self.num_updates + 1)

    def _measure_task_losses(self) -> np.ndarray:
        """Append the current task losses to the history; return the whole history [t+1, m]."""
        self.task_loss_history.append(self.probe.task_losses().tolist())
        return np.asarray(self.task_loss_history, dtype=np.float64)

    def observe_initial_task_losses(self) -> None:
        """L_0, before any training step (collective); skipped when resumed with a history."""
        if self.probe is not None and not self.task_loss_history:
            self._measure_task_losses()

    def _train_loss_since_update(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(
                self._since_update_tokens > 0,
                self._since_update_loss / np.maximum(self._since_update_tokens, 1),
                np.nan,
            )

    def update(self, step: int) -> dict[str, Any]:
        """Recompute the mixture (collective: every rank calls it at the same step)."""
        start = time.perf_counter()
        self.sync()
        before = self.weights
        signals = self.signals(step)
        if self.probe is not None and "task_loss_history" not in self.strategy.signals:
            self._measure_task_losses()  # observed for the record (history, logs, compare)
        rank, _ = rank_and_world()
        new = None
        if rank == 0:
            proposed = self.strategy.update(before, signals)
            new = normalise(proposed, floor=self.min_weight)
        new = np.asarray(broadcast_from_rank0(new), dtype=np.float64)
        if self.strategy.dynamic:
            self.strategy.load_state_dict(
                broadcast_from_rank0(self.strategy.state_dict() if rank == 0 else None)
            )
        position = self.sampler.set_weights(new) if self.sampler is not None else 0
        self.num_updates += 1
        record = {
            "schema": HISTORY_VERSION,
            "update": self.num_updates,
            "step": step,
            "stream_position": position,
            "strategy": self.strategy.name,
            "domains": self.names,
            "weights_before": before.tolist(),
            "weights": new.tolist(),
            "realised_counts": self.realised_total.tolist(),
            "signals": {k: _jsonable(v) for k, v in signals.items() if SIGNALS[k].logged},
            "task_losses": self.task_loss_history[-1] if self.task_loss_history else None,
            "tasks": self.task_names,
            "terms": self.strategy.last_terms,
            "seconds": round(time.perf_counter() - start, 6),
        }
        self.last_update_seconds = record["seconds"]
        self._since_update_loss[:] = 0
        self._since_update_tokens[:] = 0
        self.write_history(record)
        return record

    def initial_record(self, step: int = 0) -> dict[str, Any]:
        w = self.weights
        record = {
            "schema": HISTORY_VERSION,
            "update": 0,
            "step": step,
            "stream_position": 0,
            "strategy": self.strategy.name,
            "domains": self.names,
            "domain_sizes": self.sizes.tolist(),
            "domain_column": self.domain_column,
            "weights_before": None,
            "weights": w.tolist(),
            "realised_counts": self.realised_total.tolist(),
            "signals": {},
            "task_losses": self.task_loss_history[-1] if self.task_loss_history else None,
            "tasks": self.task_names,
            "seconds": 0.0,
        }
        self.write_history(record)
        return record

    def final_evaluation(self, step: int) -> dict[str, Any] | None:
        """Task losses of the final model into `output_dir/dids_final.json` (collective; None without targets),
        on every loaded observation row: the same seeded rows whatever a strategy's `dids_target_samples`
        (`integration.loader.observation_rows`), so `compare` reads like with like."""
        if self.probe is None:
            return None
        self.sync()
        losses = self.probe.task_losses(every_row=True).tolist()
        average = self.strategy.average
        record = {
            "schema": FINAL_VERSION,
            "step": step,
            "strategy": self.strategy.name,
            "domains": self.names,
            "weights": self.weights.tolist(),
            "average_weights": None if average is None else np.asarray(average).tolist(),
            "realised_counts": self.realised_total.tolist(),
            "tasks": self.task_names,
            "task_losses": losses,
            "num_updates": self.num_updates,
        }
        if rank_and_world()[0] == 0:
            os.makedirs(self.output_dir, exist_ok=True)
            with atomic_write(os.path.join(self.output_dir, FINAL_FILE)) as f:
                json.dump(record, f)
        return record

    # ------------------------------------------------------------------------------------- history
    @property
    def history_path(self) -> str:
        return os.path.join(self.output_dir, HISTORY_FILE)

    def write_history(self, record: Mapping[str, Any]) -> None:
        if rank_and_world()[0] != 0:
            return
        os.makedirs(self.output_dir, exist_ok=True)
        with open(self.history_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_history(self, last_step: int | None) -> None:
        """Start a fresh history (`None`) or keep only the records up to `last_step` (resume).

        A `dids_final.json` left by an earlier run in this output_dir is removed: this run has not ended.
        """
        if rank_and_world()[0] != 0:
            return
        final = os.path.join(self.output_dir, FINAL_FILE)
        if os.path.exists(final):
            os.remove(final)
        if not os.path.exists(self.history_path):
            return
        kept = []
        if last_step is not None:
            with open(self.history_path, encoding="utf-8") as f:
                kept = [line for line in f if line.strip() and json.loads(line)["step"] <= last_step]
        with atomic_write(self.history_path) as f:
            f.writelines(kept)

    # --------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        if self.sampler is None:
            raise RuntimeError("the sampler does not exist yet; nothing to save.")
        return {
            "version": STATE_VERSION,
            "strategy": self.strategy.name,
            "domains": self.names,
            "domain_sizes": self.sizes.tolist(),
            "num_updates": self.num_updates,
            "realised_total": self.realised_total.tolist(),
            "since_update_loss": self._since_update_loss.tolist(),
            "since_update_tokens": self._since_update_tokens.tolist(),
            "task_loss_history": self.task_loss_history,
            "sampler": self.sampler.state_dict(),
            "strategy_state": self.strategy.state_dict(),
        }

    def save(self, checkpoint_dir: str) -> None:
        """Write the state into a checkpoint folder (collective: syncs counters; rank 0 writes), with the
        train-side domain-gradient sums of the interval when the probe has them."""
        self.sync()
        if self.probe is not None and self.probe.train_gradients is not None:
            self.probe.train_gradients.save(checkpoint_dir)
        if rank_and_world()[0] != 0:
            return
        state = self.state_dict()
        with atomic_write(os.path.join(checkpoint_dir, STATE_FILE)) as f:
            json.dump(state, f)

    def restore_from(self, checkpoint_dir: str) -> bool:
        """Read a checkpoint's state; applied when the sampler is built. False if the file is absent."""
        path = os.path.join(checkpoint_dir, STATE_FILE)
        if not os.path.isfile(path):
            return False
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"{path}: state version {state.get('version')!r}, expected {STATE_VERSION}.")
        if state["domains"] != self.names or state["strategy"] != self.strategy.name:
            raise ValueError(
                f"{path} was written for strategy {state['strategy']!r} over domains {state['domains'][:8]}..., "
                f"but this run has {self.strategy.name!r} over {self.names[:8]}.... Resume with the same data "
                "and `dids_*` keys, or start a new output_dir."
            )
        self.resumed_state = state
        if self.probe is not None and self.probe.train_gradients is not None:
            self.probe.train_gradients.load(checkpoint_dir)
        if self.sampler is not None:
            self._load(state)
        return True

    def _load(self, state: Mapping[str, Any]) -> None:
        assert self.sampler is not None
        self.sampler.load_state_dict(state["sampler"])
        self.strategy.load_state_dict(state["strategy_state"])
        self.num_updates = int(state["num_updates"])
        self.realised_total = np.asarray(state["realised_total"], dtype=np.int64)
        self._since_update_loss = np.asarray(state["since_update_loss"], dtype=np.float64)
        self._since_update_tokens = np.asarray(state["since_update_tokens"], dtype=np.float64)
        self.task_loss_history = [list(map(float, row)) for row in state.get("task_loss_history", [])]


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return [None if isinstance(x, float) and not np.isfinite(x) else x for x in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value
