"""Wrappers around LLaMA-Factory's data loading that keep one domain id per training row.

Role: integration layer for the domain plumbing of data.domains. The wrapped functions are module
globals of `llamafactory.data.loader` and of the sft/pt workflows; `integration.patch` swaps them in.
Each wrapper calls the stock function and only adds domain labels, so with no `dids_strategy` the
stock behaviour is untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from ..algorithms.dids import PAPER_TARGET_SAMPLES
from ..config import target_samples
from ..data.domains import (
    DOMAIN_ID_COLUMN,
    DOMAIN_LABEL_COLUMN,
    ROW_ID_COLUMN,
    DomainAwareProcessor,
    attach_labels,
    domain_vocabulary,
    encode_domain_labels,
    read_label_column,
)

logger = logging.getLogger(__name__)

_NAME_ATTR = "dids_name"


#: dataset-module key of the loaded observation sets ({name: dataset}); the trainer pops it
TARGET_SETS_KEY = "dids_target_sets"


def dids_config_of(args: Any) -> Any:
    """The `DIDSConfig` attached to a LLaMA-Factory arguments object, if DIDS is on."""
    cfg = getattr(args, "dids", None)
    return cfg if cfg is not None and cfg.enabled else None


def wrap_get_dataset_list(original: Callable[..., list[Any]]) -> Callable[..., list[Any]]:
    """Remember each dataset's `dataset:` name on its `DatasetAttr` (the stock attr only keeps the file)."""

    def get_dataset_list(dataset_names, dataset_dir):
        attrs = original(dataset_names, dataset_dir)
        for name, attr in zip(dataset_names or [], attrs, strict=False):
            setattr(attr, _NAME_ATTR, name)
        return attrs

    get_dataset_list.__wrapped__ = original  # type: ignore[attr-defined]
    return get_dataset_list


def wrap_align_dataset(original: Callable[..., Any]) -> Callable[..., Any]:
    """Carry each raw row's domain label across alignment (which keeps 1 row per row)."""

    def align_dataset(dataset, dataset_attr, data_args, training_args):
        cfg = dids_config_of(data_args)
        if cfg is None:
            return original(dataset, dataset_attr, data_args, training_args)
        name = getattr(dataset_attr, _NAME_ATTR, None) or dataset_attr.dataset_name
        column = cfg.dids_domain_column
        # training sets must carry the column; other sets (e.g. downstream targets) may, else use the name
        if column is not None and (name in (data_args.dataset or []) or column in dataset.column_names):
            labels = read_label_column(dataset, column, name)
        else:
            labels = [name] * len(dataset)
        aligned = original(dataset, dataset_attr, data_args, training_args)
        return attach_labels(aligned, labels)

    align_dataset.__wrapped__ = original  # type: ignore[attr-defined]
    return align_dataset


def wrap_get_dataset_processor(original: Callable[..., Any]) -> Callable[..., Any]:
    """Run the stock processor once per domain inside each preprocessing batch."""

    def _get_dataset_processor(data_args, *args, **kwargs):
        processor = original(data_args, *args, **kwargs)
        return DomainAwareProcessor(processor) if dids_config_of(data_args) is not None else processor

    _get_dataset_processor.__wrapped__ = original  # type: ignore[attr-defined]
    return _get_dataset_processor


