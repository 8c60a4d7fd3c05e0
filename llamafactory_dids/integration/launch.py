"""The launcher process of `llamafactory-cli train` under torchrun: torchrun found, the config checked first.

Role: integration layer, the one step of a distributed training run that happens before any worker
exists (and so before impact -> schedule -> sampler). When LLaMA-Factory's launcher is about to start
`train` under torchrun (`FORCE_TORCHRUN=1`, or several devices), `wrap_launch` first

- puts this interpreter's scripts directory on PATH when `torchrun` is not on it: the host runs
  `torchrun` by name, so `.venv/bin/llamafactory-cli` of a venv that is not activated would fail with
  `FileNotFoundError: 'torchrun'`, although the venv's own torchrun sits next to its Python;
- runs the workers' validation of the `dids_*` keys, the host arguments and the data files once
  (`args.training_run_problems`), so a config error prints as one `error:` block and torchrun never
  starts; otherwise every worker fails and torchrun follows the block with its ChildFailedError report.

Single-process runs validate in `get_train_args`, in the same process, and are left as they are.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import DIDSConfigError, parse_dids_config
from .args import pop_dids_keys, training_run_problems
from .patch import swapped

logger = logging.getLogger(__name__)


def wrap_launch(original: Callable[[], Any]) -> Callable[[], Any]:
    def launch():
        if len(sys.argv) > 1 and sys.argv[1] == "train" and starts_torchrun():
            put_torchrun_on_path()
            check_before_torchrun(sys.argv[2:])
        return original()

    launch.__wrapped__ = original  # type: ignore[attr-defined]
    return launch


def starts_torchrun() -> bool:
    """Whether LLaMA-Factory 0.9.5's `launch` runs `train` under torchrun (its own condition, its helpers)."""
    from llamafactory.extras.misc import get_device_count, is_env_enabled, use_kt, use_ray

    if is_env_enabled("USE_MCA") or is_env_enabled("FORCE_TORCHRUN"):
        return True
    return get_device_count() > 1 and not use_ray() and not use_kt()


def put_torchrun_on_path() -> str | None:
    """Prepend the directory of `sys.executable` to PATH when it holds `torchrun` and PATH does not.

    The launcher hands a copy of `os.environ` to torchrun, so the workers see the same PATH, as after
    activating the environment. Returns the directory added, or None when nothing changed.
    """
    if shutil.which("torchrun") is not None:
        return None
    scripts = str(Path(sys.executable).parent)
    if shutil.which("torchrun", path=scripts) is None:
        return None  # no torchrun of this environment either: the host's own error stands
    os.environ["PATH"] = scripts + os.pathsep + os.environ.get("PATH", "")
    logger.debug("[dids] `torchrun` is not on PATH; using %s/torchrun, next to %s.", scripts, sys.executable)
    return scripts


def check_before_torchrun(argv: list[str]) -> None:
    """Raise what every worker would raise about the `dids_*` keys of `argv`, before torchrun starts.

    Args:
        argv: the arguments of `llamafactory-cli train`: a YAML (or JSON) file and `key=value`
            overrides, or `--key value` pairs, read by the host's own `read_args`.

    Raises:
        DIDSConfigError: every problem found, as the workers would report it.

    The workers' checks need LLaMA-Factory's data and finetuning arguments and `max_steps`; they are
    parsed here with the host's dataclasses, without `TrainingArguments` (which sets up the device in
    the launcher). Arguments the host itself rejects are left to the workers, which report them as stock.
    """
    try:
        args = _read_train_args(argv)
    except Exception:  # e.g. a missing YAML: the workers report it as stock LLaMA-Factory does
        return
    raw, rest = pop_dids_keys(args)
    if not raw:
        return
    cfg = parse_dids_config(raw)
    if not cfg.enabled:
        return
    try:
        data_args, finetuning_args, training_args = _parse_host_arguments(rest)
    except (Exception, SystemExit):  # argparse exits on some errors even with exit_on_error=False
        return
    problems = training_run_problems(
        cfg, data_args=data_args, training_args=training_args, finetuning_args=finetuning_args
    )
    if problems:
        raise DIDSConfigError(problems)


def _read_train_args(argv: list[str]) -> dict[str, Any] | list[str]:
    from llamafactory.hparams import read_args

    with swapped(sys, "argv", [sys.argv[0], *argv]):  # `read_args` reads the command line from sys.argv only
        return read_args()


@dataclass
class _RunLength:
    """The one `TrainingArguments` field the checks read (`TrainingArguments` sets up the device)."""

    max_steps: int = field(default=-1, metadata={"help": "As `TrainingArguments.max_steps`."})


def _parse_host_arguments(rest: dict[str, Any] | list[str] | None) -> tuple[Any, ...]:
    """LLaMA-Factory's DataArguments, FinetuningArguments and `max_steps` of the non-`dids_*` keys."""
    from llamafactory.hparams import DataArguments, FinetuningArguments
    from transformers import HfArgumentParser

    parser = HfArgumentParser(
        (DataArguments, FinetuningArguments, _RunLength), allow_abbrev=False, exit_on_error=False
    )
    if isinstance(rest, dict):
        return parser.parse_dict(rest, allow_extra_keys=True)
    *parsed, _others = parser.parse_args_into_dataclasses(args=rest or [], return_remaining_strings=True)
    return tuple(parsed)
