"""Checks of the training data that need only `dataset_info.json` and the files: before any model loads.

Role: integration layer, run by `wrap_get_train_args` right after LLaMA-Factory parsed its arguments and
before it tokenises anything or loads the model (domains -> sampler start from these files). It reads
the host's `dataset_info.json` through `llamafactory.data.parser.get_dataset_list` and checks:

- every local file of a `dataset:` entry (a domain, or a source of `dids_domain_column` labels) and of
  `dids_target_datasets` (a task) holds rows: an empty file, `[]` or blank lines is named with its
  domain or task (the host reports it later as a `DatasetGenerationError` or "corresponds to no data");
- `dids_static_weights` names exactly the domains: the `dataset:` names, or, with `dids_domain_column`,
  the labels read from the json/jsonl files (all rows, unless `max_samples` or `num_samples` select some).

What needs the processed data stays where the data is: labels of hub, csv, parquet or arrow datasets,
domains emptied by `cutoff_len` or `val_size`, and target sets left without rows after preprocessing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

from ..algorithms.strategies import resolve_static_weights
from ..config import DIDSConfig

# A file with rows is never this small and empty; reading this much decides emptiness of any file.
_EMPTY_PROBE_BYTES = 4096
_LABEL_FORMATS = (".json", ".jsonl")


def check_training_data(cfg: DIDSConfig, data_args: Any) -> list[str]:
    """Every problem of the data files that shows before loading them, one message each."""
    from llamafactory.data.parser import get_dataset_list

    problems: list[str] = []
    dataset_dir = data_args.dataset_dir
    train_names = list(data_args.dataset or [])
    by_domain = cfg.dids_domain_column is None
    roles = {name: f"domain `{name}`" if by_domain else "a source of `dataset:`" for name in train_names}
    for name in cfg.dids_target_datasets or []:
        roles.setdefault(name, f"the task of `dids_target_datasets: {name}`")
    files: dict[str, list[str]] = {}
    sampled = False  # `num_samples` in dataset_info.json draws rows at random: labels known once loaded
    for name, role in roles.items():
        try:
            (attr,) = get_dataset_list([name], dataset_dir)
        except ValueError as err:  # undefined in dataset_info.json, or no dataset_info.json
            problems.append(f"Dataset `{name}` ({role}): {err}")
            continue
        if attr.load_from != "file" or not isinstance(dataset_dir, str):
            continue  # hub, script and cloud datasets are only known once loaded
        sampled = sampled or (name in train_names and attr.num_samples is not None)
        path = os.path.join(dataset_dir, attr.dataset_name)
        files[name] = _data_files(path)
        if not files[name]:
            problems.append(
                f"Dataset `{name}` ({role}) points at {path}, which does not exist or holds no files. "
                f"Fix `file_name` of `{name}` in {os.path.join(dataset_dir, 'dataset_info.json')}."
            )
        for file in files[name]:
            emptiness = _emptiness(file)
            if emptiness:
                problems.append(
                    f"Dataset `{name}` ({role}) reads {file}, which {emptiness}. Add rows to it or remove "
                    f"`{name}` from `{'dataset' if name in train_names else 'dids_target_datasets'}:`."
                )
    if problems or cfg.dids_static_weights is None:
        return problems
    if by_domain:
        domains = train_names
    elif sampled or data_args.max_samples is not None:
        return problems  # the labels of the selected rows only: known once loaded
    else:
        domains = _labels(cfg.dids_domain_column, train_names, files)
    if domains is None:
        return problems
    try:
        resolve_static_weights(cfg.dids_static_weights, domains)
    except ValueError as err:
        where = "" if by_domain else f" (labels of `{cfg.dids_domain_column}` read from the files)"
        problems.append(f"{err}{where}")
    return problems


def _data_files(path: str) -> list[str]:
    """The files LLaMA-Factory loads for a local `file_name`: the file, or every file of the folder."""
    if os.path.isfile(path):
        return [path]
    if os.path.isdir(path):
        return sorted(
            os.path.join(path, f) for f in os.listdir(path) if os.path.isfile(os.path.join(path, f))
        )
    return []


def _emptiness(path: str) -> str | None:
    """Why a json/jsonl/text file has no rows (`is empty`, `holds only \\`[]\\``), or None if it has some."""
    with open(path, "rb") as f:
        head = f.read(_EMPTY_PROBE_BYTES + 1)
    if len(head) > _EMPTY_PROBE_BYTES or os.path.splitext(path)[1] not in (*_LABEL_FORMATS, ".txt", ".csv"):
        return None
    text = head.decode("utf-8", errors="replace").strip()
    if not text:
        return "is empty"
    if text in ("[]", "{}"):
        return f"holds only `{text}` (no rows)"
    return None


def _labels(column: str, train_names: list[str], files: dict[str, list[str]]) -> list[str] | None:
    """The sorted domain labels of the training files, or None when they cannot be read up front."""
    labels: set[str] = set()
    for name in train_names:
        paths = files.get(name)
        if not paths or any(os.path.splitext(p)[1] not in _LABEL_FORMATS for p in paths):
            return None
        for path in paths:
            for row in _rows(path):
                # unlabelled rows are refused with their row numbers once loaded (`read_label_column`)
                if isinstance(row, dict) and row.get(column) not in (None, ""):
                    labels.add(str(row[column]))
    return sorted(labels) or None


def _rows(path: str) -> Iterator[Any]:
    with open(path, encoding="utf-8") as f:
        if path.endswith(".jsonl"):
            yield from (json.loads(line) for line in f if line.strip())
        else:
            data = json.load(f)
            yield from data if isinstance(data, list) else []
