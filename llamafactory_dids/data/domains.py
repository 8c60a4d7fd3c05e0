"""Domain ids through preprocessing and into the batch.

Role: plumbing under the sampler (repartition -> impact -> schedule -> sampler). LLaMA-Factory drops
every extra column at alignment and at tokenisation, and tokenisation changes row counts (invalid rows
dropped, packing, pt block concatenation). So:

1. alignment is 1 row in, 1 row out: the domain label of each raw row is re-attached as the column
   `DOMAIN_LABEL_COLUMN` after it (`attach_labels`);
2. the stock processor runs once per domain inside each preprocessing batch (`DomainAwareProcessor`),
   so every produced row, packed or concatenated ones included, comes from one domain and carries its
   label;
3. after preprocessing the labels become integer ids in a `datasets.ClassLabel` column `domain_ids`
   whose names are the domain vocabulary (`encode_domain_labels`);
4. `DomainCollator` moves `domain_ids` (and optional row ids) out of the features into the batch
   tensors, for the trainer to pop before the model's forward.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

DOMAIN_LABEL_COLUMN = "_dids_domain"
DOMAIN_ID_COLUMN = "domain_ids"
ROW_ID_COLUMN = "dids_row_ids"


def attach_labels(dataset: Any, labels: Sequence[str]) -> Any:
    """Add the per-row domain labels to an aligned `datasets.Dataset` (same length, same order)."""
    if len(labels) != len(dataset):
        raise RuntimeError(
            f"Alignment changed the row count ({len(labels)} -> {len(dataset)}); domain labels cannot be "
            "carried through. Please report this with your dataset_info.json entry."
        )
    if DOMAIN_LABEL_COLUMN in dataset.column_names:
        dataset = dataset.remove_columns(DOMAIN_LABEL_COLUMN)
    return dataset.add_column(DOMAIN_LABEL_COLUMN, [str(x) for x in labels])


def read_label_column(dataset: Any, column: str, dataset_name: str) -> list[str]:
    """Read a raw dataset's domain column, refusing missing columns and empty labels."""
    if column not in dataset.column_names:
        raise ValueError(
            f"`dids_domain_column: {column}` is not a column of dataset {dataset_name!r} "
            f"(columns: {dataset.column_names}). Point `dids_domain_column` at the column written by "
            "`llamafactory-dids repartition`, or remove it to use one domain per entry of `dataset:`."
        )
    values = dataset[column]
    bad = [i for i, v in enumerate(values) if v is None or str(v).strip() == ""]
    if bad:
        raise ValueError(
            f"Dataset {dataset_name!r} has {len(bad)} row(s) without a domain label in column {column!r} "
            f"(first rows: {bad[:5]}). Label every row; no row is dropped silently."
        )
    return [str(v) for v in values]


class DomainAwareProcessor:
    """Run a LLaMA-Factory dataset processor once per domain inside every preprocessing batch.

    Wraps any object with `preprocess_dataset(examples) -> dict[str, list]` and
    `print_data_example(example)`. The output gains `DOMAIN_LABEL_COLUMN`, one label per produced row.
    """

    def __init__(self, inner: Any):
        self.inner = inner

    def preprocess_dataset(self, examples: Mapping[str, list[Any]]) -> dict[str, list[Any]]:
        labels = examples[DOMAIN_LABEL_COLUMN]
        groups: dict[str, list[int]] = {}
        for i, label in enumerate(labels):
            groups.setdefault(label, []).append(i)
        out: dict[str, list[Any]] = {}
        produced_labels: list[str] = []
        for label, rows in groups.items():
            sub = {k: [v[i] for i in rows] for k, v in examples.items() if k != DOMAIN_LABEL_COLUMN}
            result = self.inner.preprocess_dataset(sub)
            n = len(next(iter(result.values()))) if result else 0
            for key, values in result.items():
                if len(values) != n:
                    raise RuntimeError(
                        f"processor output column {key!r} has {len(values)} rows, expected {n}."
                    )
                out.setdefault(key, []).extend(values)
            produced_labels.extend([label] * n)
        out[DOMAIN_LABEL_COLUMN] = produced_labels
        return out

    def print_data_example(self, example: Mapping[str, Any]) -> None:
        self.inner.print_data_example({k: v for k, v in example.items() if k != DOMAIN_LABEL_COLUMN})


def domain_vocabulary(labels: Sequence[str], preferred_order: Sequence[str] | None = None) -> list[str]:
    """Domain names in id order: `preferred_order` (e.g. the `dataset:` list) first, then sorted rest.

    Labels that all look like integers (as repartition writes them) sort numerically.
    """
    seen = set(labels)
    head = [name for name in (preferred_order or []) if name in seen]
    rest = sorted(seen - set(head))
    if all(r.lstrip("-").isdigit() for r in rest):
        rest.sort(key=int)
    return head + rest


def encode_domain_labels(dataset: Any, vocabulary: Sequence[str], *, unknown: str = "error") -> Any:
    """Replace the label column by a `ClassLabel` column `domain_ids` over `vocabulary`."""
    from datasets import ClassLabel

    index = {name: i for i, name in enumerate(vocabulary)}
    labels = dataset[DOMAIN_LABEL_COLUMN]
    missing = sorted(set(labels) - set(index))
    if missing and unknown == "error":
        raise ValueError(
            f"Domain labels {missing[:10]} are not among the training domains {list(vocabulary)}."
        )
    ids = [index.get(label, -1) for label in labels]
    dataset = dataset.remove_columns(DOMAIN_LABEL_COLUMN)
    if missing:  # evaluation rows from a domain absent in training: keep them, id -1 (no domain)
        return dataset.add_column(DOMAIN_ID_COLUMN, ids)
    return dataset.add_column(DOMAIN_ID_COLUMN, ids).cast_column(
        DOMAIN_ID_COLUMN, ClassLabel(names=list(vocabulary))
    )


class DomainCollator:
    """Wrap a collator: keep `domain_ids` (and row ids) out of its hands, add them to the batch as tensors."""

    def __init__(self, inner: Callable[[list[dict[str, Any]]], dict[str, Any]]):
        self.inner = inner

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        extra: dict[str, list[int]] = {}
        stripped = []
        for feature in features:
            feature = dict(feature)
            for key in (DOMAIN_ID_COLUMN, ROW_ID_COLUMN):
                if key in feature:
                    extra.setdefault(key, []).append(int(feature.pop(key)))
            stripped.append(feature)
        batch = self.inner(stripped)
        for key, values in extra.items():
            if len(values) != len(features):
                raise ValueError(f"only {len(values)} of {len(features)} rows carry {key!r}.")
            batch[key] = torch.tensor(values, dtype=torch.long)
        return batch

    def __getattr__(self, name: str) -> Any:  # LLaMA-Factory and transformers read collator attributes
        if name == "inner":  # not set yet (unpickling in a dataloader worker): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)
