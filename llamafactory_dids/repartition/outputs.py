"""Files a repartition run leaves in `output_dir` (the contract a training YAML relies on).

Role: the hand-over from repartition to training. `data.jsonl` holds every input row, in input order
(datasets in `dataset:` order, rows in file order), with two added columns, `dids_domain` and
`dids_source`; `dataset_info.json` registers it as `dids_repartitioned` with the sources' own formatting
and column mapping, so a training YAML sets `dataset_dir: <output_dir>`, `dataset: dids_repartitioned`,
`dids_domain_column: dids_domain`. `domain_map.json` (with a schema version) and `report.md` describe
the domains: source, size, example rows, how tightly their rows sit around the centroid, and, with
`dids_label_column`, how well they agree with that known label (`quality`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..run_files import DATASET_INFO, REPARTITION_DOMAIN_MAP, REPARTITION_REPORT
from ..run_files import REPARTITION_DATA as DATA_FILE
from ..run_files import REPARTITION_VERSION as SCHEMA_VERSION
from ..utils import atomic_write, write_text_atomic
from .inputs import DOMAIN_COLUMN, SOURCE_COLUMN, Inputs

DATASET_NAME = "dids_repartitioned"
EXAMPLE_ROWS = 5


def write_dataset(out: Path, inputs: Inputs, domain_names: list[str], row_domain: np.ndarray) -> int:
    """Write data.jsonl and dataset_info.json; return the number of rows written (checked = rows in)."""
    written = 0
    with atomic_write(out / DATA_FILE) as f:
        for dataset in inputs.raw:
            for row in dataset:
                row = dict(row)
                row[DOMAIN_COLUMN] = domain_names[row_domain[written]]
                row[SOURCE_COLUMN] = inputs.source_names[inputs.sources[written]]
                f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
                written += 1
        if written != inputs.num_rows:
            raise RuntimeError(f"wrote {written} rows for {inputs.num_rows} input rows; output discarded")
    entry = {"file_name": DATA_FILE, **inputs.info_entry}
    write_text_atomic(out / DATASET_INFO, json.dumps({DATASET_NAME: entry}, indent=2) + "\n")
    return written


def build_domain_map(
    inputs: Inputs,
    domain_names: list[str],
    domain_source: list[int],
    row_domain: np.ndarray,
    stats: list[dict[str, Any]],
    run: dict[str, Any],
    agreement: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The domain map: schema_version, run settings, sources and domains -> {source, size, rows, stats}.

    With `agreement` (`quality.label_agreement` plus the label `column`), a `labels` entry holds the figures
    against the known labels and every domain a `label` entry: its majority label and that label's share.
    """
    domains = {}
    for d, name in enumerate(domain_names):
        rows = np.flatnonzero(row_domain == d)
        domains[name] = {
            "source": inputs.source_names[domain_source[d]],
            "size": int(len(rows)),
            "example_rows": rows[:EXAMPLE_ROWS].tolist(),
            "centroid": stats[d],
        }
        if agreement is not None:
            domains[name]["label"] = agreement["domains"][name]
    sources = {}
    for s, name in enumerate(inputs.source_names):
        sources[name] = {
            "rows": int((inputs.sources == s).sum()),
            "domains": [n for d, n in enumerate(domain_names) if domain_source[d] == s],
        }
    domain_map = {
        "schema_version": SCHEMA_VERSION,
        "dataset": DATASET_NAME,
        "domain_column": DOMAIN_COLUMN,
        "source_column": SOURCE_COLUMN,
        "num_rows": inputs.num_rows,
        "run": run,
        "sources": sources,
        "domains": domains,
    }
    if agreement is not None:
        domain_map["labels"] = {k: v for k, v in agreement.items() if k != "domains"}
    return domain_map


def _snippet(text: str, limit: int = 70) -> str:
    flat = " ".join(text.split()).replace("|", "\\|")
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _proxy_fit_lines(fit: dict[str, Any] | None) -> list[str]:
    if not fit or not fit.get("tokens"):
        return []
    verdict = (
        "below it, as a trained proxy should be"
        if fit["loss"] < fit["unigram_entropy"]
        else "NOT below it: the proxy predicts no better than token frequencies, so its gradients carry "
        "little signal about kinds of text (use a trained proxy)"
    )
    return [
        f"Proxy fit on {fit['rows']} rows ({fit['tokens']} response tokens): loss {fit['loss']:.3f} nats/token; "
        f"unigram entropy of the same tokens {fit['unigram_entropy']:.3f}, {verdict}."
    ]


def _label_lines(labels: dict[str, Any] | None) -> list[str]:
    if labels is None:
        return []
    counts = ", ".join(f"{label} {n}" for label, n in labels["labels"].items())
    return [
        f"Against the known labels in `{labels['column']}` ({len(labels['labels'])}: {counts}): purity "
        f"{labels['purity']:.3f} (the sources alone: {labels['source_purity']:.3f}), homogeneity "
        f"{labels['homogeneity']:.3f}, completeness {labels['completeness']:.3f}, V-measure {labels['v_measure']:.3f}.",
        "Purity = share of rows that carry their domain's majority label; homogeneity = 1 when every domain "
        "holds one label only, completeness = 1 when every label lies in one domain only.",
    ]


def write_reports(out: Path, inputs: Inputs, domain_map: dict[str, Any]) -> None:
    """domain_map.json and report.md."""
    write_text_atomic(out / REPARTITION_DOMAIN_MAP, json.dumps(domain_map, indent=2) + "\n")
    run = domain_map["run"]
    lines = [
        "# Domain repartition report",
        "",
        f"{domain_map['num_rows']} rows from {len(domain_map['sources'])} source(s) into "
        f"{len(domain_map['domains'])} domains. Features: `{run['features']}` "
        f"({run['feature_dim']} dims) from `{run['model']}`; clusterer `{run['clusterer']}`, seed {run['seed']}.",
        f"Rows without a loss (no gradient, placed in their source's largest domain): {run['rows_without_loss']}.",
        *_proxy_fit_lines(run.get("proxy_fit")),
        *_label_lines(domain_map.get("labels")),
        "",
        "Cohesion = mean cosine of a domain's rows to its centroid (1 = identical directions).",
        "",
    ]
    labelled = "labels" in domain_map
    for source, info in domain_map["sources"].items():
        lines += [
            f"## {source} ({info['rows']} rows)",
            "",
            "| domain | size | cohesion | min cos | "
            + ("majority label | share | " if labelled else "")
            + "examples |",
            "|---|---:|---:|---:|" + ("---|---:|" if labelled else "") + "---|",
        ]
        for name in info["domains"]:
            d = domain_map["domains"][name]
            c = d["centroid"]
            examples = " / ".join(_snippet(inputs.texts[r]) for r in d["example_rows"][:2])
            label = f"{d['label']['majority']} | {d['label']['share']:.3f} | " if labelled else ""
            lines.append(
                f"| {name} | {d['size']} | {c.get('cosine_mean', float('nan')):.3f} | "
                f"{c.get('cosine_min', float('nan')):.3f} | {label}{examples} |"
            )
        lines.append("")
    write_text_atomic(out / REPARTITION_REPORT, "\n".join(lines))
