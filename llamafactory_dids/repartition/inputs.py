"""Rows, sources and token ids of a repartition run, through LLaMA-Factory's own data machinery.

Role: the inputs of repartition; LLaMA-Factory is called through `integration.host_data`. Each `dataset:` entry is read from its
file in `dataset_dir` as LLaMA-Factory reads it (`datasets.load_dataset` on the file, `max_samples` =
the first N rows), aligned with LLaMA-Factory's converter (one aligned row per raw row) and encoded with
its supervised processor and the run's template, so prompt tokens are masked exactly as in SFT
training. Rows that LLaMA-Factory would drop as invalid, or that keep no response token after
`cutoff_len`, are kept (rows in = rows out) but have no gradient; they are reported and placed in their
source's largest domain.

Every check here runs before the proxy model computes anything: unreadable files, unknown datasets,
missing source or label columns, empty sources or labels, incompatible formats, fewer trainable rows than
domains.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..algorithms.clustering import allocate_domains
from ..integration import host_data
from ..utils import IGNORE_INDEX
from .config import RepartitionConfig

logger = logging.getLogger(__name__)

# dataset_info keys that locate a file; every other key (formatting, columns, tags, ranking) must agree
# between sources for one `dids_repartitioned` entry to describe all rows
_LOCATION_KEYS = {
    "file_name",
    "file_sha1",
    "hf_hub_url",
    "ms_hub_url",
    "om_hub_url",
    "script_url",
    "cloud_file_name",
}
_DROPPED_KEYS = {"num_samples", "split", "subset", "folder"}
DOMAIN_COLUMN = "dids_domain"
SOURCE_COLUMN = "dids_source"


class RepartitionInputError(ValueError):
    """Bad input data found before any feature is computed."""


@dataclass
class Inputs:
    """Everything repartition knows about the rows, in output order (datasets in `dataset:` order)."""

    raw: list[Any]  # one `datasets.Dataset` per `dataset:` entry: the rows to write back
    info_entry: dict[str, Any]  # dataset_info entry for the output file (without file_name)
    sources: np.ndarray  # [n] source index of every row
    source_names: list[str]
    domains_per_source: list[int]
    encoded: list[tuple[list[int], list[int]] | None] = field(default_factory=list)  # None: invalid row
    texts: list[str] = field(default_factory=list)  # plain text of each row (semantic features)
    labels: list[str] | None = None  # `dids_label_column` of each row (judges the domains), if set

    @property
    def num_rows(self) -> int:
        return len(self.sources)

    def trainable(self) -> np.ndarray:
        """[n] bool: the row has at least one supervised token after the shift."""
        return np.array(
            [e is not None and any(x != IGNORE_INDEX for x in e[1][1:]) for e in self.encoded], dtype=bool
        )

    def token_digest(self) -> str:
        """sha256 of every row's token ids and labels (part of the feature-cache fingerprint)."""
        h = hashlib.sha256()
        for e in self.encoded:
            h.update(json.dumps(e, separators=(",", ":")).encode())
            h.update(b"\n")
        for t in self.texts:
            h.update(t.encode())
        return h.hexdigest()


def data_arguments(cfg: RepartitionConfig) -> Any:
    """LLaMA-Factory's DataArguments of the repartitioned data, as a training run on it would have them."""
    return host_data.data_arguments(
        template=cfg.template,
        dataset=list(cfg.dataset),
        dataset_dir=cfg.dataset_dir,
        cutoff_len=cfg.cutoff_len,
        max_samples=cfg.max_samples,
        train_on_prompt=cfg.train_on_prompt,
        mask_history=cfg.mask_history,
        overwrite_cache=True,
    )


def _dataset_info(cfg: RepartitionConfig) -> dict[str, Any]:
    path = Path(cfg.dataset_dir) / "dataset_info.json"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise RepartitionInputError(
            f"`dataset_dir` has no dataset_info.json: {path} not found. Point `dataset_dir` at the folder that "
            "holds the LLaMA-Factory dataset_info.json."
        ) from err
    except (OSError, ValueError) as err:
        raise RepartitionInputError(f"Cannot read {path}: {err}. Fix the file (it must be JSON).") from err
    unknown = [n for n in cfg.dataset if n not in info]
    if unknown:
        raise RepartitionInputError(
            f"`dataset` names {unknown} not defined in {path}. Defined: {', '.join(sorted(info))}."
        )
    return info


