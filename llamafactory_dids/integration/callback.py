"""The Trainer callback that runs the mixture schedule: initial record, updates, final losses, checkpoints.

Role: integration layer (a `transformers.TrainerCallback`); the work itself is `DomainMixture`'s.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import numpy as np
from transformers import TrainerCallback

from ..run_files import TRAINER_STATE
from ..runtime.mixture import DomainMixture

logger = logging.getLogger(__name__)


def checkpoint_step(path: str) -> int | None:
    """The global step a checkpoint folder was saved at (its `trainer_state.json`), None without one."""
    state = os.path.join(path, TRAINER_STATE)
    if os.path.isfile(state):
        with open(state, encoding="utf-8") as f:
            return int(json.load(f)["global_step"])
    return None


class MixtureCallback(TrainerCallback):
    """Runs the schedule: initial record, updates every interval, state into every checkpoint."""

    def __init__(self, mixture: DomainMixture, config: Any):
        self.mixture = mixture
        self.config = config
        self.interval: int | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        cfg = self.config
        if cfg.dids_update_interval is not None:
            self.interval = cfg.dids_update_interval
        elif cfg.dids_num_updates is not None:
            self.interval = max(1, state.max_steps // cfg.dids_num_updates)
        elif self.mixture.strategy.dynamic:
            raise ValueError(
                f"`dids_strategy: {self.mixture.strategy.name}` updates the mixture during training: set "
                "`dids_update_interval` (optimizer steps) or `dids_num_updates`."
            )
        if self.mixture.resumed_state is None and state.global_step == 0:
            self.mixture.observe_initial_task_losses()
            self.mixture.initial_record()
        if self.interval is not None:
            logger.info(
                "[dids] mixture updates every %d optimizer steps (%d steps in all)",
                self.interval,
                state.max_steps,
            )

    def on_step_end(self, args, state, control, **kwargs):
        if self.interval is not None and state.global_step % self.interval == 0:
            record = self.mixture.update(state.global_step)
            logger.info(
                "[dids] update %d at step %d: %s",
                record["update"],
                record["step"],
                np.round(record["weights"], 4).tolist(),
            )

    def on_train_end(self, args, state, control, **kwargs):
        # collective: every rank measures its share of the observation rows; rank 0 writes dids_final.json
        record = self.mixture.final_evaluation(state.global_step)
        if record is not None:
            logger.info(
                "[dids] final task losses: %s", dict(zip(record["tasks"], record["task_losses"], strict=True))
            )

    def on_save(self, args, state, control, **kwargs):
        # collective (counters are all-reduced) on every rank; rank 0 writes into the checkpoint folder
        self.mixture.save(os.path.join(args.output_dir, f"checkpoint-{state.global_step}"))
