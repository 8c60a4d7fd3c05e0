"""`apply()` / `revert()`: rebind the LLaMA-Factory module globals that DIDS hooks into.

Role: the single integration point with the host. It is idempotent, checks the installed
LLaMA-Factory version first, logs what it replaced, and can be undone. The automatic start-up hook
(`llamafactory_dids._startup`, run from a `.pth` file in every interpreter, torchrun workers included)
calls `apply()` once `llamafactory.train.tuner` has been imported, and `apply_launcher()` (the launcher
alone: under torchrun that process never imports the tuner) once `llamafactory.launcher` has. Python API
users call `apply()` themselves before `llamafactory.train.tuner.run_exp`.

Rebound names (module -> global):
- llamafactory.train.tuner.get_train_args         pop and validate `dids_*` keys
- llamafactory.data.loader.get_dataset_list        remember `dataset:` names
- llamafactory.data.loader.align_dataset           carry domain labels across alignment
- llamafactory.data.loader._get_dataset_processor  tokenise domain by domain
- llamafactory.train.{sft,pt}.workflow.get_dataset encode labels as `domain_ids`
- llamafactory.train.sft.workflow.CustomSeq2SeqTrainer, llamafactory.train.pt.workflow.CustomTrainer
- llamafactory.launcher.launch                       before torchrun starts: torchrun on PATH, config
                                                    checked once (reads the launcher's torchrun condition
                                                    and calls `llamafactory.hparams.read_args`)
- sys.excepthook                                    a config error that reaches the top of
                                                    `llamafactory-cli train` prints as one `error:` block
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from .. import SUPPORTED_LLAMAFACTORY

logger = logging.getLogger(__name__)

# original objects, keyed by (module, name); non-empty means applied
_ORIGINALS: dict[tuple[str, str], Any] = {}


def _check_version() -> str:
    from importlib.metadata import version

    from packaging.specifiers import SpecifierSet

    installed = version("llamafactory")
    if installed not in SpecifierSet(SUPPORTED_LLAMAFACTORY):
        raise RuntimeError(
            f"llamafactory-dids supports llamafactory{SUPPORTED_LLAMAFACTORY}, but {installed} is installed. "
            f"Install a supported version (pip install 'llamafactory{SUPPORTED_LLAMAFACTORY}') or set "
            "LLAMAFACTORY_DIDS_DISABLE=1 to run LLaMA-Factory without the plugin."
        )
    return installed


def _trainer_factory(base: type) -> type:
    from .trainer import DIDSTrainerMixin

    return type(f"DIDS{base.__name__}", (DIDSTrainerMixin, base), {"__module__": __name__})


Replacement = tuple[str, str, Callable[[Any], Any]]
TUNER_KEY = ("llamafactory.train.tuner", "get_train_args")
EXCEPTHOOK_KEY = ("sys", "excepthook")


def _launcher_replacements() -> list[Replacement]:
    from .launch import wrap_launch

    return [("llamafactory.launcher", "launch", wrap_launch)]


def _replacements() -> list[Replacement]:
    from .args import wrap_get_train_args
    from .loader import (
        wrap_align_dataset,
        wrap_get_dataset,
        wrap_get_dataset_list,
        wrap_get_dataset_processor,
    )

    return [
        ("llamafactory.train.tuner", "get_train_args", wrap_get_train_args),
        ("llamafactory.data.loader", "get_dataset_list", wrap_get_dataset_list),
        ("llamafactory.data.loader", "align_dataset", wrap_align_dataset),
        ("llamafactory.data.loader", "_get_dataset_processor", wrap_get_dataset_processor),
        ("llamafactory.train.sft.workflow", "get_dataset", wrap_get_dataset),
        ("llamafactory.train.pt.workflow", "get_dataset", wrap_get_dataset),
        ("llamafactory.train.sft.workflow", "CustomSeq2SeqTrainer", _trainer_factory),
        ("llamafactory.train.pt.workflow", "CustomTrainer", _trainer_factory),
        *_launcher_replacements(),
    ]


def is_applied() -> bool:
    return TUNER_KEY in _ORIGINALS


def apply() -> None:
    """Hook DIDS into LLaMA-Factory (idempotent). Imports `llamafactory.train.tuner` if needed."""
    _apply(_replacements())


def apply_launcher() -> None:
    """Hook only LLaMA-Factory's launcher and the excepthook (idempotent); `apply()` adds the rest.

    What the launcher process of `llamafactory-cli train` needs: it starts torchrun and never imports
    the tuner, whose import would cost seconds there.
    """
    _apply(_launcher_replacements())


def _apply(replacements: list[Replacement]) -> None:
    keys = [(module_name, attr) for module_name, attr, _ in replacements]
    if all(key in _ORIGINALS for key in [*keys, EXCEPTHOOK_KEY]):
        return
    installed = _check_version()
    # Importing the host modules can fire the start-up hook, which applies itself: import first, then
    # skip what is already wrapped, so no global is ever wrapped twice.
    modules = {name: importlib.import_module(name) for name, _ in keys}
    replaced = []
    for module_name, attr, make in replacements:
        if (module_name, attr) in _ORIGINALS:
            continue
        module = modules[module_name]
        original = getattr(module, attr)
        setattr(module, attr, make(original))
        _ORIGINALS[(module_name, attr)] = original
        replaced.append(f"{module_name}.{attr}")
    if EXCEPTHOOK_KEY not in _ORIGINALS:
        _ORIGINALS[EXCEPTHOOK_KEY] = sys.excepthook
        sys.excepthook = print_config_problems(sys.excepthook)
        replaced.append("sys.excepthook")
    _share_host_logging()
    if replaced:
        logger.debug("llamafactory-dids hooked into llamafactory %s: %s", installed, ", ".join(replaced))


def print_config_problems(previous: Callable[..., Any]) -> Callable[..., Any]:
    """An excepthook that prints an uncaught config error as its message alone, on the main process.

    The problems are the whole story (key, expectation, value, fix); a traceback through LLaMA-Factory's
    launcher would only bury them. Other ranks stay silent, so torchrun shows the block once. Errors that
    are caught (the Python API) keep their type. The interpreter still exits with status 1.
    """
    from ..config import ConfigProblems

    def excepthook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
        if not issubclass(exc_type, ConfigProblems):
            previous(exc_type, exc, tb)
        elif os.environ.get("RANK", "0") == "0":
            print(f"error: {exc}", file=sys.stderr, flush=True)

    return excepthook


class _MainProcessInfo(logging.Filter):
    """Below WARNING, only the main process speaks (like LLaMA-Factory's `info_rank0`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or os.environ.get("RANK", "0") == "0"


def _share_host_logging() -> None:
    """Print the plugin's `[dids]` messages through LLaMA-Factory's handler and level."""
    host = logging.getLogger("llamafactory")
    ours = logging.getLogger("llamafactory_dids")
    if ours.handlers or not host.handlers:
        return
    for host_handler in host.handlers:
        handler = logging.StreamHandler(getattr(host_handler, "stream", None))
        handler.setFormatter(host_handler.formatter)
        handler.addFilter(_MainProcessInfo())  # a handler filter also sees records of child loggers
        ours.addHandler(handler)
    ours.setLevel(host.getEffectiveLevel())
    ours.propagate = False


def revert() -> None:
    """Restore every rebound global (idempotent)."""
    for (module_name, attr), original in list(_ORIGINALS.items()):
        setattr(importlib.import_module(module_name), attr, original)
        del _ORIGINALS[(module_name, attr)]