def _common_entry(cfg: RepartitionConfig, info: dict[str, Any]) -> dict[str, Any]:
    shapes = {}
    for name in cfg.dataset:
        entry = info[name]
        if "file_name" not in entry:
            raise RepartitionInputError(
                f"Dataset {name!r} is not a local file (repartition reads files in `dataset_dir`): its "
                f"dataset_info entry is {entry!r}. Download it and register it with `file_name`."
            )
        shape = {k: v for k, v in entry.items() if k not in _LOCATION_KEYS | _DROPPED_KEYS}
        shapes[name] = json.dumps(shape, sort_keys=True)
    if len(set(shapes.values())) > 1:
        detail = "; ".join(f"{n}: {s}" for n, s in shapes.items())
        raise RepartitionInputError(
            "The datasets use different formats or column mappings, so one output file cannot describe them "
            f"all ({detail}). Convert them to one format first, or repartition them in separate runs."
        )
    return json.loads(next(iter(shapes.values())))


def _load_raw(cfg: RepartitionConfig, name: str, attr: Any) -> Any:
    """The rows of one dataset file, read as LLaMA-Factory reads a local file."""
    from datasets import load_dataset

    types = host_data.file_types()
    path = Path(cfg.dataset_dir) / attr.dataset_name
    if path.is_dir():
        files = [str(path / f) for f in os.listdir(path)]
    elif path.is_file():
        files = [str(path)]
    else:
        raise RepartitionInputError(f"Dataset {name!r}: file {path} not found (from dataset_info.json).")
    kinds = {types.get(os.path.splitext(f)[-1][1:]) for f in files}
    if len(kinds) != 1 or None in kinds:
        raise RepartitionInputError(
            f"Dataset {name!r}: {path} must hold files of one type among {', '.join(types)}, "
            f"got {sorted(os.path.basename(f) for f in files)}."
        )
    try:
        dataset = load_dataset(kinds.pop(), data_files=files, split=attr.split)
    except Exception as err:  # datasets raises many types for a malformed file
        if "corresponds to no data" in str(err):  # a file with no rows
            raise RepartitionInputError(
                f"Empty source(s): dataset(s) {[name]} have no rows ({path}). Remove them from `dataset`."
            ) from err
        raise RepartitionInputError(f"Dataset {name!r}: cannot read {path}: {err}") from err
    if attr.num_samples is not None:
        logger.warning(
            "[dids] dataset %r: `num_samples` is ignored; every row of the file is repartitioned", name
        )
    if cfg.max_samples is not None:
        dataset = dataset.select(range(min(cfg.max_samples, len(dataset))))
    return dataset


def _required_column(
    column: str, datasets: Iterable[tuple[str, Any, Path | None]], missing: str, empty: str
) -> list[str]:
    """Every row's `column` value as text over `datasets` ((name, dataset, file path) each). A missing column
    or an empty value raises RepartitionInputError with the template `missing` or `empty` (fields: column,
    name, path, columns, row)."""
    values: list[str] = []
    for name, d, path in datasets:
        if column not in d.column_names:
            raise RepartitionInputError(
                missing.format(column=column, name=name, path=path, columns=", ".join(d.column_names))
            )
        for i, v in enumerate(d[column]):
            if v is None or (isinstance(v, str) and not v.strip()):
                raise RepartitionInputError(empty.format(column=column, name=name, path=path, row=i))
            values.append(str(v))
    return values


def _sources(cfg: RepartitionConfig, raw: list[Any]) -> tuple[np.ndarray, list[str]]:
    if cfg.dids_source_column is None:
        ids = np.concatenate([np.full(len(d), i, dtype=np.int64) for i, d in enumerate(raw)])
        return ids, list(cfg.dataset)
    values = _required_column(
        cfg.dids_source_column,
        ((name, d, None) for name, d in zip(cfg.dataset, raw, strict=True)),
        missing="`dids_source_column: {column}` is not a column of dataset {name!r} (columns: {columns}). Fix "
        "the column name, or remove the key to use each dataset as a source.",
        empty="Dataset {name!r}, row {row}: empty `{column}` (source). Every row needs a source.",
    )
    names = list(dict.fromkeys(values))  # order of first appearance
    index = {n: i for i, n in enumerate(names)}
    return np.array([index[v] for v in values], dtype=np.int64), names