def wrap_get_dataset(original: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """Turn the carried labels into a `ClassLabel` column `domain_ids` (and optional row ids); add the
    loaded observation sets (`dids_target_datasets`) to the dataset module under `TARGET_SETS_KEY`."""

    def get_dataset(template, model_args, data_args, training_args, stage, **kwargs):
        module = original(template, model_args, data_args, training_args, stage, **kwargs)
        cfg = dids_config_of(data_args)
        if cfg is None:
            return module
        train = module.get("train_dataset")
        if train is None:
            return module
        if DOMAIN_ID_COLUMN in train.column_names and DOMAIN_LABEL_COLUMN not in train.column_names:
            vocabulary = list(train.features[DOMAIN_ID_COLUMN].names)  # from `tokenized_path`
        elif DOMAIN_LABEL_COLUMN in train.column_names:
            vocabulary = domain_vocabulary(
                train[DOMAIN_LABEL_COLUMN], None if cfg.dids_domain_column else list(data_args.dataset or [])
            )
            train = encode_domain_labels(train, vocabulary)
        else:
            raise ValueError(
                "The training set has no domain labels. If it comes from `tokenized_path`, it was tokenized "
                "without `dids_strategy`: delete that folder (or point `tokenized_path` elsewhere) and "
                "tokenize again with the `dids_*` keys set."
            )
        if cfg.dids_trace_samples and ROW_ID_COLUMN not in train.column_names:
            train = train.add_column(ROW_ID_COLUMN, list(range(len(train))))
        module["train_dataset"] = train
        eval_data = module.get("eval_dataset")
        if isinstance(eval_data, dict):
            module["eval_dataset"] = {k: _encode_eval(v, vocabulary) for k, v in eval_data.items()}
        elif eval_data is not None:
            module["eval_dataset"] = _encode_eval(eval_data, vocabulary)
        if cfg.dids_target_datasets:
            # LLaMA-Factory's workflows pass the dataset module to the trainer as keyword arguments: the
            # observation rows reach `DIDSTrainerMixin.__init__` as this one
            module[TARGET_SETS_KEY] = load_target_sets(
                cfg, template, model_args, data_args, training_args, stage, **kwargs
            )
        sizes = np.bincount(np.asarray(train[DOMAIN_ID_COLUMN]), minlength=len(vocabulary)).tolist()
        logger.info(
            "[dids] %d training rows in %d domains: %s",
            len(train),
            len(vocabulary),
            ", ".join(f"{n}={s}" for n, s in zip(vocabulary, sizes, strict=True)),
        )
        return module

    get_dataset.__wrapped__ = original  # type: ignore[attr-defined]
    return get_dataset


def load_target_sets(
    cfg, template, model_args, data_args, training_args, stage, tokenizer, processor=None, **_
):
    """Each downstream task's observation rows: processed like training data, a seeded fixed subset."""
    from llamafactory.data import loader

    sets, loss_rows = {}, target_samples(cfg)
    for name in cfg.dids_target_datasets:
        raw = loader._get_merged_dataset([name], model_args, data_args, training_args, stage)
        processed = loader._get_preprocessed_dataset(
            raw, data_args, training_args, stage, template, tokenizer, processor, is_eval=True
        )
        if DOMAIN_LABEL_COLUMN in processed.column_names:
            processed = processed.remove_columns(DOMAIN_LABEL_COLUMN)
        if len(processed) == 0:
            raise ValueError(
                f"Target dataset {name!r} has no usable rows after preprocessing (check cutoff_len)."
            )
        rows = observation_rows(len(processed), loss_rows, int(cfg.dids_seed or 0))
        sets[name] = processed.select(rows)
        logger.info(
            "[dids] target %r: %d observation rows for its losses, %d for its gradients (of %d)",
            name,
            min(loss_rows, len(rows)),
            len(rows),
            len(processed),
        )
    return sets


def observation_rows(count: int, loss_rows: int, seed: int) -> list[int]:
    """Indices of a task's observation rows, of `count`: a seeded random subset of max(`loss_rows`, the
    paper's 200), the `loss_rows` that give the task losses first, each part in file order. The probe's
    gradient windows rotate through all of them. The same seed gives nested subsets: the loss rows of a
    smaller `loss_rows` are among those of a larger one."""
    order = np.random.default_rng([seed, 3]).permutation(count)[: max(loss_rows, PAPER_TARGET_SAMPLES)]
    return np.concatenate([np.sort(order[:loss_rows]), np.sort(order[loss_rows:])]).tolist()


def _encode_eval(dataset: Any, vocabulary: list[str]) -> Any:
    if DOMAIN_LABEL_COLUMN in dataset.column_names:
        return encode_domain_labels(dataset, vocabulary, unknown="keep")
    return dataset
