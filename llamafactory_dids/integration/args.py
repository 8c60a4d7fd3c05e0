"""Pop the `dids_*` keys before LLaMA-Factory parses its arguments, validate them, attach the config.

Role: integration layer, first thing that runs in `llamafactory-cli train` (and in every torchrun
worker). LLaMA-Factory's HfArgumentParser rejects unknown keys, so the wrapper removes `dids_*` keys
from the YAML dict (or from `--dids_x value` argv lists), builds a `DIDSConfig`, lets the stock parser
handle the rest, then checks the combination and the data files (`data_checks`) and attaches the config
as `.dids` on the data and finetuning argument objects, where the loader wrappers and the trainer find it.
All of this happens before any model or dataset is loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..config import (
    KEY_PREFIX,
    DIDSConfig,
    DIDSConfigError,
    check_host_arguments,
    parse_dids_config,
    split_dids_keys,
)
from .data_checks import check_training_data

logger = logging.getLogger(__name__)


def pop_dids_keys(
    args: dict[str, Any] | list[str] | None,
) -> tuple[dict[str, Any], dict[str, Any] | list[str] | None]:
    """Separate `dids_*` keys from LLaMA-Factory arguments (a dict from YAML, or an argv-style list)."""
    if args is None:
        return {}, None
    if isinstance(args, dict):
        return split_dids_keys(args)
    rest: list[str] = []
    found: dict[str, Any] = {}
    i = 0
    while i < len(args):
        token = args[i]
        name = token[2:] if token.startswith("--") else None
        if name is not None and name.split("=", 1)[0].startswith(KEY_PREFIX):
            if "=" in name:
                key, value = name.split("=", 1)
            elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                key, value = name, args[i + 1]
                i += 1
            else:
                key, value = name, "true"
            found[key] = value
        else:
            rest.append(token)
        i += 1
    return found, rest


def training_run_problems(
    cfg: DIDSConfig, *, data_args: Any, training_args: Any, finetuning_args: Any
) -> list[str]:
    """Every problem of a valid `cfg` with the host's arguments and with the data files, one message each.

    The check every process runs after LLaMA-Factory parsed its arguments; torchrun's launcher runs it
    once before any worker starts (`launch.check_before_torchrun`).
    """
    problems: list[str] = []
    try:
        check_host_arguments(
            cfg, data_args=data_args, training_args=training_args, finetuning_args=finetuning_args
        )
    except DIDSConfigError as err:
        problems = err.problems
    return problems + check_training_data(cfg, data_args)


def wrap_get_train_args(original: Callable[..., tuple]) -> Callable[..., tuple]:
    def get_train_args(args: dict[str, Any] | list[str] | None = None):
        if args is None:
            from llamafactory.hparams import read_args

            args = read_args(None)
        raw, rest = pop_dids_keys(args)
        cfg = parse_dids_config(raw) if raw else DIDSConfig()
        model_args, data_args, training_args, finetuning_args, generating_args = original(rest)
        if cfg.enabled:
            problems = training_run_problems(
                cfg, data_args=data_args, training_args=training_args, finetuning_args=finetuning_args
            )
            if problems:
                raise DIDSConfigError(problems)
            if cfg.dids_budget is not None and training_args.num_train_epochs != 1:
                logger.warning(
                    "[dids] `dids_budget: %d` sets the run length; `num_train_epochs: %s` is replaced by 1.",
                    cfg.dids_budget,
                    training_args.num_train_epochs,
                )
                training_args.num_train_epochs = 1.0
            if cfg.dids_seed is None:
                cfg.dids_seed = int(training_args.seed)
            data_args.dids = cfg
            finetuning_args.dids = cfg
        return model_args, data_args, training_args, finetuning_args, generating_args

    get_train_args.__wrapped__ = original  # type: ignore[attr-defined]
    return get_train_args