def _labels(cfg: RepartitionConfig, raw: list[Any], attrs: list[Any]) -> list[str] | None:
    """Every row's `dids_label_column` value as text; a missing column or an empty value is an error."""
    if cfg.dids_label_column is None:
        return None
    return _required_column(
        cfg.dids_label_column,
        (  # lazily: each path is made only when its dataset is read
            (name, d, Path(cfg.dataset_dir) / attr.dataset_name)
            for name, d, attr in zip(cfg.dataset, raw, attrs, strict=True)
        ),
        missing="`dids_label_column: {column}` is not a column of dataset {name!r} ({path}; columns: {columns}). "
        "Every row needs its label: fix the column name, add it to the file, or remove the key.",
        empty="Dataset {name!r} ({path}), row {row}: no `{column}` (`dids_label_column`). Every row needs a "
        "label to judge the domains against; fill it in or remove the key.",
    )


def _domain_counts(cfg: RepartitionConfig, trainable_sizes: list[int], names: list[str]) -> list[int]:
    if cfg.dids_domains_per_source is not None:
        counts = [cfg.dids_domains_per_source] * len(names)
    else:
        total = cfg.dids_num_domains or 0
        if total < len(names):
            raise RepartitionInputError(
                f"`dids_num_domains: {total}` is fewer than the {len(names)} sources ({', '.join(names)}); each "
                "source needs at least one domain. Raise it or use `dids_domains_per_source`."
            )
        if total > sum(trainable_sizes):
            raise RepartitionInputError(
                f"`dids_num_domains: {total}` exceeds the {sum(trainable_sizes)} rows with a loss. Lower it."
            )
        counts = allocate_domains(trainable_sizes, total)
    short = [(n, s, k) for n, s, k in zip(names, trainable_sizes, counts, strict=True) if s < k]
    if short:
        detail = ", ".join(f"{n!r} has {s} rows with a loss for {k} domains" for n, s, k in short)
        raise RepartitionInputError(
            f"Fewer examples than clusters: {detail}. Lower `dids_domains_per_source`/`dids_num_domains`, "
            "raise `max_samples` or `cutoff_len`, or merge small sources."
        )
    return counts


def _plain_text(row: dict[str, Any]) -> str:
    parts = [row.get("_system") or ""] + [
        m["content"] for m in (row["_prompt"] or []) + (row["_response"] or [])
    ]
    return "\n".join(p for p in parts if p)


def load_inputs(cfg: RepartitionConfig, tokenizer: Any, template: Any) -> Inputs:
    """Read, align and encode every row; check sources and domain counts.

    Raises:
        RepartitionInputError: for any unusable input, before features are computed.
    """
    info = _dataset_info(cfg)
    entry = _common_entry(cfg, info)
    data_args = data_arguments(cfg)
    attrs = host_data.dataset_attrs(cfg.dataset, cfg.dataset_dir)
    raw = [_load_raw(cfg, name, attr) for name, attr in zip(cfg.dataset, attrs, strict=True)]
    empty = [n for n, d in zip(cfg.dataset, raw, strict=True) if len(d) == 0]
    if empty:
        raise RepartitionInputError(
            f"Empty source(s): dataset(s) {empty} have no rows. Remove them from `dataset`."
        )
    sources, names = _sources(cfg, raw)
    labels = _labels(cfg, raw, attrs)
    encode = host_data.sft_row_encoder(template, tokenizer, data_args)
    encoded: list[tuple[list[int], list[int]] | None] = []
    texts: list[str] = []
    for name, d, attr in zip(cfg.dataset, raw, attrs, strict=True):
        try:
            aligned = host_data.align_rows(d, attr, data_args)
        except Exception as err:
            raise RepartitionInputError(
                f"Dataset {name!r}: LLaMA-Factory cannot align it with its dataset_info entry ({err}). Check the "
                "`formatting`/`columns` of the entry against the file."
            ) from err
        if len(aligned) != len(d):
            raise RuntimeError(f"alignment changed the row count of {name!r}: {len(d)} -> {len(aligned)}")
        for row in aligned:
            texts.append(_plain_text(row))
            if len(row["_prompt"]) % 2 != 1 or len(row["_response"]) != 1:
                encoded.append(None)  # LLaMA-Factory drops it in training
                continue
            encoded.append(encode(row))
    inputs = Inputs(
        raw=raw, info_entry=entry, sources=sources, source_names=names, domains_per_source=[], labels=labels
    )
    inputs.encoded, inputs.texts = encoded, texts
    if cfg.dids_features == "semantic":
        usable = np.array([bool(t) for t in texts])
    else:
        usable = inputs.trainable()
    sizes = np.bincount(sources[usable], minlength=len(names)).tolist()
    inputs.domains_per_source = _domain_counts(cfg, sizes, names)
    return inputs
