"""Observation sets S_j from lm-eval tasks: `llamafactory-dids observe`.

Role: feeds the impact and trajectory terms (eq. 12-15) their downstream data. The paper takes "a
small subset from the downstream task's validation set" (Sec. 5.1; 200 samples per task, Sec. 5.4)
as observable samples; this draws N docs of each task, renders them with the task's own prompt
(`doc_to_text`) and answer (`doc_to_target`, the correct choice for multiple-choice tasks) as
alpaca rows, registers one LLaMA-Factory dataset per task (usable as `dids_target_datasets`), and
writes a manifest of the docs used so that `eval` can keep them out of what it scores.
"""

from __future__ import annotations

import json
import logging
import random
import re
from pathlib import Path
from typing import Any

from ..run_files import DATASET_INFO, OBSERVATION_MANIFEST
from ..run_files import MANIFEST_VERSION as MANIFEST_SCHEMA_VERSION
from ..utils import write_text_atomic
from .config import ObserveConfig
from .tasks import doc_hash, load_leaf_tasks, observation_split, task_manager

logger = logging.getLogger(__name__)

_ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output"}


def dataset_name(prefix: str, task: str) -> str:
    """LLaMA-Factory dataset name of a task's observation set, e.g. `obs_mmlu`."""
    return prefix + re.sub(r"[^0-9A-Za-z_]+", "_", task)


def render_doc(task: Any, doc: dict) -> tuple[str, str]:
    """(prompt, response) of one doc with the task's own templates.

    Multiple-choice: the response is the text of the correct choice (what lm-eval scores after
    `target_delimiter`). Generation tasks: the reference target (first one when several).

    Raises:
        ValueError: when the task's prompt is not text or it has no reference answer.
    """
    name = task.config.task
    prompt = task.doc_to_text(doc)
    if not isinstance(prompt, str):
        raise ValueError(
            f"lm-eval task {name!r} builds its prompt from several inputs (doc_to_text returned "
            f"{type(prompt).__name__}), which has no single prompt/response form. Provide its observation set "
            "as your own LLaMA-Factory dataset instead."
        )
    target = task.doc_to_target(doc)
    if isinstance(target, list):
        target = target[0] if target else None
    if task.OUTPUT_TYPE == "multiple_choice":
        choices = task.doc_to_choice(doc)
        if isinstance(target, int) and 0 <= target < len(choices):
            return prompt, str(choices[target])
        if isinstance(target, str) and target in choices:
            return prompt, target
        raise ValueError(
            f"lm-eval task {name!r}: target {target!r} is neither an index into nor one of the choices {choices!r}."
        )
    if not isinstance(target, str) or not target.strip():
        raise ValueError(
            f"lm-eval task {name!r} ({task.OUTPUT_TYPE}) has no reference answer (doc_to_target gives "
            f"{target!r}; e.g. IFEval is scored by rules, not against a response), so an SFT observation set "
            "cannot be rendered from it. Provide its observation set as your own LLaMA-Factory dataset."
        )
    return prompt, target.strip()


def _draw(pool: list[tuple[str, int]], n: int, seed: int, name: str) -> list[tuple[str, int]]:
    if len(pool) < n:
        logger.warning(
            "task %s: only %d docs available, fewer than n=%d; using all of them", name, len(pool), n
        )
    chosen = random.Random(f"{seed}:{name}").sample(pool, min(n, len(pool)))
    return sorted(chosen)


def _doc_pool(
    leaves: dict[str, Any], allow_test_split: bool
) -> tuple[dict[str, tuple[Any, Any]], list[tuple[str, int]], list[str]]:
    """Each leaf task's (task, observation split), the (leaf, doc id) pool of all their docs, the split notes."""
    splits, pool, notes = {}, [], []
    for leaf, task in leaves.items():
        split, note = observation_split(task, allow_test_split)
        splits[leaf] = (task, split)
        pool.extend((leaf, i) for i in range(len(split.docs)))
        if note:
            notes.append(note)
            logger.warning(note)
    return splits, pool, notes


def _render_rows(
    splits: dict[str, tuple[Any, Any]], chosen: list[tuple[str, int]]
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """The alpaca rows of the `chosen` (leaf, doc id) docs, and per leaf the manifest entry of the docs used."""
    rows, used = [], {}
    for leaf, doc_id in chosen:
        task, split = splits[leaf]
        doc = split.docs[doc_id]
        prompt, response = render_doc(task, doc)
        rows.append({"instruction": prompt, "input": "", "output": response, "task": leaf, "doc_id": doc_id})
        entry = used.setdefault(
            leaf, {"split": split.split, "role": split.role, "doc_ids": [], "doc_hashes": []}
        )
        entry["doc_ids"].append(doc_id)
        entry["doc_hashes"].append(doc_hash(doc))
    return rows, used


def build_observation_sets(config: ObserveConfig) -> Path:
    """Write the observation datasets, their dataset_info.json entries and the manifest.

    Returns:
        Path of the manifest (`<output_dir>/observation_manifest.json`).
    """
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    manager = task_manager(config.include_path, config.include_builtin_tasks)
    manifest: dict[str, Any] = {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "n": config.n,
        "seed": config.seed,
        "allow_test_split": config.allow_test_split,
        "tasks": {},
    }
    info_entries: dict[str, dict] = {}
    for name, leaves in load_leaf_tasks(manager, config.tasks).items():
        splits, pool, notes = _doc_pool(leaves, config.allow_test_split)
        rows, used = _render_rows(splits, _draw(pool, config.n, config.seed, name))
        dataset = dataset_name(config.dataset_prefix, name)
        file_name = f"{dataset}.json"
        _write_json(out / file_name, rows)
        info_entries[dataset] = {
            "file_name": file_name,
            "formatting": "alpaca",
            "columns": dict(_ALPACA_COLUMNS),
        }
        manifest["tasks"][name] = {
            "dataset": dataset,
            "file_name": file_name,
            "requested": config.n,
            "used": len(rows),
            "notes": notes,
            "leaves": used,
        }
        print(f"[dids] observe: {name}: {len(rows)} docs -> {out / file_name} (dataset `{dataset}`)")
    _merge_dataset_info(out / DATASET_INFO, info_entries)
    path = out / OBSERVATION_MANIFEST
    _write_json(path, manifest)
    print(f"[dids] observe: manifest of the docs used -> {path}")
    return path


def _merge_dataset_info(path: Path, entries: dict[str, dict]) -> None:
    """Add/replace our entries in an existing dataset_info.json, keeping every other dataset."""
    info = {}
    if path.is_file():
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as error:
            raise ValueError(
                f"{path} exists but is not valid JSON ({error}); fix or remove it before writing observation sets."
            ) from error
    info.update(entries)
    _write_json(path, info)


def _write_json(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Load and check an observation manifest."""
    path = Path(path)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"Cannot read the observation manifest {path}: {error}") from error
    if manifest.get("schema_version") != MANIFEST_SCHEMA_VERSION or "tasks" not in manifest:
        raise ValueError(
            f"{path} is not an observation manifest of schema_version {MANIFEST_SCHEMA_VERSION} "
            f"(got schema_version={manifest.get('schema_version')!r}); rebuild it with `llamafactory-dids observe`."
        )
    return manifest
