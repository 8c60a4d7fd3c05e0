"""Keys of a `llamafactory-dids repartition` YAML: one dataclass, validated before any model or data loads.

Role: configuration of the repartition step (paper section 4.1, App. A), separate from `DIDSConfig`, which
configures training runs. LLaMA-Factory-style keys name the proxy model and the data; `dids_*` keys set the
features and the clustering. Every problem is collected and reported at once, naming the key, what it
expects, what it got and the fix. Stdlib only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..algorithms.clustering import CLUSTERERS
from ..config import ConfigProblems, parse_keys
from ..unknown_keys import unknown_key_problem

FEATURES = ("factored", "exact", "semantic")


class RepartitionConfigError(ConfigProblems):
    """Raised with every problem found in a repartition config, one per line."""

    subject = "repartition"


@dataclass
class RepartitionConfig:
    """One repartition run (LLaMA-Factory-style keys plus `dids_*` keys)."""

    model_name_or_path: str = field(
        default="",
        metadata={"help": "The proxy model (a local directory): same family, smaller (paper: 500M)."},
    )
    dataset: list[str] = field(
        default_factory=list,
        metadata={"help": "LLaMA-Factory dataset names (list or comma-separated); each one is a source."},
    )
    dataset_dir: str = field(default="data", metadata={"help": "Folder holding dataset_info.json."})
    template: str | None = field(default=None, metadata={"help": "Chat template, as in training."})
    cutoff_len: int = field(default=2048, metadata={"help": "Tokens per row, as in training."})
    output_dir: str = field(default="", metadata={"help": "Where the labelled dataset and reports go."})
    max_samples: int | None = field(
        default=None, metadata={"help": "Take the first N rows of each dataset (as LLaMA-Factory does)."}
    )
    stage: str = field(default="sft", metadata={"help": "Only `sft`: the loss covers the response tokens."})
    train_on_prompt: bool = field(default=False, metadata={"help": "As in training: also supervise prompts."})
    mask_history: bool = field(
        default=False, metadata={"help": "As in training: supervise the last turn only."}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Passed to transformers when loading."})
    dids_features: str = field(
        default="factored",
        metadata={
            "help": "`factored`: batched Kronecker-factored projection of per-example gradients (default); "
            "`exact`: one autograd call per example and a dense JL projection (the paper; reference); "
            "`semantic`: mean-pooled embeddings (the DIDS-GC ablation)."
        },
    )
    dids_projection_dim: int = field(
        default=1024,
        metadata={"help": "JL projection dimension (paper: 1024). Also accepted as `dids_proj_dim`."},
    )
    dids_probe_layers_fraction: float = field(
        default=0.1,
        metadata={
            "help": "Gradients of the linear layers of this last fraction of blocks (paper: 10%), as the "
            "training probe's key of the same name. Also accepted as `dids_layers_fraction`."
        },
    )
    dids_topk_fraction: float = field(
        default=0.0,
        metadata={
            "help": "Keep this fraction of largest-magnitude gradient entries before projecting (paper: 0.1); "
            "0 = off. It needs the gradient coordinates, so it is slower."
        },
    )
    dids_factor_dim: int = field(
        default=128, metadata={"help": "Per-side dimension of the factored projection of each layer (r x r)."}
    )
    dids_normalise_layers: bool = field(
        default=True,
        metadata={
            "help": "Scale each selected matrix's gradient to unit norm, row by row, before the matrices are "
            "joined, so every matrix has an equal say in the cosine (false: the paper's plain concatenation, "
            "where the matrices with the largest gradients decide)."
        },
    )
    dids_num_domains: int | None = field(
        default=None,
        metadata={"help": "Total domains, split over sources in proportion to size (paper: 72 from 18)."},
    )
    dids_domains_per_source: int | None = field(
        default=None,
        metadata={"help": "Alternative to `dids_num_domains`: this many domains in every source."},
    )
    dids_source_column: str | None = field(
        default=None,
        metadata={
            "help": "Column naming each row's initial source. Unset: each `dataset:` entry is a source."
        },
    )
    dids_label_column: str | None = field(
        default=None,
        metadata={
            "help": "Column with a known label of every row (e.g. the language), used only to judge the domains: "
            "report.md and domain_map.json then give their purity and homogeneity against it. Unset: cohesion only."
        },
    )
    dids_clusterer: str = field(
        default="auto",
        metadata={"help": "`auto` (faiss when installed, else sklearn), `sklearn` or `faiss`."},
    )
    dids_kmeans_n_init: int = field(default=1, metadata={"help": "k-means restarts (best inertia kept)."})
    dids_max_points_per_centroid: int = field(
        default=256,
        metadata={"help": "Fit centroids on a seeded sample of this many rows per cluster, then assign all."},
    )
    dids_embedding_model: str | None = field(
        default=None,
        metadata={"help": "`semantic` features: the embedding model directory (default: the proxy)."},
    )
    dids_batch_size: int = field(default=8, metadata={"help": "Rows per forward/backward."})
    dids_shard_size: int = field(
        default=512,
        metadata={"help": "Rows per cached feature shard (the unit of resume and of data parallelism)."},
    )
    dids_seed: int = field(default=0, metadata={"help": "Seed of the projections, sampling and k-means."})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: older repartition key -> the name it shares with the training keys (both names are accepted)
KEY_ALIASES = {"dids_proj_dim": "dids_projection_dim", "dids_layers_fraction": "dids_probe_layers_fraction"}


def known_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(RepartitionConfig)]


def _known_values(raw: Mapping[str, Any], problems: list[str]) -> dict[str, Any]:
    """The set (non-None) values of `raw` under their current names; unknown keys and doubled aliases go to
    `problems`."""
    known = known_keys()
    values = {}
    for key, value in raw.items():
        if key in KEY_ALIASES:
            key = KEY_ALIASES[key]
            if key in raw:
                problems.append(f"`{key}` is set twice: under its name and its older alias. Keep `{key}`.")
        if key not in known:
            problems.append(
                unknown_key_problem(
                    key, known, family="repartition keys", listing="llamafactory-dids keys repartition"
                )
            )
        elif value is not None:
            values[key] = value
    return values


def _parse_dataset(values: dict[str, Any], cfg: RepartitionConfig, problems: list[str]) -> None:
    names = values.get("dataset")
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not isinstance(names, list | tuple) or not names or not all(isinstance(n, str) and n for n in names):
        problems.append(
            f"`dataset` must name one or more datasets of dataset_info.json, got {values.get('dataset')!r}."
        )
    elif len(set(names)) != len(names):
        problems.append(f"`dataset` lists a dataset twice: {list(names)!r}.")
    else:
        cfg.dataset = list(names)


def _parse_typed_keys(values: dict[str, Any], cfg: RepartitionConfig, problems: list[str]) -> None:
    positive = "a positive integer"
    parse_keys(
        values,
        cfg,
        problems,
        ints={
            **{
                key: (1, positive)
                for key in (
                    "cutoff_len",
                    "max_samples",
                    "dids_projection_dim",
                    "dids_factor_dim",
                    "dids_num_domains",
                    "dids_domains_per_source",
                    "dids_kmeans_n_init",
                    "dids_max_points_per_centroid",
                    "dids_batch_size",
                    "dids_shard_size",
                )
            },
            "dids_seed": (0, "a non-negative integer"),
        },
        floats={"dids_probe_layers_fraction": "(0, 1]", "dids_topk_fraction": "[0, 1]"},
        bools=("train_on_prompt", "mask_history", "trust_remote_code", "dids_normalise_layers"),
        choices={"dids_features": FEATURES, "dids_clusterer": CLUSTERERS, "stage": ("sft",)},
        strings={
            "model_name_or_path": "a path",
            "output_dir": "a path",
            **{
                key: "a non-empty string"
                for key in (
                    "dataset_dir",
                    "template",
                    "dids_source_column",
                    "dids_label_column",
                    "dids_embedding_model",
                )
            },
        },
        required=("model_name_or_path", "output_dir"),
    )


def _check_key_combinations(values: dict[str, Any], cfg: RepartitionConfig, problems: list[str]) -> None:
    if "dids_num_domains" in values and "dids_domains_per_source" in values:
        problems.append("Set either `dids_num_domains` (total) or `dids_domains_per_source`, not both.")
    elif "dids_num_domains" not in values and "dids_domains_per_source" not in values:
        problems.append(
            "Set the number of domains: `dids_num_domains` (total over all sources; the paper used 72 from 18 "
            "sources) or `dids_domains_per_source`."
        )
    if cfg.dids_embedding_model is not None and cfg.dids_features != "semantic":
        problems.append(
            f"`dids_embedding_model` is only used with `dids_features: semantic`, got `dids_features: "
            f"{cfg.dids_features}`. Remove it or switch the features."
        )
    if cfg.dids_topk_fraction > 0 and cfg.dids_features == "semantic":
        problems.append(
            "`dids_topk_fraction` applies to gradients; it has no meaning with `dids_features: semantic`."
        )


def parse_repartition_config(raw: Mapping[str, Any]) -> RepartitionConfig:
    """Build a validated `RepartitionConfig`.

    Raises:
        RepartitionConfigError: listing every unknown key and invalid value at once.
    """
    problems: list[str] = []
    values = _known_values(raw, problems)
    cfg = RepartitionConfig()
    _parse_dataset(values, cfg, problems)
    _parse_typed_keys(values, cfg, problems)
    _check_key_combinations(values, cfg, problems)
    if problems:
        raise RepartitionConfigError(problems)
    return cfg
