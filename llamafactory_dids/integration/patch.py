"""The host layer: `apply()` / `revert()` rebind the LLaMA-Factory globals that DIDS hooks into, and the
table below lists every other place where the package touches host internals.

Role: the single integration point with the host (LLaMA-Factory, transformers, torch, DeepSpeed).
`check_host_versions()` checks the installed llamafactory and transformers against the supported ranges
(`SUPPORTED_LLAMAFACTORY`, `SUPPORTED_TRANSFORMERS`); `apply()` and `run_repartition` call it before
anything else. `apply()` is idempotent, logs what it replaced, and `revert()` undoes all of it. `swapped()`
is the one mechanism for a temporary swap of a host global elsewhere. The automatic start-up hook
(`llamafactory_dids._startup`, run from a `.pth` file in every interpreter, torchrun workers included)
calls `apply()` once `llamafactory.train.tuner` has been imported, and `apply_launcher()` (the launcher
alone: under torchrun that process never imports the tuner) once `llamafactory.launcher` has. Python API
users call `apply()` themselves before `llamafactory.train.tuner.run_exp`.

Rebound by `apply()`, restored by `revert()` (module -> global):
- llamafactory.train.tuner.get_train_args         pop and validate `dids_*` keys
- llamafactory.data.loader.get_dataset_list        remember `dataset:` names
- llamafactory.data.loader.align_dataset           carry domain labels across alignment
- llamafactory.data.loader._get_dataset_processor  tokenise domain by domain
- llamafactory.train.{sft,pt}.workflow.get_dataset encode labels as `domain_ids`
- llamafactory.train.sft.workflow.CustomSeq2SeqTrainer, llamafactory.train.pt.workflow.CustomTrainer
                                                    subclassed by `DIDSTrainerMixin` (overrides below)
- llamafactory.launcher.launch                       before torchrun starts: torchrun on PATH, config
                                                    checked once (reads the launcher's torchrun condition
                                                    and calls `llamafactory.hparams.read_args`)
- sys.excepthook                                    a config error that reaches the top of
                                                    `llamafactory-cli train` prints as one `error:` block
- logging.getLogger("llamafactory_dids")            handlers copying LLaMA-Factory's (stream, format;
                                                    below WARNING rank 0 only), its level, propagate off:
                                                    `[dids]` messages print like the host's own

Swapped for one call through `swapped()` (restored on return and on error; what, where: why):
- torch.load                 integration/trainer.py `_load_optimizer_and_scheduler`: transformers 5.6
                             restores the optimizer of a multi-process CPU run with map_location
                             "cpu:<rank>", which torch.load cannot map; mapped to "cpu"
- sys.argv                   integration/launch.py `_read_train_args`: the host's `read_args` reads the
                             command line from sys.argv only

Set where they are used, on purpose not undone by `revert()` (what, where: why it stays local):
- PreTrainedModel.loss_function (a transformers property; sets `_loss_function`) of the trained model
                             integration/loss.py `install_loss_recorder`, at trainer init with
                             `dids_log_domain_loss` or `dids_domain_gradients: train`: the causal-LM loss
                             swap. Per model instance, so it
                             lives and dies with the model the trainer owns; swapping the global
                             `LOSS_MAPPING["ForCausalLM"]` instead would change every model in the process
- Trainer.data_collator      integration/trainer.py `DIDSTrainerMixin.__init__`: wrapped in
                             `DomainCollator` (data/domains.py), which forwards attribute reads to the
                             host's collator; per trainer instance
- os.environ["PATH"]         integration/launch.py `put_torchrun_on_path`, launcher process only: torchrun
                             inherits the environment, so the change must outlive the call
- DataArguments.dids, FinetuningArguments.dids, TrainingArguments.num_train_epochs (1 with `dids_budget`)
                             integration/args.py `get_train_args` wrapper: the config travels with the
                             host's own argument objects of this run into the loader and the trainer
- DatasetAttr.dids_name      integration/loader.py `get_dataset_list` wrapper: the stock attr keeps only
                             the file name; per object
- transformers progress bars demo.py `build_model`: off around `save_pretrained`, back on in `finally`
                             (transformers' public switch, not an attribute swap)

Host methods that `DIDSTrainerMixin` (integration/trainer.py) overrides:
- Trainer._get_train_sampler (private)              the domain sampler
- Trainer._load_optimizer_and_scheduler (private)   the torch.load swap above, CPU multi-process resume only
- Trainer.compute_loss, prediction_step, log, train pop `domain_ids`, record per-domain loss, add the
                                                    mixture's scalars, restore the mixture on resume
- Trainer.training_step                             `dids_domain_gradients: train`: open one micro-batch's
                                                    forward and backward to the domain-gradient hooks

Private or internal host names called or read elsewhere (what, where: why):
- llamafactory.data.loader._get_merged_dataset, _get_preprocessed_dataset
                             integration/loader.py `load_target_sets`: target sets are loaded and processed
                             exactly like training data
- SupervisedDatasetProcessor._encode_data_example (llamafactory.data.processor)
                             integration/host_data.py `sft_row_encoder`, for repartition/inputs.py
                             `load_inputs`: encode each aligned row as SFT training does, keeping the rows
                             LLaMA-Factory would drop (rows in = rows out)
- llamafactory.data.converter.align_dataset with a stand-in `training_args` (the two fields it reads)
                             integration/host_data.py `align_rows`, for repartition: align without
                             TrainingArguments
- llamafactory.extras.misc.{get_device_count, is_env_enabled, use_kt, use_ray}
                             integration/launch.py `starts_torchrun`: the launcher's own torchrun condition
- llamafactory.hparams.{read_args, DataArguments, FinetuningArguments, ModelArguments},
  llamafactory.data.parser.get_dataset_list, llamafactory.data.get_template_and_fix_tokenizer,
  llamafactory.model.load_tokenizer, llamafactory.extras.constants.FILEEXT2TYPE
                             integration/{args,launch,data_checks,host_data}.py (host_data for
                             repartition): parse arguments, read dataset_info.json, tokenizer and
                             template as the host does
- transformers.loss.loss_utils.LOSS_MAPPING["ForCausalLM"]
                             integration/loss.py `install_loss_recorder`: recognise the stock causal-LM
                             loss before replacing it (read only)
- DeepSpeed ZeRO-3 parameter attributes ds_shape, ds_tensor
                             algorithms/features.py `full_shape`, runtime/sharding.py `is_partitioned`: a
                             partitioned parameter's logical shape (read only)
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

from .. import SUPPORTED_LLAMAFACTORY, SUPPORTED_TRANSFORMERS

logger = logging.getLogger(__name__)

# original objects, keyed by (module, name); non-empty means applied
_ORIGINALS: dict[tuple[str, str], Any] = {}


# (package, supported versions) of every host package whose internals the plugin relies on
HOST_PACKAGES = (("llamafactory", SUPPORTED_LLAMAFACTORY), ("transformers", SUPPORTED_TRANSFORMERS))
DISABLE_HINT = "set LLAMAFACTORY_DIDS_DISABLE=1 to run LLaMA-Factory without the plugin"


class HostVersionError(RuntimeError):
    """An installed host package (llamafactory, transformers) outside the supported versions."""


def check_host_versions(*, disable_hint: bool = True) -> dict[str, str]:
    """The installed version of each host package; raise when one is outside its supported range.

    Reads package metadata only (imports nothing), so callers run it before touching the host.

    Args:
        disable_hint: also name `LLAMAFACTORY_DIDS_DISABLE=1` as a way out (training through
            `llamafactory-cli`; useless for the plugin's own commands).

    Raises:
        HostVersionError: naming every unsupported package, its installed and supported versions and
            the pip command that installs supported ones.
    """
    from importlib.metadata import PackageNotFoundError, version

    from packaging.specifiers import SpecifierSet

    installed: dict[str, str] = {}
    problems: list[str] = []
    for package, supported in HOST_PACKAGES:
        try:
            installed[package] = version(package)
        except PackageNotFoundError:
            problems.append(
                f"llamafactory-dids supports {package}{supported}, but {package} is not installed."
            )
            continue
        if installed[package] not in SpecifierSet(supported):
            problems.append(
                f"llamafactory-dids supports {package}{supported}, but {installed[package]} is installed."
            )
    if problems:
        wanted = " ".join(f"'{package}{supported}'" for package, supported in HOST_PACKAGES)
        way_out = f" or {DISABLE_HINT}" if disable_hint else ""
        raise HostVersionError(
            f"{' '.join(problems)} Install supported versions (pip install {wanted}){way_out}."
        )
    return installed


@contextlib.contextmanager
def swapped(owner: Any, attr: str, value: Any) -> Iterator[Any]:
    """Set `owner.attr` to `value` inside the block and restore the original after it, errors included.

    The one way the package swaps a host global for the span of a call (listed in the table above).
    Yields the original.
    """
    original = getattr(owner, attr)
    setattr(owner, attr, value)
    try:
        yield original
    finally:
        setattr(owner, attr, original)


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
    installed = check_host_versions()
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
        logger.debug(
            "llamafactory-dids hooked into llamafactory %s (transformers %s): %s",
            installed["llamafactory"],
            installed["transformers"],
            ", ".join(replaced),
        )


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


# What `_share_host_logging` changed on the plugin's logger, for `revert()`: the handlers it added and the
# level and propagate flag it replaced. None: nothing changed.
_SHARED_LOGGING: tuple[list[logging.Handler], int, bool] | None = None
PLUGIN_LOGGER = "llamafactory_dids"


def _share_host_logging() -> None:
    """Print the plugin's `[dids]` messages through LLaMA-Factory's handler and level."""
    global _SHARED_LOGGING
    host = logging.getLogger("llamafactory")
    ours = logging.getLogger(PLUGIN_LOGGER)
    if ours.handlers or not host.handlers:
        return
    added = []
    for host_handler in host.handlers:
        handler = logging.StreamHandler(getattr(host_handler, "stream", None))
        handler.setFormatter(host_handler.formatter)
        handler.addFilter(_MainProcessInfo())  # a handler filter also sees records of child loggers
        ours.addHandler(handler)
        added.append(handler)
    _SHARED_LOGGING = (added, ours.level, ours.propagate)
    ours.setLevel(host.getEffectiveLevel())
    ours.propagate = False


def _unshare_host_logging() -> None:
    """Undo `_share_host_logging`: remove its handlers, restore the level and propagate flag."""
    global _SHARED_LOGGING
    if _SHARED_LOGGING is None:
        return
    added, level, propagate = _SHARED_LOGGING
    ours = logging.getLogger(PLUGIN_LOGGER)
    for handler in added:
        ours.removeHandler(handler)
        handler.close()  # unregisters it; a StreamHandler leaves its stream open
    ours.setLevel(level)
    ours.propagate = propagate
    _SHARED_LOGGING = None


def revert() -> None:
    """Restore every rebound global and the plugin logger's handlers, level and propagation (idempotent)."""
    for (module_name, attr), original in list(_ORIGINALS.items()):
        setattr(importlib.import_module(module_name), attr, original)
        del _ORIGINALS[(module_name, attr)]
    _unshare_host_logging()
