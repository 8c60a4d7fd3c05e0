"""Reading a finished run's output directory: history and final task losses (reference runs, compare).

Role: runtime layer (plain JSON files, no llamafactory import) between finished runs and what reads
them: the reference-based strategies (DoReMi's reference losses, Velocitune's scaling-law targets) and
`llamafactory-dids compare` (the plots and the export of a run live in `reporting`). A run's
output_dir holds `history.jsonl` (one record per mixture update, `task_losses` when target sets are
observed) and `dids_final.json` (the task losses of the final model, written at the end of training by
`DomainMixture.final_evaluation`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..run_files import FINAL_FILE, FINAL_VERSION, HISTORY_FILE, read_history


def read_final(run_dir: str | Path) -> dict[str, Any] | None:
    """`run_dir/dids_final.json`, or None if the run did not write one (no target sets, or unfinished)."""
    path = Path(run_dir) / FINAL_FILE
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        final = json.load(f)
    if final.get("schema") != FINAL_VERSION:
        raise ValueError(f"{path}: schema {final.get('schema')!r}, expected {FINAL_VERSION}.")
    return final


@dataclass(frozen=True)
class ReferenceRun:
    """Task losses of a reference run, reordered to the caller's task order."""

    path: Path
    samples: np.ndarray  # [p] training samples seen at each measurement (0 = before training)
    losses: np.ndarray  # [p, m] task losses at those measurements
    final_losses: np.ndarray  # [m] the last measurement (the final model when dids_final.json exists)


def read_reference(run_dir: str | Path, domains: list[str], tasks: list[str]) -> ReferenceRun:
    """Read a reference run for DoReMi/Velocitune and check it matches this run's domains and tasks.

    Raises:
        ValueError: naming the directory or file, what is missing or differs, and how to fix it.
    """
    path = Path(run_dir)
    fix = (
        "Point `dids_reference_dir` at the output_dir of a finished run of the same YAML with e.g. "
        "`dids_strategy: uniform` (same dataset, dids_domain_column and dids_target_datasets)."
    )
    if not path.is_dir():
        raise ValueError(f"`dids_reference_dir`: {path} is not a directory. {fix}")
    history, _ = read_history(path, missing_ok=True)
    records = [r for r in history if r.get("task_losses") is not None]
    final = read_final(path)
    if final is not None:
        records.append(final)
    if not records:
        raise ValueError(
            f"`dids_reference_dir`: {path} holds no task losses (no {FINAL_FILE} and no {HISTORY_FILE} record "
            f"with task_losses): the run had no `dids_target_datasets` or did not finish. {fix}"
        )
    ref_domains = records[-1].get("domains")
    if ref_domains is not None and sorted(ref_domains) != sorted(domains):
        raise ValueError(
            f"`dids_reference_dir`: {path} was trained on domains {ref_domains}, this run has {domains}. {fix}"
        )
    ref_tasks = list(records[-1].get("tasks") or [])
    missing = [t for t in tasks if t not in ref_tasks]
    if missing:
        raise ValueError(
            f"`dids_reference_dir`: {path} observed tasks {ref_tasks}, but this run's `dids_target_datasets` "
            f"{tasks} include {missing} it never measured. {fix}"
        )
    order = [ref_tasks.index(t) for t in tasks]
    samples = np.array([sum(r.get("realised_counts") or [0]) for r in records], dtype=np.float64)
    losses = np.array([[r["task_losses"][i] for i in order] for r in records], dtype=np.float64)
    return ReferenceRun(path=path, samples=samples, losses=losses, final_losses=losses[-1].copy())
