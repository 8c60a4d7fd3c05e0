"""Thin subclasses of LLaMA-Factory's trainers, and the strategy built from the `dids_*` keys.

Role: integration layer between the host Trainer and `DomainMixture`. The subclass overrides only what
the host forces: `_get_train_sampler` (the domain sampler), `compute_loss`/`prediction_step` (pop
`domain_ids` before the model's forward and record per-domain statistics), `training_step` (with
`dids_domain_gradients: train`, open each micro-batch's forward and backward to the domain-gradient hooks), `log` (add the mixture's
scalars so `report_to` shows them) and `train` (restore the mixture on resume, DeepSpeed included).
Periodic work (updates, saving the state) lives in `integration.callback.MixtureCallback`; per-domain loss
comes from `integration.loss.RecordingCausalLMLoss` at no extra pass. The training loop itself is never
copied. The loss swap and the private Trainer methods overridden here are listed with every other host
touchpoint in `integration.patch`.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import numpy as np
import torch
from transformers.trainer_utils import get_last_checkpoint

from ..algorithms.registry import STRATEGY_CLASSES, build_strategy
from ..algorithms.strategies import GRADIENT_SIGNALS, PROBE_SIGNALS
from ..config import impact_metric, target_samples
from ..data.domains import DOMAIN_ID_COLUMN, ROW_ID_COLUMN, DomainCollator
from ..run_files import TRACE_DIR
from ..runtime.domain_gradients import DomainGradientHooks
from ..runtime.mixture import DomainMixture
from ..runtime.probe import GradientProbe
from ..runtime.runs import read_reference
from .callback import MixtureCallback, checkpoint_step
from .loader import TARGET_SETS_KEY, dids_config_of
from .loss import RecordingCausalLMLoss, install_loss_recorder
from .patch import swapped

logger = logging.getLogger(__name__)


class DIDSTrainerMixin:
    """Mixed in front of LLaMA-Factory's `CustomSeq2SeqTrainer` / `CustomTrainer`."""

    def __init__(self, *args: Any, **kwargs: Any):
        target_sets = kwargs.pop(TARGET_SETS_KEY, None) or {}  # from the patched get_dataset's module
        super().__init__(*args, **kwargs)
        self.dids_config = dids_config_of(getattr(self, "finetuning_args", None))
        self.dids_mixture: DomainMixture | None = None
        self._dids_loss_recorder: RecordingCausalLMLoss | None = None
        self._dids_train_gradients: DomainGradientHooks | None = None
        self._dids_trace_file: Any = None
        if self.dids_config is None or self.train_dataset is None:
            return
        cfg = self.dids_config
        names = list(self.train_dataset.features[DOMAIN_ID_COLUMN].names)
        self._dids_domain_ids = np.asarray(self.train_dataset[DOMAIN_ID_COLUMN])
        self._dids_seed = int(cfg.dids_seed if cfg.dids_seed is not None else self.args.seed)
        sizes = np.bincount(self._dids_domain_ids, minlength=len(names))
        strategy = build_strategy(
            cfg.dids_strategy, names, sizes, **strategy_options(cfg, names, self._dids_planned_samples())
        )
        self.data_collator = DomainCollator(self.data_collator)
        # gradient strategies need the probe; with target sets any strategy observes the task losses
        probe = None
        if strategy.signals & PROBE_SIGNALS or target_sets:
            metric = "inner_product" if "alignment" in strategy.signals else impact_metric(cfg)
            gradients = bool(strategy.signals & GRADIENT_SIGNALS)
            probe = self._build_probe(len(names), target_sets, metric, gradients)
        self.dids_mixture = DomainMixture(
            strategy,
            seed=self._dids_seed,
            on_exhausted=cfg.dids_on_exhausted,
            min_weight=cfg.dids_min_weight,
            output_dir=self.args.output_dir,
            device=self.args.device,
            probe=probe,
            task_names=list(target_sets) if probe is not None else [],
            domain_column=cfg.dids_domain_column,
        )
        if cfg.dids_log_domain_loss:
            self._dids_loss_recorder = install_loss_recorder(self.model)
            if self._dids_loss_recorder is None:
                logger.warning(
                    "[dids] the model has no causal-LM loss to hook; per-domain loss is not logged."
                )
        self._dids_train_gradients = probe.train_gradients if probe is not None else None
        if self._dids_train_gradients is not None:
            recorder = self._dids_loss_recorder or install_loss_recorder(self.model)
            if recorder is None:
                raise ValueError(
                    "`dids_domain_gradients: train` reads the token losses of the model's causal-LM loss, "
                    "and this model has none to hook (a custom or fused loss). Use "
                    "`dids_domain_gradients: probe`."
                )
            recorder.scale_sink = self._dids_train_gradients.capture_scale
        self.add_callback(MixtureCallback(self.dids_mixture, cfg))
        logger.info(
            "[dids] strategy %r over %d domains, initial weights %s",
            cfg.dids_strategy,
            len(names),
            np.round(self.dids_mixture.weights, 4).tolist(),
        )

    def _dids_planned_samples(self) -> int:
        """Training samples the run will draw: the budget, max_steps batches, or epochs of the training set."""
        cfg, args = self.dids_config, self.args
        if cfg.dids_budget:
            return int(cfg.dids_budget)
        if args.max_steps > 0:
            return int(
                args.max_steps * args.train_batch_size * args.gradient_accumulation_steps * args.world_size
            )
        return int(len(self._dids_domain_ids) * args.num_train_epochs)

    def _build_probe(
        self, num_domains: int, targets: dict[str, Any], metric: str, gradients: bool
    ) -> GradientProbe:
        cfg = self.dids_config
        if not targets:
            raise ValueError(
                f"`dids_strategy: {cfg.dids_strategy}` needs `dids_target_datasets`; no target set was loaded."
            )
        train = self.train_dataset
        return GradientProbe(
            self.model,
            self.data_collator,
            lambda indices: [train[int(i)] for i in indices],
            [np.flatnonzero(self._dids_domain_ids == d) for d in range(num_domains)],
            [list(rows) for rows in targets.values()],
            device=self.args.device,
            probe_samples=cfg.dids_probe_samples,
            fisher_batch_size=cfg.dids_fisher_batch_size,
            eval_batch_size=self.args.per_device_eval_batch_size,
            metric=metric,
            layers_fraction=cfg.dids_probe_layers_fraction,
            include_lm_head=cfg.dids_probe_include_lm_head,
            seed=self._dids_seed,
            projection_dim=cfg.dids_projection_dim,
            fisher_estimator=cfg.dids_fisher_estimator,
            gradients=gradients,
            domain_gradients=cfg.dids_domain_gradients,
            domain_sketch_dim=cfg.dids_domain_sketch_dim,
            loss_samples=target_samples(cfg),
        )

    # ------------------------------------------------------------------------------ host overrides
    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        if self.dids_mixture is not None:
            path = resume_from_checkpoint
            if isinstance(path, bool):
                path = get_last_checkpoint(self.args.output_dir) if path else None
            if path:
                if not self.dids_mixture.restore_from(path):
                    logger.warning(
                        "[dids] %s holds no DIDS state: the mixture starts from its initial weights.", path
                    )
                step = checkpoint_step(path)
                self.dids_mixture.truncate_history(step)
                self._truncate_trace(step)
            else:
                self.dids_mixture.truncate_history(None)
                self._truncate_trace(None)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        # transformers 5.6 restores the optimizer of a multi-process run with map_location=args.device,
        # which is "cpu:<rank>" for CPU (gloo) runs and which torch.load cannot map. Map to plain "cpu".
        if (
            checkpoint is None
            or self.dids_mixture is None
            or self.args.device.type != "cpu"
            or self.args.world_size == 1
        ):
            return super()._load_optimizer_and_scheduler(checkpoint)
        original = torch.load

        def load_on_cpu(*args: Any, map_location: Any = None, **kwargs: Any) -> Any:
            if map_location is not None and torch.device(map_location).type == "cpu":
                map_location = "cpu"
            return original(*args, map_location=map_location, **kwargs)

        with swapped(torch, "load", load_on_cpu):
            return super()._load_optimizer_and_scheduler(checkpoint)

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        if self.dids_mixture is None:
            return super()._get_train_sampler(train_dataset)
        if train_dataset is not None and len(train_dataset) != len(self._dids_domain_ids):
            raise ValueError("the DIDS sampler is built for the trainer's own training set.")
        budget = self.dids_config.dids_budget
        return self.dids_mixture.build_sampler(self._dids_domain_ids, budget or len(self._dids_domain_ids))

    def training_step(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any):
        # the domain-gradient hooks read exactly this micro-batch's forward and backward
        hooks = self._dids_train_gradients
        if hooks is None or DOMAIN_ID_COLUMN not in inputs:
            return super().training_step(model, inputs, *args, **kwargs)
        hooks.begin_batch(inputs[DOMAIN_ID_COLUMN], inputs["labels"])
        try:
            return super().training_step(model, inputs, *args, **kwargs)
        finally:
            hooks.end_batch()

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, **kwargs: Any):
        domain_ids = inputs.pop(DOMAIN_ID_COLUMN, None)
        row_ids = inputs.pop(ROW_ID_COLUMN, None)
        if self.dids_mixture is None or domain_ids is None or not model.training:
            return super().compute_loss(model, inputs, return_outputs=return_outputs, **kwargs)
        if row_ids is not None:
            self._write_trace(row_ids, domain_ids)
        if self._dids_loss_recorder is not None:
            self._dids_loss_recorder.armed = True
        result = super().compute_loss(model, inputs, return_outputs=return_outputs, **kwargs)
        row_loss, row_tokens = (None, None)
        if self._dids_loss_recorder is not None:
            row_loss, row_tokens = self._dids_loss_recorder.take()
        self.dids_mixture.record_batch(domain_ids, row_loss, row_tokens)
        return result

    def prediction_step(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any):
        inputs.pop(DOMAIN_ID_COLUMN, None)
        inputs.pop(ROW_ID_COLUMN, None)
        return super().prediction_step(model, inputs, *args, **kwargs)

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if self.dids_mixture is not None and "loss" in logs:
            logs = {**logs, **self.dids_mixture.log_metrics()}
        super().log(logs, *args, **kwargs)

    # -------------------------------------------------------------------------------------- trace
    def _trace_path(self) -> str:
        return os.path.join(self.args.output_dir, TRACE_DIR, f"rank{self.args.process_index}.jsonl")

    def _write_trace(self, row_ids: torch.Tensor, domain_ids: torch.Tensor) -> None:
        if self._dids_trace_file is None:
            os.makedirs(os.path.dirname(self._trace_path()), exist_ok=True)
            self._dids_trace_file = open(self._trace_path(), "a", encoding="utf-8")  # noqa: SIM115
        record = {
            "step": int(self.state.global_step),
            "rows": row_ids.tolist(),
            "domains": domain_ids.tolist(),
        }
        self._dids_trace_file.write(json.dumps(record) + "\n")
        self._dids_trace_file.flush()

    def _truncate_trace(self, last_step: int | None) -> None:
        path = self._trace_path()
        if not self.dids_config.dids_trace_samples or not os.path.exists(path):
            return
        kept = []
        if last_step is not None:
            with open(path, encoding="utf-8") as f:
                kept = [line for line in f if line.strip() and json.loads(line)["step"] < last_step]
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(kept)


def strategy_options(cfg: Any, domains: list[str], planned_samples: int) -> dict[str, Any]:
    """The strategy's constructor arguments: the `dids_*` keys it declares (`config_keys`; unset keys keep
    the constructor's defaults) and, for strategies with `needs_reference`, what it reads from that run."""
    cls = STRATEGY_CLASSES[cfg.dids_strategy]
    options = {
        arg: getattr(cfg, key) for arg, key in cls.config_keys.items() if getattr(cfg, key) is not None
    }
    if cls.needs_reference:
        reference = read_reference(cfg.dids_reference_dir, domains, list(cfg.dids_target_datasets))
        from_reference = cls.reference_options(reference, planned_samples)
        logger.info("[dids] %s from the reference run: %s", cfg.dids_strategy, from_reference)
        options.update(from_reference)
    return options
