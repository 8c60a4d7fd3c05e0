"""Scores of the quality benchmark: held-out task loss of a trained model (token-weighted mean response
cross-entropy of rows built as LLaMA-Factory's supervised preprocessing builds them), purity and ARI."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks._harness import collate, encode_alpaca_rows

__all__ = ["encode_tasks", "heldout_losses", "heldout_scorer", "mixed_source_purity", "purity_and_ari"]


def encode_tasks(
    tokenizer_dir: str | Path, tasks: Mapping[str, Sequence[Mapping[str, str]]], cutoff_len: int
) -> dict[str, list[dict[str, list[int]]]]:
    """task -> its rows encoded with the tokenizer in `tokenizer_dir` (done once, shared by all models)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    return {task: encode_alpaca_rows(tokenizer, rows, cutoff_len) for task, rows in tasks.items()}


def heldout_scorer(
    model_dir: str | Path, dataset_dir: str | Path, tasks: Sequence[str], cutoff_len: int
) -> Callable[[str | Path], dict[str, float]]:
    """A function model_dir -> {task: held-out loss}; the held-out rows of `tasks` (the `heldout_name`
    files in `dataset_dir`) encoded once with the tokenizer in `model_dir`."""
    from transformers import AutoTokenizer

    from .build import heldout_name

    heldout = {
        task: json.loads((Path(dataset_dir) / f"{heldout_name(task)}.json").read_text(encoding="utf-8"))
        for task in tasks
    }
    encoded = encode_tasks(model_dir, heldout, cutoff_len)
    pad_id = AutoTokenizer.from_pretrained(model_dir).pad_token_id or 0

    def score(trained: str | Path) -> dict[str, float]:
        return {t: v["loss"] for t, v in heldout_losses(trained, encoded, pad_id=pad_id).items()}

    return score


def heldout_losses(
    model_dir: str | Path,
    encoded: Mapping[str, Sequence[Mapping[str, list[int]]]],
    *,
    pad_id: int,
    batch_size: int = 16,
) -> dict[str, dict[str, float]]:
    """task -> {"loss": token-weighted mean response cross-entropy, "tokens": response tokens counted}
    (`response_token_fit`: token t is predicted from the prefix ending at t - 1)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from llamafactory_dids.algorithms.features import response_token_fit

    hf_logging.disable_progress_bar()  # "Loading weights" bars, one per model
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    out: dict[str, dict[str, float]] = {}
    for task, rows in encoded.items():
        chunks = (rows[start : start + batch_size] for start in range(0, len(rows), batch_size))
        fit = response_token_fit(
            model, (tuple(collate(batch, pad_id, multiple=1).values()) for batch in chunks)
        )
        if fit["tokens"] == 0:
            raise ValueError(f"Task {task!r}: no response token survives the cutoff.")
        out[task] = {"loss": fit["loss"], "tokens": fit["tokens"]}
    return out


def purity_and_ari(true_labels: Sequence[Any], cluster_labels: Sequence[Any]) -> tuple[float, float]:
    """(purity, adjusted Rand index) of `cluster_labels` against `true_labels` (equal lengths, n >= 1)."""
    from sklearn.metrics import adjusted_rand_score
    from sklearn.metrics.cluster import contingency_matrix

    if len(true_labels) != len(cluster_labels) or not true_labels:
        raise ValueError(
            f"purity needs two equally long non-empty label lists, got {len(true_labels)} and {len(cluster_labels)}."
        )
    table = contingency_matrix(true_labels, cluster_labels)  # [classes, clusters]
    purity = float(table.max(axis=0).sum() / table.sum())
    return purity, float(adjusted_rand_score(true_labels, cluster_labels))


def mixed_source_purity(
    data_jsonl: str | Path, mixed_rows: Sequence[Mapping[str, str]], kinds: Sequence[str]
) -> dict:
    """Purity / ARI of the `dids_domain` clusters of the mixed source's rows against their hidden kinds.

    The rows of `data_jsonl` (repartition output: every input row plus `dids_domain`) are matched to the
    mixed source by (instruction, input, output); every mixed row must be found exactly once.
    """
    if len(mixed_rows) != len(kinds):
        raise ValueError(f"{len(mixed_rows)} mixed rows but {len(kinds)} hidden kinds.")

    def key(row: Mapping[str, Any]) -> tuple[str, str, str]:
        return (row.get("instruction", ""), row.get("input", "") or "", row.get("output", ""))

    wanted = {key(row): i for i, row in enumerate(mixed_rows)}
    clusters: list[str | None] = [None] * len(mixed_rows)
    with open(data_jsonl, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            i = wanted.get(key(row))
            if i is not None:
                if "dids_domain" not in row:
                    raise ValueError(f"{data_jsonl}: row without a `dids_domain` column: {str(row)[:200]}")
                clusters[i] = str(row["dids_domain"])
    missing = sum(c is None for c in clusters)
    if missing:
        raise ValueError(f"{data_jsonl}: {missing} of the {len(mixed_rows)} mixed-source rows are missing.")
    purity, ari = purity_and_ari(list(kinds), clusters)
    table: dict[str, dict[str, int]] = {}
    for kind, cluster in zip(kinds, clusters, strict=True):
        table.setdefault(str(cluster), {}).setdefault(kind, 0)
        table[str(cluster)][kind] += 1
    return {"purity": purity, "ari": ari, "rows": len(kinds), "clusters": dict(sorted(table.items()))}
